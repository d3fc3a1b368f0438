//! The pipeline loop: source → transform → sink, with at-least-once checkpoints.
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
use rdkafka::consumer::CommitMode;
use sluice_sdk::batch::{Header, InputBatch, InputWriter};

use crate::checkpoint::Tracker;
use crate::config::CheckpointConfig;
use crate::shutdown::Shutdown;
use crate::sink::kafka::{KafkaSink, SendError};
use crate::source::kafka::KafkaSource;
use crate::transform::TransformStage;

/// Batches handed to the producer and not yet fully acknowledged, at most.
const MAX_IN_FLIGHT_BATCHES: usize = 32;
/// How long the loop waits for the first record of a batch.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long a shutdown waits for outstanding deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The same after the cluster refused a client's credentials.
const REFUSED_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub sink: KafkaSink,
    pub tracker: Arc<Mutex<Tracker>>,
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
            sink,
            tracker,
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
                if !batch.is_empty() {
                    let ends = source.take_ends();
                    let encoded = batch.finish();
                    // Encoded just above: no need to validate every record again.
                    let input = InputBatch::open(encoded).context("encoding the input batch")?;
                    let output = transform.run(encoded, &input)?;
                    let ops = transform.ops(&output, &input)?;
                    summary.records_in += input.len() as u64;
                    let seq = tracker.lock().unwrap().begin(ends);
                    let provenance = provenance_header.as_deref().map(|name| Header {
                        name,
                        value: Some(transform.current().plugin.short_digest().as_bytes()),
                    });
                    match sink.send(seq, &input, &ops, &tracker, provenance, &keep_going) {
                        Ok(sent) => summary.records_out += sent as u64,
                        Err(SendError::Interrupted) => break,
                        Err(SendError::Fatal(message)) => anyhow::bail!(message),
                    }
                    tracker.lock().unwrap().seal(seq);
                }
                sink.poll(Duration::ZERO)?;
                while tracker.lock().unwrap().in_flight() > MAX_IN_FLIGHT_BATCHES
                    && !shutdown.requested()
                {
                    sink.poll(Duration::from_millis(10))?;
                }
                if let Some(failure) = tracker.lock().unwrap().failure() {
                    anyhow::bail!("{failure}");
                }
                let now = Instant::now();
                if now >= last_checkpoint + checkpoint.interval
                    && now >= last_commit_end + checkpoint.min_pause
                {
                    last_checkpoint = now;
                    match source.commit(CommitMode::Async) {
                        Err(error) => {
                            tracing::warn!(%error, "Checkpoint commit failed; the next checkpoint retries it.")
                        }
                        Ok(0) => {}
                        Ok(partitions) => {
                            summary.checkpoints += 1;
                            tracing::info!(
                                partitions,
                                numRecordsIn = summary.records_in,
                                numRecordsOut = summary.records_out,
                                "Checkpoint committed."
                            );
                        }
                    }
                    last_commit_end = Instant::now();
                }
            }
            Ok(())
        })();

        // Drain: whatever happened, commit exactly what the broker acknowledged. After
        // refused credentials nothing more will be acknowledged: do not wait for it.
        let refused = sink.refused();
        let drain = if refused {
            REFUSED_DRAIN_TIMEOUT
        } else {
            DRAIN_TIMEOUT
        };
        if let Err(error) = sink.flush(drain) {
            tracing::error!(%error, "Some records were not acknowledged; their offsets stay uncommitted.");
        }
        let delivery_failure = tracker.lock().unwrap().failure().map(str::to_owned);
        let mode = if refused {
            CommitMode::Async
        } else {
            CommitMode::Sync
        };
        match source.commit(mode) {
            Ok(partitions) => tracing::info!(partitions, "Final checkpoint committed."),
            Err(error) => {
                tracing::error!(%error, "Final commit failed; records since the last checkpoint will be read again.")
            }
        }
        source.close();
        result?;
        if let Some(failure) = delivery_failure {
            anyhow::bail!("{failure}");
        }
        Ok(summary)
    }
}
