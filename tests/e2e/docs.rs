//! The documentation runs as written: the plugin sources and the authoring commands of
//! README.md and docs/*.md are built and run, as the marks on their code fences say.
//!
//! A fence's info string is a language, then marks:
//!
//! - `rust sluice-plugin`, `js sluice-plugin`, `python sluice-plugin`: a whole plugin
//!   source (`src/lib.rs`, `plugin.js`, `app.py`). It replaces the source of a project of
//!   its language, is built with `sluice plugin build`, and `sluice plugin test` runs it
//!   on the next `jsonl sluice-input` block of the file and compares its outputs with
//!   the `jsonl sluice-expected` block after that. A mark `config=KEY=VALUE` passes a
//!   plugin setting (`--config KEY=VALUE`).
//! - `sh sluice-run`: commands run in order by bash (stopping at the first failure) in
//!   an empty directory, with `sluice` and the language builders on PATH. Lines that
//!   install a builder (`npm install`, `pip install`, `rustup target add`) are skipped:
//!   the test environment has the builders (`scripts/install.sh`). A block that makes
//!   a project with `sluice plugin new ... --lang L` is run by the test of language L,
//!   whose plugin blocks then reuse that project.
//! - `sluice-fragment`: not run: part of a program, or commands that need more than
//!   the page gives (a repository checkout, a running host). Keep these few.
//!
//! In docs/*.md, and in README.md as soon as one of its fences carries a `sluice-`
//! mark, every `rust`, `js` or `python` block and every shell block with a `sluice
//! plugin new|build|test|inspect` command must carry one of these marks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::examples::{repo, text, wasm_target_dir};

/// One fenced code block.
#[derive(Debug, Clone)]
struct Block {
    /// `FILE:LINE` of the opening fence.
    place: String,
    language: String,
    marks: Vec<String>,
    body: String,
}

impl Block {
    fn marked(&self, mark: &str) -> bool {
        self.marks.iter().any(|m| m == mark)
    }

    fn settings(&self) -> Vec<String> {
        self.marks
            .iter()
            .filter_map(|m| m.strip_prefix("config="))
            .flat_map(|setting| ["--config".to_string(), setting.to_string()])
            .collect()
    }
}

/// The documentation files: README.md and docs/*.md.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.insert(0, repo().join("README.md"));
    pages
}

/// The fenced blocks of a Markdown text, in order (fences of three or more backticks
/// or tildes, indented at most three spaces).
fn blocks(name: &str, text: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<(String, Block)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let fence: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let is_fence = indent <= 3
            && fence.len() >= 3
            && fence.chars().all(|c| c == fence.chars().next().unwrap());
        match &mut open {
            Some((opening, block)) => {
                if is_fence
                    && fence.starts_with(opening.as_str())
                    && trimmed[fence.len()..].trim().is_empty()
                {
                    found.push(block.clone());
                    open = None;
                } else {
                    block.body.push_str(line);
                    block.body.push('\n');
                }
            }
            None if is_fence => {
                let mut words = trimmed[fence.len()..].split_whitespace();
                let language = words.next().unwrap_or_default().to_string();
                open = Some((
                    fence,
                    Block {
                        place: format!("{name}:{}", number + 1),
                        language,
                        marks: words.map(str::to_string).collect(),
                        body: String::new(),
                    },
                ));
            }
            None => {}
        }
    }
    assert!(open.is_none(), "{name}: a code fence is never closed");
    found
}

/// Every page's blocks, each page with whether it is held to the marking rules.
fn all_blocks() -> Vec<(bool, Vec<Block>)> {
    pages()
        .iter()
        .map(|path| {
            let name = path.strip_prefix(repo()).unwrap().display().to_string();
            let blocks = blocks(&name, &std::fs::read_to_string(path).unwrap());
            let strict = name != "README.md"
                || blocks
                    .iter()
                    .any(|b| b.marks.iter().any(|m| m.starts_with("sluice-")));
            (strict, blocks)
        })
        .collect()
}

const PLUGIN_LANGUAGES: [&str; 3] = ["rust", "js", "python"];
const SHELLS: [&str; 5] = ["sh", "bash", "shell", "console", "shell-session"];
const AUTHORING: [&str; 4] = [
    "sluice plugin new",
    "sluice plugin build",
    "sluice plugin test",
    "sluice plugin inspect",
];

/// What is wrong with a block's marks, if anything.
fn unmarked(block: &Block) -> Option<&'static str> {
    let marked = ["sluice-plugin", "sluice-run", "sluice-fragment"]
        .iter()
        .any(|m| block.marked(m));
    if marked {
        return None;
    }
    if PLUGIN_LANGUAGES.contains(&block.language.as_str()) {
        Some("plugin code")
    } else if SHELLS.contains(&block.language.as_str())
        && AUTHORING.iter().any(|c| block.body.contains(c))
    {
        Some("authoring commands")
    } else {
        None
    }
}

#[test]
fn every_plugin_block_and_authoring_command_of_the_docs_is_marked() {
    let mut problems = Vec::new();
    for (strict, blocks) in all_blocks() {
        for (i, block) in blocks.iter().enumerate() {
            if strict && let Some(what) = unmarked(block) {
                problems.push(format!(
                    "{}: {what} in a block marked neither `sluice-plugin`, `sluice-run` nor `sluice-fragment` (```{} sluice-...)",
                    block.place, block.language
                ));
            }
            if block.marked("sluice-plugin") {
                if !PLUGIN_LANGUAGES.contains(&block.language.as_str()) {
                    problems.push(format!(
                        "{}: `sluice-plugin` on a `{}` block; the languages are rust, js and python",
                        block.place, block.language
                    ));
                }
                if records_after(&blocks, i).is_none() {
                    problems.push(format!(
                        "{}: a plugin block without a `jsonl sluice-input` and then a `jsonl sluice-expected` block after it",
                        block.place
                    ));
                }
            }
            if block.marked("sluice-run") && !SHELLS.contains(&block.language.as_str()) {
                problems.push(format!(
                    "{}: `sluice-run` on a `{}` block; shell blocks only",
                    block.place, block.language
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The authoring guides are checked, not skipped: each shows a plugin that runs.
    let plugins = all_blocks()
        .into_iter()
        .flat_map(|(_, b)| b)
        .filter(|b| b.marked("sluice-plugin"))
        .count();
    assert!(plugins >= 3, "only {plugins} plugin blocks found");
}

/// The input and expected records that follow the plugin block `at`.
fn records_after(blocks: &[Block], at: usize) -> Option<(&Block, &Block)> {
    let rest = &blocks[at + 1..];
    let end = rest
        .iter()
        .position(|b| b.marked("sluice-plugin"))
        .unwrap_or(rest.len());
    let rest = &rest[..end];
    let input = rest.iter().position(|b| b.marked("sluice-input"))?;
    let expected = rest[input + 1..]
        .iter()
        .find(|b| b.marked("sluice-expected"))?;
    Some((&rest[input], expected))
}

/// `sluice` as the docs' commands run it: on PATH with the language builders, Rust
/// plugins building into the target directory of the test plugins (compiled
/// dependencies shared).
fn documented(command: &mut Command) -> &mut Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&path)),
    )
    .unwrap();
    command
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", wasm_target_dir())
        .env_remove("BOOTSTRAP_SERVERS")
        .env("SLUICE_ADMIN", "off")
        .env("NO_COLOR", "1")
}

/// Runs a `sluice-run` block in `dir`.
fn run_commands(block: &Block, dir: &Path) -> Output {
    let installer = |line: &str| {
        let line = line.trim_start();
        [
            "npm install",
            "npm i ",
            "pip install",
            "pip3 install",
            "rustup target add",
        ]
        .iter()
        .any(|i| line.starts_with(i))
    };
    let script: String = block
        .body
        .lines()
        .map(|line| if installer(line) { ":" } else { line })
        .collect::<Vec<_>>()
        .join("\n");
    documented(Command::new("bash").args(["-e", "-u", "-o", "pipefail", "-c", &script]))
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The project `sluice plugin new` made under `dir` (one level or two down).
fn project_under(dir: &Path) -> Option<PathBuf> {
    let marker = |d: &Path| {
        ["Cargo.toml", "package.json", "app.py"]
            .iter()
            .any(|m| d.join(m).is_file())
    };
    let children = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    children(dir)
        .into_iter()
        .flat_map(|d| std::iter::once(d.clone()).chain(children(&d)))
        .find(|d| marker(d))
}

/// Runs the docs' `sluice-run` blocks that make a project in `lang`, then builds and
/// tests every `lang sluice-plugin` block in one such project.
fn docs_in(lang: &str) {
    let work = crate::support::workdir();
    let mut project = None;
    let mut ran = 0;
    for (_, blocks) in all_blocks() {
        for block in blocks
            .iter()
            .filter(|b| b.marked("sluice-run") && b.body.contains(&format!("--lang {lang}")))
        {
            let dir = work.path().join(format!("run-{ran}"));
            std::fs::create_dir(&dir).unwrap();
            ran += 1;
            let output = run_commands(block, &dir);
            assert!(
                output.status.success(),
                "{}: the commands failed:\n{}\n{}",
                block.place,
                block.body,
                text(&output)
            );
            project = project.or_else(|| project_under(&dir));
        }
    }
    let project = project.unwrap_or_else(|| {
        let output = documented(&mut crate::support::sluice(&[
            "plugin",
            "new",
            &format!("docs-{lang}"),
            "--lang",
            lang,
            "--dir",
            work.path().to_str().unwrap(),
        ]))
        .output()
        .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        work.path().join(format!("docs-{lang}"))
    });
    let source = match lang {
        "rust" => "src/lib.rs",
        "js" => "plugin.js",
        _ => "app.py",
    };
    let mut tested = 0;
    for (_, blocks) in all_blocks() {
        for (i, block) in blocks.iter().enumerate() {
            if !(block.marked("sluice-plugin") && block.language == lang) {
                continue;
            }
            let (input, expected) = records_after(&blocks, i)
                .unwrap_or_else(|| panic!("{}: no input and expected records", block.place));
            std::fs::write(project.join(source), &block.body).unwrap();
            let input_file = work.path().join(format!("input-{tested}.jsonl"));
            let expected_file = work.path().join(format!("expected-{tested}.jsonl"));
            std::fs::write(&input_file, &input.body).unwrap();
            std::fs::write(&expected_file, &expected.body).unwrap();
            let output = documented(&mut crate::support::sluice(&[
                "plugin",
                "build",
                project.to_str().unwrap(),
            ]))
            .output()
            .unwrap();
            assert!(
                output.status.success(),
                "{}: the plugin does not build:\n{}",
                block.place,
                text(&output)
            );
            let mut args = vec![
                "plugin".to_string(),
                "test".into(),
                project.display().to_string(),
                "--input".into(),
                input_file.display().to_string(),
                "--expect".into(),
                expected_file.display().to_string(),
            ];
            args.extend(block.settings());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = documented(&mut crate::support::sluice(&args))
                .output()
                .unwrap();
            let records = expected
                .body
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count();
            assert!(
                output.status.success()
                    && String::from_utf8_lossy(&output.stdout)
                        .contains(&format!("{records} outputs as expected")),
                "{}: the plugin's outputs are not the ones {} shows:\n{}",
                block.place,
                expected.place,
                text(&output)
            );
            tested += 1;
        }
    }
    assert!(
        ran + tested > 0,
        "the docs hold no block in {lang} to run; the authoring guide shows at least one"
    );
}

#[test]
fn the_rust_code_and_commands_of_the_docs_run_as_written() {
    docs_in("rust");
}

#[test]
fn the_javascript_code_and_commands_of_the_docs_run_as_written() {
    docs_in("js");
}

#[test]
fn the_python_code_and_commands_of_the_docs_run_as_written() {
    docs_in("python");
}

#[test]
fn fences_are_read_with_their_language_and_marks() {
    let page = "text\n```rust sluice-plugin config=a=1\nfn main() {}\n```\n\n````md\n```sh\nx\n```\n````\n";
    let found = blocks("page.md", page);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].place, "page.md:2");
    assert_eq!(found[0].language, "rust");
    assert_eq!(found[0].settings(), ["--config", "a=1"]);
    assert_eq!(found[0].body, "fn main() {}\n");
    assert_eq!(found[1].body, "```sh\nx\n```\n");
    assert_eq!(
        unmarked(&blocks("p.md", "```sh\nsluice plugin build\n```\n")[0]),
        Some("authoring commands")
    );
    assert_eq!(
        unmarked(&blocks("p.md", "```sh\nsluice plugin status\n```\n")[0]),
        None
    );
}
