//! Prints a run's figures as Markdown tables, and writes the raw times as CSV.

use std::path::Path;

use anyhow::Context as _;

use super::analyse::{Report, SwapResult, percentile, sorted};
use super::{
    Args, CONTROL_CLEARANCE_US, CONTROL_LEAD_US, KEY_LEN, PROVENANCE_HEADER, Run, SWITCH_US,
    VALUE_LEN, WARM_UP_US, WINDOW_AFTER_US, WINDOW_BEFORE_US,
};
use crate::kafka::PARTITIONS;

pub fn dump_csv(path: &Path, run: &Run) -> anyhow::Result<()> {
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    let mut text = String::from("received_us,append_ms,sent_us,seq,partition,tag\n");
    for r in &run.records {
        let tag = if r.tag == 0 { '-' } else { r.tag as char };
        text.push_str(&format!(
            "{},{},{},{},{},{tag}\n",
            r.at_us, r.append_ms, r.sent_us, r.seq, r.partition
        ));
    }
    write(path, text)?;
    let mut text = String::from("renamed_us,to,since_us\n");
    for swap in &run.swaps {
        text.push_str(&format!(
            "{},{},{}\n",
            swap.renamed_us,
            swap.to as char,
            swap.since_us.unwrap_or_default()
        ));
    }
    let mut swaps = path.as_os_str().to_owned();
    swaps.push(".swaps.csv");
    write(Path::new(&swaps), text)
}

pub fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"))
}

pub fn print_report(args: &Args, run: &Run, report: &Report) {
    let n = report.swaps.len();
    println!(
        "Hot swap under load: {n} swaps (plugin file replaced by rename, {}{}), \
         {} records/s offered ({PARTITIONS} partitions, {KEY_LEN}-byte keys, {VALUE_LEN}-byte values), \
         swaps at least {} ms apart, {} s of load before the first and {} s after the last window.\n",
        if run.cold_python {
            "from tag-a to a Python pass-through (P, no tag) the host never compiled: its cache empty"
        } else {
            "alternating tag-b / tag-a"
        },
        match (args.new_build_each_swap, args.precompile) {
            (true, true) =>
                ", every candidate a new build, compiled into the cache before its file change",
            (true, false) => ", every candidate a new build that compiles",
            (false, true) => ", candidates compiled into the cache before their file change",
            (false, false) => "",
        },
        args.rate,
        args.interval_ms,
        args.settle_s,
        args.tail_s
    );

    println!(
        "| swap | to | file change → first new-tag output ms | → registry `since` ms | → every worker runs it (GET /status) ms | last old → first new output ms | longest output gap ±{0} ms around it | **pause: longest output gap from the file change to {0} ms after the first new-tag output** | same-length control window {1} ms before the file change | longest output gap in wide window ms | same, broker append time ms | longest input send gap in wide window ms | max latency in wide window ms | worker adopted new version µs (GET /status) | longest broker GC pause in swap window / control / wide window ms | CPU time stolen by the hypervisor in swap window / control / wide window ms |",
        SWITCH_US / 1000,
        CONTROL_LEAD_US / 1000
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, swap) in report.swaps.iter().enumerate() {
        println!(
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {} | {:.0} / {} / {:.0} |",
            i + 1,
            swap.to as char,
            if swap.version_ok {
                ""
            } else {
                " (unexpected version in /status)"
            },
            optional(swap.live_ms),
            optional(swap.registry_ms),
            optional(swap.adopted_ms),
            optional(swap.switch_gap_ms),
            optional(swap.near_gap_ms),
            optional(swap.swap_gap_ms),
            optional(swap.control_gap_ms),
            swap.gap_ms,
            swap.append_gap_ms,
            swap.send_gap_ms,
            swap.max_latency_ms,
            swap.adopt_us
                .map_or_else(|| "–".to_string(), |us| format!("{us:.0}")),
            if run.broker_pauses.is_empty() {
                "–".to_string()
            } else {
                format!(
                    "{:.1} / {} / {:.1}",
                    swap.swap_broker_pause_ms,
                    if swap.control_gap_ms.is_some() {
                        format!("{:.1}", swap.control_broker_pause_ms)
                    } else {
                        "–".to_string()
                    },
                    swap.broker_pause_ms
                )
            },
            swap.swap_stolen_ms,
            if swap.control_gap_ms.is_some() {
                format!("{:.0}", swap.control_stolen_ms)
            } else {
                "–".to_string()
            },
            swap.stolen_ms
        );
    }

    let optimized: Vec<(usize, &SwapResult)> = report
        .swaps
        .iter()
        .enumerate()
        .filter(|(_, swap)| swap.optimized_ms.is_some())
        .collect();
    if !optimized.is_empty() {
        println!(
            "\nVersions that went live on baseline code, and moved to Cranelift's once it was compiled in the background:\n"
        );
        println!(
            "| swap | file change → live on optimized code (GET /status) ms | window: first new-tag output to {} ms after the move, ms | longest output gap in it ms | same-length control window before the file change ms |",
            SWITCH_US / 1000
        );
        println!("|---:|---:|---:|---:|---:|");
        for (i, swap) in optimized {
            println!(
                "| {} | {} | {} | {} | {} |",
                i + 1,
                optional(swap.optimized_ms),
                optional(swap.optimize_window_ms),
                optional(swap.optimize_gap_ms),
                optional(swap.optimize_control_gap_ms),
            );
        }
    }

    let column = |f: &dyn Fn(&SwapResult) -> Option<f64>| {
        sorted(report.swaps.iter().filter_map(f).collect::<Vec<_>>())
    };
    let live = column(&|s| s.live_ms);
    let registry = column(&|s| s.registry_ms);
    let adopted = column(&|s| s.adopted_ms);
    let switch_gap = column(&|s| s.switch_gap_ms);
    let near_gap = column(&|s| s.near_gap_ms);
    let gap = column(&|s| Some(s.gap_ms));
    let append_gap = column(&|s| Some(s.append_gap_ms));
    let latency = column(&|s| Some(s.max_latency_ms));
    let adopt = column(&|s| s.adopt_us);
    // Undisturbed: no broker GC pause and no stolen CPU time in the window.
    let quiet_gap =
        column(&|s| Some(s.gap_ms).filter(|_| s.broker_pause_ms == 0.0 && s.stolen_ms == 0.0));
    let swap_gap = column(&|s| s.swap_gap_ms);
    let control_gap = column(&|s| s.control_gap_ms);
    let quiet_swap_gap = column(&|s| {
        s.swap_gap_ms
            .filter(|_| s.swap_broker_pause_ms == 0.0 && s.swap_stolen_ms == 0.0)
    });
    let quiet_control_gap = column(&|s| {
        s.control_gap_ms
            .filter(|_| s.control_broker_pause_ms == 0.0 && s.control_stolen_ms == 0.0)
    });
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    println!(
        "\nOver {n} swaps (nearest-rank percentiles: with fewer than 100 swaps p99 is the maximum):\n"
    );
    println!("| per swap, ms | p50 | p99 | max | target | |");
    println!("|---|---:|---:|---:|---|---|");
    let row = |name: &str, values: &[f64], target: &str, met: Option<bool>| {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {target} | {} |",
            percentile(values, 0.5),
            percentile(values, 0.99),
            values.last().copied().unwrap_or(f64::NAN),
            met.map(verdict).unwrap_or("")
        );
    };
    let live_met = live.len() == n && percentile(&live, 0.99) < 1000.0;
    row(
        "file change → live (first new-tag output)",
        &live,
        "< 1000",
        Some(live_met),
    );
    row("file change → registry `since`", &registry, "", None);
    row(
        "file change → every worker runs it (GET /status)",
        &adopted,
        "",
        None,
    );
    let pause_met = swap_gap.len() == n && percentile(&swap_gap, 0.99) < 20.0;
    row(
        &format!(
            "processing pause: longest output gap from the file change to {} ms after the first new-version output",
            SWITCH_US / 1000
        ),
        &swap_gap,
        "p99 < 20",
        Some(pause_met),
    );
    let optimize_gap = column(&|s| s.optimize_gap_ms);
    if !optimize_gap.is_empty() {
        row(
            &format!(
                "versions live on baseline code ({}): longest output gap from the first new-version output to {} ms after the move to optimized code",
                optimize_gap.len(),
                SWITCH_US / 1000
            ),
            &optimize_gap,
            "",
            None,
        );
    }
    row(
        &format!(
            "control: the same measure over a window as long, {} ms before the file change ({} windows)",
            CONTROL_LEAD_US / 1000,
            control_gap.len()
        ),
        &control_gap,
        "",
        None,
    );
    row(
        &format!(
            "longest output gap in the wide window ({} ms before the file change to {} ms after the first new-version output)",
            WINDOW_BEFORE_US / 1000,
            WINDOW_AFTER_US / 1000
        ),
        &gap,
        "",
        None,
    );
    row(
        "last old-version output → first new-version output",
        &switch_gap,
        "",
        None,
    );
    row(
        &format!(
            "longest output gap within {} ms of the first new-version output",
            SWITCH_US / 1000
        ),
        &near_gap,
        "",
        None,
    );
    row(
        "longest gap by broker append time (1 ms resolution)",
        &append_gap,
        "",
        None,
    );
    row("max end-to-end latency in window", &latency, "", None);
    println!(
        "| worker adopts the new version (takes the instance started ahead, or starts one), µs (`workers[].adopt_us` of GET /status) | {:.0} | {:.0} | {:.0} | | |",
        percentile(&adopt, 0.5),
        percentile(&adopt, 0.99),
        adopt.last().copied().unwrap_or(f64::NAN)
    );
    if !run.broker_pauses.is_empty() || !run.stolen.is_empty() {
        row(
            &format!(
                "processing pause in the {} swap windows without a broker GC pause or stolen CPU time",
                quiet_swap_gap.len()
            ),
            &quiet_swap_gap,
            "",
            None,
        );
        row(
            &format!(
                "control, in the {} control windows without either",
                quiet_control_gap.len()
            ),
            &quiet_control_gap,
            "",
            None,
        );
        row(
            &format!(
                "longest output gap in the {} wide windows without either",
                quiet_gap.len()
            ),
            &quiet_gap,
            "",
            None,
        );
    }

    let b = &report.baseline;
    println!(
        "\nBaseline: steady load outside the swap windows, after {} s of warm-up:\n",
        WARM_UP_US / 1_000_000
    );
    println!("| outside swap windows | value |");
    println!("|---|---:|");
    println!(
        "| median gap between consecutive output receipts | {:.0} µs |",
        b.median_gap_us
    );
    println!(
        "| p99 / max gap between consecutive receipts | {:.1} / {:.1} ms |",
        b.p99_gap_ms, b.max_gap_ms
    );
    println!(
        "| longest output gap per swap-free {:.0} ms window ({} windows): p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        b.window_ms,
        b.window_gaps_ms.len(),
        percentile(&b.window_gaps_ms, 0.5),
        percentile(&b.window_gaps_ms, 0.99),
        b.window_gaps_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| same, broker append time: p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        percentile(&b.window_append_gaps_ms, 0.5),
        percentile(&b.window_append_gaps_ms, 0.99),
        b.window_append_gaps_ms.last().copied().unwrap_or(f64::NAN)
    );
    if !run.broker_pauses.is_empty() {
        println!(
            "| longest output gap per swap-free window without a broker GC pause ({} windows): p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
            b.window_gaps_quiet_ms.len(),
            percentile(&b.window_gaps_quiet_ms, 0.5),
            percentile(&b.window_gaps_quiet_ms, 0.99),
            b.window_gaps_quiet_ms.last().copied().unwrap_or(f64::NAN)
        );
        let pauses = sorted(
            run.broker_pauses
                .iter()
                .map(|(start, end)| (end - start) as f64 / 1e3)
                .collect(),
        );
        println!(
            "| broker GC pauses during the load ({} in {:.0} s): p50 / max | {:.1} / {:.1} ms |",
            pauses.len(),
            (run.load_until_us - run.load_from_us) as f64 / 1e6,
            percentile(&pauses, 0.5),
            pauses.last().copied().unwrap_or(f64::NAN)
        );
    }
    let stolen = run.stolen.iter().map(|(_, us)| us).sum::<i64>() as f64 / 1e3;
    println!(
        "| CPU time stolen by the hypervisor during the load (all CPUs; growth seen {} times) | {:.0} ms in {:.0} s |",
        run.stolen.len(),
        stolen,
        (run.load_until_us - run.load_from_us) as f64 / 1e6
    );
    println!(
        "| the local broker's CPU priority | {} |",
        run.broker_priority
            .as_deref()
            .unwrap_or("unknown (no broker.pid)")
    );
    println!(
        "| end-to-end latency (send → receipt) p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        b.latency_ms[0], b.latency_ms[1], b.latency_ms[2]
    );

    let d = &report.delivery;
    println!("\n| delivery | count |");
    println!("|---|---:|");
    println!(
        "| records sent (input topic end offsets: {}) | {} |",
        run.input_total, d.sent
    );
    println!(
        "| outputs received (output topic end offsets: {}) | {} |",
        run.output_total, d.received
    );
    println!("| distinct inputs among them | {} |", d.distinct);
    println!("| missing | {} |", d.missing);
    println!("| duplicated | {} |", d.duplicated);
    println!("| out of order within a partition | {} |", d.out_of_order);
    println!(
        "| without exactly one `tag: A` or `tag: B` | {} |",
        d.without_one_tag
    );
    println!(
        "| without the `{PROVENANCE_HEADER}` header | {} |",
        d.without_provenance
    );
    if d.exactly_once() {
        println!("\nEvery input arrived exactly once.");
    } else {
        println!(
            "\n**!!! DELIVERY CHECK FAILED: {} sent, {} received, {} distinct, {} missing, {} duplicated !!!**",
            d.sent, d.received, d.distinct, d.missing, d.duplicated
        );
    }
    let (swaps, rejections, rollbacks) = run.final_counts;
    let versions_ok = report.swaps.iter().all(|s| s.version_ok);
    println!(
        "Registry at the end: {swaps} swaps, {rejections} rejections, {rollbacks} rollbacks{}. \
         sluice exited {} after SIGTERM{}.",
        if versions_ok {
            "; after every swap `GET /status` showed the expected version"
        } else {
            "; **`GET /status` showed an unexpected version after some swap**"
        },
        run.host_exit,
        if run.host_exit == 0 {
            ""
        } else {
            " (**expected 0**)"
        }
    );
    if run.not_append_time > 0 {
        println!(
            "**{} outputs carried no broker append time; the append-time gaps are not meaningful.**",
            run.not_append_time
        );
    }
    println!(
        "\nSwap window: from the file change to {} ms after the first new-tag output; its control \
         window is as long and ends {} ms before the file change (left out when it would start \
         within {} ms of the previous swap window's end). Wide window: \
         from {} ms before the file change to {} ms after the first new-tag output. \
         Most input records due at once waiting to be sent: {}.\n\n\
         Knobs: host defaults (`batch_max_records` = 1000, the host producer's librdkafka \
         `linger.ms` default), checkpoint interval 1000 ms; input producer `linger.ms` = {}, \
         idempotent; output consumer `fetch.min.bytes` = 1, `fetch.wait.max.ms` = {}; \
         output topic `message.timestamp.type` = LogAppendTime.",
        SWITCH_US / 1000,
        CONTROL_LEAD_US / 1000,
        CONTROL_CLEARANCE_US / 1000,
        WINDOW_BEFORE_US / 1000,
        WINDOW_AFTER_US / 1000,
        run.produced.max_backlog,
        args.producer_linger_ms,
        args.consumer_fetch_wait_ms
    );
}

/// The cold Python candidate's figures (`--cold-python`).
pub fn print_cold(args: &Args, report: &Report) {
    let Some(cold) = &report.cold else {
        return;
    };
    println!(
        "\nCold Python candidate (compilation cache empty): the swap goes live on baseline code while Cranelift compiles it in the background.\n"
    );
    println!(
        "| file change → every worker runs it ms | → live on optimized code ms | background compile window ms | **longest worker turn in it ms** | same-length control window before the file change: longest turn ms | longest output gap in the window ms | same, control ms | admin samples in the window |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        optional(cold.adopted_ms),
        optional(cold.optimized_ms),
        optional(cold.compile_window_ms),
        optional(cold.longest_turn_ms),
        optional(cold.control_turn_ms),
        optional(cold.gap_ms),
        optional(cold.control_gap_ms),
        cold.samples_in_window
    );
    println!(
        "\nThe times come from `GET /status` (workers' versions, `live.code`) and the worker turns from \
         `GET /ready` (`workers[].last_turn_ms_ago`), sampled every {} ms: a turn is seen in progress, \
         so the longest is short by up to one sampling interval, and a turn shorter than the interval \
         may be missed.",
        args.status_poll_ms
    );
}
