//! Network faults between the host and the broker, injected by a proxy
//! ([`crate::proxy`]): connections reset around commits and at random moments, delays,
//! and SIGKILLs of the host meanwhile. Nothing may be lost or written twice, and keyed
//! state must end as the input says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::state::{PARTITIONS, check_sink_at, stock};
use crate::support::*;

/// A small deterministic generator for fault moments; the seed is printed so a failing
/// run can be replayed.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::env::var("SLUICE_FAULTS_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("fault moments seed: {seed} (SLUICE_FAULTS_SEED replays it)");
        Moments(seed | 1)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

/// Prints a fault with the time, to read beside the hosts' logs.
fn note(what: &str, number: usize) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    eprintln!(
        "{:02}:{:02}:{:02}.{:03} {what}: {number}",
        now.as_secs() / 3600 % 24,
        now.as_secs() / 60 % 60,
        now.as_secs() % 60,
        now.subsec_millis()
    );
}

/// How many checkpoints the host's log reports.
fn checkpoints(host: &Sluice) -> usize {
    host.log().matches("Checkpoint committed.").count()
}

/// Waits until the host logs its next checkpoint and returns true; returns false
/// instead once `caught_up` says the whole input is written and committed, as no
/// checkpoint follows then. Fails if the host exits first, or after [`STALL_LIMIT`].
fn next_checkpoint(host: &mut Sluice, caught_up: &dyn Fn() -> bool) -> bool {
    let before = checkpoints(host);
    let started = Instant::now();
    let mut asked = Instant::now();
    while checkpoints(host) == before {
        if let Some(status) = host.exited() {
            panic!(
                "the host exited ({status}) under the faults:\n{}",
                host.log()
            );
        }
        assert!(
            started.elapsed() < STALL_LIMIT,
            "no checkpoint for {STALL_LIMIT:?} while input was left:\n{}",
            host.log()
        );
        if asked.elapsed() > Duration::from_millis(500) {
            if caught_up() {
                return false;
            }
            asked = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// How long the host may go without a checkpoint under the faults while input is left.
/// A restart after a SIGKILL takes up to 15 s here: reading the group's offsets waits
/// 10 s for the killed host's open transaction.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// What was done to the hosts, to print and to check that the run proved something.
#[derive(Debug, Default)]
struct Done {
    kills: usize,
    kills_after_checkpoint: usize,
    resets_after_checkpoint: usize,
    resets_at_random: usize,
    blackholes: usize,
    refusals: usize,
    delays: usize,
}

/// An exactly-once host running the stateful `stats` plugin through the proxy, while
/// keyed input is written throughout: connections are reset right after checkpoints
/// (while the next transaction starts) and at random moments (inside a commit, a
/// fetch, a produce), delays, black holes and refused connections (a broker away) of
/// a few seconds come and go, and the host is killed with SIGKILL, right
/// after a checkpoint or at a random moment, several times. A last host then drains.
/// Read back `read_committed`: every input once, in order within its partition, and
/// each ticker's statistics equal those computed from the input.
#[test]
fn exactly_once_through_connection_resets_and_kills_around_commits_keeps_exact_state() {
    const COUNT: usize = 80_000;
    const PER_SECOND: usize = 2_000;
    let (broker, proxy) = OwnBroker::start_proxied();
    let direct = broker.servers();
    let (input, output, group) = (unique("fl-in"), unique("fl-out"), unique("fl-g"));
    create_topic_at(&direct, &input, PARTITIONS);
    create_topic_at(&direct, &output, PARTITIONS);
    let dir = workdir();
    // Static membership: a restarted host takes its partitions back at once instead
    // of waiting for the killed one's session to expire.
    let text = config_text(
        &input,
        &output,
        &group,
        "",
        "",
        &format!(
            "[source.kafka]\n\"group.instance.id\" = \"host-1\"\n\"session.timeout.ms\" = \"6000\"\n\n[plugin]\npath = \"{}\"\n",
            test_plugin("sluice_plugin_stats").display()
        ),
    )
    .replace(&bootstrap(), &proxy.address());
    let config = write_file(
        dir.path(),
        "faults.toml",
        &with_top_level(&text, "delivery = \"exactly-once\""),
    );
    let run = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--instance",
        "host-1",
    ];

    // The input goes straight to the broker: the faults are the host's.
    let done = Arc::new(AtomicBool::new(false));
    let writer = produce_paced_at(
        direct.clone(),
        input.clone(),
        COUNT,
        PER_SECOND,
        done.clone(),
        stock,
    );
    let mut moments = Moments::new();
    let mut faults = Done::default();
    let started = Instant::now();
    // The whole input written and committed: no checkpoint comes any more.
    let caught_up = || {
        done.load(Ordering::SeqCst)
            && committed_at(&direct, &group, &input) == end_offsets_at(&direct, &input)
    };
    while !done.load(Ordering::SeqCst) {
        // Faults once the host runs: one that does not answer at start is refused at
        // `connect_timeout_ms`, by design.
        let mut host = Sluice::start(dir.path(), &run);
        next_checkpoint(&mut host, &caught_up);
        for _ in 0..3 {
            match moments.below(5) {
                0 => {
                    next_checkpoint(&mut host, &caught_up);
                    std::thread::sleep(moments.millis(0, 50));
                    note("connections reset after a checkpoint", proxy.reset_all());
                    faults.resets_after_checkpoint += 1;
                }
                1 => {
                    std::thread::sleep(moments.millis(50, 1_500));
                    note("connections reset", proxy.reset_all());
                    faults.resets_at_random += 1;
                }
                3 => {
                    proxy.refuse();
                    let down = moments.millis(500, 3_000);
                    note("connections refused for ms", down.as_millis() as usize);
                    std::thread::sleep(down);
                    proxy.restore();
                    faults.refusals += 1;
                }
                2 => {
                    proxy.blackhole();
                    let black = moments.millis(500, 4_000);
                    note("black hole for ms", black.as_millis() as usize);
                    std::thread::sleep(black);
                    proxy.restore();
                    faults.blackholes += 1;
                }
                _ => {
                    let delay = moments.millis(20, 300);
                    note("delay per chunk in ms", delay.as_millis() as usize);
                    proxy.delay(delay);
                    std::thread::sleep(moments.millis(300, 1_500));
                    proxy.restore();
                    faults.delays += 1;
                }
            }
        }
        if moments.below(2) == 0 && next_checkpoint(&mut host, &caught_up) {
            faults.kills_after_checkpoint += 1;
        } else {
            std::thread::sleep(moments.millis(50, 1_000));
        }
        assert!(
            host.exited().is_none(),
            "the host stopped under the faults:\n{}",
            host.log()
        );
        note("SIGKILL to the host", host.pid() as usize);
        host.signal(libc::SIGKILL);
        host.wait(Duration::from_secs(10));
        faults.kills += 1;
    }
    writer.join().unwrap();
    eprintln!(
        "{faults:?} in {:?}; {} connections reset",
        started.elapsed(),
        proxy.resets()
    );
    assert!(
        faults.kills >= 3 && proxy.resets() > 0,
        "too few faults to prove anything: {faults:?}"
    );

    let mut last = Sluice::start(dir.path(), &run);
    last.wait_until(
        "the last host to commit the whole input",
        Duration::from_secs(120),
        || committed_at(&direct, &group, &input) == end_offsets_at(&direct, &input),
    );
    assert!(last.terminate().success(), "{}", last.log());
    check_sink_at(&direct, &output, COUNT, true);
}

#[test]
fn a_sink_topic_deleted_mid_run_stops_the_host_naming_it_and_loses_nothing() {
    sink_topic_deleted(None);
}

#[test]
fn a_sink_topic_deleted_mid_run_stops_the_host_with_a_dead_letter_topic_too() {
    sink_topic_deleted(Some(unique("gone-dead")));
}

/// At-least-once, the sink topic is deleted while records flow (the broker does not
/// create topics by itself): the host stops with exit 1 naming the topic, in bounded
/// time, rather than wait without end for deliveries that never come; with a
/// dead-letter topic too, where nothing goes (a missing topic is no record's fault).
/// Once the topic is back, a restarted host writes every record its predecessor did
/// not commit: nothing is lost.
fn sink_topic_deleted(dead_letter: Option<String>) {
    const COUNT: usize = 15_000;
    let (input, output, group) = (unique("gone-in"), unique("gone-out"), unique("gone-g"));
    create_topic(&input, 6);
    create_topic(&output, 6);
    let sink_extra = match &dead_letter {
        Some(topic) => {
            create_topic(topic, 1);
            format!("dead_letter_topic = \"{topic}\"")
        }
        None => String::new(),
    };
    let dir = workdir();
    let config = write_file(
        dir.path(),
        "gone.toml",
        &config_text(&input, &output, &group, "", &sink_extra, ""),
    );
    let run = ["run", "--config", config.to_str().unwrap()];
    let done = Arc::new(AtomicBool::new(false));
    let writer = produce_steadily(input.clone(), COUNT, 1_000, done.clone());
    let mut host = Sluice::start(dir.path(), &run);
    host.wait_until("records in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= 2_000
    });
    delete_topic(&output);
    let deleted = Instant::now();
    let status = host.wait(Duration::from_secs(90));
    let log = host.log();
    eprintln!(
        "stopped {:?} after the sink topic was deleted",
        deleted.elapsed()
    );
    assert!(
        !done.load(Ordering::SeqCst),
        "the deletion must come while records are still being written"
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("sink topic `{output}` no longer exists")),
        "the log names the topic: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    if let Some(topic) = &dead_letter {
        let dead = read_all(topic, 0, Duration::from_secs(5));
        assert!(dead.is_empty(), "nothing is dead-lettered: {dead:?}");
    }
    let committed = committed(&group, &input);
    writer.join().unwrap();

    // Made again; a new host writes what the first did not commit.
    create_topic(&output, 6);
    let mut again = Sluice::start(dir.path(), &run);
    again.wait_until(
        "the new host to commit the whole input",
        Duration::from_secs(120),
        || committed_at(&bootstrap(), &group, &input) == end_offsets(&input),
    );
    assert!(again.terminate().success(), "{}", again.log());
    let ends = end_offsets(&input);
    let owed: usize = ends
        .iter()
        .map(|(p, end)| (end - committed.get(p).copied().unwrap_or(0)) as usize)
        .sum();
    let written: std::collections::HashSet<String> =
        read_all(&output, owed, Duration::from_secs(30))
            .iter()
            .map(TestRecord::value_text)
            .collect();
    // Record `rec-i` went to partition i % 6 at offset i / 6.
    let missing: Vec<String> = ends
        .iter()
        .flat_map(|(p, end)| {
            (committed.get(p).copied().unwrap_or(0)..*end)
                .map(move |o| format!("rec-{}", o * 6 + *p as i64))
        })
        .filter(|value| !written.contains(value))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records after the committed offsets missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!("{owed} records written again after the sink topic came back");
}

/// Deletes `topic` from the shared broker.
fn delete_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
    let results = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(admin.delete_topics(&[topic], &AdminOptions::new()))
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("deleting topic {name}: {code}"));
    }
}
