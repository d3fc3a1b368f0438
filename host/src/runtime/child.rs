//! Compiling components in a child process.
//!
//! A running host compiles in a child process of its own executable, never in its own
//! address space:
//! - the compiler's memory goes back to the system when the child exits. Compiled in
//!   the host, it stays with the allocator: a host running the JavaScript `enrich`
//!   example peaked at 339 MB and kept 312 MB, against 99 MB and 70 MB this way;
//! - a compile cannot hold a lock the pipeline needs (the allocator's arenas, the
//!   address-space lock) while it waits for a core at its lower priority;
//! - a compiler crash takes only the child down.
//!
//! The child is the running executable itself (`/proc/self/exe`, so a binary replaced
//! on disk during an upgrade is not the one asked), started with [`COMMAND`] as its
//! only argument. It reads the component from stdin, compiles it with the same engine
//! settings (through the compilation cache), and writes the compiled artifact to
//! stdout. On failure it writes the reason to stderr and exits non-zero. It inherits
//! the calling thread's priority, runs in a process group of its own (a terminal's
//! Ctrl-C is the host's to handle) and dies with the host. `ps` shows it as
//! `sluice-compile`.

use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wasmtime::component::Component;

use super::Runtime;

/// The first argument that makes the executable a compiler child.
pub const COMMAND: &str = "__sluice-compile";

/// How often a waiting host looks whether the child has exited.
const WAIT_POLL: Duration = Duration::from_millis(2);

/// Written to stderr by a child that found the component in the compilation cache.
const CACHE_HIT: &str = "loaded from the compilation cache";

/// The executable to start as a compiler child: the running one, as the kernel sees
/// it, when there is such a path.
pub fn own_executable() -> Option<PathBuf> {
    let path = PathBuf::from("/proc/self/exe");
    path.exists().then_some(path)
}

/// What a child compiled.
pub struct Compiled {
    /// The artifact, as `Component::serialize` wrote it.
    pub artifact: Vec<u8>,
    /// Whether the child loaded it from the compilation cache.
    pub cached: bool,
}

/// Compiles `bytes` in a child process started from `program`, stopping it after
/// `timeout`.
///
/// Errors are the child's own report (the component does not compile), a child that
/// ran out of time or died, or a failure to run the child at all;
/// [`ChildError::Spawn`] tells the caller it may compile in-process instead.
pub fn compile(program: &Path, bytes: &[u8], timeout: Duration) -> Result<Compiled, ChildError> {
    let mut child = Command::new(program)
        .arg0("sluice")
        .arg(COMMAND)
        // A Ctrl-C in a terminal reaches the host, which decides what stops; the
        // child dies with it (see `main`), not before it.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            ChildError::Spawn(anyhow::Error::new(e).context(program.display().to_string()))
        })?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three are piped");
    };
    std::thread::scope(|scope| {
        // The child reads all of its input before it writes anything, but it may fail
        // early: each pipe has its own thread so that none can block another. A child
        // that stopped reading has said why on stderr, which matters more than the
        // broken pipe.
        scope.spawn(move || stdin.write_all(bytes));
        let artifact = scope.spawn(move || {
            let mut artifact = Vec::new();
            stdout.read_to_end(&mut artifact).map(|_| artifact)
        });
        let report = scope.spawn(move || {
            let mut report = Vec::new();
            let _ = stderr.read_to_end(&mut report);
            String::from_utf8_lossy(&report).trim().to_owned()
        });
        let status = wait(&mut child, timeout)?;
        let report = report.join().unwrap_or_default();
        if !status.success() {
            return Err(if report.is_empty() {
                ChildError::Failed(anyhow::anyhow!(
                    "the compiler process ended with {status} and no report"
                ))
            } else {
                ChildError::Rejected(anyhow::anyhow!("{report}"))
            });
        }
        let artifact = artifact
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .map_err(|e| {
                ChildError::Spawn(
                    anyhow::Error::new(e).context("reading the compiler process's output"),
                )
            })?;
        Ok(Compiled {
            artifact,
            cached: report == CACHE_HIT,
        })
    })
}

/// Waits for `child` to exit, killing it after `timeout`.
fn wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus, ChildError> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(WAIT_POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ChildError::Failed(anyhow::anyhow!(
                    "compiling took longer than {timeout:?}; the compiler process was stopped"
                )));
            }
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ChildError::Spawn(
                    anyhow::Error::new(error).context("waiting for the compiler process"),
                ));
            }
        }
    }
}

/// Why a child could not compile a component.
#[derive(Debug)]
pub enum ChildError {
    /// The child could not be started or waited for.
    Spawn(anyhow::Error),
    /// The child refused the component and said why.
    Rejected(anyhow::Error),
    /// The child ran out of time or died without a report.
    Failed(anyhow::Error),
}

/// The child's side: compiles the component on stdin to stdout.
pub fn main() -> ExitCode {
    // A host that dies (even by SIGKILL) takes its compiler with it. Should it die
    // before this line, the child finishes and fails writing to the closed pipe.
    // Its name in `ps` and `top` says what it is (started as /proc/self/exe, it would
    // show as `exe`).
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) and prctl(PR_SET_NAME, a NUL-terminated name of
    // at most 16 bytes) only set attributes of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"sluice-compile".as_ptr());
    }
    match run_child() {
        Ok(cached) => {
            if cached {
                eprint!("{CACHE_HIT}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprint!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_child() -> anyhow::Result<bool> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading the component from stdin")?;
    if bytes.is_empty() {
        bail!("no component on stdin");
    }
    let runtime = Runtime::new()?;
    let (component, cached): (Component, bool) = runtime.compile_here(&bytes)?;
    let artifact = component.serialize()?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&artifact)
        .and_then(|()| stdout.flush())
        .context("writing the compiled component to stdout")?;
    Ok(cached)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::runtime::PluginError;

    /// A stand-in for the executable: a shell script with `body` after reading stdin.
    fn program(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("compiler");
        std::fs::write(&path, format!("#!/bin/sh\ncat > /dev/null\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// The text of a [`ChildError::Failed`]; anything else fails the test.
    fn failure(result: Result<Compiled, ChildError>) -> String {
        match result {
            Err(ChildError::Failed(error)) => error.to_string(),
            Err(other) => panic!("expected a failed child, got {other:?}"),
            Ok(_) => panic!("expected a failed child, got an artifact"),
        }
    }

    fn tag_plugin() -> Vec<u8> {
        let path = Path::new(env!("SLUICE_TEST_PLUGIN_DIR")).join("sluice_test_tag_a.wasm");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_childs_report_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let program = program(dir.path(), "echo 'failed to parse: bad magic' >&2; exit 3");
        match compile(&program, b"\0asm-not-really", LONG) {
            Err(ChildError::Rejected(error)) => {
                assert_eq!(error.to_string(), "failed to parse: bad magic")
            }
            Err(ChildError::Spawn(error) | ChildError::Failed(error)) => {
                panic!("not its report: {error:#}")
            }
            Ok(_) => panic!("compiled"),
        }
    }

    #[test]
    fn a_child_that_dies_without_a_word_is_named_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let program = program(dir.path(), "exit 7");
        let text = failure(compile(&program, b"bytes", LONG));
        assert!(
            text.contains("exit status: 7") && text.contains("no report"),
            "{text}"
        );
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn a_child_that_takes_too_long_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let program = program(dir.path(), "exec sleep 30");
        let started = Instant::now();
        let text = failure(compile(&program, b"bytes", Duration::from_millis(200)));
        assert!(text.contains("longer than 200ms"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_that_cannot_start_is_told_apart() {
        let missing = Path::new("/nonexistent/sluice");
        assert!(matches!(
            compile(missing, b"bytes", LONG),
            Err(ChildError::Spawn(_))
        ));
    }

    #[test]
    fn without_a_child_the_host_compiles_itself() {
        let mut runtime = Runtime::new().unwrap();
        runtime.compiler = Some(PathBuf::from("/nonexistent/sluice"));
        assert!(runtime.load(&tag_plugin()).is_ok());
    }

    #[test]
    fn an_artifact_that_is_not_one_is_refused_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = Runtime::new().unwrap();
        runtime.compiler = Some(program(dir.path(), "printf 'not an artifact'"));
        match runtime.load(&tag_plugin()) {
            Err(PluginError::Compiler(error)) => {
                let text = format!("{error:#}");
                assert!(text.contains("compiled by the compiler process"), "{text}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("loaded"),
        }
    }
}
