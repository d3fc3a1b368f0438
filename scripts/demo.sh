#!/usr/bin/env bash
# The main job on a local Kafka: stock records from the generator into `stocks-in`,
# through Sluice's built-in pass-through, into `stocks-out`; then the record counts
# per partition of both topics, which match.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The wasm target the build's plugins need and the broker's jars, outside the clone.
scripts/install.sh --demo

records=${DEMO_RECORDS:-1700}
partitions=6
# Where cargo puts the build: the checkout's target/ unless CARGO_TARGET_DIR says otherwise.
sluice=${CARGO_TARGET_DIR:-target}/release/sluice

scripts/kafka.sh start
echo "demo: building sluice (release; the first build takes several minutes)"
cargo build --release -p sluice-host --bin sluice

for topic in stocks-in stocks-out; do
  scripts/kafka.sh topics --create --if-not-exists --topic "$topic" --partitions "$partitions" >/dev/null
done

echo "demo: writing $records stock records to stocks-in"
"$sluice" generate --topic stocks-in --count "$records" --rate 2000

offsets() {
  java -cp "$(scripts/kafka.sh classpath)" org.apache.kafka.tools.GetOffsetShell \
    --bootstrap-server 127.0.0.1:9092 --topic "$1" 2>/dev/null | sort -t: -k2 -n
}

log=$(mktemp -t sluice-demo.XXXXXX.log)
echo "demo: running sluice (log: $log)"
"$sluice" run --config docs/examples/stocks.toml >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "demo: sluice stopped unexpectedly:" >&2
    cat "$log" >&2
    exit 1
  fi
  in=$(offsets stocks-in | cut -d: -f3)
  out=$(offsets stocks-out | cut -d: -f3)
  [[ -n $in && $in == "$out" ]] && break
  sleep 1
done
kill -TERM "$pid"
wait "$pid" || { echo "demo: sluice did not stop cleanly:" >&2; cat "$log" >&2; exit 1; }
trap - EXIT

echo
echo "Records per partition"
printf '%-10s %10s %10s\n' partition stocks-in stocks-out
paste -d: <(offsets stocks-in) <(offsets stocks-out) | awk -F: '
  { printf "%-10s %10s %10s\n", $2, $3, $6; tin += $3; tout += $6 }
  END { printf "%-10s %10s %10s\n", "total", tin, tout; exit (tin == tout ? 0 : 1) }'
echo
echo "A record from stocks-out:"
java -cp "$(scripts/kafka.sh classpath)" org.apache.kafka.tools.consumer.ConsoleConsumer \
  --bootstrap-server 127.0.0.1:9092 --topic stocks-out --from-beginning --max-messages 1 \
  --property print.key=true --property key.separator=' => ' 2>/dev/null
