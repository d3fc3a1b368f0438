//! The failure model: every fault ends with the record going on (written, or in the
//! dead-letter topic with the reason) or the host stopping clearly (exit 1, the record
//! named, its offset uncommitted). Never a skip, a silent loop or a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::*;

/// Creates `name` with topic-level `configs`, and waits until the broker serves it.
fn create_topic_with(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let topic = configs.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)).set("retention.ms", "-1"),
        |topic, (key, value)| topic.set(key, value),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for result in runtime
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap()
    {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
    // Served once its end offsets can be read.
    wait_until(
        &format!("topic {name} served"),
        Duration::from_secs(30),
        || end_offsets(name).len() == partitions as usize,
    );
}

/// Header names and values as bytes.
type RawHeaders = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A record's headers as bytes: rdkafka's own accessors panic on a name that is not
/// UTF-8.
fn raw_headers(message: &BorrowedMessage<'_>) -> RawHeaders {
    use rdkafka::bindings as rd;
    let mut headers = std::ptr::null_mut();
    // SAFETY: a live message; the headers belong to it and are read before it goes.
    unsafe {
        if rd::rd_kafka_message_headers(message.ptr(), &mut headers)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Vec::new();
        }
        (0..rd::rd_kafka_header_cnt(headers))
            .map(|index| {
                let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
                rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size);
                (
                    std::ffi::CStr::from_ptr(name).to_bytes().to_vec(),
                    (!value.is_null())
                        .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec()),
                )
            })
            .collect()
    }
}

/// Every record of partition 0 of `topic` (read committed), as value and raw headers.
fn read_raw(topic: &str, expected: usize) -> Vec<(String, RawHeaders)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("raw-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    let mut at_end = false;
    while (records.len() < expected || !at_end) && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                at_end = false;
                records.push((
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                    raw_headers(&message),
                ));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => at_end = true,
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    records
}

/// The name of the header a bad producer wrote: not UTF-8.
const BAD_NAME: &[u8] = b"bad\xff\xfename";

/// Writes `values` to partition 0 of `topic`; the one at `bad` carries a header whose
/// name is not UTF-8, which rdkafka's safe API cannot write.
fn produce_with_bad_header(topic: &str, values: &[&str], bad: usize) {
    let producer = producer();
    for (i, value) in values.iter().enumerate() {
        let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "good",
            value: Some("1"),
        });
        if i == bad {
            // SAFETY: an `OwnedHeaders` is librdkafka's header list itself (rdkafka
            // converts one pointer into the other the same way); the name and value
            // are copied by librdkafka.
            unsafe {
                let list = headers.as_borrowed() as *const BorrowedHeaders
                    as *mut rdkafka::bindings::rd_kafka_headers_t;
                rdkafka::bindings::rd_kafka_header_add(
                    list,
                    BAD_NAME.as_ptr().cast(),
                    BAD_NAME.len() as isize,
                    b"v".as_ptr().cast(),
                    1,
                );
            }
        }
        let record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(0)
            .payload(value.as_bytes())
            .headers(headers);
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Runs `sluice` to its end (failing the test after `limit`): exit code and log. A
/// panic, whatever its cause, fails the test.
fn run_to_end(dir: &Path, args: &[&str], limit: Duration) -> (i32, String) {
    let mut host = Sluice::start(dir, args);
    let status = host.wait(limit);
    let log = host.log();
    assert!(!log.contains("panicked"), "the host never panics:\n{log}");
    (status.code().unwrap_or(-1), log)
}

fn faulty_config(
    dir: &Path,
    names: (&str, &str, &str),
    delivery: &str,
    sink_extra: &str,
    plugin_config: &str,
) -> PathBuf {
    faulty_config_with(dir, names, delivery, sink_extra, "", plugin_config)
}

/// [`faulty_config`] with `plugin_keys` in the `[plugin]` table.
fn faulty_config_with(
    dir: &Path,
    (input, output, group): (&str, &str, &str),
    delivery: &str,
    sink_extra: &str,
    plugin_keys: &str,
    plugin_config: &str,
) -> PathBuf {
    let tail = format!(
        "[plugin]\npath = \"{}\"\n{plugin_keys}\n[plugin.config]\n{plugin_config}",
        test_plugin("sluice_test_faulty").display()
    );
    let config = write_file(
        dir,
        &format!("{}.toml", unique("c")),
        &config_text(input, output, group, "", sink_extra, &tail),
    );
    add_top_level(&config, &format!("delivery = \"{delivery}\""));
    config
}

fn names(prefix: &str) -> (String, String, String) {
    (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    )
}

#[test]
fn a_header_name_that_is_not_utf8_goes_to_the_dead_letter_topic() {
    let dir = workdir();
    let (input, output, group) = names("badhdr-dlq");
    let dead_letter = unique("badhdr-dead");
    create_topic(&input, 1);
    create_topic(&output, 1);
    create_topic(&dead_letter, 1);
    produce_with_bad_header(&input, &["first", "bad", "last"], 1);
    let config = faulty_config(
        dir.path(),
        (&input, &output, &group),
        "at-least-once",
        &format!("dead_letter_topic = \"{dead_letter}\""),
        "",
    );
    let mut host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    host.wait_until("every offset committed", Duration::from_secs(60), || {
        committed(&group, &input).get(&0) == Some(&3)
    });
    let written: Vec<String> = read_raw(&output, 2).into_iter().map(|(v, _)| v).collect();
    assert_eq!(written, ["first", "last"]);
    let dead = read_raw(&dead_letter, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (value, headers) = &dead[0];
    assert_eq!(value, "bad");
    // As it was read, the bad name included, with the reason and the origin.
    assert!(
        headers
            .iter()
            .any(|(name, value)| name == BAD_NAME && value.as_deref() == Some(b"v")),
        "{headers:?}"
    );
    let header = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name == wanted.as_bytes())
            .and_then(|(_, value)| value.clone())
            .map(|value| String::from_utf8(value).unwrap())
    };
    let error = header("sluice-error").expect("the reason");
    assert!(error.contains("is not UTF-8"), "{error}");
    assert_eq!(header("sluice-source"), Some(format!("{input}/0@1")));
    let status = host.terminate();
    let log = host.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_header_name_that_is_not_utf8_stops_the_host_naming_the_record() {
    header_stop_case("at-least-once");
}

#[test]
fn exactly_once_a_header_name_that_is_not_utf8_stops_the_host_naming_the_record() {
    header_stop_case("exactly-once");
}

/// Without a dead-letter topic: exit 1 naming the record, after the records before it
/// are written and committed; it stays uncommitted, and a restart stops the same way.
fn header_stop_case(delivery: &str) {
    let dir = workdir();
    let (input, output, group) = names("badhdr-stop");
    create_topic(&input, 1);
    create_topic(&output, 1);
    produce_with_bad_header(&input, &["first", "second", "bad", "after"], 2);
    let config = faulty_config(dir.path(), (&input, &output, &group), delivery, "", "");
    let config = config.to_str().unwrap();
    for _ in 0..2 {
        let (code, log) = run_to_end(
            dir.path(),
            &["run", "--config", config],
            Duration::from_secs(60),
        );
        assert_eq!(code, 1, "{log}");
        assert!(
            log.contains(&format!(
                "record {input}/0@2 cannot be handed to the plugin"
            )) && log.contains("is not UTF-8"),
            "{log}"
        );
        assert!(!log.contains("Stopped cleanly"), "{log}");
        assert_eq!(
            committed(&group, &input),
            BTreeMap::from([(0, 2)]),
            "the records before it are committed, it is not"
        );
    }
    let written: Vec<String> = read_raw(&output, 2).into_iter().map(|(v, _)| v).collect();
    assert_eq!(written, ["first", "second"]);
}

#[test]
fn a_host_fenced_by_another_with_its_instance_id_stops_at_once_with_exit_1() {
    let dir = workdir();
    let (input, output, group) = names("fenced");
    create_topic(&input, 1);
    create_topic(&output, 1);
    let instance = unique("member");
    let text = config_text(
        &input,
        &output,
        &group,
        &format!("kafka = {{ \"group.instance.id\" = \"{instance}\" }}"),
        "",
        "",
    );
    let config = write_file(dir.path(), "fenced.toml", &text);
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--instance",
        &instance,
    ];
    let mut first = Sluice::start(dir.path(), &args);
    first.wait_for_log("Partitions assigned.", Duration::from_secs(60));
    let mut second = Sluice::start(dir.path(), &args);
    second.wait_for_log("Partitions assigned.", Duration::from_secs(60));
    let status = first.wait(Duration::from_secs(60));
    let log = first.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("this host was fenced"), "{log}");
    assert!(!log.contains("Stopped cleanly"), "{log}");
    // The member that took over goes on.
    produce(&input, &[TestRecord::value(0, "after")]);
    second.wait_until("the record written", Duration::from_secs(30), || {
        end_offsets(&output).get(&0) == Some(&1)
    });
    assert_eq!(second.terminate().code(), Some(0));
}

#[test]
fn a_changelog_write_the_broker_refuses_keeps_offsets_and_state_uncommitted() {
    changelog_refused_case("at-least-once");
}

#[test]
fn exactly_once_a_changelog_write_the_broker_refuses_stops_the_host_in_bounded_time() {
    changelog_refused_case("exactly-once");
}

/// Keyed state whose changelog record the broker refuses for good: the host stops
/// with exit 1 (exactly-once after the bounded retries, not a loop), and nothing is
/// committed, so the records the state counted are read again at restart.
fn changelog_refused_case(delivery: &str) {
    let dir = workdir();
    let (input, output, group) = names("bigstate");
    create_topic(&input, 1);
    create_topic(&output, 1);
    // The changelog refuses records over 2000 bytes; the plugin's state value has 5000.
    create_topic_with(
        &format!("{group}-state-changelog"),
        1,
        &[("cleanup.policy", "compact"), ("max.message.bytes", "2000")],
    );
    produce(
        &input,
        &(0..10)
            .map(|i| TestRecord::value(0, &format!("r{i}")))
            .collect::<Vec<_>>(),
    );
    let config = faulty_config(
        dir.path(),
        (&input, &output, &group),
        delivery,
        "",
        "count_in_state = \"seen\"\nstate_bytes = \"5000\"",
    );
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(90),
    );
    assert_eq!(code, 1, "{log}");
    let changelog = format!("{group}-state-changelog");
    match delivery {
        "exactly-once" => assert!(
            log.contains("refused the same write 5 times in a row") && log.contains(&changelog),
            "{log}"
        ),
        _ => assert!(
            log.contains(&format!("state changes to changelog `{changelog}`"))
                && log.contains("stay uncommitted"),
            "{log}"
        ),
    }
    assert!(!log.contains("Final checkpoint committed"), "{log}");
    // Offsets never outrun state: what the state counted is read again at restart.
    assert_eq!(committed(&group, &input), BTreeMap::new());
}

/// Records `s0`, `big 1`, `s2` to partition 0 of a new input topic, never committed
/// by the group; the faulty plugin turns `big 1` into an output of 5000 bytes, which
/// the output topic (`max.message.bytes` 2000) refuses for good.
fn oversized_output_setup(
    dir: &Path,
    delivery: &str,
    dead_letter: Option<&str>,
) -> (String, String, String, PathBuf) {
    oversized_output_setup_with(dir, delivery, dead_letter, 5000)
}

/// [`oversized_output_setup`] with an output of `size` bytes.
fn oversized_output_setup_with(
    dir: &Path,
    delivery: &str,
    dead_letter: Option<&str>,
    size: usize,
) -> (String, String, String, PathBuf) {
    let (input, output, group) = names("oversize");
    create_topic(&input, 1);
    create_topic_with(&output, 1, &[("max.message.bytes", "2000")]);
    produce(
        &input,
        &[
            TestRecord::value(0, "s0"),
            TestRecord::value(0, "big 1"),
            TestRecord::value(0, "s2"),
        ],
    );
    let sink_extra = dead_letter
        .map(|topic| format!("dead_letter_topic = \"{topic}\""))
        .unwrap_or_default();
    let config = faulty_config(
        dir,
        (&input, &output, &group),
        delivery,
        &sink_extra,
        &format!("grow_on = \"big\"\ngrow_to = \"{size}\""),
    );
    (input, output, group, config)
}

#[test]
fn exactly_once_an_output_the_broker_refuses_stops_the_host_naming_its_record() {
    oversized_output_stops("exactly-once");
}

#[test]
fn at_least_once_an_output_the_broker_refuses_stops_the_host_naming_its_record() {
    oversized_output_stops("at-least-once");
}

/// Without a dead-letter topic: exit 1 in bounded time, naming the input record; not
/// skipped (nothing after it committed or written), so a restart retries it.
fn oversized_output_stops(delivery: &str) {
    let dir = workdir();
    let (input, output, group, config) = oversized_output_setup(dir.path(), delivery, None);
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(90),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        // "input record ..." when the delivery report names it, "record ... failed 5
        // times in a row" when the retries end it.
        log.contains(&format!("record {input}/0@1")) && log.contains("too large"),
        "names the record and the cause: {log}"
    );
    let committed = committed(&group, &input).get(&0).copied().unwrap_or(0);
    assert!(committed <= 1, "committed past the record: {committed}");
    let written: Vec<String> = read_all(&output, 0, Duration::from_secs(10))
        .iter()
        .map(TestRecord::value_text)
        .collect();
    assert!(
        !written.contains(&"s2".to_string()),
        "nothing after it is written: {written:?}"
    );
}

#[test]
fn exactly_once_an_output_the_broker_refuses_sends_its_record_to_the_dead_letter_topic() {
    oversized_output_dead_lettered("exactly-once");
}

#[test]
fn at_least_once_an_output_the_broker_refuses_sends_its_record_to_the_dead_letter_topic() {
    oversized_output_dead_lettered("at-least-once");
}

/// With a dead-letter topic: after the bounded retries the input record goes there
/// with the reason, the others to the output (exactly-once: each once), and every
/// offset is committed. On a partition the group never committed, so the retries must
/// rewind to the first offset read.
fn oversized_output_dead_lettered(delivery: &str) {
    let dir = workdir();
    let dead_letter = unique("oversize-dead");
    create_topic(&dead_letter, 1);
    let (input, output, group, config) =
        oversized_output_setup(dir.path(), delivery, Some(&dead_letter));
    let mut host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    host.wait_until("every offset committed", Duration::from_secs(90), || {
        committed(&group, &input).get(&0) == Some(&3)
    });
    let mut written: Vec<String> = read_all(&output, 2, Duration::from_secs(30))
        .iter()
        .map(TestRecord::value_text)
        .collect();
    if delivery == "at-least-once" {
        // Written again after each rewind, at least once.
        written.dedup();
    }
    assert_eq!(written, ["s0", "s2"]);
    let dead = read_all(&dead_letter, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value_text(), "big 1");
    let error = dead[0]
        .headers
        .iter()
        .find(|(name, _)| name == "sluice-error")
        .and_then(|(_, value)| value.clone())
        .map(|value| String::from_utf8(value).unwrap())
        .expect("the reason");
    assert!(
        error.contains("too large") && error.contains("failed 5 times"),
        "{error}"
    );
    let status = host.terminate();
    assert_eq!(status.code(), Some(0), "{}", host.log());
}

/// Exactly-once, an output over the producer's own `message.max.bytes` (1 MB): refused
/// when it is handed to the producer, before the batch counts as processed. On a
/// partition the group never committed the retries must still rewind to its first
/// record, never skip it; after them the record goes to the dead-letter topic.
#[test]
fn exactly_once_an_output_over_the_producers_limit_on_a_never_committed_partition_is_not_skipped() {
    let dir = workdir();
    let dead_letter = unique("huge-dead");
    create_topic(&dead_letter, 1);
    let (input, output, group, config) =
        oversized_output_setup_with(dir.path(), "exactly-once", Some(&dead_letter), 1_100_000);
    let mut host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    host.wait_until("every offset committed", Duration::from_secs(90), || {
        committed(&group, &input).get(&0) == Some(&3)
    });
    let written: Vec<String> = read_all(&output, 2, Duration::from_secs(30))
        .iter()
        .map(TestRecord::value_text)
        .collect();
    assert_eq!(written, ["s0", "s2"]);
    let dead = read_all(&dead_letter, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value_text(), "big 1");
    assert_eq!(host.terminate().code(), Some(0), "{}", host.log());
}

/// Exactly-once, an output name the sink does not map: the record fails before
/// anything of its batch is sent (no retry loop): exit 1 at once naming the record and
/// the output, nothing committed past it, nothing written.
#[test]
fn exactly_once_an_unmapped_output_name_stops_the_host_naming_the_record() {
    let dir = workdir();
    let (input, output, group) = names("unmapped");
    create_topic(&input, 1);
    create_topic(&output, 1);
    produce(
        &input,
        &[
            TestRecord::value(0, "a0"),
            TestRecord::value(0, "route 1"),
            TestRecord::value(0, "a2"),
        ],
    );
    let config = faulty_config(
        dir.path(),
        (&input, &output, &group),
        "exactly-once",
        "",
        "output_on = \"route\"\noutput = \"nowhere\"",
    );
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!("failed on record {input}/0@1"))
            && log.contains("output `nowhere`")
            && log.contains("does not map"),
        "{log}"
    );
    assert!(!log.contains("retrying"), "no retries: {log}");
    assert!(!log.contains("Stopped cleanly"), "{log}");
    let committed = committed(&group, &input).get(&0).copied().unwrap_or(0);
    assert!(committed <= 1, "committed past the record: {committed}");
    assert!(read_all(&output, 0, Duration::from_secs(10)).is_empty());
}

/// Exactly-once, while a worker retries a record whose output the broker keeps
/// refusing, `/ready` answers 503; a stop meanwhile is no clean stop (exit 1, the
/// record named).
#[test]
fn a_worker_retrying_a_failing_record_is_not_ready_and_a_stop_then_is_not_clean() {
    let dir = workdir();
    let (input, _output, group, config) = oversized_output_setup(dir.path(), "exactly-once", None);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "min_pause_ms = 0\n",
            "min_pause_ms = 0\nrecord_attempts = 100\n",
            1,
        ),
    )
    .unwrap();
    let admin = free_address();
    let mut host = Sluice::start(
        dir.path(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--admin",
            &admin,
        ],
    );
    host.wait_for_log(
        "The same failure again; retrying after a pause.",
        Duration::from_secs(60),
    );
    let (code, ready) = admin_ready(&admin, 60);
    assert_eq!(code, 503, "{ready}");
    let status = host.terminate();
    let log = host.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(!log.contains("Stopped cleanly"), "{log}");
    // Stopped between two attempts, or during one.
    assert!(
        (log.contains("stopped while retrying after failures")
            || log.contains("stopped without a final checkpoint"))
            && log.contains(&format!("{input}/0@1")),
        "{log}"
    );
    let committed = committed(&group, &input).get(&0).copied().unwrap_or(0);
    assert!(committed <= 1, "committed past the record: {committed}");
}

/// The reason a dead-lettered record carries.
fn error_header(record: &TestRecord) -> String {
    record
        .headers
        .iter()
        .find(|(name, _)| name == "sluice-error")
        .and_then(|(_, value)| value.clone())
        .map(|value| String::from_utf8(value).unwrap())
        .expect("the reason")
}

/// A plugin that writes ten million outputs for one input record: that record fails
/// (to the dead-letter topic, naming the limit) before any of its outputs is sent,
/// the records around it go on, and the host's memory stays small: the output is
/// read where it lies, never collected.
#[test]
fn millions_of_outputs_for_one_record_fail_that_record_and_the_host_stays_small() {
    let dir = workdir();
    let (input, output, group) = names("copies");
    let dead_letter = unique("copies-dead");
    create_topic(&input, 1);
    create_topic(&output, 1);
    create_topic(&dead_letter, 1);
    produce(
        &input,
        &[
            TestRecord::value(0, "a0"),
            TestRecord::value(0, "copy 1"),
            TestRecord::value(0, "a2"),
        ],
    );
    let config = faulty_config(
        dir.path(),
        (&input, &output, &group),
        "at-least-once",
        &format!("dead_letter_topic = \"{dead_letter}\""),
        "copies_on = \"copy\"\ncopies = \"10000000\"",
    );
    let mut host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    host.wait_until("every offset committed", Duration::from_secs(90), || {
        committed(&group, &input).get(&0) == Some(&3)
    });
    let peak_mib = peak_rss_kib(host.pid()) / 1024;
    let written: Vec<String> = read_all(&output, 2, Duration::from_secs(30))
        .iter()
        .map(TestRecord::value_text)
        .collect();
    assert_eq!(written, ["a0", "a2"]);
    let dead = read_all(&dead_letter, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value_text(), "copy 1");
    let error = error_header(&dead[0]);
    assert!(
        error.contains("more than 1000 outputs") && error.contains("max_outputs_per_record"),
        "{error}"
    );
    // The plugin's own memory (up to its 256 MiB limit) holds the 50 MB output
    // batch; the host adds no copy per output.
    assert!(peak_mib < 450, "host peak RSS {peak_mib} MiB");
    assert_eq!(host.terminate().code(), Some(0), "{}", host.log());
}

/// Keyed state beyond `[plugin] max_state_mb_per_partition`: the write traps, the
/// record fails (dead-letter topic, naming the limit) and keeps none of its writes;
/// the records around it keep theirs, and the host's memory stays within the limit.
#[test]
fn keyed_state_beyond_the_partition_limit_fails_the_record_and_keeps_the_rest() {
    let dir = workdir();
    let (input, output, group) = names("fill");
    let dead_letter = unique("fill-dead");
    create_topic(&input, 1);
    create_topic(&output, 1);
    create_topic(&dead_letter, 1);
    produce(
        &input,
        &[
            TestRecord::value(0, "a0"),
            TestRecord::value(0, "fill 1"),
            TestRecord::value(0, "a2"),
        ],
    );
    // 1 000 values of 900 kB: 900 MB asked for, 8 MiB allowed.
    let config = faulty_config_with(
        dir.path(),
        (&input, &output, &group),
        "at-least-once",
        &format!("dead_letter_topic = \"{dead_letter}\""),
        "max_state_mb_per_partition = 8\nmax_memory_mb = 16",
        "count_in_state = \"n\"\nfill_on = \"fill\"\nfill_keys = \"1000\"\nfill_bytes = \"900000\"",
    );
    let mut host = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    host.wait_until("every offset committed", Duration::from_secs(90), || {
        committed(&group, &input).get(&0) == Some(&3)
    });
    let peak_mib = peak_rss_kib(host.pid()) / 1024;
    let written = read_all(&output, 2, Duration::from_secs(30));
    let counts: Vec<(String, String)> = written
        .iter()
        .map(|record| {
            let count = record
                .headers
                .iter()
                .find(|(name, _)| name == "count")
                .and_then(|(_, value)| value.clone())
                .map(|value| String::from_utf8(value).unwrap())
                .unwrap_or_default();
            (record.value_text(), count)
        })
        .collect();
    // The failed record's count write was undone with the rest of its writes.
    assert_eq!(
        counts,
        [
            ("a0".to_string(), "1".to_string()),
            ("a2".to_string(), "2".to_string())
        ]
    );
    let dead = read_all(&dead_letter, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value_text(), "fill 1");
    let error = error_header(&dead[0]);
    assert!(error.contains("max_state_mb_per_partition"), "{error}");
    assert!(peak_mib < 350, "host peak RSS {peak_mib} MiB");
    assert_eq!(host.terminate().code(), Some(0), "{}", host.log());
}

/// A keyed-state value larger than one changelog record can carry, without a
/// dead-letter topic: the host stops at once (exit 1) naming the record and the
/// limit, instead of failing at every checkpoint later; nothing is committed past it.
#[test]
fn a_state_value_too_large_for_the_changelog_stops_the_host_naming_the_record() {
    let dir = workdir();
    let (input, output, group) = names("bigstate");
    create_topic(&input, 1);
    create_topic(&output, 1);
    produce(
        &input,
        &[TestRecord::value(0, "a0"), TestRecord::value(0, "fill 1")],
    );
    let config = faulty_config(
        dir.path(),
        (&input, &output, &group),
        "exactly-once",
        "",
        "fill_on = \"fill\"\nfill_keys = \"1\"\nfill_bytes = \"1100000\"",
    );
    let (code, log) = run_to_end(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!("{input}/0@")) && log.contains("larger than one changelog record"),
        "{log}"
    );
    assert!(committed(&group, &input).get(&0).copied().unwrap_or(0) <= 1);
}

/// With a dead-letter topic, a batch of slow records that fails as a whole (the time
/// limit) is run again record by record within one time budget: no turn of the
/// worker takes more than about twice `timeout_ms` (before, every record had the full
/// limit again: here 1 s + 12 × 0.3 s in one turn), the records not reached are read
/// again, and none is dead-lettered or written twice.
#[test]
fn a_slow_batch_run_again_record_by_record_keeps_to_one_time_budget() {
    let dir = workdir();
    let (input, output, group) = names("slow");
    let dead_letter = unique("slow-dead");
    create_topic(&input, 1);
    create_topic(&output, 1);
    create_topic(&dead_letter, 1);
    let records: Vec<TestRecord> = (0..12)
        .map(|i| TestRecord::value(0, &format!("s{i}")))
        .collect();
    produce(&input, &records);
    let config = faulty_config_with(
        dir.path(),
        (&input, &output, &group),
        "at-least-once",
        &format!("dead_letter_topic = \"{dead_letter}\""),
        "timeout_ms = 1000",
        "busy_ms = \"300\"",
    );
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command.env("RUST_LOG", "info,sluice_host::pipeline=debug");
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_until("every offset committed", Duration::from_secs(90), || {
        committed(&group, &input).get(&0) == Some(&12)
    });
    let written: Vec<String> = read_all(&output, 12, Duration::from_secs(30))
        .iter()
        .map(TestRecord::value_text)
        .collect();
    let expected: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    assert_eq!(written, expected);
    assert!(read_all(&dead_letter, 0, Duration::from_secs(5)).is_empty());
    assert_eq!(host.terminate().code(), Some(0), "{}", host.log());
    let log = host.log();
    assert!(log.contains("took its whole time budget"), "{log}");
    let longest = log
        .lines()
        .filter(|line| line.contains("Slow turn."))
        .filter_map(|line| {
            let at = line.find("total_ms=")? + "total_ms=".len();
            line[at..].split_whitespace().next()?.parse::<f64>().ok()
        })
        .fold(0.0, f64::max);
    assert!(longest > 900.0, "the first pass hit the time limit: {log}");
    assert!(longest < 2_700.0, "longest turn {longest} ms:\n{log}");
}
