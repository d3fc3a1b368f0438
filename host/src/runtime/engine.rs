//! The engines: one per compiler, with the same settings otherwise, each with the
//! linker of the host's imports, held by [`Runtime`]. How a component becomes
//! compiled code is `compile`'s; how compiled code becomes a linked plugin,
//! `prepared`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, Strategy};

use super::bindings::Transformer;
use super::cache::{self, CodeCache};
use super::host_state::{self, HostState};
use super::{LOG_IMPORT, child, sandbox};

/// How often the engine's epoch advances: the resolution of the per-call time limit.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Which compiler made a plugin's machine code.
///
/// Cranelift (`optimized`) makes the code plugins run on. Winch (`baseline`) compiles
/// about five times faster into code that runs slower; a hot-swapped version that was
/// never compiled before goes live on it, and its workers move to Cranelift's code
/// once that is ready (see the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Baseline,
    Optimized,
}

impl Tier {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Tier> {
        match name {
            "baseline" => Some(Tier::Baseline),
            "optimized" => Some(Tier::Optimized),
            _ => None,
        }
    }

    fn strategy(self) -> Strategy {
        match self {
            Tier::Baseline => Strategy::Winch,
            Tier::Optimized => Strategy::Cranelift,
        }
    }
}

/// The engine and linker shared by every plugin of a process.
#[derive(Clone)]
pub struct Runtime {
    /// Cranelift's: the code plugins run on.
    pub(super) engine: Engine,
    pub(super) linker: Arc<Linker<HostState>>,
    /// Winch's, where this platform has it: quick code for a version just swapped in.
    pub(super) baseline: Option<Backend>,
    /// Compiled components on disk, by digest of their bytes and the engine settings.
    pub(super) cache: Option<Arc<CodeCache>>,
    /// What compiler processes seal their output with (see `child`): the cache's key,
    /// else one made for this process.
    pub(super) seal_key: Arc<cache::Key>,
    /// The executable that compiles components in a child process (see `child`);
    /// none: on the calling thread.
    pub(super) compiler: Option<PathBuf>,
}

/// An engine and the linker of the host's imports for it.
#[derive(Clone)]
pub(super) struct Backend {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

impl Backend {
    fn new(tier: Tier) -> anyhow::Result<Backend> {
        let mut config = Config::new();
        config.strategy(tier.strategy());
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
        // No `config.cache`: wasmtime's cache loads its entries unchecked. Sluice's
        // own (see cache.rs) authenticates them first.
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // WASI is linked so that components built with a language's standard library
        // instantiate; what each instance may reach through it is decided by its
        // `Sandbox` (see sandbox.rs): nothing beyond the grants.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        sandbox::deny_network(&mut linker)?;
        Transformer::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;
        linker.allow_shadowing(true);
        linker
            .instance(LOG_IMPORT)?
            .func_wrap("write", host_state::write_log)?;
        linker.allow_shadowing(false);
        Ok(Backend {
            engine,
            linker: Arc::new(linker),
        })
    }
}

impl Runtime {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_cache(cache::from_environment())
    }

    /// A runtime that compiles without a cache: a compiler process's (the host
    /// that started it keeps the cache).
    pub(super) fn without_cache() -> anyhow::Result<Self> {
        Self::with_cache(None)
    }

    fn with_cache(cache: Option<Arc<CodeCache>>) -> anyhow::Result<Self> {
        let Backend { engine, linker } = Backend::new(Tier::Optimized)?;
        let baseline = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            Backend::new(Tier::Baseline)
                .inspect_err(|error| {
                    tracing::debug!(
                        error = format!("{error:#}"),
                        "No baseline compiler: swapped-in versions wait for the optimizing one."
                    );
                })
                .ok()
        } else {
            None
        };

        let weak = engine.weak();
        let weak_baseline = baseline.as_ref().map(|backend| backend.engine.weak());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    if let Some(engine) = weak_baseline.as_ref().and_then(|weak| weak.upgrade()) {
                        engine.increment_epoch();
                    }
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

        let seal_key = match &cache {
            Some(cache) => *cache.key(),
            None => rand::random(),
        };
        Ok(Runtime {
            engine,
            linker,
            baseline,
            cache,
            seal_key: Arc::new(seal_key),
            compiler: None,
        })
    }

    /// The engine and linker of `tier` (Cranelift's where there is no baseline).
    pub(super) fn backend(&self, tier: Tier) -> (&Engine, &Arc<Linker<HostState>>) {
        match (tier, &self.baseline) {
            (Tier::Baseline, Some(baseline)) => (&baseline.engine, &baseline.linker),
            _ => (&self.engine, &self.linker),
        }
    }

    /// Compiles components in a child process from now on (see `child`), where the
    /// platform lets a process start its own executable; else on the calling thread.
    pub(crate) fn compile_in_child_process(mut self) -> Self {
        self.compiler = child::own_executable();
        if self.compiler.is_none() {
            tracing::debug!(
                "Plugins are compiled in this process: its executable cannot be started again."
            );
        }
        self
    }
}
