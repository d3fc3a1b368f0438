//! The pipeline loop: source → transform → sink, with checkpoints.
//!
//! Strategy: one worker thread owns the consumer, the plugin instance and the producer
//! and runs them in turn: fill a batch from what the consumer has fetched, run it
//! through the plugin, hand the outputs to the producer, serve delivery reports, and
//! commit acknowledged progress when a checkpoint is due. librdkafka already fetches
//! and delivers on its own threads, so a channel between stages here would add a copy
//! and a context switch without adding parallelism. Memory stays bounded: the
//! consumer's prefetch queue and the producer's queue have byte limits, at most
//! [`MAX_IN_FLIGHT_BATCHES`] batches wait for acknowledgement, and a full producer
//! queue blocks the loop, so a stalled sink stalls the source.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice_sdk::batch::{Header, InputBatch, InputWriter};

use crate::checkpoint::Tracker;
use crate::checkpoint::checkpointer::{Checkpointer, Reason};
use crate::config::CheckpointConfig;
use crate::shutdown::Shutdown;
use crate::sink::kafka::SendError;
use crate::source::kafka::KafkaSource;
use crate::state::SharedState;
use crate::transform::TransformStage;

/// Batches handed to the producer and not yet fully acknowledged, at most.
const MAX_IN_FLIGHT_BATCHES: usize = 32;
/// How long the loop waits for the first record of a batch.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long a shutdown waits for outstanding deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub records_in: u64,
    pub records_out: u64,
    pub checkpoints: u64,
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
        } = self;
        let mut summary = Summary::default();
        let mut batch = InputWriter::new();
        let mut last_checkpoint = Instant::now();
        let mut last_commit_end = Instant::now();
        let keep_going = || !shutdown.requested();

        let result = (|| -> anyhow::Result<()> {
            while !shutdown.requested() {
                batch.clear();
                source.fill(&mut batch, IDLE_POLL)?;
                let mut checkpointer = checkpointer.lock().unwrap();
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
                        Ok(sent) => summary.records_out += sent as u64,
                        Err(SendError::Interrupted) => break,
                        Err(SendError::Fatal(message)) if checkpointer.exactly_once() => {
                            checkpointer.recover(source.consumer(), &message)?;
                            continue;
                        }
                        Err(SendError::Fatal(message)) => anyhow::bail!(message),
                    }
                    tracker.lock().unwrap().seal(seq);
                    checkpointer.processed(&spans);
                }
                checkpointer.sink().poll(Duration::ZERO);
                while tracker.lock().unwrap().in_flight() > MAX_IN_FLIGHT_BATCHES
                    && !shutdown.requested()
                {
                    checkpointer.sink().poll(Duration::from_millis(10));
                }
                let failure = tracker.lock().unwrap().failure().map(str::to_owned);
                if let Some(failure) = failure {
                    if !checkpointer.exactly_once() {
                        anyhow::bail!("{failure}");
                    }
                    checkpointer.recover(source.consumer(), &failure)?;
                }
                let now = Instant::now();
                if now >= last_checkpoint + checkpoint.interval
                    && now >= last_commit_end + checkpoint.min_pause
                {
                    last_checkpoint = now;
                    if checkpointer.checkpoint(source.consumer(), Reason::Periodic)? > 0 {
                        summary.checkpoints += 1;
                        tracing::info!(
                            numRecordsIn = summary.records_in,
                            numRecordsOut = summary.records_out,
                            "Progress."
                        );
                    }
                    last_commit_end = Instant::now();
                }
            }
            Ok(())
        })();

        // Drain: whatever happened, commit exactly what the broker acknowledged (or,
        // exactly-once, commit the open transaction; abort it after a failure).
        {
            let mut checkpointer = checkpointer.lock().unwrap();
            let delivery_failure = tracker.lock().unwrap().failure().is_some();
            if checkpointer.exactly_once() && (result.is_err() || delivery_failure) {
                checkpointer.abandon();
            } else {
                if let Err(error) = checkpointer.sink().flush(DRAIN_TIMEOUT) {
                    tracing::error!(%error, "Some records were not acknowledged; their offsets stay uncommitted.");
                }
                match checkpointer.checkpoint(source.consumer(), Reason::Final) {
                    Ok(partitions) => tracing::info!(partitions, "Final checkpoint committed."),
                    Err(error) => tracing::error!(
                        "Final checkpoint failed; records since the last checkpoint will be read again: {error:#}"
                    ),
                }
            }
        }
        let delivery_failure = tracker.lock().unwrap().failure().map(str::to_owned);
        source.close();
        result?;
        if let Some(failure) = delivery_failure {
            anyhow::bail!("{failure}");
        }
        Ok(summary)
    }
}
