//! Graceful shutdown: SIGINT or SIGTERM asks the pipeline to stop fetching, drain,
//! flush and commit; a second signal exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A flag the pipeline checks between batches.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Requests `shutdown` on the first SIGINT or SIGTERM; exits the process on the second.
pub async fn watch_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    for round in 0.. {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        if round == 0 {
            tracing::info!(
                "Shutdown requested: draining, flushing and committing. Signal again to exit at once."
            );
            shutdown.request();
        } else {
            tracing::warn!(
                "Second signal: exiting without a final commit; records since the last checkpoint will be read again."
            );
            std::process::exit(130);
        }
    }
    Ok(())
}
