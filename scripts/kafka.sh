#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, broker + controller) on 127.0.0.1 for the demo,
# the tests and CI. The broker comes from Maven Central: Maven resolves its classpath
# from scripts/kafka/pom.xml and the broker's own main classes are run with java.
#
#   scripts/kafka.sh start         resolve jars (once), format storage (once), start, wait
#   scripts/kafka.sh status        exit 0 when the broker answers
#   scripts/kafka.sh stop          stop the broker started here
#   scripts/kafka.sh topics ARGS   run kafka-topics against the broker
#   scripts/kafka.sh classpath     print the resolved classpath
#
# State and logs live in $SLUICE_KAFKA_HOME (default .kafka/ in the repository):
# broker.log is the broker's output, data/ its log directory.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=${SLUICE_KAFKA_HOME:-$root/.kafka}
port=${SLUICE_KAFKA_PORT:-9092}
controller_port=${SLUICE_KAFKA_CONTROLLER_PORT:-9093}
bootstrap=127.0.0.1:$port
pom=$root/scripts/kafka/pom.xml
cp_file=$home/classpath.txt
pid_file=$home/broker.pid
log_file=$home/broker.log

mkdir -p "$home"

classpath() {
  # Re-resolve when the pom changes, so a version bump takes effect.
  if [[ ! -s $cp_file || $pom -nt $cp_file ]]; then
    echo "kafka: resolving the broker's classpath with Maven (first run downloads ~100 MB)" >&2
    mvn -q -B -f "$pom" dependency:build-classpath -Dmdep.outputFile="$cp_file.tmp" >"$home/maven.log" 2>&1 || {
      echo "kafka: Maven could not resolve the broker; see $home/maven.log" >&2
      exit 1
    }
    mv "$cp_file.tmp" "$cp_file"
  fi
  cat "$cp_file"
}

run_class() {
  local class=$1
  shift
  java -Xms256m -Xmx1g -cp "$(classpath)" -Dlog4j2.configurationFile="$home/log4j2.properties" "$class" "$@"
}

write_config() {
  cat >"$home/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$home/data
num.partitions=1
# One node: internal topics must have one replica, or groups and transactions stall.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start many consumer groups; the default 3 s join delay slows each one.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  cat >"$home/log4j2.properties" <<PROPS
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=org.apache.kafka
logger.kafka.level=WARN
logger.state.name=state.change.logger
logger.state.level=WARN
PROPS
}

answers() {
  run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --list >/dev/null 2>&1
}

running() {
  [[ -s $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start() {
  if running && answers; then
    echo "kafka: already running at $bootstrap (pid $(cat "$pid_file"))"
    return 0
  fi
  command -v java >/dev/null || { echo "kafka: java not found; install a JDK 17 or later" >&2; exit 1; }
  classpath >/dev/null
  write_config
  if [[ ! -f $home/data/meta.properties ]]; then
    run_class kafka.tools.StorageTool format --standalone -t "$(run_class kafka.tools.StorageTool random-uuid 2>/dev/null)" \
      -c "$home/server.properties" >"$home/format.log" 2>&1 || {
      echo "kafka: formatting storage failed; see $home/format.log" >&2
      exit 1
    }
  fi
  # setsid: the broker must not die with the shell that started it, nor get its signals.
  # The JVM settings of Kafka's own start script: G1 with a 20 ms pause goal, so the
  # broker's collections do not pass for pauses of the pipeline under test.
  setsid java -Xms512m -Xmx2g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -cp "$(classpath)" -Dlog4j2.configurationFile="$home/log4j2.properties" \
    kafka.Kafka "$home/server.properties" >"$log_file" 2>&1 </dev/null &
  echo $! >"$pid_file"
  for _ in $(seq 1 90); do
    if answers; then
      echo "kafka: up at $bootstrap (pid $(cat "$pid_file"), log $log_file)"
      return 0
    fi
    if ! running; then
      echo "kafka: the broker exited during start; last lines of $log_file:" >&2
      tail -n 20 "$log_file" >&2
      exit 1
    fi
    sleep 1
  done
  echo "kafka: no answer from $bootstrap after 90 s; see $log_file" >&2
  exit 1
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pid_file")
    kill "$pid"
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -9 "$pid" 2>/dev/null || true
    echo "kafka: stopped"
  else
    echo "kafka: not running"
  fi
  rm -f "$pid_file"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running && answers; then echo "kafka: running at $bootstrap"; else echo "kafka: not running"; exit 1; fi ;;
  topics) shift; run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@" ;;
  classpath) classpath ;;
  *) echo "usage: scripts/kafka.sh start|stop|status|topics ARGS|classpath" >&2; exit 2 ;;
esac
