//! Import of a Managed Service for Apache Flink `application_properties.json`, so a
//! job moves to Sluice with the file it already has.
//!
//! The file is a JSON array of `{"PropertyGroupId": ..., "PropertyMap": {...}}` with
//! string values. Read here: `consumer.config.0` (`topic.name`, `bootstrap.servers`,
//! `startup.mode`, optional `group.id`, `startup.timestamp-millis`),
//! `producer.config.0` (`topic.name`, `bootstrap.servers`), and checkpoint settings
//! under their Flink or Managed Flink names in `checkpoint.config`. A bootstrap address
//! on port 9098 means AWS MSK IAM authentication, as in the original application. Other groups
//! (`kinesis.analytics.flink.run.options` holds packaging options) are ignored.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::Problem;
use super::raw::RawConfig;
use super::security::{self, RawSecurity};

const CONSUMER: &str = "consumer.config.0";
const PRODUCER: &str = "producer.config.0";
const CHECKPOINT: &str = "checkpoint.config";
/// The consumer group of the original Flink job.
const DEFAULT_GROUP: &str = "source-group";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Group {
    property_group_id: String,
    property_map: BTreeMap<String, String>,
}

/// Maps the property groups onto the TOML structure, with problem paths that name the
/// original property (`consumer.config.0/topic.name`).
pub(crate) fn parse(
    text: &str,
    bootstrap_override: Option<&str>,
) -> Result<(RawConfig, Vec<Problem>), String> {
    let groups: Vec<Group> = serde_json::from_str(text).map_err(|e| {
        format!("not a Managed Flink properties file (a JSON array of PropertyGroupId/PropertyMap objects): {e}")
    })?;
    let mut by_id: HashMap<&str, &BTreeMap<String, String>> = HashMap::new();
    for group in &groups {
        by_id.insert(group.property_group_id.as_str(), &group.property_map);
    }
    let empty = BTreeMap::new();
    let consumer = by_id.get(CONSUMER).copied().unwrap_or(&empty);
    let producer = by_id.get(PRODUCER).copied().unwrap_or(&empty);
    let checkpoint = by_id.get(CHECKPOINT).copied().unwrap_or(&empty);

    let mut problems = Vec::new();
    let mut raw = RawConfig {
        version: Some(super::CONFIG_VERSION),
        origin: origins(),
        ..RawConfig::default()
    };
    let override_servers = bootstrap_override
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    map_consumer(&mut raw, consumer, override_servers.clone(), &mut problems);
    raw.sink.bootstrap_servers =
        override_servers.or_else(|| producer.get("bootstrap.servers").cloned());
    raw.sink.topic = producer.get("topic.name").cloned();
    map_msk_iam(&mut raw);
    map_checkpoint(&mut raw, checkpoint, &mut problems);
    Ok((raw, problems))
}

/// A property's name in problems: `consumer.config.0/topic.name`.
fn name(group: &str, key: &str) -> String {
    format!("{group}/{key}")
}

/// The properties the TOML keys come from, for the problems' paths.
fn origins() -> HashMap<&'static str, String> {
    HashMap::from([
        ("source.topic", name(CONSUMER, "topic.name")),
        (
            "source.bootstrap_servers",
            name(CONSUMER, "bootstrap.servers"),
        ),
        ("source.group_id", name(CONSUMER, "group.id")),
        ("source.startup", name(CONSUMER, "startup.mode")),
        (
            "source.startup_timestamp_ms",
            name(CONSUMER, "startup.timestamp-millis"),
        ),
        ("sink.topic", name(PRODUCER, "topic.name")),
        (
            "checkpoint.interval_ms",
            name(CHECKPOINT, "CheckpointInterval"),
        ),
        (
            "checkpoint.min_pause_ms",
            name(CHECKPOINT, "MinPauseBetweenCheckpoints"),
        ),
    ])
}

/// The consumer group's properties onto `[source]`; `override_servers` wins over its
/// `bootstrap.servers`.
fn map_consumer(
    raw: &mut RawConfig,
    consumer: &BTreeMap<String, String>,
    override_servers: Option<String>,
    problems: &mut Vec<Problem>,
) {
    raw.source.bootstrap_servers =
        override_servers.or_else(|| consumer.get("bootstrap.servers").cloned());
    raw.source.topic = consumer.get("topic.name").cloned();
    raw.source.group_id = Some(
        consumer
            .get("group.id")
            .cloned()
            .unwrap_or_else(|| DEFAULT_GROUP.into()),
    );
    // Flink's startup modes; committed progress wins over each, as when Flink restores.
    raw.source.startup = consumer.get("startup.mode").map(|mode| {
        match mode.as_str() {
            "earliest-offset" => "earliest",
            "latest-offset" => "latest",
            "group-offsets" => "group-offsets",
            "timestamp" => "timestamp",
            other => other,
        }
        .to_string()
    });
    if let Some(ts) = consumer.get("startup.timestamp-millis") {
        match ts.parse() {
            Ok(ms) => raw.source.startup_timestamp_ms = Some(ms),
            Err(_) => problems.push(Problem {
                path: name(CONSUMER, "startup.timestamp-millis"),
                message: format!("`{ts}` is not a number of milliseconds"),
            }),
        }
    }
}

/// As in the original job: a bootstrap address on MSK's IAM port means IAM auth.
fn map_msk_iam(raw: &mut RawConfig) {
    let iam = |servers: Option<&String>| servers.is_some_and(|s| security::uses_msk_iam_port(s));
    let sink_servers = raw
        .sink
        .bootstrap_servers
        .as_ref()
        .or(raw.source.bootstrap_servers.as_ref());
    match (
        iam(raw.source.bootstrap_servers.as_ref()),
        iam(sink_servers),
    ) {
        (true, true) => raw.security = Some(RawSecurity::msk_iam()),
        (true, false) => raw.source.security = Some(RawSecurity::msk_iam()),
        (false, true) => raw.sink.security = Some(RawSecurity::msk_iam()),
        (false, false) => {}
    }
}

/// The checkpoint group's properties (by their console or their Flink names) onto
/// `[checkpoint]`.
fn map_checkpoint(
    raw: &mut RawConfig,
    checkpoint: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) {
    for (field, keys) in [
        (
            &mut raw.checkpoint.interval_ms,
            ["CheckpointInterval", "execution.checkpointing.interval"],
        ),
        (
            &mut raw.checkpoint.min_pause_ms,
            [
                "MinPauseBetweenCheckpoints",
                "execution.checkpointing.min-pause",
            ],
        ),
    ] {
        for key in keys {
            if let Some(value) = checkpoint.get(key) {
                match parse_millis(value) {
                    Some(ms) => *field = Some(ms),
                    None => problems.push(Problem {
                        path: name(CHECKPOINT, key),
                        message: format!(
                            "`{value}` is not a duration; write milliseconds (`60000`) or `60 s`"
                        ),
                    }),
                }
            }
        }
    }
}

/// Milliseconds from `60000`, `60000 ms`, `60 s`, `60s` or `1 min`, as Flink accepts.
fn parse_millis(value: &str) -> Option<i64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: i64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" | "m" => 60_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::security::Sasl;
    use crate::config::{Partitioning, Startup};
    use std::time::Duration;

    const ORIGINAL: &str = r#"[
      {"PropertyGroupId": "kinesis.analytics.flink.run.options",
       "PropertyMap": {"python": "processor.py", "jarfile": "package/lib/job.jar"}},
      {"PropertyGroupId": "consumer.config.0",
       "PropertyMap": {"table.name": "source_table", "topic.name": "stocks-in",
                       "bootstrap.servers": "b-1.stocks.x1y2z3.c2.kafka.us-east-1.amazonaws.com:9098", "startup.mode": "earliest-offset"}},
      {"PropertyGroupId": "producer.config.0",
       "PropertyMap": {"table.name": "sink_table", "topic.name": "stocks-out",
                       "bootstrap.servers": "b-1.stocks.x1y2z3.c2.kafka.us-east-1.amazonaws.com:9098"}}
    ]"#;

    #[test]
    fn the_original_jobs_file_maps_onto_an_equivalent_pipeline() {
        let (raw, mut problems) = parse(ORIGINAL, None).unwrap();
        let config = raw.validate(&mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.source.topic, "stocks-in");
        assert_eq!(config.source.group_id, "source-group");
        assert_eq!(
            config.source.bootstrap_servers,
            "b-1.stocks.x1y2z3.c2.kafka.us-east-1.amazonaws.com:9098"
        );
        // Port 9098: IAM, with the region from the broker name, for both clients.
        for security in [&config.source.security, &config.sink.security] {
            assert_eq!(security.describe(), "SASL_SSL/AWS_MSK_IAM");
            let Some(Sasl::MskIam(iam)) = &security.sasl else {
                panic!("{security:?}")
            };
            assert_eq!(iam.region, "us-east-1");
        }
        assert_eq!(config.source.startup, Startup::Earliest);
        assert_eq!(config.sink.topic, "stocks-out");
        assert_eq!(config.sink.partitioning, Partitioning::Same);
        assert_eq!(config.checkpoint.interval, Duration::from_secs(60));
        assert_eq!(config.checkpoint.min_pause, Duration::from_secs(5));
    }

    #[test]
    fn bootstrap_servers_from_the_environment_win() {
        let (raw, mut problems) = parse(ORIGINAL, Some("127.0.0.1:9092")).unwrap();
        let config = raw.validate(&mut problems).unwrap();
        assert_eq!(config.source.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.sink.bootstrap_servers, "127.0.0.1:9092");
        // Not the IAM port: no authentication.
        assert_eq!(config.source.security.describe(), "PLAINTEXT");
        assert_eq!(config.sink.security.describe(), "PLAINTEXT");
    }

    #[test]
    fn flink_checkpoint_names_are_read() {
        let text = r#"[
          {"PropertyGroupId": "consumer.config.0", "PropertyMap": {"topic.name": "a", "bootstrap.servers": "h:1"}},
          {"PropertyGroupId": "producer.config.0", "PropertyMap": {"topic.name": "b"}},
          {"PropertyGroupId": "checkpoint.config", "PropertyMap": {"execution.checkpointing.interval": "10 s",
                                                                   "MinPauseBetweenCheckpoints": "500"}}
        ]"#;
        let (raw, mut problems) = parse(text, None).unwrap();
        let config = raw.validate(&mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.checkpoint.interval, Duration::from_secs(10));
        assert_eq!(config.checkpoint.min_pause, Duration::from_millis(500));
    }

    #[test]
    fn problems_name_the_original_property() {
        let text = r#"[{"PropertyGroupId": "consumer.config.0", "PropertyMap": {"startup.mode": "specific-offsets"}}]"#;
        let (raw, mut problems) = parse(text, None).unwrap();
        raw.validate(&mut problems);
        let found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        for want in [
            "consumer.config.0/topic.name: missing",
            "consumer.config.0/bootstrap.servers: missing",
            "consumer.config.0/startup.mode: `specific-offsets` is not one of",
            "producer.config.0/topic.name: missing",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(want)),
                "missing {want:?} in {found:#?}"
            );
        }
    }
}
