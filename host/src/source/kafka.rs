//! The Kafka source: a consumer group member that reads the source topic into batches,
//! applies the startup mode, and commits the offsets the checkpoint tracker allows.
//!
//! Size: the consumer's callbacks, the startup modes and the batch reader share one
//! consumer and its rebalance state (their tests are mostly end to end, in
//! `tests/e2e`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use sluice_sdk::batch::{Header, InputBatch, InputWriter, RecordFields};

use crate::auth::ClientAuth;
use crate::config::{Fallback, SourceConfig, Startup};
use crate::kafka::{KafkaContext, RECONNECT_BACKOFF_MAX_MS, Role, Unreadable, topic_partitions};
use crate::metrics::Metrics;
use crate::progress::Partition;

/// Time allowed for offset lookups during a rebalance.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the consumer's rebalance callback hands assignments and revocations to (the
/// checkpoint). It runs inside `poll`, on the worker's thread.
pub(crate) trait Rebalance: Send {
    /// `partitions` were assigned; those in `fresh` start without committed state
    /// (`run --fresh`). Their state must be ready before any of their records is read.
    fn assigned(&mut self, partitions: &[Partition], fresh: &[Partition]) -> anyhow::Result<()>;

    /// `partitions` are being revoked; `lost` when the group already moved on without
    /// this member, so nothing of theirs may be committed.
    fn revoked(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        partitions: &[Partition],
        lost: bool,
    ) -> anyhow::Result<()>;
}

/// The consumer's context: the shared client callbacks ([`KafkaContext`]) and the
/// source's own ([`SourceRole`]).
pub(crate) type SourceContext = KafkaContext<SourceRole>;

/// Consumer callbacks: the startup mode and state restore on assignment, a
/// checkpoint on revocation, lag statistics.
pub(crate) struct SourceRole {
    startup: Startup,
    /// `run --fresh`: the partitions this host has started fresh so far, shared by
    /// its workers. A partition starts fresh (committed offsets and state ignored)
    /// the first time any worker of the host is assigned it, and never again: after
    /// a rebalance its next owner resumes from what the first one committed.
    fresh: Option<FreshStart>,
    rebalance: OnceLock<Arc<Mutex<dyn Rebalance>>>,
    /// A failure inside a callback that must stop the pipeline before it processes
    /// another record.
    fatal: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
    /// This consumer's worker, for its lag in the metrics.
    worker: usize,
    /// Revocations so far. Every revocation unassigns every partition, and whoever is
    /// assigned one next reads it again from its committed offset: records read into
    /// a batch before a revocation must not be processed after it. Written by the
    /// rebalance callback, which runs inside `poll` on the pipeline's thread.
    revocations: AtomicU64,
}

impl Role for SourceRole {
    fn statistics(&self, statistics: Statistics) {
        self.metrics.consumer_statistics(self.worker, &statistics);
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
                let fresh: Vec<Partition> = match &self.role.fresh {
                    Some(started) => started.first_time(&partitions_of(tpl)),
                    None => Vec::new(),
                };
                let positioned = if !fresh.is_empty() {
                    start_fresh(consumer, tpl, &fresh, self.role.startup)
                } else {
                    Ok(())
                }
                .and_then(|()| match self.role.startup {
                    Startup::Timestamp { millis } => {
                        seek_to_timestamp(consumer, tpl, &fresh, millis)
                    }
                    _ => Ok(()),
                });
                if let Err(error) = positioned {
                    tracing::error!(%error, "Could not look up offsets for the startup mode; using the committed or earliest offsets.");
                }
                let partitions = partitions_of(tpl);
                tracing::info!(partitions = ?partitions, "Partitions assigned.");
                if let Some(rebalance) = self.role.rebalance.get()
                    && let Err(error) = rebalance.lock().unwrap().assigned(&partitions, &fresh)
                {
                    self.fail(format!("{error:#}"));
                }
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "Assigning partitions failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Checkpoint before another member takes over, so it re-reads as
                // little as possible and finds the state that goes with the offsets.
                // After refused credentials nothing can be committed: the partitions
                // count as lost (a commit would wait for a coordinator that no longer
                // talks to this member).
                let revoked = partitions_of(tpl);
                let lost = consumer.assignment_lost() || self.auth().failure().get().is_some();
                if let Some(rebalance) = self.role.rebalance.get()
                    && let Err(error) = rebalance.lock().unwrap().revoked(consumer, &revoked, lost)
                {
                    self.fail(format!("{error:#}"));
                }
                self.role.revocations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(partitions = ?revoked, "Partitions revoked.");
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
    fn fail(&self, message: String) {
        tracing::error!("{message}");
        self.role.fatal.lock().unwrap().get_or_insert(message);
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// The partitions a host started fresh (`run --fresh`), shared by its workers.
#[derive(Debug, Clone, Default)]
pub(crate) struct FreshStart(Arc<Mutex<HashSet<Partition>>>);

impl FreshStart {
    /// Which of `partitions` start fresh now: those not started before. They count
    /// as started from now on.
    fn first_time(&self, partitions: &[Partition]) -> Vec<Partition> {
        let mut started = self.0.lock().unwrap_or_else(|e| e.into_inner());
        partitions
            .iter()
            .filter(|partition| started.insert((*partition).clone()))
            .cloned()
            .collect()
    }
}

/// `run --fresh`: `partitions` start where the startup mode says, whatever the group
/// committed.
fn start_fresh(
    consumer: &BaseConsumer<SourceContext>,
    tpl: &mut TopicPartitionList,
    partitions: &[Partition],
    startup: Startup,
) -> KafkaResult<()> {
    tracing::warn!(partitions = ?partitions, startup = ?startup, "Starting fresh: committed offsets are ignored.");
    let offset = match startup {
        Startup::Latest
        | Startup::GroupOffsets {
            fallback: Fallback::Latest,
        } => Offset::End,
        Startup::Timestamp { millis } => {
            let mut lookup = TopicPartitionList::new();
            for (topic, partition) in partitions {
                lookup.add_partition_offset(topic, *partition, Offset::Offset(millis))?;
            }
            return start_at_times(consumer, tpl, lookup);
        }
        _ => Offset::Beginning,
    };
    for (topic, partition) in partitions {
        tpl.set_partition_offset(topic, *partition, offset)?;
    }
    Ok(())
}

/// For partitions the group has not committed, start at the first record at or after
/// `millis` (or at the end when there is none); `started_fresh` are positioned already.
fn seek_to_timestamp(
    consumer: &BaseConsumer<SourceContext>,
    tpl: &mut TopicPartitionList,
    started_fresh: &[Partition],
    millis: i64,
) -> KafkaResult<()> {
    let committed = consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT)?;
    let mut lookup = TopicPartitionList::new();
    for element in committed.elements() {
        let fresh = started_fresh.iter().any(|(topic, partition)| {
            topic == element.topic() && *partition == element.partition()
        });
        if !fresh && !matches!(element.offset(), Offset::Offset(_)) {
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
    start_at_times(consumer, tpl, lookup)
}

/// Sets each partition of `lookup` (offsets holding timestamps) in `tpl` to the first
/// record at or after its timestamp, or to the end when there is none.
fn start_at_times(
    consumer: &BaseConsumer<SourceContext>,
    tpl: &mut TopicPartitionList,
    lookup: TopicPartitionList,
) -> KafkaResult<()> {
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
pub(crate) struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    topic: String,
    batch_max_records: usize,
    /// First offset and offset after the last record read into the current batch, by
    /// partition number (-1: none). A Vec, not a map: this is updated for every record.
    spans: Vec<(i64, i64)>,
    /// A record read after the current batch that the plugin contract cannot carry;
    /// the batch ends before it, and the pipeline takes it next.
    unreadable: Option<Unreadable>,
}

/// The consumer's settings: `source.kafka` over Sluice's own, after the credentials.
fn consumer_config(config: &SourceConfig, auth: &ClientAuth) -> ClientConfig {
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
        .set("enable.partition.eof", "false")
        // Statistics every second, for the lag in `GET /metrics`.
        .set("statistics.interval.ms", "1000")
        // A broker back from an outage is reached within a second (see the constant).
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    for (key, value) in &config.kafka {
        client.set(key, value);
    }
    client
}

impl KafkaSource {
    /// Connects, checks the source topic exists, and joins the group. `fresh`: ignore
    /// the group's committed offsets at the first assignment.
    pub(crate) fn connect(
        config: &SourceConfig,
        fresh: Option<FreshStart>,
        auth: ClientAuth,
        metrics: Arc<Metrics>,
        worker: usize,
    ) -> anyhow::Result<(Self, i32)> {
        let client = consumer_config(config, &auth);
        let context = KafkaContext::new(
            "source",
            auth,
            SourceRole {
                startup: config.startup,
                fresh,
                rebalance: OnceLock::new(),
                fatal: Mutex::new(None),
                metrics,
                worker,
                revocations: AtomicU64::new(0),
            },
        );
        let consumer: BaseConsumer<SourceContext> = client
            .create_with_context(context)
            .map_err(crate::config::security::without_value)
            .context("creating the Kafka consumer (check source.kafka and [security])")?;
        consumer.context().auth().install_token(consumer.client())?;

        let failure = consumer.context().auth().failure().clone();
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
                spans: Vec::new(),
                unreadable: None,
            },
            partitions,
        ))
    }

    /// Fills `batch` with up to the batch size of records: waits up to `wait` for the
    /// first one, then takes what is already fetched without waiting.
    /// A record the plugin contract cannot carry ends the batch before it: it is kept
    /// for [`KafkaSource::take_unreadable`], so that the records before it go on first.
    pub(crate) fn fill(&mut self, batch: &mut InputWriter, wait: Duration) -> anyhow::Result<()> {
        self.consumer.context().auth().failure().check()?;
        self.check_fatal()?;
        // One the pipeline did not take (its batch was rewound) is read again.
        self.unreadable = None;
        let revocations = &self.consumer.context().role.revocations;
        let mut seen = revocations.load(Ordering::Relaxed);
        let mut timeout = wait;
        while batch.len() < self.batch_max_records {
            let polled = self.consumer.poll(timeout);
            // Partitions were revoked during this poll: what the batch holds was read
            // before, and will be read again by the partitions' next owner (this host
            // too, from the offset the revocation committed). A record this poll
            // returned was read after the new assignment and is kept.
            let now = revocations.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                if !batch.is_empty() {
                    tracing::info!(
                        records = batch.len(),
                        "Partitions were revoked while a batch was read; its records are read again."
                    );
                }
                batch.clear();
                self.spans.fill((-1, -1));
            }
            match polled {
                None => break,
                Some(Ok(message)) => {
                    let headers = MessageHeaders::of(&message);
                    if let Err(reason) = headers.check() {
                        self.unreadable = Some(Unreadable {
                            message: message.detach(),
                            reason,
                        });
                        break;
                    }
                    push(batch, &message, headers);
                    let partition = message.partition() as usize;
                    if partition >= self.spans.len() {
                        self.spans.resize(partition + 1, (-1, -1));
                    }
                    let span = &mut self.spans[partition];
                    if span.0 < 0 {
                        span.0 = message.offset();
                    }
                    span.1 = message.offset() + 1;
                }
                Some(Err(error)) => self.consume_error(error)?,
            }
            // A callback (state restore, revocation checkpoint) failed inside poll:
            // stop before the batch is processed.
            if let Some(fatal) = self.consumer.context().role.fatal.lock().unwrap().take() {
                bail!(fatal);
            }
            timeout = Duration::ZERO;
        }
        Ok(())
    }

    /// Takes the spans of the batch just filled: per partition, the first offset and
    /// the offset after the last record.
    pub(crate) fn take_spans(&mut self) -> Vec<(Partition, i64, i64)> {
        let spans = self
            .spans
            .iter()
            .enumerate()
            .filter(|(_, (first, _))| *first >= 0)
            .map(|(partition, (first, end))| ((self.topic.clone(), partition as i32), *first, *end))
            .collect();
        self.spans.fill((-1, -1));
        spans
    }

    /// Seeks each partition with records in `batch` from index `from` on back to the
    /// first of them, so that they are read again: the batch's time ran out before
    /// they were run. A record the contract cannot carry, kept after the batch, is
    /// read again too if it is on one of those partitions.
    pub(crate) fn read_again(&mut self, batch: &InputBatch<'_>, from: usize) -> anyhow::Result<()> {
        let mut first: Vec<(i32, i64)> = Vec::new();
        for record in batch.records().skip(from) {
            if !first.iter().any(|(p, _)| *p == record.partition()) {
                first.push((record.partition(), record.offset()));
            }
        }
        if let Some(unreadable) = &self.unreadable
            && first
                .iter()
                .any(|(p, _)| *p == unreadable.message.partition())
        {
            self.unreadable = None;
        }
        for (partition, offset) in first {
            // Asynchronous, as a rewind: the client drops what it fetched beyond.
            self.consumer
                .seek(
                    &self.topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::ZERO,
                )
                .with_context(|| {
                    format!("seeking {}/{partition} back to offset {offset}", self.topic)
                })?;
        }
        Ok(())
    }

    /// The record that ended the last batch because the plugin contract cannot carry
    /// it, if one did.
    pub(crate) fn take_unreadable(&mut self) -> Option<Unreadable> {
        self.unreadable.take()
    }

    /// Hands revocations and assignments to `rebalance` (the checkpoint) from now on.
    pub(crate) fn attach(&self, rebalance: Arc<Mutex<dyn Rebalance>>) {
        let _ = self.consumer.context().role.rebalance.set(rebalance);
    }

    pub(crate) fn consumer(&self) -> &BaseConsumer<SourceContext> {
        &self.consumer
    }

    /// Fails when the consumer can no longer be used: librdkafka reports a fatal error
    /// (for instance, another member joined the group with this member's static
    /// `group.instance.id` and fenced it). Such a consumer receives nothing more, so
    /// the host stops at once rather than sit idle and look alive.
    fn check_fatal(&self) -> anyhow::Result<()> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            bail!(fenced_or_fatal(&self.topic, code, &reason));
        }
        Ok(())
    }

    fn consume_error(&self, error: KafkaError) -> anyhow::Result<()> {
        match error.rdkafka_error_code() {
            Some(code @ (RDKafkaErrorCode::FencedInstanceId | RDKafkaErrorCode::Fatal)) => {
                let reason = self
                    .consumer
                    .client()
                    .fatal_error()
                    .map(|(_, reason)| reason)
                    .unwrap_or_else(|| error.to_string());
                bail!(fenced_or_fatal(&self.topic, code, &reason))
            }
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
            // The client's error callback has reported it already.
            _ if crate::auth::is_lost_connection(&error) => {
                tracing::debug!(%error, topic = %self.topic, "Consume error; continuing.");
                Ok(())
            }
            _ => {
                tracing::warn!(%error, topic = %self.topic, "Consume error; continuing.");
                Ok(())
            }
        }
    }

    /// Leaves the group cleanly so partitions move to other members at once, waiting
    /// up to `timeout` for the group coordinator. librdkafka's own close would wait
    /// for a coordinator that does not answer without limit (for instance, for a final
    /// commit it could not deliver); such a consumer is let go without its goodbye,
    /// and the group hands its partitions on after its session timeout.
    pub(crate) fn close(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
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
        // librdkafka's close, on a thread of its own so that waiting for it ends.
        let (closed, done) = std::sync::mpsc::channel();
        let consumer = self.consumer;
        let closing = std::thread::Builder::new()
            .name("sluice-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed.send(());
            });
        if closing.is_ok()
            && done
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
        {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "The source cluster did not answer the consumer's goodbye; stopping without it (the group hands its partitions on after its session timeout)."
            );
        }
    }
}

/// What a consumer that can no longer be used says.
fn fenced_or_fatal(topic: &str, code: RDKafkaErrorCode, reason: &str) -> String {
    if code == RDKafkaErrorCode::FencedInstanceId || reason.contains("fenced") {
        format!(
            "this host was fenced from its consumer group (source topic `{topic}`): another member joined with the same static `group.instance.id` ({reason}); \
             stopping at once. Give each host its own group.instance.id (and --instance)"
        )
    } else {
        format!("the consumer of source topic `{topic}` failed for good: {code}: {reason}")
    }
}

/// Commits `offsets` for the consumer's group and waits up to `timeout` for the
/// answer. librdkafka's synchronous commit waits without limit for a group
/// coordinator, which would hold up a stopping host for as long as its cluster is
/// away; this one asks for the answer on a queue of its own instead.
pub(crate) fn commit_within(
    consumer: &BaseConsumer<SourceContext>,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> KafkaResult<()> {
    use rdkafka::bindings as rd;
    let client = consumer.client().native_ptr();
    // SAFETY: a live consumer handle and partition list; the queue is created here and
    // destroyed on every path (librdkafka keeps it alive while the commit still needs
    // it), and the event it returns is destroyed after its error is read.
    unsafe {
        let queue = rd::rd_kafka_queue_new(client);
        let code =
            rd::rd_kafka_commit_queue(client, offsets.ptr(), queue, None, std::ptr::null_mut());
        let result = if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err(KafkaError::ConsumerCommit(code.into()))
        } else {
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            let event = rd::rd_kafka_queue_poll(queue, millis);
            if event.is_null() {
                Err(KafkaError::ConsumerCommit(
                    RDKafkaErrorCode::OperationTimedOut,
                ))
            } else {
                let code = rd::rd_kafka_event_error(event);
                rd::rd_kafka_event_destroy(event);
                if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                    Ok(())
                } else {
                    Err(KafkaError::ConsumerCommit(code.into()))
                }
            }
        };
        rd::rd_kafka_queue_destroy(queue);
        result
    }
}

fn push(batch: &mut InputWriter, message: &BorrowedMessage<'_>, headers: MessageHeaders<'_>) {
    batch.push(RecordFields {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        key: message.key(),
        value: message.payload(),
        headers: (0..headers.count).map(|i| {
            let (name, value) = headers.get(i).unwrap_or_default();
            Header {
                // Checked by `MessageHeaders::check` before the record was pushed.
                name: std::str::from_utf8(name).unwrap_or_default(),
                value,
            }
        }),
    });
}

/// A consumed record's headers, read with librdkafka's own accessors: rdkafka's
/// `Headers::get` and `try_get` panic on a name that is not UTF-8, and any producer
/// may write one.
#[derive(Clone, Copy)]
struct MessageHeaders<'a> {
    headers: *const rdkafka::bindings::rd_kafka_headers_t,
    count: usize,
    message: std::marker::PhantomData<&'a BorrowedMessage<'a>>,
}

impl<'a> MessageHeaders<'a> {
    fn of(message: &'a BorrowedMessage<'a>) -> Self {
        use rdkafka::bindings as rd;
        let mut headers = std::ptr::null_mut();
        // SAFETY: a live message; librdkafka parses its headers once, keeps them with
        // the message and returns a pointer valid for as long as the message is.
        let code = unsafe { rd::rd_kafka_message_headers(message.ptr(), &mut headers) };
        if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return MessageHeaders {
                headers: std::ptr::null(),
                count: 0,
                message: std::marker::PhantomData,
            };
        }
        // SAFETY: a valid headers pointer, see above.
        let count = unsafe { rd::rd_kafka_header_cnt(headers) };
        MessageHeaders {
            headers,
            count,
            message: std::marker::PhantomData,
        }
    }

    /// Header `index`: its name and value as bytes.
    fn get(&self, index: usize) -> Option<(&'a [u8], Option<&'a [u8]>)> {
        if index >= self.count {
            return None;
        }
        let mut name = std::ptr::null();
        let mut value = std::ptr::null();
        let mut size = 0;
        // SAFETY: a valid headers pointer and an index below its count; the name is
        // NUL-terminated and the value `size` bytes long, both owned by the message.
        unsafe {
            let code = rdkafka::bindings::rd_kafka_header_get_all(
                self.headers,
                index,
                &mut name,
                &mut value,
                &mut size,
            );
            if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return None;
            }
            let name = std::ffi::CStr::from_ptr(name).to_bytes();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
            Some((name, value))
        }
    }

    /// Why the batch format cannot carry these headers as they are, if it cannot:
    /// names are UTF-8 text of up to 65 535 bytes, and a record has up to 65 535
    /// headers. Anything else would be cut or changed on its way to the plugin.
    fn check(&self) -> Result<(), String> {
        const MAX: usize = u16::MAX as usize;
        if self.count > MAX {
            return Err(format!(
                "the record has {} headers; the plugin contract carries at most {MAX}",
                self.count
            ));
        }
        for index in 0..self.count {
            let Some((name, _)) = self.get(index) else {
                return Err(format!("header {index} could not be read"));
            };
            if let Err(error) = std::str::from_utf8(name) {
                return Err(format!(
                    "the name of header {index} is not UTF-8 ({error}; hex {}); the plugin contract carries header names as text",
                    name.iter()
                        .take(64)
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                ));
            }
            if name.len() > MAX {
                return Err(format!(
                    "the name of header {index} is {} bytes long; the plugin contract carries names of at most {MAX} bytes",
                    name.len()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(numbers: &[i32]) -> Vec<Partition> {
        numbers.iter().map(|p| ("in".to_string(), *p)).collect()
    }

    #[test]
    fn a_partition_starts_fresh_the_first_time_any_worker_gets_it_only() {
        let host = FreshStart::default();
        let (first, second) = (host.clone(), host.clone());
        assert_eq!(
            first.first_time(&partitions(&[0, 1, 2, 3])),
            partitions(&[0, 1, 2, 3])
        );
        // Another worker of the host takes two of them over, and one it never had.
        assert_eq!(second.first_time(&partitions(&[2, 3, 4])), partitions(&[4]));
        // Given back after a rebalance, none is fresh again.
        assert!(first.first_time(&partitions(&[0, 1, 2, 3, 4])).is_empty());
    }
}
