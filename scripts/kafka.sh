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
#   scripts/kafka.sh msk-iam-verify TOKEN NOW_MS REGION KEY:SECRET [MAX_LIFETIME_MS]
#                                  check one MSK IAM token with the test broker's validator
#
# State and logs live in $SLUICE_KAFKA_HOME (default .kafka/ in the repository):
# broker.log is the broker's output, data/ its log directory, gc.log its collections.
# SLUICE_KAFKA_GC_OPTS replaces the JVM's collector settings; SLUICE_KAFKA_NICE (e.g. -10,
# as root) gives the broker CPU precedence over the other processes of this machine.
#
# With SLUICE_KAFKA_AUTH=1 the broker also gets authenticated listeners for tests,
# on the ports below (each overridable by its variable; defaults follow the plain port):
#   SSL             SLUICE_KAFKA_SSL_PORT             port+2  TLS, server certificate only
#   MTLS            SLUICE_KAFKA_MTLS_PORT            port+3  TLS with a required client certificate
#   SASL_SSL        SLUICE_KAFKA_SASL_SSL_PORT        port+4  PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
#   SASL_PLAINTEXT  SLUICE_KAFKA_SASL_PLAINTEXT_PORT  port+5  PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
#   IAM             SLUICE_KAFKA_IAM_PORT             port+6  SASL_SSL OAUTHBEARER, MSK IAM tokens
#   IAM_SHORT       SLUICE_KAFKA_IAM_SHORT_PORT       port+7  the same, tokens valid for 8 s only
# A CA, the broker's and a client's certificates are generated into $SLUICE_KAFKA_HOME/auth/,
# SCRAM users are created at start, and auth/test.env lists every address and test
# credential for the tests. The IAM listeners check tokens with
# scripts/kafka/msk-iam/MskIamValidator.java (compiled here) against known test keys.
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
auth=${SLUICE_KAFKA_AUTH:-0}
auth_dir=$home/auth
ssl_port=${SLUICE_KAFKA_SSL_PORT:-$((port + 2))}
mtls_port=${SLUICE_KAFKA_MTLS_PORT:-$((port + 3))}
sasl_ssl_port=${SLUICE_KAFKA_SASL_SSL_PORT:-$((port + 4))}
sasl_plaintext_port=${SLUICE_KAFKA_SASL_PLAINTEXT_PORT:-$((port + 5))}
iam_port=${SLUICE_KAFKA_IAM_PORT:-$((port + 6))}
iam_short_port=${SLUICE_KAFKA_IAM_SHORT_PORT:-$((port + 7))}
proxied_port=${SLUICE_KAFKA_PROXIED_PORT:-}
proxied_advertised_port=${SLUICE_KAFKA_PROXIED_ADVERTISED_PORT:-}
# The proxied listener, added to every list of listeners when asked for.
proxied_listener= proxied_advertised= proxied_protocol=
if [[ -n $proxied_port ]]; then
  proxied_listener=,PROXIED://127.0.0.1:$proxied_port
  proxied_advertised=,PROXIED://127.0.0.1:${proxied_advertised_port:?SLUICE_KAFKA_PROXIED_PORT needs SLUICE_KAFKA_PROXIED_ADVERTISED_PORT}
  proxied_protocol=,PROXIED:PLAINTEXT
fi
# Test credentials only: this broker is for development and tests on 127.0.0.1.
sasl_user=sluice
sasl_password=sluice-test-password
key_password=sluice-test-key-password
iam_region=us-west-2
iam_access_key=AKIASLUICETESTKEY
iam_secret_key=sluice/test+secret/key

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

validator_classes() {
  local src=$root/scripts/kafka/msk-iam/MskIamValidator.java out=$home/msk-iam
  if [[ ! -f $out/sluice/kafka/MskIamValidator.class || $src -nt $out/sluice/kafka/MskIamValidator.class ]]; then
    mkdir -p "$out"
    javac -nowarn -cp "$(classpath)" -d "$out" "$src" >"$home/javac.log" 2>&1 || {
      echo "kafka: compiling $src failed; see $home/javac.log" >&2
      exit 1
    }
  fi
  echo "$out"
}

# A CA, a broker certificate for 127.0.0.1 and localhost, and a client certificate whose
# key is encrypted with a passphrase (as a client's key often is).
make_certificates() {
  [[ -s $auth_dir/client.pem ]] && return 0
  mkdir -p "$auth_dir"
  command -v openssl >/dev/null || { echo "kafka: openssl not found; install openssl" >&2; exit 1; }
  (
    cd "$auth_dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj "/CN=Sluice test CA" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem -days 3650 -extfile broker.ext 2>/dev/null
    # Kafka reads PEM keystores: the PKCS#8 key followed by the certificate.
    openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.p8
    cat broker.p8 broker.pem >broker-keystore.pem
    openssl req -newkey rsa:2048 -nodes -keyout client-plain.key -out client.csr -subj "/CN=sluice-client" 2>/dev/null
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 3650 2>/dev/null
    openssl pkcs8 -topk8 -v2 aes-256-cbc -in client-plain.key -out client.key -passout "pass:$key_password"
    # A certificate from another CA: the broker must refuse it.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout stranger.key -out stranger.pem -days 3650 -subj "/CN=stranger" 2>/dev/null
    rm -f broker.csr client.csr broker.ext broker.key broker.p8 client-plain.key
  )
}

write_auth_config() {
  local validator="org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required"
  validator+=" unsecuredLoginStringClaim_sub=\"broker\" region=\"$iam_region\" credentials=\"$iam_access_key:$iam_secret_key\""
  cat >>"$home/server.properties" <<PROPS

# Authenticated listeners for tests (SLUICE_KAFKA_AUTH=1).
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SSL://127.0.0.1:$ssl_port,MTLS://127.0.0.1:$mtls_port,SASL_SSL://127.0.0.1:$sasl_ssl_port,SASL_PLAINTEXT://127.0.0.1:$sasl_plaintext_port,IAM://127.0.0.1:$iam_port,IAM_SHORT://127.0.0.1:$iam_short_port$proxied_listener
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SSL://127.0.0.1:$ssl_port,MTLS://127.0.0.1:$mtls_port,SASL_SSL://127.0.0.1:$sasl_ssl_port,SASL_PLAINTEXT://127.0.0.1:$sasl_plaintext_port,IAM://127.0.0.1:$iam_port,IAM_SHORT://127.0.0.1:$iam_short_port$proxied_advertised
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,IAM:SASL_SSL,IAM_SHORT:SASL_SSL$proxied_protocol
inter.broker.listener.name=PLAINTEXT
ssl.keystore.type=PEM
ssl.keystore.location=$auth_dir/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$auth_dir/ca.pem
listener.name.mtls.ssl.client.auth=required
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.iam.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.iam.oauthbearer.sasl.server.callback.handler.class=sluice.kafka.MskIamValidator
listener.name.iam.oauthbearer.sasl.jaas.config=$validator;
listener.name.iam_short.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.iam_short.oauthbearer.sasl.server.callback.handler.class=sluice.kafka.MskIamValidator
listener.name.iam_short.oauthbearer.sasl.jaas.config=$validator maxLifetimeMs="8000";
# Sessions end when their token expires, so clients must re-authenticate with a fresh one.
listener.name.iam.oauthbearer.connections.max.reauth.ms=900000
listener.name.iam_short.oauthbearer.connections.max.reauth.ms=900000
PROPS
  cat >"$auth_dir/test.env" <<ENV
SSL=127.0.0.1:$ssl_port
MTLS=127.0.0.1:$mtls_port
SASL_SSL=127.0.0.1:$sasl_ssl_port
SASL_PLAINTEXT=127.0.0.1:$sasl_plaintext_port
IAM=127.0.0.1:$iam_port
IAM_SHORT=127.0.0.1:$iam_short_port
CA=$auth_dir/ca.pem
CLIENT_CERT=$auth_dir/client.pem
CLIENT_KEY=$auth_dir/client.key
CLIENT_KEY_PASSWORD=$key_password
STRANGER_CERT=$auth_dir/stranger.pem
STRANGER_KEY=$auth_dir/stranger.key
SASL_USER=$sasl_user
SASL_PASSWORD=$sasl_password
IAM_REGION=$iam_region
IAM_ACCESS_KEY=$iam_access_key
IAM_SECRET_KEY=$iam_secret_key
ENV
}

# SCRAM credentials live in the cluster metadata: set them through the admin API, one
# mechanism per request (the broker refuses two changes to one user in one request).
add_scram_users() {
  local mechanism
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    run_class kafka.admin.ConfigCommand --bootstrap-server "$bootstrap" --alter --entity-type users \
      --entity-name "$sasl_user" --add-config "$mechanism=[iterations=4096,password=$sasl_password]" \
      >"$home/scram.log" 2>&1 || {
      echo "kafka: creating the $mechanism user failed; see $home/scram.log" >&2
      exit 1
    }
  done
}

write_config() {
  cat >"$home/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port$proxied_listener
advertised.listeners=PLAINTEXT://127.0.0.1:$port$proxied_advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$proxied_protocol
# The broker's own traffic (transaction markers) uses the plain listener, never a proxy.
inter.broker.listener.name=PLAINTEXT
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
    if [[ $auth == 1 ]] && ! grep -q '^listener.name.iam' "$home/server.properties"; then
      echo "kafka: restarting the broker at $bootstrap with the authenticated listeners"
      stop
    else
      echo "kafka: already running at $bootstrap (pid $(cat "$pid_file"))"
      return 0
    fi
  fi
  command -v java >/dev/null || { echo "kafka: java not found; install a JDK 17 or later" >&2; exit 1; }
  # Another broker (another SLUICE_KAFKA_HOME) or program on the port would answer in
  # this broker's place.
  if ! running && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "kafka: port $port is already taken by a process this script did not start from $home;" \
      "stop it (scripts/kafka.sh stop with its SLUICE_KAFKA_HOME) or choose another port with SLUICE_KAFKA_PORT" >&2
    exit 1
  fi
  classpath >/dev/null
  write_config
  local broker_cp
  broker_cp=$(classpath)
  if [[ $auth == 1 ]]; then
    make_certificates
    write_auth_config
    broker_cp=$(validator_classes):$broker_cp
  fi
  if [[ ! -f $home/data/meta.properties ]]; then
    run_class kafka.tools.StorageTool format --standalone -t "$(run_class kafka.tools.StorageTool random-uuid 2>/dev/null)" \
      -c "$home/server.properties" >"$home/format.log" 2>&1 || {
      echo "kafka: formatting storage failed; see $home/format.log" >&2
      exit 1
    }
  fi
  # setsid: the broker must not die with the shell that started it, nor get its signals.
  # The JVM settings of Kafka's own start script: G1 with a 20 ms pause goal, so the
  # broker's collections do not pass for pauses of the pipeline under test. Each
  # collection's pause is logged to gc.log (wall-clock times), to tell them apart.
  # MaxTenuringThreshold=1: what survives a young collection here mostly lives for
  # minutes (sessions, metrics), and G1 copied it up to 15 times, one collection after
  # another: about 5 MB per pause. Promoted at once, it is copied once.
  local gc_opts=${SLUICE_KAFKA_GC_OPTS:--Xms512m -Xmx2g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxTenuringThreshold=1}
  # SLUICE_KAFKA_NICE (e.g. -10) gives the broker CPU precedence over everything else on
  # this machine, as brokers on machines of their own have: its threads start at that
  # nice value, and its session (its scheduling autogroup) gets it too. Benchmarks of
  # latency use it; a negative value needs root.
  local nice_cmd=()
  [[ -n ${SLUICE_KAFKA_NICE:-} ]] && nice_cmd=(nice -n "$SLUICE_KAFKA_NICE")
  # shellcheck disable=SC2086 # the options are separate words
  "${nice_cmd[@]}" setsid java $gc_opts -Xlog:gc:file="$home/gc.log":time:filecount=2,filesize=20m -cp "$broker_cp" -Dlog4j2.configurationFile="$home/log4j2.properties" \
    kafka.Kafka "$home/server.properties" >"$log_file" 2>&1 </dev/null &
  echo $! >"$pid_file"
  for _ in $(seq 1 90); do
    if answers; then
      # Only now is the broker surely in the session setsid made for it.
      [[ -n ${SLUICE_KAFKA_NICE:-} ]] && set_autogroup_nice "$(cat "$pid_file")" "$SLUICE_KAFKA_NICE"
      [[ $auth == 1 ]] && add_scram_users
      echo "kafka: up at $bootstrap (pid $(cat "$pid_file"), log $log_file)"
      [[ $auth == 1 ]] && echo "kafka: authenticated listeners listed in $auth_dir/test.env"
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

set_autogroup_nice() {
  local autogroup=/proc/$1/autogroup
  [[ -e $autogroup ]] || return 0
  if ! (echo "$2" >"$autogroup") 2>/dev/null; then
    echo "kafka: could not set the broker's autogroup nice to $2 (a negative value needs root)" >&2
  fi
}

stop() {
  # Brokers that tests started for themselves under this home (tests/e2e/support.rs,
  # OwnBroker), should a test run have been cut short before stopping them.
  local own
  for own in "$home"/test-brokers/*/broker.pid; do
    [[ -s $own ]] && kill -9 "$(cat "$own")" 2>/dev/null || true
  done
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
  msk-iam-verify) shift; java -cp "$(validator_classes):$(classpath)" sluice.kafka.MskIamValidator "$@" ;;
  *) echo "usage: scripts/kafka.sh start|stop|status|topics ARGS|classpath|msk-iam-verify ARGS" >&2; exit 2 ;;
esac
