//! The pass-through keeps every record identical, in its partition and order.

use std::time::Duration;

use crate::support::*;

fn varied_record(i: usize, partitions: i32) -> TestRecord {
    let key = match i % 7 {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(format!("key-{}", i % 97).into_bytes()),
    };
    let value = match i % 11 {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(format!("value-{i}-{}", "x".repeat(i % 50)).into_bytes()),
    };
    let headers = match i % 4 {
        0 => vec![],
        1 => vec![("trace".to_string(), Some(format!("t{i}").into_bytes()))],
        2 => vec![
            ("dup".to_string(), Some(b"a".to_vec())),
            ("dup".to_string(), Some(b"b".to_vec())),
        ],
        _ => vec![
            ("dup".to_string(), Some(b"1".to_vec())),
            ("null".to_string(), None),
            ("dup".to_string(), Some(b"2".to_vec())),
        ],
    };
    TestRecord {
        partition: (i % partitions as usize) as i32,
        key,
        value,
        headers,
        timestamp: Some(1_600_000_000_000 + i as i64),
    }
}

#[test]
fn hundred_thousand_varied_records_arrive_identical_in_the_same_partitions_and_order() {
    const COUNT: usize = 100_000;
    let (input, output, group) = (unique("pt-in"), unique("pt-out"), unique("pt-g"));
    create_topic(&input, 6);
    create_topic(&output, 6);
    let records: Vec<TestRecord> = (0..COUNT).map(|i| varied_record(i, 6)).collect();
    produce(&input, &records);

    let dir = workdir();
    let config = write_config(dir.path(), &input, &output, &group, "");
    let mut sluice = Sluice::start(dir.path(), &["run", "--config", &config]);
    sluice.wait_until("all records in the sink", Duration::from_secs(120), || {
        total(&end_offsets(&output)) >= COUNT as i64
    });
    let status = sluice.terminate();
    assert!(status.success(), "exit {status}:\n{}", sluice.log());

    let written = read_all(&output, COUNT, Duration::from_secs(60));
    assert_eq!(
        written.len(),
        COUNT,
        "the sink holds exactly the input count"
    );
    let expected = by_partition(&records);
    let actual = by_partition(&written);
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>()
    );
    for (partition, want) in &expected {
        let got = &actual[partition];
        assert_eq!(got.len(), want.len(), "partition {partition} count");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "partition {partition}, record {i}");
        }
    }
    assert_eq!(
        committed(&group, &input),
        end_offsets(&input),
        "offsets committed to the end"
    );
}

#[test]
fn key_hash_partitioning_places_records_where_java_clients_would() {
    const COUNT: usize = 300;
    let (input, output, group) = (unique("kh-in"), unique("kh-out"), unique("kh-g"));
    create_topic(&input, 2);
    create_topic(&output, 5);
    let records: Vec<TestRecord> = (0..COUNT)
        .map(|i| TestRecord {
            key: Some(format!("{{\"ticker\": \"T{}\"}}", i % 17).into_bytes()),
            ..TestRecord::value((i % 2) as i32, &format!("v{i}"))
        })
        .collect();
    produce(&input, &records);
    let dir = workdir();
    let text = config_text(
        &input,
        &output,
        &group,
        "",
        "partitioning = \"key-hash\"",
        "",
    );
    let config = write_file(dir.path(), "kh.toml", &text);
    let mut sluice = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    sluice.wait_until("all records in the sink", Duration::from_secs(60), || {
        total(&end_offsets(&output)) >= COUNT as i64
    });
    assert!(sluice.terminate().success());
    let written = read_all(&output, COUNT, Duration::from_secs(30));
    assert_eq!(written.len(), COUNT);
    for record in written {
        let key = record.key.unwrap();
        assert_eq!(
            record.partition,
            java_partition(&key, 5),
            "key {}",
            String::from_utf8_lossy(&key)
        );
    }
}

/// `GET /metrics` of the admin endpoint at `address`: the content type and the text.
pub fn metrics(address: &str) -> (String, String) {
    let mut response = ureq::get(format!("http://{address}/metrics"))
        .call()
        .unwrap_or_else(|e| panic!("admin endpoint at {address}: {e}"));
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (kind, response.body_mut().read_to_string().unwrap())
}

/// The value of the sample `name` in a Prometheus text.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn the_admin_endpoint_serves_the_counters_under_flink_names() {
    let dir = workdir();
    let (input, output, group) = (
        unique("metrics-in"),
        unique("metrics-out"),
        unique("metrics-g"),
    );
    create_topic(&input, 2);
    create_topic(&output, 2);
    let records: Vec<TestRecord> = (0..100)
        .map(|i| TestRecord::value(i % 2, &format!("record {i}")))
        .collect();
    produce(&input, &records);
    let config = write_config(dir.path(), &input, &output, &group, "");
    let admin = free_address();
    let mut command = sluice(&["run", "--config", &config]);
    command.env("SLUICE_ADMIN", &admin);
    let mut host = Sluice::spawn(dir.path(), command);

    assert_eq!(read_all(&output, 100, Duration::from_secs(60)).len(), 100);
    // Counted once the batch is handed to the producer; checkpointed every 200 ms.
    host.wait_until("a checkpoint of all 100", Duration::from_secs(20), || {
        let (_, text) = metrics(&admin);
        sample(&text, "numRecordsOut") == 100.0
            && sample(&text, "numberOfCompletedCheckpoints") >= 1.0
    });
    let (code, ready) = admin_ready(&admin, 60);
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["workers"].as_array().unwrap().len(), 1, "{ready}");
    assert_eq!(ready["workers"][0]["ready"], true, "{ready}");
    let (kind, text) = metrics(&admin);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert_eq!(sample(&text, "numRecordsIn"), 100.0);
    assert_eq!(sample(&text, "numRecordsOut"), 100.0);
    assert_eq!(sample(&text, "numRecordsDeadLettered"), 0.0);
    assert_eq!(sample(&text, "pluginVersion"), 1.0);
    assert_eq!(sample(&text, "pluginSwaps"), 0.0);
    assert!(sample(&text, "uptime") > 0.0, "{text}");
    // The consumer's statistics come every second: the lag shows, at zero, once every
    // record was read.
    host.wait_until(
        "the lag of a source read to its end",
        Duration::from_secs(10),
        || {
            let (_, text) = metrics(&admin);
            text.contains("\nrecords_lag_max ") && sample(&text, "records_lag_max") == 0.0
        },
    );
    assert!(host.terminate().success());
}

/// A backlog shows in `records_lag_max`: 200 000 records wait before the host
/// starts, read ten per batch, and the lag reported while it catches up is large,
/// never more than the backlog, and falls to zero at the end.
#[test]
fn the_lag_shows_a_backlog_and_falls_to_zero_as_it_is_read() {
    const COUNT: usize = 200_000;
    let dir = workdir();
    let (input, output, group) = (unique("lag-in"), unique("lag-out"), unique("lag-g"));
    create_topic(&input, 1);
    create_topic(&output, 1);
    let records: Vec<TestRecord> = (0..COUNT)
        .map(|i| TestRecord::value(0, &format!("record {i}")))
        .collect();
    produce(&input, &records);
    let config = write_config(
        dir.path(),
        &input,
        &output,
        &group,
        "batch_max_records = 10\n[source.kafka]\n\"statistics.interval.ms\" = \"100\"",
    );
    let admin = free_address();
    let mut command = sluice(&["run", "--config", &config]);
    command.env("SLUICE_ADMIN", &admin);
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Admin endpoint listening", Duration::from_secs(30));

    let mut seen = Vec::new();
    host.wait_until(
        "the host to read the whole backlog",
        Duration::from_secs(120),
        || {
            let (_, text) = metrics(&admin);
            if text.contains("\nrecords_lag_max ") {
                seen.push(sample(&text, "records_lag_max"));
            }
            sample(&text, "numRecordsIn") == COUNT as f64 && seen.last() == Some(&0.0)
        },
    );
    let largest = seen.iter().copied().fold(0.0, f64::max);
    assert!(
        largest >= 10_000.0,
        "a backlog of {COUNT} shows as a lag: largest seen {largest} in {seen:?}"
    );
    assert!(largest <= COUNT as f64, "{seen:?}");
    assert!(host.terminate().success(), "{}", host.log());
}
