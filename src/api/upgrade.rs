//! The API's one WebSocket upgrade, shared by the CDP endpoint ([`super::cdp`]) and the
//! viewer's socket ([`super::live`]): the checks on the upgrade request, the 101, and the
//! socket handed over, with one configuration ([`crate::proxy::websocket_config`]), as a
//! task the shutdown waits for.
//!
//! Knows nothing of what runs on the socket: the handler passes that in.

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::debug;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::proxy;

/// A server's end of an upgraded connection.
pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An upgrade request that passed the checks: what completes it.
pub(crate) struct Upgrade {
    key: String,
}

impl Upgrade {
    /// Checks that `headers` ask for a WebSocket (426 otherwise, naming the endpoint:
    /// `what` is e.g. "a CDP WebSocket endpoint") of version 13 with a key (400 otherwise).
    pub(crate) fn check(headers: &HeaderMap, what: &str) -> Result<Upgrade, ApiError> {
        let connection_upgrade = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        if !connection_upgrade || !is_websocket_upgrade(headers) {
            return Err(ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                format!("this is {what}; connect with a WebSocket client"),
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .and_then(|v| v.to_str().ok())
            != Some("13")
        {
            return Err(ApiError::bad_request("Sec-WebSocket-Version: must be 13"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_request("Sec-WebSocket-Key: missing"))?;
        Ok(Upgrade { key })
    }

    /// Answers 101 to `request` (session `id`'s) and, once the client has switched, runs
    /// `serve` on the socket as one of the state's client tasks.
    pub(crate) fn complete<F, Fut>(
        self,
        state: &AppState,
        id: Uuid,
        mut request: Request,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let on_upgrade = hyper::upgrade::on(&mut request);
        let config = proxy::websocket_config(state.max_message);
        state.clients.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    serve(ws).await;
                }
                Err(e) => {
                    debug!(session_id = %id, error = %e, "WebSocket upgrade did not complete");
                }
            }
        });
        switching_protocols(&self.key)
    }
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The 101 that completes a WebSocket upgrade whose `Sec-WebSocket-Key` is `key`.
fn switching_protocols(key: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDP: &str = "a CDP WebSocket endpoint";

    #[test]
    fn a_request_that_is_not_an_upgrade_is_told_which_endpoint_it_reached() {
        let checked = Upgrade::check(&HeaderMap::new(), "the live viewer's WebSocket endpoint");
        let Err(refused) = checked else {
            panic!("a request without an upgrade passed");
        };
        assert_eq!(refused.status, StatusCode::UPGRADE_REQUIRED);
        assert!(
            refused.message.contains("live viewer"),
            "{}",
            refused.message
        );
    }

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn an_upgrade_needs_websocket_version_13_and_a_key() {
        use header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
        let status = |pairs: &[(header::HeaderName, &'static str)]| {
            Upgrade::check(&headers(pairs), CDP).err().map(|e| e.status)
        };
        let upgrade = [(CONNECTION, "keep-alive, Upgrade"), (UPGRADE, "WebSocket")];
        assert_eq!(status(&[]), Some(StatusCode::UPGRADE_REQUIRED));
        assert_eq!(
            status(&[(UPGRADE, "websocket")]),
            Some(StatusCode::UPGRADE_REQUIRED),
            "Connection: Upgrade is required"
        );
        assert_eq!(
            status(&upgrade),
            Some(StatusCode::BAD_REQUEST),
            "no version"
        );
        let versioned = [
            upgrade[0].clone(),
            upgrade[1].clone(),
            (SEC_WEBSOCKET_VERSION, "13"),
        ];
        assert_eq!(status(&versioned), Some(StatusCode::BAD_REQUEST), "no key");
        let mut complete = versioned.to_vec();
        complete.push((SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="));
        let checked = Upgrade::check(&headers(&complete), CDP).expect("a valid upgrade");
        let response = switching_protocols(&checked.key);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "RFC 6455's example"
        );
    }
}
