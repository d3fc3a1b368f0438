//! A test plugin that misbehaves on request. Settings:
//! - `fail_on`: a record whose value contains this text is reported as failed;
//! - `trap_on`: a record whose value contains this text makes the plugin panic (a trap);
//! - `init_error`: when set, `init` fails with this message;
//! - `count_in_state`: when set, every record first adds one to a count kept in keyed
//!   state under this key (per partition), failed and trapping records too, and a
//!   record that goes through gets a `count` header with the count it saw.

use sluice_sdk::batch::{Header, NewRecord};
use sluice_sdk::{Config, Error, Output, Record, State, Transform};

struct Faulty {
    fail_on: Option<String>,
    trap_on: Option<String>,
    count_in_state: Option<String>,
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
            count_in_state: config.get("count_in_state").map(str::to_owned),
        })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        let count = match &self.count_in_state {
            Some(key) => {
                let state = State::of(record);
                let count = match state.get(key.as_bytes()) {
                    Some(bytes) => u64::from_le_bytes(bytes.as_slice().try_into()?) + 1,
                    None => 1,
                };
                state.set(key.as_bytes(), &count.to_le_bytes());
                Some(count.to_string())
            }
            None => None,
        };
        if contains(record.value(), &self.trap_on) {
            panic!("asked to trap at offset {}", record.offset());
        }
        if contains(record.value(), &self.fail_on) {
            return Err(Error::msg("value matched `fail_on`"));
        }
        match count {
            Some(count) => {
                let mut headers: Vec<Header<'_>> = record.headers().collect();
                headers.push(Header {
                    name: "count",
                    value: Some(count.as_bytes()),
                });
                out.emit(NewRecord {
                    key: record.key(),
                    value: record.value(),
                    headers: &headers,
                    timestamp: record.timestamp(),
                });
            }
            None => out.keep(),
        }
        Ok(())
    }
}

sluice_sdk::export!(Faulty);
