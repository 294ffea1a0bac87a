//! CDP over HTTP: discovery (`/json/version`) and the CDP connect (the WebSocket upgrade
//! itself is [`super::upgrade`]'s).
//!
//! A connection is refused with an HTTP status before the upgrade when its session is
//! unknown or ended, when the session has `--max-clients-per-session` CDP clients already
//! (429 `too_many_clients`), or when its browser cannot take another client; only then is
//! the socket handed to [`crate::proxy`].

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorJson};
use super::extract::{SessionId, StrictQuery, parse_id};
use super::locate::{self, Route, gone};
use super::relay::Relay;
use super::upgrade::{Upgrade, is_websocket_upgrade};
use super::wire::PublicUrls;
use super::{API_KEY_PARAM, AppState, PresentedKey};
use crate::auth::Caller;
use crate::cdp::mux::CommandError;
use crate::proxy;
use crate::session::Session;

/// What `GET /` without a `sessionId` answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ServiceInfo)]
pub(crate) struct ServiceJson {
    /// Always `ingot`.
    service: &'static str,
    /// ingot's version.
    version: &'static str,
    /// The sessions API.
    #[schema(format = Uri)]
    sessions: String,
}

/// `GET /?sessionId=<id>`: Steel's `websocketUrl`. Without an upgrade it describes the service.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "connect_by_query",
    tag = "cdp",
    params(("sessionId" = Option<uuid::Uuid>, Query, description = "The session to connect to; without it, the service is described")),
    responses(
        (status = 101, description = "A WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`) to a live session: CDP over the WebSocket"),
        (status = 200, description = "Without `sessionId` and without an upgrade: what this service is", body = ServiceJson),
        (status = 400, description = "`sessionId` is not a UUID, or the upgrade request is malformed", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 410, description = "The session has ended", body = ErrorJson),
        (status = 426, description = "With a `sessionId`, the request is not a WebSocket upgrade", body = ErrorJson),
        (status = 429, description = "The session has `--max-clients-per-session` CDP clients already (`too_many_clients`)", body = ErrorJson),
        (status = 502, description = "The browser cannot take another client", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = []), ("apiKey" = [])),
)]
pub(crate) async fn connect_by_query(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(query): StrictQuery<HashMap<String, String>>,
    request: Request,
) -> Response {
    let Some(raw) = query.get("sessionId") else {
        if is_websocket_upgrade(request.headers()) {
            return ApiError::bad_request(
                "sessionId: connect to the websocketUrl of a session (/?sessionId=<id>)",
            )
            .into_response();
        }
        return Json(ServiceJson {
            service: "ingot",
            version: env!("CARGO_PKG_VERSION"),
            sessions: format!("{}/v1/sessions", state.urls.http),
        })
        .into_response();
    };
    match parse_id(raw, "sessionId") {
        Ok(id) => connect(state, id, &caller, request)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

/// `GET /devtools/browser/<id>`: the endpoint `/json/version` advertises.
#[utoipa::path(
    get,
    path = "/devtools/browser/{id}",
    operation_id = "connect_by_path",
    tag = "cdp",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 101, description = "A WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`) to a live session: CDP over the WebSocket"),
        (status = 400, description = "`id` is not a UUID, or the upgrade request is malformed", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 410, description = "The session has ended", body = ErrorJson),
        (status = 426, description = "The request is not a WebSocket upgrade", body = ErrorJson),
        (status = 429, description = "The session has `--max-clients-per-session` CDP clients already (`too_many_clients`)", body = ErrorJson),
        (status = 502, description = "The browser cannot take another client", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = []), ("apiKey" = [])),
)]
pub(crate) async fn connect_by_path(
    State(state): State<AppState>,
    caller: Caller,
    SessionId(id): SessionId,
    request: Request,
) -> Result<Response, ApiError> {
    connect(state, id, &caller, request).await
}

/// Attaches a client to a live session the caller may use, then upgrades the connection
/// and hands the socket to the proxy.
async fn connect(
    state: AppState,
    id: uuid::Uuid,
    caller: &Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let upgrade = Upgrade::check(request.headers(), "a CDP WebSocket endpoint")?;
    let route = (id, Route::Connect);
    let (session, request) = match locate::upgrade(&state, caller, route, request)
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    if !session.phase().is_live() {
        return Err(ended(&session));
    }
    let mux = session.mux().ok_or_else(|| ended(&session))?;
    let link = match mux.attach_client().await {
        Ok(link) => link,
        Err(CommandError::TooManyClients(e)) => {
            info!(session_id = %id, "a CDP client refused: {e}");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_clients",
                format!("session {id}: {e}"),
            ));
        }
        // The session ended while the client was being attached.
        Err(_) if !session.phase().is_live() => return Err(ended(&session)),
        Err(e) => {
            warn!(session_id = %id, error = %e, "cannot attach a client to the browser");
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "browser_unavailable",
                format!("cannot reach the browser: {e}"),
            ));
        }
    };
    let ping_every = state.ping_every;
    let fence = state.fence.clone();
    Ok(upgrade.complete(&state, id, request, move |ws| {
        proxy::serve_client(ws, link, session, ping_every, fence)
    }))
}

/// `GET /json/version[/]?sessionId=<id>`. Without a `sessionId` it answers for the only
/// live session, because Puppeteer's `browserURL` drops the path and query it was given.
#[utoipa::path(
    get,
    path = "/json/version",
    operation_id = "version_by_query",
    tag = "cdp",
    params(("sessionId" = Option<uuid::Uuid>, Query, description = "The session; without it, the caller's only live session")),
    responses(
        (status = 200, description = "The session's browser, as Chromium's DevTools server describes it", body = VersionJson),
        (status = 400, description = "`sessionId` is not a UUID, or it is missing while the caller has not exactly one live session", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 410, description = "The session has ended", body = ErrorJson),
        (status = 502, description = "In a cluster: the node that runs it did not answer", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = []), ("apiKey" = [])),
)]
pub(crate) async fn version_by_query(
    State(state): State<AppState>,
    caller: Caller,
    key: PresentedKey,
    relay: Relay,
    StrictQuery(query): StrictQuery<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let session = match query.get("sessionId") {
        Some(raw) => {
            let id = parse_id(raw, "sessionId")?;
            return discovery(&state, &relay, &key, id, &caller).await;
        }
        None => match state.registry.sole_live_session(&caller) {
            Some(session) => session,
            None => return sole_elsewhere(&state, &relay, &key, &caller).await,
        },
    };
    Ok(Json(version_json(&relay.links(&state), &session, &key)).into_response())
}

/// Without a `sessionId` and no live session here: in a cluster, the discovery answer of
/// the caller's only live session on another node; otherwise 400.
async fn sole_elsewhere(
    state: &AppState,
    relay: &Relay,
    key: &PresentedKey,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let Some(id) = locate::sole_live_elsewhere(state, relay, caller).await? else {
        return Err(ApiError::bad_request(
            "sessionId: name the session (/json/version?sessionId=<id>); without it this endpoint answers \
             only while exactly one session is live",
        ));
    };
    discovery(state, relay, key, id, caller).await
}

/// `GET /devtools/browser/<id>/json/version[/]`
#[utoipa::path(
    get,
    path = "/devtools/browser/{id}/json/version",
    operation_id = "version_by_path",
    tag = "cdp",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session's browser, as Chromium's DevTools server describes it", body = VersionJson),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 410, description = "The session has ended", body = ErrorJson),
        (status = 502, description = "In a cluster: the node that runs it did not answer", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = []), ("apiKey" = [])),
)]
pub(crate) async fn version_by_path(
    State(state): State<AppState>,
    caller: Caller,
    key: PresentedKey,
    relay: Relay,
    SessionId(id): SessionId,
) -> Result<Response, ApiError> {
    discovery(&state, &relay, &key, id, &caller).await
}

/// The discovery answer for session `id`: this node's when it runs the session, else the
/// answer of the node that does; 410 once it ended, 404 for an unknown one.
async fn discovery(
    state: &AppState,
    relay: &Relay,
    key: &PresentedKey,
    id: uuid::Uuid,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let route = (id, Route::Version);
    let (session, ()) = match locate::resolve(state, relay, caller, route, ())
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    if !session.phase().is_live() {
        return Err(ended(&session));
    }
    Ok(Json(version_json(&relay.links(state), &session, key)).into_response())
}

/// The discovery answer of `/json/version`, in the shape of Chromium's DevTools server. A
/// field the browser did not report is `null`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JsonVersion)]
pub(crate) struct VersionJson {
    #[serde(rename = "Browser")]
    #[schema(required = true)]
    browser: Option<String>,
    #[serde(rename = "Protocol-Version")]
    #[schema(required = true)]
    protocol_version: Option<String>,
    /// The session's `userAgent` when it was given one.
    #[serde(rename = "User-Agent")]
    #[schema(required = true)]
    user_agent: Option<String>,
    #[serde(rename = "V8-Version")]
    #[schema(required = true)]
    v8_version: Option<String>,
    #[serde(rename = "WebKit-Version")]
    #[schema(required = true)]
    webkit_version: Option<String>,
    /// Where CDP clients connect; it carries the API key the request presented.
    #[serde(rename = "webSocketDebuggerUrl")]
    #[schema(format = Uri)]
    web_socket_debugger_url: String,
}

/// The discovery answer. Its WebSocket URL carries the key the request presented, because
/// clients (Playwright, Puppeteer's `browserURL`) connect to it as given.
fn version_json(urls: &PublicUrls, session: &Session, key: &PresentedKey) -> VersionJson {
    let mut endpoint = urls.browser_endpoint(session.id);
    if let Some(key) = &key.0 {
        let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
        endpoint = format!("{endpoint}?{API_KEY_PARAM}={encoded}");
    }
    let version = session.browser_version();
    let field = |name: &str| {
        version
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    VersionJson {
        // What a user's browser would say: the headless shell's product is `HeadlessChrome/…`.
        browser: field("product").map(|p| p.replace("HeadlessChrome/", "Chrome/")),
        protocol_version: field("protocolVersion"),
        // The user agent the session's pages send.
        user_agent: session.user_agent(),
        v8_version: field("jsVersion"),
        webkit_version: field("revision"),
        web_socket_debugger_url: endpoint,
    }
}

/// 410 for a session this node ran, saying how it ended.
fn ended(session: &Session) -> ApiError {
    let status = session.phase().status();
    let reason = session.end_reason().map(|r| r.as_str());
    gone(session.id, status, reason)
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::header;
    use axum::routing::get;
    use tokio_util::task::TaskTracker;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::KeyRing;
    use crate::metering::Meter;
    use crate::session::admission::Admission;
    use crate::session::params::TimeoutLimits;
    use crate::session::registry::Registry;
    use crate::session::supervisor::LivenessProbe;
    use crate::testing::FakeBrowserHost;

    /// A single node's state on the fake browser host, its records in `dir`.
    pub(in crate::api) async fn state(dir: &std::path::Path) -> AppState {
        let host = FakeBrowserHost::new();
        let meter = Meter::open(dir).await.expect("usage database");
        let files = std::sync::Arc::new(
            crate::files::FileStore::new(dir.join("files"), Duration::from_secs(60), 1 << 20)
                .expect("files directory"),
        );
        let admission = Admission {
            max_sessions: 2,
            pool_size: 0,
            pool_settle: Duration::ZERO,
            queue_limit: 0,
            queue_timeout: Duration::ZERO,
            per_tenant: None,
            create_timeout: Duration::from_secs(20),
        };
        let history = crate::session::registry::HistoryLimits {
            keep_for: Duration::from_secs(86_400),
            keep_newest: 10,
        };
        let probe = LivenessProbe {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        };
        AppState {
            registry: Registry::new(host, meter.clone(), admission, probe, history, files),
            urls: Arc::new(crate::api::wire::PublicUrls::new("http://127.0.0.1:1")),
            limits: TimeoutLimits {
                default_ms: 60_000,
                min_ms: 1_000,
                max_ms: 86_400_000,
            },
            clients: TaskTracker::new(),
            meter,
            metrics: crate::telemetry::install(2, 0).expect("recorder"),
            keys: Arc::new(KeyRing::default()),
            max_message: 1 << 20,
            ping_every: Duration::from_secs(30),
            body_timeout: Duration::from_secs(5),
            cluster: None,
            fence: Arc::new(crate::cluster::lease::Fence::open_forever()),
            viewers: Default::default(),
            viewer_frame_ancestors: "'self'".into(),
            sandbox: None,
            engines: None,
        }
    }

    /// Routes mounted without the authentication layer (a mistake this test stands for)
    /// still refuse: no caller, no session.
    #[tokio::test]
    async fn a_websocket_request_without_a_caller_never_reaches_a_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(dir.path()).await;
        let session = state
            .registry
            .create(
                crate::session::params::parse_create_body(b"{}", state.limits).expect("body"),
                &Caller::Open,
            )
            .await
            .expect("create");
        assert_eq!(state.registry.live_count(), 1);
        let router = Router::new()
            .route("/", get(connect_by_query))
            .route("/devtools/browser/{id}", get(connect_by_path))
            .route("/json/version", get(version_by_query))
            .with_state(state.clone());
        for uri in [
            format!("/?sessionId={}", session.id),
            format!("/devtools/browser/{}", session.id),
            format!("/json/version?sessionId={}", session.id),
        ] {
            let request = axum::http::Request::get(&uri)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_VERSION, "13")
                .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
                .body(Body::empty())
                .expect("request");
            let response = router.clone().oneshot(request).await.expect("response");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{uri}");
        }
        let mux = session.mux().expect("live");
        assert_eq!(mux.clients(), 0, "no client was attached to the browser");
        state.registry.shutdown(Duration::from_secs(5)).await;
    }
}
