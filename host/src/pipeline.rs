//! The pipeline loop: source → transform → sink, with checkpoints.
//!
//! Strategy: one worker thread owns the consumer, the plugin instance and the producer
//! and runs them in turn: fill a batch from what the consumer has fetched, run it
//! through the plugin, hand the outputs to the producer, serve delivery reports, and
//! commit acknowledged progress when a checkpoint is due. librdkafka already fetches
//! and delivers on its own threads, so a channel between stages here would add a copy
//! and a context switch without adding parallelism. Memory stays bounded: the
//! consumer's prefetch queue and the producer's queue have byte limits, at most
//! `MAX_IN_FLIGHT_BATCHES` batches wait for acknowledgement, and a full producer
//! queue blocks the loop, so a stalled sink stalls the source.
//!
//! Size: the worker's loop in named steps ([`Worker::turn`]), its drain, and the
//! slow-turn report share the loop's state; each step is a short function.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_sdk::batch::{Header, InputBatch, InputWriter};

use crate::checkpoint::checkpointer::{Checkpointer, Reason};
use crate::checkpoint::retry::{Poisoned, poison};
use crate::config::CheckpointConfig;
use crate::kafka::Unreadable;
use crate::metrics::Metrics;
use crate::progress::{Partition, Tracker};
use crate::shutdown::Shutdown;
use crate::sink::kafka::SendError;
use crate::source::kafka::KafkaSource;
use crate::state::SharedState;
use crate::telemetry::Throttle;
use crate::transform::TransformStage;

/// Batches handed to the producer and not yet fully acknowledged, at most.
const MAX_IN_FLIGHT_BATCHES: usize = 32;
/// How long the loop waits for the first record of a batch.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long the drain after a fatal error waits for outstanding deliveries; a requested
/// shutdown waits no longer than its grace period.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long leaving the consumer group may take after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A turn of the loop slower than this is logged (debug) with where it spent its time.
const SLOW_TURN: Duration = Duration::from_millis(15);

/// What a finished run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub records_in: u64,
    pub records_out: u64,
    /// Input records the plugin failed, sent to the dead-letter topic.
    pub records_dead_lettered: u64,
    pub(crate) checkpoints: u64,
}

impl Summary {
    /// Adds another worker's counts.
    pub(crate) fn add(&mut self, other: &Summary) {
        self.records_in += other.records_in;
        self.records_out += other.records_out;
        self.records_dead_lettered += other.records_dead_lettered;
        self.checkpoints += other.checkpoints;
    }
}

pub(crate) struct Pipeline {
    pub(crate) source: KafkaSource,
    pub(crate) transform: TransformStage,
    /// The sink producer and the checkpoint logic, shared with the source's rebalance
    /// callbacks.
    pub(crate) checkpointer: Arc<Mutex<Checkpointer>>,
    pub(crate) tracker: Arc<Mutex<Tracker>>,
    /// The plugins' keyed state.
    pub(crate) state: SharedState,
    pub(crate) checkpoint: CheckpointConfig,
    /// Header naming the plugin version on every output, if configured.
    pub(crate) provenance_header: Option<String>,
    /// Counters for the admin endpoint's `GET /metrics`.
    pub(crate) metrics: Arc<Metrics>,
}

impl Pipeline {
    /// Runs until `shutdown` is requested (then drains and commits, returning the
    /// summary) or a fatal error (then commits what is safe and returns the error).
    /// A panic, whatever its cause, is such an error: it names the records the worker
    /// was processing, and nothing after the last checkpoint is committed.
    pub(crate) fn run(self, shutdown: &Shutdown) -> anyhow::Result<Summary> {
        catch_panic(|| self.run_loop(shutdown)).unwrap_or_else(|panic| {
            Err(anyhow::anyhow!(
                "the worker panicked while stopping ({panic}); records after the last checkpoint will be read again at the next start"
            ))
        })
    }

    fn run_loop(self, shutdown: &Shutdown) -> anyhow::Result<Summary> {
        // Warnings this thread logs name its worker in the console.
        crate::history::set_worker(self.transform.worker());
        let mut worker = Worker {
            pipeline: self,
            shutdown,
            summary: Summary::default(),
            batch: InputWriter::new(),
            last_checkpoint: Instant::now(),
            last_commit_end: Instant::now(),
            current: Vec::new(),
            poisoned: Poisoned::new(),
            unreadable_reported: Throttle::new(Duration::from_secs(1)),
        };
        let looped = catch_panic(|| worker.turns());
        let panicked = looped.is_err();
        let result = looped.unwrap_or_else(|panic| {
            if worker.current.is_empty() {
                // It panicked while reading: the records read so far.
                worker.current = worker.pipeline.source.take_spans();
            }
            Err(anyhow::anyhow!(
                "the worker panicked while processing {} ({panic}); nothing after the last checkpoint is committed, so a restart reads those records again",
                describe_spans(&worker.current)
            ))
        });
        worker.drain(result, panicked)
    }
}

/// One worker's loop: the pipeline it drives and what the loop keeps between turns.
struct Worker<'s> {
    pipeline: Pipeline,
    shutdown: &'s Shutdown,
    summary: Summary,
    batch: InputWriter,
    last_checkpoint: Instant,
    last_commit_end: Instant,
    /// The records of the batch being processed, to name them should the loop panic.
    current: Vec<(Partition, i64, i64)>,
    /// Input records whose outputs failed every attempt, with the reason; they go to
    /// the dead-letter topic when read again.
    poisoned: Poisoned,
    /// Records the plugin cannot be given not yet reported in the log.
    unreadable_reported: Throttle,
}

/// How a step of a turn ends.
enum Next {
    /// On to the next step.
    Go,
    /// The partitions were rewound after a failure: a new turn reads them again.
    Again,
    /// A shutdown interrupted a send: the loop ends.
    Stop,
}

impl Worker<'_> {
    /// Turns until a shutdown is requested or a step fails.
    fn turns(&mut self) -> anyhow::Result<()> {
        while !self.shutdown.requested() {
            if let Next::Stop = self.turn()? {
                break;
            }
        }
        Ok(())
    }

    /// One turn: fill a batch, run it through the plugin and hand its outputs to the
    /// producer, send a record the plugin cannot be given to the dead-letter topic,
    /// serve delivery reports, and checkpoint when one is due.
    fn turn(&mut self) -> anyhow::Result<Next> {
        self.batch.clear();
        self.current.clear();
        let mut turn = Turn::start();
        self.pipeline.source.fill(&mut self.batch, IDLE_POLL)?;
        turn.lap(Phase::Fill);
        let shared = self.pipeline.checkpointer.clone();
        let mut checkpointer = shared.lock().unwrap();
        turn.lap(Phase::Lock);
        if !self.batch.is_empty() {
            match self.process_batch(&mut checkpointer, &mut turn)? {
                Next::Go => turn.lap(Phase::Send),
                other => return Ok(other),
            }
        }
        if let Some(unreadable) = self.pipeline.source.take_unreadable() {
            match self.dead_letter_unreadable(&mut checkpointer, unreadable)? {
                Next::Go => {}
                other => return Ok(other),
            }
        }
        self.acknowledge(&mut checkpointer)?;
        turn.lap(Phase::Acknowledge);
        if self.checkpoint_if_due(&mut checkpointer)? {
            turn.lap(Phase::Checkpoint);
        }
        turn.report(self.batch.len());
        // A worker retrying after failures is not ready until a checkpoint commits
        // again.
        let worker = self.pipeline.transform.worker();
        match checkpointer.retrying() {
            true => self.pipeline.metrics.retrying(worker),
            false => self.pipeline.metrics.turned(worker),
        }
        Ok(Next::Go)
    }

    /// Runs the filled batch through the plugin and hands its outputs to the producer.
    fn process_batch(
        &mut self,
        checkpointer: &mut Checkpointer,
        turn: &mut Turn,
    ) -> anyhow::Result<Next> {
        let shutdown = self.shutdown;
        let keep_going = || !shutdown.requested();
        let Pipeline {
            source,
            transform,
            tracker,
            state,
            provenance_header,
            metrics,
            ..
        } = &mut self.pipeline;
        let mut spans = source.take_spans();
        // Where a partition never committed rewinds to.
        checkpointer.fetched(&spans);
        let encoded = self.batch.finish();
        // Encoded just above: no need to validate every record again.
        let input = InputBatch::open(encoded).context("encoding the input batch")?;
        self.current.clone_from(&spans);
        // On a fatal transform error the failed batch leaves no trace in the state
        // either.
        let plugin_started = Instant::now();
        let transformed = transform
            .run(encoded, &input, &self.poisoned)
            .inspect_err(|_| state.lock().unwrap().discard_batch())?;
        metrics.plugin_batch(plugin_started.elapsed());
        if transformed.processed < input.len() {
            // The batch's time ran out: the records not run are read again.
            spans = spans_of(&input, transformed.processed);
            source.read_again(&input, transformed.processed)?;
        }
        turn.lap(Phase::Transform);
        metrics.worker_version(
            transform.worker(),
            transform.current().version,
            transform.adopt_us(),
        );
        crate::history::set_version(transform.current().plugin.short_digest());
        self.summary.records_in += transformed.processed as u64;
        let ends = spans.iter().map(|(p, _, end)| (p.clone(), *end)).collect();
        let inputs = input
            .records()
            .take(transformed.processed)
            .map(|r| (r.partition(), r.offset()))
            .collect();
        let seq = tracker.lock().unwrap().begin_with_inputs(ends, inputs);
        let provenance = provenance_header.as_deref().map(|name| Header {
            name,
            value: Some(transform.current().plugin.short_digest().as_bytes()),
        });
        let sent = checkpointer.sink().send(
            seq,
            &input,
            &transformed.output,
            &transformed.verdicts,
            tracker,
            provenance,
            &keep_going,
        );
        // The batch's state writes count only if its outputs reached the producer;
        // otherwise they are undone with it.
        match &sent {
            Ok(_) => state.lock().unwrap().commit_batch(),
            Err(_) => state.lock().unwrap().discard_batch(),
        }
        let dead_lettered = transformed.verdicts.failed().len();
        match self.settle_send(checkpointer, sent, transformed.processed, dead_lettered)? {
            Next::Go => {}
            next => return Ok(next),
        }
        self.pipeline.tracker.lock().unwrap().seal(seq);
        checkpointer.processed(&spans);
        Ok(Next::Go)
    }

    /// Counts a batch of `processed` records the producer took (`dead_lettered` of them
    /// to the dead-letter topic), or decides what its failed send leads to: a stop
    /// (shutdown), a new turn after recovery, or an error that stops the host.
    fn settle_send(
        &mut self,
        checkpointer: &mut Checkpointer,
        sent: Result<usize, SendError>,
        processed: usize,
        dead_lettered: usize,
    ) -> anyhow::Result<Next> {
        let consumer = self.pipeline.source.consumer();
        match sent {
            Ok(sent) => {
                let out = (sent - dead_lettered) as u64;
                self.summary.records_out += out;
                self.summary.records_dead_lettered += dead_lettered as u64;
                self.pipeline
                    .metrics
                    .batch(processed as u64, out, dead_lettered as u64);
                Ok(Next::Go)
            }
            Err(SendError::Interrupted) => Ok(Next::Stop),
            Err(SendError::Record(failure)) if checkpointer.rewinds_after(true) => {
                let error = SendError::Record(failure.clone());
                checkpointer.recover_after(consumer, &error, Some(&failure))?;
                poison(&mut self.poisoned, checkpointer.take_poisoned());
                Ok(Next::Again)
            }
            Err(
                error @ (SendError::Output(_)
                | SendError::Unmapped(_)
                | SendError::NoDeadLetterTopic(_)
                | SendError::AuthRefused(_)
                | SendError::Producer { .. }),
            ) if checkpointer.exactly_once() => {
                checkpointer.recover(consumer, &error)?;
                Ok(Next::Again)
            }
            Err(error) => {
                anyhow::bail!("{error}; it stays uncommitted, so a restart retries it")
            }
        }
    }

    /// Sends a record the plugin contract cannot carry to the dead-letter topic, or
    /// stops naming it when there is none.
    fn dead_letter_unreadable(
        &mut self,
        checkpointer: &mut Checkpointer,
        unreadable: Unreadable,
    ) -> anyhow::Result<Next> {
        let shutdown = self.shutdown;
        let keep_going = || !shutdown.requested();
        let Pipeline {
            source,
            tracker,
            metrics,
            ..
        } = &mut self.pipeline;
        let origin = unreadable.origin();
        let span = [unreadable.span()];
        self.current = span.to_vec();
        checkpointer.fetched(&span);
        if checkpointer.sink().dead_letter_topic().is_none() {
            // The records before it go on: exactly-once, their transaction is
            // committed now (the drain aborts after a failure); at-least-once, the
            // drain commits what was acknowledged.
            if checkpointer.exactly_once() {
                checkpointer.checkpoint(source.consumer(), Reason::Final)?;
            }
            anyhow::bail!(
                "record {origin} cannot be handed to the plugin: {}; it stays uncommitted. \
                 Set [sink] dead_letter_topic to send such records there, or fix the producer that wrote it",
                unreadable.reason
            );
        }
        let seq = tracker.lock().unwrap().begin_with_inputs(
            vec![(span[0].0.clone(), span[0].2)],
            vec![(span[0].0.1, span[0].1)],
        );
        let sent =
            checkpointer
                .sink()
                .dead_letter_unreadable(seq, &unreadable, tracker, &keep_going);
        match sent {
            Ok(()) => {
                self.summary.records_in += 1;
                self.summary.records_dead_lettered += 1;
                metrics.batch(1, 0, 1);
                tracker.lock().unwrap().seal(seq);
                checkpointer.processed(&span);
                if let Some(records) = self.unreadable_reported.count(1) {
                    tracing::warn!(
                        records,
                        last = %origin,
                        reason = %unreadable.reason,
                        "Records the plugin cannot be given go to the dead-letter topic."
                    );
                }
                Ok(Next::Go)
            }
            Err(SendError::Interrupted) => Ok(Next::Stop),
            Err(error) if checkpointer.exactly_once() => {
                checkpointer.recover(source.consumer(), &error)?;
                Ok(Next::Again)
            }
            Err(error) => anyhow::bail!(error),
        }
    }

    /// Serves delivery reports, waiting while too many batches are in flight, and
    /// recovers from (or stops at) a failed delivery.
    fn acknowledge(&mut self, checkpointer: &mut Checkpointer) -> anyhow::Result<()> {
        let Pipeline {
            source, tracker, ..
        } = &mut self.pipeline;
        checkpointer.sink().poll(Duration::ZERO)?;
        while tracker.lock().unwrap().in_flight() > MAX_IN_FLIGHT_BATCHES
            && !self.shutdown.requested()
        {
            checkpointer.sink().poll(Duration::from_millis(10))?;
        }
        let failure = tracker.lock().unwrap().failure_report();
        if let Some(failure) = failure {
            let record_known = tracker.lock().unwrap().failed_record().is_some();
            if !checkpointer.rewinds_after(record_known) {
                anyhow::bail!("{failure}");
            }
            checkpointer.recover(source.consumer(), &failure)?;
            poison(&mut self.poisoned, checkpointer.take_poisoned());
        }
        Ok(())
    }

    /// Takes a periodic checkpoint when the interval and the pause since the last one
    /// have passed. Returns whether one was taken.
    fn checkpoint_if_due(&mut self, checkpointer: &mut Checkpointer) -> anyhow::Result<bool> {
        let now = Instant::now();
        let config = &self.pipeline.checkpoint;
        if now < self.last_checkpoint + config.interval
            || now < self.last_commit_end + config.min_pause
        {
            return Ok(false);
        }
        self.last_checkpoint = now;
        let partitions =
            checkpointer.checkpoint(self.pipeline.source.consumer(), Reason::Periodic)?;
        if partitions > 0 {
            self.summary.checkpoints += 1;
            self.pipeline.metrics.checkpoint(now.elapsed());
            crate::history::checkpoint_committed(now.elapsed(), partitions);
            tracing::info!(
                numRecordsIn = self.summary.records_in,
                numRecordsOut = self.summary.records_out,
                numRecordsDeadLettered = self.summary.records_dead_lettered,
                "Progress."
            );
        }
        self.last_commit_end = Instant::now();
        Ok(true)
    }

    /// Whatever happened, commits exactly what the broker acknowledged (or,
    /// exactly-once, commits the open transaction; aborts it after a failure), leaves
    /// the group, and says how the run ended. After a panic nothing is committed: the
    /// state may hold half of a batch.
    fn drain(self, result: anyhow::Result<()>, panicked: bool) -> anyhow::Result<Summary> {
        let Worker {
            pipeline,
            shutdown,
            summary,
            ..
        } = self;
        let Pipeline {
            source,
            checkpointer,
            tracker,
            ..
        } = pipeline;
        let mut no_final_checkpoint = None;
        let still_failing;
        {
            let mut checkpointer = lock(&checkpointer);
            let delivery_failure = lock(&tracker).failure().is_some();
            if panicked {
                checkpointer.give_up_final_commit();
                checkpointer.abandon();
            } else if checkpointer.sink().refused() {
                // The cluster refused a client's credentials: nothing more will be
                // acknowledged or committed, and waiting for it would only delay the exit.
                tracing::warn!(
                    "No final checkpoint: the cluster refused the credentials; records since the last checkpoint will be read again."
                );
            } else if checkpointer.exactly_once() && (result.is_err() || delivery_failure) {
                checkpointer.abandon();
            } else if let Err(error) = checkpointer.sink().flush(shutdown.bound(DRAIN_TIMEOUT)) {
                // The sink cluster does not answer: a commit would wait for it too.
                // Nothing unacknowledged was committed, so nothing is lost.
                checkpointer.give_up_final_commit();
                no_final_checkpoint =
                    Some(error.context("the sink cluster did not acknowledge every output"));
            } else {
                match checkpointer.checkpoint(source.consumer(), Reason::Final) {
                    Ok(partitions) => tracing::info!(partitions, "Final checkpoint committed."),
                    Err(error) => {
                        checkpointer.give_up_final_commit();
                        no_final_checkpoint = Some(error);
                    }
                }
            }
            // A stop while retrying after failures is no clean stop.
            still_failing = checkpointer.failing();
        }
        let delivery_failure = lock(&tracker).failure_report();
        source.close(CLOSE_TIMEOUT);
        result?;
        if let Some(failure) = delivery_failure {
            anyhow::bail!("{failure}");
        }
        if let Some(error) = no_final_checkpoint {
            anyhow::bail!(
                "stopped without a final checkpoint: {error:#}; records since the last checkpoint will be read again at the next start"
            );
        }
        if let Some(failure) = still_failing {
            anyhow::bail!(
                "stopped while retrying after failures (last: {failure}); records since the last checkpoint will be read again at the next start"
            );
        }
        Ok(summary)
    }
}

/// Runs `work`; a panic in it comes back as `Err` with the panic's message, so that
/// the host stops with a clear error and exit code rather than aborting.
fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|message| (*message).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

/// The spans of the first `records` records of `input`: per partition, the first
/// offset and the offset after the last record.
fn spans_of(input: &InputBatch<'_>, records: usize) -> Vec<(Partition, i64, i64)> {
    let mut spans: Vec<(Partition, i64, i64)> = Vec::new();
    for record in input.records().take(records) {
        let partition = (record.topic().to_string(), record.partition());
        match spans.iter_mut().find(|(p, _, _)| *p == partition) {
            Some(span) => span.2 = record.offset() + 1,
            None => spans.push((partition, record.offset(), record.offset() + 1)),
        }
    }
    spans
}

/// `topic/partition@first..end` for each partition of a batch, as the log names them.
fn describe_spans(spans: &[(Partition, i64, i64)]) -> String {
    if spans.is_empty() {
        return "no record".to_string();
    }
    spans
        .iter()
        .map(|((topic, partition), first, end)| match end - first {
            1 => format!("{topic}/{partition}@{first}"),
            _ => format!("{topic}/{partition}@{first}..{}", end - 1),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A lock that a panic while it was held does not make unusable: after a panic the
/// drain still needs the checkpointer to abort what is open.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The parts of one turn of the loop.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for and reading records from the consumer.
    Fill,
    /// Taking the producer and checkpoint lock (a rebalance callback may hold it).
    Lock,
    /// The plugin, adopting a new version first when one was published.
    Transform,
    /// Handing the outputs to the producer (blocks while its queue is full).
    Send,
    /// Delivery reports, and waiting while too many batches are unacknowledged.
    Acknowledge,
    Checkpoint,
}

const PHASES: usize = 6;

/// Where one turn of the loop spent its time. A turn whose work (everything but
/// waiting for input) took longer than [`SLOW_TURN`] is logged at debug level: the
/// first place to look when outputs stall. No such line during a stall means the
/// loop was waiting for records.
struct Turn {
    started: Instant,
    last: Instant,
    spent: [Duration; PHASES],
}

impl Turn {
    fn start() -> Self {
        let now = Instant::now();
        Turn {
            started: now,
            last: now,
            spent: [Duration::ZERO; PHASES],
        }
    }

    fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.spent[phase as usize] += now - self.last;
        self.last = now;
    }

    /// Whether the work of the turn, not counting the wait for input, was slow.
    fn slow(&self) -> bool {
        self.last - self.started - self.spent[Phase::Fill as usize] >= SLOW_TURN
    }

    fn report(&self, records: usize) {
        if !self.slow() || !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let total = self.last - self.started;
        let ms = |phase: Phase| self.spent[phase as usize].as_secs_f64() * 1000.0;
        tracing::debug!(
            records,
            total_ms = total.as_secs_f64() * 1000.0,
            fill_ms = ms(Phase::Fill),
            lock_ms = ms(Phase::Lock),
            transform_ms = ms(Phase::Transform),
            send_ms = ms(Phase::Send),
            acknowledge_ms = ms(Phase::Acknowledge),
            checkpoint_ms = ms(Phase::Checkpoint),
            "Slow turn."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_comes_back_as_an_error_with_its_message() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let message = catch_panic(|| -> u32 { panic!("header {} is bad", 3) });
        assert_eq!(message, Err("header 3 is bad".to_string()));
        let message = catch_panic(|| -> u32 { panic!("plain") });
        assert_eq!(message, Err("plain".to_string()));
        let message = catch_panic(|| -> u32 { std::panic::panic_any(42) });
        assert_eq!(message, Err("a panic without a message".to_string()));
    }

    #[test]
    fn a_batch_is_named_by_its_records_coordinates() {
        let spans = vec![
            (("in".to_string(), 0), 5, 10),
            (("in".to_string(), 3), 7, 8),
        ];
        assert_eq!(describe_spans(&spans), "in/0@5..9, in/3@7");
        assert_eq!(describe_spans(&[]), "no record");
    }

    #[test]
    fn waiting_for_input_does_not_make_a_turn_slow_and_work_does() {
        let mut turn = Turn::start();
        std::thread::sleep(SLOW_TURN + Duration::from_millis(5));
        turn.lap(Phase::Fill);
        turn.lap(Phase::Transform);
        assert!(!turn.slow());
        std::thread::sleep(SLOW_TURN);
        turn.lap(Phase::Send);
        assert!(turn.slow());
        assert!(turn.spent[Phase::Send as usize] >= SLOW_TURN);
        assert!(turn.spent[Phase::Transform as usize] < SLOW_TURN);
    }
}
