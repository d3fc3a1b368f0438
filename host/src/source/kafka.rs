//! The Kafka source: a consumer group member that reads the source topic into batches,
//! applies the startup mode, and commits the offsets the checkpoint tracker allows.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::client::OAuthToken;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_sdk::batch::{Header, InputWriter, RecordFields};

use crate::auth::{AuthFailure, ClientAuth};
use crate::checkpoint::{Partition, Tracker};
use crate::config::{Fallback, SourceConfig, Startup};

/// Time allowed for offset lookups during a rebalance.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumer callbacks: the startup mode on assignment, a final commit on revocation.
pub struct SourceContext {
    startup: Startup,
    tracker: Arc<Mutex<Tracker>>,
    assigned: Mutex<BTreeSet<Partition>>,
    /// What the last successful commit request held, to skip commits with no progress.
    last_commit: Mutex<TopicPartitionList>,
    auth: ClientAuth,
}

impl ClientContext for SourceContext {
    // MSK IAM: librdkafka asks for each token while the consumer is polled.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::telemetry::librdkafka_log("source", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.auth.observe(&error, reason) {
            tracing::error!(client = "source", %error, "Kafka authentication failed: {reason}");
        } else {
            tracing::warn!(client = "source", %error, "Kafka client error: {reason}");
        }
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.auth.token()
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Startup::Timestamp { millis } = self.startup
                    && let Err(error) = seek_to_timestamp(consumer, tpl, millis)
                {
                    tracing::error!(%error, "Could not look up offsets for the startup timestamp; using the committed or earliest offsets.");
                }
                let partitions = partitions_of(tpl);
                tracing::info!(partitions = ?partitions, "Partitions assigned.");
                self.assigned.lock().unwrap().extend(partitions);
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "Assigning partitions failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Commit what is acknowledged before another member takes over, so it
                // re-reads as little as possible.
                // After refused credentials a synchronous commit would wait for a
                // coordinator that no longer talks to this member.
                let mode = match self.auth.failure().get() {
                    Some(_) => CommitMode::Async,
                    None => CommitMode::Sync,
                };
                if let Err(error) = self.commit(consumer, mode) {
                    tracing::warn!(%error, "Commit before revocation failed; the next owner re-reads from the last checkpoint.");
                }
                let revoked = partitions_of(tpl);
                tracing::info!(partitions = ?revoked, "Partitions revoked.");
                let mut assigned = self.assigned.lock().unwrap();
                let mut tracker = self.tracker.lock().unwrap();
                for partition in &revoked {
                    assigned.remove(partition);
                    tracker.forget(partition);
                }
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "Unassigning partitions failed.");
                }
            }
            other => {
                tracing::error!(error = ?other, "Rebalance failed.");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(%error, "Offset commit failed; the next checkpoint retries it.");
        }
    }
}

impl SourceContext {
    /// Commits the committable offsets of the partitions this member owns.
    /// Returns how many partitions were committed.
    fn commit(&self, consumer: &BaseConsumer<Self>, mode: CommitMode) -> KafkaResult<usize> {
        let mut tpl = TopicPartitionList::new();
        {
            let assigned = self.assigned.lock().unwrap();
            let tracker = self.tracker.lock().unwrap();
            for ((topic, partition), offset) in tracker.committable() {
                if assigned.contains(&(topic.clone(), *partition)) {
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
                }
            }
        }
        let mut last = self.last_commit.lock().unwrap();
        // Periodic commits skip when nothing moved; a final or pre-revocation commit
        // always goes out, in case the last asynchronous one failed.
        let unchanged =
            matches!(mode, CommitMode::Async) && tpl.to_topic_map() == last.to_topic_map();
        if tpl.count() == 0 || unchanged {
            return Ok(0);
        }
        consumer.commit(&tpl, mode)?;
        let count = tpl.count();
        *last = tpl;
        Ok(count)
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// For partitions the group has not committed, start at the first record at or after
/// `millis` (or at the end when there is none).
fn seek_to_timestamp(
    consumer: &BaseConsumer<SourceContext>,
    tpl: &mut TopicPartitionList,
    millis: i64,
) -> KafkaResult<()> {
    let committed = consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT)?;
    let mut lookup = TopicPartitionList::new();
    for element in committed.elements() {
        if !matches!(element.offset(), Offset::Offset(_)) {
            lookup.add_partition_offset(
                element.topic(),
                element.partition(),
                Offset::Offset(millis),
            )?;
        }
    }
    if lookup.count() == 0 {
        return Ok(());
    }
    let found = consumer.offsets_for_times(lookup, LOOKUP_TIMEOUT)?;
    for element in found.elements() {
        let offset = match element.offset() {
            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
            _ => Offset::End,
        };
        tpl.set_partition_offset(element.topic(), element.partition(), offset)?;
    }
    Ok(())
}

/// The source: a consumer and the batch it is filling.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    topic: String,
    batch_max_records: usize,
    /// Offset after the last record read into the current batch, by partition number
    /// (-1: none). A Vec, not a map: this is updated for every record.
    ends: Vec<i64>,
}

impl KafkaSource {
    /// Connects, checks the source topic exists, and joins the group.
    pub fn connect(
        config: &SourceConfig,
        tracker: Arc<Mutex<Tracker>>,
        auth: ClientAuth,
    ) -> anyhow::Result<(Self, i32)> {
        let mut client = ClientConfig::new();
        auth.apply(&mut client);
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &config.group_id)
            // Offsets are committed by the checkpoint tracker, never by the client.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match config.startup {
                    Startup::Latest
                    | Startup::GroupOffsets {
                        fallback: Fallback::Latest,
                    } => "latest",
                    Startup::GroupOffsets {
                        fallback: Fallback::Fail,
                    } => "error",
                    _ => "earliest",
                },
            )
            // Bounded prefetch: a stalled sink must not let the fetch queue grow. 8 MB is
            // about half a second of input at full speed here, and keeps memory in bounds.
            .set("queued.max.messages.kbytes", "8192")
            .set("enable.partition.eof", "false");
        for (key, value) in &config.kafka {
            client.set(key, value);
        }
        let context = SourceContext {
            startup: config.startup,
            tracker,
            assigned: Mutex::default(),
            last_commit: Mutex::new(TopicPartitionList::new()),
            auth,
        };
        let consumer: BaseConsumer<SourceContext> = client
            .create_with_context(context)
            .context("creating the Kafka consumer (check source.kafka and [security])")?;

        let failure = consumer.context().auth.failure().clone();
        let partitions = topic_partitions(
            consumer.client(),
            &config.topic,
            &config.bootstrap_servers,
            config.connect_timeout,
            "source",
            // Nothing is subscribed yet: polling only serves tokens and errors.
            &|| {
                let _ = consumer.poll(Duration::ZERO);
            },
            &failure,
        )?;
        if partitions == 0 {
            bail!(
                "source topic `{}` does not exist on {}; create it or fix source.topic",
                config.topic,
                config.bootstrap_servers
            );
        }
        consumer
            .subscribe(&[&config.topic])
            .with_context(|| format!("subscribing to source topic `{}`", config.topic))?;
        Ok((
            KafkaSource {
                consumer,
                topic: config.topic.clone(),
                batch_max_records: config.batch_max_records,
                ends: Vec::new(),
            },
            partitions,
        ))
    }

    /// Fills `batch` with up to the batch size of records: waits up to `wait` for the
    /// first one, then takes what is already fetched without waiting.
    pub fn fill(&mut self, batch: &mut InputWriter, wait: Duration) -> anyhow::Result<()> {
        self.consumer.context().auth.failure().check()?;
        let mut timeout = wait;
        while batch.len() < self.batch_max_records {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => {
                    push(batch, &message);
                    let partition = message.partition() as usize;
                    if partition >= self.ends.len() {
                        self.ends.resize(partition + 1, -1);
                    }
                    self.ends[partition] = message.offset() + 1;
                }
                Some(Err(error)) => self.consume_error(error)?,
            }
            timeout = Duration::ZERO;
        }
        Ok(())
    }

    /// Takes the per-partition end offsets of the batch just filled.
    pub fn take_ends(&mut self) -> Vec<(Partition, i64)> {
        let ends = self
            .ends
            .iter()
            .enumerate()
            .filter(|(_, end)| **end >= 0)
            .map(|(partition, end)| ((self.topic.clone(), partition as i32), *end))
            .collect();
        self.ends.fill(-1);
        ends
    }

    fn consume_error(&self, error: KafkaError) -> anyhow::Result<()> {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AutoOffsetReset) => bail!(
                "source topic `{}`: the group has no committed offset for a partition and \
                 source.startup_fallback is `fail` ({error}); set startup_fallback to `earliest` or `latest`",
                self.topic
            ),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            | Some(RDKafkaErrorCode::UnknownTopic) => bail!(
                "source topic `{}` does not exist (or was deleted): {error}",
                self.topic
            ),
            _ => {
                tracing::warn!(%error, topic = %self.topic, "Consume error; continuing.");
                Ok(())
            }
        }
    }

    /// Commits the acknowledged offsets of owned partitions.
    pub fn commit(&self, mode: CommitMode) -> KafkaResult<usize> {
        self.consumer.context().commit(&self.consumer, mode)
    }

    /// Leaves the group cleanly so partitions move to other members at once.
    pub fn close(self) {
        self.consumer.unsubscribe();
        // Serve the revocation callback (and its final commit).
        for _ in 0..10 {
            if self.consumer.poll(Duration::from_millis(100)).is_none()
                && self
                    .consumer
                    .assignment()
                    .map(|a| a.count() == 0)
                    .unwrap_or(true)
            {
                break;
            }
        }
    }
}

fn push(batch: &mut InputWriter, message: &BorrowedMessage<'_>) {
    let headers = message.headers();
    let count = headers.map(|h| h.count()).unwrap_or(0);
    batch.push(RecordFields {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        key: message.key(),
        value: message.payload(),
        headers: (0..count).map(|i| {
            let h = headers.expect("count > 0 means headers").get(i);
            Header {
                name: h.key,
                value: h.value,
            }
        }),
    });
}

/// How long one metadata request may wait before the client is polled again.
const METADATA_SLICE: Duration = Duration::from_millis(250);

/// The partition count of `topic`, 0 if it does not exist. Fails with a clear error when
/// the cluster does not answer within `timeout`, and at once when it refuses the
/// credentials. `serve` polls the client, so tokens are handed over and errors seen.
pub fn topic_partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    servers: &str,
    timeout: Duration,
    role: &str,
    serve: &dyn Fn(),
    failure: &AuthFailure,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + timeout;
    let metadata = loop {
        serve();
        failure.check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        match client.fetch_metadata(Some(topic), left.min(METADATA_SLICE)) {
            Ok(metadata) => break metadata,
            Err(_) if left > METADATA_SLICE => continue,
            Err(error) => {
                serve();
                failure.check()?;
                anyhow::bail!(
                    "could not reach Kafka ({role}) at {servers} within {} s: {error}; check the bootstrap servers and that the brokers are up",
                    timeout.as_secs_f64()
                )
            }
        }
    };
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(0);
    };
    match found.error() {
        Some(_) => Ok(0),
        None => Ok(found.partitions().len() as i32),
    }
}
