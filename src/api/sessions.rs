//! `/v1/sessions` handlers.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::wire::{ReleaseJson, SessionJson, SessionListJson};
use crate::auth::Caller;
use crate::session::params::parse_create_body;
use crate::session::registry::{CreateError, ListQuery};
use crate::session::state::Status;

/// Default and largest page size of `GET /v1/sessions`.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

/// `POST /v1/sessions`
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SessionJson>, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {} KiB", super::MAX_BODY >> 10),
        ),
        _ if is_timeout(&rejection) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        ),
        _ => ApiError::bad_request(format!("cannot read request body: {rejection}")),
    })?;
    let options =
        parse_create_body(&body, state.limits).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let session = state
        .registry
        .create(options, &caller)
        .await
        .map_err(|e| match e {
            CreateError::Duplicate(_) => {
                ApiError::new(StatusCode::CONFLICT, "session_exists", e.to_string())
            }
            CreateError::QueueFull(_) | CreateError::QueueTimeout(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "at_capacity", e.to_string())
            }
            CreateError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            CreateError::Launch(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "browser_start_failed",
                e.to_string(),
            ),
            CreateError::Usage(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "usage_unavailable",
                e.to_string(),
            ),
            CreateError::OverQuota(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "tenant_quota", e.to_string())
            }
        })?;
    Ok(Json(SessionJson::new(&session, &state.urls)))
}

/// Whether reading the body failed because its deadline passed.
fn is_timeout(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() || e.to_string().contains("timed out") {
            return true;
        }
        source = e.source();
    }
    false
}

/// Query of `GET /v1/sessions`. Values arrive as strings so that errors can name them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor_id: Option<String>,
}

/// `GET /v1/sessions`
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionListJson>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: must be live, released or failed, got {s:?}"
            ))
        })?),
    };
    let limit = match params.limit.as_deref() {
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
    let cursor = match params.cursor_id.as_deref() {
        None | Some("") => None,
        Some(s) => Some(parse_id(s, "cursorId")?),
    };
    let page = state
        .registry
        .list(
            ListQuery {
                status,
                limit,
                cursor,
            },
            &caller,
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(SessionListJson::new(page, &state.urls)))
}

/// `GET /v1/sessions/{id}`
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionJson>, ApiError> {
    let id = path_id(id)?;
    let session = state
        .registry
        .get_for(&id, &caller)
        .ok_or_else(|| ApiError::session_not_found(id))?;
    Ok(Json(SessionJson::new(&session, &state.urls)))
}

/// `POST /v1/sessions/{id}/release`. Idempotent; the body is ignored (SDKs send none).
pub async fn release(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ReleaseJson>, ApiError> {
    let id = path_id(id)?;
    state
        .registry
        .release(&id, &caller)
        .await
        .ok_or_else(|| ApiError::session_not_found(id))?;
    Ok(Json(ReleaseJson {
        success: true,
        message: "Session released successfully".into(),
    }))
}

/// `POST /v1/sessions/release`
pub async fn release_all(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<ReleaseJson> {
    state.registry.release_all(&caller).await;
    Json(ReleaseJson {
        success: true,
        message: "All sessions released successfully".into(),
    })
}

/// The `{id}` of a path as a session id; a path that cannot be decoded is a JSON 400 too.
pub fn path_id(id: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(format!("id: {e}")))?;
    parse_id(&id, "id")
}

/// Parses a session id, naming the parameter when it is not a UUID.
pub fn parse_id(raw: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::bad_request(format!("{field}: {raw:?} is not a session id (a UUID)"))
    })
}
