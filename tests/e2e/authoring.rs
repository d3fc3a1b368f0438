//! Plugin authoring without Kafka: every example passes its golden test after a build
//! from source, new projects in each language build and pass their own test, and the
//! failure cases say what is wrong.

use std::path::Path;

use crate::examples::*;

/// Runs an example's golden test and asserts it passes.
fn golden(name: &str) {
    golden_of(name, &example(name));
}

/// Runs the golden test of example `name` on the component `plugin`.
fn golden_of(name: &str, plugin: &Path) {
    let dir = repo().join("plugins").join(name);
    let input = dir.join("test/input.jsonl");
    let expected = dir.join("test/expected.jsonl");
    let mut args = vec![
        "plugin".to_string(),
        "test".into(),
        plugin.display().to_string(),
        "--input".into(),
        input.display().to_string(),
        "--expect".into(),
        expected.display().to_string(),
    ];
    args.extend(golden_settings(name));
    let output = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let lines = std::fs::read_to_string(&expected)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(
        output.status.success(),
        "golden test of {name}: {}",
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("{lines} outputs as expected")),
        "{}",
        text(&output)
    );
}

#[test]
fn passthrough_passes_its_golden_test() {
    golden("passthrough");
}

#[test]
fn filter_passes_its_golden_test() {
    golden("filter");
}

#[test]
fn route_passes_its_golden_test() {
    golden("route");
}

#[test]
fn enrich_in_javascript_passes_its_golden_test() {
    golden("enrich");
}

/// `plugin build --aot`: componentize-js with weval compiles the plugin's code ahead
/// of time. The component passes the same golden test as the interpreted one, and is
/// another, larger component (the specialized code comes on top of the interpreter).
#[test]
fn enrich_built_ahead_of_time_passes_its_golden_test() {
    let interpreted = example("enrich");
    let aot = build_dir().join("enrich-aot.wasm");
    let output = run(&[
        "plugin",
        "build",
        repo().join("plugins/enrich").to_str().unwrap(),
        "--aot",
        "--out",
        aot.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let size = |path: &Path| std::fs::metadata(path).unwrap().len();
    assert!(
        size(&aot) > size(&interpreted) + size(&interpreted) / 10,
        "the --aot build ({} bytes) is not larger than the interpreted one ({} bytes): was --aot applied?",
        size(&aot),
        size(&interpreted)
    );
    golden_of("enrich", &aot);
}

#[test]
fn aot_for_a_python_plugin_is_refused_naming_the_option() {
    let out = build_dir().join("redact-aot.wasm");
    let output = run(&[
        "plugin",
        "build",
        repo().join("plugins/redact").to_str().unwrap(),
        "--aot",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("--aot applies to JavaScript plugins only"),
        "{}",
        text(&output)
    );
    assert!(!out.exists());
}

#[test]
fn redact_in_python_passes_its_golden_test() {
    golden("redact");
}

#[test]
fn change_in_javascript_keeps_state_and_passes_its_golden_test() {
    golden("change");
}

#[test]
fn dedupe_in_python_keeps_state_and_passes_its_golden_test() {
    golden("dedupe");
}

/// `plugin new`, then `plugin build` and `plugin test` of the project as it is.
fn new_project_builds_and_passes_its_test(lang: &str) {
    let parent = tempfile::tempdir().unwrap();
    let name = format!("upper-{lang}");
    let output = run(&[
        "plugin",
        "new",
        &name,
        "--lang",
        lang,
        "--dir",
        parent.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let dir = parent.path().join(&name);
    // The default output path, which `plugin test DIR` finds.
    let output = run(&["plugin", "build", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        dir.join(format!("{name}.wasm")).is_file(),
        "{}",
        text(&output)
    );
    let output = sluice_in(
        &dir,
        &[
            "plugin",
            "test",
            ".",
            "--input",
            "test/input.jsonl",
            "--expect",
            "test/expected.jsonl",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("3 input records, 3 outputs as expected"),
        "{}",
        text(&output)
    );
}

fn sluice_in(dir: &Path, args: &[&str]) -> std::process::Output {
    crate::support::sluice(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn a_new_rust_project_builds_and_passes_its_own_test() {
    new_project_builds_and_passes_its_test("rust");
}

#[test]
fn a_new_javascript_project_builds_and_passes_its_own_test() {
    new_project_builds_and_passes_its_test("js");
}

#[test]
fn a_new_python_project_builds_and_passes_its_own_test() {
    new_project_builds_and_passes_its_test("python");
}

#[test]
fn a_missing_language_tool_is_named_with_its_install_command() {
    // An empty PATH: neither componentize-js nor componentize-py can be found.
    let empty = tempfile::tempdir().unwrap();
    for (example, expected) in [
        (
            "enrich",
            "npm install -g @bytecodealliance/componentize-js@0.23.0",
        ),
        ("redact", "pip install componentize-py==0.25.1"),
    ] {
        // A copy, so that no node_modules of the checkout is found above it.
        let project = empty.path().join(example);
        std::fs::create_dir(&project).unwrap();
        for entry in std::fs::read_dir(repo().join("plugins").join(example)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), project.join(entry.file_name())).unwrap();
            }
        }
        let out = empty.path().join(format!("{example}.wasm"));
        let output = crate::support::sluice(&[
            "plugin",
            "build",
            project.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("PATH", empty.path())
        .output()
        .unwrap();
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("was not found"), "{}", text(&output));
        assert!(stderr.contains(expected), "{}", text(&output));
        assert!(!out.exists());
    }
}

#[test]
fn an_output_that_differs_from_the_expected_one_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let input = crate::support::write_file(
        dir.path(),
        "in.jsonl",
        "{\"value\": \"a\"}\n{\"value\": \"b\"}\n",
    );
    let expected = crate::support::write_file(
        dir.path(),
        "expected.jsonl",
        "{\"input\": 1, \"value\": \"a\"}\n{\"input\": 2, \"value\": \"B\"}\n",
    );
    let output = run(&[
        "plugin",
        "test",
        example("passthrough").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--expect",
        expected.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("- {\"input\":2,\"value\":\"B\"}"),
        "{}",
        text(&output)
    );
    assert!(
        stdout.contains("+ {\"input\":2,\"value\":\"b\"}"),
        "{}",
        text(&output)
    );
    assert!(
        stdout.contains("  {\"input\":1,\"value\":\"a\"}"),
        "{}",
        text(&output)
    );
}

#[test]
fn a_bad_input_line_is_named_by_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let input = crate::support::write_file(
        dir.path(),
        "in.jsonl",
        "{\"value\": \"a\"}\n\n{\"value\": \"b\", \"partiton\": 1}\n",
    );
    let output = run(&[
        "plugin",
        "test",
        example("passthrough").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:3: unknown field `partiton`", input.display())),
        "{}",
        text(&output)
    );
}

#[test]
fn without_expectations_the_outputs_are_printed_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let input = crate::support::write_file(
        dir.path(),
        "in.jsonl",
        "{\"key\": \"{\\\"ticker\\\": \\\"AAPL\\\"}\", \"value\": \"{\\\"ticker\\\": \\\"AAPL\\\", \\\"price\\\": 70}\"}\n{\"value\": \"{\\\"ticker\\\": \\\"X\\\", \\\"price\\\": 1}\"}\n",
    );
    let output = run(&[
        "plugin",
        "test",
        example("route").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--config",
        "routes=AAPL=tech",
        "--config",
        "other=rest",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", text(&output));
    assert!(
        lines[0].starts_with("{\"input\":1,\"output\":\"tech\",\"key\":"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("{\"input\":2,\"output\":\"rest\",\"value\":"),
        "{}",
        lines[1]
    );
}

#[test]
fn a_plugin_that_rejects_its_settings_fails_the_test_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = crate::support::write_file(dir.path(), "in.jsonl", "{\"value\": \"a\"}\n");
    let output = run(&[
        "plugin",
        "test",
        example("route").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("init failed: missing plugin setting `routes`"),
        "{}",
        text(&output)
    );
}

#[test]
fn inspect_names_world_digest_and_the_sdk_that_built_it() {
    let plugin = example("route");
    let output = run(&["plugin", "inspect", plugin.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let size = std::fs::metadata(&plugin).unwrap().len();
    assert!(
        stdout.contains("world:   sluice:plugin/transformer@0.1.0 (links in this host)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  sluice:plugin/transform@0.1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("size:    {size} bytes")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "sha256:  {}",
            crate::support::file_digest(&plugin)
        )),
        "{stdout}"
    );
    assert!(stdout.contains("sdk:     sluice-sdk 0.1.0"), "{stdout}");
    let other = crate::support::test_plugin("sluice_test_other_world");
    let output = run(&["plugin", "inspect", other.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("world:   does not link as sluice:plugin/transformer@0.1.0"),
        "{}",
        text(&output)
    );
    assert!(stdout.contains("sdk:     unknown"), "{}", text(&output));
}

/// Runs `sluice plugin inspect PATH` with debug logs, with `home` as `HOME` and
/// `cache` (if any) as `SLUICE_CACHE_DIR`; returns the exit success, stdout and stderr.
fn inspect_cached(plugin: &Path, home: &Path, cache: Option<&str>) -> (bool, String, String) {
    let mut command = crate::support::sluice(&["plugin", "inspect", &plugin.display().to_string()]);
    command
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SLUICE_CACHE_DIR")
        .env_remove("SLUICE_CACHE_KEY_FILE")
        .env("RUST_LOG", "sluice_host=debug");
    if let Some(cache) = cache {
        command.env("SLUICE_CACHE_DIR", cache);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_compiled_plugin_is_loaded_from_the_compilation_cache_next_time() {
    const HIT: &str = "Plugin loaded from the compilation cache.";
    let plugin = crate::support::test_plugin("sluice_test_tag_a");
    let dir = crate::support::workdir();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();

    // Off: compiled, and nothing is written anywhere.
    let (ok, off_out, log) = inspect_cached(&plugin, &home, Some("off"));
    assert!(ok && !log.contains(HIT), "{log}");
    assert!(walk(&home).is_empty(), "{:?}", walk(&home));

    // By default the cache is under $HOME/.cache/sluice/compiled.
    let (ok, first_out, first) = inspect_cached(&plugin, &home, None);
    assert!(ok, "{first}");
    assert!(!first.contains(HIT), "nothing was cached yet: {first}");
    assert_eq!(first_out, off_out);
    assert!(
        !walk(&home.join(".cache/sluice/compiled")).is_empty(),
        "the first run stores the compiled plugin"
    );
    let (ok, second_out, second) = inspect_cached(&plugin, &home, None);
    assert!(ok, "{second}");
    assert!(second.contains(HIT), "{second}");
    assert_eq!(
        first_out, second_out,
        "the cached plugin describes the same"
    );

    // SLUICE_CACHE_DIR names another directory.
    let elsewhere = dir.path().join("elsewhere");
    let elsewhere_text = elsewhere.display().to_string();
    let (ok, _, log) = inspect_cached(&plugin, &home, Some(&elsewhere_text));
    assert!(ok && !log.contains(HIT), "{log}");
    assert!(!walk(&elsewhere).is_empty());

    // A pipeline host compiles in a child process; the host looks in the same cache
    // (its entries sealed with the key under the same $HOME) before it starts one.
    let config = crate::support::write_config(dir.path(), "in", "out", "g", "");
    let validate = |cache: &Path| {
        let output = crate::support::sluice(&[
            "validate",
            "--config",
            &config,
            "--plugin",
            &plugin.display().to_string(),
        ])
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SLUICE_CACHE_KEY_FILE")
        .env("SLUICE_CACHE_DIR", cache)
        .env("RUST_LOG", "sluice_host=debug")
        .output()
        .unwrap();
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{log}");
        log
    };
    let log = validate(&elsewhere);
    assert!(log.contains(HIT), "{log}");
    let fresh = dir.path().join("fresh");
    let log = validate(&fresh);
    assert!(!log.contains(HIT), "{log}");
    assert!(
        !walk(&fresh).is_empty(),
        "the compiler process fills the cache"
    );

    // An unusable directory costs the compile, never the command.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let unusable = blocker.join("cache").display().to_string();
    let (ok, out, log) = inspect_cached(&plugin, &home, Some(&unusable));
    assert!(ok, "{log}");
    assert_eq!(out, first_out);
    assert!(
        log.contains("The compilation cache is unusable") && log.contains("SLUICE_CACHE_DIR"),
        "{log}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn a_failing_rust_build_shows_the_compilers_errors_and_no_json() {
    let parent = tempfile::tempdir().unwrap();
    let output = run(&[
        "plugin",
        "new",
        "typo",
        "--lang",
        "rust",
        "--dir",
        parent.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let dir = parent.path().join("typo");
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    let broken = lib.replace(
        "Ok(Plugin)\n",
        "let limit: u32 = \"fifty\";\n        let _ = limit;\n        Ok(Plugin)\n",
    );
    assert_ne!(lib, broken, "the scaffold's init changed; update this test");
    std::fs::write(dir.join("src/lib.rs"), broken).unwrap();
    let output = run(&["plugin", "build", dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error[E0308]"), "{}", text(&output));
    assert!(stderr.contains("src/lib.rs:"), "{}", text(&output));
    assert!(
        !stderr
            .lines()
            .any(|l| l.trim_start().starts_with("{\"reason\"")),
        "cargo's JSON messages reached the author:\n{}",
        text(&output)
    );
    assert!(!dir.join("typo.wasm").exists());
}

#[test]
fn plugin_test_says_it_is_compiling_when_the_cache_is_cold() {
    let plugin = example("enrich");
    let home = crate::support::workdir();
    let dir = repo().join("plugins/enrich/test");
    let output = crate::support::sluice(&[
        "plugin",
        "test",
        plugin.to_str().unwrap(),
        "--input",
        dir.join("input.jsonl").to_str().unwrap(),
        "--expect",
        dir.join("expected.jsonl").to_str().unwrap(),
    ])
    .args(golden_settings("enrich"))
    .env("HOME", home.path())
    .env("XDG_CACHE_HOME", home.path().join("cache"))
    .env_remove("XDG_CONFIG_HOME")
    .env_remove("SLUICE_CACHE_DIR")
    .env_remove("SLUICE_CACHE_KEY_FILE")
    .env_remove("RUST_LOG")
    .env("SLUICE_LOG", "info")
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let name = plugin.display().to_string();
    assert!(
        stderr.contains(&format!("Compiling plugin {name} ...")),
        "{}",
        text(&output)
    );
    let done = stderr
        .lines()
        .find_map(|l| {
            l.split(&format!("Compiling plugin {name} ... done in "))
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no elapsed time: {}", text(&output)));
    let seconds: f64 = done.trim_end_matches(" s.").parse().unwrap();
    assert!(seconds >= 1.0, "{done}");
}

#[test]
fn inspect_names_the_language_of_javascript_and_python_components() {
    for (example_name, language) in [("enrich", "JavaScript"), ("redact", "Python")] {
        let output = run(&["plugin", "inspect", example(example_name).to_str().unwrap()]);
        assert!(output.status.success(), "{}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.lines().any(|l| l == format!("language: {language}")),
            "{stdout}"
        );
        let exports: Vec<&str> = stdout
            .lines()
            .skip_while(|l| *l != "exports:")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(str::trim)
            .collect();
        assert_eq!(exports, ["sluice:plugin/transform@0.1.0"], "{stdout}");
    }
}
