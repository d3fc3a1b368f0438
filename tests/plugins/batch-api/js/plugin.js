// A test plugin on the JavaScript SDK's batch API. `mode = "all"` forwards every
// record with one `out.keepAll()`; `mode = "mixed"` answers each record by index from
// its value's first word: `plain` (or anything else) kept, `upper` upper-cased,
// `route` kept to the `side` output, `split` two new records, `bad` failed, `drop`
// and tombstones dropped. tests/plugins/batch-api/python does the same in Python.
import { exportTransform } from "./sluice.js";

class KeepAll {
  processBatch(batch, out) {
    out.keepAll();
  }
}

// Not the SDK's fatal decoder: a binary value is kept like any other.
const text = new TextDecoder();

class Mixed {
  processBatch(batch, out) {
    for (let i = 0; i < batch.length; i++) {
      const value = batch.value(i);
      if (value === null) continue;
      const word = text.decode(value).split(" ")[0];
      if (word === "drop") continue;
      if (word === "upper") {
        out.setValue(i, batch.valueText(i).toUpperCase());
      } else if (word === "route") {
        out.keep(i, "side");
      } else if (word === "split") {
        out.emit(i, { key: batch.key(i), value: "a", headers: [{ name: "part", value: "1" }] });
        out.emit(i, { key: null, value: "b", headers: batch.headers(i) }, "side");
      } else if (word === "bad") {
        out.fail(i, `record at offset ${batch.offset(i)} is bad`);
      } else {
        out.keep(i);
      }
    }
  }
}

// `mode = "json"` (JavaScript only): values read with `json(i)` and written with
// `setJson`; `{"keep": true, ...}` kept as it was, numbers doubled, arrays replaced by
// their length, other objects marked `seen`. Values that are not JSON fail with "not
// JSON". Then, at the end of every batch, indexes outside it must throw a RangeError
// from every accessor, right after a kept record too.
class Json {
  processBatch(batch, out) {
    for (let i = 0; i < batch.length; i++) {
      let value;
      try {
        value = batch.json(i);
      } catch (error) {
        out.fail(i, error instanceof SyntaxError ? "not JSON" : error);
        continue;
      }
      if (Array.isArray(value)) {
        out.setJson(i, value.length);
      } else if (typeof value === "number") {
        out.setJson(i, value * 2);
      } else if (value.keep === true) {
        out.keep(i);
      } else {
        value.seen = true;
        out.setJson(i, value);
      }
    }
    for (const index of [batch.length, -1, 1.5, "0"]) {
      for (const [name, call] of [
        ["json", () => batch.json(index)],
        ["valueText", () => batch.valueText(index)],
        ["value", () => batch.value(index)],
        ["keep", () => out.keep(index)],
        ["setJson", () => out.setJson(index, {})],
      ]) {
        let thrown = null;
        try {
          call();
        } catch (error) {
          thrown = error;
        }
        if (!(thrown instanceof RangeError)) {
          throw new Error(`${name}(${JSON.stringify(index)}) on a batch of ${batch.length} gave ${thrown} instead of a RangeError`);
        }
      }
    }
  }
}

function BatchApi(config) {
  const mode = config.require("mode");
  if (mode === "json") return new Json();
  return mode === "all" ? new KeepAll() : new Mixed();
}

export const transform = exportTransform(BatchApi);
