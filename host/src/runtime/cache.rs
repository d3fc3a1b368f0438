//! The compilation cache: compiled components on disk, loaded only when Sluice can
//! trust them.
//!
//! Loading a compiled component runs its bytes as native code, so a cache entry is a
//! program. Whoever can write an entry runs code in the host. Two checks stand between
//! the disk and `Component::deserialize`:
//! - the directory must be owned by the running user and not writable by group or
//!   others; otherwise the cache is off for this process (one warning says why);
//! - every entry is sealed with HMAC-SHA256 under a per-user key kept outside the
//!   cache directory (`cache.key` in Sluice's configuration directory, mode 0600). The
//!   tag covers the entry's name, which is derived from the component's bytes, the
//!   compiler tier and the engine settings: an entry of another component, or one
//!   sealed for another tier, fails the check like any altered byte. A failed entry
//!   is deleted and compiled again, with a warning naming it.
//!
//! wasmtime's own cache (`Config::cache`) is not used: it hands the bytes of its
//! entries straight to the loader, with nothing to check them by.
//!
//! An entry is the 32-byte tag followed by the zstd-compressed artifact of
//! `Component::serialize`. The compiler process (see `child`) writes the same format
//! to the host, sealed with the key it was handed, and the host checks it the same way
//! before loading it.
//!
//! Where the cache is, how big it may grow and where its key is kept come from the
//! environment (`from_environment`).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;

use super::Tier;

/// The length of the key and of an entry's tag.
pub(crate) const KEY_LEN: usize = 32;
const TAG_LEN: usize = 32;

/// What the tag of an entry covers before its name and payload: a change of format
/// makes every older entry fail its check rather than be misread.
const DOMAIN: &[u8] = b"sluice compiled component v1\0";

/// The file name suffix of entries; other files in the directory are left alone.
const SUFFIX: &str = "code";

/// How hard entries are compressed: zstd's default level, as wasmtime's own cache.
const COMPRESSION_LEVEL: i32 = 3;

/// The key entries are sealed with.
pub(crate) type Key = [u8; KEY_LEN];

/// The name of the entry of `bytes` compiled by `tier` with `engine`'s settings: the
/// SHA-256 of all three and of Sluice's version, hex.
pub(crate) fn entry_name(engine: &Engine, tier: Tier, bytes: &[u8]) -> String {
    struct Sha(Sha256);
    impl std::hash::Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only written to")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut sha = Sha(Sha256::new());
    sha.0.update(DOMAIN);
    // This build: the engine settings below leave out nothing of how it compiles.
    sha.0.update(env!("CARGO_PKG_VERSION").as_bytes());
    sha.0.update(tier.as_str().as_bytes());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut sha);
    sha.0.update((bytes.len() as u64).to_le_bytes());
    sha.0.update(bytes);
    sha.0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mac(key: &Key, name: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(DOMAIN);
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac
}

/// The sealed form of `artifact` under `name`: tag, then the compressed artifact.
pub(crate) fn seal(key: &Key, name: &str, artifact: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut sealed = vec![0; TAG_LEN];
    zstd::stream::copy_encode(artifact, &mut sealed, COMPRESSION_LEVEL)?;
    let mut mac = mac(key, name);
    mac.update(&sealed[TAG_LEN..]);
    sealed[..TAG_LEN].copy_from_slice(&mac.finalize().into_bytes());
    Ok(sealed)
}

/// The artifact sealed in `sealed` under `name`, if its tag is the one `key` gives;
/// the tag is checked (in constant time) before anything else reads the payload.
pub(crate) fn unseal(key: &Key, name: &str, sealed: &[u8]) -> Result<Vec<u8>, Unsealed> {
    if sealed.len() < TAG_LEN {
        return Err(Unsealed::Forged);
    }
    let (tag, payload) = sealed.split_at(TAG_LEN);
    let mut mac = mac(key, name);
    mac.update(payload);
    mac.verify_slice(tag).map_err(|_| Unsealed::Forged)?;
    zstd::stream::decode_all(payload).map_err(Unsealed::Unreadable)
}

/// Why a sealed artifact was not accepted.
#[derive(Debug)]
pub(crate) enum Unsealed {
    /// Its tag is not the one the key gives: not written by this user's Sluice for
    /// this component.
    Forged,
    /// Authentic, but not decompressible (not expected to happen).
    Unreadable(std::io::Error),
}

impl std::fmt::Display for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsealed::Forged => f.write_str("its integrity check (HMAC-SHA256) failed"),
            Unsealed::Unreadable(error) => write!(f, "it could not be decompressed: {error}"),
        }
    }
}

/// A trusted directory of sealed entries.
pub(crate) struct CodeCache {
    dir: PathBuf,
    key: Key,
    max_bytes: u64,
}

impl CodeCache {
    /// Opens the cache in `dir` with the key in `key_file` (made if missing), keeping
    /// about `max_bytes`. Fails, naming the reason, when either cannot be trusted.
    fn open(dir: &Path, key_file: &Path, max_bytes: u64) -> anyhow::Result<CodeCache> {
        create_private_dir(dir)?;
        check_private(dir, "directory")?;
        let key = read_or_make_key(key_file, dir)?;
        Ok(CodeCache {
            dir: dir.to_path_buf(),
            key,
            max_bytes,
        })
    }

    pub(crate) fn directory(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{SUFFIX}"))
    }

    /// The artifact of entry `name`, if there is one and it is authentic. An entry that
    /// fails its check is deleted, with a warning naming it.
    pub(crate) fn get(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path(name);
        let sealed = match read_entry(&path, self.max_bytes) {
            Ok(Some(sealed)) => sealed,
            Ok(None) => return None,
            Err(error) => {
                self.reject(&path, &format!("it could not be read: {error}"));
                return None;
            }
        };
        match unseal(&self.key, name, &sealed) {
            Ok(artifact) => {
                // Recently used entries are the last ones evicted.
                if let Ok(file) = File::options().write(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Some(artifact)
            }
            Err(reason) => {
                self.reject(&path, &reason.to_string());
                None
            }
        }
    }

    /// Deletes an entry that cannot be used, saying why.
    fn reject(&self, path: &Path, reason: &str) {
        let _ = std::fs::remove_file(path);
        tracing::warn!(
            entry = %path.display(),
            "A compiled plugin in the compilation cache was rejected ({reason}); it is not run, and the plugin is compiled again to replace it."
        );
    }

    /// Deletes entry `name`, which was authentic but not loadable here, saying why.
    pub(crate) fn reject_named(&self, name: &str, reason: &str) {
        self.reject(&self.path(name), reason);
    }

    /// Stores `sealed` (as [`seal`] makes it, under this cache's key) as entry `name`,
    /// replacing any entry of that name, then evicts the least recently used entries
    /// beyond the size limit. Failures cost only a later compile.
    pub(crate) fn put(&self, name: &str, sealed: &[u8]) {
        let written = (|| {
            let mut file = tempfile::Builder::new()
                .prefix(".entry-")
                .permissions(std::fs::Permissions::from_mode(0o600))
                .tempfile_in(&self.dir)?;
            file.write_all(sealed)?;
            file.persist(self.path(name))?;
            anyhow::Ok(())
        })();
        if let Err(error) = written {
            tracing::debug!(dir = %self.dir.display(), "Could not write to the compilation cache: {error:#}");
        }
        self.evict();
    }

    fn evict(&self) {
        let Ok(read) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = read
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == SUFFIX))
            .filter_map(|entry| {
                let metadata = entry.metadata().ok()?;
                Some((metadata.modified().ok()?, metadata.len(), entry.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// Sealed bytes of an entry, none when there is no entry. An entry larger than the
/// whole cache may be is not read.
fn read_entry(path: &Path, max_bytes: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.len() > max_bytes {
        return Err(std::io::Error::other(format!(
            "not a regular file of at most {max_bytes} bytes"
        )));
    }
    let mut sealed = Vec::with_capacity(metadata.len() as usize);
    file.take(max_bytes).read_to_end(&mut sealed)?;
    Ok(Some(sealed))
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Checks that `path` belongs to the running user and that nobody else may write it.
fn check_private(path: &Path, what: &str) -> anyhow::Result<()> {
    let metadata = std::fs::metadata(path)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != me {
        anyhow::bail!(
            "the {what} is owned by uid {}, not by the user running Sluice (uid {me}); whoever owns it could place native code there",
            metadata.uid()
        );
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "the {what} is writable by group or others (mode {mode:03o}); anyone who can write it could place native code there. Make it private (chmod 700)"
        );
    }
    Ok(())
}

/// The key in `key_file`, made (32 random bytes, mode 0600) if there is none. The key
/// must be private to the running user and must not live in the cache directory.
fn read_or_make_key(key_file: &Path, cache_dir: &Path) -> anyhow::Result<Key> {
    let parent = key_file
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    if let (Ok(parent), Ok(cache_dir)) = (parent.canonicalize(), cache_dir.canonicalize())
        && parent.starts_with(&cache_dir)
    {
        anyhow::bail!(
            "the cache key {} is inside the cache directory; keep it elsewhere (SLUICE_CACHE_KEY_FILE)",
            key_file.display()
        );
    }
    if !key_file.exists() {
        make_key(key_file, parent)?;
    }
    let mut file = File::open(key_file)?;
    let metadata = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != me || metadata.mode() & 0o077 != 0 {
        anyhow::bail!(
            "the cache key {} must belong to uid {me} and be readable by it alone (chmod 600)",
            key_file.display()
        );
    }
    let mut key = [0; KEY_LEN];
    let mut rest = Vec::new();
    file.read_exact(&mut key)
        .and_then(|()| file.read_to_end(&mut rest))
        .map_err(|e| anyhow::anyhow!("reading the cache key {}: {e}", key_file.display()))?;
    if !rest.is_empty() {
        anyhow::bail!(
            "the cache key {} is not {KEY_LEN} bytes long; delete it to make a new one",
            key_file.display()
        );
    }
    Ok(key)
}

/// Writes a new key to `key_file` atomically: a process starting at the same time
/// reads either no key or the whole of one, and only one key is ever made.
fn make_key(key_file: &Path, parent: &Path) -> anyhow::Result<()> {
    let key: Key = rand::random();
    let mut temporary = tempfile::Builder::new()
        .prefix(".cache.key-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(parent)?;
    temporary.write_all(&key)?;
    temporary.as_file().sync_all()?;
    match std::fs::hard_link(temporary.path(), key_file) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(anyhow::anyhow!(
            "making the cache key {}: {error}",
            key_file.display()
        )),
    }
}

/// Where compiled components are kept between runs: `SLUICE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/sluice/compiled`, else `$HOME/.cache/sluice/compiled`.
/// `SLUICE_CACHE_DIR=off` turns the cache off.
fn compile_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_CACHE_DIR") {
        Some(dir) if dir == "off" => None,
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .map(|dir| dir.join("sluice").join("compiled")),
    }
}

/// The compilation cache's size by default (wasmtime's own). The JavaScript and Python
/// examples take 9 to 12 MB there per compiler (compressed), so this keeps some 20
/// versions of both codes.
const CACHE_MAX_MB: u64 = 512;

/// The compilation cache's size, from `SLUICE_CACHE_MAX_MB` (a whole number of MB), in
/// bytes. Beyond it, wasmtime deletes the least recently used compilations.
fn cache_max_bytes(value: Option<&std::ffi::OsStr>) -> anyhow::Result<u64> {
    let Some(value) = value else {
        return Ok(CACHE_MAX_MB << 20);
    };
    value
        .to_str()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|mb| (1..=(u64::MAX >> 20)).contains(mb))
        .map(|mb| mb << 20)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "SLUICE_CACHE_MAX_MB must be a whole number of MB above 0, not `{}`",
                value.to_string_lossy()
            )
        })
}

/// Where the key that seals compilation cache entries is kept, outside the cache:
/// `SLUICE_CACHE_KEY_FILE`, else `$XDG_CONFIG_HOME/sluice/cache.key`, else
/// `$HOME/.config/sluice/cache.key`.
fn cache_key_file() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_CACHE_KEY_FILE") {
        Some(file) if !file.is_empty() => Some(PathBuf::from(file)),
        _ => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
            .map(|dir| dir.join("sluice").join("cache.key")),
    }
}

/// The compilation cache, or none (with one warning per process) when its directory,
/// key or size is unusable or untrustworthy: plugins are then compiled at every start,
/// which is slower but correct.
pub(super) fn from_environment() -> Option<Arc<CodeCache>> {
    static CACHE: OnceLock<Option<Arc<CodeCache>>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = compile_cache_dir()?;
            let opened = (|| {
                let max_bytes =
                    cache_max_bytes(std::env::var_os("SLUICE_CACHE_MAX_MB").as_deref())?;
                let key_file = cache_key_file().ok_or_else(|| {
                    anyhow::anyhow!("no place for its key: set SLUICE_CACHE_KEY_FILE or HOME")
                })?;
                CodeCache::open(&dir, &key_file, max_bytes)
            })();
            match opened {
                Ok(cache) => Some(Arc::new(cache)),
                Err(error) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = format!("{error:#}"),
                        "The compilation cache is unusable; plugins are compiled at every start. Set SLUICE_CACHE_DIR to a directory only this user can write, or to `off`, and SLUICE_CACHE_MAX_MB, if set, to a number of MB."
                    );
                    None
                }
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_size_is_a_number_of_megabytes_and_anything_else_is_named() {
        use std::ffi::OsStr;
        assert_eq!(cache_max_bytes(None).unwrap(), 512 << 20);
        assert_eq!(cache_max_bytes(Some(OsStr::new("300"))).unwrap(), 300 << 20);
        for bad in ["0", "-5", "2GB", "", "1.5"] {
            let error = cache_max_bytes(Some(OsStr::new(bad)))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("SLUICE_CACHE_MAX_MB") && error.contains(&format!("`{bad}`")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_sealed_artifact_opens_only_under_its_own_name_and_key() {
        let key = [7; KEY_LEN];
        let sealed = seal(&key, "a", b"native code").unwrap();
        assert_eq!(unseal(&key, "a", &sealed).unwrap(), b"native code");
        assert!(matches!(unseal(&key, "b", &sealed), Err(Unsealed::Forged)));
        assert!(matches!(
            unseal(&[8; KEY_LEN], "a", &sealed),
            Err(Unsealed::Forged)
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(unseal(&key, "a", &flipped), Err(Unsealed::Forged)));
        assert!(matches!(unseal(&key, "a", b"short"), Err(Unsealed::Forged)));
    }

    #[test]
    fn a_cache_directory_others_may_write_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let key = dir.path().join("config/cache.key");
        CodeCache::open(&cache, &key, 1 << 20).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().mode() & 0o777,
            0o600,
            "the key is private"
        );
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = CodeCache::open(&cache, &key, 1 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("writable by group or others"), "{error}");
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cache.key");
        let first = CodeCache::open(&dir.path().join("c"), &key, 1 << 20).unwrap();
        let second = CodeCache::open(&dir.path().join("c"), &key, 1 << 20).unwrap();
        assert_eq!(first.key(), second.key());
        let error = CodeCache::open(&dir.path().join("k"), &dir.path().join("k/cache.key"), 1)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("inside the cache directory"), "{error}");
    }

    #[test]
    fn a_forged_entry_is_rejected_and_deleted_and_the_oldest_go_beyond_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let cache =
            CodeCache::open(&dir.path().join("c"), &dir.path().join("key"), 1 << 20).unwrap();
        let sealed = seal(cache.key(), "one", b"code").unwrap();
        cache.put("one", &sealed);
        assert_eq!(cache.get("one").unwrap(), b"code");
        // Another entry's authentic bytes under this name.
        cache.put("two", &seal(cache.key(), "two", b"other").unwrap());
        std::fs::copy(cache.path("two"), cache.path("one")).unwrap();
        assert!(cache.get("one").is_none());
        assert!(!cache.path("one").exists(), "the forged entry is deleted");
        assert_eq!(cache.get("two").unwrap(), b"other");
    }
}
