//! `sluice plugin new`: a plugin project that builds as is and passes its own test.
//!
//! Every language gets the same starting plugin (upper-case each text value, forward
//! records without a value unchanged) and the same test input and expected output, so
//! `sluice plugin build` then `sluice plugin test` passes before the first edit.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::builder::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION, Language};
use super::sdk;

const TEST_INPUT: &str = r#"{"key": "k1", "value": "hello", "timestamp": 1700000000000}
{"key": "k2", "value": null}
{"value": "stock: aapl", "headers": [["source", "demo"]]}
"#;

const TEST_EXPECTED: &str = r#"{"input": 1, "key": "k1", "value": "HELLO", "timestamp": 1700000000000}
{"input": 2, "key": "k2", "value": null}
{"input": 3, "value": "STOCK: AAPL", "headers": [["source", "demo"]]}
"#;

const RUST_LIB: &str = r#"//! {name}: a Sluice record transform. It upper-cases each record's text value and
//! forwards records without a value unchanged.

use sluice_sdk::{Config, Error, Output, Record, Transform};

struct Plugin;

impl Transform for Plugin {
    fn init(_config: &Config) -> Result<Self, Error> {
        Ok(Plugin)
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        match record.value_str()? {
            Some(text) => out.set_value(Some(text.to_uppercase().as_bytes())),
            None => out.keep(),
        }
        Ok(())
    }
}

sluice_sdk::export!(Plugin);
"#;

const RUST_MANIFEST: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The Sluice SDK, copied here by `sluice plugin new` (with the WIT contract beside it).
sluice-sdk = { path = "sluice/sdk" }
# Typed JSON values: `#[derive(serde::Deserialize)]` for `record.json::<T>()`,
# `#[derive(serde::Serialize)]` for `out.set_json(&value)`.
serde = { version = "1", features = ["derive"] }

[profile.release]
# The batch codec runs inside the plugin: optimise it.
opt-level = 3

# A plugin is a project of its own, even inside another Cargo workspace.
[workspace]
"#;

const RUST_SDK_MANIFEST: &str = r#"[package]
name = "sluice-sdk"
description = "Write Sluice record transforms in Rust."
version = "{version}"
edition = "2024"
publish = false

[features]
default = ["guest", "json"]
guest = ["dep:wit-bindgen"]
json = ["dep:serde", "dep:serde_json"]

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"], optional = true }
serde = { version = "1", optional = true }
serde_json = { version = "1", optional = true }
"#;

const JS_PLUGIN: &str = r#"// {name}: a Sluice record transform. It upper-cases each record's text value and
// forwards records without a value unchanged. `./sluice.js` is the SDK, supplied by
// `sluice plugin build`.

import { exportTransform } from "./sluice.js";

class Plugin {
  constructor(config) {}

  process(record, out) {
    const text = record.valueText();
    if (text === null) {
      out.keep();
    } else {
      out.setValue(text.toUpperCase());
    }
  }
}

export const transform = exportTransform(Plugin);
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{name}",
  "private": true,
  "type": "module",
  "main": "plugin.js",
  "scripts": {
    "build": "sluice plugin build .",
    "test": "sluice plugin test . --input test/input.jsonl --expect test/expected.jsonl"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "{componentize_js}"
  }
}
"#;

const PYTHON_APP: &str = r#""""{name}: a Sluice record transform. It upper-cases each record's text value and
forwards records without a value unchanged. `sluice_sdk` is supplied by
`sluice plugin build`."""

import sluice_sdk as sluice


class Plugin(sluice.Transform):
    def __init__(self, config: sluice.Config):
        pass

    def process(self, record: sluice.Record, out: sluice.Output) -> None:
        text = record.value_text()
        if text is None:
            out.keep()
        else:
            out.set_value(text.upper())


# The component's entry point: componentize-py looks for `Transform` in app.py.
Transform = sluice.export(Plugin)
"#;

const PYTHON_PROJECT: &str = r#"[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.11"

[tool.sluice]
# Built by `sluice plugin build` with componentize-py from PyPI.
componentize-py = "{componentize_py}"
"#;

const README: &str = r#"# {name}

A Sluice plugin in {language}. In this directory:

    sluice plugin build
    sluice plugin test . --input test/input.jsonl --expect test/expected.jsonl
    sluice plugin swap {name}.wasm      # into a running host

{setup}"#;

fn fill(template: &str, name: &str) -> String {
    template
        .replace("{name}", name)
        .replace("{version}", sdk::RUST_SDK_VERSION)
        .replace("{componentize_js}", COMPONENTIZE_JS_VERSION)
        .replace("{componentize_py}", COMPONENTIZE_PY_VERSION)
}

/// A name usable as a directory, crate, package and module name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a valid plugin name: use lower-case letters, digits, `-` and `_`, starting with a letter (example: price-alerts)"
        );
    }
    Ok(())
}

/// Creates the project `name` for `language` inside `parent`; returns its directory.
pub(crate) fn create(name: &str, language: Language, parent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    let mut files: Vec<(String, String)> = vec![
        ("test/input.jsonl".into(), TEST_INPUT.into()),
        ("test/expected.jsonl".into(), TEST_EXPECTED.into()),
    ];
    let (ignore, setup) = match language {
        Language::Rust => {
            files.push(("Cargo.toml".into(), fill(RUST_MANIFEST, name)));
            files.push(("src/lib.rs".into(), fill(RUST_LIB, name)));
            files.push((
                "sluice/sdk/Cargo.toml".into(),
                fill(RUST_SDK_MANIFEST, name),
            ));
            for (file, text) in sdk::RUST_SDK_SOURCES {
                files.push((format!("sluice/sdk/src/{file}"), text.to_string()));
            }
            for (file, text) in sdk::WIT {
                files.push((format!("sluice/wit/{file}"), text.to_string()));
            }
            (
                "target/\nCargo.lock\n*.wasm\n",
                "Needs: rustup target add wasm32-wasip2\n".to_string(),
            )
        }
        Language::Js => {
            files.push(("package.json".into(), fill(JS_PACKAGE, name)));
            files.push(("plugin.js".into(), fill(JS_PLUGIN, name)));
            (
                "node_modules/\n*.wasm\n",
                format!(
                    "Needs Node.js 18 or later; install the builder once with `npm install` here (componentize-js {COMPONENTIZE_JS_VERSION}).\n"
                ),
            )
        }
        Language::Python => {
            files.push(("pyproject.toml".into(), fill(PYTHON_PROJECT, name)));
            files.push(("app.py".into(), fill(PYTHON_APP, name)));
            (
                "__pycache__/\n*.wasm\n",
                format!("Needs: pip install componentize-py=={COMPONENTIZE_PY_VERSION}\n"),
            )
        }
    };
    files.push((".gitignore".into(), ignore.into()));
    let readme = fill(README, name)
        .replace("{language}", language.name())
        .replace("{setup}", &setup);
    files.push(("README.md".into(), readme));
    for (file, text) in &files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("project files are in a directory"))
            .with_context(|| format!("creating {}", path.display()))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_break_a_build_are_refused() {
        for bad in ["", "My Plugin", "1st", "a/b", "Upper"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("price-alerts_2").unwrap();
    }

    #[test]
    fn an_existing_directory_is_not_overwritten() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::create_dir(parent.path().join("taken")).unwrap();
        let error = create("taken", Language::Js, parent.path()).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
    }
}
