//! The pipeline configuration: one validated [`Config`], read from a `sluice.toml`
//! file or imported from a Managed Flink `application_properties.json`.
//!
//! Both formats are first read into the loose [`raw::RawConfig`], then checked in one
//! pass that reports every problem with its key path, so a user fixes a file in one
//! round instead of one error at a time.

mod properties;
mod raw;
mod sandbox;
pub mod security;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::RawConfig;
pub use sandbox::{DirGrantConfig, SandboxConfig};
pub use security::Security;

/// The newest configuration file version this host reads.
pub const CONFIG_VERSION: i64 = 1;

/// A validated pipeline configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub delivery: Delivery,
    /// Workers in this host, each with its own consumer (in the group), producer,
    /// plugin instance and keyed state.
    pub parallelism: usize,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    pub plugin: PluginConfig,
    pub checkpoint: CheckpointConfig,
}

/// The delivery guarantee of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Offsets are committed once every output derived from them is acknowledged; a
    /// crash may write some outputs twice.
    AtLeastOnce,
    /// Each checkpoint is one Kafka transaction holding the outputs, the state
    /// changes and the offsets: `read_committed` consumers see each input's outputs once.
    ExactlyOnce,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub group_id: String,
    pub startup: Startup,
    pub batch_max_records: usize,
    /// How long to wait for the cluster to answer at start before giving up.
    pub connect_timeout: Duration,
    /// Extra librdkafka consumer settings, passed through.
    pub kafka: BTreeMap<String, String>,
    pub security: Security,
}

/// Where reading starts for a partition that has no committed offset. Committed
/// progress always wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    Earliest,
    Latest,
    GroupOffsets { fallback: Fallback },
    Timestamp { millis: i64 },
}

/// What `group-offsets` does for a partition the group never committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    Earliest,
    Latest,
    Fail,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub partitioning: Partitioning,
    pub create_topic: Option<TopicSpec>,
    /// Named plugin outputs and the topic each one writes to.
    pub outputs: BTreeMap<String, String>,
    /// Where the input records the plugin fails go, with the reason in headers. Without
    /// one, a failed record stops the pipeline.
    pub dead_letter_topic: Option<String>,
    /// Extra librdkafka producer settings, passed through.
    pub kafka: BTreeMap<String, String>,
    pub security: Security,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// Each output goes to its input's partition number.
    Same,
    /// murmur2 of the key, as Java and kafka-python choose.
    KeyHash,
    /// librdkafka's default partitioner.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// `None`: as many partitions as the source topic.
    pub partitions: Option<i32>,
    pub replication_factor: i32,
}

#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `None`: the built-in pass-through.
    pub path: Option<PathBuf>,
    pub config: Vec<(String, String)>,
    pub max_memory_bytes: usize,
    pub call_timeout: Duration,
    /// Swap in the plugin file when it changes on disk.
    pub watch: bool,
    /// The directory (canonical) a component named by an admin swap request must be
    /// in; `None`: anywhere the host can read.
    pub allowed_dir: Option<PathBuf>,
    /// A header added to every output, naming the plugin version that produced it.
    pub provenance_header: Option<String>,
    /// Records every candidate must handle as expected before it goes live.
    pub self_tests: Vec<SelfTest>,
    pub rollback: Rollback,
    /// Environment variables and read-only directories the plugin is granted.
    pub sandbox: SandboxConfig,
}

/// One self-test record and, optionally, the values it must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTest {
    pub key: Option<String>,
    pub value: Option<String>,
    /// `None`: the record must only not fail or trap.
    pub expect_values: Option<Vec<String>>,
}

/// When a newly swapped version is reverted automatically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollback {
    /// How long after going live a version is watched.
    pub window: Duration,
    /// Share of records (0 to 1) a version may fail within the window.
    pub max_error_rate: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct CheckpointConfig {
    pub interval: Duration,
    pub min_pause: Duration,
}

/// One problem in a configuration, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone)]
pub struct Invalid {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "{} has {count} problem{}:",
            self.file.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Where a configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A `sluice.toml` file.
    Toml(PathBuf),
    /// A Managed Flink `application_properties.json` file.
    Properties(PathBuf),
}

impl ConfigSource {
    pub fn path(&self) -> &Path {
        match self {
            ConfigSource::Toml(path) | ConfigSource::Properties(path) => path,
        }
    }

    /// Reads and validates the configuration. `bootstrap_override` is the
    /// `BOOTSTRAP_SERVERS` environment variable, which wins in a properties import
    /// as it does for the Managed Flink application.
    pub fn load(&self, bootstrap_override: Option<&str>) -> Result<Config, Invalid> {
        let invalid = |message: String| Invalid {
            file: self.path().to_path_buf(),
            problems: vec![Problem {
                path: "(file)".into(),
                message,
            }],
        };
        let text = std::fs::read_to_string(self.path())
            .map_err(|e| invalid(format!("cannot read the file: {e}")))?;
        let (raw, mut problems) = match self {
            ConfigSource::Toml(_) => raw::parse_toml(&text).map_err(invalid)?,
            ConfigSource::Properties(_) => {
                properties::parse(&text, bootstrap_override).map_err(invalid)?
            }
        };
        let config = raw.validate(&mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(Invalid {
                file: self.path().to_path_buf(),
                problems,
            }),
        }
    }
}
