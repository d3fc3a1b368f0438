//! The SDKs and the WIT contract, embedded in the binary: `plugin build` supplies them
//! to the JavaScript and Python tools, and `plugin new` copies the Rust SDK into a new
//! project, so a plugin always builds against the contract of the host that built it.

/// The WIT package every plugin targets, file by file (relative to `wit/`).
pub(crate) const WIT: &[(&str, &str)] = &[("plugin.wit", include_str!("../../../wit/plugin.wit"))];

/// The world a plugin targets, as the language tools name it.
pub(crate) const WORLD_NAME: &str = "transformer";

/// The JavaScript SDK: one module, imported by plugins as `./sluice.js`.
pub(crate) const JS_SDK: &str = include_str!("../../../guest-sdk/js/sluice.js");

/// The Python SDK: the `sluice_sdk` package.
pub(crate) const PYTHON_SDK: &[(&str, &str)] = &[(
    "sluice_sdk/__init__.py",
    include_str!("../../../guest-sdk/python/sluice_sdk/__init__.py"),
)];

/// The Rust SDK crate's sources (relative to `guest-sdk/src/`), copied into new Rust
/// projects. A unit test checks that this list names every file of the crate.
pub(crate) const RUST_SDK_SOURCES: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../../guest-sdk/src/lib.rs")),
    ("batch.rs", include_str!("../../../guest-sdk/src/batch.rs")),
    ("json.rs", include_str!("../../../guest-sdk/src/json.rs")),
    ("state.rs", include_str!("../../../guest-sdk/src/state.rs")),
];

/// The Rust SDK's version.
pub(crate) const RUST_SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The value of `NAME = "x"` or `const NAME = "x"` in an SDK source: its version.
fn declared(source: &str, name: &str) -> Option<String> {
    source.lines().find_map(|line| {
        let rest = line.split_once(name)?.1.trim_start();
        let rest = rest.strip_prefix('=')?.trim();
        let quoted = rest.strip_prefix('"')?;
        Some(quoted.split('"').next()?.to_string())
    })
}

/// The JavaScript SDK's (name, version).
pub(crate) fn js_sdk() -> (String, String) {
    (
        declared(JS_SDK, "SDK_NAME").unwrap_or_else(|| "sluice-sdk-js".into()),
        declared(JS_SDK, "SDK_VERSION").unwrap_or_default(),
    )
}

/// The Python SDK's (name, version).
pub(crate) fn python_sdk() -> (String, String) {
    let source = PYTHON_SDK[0].1;
    (
        declared(source, "SDK_NAME").unwrap_or_else(|| "sluice-sdk-python".into()),
        declared(source, "SDK_VERSION").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rust_sdk_source_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk/src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                RUST_SDK_SOURCES.iter().any(|(file, _)| *file == name),
                "guest-sdk/src/{name} is not in author::sdk::RUST_SDK_SOURCES: add it, or new Rust projects will not build"
            );
        }
    }

    #[test]
    fn every_wit_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".wit") {
                assert!(
                    WIT.iter().any(|(file, _)| *file == name),
                    "wit/{name} is not in author::sdk::WIT"
                );
            }
        }
    }

    #[test]
    fn sdk_versions_are_read_from_their_sources() {
        assert_eq!(js_sdk(), ("sluice-sdk-js".into(), "0.1.0".into()));
        assert_eq!(python_sdk(), ("sluice-sdk-python".into(), "0.1.0".into()));
    }
}
