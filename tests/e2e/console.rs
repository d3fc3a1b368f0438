//! Operating a running host as an operator does: its log read as JSON, its metrics
//! scraped by a real Prometheus (and the alert rules checked by promtool), and the web
//! console driven in a real headless Chromium over the DevTools protocol.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Value, json};
use tungstenite::WebSocket;
use tungstenite::stream::MaybeTlsStream;

use crate::support::*;

/// A fixed admin token, so the test can type it into the console as an operator would.
const TOKEN: &str = "console-test-token-0123456789";

/// The repository's root.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The value of the unlabelled metric `name` in the host's `GET /metrics`.
fn metric(admin: &str, name: &str) -> Option<f64> {
    let text = ureq::get(format!("http://{admin}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
}

/// A host running `plugin` (unwatched) between new topics of `partitions` partitions,
/// its admin endpoint on a free port with [`TOKEN`]; `sink_extra` and `plugin_extra`
/// are added to those tables. Returns the host, its admin address, the input topic
/// and the group.
fn host(
    dir: &Path,
    prefix: &str,
    partitions: i32,
    plugin: &Path,
    sink_extra: &str,
    plugin_extra: &str,
) -> (Sluice, String, String, String) {
    let (input, output, group) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-g")),
    );
    create_topic(&input, partitions);
    create_topic(&output, partitions);
    let tail = format!(
        "[plugin]\npath = \"{}\"\nwatch = false\n{plugin_extra}\n",
        plugin.display()
    );
    let sink_extra = sink_extra.replace("{prefix}", &output);
    if let Some(topic) = sink_extra
        .split('"')
        .nth(1)
        .filter(|_| sink_extra.contains("dead_letter_topic"))
    {
        create_topic(topic, 1);
    }
    let config = write_file(
        dir,
        &format!("{prefix}.toml"),
        &config_text(&input, &output, &group, "", &sink_extra, &tail),
    );
    let admin = free_address();
    let mut command = sluice(&["run", "--config", config.to_str().unwrap()]);
    command
        .env("SLUICE_ADMIN", &admin)
        .env("SLUICE_ADMIN_TOKEN", TOKEN);
    let mut host = Sluice::spawn(dir, command);
    host.wait_for_log("Pipeline running", Duration::from_secs(60));
    (host, admin, input, group)
}

fn produce_values(topic: &str, partitions: i32, count: usize) {
    let records: Vec<TestRecord> = (0..count)
        .map(|i| TestRecord::value(i as i32 % partitions, &format!("record-{i}")))
        .collect();
    produce(topic, &records);
}

#[test]
fn with_json_logs_every_stderr_line_is_an_object_with_its_fields_and_plugin_lines_name_their_version()
 {
    let dir = workdir();
    let (input, output, group) = (unique("json-in"), unique("json-out"), unique("json-g"));
    create_topic(&input, 2);
    create_topic(&output, 2);
    // snoop writes its probe's outcome through the `log` import at warn level.
    let snoop = test_plugin("sluice_test_snoop");
    let tail = format!(
        "[plugin]\npath = \"{}\"\n[plugin.config]\nargs = \"-\"\n",
        snoop.display()
    );
    let config = write_file(
        dir.path(),
        "json.toml",
        &config_text(&input, &output, &group, "", "", &tail),
    );
    let mut host = Sluice::start(
        dir.path(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            "--parallelism",
            "2",
        ],
    );
    host.wait_for_log("Pipeline running", Duration::from_secs(60));
    produce_values(&input, 2, 20);
    read_all(&output, 20, Duration::from_secs(60));
    host.wait_for_log("sandbox probe args", Duration::from_secs(30));
    assert!(host.terminate().success(), "{}", host.log());

    let log = host.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    for line in &lines {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(line.get(key).is_some(), "no {key} in {line}");
        }
    }
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains(message)))
            .unwrap_or_else(|| panic!("no line with {message:?} in:\n{log}"))
    };
    // Every field of an event, at the top level.
    let running = find("Pipeline running");
    assert_eq!(running["source"], json!(input));
    assert_eq!(running["workers"], json!(2));
    // A worker's lines name it in their span.
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["name"] == json!("worker") && l["span"]["worker"].is_number()),
        "no line carries its worker:\n{log}"
    );
    // A plugin's line names the plugin, its version and its own level.
    let digest = file_digest(&snoop);
    let probe = find("sandbox probe args");
    assert_eq!(probe["level"], json!("WARN"));
    assert_eq!(probe["plugin"], json!("sluice_test_snoop"));
    assert_eq!(probe["plugin_level"], json!("warn"));
    assert_eq!(probe["plugin_version"], json!(&digest[..12]));
    assert_eq!(find("Stopped cleanly")["numRecordsOut"], json!(20));

    // An error that ends the command is a JSON line too.
    let missing = dir.path().join("missing.toml");
    let failed = sluice(&[
        "run",
        "--config",
        missing.to_str().unwrap(),
        "--log-format",
        "json",
    ])
    .output()
    .unwrap();
    assert_eq!(failed.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["level"], json!("ERROR"));
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("missing.toml"),
        "{stderr}"
    );
}

/// One HTTP/1.1 request written by hand, so that the `Host` header is the test's
/// choice; returns the status code.
fn raw(
    admin: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer from {admin}"))
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_query(address: &str, query: &str) -> Vec<Value> {
    let Ok(mut answer) = ureq::get(format!("http://{address}/api/v1/query"))
        .query("query", query)
        .call()
    else {
        return Vec::new();
    };
    let body: Value = answer.body_mut().read_json().unwrap_or_default();
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_the_host_and_reads_the_records_written() {
    let dir = workdir();
    let passthrough = test_plugin("sluice_test_tag_a");
    let (_host, admin, input, _) = host(dir.path(), "prom", 3, &passthrough, "", "");
    produce_values(&input, 3, 300);
    wait_until(
        "the host to write 300 records",
        Duration::from_secs(60),
        || metric(&admin, "numRecordsOut") == Some(300.0),
    );

    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Prometheus is not installed: apt-get install prometheus (.ci/run does)");
    let listen = free_address();
    let config = write_file(
        dir.path(),
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{admin}']\n",
            rules = repository().join("deploy/monitoring/alerts.yml").display()
        ),
    );
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let read_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    let mut out = Vec::new();
    // Its first scrape comes within a second of its start, which takes seconds on a
    // busy machine.
    for _ in 0..600 {
        out = prometheus_query(&listen, "numRecordsOut");
        if !out.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        out.len(),
        1,
        "Prometheus never scraped the host:\n{}",
        read_log()
    );
    assert_eq!(out[0]["value"][1], json!("300"), "{out:?}");
    // Per-partition lag, labelled.
    let lag = prometheus_query(&listen, "records_lag");
    let mut partitions: Vec<&str> = lag
        .iter()
        .map(|s| s["metric"]["partition"].as_str().unwrap())
        .collect();
    partitions.sort();
    assert_eq!(partitions, ["0", "1", "2"], "{lag:?}");
    assert!(lag.iter().all(|s| s["metric"]["topic"] == json!(input)));
    // The alert rules load and are evaluated against the host's series: none fires.
    let rules = || -> Vec<Value> {
        ureq::get(format!("http://{listen}/api/v1/rules"))
            .call()
            .ok()
            .and_then(|mut answer| answer.body_mut().read_json::<Value>().ok())
            .and_then(|rules| rules["data"]["groups"][0]["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    wait_until("the rules to be evaluated", Duration::from_secs(30), || {
        let rules = rules();
        !rules.is_empty()
            && rules.iter().all(|rule| {
                rule["health"] == json!("ok")
                    && rule["lastEvaluation"]
                        .as_str()
                        .is_some_and(|at| !at.starts_with("0001"))
            })
    });
    // Every query of the Grafana dashboard is one Prometheus accepts, and each names
    // series the host exports.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("deploy/monitoring/grafana-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let query = target["expr"]
                .as_str()
                .unwrap()
                .replace("$job", ".*")
                .replace("$instance", ".*");
            let answer: Value = ureq::get(format!("http://{listen}/api/v1/query"))
                .query("query", &query)
                .call()
                .unwrap()
                .body_mut()
                .read_json()
                .unwrap();
            assert_eq!(answer["status"], json!("success"), "{query}: {answer}");
            let series = query
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .find(|word| {
                    word.chars().any(|c| c.is_ascii_uppercase())
                        || word.starts_with("records_lag")
                        || *word == "uptime"
                })
                .unwrap_or_else(|| panic!("no series in {query}"));
            let series = series.trim_end_matches("_bucket").to_string();
            let known = if series.ends_with("Seconds") {
                format!("{series}_count")
            } else {
                series.clone()
            };
            assert!(
                !prometheus_query(&listen, &known).is_empty(),
                "the dashboard's {query} reads {series}, which the host does not export"
            );
        }
    }
    let firing = prometheus_query(&listen, "ALERTS{alertstate=\"firing\"}");
    assert!(firing.is_empty(), "{firing:?}");
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_tests() {
    let rules = repository().join("deploy/monitoring/alerts.yml");
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool is not installed: apt-get install prometheus (.ci/run does)");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let tests = Command::new("promtool")
        .args(["test", "rules"])
        .arg(repository().join("deploy/monitoring/alerts.test.yml"))
        .output()
        .unwrap();
    assert!(
        tests.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tests.stdout),
        String::from_utf8_lossy(&tests.stderr)
    );
}

/// A headless Chromium driven over the DevTools protocol.
struct Browser {
    _child: Killed,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("Chromium is not installed: apt-get install chromium (.ci/run does)");
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Chromium names its DevTools address on stderr; the rest is drained so that
        // it never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = sender.send(url.trim().to_string());
                }
            }
        });
        let child = Killed(child);
        let browser_url = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("Chromium did not open its DevTools port");
        let port = browser_url
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .unwrap()
            .to_string();
        let targets: Value = ureq::get(format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == json!("page"))
            .expect("a page target")["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .to_string();
        let (socket, _) = tungstenite::connect(page).unwrap();
        Browser {
            _child: child,
            socket,
            next_id: 1,
        }
    }

    /// Calls a DevTools method and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
        loop {
            let answer = self.socket.read().unwrap();
            let Ok(text) = answer.to_text() else { continue };
            let Ok(answer) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if answer["id"] == json!(id) {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Text of the element `selector`, thousands separators removed.
    fn text(&mut self, selector: &str) -> String {
        self.eval(&format!(
            "(document.querySelector({selector:?}) || {{}}).textContent || ''"
        ))
        .as_str()
        .unwrap_or_default()
        .replace(',', "")
    }

    fn wait_for(&mut self, what: &str, expression: &str) {
        for _ in 0..300 {
            if self.eval(expression) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what} ({expression}); the page shows:\n{}",
            self.eval("document.body.innerText")
        );
    }

    fn tab(&mut self, tab: &str) {
        self.eval(&format!(
            "document.querySelector('nav button[data-tab={tab}]').click()"
        ));
        // Drawn at the next poll.
        let updated = self.eval("document.body.dataset.updated || ''");
        self.wait_for(
            &format!("the {tab} tab to be drawn"),
            &format!("(document.body.dataset.updated || '') !== {updated}"),
        );
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Chooses `file` in the file input `selector`, as a user picking it would.
    fn choose_file(&mut self, selector: &str, file: &Path) {
        let root = self.call("DOM.getDocument", json!({}))["root"]["nodeId"].clone();
        let node = self.call(
            "DOM.querySelector",
            json!({ "nodeId": root, "selector": selector }),
        )["nodeId"]
            .clone();
        self.call(
            "DOM.setFileInputFiles",
            json!({ "nodeId": node, "files": [file] }),
        );
    }
}

#[test]
fn the_console_shows_what_status_and_metrics_say_and_swaps_by_upload_from_the_page() {
    let dir = workdir();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let a = plugins.join("faulty.wasm");
    let b = plugins.join("tag_b.wasm");
    let other = plugins.join("other_world.wasm");
    std::fs::copy(test_plugin("sluice_test_faulty"), &a).unwrap();
    std::fs::copy(test_plugin("sluice_test_tag_b"), &b).unwrap();
    std::fs::copy(test_plugin("sluice_test_other_world"), &other).unwrap();
    // One record fails in the plugin and goes to the dead-letter topic.
    let (_host, admin, input, group) = host(
        dir.path(),
        "console",
        2,
        &a,
        "dead_letter_topic = \"{prefix}-dead\"",
        "[plugin.config]\nfail_on = \"poison\"",
    );
    // The page, like its data, is served only to requests naming this endpoint; the
    // upload needs the token and a component's content type.
    assert_eq!(raw(&admin, "GET", "/", "attacker.example", &[], b""), 421);
    assert_eq!(
        raw(
            &admin,
            "GET",
            "/api/console",
            "attacker.example:80",
            &[],
            b""
        ),
        421
    );
    assert_eq!(raw(&admin, "GET", "/", &admin, &[], b""), 200);
    let wasm = std::fs::read(&b).unwrap();
    let bearer = format!("Bearer {TOKEN}");
    let as_wasm = ("Content-Type", "application/wasm");
    assert_eq!(
        raw(&admin, "POST", "/plugin/upload", &admin, &[as_wasm], &wasm),
        401
    );
    assert_eq!(
        raw(
            &admin,
            "POST",
            "/plugin/upload",
            &admin,
            &[("Authorization", "Bearer wrong-token-0123456789"), as_wasm],
            &wasm
        ),
        401
    );
    assert_eq!(
        raw(
            &admin,
            "POST",
            "/plugin/upload",
            &admin,
            &[("Authorization", &bearer), ("Content-Type", "text/plain")],
            &wasm
        ),
        415
    );
    assert_eq!(
        admin_status(&admin)["live"]["digest"],
        json!(file_digest(&a))
    );

    let mut browser = Browser::start(&dir.path().join("chromium"));
    browser.call("Page.enable", json!({}));
    browser.call(
        "Page.navigate",
        json!({ "url": format!("http://{admin}/?tab=overview") }),
    );
    // Six seconds of steady input, so that the chart has a line to draw.
    let done = Arc::new(AtomicBool::new(false));
    produce_paced(input.clone(), 600, 100, done.clone(), |i| {
        let value = match i {
            300 => format!("poison-{i}"),
            _ => format!("record-{i}"),
        };
        TestRecord::value((i % 2) as i32, &value)
    })
    .join()
    .unwrap();
    wait_until(
        "600 records written and committed",
        Duration::from_secs(60),
        || {
            metric(&admin, "numRecordsIn") == Some(600.0)
                && total(&committed(&group, &input)) == 600
        },
    );
    browser.wait_for(
        "the overview to show the records written",
        "document.querySelector('#ov-records-in')?.dataset.value === '600'",
    );
    let images = repository().join("docs/images");

    // Overview: what /metrics says.
    for (selector, name) in [
        ("#ov-records-in", "numRecordsIn"),
        ("#ov-records-out", "numRecordsOut"),
        ("#ov-dead-lettered", "numRecordsDeadLettered"),
    ] {
        let shown: f64 = browser.text(selector).parse().unwrap();
        assert_eq!(Some(shown), metric(&admin, name), "{selector}");
    }
    assert_eq!(browser.text("#ov-records-out"), "599");
    assert_eq!(browser.text("#ov-dead-lettered"), "1");
    assert_eq!(browser.text("#ov-delivery"), "at-least-once");
    assert_eq!(browser.text("#ov-workers"), "1");
    assert_eq!(browser.text("#ov-running"), "Running");
    // The consumers report their lag once a second: once the page shows it caught up,
    // so does /metrics (from the same report).
    browser.wait_for(
        "the lag to reach 0",
        "document.querySelector('#ov-lag').dataset.value === '0'",
    );
    assert_eq!(metric(&admin, "records_lag_max"), Some(0.0));
    browser.screenshot(&images.join("console-overview.png"));

    // Partitions: the group's committed offsets and the topic's ends.
    browser.tab("partitions");
    let committed = committed(&group, &input);
    let ends = end_offsets(&input);
    // The consumers report once a second: the table catches up within one report.
    for partition in 0..2 {
        let row = format!("tr[data-partition='{input}/{partition}']");
        let shown = |n: usize| {
            format!(
                "(document.querySelector(\"{row} td:nth-child({n})\")?.textContent || '').replaceAll(',', '')"
            )
        };
        browser.wait_for(
            &format!(
                "partition {partition}: committed {}, end {}, lag 0",
                committed[&partition], ends[&partition]
            ),
            &format!(
                "{} === '{}' && {} === '{}' && {} === '0'",
                shown(4),
                committed[&partition],
                shown(5),
                ends[&partition],
                shown(6)
            ),
        );
    }

    // Checkpoints: the count /metrics gives.
    browser.tab("checkpoints");
    // Shown as of the last poll (at most a second old): equal once a poll follows the
    // last checkpoint that moved.
    let mut shown = (0.0, None);
    for _ in 0..50 {
        shown = (
            browser.text("#cp-completed").parse::<f64>().unwrap(),
            metric(&admin, "numberOfCompletedCheckpoints"),
        );
        if Some(shown.0) == shown.1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(Some(shown.0), shown.1, "checkpoints completed");
    assert!(shown.0 >= 1.0);
    assert!(
        browser.eval("document.querySelectorAll('#checkpoints tr[data-checkpoint]').length > 0")
            == json!(true)
    );

    // Plugin: the live version /status names; then a swap by upload from the page.
    browser.tab("plugin");
    let status = admin_status(&admin);
    assert_eq!(
        browser.text("#pl-live dd[data-field=digest]"),
        format!("sha256:{}", status["live"]["digest"].as_str().unwrap())
    );
    browser.eval(&format!(
        "document.querySelector('#token').value = {TOKEN:?}"
    ));
    browser.choose_file("#plugin-file", &b);
    browser.eval("document.querySelector('#upload-button').click()");
    browser.wait_for(
        "the upload's outcome",
        "!!document.querySelector('#upload-result').dataset.outcome",
    );
    assert_eq!(
        browser.eval("document.querySelector('#upload-result').dataset.outcome"),
        json!("live"),
        "{}",
        browser.text("#upload-result")
    );
    let status = admin_status(&admin);
    assert_eq!(status["live"]["digest"], json!(file_digest(&b)));
    // The token was kept for the tab's session only.
    assert_eq!(
        browser.eval("sessionStorage.getItem('sluice-admin-token')"),
        json!(TOKEN)
    );

    // A candidate of another world is rejected, and the page shows why.
    browser.eval("delete document.querySelector('#upload-result').dataset.outcome");
    browser.choose_file("#plugin-file", &other);
    browser.eval("document.querySelector('#upload-button').click()");
    browser.wait_for(
        "the rejection",
        "document.querySelector('#upload-result').dataset.outcome === 'rejected'",
    );
    let status = admin_status(&admin);
    assert_eq!(status["live"]["digest"], json!(file_digest(&b)));
    let rejected = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["event"] == json!("rejected"))
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        browser
            .text("#upload-result")
            .contains(&rejected.replace(',', ""))
    );
    browser.wait_for(
        "the rejection on the timeline",
        "!!document.querySelector('#timeline li.event-rejected .reason')",
    );
    assert_eq!(
        browser.text("#timeline li.event-rejected .reason"),
        rejected.replace(',', "")
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#timeline li.event-live').length"),
        json!(2)
    );
    browser.screenshot(&images.join("console-plugin.png"));

    // Exceptions: the rejection's warning, and the failed record's with where it was
    // read (the 151st record of partition 0), as the log wrote them.
    browser.tab("exceptions");
    let exceptions = browser.text("#exceptions");
    assert!(
        exceptions.contains("Plugin candidate rejected"),
        "{exceptions}"
    );
    let record = format!("{input}/0@150");
    assert_eq!(
        browser.eval(&format!(
            "[...document.querySelectorAll('#exceptions tr')].some(row => row.cells[4].textContent === {record:?} && row.cells[5].textContent.includes('dead-letter topic') && row.cells[3].textContent === {version:?})",
            version = &file_digest(&a)[..12]
        )),
        json!(true),
        "no exception names {record}: {exceptions}"
    );

    // Usable at phone width: nothing wider than the screen.
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": true }),
    );
    browser.tab("overview");
    assert_eq!(
        browser.eval("document.documentElement.scrollWidth <= 390"),
        json!(true),
        "the page is wider than a phone"
    );
}
