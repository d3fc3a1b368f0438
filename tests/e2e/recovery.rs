//! Crashes and stops: nothing lost after SIGKILL, a clean commit after SIGTERM, and a
//! broker that crashes and comes back ridden out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn sigkill_mid_stream_then_restart_loses_nothing() {
    const COUNT: usize = 40_000;
    let (input, output, group) = (unique("kill-in"), unique("kill-out"), unique("kill-g"));
    create_topic(&input, 6);
    create_topic(&output, 6);
    let dir = workdir();
    let config = write_config(dir.path(), &input, &output, &group, "");

    let done = Arc::new(AtomicBool::new(false));
    let writer = produce_steadily(input.clone(), COUNT, 10_000, done.clone());
    let mut first = Sluice::start(dir.path(), &["run", "--config", &config]);
    wait_until("some records in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= 5_000
    });
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    let at_kill = total(&end_offsets(&output));
    assert!(
        !done.load(Ordering::SeqCst),
        "the kill must land while records are still being written"
    );

    let mut second = Sluice::start(dir.path(), &["run", "--config", &config]);
    writer.join().unwrap();
    let expected_total = COUNT as i64;
    wait_until(
        "the restarted host to catch up",
        Duration::from_secs(120),
        || committed(&group, &input) == end_offsets(&input),
    );
    assert!(second.terminate().success(), "{}", second.log());

    let written = read_all(&output, COUNT * 2, Duration::from_secs(5));
    copies_of_each("after the restart", &written, COUNT);
    let duplicates = written.len() as i64 - expected_total;
    eprintln!(
        "SIGKILL at {at_kill} sink records: {duplicates} duplicates after restart (allowed at-least-once)"
    );
    // Order within a partition holds across the restart for the first copy of each record.
    assert_first_copies_in_order("after the restart", &written);
}

/// How many copies of each record `rec-0` to `rec-{count - 1}` were written; fails
/// when one is missing or another record is there.
fn copies_of_each(case: &str, written: &[TestRecord], count: usize) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in written {
        *seen.entry(record.value_text()).or_default() += 1;
    }
    let missing: Vec<usize> = (0..count)
        .filter(|i| !seen.contains_key(&format!("rec-{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{case}: {} records missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(seen.len(), count, "{case}: a record the input did not have");
    seen
}

/// Within each partition, the first copy of each `rec-N` record comes in input order.
fn assert_first_copies_in_order(case: &str, written: &[TestRecord]) {
    for (partition, records) in by_partition(written) {
        let mut last = -1i64;
        let mut firsts = std::collections::HashSet::new();
        for record in records {
            let text = record.value_text();
            if firsts.insert(text.clone()) {
                let n: i64 = text.trim_start_matches("rec-").parse().unwrap();
                assert!(n > last, "{case}, partition {partition}: {n} after {last}");
                last = n;
            }
        }
    }
}

#[test]
fn sigterm_exits_zero_within_ten_seconds_with_offsets_committed_to_the_end() {
    const COUNT: usize = 20_000;
    let (input, output, group) = (unique("term-in"), unique("term-out"), unique("term-g"));
    create_topic(&input, 6);
    create_topic(&output, 6);
    let dir = workdir();
    // A long checkpoint interval: only the shutdown commit can bring the offsets to the end.
    let text = config_text(&input, &output, &group, "", "", "")
        .replace("interval_ms = 200", "interval_ms = 3600000");
    let config = write_file(dir.path(), "term.toml", &text);
    let mut sluice = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    let done = Arc::new(AtomicBool::new(false));
    produce_steadily(input.clone(), COUNT, 20_000, done.clone())
        .join()
        .unwrap();
    wait_until("all records in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= COUNT as i64
    });
    assert!(
        committed(&group, &input).values().sum::<i64>() < COUNT as i64,
        "not committed before the stop"
    );

    let asked = Instant::now();
    let status = sluice.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "exit {status}:\n{}", sluice.log());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(committed(&group, &input), end_offsets(&input));
    assert_eq!(
        total(&end_offsets(&output)),
        COUNT as i64,
        "no duplicates from a clean stop"
    );
}

/// A host of one delivery mode on a test's own broker, its topics and group, and
/// (once fed) a writer of numbered records to its input.
struct ModeCase {
    mode: &'static str,
    input: String,
    output: String,
    group: String,
    config: PathBuf,
    host: Sluice,
    writer: Option<std::thread::JoinHandle<()>>,
    done: Arc<AtomicBool>,
}

impl ModeCase {
    /// Starts the host (with `extra_args`); returns once it owns its partitions.
    fn start(broker: &OwnBroker, dir: &Path, mode: &'static str, extra_args: &[&str]) -> ModeCase {
        let servers = broker.servers();
        let (input, output, group) = (unique("mode-in"), unique("mode-out"), unique("mode-g"));
        create_topic_at(&servers, &input, 6);
        create_topic_at(&servers, &output, 6);
        let text = with_top_level(
            &config_text(&input, &output, &group, "", "", "").replace(&bootstrap(), &servers),
            &format!("delivery = \"{mode}\""),
        );
        let config = write_file(dir, &format!("{}.toml", unique(mode)), &text);
        let mut args = vec!["run", "--config", config.to_str().unwrap()];
        args.extend_from_slice(extra_args);
        let mut host = Sluice::start(dir, &args);
        host.wait_for_log("Partitions assigned", Duration::from_secs(120));
        ModeCase {
            mode,
            input,
            output,
            group,
            config,
            host,
            writer: None,
            done: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts writing `count` numbered records at `per_second` to the input.
    fn feed(&mut self, broker: &OwnBroker, count: usize, per_second: usize) {
        self.writer = Some(produce_paced_at(
            broker.servers(),
            self.input.clone(),
            count,
            per_second,
            self.done.clone(),
            |i| TestRecord::value((i % 6) as i32, &format!("rec-{i}")),
        ));
    }

    /// How many records the sink holds.
    fn outputs(&self, broker: &OwnBroker) -> i64 {
        total(&end_offsets_at(&broker.servers(), &self.output))
    }

    /// Waits until the host has committed every input, the writer done first.
    fn wait_committed(&mut self, broker: &OwnBroker) {
        let servers = broker.servers();
        if let Some(writer) = self.writer.take() {
            writer.join().unwrap();
        }
        let mode = self.mode;
        wait_until(
            &format!("the {mode} host to commit every input"),
            Duration::from_secs(180),
            || {
                assert!(
                    self.host.exited().is_none(),
                    "the {mode} host stopped:\n{}",
                    self.host.log()
                );
                committed_at(&servers, &self.group, &self.input)
                    == end_offsets_at(&servers, &self.input)
            },
        );
    }

    /// Stops the host; it must exit 0.
    fn terminate(&mut self) {
        let status = self.host.terminate();
        assert!(
            status.success(),
            "{}: exit {status}:\n{}",
            self.mode,
            self.host.log()
        );
    }

    /// The sink holds every record: once each exactly-once, at least once otherwise,
    /// the first copies in input order within each partition.
    fn check_outputs(&self, broker: &OwnBroker, count: usize, across: &str) {
        let mode = self.mode;
        let written = read_all_at(
            &broker.servers(),
            &self.output,
            count * 2,
            Duration::from_secs(10),
        );
        let seen = copies_of_each(mode, &written, count);
        if mode == "exactly-once" {
            let twice: Vec<&String> = seen
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(v, _)| v)
                .collect();
            assert!(
                twice.is_empty(),
                "exactly-once: {} records written twice, first {:?}",
                twice.len(),
                &twice[..twice.len().min(5)]
            );
        }
        eprintln!(
            "{mode}: {} outputs for {count} inputs across {across}",
            written.len()
        );
        assert_first_copies_in_order(mode, &written);
    }
}

/// The broker crashes mid-stream and comes back a minute later, after the exactly-once
/// host's commit has timed out (30 s) and so has its first try at a new producer
/// (30 s more). Neither host stops: the exactly-once one ends with every record once,
/// the at-least-once one with every record at least once, both in order within each
/// partition.
#[test]
fn a_broker_crash_mid_stream_is_ridden_out_without_losing_a_record() {
    const COUNT: usize = 30_000;
    let broker = OwnBroker::start();
    let dir = workdir();
    let mut cases: Vec<(ModeCase, String)> = ["exactly-once", "at-least-once"]
        .into_iter()
        .map(|mode| {
            let admin = free_address();
            let case = ModeCase::start(&broker, dir.path(), mode, &["--admin", &admin]);
            (case, admin)
        })
        .collect();
    for (case, _) in &mut cases {
        case.feed(&broker, COUNT, 3_000);
    }
    wait_until(
        "records flowing through both hosts",
        Duration::from_secs(60),
        || cases.iter().all(|(case, _)| case.outputs(&broker) >= 3_000),
    );
    broker.kill();
    assert!(
        cases
            .iter()
            .all(|(case, _)| !case.done.load(Ordering::SeqCst)),
        "the crash must land while records are still being written"
    );
    // The exactly-once host waits in its commit: it says it is not processing.
    let started = Instant::now();
    wait_until(
        "the exactly-once host to report itself not ready",
        Duration::from_secs(60),
        || admin_ready(&cases[0].1, 10).0 == 503,
    );
    std::thread::sleep(Duration::from_secs(65).saturating_sub(started.elapsed()));
    broker.restart();

    for (mut case, admin) in cases {
        case.wait_committed(&broker);
        let (code, ready) = admin_ready(&admin, 10);
        assert_eq!(code, 200, "{}: processing again, {ready}", case.mode);
        case.terminate();
        case.check_outputs(&broker, COUNT, "the broker's crash");
    }
}

/// The broker hangs (it keeps its connections open and answers nothing, as a network
/// partition looks) while two hosts, one exactly-once and one at-least-once, copy
/// records; then both are asked to stop. Each must exit by itself within Kubernetes'
/// default grace period (30 s), non-zero and saying it stopped without a final
/// checkpoint, rather than wait for the cluster. Once the broker is back, hosts
/// started again on the same configs deliver every record: the exactly-once pair
/// once each, the at-least-once pair at least once, in order within each partition.
#[test]
fn a_stop_requested_while_the_broker_hangs_ends_in_time_and_loses_nothing() {
    const COUNT: usize = 20_000;
    let broker = OwnBroker::start();
    let dir = workdir();
    let mut cases: Vec<ModeCase> = ["exactly-once", "at-least-once"]
        .into_iter()
        .map(|mode| ModeCase::start(&broker, dir.path(), mode, &[]))
        .collect();
    for case in &mut cases {
        case.feed(&broker, COUNT, 2_000);
    }
    wait_until(
        "records flowing through both hosts",
        Duration::from_secs(60),
        || cases.iter().all(|case| case.outputs(&broker) >= 2_000),
    );
    broker.pause();
    assert!(
        cases.iter().all(|case| !case.done.load(Ordering::SeqCst)),
        "the hang must come while records are still being written"
    );
    // Outputs in flight when the broker stopped answering stay unacknowledged.
    std::thread::sleep(Duration::from_secs(3));
    let asked = Instant::now();
    for case in &cases {
        case.host.signal(libc::SIGTERM);
    }
    for case in &mut cases {
        let (mode, host) = (case.mode, &mut case.host);
        let status = host.wait(Duration::from_secs(40));
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "{mode}: the stop took {took:?}:\n{}",
            host.log()
        );
        assert_eq!(status.code(), Some(1), "{mode}:\n{}", host.log());
        let log = host.log();
        assert!(
            log.contains("without a final checkpoint"),
            "{mode}: the log must say the stop had no final checkpoint:\n{log}"
        );
        eprintln!("{mode}: stopped {took:?} after SIGTERM with the broker hanging");
    }
    broker.resume();

    for mut case in cases {
        let config = case.config.to_str().unwrap().to_owned();
        case.host = Sluice::start(dir.path(), &["run", "--config", &config]);
        case.wait_committed(&broker);
        case.terminate();
        case.check_outputs(&broker, COUNT, "the stop");
    }
}

/// An exactly-once host of 4 workers is killed with its transactions open and comes
/// back with 1. It aborts what the 3 workers it no longer runs left open, so a
/// `read_committed` reader sees every record at once, not after the broker's
/// transaction timeout (130 s here).
#[test]
fn scaling_an_exactly_once_host_down_aborts_what_the_retired_workers_left_open() {
    const EACH: usize = 2_000;
    let (input, output, group) = (unique("scale-in"), unique("scale-out"), unique("scale-g"));
    create_topic(&input, 4);
    create_topic(&output, 4);
    let dir = workdir();
    // Checkpoints only at a stop: what the workers write stays in open transactions.
    let text = with_top_level(
        &config_text(&input, &output, &group, "", "", "")
            .replace("interval_ms = 200", "interval_ms = 120000"),
        "delivery = \"exactly-once\"",
    );
    let config = write_file(dir.path(), "scale.toml", &text);
    let config = config.to_str().unwrap();
    let records = |from: usize| {
        (from..from + EACH)
            .map(|i| TestRecord::value((i % 4) as i32, &format!("rec-{i}")))
            .collect::<Vec<_>>()
    };
    let start = |workers: &str, admin: &str| {
        Sluice::start(
            dir.path(),
            &[
                "run",
                "--config",
                config,
                "--parallelism",
                workers,
                "--admin",
                admin,
            ],
        )
    };
    // Records this run handed to its producer; 0 until its admin endpoint answers.
    let handed_over = |admin: &str| {
        ureq::get(format!("http://{admin}/metrics"))
            .call()
            .ok()
            .and_then(|mut response| response.body_mut().read_to_string().ok())
            .map_or(0.0, |text| {
                crate::passthrough::sample(&text, "numRecordsOut")
            })
    };

    // A first run of four workers commits, at its stop, offsets that say it ran four.
    let admin = free_address();
    let mut four = start("4", &admin);
    produce(&input, &records(0));
    wait_until(
        "the first records handed over",
        Duration::from_secs(60),
        || handed_over(&admin) >= EACH as f64,
    );
    assert!(four.terminate().success(), "{}", four.log());
    assert_eq!(committed(&group, &input), end_offsets(&input));

    // Again four workers, one partition each, write records in open transactions;
    // then the host is killed.
    let admin = free_address();
    let mut four = start("4", &admin);
    for worker in 1..4 {
        four.wait_for_log(
            &format!("worker{{worker={worker}}}: Partitions assigned"),
            Duration::from_secs(60),
        );
    }
    produce(&input, &records(EACH));
    wait_until("the records handed over", Duration::from_secs(60), || {
        handed_over(&admin) >= EACH as f64
    });
    four.signal(libc::SIGKILL);
    four.wait(Duration::from_secs(10));

    // One worker now: it writes them again and commits them at its stop.
    let admin = free_address();
    let mut one = start("1", &admin);
    wait_until(
        "the records handed over again",
        Duration::from_secs(120),
        || handed_over(&admin) >= EACH as f64,
    );
    assert!(one.terminate().success(), "{}", one.log());
    assert!(
        one.log()
            .contains("Aborted what the workers of an earlier run with more workers left open. workers=1 before=4"),
        "{}",
        one.log()
    );
    assert_eq!(committed(&group, &input), end_offsets(&input));

    // Well within the transaction timeout, every record is there, once.
    let written = read_all(&output, 2 * EACH, Duration::from_secs(10));
    let copies = copies_of_each("after scaling down", &written, 2 * EACH);
    assert!(
        copies.values().all(|n| *n == 1),
        "a record written twice: {} outputs",
        written.len()
    );
}
