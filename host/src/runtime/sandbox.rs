//! What a plugin may reach outside its own memory: by default only what the WIT world
//! gives it (the batch, its settings, the `log` and `state` imports) plus stdout and
//! stderr into the host log, wall and monotonic clocks, and random numbers. Files, sockets, name
//! lookup, environment variables and process arguments are denied; the configuration
//! can grant named environment variables and read-only directories.
//!
//! Strategy: WASI is linked so that components built with a standard library
//! instantiate, and every capability it could hand out is set here, once, on purpose:
//! - files: a guest opens files only through preopened directories; it gets none but
//!   the granted ones, each read-only. Without a preopen the guest's libc fails the
//!   open itself, so the host never sees the attempt: a plugin that wants it seen
//!   reports it through `log` or a per-record error.
//! - network: creating a TCP or UDP socket and resolving a name are answered
//!   "access denied" by the host, which logs each attempt with the plugin's name. The
//!   denial comes before any OS socket exists, so a plugin cannot use up the host's
//!   file descriptors. The socket address check behind them denies (and logs) every
//!   address as a second line of defence.
//! - environment and arguments: only granted variables, never any argument.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::{Linker, Val};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::HostState;
use super::stdio::PluginOutput;

/// The WASI sockets version wasmtime-wasi defines; guests importing any earlier 0.2
/// version are linked against it. If an upgrade changes it, the replacements below
/// would land beside WASI's functions instead of over them; the network tests here
/// catch that (the denial would no longer be logged).
const SOCKETS: &str = "wasi:sockets@0.2.12";

/// What the configuration grants a plugin beyond the WIT world.
#[derive(Clone, Default)]
pub struct Sandbox {
    /// Environment variables the plugin sees, with the values read from the host.
    env: Vec<(String, String)>,
    /// Host directories the plugin may read.
    dirs: Vec<DirGrant>,
}

/// A host directory mounted read-only at a path inside the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirGrant {
    pub(crate) host: PathBuf,
    pub(crate) guest: String,
}

// Values of granted variables may be secrets: print names only.
impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("dirs", &self.dirs)
            .finish()
    }
}

impl Sandbox {
    /// Grants the environment variables `env` (name and value) and the directories
    /// `dirs`.
    pub(crate) fn new(env: Vec<(String, String)>, dirs: Vec<DirGrant>) -> Self {
        Sandbox { env, dirs }
    }

    /// The WASI context of one instance of `plugin`: the grants and nothing else.
    pub(super) fn wasi(
        &self,
        plugin: &Arc<str>,
        stdout: PluginOutput,
        stderr: PluginOutput,
    ) -> Result<WasiCtx, String> {
        let mut builder = WasiCtxBuilder::new();
        // stdin stays closed (the default): records arrive through `process` only.
        builder.stdout(stdout).stderr(stderr);
        // Only the granted variables; never `inherit_env`, which would hand over
        // every secret in the host's environment.
        builder.envs(&self.env);
        // No arguments (the default, never `inherit_args`): the host's command line
        // names its configuration and may carry credentials.
        for dir in &self.dirs {
            // Read-only: a plugin must not change what other plugins or the host read.
            builder
                .preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
                .map_err(|e| {
                    format!(
                        "cannot open the granted directory {} (for {}): {e:#}",
                        dir.host.display(),
                        dir.guest
                    )
                })?;
        }
        // Sockets: both are off in wasmtime-wasi's defaults; set here so that the
        // denial does not hang on a library default. `deny_network` also answers the
        // socket constructors before these flags are consulted.
        builder.allow_tcp(false).allow_udp(false);
        // Name lookup would send the plugin's chosen names to the host's resolver.
        builder.allow_ip_name_lookup(false);
        let name = plugin.clone();
        builder.socket_addr_check(move |address: SocketAddr, usage: SocketAddrUse| {
            tracing::warn!(plugin = %name, %address, ?usage, "Plugin denied network access: plugins may not use sockets.");
            Box::pin(async { false })
        });
        // Clocks and random numbers stay the host's (the default): they reveal nothing
        // about the host that matters, and standard libraries need them (hash maps
        // seed from random, timestamps come from the wall clock).
        Ok(builder.build())
    }
}

/// Replaces the WASI functions that would create a socket or resolve a name with ones
/// that log the attempt and answer `access-denied`, so each attempt is visible in the
/// host's log and no OS socket is ever opened for a plugin.
pub(super) fn deny_network(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    for (interface, function, what) in [
        ("tcp-create-socket", "create-tcp-socket", "a TCP socket"),
        ("udp-create-socket", "create-udp-socket", "a UDP socket"),
        ("ip-name-lookup", "resolve-addresses", "a name lookup"),
    ] {
        let (package, version) = SOCKETS.split_once('@').expect("a versioned package");
        let name = format!("{package}/{interface}@{version}");
        linker
            .instance(&name)?
            .func_new(function, move |mut store, _ty, params, results| {
                // A borrowed handle passed to a dynamic host function must be ended
                // before it returns (resolve-addresses borrows the network).
                for param in params {
                    if let Val::Resource(handle) = param {
                        handle.resource_drop(&mut store)?;
                    }
                }
                let state = store.data_mut();
                state.network_denials += 1;
                // resolve-addresses(network, name): the name is worth reporting.
                let target = params
                    .iter()
                    .find_map(|p| match p {
                        Val::String(s) => Some(s.clone()),
                        _ => None,
                    });
                // The first attempt of an instance is a warning; a plugin retrying on
                // every record must not flood the log.
                if state.network_denials == 1 {
                    tracing::warn!(
                        plugin = %state.plugin,
                        name = target.as_deref().map(tracing::field::display),
                        "Plugin denied {what}: plugins may not use the network; further attempts are logged at debug level."
                    );
                } else {
                    tracing::debug!(plugin = %state.plugin, name = target.as_deref().map(tracing::field::display), "Plugin denied {what}.");
                }
                results[0] = Val::Result(Err(Some(Box::new(Val::Enum("access-denied".into())))));
                Ok(())
            })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;

    use sluice_sdk::batch::{Header, InputBatch, InputWriter, Op, OutputReader, RecordFields};

    use super::*;
    use crate::runtime::{Instance, Limits, PluginError, Runtime};

    fn plugin(name: &str) -> Vec<u8> {
        let path = Path::new(env!("SLUICE_TEST_PLUGIN_DIR")).join(format!("{name}.wasm"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn start(
        name: &str,
        limits: Limits,
        sandbox: &Sandbox,
        config: &[(&str, &str)],
    ) -> Result<Instance, PluginError> {
        let prepared = Runtime::new().unwrap().load(&plugin(name)).unwrap();
        let config: Vec<(String, String)> = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Instance::start(
            &prepared,
            name.into(),
            limits,
            sandbox,
            &config,
            crate::state::StateStore::shared(),
        )
    }

    /// Runs one record with value `v` through the snoop plugin and returns what it
    /// reported.
    fn snoop(sandbox: &Sandbox, probe: &str, target: &str) -> String {
        let mut instance = start(
            "sluice_test_snoop",
            Limits::default(),
            sandbox,
            &[(probe, target)],
        )
        .unwrap();
        let mut writer = InputWriter::new();
        writer.push(RecordFields {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            value: Some(b"v"),
            headers: std::iter::empty::<Header<'_>>(),
        });
        let input = writer.finish().to_vec();
        let batch = InputBatch::parse(&input).unwrap();
        let output = instance.process(&input, &batch).unwrap();
        let ops: Vec<Op<'_>> = OutputReader::parse(&output, 1)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        match ops.as_slice() {
            [Op::ReplaceValue { value: Some(v), .. }] => String::from_utf8(v.to_vec()).unwrap(),
            other => panic!("unexpected output {other:?}"),
        }
    }

    #[test]
    fn a_plugin_cannot_read_host_files() {
        let got = snoop(&Sandbox::default(), "read", "/etc/passwd");
        assert!(
            got.starts_with("v|read:denied: read /etc/passwd: "),
            "{got}"
        );
        assert!(!got.contains("root:"), "{got}");
    }

    #[test]
    fn a_plugin_cannot_open_a_tcp_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (got, log) = logged(|| snoop(&Sandbox::default(), "connect", &address));
        assert!(
            log.contains("Plugin denied a TCP socket") && log.contains("plugin=sluice_test_snoop"),
            "{log}"
        );
        assert!(
            got.starts_with(&format!("v|connect:denied: connect {address}: ")),
            "{got}"
        );
        assert!(got.contains("ermission denied"), "{got}");
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing connected"
        );
    }

    /// Runs `f` with the host's log captured; returns its result and the log text.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        (result, text)
    }

    struct Writer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_name_lookup_is_denied_and_logged_with_the_plugin_and_the_name() {
        let (got, log) = logged(|| snoop(&Sandbox::default(), "connect", "localhost:9"));
        assert_eq!(
            got,
            "v|connect:denied: connect localhost:9: Permission denied (os error 2)"
        );
        assert!(
            log.contains("WARN") && log.contains("Plugin denied a name lookup"),
            "{log}"
        );
        assert!(
            log.contains("plugin=sluice_test_snoop") && log.contains("name=localhost"),
            "{log}"
        );
    }

    #[test]
    fn a_plugin_sees_no_host_environment_variable_and_no_argument() {
        assert!(std::env::var_os("PATH").is_some(), "the host has PATH");
        let got = snoop(&Sandbox::default(), "env", "PATH");
        assert_eq!(
            got,
            "v|env:denied: env PATH: environment variable not found (0 visible)"
        );
        let got = snoop(&Sandbox::default(), "args", "");
        assert_eq!(got, "v|args:denied: no arguments");
    }

    #[test]
    fn a_granted_variable_and_directory_are_visible_and_the_directory_is_read_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("table.csv"), "id,name\n1,one\n").unwrap();
        let sandbox = Sandbox::new(
            vec![("REGION".into(), "eu-west-1".into())],
            vec![DirGrant {
                host: dir.path().to_path_buf(),
                guest: "/ref".into(),
            }],
        );
        assert_eq!(
            snoop(&sandbox, "env", "REGION"),
            "v|env:allowed: REGION=eu-west-1 (1 visible)"
        );
        assert_eq!(
            snoop(&sandbox, "read", "/ref/table.csv"),
            "v|read:allowed: id,name\n1,one"
        );
        let got = snoop(&sandbox, "write", "/ref/new.txt");
        assert!(
            got.starts_with("v|write:denied: write /ref/new.txt: "),
            "{got}"
        );
        assert!(!dir.path().join("new.txt").exists(), "nothing written");
        let got = snoop(&sandbox, "read", "/ref/../../etc/passwd");
        assert!(got.starts_with("v|read:denied: "), "{got}");
    }

    #[test]
    fn a_plugin_that_grows_without_bound_is_stopped_at_the_memory_limit() {
        let limits = Limits {
            max_memory_bytes: 32 << 20,
            ..Limits::default()
        };
        let mut instance = start("sluice_test_hog", limits, &Sandbox::default(), &[]).unwrap();
        let mut writer = InputWriter::new();
        writer.push(RecordFields {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            value: Some(b"v"),
            headers: std::iter::empty::<Header<'_>>(),
        });
        let input = writer.finish().to_vec();
        let batch = InputBatch::parse(&input).unwrap();
        let error = instance.process(&input, &batch).unwrap_err();
        assert!(matches!(error, PluginError::Memory { limit, .. } if limit == 32 << 20));
        let text = error.to_string();
        assert!(
            text.starts_with("exceeded its memory limit of 32 MiB (it asked for "),
            "{text}"
        );
        assert!(text.contains("plugin.max_memory_mb"), "{text}");
    }

    #[test]
    fn a_plugin_that_grows_without_bound_in_init_fails_to_start() {
        let limits = Limits {
            max_memory_bytes: 32 << 20,
            ..Limits::default()
        };
        let error = match start(
            "sluice_test_hog",
            limits,
            &Sandbox::default(),
            &[("hog_in", "init")],
        ) {
            Ok(_) => panic!("started"),
            Err(error) => error,
        };
        assert!(
            matches!(error, PluginError::Memory { limit, .. } if limit == 32 << 20),
            "{error}"
        );
    }

    #[test]
    fn granted_values_are_not_printed() {
        let sandbox = Sandbox::new(vec![("TOKEN".into(), "s3cret".into())], Vec::new());
        let shown = format!("{sandbox:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
