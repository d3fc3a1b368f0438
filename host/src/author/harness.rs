//! `sluice plugin test`: runs a plugin on records from a file with the host's runtime
//! and limits (no Kafka), and compares its outputs with an expected file.
//!
//! Strategy: the records are cut into batches as the pipeline would cut them, encoded
//! with the host's batch codec, run through one instance of the plugin (started with
//! the given settings), and the output ops are checked by the same reader the sink
//! uses. Each output becomes one canonical line (`records::render`), so expectations
//! compare by content, and a difference is shown as a line diff.

use std::path::Path;

use anyhow::Context as _;
use similar::{ChangeTag, TextDiff};
use sluice_sdk::batch::{Header, InputBatch, InputWriter, Op, OutputReader, RecordFields};

use super::records::{InputRecord, OutputBody, OutputLine};
use crate::plugin::Plugin;
use crate::runtime::{Limits, Runtime, Sandbox};
use crate::state::StateStore;

/// How the harness runs the plugin.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) config: Vec<(String, String)>,
    pub(crate) limits: Limits,
    pub(crate) batch_size: usize,
}

/// Runs `records` through the plugin at `path` and returns its outputs in order.
/// Loading, `init`, a trap, a timeout or a malformed output batch is an error; a record
/// the plugin reports as failed is an output line like any other.
pub(crate) fn run(
    path: &Path,
    records: &[InputRecord],
    settings: &Settings,
) -> anyhow::Result<Vec<OutputLine>> {
    let runtime = Runtime::new().context("starting the WebAssembly runtime")?;
    let plugin = crate::feedback::compiling(&path.display().to_string(), || {
        Plugin::load(&runtime, Some(path))
    })?;
    // No sandbox grants and an in-memory state store that lasts for the run: a plugin
    // with keyed state sees what it wrote for earlier records of the file.
    let mut instance = plugin.start(
        settings.limits,
        &Sandbox::default(),
        &settings.config,
        StateStore::shared(),
    )?;
    let mut lines = Vec::new();
    for (number, chunk) in records.chunks(settings.batch_size.max(1)).enumerate() {
        let mut writer = InputWriter::new();
        for record in chunk {
            let headers: Vec<Header<'_>> = record
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name,
                    value: value.as_deref(),
                })
                .collect();
            writer.push(RecordFields {
                topic: &record.topic,
                partition: record.partition,
                offset: record.offset,
                timestamp: record.timestamp,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                headers: headers.iter().copied(),
            });
        }
        let first_line = chunk[0].line;
        let encoded = writer.finish();
        let batch = InputBatch::open(encoded).expect("the host's own encoding");
        let output = instance.process(encoded, &batch).map_err(|e| {
            anyhow::anyhow!(
                "plugin {} {e} (batch {} starting at input line {first_line})",
                path.display(),
                number + 1
            )
        })?;
        let reader = OutputReader::parse(&output, chunk.len() as u32).map_err(|e| {
            anyhow::anyhow!(
                "plugin {} returned a malformed output batch: {e}",
                path.display()
            )
        })?;
        for op in reader {
            let op = op.map_err(|e| {
                anyhow::anyhow!(
                    "plugin {} returned a malformed output batch: {e}",
                    path.display()
                )
            })?;
            outputs(&op, chunk, &mut lines);
        }
    }
    Ok(lines)
}

fn owned_headers<'a>(headers: impl Iterator<Item = Header<'a>>) -> Vec<(String, Option<Vec<u8>>)> {
    headers
        .map(|h| (h.name.to_string(), h.value.map(<[u8]>::to_vec)))
        .collect()
}

/// The output lines of one op, as the sink would write them.
fn outputs(op: &Op<'_>, chunk: &[InputRecord], lines: &mut Vec<OutputLine>) {
    let named = |output: &Option<&str>| output.map(str::to_string);
    match op {
        Op::Keep {
            start,
            count,
            output,
        } => {
            for source in &chunk[*start as usize..(*start + *count) as usize] {
                lines.push(OutputLine {
                    input: source.line,
                    body: OutputBody::Record {
                        output: named(output),
                        key: source.key.clone(),
                        value: source.value.clone(),
                        headers: source.headers.clone(),
                        timestamp: source.timestamp,
                    },
                });
            }
        }
        Op::ReplaceValue {
            index,
            value,
            output,
        } => {
            let source = &chunk[*index as usize];
            lines.push(OutputLine {
                input: source.line,
                body: OutputBody::Record {
                    output: named(output),
                    key: source.key.clone(),
                    value: value.map(<[u8]>::to_vec),
                    headers: source.headers.clone(),
                    timestamp: source.timestamp,
                },
            });
        }
        Op::Record {
            index,
            timestamp,
            key,
            value,
            headers,
            output,
        } => lines.push(OutputLine {
            input: chunk[*index as usize].line,
            body: OutputBody::Record {
                output: named(output),
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                headers: owned_headers(headers.clone()),
                timestamp: *timestamp,
            },
        }),
        Op::Error { index, message } => lines.push(OutputLine {
            input: chunk[*index as usize].line,
            body: OutputBody::Error(message.to_string()),
        }),
    }
}

/// A line diff of expected against actual canonical lines, or `None` when they match.
pub(crate) fn diff(expected: &[String], actual: &[String]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let expected = expected.join("\n") + "\n";
    let actual = actual.join("\n") + "\n";
    let diff = TextDiff::from_lines(&expected, &actual);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            ChangeTag::Delete => "- ",
            ChangeTag::Insert => "+ ",
            ChangeTag::Equal => "  ",
        };
        out.push_str(sign);
        out.push_str(change.as_str().unwrap_or_default());
    }
    Some(out)
}
