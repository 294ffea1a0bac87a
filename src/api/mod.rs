//! The HTTP surface: Steel's sessions API, CDP discovery and WebSocket upgrades, health.
//!
//! Handlers are thin: extractors ([`extract`]) validate input, handlers call the session
//! registry and shape JSON ([`wire`]), and domain errors become [`ApiError`]s through
//! `From`. Handlers must not launch browsers or change session states themselves.

pub(crate) mod cdp;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod files;
pub(crate) mod health;
pub(crate) mod live;
pub(crate) mod locate;
pub(crate) mod openapi;
pub(crate) mod relay;
pub(crate) mod sessions;
pub(crate) mod unsupported;
pub(crate) mod upgrade;
pub(crate) mod usage;
pub(crate) mod viewer;
pub(crate) mod wire;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;
use tower_http::timeout::RequestBodyDeadlineLayer;

use crate::auth::{Caller, KeyRing};
use crate::cluster::Cluster;
use crate::cluster::lease::{Fence, Unavailable};
use crate::metering::Meter;
use crate::session::params::TimeoutLimits;
use crate::session::registry::Registry;
pub(crate) use error::ApiError;
use wire::PublicUrls;

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 64 << 10;
/// Largest request head (request line and header fields) accepted. hyper enforces a
/// similar limit only roughly, while it reads; this makes it exact.
pub(crate) const MAX_HEAD: usize = 64 << 10;

/// Shared state of every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub registry: Arc<Registry>,
    pub urls: Arc<PublicUrls>,
    pub limits: TimeoutLimits,
    /// Proxy tasks of attached clients, so shutdown can wait for their close frames.
    pub clients: TaskTracker,
    pub meter: Arc<Meter>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// API keys; empty when the gateway runs open.
    pub keys: Arc<KeyRing>,
    /// Largest WebSocket message a client may send.
    pub max_message: usize,
    /// How long a client's WebSocket may stay idle before it gets a ping.
    pub ping_every: std::time::Duration,
    /// Longest a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// The other nodes, in cluster mode (`--database-url`).
    pub cluster: Option<Arc<Cluster>>,
    /// Whether this node serves (closed while it is cut off from the cluster's database).
    pub fence: Arc<Fence>,
    /// View state of the sessions (live views, the computer API's pointer, viewer tokens).
    pub viewers: Arc<crate::viewer::Viewers>,
    /// The viewer's CSP `frame-ancestors` (`--viewer-frame-ancestors`).
    pub viewer_frame_ancestors: String,
    /// How the browsers are isolated, for `/healthz`; `None` when the host does not say.
    pub sandbox: Option<Arc<crate::browser::SandboxStatus>>,
    /// The engines the host runs, for `/healthz`; `None` when the host has no choice.
    pub engines: Option<Arc<crate::browser::Engines>>,
}

/// The API key a request presented, kept for links that must carry it (CDP discovery).
#[derive(Debug, Clone, Default)]
pub(crate) struct PresentedKey(pub Option<String>);

/// Header that carries the API key of REST calls, as the Steel SDKs send it.
pub(crate) const API_KEY_HEADER: &str = "steel-api-key";
/// Query parameter that carries the API key of WebSocket and `/json` requests.
pub(crate) const API_KEY_PARAM: &str = "apiKey";

/// Paths that answer any `Host`: probes and scrapers reach them by pod IP or service name.
/// They need no key, and are served even over the soft connection cap (`--max-connections`).
pub(crate) const OPERATIONAL_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// All routes. Static segments such as `/v1/sessions/release` win over `{id}`.
///
/// The middleware order matters. axum runs the layer added last first, so a request passes,
/// from the outside in:
/// 1. [`relay::peer_hop`]: 403 for `x-ingot-*` headers without the cluster's secret; with
///    it, the request is marked as relayed by another node (and is never relayed again);
/// 2. [`refuse_foreign_requests`]: a web page (an `Origin` header) or a rebound DNS name
///    (`Host`) is refused before anything else reads the request; a relayed request keeps
///    the client's `Host`, which the relaying node checked against its own public URL;
/// 3. [`refuse_large_heads`]: 431 JSON for a request head over [`MAX_HEAD`];
/// 4. [`authenticate`]: 401 without a valid key; otherwise the [`Caller`] is attached, and
///    handlers that need one refuse a request without it (they fail closed); a relayed
///    request is authenticated by the client's key like any other;
/// 5. [`refuse_while_fenced`]: 503 `node_fenced` for everything but the probes while this
///    node is cut off from the cluster's database (fenced), and 503 `database_unavailable`
///    for what would change a session (create, release, timeout) while its latest lease
///    renewal failed;
/// 6. the body deadline, then the body size limit, then the route's handler; the files
///    routes skip both (an upload enforces the file size limit and a stall timeout itself).
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/release", post(sessions::release_all))
        .route("/v1/sessions/{id}", get(sessions::retrieve))
        .route("/v1/sessions/{id}/release", post(sessions::release))
        .route("/v1/sessions/{id}/timeout", post(sessions::set_timeout))
        .route(
            "/v1/sessions/{id}/live-details",
            get(sessions::live_details),
        )
        .route("/v1/sessions/{id}/context", get(sessions::context))
        .route("/v1/sessions/{id}/computer", post(viewer::computer))
        .route("/v1/sessions/{id}/viewer", get(live::viewer))
        .route("/v1/sessions/{id}/view", get(live::view))
        .route("/v1/sessions/{id}/viewer/facts", get(live::facts))
        .route("/v1/sessions/{id}/viewer/thumbnail", get(live::thumbnail))
        .route("/v1/sessions/{id}/viewer/ws", get(live::socket))
        .route("/ui", get(live::console))
        .route("/", get(cdp::connect_by_query))
        .route("/devtools/browser/{id}", get(cdp::connect_by_path))
        .route("/json/version", get(cdp::version_by_query))
        .route("/json/version/", get(cdp::version_by_query))
        .route(
            "/devtools/browser/{id}/json/version",
            get(cdp::version_by_path),
        )
        .route(
            "/devtools/browser/{id}/json/version/",
            get(cdp::version_by_path),
        )
        .merge(unsupported::routes())
        .route("/v1/usage", get(usage::usage))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(RequestBodyDeadlineLayer::new(state.body_timeout))
        // Uploads stream large bodies: they keep limits of their own.
        .merge(files::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_fenced,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(refuse_large_heads))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_foreign_requests,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            relay::peer_hop,
        ))
        .with_state(state)
}

/// Refuses requests while this node may not serve them: everything but the probes and the
/// OpenAPI document while it is fenced (its browsers are frozen; a client should come back
/// shortly, or go through another node), and creates, releases and new timeouts while it
/// cannot reach the database ([`records_a_change`]).
async fn refuse_while_fenced(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if OPERATIONAL_PATHS.contains(&path) || path == openapi::PATH {
        return next.run(request).await;
    }
    match state.fence.admits() {
        Ok(()) => {}
        Err(Unavailable::Fenced) => return ApiError::from(Unavailable::Fenced).into_response(),
        Err(unreachable) => {
            if records_a_change(request.method(), path) {
                return ApiError::from(unreachable).into_response();
            }
        }
    }
    next.run(request).await
}

/// Whether a request must be recorded in the database before it is answered: a create (it
/// would launch a browser it cannot record), a release (its 200 could be contradicted), a
/// new timeout.
fn records_a_change(method: &Method, path: &str) -> bool {
    method == Method::POST
        && (path == "/v1/sessions"
            || path.ends_with("/release")
            || (path.starts_with("/v1/sessions/") && path.ends_with("/timeout")))
}

/// Refuses request heads over [`MAX_HEAD`] with 431 JSON.
async fn refuse_large_heads(request: Request, next: Next) -> Response {
    let head = request.uri().to_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > MAX_HEAD {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "head_too_large",
            format!(
                "the request line and headers are larger than {} KiB",
                MAX_HEAD >> 10
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Identifies the caller by its API key (the `steel-api-key` header, or the `apiKey` query
/// parameter that WebSocket clients use) and refuses a missing or wrong key with 401 before
/// anything happens. Health, metrics and the OpenAPI document need no key; the console and
/// the viewer's routes take a session's viewer token instead (checked by their handlers).
async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if OPERATIONAL_PATHS.contains(&path) || path == openapi::PATH || takes_viewer_token(path) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            request.uri().query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == API_KEY_PARAM)
                    .map(|(_, v)| v.into_owned())
            })
        })
        .filter(|k| !k.is_empty());
    let caller = if state.keys.is_empty() {
        Caller::Open
    } else {
        match presented
            .as_deref()
            .and_then(|k| state.keys.authenticate(k))
        {
            Some(tenant) => Caller::Tenant(tenant),
            None => {
                let why = if presented.is_some() {
                    "the API key is not valid"
                } else {
                    "an API key is required: send it in the steel-api-key header, or as the apiKey query parameter for WebSocket and /json requests"
                };
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why)
                    .into_response();
            }
        }
    };
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(PresentedKey(presented));
    next.run(request).await
}

/// Whether `path` is the console or a viewer route, which take a session's viewer token
/// (checked by the handler) instead of an API key; the console's page needs neither, and
/// its calls carry a key like any client's.
fn takes_viewer_token(path: &str) -> bool {
    path == "/ui"
        || path.strip_prefix("/v1/sessions/").is_some_and(|rest| {
            let mut parts = rest.splitn(2, '/');
            let (_, tail) = (parts.next(), parts.next().unwrap_or(""));
            matches!(
                tail,
                "viewer" | "view" | "viewer/facts" | "viewer/thumbnail" | "viewer/ws"
            )
        })
}

/// Whether `origin` (an `Origin` header) is the origin of the request's own `host`: a page
/// that ingot itself served (the console, the viewer).
pub(crate) fn is_same_origin(origin: &str, host: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// Refuses requests that a web page could make:
/// * Browsers attach `Origin` to cross-site requests and to every WebSocket they open; SDKs
///   and CDP clients send none. So a page (in a session's browser or anywhere else) cannot
///   release sessions or drive a browser through the gateway. Only ingot's own pages (the
///   console, the viewer: an `Origin` that is the request's own allowed `Host`) pass, and
///   they still need a key or a viewer token.
/// * A `Host` that is a name other than `localhost` or the public URL's host is a DNS
///   rebinding attempt: a page on a hostile name that now resolves to this machine. IP
///   literals cannot be rebound. Chromium applies the same rule to its own DevTools server.
async fn refuse_foreign_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let foreign = request.headers().get(header::ORIGIN).is_some_and(|origin| {
        !origin.to_str().is_ok_and(|o| {
            host.is_some_and(|h| host_allowed(h, &state.urls) && is_same_origin(o, h))
        })
    });
    if foreign {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin_refused",
            "requests from web pages (with an Origin header) are refused",
        )
        .into_response();
    }
    if let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        && request.extensions().get::<relay::Hop>().is_none()
        && !host_allowed(host, &state.urls)
        && !OPERATIONAL_PATHS.contains(&request.uri().path())
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "host_refused",
            format!("Host {host:?} is not this gateway; use an IP address, localhost or --public-url's host"),
        )
        .into_response();
    }
    next.run(request).await
}

fn host_allowed(host: &str, urls: &PublicUrls) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.eq_ignore_ascii_case(urls.host())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_console_and_viewer_routes_skip_the_api_key() {
        for path in [
            "/ui",
            "/v1/sessions/abc/viewer",
            "/v1/sessions/abc/view",
            "/v1/sessions/abc/viewer/facts",
            "/v1/sessions/abc/viewer/thumbnail",
            "/v1/sessions/abc/viewer/ws",
        ] {
            assert!(takes_viewer_token(path), "{path}");
        }
        for path in [
            "/v1/sessions",
            "/v1/sessions/abc",
            "/v1/sessions/abc/release",
            "/v1/sessions/abc/viewer/other",
            "/v1/sessions/abc/files/viewer",
            "/ui/x",
            "/v1/usage",
        ] {
            assert!(!takes_viewer_token(path), "{path}");
        }
    }

    #[test]
    fn same_origin_is_the_requests_own_host() {
        assert!(is_same_origin("http://127.0.0.1:3000", "127.0.0.1:3000"));
        assert!(is_same_origin(
            "https://Browsers.example.com",
            "browsers.example.com"
        ));
        assert!(!is_same_origin("http://127.0.0.1:3001", "127.0.0.1:3000"));
        assert!(!is_same_origin("http://evil.example", "127.0.0.1:3000"));
        assert!(!is_same_origin("null", "127.0.0.1:3000"));
    }
}
