//! The command line: subcommands and their flags (each with an environment fallback).
//! Subcommands that live in a module of their own own their arguments (`generate`:
//! [`crate::generate::GenerateArgs`]; `plugin new|build|test|inspect`:
//! [`crate::author::command`]); this file composes them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::author;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Run a WebAssembly component between Kafka topics."
)]
pub struct Cli {
    /// Log filter: a level (`info`, `debug`) or a tracing filter. RUST_LOG wins when set.
    #[arg(long, global = true, env = "SLUICE_LOG", default_value = "info")]
    pub log_level: String,

    /// How log lines are written: `text`, or `json` (one object per line with
    /// `timestamp`, `level`, `target`, `message` and every field).
    #[arg(
        long,
        global = true,
        env = "SLUICE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: crate::telemetry::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline until SIGINT/SIGTERM (graceful: drain, flush, commit, exit 0).
    Run(PipelineArgs),
    /// Check a configuration and its plugin without connecting to Kafka.
    Validate(PipelineArgs),
    /// Write stock-price records like the original generator of the Flink job.
    Generate(crate::generate::GenerateArgs),
    /// Write plugins (new, build, test, inspect) and talk to a running host about its
    /// plugin (swap, status).
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a component and make it live in a running host, between two batches.
    Swap {
        /// The component (.wasm) to swap in.
        path: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the live plugin version and the history of swaps (JSON).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The authoring commands, which need no running host (see `author::command`).
    #[command(flatten)]
    Author(author::command::AuthorCommand),
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The running host's admin endpoint.
    #[arg(long, env = "SLUICE_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// The file holding the host's admin token, when the host was started with one
    /// (default: the file the host writes for its port; `SLUICE_ADMIN_TOKEN` wins).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

/// Where the admin endpoint listens unless told otherwise: loopback only.
const DEFAULT_ADMIN: &str = "127.0.0.1:9464";

/// `--admin` of `run`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct AdminAddress(pub Option<SocketAddr>);

impl std::str::FromStr for AdminAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(AdminAddress(None));
        }
        text.parse()
            .map(|a| AdminAddress(Some(a)))
            .map_err(|e| format!("`{text}` is not `off` or an address like 127.0.0.1:9464: {e}"))
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false, id = "source")]
pub struct ConfigArgs {
    /// A sluice.toml pipeline file.
    #[arg(long, env = "SLUICE_CONFIG", group = "source")]
    pub config: Option<PathBuf>,

    /// A Managed Flink application_properties.json to run as is.
    #[arg(long, env = "SLUICE_PROPERTIES", group = "source")]
    pub properties: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// A plugin component (.wasm) to use instead of the configured one. Without either,
    /// the built-in pass-through runs.
    #[arg(long, env = "SLUICE_PLUGIN")]
    pub plugin: Option<PathBuf>,

    /// Workers in this host, overriding the file's `parallelism` (a properties file has
    /// none: Managed Flink sets it outside the application).
    #[arg(long, env = "SLUICE_PARALLELISM", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallelism: Option<u16>,

    /// Bootstrap servers that override the properties file's (as on Managed Flink).
    #[arg(long, env = "BOOTSTRAP_SERVERS", hide_env_values = true)]
    pub bootstrap_servers: Option<String>,

    /// Where the admin endpoint (plugin swap and status) listens, or `off`. An address
    /// beyond loopback needs an explicit token (SLUICE_ADMIN_TOKEN or
    /// --admin-token-file).
    #[arg(long, env = "SLUICE_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: AdminAddress,

    /// The admin token's file: read if it exists (a mounted Secret), else written with
    /// a new random token, mode 0600. Default: `$XDG_RUNTIME_DIR/sluice/admin-PORT.token`
    /// or `~/.local/state/sluice/admin-PORT.token`, new at each start. A fixed token in
    /// `SLUICE_ADMIN_TOKEN` wins.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Host names clients reach the admin endpoint by, besides its address and
    /// `localhost` (repeatable, or comma-separated). Requests naming another host are
    /// refused (DNS rebinding).
    #[arg(long, env = "SLUICE_ADMIN_HOST", value_delimiter = ',')]
    pub admin_host: Vec<String>,

    /// This host's name within its application (exactly-once: part of its stable
    /// transactional id, so a restarted host fences its predecessor). Each host of one
    /// application needs its own, stable across restarts. Default with exactly-once: a
    /// StatefulSet pod name in HOSTNAME (`NAME-ORDINAL`, e.g. `sluice-2`); otherwise it
    /// must be given.
    #[arg(long, env = "SLUICE_INSTANCE")]
    pub instance: Option<String>,

    /// Start fresh: ignore the group's committed offsets and the saved state, and read
    /// from the configured startup mode (like running without a snapshot).
    #[arg(long)]
    pub fresh: bool,
}
