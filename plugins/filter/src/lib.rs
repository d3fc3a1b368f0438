//! Forwards stock records whose `price` is at least `min_price` (setting, default 50)
//! and drops the others. A record that is not a JSON object with a numeric `price`
//! is reported as failed.

use serde::Deserialize;
use sluice_sdk::{Config, Error, Output, Record, Transform};

#[derive(Deserialize)]
struct Stock {
    price: f64,
}

struct Filter {
    min_price: f64,
}

impl Transform for Filter {
    fn init(config: &Config) -> Result<Self, Error> {
        Ok(Filter {
            min_price: config.parse("min_price")?.unwrap_or(50.0),
        })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        let stock: Stock = serde_json::from_slice(record.value().unwrap_or_default())?;
        if stock.price >= self.min_price {
            out.keep();
        }
        Ok(())
    }
}

sluice_sdk::export!(Filter);
