//! `[plugin.sandbox]`: what the plugin may reach beyond the WIT world, granted by
//! name. Everything not granted here is denied (see `runtime/sandbox.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::Problem;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSandbox {
    /// Names of host environment variables the plugin sees, with the host's values.
    #[serde(default)]
    env: Vec<String>,
    /// Host directories the plugin may read, each at a path inside the plugin.
    #[serde(default)]
    dirs: Vec<RawDirGrant>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDirGrant {
    host: Option<PathBuf>,
    guest: Option<String>,
}

/// The validated grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SandboxConfig {
    /// Environment variables passed through; each was set when the file was checked.
    pub(crate) env: Vec<String>,
    pub(crate) dirs: Vec<DirGrantConfig>,
}

/// A host directory the plugin reads at `guest`; never writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirGrantConfig {
    pub(crate) host: PathBuf,
    pub(crate) guest: String,
}

impl RawSandbox {
    /// Checks the grants against this host, appending every problem to `problems`.
    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) -> SandboxConfig {
        let mut report = |path: String, message: String| problems.push(Problem { path, message });
        let mut seen = BTreeSet::new();
        for name in &self.env {
            let path = "plugin.sandbox.env".to_string();
            if name.is_empty() || name.contains(['=', '\0']) {
                report(
                    path,
                    format!("`{name}` is not an environment variable name"),
                );
            } else if !seen.insert(name.as_str()) {
                report(path, format!("`{name}` is listed twice"));
            } else {
                match std::env::var(name) {
                    Ok(_) => {}
                    Err(std::env::VarError::NotPresent) => report(
                        path,
                        format!(
                            "`{name}` is not set in Sluice's environment; set it before starting Sluice or remove it from the list"
                        ),
                    ),
                    Err(std::env::VarError::NotUnicode(_)) => report(
                        path,
                        format!("`{name}` is set but not valid UTF-8; plugins only see text"),
                    ),
                }
            }
        }

        let mut dirs = Vec::new();
        let mut guests = BTreeSet::new();
        for (i, dir) in self.dirs.iter().enumerate() {
            let key = |field: &str| format!("plugin.sandbox.dirs[{i}].{field}");
            match &dir.host {
                None => report(
                    key("host"),
                    "missing; give the host directory to grant".into(),
                ),
                Some(host) if !host.is_dir() => report(
                    key("host"),
                    format!("{} does not exist or is not a directory", host.display()),
                ),
                Some(_) => {}
            }
            match dir.guest.as_deref() {
                None => report(
                    key("guest"),
                    "missing; give the path the plugin reads it at, such as `/ref`".into(),
                ),
                Some(guest) if !guest.starts_with('/') => report(
                    key("guest"),
                    format!("`{guest}` must be an absolute path inside the plugin, such as `/ref`"),
                ),
                Some(guest) if !guests.insert(guest.trim_end_matches('/')) => report(
                    key("guest"),
                    format!("`{guest}` is granted twice; give each directory its own path"),
                ),
                Some(_) => {}
            }
            if let (Some(host), Some(guest)) = (&dir.host, &dir.guest) {
                dirs.push(DirGrantConfig {
                    host: host.clone(),
                    guest: guest.clone(),
                });
            }
        }
        SandboxConfig {
            env: self.env.clone(),
            dirs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let raw: RawSandbox = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        raw.validate(&mut problems);
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn grants_that_exist_on_this_host_are_valid() {
        let dir = std::env::temp_dir();
        let text = format!(
            "env = [\"PATH\"]\ndirs = [{{ host = \"{}\", guest = \"/ref\" }}]",
            dir.display()
        );
        let raw: RawSandbox = toml::from_str(&text).unwrap();
        let mut problems = Vec::new();
        let sandbox = raw.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(sandbox.env, ["PATH"]);
        assert_eq!(
            sandbox.dirs,
            [DirGrantConfig {
                host: dir,
                guest: "/ref".into()
            }]
        );
    }

    #[test]
    fn every_bad_grant_is_reported_with_its_key_path() {
        let found = problems(
            r#"
            env = ["SLUICE_SURELY_UNSET_VARIABLE", "A=B", "PATH", "PATH"]
            dirs = [
                { host = "/surely/not/a/directory", guest = "/ref" },
                { host = "/", guest = "relative" },
                { host = "/", guest = "/ref/" },
                { guest = "/x" },
            ]
        "#,
        );
        let expected = [
            "plugin.sandbox.env: `SLUICE_SURELY_UNSET_VARIABLE` is not set in Sluice's environment; set it before starting Sluice or remove it from the list",
            "plugin.sandbox.env: `A=B` is not an environment variable name",
            "plugin.sandbox.env: `PATH` is listed twice",
            "plugin.sandbox.dirs[0].host: /surely/not/a/directory does not exist or is not a directory",
            "plugin.sandbox.dirs[1].guest: `relative` must be an absolute path inside the plugin, such as `/ref`",
            "plugin.sandbox.dirs[2].guest: `/ref/` is granted twice; give each directory its own path",
            "plugin.sandbox.dirs[3].host: missing; give the host directory to grant",
        ];
        assert_eq!(found, expected);
    }
}
