//! Bad input gets a clear error and a non-zero exit, never a hang or a panic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

/// Runs `sluice` to completion (failing the test after `limit`) and returns its exit
/// code and stderr.
fn run_to_end(dir: &std::path::Path, args: &[&str], limit: Duration) -> (i32, String) {
    let mut sluice = Sluice::start(dir, args);
    let status = sluice.wait(limit);
    let log = sluice.log();
    assert!(
        !log.contains("thread 'main' panicked"),
        "the host never panics:\n{log}"
    );
    (status.code().unwrap_or(-1), log)
}

fn topics(
    prefix: &str,
    partitions_in: i32,
    partitions_out: Option<i32>,
) -> (String, String, String) {
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, partitions_in);
    if let Some(p) = partitions_out {
        create_topic(&output, p);
    }
    (input, output, group)
}

#[test]
fn an_unreachable_broker_fails_within_the_connect_timeout() {
    let dir = workdir();
    let text = config_text("in", "out", "g", "connect_timeout_ms = 3000", "", "")
        .replace(&format!("\"{}\"", bootstrap()), "\"127.0.0.1:1\"");
    let config = write_file(dir.path(), "c.toml", &text);
    let started = Instant::now();
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "gave up in {:?}",
        started.elapsed()
    );
    assert!(
        log.contains("could not reach Kafka (source) at 127.0.0.1:1 within 3 s"),
        "{log}"
    );
}

#[test]
fn a_missing_source_topic_is_named() {
    let dir = workdir();
    let (input, output, group) = (
        unique("nosuch-in"),
        unique("nosuch-out"),
        unique("nosuch-g"),
    );
    create_topic(&output, 1);
    let config = write_config(dir.path(), &input, &output, &group, "");
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", &config],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1);
    assert!(
        log.contains(&format!("source topic `{input}` does not exist")),
        "{log}"
    );
}

#[test]
fn a_missing_dead_letter_topic_is_named() {
    let dir = workdir();
    let (input, output, group) = topics("nodead", 1, Some(1));
    let dead_letter = unique("nodead-letter");
    let text = config_text(
        &input,
        &output,
        &group,
        "",
        &format!("dead_letter_topic = \"{dead_letter}\""),
        "",
    );
    let config = write_file(dir.path(), "c.toml", &text);
    // `validate` checks the file, not the cluster, and says where failed records go.
    let validated = sluice(&["validate", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&validated.stdout);
    assert!(validated.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("→ {output}; failed records → {dead_letter})")),
        "{stdout}"
    );
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "dead-letter topic `{dead_letter}` does not exist on {}; create it",
            bootstrap()
        )),
        "{log}"
    );
}

#[test]
fn a_missing_sink_topic_is_named_unless_creation_is_configured() {
    let dir = workdir();
    let (input, output, group) = topics("nosink", 2, None);
    let config = write_config(dir.path(), &input, &output, &group, "");
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", &config],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1);
    assert!(
        log.contains(&format!("sink topic `{output}` does not exist")),
        "{log}"
    );

    // With [sink.create_topic] the host creates it, with the source's partition count.
    let text = config_text(
        &input,
        &output,
        &group,
        "",
        "",
        "[sink.create_topic]\nreplication_factor = 1",
    );
    let config = write_file(dir.path(), "create.toml", &text);
    produce(&input, &[TestRecord::value(1, "hello")]);
    let mut sluice = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    sluice.wait_until(
        "the record in the created topic",
        Duration::from_secs(30),
        || end_offsets(&output).get(&1) == Some(&1),
    );
    assert!(sluice.terminate().success());
    assert_eq!(
        end_offsets(&output).len(),
        2,
        "created with the source's partition count"
    );
}

#[test]
fn a_sink_topic_with_fewer_partitions_than_the_source_is_refused() {
    let dir = workdir();
    let (input, output, group) = topics("small", 4, Some(2));
    let config = write_config(dir.path(), &input, &output, &group, "");
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", &config],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1);
    assert!(
        log.contains(&format!(
            "sink topic `{output}` has 2 partitions but the source has 4"
        )),
        "{log}"
    );
}

#[test]
fn a_state_changelog_with_another_partition_count_is_refused() {
    let dir = workdir();
    let (input, output, group) = topics("changelog", 4, Some(4));
    let changelog = format!("{group}-state-changelog");
    create_topic(&changelog, 3);
    let config = write_config(dir.path(), &input, &output, &group, "");
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", &config],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "state changelog topic `{changelog}` has 3 partitions but the source topic has 4"
        )),
        "{log}"
    );
}

#[test]
fn fresh_with_a_failing_fallback_is_refused() {
    let dir = workdir();
    let (input, output, group) = topics("fresh-fail", 1, Some(1));
    let config = write_config(
        dir.path(),
        &input,
        &output,
        &group,
        "startup = \"group-offsets\"\nstartup_fallback = \"fail\"",
    );
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", &config, "--fresh"],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("--fresh ignores committed offsets"), "{log}");
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = workdir();
    let bogus = write_file(dir.path(), "bogus.wasm", "this is not wasm");
    let config = write_config(dir.path(), "in", "out", "g", "");
    let bogus = bogus.to_str().unwrap();
    for command in ["validate", "run"] {
        let (code, log) = run_to_end(
            dir.path(),
            &[command, "--config", &config, "--plugin", bogus],
            Duration::from_secs(30),
        );
        // Invalid input for `run` as for `validate` (the README promises 2).
        assert_eq!(code, 2, "{command}: {log}");
        assert!(
            log.contains("bogus.wasm") && log.contains("not a valid WebAssembly component"),
            "{command}: {log}"
        );
    }
}

#[test]
fn a_component_of_another_world_is_refused_with_what_it_exports() {
    let dir = workdir();
    let config = write_config(dir.path(), "in", "out", "g", "");
    let plugin = test_plugin("sluice_test_other_world");
    let (code, log) = run_to_end(
        dir.path(),
        &[
            "validate",
            "--config",
            &config,
            "--plugin",
            plugin.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2);
    assert!(log.contains("not a Sluice transform"), "{log}");
    assert!(log.contains("sluice:plugin/transform@0.1.0"), "{log}");
    assert!(log.contains("greet"), "names what it does export: {log}");
}

#[test]
fn a_plugin_whose_init_fails_is_refused_with_its_message() {
    let dir = workdir();
    let plugin = test_plugin("sluice_test_faulty");
    let tail = format!(
        "[plugin]\npath = \"{}\"\n[plugin.config]\ninit_error = \"threshold must be set\"",
        plugin.display()
    );
    let config = write_file(
        dir.path(),
        "c.toml",
        &config_text("in", "out", "g", "", "", &tail),
    );
    let (code, log) = run_to_end(
        dir.path(),
        &["validate", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2);
    assert!(log.contains("init failed: threshold must be set"), "{log}");
}

#[test]
fn a_config_with_several_mistakes_reports_them_all_with_key_paths() {
    let dir = workdir();
    let text = r#"version = 1
[source]
bootstrap_servers = "127.0.0.1:9092"
startup = "earlest"
batch_max_records = 0
[sink]
topic = "out"
partitioning = "random"
[checkpoint]
interval_ms = 5
intervall_ms = 1000
[plugin]
path = "/nonexistent/plugin.wasm"
"#;
    let config = write_file(dir.path(), "bad.toml", text);
    let (code, log) = run_to_end(
        dir.path(),
        &["validate", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2);
    for expected in [
        "bad.toml has 8 problems",
        "checkpoint.intervall_ms: unknown key",
        "source.topic: missing",
        "source.group_id: missing",
        "source.startup: `earlest` is not one of",
        "source.batch_max_records: 0 is out of range",
        "sink.partitioning: `random` is not one of",
        "checkpoint.interval_ms: 5 is out of range",
        "plugin.path: /nonexistent/plugin.wasm does not exist",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
    // `run` refuses the same file the same way, before touching Kafka.
    let (code, run_log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2);
    assert!(
        run_log.contains("checkpoint.intervall_ms: unknown key"),
        "{run_log}"
    );
}

#[test]
fn unknown_keys_and_sections_are_rejected() {
    let dir = workdir();
    let text = config_text(
        "in",
        "out",
        "g",
        "colour = \"blue\"",
        "",
        "[metrics]\nport = 9000",
    );
    let config = write_file(dir.path(), "unknown.toml", &text);
    let (code, log) = run_to_end(
        dir.path(),
        &["validate", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 2);
    assert!(log.contains("source.colour: unknown key"), "{log}");
    assert!(log.contains("metrics: unknown key"), "{log}");
}

/// A pipeline file whose plugin fails every record with `poison` in its value.
fn failing_on_poison(
    dir: &std::path::Path,
    input: &str,
    output: &str,
    group: &str,
    sink_extra: &str,
) -> std::path::PathBuf {
    poison_config(dir, input, output, group, sink_extra, Poison::Fails, "")
}

/// What the faulty plugin does with a record whose value contains "poison".
#[derive(Clone, Copy, PartialEq)]
enum Poison {
    /// Reports it failed.
    Fails,
    /// Panics: the whole batch traps.
    Traps,
}

fn poison_config(
    dir: &std::path::Path,
    input: &str,
    output: &str,
    group: &str,
    sink_extra: &str,
    poison: Poison,
    plugin_extra: &str,
) -> std::path::PathBuf {
    let plugin = test_plugin("sluice_test_faulty");
    let setting = match poison {
        Poison::Fails => "fail_on",
        Poison::Traps => "trap_on",
    };
    let tail = format!(
        "[plugin]\npath = \"{}\"\n[plugin.config]\n{setting} = \"poison\"\n{plugin_extra}",
        plugin.display()
    );
    write_file(
        dir,
        "c.toml",
        &config_text(input, output, group, "", sink_extra, &tail),
    )
}

#[test]
fn a_record_the_plugin_fails_stops_the_pipeline_and_stays_uncommitted() {
    let dir = workdir();
    let (input, output, group) = topics("poison", 1, Some(1));
    let records: Vec<TestRecord> = (0..20)
        .map(|i| TestRecord::value(0, if i == 12 { "poison pill" } else { "fine" }))
        .collect();
    produce(&input, &records);
    let config = failing_on_poison(dir.path(), &input, &output, &group, "");
    let config = config.to_str().unwrap();
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "failed on record {input}/0@12: value matched `fail_on`"
        )),
        "{log}"
    );
    let offset = committed(&group, &input).get(&0).copied().unwrap_or(0);
    assert!(
        offset <= 12,
        "the failed record's offset is not committed (committed {offset})"
    );

    // A restart retries the same record and fails the same way.
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1);
    assert!(log.contains(&format!("{input}/0@12")), "{log}");
}

#[test]
fn with_a_dead_letter_topic_failed_records_go_there_and_the_rest_flows_on() {
    dead_letter_case("at-least-once", Poison::Fails);
}

#[test]
fn exactly_once_dead_letters_each_failed_record_once_in_the_checkpoint_transaction() {
    dead_letter_case("exactly-once", Poison::Fails);
}

#[test]
fn with_a_dead_letter_topic_a_record_that_traps_goes_there_alone() {
    dead_letter_case("at-least-once", Poison::Traps);
}

#[test]
fn exactly_once_dead_letters_only_the_records_that_trap() {
    dead_letter_case("exactly-once", Poison::Traps);
}

/// Every tenth of 60 records fails in the plugin (reported failed, or a trap of the
/// whole batch): those reach the dead-letter topic as they were read, with the
/// reason, the others reach the sink, each exactly once, and every offset is
/// committed. Every record counts itself in keyed state before it fails or goes
/// through: a failed record's count must not stay, so the records that went through
/// counted 1, 2, 3... in each input partition.
fn dead_letter_case(delivery: &str, poison: Poison) {
    let dir = workdir();
    let (input, output, group) = topics("dead", 2, Some(2));
    let dead_letter = unique("dead-letter");
    create_topic(&dead_letter, 1);
    // Every tenth record of 60 is poison; each carries a key and a header of its own.
    let records: Vec<TestRecord> = (0..60)
        .map(|i| TestRecord {
            partition: i % 2,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(
                if i % 10 == 3 {
                    format!("poison {i}")
                } else {
                    format!("fine {i}")
                }
                .into_bytes(),
            ),
            headers: vec![("n".to_string(), Some(i.to_string().into_bytes()))],
            timestamp: None,
        })
        .collect();
    produce(&input, &records);
    let config = poison_config(
        dir.path(),
        &input,
        &output,
        &group,
        &format!("dead_letter_topic = \"{dead_letter}\""),
        poison,
        "count_in_state = \"seen\"",
    );
    add_top_level(&config, &format!("delivery = \"{delivery}\""));
    let mut host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);

    let fine = read_all(&output, 54, Duration::from_secs(60));
    let failed = read_all(&dead_letter, 6, Duration::from_secs(30));
    let values = |records: &[TestRecord]| {
        let mut values: Vec<String> = records.iter().map(TestRecord::value_text).collect();
        values.sort();
        values
    };
    let mut expected_fine: Vec<String> = (0..60)
        .filter(|i| i % 10 != 3)
        .map(|i| format!("fine {i}"))
        .collect();
    expected_fine.sort();
    assert_eq!(values(&fine), expected_fine);
    // The counts each input partition's records saw, in input order: 1, 2, 3...
    let header_text = |record: &TestRecord, name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("an output without `{name}`: {record:?}"))
    };
    for partition in 0..2 {
        let mut counts: Vec<(u64, u64)> = fine
            .iter()
            .map(|record| {
                let n: u64 = header_text(record, "n").parse().unwrap();
                (n, header_text(record, "count").parse().unwrap())
            })
            .filter(|(n, _)| n % 2 == partition)
            .collect();
        counts.sort();
        let seen: Vec<u64> = counts.iter().map(|(_, count)| *count).collect();
        let expected: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(seen, expected, "counts of input partition {partition}");
    }
    let mut expected_failed: Vec<String> = (0..60)
        .filter(|i| i % 10 == 3)
        .map(|i| format!("poison {i}"))
        .collect();
    expected_failed.sort();
    assert_eq!(values(&failed), expected_failed);
    // Each failed record arrives as it was read, with the reason and its origin.
    let mut offsets = [0i64; 2];
    for (i, record) in records.iter().enumerate() {
        let offset = offsets[record.partition as usize];
        offsets[record.partition as usize] += 1;
        if i % 10 != 3 {
            continue;
        }
        let dead = failed
            .iter()
            .find(|r| r.value == record.value)
            .expect("every poison record is in the dead-letter topic");
        assert_eq!(dead.key, record.key);
        let header = |name: &str| {
            dead.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.clone())
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(header("n"), Some(i.to_string()));
        let error = header("sluice-error").expect("the reason is in a header");
        match poison {
            Poison::Fails => assert_eq!(error, "value matched `fail_on`"),
            // The trap of this record alone, with the plugin's panic message.
            Poison::Traps => assert!(
                error.starts_with("trapped: ")
                    && error.contains(&format!("asked to trap at offset {offset}")),
                "{error}"
            ),
        }
        assert_eq!(
            header("sluice-source"),
            Some(format!("{input}/{}@{offset}", record.partition))
        );
    }

    host.wait_for_log(
        "Records failed; they go to the dead-letter topic.",
        Duration::from_secs(10),
    );
    let status = host.terminate();
    let log = host.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("numRecordsDeadLettered=6"), "{log}");
    assert_eq!(
        log.contains("A batch failed as a whole"),
        poison == Poison::Traps,
        "{log}"
    );
    assert_eq!(
        log.contains("Records that failed had written state"),
        poison == Poison::Fails,
        "{log}"
    );
    // Every input is behind the committed offsets: nothing will be read again.
    assert_eq!(
        committed(&group, &input),
        BTreeMap::from([(0, 30), (1, 30)])
    );
    // And nothing was written twice (both topics read to their ends).
    assert_eq!(read_all(&output, 54, Duration::from_secs(30)).len(), 54);
    assert_eq!(read_all(&dead_letter, 6, Duration::from_secs(30)).len(), 6);
}

#[test]
fn a_plugin_trap_stops_the_pipeline_with_the_panic_message() {
    let dir = workdir();
    let (input, output, group) = topics("trap", 1, Some(1));
    produce(
        &input,
        &[TestRecord::value(0, "ok"), TestRecord::value(0, "boom")],
    );
    let plugin = test_plugin("sluice_test_faulty");
    let tail = format!(
        "[plugin]\npath = \"{}\"\n[plugin.config]\ntrap_on = \"boom\"",
        plugin.display()
    );
    let config = write_file(
        dir.path(),
        "c.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("trapped"), "{log}");
    assert!(
        log.contains("asked to trap at offset 1"),
        "the plugin's panic message: {log}"
    );
    assert_eq!(committed(&group, &input).get(&0).copied().unwrap_or(0), 0);
}

#[test]
fn parallelism_comes_from_the_file_or_the_command_line_and_is_checked() {
    let dir = workdir();
    let text = with_top_level(
        &config_text("in", "out", "g", "", "", ""),
        "parallelism = 3",
    );
    let config = write_file(dir.path(), "p.toml", &text);
    let validate_file = |config: &std::path::Path, extra: &[&str], env: Option<&str>| {
        let config = config.to_str().unwrap();
        let mut command = sluice(&[&["validate", "--config", config], extra].concat());
        command.env_remove("SLUICE_PARALLELISM");
        if let Some(value) = env {
            command.env("SLUICE_PARALLELISM", value);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let validate = |extra: &[&str], env: Option<&str>| validate_file(&config, extra, env);
    let (code, stdout, _) = validate(&[], None);
    assert_eq!(code, Some(0));
    assert!(stdout.ends_with("→ out; 3 workers)\n"), "{stdout}");
    let (_, stdout, _) = validate(&["--parallelism", "2"], None);
    assert!(stdout.ends_with("→ out; 2 workers)\n"), "{stdout}");
    let (_, stdout, _) = validate(&[], Some("4"));
    assert!(stdout.ends_with("→ out; 4 workers)\n"), "{stdout}");
    let (_, stdout, _) = validate(&["--parallelism", "1"], None);
    assert!(stdout.ends_with("→ out)\n"), "{stdout}");
    let (code, _, stderr) = validate(&["--parallelism", "0"], None);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("0 is not in 1..=64"), "{stderr}");

    let zero = write_file(
        dir.path(),
        "zero.toml",
        &text.replacen("parallelism = 3", "parallelism = 0", 1),
    );
    let (code, _, stderr) = validate_file(&zero, &[], None);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("parallelism: 0 is out of range; use 1 to 64"),
        "{stderr}"
    );
}

/// With `parallelism = 2`, a record the plugin fails stops the host with exit 1,
/// whichever worker meets it (a worker that stops hands its partitions to the other,
/// which meets the record too), and stays uncommitted.
#[test]
fn a_failed_record_stops_a_parallel_host() {
    let dir = workdir();
    let (input, output, group) = topics("wfail", 2, Some(2));
    let mut records: Vec<TestRecord> = (0..20)
        .map(|i| TestRecord::value(0, &format!("fine {i}")))
        .collect();
    records.extend((0..20).map(|i| TestRecord::value(1, if i == 10 { "poison" } else { "fine" })));
    produce(&input, &records);
    let config = failing_on_poison(dir.path(), &input, &output, &group, "");
    add_top_level(&config, "parallelism = 2");
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "failed on record {input}/1@10: value matched `fail_on`"
        )),
        "{log}"
    );
    let committed = committed(&group, &input);
    assert!(
        committed.get(&1).copied().unwrap_or(0) <= 10,
        "the failed record stays uncommitted: {committed:?}"
    );
}
