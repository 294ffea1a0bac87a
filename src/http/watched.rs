//! A client's TCP stream as hyper sees it, watched so that the accept loop can answer the
//! errors hyper answers badly or not at all, in ingot's JSON error shape.
//!
//! * It notes whether the client has sent bytes of a request that has not been answered
//!   yet, so that a header-read timeout answers 408 to a head cut short, while an idle
//!   keep-alive connection just closes.
//! * hyper answers a head too large for its buffer with a bare `431` (no body). The stream
//!   replaces that one response with the JSON one; every other byte passes unchanged.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long a timed-out connection keeps reading after its 408, before it closes.
const LINGER: Duration = Duration::from_millis(200);
/// What hyper writes for a head over its buffer: status line, then `content-length: 0`.
const BARE_431: &[u8] = b"HTTP/1.1 431 ";

fn json_response(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "message": message,
        "error": { "code": code, "message": message },
    })
    .to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Whether the client has sent part of a request that is not answered yet.
#[derive(Clone, Default)]
pub(super) struct HeadStarted(Arc<AtomicBool>);

impl HeadStarted {
    /// True between the first byte of a request and the first byte of its answer.
    pub(super) fn is_started(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The watched stream.
pub(super) struct Watched {
    stream: TcpStream,
    /// Its place under the connection cap, held as long as the stream (an upgraded
    /// WebSocket's too).
    _slot: Option<Arc<super::cap::Slot>>,
    started: HeadStarted,
    /// The JSON 431 being written in place of hyper's bare one, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl Watched {
    /// Wraps `stream`, which holds `slot`; the flag tells whether a request head is in
    /// progress.
    pub(super) fn new(
        stream: TcpStream,
        slot: Option<Arc<super::cap::Slot>>,
    ) -> (Watched, HeadStarted) {
        let started = HeadStarted::default();
        let watched = Watched {
            stream,
            _slot: slot,
            started: started.clone(),
            replacing: None,
        };
        (watched, started)
    }
}

/// hyper's own answer to a head over its buffer: `431` with an empty body.
fn is_bare_431(buf: &[u8]) -> bool {
    buf.starts_with(BARE_431)
        && buf
            .windows(b"content-length: 0\r\n".len())
            .any(|w| w.eq_ignore_ascii_case(b"content-length: 0\r\n"))
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.started.0.store(true, Ordering::Release);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.started.0.store(false, Ordering::Release);
        if self.replacing.is_none() && is_bare_431(buf) {
            let message = format!(
                "the request line and headers are larger than {} KiB",
                crate::api::MAX_HEAD >> 10
            );
            let answer = json_response(
                "431 Request Header Fields Too Large",
                "head_too_large",
                &message,
            );
            self.replacing = Some((answer, 0));
        }
        let this = &mut *self;
        match &mut this.replacing {
            Some((answer, sent)) if *sent < answer.len() => {
                while *sent < answer.len() {
                    *sent += ready!(Pin::new(&mut this.stream).poll_write(cx, &answer[*sent..]))?;
                }
                Poll::Ready(Ok(buf.len()))
            }
            _ => Pin::new(&mut this.stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Answers 408 on the spare handle of a connection whose head did not arrive in time, then
/// closes it. Bounded: a client that does not read gets nothing more.
pub(super) async fn answer_timeout(spare: Option<OwnedFd>, timeout: Duration) {
    let Some(stream) = spare
        .map(std::net::TcpStream::from)
        .and_then(|s| TcpStream::from_std(s).ok())
    else {
        return;
    };
    let message = format!(
        "the request head did not arrive within {} ms",
        timeout.as_millis()
    );
    let answer = json_response("408 Request Timeout", "header_timeout", &message);
    let mut stream = stream;
    let sent = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        // Read what the client still sends for a moment, so that closing with unread input
        // (a reset) does not destroy the answer before the client has read it.
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}
