//! The live viewer over HTTP: its pages (`debugUrl`, `sessionViewerUrl`), the session's
//! facts and thumbnail for them, the viewer's WebSocket, and the console at `/ui`.
//!
//! Every viewer route takes the session's viewer token (`?token=`) instead of an API key;
//! it works only while the session is live. The WebSocket is accepted only from ingot's
//! own origin. Frames and tabs come from [`crate::viewer::screen`]; a person's input is
//! turned into CDP by [`crate::viewer::input`] and sent only when the viewer is
//! interactive. The token carries the mode ([`ViewerMode`]): a read-only token stays
//! read-only whatever the URL says, and `interactive=false` lowers an interactive one. A
//! page opened with an interactive token and `interactive=false` is sent on (303) to the same
//! page with the read-only token, so the link it shows can be shared without giving control.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorJson};
use super::extract::{SessionId, StrictQuery};
use super::locate::{self, Route, Step, viewer_gone as viewer_ended};
use super::relay::Relay;
use crate::auth::Caller;
use crate::session::Session;
use crate::viewer::input::{self, Button, MouseKind};
use crate::viewer::screen::{Frame, Pick, Screen, Tabs, Watching};
use crate::viewer::{CONSOLE_HTML, VIEW_HTML, VIEWER_HTML, ViewerMode};

type Query = StrictQuery<HashMap<String, String>>;

/// Largest text a viewer may paste at once, in characters.
const MAX_PASTE: usize = 10_000;
/// How often a viewer's socket checks that its session still lives.
const LIFE_CHECK: Duration = Duration::from_millis(250);

/// `GET /ui`: the operator console.
#[utoipa::path(
    get,
    path = "/ui",
    operation_id = "console",
    tag = "viewer",
    responses((status = 200, description = "The operator console; its calls send an API key like any client", content_type = "text/html", body = String)),
)]
pub async fn console() -> Response {
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
pub async fn viewer(
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
pub async fn view(
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
    let asked_interactive = ViewerOptions::of(query).interactive;
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
pub async fn facts(
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
pub struct FactsJson {
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
pub async fn thumbnail(
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
pub async fn socket(
    State(state): State<AppState>,
    SessionId(id): SessionId,
    StrictQuery(query): Query,
    request: Request,
) -> Result<Response, ApiError> {
    let granted = token(&state, id, &query)?;
    same_origin(&request)?;
    let key = super::cdp::websocket_key(request.headers())?;
    let route = (id, Route::ViewerSocket);
    let (session, mut request) = match locate::upgrade(&state, &Caller::Open, route, request)
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
    let screen = state
        .viewers
        .screen(id, &mux)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "browser_unavailable", e))?;
    let mut options = ViewerOptions::of(&query);
    options.interactive = granted.asked(options.interactive) == ViewerMode::Interactive;
    let on_upgrade = hyper::upgrade::on(&mut request);
    state.clients.spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            Viewer::new(ws, screen, session, options).serve().await;
        }
    });
    Ok(super::cdp::switching_protocols(&key))
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
struct ViewerOptions {
    interactive: bool,
    pick: Pick,
}

impl ViewerOptions {
    fn of(query: &HashMap<String, String>) -> ViewerOptions {
        let interactive = query.get("interactive").is_none_or(|v| v != "false");
        let pick = match (query.get("pageId"), query.get("pageIndex")) {
            (Some(id), _) if !id.is_empty() => Pick::Id(id.clone()),
            (_, Some(i)) => i.parse().map_or(Pick::Newest, Pick::Index),
            _ => Pick::Newest,
        };
        ViewerOptions { interactive, pick }
    }
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One viewer's connection.
struct Viewer {
    ws: Socket,
    screen: Arc<Screen>,
    session: Arc<Session>,
    interactive: bool,
    /// Whether the viewer follows the newest page (it named none).
    follow: bool,
    pick: Pick,
    watching: Option<Watching>,
    /// The size of the last frame sent, for input coordinates.
    size: (f64, f64),
}

impl Viewer {
    fn new(
        ws: Socket,
        screen: Arc<Screen>,
        session: Arc<Session>,
        options: ViewerOptions,
    ) -> Viewer {
        Viewer {
            ws,
            screen,
            session,
            interactive: options.interactive,
            follow: matches!(options.pick, Pick::Newest),
            pick: options.pick,
            watching: None,
            size: (0.0, 0.0),
        }
    }

    async fn serve(mut self) {
        let mut tabs = self.screen.tabs();
        let mut life = tokio::time::interval(LIFE_CHECK);
        let first = tabs.borrow_and_update().clone();
        self.rewatch().await;
        let _ = self.send_tabs(&first).await;
        loop {
            tokio::select! {
                frame = next_frame(&mut self.watching) => match frame {
                    Some(frame) => if self.send_frame(&frame).await.is_err() { break },
                    None => {
                        self.watching = None;
                        self.pick = Pick::Newest;
                        self.rewatch().await;
                    }
                },
                changed = tabs.changed() => {
                    if changed.is_err() { break }
                    let now = tabs.borrow_and_update().clone();
                    self.tabs_changed(&now).await;
                    if self.send_tabs(&now).await.is_err() { break }
                }
                message = self.ws.next() => match message {
                    Some(Ok(Message::Text(text))) => self.input(text.as_str()).await,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                _ = life.tick() => if !self.session.phase().is_live() {
                    self.ended().await;
                    break;
                },
            }
        }
        // The live view stops once its last viewer's subscription goes.
        drop(self.screen);
        drop(self.watching);
    }

    async fn rewatch(&mut self) {
        self.watching = self.screen.watch(self.pick.clone()).await.ok();
    }

    async fn tabs_changed(&mut self, tabs: &Tabs) {
        let watched = self.watching.as_ref().map(|w| w.page.clone());
        let newest = tabs.newest.clone();
        if self.watching.is_none() || (self.follow && newest.is_some() && newest != watched) {
            self.rewatch().await;
        }
    }

    async fn send_tabs(&mut self, tabs: &Tabs) -> Result<(), ()> {
        let active = self
            .watching
            .as_ref()
            .map(|w| w.page.clone())
            .or(tabs.newest.clone());
        let message = json!({"type": "tabs", "tabs": tabs.tabs, "active": active});
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .map_err(drop)
    }

    async fn send_frame(&mut self, frame: &Frame) -> Result<(), ()> {
        self.size = (frame.width, frame.height);
        // Shared with the page's other viewers: no copy per viewer.
        self.ws
            .send(Message::Binary(frame.message.clone()))
            .await
            .map_err(drop)
    }

    async fn ended(&mut self) {
        let reason = self
            .session
            .end_reason()
            .map_or("ended", crate::vocab::EndReason::steel);
        let _ = self
            .ws
            .send(Message::text(
                json!({"type": "ended", "reason": reason}).to_string(),
            ))
            .await;
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "session ended".into(),
        };
        let _ = self.ws.send(Message::Close(Some(close))).await;
    }

    /// A message from the viewer: input (only when interactive) or a tab switch.
    async fn input(&mut self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if message["type"] == "switch" {
            if let Some(page) = message["pageId"].as_str() {
                self.follow = false;
                self.pick = Pick::Id(page.to_owned());
                self.rewatch().await;
                let tabs = self.screen.tabs().borrow().clone();
                let _ = self.send_tabs(&tabs).await;
            }
            return;
        }
        if !self.interactive {
            return;
        }
        let Some(page) = self.watching.as_ref().map(|w| w.page.clone()) else {
            return;
        };
        if let Some((method, params)) = command(&message, self.size) {
            self.session.note_activity();
            self.screen.page_command(&page, method, params);
        }
    }
}

/// The next frame of the watched page; `None` when the page went. Pends while nothing is
/// watched.
async fn next_frame(watching: &mut Option<Watching>) -> Option<Arc<Frame>> {
    let Some(watching) = watching else {
        return std::future::pending().await;
    };
    loop {
        watching.frames.changed().await.ok()?;
        if let Some(frame) = watching.frames.borrow_and_update().clone() {
            return Some(frame);
        }
    }
}

/// The CDP command a viewer's input message makes, on a page of `size` (CSS pixels).
fn command(message: &Value, size: (f64, f64)) -> Option<(&'static str, Value)> {
    let modifiers = message["modifiers"].as_u64().unwrap_or(0) as u32 & 0xf;
    let point = || {
        let clamp = |v: &Value, max: f64| {
            v.as_f64()
                .filter(|v| v.is_finite())
                .map(|v| v.clamp(0.0, max.max(0.0)))
        };
        Some((clamp(&message["x"], size.0)?, clamp(&message["y"], size.1)?))
    };
    match message["type"].as_str()? {
        "mouse" => {
            let (x, y) = point()?;
            let kind = match message["event"].as_str()? {
                "mousePressed" => MouseKind::Pressed,
                "mouseReleased" => MouseKind::Released,
                "mouseMoved" => MouseKind::Moved,
                _ => return None,
            };
            let button = Button::parse(message["button"].as_str().unwrap_or("none"))?;
            let clicks = message["clickCount"].as_u64().unwrap_or(0).min(3) as u32;
            Some((
                "Input.dispatchMouseEvent",
                input::mouse(kind, x, y, button, clicks, modifiers),
            ))
        }
        "wheel" => {
            let (x, y) = point()?;
            let delta = |v: &Value| {
                v.as_f64()
                    .filter(|v| v.is_finite())
                    .unwrap_or(0.0)
                    .clamp(-10_000.0, 10_000.0)
            };
            let params = input::wheel(
                x,
                y,
                delta(&message["deltaX"]),
                delta(&message["deltaY"]),
                modifiers,
            );
            Some(("Input.dispatchMouseEvent", params))
        }
        "key" => {
            let down = match message["event"].as_str()? {
                "keyDown" => true,
                "keyUp" => false,
                _ => return None,
            };
            let key = input::key(message["key"].as_str()?)?;
            Some(("Input.dispatchKeyEvent", key.event(down, modifiers)))
        }
        "text" => {
            let text: String = message["text"].as_str()?.chars().take(MAX_PASTE).collect();
            Some(("Input.insertText", json!({"text": text})))
        }
        "navigate" => {
            let url = message["url"].as_str()?;
            let parsed = url::Url::parse(url).ok()?;
            matches!(parsed.scheme(), "http" | "https" | "about")
                .then(|| ("Page.navigate", json!({"url": url})))
        }
        "back" => Some(("Runtime.evaluate", json!({"expression": "history.back()"}))),
        "forward" => Some((
            "Runtime.evaluate",
            json!({"expression": "history.forward()"}),
        )),
        "reload" => Some(("Page.reload", json!({}))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_viewers_url_picks_the_page_and_read_only_mode() {
        let of = |pairs: &[(&str, &str)]| {
            ViewerOptions::of(
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

    #[test]
    fn viewer_input_becomes_cdp_and_stays_on_the_page() {
        let size = (800.0, 600.0);
        let (method, params) = command(
            &json!({"type": "mouse", "event": "mousePressed", "x": 900, "y": -5, "button": "left", "clickCount": 1}),
            size,
        )
        .expect("a command");
        assert_eq!(method, "Input.dispatchMouseEvent");
        assert_eq!(
            (&params["x"], &params["y"]),
            (&json!(800.0), &json!(0.0)),
            "clamped to the page"
        );
        let (_, key) = command(
            &json!({"type": "key", "event": "keyDown", "key": "Enter"}),
            size,
        )
        .expect("key");
        assert_eq!((&key["key"], &key["text"]), (&json!("Enter"), &json!("\r")));
        for refused in [
            json!({"type": "navigate", "url": "javascript:alert(1)"}),
            json!({"type": "navigate", "url": "file:///etc/passwd"}),
            json!({"type": "mouse", "event": "mousePressed", "x": "a", "y": 1}),
            json!({"type": "key", "event": "keyDown", "key": "NoSuchKey"}),
            json!({"type": "eval", "expression": "1"}),
        ] {
            assert!(command(&refused, size).is_none(), "{refused}");
        }
    }
}
