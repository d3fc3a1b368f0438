//! Sources: where records come from.

pub(crate) mod kafka;
