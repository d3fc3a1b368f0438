//! The parts of a benchmark run outside Kafka: a unique name for its topics, a work
//! directory, the binaries it starts and the files it writes for them.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// A name no earlier run used: `prefix-PID-SECONDS`, for topics, groups and the work
/// directory.
pub fn unique_tag(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    )
}

/// A fresh directory named `tag` under the system's temporary directory.
pub fn workdir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(tag);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the work directory {}", dir.display()))?;
    Ok(dir)
}

/// The program `name` at the path given, or next to this one (target/release).
pub fn binary(given: Option<PathBuf>, name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name(name),
    };
    if !path.is_file() {
        bail!(
            "`{name}` not found at {}; build it with `cargo build --release -p {package}` or pass --{name} PATH",
            path.display()
        );
    }
    Ok(path)
}

/// The `sluice` binary at the path given, or next to this program.
pub fn sluice(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    binary(given, "sluice", "sluice-host")
}

/// A plugin the host's build compiles, at the path given or in the target directory's
/// `wasm/wasm32-wasip2/release/NAME.wasm` beside this program's.
pub fn built_plugin(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this program")?
            .parent()
            .and_then(Path::parent)
            .context("locating the target directory")?
            .join(format!("wasm/wasm32-wasip2/release/{name}.wasm")),
    };
    if !path.is_file() {
        bail!(
            "the plugin `{name}` is not at {}; `cargo build --release -p sluice-host` builds it, or pass its path",
            path.display()
        );
    }
    Ok(path)
}

pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    File::create(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// The median of `values` (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A Sluice pipeline file's settings, as the benchmarks vary them.
#[derive(Debug, Clone)]
pub struct Pipeline<'a> {
    pub servers: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub group: &'a str,
    /// `at-least-once` or `exactly-once`.
    pub delivery: &'a str,
    pub parallelism: usize,
    /// The plugin, not watched; none: the built-in pass-through.
    pub plugin: Option<&'a Path>,
}

impl Pipeline<'_> {
    /// The pipeline file's text, checkpointing every second.
    pub fn render(&self) -> String {
        let Pipeline {
            servers,
            input,
            output,
            group,
            delivery,
            parallelism,
            plugin,
        } = self;
        let mut text = format!(
            r#"version = 1
delivery = "{delivery}"
parallelism = {parallelism}

[source]
bootstrap_servers = "{servers}"
topic = "{input}"
group_id = "{group}"

[sink]
topic = "{output}"

[checkpoint]
interval_ms = 1000
min_pause_ms = 0
"#
        );
        if let Some(plugin) = plugin {
            text.push_str(&format!(
                "\n[plugin]\npath = \"{}\"\nwatch = false\n",
                plugin.display()
            ));
        }
        text
    }
}

/// Starts `sluice run --config CONFIG` as exactly-once instance `instance`, admin
/// endpoint off, its log to `log`.
pub fn start_sluice(
    sluice: &Path,
    config: &Path,
    instance: &str,
    log: &Path,
) -> anyhow::Result<std::process::Child> {
    let log_file = File::create(log).with_context(|| format!("creating log {}", log.display()))?;
    std::process::Command::new(sluice)
        .args(["run", "--admin", "off", "--instance", instance, "--config"])
        .arg(config)
        .env_remove("BOOTSTRAP_SERVERS")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", sluice.display()))
}

/// Where scripts/install.sh puts the plugin builders: `$SLUICE_TOOLS_DIR`, else
/// `$XDG_CACHE_HOME/sluice/tools`, else `~/.cache/sluice/tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("sluice/tools")
}

/// The repository this program was built from (for bench/plugins and bench/peers).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds the plugin project `project` into `out` with `sluice plugin build`, the
/// language tool `tool` looked up in `builders` (scripts/install.sh puts it there)
/// before PATH.
pub fn build_plugin(
    sluice: &Path,
    project: &Path,
    out: &Path,
    builders: &Path,
    tool: &str,
) -> anyhow::Result<PathBuf> {
    let path = std::env::join_paths(std::iter::once(builders.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    if !std::env::split_paths(&path).any(|dir| dir.join(tool).exists()) {
        bail!(
            "{tool} is neither in {} nor on PATH; run scripts/install.sh",
            builders.display()
        );
    }
    let output = std::process::Command::new(sluice)
        .args(["plugin", "build"])
        .arg(project)
        .arg("--out")
        .arg(out)
        .env("PATH", path)
        .output()
        .context("running `sluice plugin build`")?;
    if !output.status.success() {
        bail!(
            "`sluice plugin build {}` failed: {}",
            project.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_file_names_its_plugin_only_when_it_has_one() {
        let mut pipeline = Pipeline {
            servers: "127.0.0.1:9092",
            input: "in",
            output: "out",
            group: "g",
            delivery: "exactly-once",
            parallelism: 2,
            plugin: None,
        };
        let text = pipeline.render();
        assert!(text.contains("delivery = \"exactly-once\"\nparallelism = 2\n"));
        assert!(text.contains("topic = \"in\"\ngroup_id = \"g\""));
        assert!(!text.contains("[plugin]"));
        let plugin = Path::new("/p/x.wasm");
        pipeline.plugin = Some(plugin);
        assert!(
            pipeline
                .render()
                .ends_with("[plugin]\npath = \"/p/x.wasm\"\nwatch = false\n")
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert!(median(Vec::new()).is_nan());
    }
}
