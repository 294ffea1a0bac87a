//! The live viewer over HTTP: its pages (`debugUrl`, `sessionViewerUrl`), the session's
//! facts and thumbnail for them, the viewer's WebSocket, and the console at `/ui`.
//!
//! Every viewer route takes the session's viewer token (`?token=`) instead of an API key;
//! it works only while the session is live. The WebSocket is accepted only from ingot's
//! own origin. Only the HTTP parts live here (routes, pages, CSP, token checks, the upgrade
//! through [`super::upgrade`]): the socket is handed to [`crate::viewer::socket`], which
//! speaks the viewer's protocol, and closed with the code [`crate::proxy`] gives the reason
//! it stopped. The token carries the mode ([`ViewerMode`]): a read-only token stays
//! read-only whatever the URL says, and `interactive=false` lowers an interactive one. A
//! page opened with an interactive token and `interactive=false` is sent on (303) to the same
//! page with the read-only token, so the link it shows can be shared without giving control.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorJson};
use super::extract::{SessionId, StrictQuery};
use super::locate::{self, Route, Step, viewer_gone as viewer_ended};
use super::relay::Relay;
use super::upgrade::Upgrade;
use crate::auth::Caller;
use crate::proxy;
use crate::session::Session;
use crate::viewer::screen::Pick;
use crate::viewer::socket::{Ending, Options};
use crate::viewer::{self, CONSOLE_HTML, VIEW_HTML, VIEWER_HTML, ViewerMode};
use crate::vocab::Disconnect;

type Query = StrictQuery<HashMap<String, String>>;

/// `GET /ui`: the operator console.
#[utoipa::path(
    get,
    path = "/ui",
    operation_id = "console",
    tag = "viewer",
    responses((status = 200, description = "The operator console; its calls send an API key like any client", content_type = "text/html", body = String)),
)]
pub(crate) async fn console() -> Response {
    page(CONSOLE_HTML, "'none'")
}

/// `GET /v1/sessions/{id}/viewer`: the live viewer (`debugUrl`).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/viewer",
    operation_id = "session_viewer",
    tag = "viewer",
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("token" = String, Query, description = "The session's viewer token, from its `debugUrl`"),
    ),
    responses(
        (status = 200, description = "The live viewer's page; query parameters `interactive`, `showControls`, `theme`, `pageId`, `pageIndex` are read by the page", content_type = "text/html", body = String),
        (status = 303, description = "Asked for `interactive=false` with an interactive token: the same page with the read-only token (`Location`)"),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 403, description = "The viewer token is missing or not this session's", body = ErrorJson),
    ),
)]
pub(crate) async fn viewer(
    State(state): State<AppState>,
    SessionId(id): SessionId,
    StrictQuery(query): Query,
) -> Result<Response, ApiError> {
    viewer_page(&state, id, &query, "viewer", VIEWER_HTML)
}

/// `GET /v1/sessions/{id}/view`: the viewer next to the session's facts
/// (`sessionViewerUrl`).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/view",
    operation_id = "session_view",
    tag = "viewer",
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("token" = String, Query, description = "The session's viewer token, from its `debugUrl`"),
    ),
    responses(
        (status = 200, description = "The viewer next to the session's facts", content_type = "text/html", body = String),
        (status = 303, description = "Asked for `interactive=false` with an interactive token: the same page with the read-only token (`Location`)"),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 403, description = "The viewer token is missing or not this session's", body = ErrorJson),
    ),
)]
pub(crate) async fn view(
    State(state): State<AppState>,
    SessionId(id): SessionId,
    StrictQuery(query): Query,
) -> Result<Response, ApiError> {
    viewer_page(&state, id, &query, "view", VIEW_HTML)
}

/// A viewer page (`name`, the last segment of its path), once the token fits. Asked for
/// read-only with an interactive token, it sends the browser on to the same page with the
/// read-only token, so that the link it then shows cannot be turned back; a read-only token
/// whose URL lost `interactive=false` is sent on with it again, so the page shows no input
/// controls (the server ignores a read-only viewer's input either way).
fn viewer_page(
    state: &AppState,
    id: Uuid,
    query: &HashMap<String, String>,
    name: &str,
    html: &'static str,
) -> Result<Response, ApiError> {
    let mode = token(state, id, query)?;
    let asked_interactive = socket_options(query).interactive;
    // Read-only either way: the token says so, or the URL asks for it. The page is then
    // sent on with the read-only token and `interactive=false`, so it shows no controls.
    if mode == ViewerMode::ReadOnly && asked_interactive
        || mode == ViewerMode::Interactive && !asked_interactive
    {
        let read_only = state.viewers.token(id, ViewerMode::ReadOnly);
        let mut sorted: Vec<_> = query
            .iter()
            .filter(|(k, _)| *k != "token" && *k != "interactive")
            .collect();
        sorted.sort();
        let mut target = url::form_urlencoded::Serializer::new(String::new());
        target.append_pair("token", &read_only);
        target.append_pair("interactive", "false");
        target.extend_pairs(sorted);
        let location = format!("{name}?{}", target.finish());
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        let headers = response.headers_mut();
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(response);
    }
    Ok(page(html, &state.viewer_frame_ancestors))
}

/// A page of ingot's own, which loads nothing from anywhere else.
fn page(html: &'static str, frame_ancestors: &str) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         img-src 'self' blob: data:; connect-src 'self'; frame-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors {frame_ancestors}"
    );
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// The mode session `id`'s viewer token in the query grants; 403 without one.
fn token(
    state: &AppState,
    id: Uuid,
    query: &HashMap<String, String>,
) -> Result<ViewerMode, ApiError> {
    match query
        .get("token")
        .and_then(|t| state.viewers.token_mode(id, t))
    {
        Some(mode) => Ok(mode),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "viewer_token_refused",
            "the viewer token is missing or is not this session's",
        )),
    }
}

/// Once the token fits: the live session `id` on this node, or the answer to give (the
/// owner's in a cluster; 410 once it is not live anywhere, the token no longer works).
async fn viewed(
    state: &AppState,
    relay: &Relay,
    id: Uuid,
    query: &HashMap<String, String>,
) -> Result<Step<()>, ApiError> {
    token(state, id, query)?;
    let route = (id, Route::Viewer);
    Ok(
        match locate::resolve(state, relay, &Caller::Open, route, ()).await? {
            Step::Here(session, ()) if !session.phase().is_live() => {
                Step::Answered(ended_answer(&session))
            }
            step => step,
        },
    )
}

/// The 410 for a session that ended here, with how it ended, so that the session viewer can
/// show the release reason in the moment it learns of the end.
fn ended_answer(session: &Session) -> Response {
    let mut answer = viewer_ended(session.id).into_response();
    let reason = session.end_reason().map(crate::vocab::EndReason::steel);
    let facts = json!({
        "status": session.phase().status(),
        "releaseReason": reason,
        "billedMinutes": session.billed_minutes(),
    });
    let body = json!({
        "message": viewer_ended(session.id).message,
        "error": {"code": "session_ended", "message": viewer_ended(session.id).message},
        "facts": facts,
    });
    *answer.body_mut() = Body::from(body.to_string());
    answer.headers_mut().remove(header::CONTENT_LENGTH);
    answer
}

/// `GET /v1/sessions/{id}/viewer/facts`: what `sessionViewerUrl` shows next to the viewer.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/viewer/facts",
    operation_id = "session_viewer_facts",
    tag = "viewer",
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("token" = String, Query, description = "The session's viewer token, from its `debugUrl`"),
    ),
    responses(
        (status = 200, description = "The live session's facts", body = FactsJson),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 403, description = "The viewer token is missing or not this session's", body = ErrorJson),
        (status = 410, description = "The session is not live: its token no longer works", body = ErrorJson),
        (status = 502, description = "The browser (or, in a cluster, the node that runs it) did not answer", body = ErrorJson),
    ),
)]
pub(crate) async fn facts(
    State(state): State<AppState>,
    relay: Relay,
    SessionId(id): SessionId,
    StrictQuery(query): Query,
) -> Result<Response, ApiError> {
    let session = match viewed(&state, &relay, id, &query).await?.here(id) {
        Ok((session, ())) => session,
        Err(answer) => return Ok(*answer),
    };
    let left = session
        .deadline()
        .saturating_duration_since(std::time::Instant::now());
    let view = crate::session::view::SessionView::of(&session);
    Ok(Json(FactsJson {
        id,
        status: view.status,
        time_left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        billed_minutes: session.billed_minutes(),
        release_reason: None,
        created_at: super::wire::timestamp(view.created_at),
    })
    .into_response())
}

/// What `sessionViewerUrl` shows next to the viewer (only while the session is live).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ViewerFacts)]
pub(crate) struct FactsJson {
    id: Uuid,
    status: crate::vocab::Status,
    time_left_ms: u64,
    billed_minutes: u64,
    /// Always null: the facts are served only while the session is live.
    #[schema(value_type = Option<String>, required = true)]
    release_reason: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
}

/// `GET /v1/sessions/{id}/viewer/thumbnail`: a small JPEG of the session's active page.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/viewer/thumbnail",
    operation_id = "session_viewer_thumbnail",
    tag = "viewer",
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("token" = String, Query, description = "The session's viewer token, from its `debugUrl`"),
    ),
    responses(
        (status = 200, description = "A quarter-size JPEG of the session's active page", content_type = "image/jpeg", body = Vec<u8>),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 403, description = "The viewer token is missing or not this session's", body = ErrorJson),
        (status = 410, description = "The session is not live: its token no longer works", body = ErrorJson),
        (status = 502, description = "The browser (or, in a cluster, the node that runs it) did not answer", body = ErrorJson),
    ),
)]
pub(crate) async fn thumbnail(
    State(state): State<AppState>,
    relay: Relay,
    SessionId(id): SessionId,
    StrictQuery(query): Query,
) -> Result<Response, ApiError> {
    let session = match viewed(&state, &relay, id, &query).await?.here(id) {
        Ok((session, ())) => session,
        Err(answer) => return Ok(*answer),
    };
    let mux = session.mux().ok_or_else(|| viewer_ended(id))?;
    let jpeg = crate::viewer::computer::thumbnail(&mux)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "browser_unavailable",
                format!("the browser did not answer: {e}"),
            )
        })?;
    let mut response = Body::from(jpeg).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/sessions/{id}/viewer/ws`: the viewer's WebSocket, from ingot's own origin only.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/viewer/ws",
    operation_id = "session_viewer_socket",
    tag = "viewer",
    params(
        ("id" = uuid::Uuid, Path, description = "The session's id"),
        ("token" = String, Query, description = "The session's viewer token, from its `debugUrl`"),
    ),
    responses(
        (status = 101, description = "The viewer's WebSocket (frames, tabs, input); only from ingot's own origin"),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 403, description = "The viewer token is missing or not this session's", body = ErrorJson),
        (status = 410, description = "The session is not live: its token no longer works", body = ErrorJson),
        (status = 426, description = "Not a WebSocket upgrade", body = ErrorJson),
        (status = 502, description = "The browser (or, in a cluster, the node that runs it) did not answer", body = ErrorJson),
    ),
)]
pub(crate) async fn socket(
    State(state): State<AppState>,
    SessionId(id): SessionId,
    StrictQuery(query): Query,
    request: Request,
) -> Result<Response, ApiError> {
    let granted = token(&state, id, &query)?;
    same_origin(&request)?;
    let upgrade = Upgrade::check(request.headers(), "the live viewer's WebSocket endpoint")?;
    let route = (id, Route::ViewerSocket);
    let (session, request) = match locate::upgrade(&state, &Caller::Open, route, request)
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    if !session.phase().is_live() {
        return Err(viewer_ended(id));
    }
    let mux = session.mux().ok_or_else(|| viewer_ended(id))?;
    let screen = state.viewers.screen(id, &mux).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "browser_unavailable",
            e.to_string(),
        )
    })?;
    let mut options = socket_options(&query);
    options.interactive = granted.asked(options.interactive) == ViewerMode::Interactive;
    Ok(
        upgrade.complete(&state, id, request, move |mut ws| async move {
            let ending = viewer::socket::serve(&mut ws, screen, &*session, options).await;
            let frame = match ending {
                Ending::SessionEnded => {
                    let why = session.end_reason().map(Disconnect::SessionEnded);
                    Some(proxy::final_frame(why))
                }
                Ending::Broke(e) => proxy::refusal(&e),
                Ending::Left | Ending::ViewGone => None,
            };
            if let Some(frame) = frame {
                proxy::close_socket(&mut ws, frame).await;
            }
        }),
    )
}

/// A viewer is shown a live session: it asks the session whether it still lives, and its
/// input counts as the session's activity.
impl viewer::socket::Subject for Session {
    fn ended(&self) -> Option<&'static str> {
        if self.phase().is_live() {
            return None;
        }
        Some(self.end_reason().map_or("ended", |r| r.steel()))
    }

    fn note_activity(&self) {
        Session::note_activity(self);
    }
}

/// Refuses a WebSocket that a page of another origin opens (browsers always send `Origin`).
fn same_origin(request: &Request) -> Result<(), ApiError> {
    let headers = request.headers();
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) if super::is_same_origin(origin, host) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin_refused",
            "the viewer's WebSocket is accepted only from ingot's own pages",
        )),
    }
}

/// What the viewer's URL asks for (`interactive` is then bounded by the token's mode).
fn socket_options(query: &HashMap<String, String>) -> Options {
    let interactive = query.get("interactive").is_none_or(|v| v != "false");
    let pick = match (query.get("pageId"), query.get("pageIndex")) {
        (Some(id), _) if !id.is_empty() => Pick::Id(id.clone()),
        (_, Some(i)) => i.parse().map_or(Pick::Newest, Pick::Index),
        _ => Pick::Newest,
    };
    Options { interactive, pick }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_viewers_url_picks_the_page_and_read_only_mode() {
        let of = |pairs: &[(&str, &str)]| {
            socket_options(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let default = of(&[]);
        assert!(default.interactive && matches!(default.pick, Pick::Newest));
        assert!(!of(&[("interactive", "false")]).interactive);
        assert!(of(&[("interactive", "true")]).interactive);
        assert!(matches!(of(&[("pageId", "T1")]).pick, Pick::Id(ref id) if id == "T1"));
        assert!(matches!(of(&[("pageIndex", "2")]).pick, Pick::Index(2)));
        assert!(matches!(of(&[("pageIndex", "x")]).pick, Pick::Newest));
        assert!(matches!(
            of(&[("pageId", "T1"), ("pageIndex", "0")]).pick,
            Pick::Id(_)
        ));
    }
}
