//! `scale-bench`: throughput of 1, 2, 3, ... `sluice` hosts in one consumer group.
//!
//! Strategy: one input topic of `--partitions` partitions is filled once with stock
//! records. Each round starts N hosts at once (each its own process, its own
//! `--instance`, one worker) on a new group and a new output topic, and follows the
//! group's committed offsets. The rate is the input's records over the time from the
//! start of the processes to the commit that covers the whole input: it includes the
//! start-up and the rebalances while the hosts join one after the other, as a real
//! scale-out pays them. The hosts' CPU time (user and system, from /proc just
//! before they are stopped) is reported per million records. Prints Markdown to
//! stdout, progress to stderr.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_bench::kafka::Committed;
use sluice_bench::process::terminate;
use sluice_bench::run::{self, Pipeline};

#[derive(Debug, Parser)]
#[command(
    name = "scale-bench",
    about = "Throughput of 1, 2, 3, ... sluice hosts in one consumer group.",
    long_about = "Throughput of 1, 2, 3, ... sluice hosts in one consumer group.\n\n\
        Build first:\n  cargo build --release -p sluice-host --bin sluice -p sluice-bench --bin scale-bench\n\
        then run:\n  target/release/scale-bench --records 2000000 --hosts 1,2,3 --rounds 3\n\n\
        The broker must be up (scripts/kafka.sh start)."
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// Records in the input topic, copied once per round.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Host counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    hosts: Vec<usize>,
    /// Rounds; each round measures every host count once, in order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `at-least-once` or `exactly-once`.
    #[arg(long, default_value = "at-least-once")]
    delivery: String,
    /// The `sluice` binary [default: next to this program].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// A plugin [default: the built-in pass-through].
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Seconds a round may take before it is abandoned.
    #[arg(long, default_value_t = 600)]
    round_timeout: u64,
}

struct Round {
    hosts: usize,
    round: usize,
    records_per_s: f64,
    wall_s: f64,
    cpu_s_per_million: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.records == 0 || args.rounds == 0 || args.hosts.contains(&0) || args.partitions < 1 {
        bail!("--records, --rounds, --partitions and every --hosts count must be at least 1");
    }
    let sluice = run::sluice(args.sluice.clone())?;
    let tag = run::unique_tag("scale-bench");
    let workdir = run::workdir(&tag)?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap_servers)
        .create()
        .context("creating the admin client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let input = format!("{tag}-in");
    let mut topics = vec![input.clone()];
    let bench = Bench {
        args: &args,
        sluice: &sluice,
        workdir: &workdir,
        admin: &admin,
        runtime: &runtime,
    };
    let result = (|| -> anyhow::Result<Vec<Round>> {
        bench.create_topic(&input)?;
        eprintln!("filling `{input}` with {} records...", args.records);
        fill(
            &args.bootstrap_servers,
            &input,
            args.records,
            args.partitions,
        )?;
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            for &hosts in &args.hosts {
                let result = bench.round(&input, round, hosts, &mut topics)?;
                eprintln!(
                    "round {round}, {hosts} host(s): {:.0} records/s, {:.1} s, {:.2} CPU s per 1M records",
                    result.records_per_s, result.wall_s, result.cpu_s_per_million
                );
                rounds.push(result);
            }
        }
        Ok(rounds)
    })();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(error) = runtime.block_on(admin.delete_topics(&names, &AdminOptions::new())) {
        eprintln!("warning: deleting the benchmark's topics: {error}");
    }
    let rounds = result?;
    report(&args, &rounds);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

struct Bench<'a> {
    args: &'a Args,
    sluice: &'a Path,
    workdir: &'a Path,
    admin: &'a AdminClient<DefaultClientContext>,
    runtime: &'a tokio::runtime::Runtime,
}

impl Bench<'_> {
    fn create_topic(&self, name: &str) -> anyhow::Result<()> {
        let topic = NewTopic::new(name, self.args.partitions, TopicReplication::Fixed(1));
        for result in self
            .runtime
            .block_on(self.admin.create_topics([&topic], &AdminOptions::new()))
            .with_context(|| format!("creating topic {name}; is the broker up?"))?
        {
            result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
        }
        Ok(())
    }

    fn config(&self, input: &str, output: &str, group: &str) -> anyhow::Result<PathBuf> {
        let path = self.workdir.join(format!("{group}.toml"));
        let pipeline = Pipeline {
            servers: &self.args.bootstrap_servers,
            input,
            output,
            group,
            delivery: &self.args.delivery,
            parallelism: 1,
            plugin: self.args.plugin.as_deref(),
        };
        run::write_file(&path, &pipeline.render())?;
        Ok(path)
    }

    fn start(&self, config: &Path, instance: &str, log: &Path) -> anyhow::Result<Child> {
        run::start_sluice(self.sluice, config, instance, log)
    }

    fn round(
        &self,
        input: &str,
        round: usize,
        hosts: usize,
        topics: &mut Vec<String>,
    ) -> anyhow::Result<Round> {
        let output = format!("{input}-out-{round}-{hosts}");
        let group = format!("{input}-g-{round}-{hosts}");
        self.create_topic(&output)?;
        topics.push(output.clone());
        let config = self.config(input, &output, &group)?;
        let committed = Committed::new(
            &self.args.bootstrap_servers,
            &group,
            input,
            self.args.partitions,
        )?;
        let started = Instant::now();
        let mut children = Vec::new();
        let mut logs = Vec::new();
        for host in 0..hosts {
            let log = self.workdir.join(format!("{group}-{host}.log"));
            children.push(self.start(&config, &format!("bench-{host}"), &log)?);
            logs.push(log);
        }
        let deadline = started + Duration::from_secs(self.args.round_timeout);
        let records = self.args.records as i64;
        let finished = loop {
            for (child, log) in children.iter_mut().zip(&logs) {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "sluice exited ({status}) during the round; see {}",
                        log.display()
                    );
                }
            }
            let done = committed.total().unwrap_or(0);
            let now = Instant::now();
            if done >= records {
                break now;
            }
            if now > deadline {
                bail!(
                    "{hosts} host(s): {done} records committed after {} s; see {}",
                    self.args.round_timeout,
                    self.workdir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let cpu_s: f64 = children.iter().map(|child| cpu_seconds(child.id())).sum();
        for child in &mut children {
            terminate(child, "sluice", Duration::from_secs(60))?;
        }
        let wall_s = (finished - started).as_secs_f64();
        Ok(Round {
            hosts,
            round,
            records_per_s: records as f64 / wall_s,
            wall_s,
            cpu_s_per_million: cpu_s * 1e6 / records as f64,
        })
    }
}

/// User and system CPU seconds a running process has used so far (its threads
/// included; the plugin compiler's child processes are not).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second
}

/// Stock records spread evenly over the partitions (round robin), so every host of
/// an even split gets the same share.
fn fill(servers: &str, topic: &str, records: u64, partitions: i32) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.kbytes", "65536")
        .create()
        .context("creating the producer that fills the input")?;
    for i in 0..records {
        let value = format!(
            r#"{{"event_time": "2026-12-03 03:00:00.000000", "ticker": "T{:02}", "price": {}.{:02}}}"#,
            i % 48,
            i % 100,
            i % 97
        );
        let partition = (i % partitions as u64) as i32;
        loop {
            match producer.send(
                BaseRecord::<(), str>::to(topic)
                    .partition(partition)
                    .payload(&value),
            ) {
                Ok(()) => break,
                Err((error, _)) if error.to_string().contains("Queue full") => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => bail!("writing to {topic}: {error}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the input")?;
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(args: &Args, rounds: &[Round]) {
    println!(
        "{} records over {} partitions, {}, {}, {} round(s)\n",
        args.records,
        args.partitions,
        args.delivery,
        args.plugin
            .as_ref()
            .map_or("built-in pass-through".to_string(), |p| p
                .display()
                .to_string()),
        args.rounds
    );
    println!(
        "| round | hosts | records/s | s from start to all committed | CPU s per 1M records (all hosts) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for r in rounds {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.2} |",
            r.round, r.hosts, r.records_per_s, r.wall_s, r.cpu_s_per_million
        );
    }
    println!("\nMedians:\n");
    println!("| hosts | records/s | against 1 host | CPU s per 1M records |");
    println!("|---:|---:|---:|---:|");
    let of = |hosts: usize, f: fn(&Round) -> f64| {
        median(rounds.iter().filter(|r| r.hosts == hosts).map(f).collect())
    };
    for &hosts in &args.hosts {
        let rate = of(hosts, |r| r.records_per_s);
        let ratio = if args.hosts.contains(&1) {
            format!("{:.2}", rate / of(1, |r| r.records_per_s))
        } else {
            "—".into()
        };
        println!(
            "| {hosts} | {rate:.0} | {ratio} | {:.2} |",
            of(hosts, |r| r.cpu_s_per_million)
        );
    }
}
