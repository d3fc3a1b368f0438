// Adds a derived field to stock records: `band` is "high" when the price is at least
// the `high_from` setting (default 75), else "low". A record that is not a JSON object
// with a numeric `price` is reported as failed.
//
// Written on the batch API: one call per batch, records read and answered by index,
// which spares the interpreter an object and a call per record.

import { exportTransform } from "./sluice.js";

class Enrich {
  constructor(config) {
    this.highFrom = config.number("high_from", 75);
  }

  processBatch(batch, out) {
    for (let i = 0; i < batch.length; i++) {
      let stock;
      try {
        stock = batch.json(i);
      } catch (error) {
        out.fail(i, error);
        continue;
      }
      if (typeof stock !== "object" || stock === null || typeof stock.price !== "number") {
        out.fail(i, `record at offset ${batch.offset(i)} has no numeric price`);
        continue;
      }
      stock.band = stock.price >= this.highFrom ? "high" : "low";
      out.setJson(i, stock);
    }
  }
}

export const transform = exportTransform(Enrich);
