//! The WebAssembly runtime: engine policy, linking, and one running plugin instance.
//!
//! This is the only module that touches wasmtime. Everything above it sees a
//! [`Runtime`] that compiles components and an [`Instance`] that runs batches.

mod bindings;
mod describe;
mod stdio;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceTable, types::ComponentItem};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use bindings::{Transformer, TransformerPre, log};
use stdio::PluginOutput;

pub use describe::Description;

/// The WIT world every plugin must target.
pub const WORLD: &str = "sluice:plugin/transformer@0.1.0";
/// The interface a plugin must export.
const TRANSFORM_EXPORT: &str = "sluice:plugin/transform@0.1.0";

/// How often the engine's epoch advances: the resolution of the per-call time limit.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a plugin could not be loaded or failed while running.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(anyhow::Error),
    #[error(
        "not a Sluice transform: it must export `{TRANSFORM_EXPORT}` (world `{WORLD}`); {detail}"
    )]
    Link { detail: String },
    #[error("init failed: {0}")]
    Init(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its time limit of {0:?} for one batch")]
    Timeout(Duration),
    #[error("failed the whole batch: {0}")]
    Batch(String),
}

/// Limits applied to every plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory an instance may grow to.
    pub max_memory_bytes: usize,
    /// Wall-clock time one `process` call may take before it is interrupted.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 256 << 20,
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-instance host state.
pub struct HostState {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

/// The engine and linker shared by every plugin of a process.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

impl Runtime {
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Per-call time limits: a plugin in an endless loop is interrupted, not waited on.
        config.epoch_interruption(true);
        // Plugins are called synchronously; the async bookkeeping would double the cost
        // of each host import call.
        config.concurrency_support(false);
        // Compile on the calling thread only: a candidate compiled during a hot swap
        // must not take every core from the running pipeline (measured on 2 cores: a
        // parallel first-time compile stretched one output gap to 78 ms).
        config.parallel_compilation(false);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked so that components built with a language's standard library
        // instantiate; each instance gets a context that grants nothing (no files,
        // sockets, environment or arguments), only stdout/stderr into the host log.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Transformer::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// Compiles and links a component, checking that it targets the transform world.
    pub fn load(&self, bytes: &[u8]) -> Result<Prepared, PluginError> {
        // The two commonest mistakes, named plainly before the parser's own wording.
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::Compile(anyhow::anyhow!(
                "the file does not start with the WebAssembly magic bytes; give the path of a .wasm component"
            )));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0][..]) {
            return Err(PluginError::Compile(anyhow::anyhow!(
                "this is a core WebAssembly module, not a component; build the plugin for the wasm32-wasip2 target"
            )));
        }
        let component =
            Component::new(&self.engine, bytes).map_err(|e| PluginError::Compile(e.into()))?;
        let instance_pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| PluginError::Link {
                    detail: format!("{e:#}"),
                })?;
        let pre = TransformerPre::new(instance_pre).map_err(|e| PluginError::Link {
            detail: format!("{e:#}; it exports {}", self.describe_exports(&component)),
        })?;
        Ok(Prepared { pre })
    }

    fn describe_exports(&self, component: &Component) -> String {
        let names: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, item)| match item.ty {
                ComponentItem::ComponentFunc(_) => format!("function `{name}`"),
                _ => format!("`{name}`"),
            })
            .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }
}

/// A compiled, linked plugin, ready to be instantiated any number of times.
#[derive(Clone)]
pub struct Prepared {
    pre: TransformerPre<HostState>,
}

/// One running plugin instance. Not shared: each worker owns its own.
pub struct Instance {
    store: Store<HostState>,
    bindings: Transformer,
    stderr: PluginOutput,
    limits: Limits,
}

impl Instance {
    /// Instantiates the plugin and runs its `init` with `config`.
    pub fn start(
        prepared: &Prepared,
        name: Arc<str>,
        limits: Limits,
        config: &[(String, String)],
    ) -> Result<Self, PluginError> {
        let stdout = PluginOutput::new(name.clone(), "stdout");
        let stderr = PluginOutput::new(name.clone(), "stderr");
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr.clone())
            .build();
        let state = HostState {
            plugin: name,
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.max_memory_bytes)
                .instances(64)
                .build(),
        };
        let mut store = Store::new(prepared.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        // Instantiation runs guest code (start functions, allocations): time-limit it too.
        let ticks = (limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1);
        store.set_epoch_deadline(ticks as u64);
        let bindings = prepared
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Link {
                detail: format!("{e:#}"),
            })?;
        let mut instance = Instance {
            bindings,
            store,
            stderr,
            limits,
        };
        instance.arm_deadline();
        let result = instance
            .bindings
            .sluice_plugin_transform()
            .call_init(&mut instance.store, config)
            .map_err(|e| instance.classify(e))?;
        result.map_err(PluginError::Init)?;
        Ok(instance)
    }

    /// Runs one encoded input batch through the plugin, returning the encoded output.
    pub fn process(&mut self, input: &[u8]) -> Result<Vec<u8>, PluginError> {
        self.arm_deadline();
        self.bindings
            .sluice_plugin_transform()
            .call_process(&mut self.store, input)
            .map_err(|e| self.classify(e))?
            .map_err(PluginError::Batch)
    }

    fn arm_deadline(&mut self) {
        let ticks = self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis();
        self.store.set_epoch_deadline(ticks.max(1) as u64);
    }

    fn classify(&self, error: wasmtime::Error) -> PluginError {
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return PluginError::Timeout(self.limits.call_timeout);
        }
        // The trap itself, not the wasm backtrace around it; that goes to the debug log.
        tracing::debug!("Plugin trap: {error:?}");
        let mut message = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{:#}", error.root_cause()),
        };
        if let Some(lines) = self.stderr.recent() {
            message.push_str(&format!(" (plugin stderr: {lines})"));
        }
        PluginError::Trap(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_error(bytes: &[u8]) -> String {
        match Runtime::new().unwrap().load(bytes) {
            Ok(_) => panic!("loaded"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_file_that_is_not_wasm_is_named_as_such() {
        assert!(
            load_error(b"# README").contains("does not start with the WebAssembly magic bytes")
        );
    }

    #[test]
    fn a_core_module_is_told_apart_from_a_component() {
        let empty_core_module = b"\0asm\x01\0\0\0";
        let error = load_error(empty_core_module);
        assert!(
            error.contains("core WebAssembly module, not a component"),
            "{error}"
        );
        assert!(error.contains("wasm32-wasip2"), "{error}");
    }
}
