//! Delivery guarantees and keyed state: the stateful `stats` plugin through SIGKILLs
//! (exactly-once and at-least-once), a rebalance between two hosts, a zombie host,
//! and starting fresh.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_host::generate::TICKERS;

use crate::support::*;

pub(crate) const PARTITIONS: i32 = 4;

/// One input stock record: keyed by ticker like the original generator, so every
/// record of a ticker lands in the same partition, and numbered by `seq`.
pub(crate) fn stock(seq: usize) -> TestRecord {
    let ticker = TICKERS[(seq * 7 + seq / 13) % TICKERS.len()];
    let key = format!(r#"{{"ticker": "{ticker}"}}"#);
    // Prices with two decimals, spread over 0..100, deterministic per seq.
    let cents = (seq as u64).wrapping_mul(2_654_435_761) % 10_000;
    let price = cents as f64 / 100.0;
    TestRecord {
        partition: java_partition(key.as_bytes(), PARTITIONS),
        key: Some(key.into_bytes()),
        value: Some(
            format!(
                r#"{{"event_time": "2026-11-26T12:00:00", "ticker": "{ticker}", "price": {price:?}, "seq": {seq}}}"#
            )
            .into_bytes(),
        ),
        headers: Vec::new(),
        timestamp: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    count: u64,
    min: f64,
    max: f64,
    mean: f64,
}

/// What the plugin must report last for each ticker, computed from the input in
/// partition order (the order the plugin sees it).
fn expected_stats(count: usize) -> BTreeMap<String, Stats> {
    let mut sums: BTreeMap<String, (u64, f64, f64, f64)> = BTreeMap::new();
    for seq in 0..count {
        let value: serde_json::Value = serde_json::from_slice(&stock(seq).value.unwrap()).unwrap();
        let ticker = value["ticker"].as_str().unwrap().to_string();
        let price = value["price"].as_f64().unwrap();
        let entry = sums.entry(ticker).or_insert((0, price, price, 0.0));
        entry.0 += 1;
        entry.1 = entry.1.min(price);
        entry.2 = entry.2.max(price);
        entry.3 += price;
    }
    sums.into_iter()
        .map(|(ticker, (count, min, max, sum))| {
            (
                ticker,
                Stats {
                    count,
                    min,
                    max,
                    mean: sum / count as f64,
                },
            )
        })
        .collect()
}

struct Output {
    seq: usize,
    ticker: String,
    stats: Stats,
}

fn parse(record: &TestRecord) -> Output {
    let value: serde_json::Value = serde_json::from_slice(record.value.as_deref().unwrap())
        .unwrap_or_else(|e| panic!("output {:?} is not JSON: {e}", record.value_text()));
    let number = |field: &str| {
        value[field]
            .as_f64()
            .unwrap_or_else(|| panic!("output {value} has no number `{field}`"))
    };
    Output {
        seq: number("seq") as usize,
        ticker: value["ticker"].as_str().unwrap().to_string(),
        stats: Stats {
            count: number("count") as u64,
            min: number("min"),
            max: number("max"),
            mean: number("mean"),
        },
    }
}

/// Checks the sink against `count` inputs. Exactly-once: each input once, in order
/// within its partition. Both modes: nothing missing, and the last statistics of
/// each ticker equal those computed from the input (exactly-once only: at-least-once
/// may count a replayed record twice). Returns the number of duplicates.
fn check_sink(output: &str, count: usize, exactly_once: bool) -> usize {
    check_sink_at(&bootstrap(), output, count, exactly_once)
}

/// [`check_sink`] on the cluster at `servers`.
pub(crate) fn check_sink_at(
    servers: &str,
    output: &str,
    count: usize,
    exactly_once: bool,
) -> usize {
    // Read to the end of every partition: a duplicate then shows as one, not as the
    // input it pushed past `count`.
    let written = read_all_at(servers, output, count, Duration::from_secs(60));
    let outputs: Vec<(i32, Output)> = written.iter().map(|r| (r.partition, parse(r))).collect();
    let mut seen = HashSet::new();
    let mut duplicates = Vec::new();
    for (_, output) in &outputs {
        if !seen.insert(output.seq) {
            duplicates.push(output.seq);
        }
    }
    let missing: Vec<usize> = (0..count).filter(|seq| !seen.contains(seq)).collect();
    assert!(
        missing.is_empty(),
        "{} inputs missing from the sink, first {:?} ({} duplicates read)",
        missing.len(),
        &missing[..missing.len().min(5)],
        duplicates.len()
    );
    assert_eq!(
        seen.len(),
        count,
        "the sink holds records the input did not"
    );
    if !exactly_once {
        return duplicates.len();
    }
    assert!(
        duplicates.is_empty(),
        "exactly-once wrote {} duplicates, first {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(5)]
    );
    assert_eq!(written.len(), count);

    let mut last_seq: BTreeMap<i32, usize> = BTreeMap::new();
    let mut last_stats: BTreeMap<String, Stats> = BTreeMap::new();
    for (partition, output) in outputs {
        let expected_partition = stock(output.seq).partition;
        assert_eq!(
            partition, expected_partition,
            "seq {} moved partition",
            output.seq
        );
        if let Some(previous) = last_seq.insert(partition, output.seq) {
            assert!(
                output.seq > previous,
                "partition {partition}: seq {} after {previous}",
                output.seq
            );
        }
        last_stats.insert(output.ticker, output.stats);
    }
    assert_eq!(
        last_stats,
        expected_stats(count),
        "final statistics per ticker"
    );
    0
}

/// New input and output topics (with `PARTITIONS` partitions each) and a group name.
fn stock_topics(prefix: &str) -> (String, String, String) {
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, PARTITIONS);
    create_topic(&output, PARTITIONS);
    (input, output, group)
}

fn stats_config(
    dir: &std::path::Path,
    input: &str,
    output: &str,
    group: &str,
    delivery: &str,
    source_kafka: &str,
) -> String {
    let text = config_text(
        input,
        output,
        group,
        "",
        "",
        &format!(
            "[source.kafka]\n{source_kafka}\n\n[plugin]\npath = \"{}\"\n",
            test_plugin("sluice_plugin_stats").display()
        ),
    );
    let text = with_top_level(&text, &format!("delivery = \"{delivery}\""));
    write_file(dir, &format!("{}.toml", unique("stats")), &text)
        .display()
        .to_string()
}

/// A small deterministic generator for kill moments; the seed is printed so a failing
/// run can be replayed.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("kill moments seed: {seed}");
        Moments(seed | 1)
    }

    fn millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

/// Runs the stats plugin over `count` records, written at `per_second` while the host
/// is killed `kills` times at random moments, then lets a last host finish. Returns
/// the sink topic.
fn run_with_kills(delivery: &str, count: usize, per_second: usize, kills: usize) -> String {
    let (input, output, group) = stock_topics("st");
    let dir = workdir();
    // Static membership: a restarted host takes its partitions back at once instead
    // of waiting for the killed one's session to expire.
    let config = stats_config(
        dir.path(),
        &input,
        &output,
        &group,
        delivery,
        "\"group.instance.id\" = \"host-1\"\n\"session.timeout.ms\" = \"6000\"",
    );
    let run = ["run", "--config", config.as_str(), "--instance", "host-1"];
    let done = Arc::new(AtomicBool::new(false));
    let writer = produce_paced(input.clone(), count, per_second, done.clone(), stock);
    let mut moments = Moments::new();
    for kill in 0..kills {
        let mut host = Sluice::start(dir.path(), &run);
        let before = total(&end_offsets(&output));
        wait_until(
            "the host to write to the sink",
            Duration::from_secs(60),
            || total(&end_offsets(&output)) > before,
        );
        std::thread::sleep(Duration::from_millis(moments.millis(50, 1_000)));
        host.signal(libc::SIGKILL);
        host.wait(Duration::from_secs(10));
        assert!(
            !done.load(Ordering::SeqCst) || committed(&group, &input) != end_offsets(&input),
            "kill {kill} landed after the whole input was processed; the run is too short to prove anything"
        );
    }
    writer.join().unwrap();
    let mut last = Sluice::start(dir.path(), &run);
    wait_until(
        "the last host to commit the whole input",
        Duration::from_secs(180),
        || committed(&group, &input) == end_offsets(&input),
    );
    assert!(last.terminate().success(), "{}", last.log());
    output
}

#[test]
fn exactly_once_survives_sigkills_with_exact_statistics() {
    const COUNT: usize = 300_000;
    let output = run_with_kills("exactly-once", COUNT, 15_000, 10);
    check_sink(&output, COUNT, true);
}

#[test]
fn at_least_once_survives_sigkills_without_losing_records() {
    // 30 s of input: ten restarts of a debug build on a busy machine take about 25 s,
    // and every kill must land while records still come.
    const COUNT: usize = 150_000;
    let output = run_with_kills("at-least-once", COUNT, 5_000, 10);
    let duplicates = check_sink(&output, COUNT, false);
    eprintln!("at-least-once with 10 SIGKILLs: {duplicates} duplicate outputs of {COUNT} inputs");
}

#[test]
fn a_stopped_hosts_partitions_and_state_move_to_the_other_host() {
    const COUNT: usize = 60_000;
    let (input, output, group) = stock_topics("rb");
    let dir = workdir();
    let config = stats_config(dir.path(), &input, &output, &group, "exactly-once", "");
    let mut a = Sluice::start(dir.path(), &["run", "--config", &config, "--instance", "a"]);
    a.wait_for_log("Partitions assigned", Duration::from_secs(30));
    let mut b = Sluice::start(dir.path(), &["run", "--config", &config, "--instance", "b"]);
    b.wait_for_log("Partitions assigned", Duration::from_secs(30));

    let producer = producer();
    for seq in 0..COUNT / 2 {
        send(&producer, &input, &stock(seq));
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    wait_until(
        "both hosts to process the first half",
        Duration::from_secs(120),
        || committed(&group, &input).values().sum::<i64>() >= (COUNT / 2) as i64,
    );
    assert!(a.terminate().success(), "{}", a.log());
    for seq in COUNT / 2..COUNT {
        send(&producer, &input, &stock(seq));
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();
    wait_until(
        "the remaining host to process the rest",
        Duration::from_secs(120),
        || committed(&group, &input) == end_offsets(&input),
    );
    let log_b = b.log();
    assert!(b.terminate().success(), "{log_b}");
    assert!(
        log_b.matches("State restored").count() >= 2,
        "host b restored state when it took over: {log_b}"
    );
    check_sink(&output, COUNT, true);
}

#[test]
fn a_zombie_host_is_fenced_and_cannot_commit() {
    const COUNT: usize = 30_000;
    let (input, output, group) = stock_topics("zo");
    let dir = workdir();
    let config = stats_config(
        dir.path(),
        &input,
        &output,
        &group,
        "exactly-once",
        "\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"",
    );
    let mut zombie = Sluice::start(dir.path(), &["run", "--config", &config, "--instance", "z"]);
    zombie.wait_for_log("Partitions assigned", Duration::from_secs(30));

    let done = Arc::new(AtomicBool::new(false));
    let writer = produce_paced(input.clone(), COUNT, 2_000, done.clone(), stock);
    wait_until("the zombie-to-be to write", Duration::from_secs(60), || {
        total(&end_offsets(&output)) > 1_000
    });
    zombie.signal(libc::SIGSTOP);
    let mut survivor = Sluice::start(dir.path(), &["run", "--config", &config, "--instance", "s"]);
    // The paused host's session (6 s) expires; the survivor takes every partition.
    survivor.wait_for_log("Partitions assigned", Duration::from_secs(60));
    // The survivor commits once the broker has aborted the paused host's open
    // transaction (its offsets stay unstable until then). Reading the group's offsets
    // here would block just as long and could return after the survivor had finished.
    survivor.wait_for_log("Checkpoint committed", Duration::from_secs(60));
    zombie.signal(libc::SIGCONT);
    // The zombie's open transaction (records it wrote before the pause) is aborted,
    // never committed: its offset commit is refused as coming from a former member.
    zombie.wait_for_log("Transaction aborted", Duration::from_secs(60));
    writer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    wait_until(
        "the group to process everything",
        Duration::from_secs(120),
        || committed(&group, &input) == end_offsets(&input),
    );
    let zombie_log = zombie.log();
    for line in zombie_log
        .lines()
        .filter(|l| l.contains("aborted") || l.contains("lost"))
    {
        eprintln!("zombie: {line}");
    }
    assert!(zombie.terminate().success(), "{zombie_log}");
    assert!(survivor.terminate().success(), "{}", survivor.log());
    check_sink(&output, COUNT, true);
}

#[test]
fn starting_fresh_ignores_committed_offsets_and_state() {
    fresh_case(1);
}

/// With four workers, each partition starts fresh once: when it moves to another
/// worker of the host (they join one after the other), that one resumes from what
/// the first committed, and nothing is read twice.
#[test]
fn starting_fresh_with_parallel_workers_resets_each_partition_once() {
    fresh_case(4);
}

fn fresh_case(parallelism: usize) {
    const COUNT: usize = 2_000;
    let (input, output, group) = stock_topics("fr");
    produce(&input, &(0..COUNT).map(stock).collect::<Vec<_>>());
    let dir = workdir();
    let config = stats_config(dir.path(), &input, &output, &group, "exactly-once", "");
    add_top_level(&config, &format!("parallelism = {parallelism}"));
    // Runs a host until the sink holds `outputs` committed records and the input is
    // committed, then stops it and returns its log.
    let run = |extra: &[&str], outputs: usize| {
        let mut args = vec!["run", "--config", config.as_str(), "--instance", "f"];
        args.extend_from_slice(extra);
        let mut host = Sluice::start(dir.path(), &args);
        host.wait_for_log("Partitions assigned", Duration::from_secs(30));
        wait_until(
            "the host to write and commit",
            Duration::from_secs(60),
            || {
                read_all(&output, outputs, Duration::from_secs(2)).len() >= outputs
                    && committed(&group, &input) == end_offsets(&input)
            },
        );
        assert!(host.terminate().success(), "{}", host.log());
        host.log()
    };
    run(&[], COUNT);
    // A plain restart reads nothing again.
    let log = run(&[], COUNT);
    assert!(!log.contains("Starting fresh"), "{log}");
    // Fresh: everything again from the start (`earliest`), with statistics from zero.
    let log = run(&["--fresh"], COUNT * 2);
    assert!(log.contains("Starting fresh"), "{log}");
    let written = read_all(&output, COUNT * 2 + 1, Duration::from_secs(5));
    assert_eq!(
        written.len(),
        COUNT * 2,
        "the plain restart wrote nothing, the fresh run everything"
    );
    let second_pass: Vec<Output> = by_partition(&written)
        .into_values()
        .flat_map(|records| {
            let half = records.len() / 2;
            records[half..].iter().map(parse).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(second_pass.len(), COUNT);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for output in &second_pass {
        let count = counts.entry(output.ticker.clone()).or_default();
        *count += 1;
        assert_eq!(
            output.stats.count, *count,
            "after --fresh, {} counts from zero (seq {})",
            output.ticker, output.seq
        );
    }
}

/// `parallelism = 4`: one host runs four workers, each with a consumer in the group,
/// a producer and keyed state of its own. Every partition goes to one worker, and the
/// sink holds each input once, in order, with each ticker's statistics exact.
#[test]
fn one_host_with_parallelism_spreads_the_partitions_over_its_workers() {
    const COUNT: usize = 20_000;
    let (input, output, group) = stock_topics("par");
    let dir = workdir();
    // Static membership: each worker joins under an id of its own.
    let config = stats_config(
        dir.path(),
        &input,
        &output,
        &group,
        "exactly-once",
        "\"group.instance.id\" = \"par-host\"",
    );
    add_top_level(&config, "parallelism = 4");
    let producer = producer();
    for seq in 0..COUNT {
        send(&producer, &input, &stock(seq));
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).unwrap();

    // The host is stopped once every input is committed and every worker holds
    // partitions.
    let mut host = Sluice::start(dir.path(), &["run", "--config", &config]);
    wait_until(
        "the host to process every input with all its workers",
        Duration::from_secs(120),
        || {
            let log = host.log();
            (0..4).all(|worker| worker_logged(&log, worker, "Partitions assigned"))
                && committed(&group, &input) == end_offsets(&input)
        },
    );
    assert!(host.terminate().success(), "{}", host.log());
    let log = host.log();
    assert!(log.contains("workers=4"), "{log}");
    // The workers never fenced each other (as members sharing one static id would).
    assert!(!log.contains("Transaction aborted"), "{log}");
    for worker in 0..4 {
        assert!(
            worker_logged(&log, worker, "Final checkpoint committed"),
            "worker {worker} did not commit at the end: {log}"
        );
    }
    assert!(
        log.contains(&format!("numRecordsIn={COUNT} ")),
        "the workers' counts add up: {log}"
    );
    check_sink(&output, COUNT, true);
}

/// Whether worker `worker` of a parallel host logged a line containing `text`.
fn worker_logged(log: &str, worker: usize, text: &str) -> bool {
    log.lines()
        .any(|line| line.contains(&format!("worker{{worker={worker}}}")) && line.contains(text))
}

/// At-least-once, a second host joins the group while records flow and outputs are
/// in flight (the producers hold each for 300 ms). The plugin is the stateless
/// pass-through, so no changelog write waits for the outputs: the revoking workers
/// do, before they commit, and the rebalance writes nothing twice.
#[test]
fn at_least_once_a_graceful_rebalance_writes_nothing_twice() {
    const COUNT: usize = 40_000;
    let (input, output, group) = stock_topics("alo-rebalance");
    let dir = workdir();
    let text = config_text(
        &input,
        &output,
        &group,
        "",
        "[sink.kafka]\n\"linger.ms\" = \"300\"",
        "",
    );
    let text = with_top_level(&text, "parallelism = 2");
    let config = write_file(dir.path(), "alo.toml", &text);
    let config = config.to_str().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = produce_paced(input.clone(), COUNT, 5_000, done.clone(), stock);
    let mut a = Sluice::start(dir.path(), &["run", "--config", config, "--instance", "a"]);
    wait_until(
        "host a to write to the sink",
        Duration::from_secs(60),
        || total(&end_offsets(&output)) > 2_000,
    );
    let mut b = Sluice::start(dir.path(), &["run", "--config", config, "--instance", "b"]);
    b.wait_for_log("Partitions assigned", Duration::from_secs(60));
    assert!(
        !done.load(Ordering::SeqCst),
        "host b joined after the whole input was written; the run proves nothing"
    );
    writer.join().unwrap();
    wait_until(
        "both hosts to commit the whole input",
        Duration::from_secs(120),
        || committed(&group, &input) == end_offsets(&input),
    );
    let log_a = a.log();
    assert!(a.terminate().success(), "{log_a}");
    assert!(b.terminate().success(), "{}", b.log());
    assert!(
        log_a.contains("Partitions revoked"),
        "host a gave partitions up while records flowed: {log_a}"
    );
    // The sink holds each input once: the pass-through copies the input's `seq`.
    let written = read_all(&output, COUNT, Duration::from_secs(60));
    let mut seen = HashSet::new();
    let duplicates = written
        .iter()
        .map(|record| {
            let value: serde_json::Value =
                serde_json::from_slice(record.value.as_ref().unwrap()).expect("a stock record");
            value["seq"].as_u64().unwrap()
        })
        .filter(|seq| !seen.insert(*seq))
        .count();
    assert_eq!(seen.len(), COUNT, "inputs missing from the sink");
    assert_eq!(duplicates, 0, "{log_a}");
}
