// The pass-through in JavaScript, for the language benchmark: every record kept. The
// `mode` setting picks the API: `record` (the default) calls `out.keep()` per record,
// `index` answers the batch with `out.keep(i)` per record, `all` with one
// `out.keepAll()`.
import { exportTransform } from "./sluice.js";

class PerRecord {
  process(record, out) {
    out.keep();
  }
}

class ByIndex {
  processBatch(batch, out) {
    for (let i = 0; i < batch.length; i++) out.keep(i);
  }
}

class KeepAll {
  processBatch(batch, out) {
    out.keepAll();
  }
}

const MODES = { record: PerRecord, index: ByIndex, all: KeepAll };

function Passthrough(config) {
  const mode = config.get("mode") ?? "record";
  const Mode = MODES[mode];
  if (Mode === undefined) throw new Error(`mode = "${mode}" is not one of record, index, all`);
  return new Mode();
}

export const transform = exportTransform(Passthrough);
