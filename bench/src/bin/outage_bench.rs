//! `outage-bench`: how long Sluice takes to commit again after the network to its
//! broker comes back.
//!
//! A broker of the program's own (`scripts/kafka.sh` in a temporary home, on free
//! ports) sits behind the e2e tests' fault-injecting proxy, and advertises the proxy's
//! address to clients that came through it. Sluice reads and writes through the proxy;
//! a writer feeds the input directly, throughout. For each outage length the proxy
//! black-holes every connection (open ones and new ones: nothing passes either way,
//! as in a network partition) or, with `--fault refuse`, resets and refuses every
//! connection (as a broker that is down) for that long, then lets traffic through
//! again; the time from then to the next commit of the group's offsets (read
//! directly) is the recovery time. With `--fault crash` the broker itself is killed
//! (SIGKILL) and started again after that long, and the time counts from when it
//! answers again. Prints Markdown to stdout, progress to stderr.

// The e2e tests' proxy, of which this program uses the outages only.
#[path = "../../../tests/e2e/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_bench::kafka::{Committed, Kafka, PARTITIONS, send_waiting};
use sluice_bench::run;

#[derive(Debug, Parser)]
#[command(
    name = "outage-bench",
    about = "Time from the end of a network outage between Sluice and its broker to Sluice's next commit.",
    long_about = "Time from the end of a network outage between Sluice and its broker to Sluice's next commit.\n\n\
        Build first:\n  cargo build -p sluice-host -p sluice-bench --bin sluice --bin outage-bench\n\
        then run:\n  target/debug/outage-bench --outages 10,30,45,60\n\n\
        Needs Java and the jars scripts/kafka.sh resolved (it starts a broker of its own)."
)]
struct Args {
    /// Outage lengths in seconds, one measurement each, in this order.
    #[arg(long, value_delimiter = ',', default_value = "10,30,45,60")]
    outages: Vec<u64>,
    /// `blackhole` (nothing passes, connections stay open: a network partition),
    /// `refuse` (every connection reset and refused: a broker that is down) or `crash`
    /// (the broker killed, then started again).
    #[arg(long, default_value = "blackhole")]
    fault: String,
    /// `exactly-once` or `at-least-once`.
    #[arg(long, default_value = "exactly-once")]
    delivery: String,
    /// Records per second written to the input throughout.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// The pipeline's `[checkpoint] interval_ms`.
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// Extra `[source.kafka]` settings for the run, `KEY=VALUE`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    source_kafka: Vec<String>,
    /// Extra `[sink.kafka]` settings for the run, `KEY=VALUE`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sink_kafka: Vec<String>,
    /// Steady flow between two outages, in seconds.
    #[arg(long, default_value_t = 15)]
    settle_s: u64,
    /// Where Sluice's log goes [default: the broker's temporary home, removed at the end].
    #[arg(long)]
    log: Option<PathBuf>,
    /// The `sluice` binary [default: next to this program].
    #[arg(long)]
    sluice: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sluice = run::sluice(args.sluice.clone())?;
    if !["blackhole", "refuse", "crash"].contains(&args.fault.as_str()) {
        bail!(
            "--fault is `blackhole`, `refuse` or `crash`, not `{}`",
            args.fault
        );
    }
    let broker = Broker::start()?;
    let direct = broker.servers();
    eprintln!("broker at {direct}, proxy at {}", broker.proxy.address());
    let kafka = Kafka::connect(&direct)?;
    let stamp = std::process::id();
    let (input, output, group) = (
        format!("outage-in-{stamp}"),
        format!("outage-out-{stamp}"),
        format!("outage-g-{stamp}"),
    );
    kafka.create_topic(&input, false)?;
    kafka.create_topic(&output, false)?;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_steadily(direct.clone(), input.clone(), args.rate, stop.clone());
    let config = broker.home.path().join("outage.toml");
    let (source_kafka, sink_kafka) = (settings(&args.source_kafka)?, settings(&args.sink_kafka)?);
    std::fs::write(
        &config,
        format!(
            "version = 1\ndelivery = \"{delivery}\"\n\n[source]\nbootstrap_servers = \"{proxy}\"\ntopic = \"{input}\"\n\
             group_id = \"{group}\"\n\n[source.kafka]\n{source_kafka}\n[sink]\ntopic = \"{output}\"\n\n\
             [sink.kafka]\n{sink_kafka}\n[checkpoint]\ninterval_ms = {interval}\nmin_pause_ms = 0\n",
            delivery = args.delivery,
            proxy = broker.proxy.address(),
            interval = args.checkpoint_interval_ms,
        ),
    )?;
    let log = args
        .log
        .clone()
        .unwrap_or_else(|| broker.home.path().join("sluice.log"));
    let mut host = Host(
        Command::new(&sluice)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("SLUICE_ADMIN", "off")
            .env("SLUICE_INSTANCE", "outage")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting sluice")?,
    );
    let offsets = Committed::new(&direct, &group, &input, PARTITIONS)?;
    eprintln!("waiting for the first commits");
    let first = offsets.wait_past(0, Duration::from_secs(120), &mut host)?;
    eprintln!("committing ({first} so far); log {}", log.display());

    println!("| outage (s) | restore → next commit (s) | partitions lost and assigned again |");
    println!("|---:|---:|---|");
    for outage in &args.outages {
        std::thread::sleep(Duration::from_secs(args.settle_s));
        let assigned_before = count(&log, "Partitions assigned");
        let before = offsets.total()?;
        match args.fault.as_str() {
            "refuse" => broker.proxy.refuse(),
            "crash" => broker.kill()?,
            _ => broker.proxy.blackhole(),
        }
        eprintln!("{} for {outage} s", args.fault);
        std::thread::sleep(Duration::from_secs(*outage));
        if args.fault == "crash" {
            broker.start_again()?;
        }
        let restored = Instant::now();
        broker.proxy.restore();
        offsets.wait_past(before, Duration::from_secs(300), &mut host)?;
        let took = restored.elapsed();
        let lost = count(&log, "Partitions assigned") > assigned_before;
        eprintln!(
            "{outage} s outage: committed again {:.1} s after",
            took.as_secs_f64()
        );
        println!(
            "| {outage} | {:.1} | {} |",
            took.as_secs_f64(),
            if lost { "yes" } else { "no" }
        );
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer")?;
    host.0.kill().ok();
    host.0.wait().ok();
    kafka.delete_topic(&input).ok();
    kafka.delete_topic(&output).ok();
    Ok(())
}

/// `KEY=VALUE` pairs as TOML lines.
fn settings(pairs: &[String]) -> anyhow::Result<String> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .context("Kafka settings are KEY=VALUE")?;
            Ok(format!("\"{key}\" = \"{value}\"\n"))
        })
        .collect()
}

/// How often `text` occurs in the file at `path`.
fn count(path: &Path, text: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(text)
        .count()
}

/// The `sluice` process; killed when dropped.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Waiting on the group's committed offsets.
trait WaitPast {
    fn wait_past(&self, before: i64, limit: Duration, host: &mut Host) -> anyhow::Result<i64>;
}

impl WaitPast for Committed {
    /// Waits until the committed offsets sum past `before`; returns the new sum.
    fn wait_past(&self, before: i64, limit: Duration, host: &mut Host) -> anyhow::Result<i64> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = host.0.try_wait()? {
                bail!("sluice exited ({status}); see its log");
            }
            if let Ok(now) = self.total()
                && now > before
            {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!("no commit within {} s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Writes numbered records over the partitions at `rate` per second until `stop`.
fn write_steadily(
    servers: String,
    topic: String,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("linger.ms", "5")
            .create()?;
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let value = format!("rec-{sent}");
            let record = BaseRecord::<[u8], [u8]>::to(&topic)
                .partition((sent % PARTITIONS as u64) as i32)
                .payload(value.as_bytes());
            send_waiting(&producer, record, Duration::from_millis(10))?;
            sent += 1;
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    })
}

/// A broker of this program's own behind the proxy; stopped when dropped.
struct Broker {
    home: tempfile::TempDir,
    port: u16,
    controller_port: u16,
    listener: u16,
    proxy: proxy::Proxy,
}

impl Broker {
    fn start() -> anyhow::Result<Broker> {
        let shared = std::env::var_os("SLUICE_KAFKA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.kafka"));
        // Under the shared broker's home: its `scripts/kafka.sh stop` stops this one too.
        let parent = shared.join("test-brokers");
        std::fs::create_dir_all(&parent)?;
        let home = tempfile::tempdir_in(parent)?;
        // The jars the shared broker resolved, so that no Maven run is needed.
        let classpath = shared.join("classpath.txt");
        if classpath.is_file() {
            std::fs::copy(&classpath, home.path().join("classpath.txt"))?;
        }
        let (listener, proxy_port) = (free_port()?, free_port()?);
        let proxy = proxy::Proxy::start(
            &format!("127.0.0.1:{proxy_port}"),
            &format!("127.0.0.1:{listener}"),
        );
        let broker = Broker {
            home,
            port: free_port()?,
            controller_port: free_port()?,
            listener,
            proxy,
        };
        broker.start_again()?;
        Ok(broker)
    }

    /// Starts the broker (again, on the same ports and data); returns once it answers.
    fn start_again(&self) -> anyhow::Result<()> {
        let output = self.script("start").output()?;
        if !output.status.success() {
            bail!(
                "scripts/kafka.sh start: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Kills the broker at once, as a machine that crashes would.
    fn kill(&self) -> anyhow::Result<()> {
        let pid: i32 = std::fs::read_to_string(self.home.path().join("broker.pid"))?
            .trim()
            .parse()?;
        // SAFETY: kill(2) with the broker's pid and a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        // Gone once signal 0 finds no process.
        // SAFETY: signal 0 only asks whether the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, command: &str) -> Command {
        let mut script =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh"));
        script
            .arg(command)
            .env("SLUICE_KAFKA_HOME", self.home.path())
            .env("SLUICE_KAFKA_PORT", self.port.to_string())
            .env(
                "SLUICE_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("SLUICE_KAFKA_PROXIED_PORT", self.listener.to_string())
            .env(
                "SLUICE_KAFKA_PROXIED_ADVERTISED_PORT",
                self.proxy.address().rsplit_once(':').unwrap().1,
            )
            .env_remove("SLUICE_KAFKA_AUTH")
            .env_remove("SLUICE_KAFKA_GC_OPTS");
        script
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.script("stop").output();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
