//! Plugins as the pipeline sees them: loaded from a file (or the built-in
//! pass-through), checked against the transform world, identified by content digest,
//! and started as instances with their configuration; the registry of live versions
//! and the triggers that swap them.

pub mod registry;
pub(crate) mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::runtime::{Instance, Limits, Pending, PluginError, Prepared, Runtime, Sandbox, Tier};
use crate::state::SharedState;

/// The pass-through transform, built from `plugins/passthrough` and embedded.
pub const PASSTHROUGH_WASM: &[u8] = include_bytes!(env!("SLUICE_PASSTHROUGH_WASM"));

/// Where a plugin's bytes came from.
#[derive(Debug, Clone)]
pub enum Origin {
    BuiltIn,
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built-in pass-through"),
            Origin::File(path) => f.write_str(&escape_controls(&path.display().to_string())),
        }
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): a path a client chose must
/// not forge a log line or a terminal sequence.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The largest component accepted. The largest plugins (Python with its interpreter)
/// are about 40 MiB.
const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;
/// How long reading a component may take.
const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a file is not a candidate; the host's log names it, a client is told only
/// [`LoadFailure::NotACandidate`], so it learns nothing about which paths exist.
#[derive(Debug, Error)]
pub(crate) enum Unreadable {
    #[error("cannot resolve the path: {0}")]
    Resolve(std::io::Error),
    #[error("{resolved} is outside plugin.allowed_dir {allowed}")]
    Outside { resolved: String, allowed: String },
    #[error("cannot open it: {0}")]
    Open(std::io::Error),
    #[error("it is not a regular file (a directory, a FIFO, a device or a socket)")]
    NotRegular,
    #[error("it is larger than {MAX_COMPONENT_BYTES} bytes")]
    TooLarge,
    #[error("reading it took longer than {} s", READ_DEADLINE.as_secs())]
    TooSlow,
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
}

/// Reads a component file safely: symlinks resolved (a Kubernetes ConfigMap's links
/// included), under `allowed_dir` when given (a canonical path), a regular file of at
/// most [`MAX_COMPONENT_BYTES`], read within a deadline. Opened without blocking, so a
/// FIFO cannot hold the caller, and checked on the open descriptor, so the file cannot
/// be switched between the check and the read.
pub(crate) fn read_component(
    path: &Path,
    allowed_dir: Option<&Path>,
) -> Result<Vec<u8>, Unreadable> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::io::AsRawFd as _;

    let resolved = std::fs::canonicalize(path).map_err(Unreadable::Resolve)?;
    let outside = |resolved: &Path| match allowed_dir {
        Some(allowed) if !resolved.starts_with(allowed) => Err(Unreadable::Outside {
            resolved: escape_controls(&resolved.display().to_string()).into_owned(),
            allowed: escape_controls(&allowed.display().to_string()).into_owned(),
        }),
        _ => Ok(()),
    };
    outside(&resolved)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&resolved)
        .map_err(Unreadable::Open)?;
    let metadata = file.metadata().map_err(Unreadable::Open)?;
    if !metadata.is_file() {
        return Err(Unreadable::NotRegular);
    }
    if metadata.len() > MAX_COMPONENT_BYTES {
        return Err(Unreadable::TooLarge);
    }
    // A link changed between the resolution and the open: check what was opened.
    if allowed_dir.is_some()
        && let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
    {
        outside(&opened)?;
    }
    let started = std::time::Instant::now();
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    let mut limited = file.take(MAX_COMPONENT_BYTES + 1);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(Unreadable::Read(error)),
        };
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(Unreadable::TooLarge);
        }
        if started.elapsed() > READ_DEADLINE {
            return Err(Unreadable::TooSlow);
        }
    }
    Ok(bytes)
}

/// A plugin that could not be loaded, naming the plugin.
#[derive(Debug, Error)]
#[error("plugin {origin}")]
pub struct LoadError {
    origin: Origin,
    #[source]
    source: LoadFailure,
}

#[derive(Debug, Error)]
enum LoadFailure {
    #[error("{0}")]
    Read(Unreadable),
    /// What a client is told about any file that could not be read as a candidate.
    #[error(
        "the candidate is not a readable regular file of at most 256 MiB (within plugin.allowed_dir when one is set)"
    )]
    NotACandidate,
    #[error("not a valid WebAssembly component: the file does not start with `\\0asm`")]
    NotWasm,
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("self-test failed: {0}")]
    SelfTest(String),
}

/// Reads a plugin's bytes: the file at `path`, or the built-in pass-through.
fn read(path: Option<&Path>) -> Result<(Origin, Vec<u8>), LoadError> {
    match path {
        None => Ok((Origin::BuiltIn, PASSTHROUGH_WASM.to_vec())),
        Some(path) => {
            let origin = Origin::File(path.to_path_buf());
            match read_component(path, None) {
                Ok(bytes) => Ok((origin, bytes)),
                Err(e) => Err(LoadError {
                    origin,
                    source: LoadFailure::Read(e),
                }),
            }
        }
    }
}

/// SHA-256 of `bytes`, hex.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A compiled, validated plugin version.
#[derive(Clone)]
pub struct Plugin {
    pub origin: Origin,
    /// Short name used in logs: the file stem, or `passthrough`.
    name: Arc<str>,
    /// SHA-256 of the component bytes, hex.
    digest: String,
    prepared: Prepared,
    /// Cranelift's code for a plugin that went live on baseline code, once compiled:
    /// shared by every copy (the live version, the previous one, the registry's
    /// cache), so all of them move to it.
    optimized: Arc<OnceLock<Optimized>>,
}

/// Cranelift's code for a plugin, with instances of it started ahead for the workers.
pub(crate) struct Optimized {
    prepared: Prepared,
    pub(crate) standby: registry::Standby,
}

impl Plugin {
    /// Loads the plugin at `path`, or the built-in pass-through when `path` is `None`.
    pub fn load(runtime: &Runtime, path: Option<&Path>) -> Result<Plugin, LoadError> {
        let (origin, bytes) = read(path)?;
        Plugin::from_bytes(runtime, origin, &bytes, &digest(&bytes))
    }

    /// Compiles and links `bytes`, whose SHA-256 is `digest`.
    pub fn from_bytes(
        runtime: &Runtime,
        origin: Origin,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Plugin, LoadError> {
        let prepared = runtime.load(bytes).map_err(|e| LoadError {
            origin: origin.clone(),
            source: e.into(),
        })?;
        Ok(Plugin::new(origin, digest, prepared))
    }

    /// Like [`Plugin::from_bytes`], but on baseline code when Cranelift's is not at
    /// hand (see [`Runtime::load_fast`]); then also returns the compile to wait for.
    pub fn from_bytes_fast(
        runtime: &Runtime,
        origin: Origin,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Plugin, Option<Pending>), LoadError> {
        let (prepared, pending) = runtime.load_fast(bytes).map_err(|e| LoadError {
            origin: origin.clone(),
            source: e.into(),
        })?;
        Ok((Plugin::new(origin, digest, prepared), pending))
    }

    fn new(origin: Origin, digest: &str, prepared: Prepared) -> Plugin {
        let name: Arc<str> = match &origin {
            Origin::BuiltIn => "passthrough".into(),
            Origin::File(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into())
                .into(),
        };
        Plugin {
            origin,
            name,
            digest: digest.to_string(),
            prepared,
            optimized: Arc::default(),
        }
    }

    /// Which compiler made the code this copy runs.
    pub fn tier(&self) -> Tier {
        self.prepared.tier()
    }

    /// Records Cranelift's code for this plugin (and every copy of it). Returns false
    /// if it was recorded before.
    fn set_optimized(&self, prepared: Prepared, standby: registry::Standby) -> bool {
        self.optimized.set(Optimized { prepared, standby }).is_ok()
    }

    /// Cranelift's code with its started instances, when this copy runs baseline code
    /// and Cranelift's is ready.
    pub(crate) fn optimized(&self) -> Option<&Optimized> {
        (self.tier() == Tier::Baseline)
            .then(|| self.optimized.get())
            .flatten()
    }

    /// The copy with the best code there is: Cranelift's once ready.
    pub(crate) fn best(&self) -> Plugin {
        match self.optimized() {
            Some(optimized) => self.with_prepared(optimized.prepared.clone()),
            None => self.clone(),
        }
    }

    /// The same plugin with other code for it.
    fn with_prepared(&self, prepared: Prepared) -> Plugin {
        Plugin {
            prepared,
            ..self.clone()
        }
    }

    /// The same compiled plugin, known under another origin (a cache hit).
    fn with_origin(&self, origin: Origin) -> Plugin {
        Plugin {
            origin,
            ..self.clone()
        }
    }

    /// Starts an instance inside `sandbox` and runs its `init` with `config`; it keeps
    /// keyed state in `state`.
    pub fn start(
        &self,
        limits: Limits,
        sandbox: &Sandbox,
        config: &[(String, String)],
        state: SharedState,
    ) -> Result<Instance, LoadError> {
        Instance::start_version(
            &self.prepared,
            self.name.clone(),
            self.short_digest().into(),
            limits,
            sandbox,
            config,
            state,
        )
        .map_err(|e| LoadError {
            origin: self.origin.clone(),
            source: e.into(),
        })
    }

    /// The first 12 hex digits of the digest, for logs.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_regular_file_in_the_allowed_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().canonicalize().unwrap().join("allowed");
        std::fs::create_dir(&allowed).unwrap();
        let file = allowed.join("p.wasm");
        std::fs::write(&file, b"\0asm").unwrap();
        assert_eq!(read_component(&file, Some(&allowed)).unwrap(), b"\0asm");

        // A link in the directory to a file in it is read (a ConfigMap's layout); one to
        // a file outside is not.
        let inside = allowed.join("link.wasm");
        std::os::unix::fs::symlink(&file, &inside).unwrap();
        assert!(read_component(&inside, Some(&allowed)).is_ok());
        let outside = dir.path().join("outside.wasm");
        std::fs::write(&outside, b"\0asm").unwrap();
        let link_out = allowed.join("out.wasm");
        std::os::unix::fs::symlink(&outside, &link_out).unwrap();
        assert!(matches!(
            read_component(&link_out, Some(&allowed)),
            Err(Unreadable::Outside { .. })
        ));
        assert!(read_component(&link_out, None).is_ok());

        let fifo = allowed.join("fifo.wasm");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(matches!(
            read_component(&fifo, None),
            Err(Unreadable::NotRegular)
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(matches!(
            read_component(Path::new("/dev/zero"), None),
            Err(Unreadable::NotRegular)
        ));
        assert!(matches!(
            read_component(&allowed, None),
            Err(Unreadable::NotRegular)
        ));
        assert!(matches!(
            read_component(&allowed.join("missing"), None),
            Err(Unreadable::Resolve(_))
        ));
    }

    #[test]
    fn control_characters_in_a_path_are_escaped() {
        assert_eq!(escape_controls("/a/b.wasm"), "/a/b.wasm");
        assert_eq!(
            escape_controls("/a\nERROR x\u{1b}[31m"),
            "/a\\nERROR x\\u{1b}[31m"
        );
        let origin = Origin::File(PathBuf::from("/tmp/x\nforged"));
        assert_eq!(origin.to_string(), "/tmp/x\\nforged");
    }
}
