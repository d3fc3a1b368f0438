//! Counters for monitoring, served by the admin endpoint at `GET /metrics` in
//! Prometheus' text format. Names follow Flink and Managed Flink where they have one
//! (`numRecordsIn`, `numRecordsOut`, `lastCheckpointDuration`, `uptime`), so dashboards
//! and alarms built for the job Sluice replaces keep their meaning.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::plugin::registry::Status;

/// The pipeline's counters, written by its thread and read by the admin endpoint.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    records_in: AtomicU64,
    records_out: AtomicU64,
    records_dead_lettered: AtomicU64,
    checkpoints: AtomicU64,
    last_checkpoint_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            records_dead_lettered: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            last_checkpoint_us: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one batch: records read, records written, failed records dead-lettered.
    pub fn batch(&self, records_in: u64, records_out: u64, dead_lettered: u64) {
        self.records_in.fetch_add(records_in, Ordering::Relaxed);
        self.records_out.fetch_add(records_out, Ordering::Relaxed);
        self.records_dead_lettered
            .fetch_add(dead_lettered, Ordering::Relaxed);
    }

    /// Counts one completed checkpoint and how long it took.
    pub fn checkpoint(&self, took: Duration) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.last_checkpoint_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The text `GET /metrics` answers, with the plugin registry's `status`.
    pub fn render(&self, status: &Status) -> String {
        let mut text = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            // Writing to a String cannot fail.
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
        metric(
            "numRecordsIn",
            "counter",
            "Records read from the source topic.",
            count(&self.records_in),
        );
        metric(
            "numRecordsOut",
            "counter",
            "Records written to the sink topics.",
            count(&self.records_out),
        );
        metric(
            "numRecordsDeadLettered",
            "counter",
            "Records the plugin failed, written to the dead-letter topic.",
            count(&self.records_dead_lettered),
        );
        metric(
            "numberOfCompletedCheckpoints",
            "counter",
            "Checkpoints that committed progress.",
            count(&self.checkpoints),
        );
        metric(
            "lastCheckpointDuration",
            "gauge",
            "Milliseconds the last checkpoint took.",
            count(&self.last_checkpoint_us) / 1e3,
        );
        metric(
            "uptime",
            "gauge",
            "Milliseconds since the host started.",
            self.started.elapsed().as_millis() as f64,
        );
        metric(
            "pluginVersion",
            "gauge",
            "The live plugin version: 1 at start, then each version made live counts one up.",
            status.live.version as f64,
        );
        metric(
            "pluginSwaps",
            "counter",
            "Swaps to another plugin version.",
            status.swaps as f64,
        );
        metric(
            "pluginRejections",
            "counter",
            "Plugin candidates rejected by validation.",
            status.rejections as f64,
        );
        metric(
            "pluginRollbacks",
            "counter",
            "Plugin versions reverted automatically.",
            status.rollbacks as f64,
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::registry::VersionStatus;

    fn status() -> Status {
        Status {
            live: VersionStatus {
                version: 3,
                digest: "d".into(),
                origin: "p.wasm".into(),
                since: "now".into(),
            },
            previous: None,
            swaps: 2,
            rejections: 5,
            rollbacks: 1,
            history: Vec::new(),
        }
    }

    /// The value of `name` in `text`, as Prometheus would read it.
    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counters_add_up_and_every_metric_has_help_and_type() {
        let metrics = Metrics::default();
        metrics.batch(10, 9, 1);
        metrics.batch(5, 5, 0);
        metrics.checkpoint(Duration::from_micros(2_500));
        let text = metrics.render(&status());
        assert_eq!(value(&text, "numRecordsIn"), 15.0);
        assert_eq!(value(&text, "numRecordsOut"), 14.0);
        assert_eq!(value(&text, "numRecordsDeadLettered"), 1.0);
        assert_eq!(value(&text, "numberOfCompletedCheckpoints"), 1.0);
        assert_eq!(value(&text, "lastCheckpointDuration"), 2.5);
        assert_eq!(value(&text, "pluginVersion"), 3.0);
        assert_eq!(value(&text, "pluginSwaps"), 2.0);
        assert_eq!(value(&text, "pluginRejections"), 5.0);
        assert_eq!(value(&text, "pluginRollbacks"), 1.0);
        assert!(value(&text, "uptime") >= 0.0);
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(text.matches("# HELP ").count(), samples);
        assert_eq!(text.matches("# TYPE ").count(), samples);
    }
}
