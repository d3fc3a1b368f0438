//! Graceful shutdown: SIGINT or SIGTERM asks the pipeline to stop fetching, drain,
//! flush and commit within [`GRACE`]; a second signal exits at once.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The exit code of a run that failed (a fatal error, a stop that was not clean).
pub const EXIT_FAILURE: u8 = 1;
/// The exit code of invalid input: a configuration, a plugin or arguments refused
/// before anything ran.
pub const EXIT_INVALID: u8 = 2;

/// How long a requested shutdown may take to flush and commit. Within Kubernetes'
/// default termination grace period (30 s), so a pod stops by itself rather than by
/// SIGKILL even when the cluster does not answer.
const GRACE: Duration = Duration::from_secs(15);

/// A requested shutdown exits by this time whatever it waits for. The drain's own
/// waits end within [`GRACE`] and leaving the consumer group takes a few seconds more;
/// this catches a client call that overstays its timeout (librdkafka can wait for a
/// broker that holds a connection open without answering for up to its request
/// timeout).
pub const DEADLINE: Duration = Duration::from_secs(25);

/// A flag the pipeline checks between batches: when a shutdown was requested, if one
/// was.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<OnceLock<Instant>>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn request(&self) {
        self.0.get_or_init(Instant::now);
    }

    pub(crate) fn requested(&self) -> bool {
        self.0.get().is_some()
    }

    /// `timeout`, cut to what is left of [`GRACE`] once a shutdown was requested.
    pub(crate) fn bound(&self, timeout: Duration) -> Duration {
        if self.requested() {
            timeout.min(self.time_left())
        } else {
            timeout
        }
    }

    /// Whether a wait may go on: always before a shutdown, within [`GRACE`] after.
    pub(crate) fn may_wait(&self) -> bool {
        !self.requested() || !self.time_left().is_zero()
    }

    /// What is left of [`GRACE`] since the request (all of it before one).
    fn time_left(&self) -> Duration {
        self.0
            .get()
            .map_or(GRACE, |at| GRACE.saturating_sub(at.elapsed()))
    }
}

/// The signals the host acts on, with their handlers installed. Installed first thing,
/// before the plugin compiles (which can take seconds): until then SIGHUP's default
/// action would kill the process, and SIGINT's and SIGTERM's would skip the drain.
pub struct Signals {
    pub interrupt: tokio::signal::unix::Signal,
    pub terminate: tokio::signal::unix::Signal,
    /// Until the pipeline runs, a SIGHUP waits here; then it re-reads the plugin file.
    /// `None` where SIGHUP keeps its default action (commands other than `run`).
    pub hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers, SIGHUP's only with `hangup`; must be called within a Tokio
    /// runtime's context.
    pub fn install(hangup: bool) -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: if hangup {
                Some(signal(SignalKind::hangup())?)
            } else {
                None
            },
        })
    }
}

/// Requests `shutdown` on the first SIGINT or SIGTERM; exits the process on the second.
pub async fn watch_signals(
    shutdown: Shutdown,
    mut interrupt: tokio::signal::unix::Signal,
    mut terminate: tokio::signal::unix::Signal,
) {
    for round in 0.. {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        if round == 0 {
            tracing::info!(
                grace_s = GRACE.as_secs(),
                "Shutdown requested: draining, flushing and committing. Signal again to exit at once."
            );
            shutdown.request();
            tokio::spawn(async {
                tokio::time::sleep(DEADLINE).await;
                tracing::error!(
                    deadline_s = DEADLINE.as_secs(),
                    "The shutdown did not finish in time (the cluster does not answer); exiting without a final checkpoint; records since the last checkpoint will be read again."
                );
                std::process::exit(1);
            });
        } else {
            tracing::warn!(
                "Second signal: exiting without a final commit; records since the last checkpoint will be read again."
            );
            std::process::exit(130);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_runs_from_the_first_request() {
        let shutdown = Shutdown::new();
        assert_eq!(shutdown.time_left(), GRACE);
        assert!(shutdown.may_wait());
        assert_eq!(shutdown.bound(GRACE * 2), GRACE * 2);
        shutdown.request();
        std::thread::sleep(Duration::from_millis(20));
        let left = shutdown.time_left();
        assert!(left <= GRACE - Duration::from_millis(20), "{left:?}");
        assert!(shutdown.bound(GRACE * 2) <= GRACE);
        assert_eq!(
            shutdown.bound(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
        // A second request does not restart it.
        shutdown.clone().request();
        assert!(shutdown.time_left() <= left);
        assert!(shutdown.requested());
        assert!(shutdown.may_wait());
    }
}
