//! Keyed state kept by the host: byte values under byte keys, scoped to the input
//! partition of the record being processed.
//!
//! The host checkpoints state with the partition's offsets, restores it when the
//! partition is assigned (after a restart or a rebalance) and keeps it across hot
//! swaps, so a plugin keeps nothing of value in its own memory:
//!
//! ```no_run
//! # use sluice_sdk::{Error, Output, Record, State};
//! # struct Counter;
//! # impl Counter {
//! fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
//!     let state = State::of(record);
//!     let seen = state.get(b"seen").map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
//!     state.set(b"seen", &(seen + 1).to_le_bytes());
//!     out.keep();
//!     Ok(())
//! }
//! # }
//! ```
//!
//! Because state is per partition, records that share state must share a partition:
//! key the input by what the state is keyed by (as a Kafka producer partitioning by
//! key does).

use crate::Record;
use crate::bindings::sluice::plugin::state;

/// The state of the partition a record came from.
#[derive(Debug, Clone, Copy)]
pub struct State {
    record: u32,
}

impl State {
    /// The state scope of `record`'s input partition.
    pub fn of(record: &Record<'_>) -> Self {
        State {
            record: record.index(),
        }
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        state::get(self.record, key)
    }

    /// Stores `value` under `key`.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        state::set(self.record, key, value)
    }

    /// Removes `key`; nothing happens when it is absent.
    pub fn delete(&self, key: &[u8]) {
        state::delete(self.record, key)
    }
}
