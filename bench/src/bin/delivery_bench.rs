//! `delivery-bench`: exactly-once against at-least-once on a real broker.
//!
//! For each delivery mode, rounds alternating: Sluice copies the same input topic
//! (stock records keyed by ticker) through the stateful `stats` plugin with a 1 s
//! checkpoint interval. Throughput is measured on committed progress (the group's
//! committed offsets), the one thing both modes mean by "done": from the first
//! commit to the commit that covers the whole input. Checkpoint durations come from
//! the host's own log. Last, the time to restore 100 000 state keys when a host
//! starts. Prints Markdown to stdout, progress to stderr.

use sluice_bench::kafka::{Committed, Kafka, PARTITIONS, send_waiting};
use sluice_bench::process::terminate;
use sluice_bench::run::{self, Pipeline};

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const TICKERS: [&str; 17] = [
    "AAPL", "ACN", "ADBE", "AMD", "AVGO", "CRM", "CSCO", "IBM", "INTC", "MA", "MSFT", "NVDA",
    "ORCL", "PYPL", "QCOM", "TXN", "V",
];

#[derive(Debug, Parser)]
#[command(
    name = "delivery-bench",
    about = "Exactly-once against at-least-once throughput, checkpoint durations and state restore time.",
    long_about = "Exactly-once against at-least-once throughput, checkpoint durations and state restore time.\n\n\
        Build first:\n  cargo build --release -p sluice-host -p sluice-bench\n\
        then run:\n  target/release/delivery-bench --records 1000000 --rounds 3\n\n\
        The broker must be up (scripts/kafka.sh start)."
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Stock records in the input topic, copied once per round.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Rounds per delivery mode; the modes alternate.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// State keys written, then restored, for the restore measurement.
    #[arg(long, default_value_t = 100_000)]
    restore_keys: u64,
    /// The `sluice` binary [default: next to this program].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The stats plugin [default: the one the release build of the host made].
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Seconds a round may take before it is abandoned.
    #[arg(long, default_value_t = 600)]
    round_timeout: u64,
}

struct Round {
    mode: &'static str,
    records_per_s: f64,
    checkpoints_ms: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.records == 0 || args.rounds == 0 || args.restore_keys == 0 {
        bail!("--records, --rounds and --restore-keys must be at least 1");
    }
    let sluice = run::sluice(args.sluice.clone())?;
    let plugin = run::built_plugin(args.plugin.clone(), "sluice_plugin_stats")?;
    let kafka = Kafka::connect(&args.bootstrap_servers)?;
    let tag = run::unique_tag("delivery-bench");
    let workdir = run::workdir(&tag)?;
    let bench = Bench {
        args: &args,
        kafka: &kafka,
        sluice: &sluice,
        plugin: &plugin,
        workdir: &workdir,
        tag: &tag,
    };

    let input = format!("{tag}-in");
    let mut topics = vec![input.clone()];
    let result = (|| -> anyhow::Result<(Vec<Round>, f64, u64)> {
        kafka.create_topic(&input, false)?;
        eprintln!("filling `{input}` with {} records...", args.records);
        fill(&args.bootstrap_servers, &input, args.records, |i| {
            TICKERS[(i % TICKERS.len() as u64) as usize].to_string()
        })?;
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            for mode in ["at-least-once", "exactly-once"] {
                let result = bench.round(&input, round, mode, &mut topics)?;
                eprintln!(
                    "round {round} {mode}: {:.0} records/s, {} checkpoints",
                    result.records_per_s,
                    result.checkpoints_ms.len()
                );
                rounds.push(result);
            }
        }
        let (restore_ms, keys) = bench.restore(&mut topics)?;
        Ok((rounds, restore_ms, keys))
    })();
    for topic in &topics {
        if let Err(error) = kafka.delete_topic(topic) {
            eprintln!("warning: {error:#}");
        }
    }
    let (rounds, restore_ms, keys) = result?;
    report(&args, &rounds, restore_ms, keys);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

struct Bench<'a> {
    args: &'a Args,
    kafka: &'a Kafka,
    sluice: &'a Path,
    plugin: &'a Path,
    workdir: &'a Path,
    tag: &'a str,
}

impl Bench<'_> {
    fn config(
        &self,
        input: &str,
        output: &str,
        group: &str,
        mode: &str,
    ) -> anyhow::Result<PathBuf> {
        let path = self.workdir.join(format!("{group}.toml"));
        let pipeline = Pipeline {
            servers: &self.args.bootstrap_servers,
            input,
            output,
            group,
            delivery: mode,
            parallelism: 1,
            plugin: Some(self.plugin),
        };
        run::write_file(&path, &pipeline.render())?;
        Ok(path)
    }

    fn start(&self, config: &Path, log: &Path) -> anyhow::Result<Child> {
        run::start_sluice(self.sluice, config, "bench", log)
    }

    fn round(
        &self,
        input: &str,
        round: usize,
        mode: &'static str,
        topics: &mut Vec<String>,
    ) -> anyhow::Result<Round> {
        let output = format!("{input}-out-{round}-{mode}");
        let group = format!("{input}-g-{round}-{mode}");
        self.kafka.create_topic(&output, false)?;
        topics.push(output.clone());
        topics.push(format!("{group}-state-changelog"));
        let config = self.config(input, &output, &group, mode)?;
        let log = self.workdir.join(format!("{group}.log"));
        let mut child = self.start(&config, &log)?;
        let committed = Committed::new(&self.args.bootstrap_servers, &group, input, PARTITIONS)?;
        let deadline = Instant::now() + Duration::from_secs(self.args.round_timeout);
        let mut first: Option<(Instant, i64)> = None;
        let last = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "sluice exited ({status}) during the round; see {}",
                    log.display()
                );
            }
            let done = committed.total().unwrap_or(0);
            let now = Instant::now();
            if done > 0 && first.is_none() {
                first = Some((now, done));
            }
            if done >= self.args.records as i64 {
                break now;
            }
            if now > deadline {
                bail!(
                    "{mode}: {done} records committed after {} s; see {}",
                    self.args.round_timeout,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        terminate(&mut child, "sluice", Duration::from_secs(60))?;
        let (first_at, first_done) = first.expect("set before the last commit");
        let elapsed = (last - first_at).as_secs_f64();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(Round {
            mode,
            records_per_s: (self.args.records as i64 - first_done) as f64 / elapsed,
            checkpoints_ms: field_values(&text, "Checkpoint committed.", "duration_ms="),
        })
    }

    /// Writes `restore_keys` distinct tickers through the stats plugin, stops, and
    /// times the restore of the next start.
    fn restore(&self, topics: &mut Vec<String>) -> anyhow::Result<(f64, u64)> {
        let keys = self.args.restore_keys;
        let input = format!("{}-restore-in", self.tag);
        let output = format!("{}-restore-out", self.tag);
        let group = format!("{}-restore-g", self.tag);
        for topic in [&input, &output] {
            self.kafka.create_topic(topic, false)?;
            topics.push(topic.clone());
        }
        topics.push(format!("{group}-state-changelog"));
        eprintln!("restore: writing {keys} state keys...");
        fill(&self.args.bootstrap_servers, &input, keys, |i| {
            format!("T{i:07}")
        })?;
        let config = self.config(&input, &output, &group, "at-least-once")?;
        let committed = Committed::new(&self.args.bootstrap_servers, &group, &input, PARTITIONS)?;
        let log = self.workdir.join("restore-1.log");
        let mut child = self.start(&config, &log)?;
        let deadline = Instant::now() + Duration::from_secs(self.args.round_timeout);
        while committed.total().unwrap_or(0) < keys as i64 {
            if Instant::now() > deadline {
                bail!(
                    "the restore run did not commit its input; see {}",
                    log.display()
                );
            }
            if let Some(status) = child.try_wait()? {
                bail!("sluice exited ({status}); see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        terminate(&mut child, "sluice", Duration::from_secs(60))?;

        let log = self.workdir.join("restore-2.log");
        let mut child = self.start(&config, &log)?;
        let deadline = Instant::now() + Duration::from_secs(self.args.round_timeout);
        let (millis, restored) = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let durations = field_values(&text, "State restored.", "duration_ms=");
            let counts = field_values(&text, "State restored.", "keys=");
            if let (Some(ms), Some(count)) = (durations.first(), counts.first()) {
                break (*ms, *count as u64);
            }
            if Instant::now() > deadline {
                bail!("no restore in {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        terminate(&mut child, "sluice", Duration::from_secs(60))?;
        if restored != keys {
            bail!(
                "the host restored {restored} keys, expected {keys}; see {}",
                log.display()
            );
        }
        Ok((millis, restored))
    }
}

/// Stock records keyed by ticker (`ticker(i)` for record `i`), partitioned by key.
fn fill(
    servers: &str,
    topic: &str,
    records: u64,
    ticker: impl Fn(u64) -> String,
) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .context("creating the producer that fills the input topic")?;
    for i in 0..records {
        let ticker = ticker(i);
        let key = format!(r#"{{"ticker": "{ticker}"}}"#);
        let price = (i * 7919 % 10_000) as f64 / 100.0;
        let value = format!(
            r#"{{"event_time": "2026-11-26T12:00:00", "ticker": "{ticker}", "price": {price:?}}}"#
        );
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .key(key.as_bytes())
            .payload(value.as_bytes());
        send_waiting(&producer, record, Duration::from_millis(10))?;
    }
    producer
        .flush(Duration::from_secs(120))
        .with_context(|| format!("input records for `{topic}` still undelivered after 120 s"))?;
    Ok(())
}

/// The numbers after `field` on the log lines that contain `message`.
fn field_values(log: &str, message: &str, field: &str) -> Vec<f64> {
    log.lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| {
            let rest = &line[line.find(field)? + field.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

fn report(args: &Args, rounds: &[Round], restore_ms: f64, keys: u64) {
    println!(
        "{} stock records keyed by ticker, {PARTITIONS} partitions, `stats` plugin, checkpoint every 1 s, {} rounds per mode\n",
        args.records, args.rounds
    );
    println!(
        "| round | mode | records/s (committed) | checkpoints | checkpoint p50 ms | checkpoint p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, round) in rounds.iter().enumerate() {
        let mut durations = round.checkpoints_ms.clone();
        durations.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {:.0} | {} | {:.1} | {:.1} |",
            i / 2 + 1,
            round.mode,
            round.records_per_s,
            durations.len(),
            percentile(&durations, 50.0),
            percentile(&durations, 99.0)
        );
    }
    let rate = |mode: &str| {
        median(
            rounds
                .iter()
                .filter(|r| r.mode == mode)
                .map(|r| r.records_per_s)
                .collect(),
        )
    };
    let (alo, eos) = (rate("at-least-once"), rate("exactly-once"));
    println!(
        "\nMedian throughput: at-least-once {alo:.0} records/s, exactly-once {eos:.0} records/s: exactly-once is {:.0}% of at-least-once.",
        eos / alo * 100.0
    );
    for mode in ["at-least-once", "exactly-once"] {
        let mut all: Vec<f64> = rounds
            .iter()
            .filter(|r| r.mode == mode)
            .flat_map(|r| r.checkpoint_ms_iter())
            .collect();
        all.sort_by(f64::total_cmp);
        println!(
            "Checkpoint duration, {mode}, all rounds: p50 {:.1} ms, p99 {:.1} ms ({} checkpoints).",
            percentile(&all, 50.0),
            percentile(&all, 99.0),
            all.len()
        );
    }
    println!("State restore at start: {keys} keys in {restore_ms:.0} ms.");
}

impl Round {
    fn checkpoint_ms_iter(&self) -> impl Iterator<Item = f64> + '_ {
        self.checkpoints_ms.iter().copied()
    }
}
