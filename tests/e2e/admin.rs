//! The admin endpoint as an attacker on the host sees it: a page after DNS rebinding, a
//! request without the token, candidates that are not component files (a device, a
//! FIFO, a secret file, a directory, a missing path), and an endpoint beyond loopback
//! without a token. None of them changes the live plugin or holds the endpoint.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// A host running tag-a (unwatched) with its admin endpoint on a free loopback port,
/// `plugin_extra` added to its `[plugin]` table, `env` to its environment. Returns the
/// host, its address, and the directory holding a.wasm and b.wasm.
fn host(
    dir: &Path,
    prefix: &str,
    plugin_extra: &str,
    env: &[(&str, &str)],
) -> (Sluice, String, PathBuf) {
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, 1);
    create_topic(&output, 1);
    let plugins = dir.join("allowed");
    std::fs::create_dir_all(&plugins).unwrap();
    let a = plugins.join("a.wasm");
    std::fs::copy(test_plugin("sluice_test_tag_a"), &a).unwrap();
    std::fs::copy(test_plugin("sluice_test_tag_b"), plugins.join("b.wasm")).unwrap();
    let tail = format!(
        "[plugin]\npath = \"{}\"\nwatch = false\n{plugin_extra}\n",
        a.display()
    );
    let config = write_file(
        dir,
        "admin.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let admin = free_address();
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command
        .env("SLUICE_ADMIN", &admin)
        .envs(env.iter().copied());
    let mut host = Sluice::spawn(dir, command);
    host.wait_for_log("Admin endpoint listening", Duration::from_secs(60));
    (host, admin, plugins)
}

/// The token the host wrote for its port, as `sluice plugin swap` finds it.
fn token(admin: &str) -> String {
    let port = admin.rsplit_once(':').unwrap().1.parse().unwrap();
    let path = sluice_host::admin::token::default_file(port).unwrap();
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// One HTTP/1.1 request written by hand, so that every header is the test's choice
/// (a rebinding page's `Host`). Returns the status code and the body.
fn request(
    admin: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading all of a large body.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn swap_body(path: &Path) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "path": path })).unwrap()
}

fn live_digest(admin: &str) -> String {
    admin_status(admin)["live"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Swaps `path` in with the token; returns the status, the answer, and the time taken.
fn swap_with_token(admin: &str, token: &str, path: &Path) -> (u16, serde_json::Value, Duration) {
    let bearer = format!("Bearer {token}");
    let started = Instant::now();
    let (status, body) = request(
        admin,
        "POST",
        "/plugin/swap",
        &[
            ("Host", admin),
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ],
        &swap_body(path),
    );
    let answer = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, answer, started.elapsed())
}

#[test]
fn a_rebinding_page_or_a_request_without_the_token_changes_nothing() {
    let dir = workdir();
    let (mut host, admin, plugins) = host(dir.path(), "adm-auth", "", &[]);
    let b = plugins.join("b.wasm");
    let before = live_digest(&admin);
    let token = token(&admin);
    let bearer = format!("Bearer {token}");

    // What a page reaches after DNS rebinding: its own name in Host, its Origin, JSON;
    // even with the token it would not have.
    let (status, body) = request(
        &admin,
        "POST",
        "/plugin/swap",
        &[
            ("Host", "attacker.example"),
            ("Origin", "http://attacker.example"),
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ],
        &swap_body(&b),
    );
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("--admin-host"), "{body}");
    let port = admin.rsplit_once(':').unwrap().1;
    let (status, _) = request(
        &admin,
        "GET",
        "/status",
        &[("Host", &format!("attacker.example:{port}"))],
        b"",
    );
    assert_eq!(status, 421, "reading the status across origins");

    // The right Host but no token, or a wrong one.
    for authorization in [None, Some("Bearer not-the-token"), Some(token.as_str())] {
        let mut headers = vec![
            ("Host", admin.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(value) = authorization {
            headers.push(("Authorization", value));
        }
        let (status, body) = request(&admin, "POST", "/plugin/swap", &headers, &swap_body(&b));
        assert_eq!(status, 401, "{authorization:?}: {body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
    }
    // With the token: a form post (what a page sends without asking) and an oversized
    // body stay refused.
    let (status, _) = request(
        &admin,
        "POST",
        "/plugin/swap",
        &[
            ("Host", &format!("localhost:{port}")),
            ("Content-Type", "text/plain"),
            ("Authorization", &bearer),
        ],
        &swap_body(&b),
    );
    assert_eq!(status, 415);
    let (status, _) = request(
        &admin,
        "POST",
        "/plugin/swap",
        &[
            ("Host", &admin),
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ],
        &vec![b' '; 3 << 20],
    );
    assert_eq!(status, 413);
    assert_eq!(
        live_digest(&admin),
        before,
        "a refused request changed the plugin"
    );
    assert_eq!(admin_status(&admin)["swaps"], 0);

    // The read-only endpoints need no token.
    let (status, _) = request(&admin, "GET", "/metrics", &[("Host", &admin)], b"");
    assert_eq!(status, 200);

    // `sluice plugin swap` finds the token by itself.
    let out = sluice(&["plugin", "swap", b.to_str().unwrap(), "--admin", &admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(live_digest(&admin), file_digest(&b));
    assert!(host.terminate().success());
}

#[test]
fn an_admin_endpoint_beyond_loopback_needs_an_explicit_token() {
    let dir = workdir();
    let config = write_config(dir.path(), "adm-in", "adm-out", "adm-g", "");
    let port = free_address().rsplit_once(':').unwrap().1.to_string();
    let public = format!("0.0.0.0:{port}");
    let out = sluice(&["run", "--config", &config, "--admin", &public])
        .env_remove("SLUICE_ADMIN_TOKEN")
        .env_remove("SLUICE_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("listens beyond loopback") && stderr.contains("SLUICE_ADMIN_TOKEN"),
        "{stderr}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
        "the refused host listened"
    );

    // With a fixed token it listens, and the client sends the same token.
    let (input, output, group) = (
        unique("adm-pub-in"),
        unique("adm-pub-out"),
        unique("adm-pub-g"),
    );
    create_topic(&input, 1);
    create_topic(&output, 1);
    let config = write_config(dir.path(), &input, &output, &group, "");
    let fixed = "a-fixed-token-from-a-secret-0123456789";
    let mut command = sluice(&["run", "--config", &config, "--admin", &public]);
    command.env("SLUICE_ADMIN_TOKEN", fixed);
    let mut host = Sluice::spawn(dir.path(), command);
    host.wait_for_log("Admin endpoint listening", Duration::from_secs(60));
    assert!(
        host.log().contains("listens beyond loopback"),
        "{}",
        host.log()
    );
    let local = format!("127.0.0.1:{port}");
    let (status, _) = request(
        &local,
        "POST",
        "/plugin/swap",
        &[
            ("Host", &local),
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer wrong"),
        ],
        &swap_body(&test_plugin("sluice_test_tag_b")),
    );
    assert_eq!(status, 401);
    let b = test_plugin("sluice_test_tag_b");
    let out = sluice(&["plugin", "swap", b.to_str().unwrap(), "--admin", &local])
        .env("SLUICE_ADMIN_TOKEN", fixed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(live_digest(&local), file_digest(&b));
    assert!(host.terminate().success());
}

#[test]
fn candidates_that_are_not_component_files_are_refused_alike_and_at_once() {
    let dir = workdir();
    let (mut host, admin, plugins) = host(dir.path(), "adm-read", "", &[]);
    let token = token(&admin);
    let before = live_digest(&admin);

    let fifo = plugins.join("fifo.wasm");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let directory = plugins.join("sub.wasm");
    std::fs::create_dir(&directory).unwrap();
    let candidates = [
        PathBuf::from("/dev/zero"),
        fifo,
        directory,
        plugins.join("missing.wasm"),
        // A control character must not forge a line of the host's log.
        PathBuf::from("/nonexistent\nERROR FORGED log line"),
    ];
    let mut reasons = Vec::new();
    for candidate in &candidates {
        let (status, answer, took) = swap_with_token(&admin, &token, candidate);
        assert_eq!(status, 422, "{candidate:?}: {answer}");
        assert!(took < Duration::from_secs(2), "{candidate:?} took {took:?}");
        let reason = answer["reason"].as_str().unwrap().to_string();
        // The path the caller sent is repeated; nothing about what is there.
        let shown =
            sluice_host::plugin::escape_controls(&candidate.display().to_string()).into_owned();
        reasons.push(reason.replace(&shown, "PATH"));
        assert_eq!(live_digest(&admin), before, "{candidate:?} went live");
    }
    assert!(reasons.iter().all(|r| r == &reasons[0]), "{reasons:#?}");
    assert!(
        reasons[0].contains("not a readable regular file"),
        "{}",
        reasons[0]
    );
    // Reading /dev/zero would have taken gigabytes.
    let peak = peak_rss_kib(host.pid());
    assert!(peak < 400 * 1024, "peak RSS {peak} KiB");
    // The host's log names the precise reasons, escaped.
    let log = host.log();
    assert!(log.contains("not a regular file"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("ERROR FORGED")), "{log}");

    // A readable file that is no component: its first bytes are not quoted back.
    let (status, answer, _) = swap_with_token(&admin, &token, Path::new("/etc/passwd"));
    assert_eq!(status, 422, "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(
        reason.contains("not a valid WebAssembly component"),
        "{reason}"
    );
    assert!(!reason.contains("0x"), "{reason}");

    // Nothing was left holding the swap: a valid candidate goes live at once.
    let b = plugins.join("b.wasm");
    let (status, answer, _) = swap_with_token(&admin, &token, &b);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(live_digest(&admin), file_digest(&b));
    assert!(host.terminate().success());
}

#[test]
fn an_allowed_dir_keeps_swaps_to_its_files_symlinks_resolved() {
    let dir = workdir();
    let allowed = dir.path().join("allowed");
    let (mut host, admin, plugins) = host(
        dir.path(),
        "adm-dir",
        &format!("allowed_dir = \"{}\"", allowed.display()),
        &[],
    );
    let token = token(&admin);
    let before = live_digest(&admin);
    let outside_dir = dir.path().join("outside");
    std::fs::create_dir(&outside_dir).unwrap();
    let outside = outside_dir.join("b.wasm");
    std::fs::copy(plugins.join("b.wasm"), &outside).unwrap();
    let link_out = plugins.join("link-out.wasm");
    std::os::unix::fs::symlink(&outside, &link_out).unwrap();
    let mut reasons = Vec::new();
    for candidate in [
        PathBuf::from("/etc/shadow"),
        outside,
        link_out,
        plugins.join("missing.wasm"),
    ] {
        let (status, answer, took) = swap_with_token(&admin, &token, &candidate);
        assert_eq!(status, 422, "{candidate:?}: {answer}");
        assert!(took < Duration::from_secs(2), "{candidate:?} took {took:?}");
        let reason = answer["reason"].as_str().unwrap();
        reasons.push(reason.replace(&candidate.display().to_string(), "PATH"));
        assert_eq!(live_digest(&admin), before, "{candidate:?} went live");
    }
    assert!(reasons.iter().all(|r| r == &reasons[0]), "{reasons:#?}");
    assert!(host.log().contains("outside plugin.allowed_dir"));

    // A link inside the directory to a file inside it, as a ConfigMap mounts files.
    let data = plugins.join("..data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(plugins.join("b.wasm"), data.join("b.wasm")).unwrap();
    let link_in = plugins.join("current.wasm");
    std::os::unix::fs::symlink(data.join("b.wasm"), &link_in).unwrap();
    let (status, answer, _) = swap_with_token(&admin, &token, &link_in);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(live_digest(&admin), file_digest(&plugins.join("b.wasm")));
    assert!(host.terminate().success());
}

/// One swap is validated at a time, two more may wait, the rest are told at once; a
/// request that never finishes sending its body is cut off.
#[test]
fn concurrent_swaps_queue_briefly_and_a_stalled_request_is_cut_off() {
    let dir = workdir();
    let (mut host, admin, _) = host(dir.path(), "adm-queue", "", &[("SLUICE_CACHE_DIR", "off")]);
    let token = token(&admin);
    // Seconds to compile with no cache: the first swap holds the slot meanwhile.
    let slow = crate::examples::example("enrich");
    let copy = dir.path().join("enrich.wasm");
    std::fs::copy(&slow, &copy).unwrap();

    // A request that promises a body and stops sending it.
    let stalled = {
        let admin = admin.clone();
        let bearer = format!("Bearer {token}");
        std::thread::spawn(move || {
            let mut stream = TcpStream::connect(&admin).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let head = format!(
                "POST /plugin/swap HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nAuthorization: {bearer}\r\nContent-Length: 100\r\n\r\n{{\"path\""
            );
            stream.write_all(head.as_bytes()).unwrap();
            let started = Instant::now();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            (answer, started.elapsed())
        })
    };

    let swaps: Vec<_> = (0..5)
        .map(|_| {
            let (admin, token, copy) = (admin.clone(), token.clone(), copy.clone());
            std::thread::spawn(move || swap_with_token(&admin, &token, &copy))
        })
        .collect();
    let answers: Vec<(u16, serde_json::Value, Duration)> =
        swaps.into_iter().map(|s| s.join().unwrap()).collect();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == 503)
        .collect();
    let done: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == 200)
        .collect();
    assert_eq!(busy.len(), 2, "{answers:#?}");
    assert_eq!(done.len(), 3, "{answers:#?}");
    for (_, answer, took) in &busy {
        assert!(
            answer["error"].as_str().unwrap().contains("try again"),
            "{answer}"
        );
        assert!(
            *took < Duration::from_secs(2),
            "a refused swap waited {took:?}"
        );
    }
    let outcomes: Vec<&str> = done
        .iter()
        .map(|(_, a, _)| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "live").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(live_digest(&admin), file_digest(&copy));

    let (answer, took) = stalled.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(host.terminate().success());
}

/// A host that cannot write its token file (a read-only file system) still runs and
/// answers the read-only endpoints, but no swap gets through.
#[test]
fn a_host_without_a_writable_token_file_runs_read_only() {
    let dir = workdir();
    let (mut host, admin, plugins) = host(
        dir.path(),
        "adm-ro",
        "",
        &[("HOME", "/proc/self"), ("XDG_RUNTIME_DIR", "")],
    );
    let before = live_digest(&admin);
    assert!(
        host.log().contains("No admin token could be written"),
        "{}",
        host.log()
    );
    let (status, body) = request(
        &admin,
        "POST",
        "/plugin/swap",
        &[
            ("Host", &admin),
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer "),
        ],
        &swap_body(&plugins.join("b.wasm")),
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("could not write its token"), "{body}");
    assert_eq!(live_digest(&admin), before);
    assert!(host.terminate().success());
}
