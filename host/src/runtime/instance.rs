//! One running plugin instance: instantiated in its sandbox with its limits, called
//! batch by batch, and what stopped a call named.

use std::sync::Arc;
use std::time::Duration;

use sluice_sdk::batch::InputBatch;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};

use super::bindings::Transformer;
use super::host_state::HostState;
use super::limits::{Limits, MemoryLimit};
use super::logs::{self, LogGate};
use super::stdio::PluginOutput;
use super::{EPOCH_TICK, PluginError, Prepared, Sandbox};
use crate::state::SharedState;

/// One running plugin instance. Not shared: each worker owns its own.
pub struct Instance {
    store: Store<HostState>,
    bindings: Transformer,
    stderr: PluginOutput,
    limits: Limits,
    uses_state: bool,
}

impl Instance {
    /// Instantiates the plugin inside `sandbox` and runs its `init` with `config`. The
    /// instance keeps its keyed state in `state`.
    #[cfg(test)]
    pub(crate) fn start(
        prepared: &Prepared,
        name: Arc<str>,
        limits: Limits,
        sandbox: &Sandbox,
        config: &[(String, String)],
        state: SharedState,
    ) -> Result<Self, PluginError> {
        Self::start_version(prepared, name, "".into(), limits, sandbox, config, state)
    }

    /// [`Instance::start`] for a known version (its short digest), which every line
    /// the instance logs names, its `init`'s included.
    pub(crate) fn start_version(
        prepared: &Prepared,
        name: Arc<str>,
        version: Arc<str>,
        limits: Limits,
        sandbox: &Sandbox,
        config: &[(String, String)],
        state: SharedState,
    ) -> Result<Self, PluginError> {
        let log = LogGate::shared(name.clone());
        log.lock().unwrap().set_version(version);
        let stdout = PluginOutput::new(log.clone(), "stdout");
        let stderr = PluginOutput::new(log.clone(), "stderr");
        let wasi = sandbox
            .wasi(&name, stdout, stderr.clone())
            .map_err(PluginError::Init)?;
        let state = HostState {
            plugin: name,
            wasi,
            table: ResourceTable::new(),
            limits: MemoryLimit::new(limits.max_memory_bytes),
            log,
            network_denials: 0,
            state,
            partitions: Vec::new(),
        };
        let mut store = Store::new(prepared.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        // Instantiation runs guest code (start functions, allocations): time-limit it too.
        let ticks = (limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1);
        store.set_epoch_deadline(ticks as u64);
        let bindings = prepared.pre.instantiate(&mut store).map_err(|e| {
            let refused = store.data().limits.refused;
            match (refused, e.downcast_ref::<Trap>()) {
                // Not the guest's doing: this process could not make the instance.
                (None, None) => PluginError::Instantiate(format!("{e:#}")),
                _ => classify(e, &limits, refused, &stderr),
            }
        })?;
        let mut instance = Instance {
            bindings,
            store,
            stderr,
            limits,
            uses_state: prepared.uses_state,
        };
        instance.arm_deadline();
        let result = instance
            .bindings
            .sluice_plugin_transform()
            .call_init(&mut instance.store, config)
            .map_err(|e| instance.classify(e))?;
        // The plugin's own words end up in the host's log: cleaned like its log lines.
        result.map_err(|message| PluginError::Init(logs::clean(&message, 0)))?;
        Ok(instance)
    }

    /// Runs one input batch through the plugin: `input` is the encoded form of `batch`.
    /// Returns the encoded output.
    pub fn process(
        &mut self,
        input: &[u8],
        batch: &InputBatch<'_>,
    ) -> Result<Vec<u8>, PluginError> {
        self.arm_deadline();
        if self.uses_state {
            let partitions = &mut self.store.data_mut().partitions;
            partitions.clear();
            partitions.extend(batch.records().map(|record| record.partition()));
        }
        let result = self
            .bindings
            .sluice_plugin_transform()
            .call_process(&mut self.store, input);
        self.store.data_mut().partitions.clear();
        result
            .map_err(|e| self.classify(e))?
            .map_err(|message| PluginError::Batch(logs::clean(&message, 0)))
    }

    /// [`Instance::process`] with at most `budget` for the call, when that is less than
    /// the plugin's time limit: a batch run again record by record shares one budget.
    /// A call cut short reports `budget` as its limit.
    pub(crate) fn process_within(
        &mut self,
        input: &[u8],
        batch: &InputBatch<'_>,
        budget: Duration,
    ) -> Result<Vec<u8>, PluginError> {
        let limit = self.limits.call_timeout;
        self.limits.call_timeout = budget.min(limit);
        let result = self.process(input, batch);
        self.limits.call_timeout = limit;
        result
    }

    /// How long one call may take.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.limits.call_timeout
    }

    fn arm_deadline(&mut self) {
        // A refusal counts for the call it happened in only.
        self.store.data_mut().limits.refused = None;
        // Lines dropped since the last count are counted even if the plugin is quiet.
        self.store
            .data()
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .summarize(false);
        let ticks = self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        self.store.set_epoch_deadline(ticks.max(1) as u64);
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        classify(
            error,
            &self.limits,
            self.store.data().limits.refused,
            &self.stderr,
        )
    }
}

/// What stopped a call into the plugin (or its instantiation): the time limit, a
/// refused memory growth (`refused`: the size asked for), or a trap, named with the
/// plugin's last stderr lines.
fn classify(
    error: wasmtime::Error,
    limits: &Limits,
    refused: Option<usize>,
    stderr: &PluginOutput,
) -> PluginError {
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return PluginError::Timeout(limits.call_timeout);
    }
    // A refused growth ends in a trap of the guest's choosing (an allocator abort,
    // typically); the limit is the cause worth naming.
    if let Some(requested) = refused {
        tracing::debug!("Plugin trap after a refused memory growth: {error:?}");
        return PluginError::Memory {
            limit: limits.max_memory_bytes,
            requested,
        };
    }
    // The trap itself, not the wasm backtrace around it; that goes to the debug log.
    tracing::debug!("Plugin trap: {error:?}");
    let mut message = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{:#}", error.root_cause()),
    };
    if let Some(lines) = stderr.recent() {
        message.push_str(&format!(" (plugin stderr: {lines})"));
    }
    PluginError::Trap(message)
}
