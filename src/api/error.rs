//! The gateway's HTTP errors: one JSON shape everywhere, with the right status code.
//!
//! The body is `{"message": …, "error": {"code": …, "message": …}}`. The Steel SDKs show
//! `message` in the exceptions they raise; `error.code` is stable for programs.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::relay::PeerRefusal;
use crate::cluster::lease::Unavailable;
use crate::files::FileError;
use crate::metering::MeterError;
use crate::session::admission::Refusal;
use crate::session::create::CreateError;
use crate::session::directory::ListError;
use crate::session::params::InvalidField;

/// An error answer to an HTTP request.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`error.code`).
    pub code: &'static str,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The typed code another node that relayed the request decides on (see
    /// [`PeerRefusal`]); never shown to a client.
    refusal: Option<PeerRefusal>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            refusal: None,
        }
    }

    /// The same error, marked for a node that relayed the request with `refusal`.
    pub fn refusing(mut self, refusal: PeerRefusal) -> Self {
        self.refusal = Some(refusal);
        self
    }

    /// The mark for a node that relayed the request, if any.
    #[cfg(test)]
    pub fn refusal(&self) -> Option<PeerRefusal> {
        self.refusal
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn session_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("session {id} not found"),
        )
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorJson {
    /// What went wrong, as in `error.message` (the Steel SDKs show this one).
    message: String,
    error: ErrorDetail,
}

/// The `error` of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable and machine-readable, such as `session_not_found` or `invalid_request`.
    #[schema(value_type = String)]
    code: &'static str,
    /// What went wrong and what to do, for people.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorJson {
            message: self.message.clone(),
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        // Only `relay::peer_hop` turns it into a header, on an answer to another node.
        if let Some(refusal) = self.refusal {
            response.extensions_mut().insert(refusal);
        }
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        let code = match e {
            Unavailable::Fenced => "node_fenced",
            Unavailable::DatabaseUnavailable => "database_unavailable",
        };
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!("{e}; try again shortly, or through another node"),
        )
        .refusing(PeerRefusal::Unavailable)
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::UnknownCursor(_) => ApiError::bad_request(e.to_string()),
            ListError::Store(e) => e.into(),
        }
    }
}

impl From<MeterError> for ApiError {
    fn from(e: MeterError) -> Self {
        if let MeterError::DeadlineExceeded { .. } | MeterError::Database(_) = e {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("the cluster's database cannot be reached: {e}; try again shortly"),
            )
            .refusing(PeerRefusal::Unavailable);
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "usage_unavailable",
            format!("the session records cannot be read: {e}"),
        )
        .refusing(PeerRefusal::Unavailable)
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        let (status, code, refusal) = match &e {
            CreateError::Duplicate(_) => (
                StatusCode::CONFLICT,
                "session_exists",
                Some(PeerRefusal::SessionExists),
            ),
            CreateError::Refused(Refusal::QueueFull(_) | Refusal::QueueTimeout(_)) => (
                StatusCode::TOO_MANY_REQUESTS,
                "at_capacity",
                Some(PeerRefusal::AtCapacity),
            ),
            CreateError::Refused(Refusal::OverQuota(_)) => (
                StatusCode::TOO_MANY_REQUESTS,
                "tenant_quota",
                Some(PeerRefusal::TenantQuota),
            ),
            CreateError::Refused(Refusal::ShuttingDown) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                Some(PeerRefusal::ShuttingDown),
            ),
            CreateError::Launch(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "browser_start_failed",
                Some(PeerRefusal::StartFailed),
            ),
            CreateError::Usage(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "usage_unavailable",
                Some(PeerRefusal::StartFailed),
            ),
            CreateError::Context(_) => (StatusCode::BAD_REQUEST, "invalid_request", None),
            CreateError::HeadfulUnavailable(_) => {
                (StatusCode::NOT_IMPLEMENTED, "headful_unavailable", None)
            }
            CreateError::DatabaseUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                Some(PeerRefusal::Unavailable),
            ),
            CreateError::TimedOut(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "create_timeout",
                Some(PeerRefusal::StartFailed),
            ),
        };
        let error = ApiError::new(status, code, e.to_string());
        match refusal {
            Some(refusal) => error.refusing(refusal),
            None => error,
        }
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        let (status, code) = match &e {
            FileError::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid_path"),
            FileError::NotFound(_) => (StatusCode::NOT_FOUND, "file_not_found"),
            FileError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"),
            // 413 like a file over its own limit: this upload is more than the session's
            // files have room for (deleting some of them makes room).
            FileError::SessionBytes { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "session_files_too_large")
            }
            FileError::SessionEntries { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_many_session_files")
            }
            FileError::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            FileError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "files_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}
