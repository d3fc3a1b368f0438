//! Startup modes: where reading begins when the group has no committed offset, and
//! that committed progress wins over the mode.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<TestRecord> {
    range
        .map(|i| TestRecord::value(0, &format!("{prefix}-{i}")))
        .collect()
}

fn values(topic: &str, expected: usize) -> Vec<String> {
    // Reading a little past the expected count shows extra records if there are any.
    let records = read_all(topic, expected + 1, Duration::from_secs(3));
    records.iter().map(TestRecord::value_text).collect()
}

struct Case {
    input: String,
    output: String,
    group: String,
    dir: tempfile::TempDir,
}

fn case(prefix: &str) -> Case {
    let case = Case {
        input: unique(&format!("{prefix}-in")),
        output: unique(&format!("{prefix}-out")),
        group: unique(&format!("{prefix}-g")),
        dir: workdir(),
    };
    create_topic(&case.input, 1);
    create_topic(&case.output, 1);
    case
}

impl Case {
    fn start(&self, source_extra: &str) -> Sluice {
        let config = write_config(
            self.dir.path(),
            &self.input,
            &self.output,
            &self.group,
            source_extra,
        );
        Sluice::start(self.dir.path(), &["run", "--config", &config])
    }

    fn run_until(&self, source_extra: &str, sink_count: i64) -> Sluice {
        let mut sluice = self.start(source_extra);
        sluice.wait_for_log("Partitions assigned.", Duration::from_secs(30));
        sluice.wait_until("records in the sink", Duration::from_secs(30), || {
            total(&end_offsets(&self.output)) >= sink_count
        });
        sluice
    }
}

#[test]
fn earliest_reads_what_was_written_before_the_start() {
    let c = case("st-earliest");
    produce(&c.input, &numbered("old", 0..10));
    let mut sluice = c.run_until("startup = \"earliest\"", 10);
    assert!(sluice.terminate().success());
    let expected: Vec<String> = (0..10).map(|i| format!("old-{i}")).collect();
    assert_eq!(values(&c.output, 10), expected);
}

#[test]
fn latest_skips_what_was_written_before_the_start() {
    let c = case("st-latest");
    produce(&c.input, &numbered("old", 0..10));
    let mut sluice = c.start("startup = \"latest\"");
    sluice.wait_for_log("Partitions assigned.", Duration::from_secs(30));
    // The first fetch resolves "latest"; give it a moment before writing new records.
    std::thread::sleep(Duration::from_secs(2));
    produce(&c.input, &numbered("new", 0..5));
    sluice.wait_until("new records in the sink", Duration::from_secs(30), || {
        total(&end_offsets(&c.output)) >= 5
    });
    assert!(sluice.terminate().success());
    let expected: Vec<String> = (0..5).map(|i| format!("new-{i}")).collect();
    assert_eq!(values(&c.output, 5), expected);
}

#[test]
fn group_offsets_resume_where_the_group_committed() {
    let c = case("st-group");
    produce(&c.input, &numbered("r", 0..10));
    commit(&c.group, &c.input, &BTreeMap::from([(0, 6)]));
    let mut sluice = c.run_until(
        "startup = \"group-offsets\"\nstartup_fallback = \"fail\"",
        4,
    );
    assert!(sluice.terminate().success());
    let expected: Vec<String> = (6..10).map(|i| format!("r-{i}")).collect();
    assert_eq!(values(&c.output, 4), expected);
}

#[test]
fn group_offsets_without_a_commit_use_the_fallback() {
    let c = case("st-fallback");
    produce(&c.input, &numbered("r", 0..3));
    let mut sluice = c.run_until(
        "startup = \"group-offsets\"\nstartup_fallback = \"earliest\"",
        3,
    );
    assert!(sluice.terminate().success());
    assert_eq!(values(&c.output, 3), vec!["r-0", "r-1", "r-2"]);
}

#[test]
fn group_offsets_without_a_commit_and_fallback_fail_stop_with_a_clear_error() {
    let c = case("st-fail");
    produce(&c.input, &numbered("r", 0..3));
    let mut sluice = c.start("startup = \"group-offsets\"\nstartup_fallback = \"fail\"");
    let status = sluice.wait(Duration::from_secs(30));
    assert!(!status.success());
    let log = sluice.log();
    assert!(
        log.contains("no committed offset") && log.contains("startup_fallback"),
        "{log}"
    );
    assert_eq!(total(&end_offsets(&c.output)), 0, "nothing was written");
}

#[test]
fn timestamp_starts_at_the_first_record_at_or_after_it() {
    let c = case("st-time");
    let records: Vec<TestRecord> = (0..10)
        .map(|i| TestRecord {
            timestamp: Some(1_700_000_000_000 + i * 1_000),
            ..TestRecord::value(0, &format!("t-{i}"))
        })
        .collect();
    produce(&c.input, &records);
    let extra = "startup = \"timestamp\"\nstartup_timestamp_ms = 1700000005000";
    let mut sluice = c.run_until(extra, 5);
    assert!(sluice.terminate().success());
    let expected: Vec<String> = (5..10).map(|i| format!("t-{i}")).collect();
    assert_eq!(values(&c.output, 5), expected);
}

#[test]
fn committed_progress_wins_over_the_startup_mode() {
    let c = case("st-resume");
    produce(&c.input, &numbered("first", 0..10));
    let mut sluice = c.run_until("startup = \"earliest\"", 10);
    assert!(sluice.terminate().success());
    // Written while no host runs: a restart with `latest` must still read them,
    // and must not read the first ten again.
    produce(&c.input, &numbered("second", 0..5));
    let mut sluice = c.run_until("startup = \"latest\"", 15);
    assert!(sluice.terminate().success());
    let got = values(&c.output, 15);
    assert_eq!(got.len(), 15, "{got:?}");
    assert_eq!(
        got[10..],
        ["second-0", "second-1", "second-2", "second-3", "second-4"]
    );
}

/// SIGHUP re-reads the plugin file; sent while the plugin still compiles at start (a
/// JavaScript component, no compilation cache: seconds), it once found no handler and
/// killed the host.
#[test]
fn a_sighup_while_the_plugin_compiles_at_start_does_not_kill_the_host() {
    let c = case("st-hup");
    let plugin = crate::examples::example("enrich");
    let tail = format!("[plugin]\npath = \"{}\"\nwatch = false\n", plugin.display());
    let config = write_file(
        c.dir.path(),
        "hup.toml",
        &config_text(&c.input, &c.output, &c.group, "", "", &tail),
    );
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command.env("SLUICE_CACHE_DIR", "off");
    let mut sluice = Sluice::spawn(c.dir.path(), command);
    // Past the process's first moments, well before the plugin is compiled.
    std::thread::sleep(Duration::from_millis(300));
    let mut sent = 0;
    while !sluice.log().contains("Plugin loaded.") {
        if let Some(status) = sluice.exited() {
            panic!(
                "the host exited ({status}) after {sent} SIGHUP during start:\n{}",
                sluice.log()
            );
        }
        assert!(sent < 1200, "the plugin did not load in 5 minutes");
        sluice.signal(libc::SIGHUP);
        sent += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(sent >= 2, "the plugin loaded before the signals were sent");
    sluice.wait_for_log("Partitions assigned.", Duration::from_secs(60));
    produce(
        &c.input,
        &(0..5)
            .map(|i| TestRecord::value(0, &format!("{{\"price\": {i}.5}}")))
            .collect::<Vec<_>>(),
    );
    sluice.wait_until("records in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&c.output)) >= 5
    });
    assert!(sluice.terminate().success());
}

/// Exactly-once fences a restarted host's open transaction by a transactional id that
/// must survive the restart: a Deployment's pod name does not.
#[test]
fn exactly_once_needs_a_stable_instance_name() {
    let c = case("st-inst");
    let config = write_config(c.dir.path(), &c.input, &c.output, &c.group, "");
    add_top_level(&config, "delivery = \"exactly-once\"");

    for hostname in [None, Some("sluice-7d4b9c8f6-x2k9p")] {
        let mut command = sluice(&["run", "--config", &config]);
        command.env_remove("SLUICE_INSTANCE");
        match hostname {
            Some(name) => command.env("HOSTNAME", name),
            None => command.env_remove("HOSTNAME"),
        };
        let mut host = Sluice::spawn(c.dir.path(), command);
        let status = host.wait(Duration::from_secs(30));
        assert_eq!(
            status.code(),
            Some(2),
            "HOSTNAME {hostname:?}:\n{}",
            host.log()
        );
        assert!(
            host.log().contains("set --instance NAME (SLUICE_INSTANCE)"),
            "{}",
            host.log()
        );
    }

    // A StatefulSet pod's name is stable: it is the instance.
    let mut command = sluice(&["run", "--config", &config]);
    command
        .env_remove("SLUICE_INSTANCE")
        .env("HOSTNAME", "sluice-3");
    let mut host = Sluice::spawn(c.dir.path(), command);
    host.wait_for_log("Partitions assigned.", Duration::from_secs(60));
    let id = format!("transactional_id=sluice-{}-sluice-3", c.group);
    assert!(host.log().contains(&id), "no {id} in:\n{}", host.log());
    assert!(host.terminate().success());
}
