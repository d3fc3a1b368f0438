//! The changelog topic: where keyed state is checkpointed, and how it is restored.
//!
//! One compacted topic per application, named after the consumer group
//! ([`topic_name`]), with as many partitions as the source topic: changelog partition
//! `p` holds the state of input partition `p`, keyed by the state key, the latest
//! value winning and a null value deleting. It lives on the sink cluster because the
//! sink producer writes it (in exactly-once mode, inside the checkpoint's
//! transaction). Restoring reads a partition from its beginning to its end with
//! `read_committed`, so state from an aborted transaction is never restored.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::SinkConfig;
use crate::source::kafka::topic_partitions;

/// How long restoring one assignment's state may take before the host gives up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// The changelog topic of the application whose consumer group is `group_id`.
pub fn topic_name(group_id: &str) -> String {
    format!("{group_id}-state-changelog")
}

/// Checks that the changelog topic exists with `partitions` partitions, creating it
/// (compacted) when it is absent.
pub fn ensure_topic(
    sink: &SinkConfig,
    topic: &str,
    partitions: i32,
    connect_timeout: Duration,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client_config(sink)
        .create()
        .context("creating the Kafka client for the state changelog")?;
    let found = topic_partitions(
        consumer.client(),
        topic,
        &sink.bootstrap_servers,
        connect_timeout,
        "state changelog",
    )?;
    if found == 0 {
        crate::sink::kafka::create_topic(
            &sink.bootstrap_servers,
            topic,
            partitions,
            // -1: the broker's default replication factor, unless the sink's is given.
            sink.create_topic.map_or(-1, |spec| spec.replication_factor),
            &[("cleanup.policy", "compact")],
            runtime,
        )?;
        tracing::info!(topic, partitions, "State changelog topic created.");
    } else if found != partitions {
        bail!(
            "state changelog topic `{topic}` has {found} partitions but the source topic has {partitions}; \
             state is partitioned like the input, so delete `{topic}` (its state is then lost) or give the \
             pipeline another source.group_id"
        );
    }
    Ok(())
}

fn client_config(sink: &SinkConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &sink.bootstrap_servers);
    for (key, value) in &sink.kafka {
        client.set(key, value);
    }
    client
}

/// The restore reader's callbacks: reaching the end of a partition is the goal here,
/// not an error worth logging.
pub struct RestoreContext;

impl ClientContext for RestoreContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log("state-restore", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(client = "state-restore", %error, "Kafka client error: {reason}");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Reads changelog partitions back into maps.
pub struct Restorer {
    consumer: BaseConsumer<RestoreContext>,
    topic: String,
}

impl Restorer {
    pub fn new(sink: &SinkConfig, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer<RestoreContext> = client_config(sink)
            // Assigned, never subscribed: no group, nothing committed.
            .set("group.id", format!("{topic}-restore"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // The end of a partition is reported after one fetch wait: keep it short.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(RestoreContext)
            .context("creating the state changelog reader")?;
        Ok(Restorer {
            consumer,
            topic: topic.to_string(),
        })
    }

    /// The committed state of each of `partitions`.
    pub fn restore(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, Values>> {
        let mut restored: HashMap<i32, Values> =
            partitions.iter().map(|&p| (p, Values::new())).collect();
        if partitions.is_empty() {
            return Ok(restored);
        }
        // Empty partitions (a new application, or nothing stateful yet) need no read.
        let mut tpl = TopicPartitionList::new();
        let mut to_read = Vec::new();
        for &partition in partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, partition, RESTORE_TIMEOUT)
                .with_context(|| {
                    format!(
                        "reading the end offsets of state changelog `{}`",
                        self.topic
                    )
                })?;
            if high > low {
                tpl.add_partition_offset(&self.topic, partition, Offset::Beginning)?;
                to_read.push(partition);
            }
        }
        if to_read.is_empty() {
            return Ok(restored);
        }
        self.consumer
            .assign(&tpl)
            .with_context(|| format!("reading state changelog `{}`", self.topic))?;
        let result = self.read_to_end(&to_read, &mut restored);
        let _ = self.consumer.unassign();
        result?;
        Ok(restored)
    }

    fn read_to_end(
        &self,
        partitions: &[i32],
        restored: &mut HashMap<i32, Values>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        let mut pending: Vec<i32> = partitions.to_vec();
        while !pending.is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "restoring state from changelog `{}` partitions {pending:?} did not finish within {} s; \
                     check that the sink cluster is reachable",
                    self.topic,
                    RESTORE_TIMEOUT.as_secs()
                );
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(message)) => {
                    let values = restored.entry(message.partition()).or_default();
                    let key = message.key().unwrap_or_default().to_vec();
                    match message.payload() {
                        Some(value) => values.insert(key, value.to_vec()),
                        None => values.remove(&key),
                    };
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    pending.retain(|&p| p != partition);
                }
                Some(Err(error)) => {
                    bail!("reading state changelog `{}`: {error}", self.topic)
                }
            }
        }
        Ok(())
    }
}

/// One partition's state.
pub type Values = HashMap<Vec<u8>, Vec<u8>>;
