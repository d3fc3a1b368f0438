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
