//! Extractors: what a handler takes from a request, with ingot's JSON errors instead of
//! axum's plain-text rejections, so that handlers never repeat rejection handling.
//!
//! * [`Caller`] fails closed: a request that did not pass the authentication layer gets
//!   401, never an open caller.
//! * [`SessionId`] is a path's `{id}` as a UUID; [`StrictQuery`] a query string whose
//!   errors name the parameter; [`RequestBody`] a body within the size and time limits.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::PresentedKey;
use super::error::ApiError;
use crate::auth::Caller;

fn unauthenticated() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the request was not authenticated",
    )
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(unauthenticated)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PresentedKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<PresentedKey>()
            .cloned()
            .ok_or_else(unauthenticated)
    }
}

/// A session id from the path's `{id}`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for SessionId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("id: {e}")))?;
        parse_id(&raw, "id").map(SessionId)
    }
}

/// Parses a session id, naming the parameter when it is not a UUID.
pub fn parse_id(raw: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::bad_request(format!("{field}: {raw:?} is not a session id (a UUID)"))
    })
}

/// A query string; one that does not parse is a JSON 400.
#[derive(Debug)]
pub(crate) struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        Ok(StrictQuery(query))
    }
}

/// A request body within [`super::MAX_BODY`], arrived in time.
#[derive(Debug)]
pub(crate) struct RequestBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(RequestBody)
            .map_err(body_error)
    }
}

fn body_error(rejection: BytesRejection) -> ApiError {
    match rejection.status() {
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
    }
}

/// Whether reading the body failed because its deadline passed: the body's
/// [`tower_http::timeout::TimeoutError`] (from the `RequestBodyDeadlineLayer`) is somewhere
/// in the rejection's source chain. Decided by type only, never by an error's text.
fn is_timeout(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests;
