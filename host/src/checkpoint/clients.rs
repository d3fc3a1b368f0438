//! What the checkpointer asks of the Kafka clients, as two narrow interfaces (and one
//! for reading the changelog back), implemented by the source's consumer, the sink and
//! the changelog's restorer. The recovery logic is tested against fakes of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::changelog::{Restorer, Values};
use crate::progress::Tracker;
use crate::sink::kafka::{KafkaSink, SendError};
use crate::source::kafka::{SourceContext, commit_within};
use crate::state::Change;

/// What the checkpointer asks of the consumer group member.
pub(crate) trait GroupMember {
    /// What a transaction needs to commit offsets for the group.
    type Group;

    /// Commits `offsets` for the group: in the background (`None`), or waiting at most
    /// the given time for the coordinator's answer.
    fn commit(&self, offsets: &TopicPartitionList, wait: Option<Duration>) -> KafkaResult<()>;

    /// The offsets the group last committed for `partitions`, as the broker has them.
    fn committed(
        &self,
        partitions: TopicPartitionList,
        timeout: Duration,
    ) -> KafkaResult<TopicPartitionList>;

    /// Moves the consumer of `partition` of `topic` to `offset`, without waiting.
    fn seek(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()>;

    /// The group's metadata, once the member has joined.
    fn group(&self) -> Option<Self::Group>;
}

impl GroupMember for BaseConsumer<SourceContext> {
    type Group = ConsumerGroupMetadata;

    fn commit(&self, offsets: &TopicPartitionList, wait: Option<Duration>) -> KafkaResult<()> {
        match wait {
            None => Consumer::commit(self, offsets, CommitMode::Async),
            Some(timeout) => commit_within(self, offsets, timeout),
        }
    }

    fn committed(
        &self,
        partitions: TopicPartitionList,
        timeout: Duration,
    ) -> KafkaResult<TopicPartitionList> {
        self.committed_offsets(partitions, timeout)
    }

    fn seek(&self, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
        // Asynchronous (no timeout): a partition the group is taking away at this
        // moment must not block the worker; records fetched before the seek are
        // discarded by the client either way.
        Consumer::seek(
            self,
            topic,
            partition,
            Offset::Offset(offset),
            Duration::ZERO,
        )
    }

    fn group(&self) -> Option<ConsumerGroupMetadata> {
        self.group_metadata()
    }
}

/// What the checkpointer asks of the sink: changelog writes, delivery reports, and
/// (exactly-once) the transaction.
pub(crate) trait CheckpointSink {
    /// What a transaction needs to commit offsets for the group.
    type Group;

    /// Writes `changes` to the changelog `topic`, counted as outputs of batch `seq` in
    /// `tracker`, whose delivery reports arrive as the sink is polled.
    fn send_changes(
        &self,
        seq: u64,
        topic: &str,
        changes: &[Change],
        tracker: &Mutex<Tracker>,
    ) -> Result<(), SendError>;

    /// Serves delivery reports for up to `timeout`. Fails when the sink can no longer
    /// be used (credentials refused, a topic gone).
    fn poll(&self, timeout: Duration) -> anyhow::Result<()>;

    /// Waits up to `timeout` for every record in flight.
    fn flush(&self, timeout: Duration) -> anyhow::Result<()>;

    /// The producer's fatal error (it was fenced), if it has one.
    fn fatal_error(&self) -> Option<String>;

    fn begin_transaction(&self) -> KafkaResult<()>;

    /// Adds `offsets` to the open transaction and commits it.
    fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &Self::Group,
        timeout: Duration,
        keep_going: &dyn Fn() -> bool,
    ) -> KafkaResult<()>;

    fn abort_transaction(
        &self,
        timeout: Duration,
        keep_going: &dyn Fn() -> bool,
    ) -> KafkaResult<()>;

    /// A new producer with the same transactional id, which fences the old one.
    fn recreate(&mut self, keep_going: &dyn Fn() -> bool) -> anyhow::Result<()>;
}

impl CheckpointSink for KafkaSink {
    type Group = ConsumerGroupMetadata;

    fn send_changes(
        &self,
        seq: u64,
        topic: &str,
        changes: &[Change],
        tracker: &Mutex<Tracker>,
    ) -> Result<(), SendError> {
        KafkaSink::send_changes(self, seq, topic, changes, tracker, &|| true)
    }

    fn poll(&self, timeout: Duration) -> anyhow::Result<()> {
        KafkaSink::poll(self, timeout)
    }

    fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        KafkaSink::flush(self, timeout)
    }

    fn fatal_error(&self) -> Option<String> {
        KafkaSink::fatal_error(self)
    }

    fn begin_transaction(&self) -> KafkaResult<()> {
        KafkaSink::begin_transaction(self)
    }

    fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
        keep_going: &dyn Fn() -> bool,
    ) -> KafkaResult<()> {
        KafkaSink::commit_transaction(self, offsets, group, timeout, keep_going)
    }

    fn abort_transaction(
        &self,
        timeout: Duration,
        keep_going: &dyn Fn() -> bool,
    ) -> KafkaResult<()> {
        KafkaSink::abort_transaction(self, timeout, keep_going)
    }

    fn recreate(&mut self, keep_going: &dyn Fn() -> bool) -> anyhow::Result<()> {
        KafkaSink::recreate(self, keep_going)
    }
}

/// Reads partitions' state back from the changelog.
pub(crate) trait StateReader {
    /// The state of each of `partitions` as the changelog has it.
    fn restore(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, Values>>;
}

impl StateReader for Restorer {
    fn restore(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, Values>> {
        Restorer::restore(self, partitions)
    }
}
