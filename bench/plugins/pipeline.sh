#!/usr/bin/env bash
# Pipeline throughput and CPU per record of plugins on stock records, on a real broker:
# the workload of the `enrich` example, which the end-to-end benchmark's records
# (not JSON) would fail. `sluice generate` fills one input topic with stock records;
# then each plugin in turn (rounds alternate them) copies it to its own output topic
# with `sluice run`. The admin endpoint's `numRecordsOut` is read every 0.1 s: a
# plugin's figures run from the first output record to the last, so start-up (plugin
# compile, group join) is left out, as in `sluice-bench`.
#
#   bench/plugins/pipeline.sh --records 300000 --rounds 3 builtin plugins/enrich/enrich.wasm ...
#
# `builtin` is the built-in pass-through. Needs target/release/sluice (or SLUICE=path),
# the broker on 127.0.0.1:9092, curl. Topics it makes are deleted at the end.
set -euo pipefail

records=300000
rounds=3
plugins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --records) records=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) plugins+=("$1"); shift ;;
  esac
done
[ ${#plugins[@]} -gt 0 ] || { echo "usage: $0 [--records N] [--rounds R] builtin|PLUGIN.wasm ..." >&2; exit 2; }

root=$(cd "$(dirname "$0")/../.." && pwd)
sluice=${SLUICE:-$root/target/release/sluice}
servers=127.0.0.1:9092
tag=pipeline-bench-$$-$(date +%s)
work=$(mktemp -d)
topics=()
cleanup() {
  for topic in "${topics[@]}"; do
    "$root/scripts/kafka.sh" topics --delete --topic "$topic" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

topic() {
  "$root/scripts/kafka.sh" topics --create --topic "$1" --partitions 6 --replication-factor 1 >/dev/null
  topics+=("$1")
}

input=$tag-in
topic "$input"
"$sluice" generate --bootstrap-servers "$servers" --topic "$input" --count "$records" --rate 0 >"$work/generate.log" 2>&1

# One compile per plugin before the rounds (`plugin inspect` compiles with Cranelift
# into the cache): every round loads optimized code. Without it a cold plugin would
# start on baseline code and move to Cranelift's only when the idle-priority compile
# finishes, which a fully loaded machine may not allow before a short round ends.
export SLUICE_CACHE_DIR=$work/cache
for plugin in "${plugins[@]}"; do
  [ "$plugin" = builtin ] || "$sluice" plugin inspect "$plugin" >/dev/null
done
ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
out_count() { curl -fs "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '$1 == "numRecordsOut" { print $2 + 0 }'; }

echo "| round | plugin | code | records/s | CPU µs/record |"
echo "|---|---|---|---:|---:|"
for round in $(seq 1 "$rounds"); do
  for i in "${!plugins[@]}"; do
    plugin=${plugins[$i]}
    output=$tag-out-$round-$i
    topic "$output"
    cat >"$work/config.toml" <<EOF
version = 1

[source]
bootstrap_servers = "$servers"
topic = "$input"
group_id = "$tag-group-$round-$i"
startup = "earliest"

[sink]
topic = "$output"

[checkpoint]
interval_ms = 1000
min_pause_ms = 0
EOF
    port=$((19400 + i))
    if [ "$plugin" = builtin ]; then unset SLUICE_PLUGIN; else export SLUICE_PLUGIN=$plugin; fi
    "$sluice" run --config "$work/config.toml" --admin "127.0.0.1:$port" >"$work/run-$round-$i.log" 2>&1 &
    pid=$!
    first_out=""; first_t=""; first_cpu=""
    while :; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "sluice stopped early; its log:" >&2; tail -20 "$work/run-$round-$i.log" >&2; exit 1
      fi
      n=$(out_count "$port" || true)
      n=${n:-0}
      now=$(date +%s.%N)
      if [ -z "$first_t" ] && [ "${n%.*}" -gt 0 ]; then
        first_out=${n%.*}; first_t=$now; first_cpu=$(cpu_s "$pid")
      fi
      if [ "${n%.*}" -ge "$records" ]; then
        end_cpu=$(cpu_s "$pid")
        code=$(curl -fs "http://127.0.0.1:$port/status" | sed -n 's/.*"live":{[^}]*"code":"\([a-z]*\)".*/\1/p')
        break
      fi
      sleep 0.1
    done
    kill -TERM "$pid"; wait "$pid" || true
    awk -v r="$round" -v p="$(basename "$plugin")" -v code="${code:-?}" -v n="$records" -v f="$first_out" \
      -v t0="$first_t" -v t1="$now" -v c0="$first_cpu" -v c1="$end_cpu" \
      'BEGIN { copied = n - f; printf "| %d | %s | %s | %.0f | %.2f |\n", r, p, code, copied / (t1 - t0), (c1 - c0) * 1e6 / copied }'
  done
done
