//! What `sluice validate` does with hostile configuration files: secrets written into
//! a `kafka` table, a file of hundreds of megabytes, a file of thousands of problems.
//! No Kafka needed.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::support::*;

/// `sluice validate --config path`: exit code, stdout and stderr, and the time taken.
fn validate(path: &std::path::Path) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let out = sluice(&["validate", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The peak resident memory of `sluice ARGS`, in KiB, from the kernel's accounting of
/// the exited child.
// wait4 reaps the child, which std's Child cannot report the memory of.
#[allow(clippy::zombie_processes)]
fn peak_rss_kib(args: &[&str]) -> i64 {
    let child = sluice(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, with valid pointers to fill.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32);
    usage.ru_maxrss
}

#[test]
fn every_secret_property_of_librdkafka_is_refused_by_name_and_its_value_never_printed() {
    let dir = workdir();
    // Each property librdkafka marks sensitive, and the alias of one.
    let keys = [
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl_key",
        "ssl.ca.pem",
        "ssl.keystore.password",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.assertion.private.key.file",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
    ];
    for (side, key) in keys
        .iter()
        .flat_map(|key| [("source", *key), ("sink", *key)])
    {
        let value = format!("s3cr3t-{}", key.len());
        let line = format!("[{side}.kafka]\n\"{key}\" = \"{value}\"\n");
        let text = config_text("in", "out", "g", "", "", &line);
        let path = write_file(dir.path(), "secret.toml", &text);
        let (code, stdout, stderr, _) = validate(&path);
        assert_eq!(code, Some(2), "{side}.kafka.{key}: {stderr}");
        assert!(
            stderr.contains(&format!("{side}.kafka.{key}: is a secret"))
                && stderr.contains("environment"),
            "{side}.kafka.{key}: {stderr}"
        );
        assert!(
            !stdout.contains(&value) && !stderr.contains(&value),
            "{side}.kafka.{key}: the value was printed: {stderr}"
        );
        // `run` reads the file the same way, before any client is made.
        if side == "source" && key.contains("passphrase") {
            let out = sluice(&["run", "--config", path.to_str().unwrap()])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert!(stderr.contains(key) && !stderr.contains(&value), "{stderr}");
        }
    }
}

#[test]
fn a_value_librdkafka_refuses_is_named_by_its_key_only() {
    let dir = workdir();
    let value = "not-a-number-s3cr3t";
    let text = config_text(
        "in",
        "out",
        "g",
        &format!(
            "[source.kafka]\n\"fetch.wait.max.ms\" = \"{value}\"\n\"no.such.property\" = \"{value}\""
        ),
        "",
        "",
    );
    let path = write_file(dir.path(), "refused.toml", &text);
    let (code, stdout, stderr, _) = validate(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("source.kafka.fetch.wait.max.ms: librdkafka refuses it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("source.kafka.no.such.property: librdkafka refuses it"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(value) && !stderr.contains(value),
        "{stderr}"
    );

    // A TOML syntax error on a secret's line does not quote the line.
    let broken = "version = 1\n[source.kafka]\n\"x\" = \"s3cr3t-unterminated\n";
    let path = write_file(dir.path(), "broken.toml", broken);
    let (code, _, stderr, _) = validate(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

#[test]
fn a_huge_configuration_file_is_refused_at_once_by_its_size() {
    let dir = workdir();
    // Just over the cap, and 227 MB of one line (what a wrong path can name).
    let cases = [
        (1024 * 1024 + 1, "over.toml"),
        (227 * 1024 * 1024, "huge.toml"),
    ];
    for (size, name) in cases {
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        let line = vec![b'x'; 1024 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(line.len());
            file.write_all(&line[..n]).unwrap();
            left -= n;
        }
        drop(file);
        let (code, stdout, stderr, took) = validate(&path);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        let peak = peak_rss_kib(&["validate", "--config", path.to_str().unwrap()]);
        assert!(peak < 100 * 1024, "{name}: peak RSS {peak} KiB");
        assert!(
            stderr.contains("at most 1048576 bytes (1 MiB)"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.len() + stdout.len() < 1024,
            "{name}: {} bytes of output",
            stderr.len()
        );
        std::fs::remove_file(&path).unwrap();
    }
    // The same for a Managed Flink properties file.
    let path = dir.path().join("application_properties.json");
    std::fs::write(&path, vec![b' '; 2 * 1024 * 1024]).unwrap();
    let out = sluice(&["validate", "--properties", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at most 1048576 bytes"), "{stderr}");
}

#[test]
fn ten_thousand_problems_print_the_first_fifty_and_a_count() {
    let dir = workdir();
    let mut text = config_text("in", "out", "g", "", "", "");
    text.push_str("[plugin.config]\n");
    for i in 0..10_000 {
        text.push_str(&format!("k{i} = {{ nested = {i} }}\n"));
    }
    // Ten thousand unknown keys too.
    text = with_top_level(
        &text,
        &(0..10_000)
            .map(|i| format!("unknown_{i} = {i}\n"))
            .collect::<String>(),
    );
    let path = write_file(dir.path(), "problems.toml", &text);
    let (code, stdout, stderr, _) = validate(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("has 20000 problems"),
        "{}",
        &stderr[..200.min(stderr.len())]
    );
    assert!(stderr.contains("and 19950 more"), "{stderr}");
    assert!(
        stderr.lines().count() <= 53,
        "{} lines",
        stderr.lines().count()
    );
    assert!(
        stderr.len() + stdout.len() < 20_000,
        "{} bytes",
        stderr.len()
    );
}
