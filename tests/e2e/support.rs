//! Helpers for end-to-end tests against the real broker started by
//! `scripts/kafka.sh start`: unique names, topics, producing and reading records, and
//! the `sluice` binary as a child process.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub fn bootstrap() -> String {
    std::env::var("SLUICE_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn create_topic(name: &str, partitions: i32) {
    create_topic_at(&bootstrap(), name, partitions)
}

/// [`create_topic`] on the cluster at `servers`.
pub fn create_topic_at(servers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    // Test records carry fixed timestamps from years ago, which the sink keeps: with the
    // broker's time retention (7 days, checked every 5 minutes) a check could delete
    // them between their writing and their reading back.
    let topic =
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)).set("retention.ms", "-1");
    let results = runtime()
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap_or_else(|e| {
            panic!(
                "creating topic {name} failed: {e}. Is the broker up? Run scripts/kafka.sh start"
            )
        });
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
    // The controller has the topic; the broker learns of it a moment later. A client
    // asking in that moment (over any listener) would be told it does not exist.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    wait_until(
        &format!("topic {name} with its {partitions} partitions led"),
        Duration::from_secs(30),
        || {
            consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .is_ok_and(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
        },
    );
}

/// A record as written to or read from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl TestRecord {
    pub fn value(partition: i32, value: &str) -> Self {
        TestRecord {
            partition,
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: Vec::new(),
            timestamp: None,
        }
    }

    pub fn value_text(&self) -> String {
        String::from_utf8_lossy(self.value.as_deref().unwrap_or_default()).into_owned()
    }
}

pub fn producer() -> BaseProducer {
    producer_at(&bootstrap())
}

/// [`producer`] for the cluster at `servers`.
pub fn producer_at(servers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Writes the records to their partitions, in order, and waits for all of them.
pub fn produce(topic: &str, records: &[TestRecord]) {
    let producer = producer();
    for record in records {
        send(&producer, topic, record);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

pub fn send(producer: &BaseProducer, topic: &str, record: &TestRecord) {
    let headers = (!record.headers.is_empty()).then(|| {
        record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (name, value)| {
                h.insert(Header {
                    key: name,
                    value: value.as_deref(),
                })
            })
    });
    loop {
        let mut base = BaseRecord::<[u8], [u8]>::to(topic).partition(record.partition);
        if let Some(key) = &record.key {
            base = base.key(key);
        }
        if let Some(value) = &record.value {
            base = base.payload(value);
        }
        if let Some(headers) = &headers {
            base = base.headers(headers.clone());
        }
        if let Some(ts) = record.timestamp {
            base = base.timestamp(ts);
        }
        match producer.send(base) {
            Ok(()) => break,
            Err((e, _)) if e.to_string().contains("Queue full") => {
                producer.poll(Duration::from_millis(10))
            }
            Err((e, _)) => panic!("send to {topic}: {e}"),
        }
    }
    producer.poll(Duration::ZERO);
}

/// Per-partition end offsets (the number of records written, for a fresh topic).
pub fn end_offsets(topic: &str) -> BTreeMap<i32, i64> {
    end_offsets_at(&bootstrap(), topic)
}

/// [`end_offsets`] on the cluster at `servers`.
pub fn end_offsets_at(servers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    // A topic created a moment ago may not have its leaders yet: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    (0..partitions)
        .map(|p| {
            loop {
                match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
                    Ok((_, high)) => break (p, high),
                    Err(error) if Instant::now() < deadline => {
                        eprintln!("end offset of {topic}/{p}: {error}; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(error) => panic!("end offset of {topic}/{p}: {error}"),
                }
            }
        })
        .collect()
}

pub fn total(offsets: &BTreeMap<i32, i64>) -> i64 {
    offsets.values().sum()
}

/// A pipeline file's `text` with `lines` added at the top level, after `version`.
pub fn with_top_level(text: &str, lines: &str) -> String {
    text.replacen("version = 1\n", &format!("version = 1\n{lines}\n"), 1)
}

/// Adds `lines` at the top level of the pipeline file at `path`.
pub fn add_top_level(path: impl AsRef<Path>, lines: &str) {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, with_top_level(&text, lines)).unwrap();
}

/// Reads `topic` from the beginning: until at least `expected` records have arrived
/// and every partition has been read to its end (the last committed record, with
/// `read_committed`), or until `timeout` passes; returns what arrived.
///
/// Reading to the end, not stopping at `expected`, lets a caller tell a duplicate
/// from a missing record: a topic holding one duplicate returns `expected + 1`.
pub fn read_all(topic: &str, expected: usize, timeout: Duration) -> Vec<TestRecord> {
    read_all_at(&bootstrap(), topic, expected, timeout)
}

/// [`read_all`] on the cluster at `servers`.
pub fn read_all_at(
    servers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<TestRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let ends = end_offsets_at(servers, topic);
    let mut tpl = TopicPartitionList::new();
    for partition in ends.keys() {
        tpl.add_partition_offset(topic, *partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    // Partitions whose end was reached after their last record so far.
    let mut at_end = std::collections::BTreeSet::new();
    while (records.len() < expected || at_end.len() < ends.len()) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                records.push(TestRecord {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default(),
                    timestamp: m.timestamp().to_millis(),
                });
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}

/// Records grouped by partition, in offset order.
pub fn by_partition(records: &[TestRecord]) -> BTreeMap<i32, Vec<TestRecord>> {
    let mut map: BTreeMap<i32, Vec<TestRecord>> = BTreeMap::new();
    for r in records {
        map.entry(r.partition).or_default().push(r.clone());
    }
    map
}

/// The offsets `group` has committed for `topic` (partitions without one are left out).
pub fn committed(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    committed_at(&bootstrap(), group, topic)
}

/// [`committed`] on the cluster at `servers`.
pub fn committed_at(servers: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for partition in end_offsets_at(servers, topic).keys() {
        tpl.add_partition(topic, *partition);
    }
    // A transaction left open by a host that died blocks this read until the broker
    // aborts it: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(committed) => break committed,
            Err(error) if Instant::now() < deadline => {
                eprintln!("reading committed offsets of {group}: {error}; retrying");
            }
            Err(error) => panic!("reading committed offsets of {group}: {error}"),
        }
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Commits `offset` for every partition of `topic` in `group`, as a previous run would have.
pub fn commit(group: &str, topic: &str, offsets: &BTreeMap<i32, i64>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
}

pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A per-test directory for configuration files and logs.
pub fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn test_plugin(name: &str) -> PathBuf {
    Path::new(env!("SLUICE_TEST_PLUGIN_DIR")).join(format!("{name}.wasm"))
}

/// Pipeline file text: `source_extra` and `sink_extra` are added to those sections,
/// `tail` after them (for example a `[plugin]` section).
pub fn config_text(
    source: &str,
    sink: &str,
    group: &str,
    source_extra: &str,
    sink_extra: &str,
    tail: &str,
) -> String {
    format!(
        r#"version = 1

[source]
bootstrap_servers = "{bootstrap}"
topic = "{source}"
group_id = "{group}"
{source_extra}

[sink]
topic = "{sink}"
{sink_extra}

[checkpoint]
interval_ms = 200
min_pause_ms = 0

{tail}
"#,
        bootstrap = bootstrap(),
    )
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path
}

/// Writes a pipeline file with the defaults and returns its path as text.
pub fn write_config(
    dir: &Path,
    source: &str,
    sink: &str,
    group: &str,
    source_extra: &str,
) -> String {
    let text = config_text(source, sink, group, source_extra, "", "");
    write_file(dir, &format!("{}.toml", unique("sluice")), &text)
        .display()
        .to_string()
}

/// The `sluice` binary running as a child process; killed when dropped.
pub struct Sluice {
    child: Child,
    log: PathBuf,
}

pub fn sluice(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    // Hosts run side by side in tests: no admin endpoint unless a test asks for one.
    // Exactly-once hosts need a stable instance name; a test host keeps one across its
    // restarts (tests that run several hosts in a group pass --instance each).
    command
        .args(args)
        .env_remove("BOOTSTRAP_SERVERS")
        .env("SLUICE_ADMIN", "off")
        .env("SLUICE_INSTANCE", "e2e")
        .env("NO_COLOR", "1");
    command
}

impl Sluice {
    pub fn start(dir: &Path, args: &[&str]) -> Sluice {
        Self::spawn(dir, sluice(args))
    }

    pub fn spawn(dir: &Path, mut command: Command) -> Sluice {
        let log = dir.join(format!("{}.log", unique("sluice")));
        let file = File::create(&log).unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start sluice");
        Sluice { child, log }
    }

    /// The process id, to read its memory in /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sluice exited ({status}) before logging {text:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`wait_until`], but fails at once if the host exits first (its log's end is
    /// printed with the failure).
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !condition() {
            if let Some(status) = self.exited() {
                panic!("sluice exited ({status}) while waiting for {what}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a child's pid and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice still running after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(10))
    }
}

/// How much of a host's log a failing test prints.
const LOG_TAIL_LINES: usize = 60;

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A test failing on what it reads from Kafka says nothing of the hosts: show
        // the end of each host's log with the failure.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last {} lines of sluice log {} ---\n{}",
                LOG_TAIL_LINES.min(lines.len()),
                self.log.display(),
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            );
        }
    }
}

/// Kafka's Java `Utils.murmur2`, to check the generator partitions as Java clients do.
pub fn java_murmur2(data: &[u8]) -> i32 {
    let m: i32 = 0x5bd1_e995;
    let mut h: i32 = (0x9747_b28c_u32 as i32) ^ data.len() as i32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = i32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(m);
        k ^= ((k as u32) >> 24) as i32;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= (tail[2] as i32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as i32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as i32;
        h = h.wrapping_mul(m);
    }
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(m);
    h ^= ((h as u32) >> 15) as i32;
    h
}

/// The partition a Java client picks for `key` among `partitions`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (java_murmur2(key) & 0x7fff_ffff) % partitions
}

/// A loopback address nothing listens on right now.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The running host's `GET /status`.
pub fn admin_status(address: &str) -> serde_json::Value {
    ureq::get(format!("http://{address}/status"))
        .call()
        .unwrap_or_else(|e| panic!("admin endpoint at {address}: {e}"))
        .body_mut()
        .read_json()
        .unwrap()
}

/// The running host's `GET /ready?stall_s=N`: the HTTP status and the JSON answer.
pub fn admin_ready(address: &str, stall_s: u64) -> (u16, serde_json::Value) {
    let mut response = ureq::get(format!("http://{address}/ready?stall_s={stall_s}"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap_or_else(|e| panic!("admin endpoint at {address}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().unwrap())
}

/// SHA-256 of a file, hex, as the host reports plugin digests.
pub fn file_digest(path: &Path) -> String {
    sluice_host::plugin::digest(&std::fs::read(path).unwrap())
}

/// Writes `count` numbered records over six partitions at about `per_second`.
pub fn produce_steadily(
    topic: String,
    count: usize,
    per_second: usize,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    produce_paced(topic, count, per_second, done, |i| {
        TestRecord::value((i % 6) as i32, &format!("rec-{i}"))
    })
}

/// Writes `record(i)` for `i` in `0..count` at about `per_second`, then sets `done`.
pub fn produce_paced(
    topic: String,
    count: usize,
    per_second: usize,
    done: Arc<AtomicBool>,
    record: impl Fn(usize) -> TestRecord + Send + 'static,
) -> std::thread::JoinHandle<()> {
    produce_paced_at(bootstrap(), topic, count, per_second, done, record)
}

/// [`produce_paced`] to the cluster at `servers`.
pub fn produce_paced_at(
    servers: String,
    topic: String,
    count: usize,
    per_second: usize,
    done: Arc<AtomicBool>,
    record: impl Fn(usize) -> TestRecord + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let producer = producer_at(&servers);
        let started = Instant::now();
        for i in 0..count {
            let due = started + Duration::from_secs_f64(i as f64 / per_second as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send(&producer, &topic, &record(i));
        }
        // Long enough to outlast a broker that a test takes away for a minute.
        rdkafka::producer::Producer::flush(&producer, Duration::from_secs(180)).unwrap();
        done.store(true, Ordering::SeqCst);
    })
}

/// Where `scripts/kafka.sh` keeps the shared test broker: `$SLUICE_KAFKA_HOME`, else
/// `.kafka` in the repository.
pub fn shared_kafka_home() -> PathBuf {
    std::env::var_os("SLUICE_KAFKA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.kafka"))
}

/// A broker of the test's own, for tests that take it away: `scripts/kafka.sh` in a
/// temporary home under the shared broker's (whose `stop` also stops this one, should
/// the test run be cut short), on free ports. Stopped when dropped.
pub struct OwnBroker {
    home: tempfile::TempDir,
    port: u16,
    controller_port: u16,
    /// The listener a proxy forwards to, and the proxy's port it advertises.
    proxied: Option<(u16, u16)>,
}

impl OwnBroker {
    pub fn start() -> OwnBroker {
        let parent = shared_kafka_home().join("test-brokers");
        std::fs::create_dir_all(&parent).unwrap();
        let home = tempfile::tempdir_in(parent).unwrap();
        // The jars the shared broker resolved, so that no Maven run is needed.
        let classpath = shared_kafka_home().join("classpath.txt");
        if classpath.is_file() {
            std::fs::copy(&classpath, home.path().join("classpath.txt")).unwrap();
        }
        let port = |address: String| address.rsplit_once(':').unwrap().1.parse().unwrap();
        let broker = OwnBroker {
            home,
            port: port(free_address()),
            controller_port: port(free_address()),
            proxied: None,
        };
        broker.script("start");
        broker
    }

    pub fn servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker at once, as a machine that crashes would, and waits until it
    /// is gone.
    pub fn kill(&self) {
        let pid = self.signal(libc::SIGKILL);
        wait_until(
            "the killed broker to be gone",
            Duration::from_secs(30),
            || {
                // SAFETY: signal 0 only asks whether the process exists.
                unsafe { libc::kill(pid, 0) != 0 }
            },
        );
    }

    /// Stops the broker without closing its connections, as a machine that hangs or
    /// a network that drops every packet would: requests get no answer.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused broker go on.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends `signal` to the broker's process; returns its pid.
    fn signal(&self, signal: i32) -> i32 {
        let pid: i32 = std::fs::read_to_string(self.home.path().join("broker.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill(2) with the broker's pid and a valid signal number.
        unsafe {
            libc::kill(pid, signal);
        }
        pid
    }

    /// Starts the broker again on the same ports and data.
    pub fn restart(&self) {
        self.script("start");
    }

    /// `scripts/kafka.sh COMMAND` for this broker.
    fn script_command(&self, command: &str) -> Command {
        let mut script =
            Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh"));
        script
            .arg(command)
            .env("SLUICE_KAFKA_HOME", self.home.path())
            .env("SLUICE_KAFKA_PORT", self.port.to_string())
            .env(
                "SLUICE_KAFKA_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env_remove("SLUICE_KAFKA_PROXIED_PORT")
            .env_remove("SLUICE_KAFKA_PROXIED_ADVERTISED_PORT")
            .env_remove("SLUICE_KAFKA_AUTH")
            .env_remove("SLUICE_KAFKA_NICE")
            .env_remove("SLUICE_KAFKA_GC_OPTS");
        if let Some((listener, advertised)) = self.proxied {
            script
                .env("SLUICE_KAFKA_PROXIED_PORT", listener.to_string())
                .env(
                    "SLUICE_KAFKA_PROXIED_ADVERTISED_PORT",
                    advertised.to_string(),
                );
        }
        script
    }

    fn script(&self, command: &str) {
        let output = self.script_command(command).output().unwrap();
        assert!(
            output.status.success(),
            "scripts/kafka.sh {command} for the test's own broker at {}: {}{}",
            self.servers(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        // A broker a failed test left paused could not act on the stop.
        if self.home.path().join("broker.pid").is_file() {
            self.resume();
        }
        let _ = self.script_command("stop").output();
    }
}

/// Peak resident memory of a running process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

impl OwnBroker {
    /// A broker of the test's own (see [`OwnBroker::start`]) behind a fault-injecting
    /// proxy: it also listens on a port of its own for the proxy, and tells clients that
    /// came through the proxy to come back through it. Clients of
    /// [`OwnBroker::servers`] reach the broker directly.
    pub fn start_proxied() -> (OwnBroker, crate::proxy::Proxy) {
        let port = |address: String| address.rsplit_once(':').unwrap().1.parse().unwrap();
        let (listener, proxy_address) = (port(free_address()), free_address());
        // The proxy first: its port is the address the broker advertises.
        let proxy = crate::proxy::Proxy::start(&proxy_address, &format!("127.0.0.1:{listener}"));
        let parent = shared_kafka_home().join("test-brokers");
        std::fs::create_dir_all(&parent).unwrap();
        let home = tempfile::tempdir_in(parent).unwrap();
        let classpath = shared_kafka_home().join("classpath.txt");
        if classpath.is_file() {
            std::fs::copy(&classpath, home.path().join("classpath.txt")).unwrap();
        }
        let broker = OwnBroker {
            home,
            port: port(free_address()),
            controller_port: port(free_address()),
            proxied: Some((listener, port(proxy.address()))),
        };
        broker.script("start");
        (broker, proxy)
    }
}
