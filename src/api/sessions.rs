//! `/v1/sessions` handlers: each validates its input through an extractor, calls the
//! registry, and shapes the answer.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ErrorJson};
use super::extract::{RequestBody, SessionId, StrictQuery, parse_id};
use super::locate::ended_conflict;
use super::locate::{self, Route, Step};
use super::openapi::{CreateSessionBody, SessionContextJson, TimeoutBody};
use super::relay::{Created, PeerRefusal, Relay};
use super::wire::{LiveDetailsJson, ReleaseJson, SessionJson, SessionListJson};
use crate::auth::Caller;
use crate::session::directory::ListQuery;
use crate::session::handle::NotExtended;
use crate::session::params::{parse_create_body, parse_timeout_body};
use crate::session::view::SessionView;
use crate::vocab::Status;

/// Default and largest page size of `GET /v1/sessions`.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

/// `POST /v1/sessions`. In a cluster, a node without room places the session on the node
/// with the most room.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "create_session",
    tag = "sessions",
    request_body(
        content = Option<CreateSessionBody>,
        description = "The session's options; an empty body (or `null`) means all defaults",
    ),
    responses(
        (status = 200, description = "The new session, live", body = SessionJson),
        (status = 400, description = "A field that cannot be honoured, named in the message", body = ErrorJson),
        (status = 409, description = "`sessionId` names a session that exists or existed (any tenant, any node, however old): ids are never reused. The same answer whoever asks", body = ErrorJson),
        (status = 429, description = "No free slot in time, or the tenant's quota is used up", body = ErrorJson),
        (status = 502, description = "In a cluster: the node the session was passed to did not answer", body = ErrorJson),
        (status = 503, description = "The browser did not start, the records cannot be written, or the gateway is shutting down", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let options = parse_create_body(&body, state.limits)?;
    if let Some(answer) = relay.create_elsewhere(&state, &body).await {
        return Ok(answer);
    }
    // Another node placed it here thinking there was room: say at once that there is none,
    // so that it offers the create to the next node instead of waiting in this queue.
    if relay.relayed() && !state.registry.takes_sessions_now() {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "at_capacity",
            "this node has no free slot now",
        )
        .refusing(PeerRefusal::AtCapacity));
    }
    let session = state.registry.create(options, &caller).await?;
    let view = SessionView::of(&session);
    let mut answer = Json(SessionJson::new(&view, &relay.links(&state))).into_response();
    // A node that relayed the create learns where the session runs from this mark.
    answer.extensions_mut().insert(Created(session.id));
    Ok(answer)
}

/// Query of `GET /v1/sessions`. Values arrive as strings so that errors can name them.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only sessions with this status.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `nextCursor` of the previous page.
    #[param(value_type = Option<uuid::Uuid>)]
    cursor_id: Option<String>,
    /// Refused unless empty: each API key is its own tenant.
    #[param(max_length = 0)]
    project_id: Option<String>,
}

/// `projectId` (Steel's projects) is refused rather than ignored: in ingot each API key is
/// its own tenant, and a key sees exactly its own sessions.
fn refuse_project(project_id: Option<&str>) -> Result<(), ApiError> {
    match project_id {
        None | Some("") => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "projectId: projects are not supported; each API key is its own tenant and sees its own sessions",
        )),
    }
}

/// Query of `POST /v1/sessions/release` (the Python SDK may send `projectId`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct ReleaseAllParams {
    /// Refused unless empty: each API key is its own tenant.
    #[param(max_length = 0)]
    project_id: Option<String>,
}

impl ListParams {
    /// Validates the query, naming the parameter at fault.
    pub(crate) fn parse(&self) -> Result<ListQuery, ApiError> {
        refuse_project(self.project_id.as_deref())?;
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Status::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "status: must be live, released or failed, got {s:?}"
                ))
            })?),
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit: must be a whole number from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        let cursor = match self.cursor_id.as_deref() {
            None | Some("") => None,
            Some(s) => Some(parse_id(s, "cursorId")?),
        };
        Ok(ListQuery {
            status,
            limit,
            cursor,
        })
    }
}

/// `GET /v1/sessions`: the caller's sessions, newest first, live and ended.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    operation_id = "list_sessions",
    tag = "sessions",
    params(ListParams),
    responses(
        (status = 200, description = "One page of sessions", body = SessionListJson),
        (status = 400, description = "A query parameter is invalid, or `cursorId` names no session", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    StrictQuery(params): StrictQuery<ListParams>,
) -> Result<Json<SessionListJson>, ApiError> {
    let page = state.registry.list(params.parse()?, &caller).await?;
    Ok(Json(SessionListJson::new(page, &relay.links(&state))))
}

/// `GET /v1/sessions/{id}`. A session live on another node is answered by that node.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    operation_id = "retrieve_session",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session, live or ended", body = SessionJson),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    SessionId(id): SessionId,
) -> Result<Response, ApiError> {
    let view = match locate::resolve(&state, &relay, &caller, (id, Route::Retrieve), ()).await? {
        Step::Answered(answer) => return Ok(answer),
        // The records say what they know of a session whose node does not answer.
        Step::Recorded(view) => view,
        Step::Here(..) => state
            .registry
            .retrieve(&id, &caller)
            .await?
            .ok_or_else(|| ApiError::session_not_found(id))?,
    };
    Ok(Json(SessionJson::new(&view, &relay.links(&state))).into_response())
}

/// `POST /v1/sessions/{id}/release`. Idempotent; the body is ignored (SDKs send none). A
/// session live on another node is released by that node.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/release",
    operation_id = "release_session",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "Released, or had already ended", body = ReleaseJson),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 502, description = "In a cluster: the node that runs it did not answer", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn release(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    SessionId(id): SessionId,
) -> Result<Response, ApiError> {
    match locate::resolve(&state, &relay, &caller, (id, Route::Release), ()).await? {
        Step::Answered(answer) => return Ok(answer),
        // An ended session (of an earlier run, or of another node): releasing it again
        // changes nothing.
        Step::Recorded(_) => {}
        Step::Here(..) => {
            let released = state.registry.release(&id, &caller).await;
            if let Some(session) = &released
                && !session.final_record_written()
            {
                // Ended here, but not recorded (yet): answering 200 could be contradicted by
                // the cluster (which may yet fail the session while this node is cut off).
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    format!(
                        "session {id} ended on this node, but the database did not take its final record; it is written when the database answers again"
                    ),
                ));
            }
        }
    }
    Ok(Json(ReleaseJson {
        success: true,
        message: "Session released successfully".into(),
    })
    .into_response())
}

/// `POST /v1/sessions/{id}/timeout` with `{"timeout": <ms>}`: sets a live session's total
/// life, counted from its creation, and answers the updated Session. 409 once it ended,
/// 400 for a total it has already lived. In a cluster, the node that runs it does it.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/timeout",
    operation_id = "set_session_timeout",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    request_body(content = TimeoutBody, description = "The session's new total life"),
    responses(
        (status = 200, description = "The session, with its new timeout", body = SessionJson),
        (status = 400, description = "An invalid body or id, or a total the session has already lived", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 409, description = "The session has ended", body = ErrorJson),
        (status = 502, description = "In a cluster: the node that runs it did not answer", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn set_timeout(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    SessionId(id): SessionId,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let total_ms = parse_timeout_body(&body, state.limits)?;
    let route = (id, Route::Timeout);
    let (session, _) = match locate::resolve(&state, &relay, &caller, route, body)
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    match state.registry.extend(&session.id, &caller, total_ms).await {
        Some(Ok(view)) => Ok(Json(SessionJson::new(&view, &relay.links(&state))).into_response()),
        Some(Err(NotExtended::Ended)) | None => Err(ended_conflict(id)),
        Some(Err(e)) => Err(ApiError::bad_request(format!("timeout: {e}"))),
    }
}

/// `GET /v1/sessions/{id}/context`: the live session's cookies (every browser context) and
/// the web storage of the origins its open pages show, in Steel's shape. 409 once it
/// ended; in a cluster, the node that runs it answers.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/context",
    operation_id = "session_context",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session's cookies and web storage", body = SessionContextJson),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 409, description = "The session has ended", body = ErrorJson),
        (status = 502, description = "The browser (or, in a cluster, the node that runs it) did not answer", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn context(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    SessionId(id): SessionId,
) -> Result<Response, ApiError> {
    let (session, ()) = match locate::resolve(&state, &relay, &caller, (id, Route::Context), ())
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    let context = from_browser(id, session.context().await)?;
    Ok(Json(context).into_response())
}

/// What a live session's browser answered: 409 once the session ended, 502 when the
/// browser did not answer.
fn from_browser<T>(
    id: uuid::Uuid,
    answer: Option<Result<T, crate::cdp::mux::CommandError>>,
) -> Result<T, ApiError> {
    answer.ok_or_else(|| ended_conflict(id))?.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "browser_unavailable",
            format!("the browser did not answer: {e}"),
        )
    })
}

/// `GET /v1/sessions/{id}/live-details`: the live session's pages. 409 once it ended; in a
/// cluster, the node that runs it answers.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/live-details",
    operation_id = "session_live_details",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The pages of the live session", body = LiveDetailsJson),
        (status = 400, description = "`id` is not a UUID", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 409, description = "The session has ended", body = ErrorJson),
        (status = 502, description = "The browser (or, in a cluster, the node that runs it) did not answer", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn live_details(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    SessionId(id): SessionId,
) -> Result<Response, ApiError> {
    let route = (id, Route::LiveDetails);
    let (session, ()) = match locate::resolve(&state, &relay, &caller, route, ())
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    let pages = from_browser(id, session.pages().await)?;
    let details = LiveDetailsJson::new(id, pages, &relay.links(&state));
    Ok(Json(details).into_response())
}

/// `POST /v1/sessions/release`: the caller's sessions on this node and, in a cluster, on
/// every other node. The body is ignored but for a `projectId`, refused like the query's.
#[utoipa::path(
    post,
    path = "/v1/sessions/release",
    operation_id = "release_all_sessions",
    tag = "sessions",
    params(ReleaseAllParams),
    responses(
        (status = 200, description = "Every live session of the caller is released", body = ReleaseJson),
        (status = 400, description = "A `projectId` was given", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn release_all(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    StrictQuery(params): StrictQuery<ReleaseAllParams>,
    RequestBody(body): RequestBody,
) -> Result<Json<ReleaseJson>, ApiError> {
    refuse_project(params.project_id.as_deref())?;
    let in_body = serde_json::from_slice::<serde_json::Value>(&body).ok();
    refuse_project(in_body.as_ref().and_then(|b| b["projectId"].as_str()))?;
    tokio::join!(
        state.registry.release_all(&caller),
        relay.release_everywhere(&state)
    );
    Ok(Json(ReleaseJson {
        success: true,
        message: "All sessions released successfully".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(status: Option<&str>, limit: Option<&str>, cursor: Option<&str>) -> ListParams {
        ListParams {
            status: status.map(str::to_owned),
            limit: limit.map(str::to_owned),
            cursor_id: cursor.map(str::to_owned),
            project_id: None,
        }
    }

    #[test]
    fn list_queries_are_validated_naming_the_parameter() {
        let q = query(None, None, None).parse().expect("defaults");
        assert_eq!((q.status, q.limit, q.cursor), (None, DEFAULT_LIMIT, None));
        let q = query(
            Some("failed"),
            Some("100"),
            Some("123e4567-e89b-12d3-a456-426614174000"),
        )
        .parse()
        .expect("valid");
        assert_eq!(q.status, Some(Status::Failed));
        assert_eq!(q.limit, 100);
        assert!(q.cursor.is_some());
        let empty = query(Some(""), Some(""), Some(""))
            .parse()
            .expect("empty means unset");
        assert_eq!(empty.limit, DEFAULT_LIMIT);
        for (bad, field) in [
            (query(Some("alive"), None, None), "status"),
            (query(None, Some("0"), None), "limit"),
            (query(None, Some("101"), None), "limit"),
            (query(None, Some("-1"), None), "limit"),
            (query(None, Some("ten"), None), "limit"),
            (query(None, None, Some("nope")), "cursorId"),
            (
                ListParams {
                    project_id: Some("p".into()),
                    ..query(None, None, None)
                },
                "projectId",
            ),
        ] {
            let err = bad.parse().expect_err("refused");
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with(field), "{}", err.message);
        }
    }
}
