//! Test plugin: `init` succeeds, then every record makes it panic (a trap), so it
//! fails any self-test.

use sluice_sdk::{Config, Error, Output, Record, Transform};

struct Trapper;

impl Transform for Trapper {
    fn init(_config: &Config) -> Result<Self, Error> {
        Ok(Trapper)
    }

    fn process(&mut self, record: &Record<'_>, _out: &mut Output<'_>) -> Result<(), Error> {
        panic!("trapper traps on offset {}", record.offset());
    }
}

sluice_sdk::export!(Trapper);
