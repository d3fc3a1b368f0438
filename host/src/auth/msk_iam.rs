//! AWS MSK IAM tokens for SASL OAUTHBEARER, signed by `aws-msk-iam-sasl-signer` with
//! credentials from the AWS default chain (environment, shared profile, web identity,
//! container and instance metadata), optionally through an assumed role.
//!
//! Strategy: librdkafka asks for a token on the thread that polls the client, and
//! refreshes at 80% of the lifetime reported with the previous one. Signing is async
//! (credentials may come over the network), so each request runs on the async runtime
//! and the polling thread waits for it at most [`TOKEN_TIMEOUT`]. When a refresh fails
//! while the previous token is still valid, that token is handed out again and
//! librdkafka asks again later: a brief credential outage does not stop the flow.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_config::sts::AssumeRoleProvider;
use aws_types::region::Region;
use aws_types::sdk_config::SharedCredentialsProvider;
use rdkafka::client::OAuthToken;

use crate::config::security::MskIam;

/// The longest a polling thread waits for a token.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A previous token is reused after a failed refresh only while it has this much left.
const REUSE_MARGIN_MS: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error(
        "no MSK IAM token within {} s (AWS credentials did not arrive); check the AWS credential chain",
        TOKEN_TIMEOUT.as_secs()
    )]
    Timeout,
    #[error("signing the MSK IAM token failed: {0}")]
    Sign(String),
}

/// A signed token (a bearer credential: never logged) and when it expires.
struct Token {
    value: String,
    expires_ms: i64,
}

/// Signs tokens for one cluster region; shared by the source, the sink and the admin client.
pub(crate) struct TokenSource {
    region: Region,
    credentials: SharedCredentialsProvider,
    lifetime: Duration,
    runtime: tokio::runtime::Handle,
    last: Mutex<Option<Token>>,
}

impl TokenSource {
    /// Loads the AWS configuration (no credentials are fetched yet) on `runtime`.
    /// Must not be called from one of the runtime's own threads.
    pub(crate) fn new(config: &MskIam, runtime: &tokio::runtime::Handle) -> anyhow::Result<Self> {
        let region = Region::new(config.region.clone());
        let credentials = runtime.block_on(async {
            let sdk = aws_config::defaults(BehaviorVersion::latest())
                .region(region.clone())
                .load()
                .await;
            let chain = sdk
                .credentials_provider()
                .ok_or_else(|| anyhow::anyhow!("the AWS SDK found no credential provider chain"))?;
            anyhow::Ok(match &config.role_arn {
                Some(arn) => SharedCredentialsProvider::new(
                    AssumeRoleProvider::builder(arn.clone())
                        .session_name(config.role_session_name.clone())
                        .region(region.clone())
                        .configure(&sdk)
                        .build_from_provider(chain)
                        .await,
                ),
                None => chain,
            })
        })?;
        Ok(TokenSource {
            region,
            credentials,
            lifetime: config.token_lifetime,
            runtime: runtime.clone(),
            last: Mutex::new(None),
        })
    }

    /// A fresh token, or the previous one while it is still valid if signing fails.
    pub(crate) fn token(&self, role: &str) -> Result<OAuthToken, TokenError> {
        let now_ms = now_ms();
        match self.sign() {
            Ok(token) => {
                // Report the shorter of the token's validity and the configured lifetime,
                // so librdkafka refreshes in time.
                let expires_ms = token
                    .expires_ms
                    .min(now_ms + self.lifetime.as_millis() as i64);
                tracing::info!(
                    client = role,
                    region = %self.region,
                    valid_for_ms = expires_ms - now_ms,
                    "MSK IAM token issued."
                );
                let oauth = OAuthToken {
                    token: token.value.clone(),
                    principal_name: "sluice".into(),
                    lifetime_ms: expires_ms,
                };
                *self.last.lock().unwrap() = Some(Token {
                    value: token.value,
                    expires_ms,
                });
                Ok(oauth)
            }
            Err(error) => {
                let last = self.last.lock().unwrap();
                match &*last {
                    Some(previous) if previous.expires_ms - now_ms > REUSE_MARGIN_MS => {
                        tracing::warn!(client = role, %error, valid_for_ms = previous.expires_ms - now_ms, "MSK IAM token refresh failed; the current token stays in use.");
                        Ok(OAuthToken {
                            token: previous.value.clone(),
                            principal_name: "sluice".into(),
                            lifetime_ms: previous.expires_ms,
                        })
                    }
                    _ => Err(error),
                }
            }
        }
    }

    fn sign(&self) -> Result<Token, TokenError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let region = self.region.clone();
        let credentials = self.credentials.clone();
        self.runtime.spawn(async move {
            let signed = tokio::time::timeout(
                TOKEN_TIMEOUT,
                aws_msk_iam_sasl_signer::generate_auth_token_from_credentials_provider(
                    region,
                    credentials,
                ),
            )
            .await;
            let _ = sender.send(signed);
        });
        match receiver.recv_timeout(TOKEN_TIMEOUT + Duration::from_secs(1)) {
            Ok(Ok(Ok((value, expires_ms)))) => Ok(Token { value, expires_ms }),
            // The signer's errors describe the credential problem, never the secret.
            Ok(Ok(Err(error))) => Err(TokenError::Sign(error_chain(&error))),
            Ok(Err(_)) | Err(_) => Err(TokenError::Timeout),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
