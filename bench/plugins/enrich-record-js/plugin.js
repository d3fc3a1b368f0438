// The `enrich` example (plugins/enrich) on the per-record API, for the language
// benchmark: the same transform, one `process` call per record.
//
// Adds a derived field to stock records: `band` is "high" when the price is at least
// the `high_from` setting (default 75), else "low". A record that is not a JSON object
// with a numeric `price` is reported as failed.

import { exportTransform } from "./sluice.js";

class Enrich {
  constructor(config) {
    this.highFrom = config.number("high_from", 75);
  }

  process(record, out) {
    const stock = record.json();
    if (typeof stock !== "object" || stock === null || typeof stock.price !== "number") {
      throw new Error(`record at offset ${record.offset} has no numeric price`);
    }
    stock.band = stock.price >= this.highFrom ? "high" : "low";
    out.setJson(stock);
  }
}

export const transform = exportTransform(Enrich);
