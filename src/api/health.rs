//! Operational endpoints: `/healthz` (liveness), `/readyz` (readiness) and `/metrics`
//! (Prometheus text format). They need no credentials and answer any `Host`, so probes and
//! scrapers can reach them by whatever name they use.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::session::registry::Readiness;

/// `GET /healthz`: the process is up and serving HTTP. In a cluster it names this node, so
/// that a node can check that its advertise URL reaches itself.
pub async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    match &state.cluster {
        Some(cluster) => Json(json!({"status": "ok", "node": cluster.node()})),
        None => Json(json!({"status": "ok"})),
    }
}

/// `GET /readyz`: 200 when a new session can be served now, else 503 with the reason.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let registry = &state.registry;
    let (reason, message) = match registry.readiness() {
        Readiness::Ready => {
            return Json(json!({
                "status": "ready",
                "liveSessions": registry.live_count(),
                "maxSessions": registry.max_sessions(),
            }))
            .into_response();
        }
        // A full node of a cluster still serves: it places creates on other nodes.
        Readiness::AtCapacity if state.cluster.is_some() => {
            return Json(json!({
                "status": "ready",
                "atCapacity": true,
                "liveSessions": registry.live_count(),
                "maxSessions": registry.max_sessions(),
            }))
            .into_response();
        }
        Readiness::AtCapacity => (
            "at_capacity",
            format!("all {} session slots are in use", registry.max_sessions()),
        ),
        Readiness::ShuttingDown => (
            "shutting_down",
            "the gateway is shutting down and takes no new sessions".to_owned(),
        ),
        Readiness::ChromiumUnavailable(error) => (
            "chromium_unavailable",
            format!("the latest browser launch failed: {error}"),
        ),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({
            "status": "not_ready",
            "reason": reason,
            "message": message,
            "liveSessions": registry.live_count(),
            "maxSessions": registry.max_sessions(),
        })),
    )
        .into_response()
}

/// `GET /metrics`
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
