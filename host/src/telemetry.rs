//! Logging setup (text or one JSON object per line), librdkafka's own log lines routed
//! into it, and the warnings and errors kept for the admin console.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, every field
    /// of the event, and the fields of its span (`span`: the worker).
    Json,
}

/// Logs go to stderr; `RUST_LOG` (or `--log-level`) filters them. Warnings and errors
/// are also kept for the admin console (see [`crate::history`]).
pub fn init(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(KeepExceptions);
    let _ = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    // Fields at the top level beside `message`, as log stores index them.
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
}

/// Keeps every warning and error in [`crate::history`]'s ring for the console.
struct KeepExceptions;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for KeepExceptions {
    fn on_event(&self, event: &tracing::Event<'_>, _context: Context<'_, S>) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARN",
            _ => return,
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Fields {
            mut text,
            rest,
            plugin_version,
            record,
        } = fields;
        text.push_str(&rest);
        crate::history::exception(level, text, plugin_version, record);
    }
}

/// An event's message with its other fields after it (`key=value`), as the text
/// format writes them.
#[derive(Default)]
struct Fields {
    text: String,
    rest: String,
    plugin_version: Option<String>,
    record: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        use std::fmt::Write as _;
        match field.name() {
            "message" => self.text.push_str(value),
            name => {
                match name {
                    "plugin_version" => self.plugin_version = Some(value.to_string()),
                    "record" => self.record = Some(value.to_string()),
                    _ => {}
                }
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let name = field.name();
        if name == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            if name == "plugin_version" && self.plugin_version.is_none() {
                self.plugin_version = Some(format!("{value:?}"));
            }
            if name == "record" && self.record.is_none() {
                self.record = Some(format!("{value:?}"));
            }
            let _ = write!(self.rest, " {name}={value:?}");
        }
    }
}

/// Counts events of a kind that may recur many times a second, for a log line written
/// at most once per interval that says how many there were.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    unreported: u64,
    reported: Option<Instant>,
}

impl Throttle {
    pub(crate) const fn new(every: Duration) -> Self {
        Throttle {
            every,
            unreported: 0,
            reported: None,
        }
    }

    /// Counts `events`; when a report is due, returns how many events it covers (these
    /// and those held back since the last one).
    pub(crate) fn count(&mut self, events: u64) -> Option<u64> {
        self.unreported += events;
        if self.reported.is_some_and(|at| at.elapsed() < self.every) {
            return None;
        }
        self.reported = Some(Instant::now());
        Some(std::mem::take(&mut self.unreported))
    }
}

pub(crate) fn librdkafka_log(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
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
