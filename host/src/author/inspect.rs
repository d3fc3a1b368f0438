//! `sluice plugin inspect`: what a component is: world and version, imports and exports,
//! size, content digest, and the SDK and tools that built it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use wasm_metadata::Producers;

use crate::plugin;
use crate::runtime::{Runtime, WORLD};

/// A readable report on the component at `path`.
pub(crate) fn report(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let runtime = Runtime::new().context("starting the WebAssembly runtime")?;
    let description =
        crate::feedback::compiling(&path.display().to_string(), || runtime.describe(&bytes))
            .with_context(|| format!("{} is not a WebAssembly component", path.display()))?;
    let mut out = String::new();
    let _ = writeln!(out, "plugin:  {}", path.display());
    let _ = writeln!(
        out,
        "size:    {} bytes ({:.1} MiB)",
        bytes.len(),
        bytes.len() as f64 / (1 << 20) as f64
    );
    let _ = writeln!(out, "sha256:  {}", plugin::digest(&bytes));
    match &description.links {
        Ok(()) => {
            let _ = writeln!(out, "world:   {WORLD} (links in this host)");
        }
        Err(reason) => {
            let _ = writeln!(out, "world:   does not link as {WORLD}: {reason}");
        }
    }
    let producers = Producers::from_wasm(&bytes)
        .with_context(|| format!("reading the producers section of {}", path.display()))?;
    let field = |name: &str| producers_field(producers.as_ref(), name);
    let sdk = field("sdk");
    let mut language = field("language");
    if language.is_empty() {
        // componentize-py records no language; the SDK that `plugin build` stamps names it.
        language.extend(sdk.iter().find_map(|s| sdk_language(s)).map(str::to_string));
    }
    let python = language.iter().any(|l| l.starts_with("Python"));
    let _ = writeln!(out, "exports:");
    for name in &description.exports {
        // componentize-py leaves its build-time initialization hook exported (an
        // instance `exports` holding `init`, already run when the component was made);
        // no world names it and nothing calls it.
        if python && name == "exports" {
            continue;
        }
        let _ = writeln!(out, "  {name}");
    }
    let _ = writeln!(out, "imports:");
    for name in &description.imports {
        let _ = writeln!(out, "  {name}");
    }
    let sdk = if sdk.is_empty() {
        "unknown (not built by `sluice plugin build`)".to_string()
    } else {
        sdk.join(", ")
    };
    let _ = writeln!(out, "sdk:     {sdk}");
    for (name, values) in [
        ("language", language),
        ("processed-by", field("processed-by")),
    ] {
        if !values.is_empty() {
            let _ = writeln!(out, "{name}: {}", values.join(", "));
        }
    }
    Ok(out)
}

/// The entries of the producers section's field `name` (`sdk`, `language`,
/// `processed-by`), each as `NAME VERSION`.
fn producers_field(producers: Option<&Producers>, name: &str) -> Vec<String> {
    producers
        .and_then(|p| p.get(name))
        .map(|f| {
            f.iter()
                .map(|(n, v)| {
                    if v.is_empty() {
                        n.clone()
                    } else {
                        format!("{n} {v}")
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The language of a Sluice SDK, from its `sdk` producers entry (`NAME VERSION`).
fn sdk_language(sdk: &str) -> Option<&'static str> {
    match sdk.split_whitespace().next()? {
        "sluice-sdk" => Some("Rust"),
        "sluice-sdk-js" => Some("JavaScript"),
        "sluice-sdk-python" => Some("Python"),
        _ => None,
    }
}
