//! The `sluice` binary: parses the command line, runs a subcommand, and turns its
//! outcome into an exit code (0 success, 1 failure at run time, 2 invalid input).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use sluice_host::cli::{Cli, Command, PipelineArgs, PluginCommand};
use sluice_host::config::{Config, ConfigSource, Delivery};
use sluice_host::generate::GenerateArgs;
use sluice_host::plugin::registry::SwapEvent;
use sluice_host::runtime::child as compiler_child;
use sluice_host::shutdown::{EXIT_FAILURE, EXIT_INVALID, Shutdown, Signals, watch_signals};
use sluice_host::state::StateStore;
use sluice_host::telemetry::LogFormat;
use sluice_host::{admin, app, author, generate, telemetry};

fn config_source(args: &PipelineArgs) -> ConfigSource {
    match (&args.config.config, &args.config.properties) {
        (Some(path), _) => ConfigSource::Toml(path.clone()),
        (None, Some(path)) => ConfigSource::Properties(path.clone()),
        (None, None) => unreachable!("clap requires one of --config and --properties"),
    }
}

/// Writes an error that ends the command to stderr: as a log line with `--log-format
/// json`, so that every line of stderr stays one JSON object, else as `error: ...`.
fn report(format: LogFormat, message: &str) {
    match format {
        LogFormat::Json => tracing::error!("{message}"),
        LogFormat::Text => eprintln!("error: {message}"),
    }
}

/// Reads and validates the configuration named on the command line; every problem is
/// printed and the exit code for invalid input returned.
fn load(args: &PipelineArgs, format: LogFormat) -> Result<(ConfigSource, Config), ExitCode> {
    let source = config_source(args);
    match app::load_config(
        &source,
        args.plugin.clone(),
        args.parallelism,
        args.bootstrap_servers.as_deref(),
    ) {
        Ok(config) => Ok((source, config)),
        Err(invalid) => {
            report(format, &invalid.to_string());
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// The run options of the command line, checked: what cannot work is refused before
/// anything starts.
fn run_options(
    args: &PipelineArgs,
    config: &Config,
) -> Result<app::RunOptions, app::InvalidOptions> {
    let admin = args.admin.0.map(|address| app::AdminOptions {
        address,
        token: admin::token::TokenSource::from_options(args.admin_token_file.as_deref()),
        names: args
            .admin_host
            .iter()
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .collect(),
    });
    if let Some(admin) = &admin {
        admin.check()?;
    }
    let instance = match config.delivery {
        Delivery::ExactlyOnce => Some(app::instance_id(
            args.instance.as_deref(),
            std::env::var("HOSTNAME").ok().as_deref(),
        )?),
        Delivery::AtLeastOnce => args.instance.clone(),
    };
    Ok(app::RunOptions {
        admin,
        instance,
        fresh: args.fresh,
    })
}

fn main() -> ExitCode {
    // A compiler child started by a running host (see runtime::child): nothing else to
    // set up.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == compiler_child::COMMAND)
    {
        return compiler_child::main();
    }
    // glibc gives every thread that allocates an arena of its own; librdkafka's threads,
    // the async runtime and the compiler's threads would each keep one. Two arenas cut
    // peak memory with no measurable cost in throughput.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Handlers first, before any slow work: a signal during start must not find the
    // default action (SIGHUP's kills the process).
    let signals = {
        let _context = runtime.enter();
        // SIGHUP means "re-read the plugin" to `run` only; elsewhere it keeps its
        // default (a closed terminal ends `plugin test`).
        match Signals::install(matches!(cli.command, Command::Run(_))) {
            Ok(signals) => signals,
            Err(error) => {
                eprintln!("error: installing the signal handlers: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    };
    let shutdown = Shutdown::new();
    runtime.spawn(watch_signals(
        shutdown.clone(),
        signals.interrupt,
        signals.terminate,
    ));

    match cli.command {
        Command::Run(args) => {
            run_pipeline(&args, cli.log_format, &shutdown, signals.hangup, &runtime)
        }
        Command::Validate(args) => validate_config(&args, cli.log_format),
        Command::Plugin(PluginCommand::Swap { path, admin }) => {
            swap_plugin(&path, admin.admin, admin.admin_token_file.as_deref())
        }
        Command::Plugin(PluginCommand::Status { admin }) => plugin_status(admin.admin),
        Command::Plugin(PluginCommand::Author(command)) => author::command::run(&command),
        Command::Generate(args) => generate_records(&args, &shutdown, &runtime),
    }
}

/// `sluice run`: the pipeline until shutdown or a fatal error.
fn run_pipeline(
    args: &PipelineArgs,
    format: LogFormat,
    shutdown: &Shutdown,
    hangup: Option<tokio::signal::unix::Signal>,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    let (_, config) = match load(args, format) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let options = match run_options(args, &config) {
        Ok(options) => options,
        Err(invalid) => {
            report(format, &invalid.to_string());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match app::run(config, &options, shutdown, hangup, runtime.handle()) {
        Ok(summary) => {
            tracing::info!(
                numRecordsIn = summary.records_in,
                numRecordsOut = summary.records_out,
                numRecordsDeadLettered = summary.records_dead_lettered,
                "Stopped cleanly."
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error:#}");
            if format == LogFormat::Text {
                eprintln!("error: {error:#}");
            }
            match error.downcast_ref::<app::PluginRefused>() {
                Some(_) => ExitCode::from(EXIT_INVALID),
                None => ExitCode::from(EXIT_FAILURE),
            }
        }
    }
}

/// `sluice validate`: the configuration and the plugin, without Kafka.
fn validate_config(args: &PipelineArgs, format: LogFormat) -> ExitCode {
    let (source, config) = match load(args, format) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match app::start_plugin(&config, vec![StateStore::shared()]) {
        Ok((registry, _)) => {
            let plugin = registry.live().plugin.clone();
            println!(
                "{}: valid ({} → plugin {} sha256:{} → {}{}{})",
                source.path().display(),
                config.source.topic,
                plugin.origin,
                plugin.short_digest(),
                config.sink.topic,
                config
                    .sink
                    .dead_letter_topic
                    .as_ref()
                    .map(|topic| format!("; failed records → {topic}"))
                    .unwrap_or_default(),
                match config.parallelism {
                    1 => String::new(),
                    workers => format!("; {workers} workers"),
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}: plugin.path: {error:#}", source.path().display());
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// `sluice plugin swap`: asks a running host's admin endpoint to swap to `path`.
fn swap_plugin(path: &Path, admin: SocketAddr, token_file: Option<&Path>) -> ExitCode {
    match admin::client::swap(admin, path, token_file) {
        Ok(answer) if answer.outcome == SwapEvent::Rejected => {
            eprintln!(
                "error: {} was rejected; the live version stays: {}",
                path.display(),
                answer.reason.unwrap_or_default()
            );
            ExitCode::from(EXIT_INVALID)
        }
        Ok(answer) => {
            println!(
                "{}: {} (version {}, sha256:{})",
                path.display(),
                answer.outcome,
                answer.version.unwrap_or_default(),
                answer.digest.unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `sluice plugin status`: a running host's plugin status, as its endpoint says.
fn plugin_status(admin: SocketAddr) -> ExitCode {
    match admin::client::status(admin) {
        Ok(status) => {
            println!("{status:#}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `sluice generate`: stock records to a topic.
fn generate_records(
    args: &GenerateArgs,
    shutdown: &Shutdown,
    runtime: &tokio::runtime::Runtime,
) -> ExitCode {
    match generate::Target::resolve(args).and_then(|target| {
        generate::run(args, &target, shutdown, runtime.handle()).map(|sent| (sent, target.topic))
    }) {
        Ok((sent, topic)) => {
            eprintln!("sent {sent} records to {topic}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
