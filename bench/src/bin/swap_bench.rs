//! `swap-bench`: hot swap under steady load on a real broker; see
//! [`sluice_bench::swap`] for what it measures and how. Markdown to stdout, progress
//! to stderr.

use anyhow::{Context as _, bail};
use clap::Parser;
use sluice_bench::kafka::Kafka;
use sluice_bench::run;
use sluice_bench::swap::measure::{self, read_plugin};
use sluice_bench::swap::{Args, analyse, now_us, report};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.swaps == 0 || args.rate == 0 {
        bail!("--swaps and --rate must be at least 1");
    }
    let exe = std::env::current_exe().context("locating this program")?;
    let sluice = run::sluice(args.sluice.clone())?;
    let plugins = [
        read_plugin(&exe, args.tag_a.clone(), "sluice_test_tag_a")?,
        read_plugin(&exe, args.tag_b.clone(), "sluice_test_tag_b")?,
    ];
    if plugins[0] == plugins[1] {
        bail!("the tag-a and tag-b plugins are the same file; rebuild them");
    }
    let kafka = Kafka::connect(&args.bootstrap_servers)?;

    let name = format!(
        "sluice-swap-bench-{}-{}",
        std::process::id(),
        now_us() / 1_000_000
    );
    let workdir = run::workdir(&name)?;
    let python = match (&args.python_plugin, args.cold_python) {
        (_, false) => None,
        (Some(path), true) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading the Python plugin {}", path.display()))?,
        ),
        (None, true) => {
            let built = run::build_plugin(
                &sluice,
                &run::repo_root().join("bench/plugins/passthrough-py"),
                &workdir.join("passthrough-py.wasm"),
                &run::tools_dir().join("py/bin"),
                "componentize-py",
            )?;
            Some(std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?)
        }
    };
    let input = format!("{name}-in");
    let output = format!("{name}-out");
    let result = (|| {
        kafka.create_topic(&input, false)?;
        // The broker stamps each output with its append time: a second clock for pauses,
        // free of this program's fetch timing.
        kafka.create_topic(&output, true)?;
        measure::run(
            &args,
            &kafka,
            &sluice,
            &plugins,
            python.as_deref(),
            &workdir,
            &name,
            &input,
            &output,
        )
    })();
    for topic in [&input, &output] {
        if let Err(error) = kafka.delete_topic(topic) {
            eprintln!("warning: {error:#}");
        }
    }
    let mut run = result?;
    if let Some(path) = measure::broker_gc_log(args.broker_gc_log.as_deref()) {
        let log = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the broker's gc log {}", path.display()))?;
        run.broker_pauses = analyse::broker_pauses(&log, run.load_from_us, run.load_until_us);
        eprintln!(
            "broker gc log {}: {} pauses during the load",
            path.display(),
            run.broker_pauses.len()
        );
    }
    run.broker_priority = measure::broker_priority();
    if let Some(path) = &args.dump_csv {
        report::dump_csv(path, &run)?;
    }
    let figures = analyse::analyse(&run);
    report::print_report(&args, &run, &figures);
    report::print_cold(&args, &figures);
    // The log stays for a look when something failed.
    if run.host_exit != 0 {
        bail!(
            "sluice exited with status {} after SIGTERM, not 0; see its log {}",
            run.host_exit,
            workdir.join("sluice.log").display()
        );
    }
    if !figures.delivery.exactly_once() {
        bail!(
            "DELIVERY CHECK FAILED: not every input arrived exactly once (see the report above); sluice's log: {}",
            workdir.join("sluice.log").display()
        );
    }
    if let Some(keep) = &args.host_log {
        std::fs::copy(workdir.join("sluice.log"), keep)
            .with_context(|| format!("keeping the host's log as {}", keep.display()))?;
    }
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}
