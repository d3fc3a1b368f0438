//! The batch API of the JavaScript and Python SDKs (`processBatch` / `process_batch`):
//! a plugin answering whole batches by index gives exactly the outputs expected of it,
//! in content and order, whether the file is one batch or cut into several.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::examples::{build, build_dir, repo, run, text};

fn project(language: &str) -> PathBuf {
    repo().join("tests/plugins/batch-api").join(language)
}

fn records(name: &str) -> String {
    repo()
        .join("tests/plugins/batch-api/records")
        .join(name)
        .display()
        .to_string()
}

/// The test plugin in `language`, built once per run.
fn plugin(language: &'static str) -> PathBuf {
    static JS: OnceLock<PathBuf> = OnceLock::new();
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    let slot = if language == "js" { &JS } else { &PYTHON };
    slot.get_or_init(|| {
        let out = build_dir().join(format!("batch-api-{language}.wasm"));
        build(&project(language), &out);
        out
    })
    .clone()
}

/// `sluice plugin test` of `plugin` in `mode` on the ten records of `input` against
/// `expected`, with batches of `batch_size` records.
fn assert_outputs(plugin: &Path, mode: &str, input: &str, expected: &str, batch_size: usize) {
    let expected = records(expected);
    let lines = std::fs::read_to_string(&expected)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let output = run(&[
        "plugin",
        "test",
        plugin.to_str().unwrap(),
        "--input",
        &records(input),
        "--expect",
        &expected,
        "--config",
        &format!("mode={mode}"),
        "--batch-size",
        &batch_size.to_string(),
    ]);
    assert!(
        output.status.success(),
        "{} in mode {mode}, batches of {batch_size}: {}",
        plugin.display(),
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains(&format!("10 input records, {lines} outputs as expected")),
        "{}",
        text(&output)
    );
}

fn keep_all_forwards_every_record_unchanged_and_in_order(language: &'static str) {
    let plugin = plugin(language);
    // One batch, then batches of 3 (3 + 3 + 3 + 1): each keep-all covers its own batch.
    for batch_size in [500, 3] {
        assert_outputs(
            &plugin,
            "all",
            "input.jsonl",
            "expected-all.jsonl",
            batch_size,
        );
    }
}

fn answers_by_index_give_the_expected_outputs(language: &'static str) {
    let plugin = plugin(language);
    for batch_size in [500, 3] {
        assert_outputs(
            &plugin,
            "mixed",
            "input.jsonl",
            "expected-mixed.jsonl",
            batch_size,
        );
    }
}

#[test]
fn javascript_keep_all_forwards_every_record_unchanged_and_in_order() {
    keep_all_forwards_every_record_unchanged_and_in_order("js");
}

#[test]
fn python_keep_all_forwards_every_record_unchanged_and_in_order() {
    keep_all_forwards_every_record_unchanged_and_in_order("python");
}

#[test]
fn javascript_batch_answers_by_index_give_the_expected_outputs() {
    answers_by_index_give_the_expected_outputs("js");
}

#[test]
fn python_batch_answers_by_index_give_the_expected_outputs() {
    answers_by_index_give_the_expected_outputs("python");
}

/// JSON read with `json(i)` and written with `setJson` (non-ASCII text included), kept
/// records' bytes untouched, a missing value and a non-JSON value failing their record
/// alone; the plugin itself checks that indexes outside the batch throw a `RangeError`
/// from every accessor, which fails the whole batch (and this test) if one does not.
#[test]
fn javascript_batch_json_reads_and_writes_and_refuses_indexes_outside_the_batch() {
    let plugin = plugin("js");
    for batch_size in [500, 3] {
        assert_outputs(
            &plugin,
            "json",
            "input-json.jsonl",
            "expected-json.jsonl",
            batch_size,
        );
    }
}
