//! Sinks: where transformed records go.

pub(crate) mod kafka;
