//! The WebAssembly runtime: engine policy, linking, and one running plugin instance.
//!
//! This is the only module that touches wasmtime. Everything above it sees a
//! [`Runtime`] that compiles components and an [`Instance`] that runs batches.
//!
//! Layout: this file holds the engines and the way from a component's bytes to
//! linked code: the compilation cache, whose entries are authenticated before
//! they are loaded (`cache`), then a compiler process (`child`). An instance
//! (`instance`) has its host state (`host_state`: what its imports reach), one
//! memory budget (`limits`) and a bounded share of the host log (`logs`, `stdio`).

mod bindings;
mod cache;
pub mod child;
mod describe;
mod host_state;
mod instance;
mod limits;
pub(crate) mod logs;
mod sandbox;
mod stdio;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, Strategy};

use bindings::{Transformer, TransformerPre};
use cache::CodeCache;
pub use describe::Description;
use host_state::HostState;
pub use instance::Instance;
pub use limits::Limits;
pub use sandbox::{DirGrant, Sandbox};

/// The WIT world every plugin must target.
pub const WORLD: &str = "sluice:plugin/transformer@0.1.0";
/// The interface a plugin must export.
const TRANSFORM_EXPORT: &str = "sluice:plugin/transform@0.1.0";
/// The log interface a plugin may import.
const LOG_IMPORT: &str = "sluice:plugin/log@0.1.0";
/// The keyed-state interface a plugin may import.
const STATE_IMPORT: &str = "sluice:plugin/state@0.1.0";

/// How long a compiler process may take. A large JavaScript or Python component
/// compiles in seconds on an idle machine and in a minute or two on a busy one, at
/// the lower priority of validation; a compile still running after this is stuck.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the engine's epoch advances: the resolution of the per-call time limit.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The nice value of an optimizing compile that baseline code stands in for: the
/// lowest, so that it takes only the CPU nothing else wants.
pub const OPTIMIZE_NICE: i32 = 19;

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
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }

    pub fn parse(name: &str) -> Option<Tier> {
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

/// Why a plugin could not be loaded or failed while running.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(anyhow::Error),
    /// The compiler process failed for a reason of its own, not the component's.
    #[error("could not be compiled: {0:#}")]
    Compiler(anyhow::Error),
    #[error(
        "not a Sluice transform: it must export `{TRANSFORM_EXPORT}` (world `{WORLD}`); {detail}"
    )]
    Link { detail: String },
    /// Linked, but this process could not make an instance of it (nothing the
    /// component's exports or imports decide).
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("exceeded its time limit of {0:?} for one batch")]
    Timeout(Duration),
    #[error(
        "exceeded its memory limit of {} MiB (it asked for {} MiB); raise `plugin.max_memory_mb` if the plugin needs more",
        limit >> 20,
        requested.div_ceil(1 << 20)
    )]
    Memory { limit: usize, requested: usize },
    #[error("failed the whole batch: {0}")]
    Batch(String),
}

impl PluginError {
    /// Whether the instance that returned this error must not be called again: it
    /// was stopped in the middle of a call (a trap, or a limit), so its memory may be
    /// inconsistent. An error the plugin returned for a batch leaves it usable.
    pub fn leaves_instance_unusable(&self) -> bool {
        !matches!(self, PluginError::Batch(_))
    }
}

/// The engine and linker shared by every plugin of a process.
#[derive(Clone)]
pub struct Runtime {
    /// Cranelift's: the code plugins run on.
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    /// Winch's, where this platform has it: quick code for a version just swapped in.
    baseline: Option<Backend>,
    /// Compiled components on disk, by digest of their bytes and the engine settings.
    cache: Option<Arc<CodeCache>>,
    /// What compiler processes seal their output with (see `child`): the cache's key,
    /// else one made for this process.
    seal_key: Arc<cache::Key>,
    /// The executable that compiles components in a child process (see `child`);
    /// none: on the calling thread.
    compiler: Option<PathBuf>,
}

/// An engine and the linker of the host's imports for it.
#[derive(Clone)]
struct Backend {
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

/// A Cranelift compile still under way for a version that went live on baseline code.
pub struct Pending {
    runtime: Runtime,
    bytes: Arc<[u8]>,
    compile: PendingCompile,
}

enum PendingCompile {
    Child(child::Running),
    /// Where no compiler process can be started: a thread of this process.
    Thread(std::thread::JoinHandle<Result<Component, PluginError>>),
}

impl Pending {
    /// Lets the compile go on, at `nice`: it was paused while the baseline compiler
    /// had the cores.
    pub fn resume(&self, nice: i32) {
        if let PendingCompile::Child(running) = &self.compile {
            running.lower_priority(nice);
            running.resume();
        }
    }

    /// Waits for Cranelift's code and links it.
    pub fn finish(self) -> Result<Prepared, PluginError> {
        let runtime = self.runtime;
        let component = match self.compile {
            PendingCompile::Child(running) => {
                running.resume();
                runtime.compiled_by_child(running.finish(), &self.bytes, Tier::Optimized)?
            }
            PendingCompile::Thread(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
        };
        runtime.link(&component, Tier::Optimized)
    }
}

/// Where compiled components are kept between runs: `SLUICE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/sluice/compiled`, else `$HOME/.cache/sluice/compiled`.
/// `SLUICE_CACHE_DIR=off` turns the cache off.
fn compile_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_CACHE_DIR") {
        Some(dir) if dir == "off" => None,
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .map(|dir| dir.join("sluice").join("compiled")),
    }
}

/// The compilation cache's size by default (wasmtime's own). The JavaScript and Python
/// examples take 9 to 12 MB there per compiler (compressed), so this keeps some 20
/// versions of both codes.
const CACHE_MAX_MB: u64 = 512;

/// The compilation cache's size, from `SLUICE_CACHE_MAX_MB` (a whole number of MB), in
/// bytes. Beyond it, wasmtime deletes the least recently used compilations.
fn cache_max_bytes(value: Option<&std::ffi::OsStr>) -> anyhow::Result<u64> {
    let Some(value) = value else {
        return Ok(CACHE_MAX_MB << 20);
    };
    value
        .to_str()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|mb| (1..=(u64::MAX >> 20)).contains(mb))
        .map(|mb| mb << 20)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "SLUICE_CACHE_MAX_MB must be a whole number of MB above 0, not `{}`",
                value.to_string_lossy()
            )
        })
}

/// Where the key that seals compilation cache entries is kept, outside the cache:
/// `SLUICE_CACHE_KEY_FILE`, else `$XDG_CONFIG_HOME/sluice/cache.key`, else
/// `$HOME/.config/sluice/cache.key`.
fn cache_key_file() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_CACHE_KEY_FILE") {
        Some(file) if !file.is_empty() => Some(PathBuf::from(file)),
        _ => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
            .map(|dir| dir.join("sluice").join("cache.key")),
    }
}

/// The compilation cache, or none (with one warning per process) when its directory,
/// key or size is unusable or untrustworthy: plugins are then compiled at every start,
/// which is slower but correct.
fn compile_cache() -> Option<Arc<CodeCache>> {
    static CACHE: OnceLock<Option<Arc<CodeCache>>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = compile_cache_dir()?;
            let opened = (|| {
                let max_bytes =
                    cache_max_bytes(std::env::var_os("SLUICE_CACHE_MAX_MB").as_deref())?;
                let key_file = cache_key_file().ok_or_else(|| {
                    anyhow::anyhow!("no place for its key: set SLUICE_CACHE_KEY_FILE or HOME")
                })?;
                CodeCache::open(&dir, &key_file, max_bytes)
            })();
            match opened {
                Ok(cache) => Some(Arc::new(cache)),
                Err(error) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = format!("{error:#}"),
                        "The compilation cache is unusable; plugins are compiled at every start. Set SLUICE_CACHE_DIR to a directory only this user can write, or to `off`, and SLUICE_CACHE_MAX_MB, if set, to a number of MB."
                    );
                    None
                }
            }
        })
        .clone()
}

impl Runtime {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_cache(compile_cache())
    }

    /// A runtime that compiles without a cache: a compiler process's (the host
    /// that started it keeps the cache).
    fn without_cache() -> anyhow::Result<Self> {
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
    fn backend(&self, tier: Tier) -> (&Engine, &Arc<Linker<HostState>>) {
        match (tier, &self.baseline) {
            (Tier::Baseline, Some(baseline)) => (&baseline.engine, &baseline.linker),
            _ => (&self.engine, &self.linker),
        }
    }

    /// Compiles components in a child process from now on (see `child`), where the
    /// platform lets a process start its own executable; else on the calling thread.
    pub fn compile_in_child_process(mut self) -> Self {
        self.compiler = child::own_executable();
        if self.compiler.is_none() {
            tracing::debug!(
                "Plugins are compiled in this process: its executable cannot be started again."
            );
        }
        self
    }

    /// `bytes` compiled by `tier`'s compiler: from the compilation cache, else by a
    /// compiler process, else on the calling thread.
    fn compile(&self, bytes: &[u8], tier: Tier) -> Result<Component, PluginError> {
        if let Some(component) = self.cached(bytes, tier) {
            return Ok(component);
        }
        match &self.compiler {
            Some(program) => self.compiled_by_child(
                child::compile(program, &self.seal_key, bytes, tier, COMPILE_TIMEOUT),
                bytes,
                tier,
            ),
            None => self.compile_here(bytes, tier),
        }
    }

    /// `bytes` compiled by `tier`'s compiler, from an authentic compilation cache entry.
    fn cached(&self, bytes: &[u8], tier: Tier) -> Option<Component> {
        let cache = self.cache.as_ref()?;
        let engine = self.backend(tier).0;
        let name = cache::entry_name(engine, tier, bytes);
        let artifact = cache.get(&name)?;
        // SAFETY: `artifact` was sealed with this user's private key (kept outside
        // the cache directory, which only this user may write) under the name of
        // exactly these bytes, this tier and these engine settings; only Sluice
        // seals, and only what `Component::serialize` wrote. wasmtime also checks
        // the artifact's header (its version, target and engine settings).
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(component) => {
                tracing::debug!(dir = %cache.directory().display(), "Plugin loaded from the compilation cache.");
                Some(component)
            }
            Err(error) => {
                cache.reject_named(&name, &format!("it does not load here: {error:#}"));
                None
            }
        }
    }

    /// The component a compiler child made, or its failure; compiles in-process when
    /// no child could be started. Stores it in the compilation cache.
    fn compiled_by_child(
        &self,
        outcome: Result<child::Compiled, child::ChildError>,
        bytes: &[u8],
        tier: Tier,
    ) -> Result<Component, PluginError> {
        let compiled = match outcome {
            Ok(compiled) => compiled,
            Err(child::ChildError::Rejected(error)) => return Err(PluginError::Compile(error)),
            Err(child::ChildError::Failed(error)) => return Err(PluginError::Compiler(error)),
            Err(child::ChildError::Spawn(error)) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "Could not start a compiler process; compiling in the host instead, which may hold up the pipeline while it runs."
                );
                return self.compile_here(bytes, tier);
            }
        };
        let engine = self.backend(tier).0;
        let name = cache::entry_name(engine, tier, bytes);
        let artifact =
            cache::unseal(&self.seal_key, &name, &compiled.sealed).map_err(|reason| {
                PluginError::Compiler(anyhow::anyhow!(
                    "the component compiled by the compiler process was refused: {reason}"
                ))
            })?;
        // SAFETY: `artifact` carries the tag of the key this process handed the
        // compiler process for exactly these bytes, this tier and these engine
        // settings: it is what `Component::serialize` wrote in that child, which runs
        // this very executable (`/proc/self/exe`). wasmtime also checks the artifact's
        // header (its version, target and engine settings).
        let component = unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| {
            PluginError::Compiler(
                anyhow::Error::from(e)
                    .context("loading the component compiled by the compiler process"),
            )
        })?;
        if let Some(cache) = &self.cache {
            // Sealed with the cache's key: the child's output is an entry as it is.
            cache.put(&name, &compiled.sealed);
        }
        Ok(component)
    }

    /// Compiles `bytes` with `tier`'s compiler on the calling thread and stores the
    /// code in the compilation cache.
    fn compile_here(&self, bytes: &[u8], tier: Tier) -> Result<Component, PluginError> {
        let engine = self.backend(tier).0;
        let component =
            Component::new(engine, bytes).map_err(|e| PluginError::Compile(e.into()))?;
        if let Some(cache) = &self.cache {
            let name = cache::entry_name(engine, tier, bytes);
            let sealed = component.serialize().and_then(|artifact| {
                cache::seal(cache.key(), &name, &artifact).map_err(wasmtime::Error::from)
            });
            match sealed {
                Ok(sealed) => cache.put(&name, &sealed),
                Err(error) => tracing::debug!("Could not store a compiled plugin: {error:#}"),
            }
        }
        Ok(component)
    }

    /// Compiles `bytes` with `tier`'s compiler for a host that asked for it (see
    /// `child`): the artifact sealed with `key`.
    fn compile_sealed(
        &self,
        bytes: &[u8],
        tier: Tier,
        key: &cache::Key,
    ) -> anyhow::Result<Vec<u8>> {
        let engine = self.backend(tier).0;
        let artifact = Component::new(engine, bytes)?.serialize()?;
        Ok(cache::seal(
            key,
            &cache::entry_name(engine, tier, bytes),
            &artifact,
        )?)
    }

    /// Compiles (with Cranelift) and links a component, checking that it targets the
    /// transform world.
    pub fn load(&self, bytes: &[u8]) -> Result<Prepared, PluginError> {
        check_format(bytes)?;
        let component = self.compile(bytes, Tier::Optimized)?;
        self.link(&component, Tier::Optimized)
    }

    /// Like [`Runtime::load`], but sooner for a component never compiled before: when
    /// Cranelift's code is not in the compilation cache, returns Winch's code and the
    /// Cranelift compile to wait for.
    ///
    /// Cranelift's compiler process starts first and is paused at once (so that it
    /// takes no CPU while the version goes live); Winch's code comes from the cache or
    /// a second compiler process. The paused compile is resumed by [`Pending::resume`]
    /// or [`Pending::finish`]. A component Winch refuses is judged by Cranelift's
    /// answer alone.
    pub fn load_fast(&self, bytes: &[u8]) -> Result<(Prepared, Option<Pending>), PluginError> {
        check_format(bytes)?;
        if self.baseline.is_none() {
            return Ok((self.load(bytes)?, None));
        }
        if let Some(component) = self.cached(bytes, Tier::Optimized) {
            return Ok((self.link(&component, Tier::Optimized)?, None));
        }
        let bytes: Arc<[u8]> = bytes.into();
        let Some(program) = &self.compiler else {
            return self.load_fast_here(bytes);
        };
        let optimized = match child::spawn(
            program,
            self.seal_key.clone(),
            bytes.clone(),
            Tier::Optimized,
            COMPILE_TIMEOUT,
        ) {
            Ok(running) => running,
            Err(error) => {
                let component = self.compiled_by_child(Err(error), &bytes, Tier::Optimized)?;
                return Ok((self.link(&component, Tier::Optimized)?, None));
            }
        };
        optimized.pause();
        match self
            .compile(&bytes, Tier::Baseline)
            .and_then(|component| self.link(&component, Tier::Baseline))
        {
            Ok(prepared) => {
                let pending = Pending {
                    runtime: self.clone(),
                    bytes,
                    compile: PendingCompile::Child(optimized),
                };
                Ok((prepared, Some(pending)))
            }
            // Not linking is not a matter of compilers.
            Err(error @ PluginError::Link { .. }) => Err(error),
            Err(error) => {
                tracing::debug!(%error, "The baseline compiler refused the component; waiting for the optimizing one.");
                optimized.resume();
                let component =
                    self.compiled_by_child(optimized.finish(), &bytes, Tier::Optimized)?;
                Ok((self.link(&component, Tier::Optimized)?, None))
            }
        }
    }

    /// [`Runtime::load_fast`] without compiler processes: Winch's code compiled here,
    /// then Cranelift's on a thread of its own (from the compilation cache, if there).
    fn load_fast_here(&self, bytes: Arc<[u8]>) -> Result<(Prepared, Option<Pending>), PluginError> {
        let prepared = match self
            .compile(&bytes, Tier::Baseline)
            .and_then(|component| self.link(&component, Tier::Baseline))
        {
            Ok(prepared) => prepared,
            Err(error @ PluginError::Link { .. }) => return Err(error),
            Err(_) => return Ok((self.load(&bytes)?, None)),
        };
        let runtime = self.clone();
        let source = bytes.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-optimize".into())
            .spawn(move || runtime.compile(&source, Tier::Optimized))
            .map_err(|e| PluginError::Compiler(e.into()))?;
        let pending = Pending {
            runtime: self.clone(),
            bytes,
            compile: PendingCompile::Thread(thread),
        };
        Ok((prepared, Some(pending)))
    }

    /// Links a compiled component against the transform world.
    fn link(&self, component: &Component, tier: Tier) -> Result<Prepared, PluginError> {
        let (engine, linker) = self.backend(tier);
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link {
                detail: format!("{e:#}"),
            })?;
        let pre = TransformerPre::new(instance_pre).map_err(|e| PluginError::Link {
            detail: format!("{e:#}; it exports {}", describe_exports(component, engine)),
        })?;
        prepare_memory_images(component)?;
        let uses_state = component
            .component_type()
            .imports(engine)
            .any(|(name, _)| name == STATE_IMPORT);
        let tier = if std::ptr::eq(engine, &self.engine) {
            Tier::Optimized
        } else {
            Tier::Baseline
        };
        Ok(Prepared {
            pre,
            uses_state,
            tier,
        })
    }
}

/// How many times the initial memory images of a component are tried.
const MEMORY_IMAGE_ATTEMPTS: u32 = 5;

/// Builds the images every instance's linear memories start from (a sealed memory file
/// per memory, mapped copy-on-write) now, while loading, instead of at the first
/// instantiation. The kernel refuses to seal a memory file while something else
/// briefly holds one of its pages (`EBUSY`), so a failure is tried again, waiting 20,
/// 40, 80, then 160 ms, before it is reported.
fn prepare_memory_images(component: &Component) -> Result<(), PluginError> {
    let mut wait = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match component.initialize_copy_on_write_image() {
            Ok(()) => return Ok(()),
            Err(error) if attempt < MEMORY_IMAGE_ATTEMPTS => {
                tracing::debug!(
                    attempt,
                    "Could not prepare a plugin's initial memory: {error:?}"
                );
                std::thread::sleep(wait);
                wait *= 2;
                attempt += 1;
            }
            Err(error) => {
                return Err(PluginError::Instantiate(format!(
                    "preparing its initial memory failed {attempt} times, last with: {error:#}"
                )));
            }
        }
    }
}

fn describe_exports(component: &Component, engine: &Engine) -> String {
    let names: Vec<String> = component
        .component_type()
        .exports(engine)
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

/// Names the two commonest mistakes plainly, before the parser's own wording.
fn check_format(bytes: &[u8]) -> Result<(), PluginError> {
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
    Ok(())
}

/// A compiled, linked plugin, ready to be instantiated any number of times.
#[derive(Clone)]
pub struct Prepared {
    pre: TransformerPre<HostState>,
    uses_state: bool,
    tier: Tier,
}

impl Prepared {
    /// Which compiler made its code.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether the plugin imports the keyed-state interface.
    pub fn uses_state(&self) -> bool {
        self.uses_state
    }
}

#[cfg(test)]
mod tests {
    use sluice_sdk::batch::InputBatch;

    use super::*;

    #[test]
    fn the_cache_size_is_a_number_of_megabytes_and_anything_else_is_named() {
        use std::ffi::OsStr;
        assert_eq!(cache_max_bytes(None).unwrap(), 512 << 20);
        assert_eq!(cache_max_bytes(Some(OsStr::new("300"))).unwrap(), 300 << 20);
        for bad in ["0", "-5", "2GB", "", "1.5"] {
            let error = cache_max_bytes(Some(OsStr::new(bad)))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("SLUICE_CACHE_MAX_MB") && error.contains(&format!("`{bad}`")),
                "{error}"
            );
        }
    }

    fn load_error(bytes: &[u8]) -> String {
        match Runtime::new().unwrap().load(bytes) {
            Ok(_) => panic!("loaded"),
            Err(error) => error.to_string(),
        }
    }

    fn test_plugin(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("SLUICE_TEST_PLUGIN_DIR")).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Both codes of `bytes`: Winch's, then Cranelift's (none from the cache, which
    /// would answer with Cranelift's at once).
    fn both_codes(bytes: &[u8]) -> [Prepared; 2] {
        let (baseline, pending) = Runtime::without_cache().unwrap().load_fast(bytes).unwrap();
        let optimized = pending
            .expect("an optimizing compile under way")
            .finish()
            .unwrap();
        [baseline, optimized]
    }

    /// Starts an instance of `prepared` with `limits` and `config` and runs one record
    /// through it.
    fn run_one(
        prepared: &Prepared,
        limits: Limits,
        config: &[(String, String)],
    ) -> Result<Vec<u8>, PluginError> {
        let mut instance = Instance::start(
            prepared,
            "test".into(),
            limits,
            &Sandbox::default(),
            config,
            crate::state::StateStore::shared(),
        )?;
        let mut writer = sluice_sdk::batch::InputWriter::new();
        writer.push(sluice_sdk::batch::RecordFields {
            topic: "t",
            partition: 0,
            offset: 7,
            timestamp: None,
            key: Some(b"k"),
            value: Some(b"v"),
            headers: std::iter::empty::<sluice_sdk::batch::Header<'_>>(),
        });
        let input = writer.finish().to_vec();
        let batch = InputBatch::parse(&input).unwrap();
        instance.process(&input, &batch)
    }

    #[test]
    fn a_new_component_comes_on_baseline_code_first_then_on_optimized_code() {
        let tag = test_plugin("sluice_test_tag_b.wasm");
        let [baseline, optimized] = both_codes(&tag);
        assert_eq!(baseline.tier(), Tier::Baseline);
        assert_eq!(optimized.tier(), Tier::Optimized);
        let output = run_one(&baseline, Limits::default(), &[]).unwrap();
        assert!(
            output.windows(b"tag".len()).any(|w| w == b"tag"),
            "the tag header is in the output"
        );
        assert_eq!(
            output,
            run_one(&optimized, Limits::default(), &[]).unwrap(),
            "both codes give the same output"
        );
        let runtime = Runtime::new().unwrap();
        assert_eq!(runtime.load(&tag).unwrap().tier(), Tier::Optimized);
    }

    #[test]
    fn a_plugin_that_spins_is_stopped_at_its_time_limit_on_either_code() {
        let limits = Limits {
            call_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let config = [("hog".to_string(), "cpu".to_string())];
        for prepared in both_codes(&test_plugin("sluice_test_hog.wasm")) {
            let started = std::time::Instant::now();
            match run_one(&prepared, limits, &config) {
                Err(PluginError::Timeout(limit)) => assert_eq!(limit, limits.call_timeout),
                Err(other) => panic!("{:?} code: wrong error: {other}", prepared.tier()),
                Ok(_) => panic!("{:?} code: a spinning plugin returned", prepared.tier()),
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                prepared.tier()
            );
        }
    }

    #[test]
    fn a_component_of_another_world_is_refused_by_the_fast_load_too() {
        let bytes = test_plugin("sluice_test_other_world.wasm");
        match Runtime::new().unwrap().load_fast(&bytes) {
            Err(error @ PluginError::Link { .. }) => {
                assert!(
                    error.to_string().contains("not a Sluice transform"),
                    "{error}"
                )
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("loaded"),
        }
        assert!(matches!(
            Runtime::new().unwrap().load_fast(b"not wasm"),
            Err(PluginError::Compile(_))
        ));
    }

    /// A transform whose core module traps in its start function: it links, and fails
    /// only when instantiated.
    const TRAPS_WHEN_INSTANTIATED: &str = r#"
        (component
          (core module $m
            (memory (export "memory") 1)
            (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 8)
            (func (export "init") (param i32 i32) (result i32) i32.const 0)
            (func (export "process") (param i32 i32) (result i32) i32.const 0)
            (func $start unreachable)
            (start $start))
          (core instance $i (instantiate $m))
          (func $init (param "config" (list (tuple string string))) (result (result (error string)))
            (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
          (func $process (param "input" (list u8)) (result (result (list u8) (error string)))
            (canon lift (core func $i "process") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
          (instance $transform
            (export "init" (func $init))
            (export "process" (func $process)))
          (export "sluice:plugin/transform@0.1.0" (instance $transform)))
    "#;

    #[test]
    fn a_component_trapping_while_instantiated_is_named_a_trap_not_another_world() {
        let bytes = wat::parse_str(TRAPS_WHEN_INSTANTIATED).unwrap();
        for prepared in both_codes(&bytes) {
            match run_one(&prepared, Limits::default(), &[]) {
                Err(PluginError::Trap(message)) => {
                    assert!(message.contains("unreachable"), "{message}")
                }
                Err(other) => panic!("{:?} code: wrong error: {other}", prepared.tier()),
                Ok(_) => panic!("{:?} code: instantiated", prepared.tier()),
            }
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
