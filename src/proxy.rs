//! One client's CDP WebSocket: frames from the client go to the session's multiplexer,
//! frames from the browser go to the client, and the session's end closes the socket with
//! a proper close frame.
//!
//! Owns WebSocket framing and per-client flow; it must not decide session states beyond
//! reporting a client's `Browser.close` to the session.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, info};

use crate::cdp::message;
use crate::cdp::mux::{ClientLink, Forwarded};
use crate::session::Session;
use crate::session::state::EndReason;

/// Largest CDP message accepted in either direction.
pub const MAX_MESSAGE: usize = 256 << 20;
/// How long a closing client gets to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// WebSocket limits for client connections: one CDP message may be one 256 MiB frame.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Serves one attached client until it leaves or the session ends.
pub async fn serve_client<S>(
    mut ws: WebSocketStream<S>,
    mut link: ClientLink,
    session: Arc<Session>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    info!(session_id = %session.id, "client attached");
    loop {
        tokio::select! {
            biased;
            _ = link.close.changed() => {
                let frame = link.close.borrow().clone();
                // Deliver what was queued before the end (a Browser.close reply, say), then close.
                while let Ok(text) = link.outbound.try_recv() {
                    if ws.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                close(&mut ws, frame).await;
                break;
            }
            outbound = link.outbound.recv() => match outbound {
                Some(text) => {
                    if let Err(e) = ws.send(Message::Text(text)).await {
                        debug!(session_id = %session.id, error = %e, "client write failed");
                        break;
                    }
                }
                None => break,
            },
            incoming = ws.next() => {
                let payload: Bytes = match incoming {
                    Some(Ok(Message::Text(text))) => text.into(),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(_))) | Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_)))
                    | Some(Ok(Message::Frame(_))) => continue,
                    Some(Err(e)) => {
                        debug!(session_id = %session.id, error = %e, "client read failed");
                        break;
                    }
                    None => break,
                };
                match link.forward(payload).await {
                    Forwarded::Sent => {}
                    Forwarded::Reply(reply) => {
                        if ws.send(Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                    Forwarded::BrowserClose(id) => {
                        info!(session_id = %session.id, "client sent Browser.close; ending the session");
                        if ws.send(Message::Text(Utf8Bytes::from(message::ok_reply(id)))).await.is_err() {
                            break;
                        }
                        // The supervisor closes every client, this one included, once it has
                        // torn the session down; keep the socket until then.
                        let _ = session.request_end(EndReason::BrowserClosed);
                    }
                    Forwarded::Closed => break,
                }
            }
        }
    }
    info!(session_id = %session.id, "client detached");
}

/// Sends a close frame and waits briefly for the client's answer, so that the client sees
/// a clean close rather than a reset.
async fn close<S>(ws: &mut WebSocketStream<S>, frame: Option<CloseFrame>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = frame.unwrap_or(CloseFrame {
        code: CloseCode::Away,
        reason: "session ended".into(),
    });
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
