// Adds how much a stock's price moved since that ticker's previous record: `change` is
// the price minus the last price seen for the same ticker in the same partition
// (rounded to cents), left out on a ticker's first record. The last price of each
// ticker is keyed state in the host, so it survives restarts, rebalances and hot
// swaps. A record that is not a JSON object with a string `ticker` and a numeric
// `price` is reported as failed.

import { exportTransform, state } from "./sluice.js";

class Change {
  constructor(config) {}

  process(record, out) {
    const stock = record.json();
    if (
      typeof stock !== "object" ||
      stock === null ||
      typeof stock.ticker !== "string" ||
      typeof stock.price !== "number"
    ) {
      throw new Error(`record at offset ${record.offset} has no ticker and numeric price`);
    }
    const last = state(record);
    const previous = last.getJson(stock.ticker);
    if (previous !== undefined) {
      stock.change = Math.round((stock.price - previous) * 100) / 100;
    }
    last.setJson(stock.ticker, stock.price);
    out.setJson(stock);
  }
}

export const transform = exportTransform(Change);
