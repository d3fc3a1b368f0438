//! The configuration as written, before validation: every field optional, enum-like
//! values as text, so that one pass can report every mistake with its key path.
//!
//! Size: every key of `sluice.toml` is read and checked here, one `check_*` function per
//! section, so that a new key is added in one place; a third of the file is the tests
//! of those checks.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::security::RawSecurity;
use super::{
    CONFIG_VERSION, CheckpointConfig, Config, Delivery, Fallback, Partitioning, PluginConfig,
    Problem, Rollback, SelfTest, SinkConfig, SourceConfig, Startup, TURN_SLACK_MS, TopicSpec,
};

/// The longest checkpoint interval exactly-once allows: a transaction stays open for
/// one interval, and brokers cap transactions at 15 minutes by default.
const MAX_TRANSACTION_INTERVAL_MS: i64 = 300_000;
/// Brokers' default `transaction.max.timeout.ms`: the longest transaction they accept.
const MAX_TRANSACTION_TIMEOUT_MS: i64 = 900_000;
/// librdkafka's default `max.poll.interval.ms`.
const DEFAULT_MAX_POLL_INTERVAL_MS: i64 = 300_000;

/// The most workers one host runs. Each has its own consumer, producer and plugin
/// instance; more hosts in the group scale further.
const MAX_PARALLELISM: i64 = 64;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConfig {
    pub(crate) version: Option<i64>,
    pub(crate) delivery: Option<String>,
    pub(crate) parallelism: Option<i64>,
    #[serde(default)]
    pub(crate) source: RawSource,
    #[serde(default)]
    pub(crate) sink: RawSink,
    #[serde(default)]
    pub(crate) plugin: RawPlugin,
    #[serde(default)]
    pub(crate) checkpoint: RawCheckpoint,
    /// Kafka security shared by the source and the sink.
    pub(crate) security: Option<RawSecurity>,
    /// Unknown keys found while reading, by path.
    #[serde(skip)]
    pub(crate) unknown: Vec<String>,
    /// For imported formats: the name each key path has in the original file.
    #[serde(skip)]
    pub(crate) origin: HashMap<&'static str, String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSource {
    pub(crate) bootstrap_servers: Option<String>,
    pub(crate) topic: Option<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) startup: Option<String>,
    startup_fallback: Option<String>,
    pub(crate) startup_timestamp_ms: Option<i64>,
    batch_max_records: Option<i64>,
    connect_timeout_ms: Option<i64>,
    #[serde(default)]
    kafka: BTreeMap<String, toml::Value>,
    /// Replaces `[security]` for the source.
    pub(crate) security: Option<RawSecurity>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSink {
    pub(crate) bootstrap_servers: Option<String>,
    pub(crate) topic: Option<String>,
    partitioning: Option<String>,
    create_topic: Option<RawTopicSpec>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    dead_letter_topic: Option<String>,
    #[serde(default)]
    kafka: BTreeMap<String, toml::Value>,
    /// Replaces `[security]` for the sink.
    pub(crate) security: Option<RawSecurity>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTopicSpec {
    partitions: Option<i64>,
    replication_factor: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPlugin {
    path: Option<PathBuf>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    max_memory_mb: Option<i64>,
    timeout_ms: Option<i64>,
    max_outputs_per_record: Option<i64>,
    max_batch_output_mb: Option<i64>,
    max_state_mb_per_partition: Option<i64>,
    watch: Option<bool>,
    provenance_header: Option<String>,
    /// The directory a component named by an admin swap request must be in.
    allowed_dir: Option<PathBuf>,
    #[serde(default)]
    self_test: Vec<RawSelfTest>,
    #[serde(default)]
    rollback: RawRollback,
    #[serde(default)]
    sandbox: super::sandbox::RawSandbox,
}

#[derive(Debug, Default, Deserialize)]
struct RawSelfTest {
    key: Option<String>,
    value: Option<String>,
    expect_values: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRollback {
    window_ms: Option<i64>,
    max_error_rate: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCheckpoint {
    pub(crate) interval_ms: Option<i64>,
    pub(crate) min_pause_ms: Option<i64>,
    record_attempts: Option<i64>,
}

/// Parses TOML text. A syntax or type error is returned as is (it names its line);
/// unknown keys are collected and reported with the other problems.
pub(crate) fn parse_toml(text: &str) -> Result<(RawConfig, Vec<Problem>), String> {
    let deserializer = toml::de::Deserializer::parse(text).map_err(|e| syntax_error(text, &e))?;
    let mut unknown = Vec::new();
    let mut raw: RawConfig =
        serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string()))
            .map_err(|e| syntax_error(text, &e))?;
    raw.unknown = unknown;
    Ok((raw, Vec::new()))
}

/// A TOML error as its position and message. Not toml's own text, which quotes the
/// line: that line may hold a secret of a `kafka` table, or be megabytes long.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    let position = error.span().map(|span| {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!("line {line}, column {column}: ")
    });
    format!(
        "{}{}",
        position.unwrap_or_default(),
        error.message().trim_end()
    )
}

/// Collects problems against key paths, renamed for imported formats.
struct Checker<'a> {
    problems: &'a mut Vec<Problem>,
    origin: &'a HashMap<&'static str, String>,
}

impl Checker<'_> {
    fn report(&mut self, path: &'static str, message: impl Into<String>) {
        let path = self
            .origin
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_string());
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

    /// Reports a problem at a key path built at run time (a key of a pass-through
    /// table), which no imported format renames.
    fn report_at(&mut self, path: String, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

    fn required(&mut self, path: &'static str, value: &Option<String>) -> String {
        match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => v.to_string(),
            Some(_) => {
                self.report(path, "must not be empty");
                String::new()
            }
            None => {
                self.report(path, "missing; this key is required");
                String::new()
            }
        }
    }

    fn range(
        &mut self,
        path: &'static str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.report(path, format!("{v} is out of range; use {min} to {max}"));
                default
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        path: &'static str,
        value: Option<&str>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(value) = value else { return default };
        match choices.iter().find(|(name, _)| *name == value) {
            Some((_, choice)) => *choice,
            None => {
                let names: Vec<_> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
                self.report(
                    path,
                    format!("`{value}` is not one of {}", names.join(", ")),
                );
                default
            }
        }
    }
}

/// A `source.kafka` setting that would undo what Sluice's checkpoints and rebalance
/// handling rely on, and why.
fn refused_source_setting(key: &str, value: &str) -> Option<&'static str> {
    match key {
        // `auto.commit.enable` is librdkafka's alias of `enable.auto.commit`.
        "enable.auto.commit"
        | "auto.commit.enable"
        | "enable.auto.offset.store"
        | "auto.commit.interval.ms" => Some(
            "Sluice commits offsets itself, at checkpoints, once their outputs are acknowledged; remove it",
        ),
        "group.id" => Some("use source.group_id"),
        "bootstrap.servers" | "metadata.broker.list" => Some("use source.bootstrap_servers"),
        "partition.assignment.strategy" if value.contains("cooperative") => Some(
            "cooperative rebalancing is not supported: Sluice hands partitions over in eager rebalances; use `range` or `roundrobin`",
        ),
        "group.protocol" if value.trim() != "classic" => {
            Some("only the `classic` group protocol is supported")
        }
        _ => None,
    }
}

/// A `sink.kafka` setting that would undo Sluice's delivery guarantees, and why.
fn refused_sink_setting(key: &str, value: &str) -> Option<&'static str> {
    match key {
        "bootstrap.servers" | "metadata.broker.list" => Some("use sink.bootstrap_servers"),
        "transactional.id" => {
            Some("Sluice sets it with `delivery = \"exactly-once\"` (see --instance); remove it")
        }
        "enable.idempotence" if value != "true" => Some(
            "the producer must be idempotent, or a retry could write a record twice or out of order",
        ),
        "acks" | "request.required.acks" if !matches!(value, "all" | "-1") => {
            Some("must be `all`: a checkpoint commits only what every in-sync replica holds")
        }
        _ => None,
    }
}

fn scalar_map(
    values: &BTreeMap<String, toml::Value>,
    path: &'static str,
    checker: &mut Checker<'_>,
) -> Vec<(String, String)> {
    values
        .iter()
        .filter_map(|(key, value)| match value {
            toml::Value::String(s) => Some((key.clone(), s.clone())),
            toml::Value::Integer(i) => Some((key.clone(), i.to_string())),
            toml::Value::Float(f) => Some((key.clone(), f.to_string())),
            toml::Value::Boolean(b) => Some((key.clone(), b.to_string())),
            _ => {
                checker.report(path, format!("`{key}` must be a string, number or boolean"));
                None
            }
        })
        .collect()
}

impl RawSource {
    /// `source.startup` and the keys that go with it.
    fn check_startup(&self, c: &mut Checker<'_>) -> Startup {
        let mode = self.startup.as_deref();
        let startup_kind = c.choice(
            "source.startup",
            mode,
            "earliest",
            &[
                ("earliest", "earliest"),
                ("latest", "latest"),
                ("group-offsets", "group-offsets"),
                ("timestamp", "timestamp"),
            ],
        );
        let fallback = c.choice(
            "source.startup_fallback",
            self.startup_fallback.as_deref(),
            Fallback::Earliest,
            &[
                ("earliest", Fallback::Earliest),
                ("latest", Fallback::Latest),
                ("fail", Fallback::Fail),
            ],
        );
        if self.startup_fallback.is_some() && startup_kind != "group-offsets" {
            c.report(
                "source.startup_fallback",
                "only applies to `startup = \"group-offsets\"`",
            );
        }
        let startup = match startup_kind {
            "latest" => Startup::Latest,
            "group-offsets" => Startup::GroupOffsets { fallback },
            "timestamp" => match self.startup_timestamp_ms {
                Some(millis) if millis >= 0 => Startup::Timestamp { millis },
                Some(millis) => {
                    c.report(
                        "source.startup_timestamp_ms",
                        format!("{millis} is negative; give milliseconds since the Unix epoch"),
                    );
                    Startup::Earliest
                }
                None => {
                    c.report("source.startup_timestamp_ms", "missing; `startup = \"timestamp\"` needs milliseconds since the Unix epoch");
                    Startup::Earliest
                }
            },
            _ => Startup::Earliest,
        };
        if self.startup_timestamp_ms.is_some() && startup_kind != "timestamp" {
            c.report(
                "source.startup_timestamp_ms",
                "only applies to `startup = \"timestamp\"`",
            );
        }
        startup
    }
}

impl RawSink {
    /// The outputs' and the dead-letter topic's names: not empty, and failed records
    /// never go back to the source topic.
    fn check_topic_names(&self, c: &mut Checker<'_>, source: &SourceConfig, sink_bootstrap: &str) {
        let (bootstrap, topic) = (&source.bootstrap_servers, &source.topic);
        for (name, topic) in &self.outputs {
            if topic.trim().is_empty() {
                c.report(
                    "sink.outputs",
                    format!("output `{name}` has an empty topic name"),
                );
            }
        }
        if let Some(dead_letter) = &self.dead_letter_topic {
            if dead_letter.trim().is_empty() {
                c.report(
                    "sink.dead_letter_topic",
                    "empty topic name; name a topic, or leave the key out to stop at a failed record",
                );
            } else if dead_letter == topic && sink_bootstrap == *bootstrap {
                c.report(
                    "sink.dead_letter_topic",
                    format!(
                        "`{dead_letter}` is the source topic: failed records would come back to the plugin, and fail again, for ever; name another topic"
                    ),
                );
            }
        }
    }
}

impl RawPlugin {
    /// `plugin.allowed_dir`, resolved now, so that a candidate's resolved path can be
    /// compared with it.
    fn check_allowed_dir(&self, c: &mut Checker<'_>) -> Option<PathBuf> {
        self.allowed_dir
            .as_ref()
            .and_then(|dir| match std::fs::canonicalize(dir) {
                Ok(resolved) if resolved.is_dir() => Some(resolved),
                Ok(_) => {
                    c.report("plugin.allowed_dir", "is not a directory");
                    None
                }
                Err(error) => {
                    c.report(
                        "plugin.allowed_dir",
                        format!("cannot resolve it: {error}; name an existing directory"),
                    );
                    None
                }
            })
    }
}

impl RawRollback {
    /// `[plugin.rollback]`: when a new version is reverted.
    fn check(&self, c: &mut Checker<'_>) -> Rollback {
        let window_ms = c.range(
            "plugin.rollback.window_ms",
            self.window_ms,
            60_000,
            0,
            86_400_000,
        );
        let max_error_rate = match self.max_error_rate {
            None => 0.05,
            Some(rate) if (0.0..=1.0).contains(&rate) => rate,
            Some(rate) => {
                c.report(
                    "plugin.rollback.max_error_rate",
                    format!("{rate} is out of range; use 0 to 1"),
                );
                0.05
            }
        };
        Rollback {
            window: Duration::from_millis(window_ms as u64),
            max_error_rate,
        }
    }
}

/// Refuses a `plugin.timeout_ms` the group's poll interval cannot wait for: a batch
/// runs at most twice (as a whole, then record by record sharing one budget), and the
/// consumer is not polled meanwhile.
fn check_timeout_within_poll_interval(
    c: &mut Checker<'_>,
    timeout_ms: i64,
    source_kafka: &BTreeMap<String, String>,
) {
    let max_poll_interval_ms = source_kafka
        .iter()
        .find(|(key, _)| *key == "max.poll.interval.ms")
        .and_then(|(_, value)| value.parse::<i64>().ok())
        .unwrap_or(DEFAULT_MAX_POLL_INTERVAL_MS);
    if 2 * timeout_ms + TURN_SLACK_MS > max_poll_interval_ms {
        c.report(
            "plugin.timeout_ms",
            format!(
                "a batch may take twice {timeout_ms} ms (a run, then a run record by record), \
                 and the group takes a worker's partitions away after source.kafka.max.poll.interval.ms \
                 ({max_poll_interval_ms} ms) without a poll; lower plugin.timeout_ms to at most {} \
                 or raise max.poll.interval.ms",
                (max_poll_interval_ms - TURN_SLACK_MS) / 2
            ),
        );
    }
}

impl RawConfig {
    /// Checks everything, appending every problem to `problems`. Returns a config
    /// only when the structure could be built; callers must also check `problems`.
    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) -> Option<Config> {
        let mut c = Checker {
            problems,
            origin: &self.origin,
        };
        for path in &self.unknown {
            c.problems.push(Problem {
                path: path.clone(),
                message: "unknown key; check its spelling and section".into(),
            });
        }
        match self.version {
            None => c.report(
                "version",
                format!("missing; start the file with `version = {CONFIG_VERSION}`"),
            ),
            Some(v) if v != CONFIG_VERSION => c.report(
                "version",
                format!("version {v} is not supported; this Sluice reads version {CONFIG_VERSION}"),
            ),
            Some(_) => {}
        }

        let source = self.check_source(&mut c);
        let sink = self.check_sink(&mut c, &source);
        let plugin = self.check_plugin(&mut c, &source);
        let checkpoint = self.check_checkpoint(&mut c);
        let parallelism = c.range("parallelism", self.parallelism, 1, 1, MAX_PARALLELISM);
        let delivery = self.check_delivery(&mut c, &source, &sink, &plugin, &checkpoint);
        Some(Config {
            delivery,
            parallelism: parallelism as usize,
            source,
            sink,
            plugin,
            checkpoint,
        })
    }

    /// `[source]`: where records come from and how reading starts.
    fn check_source(&self, c: &mut Checker<'_>) -> SourceConfig {
        let s = &self.source;
        let bootstrap = c.required("source.bootstrap_servers", &s.bootstrap_servers);
        let topic = c.required("source.topic", &s.topic);
        let group_id = c.required("source.group_id", &s.group_id);
        let startup = s.check_startup(c);
        let batch_max_records = c.range(
            "source.batch_max_records",
            s.batch_max_records,
            1000,
            1,
            100_000,
        );
        let connect_timeout_ms = c.range(
            "source.connect_timeout_ms",
            s.connect_timeout_ms,
            10_000,
            100,
            600_000,
        );
        let source_kafka = scalar_map(&s.kafka, "source.kafka", c);
        for (key, value) in &source_kafka {
            if let Some(reason) = refused_source_setting(key, value) {
                c.report_at(format!("source.kafka.{key}"), reason);
            }
        }
        let source_security = super::security::for_side(
            "source",
            &s.security,
            &self.security,
            &bootstrap,
            c.problems,
        );
        super::security::check_pass_through("source.kafka", s.kafka.keys(), c.problems);
        super::security::check_with_librdkafka("source.kafka", &source_kafka, c.problems);

        SourceConfig {
            bootstrap_servers: bootstrap,
            topic,
            group_id,
            startup,
            batch_max_records: batch_max_records as usize,
            connect_timeout: Duration::from_millis(connect_timeout_ms as u64),
            kafka: source_kafka.into_iter().collect(),
            security: source_security,
        }
    }

    /// `[sink]`: where outputs, failed records and state changes go.
    fn check_sink(&self, c: &mut Checker<'_>, source: &SourceConfig) -> SinkConfig {
        let k = &self.sink;
        let sink_bootstrap = k
            .bootstrap_servers
            .clone()
            .unwrap_or_else(|| source.bootstrap_servers.clone());
        let sink_topic = c.required("sink.topic", &k.topic);
        let partitioning = c.choice(
            "sink.partitioning",
            k.partitioning.as_deref(),
            Partitioning::Same,
            &[
                ("same", Partitioning::Same),
                ("key-hash", Partitioning::KeyHash),
                ("default", Partitioning::Default),
            ],
        );
        let create_topic = k.create_topic.as_ref().map(|spec| TopicSpec {
            partitions: spec
                .partitions
                .map(|p| c.range("sink.create_topic.partitions", Some(p), 1, 1, 100_000) as i32),
            replication_factor: c.range(
                "sink.create_topic.replication_factor",
                spec.replication_factor,
                1,
                1,
                32,
            ) as i32,
        });
        k.check_topic_names(c, source, &sink_bootstrap);
        let sink_kafka = scalar_map(&k.kafka, "sink.kafka", c);
        for (key, value) in &sink_kafka {
            if let Some(reason) = refused_sink_setting(key, value) {
                c.report_at(format!("sink.kafka.{key}"), reason);
            }
        }
        let sink_security = super::security::for_side(
            "sink",
            &k.security,
            &self.security,
            &sink_bootstrap,
            c.problems,
        );
        super::security::check_pass_through("sink.kafka", k.kafka.keys(), c.problems);
        super::security::check_with_librdkafka("sink.kafka", &sink_kafka, c.problems);

        SinkConfig {
            bootstrap_servers: sink_bootstrap,
            topic: sink_topic,
            partitioning,
            create_topic,
            outputs: self.sink.outputs.clone(),
            dead_letter_topic: self.sink.dead_letter_topic.clone(),
            kafka: sink_kafka.into_iter().collect(),
            security: sink_security,
        }
    }

    /// `[plugin]`: the transform, its limits and its swaps.
    fn check_plugin(&self, c: &mut Checker<'_>, source: &SourceConfig) -> PluginConfig {
        let p = &self.plugin;
        if let Some(path) = &p.path
            && !path.is_file()
        {
            c.report(
                "plugin.path",
                format!("{} does not exist or is not a file", path.display()),
            );
        }
        let plugin_config = scalar_map(&p.config, "plugin.config", c);
        let sandbox = p.sandbox.validate(c.problems);
        let allowed_dir = p.check_allowed_dir(c);
        let max_memory_mb = c.range("plugin.max_memory_mb", p.max_memory_mb, 256, 1, 4096);
        let timeout_ms = c.range("plugin.timeout_ms", p.timeout_ms, 10_000, 10, 600_000);
        let max_outputs_per_record = c.range(
            "plugin.max_outputs_per_record",
            p.max_outputs_per_record,
            1_000,
            1,
            1_000_000,
        );
        let max_batch_output_mb = c.range(
            "plugin.max_batch_output_mb",
            p.max_batch_output_mb,
            64,
            1,
            4096,
        );
        let max_state_mb_per_partition = c.range(
            "plugin.max_state_mb_per_partition",
            p.max_state_mb_per_partition,
            64,
            1,
            65_536,
        );
        check_timeout_within_poll_interval(c, timeout_ms, &source.kafka);
        if let Some(name) = &p.provenance_header
            && name.trim().is_empty()
        {
            c.report(
                "plugin.provenance_header",
                "must not be empty; remove it to add no header",
            );
        }
        let rollback = p.rollback.check(c);
        for test in &p.self_test {
            if test.key.is_none() && test.value.is_none() {
                c.report(
                    "plugin.self_test",
                    "a self-test record needs a `key` or a `value`",
                );
            }
        }

        PluginConfig {
            path: p.path.clone(),
            config: plugin_config,
            max_memory_bytes: (max_memory_mb as usize) << 20,
            call_timeout: Duration::from_millis(timeout_ms as u64),
            max_outputs_per_record: max_outputs_per_record as u32,
            max_batch_output_bytes: (max_batch_output_mb as u64) << 20,
            max_state_bytes_per_partition: (max_state_mb_per_partition as u64) << 20,
            watch: p.watch.unwrap_or(true),
            allowed_dir,
            provenance_header: p.provenance_header.clone(),
            self_tests: p
                .self_test
                .iter()
                .map(|t| SelfTest {
                    key: t.key.clone(),
                    value: t.value.clone(),
                    expect_values: t.expect_values.clone(),
                })
                .collect(),
            rollback,
            sandbox,
        }
    }

    /// `[checkpoint]`: how often progress is committed.
    fn check_checkpoint(&self, c: &mut Checker<'_>) -> CheckpointConfig {
        let k = &self.checkpoint;
        let interval_ms = c.range(
            "checkpoint.interval_ms",
            k.interval_ms,
            60_000,
            10,
            86_400_000,
        );
        // Managed Flink's 5 s, but never longer than the interval: a file that asks
        // for a checkpoint every second gets one every second.
        let min_pause_ms = c.range(
            "checkpoint.min_pause_ms",
            k.min_pause_ms,
            5_000.min(interval_ms),
            0,
            86_400_000,
        );
        let record_attempts = c.range("checkpoint.record_attempts", k.record_attempts, 5, 1, 100);

        CheckpointConfig {
            interval: Duration::from_millis(interval_ms as u64),
            min_pause: Duration::from_millis(min_pause_ms as u64),
            record_attempts: record_attempts as u32,
        }
    }

    /// `delivery`, and what it asks of the other sections.
    fn check_delivery(
        &self,
        c: &mut Checker<'_>,
        source: &SourceConfig,
        sink: &SinkConfig,
        plugin: &PluginConfig,
        checkpoint: &CheckpointConfig,
    ) -> Delivery {
        let (bootstrap, sink_bootstrap) = (&source.bootstrap_servers, &sink.bootstrap_servers);
        let interval_ms = checkpoint.interval.as_millis() as i64;
        let timeout_ms = plugin.call_timeout.as_millis() as i64;
        let delivery = c.choice(
            "delivery",
            self.delivery.as_deref(),
            Delivery::AtLeastOnce,
            &[
                ("at-least-once", Delivery::AtLeastOnce),
                ("exactly-once", Delivery::ExactlyOnce),
            ],
        );
        if delivery == Delivery::ExactlyOnce {
            if sink_bootstrap != bootstrap {
                c.report(
                    "delivery",
                    "`exactly-once` commits the source offsets in the sink's transactions, so source and sink must be the same cluster (same bootstrap_servers)",
                );
            }
            let transaction_ms = interval_ms + 2 * timeout_ms + TURN_SLACK_MS;
            if interval_ms <= MAX_TRANSACTION_INTERVAL_MS
                && transaction_ms > MAX_TRANSACTION_TIMEOUT_MS
            {
                c.report(
                    "plugin.timeout_ms",
                    format!(
                        "with `delivery = \"exactly-once\"` a transaction stays open for checkpoint.interval_ms \
                         ({interval_ms} ms) and at most two runs of a batch (2 × {timeout_ms} ms), longer than \
                         brokers let a transaction live (15 minutes by default); lower plugin.timeout_ms or \
                         checkpoint.interval_ms"
                    ),
                );
            }
            if interval_ms > MAX_TRANSACTION_INTERVAL_MS {
                c.report(
                    "checkpoint.interval_ms",
                    format!(
                        "with `delivery = \"exactly-once\"` a checkpoint is one Kafka transaction, which brokers abort after 15 minutes by default; use at most {MAX_TRANSACTION_INTERVAL_MS}"
                    ),
                );
            }
        }

        delivery
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let (raw, mut problems) = parse_toml(text).expect("parses");
        raw.validate(&mut problems);
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_minimal_file_is_valid_and_takes_the_documented_defaults() {
        let text = r#"
            version = 1
            [source]
            bootstrap_servers = "127.0.0.1:9092"
            topic = "stocks-in"
            group_id = "g"
            [sink]
            topic = "stocks-out"
        "#;
        let (raw, mut problems) = parse_toml(text).unwrap();
        let config = raw.validate(&mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.sink.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.sink.partitioning, Partitioning::Same);
        assert_eq!(config.source.startup, Startup::Earliest);
        assert_eq!(config.checkpoint.interval, Duration::from_secs(60));
        assert_eq!(config.checkpoint.min_pause, Duration::from_secs(5));
        assert_eq!(config.checkpoint.record_attempts, 5);
        assert!(config.plugin.path.is_none());
    }

    #[test]
    fn the_default_pause_between_checkpoints_is_never_longer_than_the_interval() {
        let file = |checkpoint: &str| {
            format!(
                "version = 1\n[source]\nbootstrap_servers = \"127.0.0.1:9092\"\ntopic = \"in\"\n\
                 group_id = \"g\"\n[sink]\ntopic = \"out\"\n[checkpoint]\n{checkpoint}\n"
            )
        };
        let checkpoint = |text: &str| {
            let (raw, mut problems) = parse_toml(&file(text)).unwrap();
            let config = raw.validate(&mut problems).unwrap();
            assert!(problems.is_empty(), "{problems:?}");
            (config.checkpoint.interval, config.checkpoint.min_pause)
        };
        // The README's exactly-once advice: a checkpoint every second, in fact.
        assert_eq!(
            checkpoint("interval_ms = 1000"),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        assert_eq!(
            checkpoint("interval_ms = 30000"),
            (Duration::from_secs(30), Duration::from_secs(5))
        );
        // A pause the file sets is kept, even a longer one.
        assert_eq!(
            checkpoint("interval_ms = 1000\nmin_pause_ms = 3000"),
            (Duration::from_secs(1), Duration::from_secs(3))
        );
    }

    #[test]
    fn a_batch_that_could_outlive_the_poll_interval_or_the_transaction_is_refused() {
        let file = |top: &str, source: &str, plugin: &str| {
            format!(
                "version = 1\n{top}\n[source]\nbootstrap_servers = \"127.0.0.1:9092\"\ntopic = \"in\"\n\
                 group_id = \"g\"\n{source}\n[sink]\ntopic = \"out\"\n[plugin]\n{plugin}\n"
            )
        };
        // Twice 200 s and the slack is more than librdkafka's 300 s poll interval.
        let found = problems(&file("", "", "timeout_ms = 200000"));
        assert!(
            found.iter().any(|p| p.starts_with("plugin.timeout_ms:")
                && p.contains("max.poll.interval.ms (300000 ms)")
                && p.contains("at most 145000")),
            "{found:?}"
        );
        // Raising the poll interval allows it.
        let found = problems(&file(
            "",
            "[source.kafka]\n\"max.poll.interval.ms\" = 500000",
            "timeout_ms = 200000",
        ));
        assert!(found.is_empty(), "{found:?}");
        // Exactly-once: a 300 s interval and two runs of 296 s outlive a transaction.
        let found = problems(&file(
            "delivery = \"exactly-once\"\n[checkpoint]\ninterval_ms = 300000",
            "[source.kafka]\n\"max.poll.interval.ms\" = 900000",
            "timeout_ms = 296000",
        ));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("plugin.timeout_ms:") && p.contains("15 minutes")),
            "{found:?}"
        );
        // The defaults are well within both.
        assert!(problems(&file("delivery = \"exactly-once\"", "", "")).is_empty());
    }

    #[test]
    fn every_mistake_is_reported_with_its_key_path() {
        let text = r#"
            version = 1
            [source]
            bootstrap_servers = "127.0.0.1:9092"
            startup = "earlest"
            startup_timestamp_ms = 5
            grup_id = "typo"
            [sink]
            topic = "out"
            partitioning = "round-robin"
            [checkpoint]
            interval_ms = 0
            [plugin.config]
            nested = { a = 1 }
        "#;
        let found = problems(text);
        let expected = [
            "source.grup_id: unknown key",
            "source.topic: missing",
            "source.group_id: missing",
            "source.startup: `earlest` is not one of `earliest`, `latest`, `group-offsets`, `timestamp`",
            "source.startup_timestamp_ms: only applies",
            "sink.partitioning: `round-robin` is not one of",
            "checkpoint.interval_ms: 0 is out of range",
            "plugin.config: `nested` must be a string",
        ];
        for want in expected {
            assert!(
                found.iter().any(|p| p.starts_with(want)),
                "missing {want:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }

    #[test]
    fn a_dead_letter_topic_must_be_named_and_not_be_the_source_topic() {
        let with = |dead_letter: &str, sink_servers: &str| {
            format!(
                r#"
                version = 1
                [source]
                bootstrap_servers = "127.0.0.1:9092"
                topic = "stocks-in"
                group_id = "g"
                [sink]
                {sink_servers}
                topic = "stocks-out"
                dead_letter_topic = "{dead_letter}"
            "#
            )
        };
        let (raw, mut found) = parse_toml(&with("stocks-failed", "")).unwrap();
        let config = raw.validate(&mut found).unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(
            config.sink.dead_letter_topic.as_deref(),
            Some("stocks-failed")
        );

        let found = problems(&with(" ", ""));
        assert!(
            found[0].starts_with("sink.dead_letter_topic: empty topic name"),
            "{found:?}"
        );
        let found = problems(&with("stocks-in", ""));
        assert!(
            found[0].starts_with("sink.dead_letter_topic: `stocks-in` is the source topic"),
            "{found:?}"
        );
        // On another cluster, a topic of the same name is another topic.
        let other = r#"bootstrap_servers = "10.0.0.1:9092""#;
        assert!(problems(&with("stocks-in", other)).is_empty());
    }

    #[test]
    fn a_missing_version_is_reported() {
        let found = problems("[source]\ntopic = \"a\"\n");
        assert!(
            found.iter().any(|p| p.starts_with("version: missing")),
            "{found:?}"
        );
    }

    #[test]
    fn exactly_once_needs_one_cluster_and_a_bounded_interval() {
        let text = r#"
            version = 1
            delivery = "exactly-once"
            [source]
            bootstrap_servers = "a:9092"
            topic = "in"
            group_id = "g"
            [sink]
            bootstrap_servers = "b:9092"
            topic = "out"
            [checkpoint]
            interval_ms = 600000
        "#;
        let found = problems(text);
        assert!(
            found.iter().any(|p| p.starts_with(
                "delivery: `exactly-once` commits the source offsets in the sink's transactions"
            )),
            "{found:#?}"
        );
        assert!(
            found.iter().any(
                |p| p.starts_with("checkpoint.interval_ms: with `delivery = \"exactly-once\"`")
            ),
            "{found:#?}"
        );
        assert_eq!(found.len(), 2, "{found:#?}");
        let found = problems(&text.replace("exactly-once", "at-most-once"));
        assert!(
            found.iter().any(|p| p.starts_with(
                "delivery: `at-most-once` is not one of `at-least-once`, `exactly-once`"
            )),
            "{found:#?}"
        );
    }

    #[test]
    fn parallelism_is_between_one_and_the_maximum() {
        let text = |parallelism: &str| {
            format!(
                "version = 1\n{parallelism}\n[source]\nbootstrap_servers = \"a:9092\"\ntopic = \"in\"\ngroup_id = \"g\"\n[sink]\ntopic = \"out\"\n"
            )
        };
        assert!(problems(&text("parallelism = 4")).is_empty());
        for wrong in ["parallelism = 0", "parallelism = 65"] {
            let found = problems(&text(wrong));
            assert_eq!(
                found,
                [format!(
                    "parallelism: {} is out of range; use 1 to 64",
                    &wrong["parallelism = ".len()..]
                )],
                "{wrong}"
            );
        }
    }

    #[test]
    fn client_settings_that_would_undo_the_guarantees_are_refused() {
        let text = r#"
            version = 1
            [source]
            bootstrap_servers = "a:9092"
            topic = "in"
            group_id = "g"
            [source.kafka]
            "enable.auto.commit" = "true"
            "group.id" = "other"
            "partition.assignment.strategy" = "cooperative-sticky"
            "fetch.min.bytes" = "1"
            [sink]
            topic = "out"
            [sink.kafka]
            "acks" = "1"
            "enable.idempotence" = false
            "linger.ms" = "5"
        "#;
        let found = problems(text);
        for expected in [
            "source.kafka.enable.auto.commit: Sluice commits offsets itself",
            "source.kafka.group.id: use source.group_id",
            "source.kafka.partition.assignment.strategy: cooperative rebalancing is not supported",
            "sink.kafka.acks: must be `all`",
            "sink.kafka.enable.idempotence: the producer must be idempotent",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{expected}: {found:#?}"
            );
        }
        assert_eq!(found.len(), 5, "{found:#?}");
        // What keeps the guarantees is accepted.
        let fine = text
            .replace("\"enable.auto.commit\" = \"true\"", "")
            .replace("\"group.id\" = \"other\"", "")
            .replace("cooperative-sticky", "roundrobin")
            .replace("\"acks\" = \"1\"", "\"acks\" = \"all\"")
            .replace(
                "\"enable.idempotence\" = false",
                "\"enable.idempotence\" = true",
            );
        assert!(problems(&fine).is_empty(), "{:#?}", problems(&fine));
    }
}
