//! What a plugin writes to the host's log (its `log` import, its stdout and stderr),
//! made safe to write there.
//!
//! Plugin text is untrusted: each line is cut at [`MAX_LINE`] bytes (marked
//! `…[cut N bytes]`), and control characters (newline, carriage return, escape, and
//! the rest) are written escaped (`\n`, `\r`, `\u{1b}`), so a plugin can neither start
//! a line that looks like the host's nor send escape sequences to a terminal. An
//! instance may write [`RATE_PER_SECOND`] lines per second in bursts of up to
//! [`BURST`]; lines beyond that are dropped and counted, and the count is logged (at
//! most every [`SUMMARY_EVERY`], and when the instance ends).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest line of plugin text written to the host's log, in bytes, escapes
/// included; the cut marker comes on top.
pub(crate) const MAX_LINE: usize = 4096;
/// Lines per second an instance may write, on average.
const RATE_PER_SECOND: f64 = 100.0;
/// Lines an instance may write at once, after being quiet.
const BURST: f64 = 200.0;
/// How often, at most, dropped lines are counted in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// `text` as one line for the host's log: control characters escaped, at most
/// [`MAX_LINE`] bytes of it, then a cut marker counting what was left out (`cut_before`
/// bytes already left out by the caller included). Only what is kept is looked at, so
/// a huge message costs no more than a short one.
pub(crate) fn clean(text: &str, cut_before: usize) -> String {
    let mut line = String::with_capacity(text.len().min(MAX_LINE));
    let mut kept = 0;
    for c in text.chars() {
        let start = line.len();
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            // Line and paragraph separators end a line for some log readers.
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
        if line.len() > MAX_LINE {
            line.truncate(start);
            break;
        }
        kept += c.len_utf8();
    }
    let cut = text.len() - kept + cut_before;
    if cut > 0 {
        let _ = write!(line, "…[cut {cut} bytes]");
    }
    line
}

/// The level of a plugin's log line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One instance's share of the host's log: the rate limit and the count of lines
/// dropped. Shared by the `log` import and the stdout and stderr streams.
pub(crate) struct LogGate {
    plugin: Arc<str>,
    /// The version's short digest, once known: every line names the version it came from.
    version: Arc<str>,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    summarized: Instant,
}

/// A [`LogGate`] as the streams and the import hold it.
pub(crate) type SharedGate = Arc<Mutex<LogGate>>;

impl LogGate {
    pub(crate) fn shared(plugin: Arc<str>) -> SharedGate {
        let now = Instant::now();
        Arc::new(Mutex::new(LogGate {
            plugin,
            version: "".into(),
            tokens: BURST,
            refilled: now,
            dropped: 0,
            summarized: now,
        }))
    }

    /// Names the version (its short digest) the instance runs, for every line after.
    pub(crate) fn set_version(&mut self, version: Arc<str>) {
        self.version = version;
    }

    /// Whether one more line may be written now; counts it as dropped if not.
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE_PER_SECOND).min(BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Writes `text` (not yet cleaned) to the host's log, if the rate limit lets it. `stream` names stdout or stderr for
    /// their lines.
    pub(crate) fn write(&mut self, level: Level, stream: Option<&'static str>, text: &str) {
        if self.admit() {
            let line = clean(text, 0);
            self.emit(level, stream, &line);
        }
        self.summarize(false);
    }

    /// Writes a line already cleaned by [`clean`], if the rate limit lets it.
    pub(crate) fn write_clean(&mut self, level: Level, stream: Option<&'static str>, line: &str) {
        if self.admit() {
            self.emit(level, stream, line);
        }
        self.summarize(false);
    }

    fn emit(&self, level: Level, stream: Option<&'static str>, line: &str) {
        let plugin = &self.plugin;
        let version = &*self.version;
        // The plugin's own level, as a field: stdout and stderr lines are written at
        // info and warn whatever the plugin meant.
        let plugin_level = match (level, stream) {
            (_, Some(stream)) => stream,
            (Level::Trace, None) => "trace",
            (Level::Debug, None) => "debug",
            (Level::Info, None) => "info",
            (Level::Warn, None) => "warn",
            (Level::Error, None) => "error",
        };
        match (level, stream) {
            (Level::Trace, None) => {
                tracing::trace!(plugin = %plugin, plugin_version = version, plugin_level, "{line}")
            }
            (Level::Debug, None) => {
                tracing::debug!(plugin = %plugin, plugin_version = version, plugin_level, "{line}")
            }
            (Level::Info, None) => {
                tracing::info!(plugin = %plugin, plugin_version = version, plugin_level, "{line}")
            }
            (Level::Warn, None) => {
                tracing::warn!(plugin = %plugin, plugin_version = version, plugin_level, "{line}")
            }
            (Level::Error, None) => {
                tracing::error!(plugin = %plugin, plugin_version = version, plugin_level, "{line}")
            }
            (Level::Warn | Level::Error, Some(stream)) => {
                tracing::warn!(plugin = %plugin, plugin_version = version, plugin_level, stream, "{line}")
            }
            (_, Some(stream)) => {
                tracing::info!(plugin = %plugin, plugin_version = version, plugin_level, stream, "{line}")
            }
        }
    }

    /// Logs how many lines were dropped, if any were and the last count is
    /// [`SUMMARY_EVERY`] old (or `now`).
    pub(crate) fn summarize(&mut self, now: bool) {
        if self.dropped == 0 || !(now || self.summarized.elapsed() >= SUMMARY_EVERY) {
            return;
        }
        let dropped = std::mem::take(&mut self.dropped);
        self.summarized = Instant::now();
        tracing::warn!(
            plugin = %self.plugin,
            dropped,
            "{dropped} plugin log lines dropped: a plugin instance may write {RATE_PER_SECOND} lines per second, in bursts of {BURST}."
        );
    }
}

impl Drop for LogGate {
    fn drop(&mut self) {
        self.summarize(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_so_no_line_can_be_forged() {
        let line = clean(
            "ok\n2026-01-01T00:00:00Z  INFO sluice: forged\r\x1b[31m\x07",
            0,
        );
        assert_eq!(
            line,
            "ok\\n2026-01-01T00:00:00Z  INFO sluice: forged\\r\\u{1b}[31m\\u{7}"
        );
        assert!(!line.chars().any(char::is_control));
    }

    #[test]
    fn a_long_line_is_cut_and_says_how_much() {
        let text = "é".repeat(3000);
        let line = clean(&text, 10);
        let (kept, marker) = line.split_once('…').unwrap();
        assert!(
            kept.len() <= MAX_LINE && kept.len() > MAX_LINE - 2,
            "{}",
            kept.len()
        );
        assert_eq!(marker, format!("[cut {} bytes]", 6000 - kept.len() + 10));
        let escapes = "\n".repeat(5000);
        let line = clean(&escapes, 0);
        assert!(
            line.starts_with("\\n\\n") && line.ends_with("[cut 2952 bytes]"),
            "{line}"
        );
        assert_eq!(clean("short", 0), "short");
    }

    #[test]
    fn lines_beyond_the_rate_are_dropped_and_counted() {
        let gate = LogGate::shared("test".into());
        let mut gate = gate.lock().unwrap();
        let admitted = (0..1000).filter(|_| gate.admit()).count();
        assert!(
            (BURST as usize..BURST as usize + 10).contains(&admitted),
            "{admitted}"
        );
        assert_eq!(gate.dropped as usize, 1000 - admitted);
        gate.summarize(true);
        assert_eq!(gate.dropped, 0, "counted once in the log");
    }
}
