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
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::{debug, info};

use crate::cdp::message;
use crate::cdp::mux::{ClientLink, Closing, Forwarded};
use crate::metering::Billable;
use crate::session::Session;
use crate::session::state::EndReason;
use crate::telemetry::ClientConnection;

/// Largest CDP message a client may send, unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE: usize = 256 << 20;
/// How long a closing client gets to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Read buffer of each client connection. tungstenite allocates it up front (128 KiB by
/// default), so it dominates what an idle client costs; commands are small, and large ones
/// just take more reads.
const READ_BUFFER: usize = 16 << 10;

/// WebSocket limits for client connections: one CDP message may be one frame of up to
/// `max_message` bytes.
pub fn websocket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(READ_BUFFER)
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
    let _counted = ClientConnection::open();
    let traffic = session.usage();
    loop {
        let step = tokio::select! {
            biased;
            _ = link.close.changed() => Step::SessionEnded,
            outbound = link.outbound.recv() => match outbound {
                Some(text) => {
                    traffic.count_to_client(text.len());
                    send(&mut ws, &mut link, Message::Text(text)).await
                }
                None => Step::Stop,
            },
            incoming = ws.next() => {
                let payload: Bytes = match incoming {
                    Some(Ok(Message::Text(text))) => text.into(),
                    // Chromium reads only UTF-8 JSON; text frames are checked by tungstenite.
                    Some(Ok(Message::Binary(bytes))) if std::str::from_utf8(&bytes).is_ok() => bytes,
                    Some(Ok(Message::Binary(_))) => {
                        info!(session_id = %session.id, "closing a client that sent a binary frame that is not UTF-8; the session goes on");
                        let frame = CloseFrame {
                            code: CloseCode::Invalid,
                            reason: "binary frame is not valid UTF-8".into(),
                        };
                        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
                        break;
                    }
                    Some(Ok(Message::Close(_))) | Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_)))
                    | Some(Ok(Message::Frame(_))) => continue,
                    Some(Err(e)) => {
                        debug!(session_id = %session.id, error = %e, "client read failed");
                        if let Some(frame) = refusal(&e) {
                            info!(session_id = %session.id, code = u16::from(frame.code), reason = %frame.reason,
                                "closing a client that broke the protocol; the session goes on");
                            let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
                        }
                        break;
                    }
                    None => break,
                };
                traffic.count_to_browser(payload.len());
                match link.forward(payload).await {
                    Forwarded::Sent => Step::Continue,
                    Forwarded::Reply(reply) => {
                        traffic.count_to_client(reply.len());
                        send(&mut ws, &mut link, Message::Text(reply.into())).await
                    }
                    Forwarded::BrowserClose(id) => {
                        info!(session_id = %session.id, "client sent Browser.close; ending the session");
                        let reply = message::ok_reply(id);
                        traffic.count_to_client(reply.len());
                        let reply = Message::Text(Utf8Bytes::from(reply));
                        let step = send(&mut ws, &mut link, reply).await;
                        // The supervisor closes every client, this one included, once it has
                        // torn the session down; keep the socket until then.
                        let _ = session.request_end(EndReason::BrowserClosed);
                        step
                    }
                    Forwarded::Closed => Step::Stop,
                }
            }
        };
        match step {
            Step::Continue => {}
            Step::Stop => break,
            Step::SessionEnded => {
                let closing = link.close.borrow().clone();
                close(&mut ws, &mut link, closing, &session).await;
                break;
            }
        }
    }
    info!(session_id = %session.id, "client detached");
}

/// The close frame for a client whose input broke the rules, if the socket can still carry
/// one: 1009 for a message over the limit, 1007 for invalid UTF-8, 1002 for other protocol
/// errors.
fn refusal(error: &tungstenite::Error) -> Option<CloseFrame> {
    let (code, reason) = match error {
        tungstenite::Error::Capacity(_) => (CloseCode::Size, "message too big"),
        tungstenite::Error::Utf8(_) => (CloseCode::Invalid, "text frame is not valid UTF-8"),
        tungstenite::Error::Protocol(_) => (CloseCode::Protocol, "WebSocket protocol error"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// What the client loop does next.
enum Step {
    Continue,
    /// The client or the browser connection is gone.
    Stop,
    /// The session ended: close the socket with the session's close frame.
    SessionEnded,
}

/// Sends one frame, unless the session ends first: a client that does not read must not
/// keep its socket open past its session.
async fn send<S>(ws: &mut WebSocketStream<S>, link: &mut ClientLink, msg: Message) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::select! {
        sent = ws.send(msg) => match sent {
            Ok(()) => Step::Continue,
            Err(e) => {
                debug!(error = %e, "client write failed");
                Step::Stop
            }
        },
        _ = link.close.changed() => Step::SessionEnded,
    }
}

/// Delivers what was queued (when `closing` says so: a `Browser.close` reply, say), sends
/// the close frame and waits for the client's answer, so the client sees a clean close rather
/// than a reset. Bounded as a whole: a client that does not read cannot hold this task.
async fn close<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut ClientLink,
    closing: Option<Closing>,
    session: &Session,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Closing {
        frame,
        deliver_queued,
    } = closing.unwrap_or(Closing {
        frame: CloseFrame {
            code: CloseCode::Away,
            reason: "session ended".into(),
        },
        deliver_queued: true,
    });
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while deliver_queued && let Ok(text) = link.outbound.try_recv() {
            session.usage().count_to_client(text.len());
            if ws.send(Message::Text(text)).await.is_err() {
                return;
            }
        }
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
