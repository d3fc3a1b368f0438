//! Sends each stock record to a named output chosen by its ticker; the host maps named
//! outputs to topics (`[sink.outputs]`).
//!
//! Settings: `routes` lists `TICKER=output` pairs separated by commas
//! (`AAPL=tech,MSFT=tech,AMZN=retail`); `other` names the output for tickers not
//! listed (unset: the default output, the sink's `topic`). A record that is not a JSON
//! object with a string `ticker` is reported as failed.

use std::collections::HashMap;

use serde::Deserialize;
use sluice_sdk::{Config, Error, Output, Record, Transform};

#[derive(Deserialize)]
struct Stock<'a> {
    #[serde(borrow)]
    ticker: std::borrow::Cow<'a, str>,
}

struct Route {
    routes: HashMap<String, String>,
    other: Option<String>,
}

impl Transform for Route {
    fn init(config: &Config) -> Result<Self, Error> {
        let mut routes = HashMap::new();
        for pair in config.require("routes")?.split(',').map(str::trim) {
            match pair.split_once('=') {
                Some((ticker, output))
                    if !ticker.trim().is_empty() && !output.trim().is_empty() =>
                {
                    routes.insert(ticker.trim().to_string(), output.trim().to_string());
                }
                _ => {
                    return Err(Error::msg(format!(
                        "plugin setting `routes`: `{pair}` is not TICKER=output (example: AAPL=tech,AMZN=retail)"
                    )));
                }
            }
        }
        Ok(Route {
            routes,
            other: config.get("other").map(str::to_string),
        })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        let value = record
            .value()
            .ok_or_else(|| Error::msg("record has no value; expected a stock record"))?;
        let stock: Stock<'_> = serde_json::from_slice(value)
            .map_err(|e| Error::msg(format!("not a stock record: {e}")))?;
        match self
            .routes
            .get(stock.ticker.as_ref())
            .or(self.other.as_ref())
        {
            Some(output) => out.keep_to(output),
            None => out.keep(),
        }
        Ok(())
    }
}

sluice_sdk::export!(Route);
