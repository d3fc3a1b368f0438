//! The host side of one plugin instance: what its imports reach (WASI within its
//! sandbox, keyed state, the log) and what it is allowed (its memory budget).

use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{ResourceTable, WasmStr};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{log, state};
use super::limits::MemoryLimit;
use super::logs::{self, SharedGate};
use crate::state::SharedState;

/// Per-instance host state.
pub(crate) struct HostState {
    pub(super) plugin: Arc<str>,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: MemoryLimit,
    /// The instance's share of the host's log, for its `log` import and its stdio.
    pub(super) log: SharedGate,
    /// Socket and name-lookup attempts refused so far.
    pub(super) network_denials: u64,
    pub(super) state: SharedState,
    /// The input partition of each record of the batch being processed, filled only
    /// for plugins that import the state interface.
    pub(super) partitions: Vec<i32>,
}

impl HostState {
    fn partition_of(&self, record: u32) -> wasmtime::Result<i32> {
        match self.partitions.get(record as usize) {
            Some(&partition) => Ok(partition),
            None if self.partitions.is_empty() => wasmtime::bail!(
                "state was used outside `process` (record index {record}); state is scoped to the partition of a record being processed"
            ),
            None => wasmtime::bail!(
                "state was used for record index {record}, but the batch has {} records",
                self.partitions.len()
            ),
        }
    }
}

impl state::Host for HostState {
    fn get(&mut self, record: u32, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        let partition = self.partition_of(record)?;
        let store = self.state.lock().unwrap();
        Ok(store.get(partition, &key).map(<[u8]>::to_vec))
    }

    fn set(&mut self, record: u32, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        let partition = self.partition_of(record)?;
        // A write beyond the state limits traps: the record fails, and with it every
        // write it made (see `transform`).
        self.state
            .lock()
            .unwrap()
            .set(record, partition, key, value)
            .map_err(wasmtime::Error::msg)
    }

    fn delete(&mut self, record: u32, key: Vec<u8>) -> wasmtime::Result<()> {
        let partition = self.partition_of(record)?;
        self.state.lock().unwrap().delete(record, partition, &key);
        Ok(())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl From<log::Level> for logs::Level {
    fn from(level: log::Level) -> Self {
        match level {
            log::Level::Trace => logs::Level::Trace,
            log::Level::Debug => logs::Level::Debug,
            log::Level::Info => logs::Level::Info,
            log::Level::Warn => logs::Level::Warn,
            log::Level::Error => logs::Level::Error,
        }
    }
}

impl log::Host for HostState {
    // Not called: `Backend::new` links `write_log` in its place, which reads the
    // message where it is instead of copying it.
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(level.into(), None, &message);
        Ok(())
    }
}

/// The `log` import: the message is read in the plugin's memory, not copied out of it
/// (a plugin may log hundreds of MB at once), and only its first `logs::MAX_LINE`
/// bytes reach the host's log.
pub(super) fn write_log(
    store: StoreContextMut<'_, HostState>,
    (level, message): (log::Level, WasmStr),
) -> wasmtime::Result<()> {
    let text = message.to_str(&store)?;
    store
        .data()
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .write(level.into(), None, &text);
    Ok(())
}
