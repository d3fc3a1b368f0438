//! The admin endpoint: a small HTTP API on 127.0.0.1 by default, for operators and for
//! `sluice plugin swap|status`.
//!
//! - `GET /status`: the live plugin version, when it went live, the history of swaps,
//!   rejections and rollbacks, and the version each worker runs (JSON).
//! - `GET /metrics`: the pipeline's counters in Prometheus' text format (see
//!   [`crate::metrics`]).
//! - `GET /ready[?stall_s=N]`: 200 when every worker is processing (it has finished a
//!   turn of its loop within the last N s, 60 by default), else 503; for readiness
//!   probes. A worker starting, restoring its state, or waiting for an unanswering
//!   cluster is not ready. JSON either way.
//! - `GET /`: the web console (see [`console`]), which polls `GET /api/console` (the
//!   pipeline, its partitions, checkpoints, plugin versions and recent warnings, JSON)
//!   and reads `GET /api/config` (the effective configuration, secrets redacted).
//! - `POST /plugin/upload` with a component as the body (`Content-Type:
//!   application/wasm`) and the token: the console's swap by upload, validated like a
//!   swap by path.
//! - `POST /plugin/swap` with `{"path": "/abs/plugin.wasm"}` and `Authorization: Bearer
//!   <token>`: validates the component and makes it live; answers 200 with the
//!   outcome, or 422 with the reason it was rejected (the live version then stays).
//!
//! Strategy: anything on the host can reach the endpoint, a browser tab after DNS
//! rebinding included. So every request must name this endpoint in its `Host` header
//! (a rebinding page's names the attacker's domain: 421), and every mutating request
//! carries the token only the host's user can read (see [`token`]; else 401). The
//! read-only endpoints need no token. Requests have deadlines, and one swap is
//! validated at a time with a short queue, so no client can hold the endpoint.

pub mod client;
pub(crate) mod console;
mod guard;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, PluginCounts};
use crate::plugin::registry::{Registry, Status, SwapEvent, Trigger};
pub(crate) use guard::Guard;
use guard::{REQUEST_TIMEOUT, check, refuse, within_request_timeout};

#[derive(Debug, Serialize, Deserialize)]
struct SwapRequest {
    path: PathBuf,
}

/// What `POST /plugin/swap` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct SwapResponse {
    pub outcome: SwapEvent,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

/// How long a swap's validation may take before the request is answered with 504 (the
/// validation goes on; `/status` tells its outcome). Compiling a large JavaScript or
/// Python component on a busy host takes tens of seconds.
const SWAP_TIMEOUT: Duration = Duration::from_secs(110);
/// How long a swap waits for another one to finish before it is refused with 503.
const SWAP_QUEUE_WAIT: Duration = Duration::from_secs(60);
/// Swaps that may wait behind the one being validated; more are refused at once.
const SWAP_QUEUE: usize = 2;
/// The largest swap request body: a path in JSON.
const MAX_SWAP_BODY: usize = 64 * 1024;
/// The largest uploaded component: a Python component is about 20 MB.
const MAX_UPLOAD: usize = 64 * 1024 * 1024;
/// How long an upload's body may take to arrive.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).await.with_context(|| {
        format!("admin endpoint: cannot listen on {address}; choose another address with --admin ADDR, or --admin off")
    })?;
    Ok(listener)
}

/// Swaps in flight or waiting, and the slot the one being validated holds.
struct SwapQueue {
    slot: Semaphore,
    queued: AtomicUsize,
}

#[derive(Clone)]
struct SwapState {
    registry: Arc<Registry>,
    queue: Arc<SwapQueue>,
    console: Arc<console::Console>,
}

type Reads = (Arc<Registry>, Arc<Metrics>, Arc<console::Console>);

pub(crate) async fn serve(
    listener: TcpListener,
    guard: Guard,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    pipeline: console::PipelineInfo,
) {
    let guard = Arc::new(guard);
    let console = console::Console::new(pipeline);
    tokio::spawn(console.clone().sample_rates(metrics.clone()));
    let swap_state = SwapState {
        registry: registry.clone(),
        queue: Arc::new(SwapQueue {
            slot: Semaphore::new(1),
            queued: AtomicUsize::new(0),
        }),
        console: console.clone(),
    };
    let app = Router::new()
        .route("/plugin/swap", post(swap))
        .route("/plugin/upload", post(upload))
        .with_state(swap_state)
        .merge(
            Router::new()
                .route("/", get(console::page))
                .route("/console.css", get(console::style))
                .route("/console.js", get(console::script))
                .route("/status", get(status))
                .route("/metrics", get(metrics_text))
                .route("/ready", get(ready))
                .route("/api/console", get(console_snapshot))
                .route("/api/config", get(config))
                .route_layer(middleware::from_fn(within_request_timeout))
                .with_state((registry, metrics, console)),
        )
        // Outermost: a request for another host, or a change without the token, is
        // answered before anything else runs.
        .layer(middleware::from_fn_with_state(guard, check));
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "Admin endpoint stopped.");
    }
}

/// The registry's status, and the version each worker runs.
#[derive(Serialize)]
struct HostStatus {
    #[serde(flatten)]
    registry: Status,
    workers: Vec<WorkerStatus>,
}

#[derive(Serialize)]
struct WorkerStatus {
    worker: usize,
    /// The plugin version the worker's instance runs: it adopts the live one at its
    /// next batch.
    version: u64,
    /// How long the worker took to adopt that version, in µs (0 for the version it
    /// started with).
    adopt_us: u64,
}

async fn console_snapshot(State((registry, metrics, console)): State<Reads>) -> Response {
    // Reading a version's language may read its file once: off the async threads.
    match tokio::task::spawn_blocking(move || console::snapshot(&console, &registry, &metrics))
        .await
    {
        Ok(snapshot) => {
            let mut response = Json(snapshot).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(error) => refuse(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn config(State((_, _, console)): State<Reads>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "config": console.info.config }))
}

async fn status(State((registry, metrics, _)): State<Reads>) -> Json<HostStatus> {
    Json(HostStatus {
        registry: registry.status(),
        workers: metrics
            .worker_versions()
            .into_iter()
            .zip(metrics.worker_adopt_us())
            .enumerate()
            .map(|(worker, (version, adopt_us))| WorkerStatus {
                worker,
                version,
                adopt_us,
            })
            .collect(),
    })
}

/// What `GET /ready` answers.
#[derive(Debug, Serialize, Deserialize)]
struct Readiness {
    ready: bool,
    workers: Vec<WorkerReadiness>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerReadiness {
    worker: usize,
    ready: bool,
    /// Milliseconds since the worker last finished a turn of its loop; absent before
    /// its first.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    last_turn_ms_ago: Option<u64>,
}

#[derive(Deserialize)]
struct ReadyQuery {
    stall_s: Option<u64>,
}

/// How long a worker may go without finishing a turn and still be ready, unless the
/// probe says otherwise.
const READY_STALL: Duration = Duration::from_secs(60);

async fn ready(
    State((_, metrics, _)): State<Reads>,
    Query(query): Query<ReadyQuery>,
) -> (StatusCode, Json<Readiness>) {
    let stall = query.stall_s.map_or(READY_STALL, Duration::from_secs);
    let readiness = readiness(&metrics.since_turns(), stall);
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness))
}

/// Ready: every worker finished a turn no more than `stall` ago.
fn readiness(since_turns: &[Option<Duration>], stall: Duration) -> Readiness {
    let workers: Vec<WorkerReadiness> = since_turns
        .iter()
        .enumerate()
        .map(|(worker, since)| WorkerReadiness {
            worker,
            ready: since.is_some_and(|since| since <= stall),
            last_turn_ms_ago: since.map(|since| since.as_millis() as u64),
        })
        .collect();
    Readiness {
        ready: workers.iter().all(|worker| worker.ready),
        workers,
    }
}

async fn metrics_text(
    State((registry, metrics, _)): State<Reads>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(&plugin_counts(&registry.status())),
    )
}

fn too_large() -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than {MAX_SWAP_BODY} bytes or broken; send {{\"path\": \"/abs/plugin.wasm\"}}"
        ),
    )
}

/// Leaves the swap queue when dropped, whatever happens to the request.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn swap(State(state): State<SwapState>, request: Request<Body>) -> Response {
    // A page can send a cross-origin form post without asking; only JSON is accepted.
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request as `Content-Type: application/json`",
        );
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_SWAP_BODY) {
        return too_large();
    }
    let body = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        axum::body::to_bytes(request.into_body(), MAX_SWAP_BODY),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body took longer than {} s",
                    REQUEST_TIMEOUT.as_secs()
                ),
            );
        }
    };
    let Ok(request) = serde_json::from_slice::<SwapRequest>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the body is not {\"path\": \"/abs/plugin.wasm\"}",
        );
    };
    validate_in_turn(&state, request.path).await
}

/// The console's swap: the component is the body. It is written to a directory only
/// the host's user can read, and validated from there like a swap by path.
async fn upload(State(state): State<SwapState>, request: Request<Body>) -> Response {
    if !state.console.info.uploads {
        return refuse(
            StatusCode::FORBIDDEN,
            "plugin.allowed_dir restricts swaps to files in that directory: put the component there and swap it by path",
        );
    }
    let (name, body) = match read_upload(request).await {
        Ok(upload) => upload,
        Err(refused) => return refused,
    };
    let (dir, path) = match keep_upload(&name, &body) {
        Ok(kept) => kept,
        Err(error) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot keep the upload: {error}"),
            );
        }
    };
    state.console.note_language(&body);
    let response = validate_in_turn(&state, path).await;
    // The registry holds the compiled version; the file is not read again.
    drop(dir);
    response
}

/// The name and the bytes of an uploaded component, or the answer that refuses it:
/// not sent as a component, too large, or too slow.
async fn read_upload(request: Request<Body>) -> Result<(String, Bytes), Response> {
    // A page can send a cross-origin form post without asking; a component is not a form.
    let wasm = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/wasm"));
    if !wasm {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the component as `Content-Type: application/wasm`",
        ));
    }
    let name = request
        .headers()
        .get("x-plugin-name")
        .and_then(|v| v.to_str().ok())
        .map(upload_name)
        .unwrap_or_else(|| "uploaded".to_string());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a component of at most {} MiB can be uploaded",
                MAX_UPLOAD >> 20
            ),
        )
    };
    if declared.is_some_and(|length| length > MAX_UPLOAD) {
        return Err(too_large());
    }
    let body = match tokio::time::timeout(
        UPLOAD_TIMEOUT,
        axum::body::to_bytes(request.into_body(), MAX_UPLOAD),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return Err(too_large()),
        Err(_) => {
            return Err(refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("the upload took longer than {} s", UPLOAD_TIMEOUT.as_secs()),
            ));
        }
    };
    Ok((name, body))
}

/// Writes an upload to a directory of its own, which is removed when dropped.
fn keep_upload(name: &str, body: &[u8]) -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    // tempfile makes the directory readable by this user only.
    let dir = tempfile::Builder::new()
        .prefix("sluice-upload-")
        .tempdir()?;
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, body)?;
    Ok((dir, path))
}

/// An uploaded file's name as a file stem the host can show: letters, digits, `-`, `_`
/// and `.`, at most 64 of them, without its `.wasm`.
fn upload_name(name: &str) -> String {
    let stem = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = stem.strip_suffix(".wasm").unwrap_or(stem);
    let clean: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    match clean.trim_start_matches('.') {
        "" => "uploaded".to_string(),
        clean => clean.to_string(),
    }
}

/// Validates the candidate at `path` once the swaps before it are done, and answers
/// with the outcome.
async fn validate_in_turn(state: &SwapState, path: PathBuf) -> Response {
    let queue = &state.queue;
    if queue.queued.fetch_add(1, Ordering::SeqCst) > SWAP_QUEUE {
        queue.queued.fetch_sub(1, Ordering::SeqCst);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "other swaps are being validated and waiting; try again when they finished (see /status)",
        );
    }
    let _queued = Queued(&queue.queued);
    let Ok(Ok(_slot)) = tokio::time::timeout(SWAP_QUEUE_WAIT, queue.slot.acquire()).await else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "another swap was still being validated after {} s; try again when it finished (see /status)",
                SWAP_QUEUE_WAIT.as_secs()
            ),
        );
    };

    // Compiling a component takes from milliseconds to seconds: keep it off the async threads.
    let registry = state.registry.clone();
    let validation = tokio::task::spawn_blocking(move || registry.propose(Trigger::Admin, &path));
    let (code, answer) = match tokio::time::timeout(SWAP_TIMEOUT, validation).await {
        Ok(Ok(Ok(outcome))) => (
            StatusCode::OK,
            SwapResponse {
                outcome: outcome.outcome,
                version: Some(outcome.version),
                digest: Some(outcome.digest),
                reason: None,
            },
        ),
        Ok(Ok(Err(rejection))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            SwapResponse {
                outcome: SwapEvent::Rejected,
                version: None,
                digest: None,
                reason: Some(rejection.reason),
            },
        ),
        Ok(Err(error)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            SwapResponse {
                outcome: SwapEvent::Rejected,
                version: None,
                digest: None,
                reason: Some(format!("validation did not finish: {error}")),
            },
        ),
        Err(_) => {
            return refuse(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "validation takes longer than {} s; it goes on, and /status tells its outcome",
                    SWAP_TIMEOUT.as_secs()
                ),
            );
        }
    };
    (code, Json(answer)).into_response()
}

/// What the metrics say of the plugin registry's `status`.
fn plugin_counts(status: &Status) -> PluginCounts {
    PluginCounts {
        version: status.live.version,
        swaps: status.swaps,
        rejections: status.rejections,
        rollbacks: status.rollbacks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uploaded_files_name_cannot_name_another_path() {
        assert_eq!(upload_name("filter.wasm"), "filter");
        assert_eq!(upload_name("../../etc/passwd"), "passwd");
        assert_eq!(upload_name("C:\\x\\a b\n.wasm"), "ab");
        assert_eq!(upload_name(".."), "uploaded");
        assert_eq!(upload_name(""), "uploaded");
        assert_eq!(upload_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn ready_when_every_worker_turned_within_the_stall_limit() {
        let stall = Duration::from_secs(60);
        let ms = Duration::from_millis;
        let all = readiness(&[Some(ms(5)), Some(ms(60_000))], stall);
        assert!(all.ready);
        assert_eq!(all.workers[1].last_turn_ms_ago, Some(60_000));

        // One worker stuck past the limit, one that has not finished a turn yet.
        let some = readiness(&[Some(ms(60_001)), None, Some(ms(1))], stall);
        assert!(!some.ready);
        let ready: Vec<bool> = some.workers.iter().map(|w| w.ready).collect();
        assert_eq!(ready, [false, false, true]);
        assert_eq!(some.workers[1].last_turn_ms_ago, None);
    }

    #[test]
    fn a_worker_is_not_ready_before_its_first_turn() {
        let metrics = Metrics::new(2);
        metrics.turned(1);
        let since = metrics.since_turns();
        assert_eq!(since[0], None);
        assert!(since[1].is_some_and(|since| since < Duration::from_secs(1)));
        assert!(!readiness(&since, READY_STALL).ready);
        metrics.turned(0);
        assert!(readiness(&metrics.since_turns(), READY_STALL).ready);
    }
}
