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
    return Number(this.batch.view.getBigInt64(this.position + 6, true));
  }

  /** Milliseconds since the Unix epoch, or null. */
  get timestamp() {
    const timestamp = Number(this.batch.view.getBigInt64(this.position + 14, true));
    return timestamp >= 0 ? timestamp : null;
  }

  /** The key (a Uint8Array view into the batch), or null. */
  get key() {
    return this.batch.nullable(this.position + 22)[0];
  }

  /** The value (a Uint8Array view into the batch), or null. */
  get value() {
    return this.batch.nullable(this.batch.skip(this.position + 22))[0];
  }

  get headersAt() {
    return this.batch.skip(this.batch.skip(this.position + 22));
  }

  /** The headers in order, duplicates included: [{ name, value }], value a Uint8Array or null. */
  get headers() {
    const view = this.batch.view;
    let at = this.headersAt;
    const count = view.getUint16(at, true);
    at += 2;
    const headers = [];
    for (let i = 0; i < count; i++) {
      const nameLength = view.getUint16(at, true);
      const name = decoder.decode(this.batch.bytes.subarray(at + 2, at + 2 + nameLength));
      let value;
      [value, at] = this.batch.nullable(at + 2 + nameLength);
      headers.push({ name, value });
    }
    return headers;
  }

  /** The value of the first header named `name` (null for a null value), or undefined. */
  header(name) {
    const found = this.headers.find((h) => h.name === name);
    return found === undefined ? undefined : found.value;
  }

  /** The key as UTF-8 text, or null. */
  keyText() {
    return this.key === null ? null : decoder.decode(this.key);
  }

  /** The value as UTF-8 text, or null. */
  valueText() {
    return this.value === null ? null : decoder.decode(this.value);
  }

  /** The value parsed as JSON; an error (failing this record) when null or not JSON. */
  json() {
    if (this.value === null) {
      throw new Error(`record at offset ${this.offset} has no value; expected JSON`);
    }
    return JSON.parse(this.valueText());
  }
}

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

  record(index) {
    return new Record(this, index, this.view.getUint32(this.indexAt + index * 4, true));
  }

  /** The position after the nullable bytes at `at`. */
  skip(at) {
    const length = this.view.getInt32(at, true);
    return length < 0 ? at + 4 : at + 4 + length;
  }

  nullable(at) {
    const length = this.view.getInt32(at, true);
    if (length < 0) return [null, at + 4];
    return [this.bytes.subarray(at + 4, at + 4 + length), at + 4 + length];
  }
}

class OutputWriter {
  constructor() {
    this.bytes = new Uint8Array(256);
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
  }

  u8(value) {
    this.reserve(1);
    this.bytes[this.length++] = value;
  }

  u16(value) {
    this.reserve(2);
    new DataView(this.bytes.buffer).setUint16(this.length, value, true);
    this.length += 2;
  }

  u32(value) {
    this.reserve(4);
    new DataView(this.bytes.buffer).setUint32(this.length, value, true);
    this.length += 4;
  }

  i64(value) {
    this.reserve(8);
    new DataView(this.bytes.buffer).setBigInt64(this.length, BigInt(value), true);
    this.length += 8;
  }

  raw(bytes) {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }

  nullable(value) {
    const bytes = toBytes(value);
    if (bytes === null) {
      this.reserve(4);
      new DataView(this.bytes.buffer).setInt32(this.length, -1, true);
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
      this.pendingCount += 1;
    } else {
      this.flush();
      this.pendingStart = index;
      this.pendingCount = 1;
    }
  }

  replaceValue(index, value, output) {
    this.op(OP_REPLACE_VALUE, output);
    this.u32(index);
    this.nullable(value);
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
    const view = new DataView(this.bytes.buffer);
    view.setUint16(0, VERSION, true);
    view.setUint16(2, 0, true);
    view.setUint32(4, this.ops, true);
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
    this.writer.replaceValue(this.record.index, JSON.stringify(value), output);
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
 * `Config` (throw to reject the settings) and whose `process(record, out)` calls `out`
 * zero, one or many times, or throws to report that record alone as failed (its
 * outputs and state writes, if any, are discarded).
 */
export function exportTransform(Plugin) {
  let plugin = null;
  return {
    init(pairs) {
      try {
        plugin = new Plugin(new Config(pairs));
      } catch (error) {
        throw messageOf(error);
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
