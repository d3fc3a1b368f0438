//! Wiring: from a validated configuration to a running pipeline.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::checkpoint::Tracker;
use crate::config::{Config, ConfigSource, Invalid};
use crate::pipeline::{Pipeline, Summary};
use crate::plugin::Plugin;
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

fn limits(config: &Config) -> Limits {
    Limits {
        max_memory_bytes: config.plugin.max_memory_bytes,
        call_timeout: config.plugin.call_timeout,
    }
}

/// Compiles, links and initialises the configured plugin: everything but Kafka.
pub fn start_plugin(config: &Config) -> anyhow::Result<(Plugin, Instance)> {
    let runtime = Runtime::new().context("starting the WebAssembly runtime")?;
    let plugin = Plugin::load(&runtime, config.plugin.path.as_deref())?;
    let instance = plugin.start(limits(config), &config.plugin.config)?;
    Ok((plugin, instance))
}

/// Runs the pipeline until shutdown or a fatal error.
pub fn run(
    config: Config,
    shutdown: &Shutdown,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Summary> {
    let (plugin, instance) = start_plugin(&config)?;
    tracing::info!(plugin = %plugin.origin, digest = plugin.short_digest(), "Plugin loaded.");

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
        transform: TransformStage::new(plugin, instance),
        sink,
        tracker,
        checkpoint: config.checkpoint,
    }
    .run(shutdown)
}
