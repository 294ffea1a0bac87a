//! [`RequestBody`]'s answers to a body that fails, through the same layers the API puts
//! in front of it (the size limit, then the body deadline).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tower::ServiceExt;
use tower_http::timeout::RequestBodyDeadlineLayer;

use super::*;

/// What the API answers to a POST whose body is `body`, with a 50 ms body deadline: the
/// status and the JSON error's code.
async fn answer(body: Body) -> (StatusCode, String) {
    let app = Router::new()
        .route(
            "/",
            post(|RequestBody(bytes): RequestBody| async move { bytes }),
        )
        .layer(DefaultBodyLimit::max(crate::api::MAX_BODY))
        .layer(RequestBodyDeadlineLayer::new(Duration::from_millis(50)));
    let request = Request::post("/").body(body).expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("the answer's body");
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    (
        status,
        json["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    let first = stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{\"a\":"))]);
    let stalled = Body::from_stream(first.chain(stream::pending()));
    assert_eq!(
        answer(stalled).await,
        (StatusCode::REQUEST_TIMEOUT, "body_timeout".to_owned())
    );
}

/// A body that fails for another reason is a 400, even when its error's text says "timed
/// out": the old check matched that text and answered 408.
#[tokio::test]
async fn a_failing_body_whose_error_says_timed_out_is_no_timeout() {
    let failure = std::io::Error::other("upstream read timed out");
    let failing = Body::from_stream(stream::iter([Err::<Bytes, _>(failure)]));
    assert_eq!(
        answer(failing).await,
        (StatusCode::BAD_REQUEST, "invalid_request".to_owned())
    );
}

#[tokio::test]
async fn a_whole_body_is_taken() {
    let (status, _) = answer(Body::from("{}")).await;
    assert_eq!(status, StatusCode::OK);
}
