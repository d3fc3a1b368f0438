//! The Kafka sink: an idempotent (or, for exactly-once, transactional) producer that
//! writes a transformed batch and reports each delivery to the checkpoint tracker.
//!
//! Size: sending, delivery reports, transactions and the dead-letter path share one
//! producer (replaced as a whole after fencing), so they live with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaResult;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use sluice_sdk::batch::{DecodeError, Header, Headers, InputBatch, Op, OutputReader, Record};

use crate::auth::ClientAuth;
use crate::config::{Partitioning, SinkConfig};
use crate::kafka::{
    KafkaContext, RECONNECT_BACKOFF_MAX_MS, Role, Unreadable, create_topic, topic_partitions,
};
use crate::output::{Verdicts, targets};
use crate::progress::{RecordFailure, Tracker, delivery_opaque, from_delivery_opaque};
use crate::state::Change;

/// The producer's context: the shared client callbacks ([`KafkaContext`]) and the
/// sink's own ([`SinkRole`]).
type SinkContext = KafkaContext<SinkRole>;

/// Producer callbacks: each delivery report goes to the tracker.
struct SinkRole {
    tracker: Arc<Mutex<Tracker>>,
    /// When the last delivery report came: a sink whose reports stop while records
    /// wait is checked for a topic that went away ([`KafkaSink::topic_gone`]).
    last_report: Mutex<Instant>,
    /// Set when a delivery failed for want of its topic or partition: check at once.
    check_topics: AtomicBool,
}

impl Role for SinkRole {}

impl ProducerContext for SinkContext {
    /// The sequence number of the batch the record belongs to, and the input record
    /// it came from (see [`delivery_opaque`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (seq, input) = from_delivery_opaque(opaque);
        *self.role.last_report.lock().unwrap() = Instant::now();
        if let Err((error, _)) = result {
            if refused_for_good(error) {
                self.role.tracker.lock().unwrap().refused_for_good();
            }
            if is_unknown_topic(error) {
                self.role.check_topics.store(true, Ordering::Relaxed);
            }
        }
        let (size, result) = match result {
            Ok(_) => (0, Ok(())),
            Err((error, message)) => (
                message.key_len() + message.payload_len(),
                Err(delivery_failure(
                    message.topic(),
                    message.partition(),
                    error,
                )),
            ),
        };
        self.role
            .tracker
            .lock()
            .unwrap()
            .delivered_from(seq, input, size, result);
    }
}

/// Whether the broker refused a record for good: sending it again gets the same answer.
fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// Whether an error says the topic or partition written to does not exist (any more).
fn is_unknown_topic(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

/// What a failed delivery says; a timeout also says what it means and what follows.
fn delivery_failure(topic: &str, partition: i32, error: &KafkaError) -> String {
    let failed = format!("delivery to topic `{topic}` partition {partition} failed: {error}");
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
        format!(
            "{failed}: the sink cluster did not acknowledge the record within `message.timeout.ms` \
             (300 s unless sink.kafka sets it); nothing after the last checkpoint is committed, \
             so a restart once the cluster answers writes it again"
        )
    } else {
        failed
    }
}

/// Why a batch could not be handed to the producer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The output buffer does not decode (the check that made the verdicts read it
    /// first: the buffer was damaged since).
    #[error("the output batch cannot be read: {0}")]
    Output(DecodeError),
    /// An op names an output the sink does not map (the verdicts fail such records
    /// before they get here).
    #[error("output `{0}` is not mapped to a topic")]
    Unmapped(String),
    /// A record failed and there is no dead-letter topic to send it to.
    #[error("{0}")]
    NoDeadLetterTopic(String),
    /// The cluster refused the producer's credentials.
    #[error("{0}")]
    AuthRefused(String),
    /// The producer would not take a record.
    #[error("could not send a record to topic `{topic}`: {error}")]
    Producer { topic: String, error: KafkaError },
    /// The sink cannot take an output of this input record (an output name that is
    /// not mapped, a record the producer refuses).
    #[error("record {}: {}", .0.origin(), .0.cause)]
    Record(RecordFailure),
    #[error("stopped while the producer queue was full")]
    Interrupted,
    /// A sink topic went away while the host wrote to it (see [`KafkaSink::topic_gone`]):
    /// no record's failure, and no retry brings it back.
    #[error("{0}")]
    TopicGone(String),
}

impl SendError {
    /// A producer's refusal to take an output of input record `source` is the failure
    /// of that record; other errors stay what they are.
    fn of_record(self, source: &Record<'_>) -> SendError {
        match self {
            error @ SendError::Producer { .. } => SendError::Record(RecordFailure {
                partition: (source.topic().to_string(), source.partition()),
                offset: source.offset(),
                cause: error.to_string(),
            }),
            other => other,
        }
    }
}

pub(crate) struct KafkaSink {
    producer: BaseProducer<SinkContext>,
    /// The producer's settings, to make a new one after an indefinite transaction outcome.
    client: ClientConfig,
    tracker: Arc<Mutex<Tracker>>,
    auth: ClientAuth,
    transactional: bool,
    default_topic: String,
    outputs: BTreeMap<String, String>,
    dead_letter_topic: Option<String>,
    same_partition: bool,
    /// Every topic the sink writes to and its partition count at start, to notice one
    /// that is deleted (or deleted and made again with fewer partitions) meanwhile.
    topics: Vec<(String, i32)>,
    servers: String,
    /// When the topics were last looked up while deliveries stalled.
    last_check: Mutex<Instant>,
    /// Set for good once a sink topic is found gone: the error that stops the host.
    gone: OnceLock<String>,
}

/// Headers a dead-lettered record carries besides its own: the plugin's message, and
/// where the record was read (`topic/partition@offset`).
const ERROR_HEADER: &str = "sluice-error";
const SOURCE_HEADER: &str = "sluice-source";

/// Every topic the sink writes to (the sink topic, the outputs' and the dead-letter
/// topic) with its partition count, each checked against the source's
/// `source_partitions`; a missing one is created with `[sink.create_topic]`, else
/// refused.
fn check_topics(
    config: &SinkConfig,
    producer: &BaseProducer<SinkContext>,
    source_partitions: i32,
    connect_timeout: Duration,
    runtime: &tokio::runtime::Handle,
    auth: &ClientAuth,
) -> anyhow::Result<Vec<(String, i32)>> {
    let failure = auth.failure().clone();
    let mut topics: Vec<&str> = vec![&config.topic];
    topics.extend(config.outputs.values().map(String::as_str));
    topics.extend(config.dead_letter_topic.as_deref());
    topics.sort_unstable();
    topics.dedup();
    let mut found = Vec::with_capacity(topics.len());
    for topic in topics {
        // Failed records go wherever the partitioner puts them: the dead-letter topic
        // needs no partition per source partition.
        let dead_letter_only = Some(topic) == config.dead_letter_topic.as_deref()
            && topic != config.topic
            && !config.outputs.values().any(|output| output == topic);
        let mut partitions = topic_partitions(
            producer.client(),
            topic,
            &config.bootstrap_servers,
            connect_timeout,
            "sink",
            &|| producer.poll(Duration::ZERO),
            &failure,
        )?;
        if partitions == 0 {
            partitions = create_missing_topic(
                config,
                topic,
                dead_letter_only,
                source_partitions,
                runtime,
                auth,
            )?;
        }
        if config.partitioning == Partitioning::Same
            && !dead_letter_only
            && partitions < source_partitions
        {
            bail!(
                "sink topic `{topic}` has {partitions} partitions but the source has {source_partitions}; \
                 `sink.partitioning = \"same\"` writes each record to its source partition number, so add partitions \
                 to `{topic}` or choose `key-hash` or `default`"
            );
        }
        found.push((topic.to_string(), partitions));
    }
    Ok(found)
}

/// Creates `topic`, which does not exist, as `[sink.create_topic]` says (by default
/// with `source_partitions` partitions) and returns its partition count; without
/// that section, the error says how to create it.
fn create_missing_topic(
    config: &SinkConfig,
    topic: &str,
    dead_letter_only: bool,
    source_partitions: i32,
    runtime: &tokio::runtime::Handle,
    auth: &ClientAuth,
) -> anyhow::Result<i32> {
    let Some(spec) = config.create_topic else {
        if dead_letter_only {
            bail!(
                "dead-letter topic `{topic}` does not exist on {}; create it (any partition count will do), or add [sink.create_topic] to create it",
                config.bootstrap_servers
            );
        }
        bail!(
            "sink topic `{topic}` does not exist on {}; create it with at least {source_partitions} partitions, or add [sink.create_topic] to create it",
            config.bootstrap_servers
        );
    };
    let wanted = spec.partitions.unwrap_or(source_partitions);
    create_topic(
        &config.bootstrap_servers,
        topic,
        wanted,
        spec.replication_factor,
        &[],
        runtime,
        auth,
    )?;
    tracing::info!(topic, partitions = wanted, "Sink topic created.");
    Ok(wanted)
}

impl KafkaSink {
    /// Connects, checks (or creates) the sink topics against the source's partition count.
    /// With a `transaction` the producer is transactional and its transactions are
    /// initialised (fencing any earlier producer with the same id).
    pub(crate) fn connect(
        config: &SinkConfig,
        source_partitions: i32,
        connect_timeout: Duration,
        tracker: Arc<Mutex<Tracker>>,
        transaction: Option<&TransactionSettings>,
        runtime: &tokio::runtime::Handle,
        auth: ClientAuth,
    ) -> anyhow::Result<Self> {
        let mut client = producer_config(config, &auth);
        if let Some(transaction) = transaction {
            client.set("transactional.id", &transaction.id).set(
                "transaction.timeout.ms",
                transaction.timeout.as_millis().to_string(),
            );
        }
        let producer = new_producer(
            &client,
            &tracker,
            &auth,
            transaction.is_some(),
            Patience::Start(connect_timeout),
        )?;
        let found = check_topics(
            config,
            &producer,
            source_partitions,
            connect_timeout,
            runtime,
            &auth,
        )?;
        Ok(KafkaSink {
            producer,
            client,
            tracker,
            auth,
            transactional: transaction.is_some(),
            default_topic: config.topic.clone(),
            outputs: config.outputs.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            same_partition: config.partitioning == Partitioning::Same,
            topics: found,
            servers: config.bootstrap_servers.clone(),
            last_check: Mutex::new(Instant::now()),
            gone: OnceLock::new(),
        })
    }

    /// Hands the outputs of one transformed batch to the producer, in order: those of
    /// the records that did not fail, and each failed record, as it was read, to the
    /// dead-letter topic (see [`crate::output`]). Returns the number of records sent.
    /// `keep_going` is asked while the queue is full.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send(
        &self,
        seq: u64,
        input: &InputBatch<'_>,
        output: &[u8],
        verdicts: &Verdicts,
        tracker: &Mutex<Tracker>,
        provenance: Option<Header<'_>>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<usize, SendError> {
        // Counted before sending: a delivery report may arrive before `send` returns.
        // A batch cut short (error or shutdown) keeps outputs outstanding, so it and
        // everything after it stay uncommitted.
        tracker.lock().unwrap().add_outputs(seq, verdicts.sends());
        let mut dead_lettered = std::collections::BTreeSet::new();
        let mut sent = 0;
        let reader = OutputReader::parse(output, input.len() as u32).map_err(SendError::Output)?;
        for op in reader {
            // Read once already, by the check that made the verdicts.
            let op = op.map_err(SendError::Output)?;
            let (indices, output) = targets(&op);
            for index in indices {
                let source = input
                    .get(index)
                    .expect("ops were checked against the input");
                if let Some(reason) = verdicts.failed().get(&index) {
                    if dead_lettered.insert(index) {
                        self.dead_letter(seq, &source, reason, provenance, keep_going)?;
                        sent += 1;
                    }
                    continue;
                }
                let topic = self.topic_of(output)?;
                self.send_output(seq, &op, &source, topic, provenance, keep_going)
                    .map_err(|error| error.of_record(&source))?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// The topic of the named output, or the sink topic for the unnamed one.
    fn topic_of(&self, output: Option<&str>) -> Result<&str, SendError> {
        match output {
            None => Ok(self.default_topic.as_str()),
            Some(name) => self.outputs.get(name).map(String::as_str).ok_or_else(|| {
                // The verdicts fail records sent to an unmapped output.
                SendError::Unmapped(name.to_string())
            }),
        }
    }

    /// Sends the output `op` makes of input record `source` to `topic`.
    fn send_output(
        &self,
        seq: u64,
        op: &Op<'_>,
        source: &Record<'_>,
        topic: &str,
        provenance: Option<Header<'_>>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(), SendError> {
        let (key, value, headers, timestamp) = match op {
            Op::Keep { .. } => (
                source.key(),
                source.value(),
                source.headers(),
                source.timestamp(),
            ),
            Op::ReplaceValue { value, .. } => {
                (source.key(), *value, source.headers(), source.timestamp())
            }
            Op::Record {
                key,
                value,
                headers,
                timestamp,
                ..
            } => (*key, *value, headers.clone(), *timestamp),
            Op::Error { .. } => return Ok(()),
        };
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(
            topic,
            delivery_opaque(seq, Some(source.index())),
        );
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        if headers.len() > 0 || provenance.is_some() {
            record = record.headers(owned_headers(headers, provenance));
        }
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
        }
        if self.same_partition {
            record = record.partition(source.partition());
        }
        self.send_one(record, keep_going)
    }

    /// Sends input record `source`, which the plugin failed with `message`, to the
    /// dead-letter topic as it was read, with the reason and its origin in headers.
    fn dead_letter(
        &self,
        seq: u64,
        source: &Record<'_>,
        message: &str,
        provenance: Option<Header<'_>>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(), SendError> {
        let Some(topic) = &self.dead_letter_topic else {
            return Err(SendError::NoDeadLetterTopic(format!(
                "the plugin failed record {}/{}@{} ({message}) and no [sink] dead_letter_topic is set",
                source.topic(),
                source.partition(),
                source.offset()
            )));
        };
        let origin = format!(
            "{}/{}@{}",
            source.topic(),
            source.partition(),
            source.offset()
        );
        let headers = owned_headers(source.headers(), provenance)
            .insert(KafkaHeader {
                key: ERROR_HEADER,
                value: Some(message),
            })
            .insert(KafkaHeader {
                key: SOURCE_HEADER,
                value: Some(&origin),
            });
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(
            topic,
            delivery_opaque(seq, Some(source.index())),
        )
        .headers(headers);
        if let Some(key) = source.key() {
            record = record.key(key);
        }
        if let Some(value) = source.value() {
            record = record.payload(value);
        }
        if let Some(timestamp) = source.timestamp() {
            record = record.timestamp(timestamp);
        }
        self.send_one(record, keep_going)
    }

    /// Sends a record the plugin contract cannot carry (see
    /// [`Unreadable`]) to the dead-letter topic as it was read,
    /// headers and all, with the reason and its origin in headers; counted as the one
    /// output of batch `seq`. There must be a dead-letter topic.
    pub(crate) fn dead_letter_unreadable(
        &self,
        seq: u64,
        unreadable: &Unreadable,
        tracker: &Mutex<Tracker>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(), SendError> {
        let Some(topic) = &self.dead_letter_topic else {
            return Err(SendError::NoDeadLetterTopic(format!(
                "record {} cannot be handed to the plugin ({}) and no [sink] dead_letter_topic is set",
                unreadable.origin(),
                unreadable.reason
            )));
        };
        tracker.lock().unwrap().add_outputs(seq, 1);
        let message = &unreadable.message;
        let origin = unreadable.origin();
        // The original headers are copied as librdkafka holds them: their names need
        // not be text.
        let headers = message
            .headers()
            .cloned()
            .unwrap_or_default()
            .insert(KafkaHeader {
                key: ERROR_HEADER,
                value: Some(&unreadable.reason),
            })
            .insert(KafkaHeader {
                key: SOURCE_HEADER,
                value: Some(&origin),
            });
        let mut record =
            BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, delivery_opaque(seq, Some(0)))
                .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        if let Some(timestamp) = message.timestamp().to_millis() {
            record = record.timestamp(timestamp);
        }
        self.send_one(record, keep_going)
    }

    /// Where failed records go, if anywhere.
    pub(crate) fn dead_letter_topic(&self) -> Option<&str> {
        self.dead_letter_topic.as_deref()
    }

    fn send_one<'a>(
        &self,
        mut record: BaseRecord<'a, [u8], [u8], usize>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(), SendError> {
        if let Some(gone) = self.gone.get() {
            return Err(SendError::TopicGone(gone.clone()));
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Back-pressure: serve delivery reports until there is room.
                    record = back;
                    self.producer.poll(Duration::from_millis(20));
                    if let Some(failure) = self.producer.context().auth().failure().get() {
                        return Err(SendError::AuthRefused(failure));
                    }
                    if let Some(gone) = self.topic_gone() {
                        return Err(SendError::TopicGone(gone));
                    }
                    if !keep_going() {
                        return Err(SendError::Interrupted);
                    }
                }
                Err((error, back)) => {
                    if is_unknown_topic(&error) {
                        self.producer
                            .context()
                            .role
                            .check_topics
                            .store(true, Ordering::Relaxed);
                        if let Some(gone) = self.topic_gone() {
                            return Err(SendError::TopicGone(gone));
                        }
                    }
                    return Err(SendError::Producer {
                        topic: back.topic.to_string(),
                        error,
                    });
                }
            }
        }
    }

    /// Writes state changes to the changelog `topic`, each to the partition of the input
    /// partition it belongs to, counted as outputs of batch `seq`.
    pub(crate) fn send_changes(
        &self,
        seq: u64,
        topic: &str,
        changes: &[Change],
        tracker: &Mutex<Tracker>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<(), SendError> {
        tracker.lock().unwrap().add_outputs(seq, changes.len());
        crate::history::state_written(
            changes
                .iter()
                .map(|c| (c.key.len() + c.value.as_ref().map_or(0, Vec::len)) as u64)
                .sum(),
        );
        for change in changes {
            let mut record =
                BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, delivery_opaque(seq, None))
                    .partition(change.partition)
                    .key(&change.key);
            if let Some(value) = &change.value {
                record = record.payload(value);
            }
            self.send_one(record, keep_going)?;
        }
        Ok(())
    }

    pub(crate) fn begin_transaction(&self) -> KafkaResult<()> {
        self.producer.begin_transaction()
    }

    /// Adds the consumer `offsets` to the open transaction and commits it, outputs
    /// and all. The group metadata lets the broker fence a host that lost its group
    /// membership. Waits up to `timeout`, less if `keep_going` says stop.
    pub(crate) fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
        keep_going: &dyn Fn() -> bool,
    ) -> KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        if offsets.count() > 0 {
            resumed(
                "adding the offsets to the transaction",
                deadline,
                keep_going,
                |attempt| {
                    self.producer
                        .send_offsets_to_transaction(offsets, group, attempt)
                },
            )?;
        }
        resumed(
            "committing the transaction",
            deadline,
            keep_going,
            |attempt| self.producer.commit_transaction(attempt),
        )
    }

    /// Aborts the open transaction: queued records are purged, records in flight are
    /// waited for (their delivery reports served here, which the client's own abort
    /// would wait on forever), then the abort goes to the broker. Waits up to
    /// `timeout`, less if `keep_going` says stop.
    pub(crate) fn abort_transaction(
        &self,
        timeout: Duration,
        keep_going: &dyn Fn() -> bool,
    ) -> KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        self.producer.purge(PurgeConfig::default().queue());
        resumed(
            "flushing before an abort",
            deadline,
            keep_going,
            |attempt| self.producer.flush(attempt),
        )?;
        resumed(
            "aborting the transaction",
            deadline,
            keep_going,
            |attempt| self.producer.abort_transaction(attempt),
        )
    }

    /// Replaces the producer with a new one of the same transactional id. Initialising
    /// its transactions bumps the producer epoch, which fences the old producer and
    /// aborts whatever it left open: the way out of an indefinite commit outcome,
    /// which must never be retried.
    ///
    /// This happens when the cluster has gone away (a broker crash, a network
    /// partition), so a cluster that does not answer is asked again for up to
    /// `RECREATE_PATIENCE`, or until `keep_going` says stop (a shutdown was requested).
    pub(crate) fn recreate(&mut self, keep_going: &dyn Fn() -> bool) -> anyhow::Result<()> {
        self.producer = new_producer(
            &self.client,
            &self.tracker,
            &self.auth,
            self.transactional,
            Patience::Running(keep_going),
        )?;
        Ok(())
    }

    /// The error that made the producer unusable, if one did (for example, another
    /// producer with the same transactional id fenced it).
    pub(crate) fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Serves delivery reports, waiting up to `timeout` for one. Fails when a client
    /// was refused authentication, or a sink topic went away.
    pub(crate) fn poll(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer.poll(timeout);
        self.producer.context().auth().failure().check()?;
        match self.topic_gone() {
            Some(gone) => Err(anyhow::anyhow!(gone)),
            None => Ok(()),
        }
    }

    /// The error for a sink topic that went away, once one has: deleted while the host
    /// wrote to it, or deleted and made again with fewer partitions. librdkafka keeps
    /// the records for its partitions queued without a delivery report, and the
    /// pipeline would wait for them without end; nor is it the failure of a record,
    /// which a dead-letter topic could take: every record after it would fail alike.
    ///
    /// Looked up (one metadata request) when a delivery failed for want of its topic,
    /// and while records wait and no delivery report has come for
    /// [`STALLED_DELIVERIES`], at most that often. A cluster that does not answer
    /// proves nothing: the lookup then counts for nothing. Once a topic is found gone
    /// the producer's records are purged, so that the stop waits for none of them
    /// (none was acknowledged, so none is committed), and every later send fails.
    fn topic_gone(&self) -> Option<String> {
        if let Some(gone) = self.gone.get() {
            return Some(gone.clone());
        }
        let context = self.producer.context();
        let asked = context.role.check_topics.swap(false, Ordering::Relaxed);
        let stalled = || {
            context.role.last_report.lock().unwrap().elapsed() >= STALLED_DELIVERIES
                && self.last_check.lock().unwrap().elapsed() >= STALLED_DELIVERIES
                && self.producer.in_flight_count() > 0
        };
        if !asked && !stalled() {
            return None;
        }
        *self.last_check.lock().unwrap() = Instant::now();
        let gone = self.topics.iter().find_map(|(topic, partitions)| {
            let metadata = self
                .producer
                .client()
                .fetch_metadata(Some(topic), TOPIC_CHECK_TIMEOUT)
                .ok()?;
            let found = metadata.topics().iter().find(|t| t.name() == topic)?;
            let now = match found.error().map(RDKafkaErrorCode::from) {
                None => found.partitions().len() as i32,
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => 0,
                Some(_) => return None,
            };
            let servers = &self.servers;
            match now {
                0 => Some(format!(
                    "sink topic `{topic}` no longer exists on {servers}: it was deleted while Sluice wrote to it. \
                     Outputs not yet acknowledged stay uncommitted and are written again at the next start: \
                     create `{topic}` again with {partitions} partitions, then start Sluice"
                )),
                now if now < *partitions => Some(format!(
                    "sink topic `{topic}` on {servers} has {now} partitions, not the {partitions} it had at start: \
                     it was deleted and created again while Sluice wrote to it. Outputs not yet acknowledged \
                     stay uncommitted and are written again at the next start: give `{topic}` {partitions} partitions, \
                     then start Sluice"
                )),
                _ => None,
            }
        })?;
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        Some(self.gone.get_or_init(|| gone).clone())
    }

    /// Whether the cluster refused a client's credentials (the source's or the sink's).
    pub(crate) fn refused(&self) -> bool {
        self.producer.context().auth().failure().get().is_some()
    }

    /// Waits until every queued record is delivered or failed.
    pub(crate) fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.producer.flush(timeout).map_err(|e| {
            anyhow::anyhow!(
                "records still undelivered after {} s: {e}",
                timeout.as_secs()
            )
        })
    }
}

/// The sink producer's settings: Sluice's, then `sink.kafka`'s.
fn producer_config(config: &SinkConfig, auth: &ClientAuth) -> ClientConfig {
    let mut client = ClientConfig::new();
    auth.apply(&mut client);
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        // Idempotence: retries cannot duplicate or reorder records in a partition.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Bounded queue: when the broker is slow, sending blocks and the source waits.
        .set("queue.buffering.max.kbytes", "16384")
        // A broker back from an outage is reached within a second (see the constant).
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
        .set(
            "partitioner",
            match config.partitioning {
                // Java's and kafka-python's choice: murmur2 of the key bytes.
                Partitioning::KeyHash => "murmur2_random",
                _ => "consistent_random",
            },
        );
    for (key, value) in &config.kafka {
        client.set(key, value);
    }
    client
}

/// Aborts what a producer with transactional id `id` left open, and fences that
/// producer: initialising transactions under the same id does both.
pub(crate) fn fence(
    config: &SinkConfig,
    id: &str,
    timeout: Duration,
    auth: &ClientAuth,
) -> anyhow::Result<()> {
    let mut client = producer_config(config, auth);
    client.set("transactional.id", id);
    new_producer(
        &client,
        &Arc::new(Mutex::new(Tracker::new())),
        auth,
        true,
        Patience::Start(timeout),
    )?;
    Ok(())
}

/// The transactional producer's identity and limits.
#[derive(Debug, Clone)]
pub(crate) struct TransactionSettings {
    /// Stable across restarts of the same host, so a restart fences its predecessor.
    pub(crate) id: String,
    /// How long the broker lets a transaction stay open before aborting it.
    pub(crate) timeout: Duration,
}

/// Deliveries outstanding and no report for this long: the sink topics are looked up.
const STALLED_DELIVERIES: Duration = Duration::from_secs(10);
/// How long that lookup waits for the cluster: short, as while a broker is away it
/// learns nothing and holds up the pipeline (and a stop).
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a running host keeps asking a sink cluster that does not answer for a new
/// transactional producer before it gives up.
const RECREATE_PATIENCE: Duration = Duration::from_secs(600);
/// A call that waits for the cluster does so in attempts this long, so that a stop is
/// not held up by one...
const ATTEMPT: Duration = Duration::from_secs(5);
/// ...and says this often that the cluster does not answer.
const WAIT_WARNING: Duration = Duration::from_secs(30);

/// How long a new transactional producer waits for a cluster that does not answer.
#[derive(Clone, Copy)]
enum Patience<'a> {
    /// At start: this long, then the cluster's answer (or its silence) is the error.
    Start(Duration),
    /// While running: up to [`RECREATE_PATIENCE`], or until this says stop.
    Running(&'a dyn Fn() -> bool),
}

/// A new producer; a transactional one has its transactions initialised, waiting for
/// the cluster as `patience` says.
fn new_producer(
    client: &ClientConfig,
    tracker: &Arc<Mutex<Tracker>>,
    auth: &ClientAuth,
    transactional: bool,
    patience: Patience<'_>,
) -> anyhow::Result<BaseProducer<SinkContext>> {
    let producer: BaseProducer<SinkContext> = client
        .create_with_context(KafkaContext::new(
            "sink",
            auth.clone(),
            SinkRole {
                tracker: tracker.clone(),
                last_report: Mutex::new(Instant::now()),
                check_topics: AtomicBool::new(false),
            },
        ))
        .map_err(crate::config::security::without_value)
        .context("creating the Kafka producer (check sink.kafka and [security])")?;
    // The first MSK IAM token now: initialising transactions talks to the cluster
    // before anything polls the producer.
    auth.install_token(producer.client())?;
    if transactional {
        let id = client.get("transactional.id").unwrap_or_default();
        let started = Instant::now();
        let (limit, keep_going): (Duration, &dyn Fn() -> bool) = match patience {
            Patience::Start(timeout) => (timeout, &|| true),
            Patience::Running(keep_going) => (RECREATE_PATIENCE, keep_going),
        };
        // Refused credentials are not a matter of patience.
        let refused = || auth.failure().get().is_some();
        let initialised = resumed(
            "starting a transactional producer",
            started + limit,
            &|| keep_going() && !refused(),
            |attempt| producer.init_transactions(attempt),
        );
        auth.failure().check()?;
        match initialised {
            Ok(()) => {}
            Err(error) if is_unanswered(&error) && matches!(patience, Patience::Start(_)) => bail!(
                "the sink cluster at {} did not answer within {} s while starting a transactional producer for id `{id}`: {error}; \
                 check that its brokers are up and reachable (source.connect_timeout_ms sets how long a start waits)",
                client.get("bootstrap.servers").unwrap_or_default(),
                started.elapsed().as_secs()
            ),
            Err(error) if !is_unanswered(&error) || matches!(patience, Patience::Start(_)) => {
                return Err(error).with_context(|| {
                    format!(
                        "initialising transactions for transactional id `{id}` (exactly-once needs a broker with transactions enabled)"
                    )
                });
            }
            Err(error) if !keep_going() => bail!(
                "stopped while the sink cluster did not answer ({} s) a request for a transactional producer for id `{id}`: {error}",
                started.elapsed().as_secs()
            ),
            Err(error) => bail!(
                "the sink cluster did not answer for {} s while starting a transactional producer for id `{id}`: {error}; check that its brokers are up and reachable",
                started.elapsed().as_secs()
            ),
        }
        producer
            .begin_transaction()
            .context("beginning the first transaction")?;
    }
    Ok(producer)
}

/// Runs `call` (`what` it does) in attempts of at most [`ATTEMPT`] until it succeeds,
/// fails for another reason than a missing answer, the deadline passes or `keep_going`
/// says stop. librdkafka resumes the same operation (a flush, initialising, committing
/// or aborting transactions) when a call that timed out is made again, so nothing is
/// done twice. That the cluster does not answer is logged at once and every
/// [`WAIT_WARNING`]: the pipeline waits.
fn resumed(
    what: &str,
    deadline: Instant,
    keep_going: &dyn Fn() -> bool,
    mut call: impl FnMut(Duration) -> KafkaResult<()>,
) -> KafkaResult<()> {
    let started = Instant::now();
    let mut warned: Option<Instant> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match call(left.min(ATTEMPT)) {
            Err(error)
                if (is_unanswered(&error)
                    || error == KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    && Instant::now() < deadline
                    && keep_going() =>
            {
                if warned.is_none_or(|at| at.elapsed() >= WAIT_WARNING) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        %error,
                        waited_s = started.elapsed().as_secs(),
                        give_up_in_s = deadline.saturating_duration_since(Instant::now()).as_secs(),
                        "The sink cluster does not answer; still {what}."
                    );
                }
            }
            done => return done,
        }
    }
}

/// Whether a transactional call failed for want of an answer (a timeout, a coordinator
/// not reachable yet), so that asking again may succeed.
pub(crate) fn is_unanswered(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(error) => {
            error.is_retriable() || error.code() == RDKafkaErrorCode::OperationTimedOut
        }
        _ => false,
    }
}

fn owned_headers(headers: Headers<'_>, extra: Option<Header<'_>>) -> OwnedHeaders {
    headers.chain(extra).fold(
        OwnedHeaders::new_with_capacity(4),
        |acc, Header { name, value }| acc.insert(KafkaHeader { key: name, value }),
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    #[test]
    fn a_delivery_timeout_says_what_it_means_and_what_follows() {
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let message = super::delivery_failure("out", 1, &timed_out);
        assert!(
            message.starts_with("delivery to topic `out` partition 1 failed: "),
            "{message}"
        );
        assert!(message.contains("did not acknowledge"), "{message}");
        assert!(
            message.contains("a restart once the cluster answers"),
            "{message}"
        );

        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let message = super::delivery_failure("out", 1, &too_large);
        assert!(!message.contains("did not acknowledge"), "{message}");
    }

    #[test]
    fn a_missing_topic_or_partition_is_told_from_other_delivery_failures() {
        for code in [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::UnknownPartition,
        ] {
            assert!(super::is_unknown_topic(&KafkaError::MessageProduction(
                code
            )));
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(!super::is_unknown_topic(&KafkaError::MessageProduction(
                code
            )));
        }
    }
}
