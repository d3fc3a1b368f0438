//! Wiring: from a validated configuration to a running pipeline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::admin;
use crate::checkpoint::Tracker;
use crate::config::{Config, ConfigSource, Invalid};
use crate::pipeline::{Pipeline, Summary};
use crate::plugin::registry::{InstanceSettings, Registry};
use crate::plugin::watch;
use crate::runtime::{DirGrant, Instance, Limits, Runtime, Sandbox};
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

fn settings(config: &Config) -> anyhow::Result<InstanceSettings> {
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
    })
}

/// Compiles, links, initialises and self-tests the configured plugin: everything but
/// Kafka. Returns the registry with it live, and an instance for the worker.
pub fn start_plugin(config: &Config) -> anyhow::Result<(Arc<Registry>, Instance)> {
    let runtime = Runtime::new().context("starting the WebAssembly runtime")?;
    Ok(Registry::start(
        runtime,
        settings(config)?,
        config.plugin.path.as_deref(),
    )?)
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
    let (source, partitions) = KafkaSource::connect(&config.source, tracker.clone())?;
    let sink = KafkaSink::connect(
        &config.sink,
        partitions,
        config.source.connect_timeout,
        tracker.clone(),
        handle,
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
