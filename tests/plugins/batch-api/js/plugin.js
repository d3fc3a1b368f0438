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

function BatchApi(config) {
  return config.require("mode") === "all" ? new KeepAll() : new Mixed();
}

export const transform = exportTransform(BatchApi);
