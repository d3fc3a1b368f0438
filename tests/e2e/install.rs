//! `scripts/install.sh`, which the test command runs first: on a machine that lacks a
//! toolchain or cannot reach a registry it must stop at once, naming what is missing
//! and the command that installs it, rather than let the plugin tests fail later.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::examples::{repo, text};

fn install(path: &str, tools: &Path, envs: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("PATH", path)
        .env("SLUICE_TOOLS_DIR", tools)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (output, started.elapsed())
}

/// A directory of links to every program on `PATH` but the `hidden` ones.
fn path_without(hidden: &[&str], farm: &Path) -> String {
    let path = std::env::var("PATH").unwrap();
    for dir in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let link = farm.join(&name);
            if hidden.iter().any(|h| name == **h) || link.exists() {
                continue;
            }
            std::os::unix::fs::symlink(entry.path(), link).unwrap();
        }
    }
    farm.to_str().unwrap().to_owned()
}

#[test]
fn a_machine_without_node_is_told_what_to_install_before_anything_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let farm = dir.path().join("bin");
    std::fs::create_dir(&farm).unwrap();
    let tools = dir.path().join("tools");
    let path = path_without(&["node", "npm", "npx"], &farm);

    let (output, took) = install(&path, &tools, &[]);

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Node.js 18 or later") && stderr.contains("'node' not found"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains(
            "npm (installs componentize-js) ('npm' not found). Install it with: apt-get install npm"
        ),
        "{}",
        text(&output)
    );
    assert!(output.stdout.is_empty(), "{}", text(&output));
    // Stopped before installing anything: no tools directory was made.
    assert!(!tools.exists(), "{}", text(&output));
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_builder_that_cannot_be_fetched_stops_the_script_with_the_command_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    // Registries on a closed port: each client fails at once, as without a network.
    let closed = "http://127.0.0.1:1/";
    let (output, took) = install(
        &std::env::var("PATH").unwrap(),
        &tools,
        &[
            ("npm_config_registry", closed),
            ("npm_config_fetch_retries", "0"),
            (
                "npm_config_cache",
                dir.path().join("npm-cache").to_str().unwrap(),
            ),
            ("npm_config_offline", "false"),
            ("PIP_INDEX_URL", closed),
            ("PIP_RETRIES", "0"),
        ],
    );

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not install componentize-js 0.23.0"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains(&format!(
            "To install it by hand: npm install --prefix {}/node @bytecodealliance/componentize-js@0.23.0",
            tools.display()
        )),
        "{}",
        text(&output)
    );
    assert!(output.stdout.is_empty(), "{}", text(&output));
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
