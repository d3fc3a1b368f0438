//! Plugins as the pipeline sees them: loaded from a file (or the built-in
//! pass-through), checked against the transform world, identified by content digest,
//! and started as instances with their configuration; the registry of live versions
//! and the triggers that swap them.

pub mod registry;
pub mod watch;

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
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A plugin that could not be loaded, naming the plugin.
#[derive(Debug, Error)]
#[error("plugin {origin}")]
pub struct LoadError {
    pub origin: Origin,
    #[source]
    pub source: LoadFailure,
}

#[derive(Debug, Error)]
pub enum LoadFailure {
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("self-test failed: {0}")]
    SelfTest(String),
}

/// Reads a plugin's bytes: the file at `path`, or the built-in pass-through.
pub fn read(path: Option<&Path>) -> Result<(Origin, Vec<u8>), LoadError> {
    match path {
        None => Ok((Origin::BuiltIn, PASSTHROUGH_WASM.to_vec())),
        Some(path) => {
            let origin = Origin::File(path.to_path_buf());
            match std::fs::read(path) {
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
    pub name: Arc<str>,
    /// SHA-256 of the component bytes, hex.
    pub digest: String,
    prepared: Prepared,
    /// Cranelift's code for a plugin that went live on baseline code, once compiled:
    /// shared by every copy (the live version, the previous one, the registry's
    /// cache), so all of them move to it.
    optimized: Arc<OnceLock<Optimized>>,
}

/// Cranelift's code for a plugin, with instances of it started ahead for the workers.
pub struct Optimized {
    prepared: Prepared,
    pub standby: registry::Standby,
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
    pub fn set_optimized(&self, prepared: Prepared, standby: registry::Standby) -> bool {
        self.optimized.set(Optimized { prepared, standby }).is_ok()
    }

    /// Cranelift's code with its started instances, when this copy runs baseline code
    /// and Cranelift's is ready.
    pub fn optimized(&self) -> Option<&Optimized> {
        (self.tier() == Tier::Baseline)
            .then(|| self.optimized.get())
            .flatten()
    }

    /// The copy with the best code there is: Cranelift's once ready.
    pub fn best(&self) -> Plugin {
        match self.optimized() {
            Some(optimized) => self.with_prepared(optimized.prepared.clone()),
            None => self.clone(),
        }
    }

    /// The same plugin with other code for it.
    pub fn with_prepared(&self, prepared: Prepared) -> Plugin {
        Plugin {
            prepared,
            ..self.clone()
        }
    }

    /// The same compiled plugin, known under another origin (a cache hit).
    pub fn with_origin(&self, origin: Origin) -> Plugin {
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
        Instance::start(
            &self.prepared,
            self.name.clone(),
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
