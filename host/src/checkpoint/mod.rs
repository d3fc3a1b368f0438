//! Checkpoints: the one room that knows the source, the sink and the keyed state
//! together. The checkpointer commits what the progress tracker says is safe (in both
//! delivery modes), writes and restores keyed state through its changelog, and
//! recovers an exactly-once pipeline after a failure.

pub(crate) mod changelog;
pub(crate) mod checkpointer;
mod clients;
pub(crate) mod exactly_once;
pub(crate) mod retry;
