//! `sluice generate`: the stock-price record generator of the job Sluice replaces,
//! byte for byte: the same JSON (field order and Python's spacing), the same 17
//! tickers, the same key, Java's murmur2 key partitioning, and by default the same
//! rhythm of one record per ticker followed by a 5 to 10 second pause.
//!
//! With a pipeline file it writes to that pipeline's source topic, with the source's
//! security settings, so it reaches an MSK cluster with IAM as the pipeline does.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::auth::{AuthFailure, ClientAuth};
use crate::config::ConfigSource;
use crate::config::security::Security;
use crate::kafka::{KafkaContext, Role, topic_partitions};
use crate::shutdown::Shutdown;

/// `sluice generate`: its arguments.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Kafka bootstrap servers, comma-separated [default: the pipeline file's source,
    /// else 127.0.0.1:9092].
    #[arg(long, env = "BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,

    /// Topic to write to [default: the pipeline file's source topic, else stocks-in].
    #[arg(long, env = "TOPIC_NAME")]
    topic: Option<String>,

    /// Write to the source of this sluice.toml pipeline, with its security settings
    /// (TLS, SASL, MSK IAM).
    #[arg(long, conflicts_with = "properties")]
    config: Option<PathBuf>,

    /// The same, from a Managed Flink application_properties.json.
    #[arg(long)]
    properties: Option<PathBuf>,

    /// Stop after this many records (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,

    /// Records per second, steadily (0: as fast as possible). Without it, the original
    /// rhythm: one record per ticker, then a pause of 5 to 10 seconds.
    #[arg(long)]
    rate: Option<u64>,
}

const DEFAULT_SERVERS: &str = "127.0.0.1:9092";
const DEFAULT_TOPIC: &str = "stocks-in";

/// Where the generator writes, and how it authenticates.
pub struct Target {
    bootstrap_servers: String,
    pub topic: String,
    security: Security,
}

impl Target {
    /// The command line's servers and topic, else the pipeline file's source, else the
    /// original job's defaults; security from the pipeline file, else none.
    pub fn resolve(args: &GenerateArgs) -> anyhow::Result<Target> {
        let source = match (&args.config, &args.properties) {
            (Some(path), _) => Some(ConfigSource::Toml(path.clone())),
            (None, Some(path)) => Some(ConfigSource::Properties(path.clone())),
            (None, None) => None,
        };
        let pipeline = source
            .map(|source| {
                source
                    .load(None)
                    .map_err(|invalid| anyhow::anyhow!("{invalid}"))
            })
            .transpose()?;
        Ok(Target {
            bootstrap_servers: args
                .bootstrap_servers
                .clone()
                .or_else(|| {
                    pipeline
                        .as_ref()
                        .map(|c| c.source.bootstrap_servers.clone())
                })
                .unwrap_or_else(|| DEFAULT_SERVERS.to_string()),
            topic: args
                .topic
                .clone()
                .or_else(|| pipeline.as_ref().map(|c| c.source.topic.clone()))
                .unwrap_or_else(|| DEFAULT_TOPIC.to_string()),
            security: pipeline.map(|c| c.source.security).unwrap_or_default(),
        })
    }
}

/// The generator's callbacks: undelivered records noticed.
struct GeneratorRole {
    /// The first record the broker did not take, and how many it did not.
    undelivered: std::sync::Mutex<(u64, Option<String>)>,
}

impl Role for GeneratorRole {}

impl ProducerContext for KafkaContext<GeneratorRole> {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            let mut undelivered = self.role.undelivered.lock().unwrap();
            undelivered.0 += 1;
            undelivered.1.get_or_insert_with(|| error.to_string());
        }
    }
}

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

type GeneratorProducer = BaseProducer<KafkaContext<GeneratorRole>>;

/// A producer to `target`'s topic, which must exist, and the slot where a refused
/// credential is recorded.
fn connect(
    target: &Target,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<(GeneratorProducer, Arc<AuthFailure>)> {
    let failure = AuthFailure::new();
    let auth = ClientAuth::new(
        "generator",
        &target.bootstrap_servers,
        &target.security,
        crate::auth::token_source(&target.security, handle)?,
        failure.clone(),
    );
    let mut client = ClientConfig::new();
    auth.apply(&mut client);
    let producer: GeneratorProducer = client
        .set("bootstrap.servers", &target.bootstrap_servers)
        // Java's default partitioner (murmur2 of the key), as kafka-python uses.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create_with_context(KafkaContext::new(
            "generator",
            auth,
            GeneratorRole {
                undelivered: Default::default(),
            },
        ))
        .context("creating the Kafka producer")?;
    let topic = target.topic.as_str();
    let partitions = topic_partitions(
        producer.client(),
        topic,
        &target.bootstrap_servers,
        Duration::from_secs(10),
        "generator",
        &|| {
            producer.poll(Duration::ZERO);
        },
        &failure,
    )?;
    if partitions == 0 {
        bail!(
            "topic `{topic}` does not exist on {}; create it first",
            target.bootstrap_servers
        );
    }
    Ok((producer, failure))
}

/// A progress bar on a terminal, else none.
fn progress_bar(count: Option<u64>) -> ProgressBar {
    if std::io::stderr().is_terminal() {
        let bar = match count {
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
    }
}

/// Hands `record` to the producer, waiting while its queue is full.
fn send_one(
    producer: &GeneratorProducer,
    mut record: BaseRecord<'_, str, str>,
    failure: &AuthFailure,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
                failure.check()?;
            }
            Err((error, back)) => bail!("sending to `{}` failed: {error}", back.topic),
        }
    }
}

/// Sends stock records to `target` until `args.count` are sent or `shutdown`: at
/// `args.rate` records a second, else in bursts of one record per ticker with a pause
/// of 5 to 10 s between them, as the job Sluice replaces did. Returns the number sent.
pub fn run(
    args: &GenerateArgs,
    target: &Target,
    shutdown: &Shutdown,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<u64> {
    let (producer, failure) = connect(target, handle)?;
    let topic = target.topic.as_str();
    let progress = progress_bar(args.count);
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
            let record = BaseRecord::<str, str>::to(topic).key(&key).payload(&value);
            send_one(&producer, record, &failure)?;
            producer.poll(Duration::ZERO);
            failure.check()?;
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
    failure.check()?;
    if let (count @ 1.., Some(first)) = &*producer.context().role.undelivered.lock().unwrap() {
        bail!("the broker did not take {count} of {sent} records to `{topic}`; the first: {first}");
    }
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
