//! Checkpoints in both delivery modes, and what happens to state on assignment and
//! revocation.
//!
//! Strategy: one `Checkpointer` owns the sink producer, the keyed state's changelog
//! and the progress bookkeeping. The pipeline loop calls it between batches; the
//! consumer's rebalance callback (which runs inside the same thread's `poll`) calls it
//! on assignment and revocation. Both reach it through one mutex, never held across a
//! `poll`.
//!
//! - At-least-once: changed state is written to the changelog and acknowledged before
//!   the offsets that go with it are committed, so restored state always covers the
//!   committed input (a replay after a crash may count some records twice, as the
//!   outputs may be written twice).
//! - Exactly-once: the producer is transactional; outputs, changelog records and the
//!   consumer offsets of one checkpoint are one transaction. On any failure the
//!   transaction is aborted, every partition is sought back to the offsets of the
//!   last committed transaction and its state is restored from the changelog. An
//!   indefinite outcome (a timeout, an unknown result) is never retried: the producer
//!   is dropped and a new one with the same transactional id fences whatever the old
//!   one may still do.
//!
//! Size: the recovery paths (abort, rewind, restore, fencing, retries) belong together
//! because they share the checkpointer's state; half of the file is their unit tests,
//! with the fakes of the Kafka clients they run against.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::changelog::Restorer;
use super::clients::{CheckpointSink, GroupMember, StateReader};
use super::retry::{Next, Retries};
use crate::config::Delivery;
use crate::progress::{Partition, RecordFailure, Tracker};
use crate::shutdown::Shutdown;
use crate::sink::kafka::{KafkaSink, SendError};
use crate::source::kafka::{Rebalance, SourceContext};
use crate::state::SharedState;

/// How long a transaction commit, abort or producer restart may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Fencings tolerated within [`FENCING_WINDOW`] before the host gives up.
const FENCING_BUDGET: usize = 3;
const FENCING_WINDOW: Duration = Duration::from_secs(300);
/// How long a checkpoint waits for the changelog writes to be acknowledged.
const CHANGELOG_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a revocation waits for the outputs in flight before it commits what was
/// acknowledged (well within the group's `max.poll.interval.ms`).
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How often, unless `checkpoint.record_attempts` says otherwise, the same failure of
/// the same input record (its output too large for the broker, an output name the
/// sink does not map...) is retried before that is the record's failure: it goes to
/// the dead-letter topic, or the host stops naming it.
const RECORD_ATTEMPTS: u32 = 5;

/// How long a final or pre-revocation commit of at-least-once offsets waits for the
/// group coordinator's answer.
const FINAL_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a checkpoint is taken: periodic checkpoints may skip when nothing moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Periodic,
    /// Shutdown or revocation: always sent, and waited for (at-least-once: up to
    /// `FINAL_COMMIT_TIMEOUT`); a failure is an error.
    Final,
}

/// The checkpoint of one worker, over its sink `S` and its changelog reader `R` (the
/// Kafka clients, or fakes in tests).
pub(crate) struct Checkpointer<S = KafkaSink, R = Restorer> {
    delivery: Delivery,
    sink: S,
    tracker: Arc<Mutex<Tracker>>,
    state: SharedState,
    changelog: String,
    restorer: R,
    assigned: BTreeSet<Partition>,
    /// Exactly-once: the offset after the last record processed in the open
    /// transaction, per partition.
    processed: BTreeMap<Partition, i64>,
    /// Exactly-once: where each partition resumes when the open transaction aborts.
    rewind: BTreeMap<Partition, i64>,
    /// At-least-once: what the last commit request held, to skip commits that would
    /// change nothing.
    last_commit: TopicPartitionList,
    /// When the producer was last fenced.
    fenced: Vec<Instant>,
    /// Exactly-once: the metadata committed with each offset (see
    /// `app::workers_metadata`).
    commit_metadata: Option<String>,
    /// Bounds the waits of a stopping host.
    shutdown: Shutdown,
    /// Set when a stopping host gave up its final commit: revoked partitions are then
    /// released without one.
    gave_up: bool,
    /// Failures in a row since the last successful checkpoint.
    retries: Retries,
    /// Whether failed records go to a dead-letter topic.
    dead_letter: bool,
    /// Input records that failed `record_attempts` times, with the
    /// reason, not yet handed to the pipeline (which sends them to the dead-letter topic).
    poisoned: Vec<RecordFailure>,
}

impl<S: CheckpointSink, R: StateReader> Checkpointer<S, R> {
    pub(crate) fn new(
        delivery: Delivery,
        sink: S,
        tracker: Arc<Mutex<Tracker>>,
        state: SharedState,
        changelog: String,
        restorer: R,
        shutdown: Shutdown,
    ) -> Self {
        Checkpointer {
            delivery,
            sink,
            tracker,
            state,
            changelog,
            restorer,
            assigned: BTreeSet::new(),
            processed: BTreeMap::new(),
            rewind: BTreeMap::new(),
            last_commit: TopicPartitionList::new(),
            fenced: Vec::new(),
            commit_metadata: None,
            shutdown,
            gave_up: false,
            retries: Retries::new(false, RECORD_ATTEMPTS),
            dead_letter: false,
            poisoned: Vec::new(),
        }
    }

    /// Whether failed records go to the sink's dead-letter topic (so does an input
    /// record whose outputs fail `attempts` times in a row), and how many attempts a
    /// record gets.
    pub(crate) fn set_record_failures(&mut self, dead_letter: bool, attempts: u32) {
        self.dead_letter = dead_letter;
        self.retries = Retries::new(dead_letter, attempts);
    }

    /// Whether the pipeline goes on after a failure of the sink by rewinding to the
    /// last checkpoint: always exactly-once; at-least-once when a failed delivery
    /// names its input record and that record can go to the dead-letter topic.
    pub(crate) fn rewinds_after(&self, record_known: bool) -> bool {
        self.exactly_once() || (self.dead_letter && record_known)
    }

    /// Whether the worker is retrying after failures (the last
    /// transaction failed and none committed since): it is not ready meanwhile.
    pub(crate) fn retrying(&self) -> bool {
        self.retries.retrying()
    }

    /// The failure of an input record being retried, if there is one: a host that
    /// stops meanwhile has not stopped cleanly.
    pub(crate) fn failing(&self) -> Option<String> {
        self.retries.failing()
    }

    /// Input records that failed too often, for the pipeline to dead-letter when it
    /// reads them again.
    pub(crate) fn take_poisoned(&mut self) -> Vec<RecordFailure> {
        std::mem::take(&mut self.poisoned)
    }

    /// Exactly-once: `metadata` goes with every offset this checkpointer commits.
    pub(crate) fn set_commit_metadata(&mut self, metadata: String) {
        self.commit_metadata = Some(metadata);
    }

    pub(crate) fn sink(&self) -> &S {
        &self.sink
    }

    pub(crate) fn exactly_once(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce
    }

    /// Records that a batch covering `spans` (partition, first offset, offset after the
    /// last) was read. The first offset read from a partition since
    /// it was assigned is where it rewinds to while its group has committed nothing
    /// for it: without it, a failure of the very first batch would leave the consumer
    /// past that batch, and a later commit would skip its records.
    pub(crate) fn fetched(&mut self, spans: &[(Partition, i64, i64)]) {
        for (partition, first, _) in spans {
            self.rewind.entry(partition.clone()).or_insert(*first);
        }
    }

    /// Records that a batch covering `spans` (partition, first offset, offset after
    /// the last) was handed to the producer.
    pub(crate) fn processed(&mut self, spans: &[(Partition, i64, i64)]) {
        if !self.exactly_once() {
            return;
        }
        for (partition, first, end) in spans {
            self.rewind.entry(partition.clone()).or_insert(*first);
            self.processed.insert(partition.clone(), *end);
        }
    }

    /// Takes a checkpoint. Returns the number of partitions whose progress was
    /// committed. An error is fatal for the pipeline.
    pub(crate) fn checkpoint(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
        reason: Reason,
    ) -> anyhow::Result<usize> {
        let started = Instant::now();
        let committed = match self.delivery {
            Delivery::AtLeastOnce => self.checkpoint_at_least_once(consumer, reason)?,
            Delivery::ExactlyOnce => self.checkpoint_transaction(consumer)?,
        };
        if committed > 0 {
            tracing::info!(
                partitions = committed,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "Checkpoint committed."
            );
        }
        Ok(committed)
    }

    fn checkpoint_at_least_once(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
        reason: Reason,
    ) -> anyhow::Result<usize> {
        self.flush_changelog()?;
        let mut tpl = TopicPartitionList::new();
        {
            let tracker = self.tracker.lock().unwrap();
            for ((topic, partition), offset) in tracker.committable() {
                if self.assigned.contains(&(topic.clone(), *partition)) {
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
                }
            }
        }
        // Periodic commits skip when nothing moved; a final or pre-revocation commit
        // always goes out, in case the last asynchronous one failed.
        let unchanged =
            reason == Reason::Periodic && tpl.to_topic_map() == self.last_commit.to_topic_map();
        if tpl.count() == 0 || unchanged {
            return Ok(0);
        }
        let committed = match reason {
            Reason::Periodic => consumer.commit(&tpl, None),
            Reason::Final => consumer.commit(&tpl, Some(self.shutdown.bound(FINAL_COMMIT_TIMEOUT))),
        };
        match committed {
            Ok(()) => {
                let count = tpl.count();
                // Failures in a row end once the record that failed is behind the
                // committed offsets (it went to the dead-letter topic).
                self.retries.committed(|(partition, offset)| {
                    tpl.find_partition(&partition.0, partition.1)
                        .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o > *offset))
                });
                self.last_commit = tpl;
                Ok(count)
            }
            Err(error) if reason == Reason::Periodic => {
                tracing::warn!(%error, "Checkpoint commit failed; the next checkpoint retries it.");
                crate::history::checkpoint_failed(&error);
                Ok(0)
            }
            Err(error) => bail!(
                "committing the offsets of {} partitions failed: {error}",
                tpl.count()
            ),
        }
    }

    /// At-least-once: writes changed state to the changelog and waits until the
    /// broker has acknowledged it and every output before it.
    fn flush_changelog(&mut self) -> anyhow::Result<()> {
        let changes = {
            let mut state = self.state.lock().unwrap();
            if !state.has_changes() {
                return Ok(());
            }
            state.take_changes(None)
        };
        let written = self.write_changes(&changes);
        if written.is_err() {
            // Offsets never outrun state: the changes stay to be saved, so no later
            // checkpoint (the final one included) commits the offsets they go with
            // before they are written.
            self.state.lock().unwrap().untake_changes(&changes);
        }
        written.map_err(|error| {
            error.context(format!(
                "writing {} state changes to changelog `{}` failed; the offsets they go with stay uncommitted, \
                 so a restart reads those records again",
                changes.len(),
                self.changelog
            ))
        })
    }

    /// At-least-once: sends `changes` and waits for the broker's acknowledgement of
    /// them and of every output before them.
    fn write_changes(&mut self, changes: &[crate::state::Change]) -> anyhow::Result<()> {
        let seq = self.tracker.lock().unwrap().begin(Vec::new());
        self.sink
            .send_changes(seq, &self.changelog, changes, &self.tracker)?;
        self.tracker.lock().unwrap().seal(seq);
        let deadline = Instant::now() + CHANGELOG_TIMEOUT;
        loop {
            {
                let tracker = self.tracker.lock().unwrap();
                if let Some(failure) = tracker.failure() {
                    bail!("{failure}");
                }
                if tracker.passed(seq) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "state changes were not acknowledged by the broker within {} s",
                    CHANGELOG_TIMEOUT.as_secs(),
                );
            }
            self.sink.poll(Duration::from_millis(5))?;
        }
    }

    /// Exactly-once: commits the open transaction with the changed state and the
    /// offsets, then opens the next one.
    fn checkpoint_transaction(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
    ) -> anyhow::Result<usize> {
        let changes = self.state.lock().unwrap().take_changes(None);
        if self.processed.is_empty() && changes.is_empty() {
            return Ok(0);
        }
        let result = self.commit_transaction(consumer, &changes);
        match result {
            Ok(count) => {
                self.rewind.extend(std::mem::take(&mut self.processed));
                if self.retries.succeeded() {
                    tracing::info!("A transaction committed again after failures.");
                }
                Ok(count)
            }
            Err(error) => {
                if error.is_indefinite() {
                    // The commit may or may not have happened: never retry it; fence
                    // this producer with a new one instead, then rewind.
                    tracing::warn!(%error, "The transaction's outcome is unknown; replacing the producer.");
                    self.replace_producer("after an unknown commit outcome")?;
                }
                self.recover(consumer, &error)?;
                Ok(0)
            }
        }
    }

    fn commit_transaction(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
        changes: &[crate::state::Change],
    ) -> Result<usize, TransactionError> {
        if !changes.is_empty() {
            let seq = self.tracker.lock().unwrap().begin(Vec::new());
            self.sink
                .send_changes(seq, &self.changelog, changes, &self.tracker)?;
            self.tracker.lock().unwrap().seal(seq);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.processed {
            let mut element = offsets.add_partition(topic, *partition);
            element
                .set_offset(Offset::Offset(*offset))
                .map_err(TransactionError::Kafka)?;
            if let Some(metadata) = &self.commit_metadata {
                element.set_metadata(metadata.as_str());
            }
        }
        let group = consumer.group().ok_or(TransactionError::NoGroup)?;
        let shutdown = &self.shutdown;
        self.sink
            .commit_transaction(&offsets, &group, TRANSACTION_TIMEOUT, &|| {
                shutdown.may_wait()
            })
            .map_err(TransactionError::Kafka)?;
        self.sink
            .begin_transaction()
            .map_err(TransactionError::Kafka)?;
        Ok(offsets.count())
    }

    /// Exactly-once: aborts the open transaction after `error`, rewinds every owned
    /// partition to its last committed offset and restores its state. Fails only
    /// when the producer can no longer be used (another host took its transactional
    /// id).
    pub(crate) fn recover(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
        error: &dyn std::fmt::Display,
    ) -> anyhow::Result<()> {
        self.recover_after(consumer, error, None)
    }

    /// [`Checkpointer::recover`] after a failure of input record `record` (when the
    /// pipeline knows it; a failed delivery names its own). The same failure of the
    /// same record `record_attempts` times in a row is that record's failure: it is
    /// dead-lettered when it is read again, or, without a dead-letter topic, the host
    /// stops naming it, its offset uncommitted. Failures in a row wait longer and
    /// longer before the retry.
    pub(crate) fn recover_after(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
        error: &dyn std::fmt::Display,
        record: Option<&RecordFailure>,
    ) -> anyhow::Result<()> {
        if self.shutdown.requested() {
            // Rewinding and restoring would serve nobody: the host stops, and the
            // next owner of these partitions starts from the last committed
            // transaction. What is open now is aborted by the drain (or, at the
            // latest, by the broker at the transaction timeout).
            bail!(
                "stopped without a final checkpoint: the open transaction was not recovered ({error}), as the host stops; records after the last committed transaction will be read again at the next start"
            );
        }
        match self.exactly_once() {
            true => {
                tracing::warn!(%error, "Transaction aborted; rewinding to the last checkpoint.")
            }
            false => tracing::warn!(%error, "A record failed; rewinding to the last checkpoint."),
        }
        crate::history::rewound(self.exactly_once(), error);
        // Aborting serves the delivery reports still due: a failed one names its
        // input record.
        let reported = self.abort_and_rewind(consumer)?;
        let for_good = reported.refused_for_good;
        let record = record.cloned().or(reported.record);
        // What failed, the same each time the same thing fails (a transaction error
        // names the producer's sequence number, which changes with each attempt).
        let what = match (&record, reported.delivery) {
            (Some(record), _) => format!("{}: {}", record.origin(), record.cause),
            (None, Some(delivery)) => delivery,
            (None, None) => error.to_string(),
        };
        match self.retries.failed(what, record, for_good) {
            Next::Retry(pause) => {
                if !pause.is_zero() {
                    tracing::warn!(
                        pause_ms = pause.as_millis() as u64,
                        "The same failure again; retrying after a pause."
                    );
                }
                let until = Instant::now() + pause;
                while Instant::now() < until && !self.shutdown.requested() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Next::DeadLetter(record) => {
                tracing::warn!(
                    record = %record.origin(),
                    cause = %record.cause,
                    "A record failed every attempt; it goes to the dead-letter topic."
                );
                self.poisoned.push(record);
            }
            Next::Stop(message) => bail!(message),
        }
        Ok(())
    }

    /// Aborts the open transaction, rewinds every owned partition to its last
    /// committed offset and restores its state. Returns what the delivery reports
    /// said.
    fn abort_and_rewind(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
    ) -> anyhow::Result<Reported> {
        if !self.exactly_once() {
            // At-least-once (a record on its way to the dead-letter topic): nothing to
            // abort. What is in flight is waited for; the reports of the batches
            // dropped below count for nothing, and their records are read again.
            if let Err(error) = self.sink.flush(REVOKE_FLUSH_TIMEOUT) {
                tracing::warn!(%error, "Not every output was acknowledged before the rewind; those records are written again.");
            }
        } else if let Some(fatal) = self.sink.fatal_error() {
            // Fenced: either this host stalled past the transaction timeout (the broker
            // aborted its transaction and bumped the producer epoch), or another host
            // uses the same transactional id. A new producer recovers from the first;
            // the budget stops the two hosts of the second from fencing each other
            // forever.
            let now = Instant::now();
            self.fenced
                .retain(|at| now.duration_since(*at) < FENCING_WINDOW);
            if self.fenced.len() >= FENCING_BUDGET {
                bail!(
                    "the transactional producer was fenced {FENCING_BUDGET} times within {} s ({fatal}): \
                     another host runs with the same transactional id; give each host its own `--instance`",
                    FENCING_WINDOW.as_secs()
                );
            }
            self.fenced.push(now);
            tracing::warn!(%fatal, "The transactional producer was fenced; starting a new one.");
            self.replace_producer("after it was fenced")?;
        } else if let Err(abort) = self
            .sink
            .abort_transaction(TRANSACTION_TIMEOUT, &|| !self.shutdown.requested())
        {
            // The outcome is unknown: never retry, fence the old producer instead.
            tracing::warn!(error = %abort, "Abort failed; replacing the producer.");
            self.replace_producer("after a failed abort")?;
        } else if let Err(begin) = self.sink.begin_transaction() {
            tracing::warn!(error = %begin, "Could not begin a transaction; replacing the producer.");
            self.replace_producer("after a failed begin")?;
        }
        let reported = {
            let mut tracker = self.tracker.lock().unwrap();
            let reported = Reported {
                record: tracker.failed_record().cloned(),
                delivery: tracker.failure().map(str::to_owned),
                refused_for_good: tracker.was_refused_for_good(),
            };
            tracker.reset();
            reported
        };
        self.processed.clear();
        self.rewind_to_committed(consumer)?;
        let owned: Vec<i32> = self.assigned.iter().map(|(_, p)| *p).collect();
        self.restore(&owned, false)?;
        Ok(reported)
    }

    /// Exactly-once: a new producer of the same transactional id, which fences the
    /// old one. Asks a cluster that does not answer again until a shutdown.
    fn replace_producer(&mut self, why: &str) -> anyhow::Result<()> {
        if self.shutdown.requested() {
            bail!(
                "stopped without a final checkpoint: the transactional producer was not replaced {why}, as the host stops; records after the last committed transaction will be read again at the next start"
            );
        }
        let shutdown = &self.shutdown;
        self.sink
            .recreate(&|| !shutdown.requested())
            .with_context(|| format!("replacing the transactional producer {why}"))
    }

    /// A stopping host could not deliver what it took (the sink cluster did not
    /// answer): no final commit, and partitions revoked from now on are released
    /// without one. Their next owner reads them again from the last checkpoint.
    pub(crate) fn give_up_final_commit(&mut self) {
        self.gave_up = true;
    }

    /// Seeks every owned partition back to the offset its group last committed, as the
    /// broker has it: after an unknown commit outcome only the broker knows whether the
    /// last transaction went through. A partition never committed goes back to the
    /// first record processed since it was assigned.
    fn rewind_to_committed(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
    ) -> anyhow::Result<()> {
        if self.assigned.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &self.assigned {
            tpl.add_partition(topic, *partition);
        }
        let committed = consumer
            .committed(tpl, TRANSACTION_TIMEOUT)
            .context("reading the committed offsets to rewind to")?;
        for element in committed.elements() {
            let partition = (element.topic().to_string(), element.partition());
            let Some(offset) =
                rewind_target(element.offset(), self.rewind.get(&partition).copied())
            else {
                continue;
            };
            consumer
                .seek(&partition.0, partition.1, offset)
                .with_context(|| {
                    format!(
                        "rewinding {}/{} to offset {offset}",
                        partition.0, partition.1
                    )
                })?;
            self.rewind.insert(partition, offset);
        }
        Ok(())
    }

    /// Restores the state of newly assigned partitions before any of their records
    /// is processed; the state of those in `fresh` (`run --fresh`) is deleted instead.
    fn assign(&mut self, partitions: &[Partition], fresh: &[Partition]) -> anyhow::Result<()> {
        self.assigned.extend(partitions.iter().cloned());
        let (cleared, restored): (Vec<i32>, Vec<i32>) = partitions
            .iter()
            .map(|(_, p)| *p)
            .partition(|p| fresh.iter().any(|(_, f)| f == p));
        self.restore(&restored, false)?;
        self.restore(&cleared, true)
    }

    fn restore(&mut self, partitions: &[i32], fresh: bool) -> anyhow::Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let restored = self.restorer.restore(partitions)?;
        let mut state = self.state.lock().unwrap();
        let mut keys = 0;
        for (partition, values) in restored {
            keys += values.len();
            state.install(partition, values);
            if fresh {
                state.clear(partition);
            }
        }
        if fresh {
            tracing::warn!(
                partitions = ?partitions,
                keys,
                "Starting fresh: the state of these partitions is deleted (tombstones go to the changelog at the next checkpoint)."
            );
        } else {
            tracing::info!(
                partitions = ?partitions,
                keys,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                changelog = %self.changelog,
                "State restored."
            );
        }
        Ok(())
    }

    /// Checkpoints revoked partitions (unless they were lost, when nothing of theirs
    /// may be committed) and drops their state.
    fn revoke(
        &mut self,
        consumer: &impl GroupMember<Group = S::Group>,
        partitions: &[Partition],
        lost: bool,
    ) -> anyhow::Result<()> {
        let result = if self.gave_up {
            tracing::info!(partitions = ?partitions, "Partitions released without a commit.");
            Ok(())
        } else if lost {
            tracing::warn!(partitions = ?partitions, "Partitions lost (the group moved on without this host); their uncommitted progress is discarded.");
            // Nothing to rewind or restore for partitions that are gone.
            for partition in partitions {
                self.assigned.remove(partition);
            }
            if self.exactly_once() {
                self.recover(consumer, &"partitions lost")
            } else {
                Ok(())
            }
        } else {
            if self.exactly_once() {
                // Committing the transaction flushes its outputs.
                self.checkpoint(consumer, Reason::Final).map(|_| ())
            } else {
                // Wait for the outputs in flight, so that the offsets committed below
                // cover them and the next owner writes nothing again.
                if let Err(error) = self.sink.flush(REVOKE_FLUSH_TIMEOUT) {
                    tracing::warn!(%error, "Not every output was acknowledged before the partitions were revoked; their next owner writes those again.");
                }
                // Their next owner starts from the last committed offsets, with the
                // state that goes with them: at least once either way.
                if let Err(error) = self.checkpoint(consumer, Reason::Final) {
                    tracing::warn!(
                        "The revoked partitions' progress was not committed; their next owner reads it again: {error:#}"
                    );
                }
                Ok(())
            }
        };
        let mut state = self.state.lock().unwrap();
        let mut tracker = self.tracker.lock().unwrap();
        for partition in partitions {
            self.assigned.remove(partition);
            self.processed.remove(partition);
            self.rewind.remove(partition);
            tracker.forget(partition);
            state.drop_partition(partition.1);
        }
        result
    }

    /// Exactly-once, on a fatal error: abort what is open so `read_committed`
    /// consumers are not held up until the broker's transaction timeout.
    /// A stopping host waits for the abort no longer than its grace period allows.
    pub(crate) fn abandon(&mut self) {
        let timeout = self.shutdown.bound(TRANSACTION_TIMEOUT);
        if self.exactly_once()
            && self.sink.fatal_error().is_none()
            && let Err(error) = self
                .sink
                .abort_transaction(timeout, &|| self.shutdown.may_wait())
        {
            tracing::warn!(%error, "Aborting the open transaction failed; the broker aborts it at its timeout.");
        }
    }
}

/// Where a partition rewinds to: the offset its group committed, or, when the group
/// never committed one, the first offset read from it since it was assigned (never
/// past it: that would skip its records). `None`: nothing was read, so the consumer
/// is still where the partition started.
fn rewind_target(committed: Offset, first_read: Option<i64>) -> Option<i64> {
    match committed {
        Offset::Offset(offset) => Some(offset),
        _ => first_read,
    }
}

/// What the delivery reports of an aborted transaction said.
struct Reported {
    /// The input record of the first failed delivery (the largest refused output).
    record: Option<RecordFailure>,
    /// The first failed delivery.
    delivery: Option<String>,
    /// Whether a delivery was refused for good.
    refused_for_good: bool,
}

#[derive(Debug, thiserror::Error)]
enum TransactionError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("writing the state changes failed")]
    Changelog(#[from] SendError),
    #[error("the consumer has not joined its group yet (no group metadata)")]
    NoGroup,
}

impl TransactionError {
    /// A timeout or a retriable failure of the commit itself: whether the transaction
    /// committed is unknown.
    fn is_indefinite(&self) -> bool {
        match self {
            TransactionError::Kafka(error) => crate::sink::kafka::is_unanswered(error),
            TransactionError::Changelog(_) | TransactionError::NoGroup => false,
        }
    }
}

/// The consumer's rebalance callback reaches the checkpoint through this.
impl Rebalance for Checkpointer {
    fn assigned(&mut self, partitions: &[Partition], fresh: &[Partition]) -> anyhow::Result<()> {
        self.assign(partitions, fresh)
    }

    fn revoked(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        partitions: &[Partition],
        lost: bool,
    ) -> anyhow::Result<()> {
        self.revoke(consumer, partitions, lost)
    }
}

#[cfg(test)]
mod tests {
    //! The recovery paths against fakes of the consumer, the sink and the changelog
    //! reader that share one pretend broker: what the group committed, what the
    //! changelog holds, and what each client was asked to do.

    use std::cell::{Cell, RefCell};
    use std::collections::{HashMap, VecDeque};
    use std::rc::Rc;

    use rdkafka::error::RDKafkaErrorCode;

    use super::*;
    use crate::checkpoint::changelog::Values;
    use crate::state::{Change, StateStore};

    /// What the broker holds, and the calls the clients made, in order.
    #[derive(Default)]
    struct Broker {
        committed: RefCell<BTreeMap<Partition, i64>>,
        /// Acknowledged (at-least-once) or committed (exactly-once) changelog records.
        changelog: RefCell<Vec<Change>>,
        /// Changelog records of the open transaction.
        open: RefCell<Vec<Change>>,
        calls: RefCell<Vec<String>>,
    }

    impl Broker {
        fn called(&self, call: impl Into<String>) {
            self.calls.borrow_mut().push(call.into());
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }

        fn committed(&self, partition: &Partition) -> Option<i64> {
            self.committed.borrow().get(partition).copied()
        }

        fn commit(&self, offsets: &TopicPartitionList) {
            for element in offsets.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    self.committed
                        .borrow_mut()
                        .insert((element.topic().to_string(), element.partition()), offset);
                }
            }
        }
    }

    struct FakeConsumer(Rc<Broker>);

    impl GroupMember for FakeConsumer {
        type Group = ();

        fn commit(&self, offsets: &TopicPartitionList, wait: Option<Duration>) -> KafkaResult<()> {
            self.0
                .called(format!("commit offsets (wait: {})", wait.is_some()));
            self.0.commit(offsets);
            Ok(())
        }

        fn committed(
            &self,
            partitions: TopicPartitionList,
            _timeout: Duration,
        ) -> KafkaResult<TopicPartitionList> {
            let mut answer = TopicPartitionList::new();
            for element in partitions.elements() {
                let partition = (element.topic().to_string(), element.partition());
                let offset = self
                    .0
                    .committed(&partition)
                    .map_or(Offset::Invalid, Offset::Offset);
                answer.add_partition_offset(&partition.0, partition.1, offset)?;
            }
            Ok(answer)
        }

        fn seek(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
            self.0
                .called(format!("seek {topic}/{partition} to {offset}"));
            Ok(())
        }

        fn group(&self) -> Option<()> {
            Some(())
        }
    }

    struct FakeSink {
        broker: Rc<Broker>,
        /// The broker refuses changelog records (too large, say).
        refuse_changes: Cell<bool>,
        /// How the next transaction commits fail.
        commit_failures: RefCell<VecDeque<KafkaError>>,
        /// The producer was fenced.
        fatal: RefCell<Option<String>>,
        /// Exactly-once: changelog records count once their transaction commits.
        transactional: bool,
    }

    use rdkafka::error::KafkaResult;

    impl CheckpointSink for FakeSink {
        type Group = ();

        fn send_changes(
            &self,
            seq: u64,
            _topic: &str,
            changes: &[Change],
            tracker: &Mutex<Tracker>,
        ) -> Result<(), SendError> {
            let mut tracker = tracker.lock().unwrap();
            tracker.add_outputs(seq, changes.len());
            for change in changes {
                if self.refuse_changes.get() {
                    tracker.delivered_from(
                        seq,
                        None,
                        0,
                        Err("Broker: Message size too large".into()),
                    );
                } else {
                    match self.transactional {
                        true => self.broker.open.borrow_mut().push(change.clone()),
                        false => self.broker.changelog.borrow_mut().push(change.clone()),
                    }
                    tracker.delivered_from(seq, None, 0, Ok(()));
                }
            }
            Ok(())
        }

        fn poll(&self, _timeout: Duration) -> anyhow::Result<()> {
            Ok(())
        }

        fn flush(&self, _timeout: Duration) -> anyhow::Result<()> {
            Ok(())
        }

        fn fatal_error(&self) -> Option<String> {
            self.fatal.borrow().clone()
        }

        fn begin_transaction(&self) -> KafkaResult<()> {
            self.broker.called("begin");
            Ok(())
        }

        fn commit_transaction(
            &self,
            offsets: &TopicPartitionList,
            _group: &(),
            _timeout: Duration,
            _keep_going: &dyn Fn() -> bool,
        ) -> KafkaResult<()> {
            if let Some(error) = self.commit_failures.borrow_mut().pop_front() {
                self.broker.called("commit transaction: failed");
                return Err(error);
            }
            self.broker.called("commit transaction");
            self.broker.commit(offsets);
            let open = std::mem::take(&mut *self.broker.open.borrow_mut());
            self.broker.changelog.borrow_mut().extend(open);
            Ok(())
        }

        fn abort_transaction(
            &self,
            _timeout: Duration,
            _keep_going: &dyn Fn() -> bool,
        ) -> KafkaResult<()> {
            self.broker.called("abort");
            self.broker.open.borrow_mut().clear();
            Ok(())
        }

        fn recreate(&mut self, _keep_going: &dyn Fn() -> bool) -> anyhow::Result<()> {
            self.broker.called("new producer");
            self.broker.open.borrow_mut().clear();
            *self.fatal.borrow_mut() = None;
            Ok(())
        }
    }

    struct FakeReader(Rc<Broker>);

    impl StateReader for FakeReader {
        fn restore(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, Values>> {
            self.0.called(format!("restore {partitions:?}"));
            let mut restored: HashMap<i32, Values> =
                partitions.iter().map(|p| (*p, Values::new())).collect();
            for change in self.0.changelog.borrow().iter() {
                if let Some(values) = restored.get_mut(&change.partition) {
                    match &change.value {
                        Some(value) => values.insert(change.key.clone(), value.clone()),
                        None => values.remove(&change.key),
                    };
                }
            }
            Ok(restored)
        }
    }

    struct Setup {
        broker: Rc<Broker>,
        consumer: FakeConsumer,
        checkpointer: Checkpointer<FakeSink, FakeReader>,
        tracker: Arc<Mutex<Tracker>>,
        state: SharedState,
        shutdown: Shutdown,
    }

    fn setup(delivery: Delivery) -> Setup {
        let broker = Rc::new(Broker::default());
        let tracker = Arc::new(Mutex::new(Tracker::new()));
        let state = StateStore::shared();
        let shutdown = Shutdown::new();
        let sink = FakeSink {
            broker: broker.clone(),
            refuse_changes: Cell::new(false),
            commit_failures: RefCell::new(VecDeque::new()),
            fatal: RefCell::new(None),
            transactional: delivery == Delivery::ExactlyOnce,
        };
        let mut checkpointer = Checkpointer::new(
            delivery,
            sink,
            tracker.clone(),
            state.clone(),
            "app-changelog".into(),
            FakeReader(broker.clone()),
            shutdown.clone(),
        );
        checkpointer
            .assign(&[partition()], &[])
            .expect("assigning restores the (empty) state");
        Setup {
            consumer: FakeConsumer(broker.clone()),
            broker,
            checkpointer,
            tracker,
            state,
            shutdown,
        }
    }

    fn partition() -> Partition {
        ("in".to_string(), 0)
    }

    fn set(state: &SharedState, key: &str, value: &str) {
        let mut state = state.lock().unwrap();
        state
            .set(0, 0, key.as_bytes().to_vec(), value.as_bytes().to_vec())
            .unwrap();
    }

    fn get(state: &SharedState, key: &str) -> Option<String> {
        let state = state.lock().unwrap();
        state
            .get(0, key.as_bytes())
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    /// A batch of records `first..end` of the partition, processed (exactly-once).
    fn processed(setup: &mut Setup, first: i64, end: i64) {
        let span = [(partition(), first, end)];
        setup.checkpointer.fetched(&span);
        setup.checkpointer.processed(&span);
    }

    /// A batch that ends at `end` of the partition, all its outputs acknowledged
    /// (at-least-once).
    fn acknowledged(setup: &Setup, end: i64) {
        let mut tracker = setup.tracker.lock().unwrap();
        let seq = tracker.begin(vec![(partition(), end)]);
        tracker.seal(seq);
    }

    /// A definite refusal of a transaction commit (not an unknown outcome).
    fn refused() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    }

    #[test]
    fn a_partition_rewinds_to_its_committed_offset_or_else_to_the_first_offset_read() {
        assert_eq!(rewind_target(Offset::Offset(40), Some(12)), Some(40));
        // Never committed: back to the first record read, not past the batch.
        assert_eq!(rewind_target(Offset::Invalid, Some(12)), Some(12));
        assert_eq!(rewind_target(Offset::Invalid, None), None);
    }

    #[test]
    fn exactly_once_a_failed_first_transaction_rewinds_a_never_committed_partition_to_its_first_record()
     {
        let mut setup = setup(Delivery::ExactlyOnce);
        processed(&mut setup, 5, 10);
        setup
            .checkpointer
            .sink
            .commit_failures
            .borrow_mut()
            .push_back(refused());

        let committed = setup
            .checkpointer
            .checkpoint(&setup.consumer, Reason::Periodic)
            .expect("a refused transaction is recovered from, not fatal");

        assert_eq!(committed, 0);
        assert_eq!(setup.broker.committed(&partition()), None);
        let calls = setup.broker.calls();
        assert_eq!(
            &calls[1..],
            [
                "commit transaction: failed",
                "abort",
                "begin",
                "seek in/0 to 5",
                "restore [0]"
            ],
            "{calls:?}"
        );

        // Read again from offset 5, the next transaction commits the whole batch.
        processed(&mut setup, 5, 10);
        assert_eq!(
            setup
                .checkpointer
                .checkpoint(&setup.consumer, Reason::Periodic)
                .unwrap(),
            1
        );
        assert_eq!(setup.broker.committed(&partition()), Some(10));
    }

    #[test]
    fn exactly_once_an_aborted_transaction_restores_the_state_of_the_last_committed_one() {
        let mut setup = setup(Delivery::ExactlyOnce);
        processed(&mut setup, 0, 10);
        set(&setup.state, "AAPL", "1");
        setup
            .checkpointer
            .checkpoint(&setup.consumer, Reason::Periodic)
            .unwrap();
        assert_eq!(setup.broker.committed(&partition()), Some(10));

        processed(&mut setup, 10, 20);
        set(&setup.state, "AAPL", "2");
        set(&setup.state, "MSFT", "1");
        setup
            .checkpointer
            .sink
            .commit_failures
            .borrow_mut()
            .push_back(refused());
        setup
            .checkpointer
            .checkpoint(&setup.consumer, Reason::Periodic)
            .unwrap();

        assert!(
            setup
                .broker
                .calls()
                .contains(&"seek in/0 to 10".to_string()),
            "{:?}",
            setup.broker.calls()
        );
        assert_eq!(get(&setup.state, "AAPL").as_deref(), Some("1"));
        assert_eq!(get(&setup.state, "MSFT"), None);
        assert_eq!(setup.broker.committed(&partition()), Some(10));
    }

    #[test]
    fn at_least_once_a_failed_changelog_write_leaves_the_offsets_uncommitted_and_the_changes_to_save()
     {
        let mut setup = setup(Delivery::AtLeastOnce);
        acknowledged(&setup, 10);
        set(&setup.state, "AAPL", "1");
        setup.checkpointer.sink.refuse_changes.set(true);

        let error = setup
            .checkpointer
            .checkpoint(&setup.consumer, Reason::Final)
            .expect_err("a final checkpoint whose state was not written fails");

        assert!(
            format!("{error:#}").contains("state changes to changelog `app-changelog` failed"),
            "{error:#}"
        );
        assert_eq!(setup.broker.committed(&partition()), None);
        assert!(setup.state.lock().unwrap().has_changes());

        // Once the changelog takes them, the changes and then the offsets are saved.
        setup.checkpointer.sink.refuse_changes.set(false);
        setup.tracker.lock().unwrap().reset();
        acknowledged(&setup, 10);
        assert_eq!(
            setup
                .checkpointer
                .checkpoint(&setup.consumer, Reason::Final)
                .unwrap(),
            1
        );
        assert_eq!(setup.broker.committed(&partition()), Some(10));
        assert_eq!(setup.broker.changelog.borrow().len(), 1);
        assert!(!setup.state.lock().unwrap().has_changes());
    }

    fn failure(offset: i64) -> RecordFailure {
        RecordFailure {
            partition: partition(),
            offset,
            cause: "output of 2000000 bytes is larger than message.max.bytes".into(),
        }
    }

    #[test]
    fn the_same_record_failing_every_attempt_stops_the_host_naming_it_without_a_dead_letter_topic()
    {
        let mut setup = setup(Delivery::ExactlyOnce);
        setup.checkpointer.set_record_failures(false, 3);
        let record = failure(7);
        for attempt in 1..3 {
            processed(&mut setup, 0, 10);
            setup
                .checkpointer
                .recover_after(&setup.consumer, &"refused", Some(&record))
                .unwrap_or_else(|e| panic!("attempt {attempt} is retried: {e:#}"));
            assert!(setup.checkpointer.retrying());
        }
        processed(&mut setup, 0, 10);
        let error = setup
            .checkpointer
            .recover_after(&setup.consumer, &"refused", Some(&record))
            .expect_err("the third failure of the same record stops the host");
        let message = format!("{error:#}");
        assert!(message.contains("in/0@7"), "{message}");
        assert!(
            message.contains("larger than message.max.bytes"),
            "{message}"
        );
        assert_eq!(setup.broker.committed(&partition()), None);
    }

    #[test]
    fn the_same_record_failing_every_attempt_goes_to_the_dead_letter_topic_when_there_is_one() {
        let mut setup = setup(Delivery::ExactlyOnce);
        setup.checkpointer.set_record_failures(true, 3);
        let record = failure(7);
        for _ in 0..3 {
            processed(&mut setup, 0, 10);
            setup
                .checkpointer
                .recover_after(&setup.consumer, &"refused", Some(&record))
                .unwrap();
        }
        let poisoned = setup.checkpointer.take_poisoned();
        assert_eq!(poisoned.len(), 1, "{poisoned:?}");
        assert_eq!(poisoned[0].origin(), "in/0@7");
        assert!(poisoned[0].cause.contains("larger than message.max.bytes"));
        // A different record failing starts its own count.
        processed(&mut setup, 0, 10);
        setup
            .checkpointer
            .recover_after(&setup.consumer, &"refused", Some(&failure(8)))
            .unwrap();
        assert!(setup.checkpointer.take_poisoned().is_empty());
    }

    #[test]
    fn a_fenced_producer_is_replaced_until_fencing_recurs_as_another_host_would_cause() {
        let mut setup = setup(Delivery::ExactlyOnce);
        for _ in 0..FENCING_BUDGET {
            *setup.checkpointer.sink.fatal.borrow_mut() = Some("Broker: Producer fenced".into());
            setup
                .checkpointer
                .recover(&setup.consumer, &"fenced")
                .unwrap();
        }
        let replaced = setup
            .broker
            .calls()
            .iter()
            .filter(|c| *c == "new producer")
            .count();
        assert_eq!(replaced, FENCING_BUDGET);
        // A fenced producer is never asked to abort: only a new one can go on.
        assert!(!setup.broker.calls().contains(&"abort".to_string()));

        *setup.checkpointer.sink.fatal.borrow_mut() = Some("Broker: Producer fenced".into());
        let error = setup
            .checkpointer
            .recover(&setup.consumer, &"fenced")
            .expect_err("fenced again and again: another host has the same id");
        assert!(format!("{error:#}").contains("give each host its own `--instance`"));
    }

    #[test]
    fn lost_partitions_commit_nothing_and_revoked_ones_commit_what_was_acknowledged() {
        let mut setup = setup(Delivery::AtLeastOnce);
        acknowledged(&setup, 10);
        setup
            .checkpointer
            .revoke(&setup.consumer, &[partition()], true)
            .unwrap();
        assert_eq!(setup.broker.committed(&partition()), None);

        setup.checkpointer.assign(&[partition()], &[]).unwrap();
        acknowledged(&setup, 25);
        setup
            .checkpointer
            .revoke(&setup.consumer, &[partition()], false)
            .unwrap();
        assert_eq!(setup.broker.committed(&partition()), Some(25));
        assert!(
            setup
                .broker
                .calls()
                .contains(&"commit offsets (wait: true)".to_string()),
            "a revocation waits for its commit"
        );
    }

    #[test]
    fn a_stopping_host_does_not_rewind_or_restore_and_says_the_stop_was_not_clean() {
        let mut setup = setup(Delivery::ExactlyOnce);
        processed(&mut setup, 0, 10);
        setup.shutdown.request();
        let calls_before = setup.broker.calls().len();
        let error = setup
            .checkpointer
            .recover(&setup.consumer, &"broker away")
            .expect_err("no recovery while stopping");
        assert!(format!("{error:#}").contains("stopped without a final checkpoint"));
        assert_eq!(setup.broker.calls().len(), calls_before);
    }
}
