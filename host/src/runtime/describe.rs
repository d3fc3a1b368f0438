//! What a component imports and exports, and whether it links as a transform here:
//! the facts `sluice plugin inspect` reports.

use super::bindings::TransformerPre;
use super::{PluginError, Runtime};

/// The interface of a compiled component.
#[derive(Debug, Clone)]
pub(crate) struct Description {
    /// Imported interfaces and functions, by full name (`sluice:plugin/log@0.1.0`).
    pub(crate) imports: Vec<String>,
    /// Exported interfaces and functions, by full name.
    pub(crate) exports: Vec<String>,
    /// `Ok` when it links against this host's transform world, else the reason.
    pub(crate) links: Result<(), String>,
}

impl Runtime {
    /// Compiles `bytes` and describes the component (see [`Description`]).
    pub(crate) fn describe(&self, bytes: &[u8]) -> Result<Description, PluginError> {
        let component = self.compile(bytes, super::Tier::Optimized)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let links = self
            .linker
            .instantiate_pre(&component)
            .and_then(TransformerPre::new)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"));
        Ok(Description {
            imports,
            exports,
            links,
        })
    }
}
