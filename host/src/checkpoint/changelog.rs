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
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::auth::ClientAuth;
use crate::config::SinkConfig;
use crate::kafka::{KafkaContext, Role, create_topic, topic_partitions};

/// How long restoring one assignment's state may take before the host gives up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a changelog partition may go without a leader (a topic just created, a
/// broker restarting) before the restore fails.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The changelog topic of the application whose consumer group is `group_id`.
pub(crate) fn topic_name(group_id: &str) -> String {
    format!("{group_id}-state-changelog")
}

/// Checks that the changelog topic exists with `partitions` partitions, creating it
/// (compacted) when it is absent.
pub(crate) fn ensure_topic(
    sink: &SinkConfig,
    topic: &str,
    partitions: i32,
    connect_timeout: Duration,
    runtime: &tokio::runtime::Handle,
    auth: &ClientAuth,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer<RestoreContext> = client_config(sink, auth)
        .create_with_context(KafkaContext::new(
            "state-restore",
            auth.clone(),
            RestoreRole,
        ))
        .context("creating the Kafka client for the state changelog")?;
    auth.install_token(consumer.client())?;
    let found = topic_partitions(
        consumer.client(),
        topic,
        &sink.bootstrap_servers,
        connect_timeout,
        "state changelog",
        &|| {
            let _ = consumer.poll(Duration::ZERO);
        },
        auth.failure(),
    )?;
    if found == 0 {
        create_topic(
            &sink.bootstrap_servers,
            topic,
            partitions,
            // -1: the broker's default replication factor, unless the sink's is given.
            sink.create_topic.map_or(-1, |spec| spec.replication_factor),
            &[("cleanup.policy", "compact")],
            runtime,
            auth,
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

fn client_config(sink: &SinkConfig, auth: &ClientAuth) -> ClientConfig {
    let mut client = ClientConfig::new();
    auth.apply(&mut client);
    client.set("bootstrap.servers", &sink.bootstrap_servers);
    for (key, value) in &sink.kafka {
        client.set(key, value);
    }
    client
}

/// The low and high offsets of a changelog partition, waiting out (within `timeout`)
/// a partition without a leader: the broker answers so for a topic it has just
/// created, and during a leader election.
fn watermarks(
    consumer: &BaseConsumer<RestoreContext>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(error) if is_leaderless(&error) && Instant::now() < deadline => {
                tracing::debug!(topic, partition, %error, "State changelog partition without a leader yet; retrying.");
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Whether `error` says a partition has no leader yet: the broker says so, or the
/// client's metadata does not list the partition yet (a topic created a moment ago,
/// or a broker that has just come back).
fn is_leaderless(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopic
        )
    )
}

/// Whether librdkafka says it ignores a producer setting given to a consumer.
fn is_producer_property_notice(facility: &str, message: &str) -> bool {
    facility == "CONFWARN" && message.contains("is a producer property")
}

/// The restore reader's callbacks: reaching the end of a partition is the goal here,
/// not an error worth logging.
struct RestoreRole;

/// The restore reader's context.
type RestoreContext = KafkaContext<RestoreRole>;

impl Role for RestoreRole {
    fn routine_log(&self, facility: &str, message: &str) -> bool {
        // `[sink.kafka]` is written for the producer; this reader takes it too (for
        // the connection settings in it) and ignoring its producer settings is right.
        is_producer_property_notice(facility, message)
    }

    fn expected_error(&self, error: &KafkaError) -> bool {
        // The end of a partition arrives as a client-wide error too
        // (`Global(PartitionEOF)`); for the restore reader it is the goal, not news.
        matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
    }
}

impl ConsumerContext for RestoreContext {}

/// Reads changelog partitions back into maps.
///
/// Each restore opens its own reader and closes it after: between rebalances nothing
/// reads the changelog, and an idle reader would keep connections (and, with MSK IAM,
/// a token nobody refreshes) open for nothing.
pub(crate) struct Restorer {
    client: ClientConfig,
    auth: ClientAuth,
    topic: String,
}

impl Restorer {
    pub(crate) fn new(sink: &SinkConfig, topic: &str, auth: &ClientAuth) -> anyhow::Result<Self> {
        let mut client = client_config(sink, auth);
        client
            // Assigned, never subscribed: no group, nothing committed.
            .set("group.id", format!("{topic}-restore"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // The end of a partition is reported after one fetch wait: keep it short.
            .set("fetch.wait.max.ms", "10");
        let restorer = Restorer {
            client,
            auth: auth.clone(),
            topic: topic.to_string(),
        };
        // Settings mistakes show now rather than at the first assignment.
        drop(restorer.reader()?);
        Ok(restorer)
    }

    fn reader(&self) -> anyhow::Result<BaseConsumer<RestoreContext>> {
        let consumer: BaseConsumer<RestoreContext> = self
            .client
            .create_with_context(KafkaContext::new(
                "state-restore",
                self.auth.clone(),
                RestoreRole,
            ))
            .context("creating the state changelog reader")?;
        self.auth.install_token(consumer.client())?;
        Ok(consumer)
    }

    /// The committed state of each of `partitions`.
    pub(crate) fn restore(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, Values>> {
        let mut restored: HashMap<i32, Values> =
            partitions.iter().map(|&p| (p, Values::new())).collect();
        if partitions.is_empty() {
            return Ok(restored);
        }
        let consumer = self.reader()?;
        // Empty partitions (a new application, or nothing stateful yet) need no read.
        let mut tpl = TopicPartitionList::new();
        let mut to_read = Vec::new();
        for &partition in partitions {
            let (low, high) = watermarks(&consumer, &self.topic, partition, LEADER_TIMEOUT)
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
        consumer
            .assign(&tpl)
            .with_context(|| format!("reading state changelog `{}`", self.topic))?;
        let result = self.read_to_end(&consumer, &to_read, &mut restored);
        let _ = consumer.unassign();
        result?;
        Ok(restored)
    }

    fn read_to_end(
        &self,
        consumer: &BaseConsumer<RestoreContext>,
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
            match consumer.poll(Duration::from_millis(200)) {
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
pub(crate) type Values = HashMap<Vec<u8>, Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_without_a_leader_is_waited_for_and_other_errors_are_not() {
        let metadata = |code| KafkaError::MetadataFetch(code);
        assert!(is_leaderless(&metadata(
            RDKafkaErrorCode::NotLeaderForPartition
        )));
        assert!(is_leaderless(&metadata(
            RDKafkaErrorCode::LeaderNotAvailable
        )));
        // librdkafka's own answer while its metadata lacks a topic just created.
        assert!(is_leaderless(&metadata(RDKafkaErrorCode::UnknownPartition)));
        assert!(!is_leaderless(&metadata(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_leaderless(&metadata(
            RDKafkaErrorCode::OperationTimedOut
        )));
    }

    #[test]
    fn only_the_notice_about_ignored_producer_settings_is_quieted() {
        assert!(is_producer_property_notice(
            "CONFWARN",
            "[thrd:app]: Configuration property linger.ms is a producer property and will be ignored by this consumer instance"
        ));
        assert!(!is_producer_property_notice(
            "CONFWARN",
            "[thrd:app]: Configuration property foo.bar is deprecated"
        ));
        assert!(!is_producer_property_notice(
            "FAIL",
            "is a producer property"
        ));
    }
}
