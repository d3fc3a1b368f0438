//! The Managed Flink job's own `application_properties.json` runs as is.

use std::time::Duration;

use crate::support::*;

#[test]
fn the_original_apps_properties_file_runs_the_same_job() {
    let (input, output, group) = (unique("props-in"), unique("props-out"), unique("props-g"));
    create_topic(&input, 3);
    create_topic(&output, 3);
    let dir = workdir();
    // The original file points at MSK; BOOTSTRAP_SERVERS overrides it, as on the service.
    let properties = format!(
        r#"[
  {{"PropertyGroupId": "kinesis.analytics.flink.run.options",
    "PropertyMap": {{"python": "processor.py", "jarfile": "package/lib/pyflink-getting-started-1.0.0.jar", "pyFiles": "package/site_packages/"}}}},
  {{"PropertyGroupId": "consumer.config.0",
    "PropertyMap": {{"table.name": "source_table", "topic.name": "{input}", "bootstrap.servers": "b-1.msk.example:9098",
                    "startup.mode": "earliest-offset", "group.id": "{group}"}}}},
  {{"PropertyGroupId": "producer.config.0",
    "PropertyMap": {{"table.name": "sink_table", "topic.name": "{output}", "bootstrap.servers": "b-1.msk.example:9098"}}}},
  {{"PropertyGroupId": "checkpoint.config",
    "PropertyMap": {{"CheckpointInterval": "1000", "MinPauseBetweenCheckpoints": "500"}}}}
]"#
    );
    let path = write_file(dir.path(), "application_properties.json", &properties);
    let path = path.to_str().unwrap();

    generate(&input, 340);

    let validate = sluice(&["validate", "--properties", path])
        .env("BOOTSTRAP_SERVERS", bootstrap())
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );

    let mut command = sluice(&["run", "--properties", path]);
    command.env("BOOTSTRAP_SERVERS", bootstrap());
    let mut sluice = Sluice::spawn(dir.path(), command);
    sluice.wait_until(
        "all stock records in the sink",
        Duration::from_secs(60),
        || total(&end_offsets(&output)) >= 340,
    );
    assert!(sluice.terminate().success(), "{}", sluice.log());

    assert_eq!(
        end_offsets(&output),
        end_offsets(&input),
        "per-partition counts match"
    );
    let records = read_all(&output, 340, Duration::from_secs(30));
    assert_eq!(records.len(), 340);
    for record in &records {
        let value = record.value_text();
        assert!(
            value.starts_with(r#"{"event_time": ""#) && value.contains(r#"", "ticker": ""#),
            "{value}"
        );
        let key = String::from_utf8(record.key.clone().unwrap()).unwrap();
        assert!(key.starts_with(r#"{"ticker": ""#), "{key}");
        let ticker = &key[12..key.len() - 2];
        assert!(
            value.contains(&format!(r#""ticker": "{ticker}""#)),
            "key and value agree"
        );
    }
    assert_eq!(committed(&group, &input), end_offsets(&input));
}

#[test]
fn the_generator_partitions_by_key_as_java_clients_do() {
    let topic = unique("gen");
    create_topic(&topic, 5);
    generate(&topic, 170);
    let records = read_all(&topic, 170, Duration::from_secs(30));
    assert_eq!(records.len(), 170);
    for record in records {
        let key = record.key.unwrap();
        let expected = java_partition(&key, 5);
        assert_eq!(
            record.partition,
            expected,
            "key {}",
            String::from_utf8_lossy(&key)
        );
    }
}

/// Writes `count` stock records to `topic` with `sluice generate`, as fast as it can.
fn generate(topic: &str, count: u32) {
    let count = count.to_string();
    let args = [
        "generate",
        "--topic",
        topic,
        "--count",
        &count,
        "--rate",
        "0",
        "--bootstrap-servers",
        &bootstrap(),
    ];
    let out = sluice(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
