//! Logging setup, and librdkafka's own log lines routed into it.

use std::io::IsTerminal;

use rdkafka::config::RDKafkaLogLevel;
use tracing_subscriber::EnvFilter;

/// Logs go to stderr; `RUST_LOG` (or `--log-level`) filters them.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

pub fn librdkafka_log(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::warn!(client, facility, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(client, facility, "librdkafka: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::debug!(client, facility, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::trace!(client, facility, "librdkafka: {message}"),
    }
}
