//! The in-process cost of Sluice's transform step with the built-in pass-through, per
//! record, without Kafka: encoding the input batch on the host, and the whole step as
//! the pipeline runs it (encode, open, plugin call, check the output against the
//! output limits). The output check is also measured alone. Opening and
//! the plugin call are also measured alone, to show where the step's time goes, and
//! the plugin call again on the baseline compiler's code (Winch), which a hot-swapped
//! version runs until Cranelift's is ready.
//!
//! Run with `cargo bench -p sluice-host --bench transform`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_host::output::{OutputLimits, Verdicts};
use sluice_host::plugin::{Origin, PASSTHROUGH_WASM, Plugin, digest};
use sluice_host::runtime::{Instance, Limits, Runtime, Sandbox, Tier};
use sluice_host::state::StateStore;
use sluice_sdk::batch::{Header, InputBatch, InputWriter, RecordFields};

const BATCH_SIZES: [usize; 2] = [100, 1000];
const TOPIC: &str = "bench-in";

/// Records shaped like the end-to-end benchmark's: 16-byte key, 100-byte value, two
/// small headers.
struct Sample {
    keys: Vec<[u8; 16]>,
    values: Vec<[u8; 100]>,
    seqs: Vec<[u8; 8]>,
}

impl Sample {
    fn new(records: usize) -> Self {
        let mut sample = Sample {
            keys: Vec::with_capacity(records),
            values: Vec::with_capacity(records),
            seqs: Vec::with_capacity(records),
        };
        for i in 0..records {
            let mut key = [0; 16];
            key.copy_from_slice(format!("{i:016}").as_bytes());
            let mut value = [b'x'; 100];
            let prefix = format!("value-{i:010}-");
            value[..prefix.len()].copy_from_slice(prefix.as_bytes());
            sample.keys.push(key);
            sample.values.push(value);
            sample.seqs.push((i as u64).to_be_bytes());
        }
        sample
    }

    fn encode<'w>(&self, writer: &'w mut InputWriter) -> &'w [u8] {
        writer.clear();
        for i in 0..self.keys.len() {
            let headers = [
                Header {
                    name: "source",
                    value: Some(b"sluice-bench"),
                },
                Header {
                    name: "seq",
                    value: Some(&self.seqs[i]),
                },
            ];
            writer.push(RecordFields {
                topic: TOPIC,
                partition: (i % 6) as i32,
                offset: i as i64,
                timestamp: Some(1_700_000_000_000 + i as i64),
                key: Some(&self.keys[i]),
                value: Some(&self.values[i]),
                headers: headers.into_iter(),
            });
        }
        writer.finish()
    }
}

/// The output limits at their defaults, as `sluice run` sets them.
fn limits() -> OutputLimits {
    OutputLimits {
        per_record: 1_000,
        batch_bytes: 64 << 20,
        record_bytes: 1_000_000,
        outputs: Default::default(),
    }
}

/// One pipeline step, as `Pipeline::run` and `TransformStage` do it. Returns the number
/// of output records so the work cannot be optimised away.
fn step(
    sample: &Sample,
    writer: &mut InputWriter,
    instance: &mut Instance,
    limits: &OutputLimits,
) -> usize {
    let encoded = sample.encode(writer);
    let input = InputBatch::open(encoded).expect("the host's own encoding parses");
    let output = instance
        .process(encoded, &input)
        .expect("the pass-through accepts every batch");
    Verdicts::check(&output, &input, limits)
        .expect("the pass-through's output parses")
        .sends()
}

fn transform(c: &mut Criterion) {
    let runtime = Runtime::new().expect("starting the WebAssembly runtime");
    // Baseline code first: once the optimized code is compiled, loading takes it.
    let (baseline, _) = Plugin::from_bytes_fast(
        &runtime,
        Origin::BuiltIn,
        PASSTHROUGH_WASM,
        &digest(PASSTHROUGH_WASM),
    )
    .expect("compiling the built-in pass-through with the baseline compiler");
    assert_eq!(baseline.tier(), Tier::Baseline);
    let plugin = Plugin::load(&runtime, None).expect("loading the built-in pass-through");
    let mut instance = plugin
        .start(
            Limits::default(),
            &Sandbox::default(),
            &[],
            StateStore::shared(),
        )
        .expect("starting the built-in pass-through");
    let mut baseline = baseline
        .start(
            Limits::default(),
            &Sandbox::default(),
            &[],
            StateStore::shared(),
        )
        .expect("starting the built-in pass-through on baseline code");

    let mut group = c.benchmark_group("transform");
    for records in BATCH_SIZES {
        let sample = Sample::new(records);
        let mut writer = InputWriter::new();
        group.throughput(Throughput::Elements(records as u64));

        group.bench_with_input(BenchmarkId::new("encode", records), &sample, |b, sample| {
            b.iter(|| black_box(sample.encode(&mut writer).len()))
        });

        let encoded = sample.encode(&mut writer).to_vec();
        let input = InputBatch::open(&encoded).expect("the host's own encoding parses");
        // The pipeline opens the batch it has just encoded, validating every record again.
        group.bench_with_input(
            BenchmarkId::new("open_input", records),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    black_box(
                        InputBatch::open(black_box(encoded))
                            .expect("the host's own encoding parses")
                            .len(),
                    )
                })
            },
        );

        group.bench_with_input(
            BenchmarkId::new("plugin_call", records),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    black_box(
                        instance
                            .process(black_box(encoded), &input)
                            .expect("the pass-through accepts every batch")
                            .len(),
                    )
                })
            },
        );

        group.bench_with_input(
            BenchmarkId::new("plugin_call_baseline", records),
            &encoded,
            |b, encoded| {
                b.iter(|| {
                    black_box(
                        baseline
                            .process(black_box(encoded), &input)
                            .expect("the pass-through accepts every batch")
                            .len(),
                    )
                })
            },
        );

        let limits = limits();
        let output = instance
            .process(&encoded, &input)
            .expect("the pass-through accepts every batch");
        group.bench_with_input(
            BenchmarkId::new("output_check", records),
            &output,
            |b, output| {
                b.iter(|| {
                    black_box(
                        Verdicts::check(black_box(output), &input, &limits)
                            .expect("the pass-through's output parses")
                            .sends(),
                    )
                })
            },
        );

        group.bench_with_input(
            BenchmarkId::new("full_step", records),
            &sample,
            |b, sample| {
                b.iter(|| {
                    let sent = step(sample, &mut writer, &mut instance, &limits);
                    assert_eq!(sent, records);
                    black_box(sent)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, transform);
criterion_main!(benches);
