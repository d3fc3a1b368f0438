//! Progress of the batches in flight: which input offsets are safe to commit.
//!
//! The sink reports each delivery here and the checkpoint reads what became
//! committable, so neither needs the other.
//!
//! Strategy: every batch gets a sequence number and remembers, per input partition,
//! the offset after its last record. Each output produced for the batch is counted;
//! each delivery acknowledgement from the sink broker counts one down. A batch is done
//! when it is sealed (all its outputs handed to the producer) and nothing is
//! outstanding. Batches finish out of order, so progress only advances over the
//! longest prefix of done batches: an offset becomes committable only when every output
//! derived from it, and from everything before it in its partition, is acknowledged.
//! A failed delivery stops the prefix for good; the pipeline then shuts down and the
//! failed batch is read again on restart.

use std::collections::{BTreeMap, VecDeque};

/// A source partition: topic and partition number.
pub(crate) type Partition = (String, i32);

/// An input record whose output the sink broker refused: where it was read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordFailure {
    pub(crate) partition: Partition,
    pub(crate) offset: i64,
    pub(crate) cause: String,
}

impl RecordFailure {
    /// `topic/partition@offset`.
    pub(crate) fn origin(&self) -> String {
        format!("{}/{}@{}", self.partition.0, self.partition.1, self.offset)
    }
}

/// A delivery's opaque value: the batch's sequence number and the index of the input
/// record the output came from (plus one; 0 for none, as for changelog records).
/// Batches hold at most 100 000 records, so 20 bits hold the index.
pub(crate) fn delivery_opaque(seq: u64, input: Option<u32>) -> usize {
    ((seq << INDEX_BITS) | input.map_or(0, |index| u64::from(index) + 1)) as usize
}

/// The batch sequence number and input index of a delivery's opaque value.
pub(crate) fn from_delivery_opaque(opaque: usize) -> (u64, Option<u32>) {
    let opaque = opaque as u64;
    let index = (opaque & ((1 << INDEX_BITS) - 1)) as u32;
    (opaque >> INDEX_BITS, index.checked_sub(1))
}

const INDEX_BITS: u32 = 20;

#[derive(Debug)]
struct PendingBatch {
    /// Offset after the batch's last record, per partition it touched.
    ends: Vec<(Partition, i64)>,
    /// Each input record's partition number and offset, by index, to name the record
    /// whose output fails.
    inputs: Vec<(i32, i64)>,
    outstanding: usize,
    sealed: bool,
}

/// Progress of the batches in flight and the offsets they make committable.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Sequence number of `pending[0]`.
    first_seq: u64,
    pending: VecDeque<PendingBatch>,
    /// Next offset to read, per partition, covering only fully acknowledged batches.
    committable: BTreeMap<Partition, i64>,
    /// Set when a delivery failed; nothing after it may be committed.
    failure: Option<String>,
    /// The input record of that failed delivery, when it had one, and the size of
    /// its output.
    failed_record: Option<(RecordFailure, usize)>,
    /// Whether a failed delivery was refused for good (too large, not authorized...):
    /// asking again gets the same answer.
    refused_for_good: bool,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Registers a new batch and returns its sequence number.
    pub(crate) fn begin(&mut self, ends: Vec<(Partition, i64)>) -> u64 {
        self.begin_with_inputs(ends, Vec::new())
    }

    /// [`Tracker::begin`] for a batch whose input records are `inputs` (partition
    /// number and offset, by index).
    pub(crate) fn begin_with_inputs(
        &mut self,
        ends: Vec<(Partition, i64)>,
        inputs: Vec<(i32, i64)>,
    ) -> u64 {
        let seq = self.first_seq + self.pending.len() as u64;
        self.pending.push_back(PendingBatch {
            ends,
            inputs,
            outstanding: 0,
            sealed: false,
        });
        seq
    }

    /// Counts `count` more outputs of batch `seq` as handed to the producer.
    pub(crate) fn add_outputs(&mut self, seq: u64, count: usize) {
        if let Some(batch) = self.batch(seq) {
            batch.outstanding += count;
        }
    }

    /// Marks batch `seq` as complete on the sending side.
    pub(crate) fn seal(&mut self, seq: u64) {
        if let Some(batch) = self.batch(seq) {
            batch.sealed = true;
        }
        self.advance();
    }

    /// Records the broker's answer for one output of batch `seq` derived from its
    /// input record `input`; `size` is the output's size in bytes. A broker refuses a
    /// whole request for one record too large, so of the outputs that fail, the
    /// largest names the input record that failed.
    pub(crate) fn delivered_from(
        &mut self,
        seq: u64,
        input: Option<u32>,
        size: usize,
        result: Result<(), String>,
    ) {
        if let Err(cause) = &result
            && seq >= self.first_seq
            && self
                .failed_record
                .as_ref()
                .is_none_or(|(_, largest)| size > *largest)
            && let Some(input) = input
            && let Some(batch) = self.batch(seq)
            && let Some((partition, offset)) = batch.inputs.get(input as usize).copied()
            && let Some(((topic, _), _)) = batch.ends.first()
        {
            let failure = RecordFailure {
                partition: (topic.clone(), partition),
                offset,
                cause: cause.clone(),
            };
            self.failed_record = Some((failure, size));
        }
        self.delivered(seq, result)
    }

    /// The input record of the first failed delivery, when it had one.
    pub(crate) fn failed_record(&self) -> Option<&RecordFailure> {
        self.failed_record.as_ref().map(|(record, _)| record)
    }

    /// The first delivery failure and the input record it names, if any.
    pub(crate) fn failure_report(&self) -> Option<String> {
        let failure = self.failure.as_deref()?;
        Some(match self.failed_record() {
            Some(record) => format!(
                "{} (an output of input record {}; it stays uncommitted)",
                record.cause,
                record.origin()
            ),
            None => failure.to_string(),
        })
    }

    /// Records the broker's answer for one output of batch `seq`.
    fn delivered(&mut self, seq: u64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if let Some(batch) = self.batch(seq) {
                    batch.outstanding = batch.outstanding.saturating_sub(1);
                }
                self.advance();
            }
            // A report for a batch dropped by `reset` (an aborted transaction) is moot.
            Err(_) if seq < self.first_seq => {}
            Err(error) => {
                self.failure.get_or_insert(error);
            }
        }
    }

    /// Whether batch `seq` and every batch before it are done.
    pub(crate) fn passed(&self, seq: u64) -> bool {
        seq < self.first_seq
    }

    /// Drops every batch in flight and any failure: their outputs belonged to an
    /// aborted transaction. Sequence numbers keep counting, so late reports for the
    /// dropped batches are ignored.
    pub(crate) fn reset(&mut self) {
        self.first_seq += self.pending.len() as u64;
        self.pending.clear();
        self.failure = None;
        self.failed_record = None;
        self.refused_for_good = false;
    }

    /// Notes that a delivery was refused for good: asking again gets the same answer.
    pub(crate) fn refused_for_good(&mut self) {
        self.refused_for_good = true;
    }

    /// Whether a delivery since the last reset was refused for good.
    pub(crate) fn was_refused_for_good(&self) -> bool {
        self.refused_for_good
    }

    /// The first delivery failure, if any.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Batches not yet fully acknowledged.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Committable offsets (the next offset to read) per partition.
    pub(crate) fn committable(&self) -> &BTreeMap<Partition, i64> {
        &self.committable
    }

    /// Forgets a partition that is no longer ours, so it is not committed again.
    pub(crate) fn forget(&mut self, partition: &Partition) {
        self.committable.remove(partition);
    }

    fn batch(&mut self, seq: u64) -> Option<&mut PendingBatch> {
        let index = seq.checked_sub(self.first_seq)?;
        self.pending.get_mut(index as usize)
    }

    fn advance(&mut self) {
        if self.failure.is_some() {
            return;
        }
        while let Some(front) = self.pending.front() {
            if !front.sealed || front.outstanding > 0 {
                break;
            }
            let done = self.pending.pop_front().expect("front exists");
            self.first_seq += 1;
            for (partition, end) in done.ends {
                let entry = self.committable.entry(partition).or_insert(end);
                *entry = (*entry).max(end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("in".to_string(), n)
    }

    #[test]
    fn an_offset_waits_for_every_earlier_batch() {
        let mut t = Tracker::new();
        let a = t.begin(vec![(p(0), 10)]);
        t.add_outputs(a, 2);
        t.seal(a);
        let b = t.begin(vec![(p(0), 20), (p(1), 5)]);
        t.add_outputs(b, 1);
        t.seal(b);
        t.delivered(b, Ok(()));
        assert!(t.committable().is_empty(), "b is acked but a is not");
        t.delivered(a, Ok(()));
        assert!(
            t.committable().is_empty(),
            "a still has one output outstanding"
        );
        t.delivered(a, Ok(()));
        assert_eq!(t.committable().get(&p(0)), Some(&20));
        assert_eq!(t.committable().get(&p(1)), Some(&5));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_unsealed_batch_is_not_done_even_with_nothing_outstanding() {
        let mut t = Tracker::new();
        let a = t.begin(vec![(p(0), 3)]);
        t.add_outputs(a, 1);
        t.delivered(a, Ok(()));
        assert!(t.committable().is_empty());
        t.seal(a);
        assert_eq!(t.committable().get(&p(0)), Some(&3));
    }

    #[test]
    fn a_batch_with_no_outputs_completes_when_sealed() {
        let mut t = Tracker::new();
        let a = t.begin(vec![(p(2), 8)]);
        t.seal(a);
        assert_eq!(t.committable().get(&p(2)), Some(&8));
    }

    #[test]
    fn a_reset_drops_batches_in_flight_and_ignores_their_late_reports() {
        let mut t = Tracker::new();
        let a = t.begin(vec![(p(0), 10)]);
        t.add_outputs(a, 1);
        t.seal(a);
        t.delivered(a, Err("purged by abort".into()));
        assert!(t.failure().is_some());
        t.reset();
        assert_eq!(t.failure(), None);
        assert_eq!(t.in_flight(), 0);
        t.delivered(a, Err("another late report".into()));
        assert_eq!(t.failure(), None);
        let b = t.begin(vec![(p(0), 20)]);
        assert!(b > a);
        t.seal(b);
        assert!(t.passed(b));
        assert_eq!(t.committable().get(&p(0)), Some(&20));
    }

    #[test]
    fn a_failed_delivery_names_the_input_record_of_the_largest_failed_output() {
        let mut t = Tracker::new();
        let a = t.begin_with_inputs(vec![(p(0), 8), (p(1), 3)], vec![(0, 7), (1, 2), (0, 7)]);
        t.add_outputs(a, 3);
        t.seal(a);
        let (seq, input) = from_delivery_opaque(delivery_opaque(a, Some(0)));
        assert_eq!((seq, input), (a, Some(0)));
        // The broker refuses the whole request: the small output fails first.
        t.delivered_from(seq, input, 10, Err("too large".into()));
        t.delivered_from(a, Some(1), 5000, Err("too large".into()));
        t.delivered_from(a, Some(2), 12, Err("too large".into()));
        let failed = t.failed_record().expect("the record is known");
        assert_eq!(failed.origin(), "in/1@2");
        assert_eq!(failed.cause, "too large");
        assert_eq!(
            t.failure_report().as_deref(),
            Some("too large (an output of input record in/1@2; it stays uncommitted)")
        );
        t.reset();
        assert_eq!(t.failed_record(), None);
        assert_eq!(
            from_delivery_opaque(delivery_opaque(u64::from(u32::MAX), None)),
            (u64::from(u32::MAX), None)
        );
    }

    #[test]
    fn a_failed_delivery_freezes_progress() {
        let mut t = Tracker::new();
        let a = t.begin(vec![(p(0), 10)]);
        t.add_outputs(a, 2);
        t.seal(a);
        t.delivered(a, Err("broker down".into()));
        t.delivered(a, Ok(()));
        let b = t.begin(vec![(p(0), 20)]);
        t.seal(b);
        assert!(t.committable().is_empty());
        assert_eq!(t.failure(), Some("broker down"));
    }
}
