//! Scale-out across hosts: `sluice` processes in one consumer group share a
//! 12-partition input while a writer keeps records coming, through hosts added, one
//! killed, one added back and a scale-down to one, with the stateful `stats` plugin.
//! Exactly-once ends with every input once and the statistics of every key equal to
//! those computed from the input; at-least-once with every input at least once.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::*;

const PARTITIONS: i32 = 12;
/// Keys (tickers) in the input: enough that every partition gets some.
const KEYS: usize = 48;
/// Records per second the writer sends for the whole run.
const RATE: usize = 2_000;

/// The key of input record `seq`: keys take turns in a scrambled order, so every key
/// (and every partition) gets records all the time.
fn ticker(seq: usize) -> String {
    format!("K{:02}", (seq * 7 + seq / 13) % KEYS)
}

/// Input record `seq`: a stock record keyed by ticker, in the partition a Java client
/// picks for its key, numbered by `seq`, with a price deterministic per `seq`.
fn stock(seq: usize) -> TestRecord {
    let ticker = ticker(seq);
    let key = format!(r#"{{"ticker": "{ticker}"}}"#);
    let price = ((seq as u64).wrapping_mul(2_654_435_761) % 10_000) as f64 / 100.0;
    TestRecord {
        partition: java_partition(key.as_bytes(), PARTITIONS),
        key: Some(key.into_bytes()),
        value: Some(
            format!(
                r#"{{"event_time": "2026-12-03T03:00:00", "ticker": "{ticker}", "price": {price:?}, "seq": {seq}}}"#
            )
            .into_bytes(),
        ),
        headers: Vec::new(),
        timestamp: None,
    }
}

/// The statistics the plugin reports: count, min, max and mean of the prices.
type Stats = (u64, f64, f64, f64);

/// What the plugin must report last for each ticker after `count` inputs: computed
/// in `seq` order, which is each partition's order (a ticker lives in one partition).
fn reference_stats(count: usize) -> BTreeMap<String, Stats> {
    let mut sums: BTreeMap<String, (u64, f64, f64, f64)> = BTreeMap::new();
    for seq in 0..count {
        let value: serde_json::Value = serde_json::from_slice(&stock(seq).value.unwrap()).unwrap();
        let price = value["price"].as_f64().unwrap();
        let entry = sums.entry(ticker(seq)).or_insert((0, price, price, 0.0));
        entry.0 += 1;
        entry.1 = entry.1.min(price);
        entry.2 = entry.2.max(price);
        entry.3 += price;
    }
    sums.into_iter()
        .map(|(ticker, (n, min, max, sum))| (ticker, (n, min, max, sum / n as f64)))
        .collect()
}

/// A writer that sends `stock(0)`, `stock(1)`, ... at `RATE` until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<usize>,
}

impl Load {
    fn start(topic: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let producer = producer();
            let started = Instant::now();
            let mut seq = 0;
            while !stopping.load(Ordering::SeqCst) {
                let due = started + Duration::from_secs_f64(seq as f64 / RATE as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                send(&producer, &topic, &stock(seq));
                seq += 1;
            }
            rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();
            seq
        });
        Load { stop, thread }
    }

    /// Whether the writer is still running (it must be, through every change).
    fn running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stops the writer; returns how many records it wrote.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// One host of the group: the process and its admin endpoint's address.
struct Host {
    name: &'static str,
    admin: String,
    process: Sluice,
}

impl Host {
    /// Starts a host with its own instance name (exactly-once needs a distinct
    /// transactional id per host) and admin endpoint.
    fn start(dir: &Path, config: &str, name: &'static str) -> Host {
        let admin = free_address();
        let process = Sluice::start(
            dir,
            &[
                "run",
                "--config",
                config,
                "--instance",
                name,
                "--admin",
                &admin,
            ],
        );
        Host {
            name,
            admin,
            process,
        }
    }

    /// Inputs this run of the host has read; 0 until its admin endpoint answers.
    fn records_in(&self) -> f64 {
        ureq::get(format!("http://{}/metrics", self.admin))
            .call()
            .ok()
            .and_then(|mut response| response.body_mut().read_to_string().ok())
            .map_or(0.0, |text| {
                crate::passthrough::sample(&text, "numRecordsIn")
            })
    }

    /// Asks the host to stop; it must exit 0 within the documented stop budget (25 s).
    fn stop(mut self) {
        self.process.signal(libc::SIGTERM);
        let status = self.process.wait(Duration::from_secs(30));
        assert!(
            status.success(),
            "host {} exited {status} after SIGTERM:\n{}",
            self.name,
            self.process.log()
        );
    }
}

/// Waits until every host in `hosts` has read more inputs than it had when called:
/// they all process at the same time. Fails if one of them exits.
fn wait_all_processing(what: &str, hosts: &mut [&mut Host]) {
    let before: Vec<f64> = hosts.iter().map(|h| h.records_in()).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for host in hosts.iter_mut() {
            if let Some(status) = host.process.exited() {
                panic!(
                    "host {} exited ({status}) while waiting for {what}:\n{}",
                    host.name,
                    host.process.log()
                );
            }
        }
        let now: Vec<f64> = hosts.iter().map(|h| h.records_in()).collect();
        if now.iter().zip(&before).all(|(now, before)| now > before) {
            let names: Vec<String> = hosts
                .iter()
                .zip(&now)
                .map(|(h, n)| format!("{}={n}", h.name))
                .collect();
            eprintln!("{what}: records in per host {}", names.join(" "));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: records in {before:?} then {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the group's committed offset of every partition of `input` is past
/// `from`: every partition is being processed by the hosts still running.
fn wait_every_partition_past(
    what: &str,
    group: &str,
    input: &str,
    from: &BTreeMap<i32, i64>,
    hosts: &mut [&mut Host],
) {
    wait_until(what, Duration::from_secs(90), || {
        for host in hosts.iter_mut() {
            if let Some(status) = host.process.exited() {
                panic!(
                    "host {} exited ({status}) while waiting for {what}:\n{}",
                    host.name,
                    host.process.log()
                );
            }
        }
        let now = committed(group, input);
        (0..PARTITIONS)
            .all(|p| now.get(&p).copied().unwrap_or(0) > from.get(&p).copied().unwrap_or(0))
    });
}

/// Runs the whole scenario in `delivery` mode; returns the sink topic and how many
/// records the writer wrote.
fn scale_out_and_in(delivery: &str) -> (String, usize) {
    let keyed: HashSet<i32> = (0..KEYS).map(|seq| stock(seq).partition).collect();
    assert_eq!(
        keyed.len(),
        PARTITIONS as usize,
        "every partition gets keys"
    );
    let (input, output, group) = (unique("sc-in"), unique("sc-out"), unique("sc-g"));
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    let dir = workdir();
    // A short session: the group gives a killed host's partitions to the others
    // after 6 s instead of the default 45 s.
    let text = config_text(
        &input,
        &output,
        &group,
        "",
        "",
        &format!(
            "[source.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n[plugin]\npath = \"{}\"\n",
            test_plugin("sluice_plugin_stats").display()
        ),
    );
    let text = with_top_level(&text, &format!("delivery = \"{delivery}\""));
    let config = write_file(dir.path(), &format!("{}.toml", unique("scale")), &text);
    let config = config.to_str().unwrap();
    let started = Instant::now();
    let load = Load::start(input.clone());

    let mut h1 = Host::start(dir.path(), config, "h1");
    wait_all_processing("one host", &mut [&mut h1]);

    // Two more join: the group spreads the 12 partitions over three processes.
    let mut h2 = Host::start(dir.path(), config, "h2");
    let mut h3 = Host::start(dir.path(), config, "h3");
    wait_all_processing("three hosts", &mut [&mut h1, &mut h2, &mut h3]);

    // One dies without a word: the others take its partitions (and, exactly-once,
    // read past its open transaction once the broker aborted it).
    h2.process.signal(libc::SIGKILL);
    h2.process.wait(Duration::from_secs(10));
    let at_kill = committed(&group, &input);
    assert!(
        load.running(),
        "the writer must still be writing at the kill"
    );
    wait_every_partition_past(
        "the two survivors to process every partition",
        &group,
        &input,
        &at_kill,
        &mut [&mut h1, &mut h3],
    );

    // Added back under the same instance name, as a StatefulSet replaces a pod: it
    // fences and aborts whatever its previous run left open at once.
    let mut h2 = Host::start(dir.path(), config, "h2");
    wait_all_processing("three hosts again", &mut [&mut h1, &mut h2, &mut h3]);

    // Scale down to one with graceful stops: each commits and leaves the group.
    h3.stop();
    h2.stop();
    let at_scale_down = committed(&group, &input);
    wait_every_partition_past(
        "the last host to process every partition",
        &group,
        &input,
        &at_scale_down,
        &mut [&mut h1],
    );
    assert!(
        load.running(),
        "the writer must still be writing at the scale-down"
    );

    let written = load.stop();
    h1.process.wait_until(
        "the last host to commit the whole input",
        Duration::from_secs(120),
        || committed(&group, &input) == end_offsets(&input),
    );
    h1.stop();
    eprintln!(
        "{delivery}: {written} records at {RATE}/s through 1, 3, 2, 3 and 1 hosts in {:?}",
        started.elapsed()
    );
    (output, written)
}

/// The sink's records, each parsed: (partition, seq, ticker, statistics).
fn read_outputs(output: &str, count: usize) -> Vec<(i32, usize, String, Stats)> {
    read_all(output, count, Duration::from_secs(60))
        .iter()
        .map(|record| {
            let value: serde_json::Value = serde_json::from_slice(record.value.as_deref().unwrap())
                .unwrap_or_else(|e| panic!("output {:?} is not JSON: {e}", record.value_text()));
            let number = |field: &str| {
                value[field]
                    .as_f64()
                    .unwrap_or_else(|| panic!("output {value} has no number `{field}`"))
            };
            (
                record.partition,
                number("seq") as usize,
                value["ticker"].as_str().unwrap().to_string(),
                (
                    number("count") as u64,
                    number("min"),
                    number("max"),
                    number("mean"),
                ),
            )
        })
        .collect()
}

/// Fails when an input of `0..count` is missing from `outputs` or an output is no
/// input's; returns the inputs written more than once.
fn check_none_missing(outputs: &[(i32, usize, String, Stats)], count: usize) -> Vec<usize> {
    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    for (partition, seq, _, _) in outputs {
        assert!(*seq < count, "an output for seq {seq}, never written");
        assert_eq!(
            *partition,
            stock(*seq).partition,
            "seq {seq} moved partition"
        );
        if !seen.insert(*seq) {
            duplicates.push(*seq);
        }
    }
    let missing: Vec<usize> = (0..count).filter(|seq| !seen.contains(seq)).collect();
    assert!(
        missing.is_empty(),
        "{} inputs missing from the sink, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    duplicates
}

#[test]
fn exactly_once_scale_out_kill_and_scale_in_keep_every_record_once_and_state_exact() {
    let (output, count) = scale_out_and_in("exactly-once");
    let outputs = read_outputs(&output, count);
    let duplicates = check_none_missing(&outputs, count);
    assert!(
        duplicates.is_empty(),
        "exactly-once wrote {} duplicates, first {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );
    assert_eq!(outputs.len(), count, "outputs read back");

    // In order within each partition, and each key's last statistics are those of
    // the whole input: state moved with its partitions through every change.
    let mut last_seq: BTreeMap<i32, usize> = BTreeMap::new();
    let mut last_stats: BTreeMap<String, Stats> = BTreeMap::new();
    for (partition, seq, ticker, stats) in outputs {
        if let Some(previous) = last_seq.insert(partition, seq) {
            assert!(
                seq > previous,
                "partition {partition}: seq {seq} after {previous}"
            );
        }
        last_stats.insert(ticker, stats);
    }
    assert_eq!(
        last_stats,
        reference_stats(count),
        "last statistics per key"
    );
    eprintln!("exactly-once: {count} inputs, 0 missing, 0 duplicates, {KEYS} keys exact");
}

#[test]
fn at_least_once_scale_out_kill_and_scale_in_lose_nothing() {
    let (output, count) = scale_out_and_in("at-least-once");
    let outputs = read_outputs(&output, count);
    let duplicates = check_none_missing(&outputs, count);
    eprintln!(
        "at-least-once: {count} inputs, 0 missing, {} duplicates (allowed)",
        duplicates.len()
    );
}
