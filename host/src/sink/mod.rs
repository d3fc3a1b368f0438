//! Sinks: where transformed records go.

pub mod kafka;
