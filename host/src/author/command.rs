//! The authoring subcommands (`sluice plugin new|build|test|inspect`): their arguments,
//! messages and exit codes (0 success, 1 a test found differences or a tool failed, 2
//! invalid input). `cli.rs` composes [`AuthorCommand`] into `sluice plugin`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{builder, harness, inspect, records, scaffold};
use crate::runtime::Limits;
use crate::shutdown::{EXIT_FAILURE, EXIT_INVALID};

#[derive(Debug, Subcommand)]
pub enum AuthorCommand {
    /// Create a plugin project that builds as is, with a test input file.
    New(NewArgs),
    /// Build a plugin project into a component with its language's tool.
    Build(BuildArgs),
    /// Run a plugin on records from a JSONL file with the host's runtime (no Kafka).
    Test(TestArgs),
    /// Describe a component: world, imports and exports, size, digest, SDK.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name, also its directory (lower-case letters, digits, `-`, `_`).
    name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    lang: builder::Language,
    /// The directory to create the project in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to write the component (default: DIR/NAME.wasm, NAME being DIR's own name).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// JavaScript: compile the plugin's code ahead of time (componentize-js `--aot`,
    /// needs weval, which `scripts/install.sh` builds). Code-heavy plugins run up to about
    /// twice as fast; the component is about 30 % larger.
    #[arg(long)]
    aot: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The component (.wasm), or a project directory (its built component).
    plugin: PathBuf,
    /// Input records, one JSON object per line (docs/records-jsonl.md).
    #[arg(long)]
    input: PathBuf,
    /// Expected outputs: any difference is shown and the exit code is 1.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// A plugin setting, as in `[plugin.config]` (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_setting)]
    config: Vec<(String, String)>,
    /// Records per batch.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Linear memory the plugin may grow to, as `plugin.max_memory_mb`.
    #[arg(long, default_value_t = 256)]
    max_memory_mb: usize,
    /// Time one batch may take, as `plugin.timeout_ms`.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The component (.wasm), or a project directory (its built component).
    plugin: PathBuf,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Runs one authoring command to its exit code.
pub fn run(command: &AuthorCommand) -> ExitCode {
    match command {
        AuthorCommand::New(args) => new(args),
        AuthorCommand::Build(args) => build(args),
        AuthorCommand::Test(args) => test(args),
        AuthorCommand::Inspect(args) => inspect(&args.plugin),
    }
}

/// A component path: `path` itself, or the default build output of a project directory.
fn component(path: &Path) -> Result<PathBuf, String> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let built = builder::default_output(path);
    if built.is_file() {
        Ok(built)
    } else {
        Err(format!(
            "{} is a project directory without a built component ({} is missing); run: sluice plugin build {}",
            path.display(),
            built.display(),
            path.display()
        ))
    }
}

fn new(args: &NewArgs) -> ExitCode {
    match scaffold::create(&args.name, args.lang, &args.dir) {
        Ok(dir) => {
            println!("created {} ({})", dir.display(), args.lang.name());
            let setup = match args.lang {
                builder::Language::Js => "npm install && ",
                _ => "",
            };
            println!(
                "next: cd {} && {setup}sluice plugin build && sluice plugin test . --input test/input.jsonl --expect test/expected.jsonl",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn build(args: &BuildArgs) -> ExitCode {
    let options = builder::Options { aot: args.aot };
    match builder::build_with(&args.dir, args.out.as_deref(), options) {
        Ok(built) => {
            let size = std::fs::metadata(&built.path).map(|m| m.len()).unwrap_or(0);
            println!(
                "built {} ({}, {} bytes, {} {})",
                built.path.display(),
                built.language.name(),
                size,
                built.sdk.0,
                built.sdk.1
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}: {error:#}", args.dir.display());
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn test(args: &TestArgs) -> ExitCode {
    let invalid = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(EXIT_INVALID)
    };
    let plugin = match component(&args.plugin) {
        Ok(path) => path,
        Err(message) => return invalid(message),
    };
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let input = match read(&args.input).and_then(|text| {
        records::parse_input(&args.input.display().to_string(), &text).map_err(|e| e.to_string())
    }) {
        Ok(records) if records.is_empty() => {
            return invalid(format!("{} holds no records", args.input.display()));
        }
        Ok(records) => records,
        Err(message) => return invalid(message),
    };
    let expected = match &args.expect {
        None => None,
        Some(path) => match read(path).and_then(|text| {
            records::parse_output(&path.display().to_string(), &text).map_err(|e| e.to_string())
        }) {
            Ok(lines) => Some(lines),
            Err(message) => return invalid(message),
        },
    };
    let settings = harness::Settings {
        config: args.config.clone(),
        limits: Limits {
            max_memory_bytes: args.max_memory_mb << 20,
            call_timeout: Duration::from_millis(args.timeout_ms),
        },
        batch_size: args.batch_size,
    };
    let outputs = match harness::run(&plugin, &input, &settings) {
        Ok(outputs) => outputs,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let actual: Vec<String> = outputs.iter().map(records::render).collect();
    let Some(expected) = expected else {
        for line in &actual {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    };
    let expected: Vec<String> = expected.iter().map(records::render).collect();
    match harness::diff(&expected, &actual) {
        None => {
            println!(
                "ok: {} input records, {} outputs as expected ({})",
                input.len(),
                actual.len(),
                plugin.display()
            );
            ExitCode::SUCCESS
        }
        Some(diff) => {
            println!(
                "--- expected ({})\n+++ actual ({})",
                args.expect.as_ref().expect("set").display(),
                plugin.display()
            );
            print!("{diff}");
            eprintln!("error: the outputs differ from the expected ones (lines marked - and +)");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn inspect(path: &Path) -> ExitCode {
    let plugin = match component(path) {
        Ok(path) => path,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match inspect::report(&plugin) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
