//! The hot-swap benchmark (`swap-bench`): a producer writes records at a fixed rate to
//! the input of `sluice run` (plugin file watched) while the plugin file is replaced N
//! times, alternating two test plugins that tag every output with `tag: A` or `tag: B`;
//! a consumer notes when each output arrives and which tag it carries. With
//! `--cold-python`, the one swap is to a Python plugin the host has never compiled
//! (its compilation cache empty), and the figure is the longest worker turn while the
//! optimizing compile runs in the background.
//!
//! [`measure`] runs the host and the load and samples the host's admin endpoint
//! (`GET /status`, `GET /ready`, `GET /api/console`); [`analyse`] turns what was
//! collected into per-swap figures; [`report`] prints them as Markdown.
//!
//! One figure still comes from the host's log, as no endpoint has it: how long a
//! worker took to adopt a version (`workers[].adopt_us` of `GET /status`); see
//! [`measure::adopt_durations`].

pub mod analyse;
pub mod measure;
pub mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

pub const KEY_LEN: usize = 16;

pub const VALUE_LEN: usize = 100;

/// How long the host may take to stop after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one swap may take to show in the output before the run is abandoned.
pub const SWAP_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause window starts this long before the file change...
pub const WINDOW_BEFORE_US: i64 = 200_000;

/// ...and ends this long after the first output of the new version.
pub const WINDOW_AFTER_US: i64 = 500_000;

/// The close-up window: this long either side of the first output of the new version.
pub const SWITCH_US: i64 = 50_000;

/// Output received this soon after the first is start-up, not steady load.
pub const WARM_UP_US: i64 = 2_000_000;

/// Each swap's control window (as long as its swap window, no swap in it) ends this
/// long before the file change...
pub const CONTROL_LEAD_US: i64 = 300_000;

/// ...and starts no sooner than this after the previous swap's window.
pub const CONTROL_CLEARANCE_US: i64 = 100_000;

/// Header the test plugins add to every output.
pub const TAG_HEADER: &str = "tag";

/// Header naming the plugin version of every output.
pub const PROVENANCE_HEADER: &str = "sluice-plugin";

/// How often the steal-time counter is read.
pub const STEAL_SAMPLE: Duration = Duration::from_millis(2);

#[derive(Debug, Parser)]
#[command(
    name = "swap-bench",
    about = "Benchmark Sluice's hot swap under steady load on a real broker.",
    long_about = "Benchmark Sluice's hot swap under steady load on a real broker.\n\n\
        Build the host, this program and the two tag plugins first:\n  \
        cargo build --release -p sluice-host -p sluice-bench\n  \
        cargo build --release --target wasm32-wasip2 -p sluice-test-tag-a -p sluice-test-tag-b\n\
        then run:\n  cargo run --release -p sluice-bench --bin swap-bench -- --swaps 20 --rate 20000\n\n\
        The cold-Python mode:\n  target/release/swap-bench --cold-python --rate 5000\n\n\
        The broker must be up (scripts/kafka.sh start). The run creates its own input and \
        output topics and deletes them at the end."
)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap_servers: String,
    /// Plugin file changes (alternating tag-b, tag-a, tag-b, ...).
    #[arg(long, default_value_t = 20)]
    pub swaps: usize,
    /// Records per second written to the input topic for the whole run.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Milliseconds from one file change to the next. A swap never starts before the
    /// previous one's pause window has ended.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Seconds of steady load before the first swap (the baseline, warm-up included).
    #[arg(long, default_value_t = 10)]
    pub settle_s: u64,
    /// Seconds of steady load after the last swap's window (more baseline).
    #[arg(long, default_value_t = 5)]
    pub tail_s: u64,
    /// `linger.ms` of this program's input producer: how long it holds records to
    /// batch them, which shows up as gaps in the output. The default is the Kafka
    /// clients' own (librdkafka's and Java's), as an upstream producer would have it;
    /// at 1 ms the broker used about 1.7 times the CPU (20 000 records/s, 2 cores).
    #[arg(long, default_value_t = 5)]
    pub producer_linger_ms: u64,
    /// `fetch.wait.max.ms` of this program's output consumer.
    #[arg(long, default_value_t = 10)]
    pub consumer_fetch_wait_ms: u64,
    /// The `sluice` binary [default: `sluice` next to this program, i.e. target/release/sluice].
    #[arg(long)]
    pub sluice: Option<PathBuf>,
    /// The tag-a plugin [default: target/wasm32-wasip2/release/sluice_test_tag_a.wasm].
    #[arg(long)]
    pub tag_a: Option<PathBuf>,
    /// The tag-b plugin [default: target/wasm32-wasip2/release/sluice_test_tag_b.wasm].
    #[arg(long)]
    pub tag_b: Option<PathBuf>,
    /// The broker's garbage-collection log (`-Xlog:gc` with wall-clock times, as
    /// scripts/kafka.sh writes it), to tell the broker's own pauses apart
    /// [default: `$SLUICE_KAFKA_HOME/gc.log`, else `.kafka/gc.log`, if present].
    #[arg(long)]
    pub broker_gc_log: Option<PathBuf>,
    /// Also write every output's times, sequence number, partition and tag to this CSV
    /// file, and each file change's time to `<PATH>.swaps.csv`, for a closer look.
    #[arg(long)]
    pub dump_csv: Option<PathBuf>,
    /// Give every candidate bytes the host has not seen (a custom section naming the
    /// swap is appended), so every swap compiles, as a new release of a plugin does.
    /// Without it, swaps from the third on return to versions compiled before.
    #[arg(long)]
    pub new_build_each_swap: bool,
    /// Before each file change, compile the candidate into a compilation cache that
    /// the host shares, with `sluice plugin inspect`, as a deploy step can. The swap
    /// then loads the compiled version. Without it the host's cache is off.
    #[arg(long)]
    pub precompile: bool,
    /// Keep the host's log here, written at this `RUST_LOG` filter
    /// (`--host-log-level`); by default it is deleted after a successful run.
    #[arg(long)]
    pub host_log: Option<PathBuf>,
    /// The host's log filter with `--host-log`, e.g. `sluice_host=debug` for the
    /// pipeline's slow turns.
    #[arg(long, default_value = "info")]
    pub host_log_level: String,
    /// Instead of the tag swaps: one swap, from tag-a to a Python plugin the host has
    /// never compiled (an empty compilation cache: `XDG_CACHE_HOME` is a fresh
    /// directory), and the longest worker turn while its optimizing compile runs in
    /// the background. The component is built from bench/plugins/passthrough-py with
    /// `sluice plugin build` (componentize-py from scripts/install.sh) unless given.
    #[arg(long)]
    pub cold_python: bool,
    /// The Python component for `--cold-python` [default: built from
    /// bench/plugins/passthrough-py].
    #[arg(long)]
    pub python_plugin: Option<PathBuf>,
    /// How often the admin endpoint is sampled during the load, in ms.
    #[arg(long, default_value_t = 5)]
    pub status_poll_ms: u64,
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// One output record as this program received it.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// When `poll` handed it to this program (µs since the epoch).
    pub at_us: i64,
    /// When the broker appended it to the output topic (ms since the epoch).
    pub append_ms: i64,
    /// When the input producer sent it (µs since the epoch, from the value).
    pub sent_us: i64,
    pub seq: u64,
    pub partition: i32,
    /// `A`, `B`, 0 without a tag header, `?` with more than one or another value.
    pub tag: u8,
    pub has_provenance: bool,
}

/// Index of a tag in per-tag arrays: A is 0, B is 1.
pub fn tag_index(tag: u8) -> Option<usize> {
    match tag {
        b'A' => Some(0),
        b'B' => Some(1),
        _ => None,
    }
}

/// What the input producer did.
pub struct Produced {
    pub sent: u64,
    /// Most records that were due but not yet handed to the client at one time.
    pub max_backlog: u64,
}

/// One plugin file change.
#[derive(Debug, Clone)]
pub struct Swap {
    /// The tag the new plugin adds.
    pub to: u8,
    /// Just before the rename over the watched file (µs since the epoch).
    pub renamed_us: i64,
    /// The version the registry should publish for it.
    pub expected_version: u64,
    /// `live.version` and `live.since` from `GET /status` once the new tag was seen.
    pub status_version: Option<u64>,
    pub since_us: Option<i64>,
}

/// Everything one run collected.
pub struct Run {
    pub records: Vec<Received>,
    pub not_append_time: u64,
    pub produced: Produced,
    pub input_total: i64,
    pub output_total: i64,
    pub swaps: Vec<Swap>,
    /// Producer start and stop (µs since the epoch).
    pub load_from_us: i64,
    pub load_until_us: i64,
    /// The admin endpoint's answers during the load, in order.
    pub samples: Vec<StatusSample>,
    /// When every worker first ran each version, from `samples` (µs since the epoch).
    pub adopted_us: HashMap<u64, i64>,
    /// When `GET /status` first showed each version, live, on optimized code, for
    /// versions that went live on baseline code (µs since the epoch).
    pub optimized_us: HashMap<u64, i64>,
    /// How long a worker took to adopt each version, in µs: from the host's log.
    pub adopt_took_us: HashMap<u64, f64>,
    /// The broker's pauses during the run: (start, end) in µs since the epoch.
    pub broker_pauses: Vec<(i64, i64)>,
    /// The local broker's CPU priority (`scripts/kafka.sh`, `SLUICE_KAFKA_NICE`), when
    /// its process is found.
    pub broker_priority: Option<String>,
    /// CPU time the hypervisor gave to others while this machine's work waited (steal
    /// time): when the counter was seen to grow (µs since the epoch), and by how many µs.
    pub stolen: Vec<(i64, i64)>,
    /// `swaps`, `rejections` and `rollbacks` from the final `GET /status`.
    pub final_counts: (u64, u64, u64),
    pub host_exit: i32,
    /// The one swap was to a cold Python candidate (`--cold-python`).
    pub cold_python: bool,
}

/// One reading of the host's admin endpoint during the load.
#[derive(Debug, Clone, Copy)]
pub struct StatusSample {
    /// When the answers arrived (µs since the epoch).
    pub at_us: i64,
    /// `live.version` and whether `live.code` is `optimized` (`GET /status`).
    pub live_version: u64,
    pub optimized: bool,
    /// The oldest version any worker runs (`workers[].version` of `GET /status`).
    pub workers_version: u64,
    /// The longest time since any worker last finished a turn of its loop
    /// (`workers[].last_turn_ms_ago` of `GET /ready`), in ms: a turn in progress for
    /// at least this long.
    pub turn_in_progress_ms: Option<u64>,
    /// The longest time a worker on `workers_version` took to adopt it
    /// (`workers[].adopt_us` of `GET /status`), µs.
    pub adopt_us: Option<u64>,
}

impl Args {
    /// How often the admin endpoint is sampled.
    pub fn status_poll(&self) -> Duration {
        Duration::from_millis(self.status_poll_ms.max(1))
    }
}
