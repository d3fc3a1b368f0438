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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_sdk::batch::{Header, InputBatch, InputWriter, Op};

use crate::checkpoint::Tracker;
use crate::checkpoint::checkpointer::{Checkpointer, Reason};
use crate::config::CheckpointConfig;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::sink::kafka::SendError;
use crate::source::kafka::KafkaSource;
use crate::state::SharedState;
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
    pub checkpoints: u64,
}

impl Summary {
    /// Adds another worker's counts.
    pub fn add(&mut self, other: &Summary) {
        self.records_in += other.records_in;
        self.records_out += other.records_out;
        self.records_dead_lettered += other.records_dead_lettered;
        self.checkpoints += other.checkpoints;
    }
}

pub struct Pipeline {
    pub source: KafkaSource,
    pub transform: TransformStage,
    /// The sink producer and the checkpoint logic, shared with the source's rebalance
    /// callbacks.
    pub checkpointer: Arc<Mutex<Checkpointer>>,
    pub tracker: Arc<Mutex<Tracker>>,
    /// The plugins' keyed state.
    pub state: SharedState,
    pub checkpoint: CheckpointConfig,
    /// Header naming the plugin version on every output, if configured.
    pub provenance_header: Option<String>,
    /// Counters for the admin endpoint's `GET /metrics`.
    pub metrics: Arc<Metrics>,
}

impl Pipeline {
    /// Runs until `shutdown` is requested (then drains and commits, returning the
    /// summary) or a fatal error (then commits what is safe and returns the error).
    pub fn run(self, shutdown: &Shutdown) -> anyhow::Result<Summary> {
        let Pipeline {
            mut source,
            mut transform,
            checkpointer,
            tracker,
            state,
            checkpoint,
            provenance_header,
            metrics,
        } = self;
        let mut summary = Summary::default();
        let mut batch = InputWriter::new();
        let mut last_checkpoint = Instant::now();
        let mut last_commit_end = Instant::now();
        let keep_going = || !shutdown.requested();

        let result = (|| -> anyhow::Result<()> {
            while !shutdown.requested() {
                batch.clear();
                let mut turn = Turn::start();
                source.fill(&mut batch, IDLE_POLL)?;
                turn.lap(Phase::Fill);
                let mut checkpointer = checkpointer.lock().unwrap();
                turn.lap(Phase::Lock);
                if !batch.is_empty() {
                    let spans = source.take_spans();
                    let encoded = batch.finish();
                    // Encoded just above: no need to validate every record again.
                    let input = InputBatch::open(encoded).context("encoding the input batch")?;
                    // On a fatal transform error the failed batch leaves no trace in
                    // the state either.
                    let output = transform
                        .run(encoded, &input)
                        .inspect_err(|_| state.lock().unwrap().discard_batch())?;
                    let ops = transform
                        .ops(&output, &input)
                        .inspect_err(|_| state.lock().unwrap().discard_batch())?;
                    turn.lap(Phase::Transform);
                    metrics.worker_version(transform.worker(), transform.current().version);
                    summary.records_in += input.len() as u64;
                    let ends = spans.iter().map(|(p, _, end)| (p.clone(), *end)).collect();
                    let seq = tracker.lock().unwrap().begin(ends);
                    let provenance = provenance_header.as_deref().map(|name| Header {
                        name,
                        value: Some(transform.current().plugin.short_digest().as_bytes()),
                    });
                    let sent = checkpointer.sink().send(
                        seq,
                        &input,
                        &ops,
                        &tracker,
                        provenance,
                        &keep_going,
                    );
                    // The batch's state writes count only if its outputs reached the
                    // producer; otherwise they are undone with it.
                    match &sent {
                        Ok(_) => state.lock().unwrap().commit_batch(),
                        Err(_) => state.lock().unwrap().discard_batch(),
                    }
                    match sent {
                        Ok(sent) => {
                            let dead_lettered = ops
                                .iter()
                                .filter(|op| matches!(op, Op::Error { .. }))
                                .count();
                            let out = (sent - dead_lettered) as u64;
                            summary.records_out += out;
                            summary.records_dead_lettered += dead_lettered as u64;
                            metrics.batch(input.len() as u64, out, dead_lettered as u64);
                        }
                        Err(SendError::Interrupted) => break,
                        Err(SendError::Fatal(message)) if checkpointer.exactly_once() => {
                            checkpointer.recover(source.consumer(), &message)?;
                            continue;
                        }
                        Err(SendError::Fatal(message)) => anyhow::bail!(message),
                    }
                    tracker.lock().unwrap().seal(seq);
                    checkpointer.processed(&spans);
                    turn.lap(Phase::Send);
                }
                checkpointer.sink().poll(Duration::ZERO)?;
                while tracker.lock().unwrap().in_flight() > MAX_IN_FLIGHT_BATCHES
                    && !shutdown.requested()
                {
                    checkpointer.sink().poll(Duration::from_millis(10))?;
                }
                let failure = tracker.lock().unwrap().failure().map(str::to_owned);
                if let Some(failure) = failure {
                    if !checkpointer.exactly_once() {
                        anyhow::bail!("{failure}");
                    }
                    checkpointer.recover(source.consumer(), &failure)?;
                }
                turn.lap(Phase::Acknowledge);
                let now = Instant::now();
                if now >= last_checkpoint + checkpoint.interval
                    && now >= last_commit_end + checkpoint.min_pause
                {
                    last_checkpoint = now;
                    if checkpointer.checkpoint(source.consumer(), Reason::Periodic)? > 0 {
                        summary.checkpoints += 1;
                        metrics.checkpoint(now.elapsed());
                        tracing::info!(
                            numRecordsIn = summary.records_in,
                            numRecordsOut = summary.records_out,
                            numRecordsDeadLettered = summary.records_dead_lettered,
                            "Progress."
                        );
                    }
                    last_commit_end = Instant::now();
                    turn.lap(Phase::Checkpoint);
                }
                turn.report(batch.len());
                metrics.turned(transform.worker());
            }
            Ok(())
        })();

        // Drain: whatever happened, commit exactly what the broker acknowledged (or,
        // exactly-once, commit the open transaction; abort it after a failure).
        let mut no_final_checkpoint = None;
        {
            let mut checkpointer = checkpointer.lock().unwrap();
            let delivery_failure = tracker.lock().unwrap().failure().is_some();
            if checkpointer.sink().refused() {
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
        }
        let delivery_failure = tracker.lock().unwrap().failure().map(str::to_owned);
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
        Ok(summary)
    }
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
