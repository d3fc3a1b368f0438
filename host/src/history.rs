//! What happened recently, for the admin console: the last checkpoints with their
//! outcome, the last warnings and errors, and counters of failures that `GET /metrics`
//! exports.
//!
//! Strategy: the places where these things happen (the checkpointer, the transform
//! stage, the log) are spread over the host and run on the workers' threads; each
//! reports with one call into this module's process-wide, bounded ring buffers, so that
//! none of them needs a handle to the admin endpoint. A host is one process running one
//! pipeline, so process-wide is per pipeline. Nothing here is on the per-record path:
//! checkpoints happen at most a few times a second, and warnings are throttled where
//! they are logged.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Checkpoints kept.
const CHECKPOINTS: usize = 100;
/// Warnings and errors kept.
const EXCEPTIONS: usize = 100;
/// The longest message kept of a warning or error, in bytes.
const MAX_MESSAGE: usize = 2048;

/// One checkpoint: committed, or not with the reason.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckpointRecord {
    /// Counts up from 1 in the order checkpoints end, whatever their outcome.
    id: u64,
    /// When it ended, in ms since the Unix epoch.
    at_ms: u64,
    pub(crate) duration_ms: f64,
    /// Keyed-state bytes (keys and values) written to the changelog since the checkpoint
    /// before.
    state_bytes: u64,
    /// `committed`, `aborted` (exactly-once: the transaction was aborted and the
    /// partitions rewound) or `failed` (the commit did not go through).
    pub(crate) outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<usize>,
    /// Partitions whose progress it committed.
    partitions: usize,
}

/// One warning or error from the host's log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Exception {
    at_ms: u64,
    /// `WARN` or `ERROR`.
    level: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<usize>,
    /// The plugin version the worker ran (the short digest), when the line came from a
    /// worker or a plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_version: Option<String>,
    /// `topic/partition@offset` of the record it concerns, when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    message: String,
}

struct Books {
    checkpoints: VecDeque<CheckpointRecord>,
    next_checkpoint: u64,
    exceptions: VecDeque<Exception>,
}

static BOOKS: Mutex<Books> = Mutex::new(Books {
    checkpoints: VecDeque::new(),
    next_checkpoint: 1,
    exceptions: VecDeque::new(),
});
static STATE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Failure counters exported by `GET /metrics`.
pub(crate) static FAILED_CHECKPOINTS: AtomicU64 = AtomicU64::new(0);
pub(crate) static TRANSACTION_ABORTS: AtomicU64 = AtomicU64::new(0);
pub(crate) static RETRIES: AtomicU64 = AtomicU64::new(0);
pub(crate) static PLUGIN_RESTARTS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The worker this thread runs and the plugin version (short digest) it last ran.
    static CONTEXT: Cell<Option<usize>> = const { Cell::new(None) };
    static VERSION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn lock() -> std::sync::MutexGuard<'static, Books> {
    BOOKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Notes that this thread runs worker `worker`.
pub(crate) fn set_worker(worker: usize) {
    CONTEXT.with(|c| c.set(Some(worker)));
}

/// Notes the plugin version (short digest) this thread's worker runs, when it changed.
pub(crate) fn set_version(digest: &str) {
    VERSION.with(|v| {
        let mut v = v.borrow_mut();
        if v.as_deref() != Some(digest) {
            *v = Some(digest.to_string());
        }
    });
}

fn worker() -> Option<usize> {
    CONTEXT.with(Cell::get)
}

fn version() -> Option<String> {
    VERSION.with(|v| v.borrow().clone())
}

/// Notes keyed-state bytes written to the changelog for the next checkpoint.
pub(crate) fn state_written(bytes: u64) {
    STATE_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

fn push_checkpoint(
    outcome: &'static str,
    took: Duration,
    partitions: usize,
    reason: Option<String>,
) {
    let state_bytes = STATE_BYTES.swap(0, Ordering::Relaxed);
    let mut books = lock();
    let id = books.next_checkpoint;
    books.next_checkpoint += 1;
    if books.checkpoints.len() == CHECKPOINTS {
        books.checkpoints.pop_front();
    }
    books.checkpoints.push_back(CheckpointRecord {
        id,
        at_ms: now_ms(),
        duration_ms: took.as_secs_f64() * 1000.0,
        state_bytes,
        outcome,
        reason,
        worker: worker(),
        partitions,
    });
}

/// A checkpoint that committed the progress of `partitions` partitions in `took`.
pub(crate) fn checkpoint_committed(took: Duration, partitions: usize) {
    push_checkpoint("committed", took, partitions, None);
}

/// A checkpoint whose commit failed (it is retried by the next one).
pub(crate) fn checkpoint_failed(reason: &dyn Display) {
    FAILED_CHECKPOINTS.fetch_add(1, Ordering::Relaxed);
    push_checkpoint("failed", Duration::ZERO, 0, Some(cut(reason.to_string())));
}

/// The pipeline rewound to its last checkpoint after `reason` to try again; with
/// exactly-once the open transaction was aborted, which is a checkpoint that failed.
pub(crate) fn rewound(exactly_once: bool, reason: &dyn Display) {
    RETRIES.fetch_add(1, Ordering::Relaxed);
    if exactly_once {
        TRANSACTION_ABORTS.fetch_add(1, Ordering::Relaxed);
        FAILED_CHECKPOINTS.fetch_add(1, Ordering::Relaxed);
        push_checkpoint("aborted", Duration::ZERO, 0, Some(cut(reason.to_string())));
    }
}

/// A plugin instance was replaced by a new one of the same version (after a trap).
pub(crate) fn plugin_restarted() {
    PLUGIN_RESTARTS.fetch_add(1, Ordering::Relaxed);
}

/// Keeps a warning or an error from the log; the worker and plugin version come from
/// the thread's context when the line does not name them.
pub(crate) fn exception(
    level: &'static str,
    message: String,
    plugin_version: Option<String>,
    record: Option<String>,
) {
    let record = record.or_else(|| find_record(&message));
    let entry = Exception {
        at_ms: now_ms(),
        level,
        worker: worker(),
        plugin_version: plugin_version.or_else(version),
        record,
        message: cut(message),
    };
    let mut books = lock();
    if books.exceptions.len() == EXCEPTIONS {
        books.exceptions.pop_front();
    }
    books.exceptions.push_back(entry);
}

/// The checkpoints kept, oldest first.
pub(crate) fn checkpoints() -> Vec<CheckpointRecord> {
    lock().checkpoints.iter().cloned().collect()
}

/// The warnings and errors kept, oldest first.
pub(crate) fn exceptions() -> Vec<Exception> {
    lock().exceptions.iter().cloned().collect()
}

fn cut(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The first `topic/partition@offset` in `text`, as the host names records.
fn find_record(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '"' | '`'))
        .map(|word| word.trim_end_matches(['.', ':']))
        .find(|word| {
            let Some((head, offset)) = word.rsplit_once('@') else {
                return false;
            };
            let Some((topic, partition)) = head.rsplit_once('/') else {
                return false;
            };
            !topic.is_empty()
                && !partition.is_empty()
                && partition.bytes().all(|b| b.is_ascii_digit())
                && !offset.is_empty()
                && offset
                    .split("..")
                    .all(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_found_where_the_log_names_it() {
        assert_eq!(
            find_record("record stocks-in/3@1207 cannot be handed to the plugin"),
            Some("stocks-in/3@1207".into())
        );
        assert_eq!(
            find_record("the worker panicked while processing in/0@5..9, in/3@7"),
            Some("in/0@5..9".into())
        );
        assert_eq!(
            find_record("plugin p failed on record in/0@150: value matched"),
            Some("in/0@150".into())
        );
        assert_eq!(find_record("no record here/x@y, a@b"), None);
        assert_eq!(find_record("see /tmp/a@b"), None);
    }

    #[test]
    fn an_exactly_once_rewind_is_an_aborted_checkpoint_and_the_rings_stay_bounded() {
        let (retries, aborts, failed) = (
            RETRIES.load(Ordering::Relaxed),
            TRANSACTION_ABORTS.load(Ordering::Relaxed),
            FAILED_CHECKPOINTS.load(Ordering::Relaxed),
        );
        rewound(false, &"an at-least-once rewind");
        rewound(true, &"the broker went away (unique 7f3a)");
        state_written(10);
        checkpoint_failed(&"commit refused (unique 9c1d)");
        // Other tests count too: at least these.
        assert!(RETRIES.load(Ordering::Relaxed) >= retries + 2);
        assert!(TRANSACTION_ABORTS.load(Ordering::Relaxed) > aborts);
        assert!(FAILED_CHECKPOINTS.load(Ordering::Relaxed) >= failed + 2);
        let kept = checkpoints();
        let find = |reason: &str| {
            kept.iter()
                .find(|c| c.reason.as_deref().is_some_and(|r| r.contains(reason)))
                .cloned()
                .unwrap_or_else(|| panic!("no checkpoint for {reason}"))
        };
        assert_eq!(find("7f3a").outcome, "aborted");
        assert_eq!(find("9c1d").outcome, "failed");
        assert!(!kept.iter().any(|c| {
            c.reason
                .as_deref()
                .is_some_and(|r| r.contains("at-least-once rewind"))
        }));

        // One test for both: the rings are process-wide, and filling them would push
        // out what the other checks for.
        the_rings_keep_the_last_entries_and_count_on();
    }

    fn the_rings_keep_the_last_entries_and_count_on() {
        for n in 0..CHECKPOINTS + 5 {
            checkpoint_committed(Duration::from_millis(n as u64), 1);
        }
        for n in 0..EXCEPTIONS + 3 {
            exception("WARN", format!("warning {n}"), None, None);
        }
        let kept = checkpoints();
        assert_eq!(kept.len(), CHECKPOINTS);
        // Ids keep counting past the ring's size; other tests may add more.
        assert!(kept.last().unwrap().id > kept.first().unwrap().id);
        assert!(kept.windows(2).all(|w| w[0].id < w[1].id));
        let exceptions = exceptions();
        assert_eq!(exceptions.len(), EXCEPTIONS);
        let long = cut("é".repeat(MAX_MESSAGE));
        assert!(long.len() <= MAX_MESSAGE + '…'.len_utf8());
    }
}
