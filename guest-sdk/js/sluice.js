// Sluice SDK for JavaScript: write a record transform as a class, export it with
// `exportTransform`, and build it with `sluice plugin build`.
//
// The host calls the plugin once per batch with the batch encoded as one byte buffer
// (wit/README.md); this module reads records from it lazily (key, value and headers
// are views into the batch, nothing is copied until you copy it) and writes the
// output batch. Outputs refer to input records by index, so forwarding a record with
// `out.keep()` copies nothing.
//
//   import { exportTransform } from "./sluice.js";
//
//   class DropTombstones {
//     constructor(config) {}
//     process(record, out) {
//       if (record.value !== null) out.keep();
//     }
//   }
//
//   export const transform = exportTransform(DropTombstones);
//
// A plugin that answers a whole batch at once defines `processBatch(batch, out)`
// instead: it reads records by index and answers by index, so forwarding needs no
// object per record (`out.keepAll()` forwards the batch in one call):
//
//   class DropTombstones {
//     constructor(config) {}
//     processBatch(batch, out) {
//       for (let i = 0; i < batch.length; i++) {
//         if (batch.value(i) !== null) out.keep(i);
//       }
//     }
//   }

import { write as writeLog } from "sluice:plugin/log@0.1.0";
import { get as getState, set as setState, delete as deleteState } from "sluice:plugin/state@0.1.0";

/** The SDK's name and version, recorded in every component `sluice plugin build` makes. */
export const SDK_NAME = "sluice-sdk-js";
export const SDK_VERSION = "0.1.0";

const VERSION = 1;
const OP_KEEP = 1;
const OP_KEEP_RANGE = 2;
const OP_REPLACE_VALUE = 3;
const OP_RECORD = 4;
const OP_ERROR = 5;
const OP_ROUTED = 0x80;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Bytes of a key, value or header value: a Uint8Array, a string (UTF-8) or null. */
function toBytes(value) {
  if (value === null || value === undefined) return null;
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return encoder.encode(value);
  // Views of the input batch may not pass `instanceof` (the bindings make the batch's
  // array): any byte view or buffer is taken as bytes.
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError("a key, value or header value must be a Uint8Array, a string or null");
}

/** The plugin's settings, from `[plugin.config]` of the host configuration. */
export class Config {
  constructor(pairs) {
    this.pairs = pairs;
  }

  /** The value of `key`, or undefined. */
  get(key) {
    const pair = this.pairs.find(([k]) => k === key);
    return pair === undefined ? undefined : pair[1];
  }

  /** The value of `key`, or an error naming the missing key. */
  require(key) {
    const value = this.get(key);
    if (value === undefined) throw new Error(`missing plugin setting \`${key}\``);
    return value;
  }

  /** The value of `key` as a number, `fallback` when unset, an error when not a number. */
  number(key, fallback) {
    const value = this.get(key);
    if (value === undefined) return fallback;
    const number = Number(value);
    if (value.trim() === "" || Number.isNaN(number)) {
      throw new Error(`plugin setting \`${key}\` = "${value}" is not a number`);
    }
    return number;
  }

  /** All settings as [key, value] pairs, in the order the host gave them. */
  entries() {
    return this.pairs.slice();
  }
}

/** One input record, decoded lazily from its batch: each field is read when asked for. */
export class Record {
  constructor(batch, index, position) {
    this.batch = batch;
    this.index = index;
    this.position = position;
  }

  /** The topic the record was read from. */
  get topic() {
    return this.batch.topics[this.batch.view.getUint16(this.position, true)];
  }

  /** The partition the record was read from. */
  get partition() {
    return this.batch.view.getInt32(this.position + 2, true);
  }

  /** The record's offset in its partition. */
  get offset() {
    return this.batch.offsetAt(this.position);
  }

  /** Milliseconds since the Unix epoch, or null. */
  get timestamp() {
    return this.batch.timestampAt(this.position);
  }

  /** The key (a Uint8Array view into the batch), or null. */
  get key() {
    return this.batch.bytesAt(this.position + KEY_AT);
  }

  /** The value (a Uint8Array view into the batch), or null. */
  get value() {
    return this.batch.bytesAt(this.batch.after(this.position + KEY_AT));
  }

  /** The headers in order, duplicates included: [{ name, value }], value a Uint8Array or null. */
  get headers() {
    return this.batch.headersAt(this.position);
  }

  /** The value of the first header named `name` (null for a null value), or undefined. */
  header(name) {
    const found = this.headers.find((h) => h.name === name);
    return found === undefined ? undefined : found.value;
  }

  /** The key as UTF-8 text, or null. */
  keyText() {
    const key = this.key;
    return key === null ? null : decoder.decode(key);
  }

  /** The value as UTF-8 text, or null. */
  valueText() {
    const value = this.value;
    return value === null ? null : decoder.decode(value);
  }

  /** The value parsed as JSON; an error (failing this record) when null or not JSON. */
  json() {
    return this.batch.jsonAt(this.position);
  }
}

// A record's fields from its position: u16 topic, i32 partition, i64 offset, i64
// timestamp, then the key, the value and the headers.
const KEY_AT = 22;

class InputBatch {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (this.view.getUint16(0, true) !== VERSION) {
      throw new Error(`input batch version ${this.view.getUint16(0, true)} is not supported by ${SDK_NAME} ${SDK_VERSION}`);
    }
    this.length = this.view.getUint32(4, true);
    const topicsAt = this.view.getUint32(8, true);
    this.indexAt = this.view.getUint32(12, true);
    this.topics = [];
    const topicCount = this.view.getUint16(topicsAt, true);
    let at = topicsAt + 2;
    for (let i = 0; i < topicCount; i++) {
      const length = this.view.getUint16(at, true);
      this.topics.push(decoder.decode(bytes.subarray(at + 2, at + 2 + length)));
      at += 2 + length;
    }
  }

  /** The byte position of record `index`. */
  positionOf(index) {
    return this.view.getUint32(this.indexAt + index * 4, true);
  }

  record(index) {
    return new Record(this, index, this.view.getUint32(this.indexAt + index * 4, true));
  }

  offsetAt(position) {
    // Two halves instead of a BigInt: no allocation, exact below 2^53.
    const low = this.view.getUint32(position + 6, true);
    return this.view.getInt32(position + 10, true) * 0x100000000 + low;
  }

  timestampAt(position) {
    const timestamp = this.view.getInt32(position + 18, true) * 0x100000000 + this.view.getUint32(position + 14, true);
    return timestamp >= 0 ? timestamp : null;
  }

  /** The position after the nullable bytes at `at`. */
  after(at) {
    const length = this.view.getInt32(at, true);
    return length < 0 ? at + 4 : at + 4 + length;
  }

  /** The nullable bytes at `at`: a view into the batch, or null. */
  bytesAt(at) {
    const length = this.view.getInt32(at, true);
    return length < 0 ? null : this.bytes.subarray(at + 4, at + 4 + length);
  }

  headersAt(position) {
    const view = this.view;
    let at = this.after(this.after(position + KEY_AT));
    const count = view.getUint16(at, true);
    at += 2;
    const headers = [];
    for (let i = 0; i < count; i++) {
      const nameLength = view.getUint16(at, true);
      const name = decoder.decode(this.bytes.subarray(at + 2, at + 2 + nameLength));
      at += 2 + nameLength;
      headers.push({ name, value: this.bytesAt(at) });
      at = this.after(at);
    }
    return headers;
  }

  jsonAt(position) {
    const keyLength = this.view.getInt32(position + KEY_AT, true);
    const at = position + KEY_AT + 4 + (keyLength < 0 ? 0 : keyLength);
    const length = this.view.getInt32(at, true);
    if (length < 0) {
      throw new Error(`record at offset ${this.offsetAt(position)} has no value; expected JSON`);
    }
    return JSON.parse(decoder.decode(this.bytes.subarray(at + 4, at + 4 + length)));
  }
}

class OutputWriter {
  constructor() {
    this.bytes = new Uint8Array(256);
    this.view = new DataView(this.bytes.buffer);
    this.length = 8;
    this.ops = 0;
    // An unrouted keep range not yet written; count 0: none.
    this.pendingStart = 0;
    this.pendingCount = 0;
  }

  reserve(extra) {
    if (this.length + extra <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + extra) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  u8(value) {
    this.reserve(1);
    this.bytes[this.length++] = value;
  }

  u16(value) {
    this.reserve(2);
    this.view.setUint16(this.length, value, true);
    this.length += 2;
  }

  u32(value) {
    this.reserve(4);
    this.view.setUint32(this.length, value, true);
    this.length += 4;
  }

  i64(value) {
    this.reserve(8);
    // Two halves instead of a BigInt; timestamps are integers well below 2^53.
    this.view.setUint32(this.length, value >>> 0, true);
    this.view.setInt32(this.length + 4, Math.floor(value / 0x100000000), true);
    this.length += 8;
  }

  raw(bytes) {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }

  nullable(value) {
    if (typeof value === "string") {
      // Encoded straight into the output: at most three bytes per UTF-16 unit.
      this.reserve(4 + value.length * 3);
      const { written } = encoder.encodeInto(value, this.bytes.subarray(this.length + 4));
      this.view.setUint32(this.length, written, true);
      this.length += 4 + written;
      return;
    }
    const bytes = toBytes(value);
    if (bytes === null) {
      this.reserve(4);
      this.view.setInt32(this.length, -1, true);
      this.length += 4;
    } else {
      this.u32(bytes.length);
      this.raw(bytes);
    }
  }

  shortText(text) {
    const bytes = encoder.encode(text);
    if (bytes.length > 0xffff) throw new Error("an output or header name is longer than 65535 bytes");
    this.u16(bytes.length);
    this.raw(bytes);
  }

  op(code, output) {
    this.flush();
    this.ops += 1;
    if (output === undefined || output === null) {
      this.u8(code);
    } else {
      this.u8(code | OP_ROUTED);
      this.shortText(output);
    }
  }

  flush() {
    if (this.pendingCount === 0) return;
    const start = this.pendingStart;
    const count = this.pendingCount;
    this.pendingCount = 0;
    this.ops += 1;
    if (count === 1) {
      this.u8(OP_KEEP);
      this.u32(start);
    } else {
      this.u8(OP_KEEP_RANGE);
      this.u32(start);
      this.u32(count);
    }
  }

  keep(index, output) {
    if (output !== undefined && output !== null) {
      this.op(OP_KEEP, output);
      this.u32(index);
    } else if (this.pendingCount > 0 && this.pendingStart + this.pendingCount === index) {
      // The common case, inline: the record follows the pending range.
      this.pendingCount += 1;
    } else {
      this.keepRange(index, 1);
    }
  }

  /** Records `start` to `start + count - 1`, merged into the pending range when they follow it. */
  keepRange(start, count) {
    if (this.pendingCount > 0 && this.pendingStart + this.pendingCount === start) {
      this.pendingCount += count;
    } else {
      this.flush();
      this.pendingStart = start;
      this.pendingCount = count;
    }
  }

  replaceValue(index, value, output) {
    this.op(OP_REPLACE_VALUE, output);
    this.u32(index);
    this.nullable(value);
  }

  /** `replaceValue` to the default output with a string value, in one step (the common case). */
  replaceValueText(index, text) {
    if (this.pendingCount > 0) this.flush();
    this.ops += 1;
    // Op, index, length, then at most three bytes per UTF-16 unit.
    const at = this.length;
    if (at + 9 + text.length * 3 > this.bytes.length) this.reserve(9 + text.length * 3);
    this.bytes[at] = OP_REPLACE_VALUE;
    this.view.setUint32(at + 1, index, true);
    const { written } = encoder.encodeInto(text, this.bytes.subarray(at + 9));
    this.view.setUint32(at + 5, written, true);
    this.length = at + 9 + written;
  }

  record(index, record, output) {
    this.op(OP_RECORD, output);
    this.u32(index);
    this.i64(record.timestamp ?? -1);
    this.nullable(record.key);
    this.nullable(record.value);
    const headers = record.headers ?? [];
    this.u16(headers.length);
    for (const header of headers) {
      this.shortText(header.name);
      this.nullable(header.value);
    }
  }

  error(index, message) {
    this.op(OP_ERROR);
    this.u32(index);
    const bytes = encoder.encode(message);
    this.u32(bytes.length);
    this.raw(bytes);
  }

  rollback(length, ops, pendingStart, pendingCount) {
    this.length = length;
    this.ops = ops;
    this.pendingStart = pendingStart;
    this.pendingCount = pendingCount;
  }

  finish() {
    this.flush();
    this.view.setUint16(0, VERSION, true);
    this.view.setUint16(2, 0, true);
    this.view.setUint32(4, this.ops, true);
    return this.bytes.subarray(0, this.length);
  }
}

/** Where `process` puts the outputs of the record it is handling. */
export class Output {
  constructor(writer, record) {
    this.writer = writer;
    this.record = record;
  }

  /** Forwards the record unchanged, to the default output or the named one. */
  keep(output) {
    this.writer.keep(this.record.index, output);
  }

  /** Forwards the record unchanged to the named output. */
  keepTo(output) {
    this.writer.keep(this.record.index, output);
  }

  /** Forwards the record with a new value (Uint8Array, string or null); key, headers and timestamp kept. */
  setValue(value, output) {
    this.writer.replaceValue(this.record.index, value, output);
  }

  /** Forwards the record with a new value to the named output. */
  setValueTo(value, output) {
    this.writer.replaceValue(this.record.index, value, output);
  }

  /** Forwards the record with `value` serialized as JSON. */
  setJson(value, output) {
    const text = JSON.stringify(value);
    if (output === undefined || output === null) {
      this.writer.replaceValueText(this.record.index, text);
    } else {
      this.writer.replaceValue(this.record.index, text, output);
    }
  }

  /** Emits a new record { key, value, headers: [{ name, value }], timestamp }; without a timestamp it takes the input's. */
  emit(record, output) {
    const stamped = { ...record, timestamp: record.timestamp ?? this.record.timestamp };
    this.writer.record(this.record.index, stamped, output);
  }

  /** Emits a new record to the named output. */
  emitTo(record, output) {
    this.emit(record, output);
  }
}

/**
 * A whole input batch, for `processBatch`: records are read by index, lazily, without
 * an object per record unless asked for one (`record(i)` or iterating).
 *
 *   processBatch(batch, out) {
 *     for (let i = 0; i < batch.length; i++) {
 *       if (batch.value(i) !== null) out.keep(i);
 *     }
 *   }
 */
export class Batch {
  constructor(input) {
    this.input = input;
    /** The number of records. */
    this.length = input.length;
  }

  /** Record `index` as a `Record` (the object the per-record API passes). */
  record(index) {
    this.check(index);
    return this.input.record(index);
  }

  /** The records in batch order, one `Record` each. */
  *[Symbol.iterator]() {
    for (let i = 0; i < this.length; i++) yield this.input.record(i);
  }

  /** The key of record `index` (a Uint8Array view into the batch), or null. */
  key(index) {
    return this.input.bytesAt(this.at(index) + KEY_AT);
  }

  /** The value of record `index` (a Uint8Array view into the batch), or null. */
  value(index) {
    const at = this.valueAt(index);
    const length = this.input.view.getInt32(at, true);
    return length < 0 ? null : this.input.bytes.subarray(at + 4, at + 4 + length);
  }

  /** The key of record `index` as UTF-8 text, or null. */
  keyText(index) {
    const key = this.key(index);
    return key === null ? null : decoder.decode(key);
  }

  /** The value of record `index` as UTF-8 text, or null. */
  valueText(index) {
    const at = this.valueAt(index);
    const length = this.input.view.getInt32(at, true);
    return length < 0 ? null : decoder.decode(this.input.bytes.subarray(at + 4, at + 4 + length));
  }

  /** The value of record `index` parsed as JSON; throws when null or not JSON. */
  json(index) {
    // `valueAt`, inline: this is the accessor JSON plugins call for every record.
    if (!((index >>> 0) === index && index < this.length)) this.check(index);
    const view = this.input.view;
    const position = view.getUint32(this.input.indexAt + index * 4, true);
    const keyLength = view.getInt32(position + KEY_AT, true);
    const at = position + KEY_AT + 4 + (keyLength < 0 ? 0 : keyLength);
    const length = view.getInt32(at, true);
    if (length < 0) {
      throw new Error(`record at offset ${this.input.offsetAt(position)} has no value; expected JSON`);
    }
    return JSON.parse(decoder.decode(this.input.bytes.subarray(at + 4, at + 4 + length)));
  }

  /**
   * Where the value of record `index` starts (its length, then its bytes). The value
   * accessors are what plugins call per record, and an interpreted call costs about
   * as much as parsing a small JSON value: they read the batch with as few calls as
   * they can.
   */
  valueAt(index) {
    if (!((index >>> 0) === index && index < this.length)) this.check(index);
    const view = this.input.view;
    const position = view.getUint32(this.input.indexAt + index * 4, true);
    const keyLength = view.getInt32(position + KEY_AT, true);
    return position + KEY_AT + 4 + (keyLength < 0 ? 0 : keyLength);
  }

  /** The headers of record `index`: [{ name, value }]. */
  headers(index) {
    return this.input.headersAt(this.at(index));
  }

  /** The topic of record `index`. */
  topic(index) {
    return this.input.topics[this.input.view.getUint16(this.at(index), true)];
  }

  /** The partition of record `index`. */
  partition(index) {
    return this.input.view.getInt32(this.at(index) + 2, true);
  }

  /** The offset of record `index`. */
  offset(index) {
    return this.input.offsetAt(this.at(index));
  }

  /** The timestamp of record `index` in milliseconds, or null. */
  timestamp(index) {
    return this.input.timestampAt(this.at(index));
  }

  at(index) {
    this.check(index);
    return this.input.positionOf(index);
  }

  check(index) {
    if (!(index >= 0 && index < this.length && Number.isInteger(index))) {
      throw new RangeError(`record index ${index} is outside the batch of ${this.length} records`);
    }
  }
}

/**
 * Where `processBatch` puts the outputs of the whole batch. Every output names the
 * input record it comes from by index; outputs are written in the order of the calls,
 * so a plugin that answers its records in input order keeps each partition's order.
 * Consecutive `keep`s of consecutive records become one range: forwarding most of a
 * batch costs a compare and an add per record, and `keepAll()` costs one call.
 */
export class BatchOutput {
  constructor(writer, batch) {
    this.writer = writer;
    this.batch = batch;
  }

  /** Forwards every record of the batch unchanged, in order, to the default output. */
  keepAll() {
    if (this.batch.length > 0) this.writer.keepRange(0, this.batch.length);
  }

  /** Forwards records `start` to `start + count - 1` unchanged, in order, to the default output. */
  keepRange(start, count) {
    if (count === 0) return;
    this.batch.check(start);
    this.batch.check(start + count - 1);
    this.writer.keepRange(start, count);
  }

  /** Forwards record `index` unchanged, to the default output or the named one. */
  keep(index, output) {
    const writer = this.writer;
    // Inline, the common case: the record follows the pending range of kept records.
    if (
      output === undefined &&
      writer.pendingCount > 0 &&
      writer.pendingStart + writer.pendingCount === index &&
      index < this.batch.length
    ) {
      writer.pendingCount += 1;
      return;
    }
    this.batch.check(index);
    writer.keep(index, output);
  }

  /** Forwards record `index` with a new value (Uint8Array, string or null); key, headers and timestamp kept. */
  setValue(index, value, output) {
    this.batch.check(index);
    this.writer.replaceValue(index, value, output);
  }

  /** Forwards record `index` with `value` serialized as JSON. */
  setJson(index, value, output) {
    if (!((index >>> 0) === index && index < this.batch.length)) this.batch.check(index);
    const text = JSON.stringify(value);
    if (output === undefined || output === null) {
      this.writer.replaceValueText(index, text);
    } else {
      this.writer.replaceValue(index, text, output);
    }
  }

  /** Emits a new record { key, value, headers, timestamp } derived from record `index`; without a timestamp it takes the input's. */
  emit(index, record, output) {
    const stamped = { ...record, timestamp: record.timestamp ?? this.batch.timestamp(index) };
    this.writer.record(index, stamped, output);
  }

  /** Reports that record `index` could not be transformed: it goes to the dead-letter topic, or stops the pipeline. */
  fail(index, message) {
    this.batch.check(index);
    this.writer.error(index, messageOf(message));
  }
}

/** Lines in the host's log, tagged with the plugin's name. */
export const log = {
  debug: (message) => writeLog("debug", String(message)),
  info: (message) => writeLog("info", String(message)),
  warn: (message) => writeLog("warn", String(message)),
  error: (message) => writeLog("error", String(message)),
};

function bytes(value, what) {
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return encoder.encode(value);
  throw new TypeError(`a state ${what} is a string or a Uint8Array, not ${typeof value}`);
}

/**
 * The keyed state of the partition `record` came from: byte values under byte keys
 * (strings are stored as UTF-8), kept by the host. The host checkpoints it with the
 * partition's offsets, restores it after a restart or a rebalance and keeps it across
 * hot swaps, so a plugin keeps nothing of value in its own memory. Records that share
 * state must share a partition: key the input by what the state is keyed by.
 *
 *   const seen = state(record);
 *   const count = Number(seen.getText("count") ?? "0") + 1;
 *   seen.set("count", String(count));
 */
export function state(record) {
  const index = record.index;
  return {
    /** The value under `key` as bytes, or `undefined`. */
    get: (key) => getState(index, bytes(key, "key")) ?? undefined,
    /** The value under `key` as text, or `undefined`. */
    getText(key) {
      const value = this.get(key);
      return value === undefined ? undefined : decoder.decode(value);
    },
    /** The value under `key` parsed as JSON, or `undefined`. */
    getJson(key) {
      const text = this.getText(key);
      return text === undefined ? undefined : JSON.parse(text);
    },
    /** Stores `value` (bytes or text) under `key`. */
    set: (key, value) => setState(index, bytes(key, "key"), bytes(value, "value")),
    /** Stores `value` as JSON under `key`. */
    setJson: (key, value) => setState(index, bytes(key, "key"), encoder.encode(JSON.stringify(value))),
    /** Removes `key`; nothing happens when it is absent. */
    delete: (key) => deleteState(index, bytes(key, "key")),
  };
}

function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Makes the `transform` export of a plugin from a class whose constructor takes a
 * `Config` (throw to reject the settings) and that has one of:
 *
 * - `process(record, out)`, called once per record: it calls `out` zero, one or many
 *   times, or throws to report that record alone as failed (its outputs and state
 *   writes, if any, are discarded);
 * - `processBatch(batch, out)`, called once per batch with a `Batch` and a
 *   `BatchOutput`: it answers every record by index (`out.keep(i)`, `out.keepAll()`,
 *   `out.fail(i, message)`, ...). Throwing fails the whole batch; the host then runs
 *   it again one record at a time, so that only the records that fail alone are
 *   reported. A plugin with both is called through `processBatch`.
 */
export function exportTransform(Plugin) {
  let plugin = null;
  let batchApi = false;
  return {
    init(pairs) {
      try {
        plugin = new Plugin(new Config(pairs));
      } catch (error) {
        throw messageOf(error);
      }
      batchApi = typeof plugin.processBatch === "function";
      if (!batchApi && typeof plugin.process !== "function") {
        throw `the plugin class ${Plugin.name} has neither process(record, out) nor processBatch(batch, out)`;
      }
    },

    process(input) {
      if (plugin === null) throw "process was called before init";
      let batch;
      try {
        batch = new InputBatch(input);
      } catch (error) {
        throw messageOf(error);
      }
      const writer = new OutputWriter();
      if (batchApi) {
        const view = new Batch(batch);
        try {
          plugin.processBatch(view, new BatchOutput(writer, view));
        } catch (error) {
          throw messageOf(error);
        }
        return writer.finish();
      }
      // One Output for the batch, pointed at each record in turn.
      const out = new Output(writer, null);
      for (let i = 0; i < batch.length; i++) {
        const record = batch.record(i);
        out.record = record;
        // Where to roll back to if the record fails: plain numbers, no allocation.
        const length = writer.length;
        const ops = writer.ops;
        const pendingStart = writer.pendingStart;
        const pendingCount = writer.pendingCount;
        try {
          plugin.process(record, out);
        } catch (error) {
          writer.rollback(length, ops, pendingStart, pendingCount);
          writer.error(i, messageOf(error));
        }
      }
      return writer.finish();
    },
  };
}
