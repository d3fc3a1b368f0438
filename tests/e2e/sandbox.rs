//! The plugin sandbox on a real pipeline: a hostile plugin's attempts on host files,
//! the network and the environment are denied and reported while every record still
//! flows; granted variables and directories are visible, read-only; a plugin that
//! grows its memory without bound is stopped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const COUNT: usize = 300;

/// Produces `COUNT` records `rec-<i>` over 2 partitions, runs `command` (a `sluice
/// run`) until all of them are in the sink, and returns the output values by input
/// number, with the host's log.
fn run_pipeline(dir: &Path, input: &str, output: &str, command: Command) -> (Vec<String>, String) {
    collect(Sluice::spawn(dir, command), input, output)
}

/// Produces `COUNT` records `rec-<i>` over 2 partitions into the running `sluice`,
/// stops it once all of them are in the sink, and returns the output values by input
/// number, with the host's log.
fn collect(mut sluice: Sluice, input: &str, output: &str) -> (Vec<String>, String) {
    let records: Vec<TestRecord> = (0..COUNT)
        .map(|i| TestRecord::value((i % 2) as i32, &format!("rec-{i}")))
        .collect();
    produce(input, &records);
    sluice.wait_until("every record in the sink", Duration::from_secs(60), || {
        total(&end_offsets(output)) >= COUNT as i64
    });
    let status = sluice.terminate();
    let log = sluice.log();
    assert!(status.success(), "exit {status}:\n{log}");
    let written = read_all(output, COUNT + 1, Duration::from_secs(10));
    assert_eq!(written.len(), COUNT, "every record exactly once:\n{log}");
    let mut values = vec![String::new(); COUNT];
    for record in written {
        let text = record.value_text();
        let n: usize = text
            .strip_prefix("rec-")
            .and_then(|rest| rest.split('|').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected value {text:?}"));
        assert!(values[n].is_empty(), "rec-{n} twice");
        values[n] = text;
    }
    (values, log)
}

fn topics(prefix: &str) -> (String, String, String) {
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, 2);
    create_topic(&output, 2);
    (input, output, group)
}

fn snoop_config(dir: &Path, input: &str, output: &str, group: &str, extra: &str) -> String {
    let tail = format!(
        "[plugin]\npath = \"{}\"\nwatch = false\n{extra}",
        test_plugin("sluice_test_snoop").display()
    );
    write_file(
        dir,
        "sandbox.toml",
        &config_text(input, output, group, "", "", &tail),
    )
    .display()
    .to_string()
}

#[test]
fn a_hostile_plugin_is_denied_files_network_and_environment_and_every_record_still_flows() {
    let (input, output, group) = topics("sbx-hostile");
    let dir = workdir();
    let secret = unique("hunter2");
    let broker = bootstrap();
    let config = snoop_config(
        dir.path(),
        &input,
        &output,
        &group,
        &format!(
            "[plugin.config]\nread = \"/etc/passwd\"\nconnect = \"{broker}\"\nenv = \"SLUICE_TEST_SECRET\"\nargs = \"\"\n"
        ),
    );
    let mut command = sluice(&["run", "--config", &config]);
    command.env("SLUICE_TEST_SECRET", &secret);
    let (values, log) = run_pipeline(dir.path(), &input, &output, command);

    // What the plugin got, for every record: a denial each time, nothing of the host's.
    let suffix = values[0].strip_prefix("rec-0").unwrap().to_string();
    let outcomes: Vec<&str> = suffix.split('|').skip(1).collect();
    assert_eq!(outcomes.len(), 4, "{suffix}");
    assert!(
        outcomes[0].starts_with("read:denied: read /etc/passwd: No such file or directory"),
        "{suffix}"
    );
    assert!(
        outcomes[1].starts_with(&format!(
            "connect:denied: connect {broker}: Permission denied"
        )),
        "{suffix}"
    );
    assert_eq!(
        outcomes[2],
        "env:denied: env SLUICE_TEST_SECRET: environment variable not found (0 visible)"
    );
    assert_eq!(outcomes[3], "args:denied: no arguments");
    for (i, value) in values.iter().enumerate() {
        assert_eq!(value, &format!("rec-{i}{suffix}"), "record {i}");
    }
    assert!(
        !suffix.contains("root:"),
        "no line of /etc/passwd: {suffix}"
    );

    // Reported in the host's log: the network attempt by the host itself, each
    // attempt by the plugin through its `log` import, once per instance.
    assert!(
        log.contains("Plugin denied a TCP socket: plugins may not use the network")
            && log.contains("plugin=sluice_test_snoop"),
        "{log}"
    );
    for probe in ["read:", "connect:", "env:", "args:"] {
        let line = format!("sandbox probe {probe} denied");
        assert_eq!(log.matches(&line).count(), 1, "{line:?} once in:\n{log}");
    }
    assert!(!log.contains(&secret), "the secret stays out of the log");
}

#[test]
fn a_granted_variable_and_read_only_directory_are_visible_and_nothing_else() {
    let (input, output, group) = topics("sbx-grant");
    let dir = workdir();
    let reference = dir.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    std::fs::write(reference.join("rates.csv"), "EUR,1.08\n").unwrap();
    let config = snoop_config(
        dir.path(),
        &input,
        &output,
        &group,
        &format!(
            r#"[plugin.config]
read = "/ref/rates.csv"
write = "/ref/new.csv"
env = "SLUICE_TEST_REGION"
[plugin.sandbox]
env = ["SLUICE_TEST_REGION"]
dirs = [{{ host = "{}", guest = "/ref" }}]
"#,
            reference.display()
        ),
    );
    let mut command = sluice(&["run", "--config", &config]);
    command
        .env("SLUICE_TEST_REGION", "eu-west-1")
        .env("SLUICE_TEST_NOT_GRANTED", "x");
    let (values, log) = run_pipeline(dir.path(), &input, &output, command);

    let suffix = values[0].strip_prefix("rec-0").unwrap().to_string();
    let outcomes: Vec<&str> = suffix.split('|').skip(1).collect();
    assert_eq!(outcomes.len(), 3, "{suffix}");
    assert_eq!(outcomes[0], "read:allowed: EUR,1.08");
    assert!(
        outcomes[1].starts_with("write:denied: write /ref/new.csv: "),
        "{suffix}"
    );
    assert_eq!(
        outcomes[2], "env:allowed: SLUICE_TEST_REGION=eu-west-1 (1 visible)",
        "the granted variable only"
    );
    for (i, value) in values.iter().enumerate() {
        assert_eq!(value, &format!("rec-{i}{suffix}"), "record {i}");
    }
    assert!(
        !reference.join("new.csv").exists(),
        "nothing written:\n{log}"
    );
}

#[test]
fn grants_that_do_not_exist_on_the_host_are_config_errors_with_their_key_paths() {
    let dir = workdir();
    let config = snoop_config(
        dir.path(),
        "in",
        "out",
        "g",
        "[plugin.config]\nargs = \"\"\n[plugin.sandbox]\nenv = [\"SLUICE_TEST_UNSET_VARIABLE\"]\ndirs = [{ host = \"/surely/not/here\", guest = \"/ref\" }]\n",
    );
    let answer = sluice(&["validate", "--config", &config])
        .env_remove("SLUICE_TEST_UNSET_VARIABLE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&answer.stderr);
    assert_eq!(answer.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "plugin.sandbox.env: `SLUICE_TEST_UNSET_VARIABLE` is not set in Sluice's environment"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "plugin.sandbox.dirs[0].host: /surely/not/here does not exist or is not a directory"
        ),
        "{stderr}"
    );
}

#[test]
fn a_swapped_in_version_that_grows_without_bound_is_rejected_and_the_previous_keeps_running() {
    let (input, output, group) = topics("sbx-hog");
    let dir = workdir();
    let hog = dir.path().join("hog.wasm");
    std::fs::copy(test_plugin("sluice_test_hog"), &hog).unwrap();
    // The tag plugins ignore `hog_in`; the hog grows during init and never goes live.
    let tail = format!(
        "[plugin]\npath = \"{}\"\nwatch = false\nmax_memory_mb = 64\n[plugin.config]\nhog_in = \"init\"\n",
        test_plugin("sluice_test_tag_a").display()
    );
    let config = write_file(
        dir.path(),
        "hog.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let admin = free_address();
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command.env("SLUICE_ADMIN", &admin);
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Partitions assigned.", Duration::from_secs(30));
    let live = admin_status(&admin)["live"]["digest"].clone();

    let answer = sluice(&["plugin", "swap", hog.to_str().unwrap(), "--admin", &admin])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&answer.stderr);
    assert_eq!(answer.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rejected")
            && stderr.contains("exceeded its memory limit of 64 MiB")
            && stderr.contains("plugin.max_memory_mb"),
        "{stderr}"
    );
    assert_eq!(
        admin_status(&admin)["live"]["digest"],
        live,
        "the previous version stays live"
    );

    let records: Vec<TestRecord> = (0..COUNT)
        .map(|i| TestRecord::value((i % 2) as i32, &format!("rec-{i}")))
        .collect();
    produce(&input, &records);
    host.wait_until("every record in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= COUNT as i64
    });
    assert!(host.terminate().success(), "{}", host.log());
    let written = read_all(&output, COUNT + 1, Duration::from_secs(10));
    assert_eq!(written.len(), COUNT);
    for record in &written {
        let tags: Vec<_> = record.headers.iter().filter(|(n, _)| n == "tag").collect();
        assert_eq!(
            tags,
            [&("tag".to_string(), Some(b"A".to_vec()))],
            "{record:?}"
        );
    }
}

#[test]
fn a_swapped_in_version_gets_the_same_grants() {
    let (input, output, group) = topics("sbx-swap");
    let dir = workdir();
    let reference = dir.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    std::fs::write(reference.join("rates.csv"), "EUR,1.08\n").unwrap();
    let snoop = dir.path().join("snoop.wasm");
    std::fs::copy(test_plugin("sluice_test_snoop"), &snoop).unwrap();
    // The pass-through goes live first; the snoop plugin arrives by swap.
    let tail = format!(
        r#"[plugin]
watch = false
[plugin.config]
read = "/ref/rates.csv"
env = "SLUICE_TEST_REGION"
[plugin.sandbox]
env = ["SLUICE_TEST_REGION"]
dirs = [{{ host = "{}", guest = "/ref" }}]
"#,
        reference.display()
    );
    let config = write_file(
        dir.path(),
        "swap.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let admin = free_address();
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command
        .env("SLUICE_ADMIN", &admin)
        .env("SLUICE_TEST_REGION", "eu-west-1");
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Partitions assigned.", Duration::from_secs(30));
    let answer = sluice(&["plugin", "swap", snoop.to_str().unwrap(), "--admin", &admin])
        .output()
        .unwrap();
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    assert_eq!(
        admin_status(&admin)["live"]["digest"].as_str().unwrap(),
        file_digest(&snoop)
    );

    let (values, _) = collect(host, &input, &output);
    for (i, value) in values.iter().enumerate() {
        assert_eq!(
            value,
            &format!(
                "rec-{i}|read:allowed: EUR,1.08|env:allowed: SLUICE_TEST_REGION=eu-west-1 (1 visible)"
            ),
            "record {i}"
        );
    }
}

/// Follows a process's peak resident memory (`VmHWM`, its high-water mark) from
/// /proc until the process is gone.
struct PeakRss {
    peak_kb: std::sync::Arc<std::sync::atomic::AtomicU64>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        use std::sync::atomic::Ordering;
        let peak_kb = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = peak_kb.clone();
        let watcher = std::thread::spawn(move || {
            // A zombie has no memory lines: the loop ends when the host has exited.
            while let Some(kb) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|line| line.strip_prefix("VmHWM:"))
                        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                })
            {
                seen.fetch_max(kb, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        PeakRss {
            peak_kb,
            watcher: Some(watcher),
        }
    }

    /// The peak in MB, once the process has exited.
    fn mb(mut self) -> u64 {
        self.watcher.take().unwrap().join().unwrap();
        self.peak_kb.load(std::sync::atomic::Ordering::Relaxed) / 1024
    }
}

/// What a host may hold beyond its plugin's memory limit. Measured with these tests
/// (debug build): 41 MB for a host whose plugin was refused its first growth, 57 MB
/// with 16 MiB granted, 282 MB with 256 MiB granted; so the host itself takes some
/// 40 to 60 MB, and 150 MB leaves room for compiling and for the plugin's code.
const HOST_MARGIN_MB: u64 = 150;

/// A transform component whose core module declares `memories` linear memories and
/// one table. On its first batch it grows every memory by `pages` 64 KiB pages,
/// `rounds` times in turn, writing to every 4 KiB of what it got, then grows the
/// table by `elements`. A refused growth traps (`unreachable`).
fn hoarder(memories: usize, pages: u32, rounds: u32, elements: u32) -> Vec<u8> {
    let mut declarations = String::from("(memory $m0 (export \"memory\") 1)\n");
    let mut growers = String::new();
    let mut calls = String::new();
    for k in 0..memories {
        if k > 0 {
            declarations.push_str(&format!("(memory $m{k} 0)\n"));
        }
        growers.push_str(&format!(
            r#"(func $grow{k}
              (local $old i32) (local $at i32) (local $end i32)
              (local.set $old (memory.grow $m{k} (i32.const {pages})))
              (if (i32.eq (local.get $old) (i32.const -1)) (then unreachable))
              (local.set $at (i32.mul (local.get $old) (i32.const 65536)))
              (local.set $end (i32.add (local.get $at) (i32.const {bytes})))
              (block $done (loop $touch
                (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
                (i32.store8 $m{k} (local.get $at) (i32.const 165))
                (local.set $at (i32.add (local.get $at) (i32.const 4096)))
                (br $touch))))
            "#,
            bytes = pages * 65536
        ));
        calls.push_str(&format!("(call $grow{k})\n"));
    }
    let text = format!(
        r#"(component
          (core module $m
            {declarations}
            (table $t 0 funcref)
            (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
            (func (export "init") (param i32 i32) (result i32) i32.const 16)
            {growers}
            (func (export "process") (param i32 i32) (result i32)
              (local $round i32)
              (block $done (loop $again
                (br_if $done (i32.ge_u (local.get $round) (i32.const {rounds})))
                {calls}
                (local.set $round (i32.add (local.get $round) (i32.const 1)))
                (br $again)))
              (if (i32.eq (table.grow $t (ref.null func) (i32.const {elements})) (i32.const -1))
                (then unreachable))
              i32.const 16))
          (core instance $i (instantiate $m))
          (func $init (param "config" (list (tuple string string))) (result (result (error string)))
            (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
          (func $process (param "input" (list u8)) (result (result (list u8) (error string)))
            (canon lift (core func $i "process") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
          (instance $transform
            (export "init" (func $init))
            (export "process" (func $process)))
          (export "sluice:plugin/transform@0.1.0" (instance $transform)))
        "#
    );
    wat::parse_str(&text).unwrap()
}

/// Runs `plugin` (component bytes) with `max_memory_mb` (none: the default) on one
/// record until the host exits; returns its exit code, log and peak RSS in MB.
fn run_hostile(
    prefix: &str,
    plugin: &[u8],
    max_memory_mb: Option<u64>,
) -> (Option<i32>, String, u64) {
    let (input, output, group) = topics(prefix);
    let dir = workdir();
    let path = dir.path().join("hostile.wasm");
    std::fs::write(&path, plugin).unwrap();
    let limit = max_memory_mb
        .map(|mb| format!("max_memory_mb = {mb}\n"))
        .unwrap_or_default();
    let tail = format!(
        "[plugin]\npath = \"{}\"\nwatch = false\n{limit}",
        path.display()
    );
    let config = write_file(
        dir.path(),
        "hostile.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let mut host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    let peak = PeakRss::watch(host.pid());
    host.wait_for_log("Partitions assigned.", Duration::from_secs(60));
    produce(&input, &[TestRecord::value(0, "rec-0")]);
    let status = host.wait(Duration::from_secs(60));
    (status.code(), host.log(), peak.mb())
}

#[test]
fn thirty_two_memories_share_one_budget_and_the_host_stays_within_it() {
    // 32 memories of 16 MiB each: 512 MiB if each memory had the limit of its own.
    let (code, log, peak) = run_hostile("sbx-mems", &hoarder(32, 16, 16, 0), Some(16));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("exceeded its memory limit of 16 MiB") && log.contains("plugin.max_memory_mb"),
        "{log}"
    );
    assert!(peak < 16 + HOST_MARGIN_MB, "peak RSS {peak} MB:\n{log}");
}

#[test]
fn eight_memories_under_the_default_limit_share_its_256_mib() {
    // 8 memories of 256 MiB each: 2 GiB if each memory had the limit of its own.
    let (code, log, peak) = run_hostile("sbx-mems-default", &hoarder(8, 256, 16, 0), None);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("exceeded its memory limit of 256 MiB"),
        "{log}"
    );
    assert!(peak < 256 + HOST_MARGIN_MB, "peak RSS {peak} MB:\n{log}");
}

#[test]
fn a_table_of_64_million_entries_is_refused_and_tables_count_against_the_budget() {
    let (code, log, peak) = run_hostile("sbx-table", &hoarder(1, 0, 0, 64 << 20), None);
    assert_eq!(code, Some(1), "{log}");
    // 64 Mi elements of 8 bytes, and the memory's first page.
    assert!(
        log.contains("exceeded its memory limit of 256 MiB (it asked for 513 MiB)"),
        "{log}"
    );
    assert!(peak < HOST_MARGIN_MB, "peak RSS {peak} MB:\n{log}");
    // 12 MiB of memory and 512 Ki elements (4 MiB): over 16 MiB together only.
    let (code, log, _) = run_hostile("sbx-table-sum", &hoarder(1, 192, 1, 512 << 10), Some(16));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("exceeded its memory limit of 16 MiB"), "{log}");
}

#[test]
fn a_plugin_cannot_forge_flood_or_swell_the_host_log() {
    const FORGED: &str = "2026-01-01T00:00:00.000000Z ERROR sluice_host::pipeline: FORGED";
    let (input, output, group) = topics("sbx-log");
    let dir = workdir();
    let tail = format!(
        "[plugin]\npath = \"{}\"\nwatch = false\n[plugin.config]\nhog = \"log\"\n",
        test_plugin("sluice_test_hog").display()
    );
    let config = write_file(
        dir.path(),
        "log.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    let peak = PeakRss::watch(host.pid());
    let (values, log) = collect(host, &input, &output);
    for (i, value) in values.iter().enumerate() {
        assert_eq!(
            value,
            &format!("rec-{i}"),
            "every record forwarded as it was"
        );
    }
    let peak = peak.mb();

    // Each forged line stays inside the plugin's own line, its separator escaped.
    let forged: Vec<&str> = log.lines().filter(|line| line.contains("FORGED")).collect();
    assert_eq!(forged.len(), 3, "{forged:#?}");
    assert!(
        log.lines().all(|line| !line.starts_with(FORGED)),
        "{forged:#?}"
    );
    assert!(
        forged.iter().all(|line| line.contains("innocent")),
        "{forged:#?}"
    );
    assert!(
        forged.iter().any(|line| line.contains("innocent\\n2026")),
        "{forged:#?}"
    );
    assert!(
        forged.iter().any(|line| line.contains("innocent\\r2026")),
        "{forged:#?}"
    );
    assert!(
        forged
            .iter()
            .any(|line| line.contains("innocent\\u{2028}2026")),
        "{forged:#?}"
    );
    assert!(
        !log.contains('\r') && !log.contains('\x1b') && !log.contains('\x07'),
        "no carriage return or terminal escape reaches the log"
    );

    // The 120 MB message and the 200 MB line: 4 KiB of each, and how much was cut.
    assert!(
        log.contains("…[cut 119995904 bytes]"),
        "the log message is cut"
    );
    assert!(
        log.contains("…[cut 199995904 bytes]"),
        "the stdout line is cut"
    );
    let longest = log.lines().map(str::len).max().unwrap();
    assert!(
        longest <= 4096 + "…[cut 199995904 bytes]".len() + 200,
        "a line of {longest} bytes"
    );

    // The flood: at most the burst gets through, the rest is counted.
    let flooded = log.lines().filter(|line| line.contains(" flood ")).count();
    let dropped: usize = log
        .lines()
        .filter_map(|line| {
            line.split(" plugin log lines dropped")
                .next()
                .filter(|_| line.contains(" plugin log lines dropped"))
        })
        .filter_map(|head| head.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(flooded <= 200, "{flooded} flood lines in the log");
    assert_eq!(flooded + dropped, 10_000, "every line written or counted");

    // The host holds the plugin's memory (200 MB, under its limit of 256 MiB) and none
    // of what it logged again.
    assert!(peak < 256 + HOST_MARGIN_MB, "peak RSS {peak} MB");
}

/// `sluice plugin inspect PLUGIN` with debug logs, the compilation cache in `cache` and
/// its key in `key`; returns the exit success, stdout and stderr.
fn inspect_cached(plugin: &Path, cache: &Path, key: &Path) -> (bool, String, String) {
    let output = sluice(&["plugin", "inspect", plugin.to_str().unwrap()])
        .env("SLUICE_CACHE_DIR", cache)
        .env("SLUICE_CACHE_KEY_FILE", key)
        .env("RUST_LOG", "sluice_host=debug")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The entries of the compilation cache in `cache`.
fn cache_entries(cache: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "code"))
        .collect()
}

const CACHE_HIT: &str = "Plugin loaded from the compilation cache.";
const REJECTED: &str = "A compiled plugin in the compilation cache was rejected";

#[test]
fn a_tampered_compilation_cache_entry_is_not_run_and_is_replaced() {
    let dir = workdir();
    let cache = dir.path().join("cache");
    let key = dir.path().join("config/cache.key");
    let (tag_a, tag_b) = (
        test_plugin("sluice_test_tag_a"),
        test_plugin("sluice_test_tag_b"),
    );

    // Each plugin's entry, as its first compile writes it.
    let (ok, described_a, log) = inspect_cached(&tag_a, &cache, &key);
    assert!(ok, "{log}");
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry_a = entries.into_iter().next().unwrap();
    let (ok, _, log) = inspect_cached(&tag_b, &cache, &key);
    assert!(ok, "{log}");
    let entry_b = cache_entries(&cache)
        .into_iter()
        .find(|entry| entry != &entry_a)
        .unwrap();
    let name_a = entry_a.file_name().unwrap().to_str().unwrap().to_string();

    // Another component's entry, authentic for its own bytes, copied over tag-a's.
    std::fs::copy(&entry_b, &entry_a).unwrap();
    let b_code = std::fs::read(&entry_b).unwrap();
    let (input, output, group) = topics("sbx-cache");
    let tail = format!("[plugin]\npath = \"{}\"\nwatch = false\n", tag_a.display());
    let config = write_file(
        dir.path(),
        "cache.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command
        .env("SLUICE_CACHE_DIR", &cache)
        .env("SLUICE_CACHE_KEY_FILE", &key);
    let mut host = Sluice::spawn(dir.path(), command);
    let records: Vec<TestRecord> = (0..COUNT)
        .map(|i| TestRecord::value((i % 2) as i32, &format!("rec-{i}")))
        .collect();
    produce(&input, &records);
    host.wait_until("every record in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= COUNT as i64
    });
    assert!(host.terminate().success(), "{}", host.log());
    let log = host.log();
    let written = read_all(&output, COUNT + 1, Duration::from_secs(10));
    assert_eq!(written.len(), COUNT);
    for record in &written {
        let tags: Vec<_> = record.headers.iter().filter(|(n, _)| n == "tag").collect();
        assert_eq!(
            tags,
            [&("tag".to_string(), Some(b"A".to_vec()))],
            "tag-a's own code ran, not tag-b's: {record:?}"
        );
    }
    let rejections: Vec<&str> = log.lines().filter(|line| line.contains(REJECTED)).collect();
    assert_eq!(rejections.len(), 1, "{log}");
    assert!(
        rejections[0].contains(&name_a) && rejections[0].contains("integrity check"),
        "{log}"
    );
    assert!(entry_a.exists(), "the entry is written again");
    assert_ne!(std::fs::read(&entry_a).unwrap(), b_code, "and replaced");
    let (ok, again, log) = inspect_cached(&tag_a, &cache, &key);
    assert!(
        ok && log.contains(CACHE_HIT) && !log.contains(REJECTED),
        "{log}"
    );
    assert_eq!(again, described_a);

    // Garbage: code overwritten with `int3` instructions.
    std::fs::write(&entry_a, vec![0xCC; 64 << 10]).unwrap();
    let (ok, described, log) = inspect_cached(&tag_a, &cache, &key);
    assert!(ok, "{log}");
    assert_eq!(described, described_a, "tag-a described as itself");
    assert!(
        log.lines()
            .any(|line| line.contains(REJECTED) && line.contains(&name_a)),
        "{log}"
    );
    assert!(!log.contains(CACHE_HIT), "{log}");
    assert_ne!(std::fs::read(&entry_a).unwrap(), vec![0xCC; 64 << 10]);
}

#[test]
fn a_compilation_cache_others_may_write_or_own_is_not_used() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = workdir();
    let cache = dir.path().join("cache");
    let key = dir.path().join("config/cache.key");
    let tag_a = test_plugin("sluice_test_tag_a");
    let (ok, described_a, log) = inspect_cached(&tag_a, &cache, &key);
    assert!(ok, "{log}");
    let entry = cache_entries(&cache).into_iter().next().unwrap();
    // A planted entry a trusted cache would reject and delete: left alone, it shows
    // that the cache is not even read.
    std::fs::write(&entry, vec![0xCC; 4096]).unwrap();

    let mut cases = vec![("writable by group or others (mode 777)", 0o777, None)];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cases.push(("owned by uid 65534", 0o700, Some(65534)));
    }
    for (reason, mode, owner) in cases {
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&cache, Some(uid), None).unwrap();
        }
        let (ok, described, log) = inspect_cached(&tag_a, &cache, &key);
        assert!(ok, "{log}");
        assert_eq!(described, described_a);
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("The compilation cache is unusable"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning:\n{log}");
        assert!(warnings[0].contains(reason), "{reason}:\n{log}");
        assert!(!log.contains(CACHE_HIT) && !log.contains(REJECTED), "{log}");
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            vec![0xCC; 4096],
            "the cache is not read"
        );
        assert_eq!(cache_entries(&cache).len(), 1, "nor written");
    }
}
