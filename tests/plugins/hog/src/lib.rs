//! A hostile test plugin: grows its memory without bound, one MiB at a time, until
//! the host refuses, or spins forever. Settings:
//! - `hog_in`: `init` grows during `init`, `process` (the default) on the first record;
//! - `hog`: `memory` (the default) or `cpu`, to spin on the first record instead, or
//!   `log`, to attack the host's log on the first record (a 120 MB message, a 200 MB
//!   stdout line, lines with a newline, a carriage return and terminal escapes
//!   followed by forged host lines, then a flood of 10 000 lines) and forward every
//!   record.
//!
//! A host that enforces its memory and time limits stops it; one that does not runs
//! out of memory itself, or hangs.

use sluice_sdk::{Config, Error, Header, NewRecord, Output, Record, Transform};

struct Hog {
    spin: bool,
    /// `Some(done)` in `log` mode.
    log: Option<bool>,
}

/// What the host's log must not show as a line of its own.
const FORGED: &str = "2026-01-01T00:00:00.000000Z ERROR sluice_host::pipeline: FORGED";

fn attack_the_log() {
    // Under wasmtime's limit of 128 MiB copied into the host in one call.
    sluice_sdk::log::info(&"x".repeat(120_000_000));
    println!("{}", "y".repeat(200_000_000));
    sluice_sdk::log::warn(&format!("innocent\n{FORGED} by the log import"));
    println!("innocent\r{FORGED} by stdout\x1b[2K\x1b]0;title\x07");
    eprintln!("innocent\u{2028}{FORGED} by stderr");
    for i in 0..10_000 {
        sluice_sdk::log::info(&format!("flood {i}"));
    }
}

fn grow_without_bound() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page: memory the host really has to provide.
        hoard.push(vec![0xA5; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

impl Transform for Hog {
    fn init(config: &Config) -> Result<Self, Error> {
        if config.get("hog_in") == Some("init") {
            grow_without_bound();
        }
        Ok(Hog {
            spin: config.get("hog") == Some("cpu"),
            log: (config.get("hog") == Some("log")).then_some(false),
        })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        if let Some(done) = &mut self.log {
            if !*done {
                *done = true;
                attack_the_log();
            }
            let headers: Vec<Header<'_>> = record.headers().collect();
            out.emit(NewRecord {
                key: record.key(),
                value: record.value(),
                headers: &headers,
                timestamp: record.timestamp(),
            });
            return Ok(());
        }
        if self.spin {
            let mut turns: u64 = 0;
            loop {
                turns = std::hint::black_box(turns.wrapping_add(1));
            }
        }
        grow_without_bound();
    }
}

sluice_sdk::export!(Hog);
