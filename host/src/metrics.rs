//! Counters for monitoring, served by the admin endpoint at `GET /metrics` in
//! Prometheus' text format. Names follow Flink and Managed Flink where they have one
//! (`numRecordsIn`, `numRecordsOut`, `lastCheckpointDuration`, `uptime`), so dashboards
//! and alarms built for the job Sluice replaces keep their meaning.
//!
//! Size: the counters, the per-partition lag read from librdkafka's statistics, the
//! histograms and the rendering of them all share one [`Metrics`]; a sixth of the
//! file is tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use rdkafka::statistics::Statistics;

/// The largest lag in records among the partitions the consumer reads: from the
/// partition's end (the last stable offset, as the source reads committed records) to
/// the next record it hands the pipeline, or, before it has handed any, to the committed
/// offset. `None` when no partition's lag is known yet.
fn lag_max(statistics: &Statistics) -> Option<u64> {
    statistics
        .topics
        .values()
        .flat_map(|topic| topic.partitions.values())
        // librdkafka lists an internal partition -1 per topic.
        .filter(|p| p.partition >= 0 && p.desired)
        .filter_map(|p| partition_lag(p.ls_offset, p.hi_offset, p.app_offset, p.committed_offset))
        .max()
}

/// One partition's lag from librdkafka's offsets (negative: not known).
fn partition_lag(stable_end: i64, end: i64, handed: i64, committed: i64) -> Option<u64> {
    let end = if stable_end >= 0 { stable_end } else { end };
    let read = if handed >= 0 { handed } else { committed };
    (end >= 0 && read >= 0).then(|| (end - read).max(0) as u64)
}

/// A histogram with fixed buckets, in seconds, in Prometheus' cumulative form.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, and one for the values above every bound.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

/// Checkpoint durations: a commit on a local broker takes milliseconds, one waiting
/// for a slow cluster seconds.
const CHECKPOINT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Plugin batch times: a Rust pass-through takes microseconds a batch, an interpreted
/// plugin milliseconds.
const BATCH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, text: &mut String, name: &str, help: &str) {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(text, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            text,
            "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {sum}\n{name}_count {cumulative}"
        );
    }
}

/// One source partition as its worker's consumer last reported it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartitionStats {
    topic: String,
    partition: i32,
    worker: usize,
    /// The group's committed offset (-1: none yet).
    committed: i64,
    /// The partition's end: its last stable offset (read_committed), else its high
    /// watermark.
    end: i64,
    /// The next offset handed to the pipeline (-1: none yet).
    position: i64,
    pub(crate) lag: Option<u64>,
    /// Records per second handed to the pipeline, over the last statistics interval.
    records_per_second: f64,
    #[serde(skip)]
    at: Option<Instant>,
}

/// A label value as Prometheus' text format reads it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The pipeline's counters, written by its thread and read by the admin endpoint.
#[derive(Debug)]
pub(crate) struct Metrics {
    started: Instant,
    records_in: AtomicU64,
    records_out: AtomicU64,
    records_dead_lettered: AtomicU64,
    checkpoints: AtomicU64,
    last_checkpoint_us: AtomicU64,
    /// Each worker's source consumer's largest partition lag in records; `u64::MAX`
    /// until that consumer's first statistics.
    lag_max: Vec<AtomicU64>,
    /// The plugin version each worker's instance runs.
    worker_versions: Vec<AtomicU64>,
    /// How long each worker took to adopt its version, µs.
    worker_adopt_us: Vec<AtomicU64>,
    /// When each worker last finished a turn of its loop: ms since `started`, plus one
    /// (0: not yet).
    turned: Vec<AtomicU64>,
    checkpoint_seconds: Histogram,
    batch_seconds: Histogram,
    /// Every source partition a worker reads, from its consumer's statistics.
    partitions: Mutex<BTreeMap<(String, i32), PartitionStats>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(1)
    }
}

impl Metrics {
    /// Counters for a host of `workers` workers.
    pub(crate) fn new(workers: usize) -> Self {
        Metrics {
            started: Instant::now(),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            records_dead_lettered: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            last_checkpoint_us: AtomicU64::new(0),
            lag_max: (0..workers.max(1))
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            // Every worker starts with the first version.
            worker_versions: (0..workers.max(1)).map(|_| AtomicU64::new(1)).collect(),
            worker_adopt_us: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
            turned: (0..workers.max(1)).map(|_| AtomicU64::new(0)).collect(),
            checkpoint_seconds: Histogram::new(CHECKPOINT_BUCKETS),
            batch_seconds: Histogram::new(BATCH_BUCKETS),
            partitions: Mutex::new(BTreeMap::new()),
        }
    }

    /// How long ago the host started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records read, written and dead-lettered so far.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (
            self.records_in.load(Ordering::Relaxed),
            self.records_out.load(Ordering::Relaxed),
            self.records_dead_lettered.load(Ordering::Relaxed),
        )
    }

    /// Counts one plugin call on a batch and how long it took.
    pub(crate) fn plugin_batch(&self, took: Duration) {
        self.batch_seconds.observe(took);
    }

    /// Every source partition the workers read, ordered by topic and partition.
    pub(crate) fn partitions(&self) -> Vec<PartitionStats> {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Counts one batch: records read, records written, failed records dead-lettered.
    pub(crate) fn batch(&self, records_in: u64, records_out: u64, dead_lettered: u64) {
        self.records_in.fetch_add(records_in, Ordering::Relaxed);
        self.records_out.fetch_add(records_out, Ordering::Relaxed);
        self.records_dead_lettered
            .fetch_add(dead_lettered, Ordering::Relaxed);
    }

    /// Counts one completed checkpoint and how long it took.
    pub(crate) fn checkpoint(&self, took: Duration) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.last_checkpoint_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.checkpoint_seconds.observe(took);
    }

    /// Notes the plugin version worker `worker` runs, and how long it took to adopt it
    /// (µs; 0 for the version it started with).
    pub(crate) fn worker_version(&self, worker: usize, version: u64, adopt_us: u64) {
        if let Some(slot) = self.worker_versions.get(worker) {
            slot.store(version, Ordering::Relaxed);
        }
        if let Some(slot) = self.worker_adopt_us.get(worker) {
            slot.store(adopt_us, Ordering::Relaxed);
        }
    }

    /// How long each worker took to adopt the version it runs (µs), by worker.
    pub(crate) fn worker_adopt_us(&self) -> Vec<u64> {
        self.worker_adopt_us
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .collect()
    }

    /// Notes that worker `worker` finished a turn of its loop (read a batch or waited
    /// for one, sent it, served acknowledgements and checkpointed as due).
    pub(crate) fn turned(&self, worker: usize) {
        if let Some(slot) = self.turned.get(worker) {
            slot.store(
                self.started.elapsed().as_millis() as u64 + 1,
                Ordering::Relaxed,
            );
        }
    }

    /// Marks a worker as retrying after failures: like a worker that has not finished
    /// a turn yet, it is not ready until [`Metrics::turned`] again.
    pub(crate) fn retrying(&self, worker: usize) {
        if let Some(slot) = self.turned.get(worker) {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// How long ago each worker last finished a turn, by worker; `None` for a worker
    /// that has not finished one yet (it is starting, or restoring its state).
    pub(crate) fn since_turns(&self) -> Vec<Option<Duration>> {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.turned
            .iter()
            .map(|slot| match slot.load(Ordering::Relaxed) {
                0 => None,
                at => Some(Duration::from_millis(now.saturating_sub(at))),
            })
            .collect()
    }

    /// The plugin version each worker runs, by worker.
    pub(crate) fn worker_versions(&self) -> Vec<u64> {
        self.worker_versions
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .collect()
    }

    /// Takes worker `worker`'s source consumer's statistics: the largest lag of its
    /// partitions.
    pub(crate) fn consumer_statistics(&self, worker: usize, statistics: &Statistics) {
        if let (Some(lag), Some(slot)) = (lag_max(statistics), self.lag_max.get(worker)) {
            slot.store(lag, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The worker's partitions are what it reports now: a rebalance moves them.
        let before: BTreeMap<_, _> = partitions
            .extract_if(.., |_, p| p.worker == worker)
            .collect();
        for (topic, stats) in &statistics.topics {
            for p in stats.partitions.values() {
                if p.partition < 0 || !p.desired {
                    continue;
                }
                let key = (topic.clone(), p.partition);
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let records_per_second = match before.get(&key) {
                    Some(PartitionStats {
                        position,
                        at: Some(at),
                        ..
                    }) if *position >= 0 && p.app_offset >= *position => {
                        let seconds = now.duration_since(*at).as_secs_f64();
                        if seconds > 0.0 {
                            (p.app_offset - position) as f64 / seconds
                        } else {
                            0.0
                        }
                    }
                    _ => 0.0,
                };
                partitions.insert(
                    key,
                    PartitionStats {
                        topic: topic.clone(),
                        partition: p.partition,
                        worker,
                        committed: p.committed_offset.max(-1),
                        end: end.max(-1),
                        position: p.app_offset.max(-1),
                        lag: partition_lag(
                            p.ls_offset,
                            p.hi_offset,
                            p.app_offset,
                            p.committed_offset,
                        ),
                        records_per_second,
                        at: Some(now),
                    },
                );
            }
        }
    }

    /// The text `GET /metrics` answers, with the plugin registry's counts.
    pub(crate) fn render(&self, status: &PluginCounts) -> String {
        let mut text = String::new();
        self.render_pipeline(&mut text);
        render_plugin(&mut text, status);
        render_events(&mut text);
        self.checkpoint_seconds.render(
            &mut text,
            "checkpointDurationSeconds",
            "Seconds each completed checkpoint took.",
        );
        self.batch_seconds.render(
            &mut text,
            "pluginBatchSeconds",
            "Seconds each batch took in the plugin.",
        );
        self.render_partition_lag(&mut text);
        text
    }

    /// The pipeline's counters and gauges: records, checkpoints, lag, readiness.
    fn render_pipeline(&self, text: &mut String) {
        write_counters(
            text,
            &[
                (
                    "numRecordsIn",
                    "Records read from the source topic.",
                    &self.records_in,
                ),
                (
                    "numRecordsOut",
                    "Records written to the sink topics.",
                    &self.records_out,
                ),
                (
                    "numRecordsDeadLettered",
                    "Records the plugin failed, written to the dead-letter topic.",
                    &self.records_dead_lettered,
                ),
                (
                    "numberOfCompletedCheckpoints",
                    "Checkpoints that committed progress.",
                    &self.checkpoints,
                ),
            ],
        );
        write_metric(
            text,
            "lastCheckpointDuration",
            "gauge",
            "Milliseconds the last checkpoint took.",
            self.last_checkpoint_us.load(Ordering::Relaxed) as f64 / 1e3,
        );
        let lag = self
            .lag_max
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|lag| *lag != u64::MAX)
            .max();
        if let Some(lag) = lag {
            write_metric(
                text,
                "records_lag_max",
                "gauge",
                "Records in the source partitions not yet read: the largest per partition.",
                lag as f64,
            );
        }
        // As `GET /ready` answers with its default: every worker finished a turn of
        // its loop within the last 60 s.
        let ready = self
            .since_turns()
            .iter()
            .all(|since| since.is_some_and(|since| since <= Duration::from_secs(60)));
        write_metric(
            text,
            "hostReady",
            "gauge",
            "1 when every worker finished a turn of its loop within the last 60 s (as GET /ready), else 0.",
            if ready { 1.0 } else { 0.0 },
        );
        write_metric(
            text,
            "uptime",
            "gauge",
            "Milliseconds since the host started.",
            self.started.elapsed().as_millis() as f64,
        );
    }

    /// `records_lag` for each source partition whose lag is known.
    fn render_partition_lag(&self, text: &mut String) {
        let partitions = self.partitions();
        if partitions.iter().any(|p| p.lag.is_some()) {
            let _ = writeln!(
                text,
                "# HELP records_lag Records in a source partition not yet read.\n# TYPE records_lag gauge"
            );
            for p in &partitions {
                if let Some(lag) = p.lag {
                    let _ = writeln!(
                        text,
                        "records_lag{{topic=\"{}\",partition=\"{}\"}} {lag}",
                        escape_label(&p.topic),
                        p.partition
                    );
                }
            }
        }
    }
}

/// One metric with its help and type lines.
fn write_metric(text: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    // Writing to a String cannot fail.
    let _ = writeln!(
        text,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The plugin registry's counts.
fn render_plugin(text: &mut String, status: &PluginCounts) {
    write_metric(
        text,
        "pluginVersion",
        "gauge",
        "The live plugin version: 1 at start, then each version made live counts one up.",
        status.version as f64,
    );
    write_metric(
        text,
        "pluginSwaps",
        "counter",
        "Swaps to another plugin version.",
        status.swaps as f64,
    );
    write_metric(
        text,
        "pluginRejections",
        "counter",
        "Plugin candidates rejected by validation.",
        status.rejections as f64,
    );
    write_metric(
        text,
        "pluginRollbacks",
        "counter",
        "Plugin versions reverted automatically.",
        status.rollbacks as f64,
    );
}

/// The counts of events the history keeps: failed checkpoints, aborts, retries,
/// plugin restarts.
fn render_events(text: &mut String) {
    use crate::history::{FAILED_CHECKPOINTS, PLUGIN_RESTARTS, RETRIES, TRANSACTION_ABORTS};
    write_counters(
        text,
        &[
            (
                "numberOfFailedCheckpoints",
                "Checkpoints that did not commit: a failed offset commit, or an aborted transaction.",
                &FAILED_CHECKPOINTS,
            ),
            (
                "numTransactionAborts",
                "Exactly-once: checkpoint transactions aborted after a failure (the partitions rewound).",
                &TRANSACTION_ABORTS,
            ),
            (
                "numRetries",
                "Times a worker rewound to its last checkpoint after a failure to try again.",
                &RETRIES,
            ),
            (
                "numPluginRestarts",
                "Plugin instances replaced by a new one of the same version after a trap.",
                &PLUGIN_RESTARTS,
            ),
        ],
    );
}

/// Counters, each with its help and type lines: (name, help, counter).
fn write_counters(text: &mut String, counters: &[(&str, &str, &AtomicU64)]) {
    for (name, help, counter) in counters {
        write_metric(
            text,
            name,
            "counter",
            help,
            counter.load(Ordering::Relaxed) as f64,
        );
    }
}

/// What `GET /metrics` says of the plugin: the live version and the swaps so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PluginCounts {
    /// The live version: 1 at start, then one up for each version made live.
    pub(crate) version: u64,
    pub(crate) swaps: u64,
    pub(crate) rejections: u64,
    pub(crate) rollbacks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retrying_worker_counts_as_not_having_turned_until_it_turns_again() {
        let metrics = Metrics::new(2);
        metrics.turned(0);
        metrics.turned(1);
        metrics.retrying(1);
        let since = metrics.since_turns();
        assert!(since[0].is_some());
        assert_eq!(since[1], None);
        metrics.turned(1);
        assert!(metrics.since_turns()[1].is_some());
    }

    fn status() -> PluginCounts {
        PluginCounts {
            version: 3,
            swaps: 2,
            rejections: 5,
            rollbacks: 1,
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
    fn a_partitions_lag_runs_from_its_stable_end_to_the_next_record_handed_over() {
        assert_eq!(partition_lag(120, 130, 100, 50), Some(20));
        // Nothing handed over since the assignment: from the committed offset.
        assert_eq!(partition_lag(120, 130, -1001, 50), Some(70));
        // No stable end known: the high watermark.
        assert_eq!(partition_lag(-1, 130, 100, 50), Some(30));
        assert_eq!(partition_lag(-1, -1, 100, 50), None);
        assert_eq!(partition_lag(120, 130, -1001, -1001), None);
        // Offsets read a moment apart can cross: never below zero.
        assert_eq!(partition_lag(100, 100, 105, 50), Some(0));
    }

    #[test]
    fn the_lag_is_absent_until_known_then_the_largest_of_the_workers() {
        let metrics = Metrics::new(3);
        assert!(!metrics.render(&status()).contains("records_lag_max"));
        metrics.lag_max[1].store(7, Ordering::Relaxed);
        assert_eq!(value(&metrics.render(&status()), "records_lag_max"), 7.0);
        metrics.lag_max[2].store(40, Ordering::Relaxed);
        metrics.lag_max[0].store(3, Ordering::Relaxed);
        assert_eq!(value(&metrics.render(&status()), "records_lag_max"), 40.0);
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
        // Every sample's family (a histogram's `_bucket`, `_sum`, `_count` too) has
        // its help and type.
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| text.contains(&format!("# TYPE {family} histogram")))
                .unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "{sample}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{sample}");
        }
        assert_eq!(value(&text, "checkpointDurationSeconds_count"), 1.0);
        assert!(
            text.contains("checkpointDurationSeconds_bucket{le=\"0.0025\"}")
                || text.contains("checkpointDurationSeconds_bucket{le=\"0.005\"} 1")
        );
    }
}
