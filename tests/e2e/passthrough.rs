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
    wait_until("all records in the sink", Duration::from_secs(120), || {
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
    wait_until("all records in the sink", Duration::from_secs(60), || {
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
