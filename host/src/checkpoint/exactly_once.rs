//! What exactly-once needs beyond the checkpointer: the worker count each commit
//! records, aborting what the workers of an earlier, larger run left open, and how long
//! a checkpoint's transaction may stay open.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::auth::ClientAuth;
use crate::config::Config;
use crate::source::kafka::SourceContext;

/// The metadata every exactly-once offset commit of a host carries: how many workers
/// the host whose transactional id is `id` runs. A restart with fewer workers reads it
/// to abort what the workers it no longer runs left open.
pub(crate) fn workers_metadata(id: &str, workers: usize) -> String {
    format!("sluice workers={workers} id={id}")
}

/// The worker count in `metadata`, if [`workers_metadata`] wrote it for `id`.
fn workers_in_metadata(metadata: &str, id: &str) -> Option<usize> {
    let (workers, written_for) = metadata
        .strip_prefix("sluice workers=")?
        .split_once(" id=")?;
    (written_for == id).then(|| workers.parse().ok()).flatten()
}

/// Exactly-once, after a host ran with more workers than now: aborts the transactions
/// its extra workers may have left open (a crash, a SIGKILL), at once rather than at
/// the broker's transaction timeout, which would hold every `read_committed` reader of
/// the sink back until then. Best effort: what the committed offsets do not say is
/// left to that timeout.
pub(crate) fn fence_retired_workers(
    config: &Config,
    consumer: &BaseConsumer<SourceContext>,
    partitions: i32,
    id: &str,
    workers: usize,
    auth: &ClientAuth,
) -> anyhow::Result<()> {
    let mut asked = TopicPartitionList::new();
    for partition in 0..partitions {
        asked.add_partition(&config.source.topic, partition);
    }
    let committed = match consumer.committed_offsets(asked, config.source.connect_timeout) {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, "Could not read the group's committed offsets to look for workers of an earlier run.");
            return Ok(());
        }
    };
    let before = committed
        .elements()
        .iter()
        .filter_map(|element| workers_in_metadata(element.metadata(), id))
        .max()
        .unwrap_or(0);
    if before <= workers {
        return Ok(());
    }
    for worker in workers..before {
        crate::sink::kafka::fence(
            &config.sink,
            &crate::kafka::worker_name(id, worker),
            config.source.connect_timeout,
            auth,
        )
        .with_context(|| format!("aborting what worker {worker} of an earlier run left open"))?;
    }
    tracing::info!(
        workers,
        before,
        "Aborted what the workers of an earlier run with more workers left open."
    );
    Ok(())
}

/// How long the broker lets an exactly-once checkpoint's transaction stay open before
/// aborting it: one checkpoint interval, the longest a batch may take (twice the
/// plugin's time limit: a run, then a run record by record), and 10 s of slack (Kafka
/// Streams uses 10 s). Short, because an open transaction of a host that died holds
/// back every `read_committed` consumer of the sink until it ends. The configuration
/// check keeps it within brokers' default cap of 15 minutes.
pub(crate) fn transaction_timeout(interval: Duration, call_timeout: Duration) -> Duration {
    let slack = Duration::from_millis(crate::config::TURN_SLACK_MS as u64);
    (interval + 2 * call_timeout + slack).min(Duration::from_secs(900))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_count_is_read_back_for_the_same_transactional_id_only() {
        let metadata = workers_metadata("sluice-g-vm", 4);
        assert_eq!(workers_in_metadata(&metadata, "sluice-g-vm"), Some(4));
        assert_eq!(workers_in_metadata(&metadata, "sluice-g-other"), None);
        assert_eq!(workers_in_metadata("", "sluice-g-vm"), None);
        assert_eq!(
            workers_in_metadata("sluice workers=x id=sluice-g-vm", "sluice-g-vm"),
            None
        );
    }
}
