#!/usr/bin/env bash
# Installs the programs `peers-bench` measures Sluice against, idempotently, into
# $SLUICE_TOOLS_DIR/peers (default ~/.cache/sluice/tools/peers); nothing is written
# inside the clone except Maven's target/ under bench/peers/kafka-streams:
#
#   bench/peers/install.sh
#
#   py/        venv with confluent-kafka (the Python consume-produce loop)
#   pyflink/   venv with apache-flink 2.0.x, and flink-sql-connector-kafka's jar in lib/
#   kafka-streams.classpath   the pass-through topology's classpath (Maven build)
#   kcat       Debian's package, installed only when this runs as root
#
# A peer that cannot be installed is named with what is missing and skipped; the
# script goes on with the others and exits 0. `peers-bench` skips a peer whose files
# are absent with a line saying so.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools=${SLUICE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/tools}
peers=$tools/peers
mkdir -p "$peers"

# The versions measured; the connector's suffix names the Flink release it is for.
confluent_kafka_version=2.16.1
flink_version=2.0.2
flink_kafka_connector_version=4.0.1-2.0
kafka_streams_version=4.0.1

say() { echo "peers install: $*" >&2; }
skip() { say "SKIPPED $1: $2"; }

# kcat: a Debian package.
if command -v kcat >/dev/null 2>&1; then
  say "kcat: present ($(command -v kcat))"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  say "kcat: installing the Debian package"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 \
      apt-get install -y -qq --no-install-recommends kcat; } >&2 ||
    skip kcat "apt-get install kcat failed (see above)"
else
  skip kcat "'kcat' not found and not root; install it with: sudo apt-get install kcat"
fi

# A venv with pinned packages, made again only when the stamp names other packages.
venv() { # venv DIR STAMP PACKAGES...
  local dir=$1 stamp=$2
  shift 2
  if [[ -f $dir/.installed && $(cat "$dir/.installed") == "$stamp" ]]; then
    say "$(basename "$dir"): present ($stamp)"
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || { echo "'python3' not found; install it with: apt-get install python3 python3-venv"; return 1; }
  rm -rf "$dir"
  python3 -m venv "$dir" >&2 || { echo "python3 -m venv failed; install it with: apt-get install python3-venv"; return 1; }
  say "$(basename "$dir"): installing $*"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@" >&2 ||
    { echo "pip install $* failed (see above)"; return 1; }
  echo "$stamp" >"$dir/.installed"
}

if ! why=$(venv "$peers/py" "confluent-kafka==$confluent_kafka_version" "confluent-kafka==$confluent_kafka_version"); then
  skip "python confluent-kafka loop" "$why"
fi

# PyFlink runs its mini-cluster in a JVM: Java 11 or 17.
if ! command -v java >/dev/null 2>&1; then
  skip pyflink "'java' not found (PyFlink $flink_version runs a JVM); install it with: apt-get install openjdk-17-jre-headless"
elif ! why=$(venv "$peers/pyflink" "apache-flink==$flink_version" "apache-flink==$flink_version"); then
  skip pyflink "$why"
else
  jar=$peers/pyflink/lib/flink-sql-connector-kafka-$flink_kafka_connector_version.jar
  if [[ -f $jar ]]; then
    say "pyflink connector: present ($jar)"
  elif ! command -v mvn >/dev/null 2>&1; then
    skip pyflink "'mvn' not found (fetches flink-sql-connector-kafka); install it with: apt-get install maven"
  else
    mkdir -p "$peers/pyflink/lib"
    say "pyflink connector: fetching flink-sql-connector-kafka $flink_kafka_connector_version"
    mvn -q dependency:copy \
      -Dartifact="org.apache.flink:flink-sql-connector-kafka:$flink_kafka_connector_version" \
      -DoutputDirectory="$peers/pyflink/lib" >&2 ||
      skip pyflink "could not fetch org.apache.flink:flink-sql-connector-kafka:$flink_kafka_connector_version with Maven (see above)"
  fi
fi

# Kafka Streams: compiled with Maven; the classpath points into Maven's repository.
classpath=$peers/kafka-streams.classpath
if ! command -v mvn >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
  skip "kafka streams" "'mvn' or 'java' not found; install them with: apt-get install maven openjdk-17-jdk-headless"
elif [[ -f $classpath && $classpath -nt $here/kafka-streams/pom.xml &&
  $classpath -nt $here/kafka-streams/src/main/java/sluice/peers/PassThrough.java ]]; then
  say "kafka streams: present ($classpath)"
else
  say "kafka streams: building the pass-through topology against kafka-streams $kafka_streams_version"
  if mvn -q -f "$here/kafka-streams/pom.xml" -Dkafka.streams.version="$kafka_streams_version" \
    package dependency:build-classpath -Dmdep.outputFile="$peers/kafka-streams.deps" >&2; then
    echo "$here/kafka-streams/target/classes:$(cat "$peers/kafka-streams.deps")" >"$classpath"
  else
    skip "kafka streams" "the Maven build of bench/peers/kafka-streams failed (see above)"
  fi
fi
exit 0
