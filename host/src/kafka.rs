//! What the source, the sink, the changelog and the generator share about Kafka: one
//! client context (logging, client errors, MSK IAM tokens), topic metadata and topic
//! creation, the reconnect policy, and a record the plugin contract cannot carry.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::OAuthToken;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;

use crate::auth::{AuthFailure, ClientAuth};
use crate::progress::Partition;

/// What one kind of client adds to the callbacks every client shares.
pub(crate) trait Role: Send + Sync + 'static {
    /// Whether librdkafka asks the client for MSK IAM tokens as it is polled; a client
    /// given one token by hand when it is made does not.
    const REFRESHES_TOKENS: bool = true;

    /// librdkafka's statistics, for a client that asked for them.
    fn statistics(&self, _statistics: Statistics) {}

    /// Whether a log line is routine for this client: logged at debug level only.
    fn routine_log(&self, _facility: &str, _message: &str) -> bool {
        false
    }

    /// Whether a client error is what this client expects: not logged.
    fn expected_error(&self, _error: &KafkaError) -> bool {
        false
    }
}

/// A client that adds nothing: an admin client, whose token is set by hand.
struct Plain;

impl Role for Plain {
    const REFRESHES_TOKENS: bool = false;
}

/// The context of every Sluice Kafka client: its log lines and errors go to the host's
/// log (a refused credential recorded, see [`ClientAuth`]), MSK IAM tokens come from
/// its [`ClientAuth`], and `role` adds what one kind of client needs.
pub(crate) struct KafkaContext<R> {
    /// The client's name in log lines.
    name: &'static str,
    auth: ClientAuth,
    pub(crate) role: R,
}

impl<R: Role> KafkaContext<R> {
    pub(crate) fn new(name: &'static str, auth: ClientAuth, role: R) -> Self {
        KafkaContext { name, auth, role }
    }

    pub(crate) fn auth(&self) -> &ClientAuth {
        &self.auth
    }
}

impl<R: Role> ClientContext for KafkaContext<R> {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = R::REFRESHES_TOKENS;

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if self.role.routine_log(facility, message) {
            tracing::debug!(client = self.name, "librdkafka: {message}");
            return;
        }
        self.auth.log(self.name, level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        self.role.statistics(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !self.role.expected_error(&error) {
            self.auth.error(self.name, &error, reason);
        }
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.auth.token()
    }
}

/// How long one metadata request may wait before the client is polled again.
const METADATA_SLICE: Duration = Duration::from_millis(250);

/// The longest wait between two attempts to reach a broker that refused a connection,
/// for the source's and the sink's clients. librdkafka doubles the wait from 100 ms up
/// to 10 s by default, and adds up to half of it again: after a broker refused
/// connections for 10 to 60 s, the first commit came 4.6 to 21.2 s after it was back;
/// with at most 1 s, 0.9 to 2.5 s (`outage-bench --fault refuse`, BENCHMARKS.md), for
/// an attempt a second per connection while a broker is away.
pub(crate) const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// The partition count of `topic`, 0 if it does not exist. Fails with a clear error when
/// the cluster does not answer within `timeout`, and at once when it refuses the
/// credentials. `serve` polls the client, so tokens are handed over and errors seen.
pub(crate) fn topic_partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    servers: &str,
    timeout: Duration,
    role: &str,
    serve: &dyn Fn(),
    failure: &AuthFailure,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + timeout;
    let metadata = loop {
        serve();
        failure.check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        match client.fetch_metadata(Some(topic), left.min(METADATA_SLICE)) {
            Ok(metadata) => break metadata,
            Err(_) if left > METADATA_SLICE => continue,
            Err(error) => {
                serve();
                failure.check()?;
                anyhow::bail!(
                    "could not reach Kafka ({role}) at {servers} within {} s: {error}; check the bootstrap servers and that the brokers are up",
                    timeout.as_secs_f64()
                )
            }
        }
    };
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(0);
    };
    match found.error() {
        Some(_) => Ok(0),
        None => Ok(found.partitions().len() as i32),
    }
}

/// A record the plugin contract cannot carry (a header name that is not UTF-8, or
/// longer than the batch format allows): it is that record's failure, never a reason
/// to skip it or to stop the worker without naming it.
#[derive(Debug)]
pub(crate) struct Unreadable {
    /// The record as it was read, headers and all.
    pub(crate) message: OwnedMessage,
    /// Why the plugin cannot be given it.
    pub(crate) reason: String,
}

impl Unreadable {
    /// Its partition, its offset, and the offset after it.
    pub(crate) fn span(&self) -> (Partition, i64, i64) {
        let offset = self.message.offset();
        (
            (self.message.topic().to_string(), self.message.partition()),
            offset,
            offset + 1,
        )
    }

    /// Where the record was read: `topic/partition@offset`.
    pub(crate) fn origin(&self) -> String {
        format!(
            "{}/{}@{}",
            self.message.topic(),
            self.message.partition(),
            self.message.offset()
        )
    }
}

/// Creates `topic` with the given topic-level `configs`; one that already exists is fine.
pub(crate) fn create_topic(
    servers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
    runtime: &tokio::runtime::Handle,
    auth: &ClientAuth,
) -> anyhow::Result<()> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", servers);
    auth.apply(&mut client);
    let failure = auth.failure().clone();
    let admin: AdminClient<KafkaContext<Plain>> = client
        .create_with_context(KafkaContext::new("admin", auth.clone(), Plain))
        .context("creating the Kafka admin client")?;
    auth.install_token(admin.inner())?;
    let new_topic = configs.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)),
        |new_topic, (key, value)| new_topic.set(key, value),
    );
    let results = runtime
        .block_on(admin.create_topics([&new_topic], &AdminOptions::new()))
        .map_err(|error| failure.check().err().unwrap_or_else(|| error.into()))
        .with_context(|| format!("creating topic `{topic}`"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic `{name}` failed: {code}"),
        }
    }
    Ok(())
}

/// The name worker `worker` uses where each member needs its own (the transactional
/// id, a static `group.instance.id`): worker 0 keeps `name`, so a host that runs one
/// worker is known to the cluster as before; the others add `-<worker>`.
pub(crate) fn worker_name(name: &str, worker: usize) -> String {
    match worker {
        0 => name.to_string(),
        _ => format!("{name}-{worker}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_zero_keeps_the_hosts_name_and_the_others_add_their_number() {
        assert_eq!(worker_name("sluice-g-a", 0), "sluice-g-a");
        assert_eq!(worker_name("sluice-g-a", 3), "sluice-g-a-3");
    }
}
