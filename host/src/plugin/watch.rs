//! Swap triggers for the configured plugin file: changes on disk, and SIGHUP.
//!
//! Strategy: watch (with notify) the file's directory and the directory above it, so
//! that in-place writes, write-then-rename, a Kubernetes ConfigMap's `..data` symlink
//! flip, and a flip of the directory itself are all seen; events about other files are
//! ignored. A rename is taken at once; writes are debounced until they stop for a
//! moment. Then the file's digest is compared with the last one proposed; a
//! half-written file that still slips through fails validation and never goes live.
//! The directory watch is renewed after each change, because a watch follows the
//! directory it resolved at the time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher};

use super::registry::{Registry, Trigger};
use crate::shutdown::Shutdown;

/// How long writes to the file must have stopped before it is read.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// After a rename: just long enough to take the events of one move together.
const ATOMIC_SETTLE: Duration = Duration::from_millis(5);
/// How often the watcher checks for shutdown while idle.
const IDLE: Duration = Duration::from_millis(500);

/// Starts watching `path` on a thread of its own until `shutdown`.
pub(crate) fn spawn(
    registry: Arc<Registry>,
    path: PathBuf,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (tx, rx) = channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .context("starting the plugin file watcher")?;
    let dirs = watched_dirs(&path);
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {} for plugin changes", dir.display()))?;
    }
    let relevant = Relevant::new(&path);
    let mut last = super::read_component(&path, None)
        .map(|b| super::digest(&b))
        .ok();
    std::thread::Builder::new()
        .name("sluice-watch".into())
        .spawn(move || {
            tracing::info!(plugin = %path.display(), "Watching the plugin file for changes.");
            loop {
                let first = match rx.recv_timeout(IDLE) {
                    Ok(Ok(event)) if relevant.matches(&event) => event,
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Timeout) if shutdown.requested() => return,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                // A rename or a new link is atomic: the file is complete, take it at once.
                // Anything else may be a write in progress: wait until it stops.
                let mut quiet = if is_atomic(&first) { ATOMIC_SETTLE } else { DEBOUNCE };
                loop {
                    match rx.recv_timeout(quiet) {
                        Ok(Ok(event)) if relevant.matches(&event) => {
                            if !is_atomic(&event) {
                                quiet = DEBOUNCE;
                            }
                        }
                        Ok(_) => {}
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                // Renew the watches: a flipped symlink now points at another directory.
                for dir in &dirs {
                    let _ = watcher.unwatch(dir);
                    if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), %error, "Could not renew the plugin file watch.");
                    }
                }
                let Ok(bytes) = super::read_component(&path, None) else {
                    tracing::debug!(plugin = %path.display(), "Plugin file not readable yet; waiting for the next change.");
                    continue;
                };
                let digest = super::digest(&bytes);
                if last.as_deref() == Some(digest.as_str()) {
                    continue;
                }
                last = Some(digest);
                let _ = registry.propose(Trigger::FileChange, &path);
            }
        })
        .context("starting the plugin file watcher thread")?;
    Ok(())
}

/// Whether an event is a rename or the creation of a link or file: complete on arrival.
fn is_atomic(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
            | notify::EventKind::Create(_)
    )
}

/// The names whose changes can change what the plugin path reads: the file itself, the
/// directory it is in (flipped as a symlink), and a Kubernetes ConfigMap's `..data`
/// links. Other activity in the watched directories is ignored, so a busy directory
/// cannot delay a swap.
struct Relevant {
    names: Vec<std::ffi::OsString>,
}

impl Relevant {
    fn new(path: &Path) -> Self {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let names = [
            absolute.file_name(),
            absolute.parent().and_then(Path::file_name),
        ]
        .into_iter()
        .flatten()
        .map(ToOwned::to_owned)
        .collect();
        Relevant { names }
    }

    fn matches(&self, event: &notify::Event) -> bool {
        // Reads change nothing, and the host's own reads of the file would otherwise
        // wake the watcher again and again.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return false;
        }
        event.paths.iter().any(|p| {
            p.file_name().is_some_and(|name| {
                self.names.iter().any(|n| n == name) || name.to_string_lossy().starts_with("..data")
            })
        })
    }
}

/// The file's directory and the one above it (when there is one).
fn watched_dirs(path: &Path) -> Vec<PathBuf> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let parent = absolute
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut dirs = vec![parent.clone()];
    if let Some(grandparent) = parent.parent() {
        dirs.push(grandparent.to_path_buf());
    }
    dirs
}

/// Proposes the configured plugin file again on every SIGHUP `hangup` delivers (one
/// received while the host started included).
pub(crate) async fn on_sighup(registry: Arc<Registry>, mut hangup: tokio::signal::unix::Signal) {
    while hangup.recv().await.is_some() {
        let Some(path) = registry.configured_path().map(Path::to_path_buf) else {
            tracing::warn!(
                "SIGHUP: no plugin file is configured (the built-in pass-through runs); nothing to re-read."
            );
            continue;
        };
        tracing::info!(plugin = %path.display(), "SIGHUP: re-reading the plugin file.");
        let registry = registry.clone();
        let _ = tokio::task::spawn_blocking(move || registry.propose(Trigger::Sighup, &path)).await;
    }
}
