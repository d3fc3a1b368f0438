//! A test plugin that misbehaves on request. Settings:
//! - `fail_on`: a record whose value contains this text is reported as failed;
//! - `trap_on`: a record whose value contains this text makes the plugin panic (a trap);
//! - `init_error`: when set, `init` fails with this message;
//! - `count_in_state`: when set, every record first adds one to a count kept in keyed
//!   state under this key (per partition), failed and trapping records too, and a
//!   record that goes through gets a `count` header with the count it saw;
//! - `state_bytes`: with `count_in_state`, the count is stored padded to this many
//!   bytes (for a changelog record the broker refuses);
//! - `grow_on` and `grow_to`: a record whose value contains `grow_on` goes out with
//!   its value repeated up to `grow_to` bytes (for an output the broker refuses);
//! - `output_on` and `output`: a record whose value contains `output_on` goes to the
//!   named output `output` (for an output name the host does not map);
//! - `copies_on` and `copies`: a record whose value contains `copies_on` is kept
//!   `copies` times (for the outputs-per-record limit);
//! - `fill_on`, `fill_keys` and `fill_bytes`: a record whose value contains `fill_on`
//!   writes `fill_keys` keyed-state values of `fill_bytes` bytes (for the state limits);
//! - `busy_ms`: every record takes this long (a busy wait), for the time budget.

use sluice_sdk::batch::{Header, NewRecord};
use sluice_sdk::{Config, Error, Output, Record, State, Transform};

struct Faulty {
    fail_on: Option<String>,
    trap_on: Option<String>,
    count_in_state: Option<String>,
    state_bytes: usize,
    grow_on: Option<String>,
    grow_to: usize,
    output_on: Option<String>,
    output: String,
    copies_on: Option<String>,
    copies: u64,
    fill_on: Option<String>,
    fill_keys: u64,
    fill_bytes: usize,
    busy_ms: u64,
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
            state_bytes: config.parse("state_bytes")?.unwrap_or(8),
            grow_on: config.get("grow_on").map(str::to_owned),
            grow_to: config.parse("grow_to")?.unwrap_or(0),
            output_on: config.get("output_on").map(str::to_owned),
            output: config.get("output").unwrap_or("side").to_owned(),
            copies_on: config.get("copies_on").map(str::to_owned),
            copies: config.parse("copies")?.unwrap_or(1),
            fill_on: config.get("fill_on").map(str::to_owned),
            fill_keys: config.parse("fill_keys")?.unwrap_or(0),
            fill_bytes: config.parse("fill_bytes")?.unwrap_or(0),
            busy_ms: config.parse("busy_ms")?.unwrap_or(0),
        })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        if self.busy_ms > 0 {
            let started = std::time::Instant::now();
            while started.elapsed().as_millis() < u128::from(self.busy_ms) {
                std::hint::spin_loop();
            }
        }
        if contains(record.value(), &self.fill_on) {
            let state = State::of(record);
            let value = vec![b'f'; self.fill_bytes];
            for key in 0..self.fill_keys {
                state.set(format!("fill-{key}").as_bytes(), &value);
            }
        }
        if contains(record.value(), &self.copies_on) {
            for _ in 0..self.copies {
                out.keep();
            }
            return Ok(());
        }
        let count = match &self.count_in_state {
            Some(key) => {
                let state = State::of(record);
                let count = match state.get(key.as_bytes()) {
                    Some(bytes) => {
                        u64::from_le_bytes(bytes.get(..8).unwrap_or_default().try_into()?) + 1
                    }
                    None => 1,
                };
                let mut stored = count.to_le_bytes().to_vec();
                stored.resize(self.state_bytes.max(8), b'.');
                state.set(key.as_bytes(), &stored);
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
        if contains(record.value(), &self.grow_on) {
            let value = record.value().unwrap_or_default();
            let grown: Vec<u8> = value.iter().copied().cycle().take(self.grow_to).collect();
            out.set_value(Some(&grown));
            return Ok(());
        }
        if contains(record.value(), &self.output_on) {
            out.keep_to(&self.output);
            return Ok(());
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
