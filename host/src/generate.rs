//! `sluice generate`: the stock-price record generator of the job Sluice replaces,
//! byte for byte: the same JSON (field order and Python's spacing), the same 17
//! tickers, the same key, Java's murmur2 key partitioning, and by default the same
//! rhythm of one record per ticker followed by a 5 to 10 second pause.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::cli::GenerateArgs;
use crate::shutdown::Shutdown;
use crate::source::kafka::topic_partitions;

pub const TICKERS: [&str; 17] = [
    "AAPL", "ACN", "ADBE", "AMD", "AVGO", "CRM", "CSCO", "IBM", "INTC", "MA", "MSFT", "NVDA",
    "ORCL", "PYPL", "QCOM", "TXN", "V",
];

/// The value the original writes: `json.dumps` of a dict in insertion order.
pub fn record_value(event_time: &str, ticker: &str, price: f64) -> String {
    format!(
        r#"{{"event_time": "{event_time}", "ticker": "{ticker}", "price": {}}}"#,
        python_float(price)
    )
}

/// The key the original writes.
pub fn record_key(ticker: &str) -> String {
    format!(r#"{{"ticker": "{ticker}"}}"#)
}

/// A float as Python's `repr` writes it for these magnitudes: shortest round-trip
/// digits, and always a fractional part (`5.0`, not `5`).
fn python_float(value: f64) -> String {
    let text = format!("{value}");
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

/// `round(random.random() * 100, 2)`.
fn random_price(rng: &mut impl Rng) -> f64 {
    (rng.random::<f64>() * 100.0 * 100.0).round() / 100.0
}

pub fn run(args: &GenerateArgs, shutdown: &Shutdown) -> anyhow::Result<u64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_servers)
        // Java's default partitioner (murmur2 of the key), as kafka-python uses.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .context("creating the Kafka producer")?;
    let partitions = topic_partitions(
        producer.client(),
        &args.topic,
        &args.bootstrap_servers,
        Duration::from_secs(10),
        "generator",
        &|| producer.poll(Duration::ZERO),
        &crate::auth::AuthFailure::default(),
    )?;
    if partitions == 0 {
        bail!(
            "topic `{}` does not exist on {}; create it first",
            args.topic,
            args.bootstrap_servers
        );
    }

    let progress = if std::io::stderr().is_terminal() {
        let bar = match args.count {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {pos}/{len} records {per_sec} [{elapsed_precise}] {wide_bar}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut rng = rand::rng();
    let started = Instant::now();
    let mut sent: u64 = 0;
    let limit = args.count.unwrap_or(u64::MAX);
    'rounds: while sent < limit && !shutdown.requested() {
        for ticker in TICKERS {
            if sent >= limit || shutdown.requested() {
                break 'rounds;
            }
            if let Some(rate) = args.rate.filter(|r| *r > 0) {
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let event_time = chrono::Local::now()
                .format("%Y-%m-%d %H:%M:%S%.6f")
                .to_string();
            let value = record_value(&event_time, ticker, random_price(&mut rng));
            let key = record_key(ticker);
            let mut record = BaseRecord::<str, str>::to(&args.topic)
                .key(&key)
                .payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((error, _)) => bail!("sending to `{}` failed: {error}", args.topic),
                }
            }
            producer.poll(Duration::ZERO);
            sent += 1;
            progress.set_position(sent);
        }
        if args.rate.is_none() {
            producer
                .flush(Duration::from_secs(30))
                .context("flushing records")?;
            let pause = Duration::from_millis(rng.random_range(5_000..=10_000));
            let until = Instant::now() + pause;
            while Instant::now() < until && !shutdown.requested() && sent < limit {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("records still undelivered after 60 s")?;
    progress.finish_and_clear();
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_the_original_generator_byte_for_byte() {
        assert_eq!(
            record_value("2023-08-08 04:21:49.187123", "AAPL", 12.34),
            r#"{"event_time": "2023-08-08 04:21:49.187123", "ticker": "AAPL", "price": 12.34}"#
        );
        assert_eq!(record_key("AAPL"), r#"{"ticker": "AAPL"}"#);
    }

    #[test]
    fn prices_print_like_python_floats() {
        assert_eq!(python_float(5.0), "5.0");
        assert_eq!(python_float(0.1), "0.1");
        assert_eq!(python_float(99.99), "99.99");
        assert_eq!(python_float(0.0), "0.0");
        assert_eq!(python_float(100.0), "100.0");
    }

    #[test]
    fn prices_have_at_most_two_decimals_and_stay_in_range() {
        let mut rng = rand::rng();
        for _ in 0..10_000 {
            let p = random_price(&mut rng);
            assert!((0.0..=100.0).contains(&p));
            let text = python_float(p);
            let decimals = text.split('.').nth(1).unwrap().len();
            assert!(decimals <= 2, "{text}");
        }
    }
}
