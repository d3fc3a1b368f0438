//! Runs the host under load, swaps its plugin, and collects what the output
//! consumer received and what the host's admin endpoint answered meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{
    Args, KEY_LEN, PROVENANCE_HEADER, Produced, Received, Run, STEAL_SAMPLE, STOP_TIMEOUT,
    SWAP_TIMEOUT, StatusSample, Swap, TAG_HEADER, VALUE_LEN, WINDOW_AFTER_US, WINDOW_BEFORE_US,
    now_us, tag_index,
};
use crate::kafka::{Kafka, PARTITIONS, send_waiting};

/// How long the optimizing compile of a cold Python candidate may take.
const COLD_TIMEOUT: Duration = Duration::from_secs(600);
/// The tag a cold Python candidate's outputs stand for (they carry none).
pub const PYTHON: u8 = b'P';

/// The plugin given, or the one cargo builds for wasm32-wasip2 beside this program's target dir.
pub fn read_plugin(exe: &Path, given: Option<PathBuf>, name: &str) -> anyhow::Result<Vec<u8>> {
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

/// The host's compilation cache.
#[derive(Debug, Clone, Copy)]
pub enum HostCache<'a> {
    Off,
    /// This directory, which `sluice plugin inspect` fills before a swap.
    Shared(&'a Path),
    /// The default location under this empty `XDG_CACHE_HOME`.
    Empty(&'a Path),
}

/// `sluice run` as a child process; killed and reaped on drop if still running.
pub struct Host {
    pub child: std::process::Child,
    pub log: PathBuf,
    pub exited: bool,
}

impl Host {
    fn spawn(
        sluice: &Path,
        config: &Path,
        admin: &str,
        log: PathBuf,
        log_level: &str,
        cache: HostCache<'_>,
    ) -> anyhow::Result<Self> {
        let log_file =
            File::create(&log).with_context(|| format!("creating log {}", log.display()))?;
        let mut command = Command::new(sluice);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--admin", admin])
            .env_remove("BOOTSTRAP_SERVERS")
            .env("RUST_LOG", log_level)
            .env_remove("SLUICE_ADMIN")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file);
        match cache {
            // Unless precompiled, each run's first swap to tag-b compiles it, as a
            // never-seen version would.
            HostCache::Off => command.env("SLUICE_CACHE_DIR", "off"),
            HostCache::Shared(dir) => command.env("SLUICE_CACHE_DIR", dir),
            // The default cache, under an empty XDG_CACHE_HOME: as on a new machine.
            HostCache::Empty(dir) => command
                .env_remove("SLUICE_CACHE_DIR")
                .env("XDG_CACHE_HOME", dir),
        };
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", sluice.display()))?;
        Ok(Host {
            child,
            log,
            exited: false,
        })
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

/// What the consumer thread shares while it runs.
#[derive(Default)]
pub struct Progress {
    pub received: AtomicU64,
    /// Receipt time of the latest output with tag A, and with tag B.
    pub last_tag_at: [AtomicI64; 2],
    pub stop: AtomicBool,
}

pub fn consume(
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
pub fn value(seq: u64, sent_us: i64) -> [u8; VALUE_LEN] {
    let mut value = [b'x'; VALUE_LEN];
    let prefix = format!("{seq:012} {sent_us:016} ");
    value[..prefix.len()].copy_from_slice(prefix.as_bytes());
    value
}

pub fn parse_value(value: &[u8]) -> Option<(u64, i64)> {
    let seq = std::str::from_utf8(value.get(..12)?).ok()?.parse().ok()?;
    let sent = std::str::from_utf8(value.get(13..29)?).ok()?.parse().ok()?;
    Some((seq, sent))
}

/// Writes records round-robin over the partitions at `rate` per second until `stop`.
/// Every record due is sent, then the thread sleeps briefly, so the rate holds on
/// average even when the thread is descheduled.
pub fn produce(
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

#[allow(clippy::too_many_arguments)]
pub fn run(
    args: &Args,
    kafka: &Kafka,
    sluice: &Path,
    plugins: &[Vec<u8>; 2],
    python: Option<&[u8]>,
    workdir: &Path,
    name: &str,
    input: &str,
    output: &str,
) -> anyhow::Result<Run> {
    // The host watches the plugin's directory and the one above it; neither holds
    // anything else, so only the swaps themselves wake the watcher.
    let plugin_dir = workdir.join("plugins").join("live");
    let cache = args.precompile.then(|| workdir.join("compiled"));
    let empty_cache = workdir.join("xdg-cache");
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
        match (&cache, python) {
            (Some(dir), _) => HostCache::Shared(dir),
            (None, Some(_)) => HostCache::Empty(&empty_cache),
            (None, None) => HostCache::Off,
        },
    )?;
    let result = (|| -> anyhow::Result<Run> {
        eprintln!("starting sluice (log: {})...", host.log.display());
        wait_until_assigned(&mut host, &admin, input, Duration::from_secs(60))?;

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
        let sampler = {
            let (stop, admin, every) = (stop_producer.clone(), admin.clone(), args.status_poll());
            std::thread::spawn(move || sample_status(&admin, every, &stop))
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
            let swaps = match python {
                Some(python) => vec![swap_cold(&mut host, &plugin, python, &admin)?],
                None => swap_all(
                    args,
                    &mut host,
                    &progress,
                    &plugin,
                    plugins,
                    &admin,
                    cache.as_deref().map(|cache| (sluice, cache)),
                )?,
            };
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
        let samples = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the admin endpoint sampler panicked"))?;
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
        let counts = get_json(&admin, "/status")?;
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
            adopted_us: adoption_times(&samples),
            optimized_us: optimization_times(&samples),
            adopt_took_us: adopt_durations(&samples),
            samples,
            cold_python: python.is_some(),
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
pub fn swap_all(
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
        let live = get_json(admin, "/status")?;
        let since_us = since_us(&live);
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
pub fn precompile(sluice: &Path, plugin: &Path, cache: &Path) -> anyhow::Result<()> {
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
pub fn with_build_section(component: &[u8], build: usize) -> Vec<u8> {
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

pub fn wait_for_count(
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

/// `GET http://ADMIN/PATH` as JSON.
pub fn get_json(admin: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .get(format!("http://{admin}{path}"))
        .call()
        .with_context(|| format!("GET http://{admin}{path}"))?
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the answer of http://{admin}{path}"))
}

/// When every worker first ran each version: the first sample in which the oldest
/// version any worker runs is that one or later. Exact to the sampling interval.
pub fn adoption_times(samples: &[StatusSample]) -> HashMap<u64, i64> {
    let mut adopted = HashMap::new();
    for sample in samples {
        for version in 2..=sample.workers_version {
            adopted.entry(version).or_insert(sample.at_us);
        }
    }
    adopted
}

/// When `GET /status` first showed each version live on optimized code, for the
/// versions it first showed live on baseline code.
pub fn optimization_times(samples: &[StatusSample]) -> HashMap<u64, i64> {
    let on_baseline: std::collections::HashSet<u64> = samples
        .iter()
        .filter(|s| !s.optimized)
        .map(|s| s.live_version)
        .collect();
    let mut optimized = HashMap::new();
    for sample in samples.iter().filter(|s| s.optimized) {
        if on_baseline.contains(&sample.live_version) {
            optimized.entry(sample.live_version).or_insert(sample.at_us);
        }
    }
    optimized
}

/// How long the workers took to adopt each version (the longest of them, µs), from the
/// samples of `GET /status` (`workers[].adopt_us`).
pub fn adopt_durations(samples: &[StatusSample]) -> HashMap<u64, f64> {
    let mut took: HashMap<u64, f64> = HashMap::new();
    for sample in samples {
        if let Some(adopt_us) = sample.adopt_us
            && sample.workers_version > 1
        {
            let longest = took.entry(sample.workers_version).or_default();
            *longest = longest.max(adopt_us as f64);
        }
    }
    took
}

/// Waits until the host's consumer reports every partition of `topic` (`partitions` of
/// `GET /api/console`, from the consumer's statistics): the load then reaches a host
/// that reads it.
fn wait_until_assigned(
    host: &mut Host,
    admin: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        host.check_running()?;
        let assigned = get_json(admin, "/api/console").ok().map_or(0, |console| {
            console["partitions"].as_array().map_or(0, |partitions| {
                partitions
                    .iter()
                    .filter(|p| p["topic"].as_str() == Some(topic))
                    .count()
            })
        });
        if assigned >= PARTITIONS as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the host reported {assigned} of {PARTITIONS} partitions of `{topic}` in GET /api/console within {timeout:?}; see {}",
                host.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `GET /status` and `GET /ready` every `every` until `stop`.
fn sample_status(admin: &str, every: Duration, stop: &AtomicBool) -> Vec<StatusSample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if let (Ok(status), Ok(ready)) = (get_json(admin, "/status"), get_json(admin, "/ready")) {
            let workers_version = status["workers"]
                .as_array()
                .and_then(|workers| workers.iter().filter_map(|w| w["version"].as_u64()).min())
                .unwrap_or_default();
            let adopt_us = status["workers"].as_array().and_then(|workers| {
                workers
                    .iter()
                    .filter(|w| w["version"].as_u64() == Some(workers_version))
                    .filter_map(|w| w["adopt_us"].as_u64())
                    .max()
            });
            let turn_in_progress_ms = ready["workers"].as_array().and_then(|workers| {
                workers
                    .iter()
                    .filter_map(|w| w["last_turn_ms_ago"].as_u64())
                    .max()
            });
            samples.push(StatusSample {
                at_us: now_us(),
                live_version: status["live"]["version"].as_u64().unwrap_or_default(),
                optimized: status["live"]["code"]
                    .as_str()
                    .is_some_and(|code| code.eq_ignore_ascii_case("optimized")),
                workers_version,
                turn_in_progress_ms,
                adopt_us,
            });
        }
        if let Some(rest) = every.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    samples
}

/// Swaps to the cold Python candidate and waits until the host runs it on optimized
/// code: the background compile is over.
fn swap_cold(host: &mut Host, plugin: &Path, python: &[u8], admin: &str) -> anyhow::Result<Swap> {
    let staging = plugin.with_file_name(".plugin.wasm.new");
    std::fs::write(&staging, python).with_context(|| format!("writing {}", staging.display()))?;
    let renamed_us = now_us();
    std::fs::rename(&staging, plugin)
        .with_context(|| format!("renaming {} over {}", staging.display(), plugin.display()))?;
    eprintln!("swapped to the cold Python candidate; waiting for its optimized code...");
    let deadline = Instant::now() + COLD_TIMEOUT;
    let live = loop {
        host.check_running()?;
        let live = get_json(admin, "/status")?;
        let optimized = live["live"]["code"]
            .as_str()
            .is_some_and(|code| code.eq_ignore_ascii_case("optimized"));
        if live["live"]["version"].as_u64() == Some(2) && optimized {
            break live;
        }
        if live["rejections"].as_u64().unwrap_or_default() > 0 {
            bail!(
                "the host rejected the Python candidate; see {}",
                host.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the Python candidate was not live on optimized code within {COLD_TIMEOUT:?}; see {}",
                host.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "the Python candidate runs on optimized code {:.1} s after the file change",
        (now_us() - renamed_us) as f64 / 1e6
    );
    Ok(Swap {
        to: PYTHON,
        renamed_us,
        expected_version: 2,
        status_version: live["live"]["version"].as_u64(),
        since_us: since_us(&live),
    })
}

/// `live.since` of a `GET /status` answer, in µs since the epoch.
fn since_us(status: &serde_json::Value) -> Option<i64> {
    status["live"]["since"]
        .as_str()
        .and_then(|since| chrono::DateTime::parse_from_rfc3339(since).ok())
        .map(|since| since.timestamp_micros())
}

/// The broker's gc log, if one is given or found where scripts/kafka.sh writes it.
pub fn broker_gc_log(given: Option<&Path>) -> Option<PathBuf> {
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
pub fn broker_priority() -> Option<String> {
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
pub fn describe_priority(stat: &str, autogroup: Option<&str>) -> String {
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

/// Reads the machine's steal time (`/proc/stat`, all CPUs) until `stop`, and returns
/// each growth of it: when it was seen and by how many µs. Empty where there is no
/// such counter (not Linux, not a virtual machine).
pub fn sample_steal(stop: &AtomicBool) -> Vec<(i64, i64)> {
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
pub fn steal_ticks(cpu_line: &str) -> Option<i64> {
    let mut fields = cpu_line.split_whitespace();
    (fields.next()? == "cpu").then_some(())?;
    fields.nth(7)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use crate::swap::StatusSample;

    #[test]
    fn steal_time_is_the_eighth_value_of_the_cpu_line() {
        let line = "cpu  1452876 15605 279950 1193482 19263 0 29390 17354 0 0";
        assert_eq!(super::steal_ticks(line), Some(17354));
        assert_eq!(super::steal_ticks("cpu0 1 2 3 4 5 6 7 8 9 10"), None);
        assert_eq!(super::steal_ticks("cpu  1 2 3"), None);
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

    fn sample(
        at_us: i64,
        live_version: u64,
        optimized: bool,
        workers_version: u64,
    ) -> StatusSample {
        StatusSample {
            at_us,
            live_version,
            optimized,
            workers_version,
            turn_in_progress_ms: None,
            adopt_us: None,
        }
    }

    #[test]
    fn a_version_is_adopted_when_the_last_worker_runs_it_and_optimized_once_status_says_so() {
        let samples = [
            sample(10, 1, true, 1),
            sample(20, 2, false, 1),
            sample(30, 2, false, 2),
            sample(40, 3, true, 2),
            sample(50, 3, true, 3),
            sample(60, 2, true, 3),
        ];
        let adopted = super::adoption_times(&samples);
        assert_eq!(adopted.get(&2), Some(&30));
        assert_eq!(adopted.get(&3), Some(&50));
        assert_eq!(adopted.get(&1), None);
        // Version 3 was never seen on baseline code: not a version that moved.
        let optimized = super::optimization_times(&samples);
        assert_eq!(optimized.get(&2), Some(&60));
        assert_eq!(optimized.get(&3), None);
    }

    #[test]
    fn adoption_durations_are_the_longest_a_worker_took_for_each_version() {
        let sample = |workers_version, adopt_us| StatusSample {
            at_us: 0,
            live_version: workers_version,
            optimized: false,
            workers_version,
            turn_in_progress_ms: None,
            adopt_us,
        };
        let samples = [
            sample(1, Some(0)),
            sample(2, Some(900)),
            sample(2, Some(1234)),
            sample(3, None),
        ];
        let took = super::adopt_durations(&samples);
        assert_eq!(took.get(&2), Some(&1234.0));
        assert_eq!(took.get(&1), None);
        assert_eq!(took.len(), 1);
    }
}
