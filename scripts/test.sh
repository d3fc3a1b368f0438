#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, plugin builds, and end-to-end
# tests against a real Apache Kafka broker (started here if it is not running).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Plugins are built for this target; a fresh Rust install lacks it.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

scripts/kafka.sh start
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
