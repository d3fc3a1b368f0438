//! Kafka authentication at run time: the librdkafka settings for a configured
//! [`Security`], MSK IAM tokens for SASL OAUTHBEARER, and the watch that turns an
//! authentication failure into a clean, prompt stop.
//!
//! librdkafka treats a rejected credential like a network blip and retries forever;
//! a wrong password would then look like a hung host and hammer the broker. Every
//! client's error callback reports here instead (and its log callback, for TLS
//! certificate refusals), and the first authentication failure ends the run with an
//! error that names the client, the broker and the mechanism.

mod msk_iam;

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::{Client, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::security::{Protocol, Sasl, Security};
use crate::telemetry::Throttle;

/// The first authentication failure of any client, shared by the source and the sink.
#[derive(Debug, Default)]
pub(crate) struct AuthFailure(Mutex<Option<String>>);

impl AuthFailure {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }

    /// Fails with the recorded failure, if there is one.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        match self.get() {
            Some(failure) => Err(anyhow::anyhow!(failure)),
            None => Ok(()),
        }
    }

    fn record(&self, message: String) {
        self.0.lock().unwrap().get_or_insert(message);
    }
}

/// Whether `error` is a lost or refused connection to a broker, which the client
/// retries on its own.
pub(crate) fn is_lost_connection(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    )
}

/// Authentication for one Kafka client: its settings, its tokens, its failures.
#[derive(Clone)]
pub(crate) struct ClientAuth {
    role: &'static str,
    servers: String,
    security: Security,
    tokens: Option<Arc<msk_iam::TokenSource>>,
    failure: Arc<AuthFailure>,
    /// Lost connections, which librdkafka retries on its own: while a broker is away
    /// every reconnect attempt of every client reports one.
    connectivity: Arc<Mutex<Throttle>>,
}

/// How often lost connections are logged as warnings (the rest go to debug).
const CONNECTIVITY_REPORT_EVERY: Duration = Duration::from_secs(10);

impl ClientAuth {
    /// `role` names the client in messages (`source`, `sink`). For MSK IAM this loads
    /// the AWS configuration (no network yet: credentials are fetched for the first token).
    pub(crate) fn new(
        role: &'static str,
        servers: &str,
        security: &Security,
        tokens: Option<Arc<msk_iam::TokenSource>>,
        failure: Arc<AuthFailure>,
    ) -> Self {
        ClientAuth {
            role,
            servers: servers.to_string(),
            security: security.clone(),
            tokens,
            failure,
            connectivity: Arc::new(Mutex::new(Throttle::new(CONNECTIVITY_REPORT_EVERY))),
        }
    }

    pub(crate) fn failure(&self) -> &Arc<AuthFailure> {
        &self.failure
    }

    /// Sets the security settings on a client configuration.
    pub(crate) fn apply(&self, client: &mut ClientConfig) {
        let security = &self.security;
        client.set("security.protocol", security.protocol.name());
        let tls = &security.tls;
        if let Some(file) = &tls.ca_file {
            client.set("ssl.ca.location", file.display().to_string());
        }
        if let Some(file) = &tls.cert_file {
            client.set("ssl.certificate.location", file.display().to_string());
        }
        if let Some(file) = &tls.key_file {
            client.set("ssl.key.location", file.display().to_string());
        }
        if let Some(password) = &tls.key_password {
            client.set("ssl.key.password", password.expose());
        }
        match &security.sasl {
            Some(Sasl::Password {
                mechanism,
                username,
                password,
            }) => {
                client
                    .set("sasl.mechanism", mechanism.name())
                    .set("sasl.username", username)
                    .set("sasl.password", password.expose());
            }
            // MSK IAM is OAUTHBEARER with tokens from generate_oauth_token.
            Some(Sasl::MskIam(_)) => {
                client.set("sasl.mechanism", "OAUTHBEARER");
            }
            None => {}
        }
    }

    /// The next OAUTHBEARER token, for `ClientContext::generate_oauth_token`.
    pub(crate) fn token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        match &self.tokens {
            Some(tokens) => Ok(tokens.token(self.role)?),
            None => Err(format!(
                "the {} asked for an OAUTHBEARER token, but security.mechanism is not AWS_MSK_IAM",
                self.role
            )
            .into()),
        }
    }

    /// Sets the first token on a new client at once, so it can talk to the cluster
    /// before anything polls it (and on the admin client, which is never polled).
    pub(crate) fn install_token<C: rdkafka::ClientContext>(
        &self,
        client: &Client<C>,
    ) -> anyhow::Result<()> {
        if self.tokens.is_none() {
            return Ok(());
        }
        let token = self.token().map_err(|e| {
            anyhow::anyhow!(
                "the {role}'s {mechanism} authentication to {servers} failed ({e}); {hint}",
                role = self.role,
                mechanism = self.security.describe(),
                servers = self.servers,
                hint = self.hint(),
            )
        })?;
        let value = std::ffi::CString::new(token.token)?;
        let principal = std::ffi::CString::new(token.principal_name)?;
        let mut error = [0 as std::ffi::c_char; 512];
        // SAFETY: a live client handle, NUL-terminated strings that outlive the call, no
        // extensions, and an error buffer of the given size (librdkafka copies what it keeps).
        let code = unsafe {
            rdkafka::bindings::rd_kafka_oauthbearer_set_token(
                client.native_ptr(),
                value.as_ptr(),
                token.lifetime_ms,
                principal.as_ptr(),
                std::ptr::null_mut(),
                0,
                error.as_mut_ptr(),
                error.len(),
            )
        };
        if code != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            // SAFETY: librdkafka writes a NUL-terminated message into the buffer.
            let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
            anyhow::bail!(
                "setting the MSK IAM token failed: {}",
                message.to_string_lossy()
            );
        }
        Ok(())
    }

    /// A librdkafka log line of the client named `client`: into the host's log, and a
    /// certificate refusal in it recorded (see [`ClientAuth::observe_log`]).
    pub(crate) fn log(&self, client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::telemetry::librdkafka_log(client, level, facility, message);
        self.observe_log(facility, message);
    }

    /// A client error of the client named `client`: a refused credential is recorded
    /// and logged as an error, a lost connection as a warning at most once per
    /// `CONNECTIVITY_REPORT_EVERY`, anything else as a warning.
    pub(crate) fn error(&self, client: &str, error: &KafkaError, reason: &str) {
        if self.observe(error, reason) {
            tracing::error!(client, %error, "Kafka authentication failed: {reason}");
        } else if is_lost_connection(error) {
            match self.connectivity.lock().unwrap().count(1) {
                Some(1) => tracing::warn!(client, %error, "Kafka client error: {reason}"),
                Some(n) => tracing::warn!(
                    client,
                    %error,
                    "Kafka client error: {reason} ({} more lost connections since the last report)",
                    n - 1
                ),
                None => tracing::debug!(client, %error, "Kafka client error: {reason}"),
            }
        } else {
            tracing::warn!(client, %error, "Kafka client error: {reason}");
        }
    }

    /// Looks at a client error; returns true (and records the failure) when it means
    /// the credentials or the TLS setup were refused.
    fn observe(&self, error: &KafkaError, reason: &str) -> bool {
        let code = error.rdkafka_error_code();
        // A connection that drops during the SASL handshake (a client closing, a broker
        // restarting) is reported as an authentication error, but nothing was refused:
        // librdkafka reconnects.
        if reason.contains("handshake failed: Local: Broker transport failure") {
            return false;
        }
        let refused = matches!(
            code,
            Some(RDKafkaErrorCode::Authentication)
                | Some(RDKafkaErrorCode::SaslAuthenticationFailed)
                | Some(RDKafkaErrorCode::SSL)
        ) || (self.security.protocol.tls()
            && code == Some(RDKafkaErrorCode::BrokerTransportFailure)
            && reason.contains("SSL"));
        if !refused {
            return false;
        }
        self.refused(reason);
        true
    }

    /// Looks at a librdkafka log line; returns true (and records the failure) when it
    /// says a TLS handshake was refused over a certificate. librdkafka logs that at
    /// once, from the thread that saw it, while the matching error event waits in the
    /// client's queue until the client is next served, which can be late.
    fn observe_log(&self, facility: &str, message: &str) -> bool {
        const REFUSALS: [&str; 4] = [
            "certificate verify failed",
            "alert bad certificate",
            "alert unknown ca",
            "alert certificate required",
        ];
        let refused = self.security.protocol.tls()
            && facility == "FAIL"
            && REFUSALS.iter().any(|refusal| message.contains(refusal));
        if refused {
            self.refused(message);
        }
        refused
    }

    fn refused(&self, reason: &str) {
        self.failure.record(format!(
            "Kafka refused the {role}'s credentials: {mechanism} authentication to {servers} failed ({reason}); {hint}",
            role = self.role,
            mechanism = self.security.describe(),
            servers = self.servers,
            hint = self.hint(),
        ));
    }

    fn hint(&self) -> &'static str {
        match &self.security.sasl {
            Some(Sasl::Password { .. }) => {
                "check security.username and the password in the variable security.password_env names"
            }
            Some(Sasl::MskIam(_)) => {
                "check the AWS credentials Sluice found (environment, profile, web identity, container or instance role), that they allow kafka-cluster:Connect on this cluster, security.region, and the host's clock (a token is valid for 15 minutes from signing)"
            }
            None if self.security.protocol == Protocol::Plaintext => {
                "the broker expects authentication; set [security]"
            }
            None => {
                "check security.ca_file, cert_file and key_file against the broker's certificates"
            }
        }
    }
}

/// The MSK IAM token source for a client, when it uses MSK IAM.
pub(crate) fn token_source(
    security: &Security,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Option<Arc<msk_iam::TokenSource>>> {
    match &security.sasl {
        Some(Sasl::MskIam(iam)) => Ok(Some(Arc::new(
            msk_iam::TokenSource::new(iam, handle)
                .map_err(|e| e.context("loading the AWS configuration for MSK IAM"))?,
        ))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(protocol: Protocol) -> ClientAuth {
        let security = Security {
            protocol,
            ..Security::default()
        };
        ClientAuth::new(
            "source",
            "127.0.0.1:9094",
            &security,
            None,
            AuthFailure::new(),
        )
    }

    const UNTRUSTED: &str = "ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: \
        ../ssl/statem/statem_clnt.c:1889:tls_post_process_server_certificate \
        error:0A000086:SSL routines::certificate verify failed (after 9ms in state SSL_HANDSHAKE)";

    #[test]
    fn a_certificate_refusal_in_the_log_stops_the_client() {
        let auth = auth(Protocol::Ssl);
        assert!(auth.observe_log("FAIL", UNTRUSTED));
        let failure = auth.failure().get().expect("recorded");
        assert!(
            failure.contains("SSL authentication to 127.0.0.1:9094 failed"),
            "{failure}"
        );
        assert!(failure.contains("certificate verify failed"), "{failure}");
    }

    #[test]
    fn other_log_lines_and_plaintext_clients_are_left_alone() {
        let tls = auth(Protocol::Ssl);
        let dropped = "ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: Disconnected \
            (after 3ms in state SSL_HANDSHAKE)";
        assert!(!tls.observe_log("FAIL", dropped));
        assert!(!tls.observe_log("CONFWARN", UNTRUSTED));
        assert!(!auth(Protocol::Plaintext).observe_log("FAIL", UNTRUSTED));
        assert_eq!(tls.failure().get(), None);
    }
}
