//! Authentication against the broker's authenticated listeners (`SLUICE_KAFKA_AUTH=1
//! scripts/kafka.sh start`): records move over every mechanism; refused credentials
//! stop the host at once with an error naming the mechanism and the broker; MSK IAM
//! tokens are refreshed without losing a record; secrets never show.
//!
//! Topics are created and read over the plain listener; only Sluice authenticates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Addresses and test credentials of the authenticated listeners, as the broker
/// script wrote them.
fn listeners() -> HashMap<String, String> {
    let path = shared_kafka_home().join("auth/test.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Start the broker with its authenticated listeners: SLUICE_KAFKA_AUTH=1 scripts/kafka.sh start",
            path.display()
        )
    });
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A pipeline file for `servers` (the sink's own when `sink_servers` is given) with a
/// `[security]` table (and anything else) in `security`.
fn auth_config(
    servers: &str,
    sink_servers: Option<&str>,
    input: &str,
    output: &str,
    group: &str,
    security: &str,
) -> String {
    let sink_servers = sink_servers
        .map(|s| format!("bootstrap_servers = \"{s}\""))
        .unwrap_or_default();
    format!(
        r#"version = 1

[source]
bootstrap_servers = "{servers}"
topic = "{input}"
group_id = "{group}"
connect_timeout_ms = 15000

[sink]
topic = "{output}"
{sink_servers}

[checkpoint]
interval_ms = 200
min_pause_ms = 0

{security}
"#
    )
}

/// A command whose AWS credential chain sees only the given environment.
fn hermetic(mut command: Command) -> Command {
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        command.env_remove(var);
    }
    command
        .env("AWS_CONFIG_FILE", "/nonexistent/sluice-test-aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/sluice-test-aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// Values by partition, in order.
fn values(records: &[TestRecord]) -> Vec<(i32, Vec<String>)> {
    by_partition(records)
        .into_iter()
        .map(|(p, rs)| (p, rs.iter().map(TestRecord::value_text).collect()))
        .collect()
}

fn records(count: usize) -> Vec<TestRecord> {
    (0..count)
        .map(|i| TestRecord::value((i % 3) as i32, &format!("auth-{i}")))
        .collect()
}

/// Runs Sluice with `security` against `servers` until `count` records crossed, then
/// checks the sink holds exactly the input, partition by partition. Returns the log.
fn moves_records(prefix: &str, servers: &str, security: &str, env: &[(&str, &str)]) -> String {
    moves_records_to(prefix, servers, None, security, env)
}

fn moves_records_to(
    prefix: &str,
    servers: &str,
    sink_servers: Option<&str>,
    security: &str,
    env: &[(&str, &str)],
) -> String {
    const COUNT: usize = 60;
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, 3);
    create_topic(&output, 3);
    let sent = records(COUNT);
    produce(&input, &sent);
    let dir = workdir();
    let text = auth_config(servers, sink_servers, &input, &output, &group, security);
    let config = write_file(dir.path(), "auth.toml", &text);
    let mut command = hermetic(sluice(&["run", "--config", config.to_str().unwrap()]));
    command.envs(env.iter().copied());
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Pipeline running.", Duration::from_secs(60));
    host.wait_until("every record in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= COUNT as i64
    });
    assert!(host.terminate().success(), "{}", host.log());
    let written = read_all(&output, COUNT, Duration::from_secs(30));
    assert_eq!(values(&written), values(&sent), "{}", host.log());
    host.log()
}

#[test]
fn ssl_with_the_clusters_ca() {
    let l = listeners();
    moves_records(
        "ssl",
        &l["SSL"],
        &format!("[security]\nprotocol = \"SSL\"\nca_file = \"{}\"", l["CA"]),
        &[],
    );
}

#[test]
fn mutual_tls_with_an_encrypted_client_key() {
    let l = listeners();
    let security = format!(
        "[security]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkey_password_env = \"TEST_KEY_PASSWORD\"",
        l["CA"], l["CLIENT_CERT"], l["CLIENT_KEY"]
    );
    let log = moves_records(
        "mtls",
        &l["MTLS"],
        &security,
        &[("TEST_KEY_PASSWORD", &l["CLIENT_KEY_PASSWORD"])],
    );
    assert!(!log.contains(&l["CLIENT_KEY_PASSWORD"]), "{log}");
}

fn sasl(protocol: &str, mechanism: &str, l: &HashMap<String, String>) -> String {
    let ca = if protocol == "SASL_SSL" {
        format!("ca_file = \"{}\"\n", l["CA"])
    } else {
        String::new()
    };
    format!(
        "[security]\nprotocol = \"{protocol}\"\nmechanism = \"{mechanism}\"\nusername = \"{}\"\npassword_env = \"TEST_KAFKA_PASSWORD\"\n{ca}",
        l["SASL_USER"]
    )
}

#[test]
fn sasl_ssl_with_plain() {
    let l = listeners();
    moves_records(
        "plain",
        &l["SASL_SSL"],
        &sasl("SASL_SSL", "PLAIN", &l),
        &[("TEST_KAFKA_PASSWORD", &l["SASL_PASSWORD"])],
    );
}

#[test]
fn sasl_ssl_with_scram_sha_256() {
    let l = listeners();
    moves_records(
        "scram256",
        &l["SASL_SSL"],
        &sasl("SASL_SSL", "SCRAM-SHA-256", &l),
        &[("TEST_KAFKA_PASSWORD", &l["SASL_PASSWORD"])],
    );
}

#[test]
fn sasl_plaintext_with_scram_sha_512() {
    let l = listeners();
    moves_records(
        "scram512",
        &l["SASL_PLAINTEXT"],
        &sasl("SASL_PLAINTEXT", "SCRAM-SHA-512", &l),
        &[("TEST_KAFKA_PASSWORD", &l["SASL_PASSWORD"])],
    );
}

#[test]
fn the_sink_can_override_the_shared_security() {
    // The source reads over SCRAM; the sink writes over mutual TLS to another listener.
    let l = listeners();
    let security = format!(
        "{}\n[sink.security]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nkey_password_env = \"TEST_KEY_PASSWORD\"",
        sasl("SASL_SSL", "SCRAM-SHA-512", &l),
        l["CA"],
        l["CLIENT_CERT"],
        l["CLIENT_KEY"]
    );
    let log = moves_records_to(
        "override",
        &l["SASL_SSL"],
        Some(&l["MTLS"]),
        &security,
        &[
            ("TEST_KAFKA_PASSWORD", &l["SASL_PASSWORD"]),
            ("TEST_KEY_PASSWORD", &l["CLIENT_KEY_PASSWORD"]),
        ],
    );
    assert!(!log.contains(&l["SASL_PASSWORD"]), "{log}");
}

fn iam_security(l: &HashMap<String, String>, extra: &str) -> String {
    format!(
        "[security]\nmechanism = \"AWS_MSK_IAM\"\nregion = \"{}\"\nca_file = \"{}\"\n{extra}",
        l["IAM_REGION"], l["CA"]
    )
}

#[test]
fn msk_iam_with_temporary_credentials_from_the_environment() {
    let l = listeners();
    // Temporary credentials, as ECS, EKS and EC2 hand out: the session token is signed too.
    let session_token = "FwoGZXIvYXdzEXAMPLE-session-token/sluice+test==";
    let log = moves_records(
        "iam",
        &l["IAM"],
        &iam_security(&l, ""),
        &[
            ("AWS_ACCESS_KEY_ID", &l["IAM_ACCESS_KEY"]),
            ("AWS_SECRET_ACCESS_KEY", &l["IAM_SECRET_KEY"]),
            ("AWS_SESSION_TOKEN", session_token),
            ("SLUICE_LOG", "debug"),
        ],
    );
    assert!(log.contains("MSK IAM token issued."), "{log}");
    for secret in [l["IAM_SECRET_KEY"].as_str(), session_token] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}

/// Runs Sluice against `servers` with credentials the broker must refuse; checks it
/// exits 1 promptly, naming the mechanism and the broker, with `hint` in the error,
/// after a bounded number of attempts, and without quoting `secret`. Returns the log.
fn refused(
    prefix: &str,
    servers: &str,
    security: &str,
    env: &[(&str, &str)],
    mechanism: &str,
    secret: &str,
) -> String {
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, 1);
    create_topic(&output, 1);
    let dir = workdir();
    let text = auth_config(servers, None, &input, &output, &group, security);
    let config = write_file(dir.path(), "refused.toml", &text);
    let mut command = hermetic(sluice(&["run", "--config", config.to_str().unwrap()]));
    // Debug logging: a secret must not appear even there.
    command.envs(env.iter().copied()).env("SLUICE_LOG", "debug");
    let started = Instant::now();
    let mut host = Sluice::spawn(dir.path(), command);
    let status = host.wait(Duration::from_secs(40));
    let log = host.log();
    assert_eq!(status.code(), Some(1), "{log}");
    // No retry storm: the connect timeout is 15 s, and librdkafka would retry until
    // then (and forever once running); the host must stop at the first refusal.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "took {:?}:\n{log}",
        started.elapsed()
    );
    let error = log
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(
        error.contains(&format!("{mechanism} authentication to {servers} failed")),
        "{error}"
    );
    assert!(!log.contains(secret), "a secret in the log:\n{log}");
    log
}

#[test]
fn a_wrong_scram_password_is_refused_promptly() {
    let l = listeners();
    refused(
        "badpw",
        &l["SASL_SSL"],
        &sasl("SASL_SSL", "SCRAM-SHA-512", &l),
        &[("TEST_KAFKA_PASSWORD", "not-the-password-42")],
        "SASL_SSL/SCRAM-SHA-512",
        "not-the-password-42",
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let l = listeners();
    let security = format!(
        "[security]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        l["CA"], l["STRANGER_CERT"], l["STRANGER_KEY"]
    );
    refused(
        "stranger",
        &l["MTLS"],
        &security,
        &[],
        "SSL (client certificate)",
        "-----BEGIN",
    );
}

#[test]
fn a_broker_certificate_from_an_untrusted_ca_is_refused() {
    let l = listeners();
    let security = format!("[security]\nca_file = \"{}\"", l["STRANGER_CERT"]);
    let log = refused("untrusted", &l["SSL"], &security, &[], "SSL", "-----BEGIN");
    assert!(log.contains("certificate verify failed"), "{log}");
}

#[test]
fn an_unknown_aws_access_key_is_refused() {
    let l = listeners();
    refused(
        "iamkey",
        &l["IAM"],
        &iam_security(&l, ""),
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000"),
            ("AWS_SECRET_ACCESS_KEY", &l["IAM_SECRET_KEY"]),
        ],
        "SASL_SSL/AWS_MSK_IAM",
        &l["IAM_SECRET_KEY"],
    );
}

#[test]
fn a_wrong_aws_secret_key_is_refused() {
    let l = listeners();
    refused(
        "iamsecret",
        &l["IAM"],
        &iam_security(&l, ""),
        &[
            ("AWS_ACCESS_KEY_ID", &l["IAM_ACCESS_KEY"]),
            ("AWS_SECRET_ACCESS_KEY", "wrong/secret+key/for-this-test"),
        ],
        "SASL_SSL/AWS_MSK_IAM",
        "wrong/secret+key/for-this-test",
    );
}

#[test]
fn missing_aws_credentials_are_reported() {
    let l = listeners();
    let log = refused(
        "iamnone",
        &l["IAM"],
        &iam_security(&l, ""),
        &[],
        "SASL_SSL/AWS_MSK_IAM",
        &l["IAM_SECRET_KEY"],
    );
    assert!(log.contains("signing the MSK IAM token failed"), "{log}");
}

#[test]
fn an_expired_msk_iam_token_stops_the_host() {
    // This listener accepts tokens for 8 s only; without a matching token_lifetime_ms
    // the host keeps its first token until the broker refuses it as expired.
    let l = listeners();
    let (input, output, group) = (unique("exp-in"), unique("exp-out"), unique("exp-g"));
    create_topic(&input, 3);
    create_topic(&output, 3);
    produce(&input, &records(10));
    let dir = workdir();
    let text = auth_config(
        &l["IAM_SHORT"],
        None,
        &input,
        &output,
        &group,
        &iam_security(&l, ""),
    );
    let config = write_file(dir.path(), "expired.toml", &text);
    let mut command = hermetic(sluice(&["run", "--config", config.to_str().unwrap()]));
    command
        .env("AWS_ACCESS_KEY_ID", &l["IAM_ACCESS_KEY"])
        .env("AWS_SECRET_ACCESS_KEY", &l["IAM_SECRET_KEY"]);
    let started = Instant::now();
    let mut host = Sluice::spawn(dir.path(), command);
    let status = host.wait(Duration::from_secs(40));
    let log = host.log();
    assert_eq!(status.code(), Some(1), "{log}");
    // Records moved while the token was valid; the refusal came when it expired.
    assert_eq!(total(&end_offsets(&output)), 10, "{log}");
    assert!(started.elapsed() < Duration::from_secs(30), "{log}");
    let error = log
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        error.contains(&format!(
            "SASL_SSL/AWS_MSK_IAM authentication to {} failed",
            l["IAM_SHORT"]
        )),
        "{log}"
    );
}

#[test]
fn msk_iam_tokens_are_refreshed_without_losing_a_record() {
    // Tokens valid for 8 s on this listener; the host uses each for 3 s (refreshing at
    // 2.4 s), so a run of about 9 s spans several refreshes and re-authentications.
    const COUNT: usize = 900;
    let l = listeners();
    let (input, output, group) = (
        unique("refresh-in"),
        unique("refresh-out"),
        unique("refresh-g"),
    );
    create_topic(&input, 6);
    create_topic(&output, 6);
    let dir = workdir();
    let text = auth_config(
        &l["IAM_SHORT"],
        None,
        &input,
        &output,
        &group,
        &iam_security(&l, "token_lifetime_ms = 3000"),
    );
    let config = write_file(dir.path(), "refresh.toml", &text);
    let mut command = hermetic(sluice(&["run", "--config", config.to_str().unwrap()]));
    command
        .env("AWS_ACCESS_KEY_ID", &l["IAM_ACCESS_KEY"])
        .env("AWS_SECRET_ACCESS_KEY", &l["IAM_SECRET_KEY"]);
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Pipeline running.", Duration::from_secs(60));
    let done = Arc::new(AtomicBool::new(false));
    let producer = produce_steadily(input.clone(), COUNT, 100, done);
    producer.join().unwrap();
    host.wait_until("every record in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= COUNT as i64
    });
    assert!(host.terminate().success(), "{}", host.log());
    let log = host.log();
    let issued = log.matches("MSK IAM token issued.").count();
    // Source and sink: a first token each, then a refresh every 2.4 s over about 9 s.
    assert!(issued >= 8, "{issued} tokens:\n{log}");
    assert!(!log.contains("authentication failed"), "{log}");
    let written = read_all(&output, COUNT, Duration::from_secs(30));
    assert_eq!(written.len(), COUNT);
    for (partition, got) in by_partition(&written) {
        let want: Vec<String> = (0..COUNT)
            .filter(|i| (i % 6) as i32 == partition)
            .map(|i| format!("rec-{i}"))
            .collect();
        let got: Vec<String> = got.iter().map(TestRecord::value_text).collect();
        assert_eq!(got, want, "partition {partition}");
    }
}

#[test]
fn validate_names_a_missing_secret_variable_and_never_prints_a_secret() {
    let l = listeners();
    let dir = workdir();
    let text = auth_config(
        &l["SASL_SSL"],
        None,
        "in",
        "out",
        "g",
        &sasl("SASL_SSL", "PLAIN", &l),
    );
    let config = write_file(dir.path(), "v.toml", &text);
    let config = config.to_str().unwrap();

    let missing = sluice(&["validate", "--config", config])
        .env_remove("TEST_KAFKA_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains(
            "security.password_env: environment variable `TEST_KAFKA_PASSWORD` is not set"
        ),
        "{stderr}"
    );

    let secret = "validate-must-not-print-this";
    let ok = sluice(&["validate", "--config", config])
        .env("TEST_KAFKA_PASSWORD", secret)
        .env("SLUICE_LOG", "debug")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(ok.status.success(), "{all}");
    assert!(!all.contains(secret), "{all}");
}

#[test]
fn the_status_endpoint_shows_no_secret() {
    let l = listeners();
    let (input, output, group) = (unique("st-in"), unique("st-out"), unique("st-g"));
    create_topic(&input, 1);
    create_topic(&output, 1);
    let dir = workdir();
    let text = auth_config(
        &l["SASL_SSL"],
        None,
        &input,
        &output,
        &group,
        &sasl("SASL_SSL", "SCRAM-SHA-256", &l),
    );
    let config = write_file(dir.path(), "st.toml", &text);
    let address = free_address();
    let mut command = hermetic(sluice(&["run", "--config", config.to_str().unwrap()]));
    command
        .env("SLUICE_ADMIN", &address)
        .env("TEST_KAFKA_PASSWORD", &l["SASL_PASSWORD"]);
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Pipeline running.", Duration::from_secs(60));
    let status = admin_status(&address).to_string();
    assert!(status.contains("\"live\""), "{status}");
    assert!(!status.contains(&l["SASL_PASSWORD"]), "{status}");
    assert!(host.terminate().success());
    assert!(!host.log().contains(&l["SASL_PASSWORD"]));
}

/// The reference MSK IAM token (SigV4 presign cross-checked against botocore with a
/// frozen clock): region us-west-2, key AKIDEXAMPLE, 2024-01-01T00:00:00Z, 900 s.
const VECTOR_KEY: &str = "AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const VECTOR_SIGNED_AT_MS: i64 = 1_704_067_200_000;
const VECTOR_EXPIRY_MS: i64 = 1_704_068_100_000;
const VECTOR_SIGNATURE: &str = "5893ca09834e618ffc391c4ea3d7138b65f9d508d1516623eecd0eaec0b697e0";
const VECTOR_SESSION_SIGNATURE: &str =
    "924a9b24a3582a1b94d843f8bf028a35458ee8f863a82032ad9f69e9d8b4e83e";

fn vector_token(session_token: Option<&str>, signature: &str, region: &str) -> String {
    let session = session_token
        .map(|t| format!("&X-Amz-Security-Token={t}"))
        .unwrap_or_default();
    // Parameters in another order than the canonical one, and a User-Agent after
    // signing, as clients send them.
    let url = format!(
        "https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIDEXAMPLE%2F20240101%2F{region}%2Fkafka-cluster%2Faws4_request\
         &X-Amz-Date=20240101T000000Z&X-Amz-SignedHeaders=host&X-Amz-Expires=900{session}\
         &X-Amz-Signature={signature}&User-Agent=sluice-test%2F1"
    );
    URL_SAFE_NO_PAD.encode(url)
}

/// Runs the test broker's validator on one token; returns its verdict line.
fn verify(token: &str, now_ms: i64, region: &str, key: &str) -> String {
    let output = Command::new(repo().join("scripts/kafka.sh"))
        .args(["msk-iam-verify", token, &now_ms.to_string(), region, key])
        .env("SLUICE_KAFKA_HOME", shared_kafka_home())
        .output()
        .unwrap();
    let verdict = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(
        output.status.success(),
        verdict.starts_with("accepted"),
        "{verdict}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    verdict
}

#[test]
fn the_brokers_msk_iam_validator_checks_the_reference_vector() {
    let during = VECTOR_SIGNED_AT_MS + 60_000;
    let plain = vector_token(None, VECTOR_SIGNATURE, "us-west-2");
    assert_eq!(
        verify(&plain, during, "us-west-2", VECTOR_KEY),
        format!("accepted AKIDEXAMPLE until {VECTOR_EXPIRY_MS}")
    );
    let session = vector_token(
        Some("MOCK-SESSION-TOKEN"),
        VECTOR_SESSION_SIGNATURE,
        "us-west-2",
    );
    assert_eq!(
        verify(&session, during, "us-west-2", VECTOR_KEY),
        format!("accepted AKIDEXAMPLE until {VECTOR_EXPIRY_MS}")
    );
    // The same token at its expiry, against another secret, in another region, or
    // with the session token's signature swapped in: refused, each for its reason.
    assert_eq!(
        verify(&plain, VECTOR_EXPIRY_MS, "us-west-2", VECTOR_KEY),
        "rejected: token expired 0 ms ago"
    );
    assert!(
        verify(&plain, during, "us-west-2", "AKIDEXAMPLE:another-secret")
            .starts_with("rejected: signature does not match")
    );
    assert_eq!(
        verify(&plain, during, "us-west-2", "AKIDOTHER:x"),
        "rejected: unknown access key AKIDEXAMPLE"
    );
    assert!(
        verify(&plain, during, "eu-west-1", VECTOR_KEY)
            .starts_with("rejected: signed for host kafka.us-west-2")
    );
    let swapped = vector_token(None, VECTOR_SESSION_SIGNATURE, "us-west-2");
    assert!(
        verify(&swapped, during, "us-west-2", VECTOR_KEY)
            .starts_with("rejected: signature does not match")
    );
    // A token for another action is refused even when correctly signed for it.
    let url = String::from_utf8(URL_SAFE_NO_PAD.decode(&plain).unwrap()).unwrap();
    let other =
        URL_SAFE_NO_PAD.encode(url.replace("kafka-cluster%3AConnect", "kafka-cluster%3AReadData"));
    assert_eq!(
        verify(&other, during, "us-west-2", VECTOR_KEY),
        "rejected: action is kafka-cluster:ReadData, not kafka-cluster:Connect"
    );
}

#[test]
fn generate_writes_to_the_pipelines_source_with_its_msk_iam_settings() {
    let l = listeners();
    let (input, output, group) = (unique("gen-in"), unique("gen-out"), unique("gen-g"));
    create_topic(&input, 3);
    let dir = workdir();
    let text = auth_config(
        &l["IAM"],
        None,
        &input,
        &output,
        &group,
        &iam_security(&l, ""),
    );
    let config = write_file(dir.path(), "generate.toml", &text);
    let generate = |secret: &str| {
        let mut command = hermetic(sluice(&[
            "generate",
            "--config",
            config.to_str().unwrap(),
            "--count",
            "34",
            "--rate",
            "0",
        ]));
        command
            .env_remove("TOPIC_NAME")
            .env("AWS_ACCESS_KEY_ID", &l["IAM_ACCESS_KEY"])
            .env("AWS_SECRET_ACCESS_KEY", secret);
        let started = Instant::now();
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr, started.elapsed())
    };

    let (code, stderr, _) = generate(&l["IAM_SECRET_KEY"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("sent 34 records to {input}")),
        "{stderr}"
    );
    // Read back over the plaintext listener: two records of each of the 17 tickers.
    let records = read_all(&input, 35, Duration::from_secs(5));
    assert_eq!(records.len(), 34);
    let mut tickers: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let key = String::from_utf8(record.key.clone().unwrap()).unwrap();
        *tickers.entry(key).or_default() += 1;
    }
    assert_eq!(tickers.len(), 17, "{tickers:?}");
    assert!(tickers.values().all(|n| *n == 2), "{tickers:?}");

    // Refused credentials stop it at once, with the reason, and nothing is written.
    let (code, stderr, took) = generate("wrong/secret+key/for-this-test");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "SASL_SSL/AWS_MSK_IAM authentication to {} failed",
            l["IAM"]
        )),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert_eq!(read_all(&input, 35, Duration::from_secs(3)).len(), 34);
}
