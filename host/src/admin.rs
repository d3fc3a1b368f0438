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
//! - `POST /plugin/swap` with `{"path": "/abs/plugin.wasm"}`: validates the component
//!   and makes it live; answers 200 with the outcome, or 422 with the reason it was
//!   rejected (the live version then stays).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::plugin::registry::{Registry, Status, Trigger};

#[derive(Debug, Serialize, Deserialize)]
pub struct SwapRequest {
    pub path: PathBuf,
}

/// What `POST /plugin/swap` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct SwapResponse {
    /// `live`, `unchanged` or `rejected`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).await.with_context(|| {
        format!("admin endpoint: cannot listen on {address}; choose another address with --admin ADDR, or --admin off")
    })?;
    tracing::info!(address = %listener.local_addr()?, "Admin endpoint listening.");
    Ok(listener)
}

pub async fn serve(listener: TcpListener, registry: Arc<Registry>, metrics: Arc<Metrics>) {
    let app = Router::new()
        .route("/plugin/swap", post(swap))
        .with_state(registry.clone())
        .merge(
            Router::new()
                .route("/status", get(status))
                .route("/metrics", get(metrics_text))
                .route("/ready", get(ready))
                .with_state((registry, metrics)),
        );
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
}

async fn status(
    State((registry, metrics)): State<(Arc<Registry>, Arc<Metrics>)>,
) -> Json<HostStatus> {
    Json(HostStatus {
        registry: registry.status(),
        workers: metrics
            .worker_versions()
            .into_iter()
            .enumerate()
            .map(|(worker, version)| WorkerStatus { worker, version })
            .collect(),
    })
}

/// What `GET /ready` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub workers: Vec<WorkerReadiness>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerReadiness {
    pub worker: usize,
    pub ready: bool,
    /// Milliseconds since the worker last finished a turn of its loop; absent before
    /// its first.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_turn_ms_ago: Option<u64>,
}

#[derive(Deserialize)]
struct ReadyQuery {
    stall_s: Option<u64>,
}

/// How long a worker may go without finishing a turn and still be ready, unless the
/// probe says otherwise.
const READY_STALL: Duration = Duration::from_secs(60);

async fn ready(
    State((_, metrics)): State<(Arc<Registry>, Arc<Metrics>)>,
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
    State((registry, metrics)): State<(Arc<Registry>, Arc<Metrics>)>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(&registry.status()),
    )
}

async fn swap(
    State(registry): State<Arc<Registry>>,
    Json(request): Json<SwapRequest>,
) -> (StatusCode, Json<SwapResponse>) {
    // Compiling a component takes from milliseconds to seconds: keep it off the async threads.
    let result =
        tokio::task::spawn_blocking(move || registry.propose(Trigger::Admin, &request.path)).await;
    match result {
        Ok(Ok(outcome)) => (
            StatusCode::OK,
            Json(SwapResponse {
                outcome: outcome.outcome.to_string(),
                version: Some(outcome.version),
                digest: Some(outcome.digest),
                reason: None,
            }),
        ),
        Ok(Err(rejection)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(SwapResponse {
                outcome: "rejected".into(),
                version: None,
                digest: None,
                reason: Some(rejection.reason),
            }),
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(SwapResponse {
                outcome: "rejected".into(),
                version: None,
                digest: None,
                reason: Some(format!("validation did not finish: {error}")),
            }),
        ),
    }
}

/// The client side, for `sluice plugin swap` and `sluice plugin status`.
pub mod client {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    use anyhow::Context as _;

    use super::{SwapRequest, SwapResponse};

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            // 4xx answers carry the rejection reason: read them, do not fail on them.
            .http_status_as_error(false)
            // Compiling a large component can take seconds.
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    fn unreachable(address: SocketAddr) -> String {
        format!(
            "no Sluice admin endpoint answers at {address}; is `sluice run` running, and with this --admin address?"
        )
    }

    pub fn swap(address: SocketAddr, path: &Path) -> anyhow::Result<SwapResponse> {
        // The host resolves the path itself: send it absolute.
        let path =
            std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        agent()
            .post(format!("http://{address}/plugin/swap"))
            .send_json(&SwapRequest { path })
            .with_context(|| unreachable(address))?
            .body_mut()
            .read_json::<SwapResponse>()
            .context("reading the admin endpoint's answer")
    }

    pub fn status(address: SocketAddr) -> anyhow::Result<serde_json::Value> {
        agent()
            .get(format!("http://{address}/status"))
            .call()
            .with_context(|| unreachable(address))?
            .body_mut()
            .read_json()
            .context("reading the admin endpoint's answer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
