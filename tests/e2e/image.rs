//! The container image: `scripts/image.sh` packages the `sluice` binary FROM scratch,
//! and the demo pipeline runs in a container against the test broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

/// The repository's root.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The containers.conf `scripts/image.sh` writes for podman (runc, cgroupfs, no
/// default ulimits), unless `CONTAINERS_CONF` names another.
fn containers_conf() -> PathBuf {
    if let Some(conf) = std::env::var_os("CONTAINERS_CONF") {
        return conf.into();
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".config"));
    config.join("sluice/containers.conf")
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", containers_conf())
        .output()
        .unwrap_or_else(|e| panic!("running podman {args:?}: {e}"))
}

/// `podman ARGS` that must succeed; returns its stdout.
fn podman_ok(args: &[&str]) -> String {
    let output = podman(args);
    assert!(
        output.status.success(),
        "podman {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Removes the test's container and image whatever happens.
struct Cleanup {
    image: String,
    container: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = podman(&["logs", &self.container]);
            eprintln!(
                "--- container log ---\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        podman(&["rm", "--force", &self.container]);
        podman(&["rmi", "--force", &self.image]);
    }
}

#[test]
fn the_demo_pipeline_runs_in_the_scratch_image() {
    // Checked first, so a missing engine fails here with what to do, not later.
    let installed = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        installed,
        "podman is not installed: this test builds the container image with it. Install it \
         (Debian: apt-get install podman runc; scripts/deploy-tools.sh does it) and run again"
    );

    let tag = unique("localhost/sluice-e2e").to_lowercase();
    let image = format!("{tag}:test");
    let container = unique("sluice-e2e");
    let _cleanup = Cleanup {
        image: image.clone(),
        container: container.clone(),
    };
    // The binary under test, stripped by the script: what the image holds is what
    // these tests run.
    let built = Command::new(repository().join("scripts/image.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_sluice"), "--tag", &image])
        .env("CONTAINERS_CONF", containers_conf())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "scripts/image.sh failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    // Small: beside the binary only the libraries, the loader and the CA bundle
    // (about 9 MB on Debian 12).
    let stripped = workdir();
    let binary = stripped.path().join("sluice");
    let strip = Command::new("strip")
        .arg("-o")
        .arg(&binary)
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .status()
        .unwrap();
    assert!(strip.success());
    let binary_size = std::fs::metadata(&binary).unwrap().len();
    let image_size: u64 = podman_ok(&["image", "inspect", &image, "--format", "{{.Size}}"])
        .parse()
        .unwrap();
    assert!(
        image_size < binary_size + 15_000_000,
        "the image takes {image_size} bytes for a {binary_size}-byte binary"
    );
    let config = podman_ok(&[
        "image",
        "inspect",
        &image,
        "--format",
        "{{.Config.User}} {{.Config.ExposedPorts}} {{len .RootFS.Layers}}",
    ]);
    assert_eq!(
        config, "65532:65532 map[9464/tcp:{}] 2",
        "user, exposed port and layers of the image"
    );

    // The demo pipeline (docs/examples/stocks.toml), on topics of its own.
    let (input, output, group) = (unique("img-in"), unique("img-out"), unique("img-g"));
    create_topic(&input, 6);
    create_topic(&output, 6);
    let demo = std::fs::read_to_string(repository().join("docs/examples/stocks.toml")).unwrap();
    let pipeline = demo
        .replace("\"stocks-in\"", &format!("\"{input}\""))
        .replace("\"stocks-out\"", &format!("\"{output}\""))
        .replace("\"source-group\"", &format!("\"{group}\""))
        .replace("127.0.0.1:9092", &bootstrap());
    assert_ne!(pipeline, demo, "the demo pipeline's topics were renamed");
    let dir = workdir();
    write_file(dir.path(), "sluice.toml", &pipeline);
    // The container's user is not the test's: the mount must be readable by others.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.path().join("sluice.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    const RECORDS: i64 = 1_700;
    let generated = sluice(&[
        "generate",
        "--bootstrap-servers",
        &bootstrap(),
        "--topic",
        &input,
        "--count",
        &RECORDS.to_string(),
        "--rate",
        "0",
    ])
    .output()
    .unwrap();
    assert!(generated.status.success(), "{generated:?}");

    let admin = free_address();
    let mount = format!("{}:/etc/sluice:ro", dir.path().display());
    podman_ok(&[
        "run",
        "--detach",
        "--name",
        &container,
        "--network",
        "host",
        "--env",
        &format!("SLUICE_ADMIN={admin}"),
        "--volume",
        &mount,
        &image,
    ]);
    let running = || podman_ok(&["inspect", &container, "--format", "{{.State.Running}}"]);
    wait_until(
        "the demo's records in the output topic",
        Duration::from_secs(120),
        || {
            assert_eq!(running(), "true", "the container stopped");
            total(&end_offsets(&output)) >= RECORDS
        },
    );
    assert_eq!(
        end_offsets(&output),
        end_offsets(&input),
        "records per partition, input and output"
    );
    let (code, ready) = admin_ready(&admin, 60);
    assert_eq!(code, 200, "the admin endpoint in the container: {ready}");

    // The ECS health check: the binary asks its own admin endpoint (no shell in the image).
    podman_ok(&[
        "exec", &container, "sluice", "plugin", "status", "--admin", &admin,
    ]);

    // SIGTERM, as Kubernetes stops a pod: the host commits and exits 0.
    podman_ok(&["stop", "--time", "40", &container]);
    let exit = podman_ok(&["inspect", &container, "--format", "{{.State.ExitCode}}"]);
    assert_eq!(exit, "0", "the host's exit code after SIGTERM");
    // HOME belongs to the image's user: the compilation cache and the admin token work.
    let logs = podman(&["logs", &container]);
    let log = String::from_utf8_lossy(&logs.stderr);
    assert!(log.contains("Stopped cleanly."), "{log}");
    assert!(!log.contains("Permission denied"), "{log}");
    let mut written = end_offsets(&input);
    written.retain(|_, end| *end > 0);
    assert_eq!(
        committed(&group, &input),
        written,
        "offsets committed at the stop"
    );
}
