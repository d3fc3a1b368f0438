#!/usr/bin/env bash
# Sluice against its peers (plain rdkafka and Python loops, kcat, Kafka Streams,
# PyFlink) on one broker and one input:
#
#   bench/peers/run.sh --records 200000 [--rounds 3] [--only sluice,kcat,...]
#
# Installs the peers (bench/peers/install.sh: idempotent, into $SLUICE_TOOLS_DIR/peers),
# builds sluice, plain-loop and peers-bench in release mode, then runs
# target/release/peers-bench with the arguments given (its --help lists them). The
# broker must be up at --bootstrap-servers (default 127.0.0.1:9092, plaintext).
# Markdown results on stdout, progress on stderr.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$root/bench/peers/install.sh"
cargo build --release --manifest-path "$root/Cargo.toml" -p sluice-host --bin sluice >&2
cargo build --release --manifest-path "$root/Cargo.toml" -p sluice-bench --bin plain-loop --bin peers-bench >&2
target=${CARGO_TARGET_DIR:-$root/target}
exec "$target/release/peers-bench" --repo "$root" "$@"
