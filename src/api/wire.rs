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
pub(crate) struct PublicUrls {
    /// `http(s)://host[:port]`, no trailing slash.
    pub http: String,
    /// The same with `ws(s)://`.
    pub ws: String,
    /// What makes viewer tokens, for the viewer links.
    viewers: Option<std::sync::Arc<crate::viewer::Viewers>>,
}

impl PublicUrls {
    pub(crate) fn new(base: &str) -> PublicUrls {
        let http = base.trim_end_matches('/').to_owned();
        let ws = if let Some(rest) = http.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", http.strip_prefix("http://").unwrap_or(&http))
        };
        PublicUrls {
            http,
            ws,
            viewers: None,
        }
    }

    /// The same URLs, with viewer links that carry tokens `viewers` makes.
    pub(crate) fn with_viewers(mut self, viewers: std::sync::Arc<crate::viewer::Viewers>) -> Self {
        self.viewers = Some(viewers);
        self
    }

    /// The live viewer of session `id` (`debugUrl`), with its interactive token (Steel's
    /// viewer is interactive unless its URL says `interactive=false`, which then leads to
    /// the read-only token).
    pub(crate) fn viewer_url(&self, id: Uuid) -> String {
        match &self.viewers {
            Some(v) => format!(
                "{}/v1/sessions/{id}/viewer?token={}",
                self.http,
                v.token(id, crate::viewer::ViewerMode::Interactive)
            ),
            None => self.session_url(id),
        }
    }

    /// The viewer next to the session's facts (`sessionViewerUrl`), with its interactive
    /// token, like `debugUrl`.
    pub(crate) fn view_url(&self, id: Uuid) -> String {
        match &self.viewers {
            Some(v) => format!(
                "{}/v1/sessions/{id}/view?token={}",
                self.http,
                v.token(id, crate::viewer::ViewerMode::Interactive)
            ),
            None => self.session_url(id),
        }
    }

    /// The host name of the public URL, without port.
    pub(crate) fn host(&self) -> &str {
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
    pub(crate) fn websocket_url(&self, id: Uuid) -> String {
        format!("{}/?sessionId={id}", self.ws)
    }

    /// The CDP endpoint `/json/version` advertises.
    pub(crate) fn browser_endpoint(&self, id: Uuid) -> String {
        format!("{}/devtools/browser/{id}", self.ws)
    }

    pub(crate) fn session_url(&self, id: Uuid) -> String {
        format!("{}/v1/sessions/{id}", self.http)
    }
}

/// `Session` in the SDK types: every required field, plus the optional ones ingot knows.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Session)]
pub(crate) struct SessionJson {
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
    pub(crate) fn new(session: &SessionView, urls: &PublicUrls) -> SessionJson {
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
            debug_url: urls.viewer_url(session.id),
            session_viewer_url: urls.view_url(session.id),
            dimensions: session.dimensions,
            fullscreen: session.fullscreen,
            optimize_bandwidth: Map::new(),
            proxy_bytes_used: session.proxy_bytes_used,
            proxy_source: session.proxy.then_some("external"),
            user_agent: session.user_agent.clone(),
            headless: !session.headful,
            is_selenium: false,
            solve_captcha: false,
            release_reason: session.release_reason.map(|r| r.steel().to_owned()),
        }
    }
}

/// RFC 3339 in UTC with exactly three fractional digits, as Steel sends it.
pub(super) fn timestamp(t: time::OffsetDateTime) -> String {
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
pub(crate) struct SessionListJson {
    pub sessions: Vec<SessionJson>,
    /// The `cursorId` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_count: Option<u64>,
}

impl SessionListJson {
    pub(crate) fn new(page: ListPage, urls: &PublicUrls) -> Self {
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

/// `SessionLiveDetailsResponse`. Each page's viewer links open the live viewer on that page;
/// favicons are not read (`null`, which the types allow).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = LiveDetails)]
pub(crate) struct LiveDetailsJson {
    pub pages: Vec<LivePageJson>,
    pub session_viewer_url: String,
    pub session_viewer_fullscreen_url: String,
    pub ws_url: String,
}

/// One page of [`LiveDetailsJson`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = LivePage)]
pub(crate) struct LivePageJson {
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
    pub(crate) fn new(
        id: Uuid,
        pages: Vec<crate::session::view::PageInfo>,
        urls: &PublicUrls,
    ) -> Self {
        let (view, viewer) = (urls.view_url(id), urls.viewer_url(id));
        let on_page = |url: &str, page: &str| {
            let separator = if url.contains('?') { '&' } else { '?' };
            format!("{url}{separator}pageId={page}")
        };
        LiveDetailsJson {
            pages: pages
                .into_iter()
                .map(|p| LivePageJson {
                    session_viewer_url: on_page(&view, &p.id),
                    session_viewer_fullscreen_url: on_page(&viewer, &p.id),
                    id: p.id,
                    url: p.url,
                    title: p.title,
                    favicon: None,
                })
                .collect(),
            session_viewer_url: view,
            session_viewer_fullscreen_url: viewer,
            ws_url: urls.websocket_url(id),
        }
    }
}

/// `SessionReleaseResponse` and `SessionReleaseAllResponse`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Release)]
pub(crate) struct ReleaseJson {
    pub success: bool,
    pub message: String,
}

/// Steel's `File`: a session file. `path` is where the file is on the machine that runs the
/// browser, so it can be given to `DOM.setFileInputFiles` as it is; the files routes take it
/// too, as well as the name relative to the session's files.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = File)]
pub(crate) struct FileJson {
    pub path: String,
    pub size: u64,
    #[schema(format = DateTime)]
    pub last_modified: String,
}

impl FileJson {
    pub(crate) fn new(file: &crate::files::FileInfo) -> FileJson {
        FileJson {
            path: file.path.display().to_string(),
            size: file.size,
            last_modified: timestamp(time::OffsetDateTime::from(file.modified)),
        }
    }
}

/// Steel's `Fileslist`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Fileslist)]
pub(crate) struct FileListJson {
    pub data: Vec<FileJson>,
}
