//! Feedback while a slow step runs, such as compiling a plugin before a command can
//! start: a spinner with the elapsed time when stderr is a terminal, else a log line
//! when the step has taken a second and one when it ends. A step done within a second
//! says nothing (a plugin from the compilation cache loads in milliseconds).

use std::io::IsTerminal as _;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How long a step runs before it is announced.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// Runs `work` (compiling the plugin `plugin`) and shows that it is compiling while it
/// takes longer than a second.
pub(crate) fn compiling<T>(plugin: &str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let (done, finished) = mpsc::channel::<()>();
    let plugin = plugin.to_string();
    let terminal = std::io::stderr().is_terminal();
    // The work stays on the caller's thread; a watcher thread only talks.
    let watcher = std::thread::spawn(move || {
        if !matches!(
            finished.recv_timeout(QUIET_FOR),
            Err(mpsc::RecvTimeoutError::Timeout)
        ) {
            return;
        }
        if terminal {
            let spinner = ProgressBar::new_spinner()
                .with_elapsed(started.elapsed())
                .with_message(format!("Compiling plugin {plugin}"));
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .expect("a valid template"),
            );
            spinner.enable_steady_tick(Duration::from_millis(100));
            let _ = finished.recv();
            spinner.finish_and_clear();
            eprintln!(
                "Compiled plugin {plugin} in {:.1} s.",
                started.elapsed().as_secs_f64()
            );
        } else {
            tracing::info!("Compiling plugin {plugin} ...");
            let _ = finished.recv();
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!("Compiling plugin {plugin} ... done in {seconds:.1} s.");
        }
    });
    let result = work();
    let _ = done.send(());
    let _ = watcher.join();
    result
}
