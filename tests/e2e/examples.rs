//! The example plugins of `plugins/` and new projects, built from source with
//! `sluice plugin build`, each once per test run however many tests use it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex, OnceLock};

use crate::support::sluice;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where builds of this test run go: beside the other plugin builds, replaced by
/// every run (each example is rebuilt once per run).
pub fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = wasm_target_dir().join("examples");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Rust plugins build into the target directory the host's build script uses for
/// plugins, so their dependencies are compiled once.
pub fn wasm_target_dir() -> PathBuf {
    Path::new(env!("SLUICE_TEST_PLUGIN_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Runs `sluice` with `args` to completion.
pub fn run(args: &[&str]) -> Output {
    sluice(args)
        .env("CARGO_TARGET_DIR", wasm_target_dir())
        .output()
        .unwrap()
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Builds the project in `dir` into `out` with `sluice plugin build`, asserting success.
pub fn build(dir: &Path, out: &Path) {
    let output = run(&[
        "plugin",
        "build",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "building {}: {}",
        dir.display(),
        text(&output)
    );
    assert!(out.is_file(), "{} was not written", out.display());
}

/// The component of `plugins/<name>`, built once per run.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let slot = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_default()
        .clone();
    slot.get_or_init(|| {
        let out = build_dir().join(format!("{name}.wasm"));
        build(&repo().join("plugins").join(name), &out);
        out
    })
    .clone()
}

/// The settings of an example's golden test: `plugins/<name>/test/config`, one
/// `KEY=VALUE` per line, as `--config` arguments.
pub fn golden_settings(name: &str) -> Vec<String> {
    let path = repo().join("plugins").join(name).join("test/config");
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .flat_map(|l| ["--config".to_string(), l.trim().to_string()])
                .collect()
        })
        .unwrap_or_default()
}
