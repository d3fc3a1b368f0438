//! `peers-bench`: Sluice against the other ways of copying one Kafka topic to another,
//! on the same broker and the same input. Run it with
//!
//! ```text
//! bench/peers/run.sh --records 200000
//! ```
//!
//! which installs the peers (bench/peers/install.sh), builds `sluice`, `plain-loop` and
//! this program, and runs it. The input is the stock records of the job Sluice replaces,
//! written once by `sluice generate --rate 0` to a fresh 6-partition topic; each peer
//! then copies all of it to a fresh output topic of its own, one peer at a time:
//!
//! - `sluice` (built-in pass-through, at-least-once), `sluice-eos` (exactly-once),
//!   `sluice-js` (the JavaScript pass-through plugin, bench/plugins/passthrough-js,
//!   built with `sluice plugin build`);
//! - `plain-loop` (bench/src/bin/plain_loop.rs, rdkafka), `python` (the same loop with
//!   confluent-kafka), `kcat` (a balanced consumer piped into a producer);
//! - `kafka-streams` and `kafka-streams-eos` (`builder.stream(in).to(out)`,
//!   at_least_once and exactly_once_v2);
//! - `pyflink` (the original job's Flink SQL: a Kafka source table and a Kafka sink
//!   table with the stock record's JSON schema, PyFlink 2.0 on its local mini-cluster).
//!
//! A peer whose programs are not installed is skipped with a line naming what is
//! missing. For each: records/s (first to last output record), CPU seconds per million
//! records (the process tree's, from /proc, launch to exit, so start-up included, and
//! over the copy alone), peak RSS of the tree, and the time from launch to the first
//! output record. A transactional peer's output counts once committed: it is done, and
//! its first output is seen, by its consumer group's committed offsets on the input (a
//! transaction commits the records and the offsets together; end offsets would count
//! transaction markers); its copy starts at its first record written. Markdown to
//! stdout, progress to stderr.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use sluice_bench::kafka::{Committed, Kafka, PARTITIONS};
use sluice_bench::process::{Measured, Usage};
use sluice_bench::run::{self, Pipeline};

/// How often progress is read and the process tree sampled.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long a peer may take to stop after SIGTERM before its group is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "peers-bench",
    about = "Sluice against plain loops, kcat, Kafka Streams and PyFlink on one broker and one input.",
    long_about = "Sluice against plain loops, kcat, Kafka Streams and PyFlink on one broker and one input.\n\n\
        Run it with bench/peers/run.sh --records 200000, which installs the peers into \
        $SLUICE_TOOLS_DIR/peers and builds the Rust programs first. Each run creates its \
        own topics and deletes them at the end."
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Stock records in the input topic, copied by each peer.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Rounds per peer; each round runs every peer once, in the order listed.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Only these peers (comma-separated names; see the list in --help's description).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The `sluice` binary [default: next to this program].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The `plain-loop` binary [default: next to this program].
    #[arg(long)]
    plain_loop: Option<PathBuf>,
    /// Where bench/peers/install.sh put the peers [default: $SLUICE_TOOLS_DIR, else
    /// ~/.cache/sluice/tools].
    #[arg(long, env = "SLUICE_TOOLS_DIR")]
    tools: Option<PathBuf>,
    /// The repository's root (for bench/peers and bench/plugins) [default: the one
    /// this program was built from].
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Seconds a peer may take to copy every record before it is abandoned.
    #[arg(long, default_value_t = 600)]
    round_timeout: u64,
}

/// How a peer's progress is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The output topic's end offsets: every record written counts.
    Output,
    /// The group's committed offsets on the input: records count once their
    /// transaction commits.
    Committed,
}

/// Makes a peer's command line for one run.
type Launch = Box<dyn Fn(&Round<'_>) -> anyhow::Result<Command>>;

/// One program to measure, ready to start for a given output topic and group.
struct Peer {
    name: &'static str,
    what: &'static str,
    progress: Progress,
    command: Launch,
}

/// One peer's run: its topics and files.
struct Round<'a> {
    servers: &'a str,
    input: &'a str,
    output: String,
    group: String,
    workdir: &'a Path,
}

#[derive(Debug, Clone)]
struct Measurement {
    peer: &'static str,
    what: &'static str,
    first_output_s: f64,
    copy_s: f64,
    copy_cpu_s: f64,
    usage: Usage,
}

impl Measurement {
    fn records_per_s(&self, records: u64) -> f64 {
        records as f64 / self.copy_s
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.records == 0 || args.rounds == 0 {
        bail!("--records and --rounds must be at least 1");
    }
    let repo = args.repo.clone().unwrap_or_else(run::repo_root);
    let tools = args.tools.clone().unwrap_or_else(run::tools_dir);
    let sluice = run::sluice(args.sluice.clone())?;
    let kafka = Kafka::connect(&args.bootstrap_servers)?;
    let tag = run::unique_tag("peers-bench");
    let workdir = run::workdir(&tag)?;

    let (peers, skipped) = peers(&args, &repo, &tools, &sluice, &workdir);
    for line in &skipped {
        eprintln!("SKIPPED {line}");
    }
    if peers.is_empty() {
        bail!("no peer to measure");
    }

    let input = format!("{tag}-in");
    let result = (|| -> anyhow::Result<Vec<Measurement>> {
        kafka.create_topic(&input, false)?;
        eprintln!(
            "generating {} stock records into `{input}`...",
            args.records
        );
        let status = Command::new(&sluice)
            .args(["generate", "--rate", "0", "--bootstrap-servers"])
            .arg(&args.bootstrap_servers)
            .arg("--topic")
            .arg(&input)
            .arg("--count")
            .arg(args.records.to_string())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .status()
            .context("running `sluice generate`")?;
        if !status.success() {
            bail!("`sluice generate` failed with {status}");
        }
        let written = kafka.end_total(&input)?;
        if written != args.records as i64 {
            bail!(
                "input topic `{input}` holds {written} records, expected {}",
                args.records
            );
        }
        let mut measured = Vec::new();
        for round in 1..=args.rounds {
            for peer in &peers {
                let round = Round {
                    servers: &args.bootstrap_servers,
                    input: &input,
                    output: format!("{input}-out-{round}-{}", peer.name),
                    group: format!("{input}-group-{round}-{}", peer.name),
                    workdir: &workdir,
                };
                match measure(&args, &kafka, peer, &round) {
                    Ok(m) => {
                        eprintln!(
                            "{}: {:.0} records/s, {:.2} CPU s, {:.1} MB peak RSS, first output after {:.2} s",
                            peer.name,
                            m.records_per_s(args.records),
                            m.usage.cpu_s(),
                            m.usage.max_rss_mb,
                            m.first_output_s
                        );
                        measured.push(m);
                    }
                    Err(error) => eprintln!("FAILED {}: {error:#}", peer.name),
                }
                if let Err(error) = kafka.delete_topic(&round.output) {
                    eprintln!("warning: {error:#}");
                }
                if peer.name.starts_with("sluice") {
                    // The keyed-state changelog Sluice creates for its group.
                    let _ = kafka.delete_topic(&format!("{}-state-changelog", round.group));
                }
            }
        }
        Ok(measured)
    })();
    if let Err(error) = kafka.delete_topic(&input) {
        eprintln!("warning: {error:#}");
    }
    let measured = result?;
    report(&args, &measured, &skipped);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

/// The peers to measure, and a line for each one skipped naming what it lacks.
fn peers(
    args: &Args,
    repo: &Path,
    tools: &Path,
    sluice: &Path,
    workdir: &Path,
) -> (Vec<Peer>, Vec<String>) {
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let sluice_peer =
        |name: &'static str, what, delivery: &'static str, plugin: Option<PathBuf>| {
            let sluice = sluice.to_path_buf();
            Peer {
                name,
                what,
                progress: if delivery == "exactly-once" {
                    Progress::Committed
                } else {
                    Progress::Output
                },
                command: Box::new(move |round: &Round<'_>| {
                    let config = round.workdir.join(format!("{}.toml", round.group));
                    let pipeline = Pipeline {
                        servers: round.servers,
                        input: round.input,
                        output: &round.output,
                        group: &round.group,
                        delivery,
                        parallelism: 1,
                        plugin: plugin.as_deref(),
                    };
                    run::write_file(&config, &pipeline.render())?;
                    let mut command = Command::new(&sluice);
                    command
                        .args(["run", "--admin", "off", "--instance", "bench", "--config"])
                        .arg(&config)
                        // Start-up as on a new machine: the plugin compiled, not loaded.
                        .env("SLUICE_CACHE_DIR", "off")
                        .env_remove("BOOTSTRAP_SERVERS")
                        .env_remove("RUST_LOG")
                        .env("NO_COLOR", "1");
                    Ok(command)
                }),
            }
        };
    if wanted("sluice") {
        peers.push(sluice_peer(
            "sluice",
            "Sluice, built-in pass-through, at-least-once",
            "at-least-once",
            None,
        ));
    }
    if wanted("sluice-eos") {
        peers.push(sluice_peer(
            "sluice-eos",
            "Sluice, built-in pass-through, exactly-once",
            "exactly-once",
            None,
        ));
    }
    if wanted("sluice-js") {
        let built = run::build_plugin(
            sluice,
            &repo.join("bench/plugins/passthrough-js"),
            &workdir.join("passthrough-js.wasm"),
            &tools.join("node/node_modules/.bin"),
            "componentize-js",
        );
        match built {
            Ok(plugin) => peers.push(sluice_peer(
                "sluice-js",
                "Sluice, JavaScript pass-through plugin, at-least-once",
                "at-least-once",
                Some(plugin),
            )),
            Err(why) => skipped.push(format!("sluice-js: {why:#}")),
        }
    }
    if wanted("plain-loop") {
        match run::binary(args.plain_loop.clone(), "plain-loop", "sluice-bench") {
            Ok(plain) => peers.push(Peer {
                name: "plain-loop",
                what: "rdkafka consume-produce loop (Rust), at-least-once",
                progress: Progress::Output,
                command: Box::new(move |round: &Round<'_>| {
                    let mut command = Command::new(&plain);
                    command
                        .args(["--bootstrap-servers", round.servers])
                        .args(["--input", round.input])
                        .args(["--output", &round.output])
                        .args(["--group", &round.group]);
                    Ok(command)
                }),
            }),
            Err(why) => skipped.push(format!("plain-loop: {why:#}")),
        }
    }
    if wanted("python") {
        let python = tools.join("peers/py/bin/python");
        let script = repo.join("bench/peers/python/loop.py");
        if python.is_file() {
            peers.push(Peer {
                name: "python",
                what: "confluent-kafka consume-produce loop (Python), at-least-once",
                progress: Progress::Output,
                command: Box::new(move |round: &Round<'_>| {
                    let mut command = Command::new(&python);
                    command.arg(&script).args([
                        round.servers,
                        round.input,
                        &round.output,
                        &round.group,
                    ]);
                    Ok(command)
                }),
            });
        } else {
            skipped.push(format!(
                "python: no confluent-kafka venv at {}; run bench/peers/install.sh",
                python.display()
            ));
        }
    }
    if wanted("kcat") {
        match which("kcat") {
            Some(_) => peers.push(Peer {
                name: "kcat",
                what: "kcat balanced consumer (to the input's end) piped into kcat producer; keys and values, no headers",
                progress: Progress::Output,
                command: Box::new(|round: &Round<'_>| {
                    // Key TAB value a line: neither the stock records' keys nor values
                    // hold a tab or a newline. The consumer stops at the input's end
                    // (-e), which ends the producer's input: kcat -P holds the last
                    // lines it read until its input ends.
                    let pipeline = format!(
                        "kcat -C -e -q -b '{servers}' -G '{group}' -X auto.offset.reset=earliest \
                         -f '%k\\t%s\\n' '{input}' | kcat -P -q -b '{servers}' -t '{output}' -K '\\t'",
                        servers = round.servers,
                        group = round.group,
                        input = round.input,
                        output = round.output
                    );
                    let mut command = Command::new("sh");
                    command.arg("-c").arg(pipeline);
                    Ok(command)
                }),
            }),
            None => skipped.push(
                "kcat: 'kcat' not found on PATH; run bench/peers/install.sh as root, or apt-get install kcat"
                    .into(),
            ),
        }
    }
    let classpath = tools.join("peers/kafka-streams.classpath");
    for (name, what, guarantee, progress) in [
        (
            "kafka-streams",
            "Kafka Streams 4.0 stream(in).to(out), at_least_once",
            "at_least_once",
            Progress::Output,
        ),
        (
            "kafka-streams-eos",
            "Kafka Streams 4.0 stream(in).to(out), exactly_once_v2",
            "exactly_once_v2",
            Progress::Committed,
        ),
    ] {
        if !wanted(name) {
            continue;
        }
        match (
            std::fs::read_to_string(&classpath),
            which("java"),
        ) {
            (Ok(cp), Some(java)) => {
                let cp = cp.trim().to_string();
                peers.push(Peer {
                    name,
                    what,
                    progress,
                    command: Box::new(move |round: &Round<'_>| {
                        let mut command = Command::new(&java);
                        command
                            .args(["-cp", &cp, "sluice.peers.PassThrough"])
                            .args([round.servers, round.input, &round.output, &round.group])
                            .arg(guarantee);
                        Ok(command)
                    }),
                });
            }
            (Err(_), _) => skipped.push(format!(
                "{name}: no Kafka Streams build at {}; run bench/peers/install.sh (needs mvn and java)",
                classpath.display()
            )),
            (_, None) => skipped.push(format!("{name}: 'java' not found on PATH")),
        }
    }
    if wanted("pyflink") {
        let python = tools.join("peers/pyflink/bin/python");
        let jar = std::fs::read_dir(tools.join("peers/pyflink/lib"))
            .ok()
            .and_then(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|e| e == "jar"))
            });
        let script = repo.join("bench/peers/pyflink/job.py");
        match (python.is_file(), jar, which("java")) {
            (true, Some(jar), Some(_)) => peers.push(Peer {
                name: "pyflink",
                what: "PyFlink 2.0 SQL: Kafka source table to Kafka sink table (JSON), at-least-once, checkpoint 1 s",
                progress: Progress::Output,
                command: Box::new(move |round: &Round<'_>| {
                    let mut command = Command::new(&python);
                    command
                        .arg(&script)
                        .args([round.servers, round.input, &round.output, &round.group])
                        .arg(&jar);
                    Ok(command)
                }),
            }),
            (false, _, _) => skipped.push(format!(
                "pyflink: no apache-flink venv at {}; run bench/peers/install.sh",
                python.display()
            )),
            (_, None, _) => skipped.push(format!(
                "pyflink: no flink-sql-connector-kafka jar in {}; run bench/peers/install.sh (needs mvn)",
                tools.join("peers/pyflink/lib").display()
            )),
            (_, _, None) => skipped.push("pyflink: 'java' not found on PATH".into()),
        }
    }
    (peers, skipped)
}

/// `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Runs `peer` until its output holds every record, then stops it.
fn measure(
    args: &Args,
    kafka: &Kafka,
    peer: &Peer,
    round: &Round<'_>,
) -> anyhow::Result<Measurement> {
    kafka.create_topic(&round.output, false)?;
    let committed = Committed::new(round.servers, &round.group, round.input, PARTITIONS)?;
    let log = round.workdir.join(format!("{}.log", peer.name));
    let mut command = (peer.command)(round)?;
    command
        .stdin(Stdio::null())
        .stdout(File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .stderr(
            File::create(log.with_extension("err"))
                .with_context(|| format!("creating {}", log.with_extension("err").display()))?,
        );
    eprintln!("{}: copying...", peer.name);
    let mut child = Measured::spawn(command, peer.name)?;
    let deadline = child.launched() + Duration::from_secs(args.round_timeout);
    let target = args.records as i64;
    // The first record written (a transactional peer's still uncommitted), and the
    // first one a read_committed reader sees.
    let mut first: Option<(Instant, f64)> = None;
    let mut first_visible: Option<Instant> = None;
    let tail = |log: &Path| {
        std::fs::read_to_string(log.with_extension("err"))
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(5)..].join("\n")
            })
            .unwrap_or_default()
    };
    let mut exited = None;
    let last = loop {
        if let Some(done) = child.poll()? {
            exited = Some(done);
        }
        // A failed read (a leader moving, a slow broker) is retried, not fatal.
        let progress = match peer.progress {
            Progress::Output => kafka.end_total(&round.output),
            Progress::Committed => committed.total(),
        }
        .unwrap_or(-1);
        let now = Instant::now();
        // A peer that stops at the input's end (kcat) is done when all is copied.
        if let Some((status, _)) = exited
            && progress < target
        {
            bail!(
                "exited with status {status} after copying {progress} of {target} records; its last lines:\n{}",
                tail(&log)
            );
        }
        if first.is_none() {
            let written = match peer.progress {
                Progress::Output => progress,
                Progress::Committed => kafka.written_total(&round.output).unwrap_or(-1),
            };
            if written > 0 {
                first = Some((now, child.cpu_s()));
            }
        }
        if progress > 0 && first_visible.is_none() {
            first_visible = Some(now);
        }
        if progress >= target {
            break (now, child.cpu_s());
        }
        if now > deadline {
            bail!(
                "copied {progress} of {target} records in {} s; its last lines:\n{}",
                args.round_timeout,
                tail(&log)
            );
        }
        std::thread::sleep(WATCH_INTERVAL);
    };
    let first = first.unwrap_or(last);
    let first_visible = first_visible.unwrap_or(last.0);
    let (status, usage) = match exited {
        Some(done) => done,
        None => child.stop(STOP_TIMEOUT)?,
    };
    // 143: a JVM or Python stopped by SIGTERM without a handler of its own.
    if status != 0 && status != 143 && status != 128 + libc::SIGTERM {
        eprintln!(
            "warning: {} exited with status {status} after SIGTERM; see {}",
            peer.name,
            log.with_extension("err").display()
        );
    }
    Ok(Measurement {
        peer: peer.name,
        what: peer.what,
        first_output_s: (first_visible - child.launched()).as_secs_f64(),
        copy_s: (last.0 - first.0).as_secs_f64(),
        copy_cpu_s: last.1 - first.1,
        usage,
    })
}

fn report(args: &Args, measured: &[Measurement], skipped: &[String]) {
    let n = args.records;
    println!(
        "Input: {n} stock records from `sluice generate --rate 0` ({PARTITIONS} partitions), copied by each peer to a fresh topic; {} round(s).\n",
        args.rounds
    );
    println!(
        "| peer | what | records/s | CPU s per 1M records (launch to exit) | CPU s per 1M records (copy only) | peak RSS MB | launch → first output s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut names: Vec<&'static str> = Vec::new();
    for m in measured {
        if !names.contains(&m.peer) {
            names.push(m.peer);
        }
    }
    for name in names {
        let mine: Vec<&Measurement> = measured.iter().filter(|m| m.peer == name).collect();
        let median =
            |f: &dyn Fn(&Measurement) -> f64| run::median(mine.iter().map(|m| f(m)).collect());
        // Progress is read every 50 ms: a copy shorter than two reads has no rate.
        let rate = median(&|m| m.copy_s);
        let rate = if rate < 2.0 * WATCH_INTERVAL.as_secs_f64() {
            "n/a (done within one progress read; use more --records)".to_string()
        } else {
            format!("{:.0}", median(&|m| m.records_per_s(n)))
        };
        println!(
            "| {name} | {} | {rate} | {:.2} | {:.2} | {:.1} | {:.2} |",
            mine[0].what,
            median(&|m| m.usage.cpu_s() * 1e6 / n as f64),
            median(&|m| m.copy_cpu_s * 1e6 / n as f64),
            median(&|m| m.usage.max_rss_mb),
            median(&|m| m.first_output_s),
        );
    }
    for line in skipped {
        println!("\nSkipped: {line}");
    }
    println!(
        "\nrecords/s: from the first output record written to the last (a transactional peer's \
         last: its group's committed input offsets covering the input; its first output seen: \
         the first commit). CPU: the process tree's user + system time from \
         /proc (and wait4), launch to exit, start-up included; \"copy only\": between the first \
         and last output. Peak RSS: the largest sum of the tree's resident sets at a 50 ms \
         sample. Medians over rounds."
    );
}
