//! Seeing and steering a session from outside CDP: Steel's computer API.
//!
//! Handlers check the caller and the session, pass the request to the node that runs the
//! session in a cluster, and leave the work to [`crate::viewer`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ErrorJson};
use super::extract::{RequestBody, SessionId};
use super::locate::{self, Route, ended_conflict};
use super::relay::Relay;
use crate::auth::Caller;
use crate::viewer::computer::{self, RunError};

/// `POST /v1/sessions/{id}/computer`: one action on the session's active page, answered in
/// Steel's shape (`output`, `base64_image`, `error`). Counts as activity for the session's
/// inactivity timeout. 409 once the session ended.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/computer",
    operation_id = "session_computer",
    tag = "sessions",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    request_body(content = computer::Wire, content_type = "application/json"),
    responses(
        (status = 200, description = "The action ran; a failure of the browser is in `error`", body = computer::Outcome),
        (status = 400, description = "`id` is not a UUID, or the action, a key, a button or a point is refused; the message names the field", body = ErrorJson),
        (status = 404, description = "No such session for this API key", body = ErrorJson),
        (status = 409, description = "The session has ended", body = ErrorJson),
        (status = 502, description = "The browser (or, in a cluster, the node that runs it) did not answer", body = ErrorJson),
        (status = 503, description = "The session records cannot be read", body = ErrorJson),
    ),
    security(("steel-api-key" = [])),
)]
pub(crate) async fn computer(
    State(state): State<AppState>,
    caller: Caller,
    relay: Relay,
    SessionId(id): SessionId,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let route = (id, Route::Computer);
    let (session, body) = match locate::resolve(&state, &relay, &caller, route, body)
        .await?
        .here(id)
    {
        Ok(here) => here,
        Err(answer) => return Ok(*answer),
    };
    let request = computer::Request::parse(&body).map_err(|e| ApiError::bad_request(e.0))?;
    let mux = session.mux().ok_or_else(|| ended_conflict(id))?;
    session.note_activity();
    let cursor = state.viewers.cursor(id, &mux);
    let outcome = computer::run(&mux, &request, &cursor).await?;
    Ok(Json(outcome).into_response())
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Invalid(e) => ApiError::bad_request(e.0),
            RunError::Browser(e) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "browser_unavailable",
                format!("the browser did not answer: {e}"),
            ),
        }
    }
}
