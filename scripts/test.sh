#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, plugin builds, and end-to-end
# tests against a real Apache Kafka broker (started here if it is not running).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What a fresh machine lacks (the wasm target, the plugin builders, the broker's jars),
# installed outside the clone; a toolchain that is missing stops here, before any test.
builders=$(scripts/install.sh)
export PATH="$builders:$PATH"

# The authentication tests need the broker's authenticated listeners.
SLUICE_KAFKA_AUTH=${SLUICE_KAFKA_AUTH:-1} scripts/kafka.sh start
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp -t sluice-test.XXXXXX)
trap 'rm -f "$log"' EXIT
if cargo test --workspace 2>&1 | tee "$log"; then status=0; else status=$?; fi
# One closing line for the whole suite: cargo prints one result line per test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i - 1); if ($i == "failed;") f += $(i - 1) } }
     END { printf "sluice: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
