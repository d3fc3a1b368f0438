//! The WebAssembly runtime: engine policy, linking, and one running plugin instance.
//!
//! This is the only module that touches wasmtime. Everything above it sees a
//! [`Runtime`] that compiles components and an [`Instance`] that runs batches.
//!
//! Layout: `engine` holds the engines, one per compiler tier, and [`Runtime`];
//! `compile` the way from a component's bytes to compiled code: the compilation
//! cache, whose entries are authenticated before they are loaded (`cache`), then a
//! compiler process (`child`, at the priorities of `priority`); `prepared` the way
//! from compiled code to a linked plugin. An instance (`instance`) has its host state
//! (`host_state`: what its imports reach), one memory budget (`limits`) and a bounded
//! share of the host log (`logs`, `stdio`).

mod bindings;
mod cache;
pub mod child;
mod compile;
mod describe;
mod engine;
mod host_state;
mod instance;
mod limits;
pub(crate) mod logs;
mod prepared;
mod priority;
mod sandbox;
mod stdio;

use std::time::Duration;

use thiserror::Error;

pub use compile::Pending;
use engine::EPOCH_TICK;
pub use engine::{Runtime, Tier};
use host_state::HostState;
pub use instance::Instance;
pub use limits::Limits;
pub(crate) use prepared::Prepared;
#[cfg(test)]
pub(crate) use priority::thread_nice;
pub(crate) use priority::{OPTIMIZE_NICE, lower_thread_priority};
pub(crate) use sandbox::DirGrant;
pub use sandbox::Sandbox;

/// The WIT world every plugin must target.
pub(crate) const WORLD: &str = "sluice:plugin/transformer@0.1.0";
/// The interface a plugin must export.
const TRANSFORM_EXPORT: &str = "sluice:plugin/transform@0.1.0";
/// The log interface a plugin may import.
const LOG_IMPORT: &str = "sluice:plugin/log@0.1.0";
/// The keyed-state interface a plugin may import.
const STATE_IMPORT: &str = "sluice:plugin/state@0.1.0";

/// Why a plugin could not be loaded or failed while running.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(anyhow::Error),
    /// The compiler process failed for a reason of its own, not the component's.
    #[error("could not be compiled: {0:#}")]
    Compiler(anyhow::Error),
    #[error(
        "not a Sluice transform: it must export `{TRANSFORM_EXPORT}` (world `{WORLD}`); {detail}"
    )]
    Link { detail: String },
    /// Linked, but this process could not make an instance of it (nothing the
    /// component's exports or imports decide).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its time limit of {0:?} for one batch")]
    Timeout(Duration),
    #[error(
        "exceeded its memory limit of {} MiB (it asked for {} MiB); raise `plugin.max_memory_mb` if the plugin needs more",
        limit >> 20,
        requested.div_ceil(1 << 20)
    )]
    Memory { limit: usize, requested: usize },
    #[error("failed the whole batch: {0}")]
    Batch(String),
}

impl PluginError {
    /// Whether the instance that returned this error must not be called again: it
    /// was stopped in the middle of a call (a trap, or a limit), so its memory may be
    /// inconsistent. An error the plugin returned for a batch leaves it usable.
    pub(crate) fn leaves_instance_unusable(&self) -> bool {
        !matches!(self, PluginError::Batch(_))
    }
}
