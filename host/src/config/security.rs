//! How Sluice authenticates to Kafka: the `[security]` table (shared by the source and
//! the sink) and its per-side replacements `[source.security]` and `[sink.security]`.
//!
//! Secrets never live in the file: a password or key passphrase is named by the
//! environment variable that holds it (`password_env`), read once here into a
//! [`Secret`] that prints as `[redacted]`. MSK IAM takes its credentials from the AWS
//! default chain at run time.
//!
//! Size: every security setting for both sides, their checks and the librdkafka settings
//! they become; a quarter of the file is tests.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Problem;

/// The longest an MSK IAM token is valid: the signer presigns for 900 s.
const MSK_IAM_TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// The port MSK serves IAM authentication on.
const MSK_IAM_PORT: &str = "9098";

#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct RawSecurity {
    protocol: Option<String>,
    mechanism: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    key_password_env: Option<String>,
    region: Option<String>,
    role_arn: Option<String>,
    role_session_name: Option<String>,
    token_lifetime_ms: Option<i64>,
}

impl RawSecurity {
    /// What the Managed Flink import means by a bootstrap address on port 9098.
    pub(crate) fn msk_iam() -> Self {
        RawSecurity {
            protocol: Some("SASL_SSL".into()),
            mechanism: Some("AWS_MSK_IAM".into()),
            ..RawSecurity::default()
        }
    }
}

/// A secret read from the environment. It never prints.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// The value, for handing to the Kafka client and nothing else.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Plaintext => "PLAINTEXT",
            Protocol::Ssl => "SSL",
            Protocol::SaslPlaintext => "SASL_PLAINTEXT",
            Protocol::SaslSsl => "SASL_SSL",
        }
    }

    pub(crate) fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// Validated security settings for one client (the source's or the sink's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Security {
    pub(crate) protocol: Protocol,
    pub(crate) tls: Tls,
    /// `Some` exactly when the protocol is SASL_*.
    pub(crate) sasl: Option<Sasl>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            protocol: Protocol::Plaintext,
            tls: Tls::default(),
            sasl: None,
        }
    }
}

impl Security {
    /// A short description for messages: `SASL_SSL/SCRAM-SHA-512`, never a secret.
    pub(crate) fn describe(&self) -> String {
        match &self.sasl {
            Some(sasl) => format!("{}/{}", self.protocol.name(), sasl.mechanism_name()),
            None if self.tls.cert_file.is_some() => {
                format!("{} (client certificate)", self.protocol.name())
            }
            None => self.protocol.name().to_string(),
        }
    }
}

/// TLS settings; all optional (the system's CA store verifies the broker by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Tls {
    pub(crate) ca_file: Option<PathBuf>,
    /// A client certificate and its key, for mutual TLS.
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) key_password: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sasl {
    Password {
        mechanism: PasswordMechanism,
        username: String,
        password: Secret,
    },
    MskIam(MskIam),
}

impl Sasl {
    fn mechanism_name(&self) -> &'static str {
        match self {
            Sasl::Password { mechanism, .. } => mechanism.name(),
            Sasl::MskIam(_) => "AWS_MSK_IAM",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PasswordMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl PasswordMechanism {
    pub(crate) fn name(self) -> &'static str {
        match self {
            PasswordMechanism::Plain => "PLAIN",
            PasswordMechanism::ScramSha256 => "SCRAM-SHA-256",
            PasswordMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// AWS MSK IAM: SASL OAUTHBEARER with tokens signed by AWS credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MskIam {
    pub(crate) region: String,
    /// A role to assume with the default chain's credentials.
    pub(crate) role_arn: Option<String>,
    pub(crate) role_session_name: String,
    /// How long each token is used before librdkafka asks for a new one (it refreshes
    /// at 80% of this).
    pub(crate) token_lifetime: Duration,
}

/// The AWS region in an MSK broker host name such as
/// `b-1.name.abc123.c2.kafka.us-east-1.amazonaws.com:9098`.
fn region_of_msk_bootstrap(servers: &str) -> Option<String> {
    servers.split(',').find_map(|server| {
        let host = server
            .trim()
            .rsplit_once(':')
            .map_or(server.trim(), |(h, _)| h);
        let labels: Vec<&str> = host.split('.').collect();
        labels.windows(3).find_map(|w| {
            (w[0] == "kafka" && w[2] == "amazonaws" && !w[1].is_empty()).then(|| w[1].to_string())
        })
    })
}

/// Whether any bootstrap address uses MSK's IAM port.
pub(crate) fn uses_msk_iam_port(servers: &str) -> bool {
    servers.split(',').any(|server| {
        server
            .trim()
            .rsplit_once(':')
            .is_some_and(|(_, port)| port == MSK_IAM_PORT)
    })
}

/// Reads an environment variable holding a secret; problems name the variable, never a value.
fn secret_from_env(path: String, variable: &str, problems: &mut Vec<Problem>) -> Option<Secret> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Some(Secret(value)),
        Ok(_) => {
            problems.push(Problem {
                path,
                message: format!(
                    "environment variable `{variable}` is empty; set it to the secret"
                ),
            });
            None
        }
        Err(_) => {
            problems.push(Problem {
                path,
                message: format!(
                    "environment variable `{variable}` is not set; export it with the secret"
                ),
            });
            None
        }
    }
}

impl RawSecurity {
    /// Checks the table found at `prefix` (`security`, `source.security`, ...) for a
    /// client of `servers`, appending problems.
    fn validate(&self, prefix: &str, servers: &str, problems: &mut Vec<Problem>) -> Security {
        let (protocol, mechanism) = self.protocol_and_mechanism(prefix, problems);
        let tls = self.tls(prefix, protocol, problems);
        let sasl = match (protocol.sasl(), mechanism) {
            (true, Some(Some(mechanism))) => self.password_sasl(prefix, mechanism, problems),
            (true, Some(None)) => self.msk_iam_sasl(prefix, servers, problems),
            _ => None,
        };
        self.check_other_mechanisms_keys(prefix, protocol, mechanism, problems);
        Security {
            protocol,
            tls,
            sasl,
        }
    }

    /// The protocol (by default from the other keys) and the SASL mechanism: `None`
    /// when not set or not known, `Some(None)` for `AWS_MSK_IAM`.
    fn protocol_and_mechanism(
        &self,
        prefix: &str,
        problems: &mut Vec<Problem>,
    ) -> (Protocol, Option<Option<PasswordMechanism>>) {
        let mut report = |key: &str, message: String| {
            problems.push(Problem {
                path: format!("{prefix}.{key}"),
                message,
            })
        };
        let mechanism = match self.mechanism.as_deref() {
            None => None,
            Some("PLAIN") => Some(Some(PasswordMechanism::Plain)),
            Some("SCRAM-SHA-256") => Some(Some(PasswordMechanism::ScramSha256)),
            Some("SCRAM-SHA-512") => Some(Some(PasswordMechanism::ScramSha512)),
            Some("AWS_MSK_IAM") => Some(None),
            Some(other) => {
                report(
                    "mechanism",
                    format!(
                        "`{other}` is not one of `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `AWS_MSK_IAM`"
                    ),
                );
                None
            }
        };
        let has_tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        let protocol = match self.protocol.as_deref() {
            None if self.mechanism.is_some() => Protocol::SaslSsl,
            None if has_tls_files => Protocol::Ssl,
            None => Protocol::Plaintext,
            Some("PLAINTEXT") => Protocol::Plaintext,
            Some("SSL") => Protocol::Ssl,
            Some("SASL_PLAINTEXT") => Protocol::SaslPlaintext,
            Some("SASL_SSL") => Protocol::SaslSsl,
            Some(other) => {
                report(
                    "protocol",
                    format!(
                        "`{other}` is not one of `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`"
                    ),
                );
                Protocol::Plaintext
            }
        };
        if protocol.sasl() && self.mechanism.is_none() {
            report(
                "mechanism",
                format!(
                    "missing; {} needs one of `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `AWS_MSK_IAM`",
                    protocol.name()
                ),
            );
        }
        if !protocol.sasl() && self.mechanism.is_some() && self.protocol.is_some() {
            report(
                "mechanism",
                format!(
                    "only applies to `SASL_PLAINTEXT` or `SASL_SSL`, not `{}`",
                    protocol.name()
                ),
            );
        }
        (protocol, mechanism)
    }

    /// The TLS files: only over TLS, and they must exist.
    fn tls(&self, prefix: &str, protocol: Protocol, problems: &mut Vec<Problem>) -> Tls {
        let mut report = |key: &str, message: String| {
            problems.push(Problem {
                path: format!("{prefix}.{key}"),
                message,
            })
        };
        let mut tls = Tls::default();
        for (key, file, slot) in [
            ("ca_file", &self.ca_file, &mut tls.ca_file),
            ("cert_file", &self.cert_file, &mut tls.cert_file),
            ("key_file", &self.key_file, &mut tls.key_file),
        ] {
            let Some(file) = file else { continue };
            if !protocol.tls() {
                report(
                    key,
                    format!(
                        "only applies to `SSL` or `SASL_SSL`, not `{}`",
                        protocol.name()
                    ),
                );
            } else if !file.is_file() {
                report(
                    key,
                    format!("{} does not exist or is not a file", file.display()),
                );
            } else {
                *slot = Some(file.clone());
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            report(
                if self.cert_file.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                },
                "missing; a client certificate needs both `cert_file` and `key_file`".into(),
            );
        }
        if let Some(variable) = &self.key_password_env {
            if self.key_file.is_none() {
                report("key_password_env", "only applies with `key_file`".into());
            } else {
                tls.key_password =
                    secret_from_env(format!("{prefix}.key_password_env"), variable, problems);
            }
        }
        tls
    }

    /// Refuses the keys of the mechanisms not chosen (a password with `AWS_MSK_IAM`, a
    /// role without it).
    fn check_other_mechanisms_keys(
        &self,
        prefix: &str,
        protocol: Protocol,
        mechanism: Option<Option<PasswordMechanism>>,
        problems: &mut Vec<Problem>,
    ) {
        let password_mechanism = protocol.sasl() && matches!(mechanism, Some(Some(_)));
        let iam_mechanism = protocol.sasl() && matches!(mechanism, Some(None));
        if !password_mechanism {
            for (key, set) in [
                ("username", self.username.is_some()),
                ("password_env", self.password_env.is_some()),
            ] {
                if set {
                    problems.push(Problem {
                        path: format!("{prefix}.{key}"),
                        message:
                            "only applies to mechanism `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`"
                                .into(),
                    });
                }
            }
        }
        if !iam_mechanism {
            for (key, set) in [
                ("region", self.region.is_some()),
                ("role_arn", self.role_arn.is_some()),
                ("role_session_name", self.role_session_name.is_some()),
                ("token_lifetime_ms", self.token_lifetime_ms.is_some()),
            ] {
                if set {
                    problems.push(Problem {
                        path: format!("{prefix}.{key}"),
                        message: "only applies to mechanism `AWS_MSK_IAM`".into(),
                    });
                }
            }
        }
    }

    fn password_sasl(
        &self,
        prefix: &str,
        mechanism: PasswordMechanism,
        problems: &mut Vec<Problem>,
    ) -> Option<Sasl> {
        let username = match self.username.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => Some(name.to_string()),
            _ => {
                problems.push(Problem {
                    path: format!("{prefix}.username"),
                    message: format!("missing; `{}` needs a user name", mechanism.name()),
                });
                None
            }
        };
        let password = match &self.password_env {
            Some(variable) => secret_from_env(format!("{prefix}.password_env"), variable, problems),
            None => {
                problems.push(Problem {
                    path: format!("{prefix}.password_env"),
                    message: "missing; name the environment variable that holds the password"
                        .into(),
                });
                None
            }
        };
        Some(Sasl::Password {
            mechanism,
            username: username?,
            password: password?,
        })
    }

    fn msk_iam_sasl(
        &self,
        prefix: &str,
        servers: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Sasl> {
        let from_environment = || {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|r| !r.trim().is_empty()))
        };
        let inferred = region_of_msk_bootstrap(servers).or_else(from_environment);
        let region = match (&self.region, inferred) {
            (Some(region), _) if !region.trim().is_empty() => Some(region.trim().to_string()),
            (Some(_), _) => {
                problems.push(Problem {
                    path: format!("{prefix}.region"),
                    message: "must not be empty".into(),
                });
                None
            }
            (None, Some(region)) => Some(region),
            (None, None) => {
                problems.push(Problem {
                    path: format!("{prefix}.region"),
                    message: format!(
                        "missing; it cannot be inferred from `{servers}` (not an MSK broker name like b-1.cluster.abc123.c2.kafka.us-east-1.amazonaws.com) and AWS_REGION is not set, so set the cluster's AWS region"
                    ),
                });
                None
            }
        };
        if let Some(arn) = &self.role_arn
            && !arn.starts_with("arn:")
        {
            problems.push(Problem {
                path: format!("{prefix}.role_arn"),
                message: format!("`{arn}` is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
            });
        }
        if self.role_session_name.is_some() && self.role_arn.is_none() {
            problems.push(Problem {
                path: format!("{prefix}.role_session_name"),
                message: "only applies with `role_arn`".into(),
            });
        }
        let max = MSK_IAM_TOKEN_LIFETIME.as_millis() as i64;
        let lifetime_ms = match self.token_lifetime_ms {
            None => max,
            Some(ms) if (1_000..=max).contains(&ms) => ms,
            Some(ms) => {
                problems.push(Problem {
                    path: format!("{prefix}.token_lifetime_ms"),
                    message: format!(
                        "{ms} is out of range; use 1000 to {max} (a token is valid for 15 minutes)"
                    ),
                });
                max
            }
        };
        Some(Sasl::MskIam(MskIam {
            region: region?,
            role_arn: self.role_arn.clone(),
            role_session_name: self
                .role_session_name
                .clone()
                .unwrap_or_else(|| "sluice".into()),
            token_lifetime: Duration::from_millis(lifetime_ms as u64),
        }))
    }
}

/// The librdkafka properties librdkafka itself marks sensitive (`_RK_SENSITIVE` in
/// rdkafka_conf.c, `*` in CONFIGURATION.md), and the aliases that set them.
const SENSITIVE_KEYS: &[&str] = &[
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    // An alias of sasl.oauthbearer.client.secret.
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
];

/// Words in a property's name that mean it holds a secret, for properties a newer
/// librdkafka may add.
const SECRET_WORDS: &[&str] = &["password", "secret", "passphrase", "private.key", "key.pem"];

/// librdkafka settings that carry secrets or that `[security]` owns: refused in the
/// `kafka` pass-through tables, so a secret cannot end up in the file (nor, through an
/// error about it, in a log).
fn reserved_client_key(key: &str) -> Option<&'static str> {
    // librdkafka matches names exactly; a near miss is refused all the same.
    let key = key.trim().to_ascii_lowercase();
    match key.as_str() {
        "security.protocol"
        | "sasl.mechanism"
        | "sasl.mechanisms"
        | "sasl.username"
        | "ssl.ca.location"
        | "ssl.certificate.location"
        | "ssl.key.location" => return Some("is set by [security]; configure it there"),
        _ => {}
    }
    if SENSITIVE_KEYS.contains(&key.as_str()) || SECRET_WORDS.iter().any(|w| key.contains(w)) {
        return Some(
            "is a secret and cannot be written in the file; take it from the environment: use [security] with `password_env` or `key_password_env`",
        );
    }
    None
}

/// The pass-through settings librdkafka refuses, each as a problem naming the key and
/// librdkafka's reason with the value cut out (an unknown name, a value out of range).
/// Found here, they never reach a client, whose error would print the value.
pub(crate) fn check_with_librdkafka(
    table: &str,
    settings: &[(String, String)],
    problems: &mut Vec<Problem>,
) {
    for (key, value) in settings {
        if reserved_client_key(key).is_some() {
            continue;
        }
        let mut client = rdkafka::ClientConfig::new();
        client.set(key, value);
        if let Err(error) = client.create_native_config() {
            problems.push(Problem {
                path: format!("{table}.{key}"),
                message: format!(
                    "librdkafka refuses it: {}",
                    client_error_text(&error, value)
                ),
            });
        }
    }
}

/// A librdkafka client error's text without `value`: librdkafka's own texts quote the
/// value they refuse (`Invalid value "..." for configuration property`).
fn client_error_text(error: &rdkafka::error::KafkaError, value: &str) -> String {
    let text = match error {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, _) => {
            format!("{description} (property {key})")
        }
        other => other.to_string(),
    };
    redact(&text, value)
}

/// `text` with `value` cut out: quoted, as librdkafka quotes it, and, unless it is too
/// short to be a secret and would garble the words around it, anywhere.
fn redact(text: &str, value: &str) -> String {
    if value.trim().is_empty() {
        return text.to_string();
    }
    let text = text.replace(&format!("\"{value}\""), "\"<value>\"");
    if value.chars().count() >= 4 {
        text.replace(value, "<value>")
    } else {
        text
    }
}

/// A client creation error, without any value it quotes: librdkafka's configuration
/// errors name the property and quote the value, which may be a secret.
pub(crate) fn without_value(error: rdkafka::error::KafkaError) -> anyhow::Error {
    match &error {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, value) => {
            anyhow::anyhow!(
                "librdkafka refuses property `{key}`: {}",
                redact(description, value)
            )
        }
        _ => anyhow::Error::new(error),
    }
}

/// The settings of one side: its own table if it has one, else the shared one.
pub(crate) fn for_side(
    side: &str,
    own: &Option<RawSecurity>,
    shared: &Option<RawSecurity>,
    servers: &str,
    problems: &mut Vec<Problem>,
) -> Security {
    let mut found = Vec::new();
    let security = match (own, shared) {
        (Some(raw), _) => raw.validate(&format!("{side}.security"), servers, &mut found),
        (None, Some(raw)) => raw.validate("security", servers, &mut found),
        (None, None) => Security::default(),
    };
    // The shared table is checked once per side: report each of its problems once.
    for problem in found {
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    security
}

/// Refuses pass-through keys that `[security]` owns or that hold secrets.
pub(crate) fn check_pass_through<'a>(
    table: &str,
    keys: impl Iterator<Item = &'a String>,
    problems: &mut Vec<Problem>,
) {
    for key in keys {
        if let Some(reason) = reserved_client_key(key) {
            problems.push(Problem {
                path: format!("{table}.{key}"),
                message: reason.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sensitive_property_and_its_aliases_are_refused() {
        for key in SENSITIVE_KEYS {
            assert!(reserved_client_key(key).is_some(), "{key}");
        }
        for key in [
            "SASL.PASSWORD",
            "sasl.oauthbearer.client.credentials.client.secret",
            "some.future.password",
            "x.private.key.pem",
        ] {
            assert!(reserved_client_key(key).is_some(), "{key}");
        }
        for key in [
            "fetch.wait.max.ms",
            "sasl.oauthbearer.token.endpoint.url",
            "ssl.certificate.pem",
            "client.id",
        ] {
            assert!(reserved_client_key(key).is_none(), "{key}");
        }
    }

    #[test]
    fn librdkafka_refusals_name_the_key_and_never_the_value() {
        let settings = vec![
            ("fetch.wait.max.ms".to_string(), "hunter2-abc".to_string()),
            ("no.such.property".to_string(), "hunter2-def".to_string()),
            ("client.id".to_string(), "fine".to_string()),
        ];
        let mut problems = Vec::new();
        check_with_librdkafka("source.kafka", &settings, &mut problems);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with("source.kafka.fetch.wait.max.ms: librdkafka refuses it"));
        assert!(text.iter().all(|t| !t.contains("hunter2")), "{text:?}");

        let error = rdkafka::error::KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"x\"".into(),
            "x".into(),
            "hunter2".into(),
        );
        let text = format!("{:#}", without_value(error));
        assert!(text.contains("`x`") && !text.contains("hunter2"), "{text}");
    }

    fn check(raw: RawSecurity, servers: &str) -> (Security, Vec<String>) {
        let mut problems = Vec::new();
        let security = raw.validate("security", servers, &mut problems);
        (security, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn the_region_is_read_from_an_msk_broker_name() {
        assert_eq!(
            region_of_msk_bootstrap("b-1.orders.x1y2z3.c2.kafka.us-east-1.amazonaws.com:9098,b-2.orders.x1y2z3.c2.kafka.us-east-1.amazonaws.com:9098")
                .as_deref(),
            Some("us-east-1")
        );
        assert_eq!(
            region_of_msk_bootstrap("boot-abc.c3.kafka-serverless.eu-west-1.amazonaws.com:9098"),
            None
        );
        assert_eq!(region_of_msk_bootstrap("127.0.0.1:9098"), None);
        assert!(uses_msk_iam_port(
            "a:9092, b-1.x.kafka.us-east-1.amazonaws.com:9098"
        ));
        assert!(!uses_msk_iam_port("a:9092"));
    }

    #[test]
    fn msk_iam_takes_its_region_from_the_bootstrap_name_unless_given() {
        let (security, problems) = check(
            RawSecurity::msk_iam(),
            "b-1.orders.x1y2z3.c2.kafka.ap-south-1.amazonaws.com:9098",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let Some(Sasl::MskIam(iam)) = security.sasl else {
            panic!("{security:?}")
        };
        assert_eq!(iam.region, "ap-south-1");
        assert_eq!(iam.token_lifetime, MSK_IAM_TOKEN_LIFETIME);

        let (_, problems) = check(RawSecurity::msk_iam(), "127.0.0.1:9098");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("security.region: missing"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_password_comes_from_the_environment_and_never_prints() {
        // SAFETY: a variable name used by this test alone.
        unsafe { std::env::set_var("SLUICE_TEST_SCRAM_SECRET", "hunter2-secret") };
        let (security, problems) = check(
            RawSecurity {
                mechanism: Some("SCRAM-SHA-512".into()),
                username: Some("app".into()),
                password_env: Some("SLUICE_TEST_SCRAM_SECRET".into()),
                ..RawSecurity::default()
            },
            "h:9096",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(security.protocol, Protocol::SaslSsl);
        let Some(Sasl::Password { password, .. }) = &security.sasl else {
            panic!()
        };
        assert_eq!(password.expose(), "hunter2-secret");
        assert!(!format!("{security:?}").contains("hunter2"));
        assert_eq!(security.describe(), "SASL_SSL/SCRAM-SHA-512");
    }

    #[test]
    fn every_mistake_is_reported_and_no_secret_is_quoted() {
        let (_, problems) = check(
            RawSecurity {
                protocol: Some("SASL_SSL".into()),
                mechanism: Some("SCRAM-SHA-1".into()),
                password_env: Some("SLUICE_TEST_UNSET_VARIABLE".into()),
                ca_file: Some("/nonexistent/ca.pem".into()),
                cert_file: Some("/nonexistent/client.pem".into()),
                region: Some("us-east-1".into()),
                ..RawSecurity::default()
            },
            "h:1",
        );
        let expected = [
            "security.mechanism: `SCRAM-SHA-1` is not one of",
            "security.ca_file: /nonexistent/ca.pem does not exist",
            "security.cert_file: /nonexistent/client.pem does not exist",
            "security.key_file: missing",
            "security.password_env: only applies",
            "security.region: only applies to mechanism `AWS_MSK_IAM`",
        ];
        for want in expected {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "missing {want:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");

        let (_, problems) = check(
            RawSecurity {
                mechanism: Some("PLAIN".into()),
                password_env: Some("SLUICE_TEST_UNSET_VARIABLE".into()),
                ..RawSecurity::default()
            },
            "h:1",
        );
        assert_eq!(
            problems,
            [
                "security.username: missing; `PLAIN` needs a user name",
                "security.password_env: environment variable `SLUICE_TEST_UNSET_VARIABLE` is not set; export it with the secret",
            ]
        );
    }

    #[test]
    fn tls_files_need_a_tls_protocol() {
        let (_, problems) = check(
            RawSecurity {
                protocol: Some("SASL_PLAINTEXT".into()),
                mechanism: Some("AWS_MSK_IAM".into()),
                region: Some("us-east-1".into()),
                ca_file: Some("Cargo.toml".into()),
                ..RawSecurity::default()
            },
            "h:1",
        );
        assert_eq!(
            problems,
            ["security.ca_file: only applies to `SSL` or `SASL_SSL`, not `SASL_PLAINTEXT`"]
        );
    }
}
