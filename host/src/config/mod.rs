//! The pipeline configuration: one validated [`Config`], read from a `sluice.toml`
//! file or imported from a Managed Flink `application_properties.json`.
//!
//! Both formats are first read into the loose [`raw::RawConfig`], then checked in one
//! pass that reports every problem with its key path, so a user fixes a file in one
//! round instead of one error at a time.

mod properties;
mod raw;
mod sandbox;
pub(crate) mod security;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandbox::SandboxConfig;
use security::Security;

/// The newest configuration file version this host reads.
const CONFIG_VERSION: i64 = 1;

/// A validated pipeline configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub delivery: Delivery,
    /// Workers in this host, each with its own consumer (in the group), producer,
    /// plugin instance and keyed state.
    pub parallelism: usize,
    pub source: SourceConfig,
    pub sink: SinkConfig,
    pub(crate) plugin: PluginConfig,
    pub(crate) checkpoint: CheckpointConfig,
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
    pub(crate) bootstrap_servers: String,
    pub topic: String,
    pub(crate) group_id: String,
    pub(crate) startup: Startup,
    pub(crate) batch_max_records: usize,
    /// How long to wait for the cluster to answer at start before giving up.
    pub(crate) connect_timeout: Duration,
    /// Extra librdkafka consumer settings, passed through.
    pub(crate) kafka: BTreeMap<String, String>,
    pub(crate) security: Security,
}

/// Where reading starts for a partition that has no committed offset. Committed
/// progress always wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Startup {
    Earliest,
    Latest,
    GroupOffsets { fallback: Fallback },
    Timestamp { millis: i64 },
}

/// What `group-offsets` does for a partition the group never committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    Earliest,
    Latest,
    Fail,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub(crate) bootstrap_servers: String,
    pub topic: String,
    pub(crate) partitioning: Partitioning,
    pub(crate) create_topic: Option<TopicSpec>,
    /// Named plugin outputs and the topic each one writes to.
    pub(crate) outputs: BTreeMap<String, String>,
    /// Where the input records the plugin fails go, with the reason in headers. Without
    /// one, a failed record stops the pipeline.
    pub dead_letter_topic: Option<String>,
    /// Extra librdkafka producer settings, passed through.
    pub(crate) kafka: BTreeMap<String, String>,
    pub(crate) security: Security,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partitioning {
    /// Each output goes to its input's partition number.
    Same,
    /// murmur2 of the key, as Java and kafka-python choose.
    KeyHash,
    /// librdkafka's default partitioner.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicSpec {
    /// `None`: as many partitions as the source topic.
    pub(crate) partitions: Option<i32>,
    pub(crate) replication_factor: i32,
}

#[derive(Debug, Clone)]
pub(crate) struct PluginConfig {
    /// `None`: the built-in pass-through.
    pub(crate) path: Option<PathBuf>,
    pub(crate) config: Vec<(String, String)>,
    pub(crate) max_memory_bytes: usize,
    pub(crate) call_timeout: Duration,
    /// Outputs one input record may have.
    pub(crate) max_outputs_per_record: u32,
    /// Bytes of all outputs of one batch.
    pub(crate) max_batch_output_bytes: u64,
    /// Bytes (keys and values) of the keyed state of one input partition.
    pub(crate) max_state_bytes_per_partition: u64,
    /// Swap in the plugin file when it changes on disk.
    pub(crate) watch: bool,
    /// The directory (canonical) a component named by an admin swap request must be
    /// in; `None`: anywhere the host can read.
    pub(crate) allowed_dir: Option<PathBuf>,
    /// A header added to every output, naming the plugin version that produced it.
    pub(crate) provenance_header: Option<String>,
    /// Records every candidate must handle as expected before it goes live.
    pub(crate) self_tests: Vec<SelfTest>,
    pub(crate) rollback: Rollback,
    /// Environment variables and read-only directories the plugin is granted.
    pub(crate) sandbox: SandboxConfig,
}

/// One self-test record and, optionally, the values it must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SelfTest {
    pub(crate) key: Option<String>,
    pub(crate) value: Option<String>,
    /// `None`: the record must only not fail or trap.
    pub(crate) expect_values: Option<Vec<String>>,
}

/// When a newly swapped version is reverted automatically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rollback {
    /// How long after going live a version is watched.
    pub(crate) window: Duration,
    /// Share of records (0 to 1) a version may fail within the window.
    pub(crate) max_error_rate: f64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckpointConfig {
    pub(crate) interval: Duration,
    pub(crate) min_pause: Duration,
    /// How often the same failure of the same input record (its output refused by the
    /// sink broker, an unmapped output name) is retried before it is that record's
    /// failure.
    pub(crate) record_attempts: u32,
}

/// What a turn of the worker may take besides running its batch: restarting an
/// instance, handing outputs over, a checkpoint. Counted in the checks of the
/// worst case against the group's poll interval and the transaction timeout.
pub(crate) const TURN_SLACK_MS: i64 = 10_000;

/// One problem in a configuration, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    path: String,
    message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone)]
pub struct Invalid {
    file: PathBuf,
    problems: Vec<Problem>,
}

/// The most problems printed; the rest are counted. Enough to fix a file in one round,
/// bounded for a file that is not a pipeline file at all.
const MAX_PROBLEMS_SHOWN: usize = 50;
/// The longest key path or message printed, in characters.
const MAX_PROBLEM_TEXT: usize = 300;

/// `text`, cut to [`MAX_PROBLEM_TEXT`] characters.
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_PROBLEM_TEXT) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text.into(),
    }
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
        for problem in self.problems.iter().take(MAX_PROBLEMS_SHOWN) {
            write!(
                f,
                "\n  - {}: {}",
                bounded(&problem.path),
                bounded(&problem.message)
            )?;
        }
        if count > MAX_PROBLEMS_SHOWN {
            write!(f, "\n  - and {} more", count - MAX_PROBLEMS_SHOWN)?;
        }
        Ok(())
    }
}

/// The largest configuration file read. A pipeline file is a few kilobytes; reading a
/// file of any size would let a wrong path (a log, an image) take gigabytes of memory.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a configuration file of at most [`MAX_CONFIG_BYTES`]: checked on the open
/// file before reading (a regular file's size), and while reading (a pipe's).
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let too_large = |size: String| {
        format!(
            "the file is {size} bytes; a configuration file may have at most {MAX_CONFIG_BYTES} bytes (1 MiB); check the path"
        )
    };
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if metadata.is_dir() {
        return Err("is a directory; name the configuration file".into());
    }
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(too_large(metadata.len().to_string()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(format!("more than {MAX_CONFIG_BYTES}")));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (byte {} is not)",
            e.utf8_error().valid_up_to()
        )
    })
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
    pub(crate) fn load(&self, bootstrap_override: Option<&str>) -> Result<Config, Invalid> {
        let invalid = |message: String| Invalid {
            file: self.path().to_path_buf(),
            problems: vec![Problem {
                path: "(file)".into(),
                message,
            }],
        };
        let text = read_bounded(self.path()).map_err(invalid)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_size_cap_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        let file = std::fs::File::create(&path).unwrap();
        // Sparse: the check must not read it.
        file.set_len(100 * MAX_CONFIG_BYTES).unwrap();
        let invalid = ConfigSource::Toml(path.clone()).load(None).unwrap_err();
        let text = invalid.to_string();
        assert!(text.contains("at most 1048576 bytes (1 MiB)"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        std::fs::write(&path, "version = 1\n").unwrap();
        assert!(
            !ConfigSource::Toml(path)
                .load(None)
                .unwrap_err()
                .to_string()
                .contains("1 MiB")
        );
    }

    #[test]
    fn only_the_first_problems_are_printed_and_the_rest_counted() {
        let problems = (0..120)
            .map(|i| Problem {
                path: format!("k{i}"),
                message: "x".repeat(if i == 0 { 10_000 } else { 3 }),
            })
            .collect();
        let text = Invalid {
            file: "f.toml".into(),
            problems,
        }
        .to_string();
        assert!(text.starts_with("f.toml has 120 problems:"));
        assert!(text.ends_with("\n  - and 70 more"), "{text}");
        assert_eq!(text.lines().count(), 52);
        assert!(text.len() < 2_000, "{} bytes", text.len());
    }
}
