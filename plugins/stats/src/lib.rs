//! Running statistics per ticker over stock records, kept in the host's keyed state.
//!
//! Each record `{"event_time": ..., "ticker": "AAPL", "price": 12.5}` comes out with
//! the ticker's statistics so far added: `"count"`, `"min"`, `"max"` and `"mean"` of
//! the price. The statistics survive restarts, rebalances and hot swaps because they
//! live in the host's state, checkpointed with the input offsets. State is per input
//! partition, so the input must be keyed by ticker (as the stock generator does).
//! A record that is not a JSON object with a `ticker` and a numeric `price` is
//! reported as failed.

use serde::Deserialize;
use sluice_sdk::{Config, Error, Output, Record, State, Transform};

#[derive(Deserialize)]
struct Stock<'a> {
    #[serde(borrow)]
    ticker: std::borrow::Cow<'a, str>,
    price: f64,
}

/// What the state holds per ticker: 32 bytes, little-endian.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
}

impl Stats {
    fn first(price: f64) -> Self {
        Stats {
            count: 1,
            min: price,
            max: price,
            sum: price,
        }
    }

    fn add(self, price: f64) -> Self {
        Stats {
            count: self.count + 1,
            min: self.min.min(price),
            max: self.max.max(price),
            sum: self.sum + price,
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let field = |i: usize| -> Result<[u8; 8], Error> {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    Error::msg(format!(
                        "stored statistics are {} bytes, not 32",
                        bytes.len()
                    ))
                })
        };
        Ok(Stats {
            count: u64::from_le_bytes(field(0)?),
            min: f64::from_le_bytes(field(1)?),
            max: f64::from_le_bytes(field(2)?),
            sum: f64::from_le_bytes(field(3)?),
        })
    }

    fn encode(&self) -> [u8; 32] {
        let mut bytes = [0; 32];
        bytes[0..8].copy_from_slice(&self.count.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.min.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.max.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.sum.to_le_bytes());
        bytes
    }
}

struct TickerStats;

impl Transform for TickerStats {
    fn init(_config: &Config) -> Result<Self, Error> {
        Ok(TickerStats)
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        let value = record.value().unwrap_or_default();
        let stock: Stock<'_> = serde_json::from_slice(value)?;
        let state = State::of(record);
        let key = stock.ticker.as_bytes();
        let stats = match state.get(key) {
            Some(bytes) => Stats::decode(&bytes)?.add(stock.price),
            None => Stats::first(stock.price),
        };
        state.set(key, &stats.encode());

        // The input object with the statistics appended before its closing brace.
        let text = std::str::from_utf8(value)?.trim_end();
        let body = text
            .strip_suffix('}')
            .ok_or_else(|| Error::msg("the value is not a JSON object"))?;
        let number = |x: f64| serde_json::to_string(&x);
        let enriched = format!(
            "{body}, \"count\": {}, \"min\": {}, \"max\": {}, \"mean\": {}}}",
            stats.count,
            number(stats.min)?,
            number(stats.max)?,
            number(stats.sum / stats.count as f64)?
        );
        out.set_value(Some(enriched.as_bytes()));
        Ok(())
    }
}

sluice_sdk::export!(TickerStats);
