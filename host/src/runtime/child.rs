//! Compiling components in a child process.
//!
//! A running host compiles in a child process of its own executable, never in its own
//! address space. Compiling allocates heavily. In the host, it would share the
//! allocator's arenas and the address-space lock with the pipeline thread. The compile
//! runs at a lower priority, so whenever it is preempted while holding one of those
//! locks the pipeline waits for it. Measured on 2 cores with 20 000 records/s flowing:
//! every swap that compiled in the host stalled the output for 100 ms or more. A
//! child also returns the compiler's memory to the system when it exits, and a
//! compiler crash takes only the child down.
//!
//! The child is the running executable itself (`/proc/self/exe`, so a binary replaced
//! on disk during an upgrade is not the one asked), started with [`COMMAND`] as its
//! only argument. It reads the component from stdin, compiles it with the same engine
//! settings (through the compilation cache), and writes the compiled artifact to
//! stdout. On failure it writes the reason to stderr and exits non-zero. It inherits
//! the calling thread's priority.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};
use wasmtime::component::Component;

use super::Runtime;

/// The first argument that makes the executable a compiler child.
pub const COMMAND: &str = "__sluice-compile";

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

/// Compiles `bytes` in a child process started from `program`.
///
/// Errors are either the child's own report (the component does not compile) or a
/// failure to run the child at all; [`ChildError::Spawn`] tells the caller it may
/// compile in-process instead.
pub fn compile(program: &Path, bytes: &[u8]) -> Result<Compiled, ChildError> {
    let mut child = Command::new(program)
        .arg(COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            ChildError::Spawn(anyhow::Error::new(e).context(program.display().to_string()))
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // The child reads all of its input before it writes anything, but it may fail
    // early; writing from another thread keeps a full pipe from blocking either side.
    let output = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(bytes));
        let output = child.wait_with_output();
        // A child that stopped reading has reported why on stderr; that report is
        // the one that matters, not the broken pipe.
        let _ = writer.join();
        output
    })
    .map_err(|e| {
        ChildError::Spawn(anyhow::Error::new(e).context("waiting for the compiler process"))
    })?;
    let report = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        if report.is_empty() {
            return Err(ChildError::Failed(anyhow::anyhow!(
                "the compiler process ended with {} and no report",
                output.status
            )));
        }
        return Err(ChildError::Failed(anyhow::anyhow!("{report}")));
    }
    Ok(Compiled {
        artifact: output.stdout,
        cached: report == CACHE_HIT,
    })
}

/// Why a child could not compile a component.
#[derive(Debug)]
pub enum ChildError {
    /// The child could not be started or waited for.
    Spawn(anyhow::Error),
    /// The child ran and reported a failure.
    Failed(anyhow::Error),
}

/// The child's side: compiles the component on stdin to stdout.
pub fn main() -> ExitCode {
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

    fn tag_plugin() -> Vec<u8> {
        let path = Path::new(env!("SLUICE_TEST_PLUGIN_DIR")).join("sluice_test_tag_a.wasm");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_childs_report_is_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let program = program(dir.path(), "echo 'failed to parse: bad magic' >&2; exit 3");
        match compile(&program, b"\0asm-not-really") {
            Err(ChildError::Failed(error)) => {
                assert_eq!(error.to_string(), "failed to parse: bad magic")
            }
            Err(ChildError::Spawn(error)) => panic!("not started: {error:#}"),
            Ok(_) => panic!("compiled"),
        }
    }

    #[test]
    fn a_child_that_dies_without_a_word_is_named_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let program = program(dir.path(), "exit 7");
        match compile(&program, b"bytes") {
            Err(ChildError::Failed(error)) => {
                let text = error.to_string();
                assert!(
                    text.contains("exit status: 7") && text.contains("no report"),
                    "{text}"
                );
            }
            _ => panic!("expected a failure"),
        }
    }

    #[test]
    fn a_child_that_cannot_start_is_told_apart() {
        let missing = Path::new("/nonexistent/sluice");
        assert!(matches!(
            compile(missing, b"bytes"),
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
            Err(PluginError::Compile(error)) => {
                let text = format!("{error:#}");
                assert!(text.contains("compiled by the compiler process"), "{text}");
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("loaded"),
        }
    }
}
