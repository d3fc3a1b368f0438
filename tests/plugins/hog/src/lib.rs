//! A hostile test plugin: grows its memory without bound, one MiB at a time, until
//! the host refuses, or spins forever. Settings:
//! - `hog_in`: `init` grows during `init`, `process` (the default) on the first record;
//! - `hog`: `memory` (the default) or `cpu`, to spin on the first record instead.
//!
//! A host that enforces its memory and time limits stops it; one that does not runs
//! out of memory itself, or hangs.

use sluice_sdk::{Config, Error, Output, Record, Transform};

struct Hog {
    spin: bool,
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
        })
    }

    fn process(&mut self, _record: &Record<'_>, _out: &mut Output<'_>) -> Result<(), Error> {
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
