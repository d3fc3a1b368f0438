//! A hostile test plugin: for every record it tries to reach things of the host's and
//! reports each outcome in the record, so tests can see what the sandbox allowed. The
//! output value is the input value followed by `|<probe>:<outcome>` per probe, where
//! the outcome is `allowed: <what it got>` or `denied: <error>`. The outcomes for an
//! instance's first record are also written to the host's log through the `log`
//! import.
//!
//! Settings, each naming a probe and its target, run in this order:
//! - `read`: read this file;
//! - `write`: create this file;
//! - `connect`: open a TCP connection to this address;
//! - `env`: read this environment variable (and count the visible ones);
//! - `args`: list the process arguments (the value is ignored).

use std::io::Write;

use sluice_sdk::{Config, Error, Output, Record, Transform, log};

const PROBES: [&str; 5] = ["read", "write", "connect", "env", "args"];

struct Snoop {
    probes: Vec<(&'static str, String)>,
    logged: bool,
}

/// At most this much of what a probe got goes into the record.
const SHOWN: usize = 200;

fn shown(text: &str) -> String {
    text.chars().take(SHOWN).collect()
}

impl Snoop {
    fn attempt(probe: &str, target: &str) -> Result<String, String> {
        match probe {
            "read" => std::fs::read_to_string(target)
                .map(|text| shown(text.trim()))
                .map_err(|e| format!("read {target}: {e}")),
            "write" => std::fs::File::create(target)
                .and_then(|mut file| file.write_all(b"written by a plugin"))
                .map(|()| format!("wrote {target}"))
                .map_err(|e| format!("write {target}: {e}")),
            "connect" => std::net::TcpStream::connect(target)
                .map(|stream| format!("connected to {:?}", stream.peer_addr()))
                .map_err(|e| format!("connect {target}: {e}")),
            "env" => {
                let visible = std::env::vars().count();
                std::env::var(target)
                    .map(|value| format!("{target}={} ({visible} visible)", shown(&value)))
                    .map_err(|e| format!("env {target}: {e} ({visible} visible)"))
            }
            "args" => {
                let args: Vec<String> = std::env::args().collect();
                if args.is_empty() {
                    Err("no arguments".into())
                } else {
                    Ok(shown(&args.join(" ")))
                }
            }
            other => Err(format!("unknown probe `{other}`")),
        }
    }
}

impl Transform for Snoop {
    fn init(config: &Config) -> Result<Self, Error> {
        let probes: Vec<(&'static str, String)> = PROBES
            .iter()
            .filter_map(|probe| config.get(probe).map(|target| (*probe, target.to_owned())))
            .collect();
        if probes.is_empty() {
            return Err(Error::msg(format!("name at least one probe of {PROBES:?}")));
        }
        Ok(Snoop {
            probes,
            logged: false,
        })
    }

    fn process(&mut self, record: &Record<'_>, out: &mut Output<'_>) -> Result<(), Error> {
        let mut value = record.value().unwrap_or_default().to_vec();
        for (probe, target) in &self.probes {
            let outcome = match Snoop::attempt(probe, target) {
                Ok(got) => format!("allowed: {got}"),
                Err(error) => format!("denied: {error}"),
            };
            if !self.logged {
                log::warn(&format!("sandbox probe {probe}: {outcome}"));
            }
            value.extend_from_slice(format!("|{probe}:{outcome}").as_bytes());
        }
        self.logged = true;
        out.set_value(Some(&value));
        Ok(())
    }
}

sluice_sdk::export!(Snoop);
