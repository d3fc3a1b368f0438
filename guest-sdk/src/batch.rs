//! The batch encoding: how records cross between the host and a plugin.
//!
//! One `list<u8>` carries a whole batch in each direction, so a batch costs one copy
//! into the guest and one copy out, whatever its size. The byte layout is specified in
//! `wit/README.md`; this module is its only implementation, used by the host (write
//! inputs, read outputs) and by the guest SDK (read inputs, write outputs).
//!
//! All integers are little-endian. Lengths of `-1` stand for a null key, value or
//! header value.

use std::fmt;

/// The encoding version written into, and required from, every batch.
pub const VERSION: u16 = 1;

const INPUT_HEADER_LEN: usize = 16;
const OUTPUT_HEADER_LEN: usize = 8;

const OP_KEEP: u8 = 1;
const OP_KEEP_RANGE: u8 = 2;
const OP_REPLACE_VALUE: u8 = 3;
const OP_RECORD: u8 = 4;
const OP_ERROR: u8 = 5;
/// Set on an op code when an output name follows it.
const OP_ROUTED: u8 = 0x80;

/// A batch that does not follow the encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    what: &'static str,
    at: usize,
}

impl DecodeError {
    fn new(what: &'static str, at: usize) -> Self {
        DecodeError { what, at }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed batch: {} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for DecodeError {}

/// A bounds-checked reader over a byte slice.
#[derive(Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn at(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or(DecodeError::new(what, self.pos))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// Bytes preceded by an `i32` length, `-1` meaning null.
    fn nullable(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.i32(what)? {
            -1 => Ok(None),
            len if len >= 0 => Ok(Some(self.take(len as usize, what)?)),
            _ => Err(DecodeError::new(what, self.pos - 4)),
        }
    }

    /// UTF-8 text preceded by a `u16` length.
    fn short_str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u16(what)? as usize;
        let start = self.pos;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| DecodeError::new(what, start))
    }

    /// UTF-8 text preceded by a `u32` length.
    fn long_str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.u32(what)? as usize;
        let start = self.pos;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| DecodeError::new(what, start))
    }
}

fn put_nullable(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(bytes) => {
            buf.extend_from_slice(&(bytes.len() as i32).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
    }
}

fn put_short_str(buf: &mut Vec<u8>, text: &str) {
    // Names longer than u16::MAX are cut at a character boundary rather than corrupting the batch.
    let mut len = text.len().min(u16::MAX as usize);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    buf.extend_from_slice(&(len as u16).to_le_bytes());
    buf.extend_from_slice(&text.as_bytes()[..len]);
}

fn put_headers<'h>(buf: &mut Vec<u8>, headers: impl ExactSizeIterator<Item = Header<'h>>) {
    let count = headers.len().min(u16::MAX as usize);
    buf.extend_from_slice(&(count as u16).to_le_bytes());
    for header in headers.take(count) {
        put_short_str(buf, header.name);
        put_nullable(buf, header.value);
    }
}

fn check_version(cursor: &mut Cursor<'_>) -> Result<(), DecodeError> {
    let at = cursor.pos;
    if cursor.u16("version")? != VERSION {
        return Err(DecodeError::new("unsupported encoding version", at));
    }
    cursor.u16("flags")?;
    Ok(())
}

/// One Kafka record header: a name and an optional value. Names may repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The header's name.
    pub name: &'a str,
    /// The header's value; `None` for a null value.
    pub value: Option<&'a [u8]>,
}

/// The headers of one record, in their original order.
#[derive(Clone)]
pub struct Headers<'a> {
    cursor: Cursor<'a>,
    remaining: u16,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The batch was validated when it was opened, so these reads cannot fail.
        let name = self.cursor.short_str("header name").ok()?;
        let value = self.cursor.nullable("header value").ok()?;
        Some(Header { name, value })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for Headers<'_> {}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// One input record, decoded lazily: key, value and headers are slices into the batch.
#[derive(Clone)]
pub struct Record<'a> {
    index: u32,
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Headers<'a>,
    encoded_len: u32,
}

impl<'a> Record<'a> {
    /// Bytes the record takes in its batch: its key, value and headers with their
    /// lengths, and 22 bytes of topic, partition, offset and timestamp. An upper bound
    /// of what the record takes in a Kafka record, known without reading the headers.
    pub fn encoded_len(&self) -> u32 {
        self.encoded_len
    }

    /// The record's position in its batch.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The topic the record was read from.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// The partition the record was read from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record's timestamp in milliseconds since the Unix epoch, if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The record's key; `None` for a null key.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// The record's value; `None` for a null value (a tombstone).
    pub fn value(&self) -> Option<&'a [u8]> {
        self.value
    }

    /// The record's headers in order, duplicates included.
    pub fn headers(&self) -> Headers<'a> {
        self.headers.clone()
    }

    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.headers().find(|h| h.name == name).map(|h| h.value)
    }
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("key", &self.key)
            .field("value", &self.value)
            .field("headers", &self.headers)
            .finish()
    }
}

/// A received input batch. [`InputBatch::parse`] checks every bound once, after which
/// reading records cannot fail; [`InputBatch::open`] trusts the encoder and decodes each
/// record only when it is read.
pub struct InputBatch<'a> {
    buf: &'a [u8],
    topics: Vec<&'a str>,
    index: &'a [u8],
}

impl<'a> InputBatch<'a> {
    /// Opens and validates an encoded input batch: every record is checked once.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let batch = Self::open(buf)?;
        for i in 0..batch.len() {
            batch.decode(i as u32)?;
        }
        Ok(batch)
    }

    /// Opens an encoded input batch from a trusted encoder (the host, for the guest;
    /// itself, for the host), checking the header and tables but not each record, so
    /// that every record is decoded once, when it is read. Reading a malformed record
    /// from such a batch panics.
    pub fn open(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut cursor = Cursor::at(buf, 0);
        check_version(&mut cursor)?;
        let count = cursor.u32("record count")? as usize;
        let topics_at = cursor.u32("topic table position")? as usize;
        let index_at = cursor.u32("record index position")? as usize;

        let mut topics_cursor = Cursor::at(buf, topics_at);
        let topic_count = topics_cursor.u16("topic count")?;
        let topics = (0..topic_count)
            .map(|_| topics_cursor.short_str("topic name"))
            .collect::<Result<Vec<_>, _>>()?;
        let index = Cursor::at(buf, index_at).take(count * 4, "record index")?;

        Ok(InputBatch { buf, topics, index })
    }

    /// The number of records in the batch.
    pub fn len(&self) -> usize {
        self.index.len() / 4
    }

    /// Whether the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The record at `index`, or `None` past the end.
    pub fn get(&self, index: u32) -> Option<Record<'a>> {
        self.decode(index).ok()
    }

    /// The records in batch order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = Record<'a>> + '_ {
        (0..self.len() as u32).map(|i| self.decode(i).expect("a well-formed batch from the host"))
    }

    fn decode(&self, index: u32) -> Result<Record<'a>, DecodeError> {
        let slot = index as usize * 4;
        let entry = self
            .index
            .get(slot..slot + 4)
            .ok_or(DecodeError::new("record index out of range", slot))?;
        let at = u32::from_le_bytes(entry.try_into().expect("four bytes")) as usize;
        let mut cursor = Cursor::at(self.buf, at);
        let topic_at = cursor.pos;
        let topic = *self
            .topics
            .get(cursor.u16("topic")? as usize)
            .ok_or(DecodeError::new("unknown topic index", topic_at))?;
        let partition = cursor.i32("partition")?;
        let offset = cursor.i64("offset")?;
        let timestamp = Some(cursor.i64("timestamp")?).filter(|t| *t >= 0);
        let key = cursor.nullable("key")?;
        let value = cursor.nullable("value")?;
        let header_count = cursor.u16("header count")?;
        let headers = Headers {
            cursor: cursor.clone(),
            remaining: header_count,
        };
        for _ in 0..header_count {
            cursor.short_str("header name")?;
            cursor.nullable("header value")?;
        }
        Ok(Record {
            index,
            topic,
            partition,
            offset,
            timestamp,
            key,
            value,
            headers,
            encoded_len: (cursor.pos - at) as u32,
        })
    }
}

/// Builds an input batch (the host's side).
#[derive(Debug, Default)]
pub struct InputWriter {
    buf: Vec<u8>,
    index: Vec<u32>,
    topics: Vec<String>,
}

/// The fields of a record to encode.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a, H> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Timestamp in milliseconds, if any.
    pub timestamp: Option<i64>,
    /// Key, `None` for null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for null.
    pub value: Option<&'a [u8]>,
    /// Headers in order.
    pub headers: H,
}

impl InputWriter {
    /// An empty batch.
    pub fn new() -> Self {
        let mut writer = InputWriter::default();
        writer.clear();
        writer
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.resize(INPUT_HEADER_LEN, 0);
        self.index.clear();
    }

    /// The number of records written.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Appends a record.
    pub fn push<'h, H>(&mut self, record: RecordFields<'_, H>)
    where
        H: ExactSizeIterator<Item = Header<'h>>,
    {
        let topic = match self.topics.iter().position(|t| t == record.topic) {
            Some(i) => i,
            None => {
                self.topics.push(record.topic.to_owned());
                self.topics.len() - 1
            }
        };
        self.index.push(self.buf.len() as u32);
        let buf = &mut self.buf;
        buf.extend_from_slice(&(topic as u16).to_le_bytes());
        buf.extend_from_slice(&record.partition.to_le_bytes());
        buf.extend_from_slice(&record.offset.to_le_bytes());
        buf.extend_from_slice(&record.timestamp.unwrap_or(-1).to_le_bytes());
        put_nullable(buf, record.key);
        put_nullable(buf, record.value);
        put_headers(buf, record.headers);
    }

    /// Writes the trailer tables and returns the encoded batch. The writer must be
    /// cleared before it is used again.
    pub fn finish(&mut self) -> &[u8] {
        let topics_at = self.buf.len() as u32;
        self.buf
            .extend_from_slice(&(self.topics.len() as u16).to_le_bytes());
        for topic in &self.topics {
            put_short_str(&mut self.buf, topic);
        }
        let index_at = self.buf.len() as u32;
        for at in &self.index {
            self.buf.extend_from_slice(&at.to_le_bytes());
        }
        let header = &mut self.buf[..INPUT_HEADER_LEN];
        header[0..2].copy_from_slice(&VERSION.to_le_bytes());
        header[2..4].copy_from_slice(&0u16.to_le_bytes());
        header[4..8].copy_from_slice(&(self.index.len() as u32).to_le_bytes());
        header[8..12].copy_from_slice(&topics_at.to_le_bytes());
        header[12..16].copy_from_slice(&index_at.to_le_bytes());
        &self.buf
    }
}

/// A record made by the plugin rather than forwarded from the input.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecord<'a> {
    /// Key, `None` for null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for null.
    pub value: Option<&'a [u8]>,
    /// Headers in order.
    pub headers: &'a [Header<'a>],
    /// Timestamp in milliseconds; `None` lets the producer stamp it.
    pub timestamp: Option<i64>,
}

/// Builds an output batch (the guest's side). Consecutive unrouted keeps are merged into
/// one range, so a pass-through batch is a single op.
#[derive(Debug)]
pub struct OutputWriter {
    buf: Vec<u8>,
    ops: u32,
    /// An unrouted keep range not yet written: (start, count).
    pending: Option<(u32, u32)>,
}

/// A point an [`OutputWriter`] can be rolled back to.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    len: usize,
    ops: u32,
    pending: Option<(u32, u32)>,
}

impl Default for OutputWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputWriter {
    /// An empty output batch.
    pub fn new() -> Self {
        OutputWriter {
            buf: vec![0; OUTPUT_HEADER_LEN],
            ops: 0,
            pending: None,
        }
    }

    /// Forwards input record `index` unchanged to the default output.
    pub fn keep(&mut self, index: u32) {
        match &mut self.pending {
            Some((start, count)) if *start + *count == index => *count += 1,
            _ => {
                self.flush_pending();
                self.pending = Some((index, 1));
            }
        }
    }

    /// Forwards input records `start..start + count` unchanged to the default output.
    pub fn keep_range(&mut self, start: u32, count: u32) {
        if count == 0 {
            return;
        }
        match &mut self.pending {
            Some((s, c)) if *s + *c == start => *c += count,
            _ => {
                self.flush_pending();
                self.pending = Some((start, count));
            }
        }
    }

    /// Forwards input record `index` unchanged to the named output.
    pub fn keep_to(&mut self, index: u32, output: &str) {
        self.op(OP_KEEP, Some(output));
        self.buf.extend_from_slice(&index.to_le_bytes());
    }

    /// Forwards input record `index` with a new value, optionally to a named output.
    pub fn replace_value(&mut self, index: u32, value: Option<&[u8]>, output: Option<&str>) {
        self.op(OP_REPLACE_VALUE, output);
        self.buf.extend_from_slice(&index.to_le_bytes());
        put_nullable(&mut self.buf, value);
    }

    /// Emits a new record derived from input record `index`, optionally to a named output.
    pub fn record(&mut self, index: u32, record: &NewRecord<'_>, output: Option<&str>) {
        self.op(OP_RECORD, output);
        self.buf.extend_from_slice(&index.to_le_bytes());
        self.buf
            .extend_from_slice(&record.timestamp.unwrap_or(-1).to_le_bytes());
        put_nullable(&mut self.buf, record.key);
        put_nullable(&mut self.buf, record.value);
        put_headers(&mut self.buf, record.headers.iter().copied());
    }

    /// Reports that input record `index` could not be transformed.
    pub fn error(&mut self, index: u32, message: &str) {
        self.op(OP_ERROR, None);
        self.buf.extend_from_slice(&index.to_le_bytes());
        self.buf
            .extend_from_slice(&(message.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(message.as_bytes());
    }

    /// The current position, for [`OutputWriter::rollback`].
    pub fn mark(&self) -> Mark {
        Mark {
            len: self.buf.len(),
            ops: self.ops,
            pending: self.pending,
        }
    }

    /// Discards everything written since `mark`.
    pub fn rollback(&mut self, mark: Mark) {
        self.buf.truncate(mark.len);
        self.ops = mark.ops;
        self.pending = mark.pending;
    }

    /// Writes the header and returns the encoded batch.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush_pending();
        self.buf[0..2].copy_from_slice(&VERSION.to_le_bytes());
        self.buf[2..4].copy_from_slice(&0u16.to_le_bytes());
        self.buf[4..8].copy_from_slice(&self.ops.to_le_bytes());
        self.buf
    }

    fn flush_pending(&mut self) {
        if let Some((start, count)) = self.pending.take() {
            self.ops += 1;
            if count == 1 {
                self.buf.push(OP_KEEP);
                self.buf.extend_from_slice(&start.to_le_bytes());
            } else {
                self.buf.push(OP_KEEP_RANGE);
                self.buf.extend_from_slice(&start.to_le_bytes());
                self.buf.extend_from_slice(&count.to_le_bytes());
            }
        }
    }

    fn op(&mut self, code: u8, output: Option<&str>) {
        self.flush_pending();
        self.ops += 1;
        match output {
            None => self.buf.push(code),
            Some(name) => {
                self.buf.push(code | OP_ROUTED);
                put_short_str(&mut self.buf, name);
            }
        }
    }
}

/// One instruction of an output batch, as the host reads it.
#[derive(Debug, Clone)]
pub enum Op<'a> {
    /// Forward input records `start..start + count` unchanged.
    Keep {
        /// First input record.
        start: u32,
        /// Number of records.
        count: u32,
        /// Named output, or the default one.
        output: Option<&'a str>,
    },
    /// Forward input record `index` with a new value.
    ReplaceValue {
        /// The input record.
        index: u32,
        /// The new value.
        value: Option<&'a [u8]>,
        /// Named output, or the default one.
        output: Option<&'a str>,
    },
    /// A new record derived from input record `index`.
    Record {
        /// The input record it derives from.
        index: u32,
        /// Timestamp, if set.
        timestamp: Option<i64>,
        /// Key.
        key: Option<&'a [u8]>,
        /// Value.
        value: Option<&'a [u8]>,
        /// Headers.
        headers: Headers<'a>,
        /// Named output, or the default one.
        output: Option<&'a str>,
    },
    /// Input record `index` failed.
    Error {
        /// The input record.
        index: u32,
        /// The plugin's message.
        message: &'a str,
    },
}

/// One line per op, for tests and diagnostics: `keep 5`, `keep 0..3 to audit`,
/// `replace 2 value "v"`, `record 2 key null value "new" headers [h="x"] timestamp 5`,
/// `error 3: bad json`. Byte strings show as quoted text when they are UTF-8, else as
/// hex (`0x00ff`); a null one as `null`.
impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = |f: &mut fmt::Formatter<'_>, output: &Option<&str>| match output {
            Some(name) => write!(f, " to {name}"),
            None => Ok(()),
        };
        match self {
            Op::Keep {
                start,
                count,
                output,
            } => {
                match count {
                    1 => write!(f, "keep {start}")?,
                    _ => write!(f, "keep {start}..{}", start + count)?,
                }
                to(f, output)
            }
            Op::ReplaceValue {
                index,
                value,
                output,
            } => {
                write!(f, "replace {index} value {}", Bytes(*value))?;
                to(f, output)
            }
            Op::Record {
                index,
                timestamp,
                key,
                value,
                headers,
                output,
            } => {
                write!(
                    f,
                    "record {index} key {} value {} headers [",
                    Bytes(*key),
                    Bytes(*value)
                )?;
                for (i, header) in headers.clone().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}={}", header.name, Bytes(header.value))?;
                }
                f.write_str("]")?;
                if let Some(timestamp) = timestamp {
                    write!(f, " timestamp {timestamp}")?;
                }
                to(f, output)
            }
            Op::Error { index, message } => write!(f, "error {index}: {message}"),
        }
    }
}

/// A nullable byte string as `Op`'s text shows it.
struct Bytes<'a>(Option<&'a [u8]>);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("null"),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => write!(f, "{text:?}"),
                Err(_) => {
                    f.write_str("0x")?;
                    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
                }
            },
        }
    }
}

/// Reads the ops of an output batch in order, checking each against the input size.
pub struct OutputReader<'a> {
    cursor: Cursor<'a>,
    remaining: u32,
    input_len: u32,
    ended: bool,
}

impl<'a> OutputReader<'a> {
    /// Opens an output batch produced for an input batch of `input_len` records.
    pub fn parse(buf: &'a [u8], input_len: u32) -> Result<Self, DecodeError> {
        let mut cursor = Cursor::at(buf, 0);
        check_version(&mut cursor)?;
        let remaining = cursor.u32("op count")?;
        Ok(OutputReader {
            cursor,
            remaining,
            input_len,
            ended: false,
        })
    }

    fn index(&mut self) -> Result<u32, DecodeError> {
        let at = self.cursor.pos;
        let index = self.cursor.u32("record index")?;
        if index >= self.input_len {
            return Err(DecodeError::new("record index beyond the input batch", at));
        }
        Ok(index)
    }

    fn next_op(&mut self) -> Result<Op<'a>, DecodeError> {
        let at = self.cursor.pos;
        let code = self.cursor.u8("op code")?;
        let output = if code & OP_ROUTED != 0 {
            Some(self.cursor.short_str("output name")?)
        } else {
            None
        };
        match code & !OP_ROUTED {
            OP_KEEP => Ok(Op::Keep {
                start: self.index()?,
                count: 1,
                output,
            }),
            OP_KEEP_RANGE => {
                let start = self.index()?;
                let count_at = self.cursor.pos;
                let count = self.cursor.u32("range length")?;
                if count == 0 || start as u64 + count as u64 > self.input_len as u64 {
                    return Err(DecodeError::new("range beyond the input batch", count_at));
                }
                Ok(Op::Keep {
                    start,
                    count,
                    output,
                })
            }
            OP_REPLACE_VALUE => Ok(Op::ReplaceValue {
                index: self.index()?,
                value: self.cursor.nullable("value")?,
                output,
            }),
            OP_RECORD => {
                let index = self.index()?;
                let timestamp = Some(self.cursor.i64("timestamp")?).filter(|t| *t >= 0);
                let key = self.cursor.nullable("key")?;
                let value = self.cursor.nullable("value")?;
                let count = self.cursor.u16("header count")?;
                let headers = Headers {
                    cursor: self.cursor.clone(),
                    remaining: count,
                };
                for _ in 0..count {
                    self.cursor.short_str("header name")?;
                    self.cursor.nullable("header value")?;
                }
                Ok(Op::Record {
                    index,
                    timestamp,
                    key,
                    value,
                    headers,
                    output,
                })
            }
            OP_ERROR if output.is_none() => Ok(Op::Error {
                index: self.index()?,
                message: self.cursor.long_str("error message")?,
            }),
            _ => Err(DecodeError::new("unknown op code", at)),
        }
    }
}

impl<'a> Iterator for OutputReader<'a> {
    type Item = Result<Op<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        if self.remaining == 0 {
            self.ended = true;
            let trailing = self.cursor.pos != self.cursor.buf.len();
            return trailing
                .then(|| Err(DecodeError::new("bytes after the last op", self.cursor.pos)));
        }
        self.remaining -= 1;
        let op = self.next_op();
        if op.is_err() {
            self.ended = true;
        }
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = InputWriter::new();
        let headers = [
            Header {
                name: "a",
                value: Some(b"1"),
            },
            Header {
                name: "a",
                value: None,
            },
        ];
        writer.push(RecordFields {
            topic: "in",
            partition: 3,
            offset: 42,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"k"),
            value: None,
            headers: headers.iter().copied(),
        });
        writer.push(RecordFields {
            topic: "other",
            partition: 0,
            offset: 7,
            timestamp: None,
            key: None,
            value: Some(b""),
            headers: [].iter().copied(),
        });
        writer.finish().to_vec()
    }

    #[test]
    fn input_round_trips_every_field() {
        let buf = sample();
        let batch = InputBatch::parse(&buf).unwrap();
        assert_eq!(batch.len(), 2);
        let first = batch.get(0).unwrap();
        assert_eq!(
            (first.topic(), first.partition(), first.offset()),
            ("in", 3, 42)
        );
        assert_eq!(first.timestamp(), Some(1_700_000_000_000));
        assert_eq!(first.key(), Some(&b"k"[..]));
        assert_eq!(first.value(), None);
        let headers: Vec<_> = first.headers().collect();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].value, Some(&b"1"[..]));
        assert_eq!(
            headers[1],
            Header {
                name: "a",
                value: None
            }
        );
        let second = batch.get(1).unwrap();
        assert_eq!((second.topic(), second.timestamp()), ("other", None));
        assert_eq!((second.key(), second.value()), (None, Some(&b""[..])));
        assert!(batch.get(2).is_none());
    }

    #[test]
    fn truncated_input_is_rejected_not_read_past_its_end() {
        let buf = sample();
        for cut in 0..buf.len() {
            assert!(InputBatch::parse(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn consecutive_keeps_collapse_into_one_range() {
        let mut out = OutputWriter::new();
        for i in 0..1000 {
            out.keep(i);
        }
        let buf = out.finish();
        let ops: Vec<_> = OutputReader::parse(&buf, 1000).unwrap().collect();
        assert_eq!(ops.len(), 1);
        assert!(matches!(
            ops[0],
            Ok(Op::Keep {
                start: 0,
                count: 1000,
                output: None
            })
        ));
    }

    #[test]
    fn output_ops_keep_their_order_and_fields() {
        let mut out = OutputWriter::new();
        out.keep(0);
        out.keep_to(1, "alerts");
        out.replace_value(2, Some(b"v"), None);
        let extra = [Header {
            name: "h",
            value: Some(b"x"),
        }];
        out.record(
            2,
            &NewRecord {
                key: None,
                value: Some(b"new"),
                headers: &extra,
                timestamp: Some(5),
            },
            Some("b"),
        );
        out.error(3, "bad json");
        let buf = out.finish();
        let ops: Vec<_> = OutputReader::parse(&buf, 4)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let text: Vec<String> = ops.iter().map(Op::to_string).collect();
        assert_eq!(
            text,
            [
                "keep 0",
                "keep 1 to alerts",
                "replace 2 value \"v\"",
                "record 2 key null value \"new\" headers [h=\"x\"] timestamp 5 to b",
                "error 3: bad json",
            ]
        );
    }

    #[test]
    fn ops_show_ranges_and_bytes_that_are_not_text() {
        let mut out = OutputWriter::new();
        out.keep_range(0, 3);
        out.replace_value(1, Some(&[0, 255]), Some("raw"));
        out.replace_value(2, None, None);
        let buf = out.finish();
        let text: Vec<String> = OutputReader::parse(&buf, 3)
            .unwrap()
            .map(|op| op.unwrap().to_string())
            .collect();
        assert_eq!(
            text,
            [
                "keep 0..3",
                "replace 1 value 0x00ff to raw",
                "replace 2 value null"
            ]
        );
    }

    #[test]
    fn rollback_discards_a_records_partial_outputs() {
        let mut out = OutputWriter::new();
        out.keep(0);
        let mark = out.mark();
        out.keep(1);
        out.replace_value(1, None, None);
        out.rollback(mark);
        out.error(1, "nope");
        let buf = out.finish();
        let ops: Vec<_> = OutputReader::parse(&buf, 2)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ops.len(), 2);
        assert!(matches!(
            ops[0],
            Op::Keep {
                start: 0,
                count: 1,
                ..
            }
        ));
        assert!(matches!(ops[1], Op::Error { index: 1, .. }));
    }

    #[test]
    fn bytes_after_the_last_op_are_rejected() {
        let mut out = OutputWriter::new();
        out.keep(0);
        let mut buf = out.finish();
        buf.push(0);
        let ops: Vec<_> = OutputReader::parse(&buf, 1).unwrap().collect();
        assert!(ops[0].is_ok());
        assert!(
            ops[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("after the last op")
        );
    }

    #[test]
    fn output_naming_a_record_outside_the_input_is_rejected() {
        let mut out = OutputWriter::new();
        out.keep_range(5, 10);
        let buf = out.finish();
        let first = OutputReader::parse(&buf, 12).unwrap().next().unwrap();
        assert!(first.unwrap_err().to_string().contains("range beyond"));
        let mut out = OutputWriter::new();
        out.keep(3);
        let buf = out.finish();
        assert!(
            OutputReader::parse(&buf, 3)
                .unwrap()
                .next()
                .unwrap()
                .is_err()
        );
    }
}
