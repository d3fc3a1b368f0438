//! The plugin registry: which version is live, how a candidate is validated before it
//! goes live, and the history of swaps, rejections and rollbacks.
//!
//! Strategy: triggers (file watcher, SIGHUP, admin endpoint) call [`Registry::propose`]
//! off the hot path. A candidate is read once, compiled (or taken from the cache by
//! content digest), linked against the transform world, started with the pipeline's
//! plugin settings, and run on the configured self-test records. Only then is it
//! published with one atomic pointer swap. Workers compare the live version number at
//! each batch boundary and start an instance of the new version there, so every batch
//! is processed by exactly one version and nothing is re-read. A rejected candidate
//! changes nothing but the history.
//!
//! A candidate no cache holds goes live on the baseline compiler's code (Winch, about
//! five times quicker to compile than Cranelift); Cranelift's compile goes on in the
//! background, in a compiler process at the idle scheduling policy (it gets only the CPU
//! nothing else wants, see `runtime::priority`), and when its code is ready it is
//! recorded with the plugin, with instances started ahead, and each worker moves to it
//! at its next batch boundary within the same version. A large plugin (JavaScript,
//! Python) that no cache holds starts the same way.
//!
//! Size: proposing, publishing, the background compile of optimized code, rollback
//! and the swap history all guard one live pointer and its books; the tests of those
//! paths are at the end.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_sdk::batch::{Header, InputBatch, InputWriter, Op, OutputReader, RecordFields};

use super::{LoadError, LoadFailure, Origin, Plugin};
use crate::config::SelfTest;
use crate::runtime::{
    Instance, Limits, OPTIMIZE_NICE, Pending, Runtime, Sandbox, Tier, lower_thread_priority,
};
use crate::state::{SharedState, StateStore};

/// Compiled versions kept for instant swap-back.
const CACHE_SIZE: usize = 8;
/// History entries kept for the status endpoint.
const HISTORY_SIZE: usize = 100;

/// A component at least this big starts on baseline code when no compilation cache
/// holds its optimized code, as a swapped-in version does: a JavaScript or Python one
/// (12 to 19 MB) takes Cranelift about 10 s of CPU and Winch about 1.5 s, and the
/// first record waited for Cranelift. A Rust one (0.1 to 0.3 MB) compiles in well under
/// a second, where baseline code would only add a second compile.
const FAST_START_BYTES: usize = 1 << 20;

/// What made a swap happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Trigger {
    Start,
    FileChange,
    Sighup,
    Admin,
    Rollback,
}

/// A version that is (or was) live.
#[derive(Clone)]
pub struct Live {
    /// Increases with every publication, rollbacks included.
    pub(crate) version: u64,
    pub plugin: Plugin,
    pub(crate) since: SystemTime,
    /// What a rollback returns to (one level deep).
    pub(crate) previous: Option<Arc<Live>>,
    /// Instances started (with `init` run) off the hot path when the version was
    /// published, one per worker, so that starting the version costs the pipeline
    /// nothing.
    pub(crate) standby: Standby,
}

/// Started instances waiting for their workers to take them: slot `w` holds worker
/// `w`'s, bound to its keyed state.
#[derive(Clone, Default)]
pub(crate) struct Standby(Arc<Mutex<Vec<Option<Instance>>>>);

impl Standby {
    fn new(instances: Vec<Option<Instance>>) -> Self {
        Standby(Arc::new(Mutex::new(instances)))
    }

    /// Worker `worker`'s instance, if it was started and not taken yet.
    pub(crate) fn take(&self, worker: usize) -> Option<Instance> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(worker)
            .and_then(Option::take)
    }
}

/// A candidate that did not go live.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct Rejection {
    pub(crate) reason: String,
}

/// What happened to a plugin version: the events of the swap history, and the answer
/// to a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwapEvent {
    /// It went live.
    Live,
    /// The candidate is the live version already.
    Unchanged,
    /// Validation refused it; the live version stays.
    Rejected,
    /// It was reverted automatically after probation.
    RolledBack,
}

impl std::fmt::Display for SwapEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwapEvent::Live => "live",
            SwapEvent::Unchanged => "unchanged",
            SwapEvent::Rejected => "rejected",
            SwapEvent::RolledBack => "rolled-back",
        })
    }
}

/// The outcome of a successful proposal.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    /// `Live`, or `Unchanged` when the candidate is the live version.
    pub(crate) outcome: SwapEvent,
    pub(crate) version: u64,
    pub(crate) digest: String,
}

#[derive(Debug, Clone, Serialize)]
struct Event {
    at: String,
    event: SwapEvent,
    trigger: Trigger,
    origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct VersionStatus {
    pub(crate) version: u64,
    pub(crate) digest: String,
    pub(crate) origin: String,
    since: String,
    /// Which compiler made the code it runs on: `baseline` for a version just swapped
    /// in, until the workers move to Cranelift's (`optimized`).
    code: Tier,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub(crate) live: VersionStatus,
    pub(crate) previous: Option<VersionStatus>,
    pub(crate) swaps: u64,
    pub(crate) rejections: u64,
    pub(crate) rollbacks: u64,
    history: Vec<Event>,
}

#[derive(Default)]
struct Books {
    swaps: u64,
    rejections: u64,
    rollbacks: u64,
    history: VecDeque<Event>,
    cache: VecDeque<Plugin>,
}

/// Settings every instance of every version gets.
#[derive(Debug, Clone)]
pub(crate) struct InstanceSettings {
    pub(crate) limits: Limits,
    /// What every version may reach beyond the WIT world: swapped-in versions get the
    /// same grants as the first.
    pub(crate) sandbox: Sandbox,
    pub(crate) config: Vec<(String, String)>,
    pub(crate) self_tests: Vec<SelfTest>,
    /// Each worker's keyed state, by worker. Validation runs on a scratch store
    /// instead, so a candidate's self-tests never touch it.
    pub(crate) states: Vec<SharedState>,
}

impl InstanceSettings {
    /// Starts an instance of `plugin` for worker `worker`: these limits, sandbox and
    /// configuration, and that worker's keyed state.
    pub(crate) fn start(&self, plugin: &Plugin, worker: usize) -> Result<Instance, LoadError> {
        plugin.start(
            self.limits,
            &self.sandbox,
            &self.config,
            self.states[worker].clone(),
        )
    }

    /// How many workers instances are started for.
    fn workers(&self) -> usize {
        self.states.len()
    }
}

pub struct Registry {
    runtime: Runtime,
    settings: InstanceSettings,
    /// The path the configuration names, re-read on SIGHUP and watched for changes.
    configured_path: Option<PathBuf>,
    live: Arc<ArcSwap<Live>>,
    /// Version numbers are never reused, so a worker can tell any two versions apart.
    next_version: AtomicU64,
    /// Serialises proposals: one candidate is validated at a time.
    proposing: Mutex<()>,
    /// The directory (canonical) a candidate named by an admin request must be in.
    allowed_dir: Option<PathBuf>,
    books: Mutex<Books>,
}

/// How long a candidate took to read and compile (or find in memory), and to validate.
struct Spent {
    load: Duration,
    validate: Duration,
}

fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e4).round() / 10.0
}

/// Runs `work` on a thread of lower CPU priority and returns its result.
///
/// Compiling and validating a candidate costs from a tenth of a second of CPU (a small
/// Rust component) to several seconds (JavaScript and Python components). At a lower
/// priority that work yields the cores to the pipeline and the Kafka clients when
/// they need them, and still finishes on a busy machine.
fn in_background<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let work = Mutex::new(Some(work));
    let take = || work.lock().unwrap().take().expect("the work runs once");
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("sluice-validate".into())
            .spawn_scoped(scope, || {
                lower_thread_priority(BACKGROUND_NICE);
                take()()
            });
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(error) => {
                tracing::warn!(%error, "Could not start a validation thread; validating at normal priority.");
                take()()
            }
        }
    })
}

/// The nice value background work runs at. Against one busy thread at the default
/// priority (0) it gets about a tenth of a core; the lowest (19) would get about 1.5%,
/// and a swap on a saturated host could then take minutes.
const BACKGROUND_NICE: i32 = 10;

fn timestamp(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Registry {
    /// Validates the initial plugin and makes it live. Returns the registry and an
    /// instance of that plugin for each worker.
    ///
    /// `allowed_dir`: the directory (canonical) a candidate an admin request names must
    /// be in; `None`: anywhere the host can read.
    pub(crate) fn start(
        runtime: Runtime,
        settings: InstanceSettings,
        path: Option<&Path>,
        allowed_dir: Option<PathBuf>,
    ) -> Result<(Arc<Registry>, Vec<Instance>), LoadError> {
        let (origin, bytes) = super::read(path)?;
        let digest = super::digest(&bytes);
        let (plugin, pending) = if bytes.len() >= FAST_START_BYTES {
            Plugin::from_bytes_fast(&runtime, origin, &bytes, &digest)?
        } else {
            (Plugin::from_bytes(&runtime, origin, &bytes, &digest)?, None)
        };
        validate(&plugin, &settings)?;
        // Fresh instances: the workers' must not have seen the self-test records.
        let instances = (0..settings.workers())
            .map(|worker| settings.start(&plugin, worker))
            .collect::<Result<Vec<_>, _>>()?;
        let live = Live {
            version: 1,
            plugin: plugin.clone(),
            since: SystemTime::now(),
            previous: None,
            // The workers get `instances`, returned below.
            standby: Standby::default(),
        };
        let registry = Registry {
            runtime,
            settings,
            configured_path: path.map(Path::to_path_buf),
            live: Arc::new(ArcSwap::from_pointee(live)),
            next_version: AtomicU64::new(2),
            proposing: Mutex::new(()),
            allowed_dir,
            books: Mutex::default(),
        };
        registry.record(
            Trigger::Start,
            SwapEvent::Live,
            &plugin.origin.to_string(),
            Some(1),
            Some(&plugin.digest),
            None,
        );
        registry
            .books
            .lock()
            .unwrap()
            .cache
            .push_back(plugin.clone());
        if let Some(pending) = pending {
            registry.optimize_in_background(plugin, pending);
        }
        Ok((Arc::new(registry), instances))
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    pub(crate) fn settings(&self) -> &InstanceSettings {
        &self.settings
    }

    pub(crate) fn configured_path(&self) -> Option<&Path> {
        self.configured_path.as_deref()
    }

    /// Validates the component at `path` and, if it passes, makes it live.
    pub(crate) fn propose(&self, trigger: Trigger, path: &Path) -> Result<Outcome, Rejection> {
        let _one_at_a_time = self.proposing.lock().unwrap_or_else(|e| e.into_inner());
        let origin = Origin::File(path.to_path_buf());
        let result = in_background(|| -> Result<Outcome, LoadError> {
            let started = Instant::now();
            let (plugin, bytes_digest, pending) = self.candidate(trigger, path)?;
            let loaded = Instant::now();
            let live = self.live();
            if live.plugin.digest == bytes_digest {
                return Ok(Outcome {
                    outcome: SwapEvent::Unchanged,
                    version: live.version,
                    digest: bytes_digest,
                });
            }
            validate(&plugin, &self.settings)?;
            let spent = Spent {
                load: loaded - started,
                validate: loaded.elapsed(),
            };
            let outcome = self.publish(plugin.clone(), trigger, spent);
            if let Some(pending) = pending {
                self.optimize_in_background(plugin, pending);
            }
            Ok(outcome)
        });
        match result {
            Ok(outcome) => Ok(outcome),
            Err(error) => {
                let reason = format!("{:#}", anyhow::Error::new(error));
                tracing::warn!(?trigger, plugin = %origin, %reason, "Plugin candidate rejected; the live version stays.");
                self.books.lock().unwrap().rejections += 1;
                self.record(
                    trigger,
                    SwapEvent::Rejected,
                    &origin.to_string(),
                    None,
                    None,
                    Some(reason.clone()),
                );
                Err(Rejection { reason })
            }
        }
    }

    /// Reverts to the previous version if `version` is still live. Returns whether it did.
    ///
    /// Called from the hot path: it never waits for a candidate being validated, and a
    /// compare-and-swap keeps it from undoing a version published meanwhile.
    pub(crate) fn roll_back(&self, version: u64, reason: &str) -> bool {
        let live = self.live();
        let Some(previous) = live.previous.as_ref().filter(|_| live.version == version) else {
            return false;
        };
        let restored = Arc::new(Live {
            version: self.next_version.fetch_add(1, Ordering::SeqCst),
            plugin: previous.plugin.best(),
            since: SystemTime::now(),
            previous: None,
            // A rollback must not wait for a start on another thread: the worker
            // starts the restored version itself.
            standby: Standby::default(),
        });
        let swapped = self.live.compare_and_swap(&live, restored.clone());
        if !Arc::ptr_eq(&swapped, &live) {
            return false;
        }
        tracing::warn!(
            from = live.plugin.short_digest(),
            to = previous.plugin.short_digest(),
            %reason,
            "Plugin rolled back."
        );
        self.books.lock().unwrap().rollbacks += 1;
        self.record(
            Trigger::Rollback,
            SwapEvent::RolledBack,
            &previous.plugin.origin.to_string(),
            Some(restored.version),
            Some(&previous.plugin.digest),
            Some(reason.to_string()),
        );
        true
    }

    pub(crate) fn status(&self) -> Status {
        let live = self.live();
        let describe = |l: &Live| VersionStatus {
            version: l.version,
            digest: l.plugin.digest.clone(),
            origin: l.plugin.origin.to_string(),
            since: timestamp(l.since),
            code: l.plugin.best().tier(),
        };
        let books = self.books.lock().unwrap();
        Status {
            live: describe(&live),
            previous: live.previous.as_deref().map(describe),
            swaps: books.swaps,
            rejections: books.rejections,
            rollbacks: books.rollbacks,
            history: books.history.iter().cloned().collect(),
        }
    }

    /// Reads `path` once and compiles it, or finds it in the cache by digest. A
    /// component compiled now may come on baseline code, with Cranelift's compile still
    /// under way.
    fn candidate(
        &self,
        trigger: Trigger,
        path: &Path,
    ) -> Result<(Plugin, String, Option<Pending>), LoadError> {
        let origin = Origin::File(path.to_path_buf());
        let allowed = match trigger {
            // The configured file is the operator's; a client's choice is checked.
            Trigger::Admin => self.allowed_dir.as_deref(),
            _ => None,
        };
        let bytes = super::read_component(path, allowed).map_err(|reason| {
            tracing::warn!(?trigger, plugin = %origin, %reason, "Plugin candidate not read.");
            LoadError {
                origin: origin.clone(),
                source: LoadFailure::NotACandidate,
            }
        })?;
        // The parser's error would quote the first bytes of whatever file was named.
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError {
                origin,
                source: LoadFailure::NotWasm,
            });
        }
        let digest = super::digest(&bytes);
        let cached = self
            .books
            .lock()
            .unwrap()
            .cache
            .iter()
            .find(|p| p.digest == digest)
            .cloned();
        match cached {
            Some(plugin) => Ok((plugin.best().with_origin(origin), digest, None)),
            None => {
                let (plugin, pending) =
                    Plugin::from_bytes_fast(&self.runtime, origin, &bytes, &digest)?;
                let mut books = self.books.lock().unwrap();
                if books.cache.len() == CACHE_SIZE {
                    books.cache.pop_front();
                }
                books.cache.push_back(plugin.clone());
                Ok((plugin, digest, pending))
            }
        }
    }

    /// Waits, on a thread of its own and at the lowest priority, for Cranelift's code
    /// of `plugin`, which went live on baseline code. Then records it with the plugin,
    /// with an instance started ahead for each worker if the plugin is still live; the
    /// workers move to it at their next batch.
    fn optimize_in_background(&self, plugin: Plugin, mut pending: Pending) {
        let settings = self.settings.clone();
        let live = self.live.clone();
        let origin = plugin.origin.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-optimize".into())
            .spawn(move || {
                // This thread loads the code once compiled, in the host: a nice value.
                // The compiler process gets the idle policy (see `Pending::resume`).
                lower_thread_priority(OPTIMIZE_NICE);
                pending.resume();
                let started = Instant::now();
                let prepared = match pending.finish() {
                    Ok(prepared) => prepared,
                    Err(error) => {
                        tracing::warn!(
                            plugin = %plugin.origin,
                            digest = plugin.short_digest(),
                            %error,
                            "The optimizing compiler failed on a plugin that runs on baseline code; it stays on that code, which is correct but slower."
                        );
                        return;
                    }
                };
                let optimized = plugin.with_prepared(prepared.clone());
                let standby = if live.load().plugin.digest == plugin.digest {
                    (0..settings.workers())
                        .map(|worker| settings.start(&optimized, worker).ok())
                        .collect()
                } else {
                    Vec::new()
                };
                plugin.set_optimized(prepared, Standby::new(standby));
                tracing::info!(
                    plugin = %plugin.origin,
                    digest = plugin.short_digest(),
                    compile_ms = ms(started.elapsed()),
                    "Plugin compiled by the optimizing compiler; its workers move to that code at their next batch."
                );
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, plugin = %origin, "Could not start the optimizing compile; the plugin stays on baseline code until it is swapped in again.");
        }
    }

    fn publish(&self, plugin: Plugin, trigger: Trigger, spent: Spent) -> Outcome {
        let old = self.live();
        let previous = Live {
            previous: None,
            standby: Standby::default(),
            ..(*old).clone()
        };
        // Validation passed, so these starts succeed but for a transient failure; then
        // the worker starts the version itself and reports what went wrong.
        let starting = Instant::now();
        let standby = (0..self.settings.workers())
            .map(|worker| match self.settings.start(&plugin, worker) {
                Ok(instance) => Some(instance),
                Err(error) => {
                    tracing::warn!(worker, error = %anyhow::Error::new(error), "Could not start the new version ahead of its adoption; the worker will.");
                    None
                }
            })
            .collect();
        let standby = Standby::new(standby);
        let live = Live {
            version: self.next_version.fetch_add(1, Ordering::SeqCst),
            plugin,
            since: SystemTime::now(),
            previous: Some(Arc::new(previous)),
            standby,
        };
        let outcome = Outcome {
            outcome: SwapEvent::Live,
            version: live.version,
            digest: live.plugin.digest.clone(),
        };
        tracing::info!(
            ?trigger,
            version = live.version,
            plugin = %live.plugin.origin,
            digest = live.plugin.short_digest(),
            load_ms = ms(spent.load),
            validate_ms = ms(spent.validate),
            start_ms = ms(starting.elapsed()),
            "Plugin validated; workers adopt it at their next batch."
        );
        self.books.lock().unwrap().swaps += 1;
        self.record(
            trigger,
            SwapEvent::Live,
            &live.plugin.origin.to_string(),
            Some(live.version),
            Some(&live.plugin.digest),
            None,
        );
        self.live.store(Arc::new(live));
        outcome
    }

    fn record(
        &self,
        trigger: Trigger,
        event: SwapEvent,
        origin: &str,
        version: Option<u64>,
        digest: Option<&str>,
        reason: Option<String>,
    ) {
        let mut books = self.books.lock().unwrap();
        if books.history.len() == HISTORY_SIZE {
            books.history.pop_front();
        }
        books.history.push_back(Event {
            at: timestamp(SystemTime::now()),
            event,
            trigger,
            origin: origin.to_string(),
            version,
            digest: digest.map(str::to_string),
            reason,
        });
    }
}

/// Starts an instance of `plugin` (running its `init`) and runs the self-tests on it.
/// The instance has seen the self-test records; workers start their own.
fn validate(plugin: &Plugin, settings: &InstanceSettings) -> Result<Instance, LoadError> {
    let mut instance = plugin.start(
        settings.limits,
        &settings.sandbox,
        &settings.config,
        StateStore::shared(),
    )?;
    if settings.self_tests.is_empty() {
        return Ok(instance);
    }
    let fail = |reason: String| LoadError {
        origin: plugin.origin.clone(),
        source: LoadFailure::SelfTest(reason),
    };
    let mut writer = InputWriter::new();
    for (offset, test) in settings.self_tests.iter().enumerate() {
        writer.push(RecordFields {
            topic: "self-test",
            partition: 0,
            offset: offset as i64,
            timestamp: None,
            key: test.key.as_deref().map(str::as_bytes),
            value: test.value.as_deref().map(str::as_bytes),
            headers: std::iter::empty::<Header<'_>>(),
        });
    }
    let encoded = writer.finish().to_vec();
    let input = InputBatch::parse(&encoded).expect("a batch the host just encoded");
    let output = instance
        .process(&encoded, &input)
        .map_err(|e| fail(e.to_string()))?;
    let mut produced: Vec<Vec<String>> = vec![Vec::new(); input.len()];
    let reader =
        OutputReader::parse(&output, input.len() as u32).map_err(|e| fail(e.to_string()))?;
    for op in reader {
        let op = op.map_err(|e| fail(e.to_string()))?;
        let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
        match op {
            Op::Keep { start, count, .. } => {
                for i in start..start + count {
                    produced[i as usize].push(text(input.get(i).and_then(|r| r.value())));
                }
            }
            Op::ReplaceValue { index, value, .. } | Op::Record { index, value, .. } => {
                produced[index as usize].push(text(value));
            }
            Op::Error { index, message } => {
                return Err(fail(format!(
                    "record {index}: the plugin reported an error: {message}"
                )));
            }
        }
    }
    for (index, (test, got)) in settings.self_tests.iter().zip(&produced).enumerate() {
        if let Some(expected) = &test.expect_values
            && expected != got
        {
            return Err(fail(format!(
                "record {index}: expected values {expected:?}, got {got:?}"
            )));
        }
    }
    Ok(instance)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::runtime::thread_nice as own_nice;

    /// `bytes` with a custom section of `size` bytes of `filler` appended: the same
    /// component, at another size and digest.
    fn padded(bytes: &[u8], size: usize, filler: u8) -> Vec<u8> {
        fn leb(mut value: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (value & 0x7f) as u8;
                value >>= 7;
                if value == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        let name = b"padding";
        let mut section = Vec::new();
        leb(name.len(), &mut section);
        section.extend_from_slice(name);
        section.resize(section.len() + size, filler);
        let mut padded = bytes.to_vec();
        padded.push(0);
        leb(section.len(), &mut padded);
        padded.extend_from_slice(&section);
        padded
    }

    #[test]
    fn a_large_plugin_no_cache_holds_starts_on_baseline_code_and_moves_to_optimized_code() {
        let dir = tempfile::tempdir().unwrap();
        let tag =
            std::fs::read(Path::new(env!("SLUICE_TEST_PLUGIN_DIR")).join("sluice_test_tag_a.wasm"))
                .unwrap();
        // Bytes no compilation cache has seen.
        let large = padded(&tag, FAST_START_BYTES, rand::random());
        let path = dir.path().join("large.wasm");
        std::fs::write(&path, &large).unwrap();
        let settings = InstanceSettings {
            limits: Limits::default(),
            sandbox: Sandbox::default(),
            config: Vec::new(),
            self_tests: Vec::new(),
            states: vec![StateStore::shared()],
        };
        let (registry, instances) =
            Registry::start(Runtime::new().unwrap(), settings, Some(&path), None).unwrap();
        assert_eq!(instances.len(), 1);
        assert_eq!(registry.live().plugin.tier(), Tier::Baseline);
        let waited = Instant::now();
        while registry.live().plugin.optimized().is_none() {
            assert!(
                waited.elapsed() < Duration::from_secs(120),
                "no optimized code after {:?}",
                waited.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(registry.status().live.code, Tier::Optimized);

        // A small one starts on optimized code at once.
        let small = padded(&tag, 1024, rand::random());
        std::fs::write(&path, &small).unwrap();
        let settings = registry.settings().clone();
        let (registry, _) =
            Registry::start(Runtime::new().unwrap(), settings, Some(&path), None).unwrap();
        assert_eq!(registry.live().plugin.tier(), Tier::Optimized);
    }

    #[test]
    fn background_work_runs_on_its_own_thread_at_the_lowest_priority() {
        let before = own_nice();
        let (nice, name) =
            super::in_background(|| (own_nice(), std::thread::current().name().map(str::to_owned)));
        assert_eq!(nice, super::BACKGROUND_NICE);
        assert_eq!(name.as_deref(), Some("sluice-validate"));
        assert_eq!(own_nice(), before, "the caller's priority is left alone");
    }
}
