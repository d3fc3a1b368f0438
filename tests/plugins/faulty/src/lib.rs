//! A test plugin that misbehaves on request. Settings:
//! - `fail_on`: a record whose value contains this text is reported as failed;
//! - `trap_on`: a record whose value contains this text makes the plugin panic (a trap);
//! - `init_error`: when set, `init` fails with this message.

use sluice_sdk::{Config, Error, Output, Record, Transform};

struct Faulty {
    fail_on: Option<String>,
    trap_on: Option<String>,
}

fn contains(value: Option<&[u8]>, needle: &Option<String>) -> bool {
    match (value, needle) {
        (Some(value), Some(needle)) => value.windows(needle.len()).any(|w| w == needle.as_bytes()),
        _ => false,
    }
}

impl Transform for Faulty {
    fn init(config: &Config) -> Result<Self, Error> {
        if let Some(message) = config.get("init_error") {
            return Err(Error::msg(message));
        }
        Ok(Faulty {
            fail_on: config.get("fail_on").map(str::to_owned),
            trap_on: config.get("trap_on").map(str::to_owned),
        })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        if contains(record.value(), &self.trap_on) {
            panic!("asked to trap at offset {}", record.offset());
        }
        if contains(record.value(), &self.fail_on) {
            return Err(Error::msg("value matched `fail_on`"));
        }
        out.keep();
        Ok(())
    }
}

sluice_sdk::export!(Faulty);
