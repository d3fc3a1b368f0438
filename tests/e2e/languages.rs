//! Plugins written in JavaScript and Python, and routing by named outputs, through the
//! real pipeline: built from `plugins/` with `sluice plugin build`, run by `sluice run`
//! between topics of the real broker.

use std::time::Duration;

use crate::examples::example;
use crate::support::*;

/// How long a host may take to start (compiling its plugin) and copy the records.
const STARTUP_AND_RUN: Duration = Duration::from_secs(300);
/// How long reading a sink topic back may take; it returns as soon as all is read.
const READ_BACK: Duration = Duration::from_secs(120);

const TICKERS: [&str; 4] = ["AAPL", "AMZN", "MSFT", "INTC"];

/// `count` stock records over three partitions; prices 10.5, 11.5, ... (never whole).
fn stocks(count: usize) -> Vec<TestRecord> {
    (0..count)
        .map(|i| {
            let ticker = TICKERS[i % TICKERS.len()];
            let price = 10.5 + i as f64;
            TestRecord {
                partition: (i % 3) as i32,
                key: Some(format!("{{\"ticker\": \"{ticker}\"}}").into_bytes()),
                value: Some(
                    format!(
                        "{{\"seq\": {i}, \"ticker\": \"{ticker}\", \"price\": {price}, \"owner\": \"acct-{i}\"}}"
                    )
                    .into_bytes(),
                ),
                headers: vec![("source".into(), Some(b"test".to_vec()))],
                timestamp: Some(1_700_000_000_000 + i as i64),
            }
        })
        .collect()
}

/// Runs `plugin` with `plugin_settings` between fresh topics over `records`, and
/// returns what the sink topic holds once every record has arrived.
fn pipeline(
    prefix: &str,
    plugin: &str,
    plugin_settings: &str,
    records: &[TestRecord],
) -> Vec<TestRecord> {
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, 3);
    create_topic(&output, 3);
    produce(&input, records);
    let dir = workdir();
    let tail = format!("[plugin]\npath = \"{plugin}\"\n\n[plugin.config]\n{plugin_settings}\n");
    let text = config_text(
        &input,
        &output,
        &group,
        "startup = \"earliest\"",
        "partitioning = \"same\"",
        &tail,
    );
    let config = write_file(dir.path(), "sluice.toml", &text);
    let mut sluice = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    // Starting compiles a 12 to 18 MB JavaScript or Python component when the compilation
    // cache does not hold it: tens of seconds in a debug build, beside the other tests.
    sluice.wait_until("all records in the sink", STARTUP_AND_RUN, || {
        total(&end_offsets(&output)) >= records.len() as i64
    });
    let status = sluice.terminate();
    assert!(status.success(), "exit {status}:\n{}", sluice.log());
    assert_eq!(
        committed(&group, &input),
        end_offsets(&input),
        "offsets committed to the end"
    );
    read_all(&output, records.len(), READ_BACK)
}

fn json(record: &TestRecord) -> serde_json::Value {
    serde_json::from_slice(record.value.as_deref().unwrap()).unwrap()
}

/// Records of each partition arrive in their input order, each with its key, headers
/// and timestamp, and a value that `check` accepts for the input value.
fn assert_transformed(
    sent: &[TestRecord],
    written: &[TestRecord],
    check: impl Fn(&serde_json::Value, &serde_json::Value),
) {
    assert_eq!(written.len(), sent.len(), "one output per input");
    let (sent, written) = (by_partition(sent), by_partition(written));
    for (partition, want) in &sent {
        let got = &written[partition];
        assert_eq!(got.len(), want.len(), "partition {partition}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(
                (&g.key, &g.headers, g.timestamp),
                (&w.key, &w.headers, w.timestamp)
            );
            check(&json(w), &json(g));
        }
    }
}

#[test]
fn the_javascript_enrich_example_runs_in_the_pipeline() {
    let records = stocks(40);
    let written = pipeline(
        "js",
        example("enrich").to_str().unwrap(),
        "high_from = \"30\"",
        &records,
    );
    assert_transformed(&records, &written, |sent, got| {
        let price = sent["price"].as_f64().unwrap();
        let band = if price >= 30.0 { "high" } else { "low" };
        let mut want = sent.clone();
        want["band"] = band.into();
        assert_eq!(got, &want);
    });
}

#[test]
fn the_javascript_change_example_keeps_its_state_in_the_host() {
    let records = stocks(40);
    let written = pipeline(
        "js-state",
        example("change").to_str().unwrap(),
        "",
        &records,
    );
    // Record i shares its partition and ticker with record i - 12, whose price is 12
    // lower; the first twelve are the first of theirs.
    assert_transformed(&records, &written, |sent, got| {
        let mut want = sent.clone();
        if sent["seq"].as_u64().unwrap() >= 12 {
            want["change"] = 12.into();
        }
        assert_eq!(got, &want);
    });
}

#[test]
fn the_python_redact_example_runs_in_the_pipeline() {
    let records = stocks(40);
    let written = pipeline(
        "py",
        example("redact").to_str().unwrap(),
        "fields = \"owner\"",
        &records,
    );
    assert_transformed(&records, &written, |sent, got| {
        let mut want = sent.clone();
        want["owner"] = "***".into();
        assert_eq!(got, &want);
    });
}

#[test]
fn the_route_example_sends_tickers_to_the_topics_of_their_outputs() {
    let records = stocks(40);
    let (input, rest, tech, retail, group) = (
        unique("rt-in"),
        unique("rt-rest"),
        unique("rt-tech"),
        unique("rt-retail"),
        unique("rt-g"),
    );
    for topic in [&input, &rest, &tech, &retail] {
        create_topic(topic, 3);
    }
    produce(&input, &records);
    let dir = workdir();
    let plugin = example("route");
    let sink_extra = format!("[sink.outputs]\ntech = \"{tech}\"\nretail = \"{retail}\"\n");
    let tail = format!(
        "[plugin]\npath = \"{}\"\n\n[plugin.config]\nroutes = \"AAPL=tech, MSFT=tech, AMZN=retail\"\n",
        plugin.display()
    );
    let text = config_text(
        &input,
        &rest,
        &group,
        "startup = \"earliest\"",
        &sink_extra,
        &tail,
    );
    let config = write_file(dir.path(), "sluice.toml", &text);
    let mut sluice = Sluice::start(dir.path(), &["run", "--config", config.to_str().unwrap()]);
    sluice.wait_until("all records routed", STARTUP_AND_RUN, || {
        [&rest, &tech, &retail]
            .iter()
            .map(|t| total(&end_offsets(t)))
            .sum::<i64>()
            >= records.len() as i64
    });
    let status = sluice.terminate();
    assert!(status.success(), "exit {status}:\n{}", sluice.log());
    let tickers = |topic: &str, count: usize| -> Vec<String> {
        let mut found: Vec<String> = read_all(topic, count, READ_BACK)
            .iter()
            .map(|r| json(r)["ticker"].as_str().unwrap().to_string())
            .collect();
        found.sort();
        found.dedup();
        found
    };
    assert_eq!(tickers(&tech, 20), ["AAPL", "MSFT"]);
    assert_eq!(tickers(&retail, 10), ["AMZN"]);
    assert_eq!(tickers(&rest, 10), ["INTC"]);
    assert_eq!(
        [&rest, &tech, &retail]
            .iter()
            .map(|t| total(&end_offsets(t)))
            .sum::<i64>(),
        records.len() as i64,
        "every record written once"
    );
}
