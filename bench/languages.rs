//! The pass-through in Rust, JavaScript and Python, in process, through each SDK API:
//! per-record cost of one plugin call, component size, cold compile time, and
//! instantiation; and the JavaScript `enrich` example on stock records. A program, not
//! a test: `cargo bench -p sluice-host --bench languages` (see BENCHMARKS.md).
//!
//! Strategy: the Rust pass-through is the one embedded in the host; the JavaScript and
//! Python ones (`bench/plugins/`) and the `enrich` example are built here with
//! `sluice plugin build` (the tools must be on PATH). Each component is compiled cold
//! (median reported), then each variant (a `mode` setting of the component: the
//! per-record API, the batch API answering by index, the batch API's keep-all) starts
//! its own instance and runs batches of 100 and 1000 records through
//! `Instance::process` for a while per round; the median round is reported. The
//! pass-through batches are shaped like the end-to-end benchmark's (16-byte key,
//! 100-byte value, two headers); `enrich` gets stock records as `sluice generate`
//! writes them.
//!
//! `SLUICE_BENCH_QUICK=1`: one compile and three short rounds, to smoke-test the
//! harness. `SLUICE_BENCH_EXTRA=label=path.wasm,...` (and `SLUICE_BENCH_EXTRA_STOCKS`
//! for stock records) measure already built components beside the rest, with no
//! settings: the same plugin built with an earlier SDK, for instance.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_host::author::builder;
use sluice_host::generate::{record_key, record_value};
use sluice_host::plugin::{Origin, PASSTHROUGH_WASM, Plugin, digest};
use sluice_host::runtime::{Limits, Runtime, Sandbox};
use sluice_host::state::StateStore;
use sluice_sdk::batch::{Header, InputBatch, InputWriter, RecordFields};

/// How long and how often: the full run, or a smoke test of the harness.
struct Plan {
    rounds: usize,
    round_time: Duration,
    compiles: usize,
}

impl Plan {
    fn from_env() -> Plan {
        match std::env::var("SLUICE_BENCH_QUICK").as_deref() {
            Ok("1") => Plan {
                rounds: 3,
                round_time: Duration::from_millis(300),
                compiles: 1,
            },
            _ => Plan {
                rounds: 5,
                round_time: Duration::from_millis(1000),
                compiles: 3,
            },
        }
    }
}

/// What the records of a batch look like.
#[derive(Clone, Copy)]
enum Shape {
    /// As the end-to-end benchmark writes them.
    Bench,
    /// Stock records as `sluice generate` writes them, for `enrich`.
    Stocks,
}

fn batch(records: usize, shape: Shape) -> Vec<u8> {
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
    let tickers = ["AAPL", "AMZN", "MSFT", "INTC", "TBV"];
    let mut writer = InputWriter::new();
    for i in 0..records {
        let ticker = tickers[i % tickers.len()];
        let (stock_key, stock_value) = (
            record_key(ticker),
            record_value(
                "2023-08-08 04:21:49.187123",
                ticker,
                (i % 100) as f64 + 0.25,
            ),
        );
        let (key, value, headers): (&[u8], &[u8], &[Header<'_>]) = match shape {
            Shape::Bench => (&key, &value, &headers),
            Shape::Stocks => (stock_key.as_bytes(), stock_value.as_bytes(), &[]),
        };
        writer.push(RecordFields {
            topic: "bench",
            partition: (i % 6) as i32,
            offset: i as i64,
            timestamp: Some(1_700_000_000_000),
            key: Some(key),
            value: Some(value),
            headers: headers.iter().copied(),
        });
    }
    writer.finish().to_vec()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One component, compiled.
struct Component {
    name: String,
    size: usize,
    build: Option<Duration>,
    compile: Duration,
    plugin: Plugin,
}

fn compile(
    plan: &Plan,
    name: &str,
    bytes: &[u8],
    build: Option<Duration>,
) -> anyhow::Result<Component> {
    let mut compiles = Vec::new();
    let mut plugin = None;
    for _ in 0..plan.compiles {
        // A fresh runtime each time, and no compilation cache (see `main`): nothing is
        // cached between compiles.
        let runtime = Runtime::new()?;
        let started = Instant::now();
        let loaded = Plugin::from_bytes(&runtime, Origin::BuiltIn, bytes, &digest(bytes))?;
        compiles.push(started.elapsed().as_secs_f64());
        plugin = Some(loaded);
    }
    eprintln!("{name}: compiled");
    Ok(Component {
        name: name.to_string(),
        size: bytes.len(),
        build,
        compile: Duration::from_secs_f64(median(compiles)),
        plugin: plugin.expect("compiled at least once"),
    })
}

/// One way of running a component: its settings and its input.
struct Row {
    label: String,
    instantiate: Duration,
    per_record: [f64; 2],
}

fn measure(
    plan: &Plan,
    component: &Component,
    label: &str,
    config: &[(&str, &str)],
    shape: Shape,
) -> anyhow::Result<Row> {
    let config: Vec<(String, String)> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let started = Instant::now();
    let mut instance = component.plugin.start(
        Limits::default(),
        &Sandbox::default(),
        &config,
        StateStore::shared(),
    )?;
    let instantiate = started.elapsed();
    let mut per_record = [0.0; 2];
    for (slot, size) in [100usize, 1000].into_iter().enumerate() {
        let input = batch(size, shape);
        let opened = InputBatch::open(&input)?;
        for _ in 0..20 {
            instance.process(&input, &opened)?; // warm-up
        }
        let mut rounds = Vec::new();
        for _ in 0..plan.rounds {
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < plan.round_time {
                std::hint::black_box(instance.process(&input, &opened)?);
                calls += 1;
            }
            rounds.push(started.elapsed().as_nanos() as f64 / (calls as f64 * size as f64));
        }
        per_record[slot] = median(rounds);
    }
    eprintln!("{label}: done");
    Ok(Row {
        label: label.to_string(),
        instantiate,
        per_record,
    })
}

fn built(dir: &Path, out: &Path) -> anyhow::Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    builder::build(dir, Some(out))?;
    Ok((std::fs::read(out)?, started.elapsed()))
}

/// `label=path,...` from an environment variable.
fn extra(var: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let Ok(list) = std::env::var(var) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (label, path) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{var}: `{item}` is not label=path.wasm"))?;
            let bytes =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("{var}: reading {path}: {e}"))?;
            Ok((label.to_string(), bytes))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    // Cold compiles are measured: the runtime's on-disk cache stays off.
    // SAFETY: set before any other thread of this program starts.
    unsafe { std::env::set_var("SLUICE_CACHE_DIR", "off") };
    let plan = Plan::from_env();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = repo.join("bench/plugins");
    let out = tempfile::tempdir()?;
    eprintln!("building the JavaScript and Python plugins...");
    let (js, js_build) = built(&plugins.join("passthrough-js"), &out.path().join("js.wasm"))?;
    let (py, py_build) = built(&plugins.join("passthrough-py"), &out.path().join("py.wasm"))?;
    let (enrich, enrich_build) = built(
        &repo.join("plugins/enrich"),
        &out.path().join("enrich.wasm"),
    )?;
    let (enrich_record, enrich_record_build) = built(
        &plugins.join("enrich-record-js"),
        &out.path().join("enrich-record.wasm"),
    )?;

    let mut components = vec![
        compile(&plan, "Rust pass-through", PASSTHROUGH_WASM, None)?,
        compile(&plan, "JavaScript pass-through", &js, Some(js_build))?,
        compile(&plan, "Python pass-through", &py, Some(py_build))?,
        compile(
            &plan,
            "JavaScript enrich (batch API)",
            &enrich,
            Some(enrich_build),
        )?,
        compile(
            &plan,
            "JavaScript enrich (per-record API)",
            &enrich_record,
            Some(enrich_record_build),
        )?,
    ];
    let extras = extra("SLUICE_BENCH_EXTRA")?;
    let extra_stocks = extra("SLUICE_BENCH_EXTRA_STOCKS")?;
    for (label, bytes) in extras.iter().chain(&extra_stocks) {
        components.push(compile(&plan, label, bytes, None)?);
    }

    let bench = Shape::Bench;
    let mut rows = vec![
        measure(
            &plan,
            &components[0],
            "Rust, per record (`keep()`)",
            &[],
            bench,
        )?,
        measure(
            &plan,
            &components[1],
            "JavaScript, per record (`out.keep()`)",
            &[],
            bench,
        )?,
        measure(
            &plan,
            &components[1],
            "JavaScript, batch API (`out.keep(i)` per record)",
            &[("mode", "index")],
            bench,
        )?,
        measure(
            &plan,
            &components[1],
            "JavaScript, batch API (`out.keepAll()`)",
            &[("mode", "all")],
            bench,
        )?,
        measure(
            &plan,
            &components[2],
            "Python, per record (`out.keep()`)",
            &[],
            bench,
        )?,
        measure(
            &plan,
            &components[2],
            "Python, batch API (`out.keep(i)` per record)",
            &[("mode", "index")],
            bench,
        )?,
        measure(
            &plan,
            &components[2],
            "Python, batch API (`out.keep_all()`)",
            &[("mode", "all")],
            bench,
        )?,
    ];
    let first_extra = 5;
    for (i, (label, _)) in extras.iter().enumerate() {
        rows.push(measure(
            &plan,
            &components[first_extra + i],
            label,
            &[],
            bench,
        )?);
    }
    let stocks = Shape::Stocks;
    let mut enrich_rows = vec![
        measure(&plan, &components[4], "enrich, per-record API", &[], stocks)?,
        measure(
            &plan,
            &components[3],
            "enrich, batch API (plugins/enrich)",
            &[],
            stocks,
        )?,
    ];
    for (i, (label, _)) in extra_stocks.iter().enumerate() {
        let component = &components[first_extra + extras.len() + i];
        enrich_rows.push(measure(&plan, component, label, &[], stocks)?);
    }

    println!(
        "| component | size | `plugin build` | cold compile (median of {}) |",
        plan.compiles
    );
    println!("|---|---|---|---|");
    for component in &components {
        println!(
            "| {} | {:.1} MiB ({} B) | {} | {:.0} ms |",
            component.name,
            component.size as f64 / (1 << 20) as f64,
            component.size,
            component
                .build
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            component.compile.as_secs_f64() * 1000.0,
        );
    }
    let table = |title: &str, rows: &[Row]| {
        let base = rows[0].per_record[1];
        println!();
        println!(
            "| {title} | instantiate + init | ns/record, batch 100 | ns/record, batch 1000 | vs first row (1000) |"
        );
        println!("|---|---|---|---|---|");
        for row in rows {
            println!(
                "| {} | {:.2} ms | {:.0} | {:.0} | {:.1}x |",
                row.label,
                row.instantiate.as_secs_f64() * 1000.0,
                row.per_record[0],
                row.per_record[1],
                row.per_record[1] / base,
            );
        }
    };
    table("pass-through", &rows);
    table("enrich on stock records", &enrich_rows);
    Ok(())
}
