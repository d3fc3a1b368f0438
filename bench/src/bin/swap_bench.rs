//! `swap-bench`: measures hot swap under steady load on a real broker. A producer writes
//! records at a fixed rate to the input of `sluice run` (plugin file watched) while the
//! plugin file is replaced N times, alternating two test plugins that tag every output with
//! `tag: A` or `tag: B`; a consumer notes when each output arrives and which tag it
//! carries. Reports, per swap, the time from the file change to the first output of the
//! new version and the longest pause in the output stream around the swap, and checks
//! that every input arrived exactly once. Markdown to stdout, progress to stderr.

use sluice_bench::kafka::{Kafka, PARTITIONS, send_waiting};

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
/// How long the host may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one swap may take to show in the output before the run is abandoned.
const SWAP_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause window starts this long before the file change...
const WINDOW_BEFORE_US: i64 = 200_000;
/// ...and ends this long after the first output of the new version.
const WINDOW_AFTER_US: i64 = 500_000;
/// The close-up window: this long either side of the first output of the new version.
const SWITCH_US: i64 = 50_000;
/// Output received this soon after the first is start-up, not steady load.
const WARM_UP_US: i64 = 2_000_000;
/// Each swap's control window (as long as its swap window, no swap in it) ends this
/// long before the file change...
const CONTROL_LEAD_US: i64 = 300_000;
/// ...and starts no sooner than this after the previous swap's window.
const CONTROL_CLEARANCE_US: i64 = 100_000;
/// Header the test plugins add to every output.
const TAG_HEADER: &str = "tag";
/// Header naming the plugin version of every output.
const PROVENANCE_HEADER: &str = "sluice-plugin";

#[derive(Debug, Parser)]
#[command(
    name = "swap-bench",
    about = "Benchmark Sluice's hot swap under steady load on a real broker.",
    long_about = "Benchmark Sluice's hot swap under steady load on a real broker.\n\n\
        Build the host, this program and the two tag plugins first:\n  \
        cargo build --release -p sluice-host -p sluice-bench\n  \
        cargo build --release --target wasm32-wasip2 -p sluice-test-tag-a -p sluice-test-tag-b\n\
        then run:\n  cargo run --release -p sluice-bench --bin swap-bench -- --swaps 20 --rate 20000\n\n\
        The broker must be up (scripts/kafka.sh start). The run creates its own input and \
        output topics and deletes them at the end."
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Plugin file changes (alternating tag-b, tag-a, tag-b, ...).
    #[arg(long, default_value_t = 20)]
    swaps: usize,
    /// Records per second written to the input topic for the whole run.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Milliseconds from one file change to the next. A swap never starts before the
    /// previous one's pause window has ended.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Seconds of steady load before the first swap (the baseline, warm-up included).
    #[arg(long, default_value_t = 10)]
    settle_s: u64,
    /// Seconds of steady load after the last swap's window (more baseline).
    #[arg(long, default_value_t = 5)]
    tail_s: u64,
    /// `linger.ms` of this program's input producer: how long it holds records to
    /// batch them, which shows up as gaps in the output. The default is the Kafka
    /// clients' own (librdkafka's and Java's), as an upstream producer would have it;
    /// at 1 ms the broker used about 1.7 times the CPU (20 000 records/s, 2 cores).
    #[arg(long, default_value_t = 5)]
    producer_linger_ms: u64,
    /// `fetch.wait.max.ms` of this program's output consumer.
    #[arg(long, default_value_t = 10)]
    consumer_fetch_wait_ms: u64,
    /// The `sluice` binary [default: `sluice` next to this program, i.e. target/release/sluice].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The tag-a plugin [default: target/wasm32-wasip2/release/sluice_test_tag_a.wasm].
    #[arg(long)]
    tag_a: Option<PathBuf>,
    /// The tag-b plugin [default: target/wasm32-wasip2/release/sluice_test_tag_b.wasm].
    #[arg(long)]
    tag_b: Option<PathBuf>,
    /// The broker's garbage-collection log (`-Xlog:gc` with wall-clock times, as
    /// scripts/kafka.sh writes it), to tell the broker's own pauses apart
    /// [default: `$SLUICE_KAFKA_HOME/gc.log`, else `.kafka/gc.log`, if present].
    #[arg(long)]
    broker_gc_log: Option<PathBuf>,
    /// Also write every output's times, sequence number, partition and tag to this CSV
    /// file, and each file change's time to `<PATH>.swaps.csv`, for a closer look.
    #[arg(long)]
    dump_csv: Option<PathBuf>,
    /// Give every candidate bytes the host has not seen (a custom section naming the
    /// swap is appended), so every swap compiles, as a new release of a plugin does.
    /// Without it, swaps from the third on return to versions compiled before.
    #[arg(long)]
    new_build_each_swap: bool,
    /// Before each file change, compile the candidate into a compilation cache that
    /// the host shares, with `sluice plugin inspect`, as a deploy step can. The swap
    /// then loads the compiled version. Without it the host's cache is off.
    #[arg(long)]
    precompile: bool,
    /// Keep the host's log here, written at this `RUST_LOG` filter
    /// (`--host-log-level`); by default it is deleted after a successful run.
    #[arg(long)]
    host_log: Option<PathBuf>,
    /// The host's log filter with `--host-log`, e.g. `sluice_host=debug` for the
    /// pipeline's slow turns.
    #[arg(long, default_value = "info")]
    host_log_level: String,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.swaps == 0 || args.rate == 0 {
        bail!("--swaps and --rate must be at least 1");
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let sluice = args
        .sluice
        .clone()
        .unwrap_or_else(|| exe.with_file_name("sluice"));
    if !sluice.is_file() {
        bail!(
            "`sluice` not found at {}; build it with `cargo build --release -p sluice-host` or pass --sluice PATH",
            sluice.display()
        );
    }
    let plugins = [
        read_plugin(&exe, args.tag_a.clone(), "sluice_test_tag_a")?,
        read_plugin(&exe, args.tag_b.clone(), "sluice_test_tag_b")?,
    ];
    if plugins[0] == plugins[1] {
        bail!("the tag-a and tag-b plugins are the same file; rebuild them");
    }
    let kafka = Kafka::connect(&args.bootstrap_servers)?;

    let name = format!(
        "sluice-swap-bench-{}-{}",
        std::process::id(),
        now_us() / 1_000_000
    );
    let workdir = std::env::temp_dir().join(&name);
    let input = format!("{name}-in");
    let output = format!("{name}-out");
    let result = (|| {
        kafka.create_topic(&input, false)?;
        // The broker stamps each output with its append time: a second clock for pauses,
        // free of this program's fetch timing.
        kafka.create_topic(&output, true)?;
        run(
            &args, &kafka, &sluice, &plugins, &workdir, &name, &input, &output,
        )
    })();
    for topic in [&input, &output] {
        if let Err(error) = kafka.delete_topic(topic) {
            eprintln!("warning: {error:#}");
        }
    }
    let mut run = result?;
    if let Some(path) = broker_gc_log(args.broker_gc_log.as_deref()) {
        let log = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the broker's gc log {}", path.display()))?;
        run.broker_pauses = broker_pauses(&log, run.load_from_us, run.load_until_us);
        eprintln!(
            "broker gc log {}: {} pauses during the load",
            path.display(),
            run.broker_pauses.len()
        );
    }
    run.broker_priority = broker_priority();
    if let Some(path) = &args.dump_csv {
        dump_csv(path, &run)?;
    }
    let report = analyse(&run);
    print_report(&args, &run, &report);
    // The log stays for a look when something failed.
    if run.host_exit != 0 {
        bail!(
            "sluice exited with status {} after SIGTERM, not 0; see its log {}",
            run.host_exit,
            workdir.join("sluice.log").display()
        );
    }
    if !report.delivery.exactly_once() {
        bail!(
            "DELIVERY CHECK FAILED: not every input arrived exactly once (see the report above); sluice's log: {}",
            workdir.join("sluice.log").display()
        );
    }
    if let Some(keep) = &args.host_log {
        std::fs::copy(workdir.join("sluice.log"), keep)
            .with_context(|| format!("keeping the host's log as {}", keep.display()))?;
    }
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

/// The plugin given, or the one cargo builds for wasm32-wasip2 beside this program's target dir.
fn read_plugin(exe: &Path, given: Option<PathBuf>, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = match given {
        Some(path) => path,
        None => exe
            .parent()
            .and_then(Path::parent)
            .context("locating the target directory")?
            .join("wasm32-wasip2/release")
            .join(format!("{name}.wasm")),
    };
    std::fs::read(&path).with_context(|| {
        format!(
            "reading plugin {}; build it with `cargo build --release --target wasm32-wasip2 -p {}` or pass its path",
            path.display(),
            name.replace('_', "-")
        )
    })
}

/// `sluice run` as a child process; killed and reaped on drop if still running.
struct Host {
    child: std::process::Child,
    log: PathBuf,
    exited: bool,
}

impl Host {
    fn spawn(
        sluice: &Path,
        config: &Path,
        admin: &str,
        log: PathBuf,
        log_level: &str,
        cache: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let log_file =
            File::create(&log).with_context(|| format!("creating log {}", log.display()))?;
        let mut command = Command::new(sluice);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--admin", admin])
            // Unless precompiled, each run's first swap to tag-b compiles it, as a
            // never-seen version would.
            .env(
                "SLUICE_CACHE_DIR",
                cache.map_or_else(|| "off".into(), |dir| dir.as_os_str().to_owned()),
            )
            .env_remove("BOOTSTRAP_SERVERS")
            .env("RUST_LOG", log_level)
            .env_remove("SLUICE_ADMIN")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", sluice.display()))?;
        Ok(Host {
            child,
            log,
            exited: false,
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exited = true;
            bail!(
                "sluice exited early ({status}); see its log {}",
                self.log.display()
            );
        }
        Ok(())
    }

    fn wait_for_log(&mut self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(text) {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "sluice did not log {text:?} within {timeout:?}; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit code (128 + signal when killed by one).
    fn terminate(&mut self) -> anyhow::Result<i32> {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = true;
                use std::os::unix::process::ExitStatusExt as _;
                return Ok(status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or_default()));
            }
            if Instant::now() > deadline {
                bail!(
                    "sluice did not exit within {STOP_TIMEOUT:?} of SIGTERM; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One output record as this program received it.
#[derive(Debug, Clone, Copy)]
struct Received {
    /// When `poll` handed it to this program (µs since the epoch).
    at_us: i64,
    /// When the broker appended it to the output topic (ms since the epoch).
    append_ms: i64,
    /// When the input producer sent it (µs since the epoch, from the value).
    sent_us: i64,
    seq: u64,
    partition: i32,
    /// `A`, `B`, 0 without a tag header, `?` with more than one or another value.
    tag: u8,
    has_provenance: bool,
}

/// Index of a tag in per-tag arrays: A is 0, B is 1.
fn tag_index(tag: u8) -> Option<usize> {
    match tag {
        b'A' => Some(0),
        b'B' => Some(1),
        _ => None,
    }
}

/// What the consumer thread shares while it runs.
#[derive(Default)]
struct Progress {
    received: AtomicU64,
    /// Receipt time of the latest output with tag A, and with tag B.
    last_tag_at: [AtomicI64; 2],
    stop: AtomicBool,
}

fn consume(
    servers: &str,
    topic: &str,
    fetch_wait_ms: u64,
    progress: &Progress,
) -> anyhow::Result<(Vec<Received>, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // Ask the broker to answer as soon as any byte is there: receipt times then
        // follow the host's writes, not this consumer's fetch rhythm.
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()
        .context("creating the consumer that reads the output topic")?;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer
        .assign(&tpl)
        .with_context(|| format!("assigning the partitions of `{topic}`"))?;
    let mut records = Vec::new();
    let mut not_append_time = 0;
    while !progress.stop.load(Ordering::Relaxed) {
        let message = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                eprintln!("warning: reading `{topic}`: {error}");
                continue;
            }
        };
        let at_us = now_us();
        let append_ms = match message.timestamp() {
            Timestamp::LogAppendTime(ms) => ms,
            _ => {
                not_append_time += 1;
                0
            }
        };
        let (seq, sent_us) =
            parse_value(message.payload().unwrap_or_default()).with_context(|| {
                format!("an output record of `{topic}` has a value this program did not write")
            })?;
        let mut tag = 0;
        let mut has_provenance = false;
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                if header.key == TAG_HEADER {
                    tag = match (tag, header.value) {
                        (0, Some(b"A")) => b'A',
                        (0, Some(b"B")) => b'B',
                        _ => b'?',
                    };
                } else if header.key == PROVENANCE_HEADER {
                    has_provenance = true;
                }
            }
        }
        if let Some(index) = tag_index(tag) {
            progress.last_tag_at[index].store(at_us, Ordering::Relaxed);
        }
        records.push(Received {
            at_us,
            append_ms,
            sent_us,
            seq,
            partition: message.partition(),
            tag,
            has_provenance,
        });
        progress.received.fetch_add(1, Ordering::Relaxed);
    }
    Ok((records, not_append_time))
}

/// Values are `<seq, 12 digits> <send time µs, 16 digits> ` padded with `x`.
fn value(seq: u64, sent_us: i64) -> [u8; VALUE_LEN] {
    let mut value = [b'x'; VALUE_LEN];
    let prefix = format!("{seq:012} {sent_us:016} ");
    value[..prefix.len()].copy_from_slice(prefix.as_bytes());
    value
}

fn parse_value(value: &[u8]) -> Option<(u64, i64)> {
    let seq = std::str::from_utf8(value.get(..12)?).ok()?.parse().ok()?;
    let sent = std::str::from_utf8(value.get(13..29)?).ok()?.parse().ok()?;
    Some((seq, sent))
}

/// What the input producer did.
struct Produced {
    sent: u64,
    /// Most records that were due but not yet handed to the client at one time.
    max_backlog: u64,
}

/// Writes records round-robin over the partitions at `rate` per second until `stop`.
/// Every record due is sent, then the thread sleeps briefly, so the rate holds on
/// average even when the thread is descheduled.
fn produce(
    servers: &str,
    topic: &str,
    rate: u64,
    linger_ms: u64,
    stop: &AtomicBool,
) -> anyhow::Result<Produced> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .create()
        .context("creating the producer that writes the input topic")?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut max_backlog = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        max_backlog = max_backlog.max(due.saturating_sub(sent));
        while sent < due {
            let key = format!("{sent:0KEY_LEN$}");
            let payload = value(sent, now_us());
            let record = BaseRecord::<[u8], [u8]>::to(topic)
                .partition((sent % PARTITIONS as u64) as i32)
                .key(key.as_bytes())
                .payload(&payload);
            send_waiting(&producer, record, Duration::from_millis(1))?;
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(500));
    }
    producer
        .flush(Duration::from_secs(60))
        .with_context(|| format!("input records for `{topic}` still undelivered after 60 s"))?;
    Ok(Produced { sent, max_backlog })
}

/// One plugin file change.
#[derive(Debug, Clone)]
struct Swap {
    /// The tag the new plugin adds.
    to: u8,
    /// Just before the rename over the watched file (µs since the epoch).
    renamed_us: i64,
    /// The version the registry should publish for it.
    expected_version: u64,
    /// `live.version` and `live.since` from `GET /status` once the new tag was seen.
    status_version: Option<u64>,
    since_us: Option<i64>,
}

/// Everything one run collected.
struct Run {
    records: Vec<Received>,
    not_append_time: u64,
    produced: Produced,
    input_total: i64,
    output_total: i64,
    swaps: Vec<Swap>,
    /// Producer start and stop (µs since the epoch).
    load_from_us: i64,
    load_until_us: i64,
    /// When the host logged `Plugin swapped.` for each version (µs since the epoch),
    /// and how long the worker took to start that version (µs).
    adopted_us: HashMap<u64, (i64, Option<f64>)>,
    /// When the host logged `Plugin moved to its optimized code.` for each version that
    /// went live on baseline code (µs since the epoch).
    optimized_us: HashMap<u64, i64>,
    /// The broker's pauses during the run: (start, end) in µs since the epoch.
    broker_pauses: Vec<(i64, i64)>,
    /// The local broker's CPU priority (`scripts/kafka.sh`, `SLUICE_KAFKA_NICE`), when
    /// its process is found.
    broker_priority: Option<String>,
    /// CPU time the hypervisor gave to others while this machine's work waited (steal
    /// time): when the counter was seen to grow (µs since the epoch), and by how many µs.
    stolen: Vec<(i64, i64)>,
    /// `swaps`, `rejections` and `rollbacks` from the final `GET /status`.
    final_counts: (u64, u64, u64),
    host_exit: i32,
}

#[allow(clippy::too_many_arguments)]
fn run(
    args: &Args,
    kafka: &Kafka,
    sluice: &Path,
    plugins: &[Vec<u8>; 2],
    workdir: &Path,
    name: &str,
    input: &str,
    output: &str,
) -> anyhow::Result<Run> {
    // The host watches the plugin's directory and the one above it; neither holds
    // anything else, so only the swaps themselves wake the watcher.
    let plugin_dir = workdir.join("plugins").join("live");
    let cache = args.precompile.then(|| workdir.join("compiled"));
    std::fs::create_dir_all(&plugin_dir)
        .with_context(|| format!("creating {}", plugin_dir.display()))?;
    let plugin = plugin_dir.join("plugin.wasm");
    std::fs::write(&plugin, &plugins[0])
        .with_context(|| format!("writing {}", plugin.display()))?;
    let config = workdir.join("swap-bench.toml");
    let text = format!(
        r#"version = 1

[source]
bootstrap_servers = "{servers}"
topic = "{input}"
group_id = "{name}-group"

[sink]
topic = "{output}"

[checkpoint]
interval_ms = 1000
min_pause_ms = 0

[plugin]
path = "{plugin}"
watch = true
provenance_header = "{PROVENANCE_HEADER}"
"#,
        servers = args.bootstrap_servers,
        plugin = plugin.display(),
    );
    File::create(&config)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", config.display()))?;
    let admin = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("finding a free port for the admin endpoint")?;
        listener.local_addr()?.to_string()
    };

    let progress = Arc::new(Progress::default());
    let consumer = {
        let (servers, topic, progress) = (
            args.bootstrap_servers.clone(),
            output.to_string(),
            progress.clone(),
        );
        let wait = args.consumer_fetch_wait_ms;
        std::thread::spawn(move || {
            let result = consume(&servers, &topic, wait, &progress);
            // Nobody waits for records that will never come.
            progress.stop.store(true, Ordering::SeqCst);
            result
        })
    };

    let mut host = Host::spawn(
        sluice,
        &config,
        &admin,
        workdir.join("sluice.log"),
        &args.host_log_level,
        cache.as_deref(),
    )?;
    let result = (|| -> anyhow::Result<Run> {
        eprintln!("starting sluice (log: {})...", host.log.display());
        host.wait_for_log("Partitions assigned.", Duration::from_secs(60))?;
        status(&admin).context("the admin endpoint of the running host does not answer")?;

        let stop_producer = Arc::new(AtomicBool::new(false));
        let load_from_us = now_us();
        let producer = {
            let (servers, topic, stop) = (
                args.bootstrap_servers.clone(),
                input.to_string(),
                stop_producer.clone(),
            );
            let (rate, linger) = (args.rate, args.producer_linger_ms);
            std::thread::spawn(move || produce(&servers, &topic, rate, linger, &stop))
        };
        let steal = {
            let stop = stop_producer.clone();
            std::thread::spawn(move || sample_steal(&stop))
        };
        let swaps = (|| -> anyhow::Result<Vec<Swap>> {
            eprintln!(
                "writing {} records/s; {} s of steady load first...",
                args.rate, args.settle_s
            );
            std::thread::sleep(Duration::from_secs(args.settle_s));
            if progress.received.load(Ordering::Relaxed) == 0 {
                host.check_running()?;
                bail!(
                    "no output after {} s of load; see {}",
                    args.settle_s,
                    host.log.display()
                );
            }
            let swaps = swap_all(
                args,
                &mut host,
                &progress,
                &plugin,
                plugins,
                &admin,
                cache.as_deref().map(|cache| (sluice, cache)),
            )?;
            std::thread::sleep(Duration::from_secs(args.tail_s));
            Ok(swaps)
        })();
        stop_producer.store(true, Ordering::SeqCst);
        let load_until_us = now_us();
        let produced = producer
            .join()
            .map_err(|_| anyhow::anyhow!("the input producer thread panicked"))??;
        let stolen = steal
            .join()
            .map_err(|_| anyhow::anyhow!("the steal-time sampler panicked"))?;
        let swaps = swaps?;

        let input_total = kafka.end_total(input)?;
        if input_total != produced.sent as i64 {
            bail!(
                "input topic `{input}` holds {input_total} records but {} were sent",
                produced.sent
            );
        }
        eprintln!("sent {}; waiting for every output...", produced.sent);
        wait_for_count(
            &progress,
            &mut host,
            produced.sent,
            Duration::from_secs(120),
        )?;
        let counts = status(&admin)?;
        let final_counts = (
            counts["swaps"].as_u64().unwrap_or_default(),
            counts["rejections"].as_u64().unwrap_or_default(),
            counts["rollbacks"].as_u64().unwrap_or_default(),
        );
        eprintln!("stopping sluice...");
        let host_exit = host.terminate()?;
        // Anything written while stopping counts too: read up to the final end offsets.
        let output_total = kafka.end_total(output)?;
        wait_for_count(
            &progress,
            &mut host,
            output_total as u64,
            Duration::from_secs(60),
        )?;
        Ok(Run {
            records: Vec::new(),
            not_append_time: 0,
            produced,
            input_total,
            output_total,
            swaps,
            load_from_us,
            load_until_us,
            adopted_us: adoption_times(&host.log_text()),
            optimized_us: optimization_times(&host.log_text()),
            broker_pauses: Vec::new(),
            broker_priority: None,
            stolen,
            final_counts,
            host_exit,
        })
    })();
    progress.stop.store(true, Ordering::SeqCst);
    let consumed = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the output consumer thread panicked"))?;
    let mut run = result?;
    let (records, not_append_time) = consumed?;
    run.records = records;
    run.not_append_time = not_append_time;
    Ok(run)
}

/// Replaces the plugin file `args.swaps` times and waits for each new tag in the output.
fn swap_all(
    args: &Args,
    host: &mut Host,
    progress: &Progress,
    plugin: &Path,
    plugins: &[Vec<u8>; 2],
    admin: &str,
    // With --precompile: the sluice binary and the cache it compiles into.
    precompile_with: Option<(&Path, &Path)>,
) -> anyhow::Result<Vec<Swap>> {
    let staging = plugin.with_file_name(".plugin.wasm.new");
    let interval = args.interval_ms as i64 * 1000;
    let mut swaps: Vec<Swap> = Vec::new();
    let mut next_us = now_us();
    for i in 0..args.swaps {
        // tag-b first: the host started with tag-a.
        let to_index = if i % 2 == 0 { 1 } else { 0 };
        let to = [b'A', b'B'][to_index];
        if let Some(wait) = next_us.checked_sub(now_us()).filter(|w| *w > 0) {
            std::thread::sleep(Duration::from_micros(wait as u64));
        }
        let bytes = if args.new_build_each_swap {
            with_build_section(&plugins[to_index], i + 1)
        } else {
            plugins[to_index].clone()
        };
        // As deployments do it: the new bytes appear under the watched name at once.
        std::fs::write(&staging, &bytes)
            .with_context(|| format!("writing {}", staging.display()))?;
        if let Some((sluice, cache)) = precompile_with {
            precompile(sluice, &staging, cache)?;
        }
        let renamed_us = now_us();
        std::fs::rename(&staging, plugin)
            .with_context(|| format!("renaming {} over {}", staging.display(), plugin.display()))?;

        let deadline = Instant::now() + SWAP_TIMEOUT;
        let seen_us = loop {
            let at = progress.last_tag_at[to_index].load(Ordering::Relaxed);
            if at >= renamed_us {
                break at;
            }
            host.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "swap {} to tag {}: no output with the new tag within {SWAP_TIMEOUT:?}; see {}",
                    i + 1,
                    to as char,
                    host.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let live = status(admin)?;
        let since_us = live["live"]["since"]
            .as_str()
            .and_then(|since| chrono::DateTime::parse_from_rfc3339(since).ok())
            .map(|since| since.timestamp_micros());
        let swap = Swap {
            to,
            renamed_us,
            expected_version: i as u64 + 2,
            status_version: live["live"]["version"].as_u64(),
            since_us,
        };
        eprintln!(
            "swap {:>2} → tag {}: first new-tag output after {:.0} ms",
            i + 1,
            to as char,
            (seen_us - renamed_us) as f64 / 1e3
        );
        swaps.push(swap);
        // The next window must not start before this one ends (see WINDOW_*).
        next_us = (renamed_us + interval).max(seen_us + WINDOW_AFTER_US + WINDOW_BEFORE_US);
    }
    // Let the last window close before the tail starts.
    if let Some(wait) = next_us.checked_sub(now_us()).filter(|w| *w > 0) {
        std::thread::sleep(Duration::from_micros(wait as u64));
    }
    Ok(swaps)
}

/// Compiles `plugin` into the compilation cache `cache` with `sluice plugin inspect`.
fn precompile(sluice: &Path, plugin: &Path, cache: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let output = Command::new(sluice)
        .args(["plugin", "inspect"])
        .arg(plugin)
        .env("SLUICE_CACHE_DIR", cache)
        .output()
        .with_context(|| format!("starting {}", sluice.display()))?;
    if !output.status.success() {
        bail!(
            "precompiling {}: {}",
            plugin.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    eprintln!(
        "precompiled in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The component with a custom section `sluice-bench-build` holding `build` appended:
/// the same code under a new digest. Custom sections may follow any section of a
/// component and do not change what it does.
fn with_build_section(component: &[u8], build: usize) -> Vec<u8> {
    use wasm_encoder::ComponentSection as _;
    let payload = build.to_string();
    let section = wasm_encoder::CustomSection {
        name: "sluice-bench-build".into(),
        data: payload.as_bytes().into(),
    };
    let mut out = component.to_vec();
    section.append_to_component(&mut out);
    out
}

fn wait_for_count(
    progress: &Progress,
    host: &mut Host,
    count: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let received = progress.received.load(Ordering::Relaxed);
        if received >= count {
            return Ok(());
        }
        if !host.exited {
            host.check_running()?;
        }
        if progress.stop.load(Ordering::Relaxed) {
            bail!("the output consumer stopped after {received} of {count} records");
        }
        if Instant::now() > deadline {
            eprintln!(
                "warning: {received} of {count} output records after {timeout:?}; reporting what arrived"
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(admin: &str) -> anyhow::Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(format!("http://{admin}/status"))
        .call()
        .with_context(|| format!("GET http://{admin}/status"))?
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the answer of http://{admin}/status"))
}

/// The `Plugin swapped.` lines of the host log: when its worker adopted each version,
/// and how long starting it took (`adopt_us`).
fn adoption_times(log: &str) -> HashMap<u64, (i64, Option<f64>)> {
    log.lines()
        .filter(|line| line.contains("Plugin swapped."))
        .filter_map(|line| {
            let at = chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok()?;
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix(name))
                    .and_then(|value| value.parse::<u64>().ok())
            };
            let version = field("version=")?;
            let took = field("adopt_us=").map(|us| us as f64);
            Some((version, (at.timestamp_micros(), took)))
        })
        .collect()
}

/// The `Plugin moved to its optimized code.` lines of the host log: when its worker
/// moved each version from baseline code to Cranelift's.
fn optimization_times(log: &str) -> HashMap<u64, i64> {
    log.lines()
        .filter(|line| line.contains("Plugin moved to its optimized code."))
        .filter_map(|line| {
            let at = chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok()?;
            let version = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("version="))?
                .parse::<u64>()
                .ok()?;
            Some((version, at.timestamp_micros()))
        })
        .collect()
}

/// The broker's gc log, if one is given or found where scripts/kafka.sh writes it.
fn broker_gc_log(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(path.to_path_buf());
    }
    let home = std::env::var_os("SLUICE_KAFKA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".kafka"));
    Some(home.join("gc.log")).filter(|path| path.is_file())
}

/// The CPU priority of the broker that scripts/kafka.sh started in
/// `$SLUICE_KAFKA_HOME` (else `.kafka`): the nice value of its main thread and of its
/// scheduling autogroup, which sets its share against other sessions.
fn broker_priority() -> Option<String> {
    let home = std::env::var_os("SLUICE_KAFKA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".kafka"));
    let pid = std::fs::read_to_string(home.join("broker.pid")).ok()?;
    let proc = PathBuf::from("/proc").join(pid.trim());
    let stat = std::fs::read_to_string(proc.join("stat")).ok()?;
    Some(describe_priority(
        &stat,
        std::fs::read_to_string(proc.join("autogroup"))
            .ok()
            .as_deref(),
    ))
}

/// "nice N, autogroup nice M" from `/proc/PID/stat` and `/proc/PID/autogroup`.
fn describe_priority(stat: &str, autogroup: Option<&str>) -> String {
    // The command name (field 2) may hold spaces; the fields after it do not. Nice is
    // field 19, the 17th after the name.
    let nice = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .unwrap_or("?");
    match autogroup.and_then(|line| line.trim().rsplit_once("nice ")) {
        Some((_, group)) => format!("nice {nice}, autogroup nice {group}"),
        None => format!("nice {nice}"),
    }
}

/// The pauses in a JVM `-Xlog:gc:...:time` log between `from` and `to` (µs since the
/// epoch), as (start, end). A line such as
/// `[2026-11-27T14:09:23.977+0000] GC(30) Pause Young (Normal) (G1 Evacuation Pause) 370M->209M(820M) 17.920ms`
/// is written when the pause ends.
fn broker_pauses(log: &str, from: i64, to: i64) -> Vec<(i64, i64)> {
    log.lines()
        .filter(|line| line.contains(" Pause "))
        .filter_map(|line| {
            let stamp = line.strip_prefix('[')?.split(']').next()?;
            let end = chrono::DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.3f%z")
                .ok()?
                .timestamp_micros();
            let ms: f64 = line.rsplit(' ').next()?.strip_suffix("ms")?.parse().ok()?;
            Some((end - (ms * 1e3) as i64, end))
        })
        .filter(|&(start, end)| end >= from && start <= to)
        .collect()
}

/// The longest broker pause overlapping `[from, to]`, in ms (0 when none does).
/// How often the steal-time counter is read.
const STEAL_SAMPLE: Duration = Duration::from_millis(2);

/// Reads the machine's steal time (`/proc/stat`, all CPUs) until `stop`, and returns
/// each growth of it: when it was seen and by how many µs. Empty where there is no
/// such counter (not Linux, not a virtual machine).
fn sample_steal(stop: &AtomicBool) -> Vec<(i64, i64)> {
    // SAFETY: sysconf only reads a system setting.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let us_per_tick = if ticks > 0 { 1_000_000 / ticks } else { 10_000 };
    let read = || -> Option<i64> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        steal_ticks(text.lines().next()?)
    };
    let mut growth = Vec::new();
    let Some(mut last) = read() else {
        return growth;
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STEAL_SAMPLE);
        if let Some(now) = read()
            && now > last
        {
            growth.push((now_us(), (now - last) * us_per_tick));
            last = now;
        }
    }
    growth
}

/// The steal time (8th value, in clock ticks) of `/proc/stat`'s `cpu` line.
fn steal_ticks(cpu_line: &str) -> Option<i64> {
    let mut fields = cpu_line.split_whitespace();
    (fields.next()? == "cpu").then_some(())?;
    fields.nth(7)?.parse().ok()
}

/// CPU time stolen within `[from, to]`, in ms: the growth seen in it, and up to one
/// sample interval after it (the counter is read every STEAL_SAMPLE).
fn stolen_in(stolen: &[(i64, i64)], from: i64, to: i64) -> f64 {
    let slack = STEAL_SAMPLE.as_micros() as i64;
    stolen
        .iter()
        .filter(|&&(at, _)| at >= from && at <= to + slack)
        .map(|&(_, us)| us)
        .sum::<i64>() as f64
        / 1e3
}

fn broker_pause_in(pauses: &[(i64, i64)], from: i64, to: i64) -> f64 {
    pauses
        .iter()
        .filter(|&&(start, end)| end >= from && start <= to)
        .map(|&(start, end)| (end - start) as f64 / 1e3)
        .fold(0.0, f64::max)
}

fn dump_csv(path: &Path, run: &Run) -> anyhow::Result<()> {
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    let mut text = String::from("received_us,append_ms,sent_us,seq,partition,tag\n");
    for r in &run.records {
        let tag = if r.tag == 0 { '-' } else { r.tag as char };
        text.push_str(&format!(
            "{},{},{},{},{},{tag}\n",
            r.at_us, r.append_ms, r.sent_us, r.seq, r.partition
        ));
    }
    write(path, text)?;
    let mut text = String::from("renamed_us,to,since_us\n");
    for swap in &run.swaps {
        text.push_str(&format!(
            "{},{},{}\n",
            swap.renamed_us,
            swap.to as char,
            swap.since_us.unwrap_or_default()
        ));
    }
    let mut swaps = path.as_os_str().to_owned();
    swaps.push(".swaps.csv");
    write(Path::new(&swaps), text)
}

/// Whether every input arrived exactly once, in order within its partition.
struct Delivery {
    sent: u64,
    received: u64,
    distinct: u64,
    missing: u64,
    duplicated: u64,
    without_one_tag: u64,
    without_provenance: u64,
    out_of_order: u64,
}

impl Delivery {
    fn exactly_once(&self) -> bool {
        self.received == self.sent && self.distinct == self.sent && self.missing == 0
    }
}

/// Per-swap measurements, in ms.
struct SwapResult {
    to: u8,
    live_ms: Option<f64>,
    registry_ms: Option<f64>,
    adopted_ms: Option<f64>,
    /// How long the worker took to adopt the new version (`adopt_us` in the log).
    adopt_us: Option<f64>,
    /// For a version that went live on baseline code: file change → the worker's move
    /// to Cranelift's code (log).
    optimized_ms: Option<f64>,
    /// The longest output gap from the first new-tag output to SWITCH_US after that
    /// move (the optimizing compile in the background, and the move), and the same
    /// over a window as long, CONTROL_LEAD_US before the file change.
    optimize_gap_ms: Option<f64>,
    optimize_control_gap_ms: Option<f64>,
    optimize_window_ms: Option<f64>,
    version_ok: bool,
    window_ms: f64,
    /// From the last old-tag output received before the first new-tag one to that one.
    switch_gap_ms: Option<f64>,
    /// The longest output gap within SWITCH_US of the first new-tag output.
    near_gap_ms: Option<f64>,
    /// The pause the swap can cause: the longest output gap from the file change to
    /// SWITCH_US after the first new-tag output.
    swap_gap_ms: Option<f64>,
    /// The same measure over a window as long, CONTROL_LEAD_US before the file change,
    /// where no swap is under way (none when that would reach the previous swap).
    control_gap_ms: Option<f64>,
    /// The broker's longest pause within that swap window and within its control.
    swap_broker_pause_ms: f64,
    control_broker_pause_ms: f64,
    /// CPU time stolen by the hypervisor within the swap window, its control and the
    /// wide window.
    swap_stolen_ms: f64,
    control_stolen_ms: f64,
    stolen_ms: f64,
    gap_ms: f64,
    append_gap_ms: f64,
    send_gap_ms: f64,
    max_latency_ms: f64,
    /// The longest broker pause within the window (0 when none).
    broker_pause_ms: f64,
}

/// Measurements outside the swap windows, after warm-up.
struct Baseline {
    median_gap_us: f64,
    p99_gap_ms: f64,
    max_gap_ms: f64,
    /// Longest receipt gap in each swap-free window as long as the median swap window.
    window_gaps_ms: Vec<f64>,
    window_append_gaps_ms: Vec<f64>,
    /// The same windows' longest gaps, for those without a broker pause.
    window_gaps_quiet_ms: Vec<f64>,
    window_ms: f64,
    latency_ms: [f64; 3],
}

struct Report {
    delivery: Delivery,
    swaps: Vec<SwapResult>,
    baseline: Baseline,
}

/// The longest stretch of `[from, to]` with no time in `times` (sorted).
fn longest_gap(times: &[i64], from: i64, to: i64) -> i64 {
    let start = times.partition_point(|t| *t < from);
    let end = times.partition_point(|t| *t <= to);
    let mut longest = 0;
    // The stretches reaching past either end are clipped to the window.
    let mut previous = if start > 0 {
        times[start - 1].max(from)
    } else {
        from
    };
    for &t in &times[start..end] {
        longest = longest.max(t - previous);
        previous = t;
    }
    let after = times.get(end).copied().unwrap_or(to).min(to);
    longest.max(after - previous)
}

/// The control for the swap window `(file change, end)`: as long, ending
/// CONTROL_LEAD_US before the file change, and none when it would start within
/// CONTROL_CLEARANCE_US of `previous_end` (the end of the previous swap's window, or of
/// the warm-up).
fn control_window((changed, end): (i64, i64), previous_end: i64) -> Option<(i64, i64)> {
    let control_end = changed - CONTROL_LEAD_US;
    let control_start = control_end - (end - changed);
    (control_start >= previous_end + CONTROL_CLEARANCE_US).then_some((control_start, control_end))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn analyse(run: &Run) -> Report {
    let records = &run.records;
    let mut seen = vec![0u32; run.produced.sent as usize];
    let mut stray = 0;
    let mut last_in_partition: HashMap<i32, u64> = HashMap::new();
    let mut out_of_order = 0;
    for record in records {
        match seen.get_mut(record.seq as usize) {
            Some(count) => *count += 1,
            None => stray += 1,
        }
        if let Some(last) = last_in_partition.insert(record.partition, record.seq)
            && last >= record.seq
        {
            out_of_order += 1;
        }
    }
    let distinct = seen.iter().filter(|c| **c > 0).count() as u64;
    let delivery = Delivery {
        sent: run.produced.sent,
        received: records.len() as u64,
        distinct,
        missing: run.produced.sent - distinct,
        duplicated: records.len() as u64 - distinct - stray,
        without_one_tag: records
            .iter()
            .filter(|r| tag_index(r.tag).is_none())
            .count() as u64,
        without_provenance: records.iter().filter(|r| !r.has_provenance).count() as u64,
        out_of_order,
    };

    let received: Vec<i64> = records.iter().map(|r| r.at_us).collect();
    let appended: Vec<i64> = {
        let mut times: Vec<i64> = records.iter().map(|r| r.append_ms * 1000).collect();
        times.sort_unstable();
        times
    };
    let sent: Vec<i64> = {
        let mut times: Vec<i64> = records.iter().map(|r| r.sent_us).collect();
        times.sort_unstable();
        times
    };

    let steady_from = received.first().copied().unwrap_or(run.load_from_us) + WARM_UP_US;
    let mut windows = Vec::new();
    let mut swaps = Vec::new();
    // Where the previous swap's own window ended: no control window may reach into it.
    let mut previous_end = steady_from;
    for swap in &run.swaps {
        let first_new = records
            .iter()
            .find(|r| r.at_us >= swap.renamed_us && r.tag == swap.to)
            .map(|r| r.at_us);
        let ms = |at: i64| (at - swap.renamed_us) as f64 / 1e3;
        let switch_gap = first_new.and_then(|first| {
            records
                .iter()
                .rev()
                .skip_while(|r| r.at_us >= first)
                .find(|r| r.tag != swap.to)
                .map(|r| (first - r.at_us) as f64 / 1e3)
        });
        let (from, to) = (
            swap.renamed_us - WINDOW_BEFORE_US,
            first_new.unwrap_or(swap.renamed_us) + WINDOW_AFTER_US,
        );
        windows.push((from, to));
        let swap_window = first_new.map(|first| (swap.renamed_us, first + SWITCH_US));
        let control_window = swap_window.and_then(|window| control_window(window, previous_end));
        let moved = run.optimized_us.get(&swap.expected_version).copied();
        let optimize_window = first_new
            .zip(moved)
            .map(|(first, moved)| (first, moved.max(first) + SWITCH_US));
        let optimize_control = optimize_window.and_then(|(start, end)| {
            self::control_window(
                (swap.renamed_us, swap.renamed_us + (end - start)),
                previous_end,
            )
        });
        if let Some((_, end)) = swap_window {
            previous_end = end;
        }
        if let Some((_, end)) = optimize_window {
            previous_end = previous_end.max(end);
        }
        let gap_in = |window: Option<(i64, i64)>| {
            window.map(|(start, end)| longest_gap(&received, start, end) as f64 / 1e3)
        };
        let pause_in = |window: Option<(i64, i64)>| {
            window.map_or(0.0, |(start, end)| {
                broker_pause_in(&run.broker_pauses, start, end)
            })
        };
        let stolen = |window: Option<(i64, i64)>| {
            window.map_or(0.0, |(start, end)| stolen_in(&run.stolen, start, end))
        };
        let max_latency = records
            .iter()
            .filter(|r| (from..=to).contains(&r.at_us))
            .map(|r| r.at_us - r.sent_us)
            .max()
            .unwrap_or_default();
        swaps.push(SwapResult {
            to: swap.to,
            live_ms: first_new.map(ms),
            registry_ms: swap.since_us.map(ms),
            adopted_ms: run
                .adopted_us
                .get(&swap.expected_version)
                .map(|(at, _)| ms(*at)),
            adopt_us: run
                .adopted_us
                .get(&swap.expected_version)
                .and_then(|(_, took)| *took),
            optimized_ms: moved.map(ms),
            optimize_gap_ms: gap_in(optimize_window),
            optimize_control_gap_ms: gap_in(optimize_control),
            optimize_window_ms: optimize_window.map(|(start, end)| (end - start) as f64 / 1e3),
            version_ok: swap.status_version == Some(swap.expected_version),
            window_ms: (to - from) as f64 / 1e3,
            switch_gap_ms: switch_gap,
            near_gap_ms: first_new.map(|first| {
                longest_gap(&received, first - SWITCH_US, first + SWITCH_US) as f64 / 1e3
            }),
            swap_gap_ms: gap_in(swap_window),
            control_gap_ms: gap_in(control_window),
            swap_broker_pause_ms: pause_in(swap_window),
            control_broker_pause_ms: pause_in(control_window),
            swap_stolen_ms: stolen(swap_window),
            control_stolen_ms: stolen(control_window),
            stolen_ms: stolen_in(&run.stolen, from, to),
            gap_ms: longest_gap(&received, from, to) as f64 / 1e3,
            append_gap_ms: longest_gap(&appended, from, to) as f64 / 1e3,
            send_gap_ms: longest_gap(&sent, from, to) as f64 / 1e3,
            max_latency_ms: max_latency as f64 / 1e3,
            broker_pause_ms: broker_pause_in(&run.broker_pauses, from, to),
        });
    }

    // Swap-free stretches of steady load: after warm-up, before the load stopped.
    let mut free = Vec::new();
    let mut cursor = steady_from;
    for &(from, to) in &windows {
        if from > cursor {
            free.push((cursor, from));
        }
        cursor = cursor.max(to);
    }
    if run.load_until_us > cursor {
        free.push((cursor, run.load_until_us));
    }
    let outside = |at: i64| free.iter().any(|&(from, to)| (from..to).contains(&at));
    let gaps: Vec<f64> = received
        .windows(2)
        .filter(|pair| outside(pair[0]) && outside(pair[1]))
        .map(|pair| (pair[1] - pair[0]) as f64)
        .collect();
    let gaps = sorted(gaps);
    let latencies = sorted(
        records
            .iter()
            .filter(|r| outside(r.at_us))
            .map(|r| (r.at_us - r.sent_us) as f64 / 1e3)
            .collect(),
    );
    let window_ms = {
        let lengths = sorted(swaps.iter().map(|s| s.window_ms).collect());
        percentile(&lengths, 0.5)
    };
    let length = (window_ms * 1e3) as i64;
    let mut window_gaps_ms = Vec::new();
    let mut window_append_gaps_ms = Vec::new();
    let mut window_gaps_quiet_ms = Vec::new();
    if length > 0 {
        for &(from, to) in &free {
            let mut start = from;
            while start + length <= to {
                let gap = longest_gap(&received, start, start + length) as f64 / 1e3;
                window_gaps_ms.push(gap);
                if broker_pause_in(&run.broker_pauses, start, start + length) == 0.0 {
                    window_gaps_quiet_ms.push(gap);
                }
                window_append_gaps_ms
                    .push(longest_gap(&appended, start, start + length) as f64 / 1e3);
                start += length;
            }
        }
    }
    Report {
        delivery,
        swaps,
        baseline: Baseline {
            median_gap_us: percentile(&gaps, 0.5),
            p99_gap_ms: percentile(&gaps, 0.99) / 1e3,
            max_gap_ms: gaps.last().copied().unwrap_or(f64::NAN) / 1e3,
            window_gaps_ms: sorted(window_gaps_ms),
            window_append_gaps_ms: sorted(window_append_gaps_ms),
            window_gaps_quiet_ms: sorted(window_gaps_quiet_ms),
            window_ms,
            latency_ms: [
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                latencies.last().copied().unwrap_or(f64::NAN),
            ],
        },
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"))
}

fn print_report(args: &Args, run: &Run, report: &Report) {
    let n = report.swaps.len();
    println!(
        "Hot swap under load: {n} swaps (plugin file replaced by rename, alternating tag-b / tag-a{}), \
         {} records/s offered ({PARTITIONS} partitions, {KEY_LEN}-byte keys, {VALUE_LEN}-byte values), \
         swaps at least {} ms apart, {} s of load before the first and {} s after the last window.\n",
        match (args.new_build_each_swap, args.precompile) {
            (true, true) =>
                ", every candidate a new build, compiled into the cache before its file change",
            (true, false) => ", every candidate a new build that compiles",
            (false, true) => ", candidates compiled into the cache before their file change",
            (false, false) => "",
        },
        args.rate,
        args.interval_ms,
        args.settle_s,
        args.tail_s
    );

    println!(
        "| swap | to | file change → first new-tag output ms | → registry `since` ms | → worker adopted (log) ms | last old → first new output ms | longest output gap ±{0} ms around it | **pause: longest output gap from the file change to {0} ms after the first new-tag output** | same-length control window {1} ms before the file change | longest output gap in wide window ms | same, broker append time ms | longest input send gap in wide window ms | max latency in wide window ms | worker adopted new version µs | longest broker GC pause in swap window / control / wide window ms | CPU time stolen by the hypervisor in swap window / control / wide window ms |",
        SWITCH_US / 1000,
        CONTROL_LEAD_US / 1000
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, swap) in report.swaps.iter().enumerate() {
        println!(
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {} | {:.0} / {} / {:.0} |",
            i + 1,
            swap.to as char,
            if swap.version_ok {
                ""
            } else {
                " (unexpected version in /status)"
            },
            optional(swap.live_ms),
            optional(swap.registry_ms),
            optional(swap.adopted_ms),
            optional(swap.switch_gap_ms),
            optional(swap.near_gap_ms),
            optional(swap.swap_gap_ms),
            optional(swap.control_gap_ms),
            swap.gap_ms,
            swap.append_gap_ms,
            swap.send_gap_ms,
            swap.max_latency_ms,
            swap.adopt_us
                .map_or_else(|| "–".to_string(), |us| format!("{us:.0}")),
            if run.broker_pauses.is_empty() {
                "–".to_string()
            } else {
                format!(
                    "{:.1} / {} / {:.1}",
                    swap.swap_broker_pause_ms,
                    if swap.control_gap_ms.is_some() {
                        format!("{:.1}", swap.control_broker_pause_ms)
                    } else {
                        "–".to_string()
                    },
                    swap.broker_pause_ms
                )
            },
            swap.swap_stolen_ms,
            if swap.control_gap_ms.is_some() {
                format!("{:.0}", swap.control_stolen_ms)
            } else {
                "–".to_string()
            },
            swap.stolen_ms
        );
    }

    let optimized: Vec<(usize, &SwapResult)> = report
        .swaps
        .iter()
        .enumerate()
        .filter(|(_, swap)| swap.optimized_ms.is_some())
        .collect();
    if !optimized.is_empty() {
        println!(
            "\nVersions that went live on baseline code, and moved to Cranelift's once it was compiled in the background:\n"
        );
        println!(
            "| swap | file change → moved to optimized code (log) ms | window: first new-tag output to {} ms after the move, ms | longest output gap in it ms | same-length control window before the file change ms |",
            SWITCH_US / 1000
        );
        println!("|---:|---:|---:|---:|---:|");
        for (i, swap) in optimized {
            println!(
                "| {} | {} | {} | {} | {} |",
                i + 1,
                optional(swap.optimized_ms),
                optional(swap.optimize_window_ms),
                optional(swap.optimize_gap_ms),
                optional(swap.optimize_control_gap_ms),
            );
        }
    }

    let column = |f: &dyn Fn(&SwapResult) -> Option<f64>| {
        sorted(report.swaps.iter().filter_map(f).collect::<Vec<_>>())
    };
    let live = column(&|s| s.live_ms);
    let registry = column(&|s| s.registry_ms);
    let adopted = column(&|s| s.adopted_ms);
    let switch_gap = column(&|s| s.switch_gap_ms);
    let near_gap = column(&|s| s.near_gap_ms);
    let gap = column(&|s| Some(s.gap_ms));
    let append_gap = column(&|s| Some(s.append_gap_ms));
    let latency = column(&|s| Some(s.max_latency_ms));
    let adopt = column(&|s| s.adopt_us);
    // Undisturbed: no broker GC pause and no stolen CPU time in the window.
    let quiet_gap =
        column(&|s| Some(s.gap_ms).filter(|_| s.broker_pause_ms == 0.0 && s.stolen_ms == 0.0));
    let swap_gap = column(&|s| s.swap_gap_ms);
    let control_gap = column(&|s| s.control_gap_ms);
    let quiet_swap_gap = column(&|s| {
        s.swap_gap_ms
            .filter(|_| s.swap_broker_pause_ms == 0.0 && s.swap_stolen_ms == 0.0)
    });
    let quiet_control_gap = column(&|s| {
        s.control_gap_ms
            .filter(|_| s.control_broker_pause_ms == 0.0 && s.control_stolen_ms == 0.0)
    });
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    println!(
        "\nOver {n} swaps (nearest-rank percentiles: with fewer than 100 swaps p99 is the maximum):\n"
    );
    println!("| per swap, ms | p50 | p99 | max | target | |");
    println!("|---|---:|---:|---:|---|---|");
    let row = |name: &str, values: &[f64], target: &str, met: Option<bool>| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {target} | {} |",
            percentile(values, 0.5),
            percentile(values, 0.99),
            values.last().copied().unwrap_or(f64::NAN),
            met.map(verdict).unwrap_or("")
        );
    };
    let live_met = live.len() == n && percentile(&live, 0.99) < 1000.0;
    row(
        "file change → live (first new-tag output)",
        &live,
        "< 1000",
        Some(live_met),
    );
    row("file change → registry `since`", &registry, "", None);
    row("file change → worker adopted (log)", &adopted, "", None);
    let pause_met = swap_gap.len() == n && percentile(&swap_gap, 0.99) < 20.0;
    row(
        &format!(
            "processing pause: longest output gap from the file change to {} ms after the first new-version output",
            SWITCH_US / 1000
        ),
        &swap_gap,
        "p99 < 20",
        Some(pause_met),
    );
    let optimize_gap = column(&|s| s.optimize_gap_ms);
    if !optimize_gap.is_empty() {
        row(
            &format!(
                "versions live on baseline code ({}): longest output gap from the first new-version output to {} ms after the move to optimized code",
                optimize_gap.len(),
                SWITCH_US / 1000
            ),
            &optimize_gap,
            "",
            None,
        );
    }
    row(
        &format!(
            "control: the same measure over a window as long, {} ms before the file change ({} windows)",
            CONTROL_LEAD_US / 1000,
            control_gap.len()
        ),
        &control_gap,
        "",
        None,
    );
    row(
        &format!(
            "longest output gap in the wide window ({} ms before the file change to {} ms after the first new-version output)",
            WINDOW_BEFORE_US / 1000,
            WINDOW_AFTER_US / 1000
        ),
        &gap,
        "",
        None,
    );
    row(
        "last old-version output → first new-version output",
        &switch_gap,
        "",
        None,
    );
    row(
        &format!(
            "longest output gap within {} ms of the first new-version output",
            SWITCH_US / 1000
        ),
        &near_gap,
        "",
        None,
    );
    row(
        "longest gap by broker append time (1 ms resolution)",
        &append_gap,
        "",
        None,
    );
    row("max end-to-end latency in window", &latency, "", None);
    println!(
        "| worker adopts the new version (takes the instance started ahead, or starts one), µs | {:.0} | {:.0} | {:.0} | | |",
        percentile(&adopt, 0.5),
        percentile(&adopt, 0.99),
        adopt.last().copied().unwrap_or(f64::NAN)
    );
    if !run.broker_pauses.is_empty() || !run.stolen.is_empty() {
        row(
            &format!(
                "processing pause in the {} swap windows without a broker GC pause or stolen CPU time",
                quiet_swap_gap.len()
            ),
            &quiet_swap_gap,
            "",
            None,
        );
        row(
            &format!(
                "control, in the {} control windows without either",
                quiet_control_gap.len()
            ),
            &quiet_control_gap,
            "",
            None,
        );
        row(
            &format!(
                "longest output gap in the {} wide windows without either",
                quiet_gap.len()
            ),
            &quiet_gap,
            "",
            None,
        );
    }

    let b = &report.baseline;
    println!(
        "\nBaseline: steady load outside the swap windows, after {} s of warm-up:\n",
        WARM_UP_US / 1_000_000
    );
    println!("| outside swap windows | value |");
    println!("|---|---:|");
    println!(
        "| median gap between consecutive output receipts | {:.0} µs |",
        b.median_gap_us
    );
    println!(
        "| p99 / max gap between consecutive receipts | {:.1} / {:.1} ms |",
        b.p99_gap_ms, b.max_gap_ms
    );
    println!(
        "| longest output gap per swap-free {:.0} ms window ({} windows): p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        b.window_ms,
        b.window_gaps_ms.len(),
        percentile(&b.window_gaps_ms, 0.5),
        percentile(&b.window_gaps_ms, 0.99),
        b.window_gaps_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| same, broker append time: p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        percentile(&b.window_append_gaps_ms, 0.5),
        percentile(&b.window_append_gaps_ms, 0.99),
        b.window_append_gaps_ms.last().copied().unwrap_or(f64::NAN)
    );
    if !run.broker_pauses.is_empty() {
        println!(
            "| longest output gap per swap-free window without a broker GC pause ({} windows): p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
            b.window_gaps_quiet_ms.len(),
            percentile(&b.window_gaps_quiet_ms, 0.5),
            percentile(&b.window_gaps_quiet_ms, 0.99),
            b.window_gaps_quiet_ms.last().copied().unwrap_or(f64::NAN)
        );
        let pauses = sorted(
            run.broker_pauses
                .iter()
                .map(|(start, end)| (end - start) as f64 / 1e3)
                .collect(),
        );
        println!(
            "| broker GC pauses during the load ({} in {:.0} s): p50 / max | {:.1} / {:.1} ms |",
            pauses.len(),
            (run.load_until_us - run.load_from_us) as f64 / 1e6,
            percentile(&pauses, 0.5),
            pauses.last().copied().unwrap_or(f64::NAN)
        );
    }
    let stolen = run.stolen.iter().map(|(_, us)| us).sum::<i64>() as f64 / 1e3;
    println!(
        "| CPU time stolen by the hypervisor during the load (all CPUs; growth seen {} times) | {:.0} ms in {:.0} s |",
        run.stolen.len(),
        stolen,
        (run.load_until_us - run.load_from_us) as f64 / 1e6
    );
    println!(
        "| the local broker's CPU priority | {} |",
        run.broker_priority
            .as_deref()
            .unwrap_or("unknown (no broker.pid)")
    );
    println!(
        "| end-to-end latency (send → receipt) p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        b.latency_ms[0], b.latency_ms[1], b.latency_ms[2]
    );

    let d = &report.delivery;
    println!("\n| delivery | count |");
    println!("|---|---:|");
    println!(
        "| records sent (input topic end offsets: {}) | {} |",
        run.input_total, d.sent
    );
    println!(
        "| outputs received (output topic end offsets: {}) | {} |",
        run.output_total, d.received
    );
    println!("| distinct inputs among them | {} |", d.distinct);
    println!("| missing | {} |", d.missing);
    println!("| duplicated | {} |", d.duplicated);
    println!("| out of order within a partition | {} |", d.out_of_order);
    println!(
        "| without exactly one `tag: A` or `tag: B` | {} |",
        d.without_one_tag
    );
    println!(
        "| without the `{PROVENANCE_HEADER}` header | {} |",
        d.without_provenance
    );
    if d.exactly_once() {
        println!("\nEvery input arrived exactly once.");
    } else {
        println!(
            "\n**!!! DELIVERY CHECK FAILED: {} sent, {} received, {} distinct, {} missing, {} duplicated !!!**",
            d.sent, d.received, d.distinct, d.missing, d.duplicated
        );
    }
    let (swaps, rejections, rollbacks) = run.final_counts;
    let versions_ok = report.swaps.iter().all(|s| s.version_ok);
    println!(
        "Registry at the end: {swaps} swaps, {rejections} rejections, {rollbacks} rollbacks{}. \
         sluice exited {} after SIGTERM{}.",
        if versions_ok {
            "; after every swap `GET /status` showed the expected version"
        } else {
            "; **`GET /status` showed an unexpected version after some swap**"
        },
        run.host_exit,
        if run.host_exit == 0 {
            ""
        } else {
            " (**expected 0**)"
        }
    );
    if run.not_append_time > 0 {
        println!(
            "**{} outputs carried no broker append time; the append-time gaps are not meaningful.**",
            run.not_append_time
        );
    }
    println!(
        "\nSwap window: from the file change to {} ms after the first new-tag output; its control \
         window is as long and ends {} ms before the file change (left out when it would start \
         within {} ms of the previous swap window's end). Wide window: \
         from {} ms before the file change to {} ms after the first new-tag output. \
         Most input records due at once waiting to be sent: {}.\n\n\
         Knobs: host defaults (`batch_max_records` = 1000, the host producer's librdkafka \
         `linger.ms` default), checkpoint interval 1000 ms; input producer `linger.ms` = {}, \
         idempotent; output consumer `fetch.min.bytes` = 1, `fetch.wait.max.ms` = {}; \
         output topic `message.timestamp.type` = LogAppendTime.",
        SWITCH_US / 1000,
        CONTROL_LEAD_US / 1000,
        CONTROL_CLEARANCE_US / 1000,
        WINDOW_BEFORE_US / 1000,
        WINDOW_AFTER_US / 1000,
        run.produced.max_backlog,
        args.producer_linger_ms,
        args.consumer_fetch_wait_ms
    );
}

#[cfg(test)]
mod tests {
    use super::{CONTROL_CLEARANCE_US, CONTROL_LEAD_US, control_window, longest_gap};

    #[test]
    fn a_control_window_is_as_long_as_its_swap_window_and_ends_before_the_file_change() {
        let changed = 10_000_000;
        let window = (changed, changed + 60_000);
        assert_eq!(
            control_window(window, 0),
            Some((
                changed - CONTROL_LEAD_US - 60_000,
                changed - CONTROL_LEAD_US
            ))
        );
    }

    #[test]
    fn a_control_window_never_reaches_into_the_previous_swap() {
        let changed = 10_000_000;
        let window = (changed, changed + 60_000);
        let start = changed - CONTROL_LEAD_US - 60_000;
        assert!(control_window(window, start - CONTROL_CLEARANCE_US).is_some());
        assert_eq!(
            control_window(window, start - CONTROL_CLEARANCE_US + 1),
            None
        );
        // A long swap window (a first-time compile) needs as long a quiet stretch.
        let long = changed - CONTROL_LEAD_US;
        assert_eq!(control_window((changed, changed + long), 0), None);
    }

    #[test]
    fn steal_time_is_the_eighth_value_of_the_cpu_line() {
        let line = "cpu  1452876 15605 279950 1193482 19263 0 29390 17354 0 0";
        assert_eq!(super::steal_ticks(line), Some(17354));
        assert_eq!(super::steal_ticks("cpu0 1 2 3 4 5 6 7 8 9 10"), None);
        assert_eq!(super::steal_ticks("cpu  1 2 3"), None);
    }

    #[test]
    fn stolen_time_counts_growth_seen_in_the_window_or_just_after() {
        let stolen = [(1_000, 10_000), (5_000, 20_000), (9_000, 10_000)];
        assert_eq!(super::stolen_in(&stolen, 4_000, 6_000), 20.0);
        assert_eq!(super::stolen_in(&stolen, 0, 6_000), 30.0);
        // Seen 1 ms after the window ends: within one sample interval.
        assert_eq!(super::stolen_in(&stolen, 6_000, 8_000), 10.0);
        // None: zero, printed without a sign.
        assert_eq!(
            format!("{:.0}", super::stolen_in(&stolen, 1_500, 2_000)),
            "0"
        );
    }

    #[test]
    fn the_broker_priority_is_read_from_its_stat_and_autogroup() {
        // A command name with a space and a parenthesis; nice is 19th: -10 here.
        let stat = "24004 (java (x) y) S 1 24004 24004 0 -1 4194560 1 2 3 4 5 6 7 8 10 -10 90 0";
        assert_eq!(
            super::describe_priority(stat, Some("/autogroup-179 nice -10\n")),
            "nice -10, autogroup nice -10"
        );
        assert_eq!(super::describe_priority(stat, None), "nice -10");
        assert_eq!(super::describe_priority("garbled", None), "nice ?");
    }

    #[test]
    fn the_longest_gap_counts_the_stretches_reaching_past_the_window_edges() {
        let times = [100, 130, 200, 260];
        // The stretch from 100 to 130 is clipped to the window's start at 110.
        assert_eq!(longest_gap(&times, 110, 300), 70);
        assert_eq!(longest_gap(&times, 0, 300), 100);
        assert_eq!(longest_gap(&times, 140, 190), 50);
    }

    #[test]
    fn a_build_section_is_a_custom_section_appended_to_the_component() {
        let component = b"\0asm\x0d\0\x01\0";
        let built = super::with_build_section(component, 12);
        let name = b"sluice-bench-build";
        let mut expected = component.to_vec();
        // id 0, then the size of name length + name + payload, then those.
        expected.extend([0, (1 + name.len() + 2) as u8, name.len() as u8]);
        expected.extend(name);
        expected.extend(b"12");
        assert_eq!(built, expected);
    }
}
