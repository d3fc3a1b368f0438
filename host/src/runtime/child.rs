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
//! on disk during an upgrade is not the one asked), started with [`COMMAND`] and the
//! compiler tier (`baseline` or `optimized`) as its arguments. It reads a key and the
//! component from stdin, compiles it with the same engine settings, and writes the
//! compiled artifact to stdout, sealed with the key as a compilation cache entry is
//! (see `cache`): the host checks it before loading it, and stores it as it is. The
//! child never reads the cache. On failure it writes the reason to stderr and exits non-zero. It gets the
//! calling thread's nice value (an optimizing compile sent to the background then
//! moves to the idle policy, see `priority`), runs in a process group of its own (a terminal's
//! Ctrl-C is the host's to handle) and dies with the host. `ps` shows it as
//! `sluice-compile`.

use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::cache::{KEY_LEN, Key};
use super::priority;
use super::{Runtime, Tier};

/// The first argument that makes the executable a compiler child.
pub const COMMAND: &str = "__sluice-compile";

/// How often a waiting host looks whether the child has exited.
const WAIT_POLL: Duration = Duration::from_millis(2);

/// The executable to start as a compiler child: the running one, as the kernel sees
/// it, when there is such a path.
pub(crate) fn own_executable() -> Option<PathBuf> {
    let path = PathBuf::from("/proc/self/exe");
    path.exists().then_some(path)
}

/// What a child compiled.
pub(crate) struct Compiled {
    /// The artifact, as `Component::serialize` wrote it, sealed with the key the child
    /// was handed (see `cache::seal`); unchecked until `cache::unseal` says otherwise.
    pub(crate) sealed: Vec<u8>,
}

/// Compiles `bytes` with `tier`'s compiler in a child process started from
/// `program`, which seals its output with `key`, stopping it after `timeout`.
///
/// Errors are the child's own report (the component does not compile), a child that
/// ran out of time or died, or a failure to run the child at all;
/// [`ChildError::Spawn`] tells the caller it may compile in-process instead.
pub(crate) fn compile(
    program: &Path,
    key: &Arc<Key>,
    bytes: &[u8],
    tier: Tier,
    timeout: Duration,
) -> Result<Compiled, ChildError> {
    spawn(program, key.clone(), bytes.into(), tier, timeout)?.finish()
}

/// Starts compiling `bytes` with `tier`'s compiler in a child process, which
/// [`Running`] then follows.
pub(crate) fn spawn(
    program: &Path,
    key: Arc<Key>,
    bytes: Arc<[u8]>,
    tier: Tier,
    timeout: Duration,
) -> Result<Running, ChildError> {
    let mut command = Command::new(program);
    command
        .arg0("sluice")
        .arg(COMMAND)
        .arg(tier.as_str())
        // A Ctrl-C in a terminal reaches the host, which decides what stops; the
        // child dies with it (see `main`), not before it.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let nice = priority::thread_nice();
    let mut child = start(command).map_err(|e| {
        ChildError::Spawn(anyhow::Error::new(e).context(program.display().to_string()))
    })?;
    priority::set_thread_nice(child.id(), nice);
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three are piped");
    };
    // The child reads all of its input before it writes anything, but it may fail
    // early: each pipe has its own thread so that none can block another. A child
    // that stopped reading has said why on stderr, which matters more than the broken
    // pipe.
    // The key goes through the pipe, not the command line or the environment, which
    // other processes may read.
    std::thread::spawn(move || {
        stdin
            .write_all(&key[..])
            .and_then(|()| stdin.write_all(&bytes))
    });
    let artifact = std::thread::spawn(move || {
        let mut artifact = Vec::new();
        stdout.read_to_end(&mut artifact).map(|_| artifact)
    });
    let report = std::thread::spawn(move || {
        let mut report = Vec::new();
        let _ = stderr.read_to_end(&mut report);
        String::from_utf8_lossy(&report).trim().to_owned()
    });
    Ok(Running {
        child,
        deadline: Instant::now() + timeout,
        timeout,
        artifact: Some(artifact),
        report: Some(report),
        ended: false,
    })
}

/// Starts `command` from a thread that lives as long as the process.
///
/// A child dies with the thread that started it (`PR_SET_PDEATHSIG` follows the
/// thread, not the process), and a compile may outlive the thread that asked for it:
/// the optimizing compile of a version that went live on baseline code does.
fn start(mut command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<Request>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, received) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("sluice-spawn".into())
            .spawn(move || {
                for (mut command, reply) in received {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| Mutex::new(requests))
    });
    let Some(spawner) = spawner else {
        return command.spawn();
    };
    let (reply, answer) = mpsc::channel();
    let sent = spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply));
    match sent {
        Ok(()) => answer
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread is gone"))),
        Err(mpsc::SendError((mut command, _))) => command.spawn(),
    }
}

/// A compile under way in a child process. Dropped before it ends, the child is
/// stopped.
pub(crate) struct Running {
    child: Child,
    deadline: Instant,
    timeout: Duration,
    artifact: Option<JoinHandle<std::io::Result<Vec<u8>>>>,
    report: Option<JoinHandle<String>>,
    ended: bool,
}

impl Running {
    /// The outcome, once the child has exited (or was stopped for taking longer than
    /// its time); `None` while it runs.
    fn poll(&mut self) -> Option<Result<Compiled, ChildError>> {
        if self.ended {
            return Some(Err(ChildError::Failed(anyhow::anyhow!(
                "the compiler process's outcome was already taken"
            ))));
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.ended = true;
                Some(self.collect(status))
            }
            Ok(None) if Instant::now() < self.deadline => None,
            Ok(None) => {
                self.stop();
                Some(Err(ChildError::Failed(anyhow::anyhow!(
                    "compiling took longer than {:?}; the compiler process was stopped",
                    self.timeout
                ))))
            }
            Err(error) => {
                self.stop();
                Some(Err(ChildError::Spawn(
                    anyhow::Error::new(error).context("waiting for the compiler process"),
                )))
            }
        }
    }

    /// Waits for the outcome.
    pub(crate) fn finish(mut self) -> Result<Compiled, ChildError> {
        loop {
            if let Some(outcome) = self.poll() {
                return outcome;
            }
            std::thread::sleep(WAIT_POLL);
        }
    }

    /// Moves the compile to the background: every thread of the child to the idle
    /// policy (see `priority`), and its time limit to `timeout` from now. A compile
    /// that gets only the CPU nothing else wants may wait long on a busy host; that
    /// costs nothing but its memory.
    pub(crate) fn make_idle(&mut self, timeout: Duration) {
        if !self.ended {
            priority::make_idle(self.child.id());
            self.deadline = Instant::now() + timeout;
            self.timeout = timeout;
        }
    }

    /// The child's process id.
    #[cfg(test)]
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Stops the child where it is (`SIGSTOP`) until [`Running::resume`]; its time
    /// limit still runs.
    pub(crate) fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused child go on (`SIGCONT`).
    pub(crate) fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if !self.ended {
            // SAFETY: kill only sends a signal to our own child, which has not been
            // waited for (`ended` is false), so its pid is not reused.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    fn stop(&mut self) {
        self.ended = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn collect(&mut self, status: ExitStatus) -> Result<Compiled, ChildError> {
        let report = self
            .report
            .take()
            .and_then(|report| report.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(if report.is_empty() {
                ChildError::Failed(anyhow::anyhow!(
                    "the compiler process ended with {status} and no report"
                ))
            } else {
                ChildError::Rejected(anyhow::anyhow!("{report}"))
            });
        }
        let sealed = self
            .artifact
            .take()
            .expect("collected once")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .map_err(|e| {
                ChildError::Spawn(
                    anyhow::Error::new(e).context("reading the compiler process's output"),
                )
            })?;
        Ok(Compiled { sealed })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.ended {
            self.stop();
        }
    }
}

/// Why a child could not compile a component.
#[derive(Debug)]
pub(crate) enum ChildError {
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
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprint!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_child() -> anyhow::Result<()> {
    let tier = match std::env::args().nth(2) {
        None => Tier::Optimized,
        Some(name) => {
            Tier::parse(&name).with_context(|| format!("unknown compiler tier `{name}`"))?
        }
    };
    let mut stdin = std::io::stdin().lock();
    let mut key = [0; KEY_LEN];
    stdin
        .read_exact(&mut key)
        .context("reading the key from stdin")?;
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .context("reading the component from stdin")?;
    if bytes.is_empty() {
        bail!("no component on stdin");
    }
    let sealed = Runtime::without_cache()?.compile_sealed(&bytes, tier, &key)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&sealed)
        .and_then(|()| stdout.flush())
        .context("writing the compiled component to stdout")?;
    Ok(())
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
        match compile(&program, &KEY, b"\0asm-not-really", Tier::Optimized, LONG) {
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
        let text = failure(compile(&program, &KEY, b"bytes", Tier::Optimized, LONG));
        assert!(
            text.contains("exit status: 7") && text.contains("no report"),
            "{text}"
        );
    }

    const LONG: Duration = Duration::from_secs(60);

    static KEY: std::sync::LazyLock<Arc<Key>> = std::sync::LazyLock::new(|| Arc::new([0; KEY_LEN]));

    #[test]
    fn a_child_that_takes_too_long_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let program = program(dir.path(), "exec sleep 30");
        let started = Instant::now();
        let text = failure(compile(
            &program,
            &KEY,
            b"bytes",
            Tier::Optimized,
            Duration::from_millis(200),
        ));
        assert!(text.contains("longer than 200ms"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_paused_child_waits_until_it_is_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let program = program(dir.path(), "sleep 0.2; printf 'compiled'");
        let mut running = spawn(
            &program,
            KEY.clone(),
            b"bytes"[..].into(),
            Tier::Optimized,
            LONG,
        )
        .unwrap();
        running.pause();
        std::thread::sleep(Duration::from_millis(800));
        assert!(running.poll().is_none(), "a paused child does not finish");
        running.resume();
        match running.finish() {
            Ok(compiled) => assert_eq!(compiled.sealed, b"compiled"),
            Err(error) => panic!("{error:?}"),
        }
    }

    #[test]
    fn a_child_that_cannot_start_is_told_apart() {
        let missing = Path::new("/nonexistent/sluice");
        assert!(matches!(
            compile(missing, &KEY, b"bytes", Tier::Optimized, LONG),
            Err(ChildError::Spawn(_))
        ));
    }

    #[test]
    fn without_a_child_the_host_compiles_itself() {
        let mut runtime = Runtime::without_cache().unwrap();
        runtime.compiler = Some(PathBuf::from("/nonexistent/sluice"));
        assert!(runtime.load(&tag_plugin()).is_ok());
    }

    #[test]
    fn an_artifact_that_is_not_one_is_refused_not_run() {
        let dir = tempfile::tempdir().unwrap();
        // No cache: it would answer before any compiler process is asked.
        let mut runtime = Runtime::without_cache().unwrap();
        runtime.compiler = Some(program(dir.path(), "printf 'not an artifact'"));
        match runtime.load(&tag_plugin()) {
            Err(PluginError::Compiler(error)) => {
                let text = format!("{error:#}");
                assert!(
                    text.contains("compiled by the compiler process was refused")
                        && text.contains("integrity check"),
                    "{text}"
                );
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("loaded"),
        }
    }

    #[test]
    fn another_components_authentic_code_from_the_compiler_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = Runtime::without_cache().unwrap();
        let other =
            std::fs::read(Path::new(env!("SLUICE_TEST_PLUGIN_DIR")).join("sluice_test_tag_b.wasm"))
                .unwrap();
        let sealed = runtime
            .compile_sealed(&other, Tier::Optimized, &runtime.seal_key)
            .unwrap();
        let file = dir.path().join("sealed");
        std::fs::write(&file, sealed).unwrap();
        runtime.compiler = Some(program(dir.path(), &format!("cat '{}'", file.display())));
        match runtime.load(&tag_plugin()) {
            Err(PluginError::Compiler(error)) => {
                let text = format!("{error:#}");
                assert!(text.contains("integrity check"), "{text}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("loaded tag-b's code for tag-a"),
        }
    }
}
