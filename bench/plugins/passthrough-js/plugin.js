// The pass-through in JavaScript, for the language benchmark: every record kept.
import { exportTransform } from "./sluice.js";

class Passthrough {
  constructor(config) {}

  process(record, out) {
    out.keep();
  }
}

export const transform = exportTransform(Passthrough);
