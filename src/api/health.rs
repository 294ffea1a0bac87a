//! Operational endpoints: `/healthz` (liveness), `/readyz` (readiness) and `/metrics`
//! (Prometheus text format). They need no credentials and answer any `Host`, so probes and
//! scrapers can reach them by whatever name they use.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::browser::Engines;
use crate::cluster::lease::{FenceState, Unavailable};
use crate::session::registry::Readiness;

/// What `/healthz` answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Health)]
pub(crate) struct HealthJson {
    /// Always `ok`.
    status: &'static str,
    /// This node's id, in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// How the browsers are isolated, as start-up found it: `mode` (`confined` or
    /// `insecure_shared_browser_user`), `browserUser` (`per_browser` or `gateway`),
    /// `chromiumSandbox`, `landlockAbi`, `environmentCleared`, and what is `missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    sandbox: Option<crate::browser::SandboxStatus>,
    /// In a cluster: whether this node has fenced itself (it could not renew its lease in
    /// time; its sessions are paused until it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    fenced: Option<bool>,
    /// The engines this node runs: `default` (`shell` or `chromium`, the engine of headless
    /// sessions), the executables of `shell`, `chromium` and `xvfb` (`null` when not
    /// installed), and whether `headful` sessions (`headless: false`) can run here.
    #[serde(skip_serializing_if = "Option::is_none")]
    engines: Option<EnginesJson>,
}

/// The engines, as `/healthz` shows them.
#[derive(Debug, Serialize, ToSchema)]
struct EnginesJson {
    /// `shell` or `chromium`.
    default: &'static str,
    shell: Option<String>,
    chromium: Option<String>,
    xvfb: Option<String>,
    headful: bool,
}

impl EnginesJson {
    fn of(engines: &Engines) -> EnginesJson {
        let shown = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
        EnginesJson {
            default: engines.default.as_str(),
            shell: shown(&engines.shell),
            chromium: shown(&engines.chromium),
            xvfb: shown(&engines.xvfb),
            headful: engines.headful(),
        }
    }
}

/// What `/readyz` answers: 200 with `status` `ready`, or 503 with `not_ready` and why.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Readiness)]
pub(crate) struct ReadinessJson {
    status: ReadyStatus,
    /// In a cluster, a full node is still ready: it places creates on other nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    at_capacity: Option<bool>,
    /// Why no new session can be served (503 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^(at_capacity|shutting_down|chromium_unavailable|node_fenced|database_unavailable)$")]
    reason: Option<&'static str>,
    /// The same, for people (503 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    live_sessions: usize,
    max_sessions: usize,
}

/// Whether a new session can be served now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum ReadyStatus {
    Ready,
    NotReady,
}

/// `GET /healthz`: the process is up and serving HTTP. In a cluster it names this node, so
/// that a node can check that its advertise URL reaches itself.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "The process serves HTTP", body = HealthJson)),
)]
pub(crate) async fn healthz(State(state): State<AppState>) -> Json<HealthJson> {
    Json(HealthJson {
        status: "ok",
        node: state.cluster.as_ref().map(|c| c.node().to_owned()),
        sandbox: state.sandbox.as_deref().cloned(),
        fenced: state
            .cluster
            .as_ref()
            .map(|_| state.fence.state() != FenceState::Serving),
        engines: state.engines.as_deref().map(EnginesJson::of),
    })
}

/// `GET /readyz`: 200 when a new session can be served now, else 503 with the reason.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "A new session can be served now", body = ReadinessJson),
        (status = 503, description = "No new session can be served now; `reason` says why", body = ReadinessJson),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let registry = &state.registry;
    let mut answer = ReadinessJson {
        status: ReadyStatus::Ready,
        at_capacity: None,
        reason: None,
        message: None,
        live_sessions: registry.live_count(),
        max_sessions: registry.max_sessions(),
    };
    let (reason, message) = match (state.fence.admits(), registry.readiness()) {
        (Err(unavailable), _) => (
            match unavailable {
                Unavailable::Fenced => "node_fenced",
                Unavailable::DatabaseUnavailable => "database_unavailable",
            },
            unavailable.to_string(),
        ),
        (Ok(()), Readiness::Ready) => return Json(answer).into_response(),
        // A full node of a cluster still serves: it places creates on other nodes.
        (Ok(()), Readiness::AtCapacity) if state.cluster.is_some() => {
            answer.at_capacity = Some(true);
            return Json(answer).into_response();
        }
        (Ok(()), Readiness::AtCapacity) => (
            "at_capacity",
            format!("all {} session slots are in use", registry.max_sessions()),
        ),
        (Ok(()), Readiness::ShuttingDown) => (
            "shutting_down",
            "the gateway is shutting down and takes no new sessions".to_owned(),
        ),
        (Ok(()), Readiness::ChromiumUnavailable(error)) => (
            "chromium_unavailable",
            format!("the latest browser launch failed: {error}"),
        ),
    };
    answer.status = ReadyStatus::NotReady;
    answer.reason = Some(reason);
    answer.message = Some(message);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(answer),
    )
        .into_response()
}

/// `GET /metrics`
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
