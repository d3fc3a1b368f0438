//! Topic administration and end-offset reads against the broker, shared by the
//! benchmark programs.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Partitions of every benchmark topic.
pub const PARTITIONS: i32 = 6;
/// Time allowed for one admin or offsets request.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Topic administration and end-offset reads against the broker.
pub struct Kafka {
    admin: AdminClient<DefaultClientContext>,
    /// Reads end offsets as a `read_committed` reader sees them (librdkafka's default):
    /// up to the last stable offset.
    watcher: BaseConsumer,
    /// Reads end offsets up to the high watermark: records of open transactions too.
    uncommitted: BaseConsumer,
    runtime: tokio::runtime::Runtime,
    servers: String,
}

impl Kafka {
    pub fn connect(servers: &str) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", servers);
        let admin = config
            .create()
            .context("creating the Kafka admin client (check --bootstrap-servers)")?;
        let watcher: BaseConsumer = config
            .create()
            .context("creating the Kafka client that reads end offsets")?;
        let uncommitted: BaseConsumer = config
            .clone()
            .set("isolation.level", "read_uncommitted")
            .create()
            .context("creating the Kafka client that reads high watermarks")?;
        watcher.fetch_metadata(None, Duration::from_secs(10)).map_err(|error| {
            anyhow::anyhow!(
                "could not reach Kafka at {servers}: {error}; start it with scripts/kafka.sh start"
            )
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime for the admin client")?;
        Ok(Kafka {
            admin,
            watcher,
            uncommitted,
            runtime,
            servers: servers.to_string(),
        })
    }

    pub fn create_topic(&self, name: &str, log_append_time: bool) -> anyhow::Result<()> {
        let mut topic = NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1));
        if log_append_time {
            topic = topic.set("message.timestamp.type", "LogAppendTime");
        }
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let results = self
            .runtime
            .block_on(self.admin.create_topics([&topic], &options))
            .with_context(|| format!("creating topic `{name}` on {}", self.servers))?;
        for result in results {
            result.map_err(|(name, code)| anyhow::anyhow!("creating topic `{name}`: {code}"))?;
        }
        // A new topic's partitions answer ListOffsets only once their leaders are settled.
        let deadline = Instant::now() + KAFKA_TIMEOUT;
        loop {
            match self.end_total(name) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(error.context(format!(
                        "topic `{name}` was created but its partitions are not ready after {KAFKA_TIMEOUT:?}"
                    )));
                }
                Err(_) => {
                    let _ = self.watcher.fetch_metadata(Some(name), KAFKA_TIMEOUT);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    pub fn delete_topic(&self, name: &str) -> anyhow::Result<()> {
        let options = AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        let results = self
            .runtime
            .block_on(self.admin.delete_topics(&[name], &options))
            .with_context(|| format!("deleting topic `{name}`; delete it by hand to free disk"))?;
        for result in results {
            result.map_err(|(name, code)| {
                anyhow::anyhow!("deleting topic `{name}`: {code}; delete it by hand to free disk")
            })?;
        }
        Ok(())
    }

    /// The sum of the end offsets of all partitions: the record count of a fresh topic
    /// (of its committed records, where transactions write it).
    pub fn end_total(&self, topic: &str) -> anyhow::Result<i64> {
        ends(&self.watcher, topic)
    }

    /// The sum of the high watermarks of all partitions: records written, open
    /// transactions' included (and transaction markers counted).
    pub fn written_total(&self, topic: &str) -> anyhow::Result<i64> {
        ends(&self.uncommitted, topic)
    }
}

/// The sum of the end offsets of `topic`'s partitions, as `watcher` reads them.
fn ends(watcher: &BaseConsumer, topic: &str) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        tpl.add_partition_offset(topic, partition, Offset::End)?;
    }
    let ends = watcher
        .offsets_for_times(tpl, KAFKA_TIMEOUT)
        .with_context(|| format!("reading the end offsets of `{topic}`"))?;
    let mut total = 0;
    for element in ends.elements() {
        match element.offset() {
            Offset::Offset(end) => total += end,
            other => bail!(
                "no end offset for `{topic}` partition {}: {other:?} ({:?})",
                element.partition(),
                element.error()
            ),
        }
    }
    Ok(total)
}

/// Sends `record`, serving delivery reports for `wait` at a time while the producer's
/// queue is full.
pub fn send_waiting(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, [u8], [u8]>,
    wait: Duration,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(wait);
            }
            Err((error, back)) => bail!("writing to topic `{}`: {error}", back.topic),
        }
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

/// Reads a consumer group's committed offsets on one topic: the progress a pipeline
/// has made durable.
pub struct Committed {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl Committed {
    pub fn new(servers: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("group.id", group)
            // Not `read_committed`: that makes the read wait out an open transaction.
            .set("isolation.level", "read_uncommitted")
            .create()
            .context("creating the client that reads committed offsets")?;
        Ok(Committed {
            consumer,
            topic: topic.to_string(),
            partitions,
        })
    }

    /// The sum of the committed offsets (a partition with none counts 0): the input
    /// records the group has finished with.
    pub fn total(&self) -> anyhow::Result<i64> {
        let mut tpl = TopicPartitionList::new();
        for partition in 0..self.partitions {
            tpl.add_partition(&self.topic, partition);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, KAFKA_TIMEOUT)
            .with_context(|| format!("reading the committed offsets on `{}`", self.topic))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum())
    }
}
