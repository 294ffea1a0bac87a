//! One client's CDP WebSocket: frames from the client go to the session's multiplexer,
//! frames from the browser go to the client, and a disconnect closes the socket with a
//! proper close frame.
//!
//! Owns client sockets: WebSocket framing, per-client flow, and the close frames of every
//! way a client is let go ([`close_frame`], [`final_frame`], [`refusal`]), the viewer's
//! socket included ([`close_socket`]). The codes and reasons are one table,
//! `vocab::Disconnect::close`: no module chooses a close code of its own. It must not
//! decide session states beyond reporting a client's `Browser.close` to the session.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::{debug, info, warn};

use crate::cdp::message;
use crate::cdp::mux::{ClientLink, Forwarded};
use crate::cluster::lease::Fence;
use crate::metering::Billable;
use crate::session::Session;
use crate::telemetry::ClientConnection;
use crate::vocab::{Disconnect, EndReason};

/// How long a closing client gets to answer our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Read buffer of each client connection. tungstenite allocates it up front (128 KiB by
/// default), so it dominates what an idle client costs; commands are small, and large ones
/// just take more reads.
const READ_BUFFER: usize = 16 << 10;

/// WebSocket limits for client connections: one CDP message may be one frame of up to
/// `max_message` bytes.
pub(crate) fn websocket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(READ_BUFFER)
}

/// The close frame a client gets for each reason it is disconnected (the code and reason
/// come from [`Disconnect::close`], the one table of them).
pub(crate) fn close_frame(why: Disconnect) -> CloseFrame {
    let (code, reason) = why.close();
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}

/// The close frame for a socket let go for `why`; a session that ended for no recorded
/// reason closes its sockets with 1001 "session ended".
pub(crate) fn final_frame(why: Option<Disconnect>) -> CloseFrame {
    close_frame(why.unwrap_or(Disconnect::SessionGone))
}

/// Closes a socket that is not a CDP client's (the viewer's) with `frame`, and waits for
/// the other side's answer so that it sees a clean close; bounded, like a client's close.
pub(crate) async fn close_socket<S>(socket: &mut S, frame: CloseFrame)
where
    S: Sink<Message> + Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// Serves one attached client until it leaves or is disconnected. A client that has
/// neither sent nor received anything for `ping_every` gets a WebSocket ping, so that load
/// balancers, which drop idle connections after about a minute, keep its socket open.
pub(crate) async fn serve_client<S>(
    mut ws: WebSocketStream<S>,
    mut link: ClientLink,
    session: Arc<Session>,
    ping_every: Duration,
    fence: Arc<Fence>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    info!(session_id = %session.id, "client attached");
    let _counted = ClientConnection::open();
    // One timer for the socket's life, checked at half the interval: a client is pinged
    // after between one and one and a half intervals of silence, and a busy socket pays
    // for a clock read per message, not for a timer.
    let check = ping_every / 2;
    let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut active_at = std::time::Instant::now();
    loop {
        let step = tokio::select! {
            biased;
            _ = link.close.changed() => Step::Disconnected,
            outbound = link.outbound.recv() => match outbound {
                Some(msg) => to_client(&mut ws, &mut link, &session, msg, &fence).await,
                None => Step::Stop,
            },
            incoming = ws.next() => from_client(&mut ws, &mut link, &session, incoming, &fence).await,
            _ = checks.tick() => {
                if active_at.elapsed() < ping_every {
                    continue;
                }
                send(&mut ws, &mut link, Message::Ping(Bytes::new())).await
            }
        };
        active_at = std::time::Instant::now();
        match step {
            Step::Continue => {}
            Step::Stop => break,
            Step::Disconnected => {
                let why = link
                    .close
                    .borrow()
                    .or_else(|| session.end_reason().map(Disconnect::SessionEnded));
                close(&mut ws, &mut link, why, &session).await;
                break;
            }
        }
    }
    info!(session_id = %session.id, "client detached");
}

/// How often a client held by the fence checks whether it may go on, besides being woken
/// when the fence opens.
const FENCE_RECHECK: Duration = Duration::from_millis(100);
/// How long a held client of a session that ended waits for its supervisor's reason.
const FENCE_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Holds a message, in either direction, while this node may not serve (it is fenced off
/// from its cluster, or its lease's deadline passed before the lease task could say so):
/// nothing reaches the browser or the client until the node renews. `false` when the client
/// must go meanwhile (its session ended: lost by the cluster, released, timed out).
async fn wait_while_fenced(fence: &Fence, link: &mut ClientLink, session: &Session) -> bool {
    if fence.may_serve() {
        return true;
    }
    let mut paused = fence.paused();
    loop {
        tokio::select! {
            biased;
            _ = link.close.changed() => return false,
            _ = paused.changed() => {}
            _ = tokio::time::sleep(FENCE_RECHECK) => {}
        }
        // A session the cluster failed meanwhile was ended before the fence opened: its
        // held message is not relayed, and the client is closed with the reason.
        if !session.phase().is_live() {
            let _ = tokio::time::timeout(FENCE_CLOSE_WAIT, link.close.changed()).await;
            return false;
        }
        if fence.may_serve() {
            return true;
        }
    }
}

/// What the client loop does next.
enum Step {
    Continue,
    /// The client or the browser connection is gone.
    Stop,
    /// The gateway let the client go: close the socket with the reason's close frame.
    Disconnected,
}

/// Sends one browser message to the client.
async fn to_client<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut ClientLink,
    session: &Session,
    msg: Bytes,
    fence: &Fence,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !wait_while_fenced(fence, link, session).await {
        return Step::Disconnected;
    }
    let Ok(text) = Utf8Bytes::try_from(msg) else {
        warn!(session_id = %session.id, "browser sent a message that is not UTF-8; dropped");
        return Step::Continue;
    };
    session.usage().count_to_client(text.len());
    send(ws, link, Message::Text(text)).await
}

/// Handles one frame (or error) read from the client.
async fn from_client<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut ClientLink,
    session: &Session,
    incoming: Option<Result<Message, tungstenite::Error>>,
    fence: &Fence,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let payload: Bytes = match incoming {
        Some(Ok(Message::Text(text))) => text.into(),
        // Chromium reads only UTF-8 JSON; text frames are checked by tungstenite.
        Some(Ok(Message::Binary(bytes))) if std::str::from_utf8(&bytes).is_ok() => bytes,
        Some(Ok(Message::Binary(_))) => {
            info!(session_id = %session.id, "closing a client that sent a binary frame that is not UTF-8; the session goes on");
            let frame = close_frame(Disconnect::BinaryNotUtf8);
            let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
            return Step::Stop;
        }
        Some(Ok(_)) => return Step::Continue,
        Some(Err(e)) => {
            debug!(session_id = %session.id, error = %e, "client read failed");
            if let Some(frame) = refusal(&e) {
                info!(session_id = %session.id, code = u16::from(frame.code), reason = %frame.reason,
                    "closing a client that broke the protocol; the session goes on");
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
            }
            return Step::Stop;
        }
        None => return Step::Stop,
    };
    if !wait_while_fenced(fence, link, session).await {
        return Step::Disconnected;
    }
    session.usage().count_to_browser(payload.len());
    session.note_activity();
    match link.forward(payload).await {
        Forwarded::Sent => Step::Continue,
        Forwarded::Reply(reply) => {
            session.usage().count_to_client(reply.len());
            send(ws, link, Message::Text(reply.into())).await
        }
        Forwarded::BrowserClose(id, on) => {
            info!(session_id = %session.id, "client sent Browser.close; ending the session");
            let reply = message::ok_reply(id, on.as_deref());
            session.usage().count_to_client(reply.len());
            let step = send(ws, link, Message::Text(Utf8Bytes::from(reply))).await;
            // The supervisor disconnects every client, this one included, once it has torn
            // the session down; keep the socket until then.
            let _ = session.request_end(EndReason::BrowserClosed);
            step
        }
        Forwarded::Closed => Step::Stop,
    }
}

/// The close frame for a client whose input broke the rules, if the socket can still carry
/// one: 1009 for a message over the limit, 1007 for invalid UTF-8, 1002 for other protocol
/// errors.
pub(crate) fn refusal(error: &tungstenite::Error) -> Option<CloseFrame> {
    let why = match error {
        tungstenite::Error::Capacity(_) => Disconnect::TooBig,
        tungstenite::Error::Utf8(_) => Disconnect::NotUtf8,
        tungstenite::Error::Protocol(_) => Disconnect::ProtocolError,
        _ => return None,
    };
    Some(close_frame(why))
}

/// Sends one frame, unless the client is disconnected first: a client that does not read
/// must not keep its socket open past its session.
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
        _ = link.close.changed() => Step::Disconnected,
    }
}

/// Delivers what was queued (when the session ended: a `Browser.close` reply may be
/// waiting; not for a client dropped for not reading), sends the close frame and waits for
/// the client's answer, so the client sees a clean close rather than a reset. Bounded as a
/// whole: a client that does not read cannot hold this task.
async fn close<S>(
    ws: &mut WebSocketStream<S>,
    link: &mut ClientLink,
    why: Option<Disconnect>,
    session: &Session,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = final_frame(why);
    // Messages still queued go out before the close frame, except to a client that is not
    // reading, and except for a session the cluster failed: its node held them while it
    // was fenced, and nothing of it may be answered after the failure.
    let deliver_queued = !matches!(
        why,
        Some(Disconnect::NotReading | Disconnect::SessionEnded(EndReason::NodeLost))
    );
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while deliver_queued && let Ok(msg) = link.outbound.try_recv() {
            let Ok(text) = Utf8Bytes::try_from(msg) else {
                continue;
            };
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
