//! What the benchmark programs share: topic administration and progress reads against
//! the broker ([`kafka`]), child processes measured from /proc ([`process`]), and the
//! per-run work directory, binaries and configuration files ([`run`]), and the hot-swap
//! benchmark ([`swap`]).

pub mod kafka;
pub mod process;
pub mod run;
pub mod swap;
