//! The authoring subcommands as the command line runs them: messages and exit codes
//! (0 success, 1 a test found differences or a tool failed, 2 invalid input).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::{builder, harness, inspect, records, scaffold};
use crate::cli::{BuildArgs, NewArgs, TestArgs};
use crate::runtime::Limits;

const EXIT_FAILURE: u8 = 1;
const EXIT_INVALID: u8 = 2;

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

pub fn new(args: &NewArgs) -> ExitCode {
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

pub fn build(args: &BuildArgs) -> ExitCode {
    match builder::build(&args.dir, args.out.as_deref()) {
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

pub fn test(args: &TestArgs) -> ExitCode {
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

pub fn inspect(path: &Path) -> ExitCode {
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
