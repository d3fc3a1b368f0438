//! Hot swap while records flow: validated, atomic, nothing lost or doubled, bad
//! candidates rejected, automatic rollback, and every trigger.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;

fn copy_plugin(name: &str, to: &Path) -> PathBuf {
    std::fs::copy(test_plugin(name), to).unwrap();
    to.to_path_buf()
}

/// A new input and output topic of `partitions` partitions each, and a group name,
/// all starting with `prefix`.
fn topics(prefix: &str, partitions: i32) -> (String, String, String) {
    let (input, output) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
    );
    create_topic(&input, partitions);
    create_topic(&output, partitions);
    (input, output, unique(&format!("{prefix}-g")))
}

/// Copies of the tag-a and tag-b plugins in `dir`; returns tag-b's path and the
/// `[plugin]` table of a pipeline that runs tag-a, unwatched.
fn tag_plugins(dir: &Path) -> (PathBuf, String) {
    let a = copy_plugin("sluice_test_tag_a", &dir.join("a.wasm"));
    let b = copy_plugin("sluice_test_tag_b", &dir.join("b.wasm"));
    let tail = format!("[plugin]\npath = \"{}\"\nwatch = false", a.display());
    (b, tail)
}

fn header<'a>(record: &'a TestRecord, name: &str) -> Vec<&'a str> {
    record
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| std::str::from_utf8(v.as_deref().unwrap_or_default()).unwrap())
        .collect()
}

/// Starts a host on `config` with its admin endpoint on a free port; returns the address.
fn start_with_admin(dir: &Path, config: &Path) -> (Sluice, String) {
    let admin = free_address();
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command.env("SLUICE_ADMIN", &admin);
    (Sluice::spawn(dir, command), admin)
}

fn swap(path: &Path, admin: &str) -> std::process::Output {
    sluice(&["plugin", "swap", path.to_str().unwrap(), "--admin", admin])
        .output()
        .unwrap()
}

fn live_digest(admin: &str) -> String {
    admin_status(admin)["live"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_for_live(admin: &str, digest: &str) {
    wait_until(
        "the new version to go live",
        Duration::from_secs(30),
        || live_digest(admin) == digest,
    );
}

#[test]
fn twenty_swaps_and_five_bad_candidates_under_load_lose_and_double_nothing() {
    const COUNT: usize = 200_000;
    let (input, output, group) = topics("swap", 6);
    let dir = workdir();
    let a = copy_plugin("sluice_test_tag_a", &dir.path().join("a.wasm"));
    let b = copy_plugin("sluice_test_tag_b", &dir.path().join("b.wasm"));
    let (digest_a, digest_b) = (file_digest(&a), file_digest(&b));
    let truncated = dir.path().join("truncated.wasm");
    let b_bytes = std::fs::read(&b).unwrap();
    std::fs::write(&truncated, &b_bytes[..b_bytes.len() / 2]).unwrap();
    let bad: Vec<(PathBuf, &str)> = vec![
        (
            write_file(dir.path(), "text.wasm", "not a component"),
            "not a valid WebAssembly component",
        ),
        (
            test_plugin("sluice_test_other_world"),
            "not a Sluice transform",
        ),
        // The pipeline's plugin settings make this one's init fail (the tag plugins ignore them).
        (
            copy_plugin("sluice_test_faulty", &dir.path().join("faulty.wasm")),
            "init failed: deliberately broken",
        ),
        (
            copy_plugin("sluice_test_trapper", &dir.path().join("trapper.wasm")),
            "self-test failed",
        ),
        (truncated, "not a valid WebAssembly component"),
    ];

    let tail = format!(
        r#"[plugin]
path = "{}"
watch = false
provenance_header = "sluice-plugin"
[plugin.config]
init_error = "deliberately broken"
[[plugin.self_test]]
value = "probe"
expect_values = ["probe"]"#,
        a.display()
    );
    let config = write_file(
        dir.path(),
        "swap.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let (mut host, admin) = start_with_admin(dir.path(), &config);
    host.wait_for_log("Partitions assigned.", Duration::from_secs(30));

    let done = Arc::new(AtomicBool::new(false));
    // About 8 000 records per second: the writing lasts about 25 s, so every swap
    // lands while records flow, even when a loaded machine slows the validations.
    let writer = produce_steadily(input.clone(), COUNT, 8_000, done.clone());
    host.wait_until("records flowing", Duration::from_secs(30), || {
        total(&end_offsets(&output)) > 1_000
    });

    let mut bad = bad.into_iter();
    for round in 0..20 {
        let (target, digest) = if round % 2 == 0 {
            (&b, &digest_b)
        } else {
            (&a, &digest_a)
        };
        let answer = swap(target, &admin);
        let stdout = String::from_utf8_lossy(&answer.stdout);
        assert!(
            answer.status.success(),
            "swap {round}: {}",
            String::from_utf8_lossy(&answer.stderr)
        );
        assert!(stdout.contains(": live (version"), "{stdout}");
        assert_eq!(&live_digest(&admin), digest);
        if round % 4 == 3 {
            let (candidate, reason) = bad.next().unwrap();
            let answer = swap(&candidate, &admin);
            let stderr = String::from_utf8_lossy(&answer.stderr);
            assert_eq!(
                answer.status.code(),
                Some(2),
                "{}: {stderr}",
                candidate.display()
            );
            assert!(
                stderr.contains("rejected") && stderr.contains(reason),
                "{}: {stderr}",
                candidate.display()
            );
            assert_eq!(
                &live_digest(&admin),
                digest,
                "a rejected candidate changes nothing"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !done.load(Ordering::SeqCst),
        "all swaps happened while records were still being written"
    );
    writer.join().unwrap();
    host.wait_until("everything committed", Duration::from_secs(120), || {
        committed(&group, &input) == end_offsets(&input)
    });

    let status = admin_status(&admin);
    assert_eq!(status["swaps"], 20, "{status:#}");
    assert_eq!(status["rejections"], 5, "{status:#}");
    assert!(host.terminate().success(), "{}", host.log());
    // Each version was started off the hot path when it was published; the worker
    // only took the waiting instance.
    let log = host.log();
    let adoptions: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Plugin swapped."))
        .collect();
    assert!(adoptions.len() >= 10, "{log}");
    assert!(
        adoptions.iter().all(|line| line.contains("prepared=true")),
        "{adoptions:#?}"
    );

    let written = read_all(&output, COUNT + 1, Duration::from_secs(10));
    assert_eq!(
        written.len(),
        COUNT,
        "every input exactly once: no restart happened"
    );
    let mut seen = HashMap::new();
    for record in &written {
        *seen.entry(record.value_text()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), COUNT, "no record lost or doubled");
    let digest_of = HashMap::from([("A", digest_a.as_str()), ("B", digest_b.as_str())]);
    let mut runs: BTreeMap<i32, usize> = BTreeMap::new();
    for (partition, records) in by_partition(&written) {
        let mut last_tag = "";
        let mut last_n = -1i64;
        for record in &records {
            let tags = header(record, "tag");
            assert_eq!(tags.len(), 1, "exactly one version's tag: {record:?}");
            let provenance = header(record, "sluice-plugin");
            assert_eq!(provenance.len(), 1);
            assert!(
                digest_of[tags[0]].starts_with(provenance[0]),
                "tag and producing version agree"
            );
            if tags[0] != last_tag {
                *runs.entry(partition).or_default() += 1;
                last_tag = tags[0];
            }
            let n: i64 = record
                .value_text()
                .trim_start_matches("rec-")
                .parse()
                .unwrap();
            assert!(n > last_n, "order kept in partition {partition}");
            last_n = n;
        }
    }
    // Versions alternate A, B, A, ...: in each partition the tag changes only where a
    // swap happened, so there are at most 21 runs of one tag.
    for (partition, count) in &runs {
        assert!(
            *count <= 21,
            "partition {partition} has {count} runs of one tag"
        );
    }
    // And the swaps took effect mid-stream: both versions wrote, in every partition.
    assert!(runs.values().all(|count| *count >= 2), "{runs:?}");
}

#[test]
fn a_new_version_failing_too_many_records_is_rolled_back_and_nothing_is_lost() {
    let (input, output, group) = topics("rb", 2);
    let dir = workdir();
    let a = copy_plugin("sluice_test_tag_a", &dir.path().join("a.wasm"));
    let faulty = copy_plugin("sluice_test_faulty", &dir.path().join("faulty.wasm"));
    let tail = format!(
        "[plugin]\npath = \"{}\"\nwatch = false\n[plugin.config]\nfail_on = \"bad\"\n[plugin.rollback]\nwindow_ms = 60000\nmax_error_rate = 0.1",
        a.display()
    );
    let config = write_file(
        dir.path(),
        "rb.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let (mut host, admin) = start_with_admin(dir.path(), &config);

    produce(
        &input,
        &(0..500)
            .map(|i| TestRecord::value(i % 2, &format!("good-{i}")))
            .collect::<Vec<_>>(),
    );
    host.wait_until("the first records", Duration::from_secs(30), || {
        total(&end_offsets(&output)) >= 500
    });
    let answer = swap(&faulty, &admin);
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );

    // Three in ten of these fail in the new version: far above the 10% allowed.
    let later: Vec<TestRecord> = (0..1000)
        .map(|i| {
            TestRecord::value(
                i % 2,
                &format!("{}-{i}", if i % 10 < 3 { "bad" } else { "good" }),
            )
        })
        .collect();
    produce(&input, &later);
    host.wait_until("all records in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= 1500
    });
    host.wait_until("everything committed", Duration::from_secs(30), || {
        committed(&group, &input) == end_offsets(&input)
    });

    let status = admin_status(&admin);
    assert_eq!(status["rollbacks"], 1, "{status:#}");
    assert_eq!(
        status["live"]["digest"].as_str().unwrap(),
        file_digest(&a),
        "back on the previous version"
    );
    let history = status["history"].as_array().unwrap();
    assert!(
        history.iter().any(|e| e["event"] == "rolled-back"),
        "{status:#}"
    );
    assert!(host.terminate().success(), "{}", host.log());
    let log = host.log();
    let rolled_back = log
        .find("Plugin rolled back.")
        .expect("a rollback in the log");
    // The candidate was started ahead; the restored version, on the hot path, by the
    // worker itself (a rollback never waits on another thread).
    let adoptions: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Plugin swapped."))
        .collect();
    assert!(adoptions[0].contains("prepared=true"), "{log}");
    assert!(
        log[rolled_back..]
            .lines()
            .any(|line| line.contains("Plugin swapped.") && line.contains("prepared=false")),
        "{log}"
    );

    let written = read_all(&output, 1501, Duration::from_secs(10));
    assert_eq!(written.len(), 1500, "nothing lost, nothing doubled");
    let bad_written: Vec<&TestRecord> = written
        .iter()
        .filter(|r| r.value_text().starts_with("bad"))
        .collect();
    assert_eq!(bad_written.len(), 300);
    for record in bad_written {
        assert_eq!(
            header(record, "tag"),
            ["A"],
            "failed records were redone by the previous version"
        );
    }
}

struct TriggerCase {
    dir: tempfile::TempDir,
    input: String,
    output: String,
    admin: String,
    host: Sluice,
    sent: usize,
}

impl TriggerCase {
    /// A host whose plugin file is `plugin_path` (relative to a fresh directory, which
    /// `prepare` fills first).
    fn start(
        prefix: &str,
        plugin_path: &str,
        watch: bool,
        prepare: impl FnOnce(&Path),
    ) -> TriggerCase {
        let (input, output, group) = topics(prefix, 1);
        let dir = workdir();
        prepare(dir.path());
        let tail = format!(
            "[plugin]\npath = \"{}\"\nwatch = {watch}",
            dir.path().join(plugin_path).display()
        );
        let config = write_file(
            dir.path(),
            "t.toml",
            &config_text(&input, &output, &group, "", "", &tail),
        );
        let (mut host, admin) = start_with_admin(dir.path(), &config);
        host.wait_for_log("Partitions assigned.", Duration::from_secs(30));
        TriggerCase {
            dir,
            input,
            output,
            admin,
            host,
            sent: 0,
        }
    }

    /// Sends one record and returns the tag it arrives with.
    fn tag_of_next_record(&mut self) -> String {
        produce(
            &self.input,
            &[TestRecord::value(0, &format!("r{}", self.sent))],
        );
        self.sent += 1;
        let sent = self.sent as i64;
        self.host
            .wait_until("the record in the sink", Duration::from_secs(30), || {
                total(&end_offsets(&self.output)) >= sent
            });
        let records = read_all(&self.output, self.sent, Duration::from_secs(10));
        header(records.last().unwrap(), "tag").join(",")
    }

    fn expect_swap(&mut self, digest: &str, trigger: &str, tag: &str) {
        wait_for_live(&self.admin, digest);
        let status = admin_status(&self.admin);
        let last = status["history"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["trigger"], trigger, "{status:#}");
        assert_eq!(self.tag_of_next_record(), tag);
    }
}

fn write_in_place(from: &Path, to: &Path) {
    use std::io::Write as _;
    let bytes = std::fs::read(from).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(to)
        .unwrap();
    // Two writes with a pause: the watcher must not take the half-written file live.
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
}

#[test]
fn file_writes_renames_and_a_directory_symlink_flip_each_swap_the_plugin() {
    let (a, b) = (
        test_plugin("sluice_test_tag_a"),
        test_plugin("sluice_test_tag_b"),
    );
    let (digest_a, digest_b) = (file_digest(&a), file_digest(&b));
    let mut case = TriggerCase::start("watch", "current/plugin.wasm", true, |dir| {
        for version in ["v1", "v2"] {
            std::fs::create_dir(dir.join(version)).unwrap();
        }
        std::fs::copy(&a, dir.join("v1/plugin.wasm")).unwrap();
        std::fs::copy(&b, dir.join("v2/plugin.wasm")).unwrap();
        std::os::unix::fs::symlink("v1", dir.join("current")).unwrap();
    });
    assert_eq!(case.tag_of_next_record(), "A");
    let plugin = case.dir.path().join("current/plugin.wasm");

    // 1. Written in place (in two parts).
    write_in_place(&b, &plugin);
    case.expect_swap(&digest_b, "file-change", "B");

    // 2. Written beside it, then renamed over it.
    let staged = case.dir.path().join("current/.plugin.wasm.tmp");
    std::fs::copy(&a, &staged).unwrap();
    std::fs::rename(&staged, &plugin).unwrap();
    case.expect_swap(&digest_a, "file-change", "A");

    // 3. The directory flipped to another version, as a ConfigMap update does.
    let next = case.dir.path().join("current.next");
    std::os::unix::fs::symlink("v2", &next).unwrap();
    std::fs::rename(&next, case.dir.path().join("current")).unwrap();
    case.expect_swap(&digest_b, "file-change", "B");

    let status = admin_status(&case.admin);
    assert_eq!(
        status["rejections"], 0,
        "a half-written file is never proposed as a candidate: {status:#}"
    );
    assert!(case.host.terminate().success());
}

#[test]
fn sighup_rereads_the_plugin_file() {
    let (a, b) = (
        test_plugin("sluice_test_tag_a"),
        test_plugin("sluice_test_tag_b"),
    );
    let mut case = TriggerCase::start("hup", "plugin.wasm", false, |dir| {
        std::fs::copy(&a, dir.join("plugin.wasm")).unwrap();
    });
    assert_eq!(case.tag_of_next_record(), "A");
    std::fs::copy(&b, case.dir.path().join("plugin.wasm")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        live_digest(&case.admin),
        file_digest(&a),
        "without watching, a changed file waits for SIGHUP"
    );
    case.host.signal(libc::SIGHUP);
    case.expect_swap(&file_digest(&b), "sighup", "B");
    assert!(case.host.terminate().success());
}

/// With `parallelism = 3`, one `plugin swap` reaches every worker: each adopts the
/// new version at its next batch, and every partition's records switch tags.
#[test]
fn a_swap_reaches_every_worker_of_a_parallel_host() {
    const PARTITIONS: i32 = 3;
    let (input, output, group) = topics("pswap", PARTITIONS);
    let dir = workdir();
    let (b, tail) = tag_plugins(dir.path());
    let config = write_file(
        dir.path(),
        "p.toml",
        &with_top_level(
            &config_text(&input, &output, &group, "", "", &tail),
            "parallelism = 3",
        ),
    );
    let (mut host, admin) = start_with_admin(dir.path(), &config);
    wait_until(
        "every worker to be assigned a partition",
        Duration::from_secs(60),
        || {
            let log = host.log();
            (0..3).all(|w| {
                log.lines().any(|l| {
                    l.contains(&format!("worker{{worker={w}}}"))
                        && l.contains("Partitions assigned")
                })
            })
        },
    );
    // Each round sends one record to every partition and waits for all of them.
    let mut sent = 0;
    let mut round = |tag: &str| {
        let records: Vec<TestRecord> = (0..PARTITIONS)
            .map(|p| TestRecord::value(p, &format!("r{sent}-{p}")))
            .collect();
        produce(&input, &records);
        sent += records.len();
        let written = read_all(&output, sent, Duration::from_secs(30));
        assert_eq!(written.len(), sent);
        let prefix = format!("r{}-", sent - records.len());
        let tags: Vec<(i32, Vec<&str>)> = written
            .iter()
            .filter(|r| r.value_text().starts_with(&prefix))
            .map(|r| (r.partition, header(r, "tag")))
            .collect();
        assert_eq!(tags.len(), PARTITIONS as usize);
        assert!(
            tags.iter().all(|(_, t)| t == &[tag]),
            "every partition tagged {tag}: {tags:?}"
        );
    };
    // The version each worker runs, as `GET /status` reports it.
    let workers = || -> Vec<(u64, u64)> {
        admin_status(&admin)["workers"]
            .as_array()
            .expect("a list of workers")
            .iter()
            .map(|w| {
                (
                    w["worker"].as_u64().unwrap(),
                    w["version"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    round("A");
    assert_eq!(workers(), [(0, 1), (1, 1), (2, 1)]);
    let answer = swap(&b, &admin);
    assert!(answer.status.success(), "{answer:?}");
    round("B");
    let live = admin_status(&admin)["live"]["version"].as_u64().unwrap();
    assert_eq!(live, 2);
    assert_eq!(workers(), [(0, live), (1, live), (2, live)]);
    assert!(host.terminate().success(), "{}", host.log());
    let log = host.log();
    for worker in 0..3 {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("worker{{worker={worker}}}"))
                    && l.contains("Plugin swapped.")
                    && l.contains("prepared=true")),
            "worker {worker} adopted the new version, started ahead for it: {log}"
        );
    }
}

/// A version no compilation cache holds goes live on the baseline compiler's code; the
/// optimizing compiler's follows in the background, and the worker moves to it between
/// two batches. Every record is written once, by the version that was live.
#[test]
fn a_version_never_compiled_goes_live_on_baseline_code_then_moves_to_optimized_code() {
    let (input, output, group) = topics("tier", 2);
    let dir = workdir();
    let (b, tail) = tag_plugins(dir.path());
    let config = write_file(
        dir.path(),
        "t.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let admin = free_address();
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    // A cache of its own, empty: tag-b has never been compiled for this host.
    command
        .env("SLUICE_ADMIN", &admin)
        .env("SLUICE_CACHE_DIR", dir.path().join("cache"));
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Partitions assigned", Duration::from_secs(60));

    let mut sent = 0;
    let mut round = |name: &str| {
        let records: Vec<TestRecord> = (0..20)
            .map(|i| TestRecord::value(i % 2, &format!("{name}-{i}")))
            .collect();
        produce(&input, &records);
        sent += records.len();
        let written = read_all(&output, sent, Duration::from_secs(30));
        assert_eq!(written.len(), sent, "every record once so far");
        written
    };
    round("a");
    let answer = swap(&b, &admin);
    assert!(answer.status.success(), "{answer:?}");
    round("b1");
    host.wait_until(
        "the optimizing compiler's code of the new version",
        Duration::from_secs(60),
        || admin_status(&admin)["live"]["code"] == "optimized",
    );
    let written = round("b2");

    let mut tags: HashMap<String, Vec<&str>> = HashMap::new();
    for record in &written {
        tags.insert(record.value_text(), header(record, "tag"));
    }
    assert_eq!(tags.len(), 60, "60 distinct records");
    for (value, tag) in &tags {
        let expected = if value.starts_with("a-") { "A" } else { "B" };
        assert_eq!(tag, &[expected], "{value}");
    }
    assert_eq!(admin_status(&admin)["live"]["version"], 2);
    assert!(host.terminate().success(), "{}", host.log());
    let log = host.log();
    assert!(
        log.lines().any(|l| l.contains("Plugin swapped.")
            && l.contains("version=2")
            && l.contains("code=\"baseline\"")),
        "version 2 went live on baseline code: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("Plugin moved to its optimized code.") && l.contains("version=2")),
        "the worker moved version 2 to optimized code: {log}"
    );
    assert!(!log.contains("optimizing compiler failed"), "{log}");
}
