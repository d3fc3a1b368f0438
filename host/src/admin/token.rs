//! The admin endpoint's credential: a random token the host writes at start to a file
//! only its user can read, which `sluice plugin swap` reads back; or a fixed token from
//! the environment (a Kubernetes Secret).
//!
//! Anything on the host can reach the endpoint, a browser tab after DNS rebinding
//! included; only processes of the host's user (or whoever holds the fixed token) can
//! read the token, so only they can change the live plugin.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The environment variable holding a fixed token.
pub(crate) const TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";

/// A fixed token shorter than this is refused: it could be guessed.
const MIN_FIXED_TOKEN: usize = 16;
/// A token file longer than this is not a token.
const MAX_TOKEN_FILE: u64 = 4096;

/// Where the token comes from, as the operator chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `SLUICE_ADMIN_TOKEN`.
    Fixed,
    /// `--admin-token-file`: read if it exists, else written with a new token.
    File(PathBuf),
    /// Nothing chosen: a new token in the default file for the port.
    Default,
}

impl TokenSource {
    /// The operator's choice: the fixed token wins over a file.
    pub fn from_options(file: Option<&Path>) -> TokenSource {
        if std::env::var_os(TOKEN_ENV).is_some() {
            TokenSource::Fixed
        } else if let Some(file) = file {
            TokenSource::File(file.to_path_buf())
        } else {
            TokenSource::Default
        }
    }

    /// Whether the operator named the token (required to listen beyond loopback).
    pub(crate) fn explicit(&self) -> bool {
        !matches!(self, TokenSource::Default)
    }
}

/// Where a client finds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held {
    /// In this file.
    File(PathBuf),
    /// In `SLUICE_ADMIN_TOKEN`.
    Environment,
    /// Nowhere: the default file could not be written, so no client can change the host.
    Nowhere,
}

/// The admin token. Its text never prints.
#[derive(Clone)]
pub(crate) struct Token {
    digest: [u8; 32],
    text: String,
    pub(crate) held: Held,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("held", &self.held).finish()
    }
}

impl Token {
    fn new(text: String, held: Held) -> Token {
        Token {
            digest: Sha256::digest(text.as_bytes()).into(),
            text,
            held,
        }
    }

    /// A random token no one is told: mutating requests are all refused.
    fn unknown() -> Token {
        Token::new(random_text(), Held::Nowhere)
    }

    #[cfg(test)]
    pub(crate) fn fixed_for_tests(text: &str) -> Token {
        Token::new(text.to_string(), Held::Environment)
    }

    /// The text to send as `Authorization: Bearer <text>`.
    pub(crate) fn expose(&self) -> &str {
        &self.text
    }

    /// Whether `offered` is this token. Both sides are hashed first, so the comparison
    /// takes the same time whatever the offered text's length and content.
    pub(crate) fn matches(&self, offered: &str) -> bool {
        let offered: [u8; 32] = Sha256::digest(offered.as_bytes()).into();
        let difference = self
            .digest
            .iter()
            .zip(offered.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

/// A token that could not be set up; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("admin endpoint token: {0}")]
pub(crate) struct TokenError(String);

/// The default token file for the endpoint on `port`: under `$XDG_RUNTIME_DIR/sluice/`
/// (private to the user, emptied at logout), else `~/.local/state/sluice/`.
pub fn default_file(port: u16) -> Option<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("sluice"),
        None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?)
            .join(".local/state/sluice"),
    };
    Some(dir.join(format!("admin-{port}.token")))
}

/// How a client or a user sets the token, for messages.
pub(crate) const HOW_TO_SET: &str = "set SLUICE_ADMIN_TOKEN (at least 16 characters, e.g. from a Kubernetes Secret) or --admin-token-file PATH (SLUICE_ADMIN_TOKEN_FILE)";

/// The host's token for the endpoint listening on `port`, set up as `source` says.
pub(crate) fn for_host(source: &TokenSource, port: u16) -> Result<Token, TokenError> {
    match source {
        TokenSource::Fixed => {
            let text = std::env::var(TOKEN_ENV)
                .map_err(|_| TokenError(format!("{TOKEN_ENV} is not valid UTF-8; {HOW_TO_SET}")))?;
            let text = text.trim().to_string();
            if text.chars().count() < MIN_FIXED_TOKEN {
                return Err(TokenError(format!(
                    "{TOKEN_ENV} has fewer than {MIN_FIXED_TOKEN} characters; use a random one (e.g. `openssl rand -hex 32`)"
                )));
            }
            Ok(Token::new(text, Held::Environment))
        }
        TokenSource::File(path) => match read_file(path) {
            Ok(Some(token)) => Ok(token),
            Ok(None) => write_new(path),
            Err(error) => Err(error),
        },
        TokenSource::Default => {
            // The operator chose nothing: a host that cannot write the file (a read-only
            // file system) still runs, its read-only endpoints too, but nothing can swap
            // through the endpoint.
            let written = default_file(port)
                .ok_or_else(|| {
                    TokenError(format!(
                        "neither XDG_RUNTIME_DIR nor HOME is set, so there is no private place for the token file; {HOW_TO_SET}"
                    ))
                })
                .and_then(|path| write_new(&path));
            Ok(written.unwrap_or_else(|error| {
                tracing::warn!(%error, "No admin token could be written: swaps through the admin endpoint are refused until the host is restarted with a token.");
                Token::unknown()
            }))
        }
    }
}

/// The token a client sends to the endpoint on `port`: the fixed one, else the one in
/// `file` (or the default file for the port). `None` when there is none to read.
pub(crate) fn for_client(file: Option<&Path>, port: u16) -> Result<Option<Token>, TokenError> {
    match TokenSource::from_options(file) {
        TokenSource::Fixed => {
            let text = std::env::var(TOKEN_ENV)
                .map_err(|_| TokenError(format!("{TOKEN_ENV} is not valid UTF-8")))?;
            Ok(Some(Token::new(text.trim().to_string(), Held::Environment)))
        }
        TokenSource::File(path) => match read_file(&path)? {
            Some(token) => Ok(Some(token)),
            None => Err(TokenError(format!(
                "{} does not exist; name the file the host was started with",
                path.display()
            ))),
        },
        TokenSource::Default => match default_file(port) {
            Some(path) => read_file(&path),
            None => Ok(None),
        },
    }
}

/// Reads a token file; `None` if it does not exist.
fn read_file(path: &Path) -> Result<Option<Token>, TokenError> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(TokenError(format!(
                "cannot read {}: {error}",
                path.display()
            )));
        }
    };
    if !metadata.is_file() || metadata.len() > MAX_TOKEN_FILE {
        return Err(TokenError(format!(
            "{} is not a token file (a regular file of at most {MAX_TOKEN_FILE} bytes)",
            path.display()
        )));
    }
    let text = fs::read_to_string(path)
        .map_err(|error| TokenError(format!("cannot read {}: {error}", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(TokenError(format!("{} is empty", path.display())));
    }
    Ok(Some(Token::new(
        text.to_string(),
        Held::File(path.to_path_buf()),
    )))
}

/// Writes a new random token to `path` (mode 0600, in a directory only the user can
/// enter when the host creates it), replacing a file left by an earlier run.
fn write_new(path: &Path) -> Result<Token, TokenError> {
    let fail = |what: &str, error: std::io::Error| {
        TokenError(format!(
            "cannot {what} {}: {error}; {HOW_TO_SET}",
            path.display()
        ))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("create the directory of", e))?;
    }
    // A directory others can write to would let them swap the file for their own.
    let meta = fs::metadata(dir).map_err(|e| fail("inspect the directory of", e))?;
    // SAFETY: geteuid only reads the process's effective user id.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(TokenError(format!(
            "{} is not a private directory of this user (owned by it, writable only by it); {HOW_TO_SET}",
            dir.display()
        )));
    }
    let text = random_text();
    // Write aside, then rename: a reader never sees half a token, and the file is 0600
    // from its creation on.
    let staging = dir.join(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&staging);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .map_err(|e| fail("write", e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| fail("write", e))?;
    fs::rename(&staging, path).map_err(|e| fail("write", e))?;
    Ok(Token::new(text, Held::File(path.to_path_buf())))
}

/// 256 random bits, hex.
fn random_text() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_token_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin-1.token");
        let written = for_host(&TokenSource::File(path.clone()), 1).unwrap();
        assert_eq!(written.expose().len(), 64);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // An existing file (a mounted Secret) is read, not replaced.
        let again = for_host(&TokenSource::File(path.clone()), 1).unwrap();
        assert_eq!(again.expose(), written.expose());
        assert!(written.matches(again.expose()));
    }

    #[test]
    fn only_the_exact_token_matches() {
        let token = Token::new("0123456789abcdef0123".into(), Held::Environment);
        assert!(token.matches("0123456789abcdef0123"));
        assert!(!token.matches("0123456789abcdef012"));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("0123"));
    }
}
