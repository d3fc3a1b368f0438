//! The pass-through in Rust, JavaScript and Python, in process: per-record cost of one
//! plugin call, component size, cold compile time, and instantiation. A program, not a
//! test: `cargo bench -p sluice-host --bench languages` (see BENCHMARKS.md).
//!
//! Strategy: the Rust pass-through is the one embedded in the host; the JavaScript and
//! Python ones (`bench/plugins/`) are built here with `sluice plugin build` (the tools
//! must be on PATH). Each component is compiled cold three times (median reported),
//! then batches of 100 and 1000 records shaped like the end-to-end benchmark's
//! (16-byte key, 100-byte value, two headers) are run through `Instance::process`
//! for about a second per round, five rounds; the median round is reported.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_host::author::builder;
use sluice_host::plugin::{Origin, PASSTHROUGH_WASM, Plugin, digest};
use sluice_host::runtime::{Limits, Runtime, Sandbox};
use sluice_host::state::StateStore;
use sluice_sdk::batch::{Header, InputBatch, InputWriter, RecordFields};

const ROUNDS: usize = 5;
const ROUND_TIME: Duration = Duration::from_millis(1000);
const COMPILES: usize = 3;

fn batch(records: usize) -> Vec<u8> {
    let key = [b'k'; 16];
    let value = [b'v'; 100];
    let headers = [
        Header {
            name: "trace",
            value: Some(b"0123456789"),
        },
        Header {
            name: "source",
            value: Some(b"bench"),
        },
    ];
    let mut writer = InputWriter::new();
    for i in 0..records {
        writer.push(RecordFields {
            topic: "bench",
            partition: (i % 6) as i32,
            offset: i as i64,
            timestamp: Some(1_700_000_000_000),
            key: Some(&key),
            value: Some(&value),
            headers: headers.iter().copied(),
        });
    }
    writer.finish().to_vec()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Row {
    language: &'static str,
    size: usize,
    build: Option<Duration>,
    compile: Duration,
    instantiate: Duration,
    per_record: [f64; 2],
}

fn measure(language: &'static str, bytes: &[u8], build: Option<Duration>) -> anyhow::Result<Row> {
    let mut compiles = Vec::new();
    let mut plugin = None;
    for _ in 0..COMPILES {
        // A fresh runtime each time, and no compilation cache (see `main`): nothing is
        // cached between compiles.
        let runtime = Runtime::new()?;
        let started = Instant::now();
        let loaded = Plugin::from_bytes(&runtime, Origin::BuiltIn, bytes, &digest(bytes))?;
        compiles.push(started.elapsed().as_secs_f64());
        plugin = Some(loaded);
    }
    let plugin = plugin.expect("compiled at least once");
    let started = Instant::now();
    let mut instance = plugin.start(
        Limits::default(),
        &Sandbox::default(),
        &[],
        StateStore::shared(),
    )?;
    let instantiate = started.elapsed();
    let mut per_record = [0.0; 2];
    for (slot, size) in [100usize, 1000].into_iter().enumerate() {
        let input = batch(size);
        let opened = InputBatch::open(&input)?;
        for _ in 0..20 {
            instance.process(&input, &opened)?; // warm-up
        }
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < ROUND_TIME {
                std::hint::black_box(instance.process(&input, &opened)?);
                calls += 1;
            }
            rounds.push(started.elapsed().as_nanos() as f64 / (calls as f64 * size as f64));
        }
        per_record[slot] = median(rounds);
    }
    eprintln!("{language}: done");
    Ok(Row {
        language,
        size: bytes.len(),
        build,
        compile: Duration::from_secs_f64(median(compiles)),
        instantiate,
        per_record,
    })
}

fn built(dir: &Path, out: &Path) -> anyhow::Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    builder::build(dir, Some(out))?;
    Ok((std::fs::read(out)?, started.elapsed()))
}

fn main() -> anyhow::Result<()> {
    // Cold compiles are measured: the runtime's on-disk cache stays off.
    // SAFETY: set before any other thread of this program starts.
    unsafe { std::env::set_var("SLUICE_CACHE_DIR", "off") };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/plugins");
    let out = tempfile::tempdir()?;
    eprintln!("building the JavaScript and Python pass-throughs...");
    let (js, js_build) = built(&root.join("passthrough-js"), &out.path().join("js.wasm"))?;
    let (py, py_build) = built(&root.join("passthrough-py"), &out.path().join("py.wasm"))?;
    let rows = [
        measure("Rust", PASSTHROUGH_WASM, None)?,
        measure("JavaScript", &js, Some(js_build))?,
        measure("Python", &py, Some(py_build))?,
    ];
    let base = &rows[0];
    println!(
        "| language | component size | `plugin build` | cold compile (median of {COMPILES}) | instantiate + init | ns/record, batch 100 | ns/record, batch 1000 | vs Rust (1000) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.1} MiB ({} B) | {} | {:.0} ms | {:.2} ms | {:.0} | {:.0} | {:.1}x |",
            row.language,
            row.size as f64 / (1 << 20) as f64,
            row.size,
            row.build
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "cargo (in the host build)".into()),
            row.compile.as_secs_f64() * 1000.0,
            row.instantiate.as_secs_f64() * 1000.0,
            row.per_record[0],
            row.per_record[1],
            row.per_record[1] / base.per_record[1],
        );
    }
    Ok(())
}
