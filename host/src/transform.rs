//! The transform stage: runs each batch through the live plugin version, adopts a newly
//! published version between batches, and rolls a misbehaving new version back.
//!
//! Strategy: before each batch the stage compares its version with the registry's live
//! one and, if they differ, starts an instance of the live version: every batch is
//! processed by exactly one version and nothing is re-read. A version that went live
//! less than the rollback window ago is on probation: if it traps, or fails more than
//! the allowed share of records, the registry reverts to the previous version and the
//! same batch is run again by it, so nothing is lost and no output of the failed
//! attempt reaches the sink. Outside probation, a failed record stops the pipeline,
//! unless the sink has a dead-letter topic: then the batch goes on, and the sink sends
//! the failed records there. A batch that fails as a whole (a trap, the time or memory
//! limit) is then run again record by record, so that only the records that fail on
//! their own go there. So is a batch whose failed records wrote keyed state: a failed
//! record keeps none of its writes, and the records after it see none of them.
//!
//! Size: adoption of a new version, probation and rollback, and the record-by-record
//! re-run all act on the live instance between batches; a tenth of the file is tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_sdk::batch::{
    DecodeError, Header, InputBatch, InputWriter, NewRecord, Op, OutputReader, OutputWriter,
    Record, RecordFields,
};
use thiserror::Error;

use crate::checkpoint::retry::{Poisoned, fail_poisoned};
use crate::config::Rollback;
use crate::output::{OutputLimits, Verdicts};
use crate::plugin::LoadError;
use crate::plugin::registry::{Live, Registry};
use crate::runtime::{Instance, PluginError, Tier};
use crate::telemetry::Throttle;

#[derive(Debug, Error)]
pub(crate) enum TransformError {
    #[error("plugin {plugin} {error} (batch starting at {topic}/{partition}@{offset})")]
    Plugin {
        plugin: String,
        error: PluginError,
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("plugin {plugin} failed on record {topic}/{partition}@{offset}: {message}")]
    Record {
        plugin: String,
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error("plugin {plugin} returned a malformed output batch: {error}")]
    Malformed { plugin: String, error: DecodeError },
    #[error("plugin {plugin} could not be started after a swap")]
    Adopt {
        plugin: String,
        #[source]
        error: LoadError,
    },
    #[error("plugin {plugin} could not be started again after it failed ({cause})")]
    Restart {
        plugin: String,
        cause: String,
        #[source]
        error: LoadError,
    },
}

/// How the current version has done since it went live.
struct Probation {
    started: Instant,
    records: u64,
    failed: u64,
}

pub(crate) struct TransformStage {
    registry: Arc<Registry>,
    /// This stage's worker: which keyed state its instances use.
    worker: usize,
    current: Arc<Live>,
    instance: Instance,
    /// Which compiler made the running instance's code.
    code: Tier,
    /// Starting Cranelift's code for the current version failed: it stays on Winch's.
    stay_on_baseline: bool,
    /// How long adopting the current version took, in µs (0: the version started with).
    adopt_us: u64,
    rollback: Rollback,
    probation: Probation,
    /// Failed records go to the sink's dead-letter topic instead of stopping the pipeline.
    dead_letter: bool,
    /// Failed records not yet reported in the log.
    dead_lettered: Throttle,
    /// Batches that failed as a whole and were run again record by record, not yet
    /// reported in the log.
    isolated: Throttle,
    /// Batches run again record by record because a failed record wrote state, not yet
    /// reported in the log.
    rerun_for_state: Throttle,
    /// What the outputs of a batch must keep to.
    limits: OutputLimits,
    /// Batches whose re-run ran out of time, not yet reported in the log.
    handed_back: Throttle,
}

/// A batch's output, checked, and how much of the batch it covers.
pub(crate) struct Transformed {
    /// The output batch, to be read with the verdicts.
    pub(crate) output: Vec<u8>,
    pub(crate) verdicts: Verdicts,
    /// The records of the batch the output is for: all of them, or, when running the
    /// batch again record by record took the batch's whole time budget, the first
    /// ones. The rest must be read again.
    pub(crate) processed: usize,
}

/// Why a batch runs again record by record.
#[derive(Debug, Clone, Copy)]
enum Rerun {
    /// A trap, the time or memory limit, or an error for the whole batch.
    FailedAsAWhole,
    /// Records that failed had written keyed state.
    FailedWroteState,
}

/// How often the failed-record and isolated-batch lines may be written.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A record of a batch run again record by record is not started with less time than
/// this left of the batch's budget: it is left for the next batch instead.
const MIN_RECORD_BUDGET: Duration = Duration::from_millis(20);

/// The output of a batch run again record by record.
struct Isolated {
    output: Vec<u8>,
    /// The records run: all of them, or those before the budget ran out.
    processed: usize,
    /// How many of them failed.
    failed: u64,
}

impl Isolated {
    /// The output of the records before `index`, when the budget ran out there.
    fn part(output: OutputWriter, index: u32, failed: u64) -> Self {
        Isolated {
            output: output.finish(),
            processed: index as usize,
            failed,
        }
    }
}

impl TransformStage {
    pub(crate) fn new(
        registry: Arc<Registry>,
        worker: usize,
        instance: Instance,
        rollback: Rollback,
        dead_letter: bool,
        limits: OutputLimits,
    ) -> Self {
        let current = registry.live();
        TransformStage {
            code: current.plugin.tier(),
            stay_on_baseline: false,
            adopt_us: 0,
            current,
            registry,
            worker,
            instance,
            rollback,
            probation: Probation {
                started: Instant::now(),
                records: 0,
                failed: 0,
            },
            dead_letter,
            dead_lettered: Throttle::new(REPORT_EVERY),
            isolated: Throttle::new(REPORT_EVERY),
            rerun_for_state: Throttle::new(REPORT_EVERY),
            limits,
            handed_back: Throttle::new(REPORT_EVERY),
        }
    }

    /// This stage's worker.
    /// How long adopting the current version took, in µs (0: the version started with).
    pub(crate) fn adopt_us(&self) -> u64 {
        self.adopt_us
    }

    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// The version that processed the last batch.
    pub(crate) fn current(&self) -> &Live {
        &self.current
    }

    /// Runs `input` (the encoded form of `batch`) through the live version and returns
    /// its output, checked against the output limits: failed records (the plugin's
    /// word, a limit, an unmapped output, or `poisoned` by the sink before) are in
    /// its verdicts. Without a dead-letter topic a failed record is an error instead.
    ///
    /// The batch's state writes stay open: the caller keeps them with
    /// `StateStore::commit_batch` once the outputs are handed to the sink, or drops
    /// them with `discard_batch`. A rolled-back attempt's writes are dropped here, and
    /// so are those of failed records.
    pub(crate) fn run(
        &mut self,
        input: &[u8],
        batch: &InputBatch<'_>,
        poisoned: &Poisoned,
    ) -> Result<Transformed, TransformError> {
        loop {
            self.adopt()?;
            self.state().begin_batch();
            // Whether the output comes from a run record by record already.
            let mut isolated = false;
            let mut processed = batch.len();
            let output = match self.instance.process(input, batch) {
                Ok(output) => output,
                Err(error) => {
                    let restart = error.leaves_instance_unusable();
                    let error = self.plugin_error(error, batch);
                    if self.roll_back(&error.to_string()) {
                        continue;
                    }
                    if !self.dead_letter {
                        return Err(error);
                    }
                    isolated = true;
                    let rerun =
                        self.rerun(batch, poisoned, restart, &error, Rerun::FailedAsAWhole)?;
                    processed = rerun.processed;
                    rerun.output
                }
            };
            let verdicts = match self.check(&output, batch, poisoned) {
                Ok(verdicts) => verdicts,
                Err(error) if self.roll_back(&error.to_string()) => continue,
                Err(error) => return Err(error),
            };
            let failed_records: Vec<u32> = verdicts.failed().keys().copied().collect();
            let failed = failed_records.len() as u64;
            self.probation.records += processed as u64;
            self.probation.failed += failed;
            let transformed = Transformed {
                output,
                verdicts,
                processed,
            };
            let Some(first) = self.first_failure(&transformed.verdicts, batch) else {
                return Ok(transformed);
            };
            let rate = self.probation.failed as f64 / self.probation.records.max(1) as f64;
            if rate > self.rollback.max_error_rate
                && self.roll_back(&format!(
                    "failed {:.1}% of its records; first: {first}",
                    rate * 100.0
                ))
            {
                continue;
            }
            if !self.dead_letter {
                return Err(first);
            }
            if isolated || !self.state().any_wrote(&failed_records) {
                self.report_dead_lettered(failed, &first);
                return Ok(transformed);
            }
            // A failed record keeps none of its state writes, but later records of the
            // batch may have read them: the batch runs again record by record, on a new
            // instance (the first pass left its memory changed by every record).
            let rerun = self.rerun(batch, poisoned, true, &first, Rerun::FailedWroteState)?;
            let verdicts = self.check(&rerun.output, batch, poisoned)?;
            if !verdicts.failed().is_empty() {
                self.report_dead_lettered(verdicts.failed().len() as u64, &first);
            }
            return Ok(Transformed {
                output: rerun.output,
                verdicts,
                processed: rerun.processed,
            });
        }
    }

    /// [`TransformStage::isolate`], and a line in the log, at most once per
    /// `REPORT_EVERY` for each reason.
    fn rerun(
        &mut self,
        batch: &InputBatch<'_>,
        poisoned: &Poisoned,
        restart: bool,
        cause: &TransformError,
        why: Rerun,
    ) -> Result<Isolated, TransformError> {
        let isolated = self.isolate(batch, poisoned, restart, cause)?;
        let (throttle, message) = match why {
            Rerun::FailedAsAWhole => (
                &mut self.isolated,
                "A batch failed as a whole; it was run again record by record, and the records that fail alone go to the dead-letter topic.",
            ),
            Rerun::FailedWroteState => (
                &mut self.rerun_for_state,
                "Records that failed had written state; their batch was run again record by record, so that only the records that succeed keep their writes.",
            ),
        };
        if let Some(batches) = throttle.count(1) {
            tracing::warn!(
                batches,
                last_failed = isolated.failed,
                last_records = batch.len(),
                last_cause = %cause,
                "{message}"
            );
        }
        if isolated.processed < batch.len()
            && let Some(batches) = self.handed_back.count(1)
        {
            tracing::warn!(
                batches,
                last_run = isolated.processed,
                last_records = batch.len(),
                time_limit_ms = self.instance.call_timeout().as_millis() as u64,
                "Running a batch again record by record took its whole time budget ([plugin] timeout_ms); the records not reached are read again in the next batch."
            );
        }
        Ok(isolated)
    }

    /// Runs a batch again one record at a time, so that only the records that fail on
    /// their own are reported failed, and go to the dead-letter topic: a batch that
    /// failed as a whole (a trap, the time or memory limit, or an error for the whole
    /// batch), or one whose failed records wrote state. Each record's state writes are
    /// kept only if it succeeds. With `restart`, a new instance of the same version
    /// takes over first; an instance that traps is not called again either.
    ///
    /// The run shares one time budget, the plugin's time limit, so that a batch never
    /// takes more than twice that: the first record has all of it, and a later record
    /// cut short by what is left is not failed but left, with the records after it,
    /// for the next batch (see [`Transformed::processed`]). The outputs share the
    /// batch's output byte limit.
    fn isolate(
        &mut self,
        batch: &InputBatch<'_>,
        poisoned: &Poisoned,
        restart: bool,
        cause: &TransformError,
    ) -> Result<Isolated, TransformError> {
        self.state().discard_batch();
        self.state().begin_batch();
        if restart {
            self.restart(cause)?;
        }
        let limit = self.instance.call_timeout();
        let deadline = Instant::now() + limit;
        let mut output = OutputWriter::new();
        let mut single = InputWriter::new();
        let mut failed = 0;
        let mut bytes = 0;
        for record in batch.records() {
            let budget = deadline.saturating_duration_since(Instant::now());
            if record.index() > 0 && budget < MIN_RECORD_BUDGET {
                return Ok(Isolated::part(output, record.index(), failed));
            }
            let encoded = encode_alone(&mut single, &record);
            let one = InputBatch::open(encoded).map_err(|error| self.malformed(error))?;
            let savepoint = self.state().savepoint();
            let budget = if record.index() == 0 { limit } else { budget };
            match self.instance.process_within(encoded, &one, budget) {
                Ok(result) => {
                    let limits = self
                        .limits
                        .with_batch_bytes(self.limits.batch_bytes.saturating_sub(bytes));
                    let mut verdicts = Verdicts::check(&result, &one, &limits)
                        .map_err(|error| self.malformed(error))?;
                    fail_poisoned(&mut verdicts, &one, poisoned);
                    match verdicts.failed().get(&0) {
                        Some(reason) => {
                            self.state().rollback_to(savepoint);
                            output.error(record.index(), reason);
                            failed += 1;
                        }
                        None => {
                            bytes += verdicts.bytes();
                            copy_ops(&result, record.index(), &mut output)
                                .map_err(|error| self.malformed(error))?;
                        }
                    }
                }
                Err(error) => {
                    self.state().rollback_to(savepoint);
                    let unusable = error.leaves_instance_unusable();
                    let cut_short =
                        matches!(error, PluginError::Timeout(limit_used) if limit_used < limit);
                    if unusable {
                        self.restart(cause)?;
                    }
                    if cut_short {
                        // Not this record's fault: the batch's budget ran out.
                        return Ok(Isolated::part(output, record.index(), failed));
                    }
                    failed += 1;
                    let message = match &error {
                        PluginError::Batch(message) => message.clone(),
                        other => other.to_string(),
                    };
                    output.error(record.index(), &message);
                }
            }
        }
        Ok(Isolated {
            output: output.finish(),
            processed: batch.len(),
            failed,
        })
    }

    /// Replaces the instance with a new one of the same version.
    fn restart(&mut self, cause: &TransformError) -> Result<(), TransformError> {
        crate::history::plugin_restarted();
        let plugin = match self.stay_on_baseline {
            true => self.current.plugin.clone(),
            false => self.current.plugin.best(),
        };
        self.code = plugin.tier();
        self.instance = self
            .registry
            .settings()
            .start(&plugin, self.worker)
            .map_err(|error| TransformError::Restart {
                plugin: self.current.plugin.origin.to_string(),
                cause: cause.to_string(),
                error,
            })?;
        Ok(())
    }

    /// Starts an instance of the live version if it is not the one running, or of the
    /// running version's optimized code once that is ready.
    fn adopt(&mut self) -> Result<(), TransformError> {
        let live = self.registry.live();
        if live.version == self.current.version {
            if self.code == Tier::Baseline && !self.stay_on_baseline {
                self.move_to_optimized();
            }
            return Ok(());
        }
        let started = Instant::now();
        let standby = live.standby.take(self.worker);
        let prepared = standby.is_some();
        let plugin = match &standby {
            Some(_) => live.plugin.clone(),
            None => live.plugin.best(),
        };
        let instance = match standby {
            Some(instance) => instance,
            None => self
                .registry
                .settings()
                .start(&plugin, self.worker)
                .map_err(|error| TransformError::Adopt {
                    plugin: live.plugin.origin.to_string(),
                    error,
                })?,
        };
        self.adopt_us = started.elapsed().as_micros() as u64;
        tracing::info!(
            version = live.version,
            plugin = %live.plugin.origin,
            digest = live.plugin.short_digest(),
            adopt_us = self.adopt_us,
            prepared,
            code = plugin.tier().as_str(),
            "Plugin swapped."
        );
        self.instance = instance;
        self.code = plugin.tier();
        self.stay_on_baseline = false;
        self.current = live;
        self.probation = Probation {
            started: Instant::now(),
            records: 0,
            failed: 0,
        };
        Ok(())
    }

    /// Moves to Cranelift's code of the running version once it is ready: an instance
    /// started ahead, or one started here. The version, its probation and its keyed
    /// state stay; the plugin's own memory starts afresh, as after any restart.
    fn move_to_optimized(&mut self) {
        let Some(optimized) = self.current.plugin.optimized() else {
            return;
        };
        let started = Instant::now();
        let standby = optimized.standby.take(self.worker);
        let prepared = standby.is_some();
        let instance = match standby {
            Some(instance) => Ok(instance),
            None => self
                .registry
                .settings()
                .start(&self.current.plugin.best(), self.worker),
        };
        match instance {
            Ok(instance) => {
                tracing::info!(
                    version = self.current.version,
                    digest = self.current.plugin.short_digest(),
                    adopt_us = started.elapsed().as_micros() as u64,
                    prepared,
                    "Plugin moved to its optimized code."
                );
                self.instance = instance;
                self.code = Tier::Optimized;
            }
            Err(error) => {
                tracing::warn!(
                    version = self.current.version,
                    plugin = %self.current.plugin.origin,
                    error = %anyhow::Error::new(error),
                    "Could not start the plugin's optimized code; this worker stays on its baseline code."
                );
                self.stay_on_baseline = true;
            }
        }
    }

    /// Asks the registry to revert the current version if it is on probation. When it
    /// does, the failed attempt's state writes are undone before the batch runs again.
    fn roll_back(&mut self, reason: &str) -> bool {
        let on_probation = self.current.previous.is_some()
            && self.probation.started.elapsed() < self.rollback.window;
        let rolled_back = on_probation && self.registry.roll_back(self.current.version, reason);
        if rolled_back {
            self.state().discard_batch();
        }
        rolled_back
    }

    fn state(&self) -> std::sync::MutexGuard<'_, crate::state::StateStore> {
        self.registry.settings().states[self.worker].lock().unwrap()
    }

    /// `output` checked against the limits, with the `poisoned` records failed.
    fn check(
        &self,
        output: &[u8],
        batch: &InputBatch<'_>,
        poisoned: &Poisoned,
    ) -> Result<Verdicts, TransformError> {
        let mut verdicts =
            Verdicts::check(output, batch, &self.limits).map_err(|e| self.malformed(e))?;
        fail_poisoned(&mut verdicts, batch, poisoned);
        Ok(verdicts)
    }

    /// The first failed record, described.
    fn first_failure(&self, verdicts: &Verdicts, batch: &InputBatch<'_>) -> Option<TransformError> {
        let (&index, message) = verdicts.failed().iter().next()?;
        let record = batch.get(index).expect("index checked by the reader");
        Some(TransformError::Record {
            plugin: self.current.plugin.origin.to_string(),
            topic: record.topic().to_string(),
            partition: record.partition(),
            offset: record.offset(),
            // The plugin's text reaches the host log: one escaped line.
            message: crate::runtime::logs::clean(message, 0),
        })
    }

    fn report_dead_lettered(&mut self, failed: u64, first: &TransformError) {
        if let Some(records) = self.dead_lettered.count(failed) {
            tracing::warn!(
                records,
                last = %first,
                "Records failed; they go to the dead-letter topic."
            );
        }
    }

    fn plugin_error(&self, error: PluginError, batch: &InputBatch<'_>) -> TransformError {
        let first = batch.get(0).expect("batches are never empty");
        TransformError::Plugin {
            plugin: self.current.plugin.origin.to_string(),
            error,
            topic: first.topic().to_string(),
            partition: first.partition(),
            offset: first.offset(),
        }
    }

    fn malformed(&self, error: DecodeError) -> TransformError {
        TransformError::Malformed {
            plugin: self.current.plugin.origin.to_string(),
            error,
        }
    }
}

/// `record` as a batch of its own, written with `writer`.
fn encode_alone<'w>(writer: &'w mut InputWriter, record: &Record<'_>) -> &'w [u8] {
    writer.clear();
    writer.push(RecordFields {
        topic: record.topic(),
        partition: record.partition(),
        offset: record.offset(),
        timestamp: record.timestamp(),
        key: record.key(),
        value: record.value(),
        headers: record.headers(),
    });
    writer.finish()
}

/// Appends the output of a one-record batch to `output`, as the output of input
/// record `index`. True when the plugin failed the record.
fn copy_ops(result: &[u8], index: u32, output: &mut OutputWriter) -> Result<bool, DecodeError> {
    let mut failed = false;
    for op in OutputReader::parse(result, 1)? {
        match op? {
            Op::Keep { output: None, .. } => output.keep(index),
            Op::Keep {
                output: Some(name), ..
            } => output.keep_to(index, name),
            Op::ReplaceValue {
                value, output: to, ..
            } => output.replace_value(index, value, to),
            Op::Record {
                timestamp,
                key,
                value,
                headers,
                output: to,
                ..
            } => {
                let headers: Vec<Header<'_>> = headers.collect();
                let record = NewRecord {
                    key,
                    value,
                    headers: &headers,
                    timestamp,
                };
                output.record(index, &record, to);
            }
            Op::Error { message, .. } => {
                output.error(index, message);
                failed = true;
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_record_output_is_copied_as_the_output_of_its_input_record() {
        let mut one = OutputWriter::new();
        one.keep(0);
        one.keep_to(0, "audit");
        one.replace_value(0, Some(b"new"), None);
        let headers = [Header {
            name: "h",
            value: Some(b"v"),
        }];
        one.record(
            0,
            &NewRecord {
                key: Some(b"k"),
                value: None,
                headers: &headers,
                timestamp: Some(7),
            },
            Some("side"),
        );
        one.error(0, "bad");
        let one = one.finish();

        let mut merged = OutputWriter::new();
        merged.keep(0);
        assert!(copy_ops(&one, 5, &mut merged).unwrap(), "the record failed");
        let merged = merged.finish();
        let ops: Vec<Op<'_>> = OutputReader::parse(&merged, 6)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let text: Vec<String> = ops.iter().map(Op::to_string).collect();
        assert_eq!(
            text,
            [
                "keep 0",
                "keep 5",
                "keep 5 to audit",
                "replace 5 value \"new\"",
                "record 5 key \"k\" value null headers [h=\"v\"] timestamp 7 to side",
                "error 5: bad",
            ]
        );
    }

    #[test]
    fn a_one_record_output_without_an_error_is_no_failure() {
        let mut one = OutputWriter::new();
        one.keep(0);
        one.replace_value(0, Some(b"new"), Some("side"));
        let one = one.finish();
        let mut merged = OutputWriter::new();
        assert!(!copy_ops(&one, 2, &mut merged).unwrap());
    }

    #[test]
    fn a_malformed_one_record_output_is_an_error() {
        let mut merged = OutputWriter::new();
        assert!(copy_ops(b"not an output batch", 0, &mut merged).is_err());
    }
}
