//! Plugin stdout and stderr, forwarded line by line into the host's log.
//!
//! A plugin's `println!`/`console.log`/`print` and its panic messages land here. Each
//! line goes through the instance's [`LogGate`] (cut, escaped, rate-limited); at most
//! [`MAX_LINE`] bytes of a line are held while it is incomplete, whatever its length.
//! The last lines are kept so that a trap can be reported with the panic message that
//! caused it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::logs::{Level, MAX_LINE, SharedGate, clean};

#[derive(Clone)]
pub(crate) struct PluginOutput {
    gate: SharedGate,
    stream: &'static str,
    state: Arc<Mutex<LineState>>,
}

/// Lines kept for error reports: enough for a panic message and its location.
const KEPT_LINES: usize = 4;

#[derive(Default)]
struct LineState {
    partial: Vec<u8>,
    /// Bytes of the incomplete line beyond [`MAX_LINE`], left out.
    cut: usize,
    recent: std::collections::VecDeque<String>,
}

impl PluginOutput {
    pub(crate) fn new(gate: SharedGate, stream: &'static str) -> Self {
        PluginOutput {
            gate,
            stream,
            state: Arc::default(),
        }
    }

    /// The last few lines written (a panic message, typically), for error reports.
    pub(crate) fn recent(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pending = clean(String::from_utf8_lossy(&state.partial).trim(), state.cut);
        let lines: Vec<&str> = state
            .recent
            .iter()
            .map(String::as_str)
            .chain(Some(pending.as_str()))
            .filter(|l| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        (!lines.is_empty()).then(|| lines.join(" "))
    }

    fn write_bytes(&self, mut bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let end = bytes.iter().position(|&b| b == b'\n');
            let part = &bytes[..end.unwrap_or(bytes.len())];
            let room = MAX_LINE - state.partial.len();
            state
                .partial
                .extend_from_slice(&part[..part.len().min(room)]);
            state.cut += part.len().saturating_sub(room);
            let Some(end) = end else {
                return;
            };
            bytes = &bytes[end + 1..];
            let line = clean(&String::from_utf8_lossy(&state.partial), state.cut);
            state.partial.clear();
            state.cut = 0;
            let level = if self.stream == "stderr" {
                Level::Warn
            } else {
                Level::Info
            };
            self.gate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_clean(level, Some(self.stream), &line);
            if state.recent.len() == KEPT_LINES {
                state.recent.pop_front();
            }
            state.recent.push_back(line);
        }
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for PluginOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for PluginOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
