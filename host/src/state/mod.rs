//! Keyed state for plugins: byte values under byte keys, one map per input partition.
//!
//! Strategy: the state lives in the host, not in guest memory, so a hot swap, a
//! restart or a rebalance never loses it. Every write marks its key dirty; a checkpoint
//! takes the dirty keys and writes their current values (or tombstones) to the
//! application's compacted changelog topic, partitioned like the input, before (or, in
//! exactly-once mode, in the same transaction as) the offsets it goes with. On
//! assignment a partition's map is rebuilt from its changelog partition
//! (`checkpoint::changelog`); on revocation it is checkpointed and dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The state store shared by the worker's plugin instance and the checkpoint logic.
pub(crate) type SharedState = Arc<Mutex<StateStore>>;

/// One changed key, as it goes to the changelog: `None` is a deletion (a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) partition: i32,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct PartitionState {
    values: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys written since the last checkpoint.
    dirty: HashSet<Vec<u8>>,
    /// Bytes of the keys and values held.
    bytes: u64,
}

impl PartitionState {
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        self.bytes += entry_bytes(&key, &value);
        let key_len = key.len();
        let previous = self.values.insert(key, value);
        if let Some(previous) = &previous {
            self.bytes -= (key_len + previous.len()) as u64;
        }
        previous
    }

    fn remove(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let previous = self.values.remove(key);
        if let Some(previous) = &previous {
            self.bytes -= entry_bytes(key, previous);
        }
        previous
    }
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// What the keyed state may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateLimits {
    /// Bytes of one key and its value: at most what one changelog record can carry.
    pub(crate) entry_bytes: u64,
    /// Bytes of the keys and values of one partition.
    pub(crate) partition_bytes: u64,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            entry_bytes: u64::MAX,
            partition_bytes: u64::MAX,
        }
    }
}

/// How to undo one write of the open batch: the key's previous value and dirty mark,
/// and which of the batch's records made it (its index).
#[derive(Debug)]
struct Undo {
    record: u32,
    partition: i32,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    dirty: bool,
}

/// A position in the open batch's writes (see [`StateStore::savepoint`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Savepoint(usize);

/// State of every partition this host owns.
///
/// Writes made while a batch is open ([`StateStore::begin_batch`]) can be undone as a
/// whole: a batch whose outputs never reach the sink (a rolled-back plugin version, a
/// shutdown while the producer queue is full) must leave no trace in the state either.
#[derive(Debug, Default)]
pub struct StateStore {
    partitions: HashMap<i32, PartitionState>,
    undo: Option<Vec<Undo>>,
    limits: StateLimits,
}

impl StateStore {
    pub fn shared() -> SharedState {
        Arc::new(Mutex::new(StateStore::default()))
    }

    /// A shared store that refuses writes beyond `limits`.
    pub(crate) fn shared_with(limits: StateLimits) -> SharedState {
        Arc::new(Mutex::new(StateStore {
            limits,
            ..StateStore::default()
        }))
    }

    pub(crate) fn get(&self, partition: i32, key: &[u8]) -> Option<&[u8]> {
        self.partitions
            .get(&partition)?
            .values
            .get(key)
            .map(Vec::as_slice)
    }

    /// Stores `value` under `key` in `partition`, for the open batch's record `record`.
    /// A write beyond the limits is refused, with the reason, and changes nothing.
    pub(crate) fn set(
        &mut self,
        record: u32,
        partition: i32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), String> {
        let state = self.partitions.entry(partition).or_default();
        let bytes = entry_bytes(&key, &value);
        if bytes > self.limits.entry_bytes {
            return Err(format!(
                "a keyed-state value of {} bytes (key {} bytes) is larger than one changelog record can carry ({} bytes for key and value: the sink producer's message.max.bytes, less framing)",
                value.len(),
                key.len(),
                self.limits.entry_bytes
            ));
        }
        let replaced = state
            .values
            .get(&key)
            .map_or(0, |old| entry_bytes(&key, old));
        if state.bytes - replaced + bytes > self.limits.partition_bytes {
            return Err(format!(
                "the keyed state of partition {partition} would hold more than {} bytes ([plugin] max_state_mb_per_partition); delete keys the plugin no longer needs, or raise the limit",
                self.limits.partition_bytes
            ));
        }
        let was_dirty = !state.dirty.insert(key.clone());
        let previous = state.insert(key.clone(), value);
        if let Some(undo) = &mut self.undo {
            undo.push(Undo {
                record,
                partition,
                key,
                value: previous,
                dirty: was_dirty,
            });
        }
        Ok(())
    }

    /// Removes `key` from `partition`, for the open batch's record `record`.
    pub(crate) fn delete(&mut self, record: u32, partition: i32, key: &[u8]) {
        let state = self.partitions.entry(partition).or_default();
        let previous = state.remove(key);
        let was_dirty = !state.dirty.insert(key.to_vec());
        if let Some(undo) = &mut self.undo {
            undo.push(Undo {
                record,
                partition,
                key: key.to_vec(),
                value: previous,
                dirty: was_dirty,
            });
        }
    }

    /// Starts recording writes so that [`StateStore::discard_batch`] can undo them.
    pub(crate) fn begin_batch(&mut self) {
        self.undo = Some(Vec::new());
    }

    /// Keeps the open batch's writes.
    pub(crate) fn commit_batch(&mut self) {
        self.undo = None;
    }

    /// Undoes every write since [`StateStore::begin_batch`].
    pub(crate) fn discard_batch(&mut self) {
        self.rollback_to(Savepoint(0));
        self.undo = None;
    }

    /// Whether any of `records` (indices in the open batch) wrote state that stands.
    pub(crate) fn any_wrote(&self, records: &[u32]) -> bool {
        self.undo
            .iter()
            .flatten()
            .any(|entry| records.contains(&entry.record))
    }

    /// A point of the open batch that [`StateStore::rollback_to`] can return to.
    pub(crate) fn savepoint(&self) -> Savepoint {
        Savepoint(self.undo.as_ref().map_or(0, Vec::len))
    }

    /// Undoes the open batch's writes made after `savepoint`, keeping the batch open
    /// and the writes before it.
    pub(crate) fn rollback_to(&mut self, savepoint: Savepoint) {
        let Some(undo) = &mut self.undo else {
            return;
        };
        let undone: Vec<Undo> = undo.drain(savepoint.0.min(undo.len())..).collect();
        for entry in undone.into_iter().rev() {
            let state = self.partitions.entry(entry.partition).or_default();
            match entry.value {
                Some(value) => state.insert(entry.key.clone(), value),
                None => state.remove(&entry.key),
            };
            if !entry.dirty {
                state.dirty.remove(&entry.key);
            }
        }
    }

    /// Whether any key changed since the last [`StateStore::take_changes`].
    pub(crate) fn has_changes(&self) -> bool {
        self.partitions.values().any(|p| !p.dirty.is_empty())
    }

    /// The changed keys of `partitions` (all when `None`) with their current values,
    /// clearing their dirty marks.
    pub(crate) fn take_changes(&mut self, partitions: Option<&[i32]>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (&partition, state) in &mut self.partitions {
            if partitions.is_some_and(|only| !only.contains(&partition)) {
                continue;
            }
            for key in state.dirty.drain() {
                let value = state.values.get(&key).cloned();
                changes.push(Change {
                    partition,
                    key,
                    value,
                });
            }
        }
        changes
    }

    /// Marks the keys of `changes` (taken by [`StateStore::take_changes`]) changed
    /// again: their changelog write failed, so they still have to be saved before any
    /// offset that depends on them is committed. Partitions dropped since are skipped.
    pub(crate) fn untake_changes(&mut self, changes: &[Change]) {
        for change in changes {
            if let Some(state) = self.partitions.get_mut(&change.partition) {
                state.dirty.insert(change.key.clone());
            }
        }
    }

    /// Replaces a partition's state with restored values (nothing dirty).
    pub(crate) fn install(&mut self, partition: i32, values: HashMap<Vec<u8>, Vec<u8>>) {
        let bytes = values.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        self.partitions.insert(
            partition,
            PartitionState {
                values,
                dirty: HashSet::new(),
                bytes,
            },
        );
    }

    /// Forgets a partition this host no longer owns, unsaved changes included.
    pub(crate) fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Deletes every key of `partition`; the deletions reach the changelog at the next
    /// checkpoint. Returns how many keys there were.
    pub(crate) fn clear(&mut self, partition: i32) -> usize {
        let state = self.partitions.entry(partition).or_default();
        let keys: Vec<Vec<u8>> = state.values.drain().map(|(key, _)| key).collect();
        state.bytes = 0;
        let count = keys.len();
        state.dirty.extend(keys);
        count
    }

    /// Keys held for `partition`.
    #[cfg(test)]
    fn len(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |state| state.values.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut changes: Vec<Change>) -> Vec<Change> {
        changes.sort_by(|a, b| (a.partition, &a.key).cmp(&(b.partition, &b.key)));
        changes
    }

    #[test]
    fn a_write_beyond_the_limits_is_refused_and_changes_nothing() {
        let mut store = StateStore {
            limits: StateLimits {
                entry_bytes: 10,
                partition_bytes: 15,
            },
            ..StateStore::default()
        };
        store.begin_batch();
        let too_large = store.set(0, 0, b"k".to_vec(), vec![0; 10]).unwrap_err();
        assert!(too_large.contains("10 bytes (key 1 bytes)"), "{too_large}");
        store.set(0, 0, b"a".to_vec(), vec![0; 9]).unwrap();
        // Replacing a value counts the difference only.
        store.set(0, 0, b"a".to_vec(), vec![1; 9]).unwrap();
        let full = store.set(0, 0, b"b".to_vec(), vec![0; 9]).unwrap_err();
        assert!(full.contains("max_state_mb_per_partition"), "{full}");
        assert_eq!(store.get(0, b"b"), None);
        // Another partition has its own budget; deleting makes room.
        store.set(0, 1, b"b".to_vec(), vec![0; 9]).unwrap();
        store.delete(0, 0, b"a");
        store.set(0, 0, b"b".to_vec(), vec![0; 9]).unwrap();
        // Undone writes give their bytes back.
        store.discard_batch();
        assert_eq!(store.partitions[&0].bytes, 0);
        assert_eq!(store.partitions[&1].bytes, 0);
    }

    #[test]
    fn partitions_are_separate_scopes() {
        let mut store = StateStore::default();
        store.set(0, 0, b"k".to_vec(), b"zero".to_vec()).unwrap();
        store.set(0, 1, b"k".to_vec(), b"one".to_vec()).unwrap();
        assert_eq!(store.get(0, b"k"), Some(&b"zero"[..]));
        assert_eq!(store.get(1, b"k"), Some(&b"one"[..]));
        assert_eq!(store.get(2, b"k"), None);
    }

    #[test]
    fn changes_carry_the_latest_value_once_and_deletions_as_tombstones() {
        let mut store = StateStore::default();
        store.set(0, 0, b"a".to_vec(), b"1".to_vec()).unwrap();
        store.set(0, 0, b"a".to_vec(), b"2".to_vec()).unwrap();
        store.set(0, 0, b"b".to_vec(), b"x".to_vec()).unwrap();
        store.delete(0, 0, b"b");
        assert!(store.has_changes());
        assert_eq!(
            sorted(store.take_changes(None)),
            vec![
                Change {
                    partition: 0,
                    key: b"a".to_vec(),
                    value: Some(b"2".to_vec())
                },
                Change {
                    partition: 0,
                    key: b"b".to_vec(),
                    value: None
                },
            ]
        );
        assert!(!store.has_changes());
        assert!(store.take_changes(None).is_empty());
    }

    #[test]
    fn changes_whose_write_failed_are_taken_again_with_their_latest_values() {
        let mut store = StateStore::default();
        store.set(0, 0, b"a".to_vec(), b"1".to_vec()).unwrap();
        store.set(0, 2, b"b".to_vec(), b"2".to_vec()).unwrap();
        let failed = store.take_changes(None);
        assert!(!store.has_changes());
        store.set(0, 0, b"a".to_vec(), b"latest".to_vec()).unwrap();
        store.drop_partition(2);
        store.untake_changes(&failed);
        assert_eq!(
            sorted(store.take_changes(None)),
            vec![Change {
                partition: 0,
                key: b"a".to_vec(),
                value: Some(b"latest".to_vec())
            }]
        );
    }

    #[test]
    fn changes_can_be_taken_for_some_partitions_only() {
        let mut store = StateStore::default();
        store.set(0, 0, b"a".to_vec(), b"1".to_vec()).unwrap();
        store.set(0, 3, b"a".to_vec(), b"3".to_vec()).unwrap();
        let taken = store.take_changes(Some(&[3]));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].partition, 3);
        assert_eq!(store.take_changes(None).len(), 1);
    }

    #[test]
    fn the_records_that_wrote_are_known_while_their_batch_is_open() {
        let mut store = StateStore::default();
        store.set(1, 0, b"k".to_vec(), b"before".to_vec()).unwrap();
        store.begin_batch();
        assert!(
            !store.any_wrote(&[1]),
            "a write before the batch is not the batch's"
        );
        store.set(2, 0, b"k".to_vec(), b"v".to_vec()).unwrap();
        store.delete(4, 1, b"k");
        assert!(!store.any_wrote(&[0, 1, 3]));
        assert!(store.any_wrote(&[1, 2]));
        assert!(store.any_wrote(&[4]));
        let savepoint = store.savepoint();
        store.set(5, 0, b"k".to_vec(), b"undone".to_vec()).unwrap();
        store.rollback_to(savepoint);
        assert!(!store.any_wrote(&[5]), "an undone write no longer counts");
        store.commit_batch();
        assert!(!store.any_wrote(&[2]));
    }

    #[test]
    fn a_discarded_batch_leaves_values_and_changes_as_they_were() {
        let mut store = StateStore::default();
        store.set(0, 0, b"kept".to_vec(), b"1".to_vec()).unwrap();
        store.take_changes(None);
        store.set(0, 0, b"dirty".to_vec(), b"d".to_vec()).unwrap();

        store.begin_batch();
        store.set(0, 0, b"kept".to_vec(), b"2".to_vec()).unwrap();
        store.set(0, 0, b"kept".to_vec(), b"3".to_vec()).unwrap();
        store.delete(0, 0, b"dirty");
        store.set(0, 1, b"new".to_vec(), b"n".to_vec()).unwrap();
        store.discard_batch();

        assert_eq!(store.get(0, b"kept"), Some(&b"1"[..]));
        assert_eq!(store.get(0, b"dirty"), Some(&b"d"[..]));
        assert_eq!(store.get(1, b"new"), None);
        let changes = sorted(store.take_changes(None));
        assert_eq!(
            changes,
            vec![Change {
                partition: 0,
                key: b"dirty".to_vec(),
                value: Some(b"d".to_vec())
            }],
            "only the write from before the batch is still to be saved"
        );
    }

    #[test]
    fn a_committed_batch_keeps_its_writes() {
        let mut store = StateStore::default();
        store.begin_batch();
        store.set(0, 0, b"k".to_vec(), b"v".to_vec()).unwrap();
        store.commit_batch();
        store.discard_batch();
        assert_eq!(store.get(0, b"k"), Some(&b"v"[..]));
    }

    #[test]
    fn rolling_back_to_a_savepoint_undoes_only_the_later_writes_of_the_batch() {
        let mut store = StateStore::default();
        store.set(0, 0, b"before".to_vec(), b"0".to_vec()).unwrap();
        store.take_changes(None);

        store.begin_batch();
        store.set(0, 0, b"first".to_vec(), b"1".to_vec()).unwrap();
        let savepoint = store.savepoint();
        store.set(0, 0, b"first".to_vec(), b"2".to_vec()).unwrap();
        store.delete(0, 0, b"before");
        store.set(0, 0, b"second".to_vec(), b"x".to_vec()).unwrap();
        store.rollback_to(savepoint);

        assert_eq!(store.get(0, b"first"), Some(&b"1"[..]));
        assert_eq!(store.get(0, b"before"), Some(&b"0"[..]));
        assert_eq!(store.get(0, b"second"), None);
        // The batch is still open: what came before the savepoint can be undone too.
        store.set(0, 0, b"third".to_vec(), b"3".to_vec()).unwrap();
        store.discard_batch();
        assert_eq!(store.get(0, b"first"), None);
        assert_eq!(store.get(0, b"third"), None);
        assert_eq!(store.get(0, b"before"), Some(&b"0"[..]));
        assert!(!store.has_changes());
    }

    #[test]
    fn clearing_a_partition_writes_a_tombstone_per_key() {
        let mut store = StateStore::default();
        store.install(
            2,
            HashMap::from([
                (b"x".to_vec(), b"1".to_vec()),
                (b"y".to_vec(), b"2".to_vec()),
            ]),
        );
        assert!(!store.has_changes());
        assert_eq!(store.clear(2), 2);
        assert_eq!(store.len(2), 0);
        let changes = sorted(store.take_changes(None));
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.value.is_none()));
    }
}
