//! `plain-loop`: the baseline Sluice is measured against. A plain rdkafka consume →
//! produce loop on one thread, with Sluice's client settings and batching but no
//! WebAssembly, no batch encoding and no checkpoint tracker: the practical limit of a
//! pass-through on this broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Records taken from the consumer per turn, as Sluice's default `batch_max_records`.
const BATCH: usize = 1000;
/// How long a turn waits for its first record, as Sluice's pipeline.
const IDLE_POLL: Duration = Duration::from_millis(100);
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "plain-loop",
    about = "Copy one topic to another with a plain rdkafka loop (the Sluice benchmark baseline)."
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Topic to read.
    #[arg(long)]
    input: String,
    /// Topic to write; records keep their partition number, so it needs at least as
    /// many partitions as the input.
    #[arg(long)]
    output: String,
    /// Consumer group.
    #[arg(long)]
    group: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let handler: extern "C" fn(libc::c_int) = request_stop;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_servers)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.max.messages.kbytes", "8192")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the Kafka consumer (check --bootstrap-servers)")?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("queue.buffering.max.kbytes", "16384")
        .create()
        .context("creating the Kafka producer (check --bootstrap-servers)")?;
    consumer
        .subscribe(&[&args.input])
        .with_context(|| format!("subscribing to input topic `{}`", args.input))?;

    // Next offset to commit, by partition number; -1 where nothing was consumed yet.
    let mut next: Vec<i64> = Vec::new();
    let mut last_commit = Instant::now();
    let mut copied: u64 = 0;
    let result = (|| -> anyhow::Result<()> {
        while !STOP.load(Ordering::Relaxed) {
            let mut timeout = IDLE_POLL;
            for _ in 0..BATCH {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Ok(message)) => {
                        copy(&producer, &args.output, &message)?;
                        let partition = message.partition() as usize;
                        if next.len() <= partition {
                            next.resize(partition + 1, -1);
                        }
                        next[partition] = message.offset() + 1;
                        copied += 1;
                    }
                    Some(Err(error)) => eprintln!("plain-loop: consume error: {error}"),
                }
                timeout = Duration::ZERO;
            }
            producer.poll(Duration::ZERO);
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                commit(&consumer, &args.input, &next, CommitMode::Async);
                last_commit = Instant::now();
            }
        }
        Ok(())
    })();

    // The final commit follows the flush, so it covers only acknowledged records.
    producer
        .flush(FLUSH_TIMEOUT)
        .with_context(|| format!("records still undelivered after {FLUSH_TIMEOUT:?}"))?;
    commit(&consumer, &args.input, &next, CommitMode::Sync);
    consumer.unsubscribe();
    eprintln!("plain-loop: copied {copied} records");
    result
}

/// Produces a copy of `message` to the same partition number of `topic`, waiting for
/// room when the producer queue is full.
fn copy(producer: &BaseProducer, topic: &str, message: &BorrowedMessage<'_>) -> anyhow::Result<()> {
    let headers = message.headers().map(|h| h.detach());
    let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(message.partition());
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(value) = message.payload() {
        record = record.payload(value);
    }
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    if let Some(timestamp) = message.timestamp().to_millis() {
        record = record.timestamp(timestamp);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(20));
            }
            Err((error, _)) => bail!("could not send a record to topic `{topic}`: {error}"),
        }
    }
}

fn commit(consumer: &BaseConsumer, topic: &str, next: &[i64], mode: CommitMode) {
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in next.iter().enumerate().filter(|(_, o)| **o >= 0) {
        if let Err(error) =
            tpl.add_partition_offset(topic, partition as i32, Offset::Offset(*offset))
        {
            eprintln!("plain-loop: offset {offset} for partition {partition}: {error}");
        }
    }
    if tpl.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&tpl, mode) {
        eprintln!("plain-loop: commit failed ({error}); the next commit retries it");
    }
}
