//! Failures in a row, and what each leads to: a retry after a pause that doubles each
//! time, an input record sent to the dead-letter topic, or a stop.
//!
//! Strategy: the checkpointer rewinds to the last checkpoint after a failure and tells
//! [`Retries`] what failed, described so that the same failure reads the same each
//! time (the input record and the cause when it is known). The same failure of the same
//! record `attempts` times in a row is that record's failure; a failure of no record
//! that the broker refused for good stops the host after as many attempts; anything
//! else (a broker away, a coordinator moving) is retried for as long as it lasts,
//! waiting longer each time. The worker is not ready while failures last. A record
//! that goes to the dead-letter topic has its outputs replaced by its failure when it
//! is read again ([`fail_poisoned`]).

use std::collections::HashMap;
use std::time::Duration;

use sluice_sdk::batch::InputBatch;

use crate::output::Verdicts;
use crate::progress::{Partition, RecordFailure};

/// The wait before the second attempt; each further failure in a row doubles it, up to
/// [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// What follows a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again after this pause.
    Retry(Duration),
    /// The record failed every attempt: it goes to the dead-letter topic when read
    /// again (the cause says how often it failed); the retry follows at once.
    DeadLetter(RecordFailure),
    /// Stop the host with this error.
    Stop(String),
}

/// The last failure, and how many times in a row it happened.
#[derive(Debug)]
struct Failures {
    what: String,
    attempts: u32,
    record: Option<(Partition, i64)>,
}

/// Failures in a row since the last successful checkpoint.
#[derive(Debug)]
pub(crate) struct Retries {
    last: Option<Failures>,
    /// How often the same failure of the same record is tried.
    attempts: u32,
    /// Whether failed records go to a dead-letter topic.
    dead_letter: bool,
}

impl Retries {
    pub(crate) fn new(dead_letter: bool, attempts: u32) -> Self {
        Retries {
            last: None,
            attempts: attempts.max(1),
            dead_letter,
        }
    }

    /// Counts a failure: `what` failed (the same text for the same failure), of input
    /// record `record` when it is known; `for_good` when the broker refused a write
    /// for good.
    pub(crate) fn failed(
        &mut self,
        what: String,
        record: Option<RecordFailure>,
        for_good: bool,
    ) -> Next {
        let attempts = match self.last.take() {
            Some(last) if last.what == what => last.attempts + 1,
            _ => 1,
        };
        let enough = attempts >= self.attempts;
        self.last = Some(Failures {
            what,
            attempts,
            record: record.as_ref().map(|r| (r.partition.clone(), r.offset)),
        });
        match record {
            Some(record) if enough && self.dead_letter => {
                self.last = None;
                Next::DeadLetter(RecordFailure {
                    cause: format!("{} (failed {attempts} times)", record.cause),
                    ..record
                })
            }
            Some(record) if enough => Next::Stop(format!(
                "record {} failed {attempts} times in a row: {}; it stays uncommitted. Set [sink] dead_letter_topic \
                 to send such records there, or fix the cause",
                record.origin(),
                record.cause
            )),
            // A write of no input record (a changelog record too large...): nothing
            // to dead-letter, and no reason to ask again.
            None if enough && for_good => Next::Stop(format!(
                "the sink cluster refused the same write {attempts} times in a row ({}); \
                 records after the last checkpoint stay uncommitted and are read again at the next start",
                self.last.as_ref().map_or("", |f| f.what.as_str())
            )),
            _ => Next::Retry(pause(attempts)),
        }
    }

    /// A checkpoint committed: failures of no record end, and so does the failure of
    /// a record once `passed` says the committed offsets are past it.
    pub(crate) fn committed(&mut self, passed: impl Fn(&(Partition, i64)) -> bool) {
        if self
            .last
            .as_ref()
            .is_some_and(|f| f.record.as_ref().is_none_or(passed))
        {
            self.last = None;
        }
    }

    /// A transaction committed: whatever failed before is behind it.
    pub(crate) fn succeeded(&mut self) -> bool {
        self.last.take().is_some()
    }

    /// Whether failures last (the worker is not ready meanwhile).
    pub(crate) fn retrying(&self) -> bool {
        self.last.is_some()
    }

    /// The failure of an input record being retried, with how many times it failed,
    /// if there is one: a host that stops meanwhile has not stopped cleanly. (After a
    /// failure of no record, such as a broker away, the rewind leaves nothing undone
    /// that the final checkpoint does not settle.)
    pub(crate) fn failing(&self) -> Option<String> {
        self.last
            .as_ref()
            .filter(|f| f.record.is_some())
            .map(|f| format!("{} ({} times)", f.what, f.attempts))
    }
}

/// The pause before attempt `attempts + 1`: none after a first failure, then 0.1 s,
/// doubling up to [`MAX_PAUSE`].
fn pause(attempts: u32) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => FIRST_PAUSE
            .saturating_mul(1 << (n - 2).min(16))
            .min(MAX_PAUSE),
    }
}

/// Input records whose outputs failed every attempt, by partition number and offset:
/// their topic and the reason. Looked up for every record once one is there, so the
/// key is cheap to make.
pub(crate) type Poisoned = HashMap<(i32, i64), (String, String)>;

pub(crate) fn poison(poisoned: &mut Poisoned, failures: Vec<RecordFailure>) {
    poisoned.extend(failures.into_iter().map(|failure| {
        let ((topic, partition), offset) = (failure.partition, failure.offset);
        ((partition, offset), (topic, failure.cause))
    }));
}

/// Fails every input record in `poisoned` with its failure, so that the sink sends
/// the record to the dead-letter topic instead of its outputs.
pub(crate) fn fail_poisoned(verdicts: &mut Verdicts, input: &InputBatch<'_>, poisoned: &Poisoned) {
    if poisoned.is_empty() {
        return;
    }
    for record in input.records() {
        if let Some((topic, cause)) = poisoned.get(&(record.partition(), record.offset()))
            && topic == record.topic()
        {
            verdicts.fail(record.index(), cause.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_sdk::batch::{InputWriter, OutputWriter};

    use crate::output::OutputLimits;

    use super::*;

    #[test]
    fn a_poisoned_record_gets_its_failure_instead_of_its_outputs() {
        let mut writer = InputWriter::new();
        for offset in 10..14 {
            writer.push(sluice_sdk::batch::RecordFields {
                topic: "in",
                partition: 0,
                offset,
                timestamp: None,
                key: None,
                value: Some(b"v"),
                headers: std::iter::empty(),
            });
        }
        let encoded = writer.finish().to_vec();
        let input = InputBatch::open(&encoded).unwrap();
        let poisoned = HashMap::from([
            ((0, 11), ("in".to_string(), "too large".to_string())),
            ((0, 13), ("in".to_string(), "unmapped".to_string())),
            (
                (0, 12),
                ("other".to_string(), "another topic's".to_string()),
            ),
        ]);
        let mut output = OutputWriter::new();
        output.keep_range(0, 3);
        output.replace_value(3, Some(b"x"), None);
        output.keep(3);
        let output = output.finish();
        let mut verdicts = Verdicts::check(&output, &input, &OutputLimits::unlimited()).unwrap();
        fail_poisoned(&mut verdicts, &input, &poisoned);
        let failed: Vec<(u32, &str)> = verdicts
            .failed()
            .iter()
            .map(|(index, reason)| (*index, reason.as_str()))
            .collect();
        assert_eq!(failed, [(1, "too large"), (3, "unmapped")]);
        assert_eq!(verdicts.sends(), 4, "records 0 and 2, and two dead letters");
    }

    fn record(offset: i64, cause: &str) -> RecordFailure {
        RecordFailure {
            partition: ("in".to_string(), 0),
            offset,
            cause: cause.to_string(),
        }
    }

    fn fail(retries: &mut Retries, offset: i64, cause: &str) -> Next {
        retries.failed(
            format!("in/0@{offset}: {cause}"),
            Some(record(offset, cause)),
            true,
        )
    }

    #[test]
    fn the_same_record_failing_every_time_stops_the_host_after_its_attempts() {
        let mut retries = Retries::new(false, 3);
        assert_eq!(
            fail(&mut retries, 7, "too large"),
            Next::Retry(Duration::ZERO)
        );
        assert_eq!(
            fail(&mut retries, 7, "too large"),
            Next::Retry(Duration::from_millis(100))
        );
        assert!(retries.retrying());
        let Next::Stop(message) = fail(&mut retries, 7, "too large") else {
            panic!("the third failure stops the host");
        };
        assert!(
            message.starts_with("record in/0@7 failed 3 times in a row: too large"),
            "{message}"
        );
        assert_eq!(
            retries.failing().as_deref(),
            Some("in/0@7: too large (3 times)")
        );
    }

    #[test]
    fn with_a_dead_letter_topic_the_record_goes_there_and_the_retry_follows() {
        let mut retries = Retries::new(true, 2);
        fail(&mut retries, 7, "unmapped");
        assert_eq!(
            fail(&mut retries, 7, "unmapped"),
            Next::DeadLetter(record(7, "unmapped (failed 2 times)"))
        );
        assert!(!retries.retrying(), "its failures are over");
    }

    #[test]
    fn another_failure_starts_counting_again() {
        let mut retries = Retries::new(false, 2);
        fail(&mut retries, 7, "too large");
        assert_eq!(
            fail(&mut retries, 8, "too large"),
            Next::Retry(Duration::ZERO)
        );
        assert_eq!(fail(&mut retries, 8, "other"), Next::Retry(Duration::ZERO));
    }

    #[test]
    fn a_failure_of_no_record_is_retried_with_longer_pauses_unless_refused_for_good() {
        let mut retries = Retries::new(false, 3);
        let broker_away = |retries: &mut Retries| {
            retries.failed("coordinator not available".to_string(), None, false)
        };
        let pauses: Vec<Next> = (0..12).map(|_| broker_away(&mut retries)).collect();
        assert_eq!(pauses[0], Next::Retry(Duration::ZERO));
        assert_eq!(pauses[3], Next::Retry(Duration::from_millis(400)));
        assert_eq!(pauses[11], Next::Retry(MAX_PAUSE));
        assert!(retries.retrying());
        assert_eq!(retries.failing(), None, "a stop now would be clean");
        assert!(retries.succeeded());
        assert!(!retries.retrying());

        let mut retries = Retries::new(false, 2);
        let too_large = |retries: &mut Retries| {
            retries.failed("changelog record too large".to_string(), None, true)
        };
        too_large(&mut retries);
        let Next::Stop(message) = too_large(&mut retries) else {
            panic!("refused for good twice stops the host");
        };
        assert!(
            message.contains("refused the same write 2 times"),
            "{message}"
        );
    }

    #[test]
    fn failures_end_once_the_committed_offsets_pass_the_record() {
        let mut retries = Retries::new(true, 5);
        fail(&mut retries, 7, "too large");
        retries.committed(|(_, offset)| *offset < 7);
        assert!(
            retries.retrying(),
            "committed up to the record, not past it"
        );
        retries.committed(|(_, offset)| *offset < 8);
        assert!(!retries.retrying());
    }
}
