//! Builds the WebAssembly plugins this crate needs from source in the workspace: the
//! pass-through (embedded in the binary as the default transform) and the test
//! plugins the end-to-end tests load. They are built by a nested cargo for the
//! `wasm32-wasip2` target into their own target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[&str] = &[
    "sluice-plugin-passthrough",
    "sluice-plugin-stats",
    "sluice-test-faulty",
    "sluice-test-hog",
    "sluice-test-other-world",
    "sluice-test-snoop",
    "sluice-test-tag-a",
    "sluice-test-tag-b",
    "sluice-test-trapper",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    for watched in ["wit", "guest-sdk", "plugins", "tests/plugins", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    // OUT_DIR is <target>/<profile>/build/<pkg>/out: keep the plugins beside the host's build.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace.join("target"))
        .join("wasm");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for plugin in PLUGINS {
        command.args(["-p", plugin]);
    }
    // The outer build's flags and wrappers are for the host target, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo for the wasm plugins");
    if !status.success() {
        panic!(
            "building the wasm plugins failed (see above). If the target is missing, run: rustup target add wasm32-wasip2"
        );
    }

    let wasm_dir = target_dir.join("wasm32-wasip2").join("release");
    println!(
        "cargo:rustc-env=SLUICE_PASSTHROUGH_WASM={}",
        wasm_dir.join("sluice_plugin_passthrough.wasm").display()
    );
    println!(
        "cargo:rustc-env=SLUICE_TEST_PLUGIN_DIR={}",
        wasm_dir.display()
    );
}
