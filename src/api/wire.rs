//! Steel's JSON shapes, as the official SDK types declare them.
//!
//! Owns field names and JSON types only; values come from a [`SessionView`].

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::session::directory::ListPage;
use crate::session::view::SessionView;
use crate::vocab::{Dimensions, Status};

/// Base URLs that returned links point at.
#[derive(Debug, Clone)]
pub struct PublicUrls {
    /// `http(s)://host[:port]`, no trailing slash.
    pub http: String,
    /// The same with `ws(s)://`.
    pub ws: String,
}

impl PublicUrls {
    pub fn new(base: &str) -> PublicUrls {
        let http = base.trim_end_matches('/').to_owned();
        let ws = if let Some(rest) = http.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", http.strip_prefix("http://").unwrap_or(&http))
        };
        PublicUrls { http, ws }
    }

    /// The host name of the public URL, without port.
    pub fn host(&self) -> &str {
        let authority = self
            .http
            .split_once("://")
            .map_or(self.http.as_str(), |(_, rest)| rest);
        let authority = authority.split('/').next().unwrap_or(authority);
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority
                .rsplit_once(':')
                .map_or(authority, |(name, _)| name),
        }
    }

    /// The URL clients connect to. It already has a query, so `&apiKey=…` can be appended.
    pub fn websocket_url(&self, id: Uuid) -> String {
        format!("{}/?sessionId={id}", self.ws)
    }

    /// The CDP endpoint `/json/version` advertises.
    pub fn browser_endpoint(&self, id: Uuid) -> String {
        format!("{}/devtools/browser/{id}", self.ws)
    }

    pub fn session_url(&self, id: Uuid) -> String {
        format!("{}/v1/sessions/{id}", self.http)
    }
}

/// `Session` in the SDK types: every required field, plus the optional ones ingot knows.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Session)]
pub struct SessionJson {
    pub id: Uuid,
    /// RFC 3339, UTC, with milliseconds.
    #[schema(format = DateTime)]
    pub created_at: String,
    pub status: Status,
    /// How long the session has lived, in milliseconds.
    pub duration: u64,
    pub event_count: u64,
    /// The session's total life from its creation, in milliseconds.
    pub timeout: u64,
    /// Only when the session has one, as Steel sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inactivity_timeout: Option<u64>,
    pub credits_used: u64,
    /// Where CDP clients connect (`ws(s)://…/?sessionId=<id>`).
    #[schema(format = Uri)]
    pub websocket_url: String,
    #[schema(format = Uri)]
    pub debug_url: String,
    #[schema(format = Uri)]
    pub session_viewer_url: String,
    pub dimensions: Dimensions,
    pub fullscreen: bool,
    /// Always empty: ingot does not optimize bandwidth.
    #[schema(value_type = Object)]
    pub optimize_bandwidth: Map<String, Value>,
    pub proxy_bytes_used: u64,
    /// `external` when the session goes through its own `proxyUrl`.
    #[schema(value_type = Option<String>, required = true)]
    pub proxy_source: Option<&'static str>,
    #[schema(required = true)]
    pub user_agent: Option<String>,
    pub headless: bool,
    pub is_selenium: bool,
    pub solve_captcha: bool,
    /// Why the session ended, in Steel's words; `null` while it is live.
    #[schema(required = true)]
    pub release_reason: Option<String>,
}

impl SessionJson {
    /// The JSON of a session as a client sees it.
    pub fn new(session: &SessionView, urls: &PublicUrls) -> SessionJson {
        SessionJson {
            id: session.id,
            created_at: timestamp(session.created_at),
            status: session.status,
            duration: session.duration.as_millis() as u64,
            event_count: session.event_count,
            timeout: session.timeout_ms,
            inactivity_timeout: session.inactivity_timeout_ms,
            credits_used: session.credits_used,
            websocket_url: urls.websocket_url(session.id),
            debug_url: urls.session_url(session.id),
            session_viewer_url: urls.session_url(session.id),
            dimensions: session.dimensions,
            fullscreen: session.fullscreen,
            optimize_bandwidth: Map::new(),
            proxy_bytes_used: session.proxy_bytes_used,
            proxy_source: session.proxy.then_some("external"),
            user_agent: session.user_agent.clone(),
            headless: true,
            is_selenium: false,
            solve_captcha: false,
            release_reason: session
                .release_reason
                .as_deref()
                .map(|r| crate::vocab::steel_release_reason(r).to_owned()),
        }
    }
}

/// RFC 3339 in UTC with exactly three fractional digits, as Steel sends it.
fn timestamp(t: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

/// `Sessionslist`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SessionList)]
pub struct SessionListJson {
    pub sessions: Vec<SessionJson>,
    /// The `cursorId` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_count: Option<u64>,
}

impl SessionListJson {
    pub fn new(page: ListPage, urls: &PublicUrls) -> Self {
        SessionListJson {
            sessions: page
                .sessions
                .iter()
                .map(|s| SessionJson::new(s, urls))
                .collect(),
            next_cursor: page.next_cursor,
            total_count: page.total_count,
        }
    }
}

/// `SessionLiveDetailsResponse`. There is no viewer yet, so the viewer links are the
/// session's own URL, and favicons are not read (`null`, which the types allow).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = LiveDetails)]
pub struct LiveDetailsJson {
    pub pages: Vec<LivePageJson>,
    pub session_viewer_url: String,
    pub session_viewer_fullscreen_url: String,
    pub ws_url: String,
}

/// One page of [`LiveDetailsJson`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = LivePage)]
pub struct LivePageJson {
    pub id: String,
    pub url: String,
    pub title: String,
    #[schema(required = true)]
    pub favicon: Option<String>,
    pub session_viewer_url: String,
    pub session_viewer_fullscreen_url: String,
}

impl LiveDetailsJson {
    /// The live details of session `id` with `pages`.
    pub fn new(id: Uuid, pages: Vec<crate::session::view::PageInfo>, urls: &PublicUrls) -> Self {
        let viewer = urls.session_url(id);
        LiveDetailsJson {
            pages: pages
                .into_iter()
                .map(|p| LivePageJson {
                    id: p.id,
                    url: p.url,
                    title: p.title,
                    favicon: None,
                    session_viewer_url: viewer.clone(),
                    session_viewer_fullscreen_url: viewer.clone(),
                })
                .collect(),
            session_viewer_url: viewer.clone(),
            session_viewer_fullscreen_url: viewer,
            ws_url: urls.websocket_url(id),
        }
    }
}

/// `SessionReleaseResponse` and `SessionReleaseAllResponse`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Release)]
pub struct ReleaseJson {
    pub success: bool,
    pub message: String,
}
