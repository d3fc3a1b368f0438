//! Wiring: from a validated configuration to a running pipeline.
//!
//! Size: it composes every room (workers, exactly-once ids, admin endpoint, swap
//! triggers), each in a named step; a tenth of the file is tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::admin;
use crate::auth::{AuthFailure, ClientAuth};
use crate::checkpoint::changelog::{self, Restorer};
use crate::checkpoint::checkpointer::Checkpointer;
use crate::checkpoint::exactly_once;
use crate::config::{Config, ConfigSource, Delivery, Fallback, Invalid, Startup};
use crate::metrics::Metrics;
use crate::output::{OutputLimits, added_header_bytes};
use crate::pipeline::{Pipeline, Summary};
use crate::plugin::registry::{InstanceSettings, Registry};
use crate::plugin::watch;
use crate::progress::Tracker;
use crate::runtime::{DirGrant, Instance, Limits, Runtime, Sandbox};
use crate::shutdown::Shutdown;
use crate::sink::kafka::{KafkaSink, TransactionSettings};
use crate::source::kafka::{FreshStart, KafkaSource};
use crate::state::{SharedState, StateLimits, StateStore};
use crate::transform::TransformStage;

/// Reads and validates the configuration; `plugin` replaces the configured plugin and
/// `parallelism` the configured number of workers.
pub fn load_config(
    source: &ConfigSource,
    plugin: Option<PathBuf>,
    parallelism: Option<u16>,
    bootstrap_override: Option<&str>,
) -> Result<Config, Invalid> {
    let mut config = source.load(bootstrap_override)?;
    if let Some(path) = plugin {
        config.plugin.path = Some(path);
    }
    if let Some(workers) = parallelism {
        config.parallelism = usize::from(workers);
    }
    Ok(config)
}

/// Marks the error of a plugin refused before the pipeline starts (not a component,
/// another world, a failing `init` or self-test): invalid input, as `validate` says,
/// not a failure at run time.
#[derive(Debug, Clone, Copy)]
pub struct PluginRefused;

impl std::fmt::Display for PluginRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("plugin.path")
    }
}

/// Runtime options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The admin endpoint; `None`: no endpoint.
    pub admin: Option<AdminOptions>,
    /// This host's name among the hosts of one application, for its transactional id
    /// (see [`instance_id`]).
    pub instance: Option<String>,
    /// Ignore committed offsets and state; start from the configured startup mode.
    pub fresh: bool,
}

/// Where the admin endpoint listens and how it is guarded.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub address: SocketAddr,
    pub token: admin::token::TokenSource,
    /// Host names clients use besides the address and `localhost`.
    pub names: Vec<String>,
}

/// Options that cannot work, found before anything starts (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum InvalidOptions {
    #[error(
        "--admin {0} listens beyond loopback, where anything on the network could swap the plugin with a token it guessed or read; {how}, or listen on 127.0.0.1",
        how = admin::token::HOW_TO_SET
    )]
    PublicAdminWithoutToken(SocketAddr),
    #[error(
        "exactly-once needs a stable name for this host, unique among the hosts of the application, so that a restarted host fences its predecessor's open transaction: \
         set --instance NAME (SLUICE_INSTANCE), or run it as a StatefulSet pod, whose name (HOSTNAME `NAME-ORDINAL`, e.g. `sluice-2`) is used; {0}"
    )]
    NoInstance(String),
}

impl AdminOptions {
    /// Refuses an endpoint beyond loopback whose token the operator did not choose.
    pub fn check(&self) -> Result<(), InvalidOptions> {
        if !self.address.ip().is_loopback() && !self.token.explicit() {
            return Err(InvalidOptions::PublicAdminWithoutToken(self.address));
        }
        Ok(())
    }
}

/// This host's stable instance name for exactly-once: `explicit` (`--instance`), else
/// `hostname` (the `HOSTNAME` environment variable) when it is a StatefulSet pod name,
/// `NAME-ORDINAL`, which a replaced pod keeps. A Deployment's pod names
/// (`NAME-HASH-XXXXX`) change with every replacement, so a new pod would not fence the
/// transaction its predecessor left open: they are refused, as is a plain host name.
pub fn instance_id(
    explicit: Option<&str>,
    hostname: Option<&str>,
) -> Result<String, InvalidOptions> {
    if let Some(name) = explicit {
        let name = name.trim();
        if name.is_empty() {
            return Err(InvalidOptions::NoInstance("--instance is empty".into()));
        }
        return Ok(name.to_string());
    }
    match hostname.map(str::trim).filter(|h| !h.is_empty()) {
        Some(host) if is_stateful_set_pod_name(host) => Ok(host.to_string()),
        Some(host) => Err(InvalidOptions::NoInstance(format!(
            "HOSTNAME `{host}` is not a StatefulSet pod name"
        ))),
        None => Err(InvalidOptions::NoInstance("HOSTNAME is not set".into())),
    }
}

/// `NAME-ORDINAL`: a StatefulSet pod name. The ordinal is a decimal number without
/// leading zeros and of at most 4 digits; a Deployment pod's random 5-character suffix
/// can be all digits, but is never that short.
fn is_stateful_set_pod_name(host: &str) -> bool {
    let Some((name, ordinal)) = host.rsplit_once('-') else {
        return false;
    };
    !name.is_empty()
        && (1..=4).contains(&ordinal.len())
        && ordinal.bytes().all(|b| b.is_ascii_digit())
        && (ordinal == "0" || !ordinal.starts_with('0'))
}

/// The transactional id of an exactly-once host: stable across restarts, so a
/// restarted host fences its previous incarnation and aborts what it left open.
fn transactional_id(group_id: &str, instance: &str) -> String {
    format!("sluice-{group_id}-{instance}")
}

/// librdkafka's default `message.max.bytes`, when `sink.kafka` does not set it.
const DEFAULT_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// The largest record the sink producer accepts: its `message.max.bytes`.
fn message_max_bytes(config: &Config) -> u64 {
    config
        .sink
        .kafka
        .iter()
        .find(|(key, _)| key.as_str() == "message.max.bytes")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
}

/// What the outputs of one batch must keep to; see [`crate::output`].
fn output_limits(config: &Config) -> OutputLimits {
    let provenance = config
        .plugin
        .provenance_header
        .as_deref()
        .map_or(0, |name| added_header_bytes(name, SHORT_DIGEST_LEN));
    OutputLimits {
        per_record: config.plugin.max_outputs_per_record,
        batch_bytes: config.plugin.max_batch_output_bytes,
        record_bytes: message_max_bytes(config).saturating_sub(provenance),
        outputs: config.sink.outputs.keys().cloned().collect(),
    }
}

/// What the keyed state may hold: one entry fits one changelog record.
fn state_limits(config: &Config) -> StateLimits {
    StateLimits {
        entry_bytes: message_max_bytes(config).saturating_sub(CHANGELOG_FRAMING),
        partition_bytes: config.plugin.max_state_bytes_per_partition,
    }
}

/// Hex digits of the plugin digest in the provenance header.
const SHORT_DIGEST_LEN: usize = 12;

/// Bytes of framing counted for a changelog record beyond its key and value.
const CHANGELOG_FRAMING: u64 = 64;

fn settings(config: &Config, states: Vec<SharedState>) -> anyhow::Result<InstanceSettings> {
    let grants = &config.plugin.sandbox;
    let mut env = Vec::with_capacity(grants.env.len());
    for name in &grants.env {
        // Checked when the file was read; read again here, where it is used.
        let value = std::env::var(name).with_context(|| {
            format!("plugin.sandbox.env grants `{name}`, which is not set (as UTF-8) in Sluice's environment")
        })?;
        env.push((name.clone(), value));
    }
    let dirs = grants
        .dirs
        .iter()
        .map(|d| DirGrant {
            host: d.host.clone(),
            guest: d.guest.clone(),
        })
        .collect();
    Ok(InstanceSettings {
        limits: Limits {
            max_memory_bytes: config.plugin.max_memory_bytes,
            call_timeout: config.plugin.call_timeout,
        },
        sandbox: Sandbox::new(env, dirs),
        config: config.plugin.config.clone(),
        self_tests: config.plugin.self_tests.clone(),
        states,
    })
}

/// Compiles, links, initialises and self-tests the configured plugin: everything but
/// Kafka. Returns the registry with it live, and an instance for each worker, which
/// keeps its keyed state in its entry of `states`.
pub fn start_plugin(
    config: &Config,
    states: Vec<SharedState>,
) -> anyhow::Result<(Arc<Registry>, Vec<Instance>)> {
    let runtime = Runtime::new()
        .context("starting the WebAssembly runtime")?
        .compile_in_child_process();
    let settings = settings(config, states)?;
    let plugin = config
        .plugin
        .path
        .as_ref()
        .map_or_else(|| "passthrough".to_string(), |p| p.display().to_string());
    Ok(crate::feedback::compiling(&plugin, || {
        Registry::start(
            runtime,
            settings,
            config.plugin.path.as_deref(),
            config.plugin.allowed_dir.clone(),
        )
    })?)
}

/// Binds the admin endpoint, places its token, and serves it in the background.
fn start_admin(
    admin: &AdminOptions,
    config: &Config,
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let listener = handle.block_on(admin::bind(admin.address))?;
    let address = listener.local_addr()?;
    let token = admin::token::for_host(&admin.token, address.port())?;
    if !address.ip().is_loopback() {
        tracing::warn!(%address, "The admin endpoint listens beyond loopback: whoever holds its token can swap the plugin.");
    }
    // Logged once the token is in place: a client started on this line finds it.
    match &token.held {
        admin::token::Held::File(file) => {
            tracing::info!(%address, token_file = %file.display(), "Admin endpoint listening; `sluice plugin swap` reads its token from the file.")
        }
        admin::token::Held::Environment => {
            tracing::info!(%address, "Admin endpoint listening; its token is SLUICE_ADMIN_TOKEN.")
        }
        admin::token::Held::Nowhere => {
            tracing::info!(%address, "Admin endpoint listening, read-only.")
        }
    }
    let guard = admin::Guard {
        address,
        names: admin.names.clone(),
        token,
    };
    let pipeline = admin::console::PipelineInfo {
        delivery: match config.delivery {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::ExactlyOnce => "exactly-once",
        },
        workers: config.parallelism,
        source_topic: config.source.topic.clone(),
        sink_topic: config.sink.topic.clone(),
        group: config.source.group_id.clone(),
        config: admin::console::config_text(config),
        rollback_window_ms: config.plugin.rollback.window.as_millis() as u64,
        uploads: config.plugin.allowed_dir.is_none(),
    };
    handle.spawn(admin::serve(
        listener,
        guard,
        registry.clone(),
        metrics.clone(),
        pipeline,
    ));
    Ok(())
}

/// The source's and the sink's authentication, sharing one failure slot: a refused
/// credential on any client stops the pipeline.
fn client_auth(
    config: &Config,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<(ClientAuth, ClientAuth)> {
    let failure = AuthFailure::new();
    let source_tokens = crate::auth::token_source(&config.source.security, handle)?;
    let source_auth = ClientAuth::new(
        "source",
        &config.source.bootstrap_servers,
        &config.source.security,
        source_tokens.clone(),
        failure.clone(),
    );
    let sink_tokens = if config.sink.security == config.source.security {
        source_tokens
    } else {
        crate::auth::token_source(&config.sink.security, handle)?
    };
    let sink_auth = ClientAuth::new(
        "sink",
        &config.sink.bootstrap_servers,
        &config.sink.security,
        sink_tokens,
        failure,
    );
    Ok((source_auth, sink_auth))
}

/// Runs the pipeline until shutdown or a fatal error.
///
/// With `parallelism` above 1 the host runs that many workers, each on a thread of
/// its own with its own consumer (a member of the group), producer, plugin instance
/// and keyed state; they share the plugin registry, so a swap reaches every worker
/// at its next batch. A fatal error in one stops the others gracefully.
///
/// `hangup`: SIGHUP, installed before anything else so that one during start does not
/// kill the host; `None` runs without a SIGHUP trigger.
///
/// Strategy: the plugin first (everything but Kafka, so a bad plugin is refused before
/// any client connects), then the swap triggers and the admin endpoint, then each
/// worker's clients in turn ([`WorkerSetup`]), then the workers run.
pub fn run(
    config: Config,
    options: &RunOptions,
    shutdown: &Shutdown,
    hangup: Option<tokio::signal::unix::Signal>,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Summary> {
    let workers = config.parallelism;
    let state_limits = state_limits(&config);
    let states: Vec<SharedState> = (0..workers)
        .map(|_| StateStore::shared_with(state_limits))
        .collect();
    let (registry, instances) = start_plugin(&config, states.clone()).context(PluginRefused)?;
    // Compiling can take seconds: a stop asked for meanwhile needs no pipeline.
    if shutdown.requested() {
        tracing::info!("Stopped while the plugin was loading; nothing was read.");
        return Ok(Summary::default());
    }
    let live = registry.live();
    tracing::info!(plugin = %live.plugin.origin, digest = live.plugin.short_digest(), "Plugin loaded.");

    start_swap_triggers(&config, &registry, shutdown, hangup, handle)?;
    let metrics = Arc::new(Metrics::new(workers));
    if let Some(admin) = &options.admin {
        start_admin(admin, &config, &registry, &metrics, handle)?;
    }

    check_fresh(&config, options)?;
    let (source_auth, sink_auth) = client_auth(&config, handle)?;
    let transactional_id =
        transactional_id(&config.source.group_id, &host_instance(&config, options)?);
    if config.delivery == Delivery::ExactlyOnce {
        tracing::info!(%transactional_id, workers, "Exactly-once delivery: each checkpoint is one transaction.");
    }
    let setup = WorkerSetup {
        config: &config,
        registry: &registry,
        metrics: &metrics,
        source_auth: &source_auth,
        sink_auth: &sink_auth,
        fresh: options.fresh.then(FreshStart::default),
        transactional_id,
        changelog: changelog::topic_name(&config.source.group_id),
        shutdown,
        handle,
    };
    let mut pipelines = Vec::with_capacity(workers);
    for (worker, (instance, state)) in instances.into_iter().zip(states).enumerate() {
        pipelines.push(setup.pipeline(worker, instance, state)?);
    }
    tracing::info!(
        source = %config.source.topic,
        sink = %config.sink.topic,
        group = %config.source.group_id,
        workers,
        "Pipeline running."
    );
    if workers == 1 {
        let pipeline = pipelines.pop().expect("one worker");
        return pipeline.run(shutdown);
    }
    run_workers(pipelines, shutdown, Pipeline::run)
}

/// Starts the swap triggers besides the admin endpoint: the file watcher (with
/// `plugin.watch`) and SIGHUP. All of them end in `Registry::propose`.
fn start_swap_triggers(
    config: &Config,
    registry: &Arc<Registry>,
    shutdown: &Shutdown,
    hangup: Option<tokio::signal::unix::Signal>,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<()> {
    if let Some(path) = registry.configured_path()
        && config.plugin.watch
    {
        watch::spawn(registry.clone(), path.to_path_buf(), shutdown.clone())?;
    }
    // The handler was installed before the plugin loaded, so a SIGHUP meanwhile did
    // not kill the host; it is acted on now.
    if let Some(hangup) = hangup {
        handle.spawn(watch::on_sighup(registry.clone(), hangup));
    }
    Ok(())
}

/// Refuses `--fresh` where the startup mode names no place to start without the
/// committed offsets it ignores.
fn check_fresh(config: &Config, options: &RunOptions) -> anyhow::Result<()> {
    if options.fresh
        && config.source.startup
            == (Startup::GroupOffsets {
                fallback: Fallback::Fail,
            })
    {
        anyhow::bail!(
            "--fresh ignores committed offsets, but source.startup is `group-offsets` with startup_fallback `fail`, \
             which names no place to start; set startup_fallback to `earliest` or `latest`"
        );
    }
    Ok(())
}

/// This host's instance name, the last part of its transactional id.
fn host_instance(config: &Config, options: &RunOptions) -> Result<String, InvalidOptions> {
    match (config.delivery, &options.instance) {
        (_, Some(instance)) => Ok(instance.clone()),
        // Only an exactly-once host uses the id; main checked it for one.
        (Delivery::AtLeastOnce, None) => Ok("0".into()),
        (Delivery::ExactlyOnce, None) => {
            instance_id(None, std::env::var("HOSTNAME").ok().as_deref())
        }
    }
}

/// What the workers' set-up shares: the configuration, the live plugin, the clients'
/// credentials and the names every worker derives its own from.
struct WorkerSetup<'a> {
    config: &'a Config,
    registry: &'a Arc<Registry>,
    metrics: &'a Arc<Metrics>,
    source_auth: &'a ClientAuth,
    sink_auth: &'a ClientAuth,
    /// `Some` with `--fresh`.
    fresh: Option<FreshStart>,
    /// The host's; each worker's is derived from it.
    transactional_id: String,
    changelog: String,
    shutdown: &'a Shutdown,
    handle: &'a tokio::runtime::Handle,
}

impl WorkerSetup<'_> {
    /// Worker `worker`'s pipeline around its plugin `instance` and keyed `state`: its
    /// source (a member of the group), its sink, and the checkpointer that joins them.
    /// The first worker also prepares what the workers share on the broker.
    fn pipeline(
        &self,
        worker: usize,
        instance: Instance,
        state: SharedState,
    ) -> anyhow::Result<Pipeline> {
        let config = self.config;
        let (source, partitions) = self.connect_source(worker)?;
        if worker == 0 {
            self.prepare_broker(&source, partitions)?;
        }
        let restorer = Restorer::new(&config.sink, &self.changelog, self.sink_auth)?;
        let tracker = Arc::new(Mutex::new(Tracker::new()));
        let sink = self.connect_sink(worker, partitions, &tracker)?;
        let checkpointer = Arc::new(Mutex::new(
            self.checkpointer(sink, restorer, &tracker, &state),
        ));
        source.attach(checkpointer.clone());
        Ok(Pipeline {
            source,
            transform: TransformStage::new(
                self.registry.clone(),
                worker,
                instance,
                config.plugin.rollback,
                config.sink.dead_letter_topic.is_some(),
                output_limits(config),
            ),
            checkpointer,
            tracker,
            state,
            checkpoint: config.checkpoint,
            provenance_header: config.plugin.provenance_header.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Worker `worker`'s consumer, and the source topic's partition count.
    fn connect_source(&self, worker: usize) -> anyhow::Result<(KafkaSource, i32)> {
        // Static membership: every worker is a member of its own, or they would fence
        // each other.
        let mut source_config = self.config.source.clone();
        if let Some(id) = source_config.kafka.get_mut("group.instance.id") {
            *id = crate::kafka::worker_name(id, worker);
        }
        KafkaSource::connect(
            &source_config,
            self.fresh.clone(),
            self.source_auth.clone(),
            self.metrics.clone(),
            worker,
        )
    }

    /// Once, before any worker's sink starts: fences the transactions of workers a
    /// smaller host no longer runs (exactly-once), and makes sure the changelog topic
    /// exists.
    fn prepare_broker(&self, source: &KafkaSource, partitions: i32) -> anyhow::Result<()> {
        let config = self.config;
        let workers = config.parallelism;
        if config.delivery == Delivery::ExactlyOnce {
            exactly_once::fence_retired_workers(
                config,
                source.consumer(),
                partitions,
                &self.transactional_id,
                workers,
                self.sink_auth,
            )?;
        }
        changelog::ensure_topic(
            &config.sink,
            &self.changelog,
            partitions,
            config.source.connect_timeout,
            self.handle,
            self.sink_auth,
        )?;
        if workers > partitions as usize {
            tracing::warn!(
                workers,
                partitions,
                "More workers than source partitions: some stay idle until partitions are added."
            );
        }
        Ok(())
    }

    /// Worker `worker`'s producer, transactional for exactly-once.
    fn connect_sink(
        &self,
        worker: usize,
        partitions: i32,
        tracker: &Arc<Mutex<Tracker>>,
    ) -> anyhow::Result<KafkaSink> {
        let config = self.config;
        // A restarted host's workers fence their previous runs by these ids.
        let transaction = (config.delivery == Delivery::ExactlyOnce).then(|| TransactionSettings {
            id: crate::kafka::worker_name(&self.transactional_id, worker),
            timeout: exactly_once::transaction_timeout(
                config.checkpoint.interval,
                config.plugin.call_timeout,
            ),
        });
        KafkaSink::connect(
            &config.sink,
            partitions,
            config.source.connect_timeout,
            tracker.clone(),
            transaction.as_ref(),
            self.handle,
            self.sink_auth.clone(),
        )
    }

    /// The checkpointer of one worker, over its `sink` and keyed `state`.
    fn checkpointer(
        &self,
        sink: KafkaSink,
        restorer: Restorer,
        tracker: &Arc<Mutex<Tracker>>,
        state: &SharedState,
    ) -> Checkpointer {
        let config = self.config;
        let mut checkpointer = Checkpointer::new(
            config.delivery,
            sink,
            tracker.clone(),
            state.clone(),
            self.changelog.clone(),
            restorer,
            self.shutdown.clone(),
        );
        if config.delivery == Delivery::ExactlyOnce {
            checkpointer.set_commit_metadata(exactly_once::workers_metadata(
                &self.transactional_id,
                config.parallelism,
            ));
        }
        checkpointer.set_record_failures(
            config.sink.dead_letter_topic.is_some(),
            config.checkpoint.record_attempts,
        );
        checkpointer
    }
}

/// Runs each job (a worker's pipeline) with `run` on a thread of its own until all
/// have stopped, and adds up what they did. A worker that fails (or panics) asks the
/// others to stop gracefully; the first failure is the result.
fn run_workers<J: Send>(
    jobs: Vec<J>,
    shutdown: &Shutdown,
    run: impl Fn(J, &Shutdown) -> anyhow::Result<Summary> + Sync,
) -> anyhow::Result<Summary> {
    let run = &run;
    let results: Vec<anyhow::Result<Summary>> = std::thread::scope(|scope| {
        let running: Vec<_> = jobs
            .into_iter()
            .enumerate()
            .map(|(worker, job)| {
                std::thread::Builder::new()
                    .name(format!("sluice-worker-{worker}"))
                    .spawn_scoped(scope, move || {
                        // A panic is an error too: the others must not run on alone.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            tracing::info_span!("worker", worker).in_scope(|| run(job, shutdown))
                        }))
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("worker {worker} panicked")));
                        if result.is_err() {
                            // The others drain and commit what they did.
                            shutdown.request();
                        }
                        result
                    })
            })
            .collect();
        if running.iter().any(Result::is_err) {
            shutdown.request();
        }
        running
            .into_iter()
            .enumerate()
            .map(|(worker, spawned)| {
                spawned
                    .with_context(|| format!("starting worker {worker}"))?
                    .join()
                    .map_err(|_| anyhow::anyhow!("worker {worker} panicked"))?
            })
            .collect()
    });
    let mut total = Summary::default();
    let mut first_error = None;
    for result in results {
        match result {
            Ok(summary) => total.add(&summary),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A worker's work: fail at once, panic, or run until asked to stop.
    enum Job {
        Fail,
        Panic,
        Run,
    }

    fn work(job: Job, shutdown: &Shutdown) -> anyhow::Result<Summary> {
        match job {
            Job::Fail => anyhow::bail!("worker failed"),
            Job::Panic => panic!("worker panicked on purpose"),
            Job::Run => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !shutdown.requested() {
                    assert!(Instant::now() < deadline, "never asked to stop");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(Summary {
                    records_in: 7,
                    ..Summary::default()
                })
            }
        }
    }

    #[test]
    fn a_stateful_set_pod_name_is_a_stable_instance_and_a_deployments_is_not() {
        assert_eq!(instance_id(Some(" a "), None).unwrap(), "a");
        assert_eq!(instance_id(None, Some("sluice-3")).unwrap(), "sluice-3");
        assert_eq!(instance_id(None, Some("my-app-0")).unwrap(), "my-app-0");
        for host in [
            "sluice-7d4b9c8f6-x2k9p",
            "sluice-7d4b9c8f6-24567",
            "sluice-03",
            "vm",
            "-3",
            "sluice-",
        ] {
            let error = instance_id(None, Some(host)).unwrap_err().to_string();
            assert!(error.contains("--instance"), "{host}: {error}");
        }
        assert!(instance_id(None, None).is_err());
        assert!(instance_id(Some(""), Some("sluice-1")).is_err());
    }

    #[test]
    fn a_failing_worker_stops_the_others_and_its_error_is_the_result() {
        let shutdown = Shutdown::new();
        let result = run_workers(vec![Job::Run, Job::Fail, Job::Run], &shutdown, work);
        assert_eq!(result.unwrap_err().to_string(), "worker failed");
        assert!(shutdown.requested());
    }

    #[test]
    fn a_panicking_worker_stops_the_others_too() {
        let shutdown = Shutdown::new();
        let result = run_workers(vec![Job::Run, Job::Panic], &shutdown, work);
        assert_eq!(result.unwrap_err().to_string(), "worker 1 panicked");
    }

    #[test]
    fn the_workers_counts_add_up_after_a_graceful_stop() {
        let shutdown = Shutdown::new();
        shutdown.request();
        let total = run_workers(vec![Job::Run, Job::Run, Job::Run], &shutdown, work);
        assert_eq!(total.unwrap().records_in, 21);
    }
}
