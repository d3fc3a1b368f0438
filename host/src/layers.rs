//! The layering of `host/src`, checked: every module may import only modules listed
//! before it in [`LAYERS`], so there are no import cycles and the lower rooms never
//! learn about the higher ones (the sink never imports the source, the checkpoint is
//! the one room that knows source, sink and state together).
//!
//! The check reads each file's `crate::` paths (imports and inline paths alike;
//! comments are skipped), so it holds for test modules too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The modules of the crate, lowest first.
const LAYERS: &[&str] = &[
    // Leaves: signals, the event history, logging, counters.
    "shutdown",
    "history",
    "telemetry",
    "feedback",
    "metrics",
    // Settings, and what the Kafka clients need to talk to a cluster.
    "config",
    "auth",
    "progress",
    "output",
    "kafka",
    // Keyed state in memory; the WebAssembly runtime and plugin versions above it.
    "state",
    "runtime",
    "plugin",
    // The Kafka ends, then the checkpoint that knows them both.
    "source",
    "sink",
    "checkpoint",
    // The stages and the loop that drives them.
    "transform",
    "pipeline",
    // What serves, composes and runs it.
    "admin",
    "author",
    "generate",
    "app",
    "cli",
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level modules `code` names through `crate::`, comments aside.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` has no module of its own; nothing here uses it.
            assert!(!name.is_empty(), "unexpected `crate::` form in: {line}");
            found.insert(name);
        }
    }
    found
}

/// Imports that run against the layer order, as `module -> imported (file)`.
fn violations(root: &Path) -> Vec<String> {
    let rank = |name: &str| LAYERS.iter().position(|layer| *layer == name);
    let mut found = Vec::new();
    for file in sources(root) {
        let relative = file.strip_prefix(root).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" || module == "layers" {
            continue;
        }
        let Some(own) = rank(&module) else {
            found.push(format!(
                "{module} is not in LAYERS ({})",
                relative.display()
            ));
            continue;
        };
        let code = std::fs::read_to_string(&file).unwrap();
        for imported in imports(&code) {
            match rank(&imported) {
                Some(other) if other < own || imported == module => {}
                Some(_) => found.push(format!("{module} -> {imported} ({})", relative.display())),
                None => found.push(format!(
                    "{module} -> {imported}, which is not in LAYERS ({})",
                    relative.display()
                )),
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&root);
    assert!(
        found.is_empty(),
        "imports against the layer order (lowest first: {LAYERS:?}):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_an_import_against_the_order_and_ignores_comments() {
    let code = "use crate::sink::kafka::KafkaSink;\n// crate::cli in a comment\nlet x = crate::history::rewound(); // crate::app\n";
    assert_eq!(
        imports(code),
        BTreeSet::from(["sink".to_string(), "history".to_string()])
    );
}
