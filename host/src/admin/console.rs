//! The web console at `GET /`: one page (HTML, CSS and JavaScript embedded in the
//! binary, nothing fetched from elsewhere) that polls `GET /api/console` every second
//! and shows the pipeline as Flink's web UI does, in tabs: overview, partitions,
//! checkpoints, plugin, exceptions, configuration.
//!
//! Strategy: the page is read-only and served like `/status`: behind the `Host` check,
//! without the token. Its one change, a swap by file upload (`POST /plugin/upload`),
//! carries the token the operator types into the page (kept in the tab's
//! sessionStorage), and passes the same guard, queue and validation as
//! `POST /plugin/swap`. What the console shows that no counter holds (the rates of the
//! last minutes) is sampled here once a second into a bounded ring; the checkpoints and
//! warnings come from [`crate::history`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::history::{self, CheckpointRecord, Exception};
use crate::metrics::{Metrics, PartitionStats};
use crate::plugin::registry::{Registry, Status};

const PAGE: &str = include_str!("console/index.html");
const STYLE: &str = include_str!("console/console.css");
const SCRIPT: &str = include_str!("console/console.js");

/// Rate samples kept: one a second, five minutes.
const RATE_SAMPLES: usize = 300;

/// What the console shows about the pipeline that does not change while it runs.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PipelineInfo {
    /// `at-least-once` or `exactly-once`.
    pub(crate) delivery: &'static str,
    pub(crate) workers: usize,
    pub(crate) source_topic: String,
    pub(crate) sink_topic: String,
    pub(crate) group: String,
    /// The effective configuration as text, secrets redacted.
    #[serde(skip)]
    pub(crate) config: String,
    /// How long a new version stays on probation.
    pub(crate) rollback_window_ms: u64,
    /// Whether swaps by upload are taken (not when `plugin.allowed_dir` restricts
    /// swaps to files in a directory).
    pub(crate) uploads: bool,
}

/// Records in and out per second over one second.
#[derive(Debug, Clone, Copy, Serialize)]
struct Rate {
    at_ms: u64,
    records_in: f64,
    records_out: f64,
}

/// The console's own state: the pipeline's facts and the rate history.
pub(super) struct Console {
    pub(super) info: PipelineInfo,
    rates: Mutex<VecDeque<Rate>>,
    /// Each version's language, by digest, read once from its component.
    languages: Mutex<HashMap<String, String>>,
}

impl Console {
    pub(super) fn new(info: PipelineInfo) -> Arc<Console> {
        Arc::new(Console {
            info,
            rates: Mutex::new(VecDeque::with_capacity(RATE_SAMPLES)),
            languages: Mutex::new(HashMap::new()),
        })
    }

    /// Samples the record counters once a second, for as long as the endpoint runs.
    pub(super) async fn sample_rates(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(tokio::time::Instant, u64, u64)> = None;
        loop {
            let now = tick.tick().await;
            let (records_in, records_out, _) = metrics.totals();
            if let Some((at, before_in, before_out)) = last {
                let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
                let mut rates = self.rates.lock().unwrap();
                if rates.len() == RATE_SAMPLES {
                    rates.pop_front();
                }
                rates.push_back(Rate {
                    at_ms: now_ms(),
                    records_in: records_in.saturating_sub(before_in) as f64 / seconds,
                    records_out: records_out.saturating_sub(before_out) as f64 / seconds,
                });
            }
            last = Some((now, records_in, records_out));
        }
    }

    /// The language a version was written in, as its component's producers section
    /// says; read once per digest, from its file if that still holds the same bytes.
    fn language(&self, digest: &str, origin: &str) -> String {
        if let Some(known) = self.languages.lock().unwrap().get(digest) {
            return known.clone();
        }
        let language = if origin == crate::plugin::Origin::BuiltIn.to_string() {
            "Rust (built in)".to_string()
        } else {
            read_language(origin, digest).unwrap_or_else(|| "unknown".to_string())
        };
        self.languages
            .lock()
            .unwrap()
            .insert(digest.to_string(), language.clone());
        language
    }

    /// Notes the language of an uploaded version, whose file is gone after its swap.
    pub(super) fn note_language(&self, bytes: &[u8]) {
        let digest = crate::plugin::digest(bytes);
        let language = language_of(bytes).unwrap_or_else(|| "unknown".to_string());
        self.languages.lock().unwrap().insert(digest, language);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn read_language(origin: &str, digest: &str) -> Option<String> {
    let bytes = crate::plugin::read_component(std::path::Path::new(origin), None).ok()?;
    (crate::plugin::digest(&bytes) == digest)
        .then(|| language_of(&bytes))
        .flatten()
}

/// `language` (else `sdk`) of a component's producers section.
fn language_of(bytes: &[u8]) -> Option<String> {
    let producers = wasm_metadata::Producers::from_wasm(bytes).ok()??;
    ["language", "sdk"].iter().find_map(|field| {
        let values: Vec<String> = producers
            .get(field)?
            .iter()
            .map(|(name, version)| format!("{name} {version}").trim().to_string())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    })
}

/// A page or asset, never cached, never framed by another page.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// What `GET /api/console` answers: everything the page shows but the configuration.
#[derive(Serialize)]
pub(super) struct Snapshot {
    now_ms: u64,
    overview: Overview,
    rates: Vec<Rate>,
    partitions: Vec<PartitionStats>,
    checkpoints: Checkpoints,
    plugin: PluginView,
    exceptions: Vec<Exception>,
}

#[derive(Serialize)]
struct Overview {
    #[serde(flatten)]
    info: PipelineInfo,
    /// Every worker finished a turn of its loop within the last 60 s (as `/ready`).
    ready: bool,
    uptime_ms: u64,
    records_in: u64,
    records_out: u64,
    dead_lettered: u64,
    /// Records in the source partitions not yet read, all partitions together.
    lag_total: Option<u64>,
}

#[derive(Serialize)]
struct Checkpoints {
    /// The last checkpoints, newest first.
    recent: Vec<CheckpointRecord>,
    /// Checkpoints that committed since the start (`numberOfCompletedCheckpoints`).
    completed: u64,
    /// Checkpoints that did not commit (`numberOfFailedCheckpoints`).
    failed: u64,
    aborted: u64,
    /// Durations of the committed checkpoints kept, in ms.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Serialize)]
struct PluginView {
    #[serde(flatten)]
    status: Status,
    live_language: String,
    previous_language: Option<String>,
    /// When the live version's probation ends (ms since the epoch); absent once over.
    probation_until_ms: Option<u64>,
    /// The version each worker runs.
    workers: Vec<u64>,
}

/// The `q` quantile (0 to 1) of `values`, nearest rank.
fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

pub(super) fn snapshot(console: &Console, registry: &Registry, metrics: &Metrics) -> Snapshot {
    let (records_in, records_out, dead_lettered) = metrics.totals();
    let partitions = metrics.partitions();
    let lags: Vec<u64> = partitions.iter().filter_map(|p| p.lag).collect();
    let ready = super::readiness(&metrics.since_turns(), super::READY_STALL).ready;
    let mut recent = history::checkpoints();
    let mut durations: Vec<f64> = recent
        .iter()
        .filter(|c| c.outcome == "committed")
        .map(|c| c.duration_ms)
        .collect();
    let aborted = recent.iter().filter(|c| c.outcome == "aborted").count() as u64;
    recent.reverse();
    let status = registry.status();
    let live = registry.live();
    let since_ms = live
        .since
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let probation_end = since_ms + console.info.rollback_window_ms;
    let now = now_ms();
    let live_language = console.language(&status.live.digest, &status.live.origin);
    let previous_language = status
        .previous
        .as_ref()
        .map(|p| console.language(&p.digest, &p.origin));
    let text = metrics.render(&super::plugin_counts(&status));
    let counter = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    Snapshot {
        now_ms: now,
        overview: Overview {
            info: console.info.clone(),
            ready,
            uptime_ms: metrics.uptime().as_millis() as u64,
            records_in,
            records_out,
            dead_lettered,
            lag_total: (!lags.is_empty()).then(|| lags.iter().sum()),
        },
        rates: console.rates.lock().unwrap().iter().copied().collect(),
        partitions,
        checkpoints: Checkpoints {
            completed: counter("numberOfCompletedCheckpoints"),
            failed: counter("numberOfFailedCheckpoints"),
            aborted,
            p50_ms: quantile(&mut durations, 0.5),
            p99_ms: quantile(&mut durations, 0.99),
            recent,
        },
        plugin: PluginView {
            probation_until_ms: (status.live.version > 1 && now < probation_end)
                .then_some(probation_end),
            status,
            live_language,
            previous_language,
            workers: metrics.worker_versions(),
        },
        exceptions: {
            let mut exceptions = history::exceptions();
            exceptions.reverse();
            exceptions
        },
    }
}

/// The effective configuration as the console shows it: the parsed configuration,
/// with the values of `[plugin.config]` settings whose names suggest a secret replaced
/// (passwords and keys themselves never are in the configuration: they come from the
/// environment, and the security settings print redacted).
pub(crate) fn config_text(config: &crate::config::Config) -> String {
    let mut config = config.clone();
    for (key, value) in &mut config.plugin.config {
        let key = key.to_ascii_lowercase();
        if [
            "password",
            "secret",
            "token",
            "key",
            "credential",
            "passphrase",
        ]
        .iter()
        .any(|word| key.contains(word))
        {
            *value = "«redacted»".to_string();
        }
    }
    format!("{config:#?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_taken_by_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut values, 0.5), Some(50.0));
        assert_eq!(quantile(&mut values, 0.99), Some(99.0));
        assert_eq!(quantile(&mut [3.0], 0.99), Some(3.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn plugin_settings_named_like_secrets_are_redacted_in_the_configuration_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "version = 1\n[source]\nbootstrap_servers = \"b:9092\"\ntopic = \"in\"\ngroup_id = \"g\"\n\
             [sink]\ntopic = \"out\"\n[plugin.config]\nthreshold = \"50\"\napi_token = \"hunter2-secret-value\"\n",
        )
        .unwrap();
        let config = crate::config::ConfigSource::Toml(path).load(None).unwrap();
        let text = config_text(&config);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("«redacted»") && text.contains("\"50\""),
            "{text}"
        );
    }

    #[test]
    fn the_page_and_its_assets_are_small_and_fetch_nothing_from_elsewhere() {
        let total = PAGE.len() + STYLE.len() + SCRIPT.len();
        assert!(total < 300 * 1024, "{total} bytes");
        for text in [PAGE, STYLE, SCRIPT] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
