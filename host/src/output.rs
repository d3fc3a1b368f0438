//! The plugin's output for one batch, checked before any of it is sent.
//!
//! Strategy: the output batch is read twice and never collected. Once here, to count
//! each input record's outputs and bytes against the [`OutputLimits`] and to note
//! which records failed (by the plugin's word, by a limit, by an output name the sink
//! does not map, or at the sink on earlier attempts); once by the sink, which sends
//! the outputs of the records that did not fail and each failed record, as it was
//! read, to the dead-letter topic. Whatever the number of outputs, the host's memory
//! is that of the output buffer, which the plugin's memory limit bounds, and of the
//! producer's bounded queue.

use std::collections::{BTreeMap, HashSet};

use sluice_sdk::batch::{DecodeError, InputBatch, Op, OutputReader, Record};

/// Bytes of framing counted for every output record and header on top of its key,
/// value and header bytes: more than a Kafka v2 record needs (varint lengths, offset
/// and timestamp deltas), so a record that passes the size check also passes the
/// producer's.
const RECORD_FRAMING: u64 = 64;
const HEADER_FRAMING: u64 = 10;

/// What the outputs of one batch must keep to.
#[derive(Debug, Clone)]
pub struct OutputLimits {
    /// Outputs one input record may have (`[plugin] max_outputs_per_record`).
    pub per_record: u32,
    /// Bytes of all outputs of one batch (`[plugin] max_batch_output_mb`).
    pub batch_bytes: u64,
    /// Bytes of one output record, framing included: the sink producer's
    /// `message.max.bytes`, less what the host adds (the provenance header).
    pub record_bytes: u64,
    /// The output names `[sink.outputs]` maps to topics.
    pub outputs: HashSet<String>,
}

impl OutputLimits {
    /// No limit at all: for checks of what a plugin wrote, outside a pipeline.
    #[cfg(test)]
    pub(crate) fn unlimited() -> Self {
        OutputLimits {
            per_record: u32::MAX,
            batch_bytes: u64::MAX,
            record_bytes: u64::MAX,
            outputs: HashSet::new(),
        }
    }

    /// The same limits with at most `bytes` left for the batch's outputs.
    pub(crate) fn with_batch_bytes(&self, bytes: u64) -> Self {
        OutputLimits {
            batch_bytes: bytes,
            ..self.clone()
        }
    }
}

/// An output batch's verdict on each input record: how many outputs it has, or why
/// it failed.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// Outputs of each input record that did not fail.
    counts: Vec<u32>,
    /// The failed input records, by index, with the reason.
    failed: BTreeMap<u32, String>,
    /// Bytes of the outputs of the records that did not fail, framing included.
    bytes: u64,
}

impl Verdicts {
    /// Reads `output`, the plugin's answer to `input`, against `limits`. A record that
    /// exceeds a limit fails with a reason naming it; the rest of its outputs are not
    /// counted. The records before it keep theirs. A record whose outputs would take
    /// the batch over its byte limit fails, and the records after it may still fit.
    /// An error is an output batch that cannot be read.
    pub fn check(
        output: &[u8],
        input: &InputBatch<'_>,
        limits: &OutputLimits,
    ) -> Result<Verdicts, DecodeError> {
        let mut verdicts = Verdicts {
            counts: vec![0; input.len()],
            failed: BTreeMap::new(),
            bytes: 0,
        };
        for op in OutputReader::parse(output, input.len() as u32)? {
            let op = op?;
            if let Op::Error { index, message } = op {
                verdicts.fail(index, message.to_string());
                continue;
            }
            let (indices, output) = targets(&op);
            if let Some(name) = output.filter(|name| !limits.outputs.contains(*name)) {
                for index in indices {
                    verdicts.fail(
                        index,
                        format!(
                            "the plugin sent a record to output `{name}`, which [sink.outputs] does not map to a topic"
                        ),
                    );
                }
                continue;
            }
            for index in indices {
                if verdicts.failed.contains_key(&index) {
                    continue;
                }
                let record = input.get(index).expect("the reader checks indices");
                verdicts.count(index, output_bytes(&op, &record), limits);
            }
        }
        Ok(verdicts)
    }

    /// Counts one output of record `index` of `bytes`, or fails the record.
    fn count(&mut self, index: u32, bytes: u64, limits: &OutputLimits) {
        let count = &mut self.counts[index as usize];
        let reason = if *count >= limits.per_record {
            format!(
                "the plugin wrote more than {} outputs for this record ([plugin] max_outputs_per_record)",
                limits.per_record
            )
        } else if bytes > limits.record_bytes {
            format!(
                "an output of {bytes} bytes is larger than the sink accepts ({} bytes: the producer's message.max.bytes, less framing and the provenance header)",
                limits.record_bytes
            )
        } else if self.bytes + bytes > limits.batch_bytes {
            format!(
                "its outputs take the batch's outputs past {} bytes ([plugin] max_batch_output_mb)",
                limits.batch_bytes
            )
        } else {
            *count += 1;
            self.bytes += bytes;
            return;
        };
        self.fail(index, reason);
    }

    /// Fails record `index` with `reason`, unless it failed already: the first reason
    /// stands. Its outputs are not sent; the record goes to the dead-letter topic.
    pub(crate) fn fail(&mut self, index: u32, reason: String) {
        if let Some(count) = self.counts.get_mut(index as usize) {
            *count = 0;
        }
        self.failed.entry(index).or_insert(reason);
    }

    /// The failed records, by index, with the reason.
    pub(crate) fn failed(&self) -> &BTreeMap<u32, String> {
        &self.failed
    }

    #[cfg(test)]
    fn is_failed(&self, index: u32) -> bool {
        self.failed.contains_key(&index)
    }

    /// Records the sink sends for this batch: every output of the records that did not
    /// fail, and each failed record once (to the dead-letter topic).
    pub fn sends(&self) -> usize {
        let outputs: u64 = self
            .counts
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.failed.contains_key(&(*index as u32)))
            .map(|(_, count)| u64::from(*count))
            .sum();
        outputs as usize + self.failed.len()
    }

    /// Bytes of the outputs of the records that did not fail, framing included.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The input records `op` is about, and the output it sends them to (`None`: the
/// default one; an error names no output).
pub(crate) fn targets<'a>(op: &Op<'a>) -> (std::ops::Range<u32>, Option<&'a str>) {
    match op {
        Op::Keep {
            start,
            count,
            output,
        } => (*start..*start + *count, *output),
        Op::ReplaceValue { index, output, .. } | Op::Record { index, output, .. } => {
            (*index..*index + 1, *output)
        }
        Op::Error { index, .. } => (*index..*index + 1, None),
    }
}

/// Bytes of the output record `op` makes of input record `record`, framing included.
/// An input record kept (or with its value replaced) is counted as it lies in the
/// input batch, which is a little more than its key, value and headers.
fn output_bytes(op: &Op<'_>, record: &Record<'_>) -> u64 {
    let len = |bytes: Option<&[u8]>| bytes.map_or(0, |b| b.len() as u64);
    RECORD_FRAMING
        + match op {
            Op::Keep { .. } => u64::from(record.encoded_len()),
            Op::ReplaceValue { value, .. } => {
                u64::from(record.encoded_len()) - len(record.value()) + len(*value)
            }
            Op::Record {
                key,
                value,
                headers,
                ..
            } => {
                len(*key)
                    + len(*value)
                    + headers
                        .clone()
                        .map(|h| h.name.len() as u64 + len(h.value) + HEADER_FRAMING)
                        .sum::<u64>()
            }
            Op::Error { .. } => 0,
        }
}

/// Bytes counted for a header the host adds to every output (the provenance header).
pub(crate) fn added_header_bytes(name: &str, value_len: usize) -> u64 {
    name.len() as u64 + value_len as u64 + HEADER_FRAMING
}

#[cfg(test)]
mod tests {
    use sluice_sdk::batch::{InputWriter, NewRecord, OutputWriter, RecordFields};

    use super::*;

    fn input(values: &[&[u8]]) -> Vec<u8> {
        let mut writer = InputWriter::new();
        for (offset, value) in values.iter().enumerate() {
            writer.push(RecordFields {
                topic: "in",
                partition: 0,
                offset: offset as i64,
                timestamp: None,
                key: None,
                value: Some(*value),
                headers: std::iter::empty(),
            });
        }
        writer.finish().to_vec()
    }

    fn limits(per_record: u32, batch_bytes: u64, record_bytes: u64) -> OutputLimits {
        OutputLimits {
            per_record,
            batch_bytes,
            record_bytes,
            outputs: HashSet::from(["audit".to_string()]),
        }
    }

    #[test]
    fn outputs_within_the_limits_are_all_counted() {
        let encoded = input(&[b"a", b"b", b"c"]);
        let batch = InputBatch::open(&encoded).unwrap();
        let mut out = OutputWriter::new();
        out.keep_range(0, 3);
        out.keep_to(1, "audit");
        out.replace_value(2, Some(b"new"), None);
        let out = out.finish();
        let verdicts = Verdicts::check(&out, &batch, &limits(3, 1 << 20, 1 << 20)).unwrap();
        assert!(verdicts.failed().is_empty());
        assert_eq!(verdicts.sends(), 5);
        // Each input record as it lies in the batch (all three are the same size).
        let record = u64::from(batch.get(0).unwrap().encoded_len());
        assert_eq!(verdicts.bytes(), 5 * (RECORD_FRAMING + record) - 1 + 3);
    }

    #[test]
    fn a_record_with_too_many_outputs_fails_and_its_neighbours_do_not() {
        let encoded = input(&[b"a", b"b", b"c"]);
        let batch = InputBatch::open(&encoded).unwrap();
        let mut out = OutputWriter::new();
        out.keep(0);
        for _ in 0..1000 {
            out.keep_to(1, "audit");
        }
        out.keep(2);
        let out = out.finish();
        let verdicts = Verdicts::check(&out, &batch, &limits(10, 1 << 20, 1 << 20)).unwrap();
        assert_eq!(verdicts.failed().keys().copied().collect::<Vec<_>>(), [1]);
        assert!(verdicts.failed()[&1].contains("max_outputs_per_record"));
        assert_eq!(
            verdicts.sends(),
            3,
            "records 0 and 2, and record 1 dead-lettered"
        );
    }

    #[test]
    fn an_output_larger_than_the_sink_accepts_fails_its_record() {
        let encoded = input(&[b"a", b"b"]);
        let batch = InputBatch::open(&encoded).unwrap();
        let big = vec![7u8; 2000];
        let mut out = OutputWriter::new();
        out.keep(0);
        out.record(
            1,
            &NewRecord {
                key: None,
                value: Some(&big),
                headers: &[],
                timestamp: None,
            },
            None,
        );
        let out = out.finish();
        let verdicts = Verdicts::check(&out, &batch, &limits(10, 1 << 20, 1000)).unwrap();
        assert_eq!(verdicts.failed().len(), 1);
        let reason = &verdicts.failed()[&1];
        assert!(
            reason.contains("2064 bytes") && reason.contains("message.max.bytes"),
            "{reason}"
        );
    }

    #[test]
    fn the_record_that_takes_the_batch_past_its_byte_limit_fails_and_later_small_ones_fit() {
        let encoded = input(&[b"a", b"b", b"c"]);
        let batch = InputBatch::open(&encoded).unwrap();
        let big = vec![1u8; 300];
        let mut out = OutputWriter::new();
        out.keep(0);
        out.replace_value(1, Some(&big), None);
        out.keep(2);
        let out = out.finish();
        // Room for records 0 and 2, not for record 1 with its 300-byte value.
        let verdicts = Verdicts::check(&out, &batch, &limits(10, 200, 1 << 20)).unwrap();
        assert_eq!(verdicts.failed().keys().copied().collect::<Vec<_>>(), [1]);
        assert!(verdicts.failed()[&1].contains("max_batch_output_mb"));
        let record = u64::from(batch.get(0).unwrap().encoded_len());
        assert_eq!(verdicts.bytes(), 2 * (RECORD_FRAMING + record));
    }

    #[test]
    fn an_unmapped_output_name_fails_the_records_sent_there() {
        let encoded = input(&[b"a", b"b"]);
        let batch = InputBatch::open(&encoded).unwrap();
        let mut out = OutputWriter::new();
        out.keep(0);
        out.keep_to(1, "nowhere");
        let out = out.finish();
        let verdicts = Verdicts::check(&out, &batch, &limits(10, 1 << 20, 1 << 20)).unwrap();
        assert!(verdicts.failed()[&1].contains("output `nowhere`"));
        assert_eq!(verdicts.sends(), 2);
    }

    #[test]
    fn the_plugins_own_failure_stands_before_a_later_limit() {
        let encoded = input(&[b"a"]);
        let batch = InputBatch::open(&encoded).unwrap();
        let mut out = OutputWriter::new();
        out.error(0, "bad price");
        out.keep(0);
        out.keep(0);
        let out = out.finish();
        let mut verdicts = Verdicts::check(&out, &batch, &limits(1, 1 << 20, 1 << 20)).unwrap();
        verdicts.fail(0, "refused by the broker".to_string());
        assert_eq!(verdicts.failed()[&0], "bad price");
        assert_eq!(verdicts.sends(), 1);
    }

    #[test]
    fn millions_of_outputs_cost_no_memory_beyond_a_count_per_input_record() {
        let encoded = input(&[b"a"]);
        let batch = InputBatch::open(&encoded).unwrap();
        let mut out = OutputWriter::new();
        for _ in 0..2_000_000 {
            out.keep_to(0, "audit");
        }
        let out = out.finish();
        let verdicts = Verdicts::check(&out, &batch, &limits(1000, 1 << 30, 1 << 20)).unwrap();
        assert_eq!(verdicts.counts.capacity(), 1);
        assert_eq!(verdicts.sends(), 1);
        assert!(verdicts.is_failed(0));
    }
}
