//! The JSONL record format of the local harness (`sluice plugin test`): input records
//! read from a file, outputs printed and compared in one canonical form.
//!
//! Input, one JSON object per line (blank lines skipped):
//! `{"key": .., "value": .., "headers": [[name, value], ..], "timestamp": ms, "topic": ..,
//! "partition": n, "offset": n}`, every field optional. A key, value or header value is
//! UTF-8 text (a JSON string), bytes (`{"base64": ".."}`) or null. `docs/records-jsonl.md`
//! is the user's description.
//!
//! Output, one line per output record or failed record, in output order:
//! `{"input": line, "output": name, "key": .., "value": .., "headers": .., "timestamp": ms}`
//! or `{"input": line, "error": message}`, where `input` is the line number of the
//! input record it came from and `output` the named output (absent: the default one).

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use thiserror::Error;

/// The topic an input record has when its line names none.
const DEFAULT_TOPIC: &str = "input";

/// A line of a records file that does not follow the format.
#[derive(Debug, Error)]
#[error("{file}:{line}: {message}")]
pub(crate) struct LineError {
    file: String,
    line: usize,
    message: String,
}

/// Bytes that may be null.
type Bytes = Option<Vec<u8>>;

/// One input record and the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputRecord {
    pub(crate) line: usize,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp: Option<i64>,
    pub(crate) key: Bytes,
    pub(crate) value: Bytes,
    pub(crate) headers: Vec<(String, Bytes)>,
}

/// One line of a plugin's output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutputLine {
    /// Line number of the input record this output derives from.
    pub(crate) input: usize,
    pub(crate) body: OutputBody,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OutputBody {
    Record {
        output: Option<String>,
        key: Bytes,
        value: Bytes,
        headers: Vec<(String, Bytes)>,
        timestamp: Option<i64>,
    },
    Error(String),
}

fn bytes_field(value: &Value, field: &str) -> Result<Bytes, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.as_bytes().to_vec())),
        Value::Object(map) if map.len() == 1 && map.contains_key("base64") => {
            let Some(encoded) = map["base64"].as_str() else {
                return Err(format!("`{field}`: `base64` must be a string"));
            };
            BASE64
                .decode(encoded)
                .map(Some)
                .map_err(|e| format!("`{field}`: not valid base64: {e}"))
        }
        _ => Err(format!(
            "`{field}` must be UTF-8 text (a JSON string), {{\"base64\": \"...\"}} or null"
        )),
    }
}

fn int_field(value: &Value, field: &str) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("`{field}` must be a whole number")),
        _ => Err(format!("`{field}` must be a whole number")),
    }
}

fn headers_field(value: &Value) -> Result<Vec<(String, Bytes)>, String> {
    const SHAPE: &str =
        "`headers` must be a list of [name, value] pairs, e.g. [[\"trace\", \"abc\"]]";
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(pairs) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(name), value]) => {
                    Ok((name.clone(), bytes_field(value, "headers")?))
                }
                _ => Err(SHAPE.to_string()),
            })
            .collect(),
        _ => Err(SHAPE.to_string()),
    }
}

/// A JSON object and the line number it was on.
type NumberedObject = (usize, Map<String, Value>);

/// Splits a records file into its JSON objects, skipping blank lines.
fn objects(file: &str, text: &str) -> Result<Vec<NumberedObject>, LineError> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| LineError {
            file: file.to_string(),
            line: number,
            message,
        };
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => found.push((number, map)),
            Ok(_) => return Err(error("expected one JSON object per line".into())),
            Err(e) => return Err(error(format!("not valid JSON: {e}"))),
        }
    }
    Ok(found)
}

fn check_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(format!(
            "unknown field `{unknown}`; the fields are {}",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

const INPUT_FIELDS: &[&str] = &[
    "key",
    "value",
    "headers",
    "timestamp",
    "topic",
    "partition",
    "offset",
];
const OUTPUT_FIELDS: &[&str] = &[
    "input",
    "output",
    "key",
    "value",
    "headers",
    "timestamp",
    "error",
];

/// Parses input records. A record without an offset gets its position in the file
/// (0, 1, ...); without a partition, 0; without a topic, [`DEFAULT_TOPIC`].
pub(crate) fn parse_input(file: &str, text: &str) -> Result<Vec<InputRecord>, LineError> {
    let mut records = Vec::new();
    for (line, map) in objects(file, text)? {
        let position = records.len() as i64;
        let record = (|| {
            check_fields(&map, INPUT_FIELDS)?;
            let get = |k: &str| map.get(k).unwrap_or(&Value::Null);
            let topic = match get("topic") {
                Value::Null => DEFAULT_TOPIC.to_string(),
                Value::String(t) if !t.is_empty() => t.clone(),
                _ => return Err("`topic` must be a non-empty string".to_string()),
            };
            let partition = int_field(get("partition"), "partition")?.unwrap_or(0);
            let partition = i32::try_from(partition)
                .ok()
                .filter(|p| *p >= 0)
                .ok_or("`partition` must be between 0 and 2147483647")?;
            let offset = int_field(get("offset"), "offset")?.unwrap_or(position);
            if offset < 0 {
                return Err("`offset` must not be negative".to_string());
            }
            let timestamp = int_field(get("timestamp"), "timestamp")?;
            if timestamp.is_some_and(|t| t < 0) {
                return Err(
                    "`timestamp` must not be negative (milliseconds since the epoch)".into(),
                );
            }
            Ok(InputRecord {
                line,
                topic,
                partition,
                offset,
                timestamp,
                key: bytes_field(get("key"), "key")?,
                value: bytes_field(get("value"), "value")?,
                headers: headers_field(get("headers"))?,
            })
        })()
        .map_err(|message| LineError {
            file: file.to_string(),
            line,
            message,
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Parses expected output lines.
pub(crate) fn parse_output(file: &str, text: &str) -> Result<Vec<OutputLine>, LineError> {
    let mut lines = Vec::new();
    for (line, map) in objects(file, text)? {
        let parsed = (|| {
            check_fields(&map, OUTPUT_FIELDS)?;
            let get = |k: &str| map.get(k).unwrap_or(&Value::Null);
            let input = int_field(get("input"), "input")?
                .filter(|n| *n > 0)
                .ok_or("`input` (the line number of the input record) is required")?;
            let body = match get("error") {
                Value::Null => OutputBody::Record {
                    output: match get("output") {
                        Value::Null => None,
                        Value::String(name) => Some(name.clone()),
                        _ => return Err("`output` must be a string".to_string()),
                    },
                    key: bytes_field(get("key"), "key")?,
                    value: bytes_field(get("value"), "value")?,
                    headers: headers_field(get("headers"))?,
                    timestamp: int_field(get("timestamp"), "timestamp")?,
                },
                Value::String(message) => {
                    check_fields(&map, &["input", "error"])?;
                    OutputBody::Error(message.clone())
                }
                _ => return Err("`error` must be a string".to_string()),
            };
            Ok(OutputLine {
                input: input as usize,
                body,
            })
        })()
        .map_err(|message| LineError {
            file: file.to_string(),
            line,
            message,
        })?;
        lines.push(parsed);
    }
    Ok(lines)
}

fn render_bytes(out: &mut String, bytes: &Bytes) {
    match bytes {
        None => out.push_str("null"),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => out.push_str(&Value::from(text).to_string()),
            Err(_) => {
                let _ = write!(out, "{{\"base64\":\"{}\"}}", BASE64.encode(bytes));
            }
        },
    }
}

/// The canonical one-line form of an output: fields in a fixed order, empty ones left
/// out, bytes as text when they are UTF-8. Two outputs are equal when their forms are.
pub(crate) fn render(line: &OutputLine) -> String {
    let mut out = format!("{{\"input\":{}", line.input);
    match &line.body {
        OutputBody::Error(message) => {
            let _ = write!(out, ",\"error\":{}", Value::from(message.as_str()));
        }
        OutputBody::Record {
            output,
            key,
            value,
            headers,
            timestamp,
        } => {
            if let Some(name) = output {
                let _ = write!(out, ",\"output\":{}", Value::from(name.as_str()));
            }
            if key.is_some() {
                out.push_str(",\"key\":");
                render_bytes(&mut out, key);
            }
            out.push_str(",\"value\":");
            render_bytes(&mut out, value);
            if !headers.is_empty() {
                out.push_str(",\"headers\":[");
                for (i, (name, value)) in headers.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "[{},", Value::from(name.as_str()));
                    render_bytes(&mut out, value);
                    out.push(']');
                }
                out.push(']');
            }
            if let Some(timestamp) = timestamp {
                let _ = write!(out, ",\"timestamp\":{timestamp}");
            }
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_fields_take_text_base64_and_defaults() {
        let text = "{\"key\":\"k\",\"value\":{\"base64\":\"/wA=\"},\"headers\":[[\"h\",null],[\"h\",\"2\"]],\"timestamp\":5}\n\n{\"topic\":\"t\",\"partition\":2,\"offset\":9}\n";
        let records = parse_input("in.jsonl", text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key, Some(b"k".to_vec()));
        assert_eq!(records[0].value, Some(vec![0xff, 0]));
        assert_eq!(
            records[0].headers,
            vec![("h".into(), None), ("h".into(), Some(b"2".to_vec()))]
        );
        assert_eq!(
            (
                records[0].topic.as_str(),
                records[0].offset,
                records[0].timestamp
            ),
            (DEFAULT_TOPIC, 0, Some(5))
        );
        assert_eq!(records[1].line, 3);
        assert_eq!(
            (
                records[1].topic.as_str(),
                records[1].partition,
                records[1].offset
            ),
            ("t", 2, 9)
        );
        assert_eq!(records[1].value, None);
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_number() {
        let error = parse_input("in.jsonl", "{\"value\":\"a\"}\n{\"value\": oops}\n").unwrap_err();
        assert_eq!((error.file.as_str(), error.line), ("in.jsonl", 2));
        assert!(
            error.to_string().starts_with("in.jsonl:2: not valid JSON"),
            "{error}"
        );
        let error = parse_input("in.jsonl", "{\"vale\":\"a\"}").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `vale`"),
            "{error}"
        );
        let error = parse_input("in.jsonl", "{\"value\":5}").unwrap_err();
        assert!(
            error.to_string().contains("`value` must be UTF-8 text"),
            "{error}"
        );
    }

    #[test]
    fn expected_lines_compare_by_content_not_spelling() {
        let written = "{ \"value\": {\"base64\": \"aGk=\"}, \"input\": 3, \"headers\": [] }";
        let expected = parse_output("expected.jsonl", written).unwrap();
        assert_eq!(render(&expected[0]), "{\"input\":3,\"value\":\"hi\"}");
        let binary = OutputLine {
            input: 1,
            body: OutputBody::Record {
                output: Some("alerts".into()),
                key: None,
                value: Some(vec![0xff]),
                headers: vec![("h".into(), None)],
                timestamp: Some(7),
            },
        };
        let line = render(&binary);
        assert_eq!(
            line,
            "{\"input\":1,\"output\":\"alerts\",\"value\":{\"base64\":\"/w==\"},\"headers\":[[\"h\",null]],\"timestamp\":7}"
        );
        assert_eq!(parse_output("e", &line).unwrap(), vec![binary]);
    }
}
