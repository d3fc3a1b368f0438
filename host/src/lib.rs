//! Sluice: records from Kafka, through a WebAssembly component, to Kafka.
//!
//! # Layout
//!
//! ```text
//!  source topic ─▶ source/kafka ─▶ transform (runtime: wasmtime) ─▶ sink/kafka ─▶ sink topic(s)
//!                       ▲                                              │
//!                       └──── checkpoint (commit acknowledged offsets) ◀┘ delivery reports
//! ```
//!
//! - `cli`, `app`: the command line, and wiring a validated config into a pipeline.
//! - `pipeline`: the loop that drives source, transform and sink, and checkpoints.
//! - `source`: the Kafka consumer group member and the startup modes.
//! - `transform`: the stage that runs each batch through the live plugin.
//! - `sink`: the idempotent Kafka producer and output routing.
//! - `checkpoint`: which offsets are safe to commit, and the checkpoint itself in both
//!   delivery modes (at-least-once commits, exactly-once transactions).
//! - `state`: keyed state for plugins and its changelog topic.
//! - `plugin`: loading and validating plugins, the registry of live versions, and the
//!   swap triggers (file watcher, SIGHUP); `admin`: the HTTP endpoint for swaps, status,
//!   metrics and the web console.
//! - `runtime`: the only code that touches wasmtime: engine policy, bindings, instances,
//!   and the sandbox (what a plugin may reach beyond the WIT world).
//! - `config`: `sluice.toml` and Managed Flink properties, validated in one pass.
//! - `auth`: Kafka security settings, MSK IAM tokens, and stopping on refused credentials.
//! - `generate`: the stock-record generator of the job Sluice replaces.
//! - `author`: plugin authoring commands (new, build, test, inspect); no Kafka.
//! - `shutdown`, `telemetry`, `feedback`: signals, logging, and feedback while a
//!   plugin compiles; `metrics`, `history`: counters and the recent checkpoints and
//!   warnings the admin endpoint serves.

pub mod admin;
pub mod app;
pub(crate) mod auth;
pub mod author;
pub(crate) mod checkpoint;
pub mod cli;
pub mod config;
pub(crate) mod feedback;
pub mod generate;
pub(crate) mod history;
pub(crate) mod kafka;
#[cfg(test)]
mod layers;
pub(crate) mod metrics;
pub mod output;
pub(crate) mod pipeline;
pub mod plugin;
pub(crate) mod progress;
pub mod runtime;
pub mod shutdown;
pub(crate) mod sink;
pub(crate) mod source;
pub mod state;
pub mod telemetry;
pub(crate) mod transform;
