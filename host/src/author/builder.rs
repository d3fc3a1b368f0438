//! `sluice plugin build`: builds a plugin project into a component with its language's
//! own tool, then records the SDK that built it in the component's producers section.
//!
//! - Rust (`Cargo.toml`): `cargo build --release --target wasm32-wasip2`.
//! - JavaScript (`package.json`): componentize-js, with the SDK module and the WIT
//!   supplied from this binary in a staging directory.
//! - Python (`app.py`): componentize-py, likewise.
//!
//! A missing tool is named with the exact command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use wasm_metadata::AddMetadata;

use super::sdk;

/// The componentize-js version new projects pin and `scripts/install.sh` installs.
pub(crate) const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// The componentize-py version `scripts/install.sh` installs.
pub(crate) const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

const WASM_TARGET: &str = "wasm32-wasip2";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Language {
    Rust,
    Js,
    Python,
}

impl Language {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
            Language::Python => "Python",
        }
    }
}

/// The language of the project in `dir`, from the files it holds.
fn detect(dir: &Path) -> anyhow::Result<Language> {
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; give the plugin project's directory",
            dir.display()
        );
    }
    if dir.join("Cargo.toml").is_file() {
        Ok(Language::Rust)
    } else if dir.join("package.json").is_file() {
        Ok(Language::Js)
    } else if dir.join("app.py").is_file() {
        Ok(Language::Python)
    } else {
        bail!(
            "{} is not a plugin project: it has no Cargo.toml (Rust), package.json (JavaScript) or app.py (Python); `sluice plugin new NAME --lang rust|js|python` makes one",
            dir.display()
        )
    }
}

/// The project's name: its directory's name.
fn project_name(dir: &Path) -> String {
    std::path::absolute(dir)
        .ok()
        .and_then(|d| {
            d.components()
                .next_back()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty() && n != "." && n != "/")
        .unwrap_or_else(|| "plugin".into())
}

/// Where `plugin build` writes the component of the project in `dir` by default.
pub(crate) fn default_output(dir: &Path) -> PathBuf {
    dir.join(format!("{}.wasm", project_name(dir)))
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    pub(crate) language: Language,
    pub(crate) path: PathBuf,
    pub(crate) sdk: (String, String),
}

/// How to build.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// JavaScript only: compile the plugin's code ahead of time (componentize-js's
    /// `--aot`, with weval) instead of interpreting it.
    pub(crate) aot: bool,
}

/// Builds the project in `dir` into `out` (default: [`default_output`]).
pub fn build(dir: &Path, out: Option<&Path>) -> anyhow::Result<Built> {
    build_with(dir, out, Options::default())
}

/// [`build`] with `options`.
pub(crate) fn build_with(
    dir: &Path,
    out: Option<&Path>,
    options: Options,
) -> anyhow::Result<Built> {
    let language = detect(dir)?;
    if options.aot && language != Language::Js {
        bail!(
            "--aot applies to JavaScript plugins only; {} is a {} project (leave --aot out)",
            dir.display(),
            language.name()
        );
    }
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_output(dir));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let out = std::path::absolute(&out).with_context(|| format!("resolving {}", out.display()))?;
    let sdk = match language {
        Language::Rust => build_rust(dir, &out)?,
        Language::Js => build_js(dir, &out, options.aot)?,
        Language::Python => build_python(dir, &out)?,
    };
    stamp(&out, &sdk)?;
    Ok(Built {
        language,
        path: out,
        sdk,
    })
}

/// Records the SDK in the component's producers section (`sdk` field).
fn stamp(path: &Path, (name, version): &(String, String)) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the built component {}", path.display()))?;
    let mut metadata = AddMetadata::default();
    metadata.sdk = vec![(name.clone(), version.clone())];
    let stamped = metadata
        .to_wasm(&bytes)
        .with_context(|| format!("recording the SDK in {}", path.display()))?;
    std::fs::write(path, stamped).with_context(|| format!("writing {}", path.display()))
}

/// What a tool writes on stdout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdout {
    /// Text for the author (diagnostics included).
    Text,
    /// Cargo's JSON messages, with diagnostics already rendered on stderr.
    CargoJson,
}

/// Runs a language tool; a tool that is not installed becomes `missing`.
fn run(
    command: &mut Command,
    tool: &str,
    stdout: Stdout,
    missing: impl FnOnce() -> String,
) -> anyhow::Result<std::process::Output> {
    match command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(output) if output.status.success() => Ok(output),
        Ok(output) => {
            // Tools print their diagnostics on stdout too; show it before failing.
            let text = String::from_utf8_lossy(&output.stdout);
            match stdout {
                Stdout::Text => eprint!("{text}"),
                Stdout::CargoJson => eprint!("{}", readable_cargo_messages(&text)),
            }
            bail!("{tool} failed ({}); see its messages above", output.status)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}", missing()),
        Err(e) => Err(e).with_context(|| format!("running {tool}")),
    }
}

/// What of cargo's JSON messages (`--message-format=json-render-diagnostics`) a person
/// reads: compiler messages as rustc renders them, and any line that is not JSON. The
/// rest (artifacts, build-script results, `build-finished`) is for this builder only.
fn readable_cargo_messages(stdout: &str) -> String {
    let mut text = String::new();
    for line in stdout.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(message) => {
                if message["reason"] == "compiler-message"
                    && let Some(rendered) = message["message"]["rendered"].as_str()
                {
                    text.push_str(rendered);
                }
            }
            Err(_) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

fn build_rust(dir: &Path, out: &Path) -> anyhow::Result<(String, String)> {
    // A missing target is the commonest first-time failure: name the fix up front.
    if let Ok(output) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        && output.status.success()
        && !String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.trim() == WASM_TARGET)
    {
        bail!(
            "the Rust target {WASM_TARGET} is not installed; install it with: rustup target add {WASM_TARGET}"
        );
    }
    let output = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(dir)
            .args([
                "build",
                "--release",
                "--target",
                WASM_TARGET,
                "--message-format=json-render-diagnostics",
            ]),
        "cargo",
        Stdout::CargoJson,
        || {
            "cargo was not found; install Rust with rustup (https://rustup.rs), then: rustup target add wasm32-wasip2".into()
        },
    )?;
    let mut artifact = None;
    let mut sdk = ("sluice-sdk".to_string(), sdk::RUST_SDK_VERSION.to_string());
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let package = message["package_id"].as_str().unwrap_or_default();
        // Package ids end in `#name@version` (or `#version` when name = directory).
        if let Some(version) = package.rsplit_once("sluice-sdk@").map(|(_, v)| v) {
            sdk.1 = version.to_string();
        }
        let is_cdylib = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if is_cdylib
            && let Some(file) = message["filenames"].as_array().and_then(|f| {
                f.iter()
                    .filter_map(|f| f.as_str())
                    .find(|f| f.ends_with(".wasm"))
            })
        {
            artifact = Some(PathBuf::from(file));
        }
    }
    let Some(artifact) = artifact else {
        bail!(
            "cargo built no .wasm library in {}; a Rust plugin is a library with crate-type = [\"cdylib\"]",
            dir.display()
        );
    };
    std::fs::copy(&artifact, out)
        .with_context(|| format!("copying {} to {}", artifact.display(), out.display()))?;
    Ok(sdk)
}

/// A staging directory holding the WIT package (in `wit/`) and SDK files.
fn stage(files: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let staging = tempfile::Builder::new()
        .prefix("sluice-build.")
        .tempdir()
        .context("creating a staging directory")?;
    for (name, text) in sdk::WIT
        .iter()
        .map(|(n, t)| (format!("wit/{n}"), *t))
        .chain(files.iter().map(|(n, t)| (n.to_string(), *t)))
    {
        let path = staging.path().join(name);
        std::fs::create_dir_all(path.parent().expect("staged files are in a directory"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(staging)
}

/// Copies the project's sources into the staging directory, beside the SDK.
fn copy_sources(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        if matches!(
            name_text.as_ref(),
            "node_modules" | "test" | "wit" | "sluice.js"
        ) || name_text.starts_with('.')
            || name_text.ends_with(".wasm")
        {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_sources(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// componentize-js from the project's node_modules (or a parent's), else from PATH.
fn componentize_js(dir: &Path) -> PathBuf {
    std::path::absolute(dir)
        .ok()
        .and_then(|dir| {
            dir.ancestors()
                .map(|d| d.join("node_modules/.bin/componentize-js"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("componentize-js"))
}

/// Where componentize-js's `--aot` looks for the weval binary, next to the
/// componentize-js found as `tool`; `None` when `tool` is not in a `node_modules`.
fn weval_path(tool: &Path) -> Option<PathBuf> {
    let tool = if tool.components().count() == 1 {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())?
    } else {
        tool.to_path_buf()
    };
    // `node_modules/.bin/componentize-js` -> `node_modules`.
    let modules = tool.parent()?.parent()?;
    let platform = match (std::env::consts::ARCH, std::env::consts::OS) {
        ("x86_64", "linux") => "x86_64-linux",
        ("aarch64", "linux") => "aarch64-linux",
        ("x86_64", "macos") => "x86_64-macos",
        ("aarch64", "macos") => "aarch64-macos",
        _ => return None,
    };
    Some(
        modules
            .join("@bytecodealliance/weval")
            .join(platform)
            .join("weval"),
    )
}

/// componentize-js's `--aot` runs weval, which its npm package downloads from GitHub on
/// first use: Sluice asks for it to be installed beforehand instead, so that a build
/// never reaches for the network and fails with an answer here.
fn check_weval(tool: &Path) -> anyhow::Result<()> {
    match weval_path(tool) {
        Some(weval) if weval.is_file() => Ok(()),
        Some(weval) => bail!(
            "--aot needs weval, the partial evaluator componentize-js runs, at {}. Install it with `scripts/install.sh` (builds it from crates.io with cargo, beside the other plugin builders), or: cargo install weval --version 0.5.0 --root /tmp/weval && cp /tmp/weval/bin/weval {}",
            weval.display(),
            weval.display()
        ),
        None => bail!(
            "--aot needs componentize-js installed in a node_modules directory (found `{}`), with weval beside it; `scripts/install.sh` installs both",
            tool.display()
        ),
    }
}

fn build_js(dir: &Path, out: &Path, aot: bool) -> anyhow::Result<(String, String)> {
    let package: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("package.json"))
            .with_context(|| format!("reading {}/package.json", dir.display()))?,
    )
    .with_context(|| format!("{}/package.json is not valid JSON", dir.display()))?;
    let entry = package["main"].as_str().unwrap_or("plugin.js");
    if !dir.join(entry).is_file() {
        bail!(
            "{}: the plugin's module {entry} does not exist (package.json `main`, default plugin.js)",
            dir.display()
        );
    }
    let staging = stage(&[("sluice.js", sdk::JS_SDK)])?;
    copy_sources(dir, staging.path())?;
    let tool = componentize_js(dir);
    if aot {
        check_weval(&tool)?;
    }
    let install = || {
        format!(
            "componentize-js was not found (looked in {}/node_modules/.bin and on PATH). Install it with `npm install` in {} (package.json pins @bytecodealliance/componentize-js {COMPONENTIZE_JS_VERSION}), or: npm install -g @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION} (needs Node.js 18 or later)",
            dir.display(),
            dir.display()
        )
    };
    run(
        Command::new(&tool)
            .current_dir(staging.path())
            .arg(entry)
            .args(["--wit", "wit", "--world-name", sdk::WORLD_NAME])
            // The host links no wasi:http: leave the fetch machinery out of the component.
            .args(["-d", "http", "-d", "fetch-event"])
            .args(aot.then_some("--aot"))
            .arg("-o")
            .arg(out),
        "componentize-js",
        Stdout::Text,
        install,
    )?;
    Ok(sdk::js_sdk())
}

fn build_python(dir: &Path, out: &Path) -> anyhow::Result<(String, String)> {
    let staging = stage(sdk::PYTHON_SDK)?;
    let project = std::path::absolute(dir)?;
    run(
        Command::new("componentize-py")
            .current_dir(staging.path())
            .args([
                "-d",
                "wit",
                "-w",
                sdk::WORLD_NAME,
                "componentize",
                "app",
                "-p",
            ])
            .arg(&project)
            .args(["-p", "."])
            .arg("-o")
            .arg(out),
        "componentize-py",
        Stdout::Text,
        || {
            format!(
                "componentize-py was not found on PATH. Install it with: pip install componentize-py=={COMPONENTIZE_PY_VERSION} (in a virtual environment if your Python is managed by the system)"
            )
        },
    )?;
    Ok(sdk::python_sdk())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rendered_compiler_messages_of_cargo_json_are_shown() {
        let stdout = concat!(
            r#"{"reason":"compiler-artifact","package_id":"x","filenames":["a.wasm"]}"#,
            "\n",
            r#"{"reason":"compiler-message","message":{"rendered":"error[E0308]: mismatched types\n --> src/lib.rs:3:5\n"}}"#,
            "\n",
            r#"{"reason":"build-finished","success":false}"#,
            "\n",
            "a line that is not JSON\n",
        );
        assert_eq!(
            readable_cargo_messages(stdout),
            "error[E0308]: mismatched types\n --> src/lib.rs:3:5\na line that is not JSON\n"
        );
    }

    #[test]
    fn aot_is_refused_for_a_project_that_is_not_javascript() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "").unwrap();
        let error = build_with(dir.path(), None, Options { aot: true }).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("--aot applies to JavaScript plugins only")
                && message.contains("Python project"),
            "{message}"
        );
    }

    #[test]
    fn aot_without_weval_names_where_it_is_looked_for_and_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("node_modules/.bin");
        std::fs::create_dir_all(&bin).unwrap();
        let tool = bin.join("componentize-js");
        std::fs::write(&tool, "").unwrap();
        let weval = weval_path(&tool).unwrap();
        assert!(weval.starts_with(dir.path().join("node_modules/@bytecodealliance/weval")));
        let message = format!("{:#}", check_weval(&tool).unwrap_err());
        assert!(
            message.contains(&weval.display().to_string())
                && message.contains("scripts/install.sh"),
            "{message}"
        );
        std::fs::create_dir_all(weval.parent().unwrap()).unwrap();
        std::fs::write(&weval, "").unwrap();
        check_weval(&tool).unwrap();
    }

    /// The test command installs the builders through `scripts/install.sh`; a version
    /// bumped here and not there would test plugins built by another builder.
    #[test]
    fn the_install_script_pins_the_builder_versions_new_projects_use() {
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh"),
        )
        .unwrap();
        assert!(
            script.contains(&format!(
                "\ncomponentize_js_version={COMPONENTIZE_JS_VERSION}\n"
            )),
            "scripts/install.sh must pin componentize-js {COMPONENTIZE_JS_VERSION}"
        );
        assert!(
            script.contains(&format!(
                "\ncomponentize_py_version={COMPONENTIZE_PY_VERSION}\n"
            )),
            "scripts/install.sh must pin componentize-py {COMPONENTIZE_PY_VERSION}"
        );
    }
}
