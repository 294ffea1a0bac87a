//! Steel routes ingot does not implement: each answers 501 with a JSON error naming the
//! feature, so that an SDK does not read "no such route" (404) as "no such session".
//!
//! Owns only that list. A feature that gets implemented moves its routes out of here.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::any;

use super::AppState;
use super::error::ApiError;

/// Every unimplemented path of Steel's API, with the feature it belongs to.
const UNSUPPORTED: [(&str, &str); 15] = [
    ("/v1/sessions/{id}/captchas/solve", "captcha solving"),
    ("/v1/sessions/{id}/captchas/solve-image", "captcha solving"),
    ("/v1/sessions/{id}/captchas/status", "captcha solving"),
    ("/v1/sessions/{id}/events", "session recordings (events)"),
    ("/v1/sessions/{id}/hls", "session recordings (HLS)"),
    ("/v1/sessions/{id}/agent-traces", "agent traces"),
    ("/v1/sessions/{id}/cost", "session costs"),
    ("/v1/files", "global files"),
    ("/v1/files/{*path}", "global files"),
    ("/v1/profiles", "browser profiles"),
    ("/v1/profiles/{*rest}", "browser profiles"),
    ("/v1/credentials", "credentials"),
    ("/v1/credentials/{*rest}", "credentials"),
    ("/v1/extensions", "extensions"),
    ("/v1/extensions/{*rest}", "extensions"),
];

/// The routes that answer 501, whatever the method.
pub(crate) fn routes() -> Router<AppState> {
    UNSUPPORTED
        .iter()
        .fold(Router::new(), |router, &(path, feature)| {
            router.route(path, any(move || async move { not_implemented(feature) }))
        })
}

fn not_implemented(feature: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        format!("{feature}: this part of Steel's API is not implemented by ingot"),
    )
}
