//! Turns what a run collected into per-swap figures: when each swap showed, the
//! longest output gaps around it against same-length control windows, and whether
//! every input arrived exactly once.

use std::collections::HashMap;

use super::measure::PYTHON;
use super::{
    CONTROL_CLEARANCE_US, CONTROL_LEAD_US, Run, STEAL_SAMPLE, SWITCH_US, WARM_UP_US,
    WINDOW_AFTER_US, WINDOW_BEFORE_US, tag_index,
};

/// The pauses in a JVM `-Xlog:gc:...:time` log between `from` and `to` (µs since the
/// epoch), as (start, end). A line such as
/// `[2026-11-27T14:09:23.977+0000] GC(30) Pause Young (Normal) (G1 Evacuation Pause) 370M->209M(820M) 17.920ms`
/// is written when the pause ends.
pub fn broker_pauses(log: &str, from: i64, to: i64) -> Vec<(i64, i64)> {
    log.lines()
        .filter(|line| line.contains(" Pause "))
        .filter_map(|line| {
            let stamp = line.strip_prefix('[')?.split(']').next()?;
            let end = chrono::DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.3f%z")
                .ok()?
                .timestamp_micros();
            let ms: f64 = line.rsplit(' ').next()?.strip_suffix("ms")?.parse().ok()?;
            Some((end - (ms * 1e3) as i64, end))
        })
        .filter(|&(start, end)| end >= from && start <= to)
        .collect()
}

/// CPU time stolen within `[from, to]`, in ms: the growth seen in it, and up to one
/// sample interval after it (the counter is read every STEAL_SAMPLE).
pub fn stolen_in(stolen: &[(i64, i64)], from: i64, to: i64) -> f64 {
    let slack = STEAL_SAMPLE.as_micros() as i64;
    stolen
        .iter()
        .filter(|&&(at, _)| at >= from && at <= to + slack)
        .map(|&(_, us)| us)
        .sum::<i64>() as f64
        / 1e3
}

/// The longest broker pause overlapping `[from, to]`, in ms (0 when none does).
pub fn broker_pause_in(pauses: &[(i64, i64)], from: i64, to: i64) -> f64 {
    pauses
        .iter()
        .filter(|&&(start, end)| end >= from && start <= to)
        .map(|&(start, end)| (end - start) as f64 / 1e3)
        .fold(0.0, f64::max)
}

/// Whether every input arrived exactly once, in order within its partition.
pub struct Delivery {
    pub sent: u64,
    pub received: u64,
    pub distinct: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub without_one_tag: u64,
    pub without_provenance: u64,
    pub out_of_order: u64,
}

impl Delivery {
    pub fn exactly_once(&self) -> bool {
        self.received == self.sent && self.distinct == self.sent && self.missing == 0
    }
}

/// Per-swap measurements, in ms.
pub struct SwapResult {
    pub to: u8,
    pub live_ms: Option<f64>,
    pub registry_ms: Option<f64>,
    pub adopted_ms: Option<f64>,
    /// How long the worker took to adopt the new version (`adopt_us` in the log).
    pub adopt_us: Option<f64>,
    /// For a version that went live on baseline code: file change → the worker's move
    /// to Cranelift's code (log).
    pub optimized_ms: Option<f64>,
    /// The longest output gap from the first new-tag output to SWITCH_US after that
    /// move (the optimizing compile in the background, and the move), and the same
    /// over a window as long, CONTROL_LEAD_US before the file change.
    pub optimize_gap_ms: Option<f64>,
    pub optimize_control_gap_ms: Option<f64>,
    pub optimize_window_ms: Option<f64>,
    pub version_ok: bool,
    pub window_ms: f64,
    /// From the last old-tag output received before the first new-tag one to that one.
    pub switch_gap_ms: Option<f64>,
    /// The longest output gap within SWITCH_US of the first new-tag output.
    pub near_gap_ms: Option<f64>,
    /// The pause the swap can cause: the longest output gap from the file change to
    /// SWITCH_US after the first new-tag output.
    pub swap_gap_ms: Option<f64>,
    /// The same measure over a window as long, CONTROL_LEAD_US before the file change,
    /// where no swap is under way (none when that would reach the previous swap).
    pub control_gap_ms: Option<f64>,
    /// The broker's longest pause within that swap window and within its control.
    pub swap_broker_pause_ms: f64,
    pub control_broker_pause_ms: f64,
    /// CPU time stolen by the hypervisor within the swap window, its control and the
    /// wide window.
    pub swap_stolen_ms: f64,
    pub control_stolen_ms: f64,
    pub stolen_ms: f64,
    pub gap_ms: f64,
    pub append_gap_ms: f64,
    pub send_gap_ms: f64,
    pub max_latency_ms: f64,
    /// The longest broker pause within the window (0 when none).
    pub broker_pause_ms: f64,
}

/// Measurements outside the swap windows, after warm-up.
pub struct Baseline {
    pub median_gap_us: f64,
    pub p99_gap_ms: f64,
    pub max_gap_ms: f64,
    /// Longest receipt gap in each swap-free window as long as the median swap window.
    pub window_gaps_ms: Vec<f64>,
    pub window_append_gaps_ms: Vec<f64>,
    /// The same windows' longest gaps, for those without a broker pause.
    pub window_gaps_quiet_ms: Vec<f64>,
    pub window_ms: f64,
    pub latency_ms: [f64; 3],
}

/// The cold Python candidate's swap (`--cold-python`), in ms from the file change.
pub struct Cold {
    pub adopted_ms: Option<f64>,
    pub optimized_ms: Option<f64>,
    /// The background compile: from the workers' adoption of the candidate (on
    /// baseline code) to its move to optimized code.
    pub compile_window_ms: Option<f64>,
    /// The longest worker turn seen in progress in that window (`GET /ready`
    /// sampled), and in a same-length control window before the file change.
    pub longest_turn_ms: Option<f64>,
    pub control_turn_ms: Option<f64>,
    /// The longest output gap in the same two windows.
    pub gap_ms: Option<f64>,
    pub control_gap_ms: Option<f64>,
    pub samples_in_window: usize,
}

pub struct Report {
    pub delivery: Delivery,
    pub swaps: Vec<SwapResult>,
    pub baseline: Baseline,
    pub cold: Option<Cold>,
}

/// The longest stretch of `[from, to]` with no time in `times` (sorted).
pub fn longest_gap(times: &[i64], from: i64, to: i64) -> i64 {
    let start = times.partition_point(|t| *t < from);
    let end = times.partition_point(|t| *t <= to);
    let mut longest = 0;
    // The stretches reaching past either end are clipped to the window.
    let mut previous = if start > 0 {
        times[start - 1].max(from)
    } else {
        from
    };
    for &t in &times[start..end] {
        longest = longest.max(t - previous);
        previous = t;
    }
    let after = times.get(end).copied().unwrap_or(to).min(to);
    longest.max(after - previous)
}

/// The control for the swap window `(file change, end)`: as long, ending
/// CONTROL_LEAD_US before the file change, and none when it would start within
/// CONTROL_CLEARANCE_US of `previous_end` (the end of the previous swap's window, or of
/// the warm-up).
pub fn control_window((changed, end): (i64, i64), previous_end: i64) -> Option<(i64, i64)> {
    let control_end = changed - CONTROL_LEAD_US;
    let control_start = control_end - (end - changed);
    (control_start >= previous_end + CONTROL_CLEARANCE_US).then_some((control_start, control_end))
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

pub fn analyse(run: &Run) -> Report {
    let records = &run.records;
    let mut seen = vec![0u32; run.produced.sent as usize];
    let mut stray = 0;
    let mut last_in_partition: HashMap<i32, u64> = HashMap::new();
    let mut out_of_order = 0;
    for record in records {
        match seen.get_mut(record.seq as usize) {
            Some(count) => *count += 1,
            None => stray += 1,
        }
        if let Some(last) = last_in_partition.insert(record.partition, record.seq)
            && last >= record.seq
        {
            out_of_order += 1;
        }
    }
    let distinct = seen.iter().filter(|c| **c > 0).count() as u64;
    let delivery = Delivery {
        sent: run.produced.sent,
        received: records.len() as u64,
        distinct,
        missing: run.produced.sent - distinct,
        duplicated: records.len() as u64 - distinct - stray,
        without_one_tag: records
            .iter()
            .filter(|r| tag_index(r.tag).is_none())
            .count() as u64,
        without_provenance: records.iter().filter(|r| !r.has_provenance).count() as u64,
        out_of_order,
    };

    let received: Vec<i64> = records.iter().map(|r| r.at_us).collect();
    let appended: Vec<i64> = {
        let mut times: Vec<i64> = records.iter().map(|r| r.append_ms * 1000).collect();
        times.sort_unstable();
        times
    };
    let sent: Vec<i64> = {
        let mut times: Vec<i64> = records.iter().map(|r| r.sent_us).collect();
        times.sort_unstable();
        times
    };

    let steady_from = received.first().copied().unwrap_or(run.load_from_us) + WARM_UP_US;
    let mut windows = Vec::new();
    let mut swaps = Vec::new();
    // Where the previous swap's own window ended: no control window may reach into it.
    let mut previous_end = steady_from;
    for swap in &run.swaps {
        let first_new = records
            .iter()
            .find(|r| r.at_us >= swap.renamed_us && r.tag == output_tag(swap.to))
            .map(|r| r.at_us);
        let ms = |at: i64| (at - swap.renamed_us) as f64 / 1e3;
        let switch_gap = first_new.and_then(|first| {
            records
                .iter()
                .rev()
                .skip_while(|r| r.at_us >= first)
                .find(|r| r.tag != output_tag(swap.to))
                .map(|r| (first - r.at_us) as f64 / 1e3)
        });
        let (from, to) = (
            swap.renamed_us - WINDOW_BEFORE_US,
            first_new.unwrap_or(swap.renamed_us) + WINDOW_AFTER_US,
        );
        windows.push((from, to));
        let swap_window = first_new.map(|first| (swap.renamed_us, first + SWITCH_US));
        let control_window = swap_window.and_then(|window| control_window(window, previous_end));
        let moved = run.optimized_us.get(&swap.expected_version).copied();
        let optimize_window = first_new
            .zip(moved)
            .map(|(first, moved)| (first, moved.max(first) + SWITCH_US));
        let optimize_control = optimize_window.and_then(|(start, end)| {
            self::control_window(
                (swap.renamed_us, swap.renamed_us + (end - start)),
                previous_end,
            )
        });
        if let Some((_, end)) = swap_window {
            previous_end = end;
        }
        if let Some((_, end)) = optimize_window {
            previous_end = previous_end.max(end);
        }
        let gap_in = |window: Option<(i64, i64)>| {
            window.map(|(start, end)| longest_gap(&received, start, end) as f64 / 1e3)
        };
        let pause_in = |window: Option<(i64, i64)>| {
            window.map_or(0.0, |(start, end)| {
                broker_pause_in(&run.broker_pauses, start, end)
            })
        };
        let stolen = |window: Option<(i64, i64)>| {
            window.map_or(0.0, |(start, end)| stolen_in(&run.stolen, start, end))
        };
        let max_latency = records
            .iter()
            .filter(|r| (from..=to).contains(&r.at_us))
            .map(|r| r.at_us - r.sent_us)
            .max()
            .unwrap_or_default();
        swaps.push(SwapResult {
            to: swap.to,
            live_ms: first_new.map(ms),
            registry_ms: swap.since_us.map(ms),
            adopted_ms: run.adopted_us.get(&swap.expected_version).map(|at| ms(*at)),
            adopt_us: run.adopt_took_us.get(&swap.expected_version).copied(),
            optimized_ms: moved.map(ms),
            optimize_gap_ms: gap_in(optimize_window),
            optimize_control_gap_ms: gap_in(optimize_control),
            optimize_window_ms: optimize_window.map(|(start, end)| (end - start) as f64 / 1e3),
            version_ok: swap.status_version == Some(swap.expected_version),
            window_ms: (to - from) as f64 / 1e3,
            switch_gap_ms: switch_gap,
            near_gap_ms: first_new.map(|first| {
                longest_gap(&received, first - SWITCH_US, first + SWITCH_US) as f64 / 1e3
            }),
            swap_gap_ms: gap_in(swap_window),
            control_gap_ms: gap_in(control_window),
            swap_broker_pause_ms: pause_in(swap_window),
            control_broker_pause_ms: pause_in(control_window),
            swap_stolen_ms: stolen(swap_window),
            control_stolen_ms: stolen(control_window),
            stolen_ms: stolen_in(&run.stolen, from, to),
            gap_ms: longest_gap(&received, from, to) as f64 / 1e3,
            append_gap_ms: longest_gap(&appended, from, to) as f64 / 1e3,
            send_gap_ms: longest_gap(&sent, from, to) as f64 / 1e3,
            max_latency_ms: max_latency as f64 / 1e3,
            broker_pause_ms: broker_pause_in(&run.broker_pauses, from, to),
        });
    }

    // Swap-free stretches of steady load: after warm-up, before the load stopped.
    let mut free = Vec::new();
    let mut cursor = steady_from;
    for &(from, to) in &windows {
        if from > cursor {
            free.push((cursor, from));
        }
        cursor = cursor.max(to);
    }
    if run.load_until_us > cursor {
        free.push((cursor, run.load_until_us));
    }
    let outside = |at: i64| free.iter().any(|&(from, to)| (from..to).contains(&at));
    let gaps: Vec<f64> = received
        .windows(2)
        .filter(|pair| outside(pair[0]) && outside(pair[1]))
        .map(|pair| (pair[1] - pair[0]) as f64)
        .collect();
    let gaps = sorted(gaps);
    let latencies = sorted(
        records
            .iter()
            .filter(|r| outside(r.at_us))
            .map(|r| (r.at_us - r.sent_us) as f64 / 1e3)
            .collect(),
    );
    let window_ms = {
        let lengths = sorted(swaps.iter().map(|s| s.window_ms).collect());
        percentile(&lengths, 0.5)
    };
    let length = (window_ms * 1e3) as i64;
    let mut window_gaps_ms = Vec::new();
    let mut window_append_gaps_ms = Vec::new();
    let mut window_gaps_quiet_ms = Vec::new();
    if length > 0 {
        for &(from, to) in &free {
            let mut start = from;
            while start + length <= to {
                let gap = longest_gap(&received, start, start + length) as f64 / 1e3;
                window_gaps_ms.push(gap);
                if broker_pause_in(&run.broker_pauses, start, start + length) == 0.0 {
                    window_gaps_quiet_ms.push(gap);
                }
                window_append_gaps_ms
                    .push(longest_gap(&appended, start, start + length) as f64 / 1e3);
                start += length;
            }
        }
    }
    let cold = run
        .cold_python
        .then(|| {
            run.swaps
                .first()
                .map(|swap| cold(run, swap, &received, steady_from))
        })
        .flatten();
    Report {
        delivery,
        cold,
        swaps,
        baseline: Baseline {
            median_gap_us: percentile(&gaps, 0.5),
            p99_gap_ms: percentile(&gaps, 0.99) / 1e3,
            max_gap_ms: gaps.last().copied().unwrap_or(f64::NAN) / 1e3,
            window_gaps_ms: sorted(window_gaps_ms),
            window_append_gaps_ms: sorted(window_append_gaps_ms),
            window_gaps_quiet_ms: sorted(window_gaps_quiet_ms),
            window_ms,
            latency_ms: [
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                latencies.last().copied().unwrap_or(f64::NAN),
            ],
        },
    }
}

/// The output tag a swap's outputs carry: the cold Python candidate's carry none.
fn output_tag(to: u8) -> u8 {
    if to == PYTHON { 0 } else { to }
}

/// The longest worker turn seen in progress in `[from, to]`, in ms, from the samples of
/// `GET /ready`: a lower bound, short by up to one sampling interval.
fn longest_turn_in(samples: &[super::StatusSample], from: i64, to: i64) -> Option<f64> {
    samples
        .iter()
        .filter(|s| (from..=to).contains(&s.at_us))
        .filter_map(|s| s.turn_in_progress_ms)
        .max()
        .map(|ms| ms as f64)
}

fn cold(run: &Run, swap: &super::Swap, received: &[i64], steady_from: i64) -> Cold {
    let ms = |at: i64| (at - swap.renamed_us) as f64 / 1e3;
    let adopted = run.adopted_us.get(&swap.expected_version).copied();
    let optimized = run.optimized_us.get(&swap.expected_version).copied();
    // A turn that began before the move ends after it: the window reaches SWITCH_US on.
    let window = adopted
        .zip(optimized)
        .map(|(from, to)| (from, to.max(from) + SWITCH_US));
    let control = window.and_then(|(from, to)| {
        control_window(
            (swap.renamed_us, swap.renamed_us + (to - from)),
            steady_from,
        )
    });
    let turn =
        |w: Option<(i64, i64)>| w.and_then(|(from, to)| longest_turn_in(&run.samples, from, to));
    let gap =
        |w: Option<(i64, i64)>| w.map(|(from, to)| longest_gap(received, from, to) as f64 / 1e3);
    Cold {
        adopted_ms: adopted.map(ms),
        optimized_ms: optimized.map(ms),
        compile_window_ms: window.map(|(from, to)| (to - from) as f64 / 1e3),
        longest_turn_ms: turn(window),
        control_turn_ms: turn(control),
        gap_ms: gap(window),
        control_gap_ms: gap(control),
        samples_in_window: window.map_or(0, |(from, to)| {
            run.samples
                .iter()
                .filter(|s| (from..=to).contains(&s.at_us))
                .count()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{control_window, longest_gap};
    use crate::swap::{CONTROL_CLEARANCE_US, CONTROL_LEAD_US, StatusSample};

    #[test]
    fn a_control_window_is_as_long_as_its_swap_window_and_ends_before_the_file_change() {
        let changed = 10_000_000;
        let window = (changed, changed + 60_000);
        assert_eq!(
            control_window(window, 0),
            Some((
                changed - CONTROL_LEAD_US - 60_000,
                changed - CONTROL_LEAD_US
            ))
        );
    }

    #[test]
    fn a_control_window_never_reaches_into_the_previous_swap() {
        let changed = 10_000_000;
        let window = (changed, changed + 60_000);
        let start = changed - CONTROL_LEAD_US - 60_000;
        assert!(control_window(window, start - CONTROL_CLEARANCE_US).is_some());
        assert_eq!(
            control_window(window, start - CONTROL_CLEARANCE_US + 1),
            None
        );
        // A long swap window (a first-time compile) needs as long a quiet stretch.
        let long = changed - CONTROL_LEAD_US;
        assert_eq!(control_window((changed, changed + long), 0), None);
    }

    #[test]
    fn stolen_time_counts_growth_seen_in_the_window_or_just_after() {
        let stolen = [(1_000, 10_000), (5_000, 20_000), (9_000, 10_000)];
        assert_eq!(super::stolen_in(&stolen, 4_000, 6_000), 20.0);
        assert_eq!(super::stolen_in(&stolen, 0, 6_000), 30.0);
        // Seen 1 ms after the window ends: within one sample interval.
        assert_eq!(super::stolen_in(&stolen, 6_000, 8_000), 10.0);
        // None: zero, printed without a sign.
        assert_eq!(
            format!("{:.0}", super::stolen_in(&stolen, 1_500, 2_000)),
            "0"
        );
    }

    #[test]
    fn the_longest_gap_counts_the_stretches_reaching_past_the_window_edges() {
        let times = [100, 130, 200, 260];
        // The stretch from 100 to 130 is clipped to the window's start at 110.
        assert_eq!(longest_gap(&times, 110, 300), 70);
        assert_eq!(longest_gap(&times, 0, 300), 100);
        assert_eq!(longest_gap(&times, 140, 190), 50);
    }

    #[test]
    fn the_longest_turn_is_the_longest_seen_in_progress_within_the_window() {
        let sample = |at_us, ms| StatusSample {
            at_us,
            live_version: 2,
            optimized: false,
            workers_version: 2,
            turn_in_progress_ms: ms,
            adopt_us: None,
        };
        let samples = [
            sample(0, Some(900)),
            sample(10, Some(40)),
            sample(20, None),
            sample(30, Some(70)),
        ];
        assert_eq!(super::longest_turn_in(&samples, 5, 30), Some(70.0));
        assert_eq!(super::longest_turn_in(&samples, 15, 25), None);
    }
}
