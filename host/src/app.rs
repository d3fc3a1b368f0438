//! Wiring: from a validated configuration to a running pipeline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::admin;
use crate::auth::msk_iam::TokenSource;
use crate::auth::{AuthFailure, ClientAuth};
use crate::checkpoint::Tracker;
use crate::config::security::{Sasl, Security};
use crate::config::{Config, ConfigSource, Invalid};
use crate::pipeline::{Pipeline, Summary};
use crate::plugin::registry::{InstanceSettings, Registry};
use crate::plugin::watch;
use crate::runtime::{Instance, Limits, Runtime};
use crate::shutdown::Shutdown;
use crate::sink::kafka::KafkaSink;
use crate::source::kafka::KafkaSource;
use crate::transform::TransformStage;

/// Reads and validates the configuration; `plugin` replaces the configured plugin.
pub fn load_config(
    source: &ConfigSource,
    plugin: Option<PathBuf>,
    bootstrap_override: Option<&str>,
) -> Result<Config, Invalid> {
    let mut config = source.load(bootstrap_override)?;
    if let Some(path) = plugin {
        config.plugin.path = Some(path);
    }
    Ok(config)
}

/// Runtime options from the command line.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where the admin endpoint listens; `None`: no endpoint.
    pub admin: Option<SocketAddr>,
}

fn settings(config: &Config) -> InstanceSettings {
    InstanceSettings {
        limits: Limits {
            max_memory_bytes: config.plugin.max_memory_bytes,
            call_timeout: config.plugin.call_timeout,
        },
        config: config.plugin.config.clone(),
        self_tests: config.plugin.self_tests.clone(),
    }
}

/// Compiles, links, initialises and self-tests the configured plugin: everything but
/// Kafka. Returns the registry with it live, and an instance for the worker.
pub fn start_plugin(config: &Config) -> anyhow::Result<(Arc<Registry>, Instance)> {
    let runtime = Runtime::new().context("starting the WebAssembly runtime")?;
    Ok(Registry::start(
        runtime,
        settings(config),
        config.plugin.path.as_deref(),
    )?)
}

/// The MSK IAM token source for a client, when it uses MSK IAM.
fn token_source(
    security: &Security,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Option<Arc<TokenSource>>> {
    match &security.sasl {
        Some(Sasl::MskIam(iam)) => Ok(Some(Arc::new(
            TokenSource::new(iam, handle).context("loading the AWS configuration for MSK IAM")?,
        ))),
        _ => Ok(None),
    }
}

/// Runs the pipeline until shutdown or a fatal error.
pub fn run(
    config: Config,
    options: &RunOptions,
    shutdown: &Shutdown,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Summary> {
    let (registry, instance) = start_plugin(&config)?;
    let live = registry.live();
    tracing::info!(plugin = %live.plugin.origin, digest = live.plugin.short_digest(), "Plugin loaded.");

    // Swap triggers: all of them end in Registry::propose.
    if let Some(path) = registry.configured_path()
        && config.plugin.watch
    {
        watch::spawn(registry.clone(), path.to_path_buf(), shutdown.clone())?;
    }
    handle.spawn(watch::on_sighup(registry.clone()));
    if let Some(address) = options.admin {
        let listener = handle.block_on(admin::bind(address))?;
        handle.spawn(admin::serve(listener, registry.clone()));
    }

    let tracker = Arc::new(Mutex::new(Tracker::new()));
    // One failure slot: a refused credential on either side stops the pipeline.
    let failure = AuthFailure::new();
    let source_tokens = token_source(&config.source.security, handle)?;
    let source_auth = ClientAuth::new(
        "source",
        &config.source.bootstrap_servers,
        &config.source.security,
        source_tokens.clone(),
        failure.clone(),
    );
    let (source, partitions) = KafkaSource::connect(&config.source, tracker.clone(), source_auth)?;
    let sink_tokens = if config.sink.security == config.source.security {
        source_tokens
    } else {
        token_source(&config.sink.security, handle)?
    };
    let sink = KafkaSink::connect(
        &config.sink,
        partitions,
        config.source.connect_timeout,
        tracker.clone(),
        handle,
        || {
            ClientAuth::new(
                "sink",
                &config.sink.bootstrap_servers,
                &config.sink.security,
                sink_tokens.clone(),
                failure.clone(),
            )
        },
    )?;
    tracing::info!(
        source = %config.source.topic,
        sink = %config.sink.topic,
        group = %config.source.group_id,
        partitions,
        "Pipeline running."
    );
    Pipeline {
        source,
        transform: TransformStage::new(registry, instance, config.plugin.rollback),
        sink,
        tracker,
        checkpoint: config.checkpoint,
        provenance_header: config.plugin.provenance_header.clone(),
    }
    .run(shutdown)
}
