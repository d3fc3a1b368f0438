//! From compiled code to a plugin ready to run: linking against the transform world,
//! the initial memory images, and the checks that name a file that is not a component.

use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, types::ComponentItem};

use super::bindings::TransformerPre;
use super::engine::{Runtime, Tier};
use super::host_state::HostState;
use super::{PluginError, STATE_IMPORT};

/// A compiled, linked plugin, ready to be instantiated any number of times.
#[derive(Clone)]
pub(crate) struct Prepared {
    pub(super) pre: TransformerPre<HostState>,
    pub(super) uses_state: bool,
    tier: Tier,
}

impl Prepared {
    /// Which compiler made its code.
    pub(crate) fn tier(&self) -> Tier {
        self.tier
    }
}

impl Runtime {
    /// Links a compiled component against the transform world.
    pub(super) fn link(&self, component: &Component, tier: Tier) -> Result<Prepared, PluginError> {
        let (engine, linker) = self.backend(tier);
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link {
                detail: format!("{e:#}"),
            })?;
        let pre = TransformerPre::new(instance_pre).map_err(|e| PluginError::Link {
            detail: format!("{e:#}; it exports {}", describe_exports(component, engine)),
        })?;
        prepare_memory_images(component)?;
        let uses_state = component
            .component_type()
            .imports(engine)
            .any(|(name, _)| name == STATE_IMPORT);
        let tier = if std::ptr::eq(engine, &self.engine) {
            Tier::Optimized
        } else {
            Tier::Baseline
        };
        Ok(Prepared {
            pre,
            uses_state,
            tier,
        })
    }
}

/// How many times the initial memory images of a component are tried.
const MEMORY_IMAGE_ATTEMPTS: u32 = 5;

/// Builds the images every instance's linear memories start from (a sealed memory file
/// per memory, mapped copy-on-write) now, while loading, instead of at the first
/// instantiation. The kernel refuses to seal a memory file while something else
/// briefly holds one of its pages (`EBUSY`), so a failure is tried again, waiting 20,
/// 40, 80, then 160 ms, before it is reported.
fn prepare_memory_images(component: &Component) -> Result<(), PluginError> {
    let mut wait = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match component.initialize_copy_on_write_image() {
            Ok(()) => return Ok(()),
            Err(error) if attempt < MEMORY_IMAGE_ATTEMPTS => {
                tracing::debug!(
                    attempt,
                    "Could not prepare a plugin's initial memory: {error:?}"
                );
                std::thread::sleep(wait);
                wait *= 2;
                attempt += 1;
            }
            Err(error) => {
                return Err(PluginError::Instantiate(format!(
                    "preparing its initial memory failed {attempt} times, last with: {error:#}"
                )));
            }
        }
    }
}

fn describe_exports(component: &Component, engine: &Engine) -> String {
    let names: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, item)| match item.ty {
            ComponentItem::ComponentFunc(_) => format!("function `{name}`"),
            _ => format!("`{name}`"),
        })
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// Names the two commonest mistakes plainly, before the parser's own wording.
pub(super) fn check_format(bytes: &[u8]) -> Result<(), PluginError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(PluginError::Compile(anyhow::anyhow!(
            "the file does not start with the WebAssembly magic bytes; give the path of a .wasm component"
        )));
    }
    if bytes.get(4..8) == Some(&[1, 0, 0, 0][..]) {
        return Err(PluginError::Compile(anyhow::anyhow!(
            "this is a core WebAssembly module, not a component; build the plugin for the wasm32-wasip2 target"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_error(bytes: &[u8]) -> String {
        match Runtime::new().unwrap().load(bytes) {
            Ok(_) => panic!("loaded"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_file_that_is_not_wasm_is_named_as_such() {
        assert!(
            load_error(b"# README").contains("does not start with the WebAssembly magic bytes")
        );
    }

    #[test]
    fn a_core_module_is_told_apart_from_a_component() {
        let empty_core_module = b"\0asm\x01\0\0\0";
        let error = load_error(empty_core_module);
        assert!(
            error.contains("core WebAssembly module, not a component"),
            "{error}"
        );
        assert!(error.contains("wasm32-wasip2"), "{error}");
    }
}
