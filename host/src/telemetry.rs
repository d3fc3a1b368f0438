//! Logging setup, and librdkafka's own log lines routed into it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

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

/// Counts events of a kind that may recur many times a second, for a log line written
/// at most once per interval that says how many there were.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    unreported: u64,
    reported: Option<Instant>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            unreported: 0,
            reported: None,
        }
    }

    /// Counts `events`; when a report is due, returns how many events it covers (these
    /// and those held back since the last one).
    pub fn count(&mut self, events: u64) -> Option<u64> {
        self.unreported += events;
        if self.reported.is_some_and(|at| at.elapsed() < self.every) {
            return None;
        }
        self.reported = Some(Instant::now());
        Some(std::mem::take(&mut self.unreported))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_report_counts_what_it_held_back() {
        let mut throttle = Throttle::new(Duration::from_secs(1));
        assert_eq!(throttle.count(3), Some(3));
        assert_eq!(throttle.count(2), None);
        assert_eq!(throttle.count(4), None);
        throttle.reported = Some(Instant::now() - Duration::from_secs(1));
        assert_eq!(throttle.count(1), Some(7));
        assert_eq!(throttle.count(1), None);
    }
}
