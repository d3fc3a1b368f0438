//! `sluice-bench`: measures Sluice's built-in pass-through against `plain-loop` on a
//! real broker: throughput, host CPU per million records and peak RSS of each program
//! as a child process, alternating the two so that drift in the broker or the machine
//! affects both alike. Prints Markdown tables to stdout, progress to stderr.

use sluice_bench::kafka::{Kafka, PARTITIONS, send_waiting};
use sluice_bench::process::{Measured as Child, Usage};
use sluice_bench::run::{self, Pipeline, median, write_file};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
/// How often the output topic's end offsets are read.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long a program may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    about = "Benchmark Sluice's pass-through against a plain rdkafka loop on a real broker.",
    long_about = "Benchmark Sluice's pass-through against a plain rdkafka loop on a real broker.\n\n\
        Build both programs first:\n  cargo build --release -p sluice-host -p sluice-bench\n\
        then run:\n  cargo run --release -p sluice-bench -- --records 1000000 --rounds 3\n\n\
        The broker must be up (scripts/kafka.sh start). Each round creates and deletes its \
        own output topic; the input topic is deleted at the end."
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Records in the input topic, copied once per round.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Rounds per program; the programs alternate (sluice, plain, sluice, plain, ...).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The `sluice` binary [default: `sluice` next to this program, i.e. target/release/sluice].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The `plain-loop` binary [default: `plain-loop` next to this program].
    #[arg(long)]
    plain_loop: Option<PathBuf>,
    /// Seconds a round may take to copy every record before it is abandoned.
    #[arg(long, default_value_t = 600)]
    round_timeout: u64,
    /// Sluice's `parallelism`: workers in the host (the baseline stays one loop).
    #[arg(long, default_value_t = 1)]
    parallelism: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Sluice,
    Plain,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Sluice => "sluice",
            Program::Plain => "plain-loop",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Round {
    program: Program,
    /// From the first output record seen to all of them seen.
    copy_s: f64,
    usage: Usage,
}

impl Round {
    fn records_per_s(&self, records: u64) -> f64 {
        records as f64 / self.copy_s
    }

    fn cpu_per_million(&self, records: u64) -> f64 {
        self.usage.cpu_s() * 1e6 / records as f64
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.records == 0 || args.rounds == 0 {
        bail!("--records and --rounds must be at least 1");
    }
    let sluice = run::sluice(args.sluice.clone())?;
    let plain = run::binary(args.plain_loop.clone(), "plain-loop", "sluice-bench")?;
    let kafka = Kafka::connect(&args.bootstrap_servers)?;

    let tag = run::unique_tag("sluice-bench");
    let workdir = run::workdir(&tag)?;
    let input = format!("{tag}-in");

    let result = (|| -> anyhow::Result<(Usage, Vec<Round>)> {
        kafka.create_topic(&input, false)?;
        eprintln!("filling `{input}` with {} records...", args.records);
        let started = Instant::now();
        fill(&args.bootstrap_servers, &input, args.records)?;
        let written = kafka.end_total(&input)?;
        if written != args.records as i64 {
            bail!(
                "input topic `{input}` holds {written} records, expected {}",
                args.records
            );
        }
        eprintln!("filled in {:.1} s", started.elapsed().as_secs_f64());

        let startup = sluice_startup(&sluice, &workdir, &args.bootstrap_servers, &input)?;
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            for program in [Program::Sluice, Program::Plain] {
                let result = run_round(
                    &args, &kafka, &workdir, &input, round, program, &sluice, &plain,
                )?;
                eprintln!(
                    "round {round} {}: {:.0} records/s, {:.2} CPU s, {:.1} MB peak RSS",
                    program.name(),
                    result.records_per_s(args.records),
                    result.usage.cpu_s(),
                    result.usage.max_rss_mb
                );
                rounds.push(result);
            }
        }
        Ok((startup, rounds))
    })();
    if let Err(error) = kafka.delete_topic(&input) {
        eprintln!("warning: {error:#}");
    }
    let (startup, rounds) = result?;
    print_report(&args, &startup, &rounds);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

/// Writes `records` records round-robin over the partitions: 16-byte keys,
/// 100-byte values and two small headers.
fn fill(servers: &str, topic: &str, records: u64) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .create()
        .context("creating the producer that fills the input topic")?;
    let filler = [b'x'; VALUE_LEN];
    for i in 0..records {
        let key = format!("{i:0KEY_LEN$}");
        let mut value = filler;
        let prefix = format!("value-{i:010}-");
        value[..prefix.len()].copy_from_slice(prefix.as_bytes());
        let seq = i.to_be_bytes();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: "source",
                value: Some("sluice-bench"),
            })
            .insert(Header {
                key: "seq",
                value: Some(&seq),
            });
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition((i % PARTITIONS as u64) as i32)
            .key(key.as_bytes())
            .payload(&value)
            .headers(headers);
        send_waiting(&producer, record, Duration::from_millis(10))?;
    }
    producer
        .flush(Duration::from_secs(120))
        .with_context(|| format!("input records for `{topic}` still undelivered after 120 s"))?;
    Ok(())
}

fn sluice_config(
    servers: &str,
    input: &str,
    output: &str,
    group: &str,
    parallelism: usize,
) -> String {
    Pipeline {
        servers,
        input,
        output,
        group,
        delivery: "at-least-once",
        parallelism,
        plugin: None,
    }
    .render()
}

/// What Sluice spends before any record: `sluice validate` compiles and initialises the
/// plugin exactly as `run` does, without Kafka.
fn sluice_startup(
    sluice: &Path,
    workdir: &Path,
    servers: &str,
    input: &str,
) -> anyhow::Result<Usage> {
    let config = workdir.join("validate.toml");
    write_file(
        &config,
        &sluice_config(servers, input, "unused", "unused", 1),
    )?;
    let mut command = Command::new(sluice);
    command
        .arg("validate")
        .arg("--config")
        .arg(&config)
        // Start-up as on a new machine: the plugin is compiled, not loaded from the cache.
        .env("SLUICE_CACHE_DIR", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = Child::spawn(command, "sluice validate")?;
    let (status, usage) = child.wait(STOP_TIMEOUT)?;
    if status != 0 {
        bail!(
            "`sluice validate --config {}` failed with status {status}",
            config.display()
        );
    }
    Ok(usage)
}

#[allow(clippy::too_many_arguments)]
fn run_round(
    args: &Args,
    kafka: &Kafka,
    workdir: &Path,
    input: &str,
    round: usize,
    program: Program,
    sluice: &Path,
    plain: &Path,
) -> anyhow::Result<Round> {
    let output = format!("{input}-out-{round}-{}", program.name());
    let group = format!("{input}-group-{round}-{}", program.name());
    let result = (|| {
        kafka.create_topic(&output, false)?;
        let log = workdir.join(format!("round-{round}-{}.log", program.name()));
        let mut command = match program {
            Program::Sluice => {
                let config = workdir.join(format!("round-{round}.toml"));
                write_file(
                    &config,
                    &sluice_config(
                        &args.bootstrap_servers,
                        input,
                        &output,
                        &group,
                        args.parallelism,
                    ),
                )?;
                let mut command = Command::new(sluice);
                command
                    .arg("run")
                    .arg("--config")
                    .arg(&config)
                    .env("SLUICE_CACHE_DIR", "off")
                    .env_remove("BOOTSTRAP_SERVERS")
                    .env_remove("RUST_LOG")
                    .env("NO_COLOR", "1");
                command
            }
            Program::Plain => {
                let mut command = Command::new(plain);
                command
                    .args(["--bootstrap-servers", &args.bootstrap_servers])
                    .args(["--input", input])
                    .args(["--output", &output])
                    .args(["--group", &group]);
                command
            }
        };
        let log_file =
            File::create(&log).with_context(|| format!("creating log {}", log.display()))?;
        command.stdout(Stdio::null()).stderr(log_file);
        eprintln!("round {round} {}: copying...", program.name());
        let mut child = Child::spawn(command, program.name())?;

        let deadline = Instant::now() + Duration::from_secs(args.round_timeout);
        let mut first = None;
        let last = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited with status {status} before copying every record; see {}",
                    program.name(),
                    log.display()
                );
            }
            // A failed read (a leader moving, a slow broker) is retried, not fatal.
            let copied = match kafka.end_total(&output) {
                Ok(copied) => copied,
                Err(error) => {
                    eprintln!("warning: {error:#}");
                    -1
                }
            };
            let now = Instant::now();
            if copied > 0 && first.is_none() {
                first = Some(now);
            }
            if copied >= args.records as i64 {
                break now;
            }
            if now > deadline {
                bail!(
                    "{} copied {copied} of {} records in {} s; see {}",
                    program.name(),
                    args.records,
                    args.round_timeout,
                    log.display()
                );
            }
            std::thread::sleep(WATCH_INTERVAL);
        };
        let first = first.expect("set before the last record is seen");

        child.signal(libc::SIGTERM);
        let (status, usage) = child.wait(STOP_TIMEOUT)?;
        if status != 0 {
            bail!(
                "{} exited with status {status} after SIGTERM; see {}",
                program.name(),
                log.display()
            );
        }
        let copied = kafka.end_total(&output)?;
        if copied != args.records as i64 {
            eprintln!(
                "warning: `{output}` holds {copied} records after {} stopped, expected {}",
                program.name(),
                args.records
            );
        }
        Ok(Round {
            program,
            copy_s: (last - first).as_secs_f64(),
            usage,
        })
    })();
    if let Err(error) = kafka.delete_topic(&output) {
        eprintln!("warning: {error:#}");
    }
    result
}

struct Medians {
    records_per_s: f64,
    cpu_per_million: f64,
    max_rss_mb: f64,
}

fn medians(rounds: &[Round], program: Program, records: u64) -> Medians {
    let mine: Vec<&Round> = rounds.iter().filter(|r| r.program == program).collect();
    Medians {
        records_per_s: median(mine.iter().map(|r| r.records_per_s(records)).collect()),
        cpu_per_million: median(mine.iter().map(|r| r.cpu_per_million(records)).collect()),
        max_rss_mb: median(mine.iter().map(|r| r.usage.max_rss_mb).collect()),
    }
}

fn print_report(args: &Args, startup: &Usage, rounds: &[Round]) {
    let n = args.records;
    println!(
        "Records per round: {n} ({PARTITIONS} partitions, {KEY_LEN}-byte keys, {VALUE_LEN}-byte values, 2 headers); Sluice with parallelism = {}\n",
        args.parallelism
    );
    println!(
        "| round | program | records/s | first→last output s | user CPU s | system CPU s | CPU s per 1M records | peak RSS MB |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (i, round) in rounds.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |",
            i / 2 + 1,
            round.program.name(),
            round.records_per_s(n),
            round.copy_s,
            round.usage.user_s,
            round.usage.system_s,
            round.cpu_per_million(n),
            round.usage.max_rss_mb
        );
    }

    let sluice = medians(rounds, Program::Sluice, n);
    let plain = medians(rounds, Program::Plain, n);
    println!("\nMedians over {} rounds each:\n", args.rounds);
    println!("| program | records/s | CPU s per 1M records | peak RSS MB |");
    println!("|---|---:|---:|---:|");
    for (program, m) in [(Program::Sluice, &sluice), (Program::Plain, &plain)] {
        println!(
            "| {} | {:.0} | {:.2} | {:.1} |",
            program.name(),
            m.records_per_s,
            m.cpu_per_million,
            m.max_rss_mb
        );
    }

    let throughput = sluice.records_per_s / plain.records_per_s;
    let cpu = sluice.cpu_per_million / plain.cpu_per_million;
    let verdict = |met: bool| if met { "met" } else { "missed" };
    println!("\n| sluice / plain-loop (medians) | ratio | target | |");
    println!("|---|---:|---|---|");
    println!(
        "| throughput | {throughput:.3} | ≥ 0.90 | {} |",
        verdict(throughput >= 0.90)
    );
    println!(
        "| CPU s per 1M records | {cpu:.3} | ≤ 1.15 | {} |",
        verdict(cpu <= 1.15)
    );
    println!(
        "| sluice peak RSS MB | {:.1} | < 100 | {} |",
        sluice.max_rss_mb,
        verdict(sluice.max_rss_mb < 100.0)
    );
    println!(
        "\nSluice startup alone (`sluice validate`: engine, plugin compile and init, no Kafka): \
         {:.2} CPU s, {:.1} MB peak RSS. It is included in every sluice round's CPU.\n\n\
         CPU is the child's user + system time from wait4(2), from start to exit. Peak RSS is \
         the child's VmHWM from /proc, read every 10-50 ms until it exits.",
        startup.cpu_s(),
        startup.max_rss_mb
    );
}
