//! Passing a request or a WebSocket upgrade to another node, byte for byte.
//!
//! A forwarded request keeps the client's method, path, query and headers (its API key
//! with them, so the other node authenticates it exactly as a direct one) and gains the
//! cluster's secret, which tells the receiver not to pass it on again. After a WebSocket
//! upgrade the two sockets are joined and bytes are copied both ways without reading
//! messages. It must not read or change what passes through.

use std::time::Duration;

use axum::body::Body;
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use bytes::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::Cluster;
use crate::vocab::Disconnect;

/// Carries the cluster's secret: the request comes from another node.
pub(crate) const SECRET_HEADER: &str = "x-ingot-cluster-secret";
/// The public URL of the node the client talks to, for links in the answer.
pub(crate) const VIA_HEADER: &str = "x-ingot-via";
/// Every header that only nodes may send starts with this.
pub(crate) const INTERNAL_PREFIX: &str = "x-ingot-";
/// On the answer to a relayed request: the typed code of the answering node's refusal
/// (`api::relay::PeerRefusal`).
pub(crate) const REFUSAL_HEADER: &str = "x-ingot-refusal";
/// On the answer to a relayed create: the id of the session it made.
pub(crate) const SESSION_HEADER: &str = "x-ingot-session-id";

/// Longest wait for a TCP connection to another node: a node cut off answers 502
/// `node_unreachable` within it.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_500);
/// Longest wait for another node's answer to anything but a create (a release waits up to
/// 10 s for its browser to be reaped).
pub(crate) const QUICK_ANSWER: Duration = Duration::from_secs(15);
/// Idle time before TCP keepalive probes on connections to other nodes, and between them.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// How long data sent to another node, or keepalive probes, may go unacknowledged before
/// the connection is called dead (`TCP_USER_TIMEOUT`): a forwarded WebSocket to a node
/// that was cut off ends within about this, and its client gets a close frame.
const DEAD_PATH: Duration = Duration::from_secs(3);
/// How long the owner's answer to a client's close frame may take to pass, once the client
/// has finished sending.
const CLOSE_REPLY: Duration = Duration::from_secs(1);
/// Buffer of each direction of a joined WebSocket.
const COPY_BUFFER: usize = 64 << 10;

/// Headers of one connection, never passed on (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// The other node could not be asked, or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the node at {url}: {why}")]
pub(crate) struct Unreachable {
    /// The node's advertise URL.
    pub url: String,
    /// What went wrong.
    pub why: String,
    /// Whether the request had been sent: then the other node may be acting on it.
    pub sent: bool,
}

impl Unreachable {
    fn new(url: &str, why: impl ToString, sent: bool) -> Unreachable {
        Unreachable {
            url: url.to_owned(),
            why: why.to_string(),
            sent,
        }
    }
}

/// The internal (`x-ingot-*`) headers of another node's answer, taken off it so that they
/// never reach a client, and kept as an extension of the answer for the relaying code.
#[derive(Debug, Clone, Default)]
pub(crate) struct Internal(pub HeaderMap);

/// What is passed on: the client's request line and headers.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Cluster {
    /// Sends `out` with `body` (streamed) to the node at `base` and returns its answer,
    /// streamed, waiting at most `within` for its head. `via` is the public URL the client used, for links
    /// in the answer.
    pub(crate) async fn send(
        &self,
        base: &str,
        out: &Outgoing,
        body: impl Into<Body>,
        via: &str,
        within: Duration,
    ) -> Result<Response<Body>, Unreachable> {
        let mut request = outgoing(out, body.into(), self.secret())?;
        if let Ok(via) = HeaderValue::from_str(via) {
            request.headers_mut().insert(VIA_HEADER, via);
        }
        let mut sender = connect(base, false).await?;
        let response = tokio::time::timeout(within, sender.send_request(request))
            .await
            .map_err(|_| Unreachable::new(base, format!("no answer within {within:?}"), true))?
            .map_err(|e| Unreachable::new(base, e, true))?;
        Ok(answer(response))
    }

    /// The id of the node that answers `/healthz` at `base`.
    pub(crate) async fn whoami(&self, base: &str) -> Result<String, Unreachable> {
        let unreachable = |why: String| Unreachable::new(base, why, true);
        let authority = url::Url::parse(base)
            .map_err(|e| unreachable(e.to_string()))?
            .authority()
            .to_owned();
        let mut headers = HeaderMap::new();
        if let Ok(host) = HeaderValue::from_str(&authority) {
            headers.insert(axum::http::header::HOST, host);
        }
        let out = Outgoing {
            method: Method::GET,
            uri: Uri::from_static("/healthz"),
            headers,
        };
        let answer = self
            .send(base, &out, Bytes::new(), base, QUICK_ANSWER)
            .await?;
        let body = axum::body::to_bytes(answer.into_body(), 64 << 10)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| unreachable("not an ingot node".into()))?;
        json["node"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| unreachable("an ingot node that is not in a cluster answers".into()))
    }

    /// Passes a WebSocket upgrade to the node at `base`. When that node accepts it, the
    /// client gets its 101 and the two sockets are joined (on `tasks`) until either closes,
    /// that node leaves the cluster, or this node stops; otherwise the client gets that
    /// node's answer.
    pub(crate) async fn upgrade(
        &self,
        base: &str,
        mut request: Request<Body>,
        tasks: &TaskTracker,
    ) -> Result<Response<Body>, Unreachable> {
        let client_side = hyper::upgrade::on(&mut request);
        let (parts, _) = request.into_parts();
        let out = Outgoing {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
        };
        let mut upgrade = outgoing(&out, Body::empty(), self.secret())?;
        let headers = upgrade.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut sender = connect(base, true).await?;
        let mut response = tokio::time::timeout(QUICK_ANSWER, sender.send_request(upgrade))
            .await
            .map_err(|_| {
                Unreachable::new(base, format!("no answer within {QUICK_ANSWER:?}"), true)
            })?
            .map_err(|e| Unreachable::new(base, e, true))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(answer(response));
        }
        let owner_side = hyper::upgrade::on(&mut response);
        let (stop, gone) = (self.stopping(), self.departure(base));
        tasks.spawn(async move {
            let ended = async {
                tokio::select! {
                    _ = stop.cancelled() => Cut::Stopping,
                    _ = gone.cancelled() => Cut::NodeLeft,
                }
            };
            join(client_side, owner_side, ended).await;
        });
        let mut switching = Response::new(Body::empty());
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *switching.headers_mut() = response.headers().clone();
        Ok(switching)
    }
}

/// Why a forwarded WebSocket is cut by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// This node is stopping.
    Stopping,
    /// The owner left the cluster (its lease ran out).
    NodeLeft,
    /// The connection to the owner failed or ended without a close.
    OwnerLost,
}

impl Cut {
    /// The close frame the client gets (code, reason), from the one table of them.
    fn close(self) -> (u16, &'static str) {
        match self {
            Cut::Stopping => Disconnect::RelayStopping,
            Cut::NodeLeft => Disconnect::OwnerLeft,
            Cut::OwnerLost => Disconnect::OwnerUnreachable,
        }
        .close()
    }
}

/// Waits for both sides of a forwarded upgrade, then copies bytes both ways until either
/// side closes or `cut` resolves. When this node cuts the connection, or the owner's side
/// ends without a close, the client gets a close frame with the reason (when the cut falls
/// between two of the owner's frames), never a bare reset.
async fn join(
    client: hyper::upgrade::OnUpgrade,
    owner: hyper::upgrade::OnUpgrade,
    cut: impl std::future::Future<Output = Cut>,
) {
    let (client, owner) = match tokio::join!(client, owner) {
        (Ok(client), Ok(owner)) => (client, owner),
        (Err(e), _) | (_, Err(e)) => {
            debug!(error = %e, "a forwarded WebSocket upgrade did not complete");
            return;
        }
    };
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut owner_read, mut owner_write) = tokio::io::split(TokioIo::new(owner));
    let mut frames = FrameCursor::default();
    let mut client_read = tokio::io::BufReader::with_capacity(COPY_BUFFER, &mut client_read);
    let why = {
        let up = tokio::io::copy_buf(&mut client_read, &mut owner_write);
        let down = copy_frames(&mut owner_read, &mut client_write, &mut frames);
        tokio::pin!(up, down);
        tokio::select! {
            // The client left: the owner's answer to its close frame still goes through.
            // A failure is the owner's side failing to take the client's bytes.
            sent = &mut up => match sent {
                Ok(_) => {
                    let _ = tokio::time::timeout(CLOSE_REPLY, &mut down).await;
                    return;
                }
                Err(_) => Some(Cut::OwnerLost),
            },
            ended = &mut down => ended,
            why = cut => Some(why),
        }
    };
    // Not after the owner's own close frame, and never into the middle of a frame (a write
    // cut short leaves the cursor short of a boundary).
    if let Some(why) = why
        && frames.at_boundary()
        && !frames.closed
    {
        let (code, reason) = why.close();
        debug!(code, reason, "closing a forwarded WebSocket");
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            client_write.write_all(&close_frame(code, reason)),
        )
        .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client_write.shutdown()).await;
}

/// Copies the owner's bytes to the client, following frame boundaries. Returns `None` when
/// the owner closed the WebSocket itself (its close frame passed), or `Some(OwnerLost)`
/// when its side ended or failed without one; also `None` when the client's side fails.
async fn copy_frames(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    frames: &mut FrameCursor,
) -> Option<Cut> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                return (!frames.closed).then_some(Cut::OwnerLost);
            }
            Ok(n) => n,
        };
        // Marked as under way until the whole chunk is written: a write cut short leaves
        // the client mid-frame.
        frames.writing = true;
        if to.write_all(&buf[..n]).await.is_err() {
            return None;
        }
        frames.writing = false;
        frames.advance(&buf[..n]);
    }
}

/// Where a stream of WebSocket frames is: inside a frame's head, inside its payload, or
/// between frames; and whether a close frame has passed. Reads only frame heads.
#[derive(Debug, Default)]
struct FrameCursor {
    /// Bytes of the current frame's head seen so far (at most 14).
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A close frame has passed.
    closed: bool,
    /// Bytes are being written to the client: it may be left between any two of them.
    writing: bool,
}

impl FrameCursor {
    /// Follows `bytes`, the next bytes of the stream.
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            self.head.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some(payload) = head_complete(&self.head) {
                if self.head[0] & 0x0f == 0x8 {
                    self.closed = true;
                }
                self.head.clear();
                self.payload_left = payload;
            }
        }
    }

    /// Whether the stream is between two frames.
    fn at_boundary(&self) -> bool {
        !self.writing && self.head.is_empty() && self.payload_left == 0
    }
}

/// The payload length of a frame whose head is `head`, once `head` is whole.
fn head_complete(head: &[u8]) -> Option<u64> {
    let [_, second, ..] = head else {
        return None;
    };
    let masked = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, len) = match second & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    if head.len() < 2 + extended + masked {
        return None;
    }
    let len = len.unwrap_or_else(|| {
        head[2..2 + extended]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    Some(len)
}

/// An unmasked close frame (server to client) with `code` and `reason` (under 124 bytes).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// The request passed on: the client's, with the cluster's `secret`. Headers only nodes
/// may send are dropped (the secret is set anew), and so are hop-by-hop headers: this
/// connection has its own framing (an upgrade sets its `Connection` and `Upgrade` again).
fn outgoing(out: &Outgoing, body: Body, secret: &str) -> Result<Request<Body>, Unreachable> {
    let mut request = Request::new(body);
    *request.method_mut() = out.method.clone();
    *request.uri_mut() = out
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    let headers = request.headers_mut();
    for (name, value) in &out.headers {
        let internal = name.as_str().starts_with(INTERNAL_PREFIX);
        let hop = HOP_BY_HOP.contains(&name.as_str()) || named_by_connection(out, name);
        if !internal && !hop {
            headers.append(name.clone(), value.clone());
        }
    }
    let secret = HeaderValue::from_str(secret).map_err(|e| Unreachable::new("", e, false))?;
    headers.insert(HeaderName::from_static(SECRET_HEADER), secret);
    Ok(request)
}

/// Whether the client's `Connection` header names `name` (a header of that connection only).
fn named_by_connection(out: &Outgoing, name: &HeaderName) -> bool {
    out.headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Another node's answer as this node's: the body streams through; the framing headers of
/// that connection are dropped (this connection has its own), and the internal headers
/// are moved into an [`Internal`] extension.
fn answer(response: Response<hyper::body::Incoming>) -> Response<Body> {
    let mut response = response.map(Body::new);
    for name in HOP_BY_HOP {
        if name != "content-length" {
            response.headers_mut().remove(name);
        }
    }
    let internal = take_internal(response.headers_mut());
    response.extensions_mut().insert(internal);
    response
}

/// Takes the internal (`x-ingot-*`) headers off `headers`.
fn take_internal(headers: &mut HeaderMap) -> Internal {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(INTERNAL_PREFIX))
        .cloned()
        .collect();
    let mut internal = HeaderMap::new();
    for name in names {
        for value in headers.get_all(&name) {
            internal.append(name.clone(), value.clone());
        }
        headers.remove(&name);
    }
    Internal(internal)
}

/// An HTTP/1 connection to the node at `base` (`http://host:port`), with TCP keepalive so
/// that a connection to a machine that vanished ends.
async fn connect(base: &str, upgrades: bool) -> Result<http1::SendRequest<Body>, Unreachable> {
    let unreachable = |why: String| Unreachable::new(base, why, false);
    let url = url::Url::parse(base).map_err(|e| unreachable(e.to_string()))?;
    let host = url
        .host_str()
        .ok_or_else(|| unreachable("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE)
        .with_retries(2);
    let socket = socket2::SockRef::from(&stream);
    let _ = socket.set_tcp_keepalive(&keepalive);
    let _ = socket.set_tcp_user_timeout(Some(DEAD_PATH));
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // Ends with the connection: when the answer is read and the sender dropped, or when an
    // upgrade hands the socket over.
    tokio::spawn(async move {
        let result = if upgrades {
            connection.with_upgrades().await
        } else {
            connection.await
        };
        if let Err(e) = result {
            debug!(error = %e, "connection to another node ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_follows_frame_boundaries_across_reads() {
        let mut frames = FrameCursor::default();
        // A short text frame, then one with a 16-bit length, cut mid-head and mid-payload.
        let mut stream = vec![0x81, 3, b'a', b'b', b'c', 0x81, 126, 0x01, 0x00];
        stream.extend(std::iter::repeat_n(b'x', 256));
        for (i, chunk) in stream.chunks(4).enumerate() {
            frames.advance(chunk);
            let whole = (i + 1) * 4;
            if whole == 8 || whole == 12 {
                assert!(!frames.at_boundary(), "inside the second frame at {whole}");
            }
        }
        assert!(frames.at_boundary());
        assert!(!frames.closed);
        // A masked frame from a client, then a close frame.
        frames.advance(&[0x81, 0x82, 1, 2, 3, 4, 9, 9]);
        assert!(frames.at_boundary());
        frames.advance(&close_frame(1000, "bye"));
        assert!(frames.at_boundary() && frames.closed);
        frames.writing = true;
        assert!(!frames.at_boundary(), "not while a chunk is being written");
    }

    #[test]
    fn internal_headers_are_taken_off_an_answer() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            (REFUSAL_HEADER, "tenant_quota"),
            (SESSION_HEADER, "id"),
            ("x-ingot-anything", "else"),
            ("retry-after", "1"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let Internal(internal) = take_internal(&mut headers);
        assert_eq!(internal[REFUSAL_HEADER], "tenant_quota");
        assert_eq!(internal.len(), 3);
        assert_eq!(
            headers.len(),
            2,
            "only the client's headers stay: {headers:?}"
        );
        assert!(
            headers
                .keys()
                .all(|n| !n.as_str().starts_with(INTERNAL_PREFIX))
        );
    }

    #[test]
    fn a_close_frame_carries_its_code_and_reason() {
        let frame = close_frame(1011, "the node running this session cannot be reached");
        assert_eq!(frame[0], 0x88);
        assert_eq!(usize::from(frame[1]), frame.len() - 2);
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1011);
        assert!(close_frame(1011, &"x".repeat(300)).len() <= 2 + 125);
    }

    #[test]
    fn a_passed_on_request_keeps_the_clients_headers_and_carries_the_secret() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "lb.example:8080"),
            ("steel-api-key", "k"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "named by Connection"),
            ("transfer-encoding", "chunked"),
            ("content-length", "2"),
            ("x-ingot-cluster-secret", "forged"),
            ("x-ingot-via", "http://evil"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let out = Outgoing {
            method: Method::POST,
            uri: Uri::from_static("http://ignored/v1/sessions?x=1"),
            headers,
        };
        let request = outgoing(&out, Body::empty(), "s3cret").expect("request");
        assert_eq!(request.uri(), "/v1/sessions?x=1");
        let h = request.headers();
        assert_eq!(h["host"], "lb.example:8080");
        assert_eq!(h["steel-api-key"], "k");
        assert_eq!(h[SECRET_HEADER], "s3cret", "the forged secret is replaced");
        for gone in [
            "connection",
            "x-private",
            "transfer-encoding",
            "content-length",
            VIA_HEADER,
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }
}
