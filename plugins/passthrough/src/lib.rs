//! The default transform: every record is forwarded unchanged, to the default output.

use sluice_sdk::{Config, Error, Output, Record, Transform};

struct Passthrough;

impl Transform for Passthrough {
    fn init(_config: &Config) -> Result<Self, Error> {
        Ok(Passthrough)
    }

    fn process(&mut self, _record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        out.keep();
        Ok(())
    }
}

sluice_sdk::export!(Passthrough);
