//! From a component's bytes to compiled code: the compilation cache first, then a
//! compiler process (`child`), else the calling thread. A version never compiled
//! before can come on baseline code at once, with the optimizing compile under way
//! behind it ([`Pending`]).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Component;

use super::PluginError;
use super::cache;
use super::child;
use super::engine::{Runtime, Tier};
use super::prepared::{Prepared, check_format};
use super::priority::{self, OPTIMIZE_NICE};

/// How long a compiler process may take. A large JavaScript or Python component
/// compiles in seconds on an idle machine and in a minute or two on a busy one, at
/// the lower priority of validation; a compile still running after this is stuck.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an optimizing compile in the background may take. At the idle policy it
/// gets a core only when nothing else wants one, so on a host kept busy it may wait for
/// many times its CPU time; a compile still running after this is stuck.
const IDLE_COMPILE_TIMEOUT: Duration = Duration::from_secs(3600);

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
    /// Lets the compile go on in the background: it was paused while the baseline
    /// compiler had the cores, and goes on at the idle policy (see `priority`), with
    /// [`IDLE_COMPILE_TIMEOUT`] to finish.
    pub(crate) fn resume(&mut self) {
        if let PendingCompile::Child(running) = &mut self.compile {
            running.make_idle(IDLE_COMPILE_TIMEOUT);
            running.resume();
        }
    }

    /// The compiler process's id, while there is one.
    #[cfg(test)]
    fn compiler_pid(&self) -> Option<u32> {
        match &self.compile {
            PendingCompile::Child(running) => Some(running.id()),
            PendingCompile::Thread(_) => None,
        }
    }

    /// Waits for Cranelift's code and links it.
    pub(crate) fn finish(self) -> Result<Prepared, PluginError> {
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
impl Runtime {
    /// `bytes` compiled by `tier`'s compiler: from the compilation cache, else by a
    /// compiler process, else on the calling thread.
    pub(super) fn compile(&self, bytes: &[u8], tier: Tier) -> Result<Component, PluginError> {
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
    pub(super) fn compile_sealed(
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
    pub(crate) fn load(&self, bytes: &[u8]) -> Result<Prepared, PluginError> {
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
    pub(crate) fn load_fast(
        &self,
        bytes: &[u8],
    ) -> Result<(Prepared, Option<Pending>), PluginError> {
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
            .spawn(move || {
                // In this process, where it may hold a lock the pipeline needs: a
                // nice value, not the idle policy (see `priority`).
                priority::lower_thread_priority(OPTIMIZE_NICE);
                runtime.compile(&source, Tier::Optimized)
            })
            .map_err(|e| PluginError::Compiler(e.into()))?;
        let pending = Pending {
            runtime: self.clone(),
            bytes,
            compile: PendingCompile::Thread(thread),
        };
        Ok((prepared, Some(pending)))
    }
}

#[cfg(test)]
mod tests {
    use sluice_sdk::batch::InputBatch;

    use super::*;
    use crate::runtime::{Instance, Limits, Sandbox};

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

    /// The optimizing compile of a version that went live on baseline code gets only
    /// the CPU nothing else wants: every thread of its compiler process runs at the idle
    /// policy once it goes on in the background.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_optimizing_compile_behind_baseline_code_runs_at_the_idle_policy() {
        use std::os::unix::fs::PermissionsExt as _;

        use crate::runtime::priority::tests::policies;

        let dir = tempfile::tempdir().unwrap();
        let bytes = test_plugin("sluice_test_tag_a.wasm");
        let mut runtime = Runtime::without_cache().unwrap();
        // A stand-in for the executable: the baseline compiler hands over code compiled
        // here; the optimizing one keeps running, to be looked at.
        let baseline = dir.path().join("baseline");
        let sealed = runtime
            .compile_sealed(&bytes, Tier::Baseline, &runtime.seal_key)
            .unwrap();
        std::fs::write(&baseline, sealed).unwrap();
        let program = dir.path().join("compiler");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\ncat > /dev/null\nif [ \"$2\" = baseline ]; then cat '{}'; else exec sleep 60; fi\n",
                baseline.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        runtime.compiler = Some(program);

        let (prepared, pending) = runtime.load_fast(&bytes).unwrap();
        assert_eq!(prepared.tier(), Tier::Baseline);
        let mut pending = pending.expect("an optimizing compile under way");
        let pid = pending.compiler_pid().expect("in a compiler process");
        assert_eq!(
            policies(pid),
            [libc::SCHED_OTHER],
            "started at the host's policy"
        );
        pending.resume();
        let after = policies(pid);
        assert!(
            !after.is_empty() && after.iter().all(|&policy| policy == libc::SCHED_IDLE),
            "the compiler's threads at the idle policy ({}): {after:?}",
            libc::SCHED_IDLE
        );
    }
}
