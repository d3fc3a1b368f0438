//! Swap triggers for the configured plugin file: changes on disk, and SIGHUP.
//!
//! Strategy: watch (with notify) the file's directory and the directory above it, so
//! that in-place writes, write-then-rename, a Kubernetes ConfigMap's `..data` symlink
//! flip, and a flip of the directory itself are all seen. Events are debounced until
//! the directory has been quiet for a moment, then the file's digest is compared with
//! the last one proposed; a half-written file that still slips through fails
//! validation and never goes live. The directory watch is renewed after each change,
//! because a watch follows the directory it resolved at the time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher};

use super::registry::{Registry, Trigger};
use crate::shutdown::Shutdown;

/// How long the directory must be quiet before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How often the watcher checks for shutdown while idle.
const IDLE: Duration = Duration::from_millis(500);

/// Starts watching `path` on a thread of its own until `shutdown`.
pub fn spawn(registry: Arc<Registry>, path: PathBuf, shutdown: Shutdown) -> anyhow::Result<()> {
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
    let mut last = std::fs::read(&path).map(|b| super::digest(&b)).ok();
    std::thread::Builder::new()
        .name("sluice-watch".into())
        .spawn(move || {
            tracing::info!(plugin = %path.display(), "Watching the plugin file for changes.");
            loop {
                match rx.recv_timeout(IDLE) {
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout) if shutdown.requested() => return,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                // Debounce: wait for the writer to finish.
                loop {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(_) => continue,
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
                let Ok(bytes) = std::fs::read(&path) else {
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

/// Proposes the configured plugin file again on every SIGHUP.
pub async fn on_sighup(registry: Arc<Registry>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "Cannot listen for SIGHUP; use the file watcher or the admin endpoint to swap."
        );
        return;
    };
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
