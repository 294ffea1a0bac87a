//! Framing of Chromium's `--remote-debugging-pipe`: whole CDP messages, each followed by a
//! NUL byte, on fd 3 (to the browser) and fd 4 (from it).
//!
//! There is no task in between: whoever sends writes its message (and the NUL after it)
//! straight into the pipe ([`PipeSink`]), and whoever reads splits what it reads on NUL
//! ([`PipeSource`]). A message costs one `writev` and, on the way back, one `read`, with no
//! hand-off to another task and no wake-up of one. Owns the two pipes' ends in the gateway;
//! knows nothing about what the messages say.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::unix::pipe;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, warn};

use super::transport::{Closed, TrySendError};

/// Largest message accepted from the browser; beyond it the connection counts as lost.
const MAX_PIPE_MESSAGE: usize = 512 << 20;

/// The gateway's writing end of the pipe, shared by every sender. Senders take turns: the
/// lock is held for one whole message, so messages never interleave.
pub(super) struct PipeSink {
    /// `None` once the pipe is closed (the browser was reaped, or a write failed).
    pipe: Arc<Mutex<Option<pipe::Sender>>>,
    /// Cancelled when the browser is reaped.
    open: CancellationToken,
}

impl PipeSink {
    /// Takes the writing end. Cancelling `open` closes it, even while senders remain.
    pub(super) fn new(pipe: pipe::Sender, open: CancellationToken) -> PipeSink {
        let cell = Arc::new(Mutex::new(Some(pipe)));
        tokio::spawn(close_when_cancelled(Arc::downgrade(&cell), open.clone()));
        PipeSink { pipe: cell, open }
    }

    /// Writes one message and its NUL. Most messages fit the pipe at once and are written
    /// by the caller, without waiting. When the pipe is full, the rest is written by a task
    /// of its own, so that a caller dropped while it waits never leaves half a message in
    /// the pipe.
    pub(super) async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        // Closed means closed, even before the task that drops the pipe has run (a write
        // could otherwise still land while a forked child briefly holds the read end).
        if self.open.is_cancelled() {
            return Err(Closed);
        }
        let mut slot = self.pipe.clone().lock_owned().await;
        let Some(pipe) = slot.as_ref() else {
            return Err(Closed);
        };
        let mut sent = 0;
        match write_now(pipe, &msg, &mut sent) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                debug!(error = %e, "CDP pipe to the browser closed");
                *slot = None;
                return Err(Closed);
            }
        }
        let finishing = finish_later(slot, msg, sent, self.open.clone());
        finishing.await.unwrap_or(Err(Closed))
    }

    /// Writes one message and its NUL if that needs no waiting: the pipe is free and has
    /// room for the start of it. Once a message is started, its rest is finished by a task
    /// of its own. Gives the message back when it would have to wait.
    pub(super) fn try_send(&self, msg: Bytes) -> Result<(), TrySendError> {
        let Ok(mut slot) = self.pipe.clone().try_lock_owned() else {
            return Err(TrySendError::Busy(msg));
        };
        let Some(pipe) = slot.as_ref() else {
            return Err(TrySendError::Closed);
        };
        let mut sent = 0;
        match write_now(pipe, &msg, &mut sent) {
            Ok(true) => return Ok(()),
            Ok(false) if sent == 0 => return Err(TrySendError::Busy(msg)),
            Ok(false) => {}
            Err(e) => {
                debug!(error = %e, "CDP pipe to the browser closed");
                *slot = None;
                return Err(TrySendError::Closed);
            }
        }
        drop(finish_later(slot, msg, sent, self.open.clone()));
        Ok(())
    }
}

/// Writes the rest of a message the pipe took only part of, from `sent` on, on a task of its
/// own that holds the pipe until then: no other message can interleave, and a caller
/// dropped meanwhile cuts nothing. A failure closes the pipe.
fn finish_later(
    mut slot: OwnedMutexGuard<Option<pipe::Sender>>,
    msg: Bytes,
    sent: usize,
    open: CancellationToken,
) -> JoinHandle<Result<(), Closed>> {
    tokio::spawn(async move {
        let written = match slot.as_ref() {
            Some(pipe) => tokio::select! {
                written = write_rest(pipe, &msg, sent) => written,
                _ = open.cancelled() => Err(io::ErrorKind::BrokenPipe.into()),
            },
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = &written {
            debug!(error = %e, "CDP pipe to the browser closed");
            *slot = None;
        }
        written.map_err(|_| Closed)
    })
}

/// Closes the pipe once the browser is reaped; ends early when every sender is gone.
async fn close_when_cancelled(cell: Weak<Mutex<Option<pipe::Sender>>>, open: CancellationToken) {
    open.cancelled().await;
    if let Some(cell) = cell.upgrade() {
        cell.lock().await.take();
    }
}

/// Writes what the pipe takes now of `msg` and its NUL, from `sent` on. Returns whether
/// everything is written.
fn write_now(pipe: &pipe::Sender, msg: &[u8], sent: &mut usize) -> io::Result<bool> {
    let total = msg.len() + 1;
    while *sent < total {
        let written = if *sent < msg.len() {
            pipe.try_write_vectored(&[IoSlice::new(&msg[*sent..]), IoSlice::new(b"\0")])
        } else {
            pipe.try_write(b"\0")
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes the rest of `msg` and its NUL, waiting for room in the pipe.
async fn write_rest(pipe: &pipe::Sender, msg: &[u8], mut sent: usize) -> io::Result<()> {
    loop {
        pipe.writable().await?;
        if write_now(pipe, msg, &mut sent)? {
            return Ok(());
        }
    }
}

/// The gateway's reading end of the pipe: splits the browser's output on NUL into messages.
pub(super) struct PipeSource {
    pipe: Option<pipe::Receiver>,
    buf: BytesMut,
    /// How much of `buf` is known to hold no NUL.
    scanned: usize,
    /// Resolves when the browser is reaped.
    reaped: Pin<Box<WaitForCancellationFutureOwned>>,
    pid: i32,
}

impl PipeSource {
    /// Takes the reading end. Once `open` is cancelled, nothing more is read.
    pub(super) fn new(pipe: pipe::Receiver, open: CancellationToken, pid: i32) -> PipeSource {
        PipeSource {
            pipe: Some(pipe),
            buf: BytesMut::with_capacity(256 << 10),
            scanned: 0,
            reaped: Box::pin(open.cancelled_owned()),
            pid,
        }
    }

    /// The next whole message; `None` (for good) on EOF, on a read error, once the browser
    /// is reaped, or after a message over [`MAX_PIPE_MESSAGE`].
    pub(super) async fn recv(&mut self) -> Option<BytesMut> {
        loop {
            if let Some(pos) = memchr::memchr(0, &self.buf[self.scanned..]) {
                let msg = self.buf.split_to(self.scanned + pos);
                self.buf.advance(1);
                self.scanned = 0;
                return Some(msg);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_PIPE_MESSAGE {
                warn!(
                    pid = self.pid,
                    "browser sent a message over {} MiB; dropping the connection",
                    MAX_PIPE_MESSAGE >> 20
                );
                self.pipe = None;
                self.buf = BytesMut::new();
                return None;
            }
            if self.buf.capacity() - self.buf.len() < (64 << 10) {
                self.buf.reserve(self.buf.len().max(256 << 10));
            }
            if !self.fill().await {
                self.pipe = None;
                return None;
            }
        }
    }

    /// Reads once; false when the connection is over.
    async fn fill(&mut self) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        let (buf, reaped, pid) = (&mut self.buf, &mut self.reaped, self.pid);
        std::future::poll_fn(|cx: &mut Context<'_>| {
            if reaped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *pipe), cx, buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(0)) => Poll::Ready(false),
                Poll::Ready(Ok(_)) => Poll::Ready(true),
                Poll::Ready(Err(e)) => {
                    debug!(pid, error = %e, "CDP pipe from the browser failed");
                    Poll::Ready(false)
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Larger than a pipe's buffer, so that writing it must wait for the reader.
    const BIG: usize = 1 << 20;

    #[tokio::test]
    async fn splits_on_nul_and_writes_with_nul() {
        let (tx, rx) = pipe::pipe().expect("pipe");
        let open = CancellationToken::new();
        let sink = Arc::new(PipeSink::new(tx, open.clone()));
        let mut source = PipeSource::new(rx, open.clone(), 0);
        let big = Bytes::from(vec![b'x'; BIG]);
        let writer = {
            let (sink, big) = (sink.clone(), big.clone());
            tokio::spawn(async move {
                for msg in [Bytes::from_static(b"{\"id\":1}"), big, Bytes::new()] {
                    sink.send(msg).await.expect("send");
                }
            })
        };
        assert_eq!(&source.recv().await.expect("first")[..], b"{\"id\":1}");
        assert_eq!(source.recv().await.expect("big").len(), big.len());
        assert!(source.recv().await.expect("empty").is_empty());
        writer.await.expect("writer");
        open.cancel();
        assert!(source.recv().await.is_none(), "reaping ends the stream");
        assert!(sink.send(Bytes::from_static(b"{}")).await.is_err());
    }

    #[tokio::test]
    async fn a_sender_dropped_mid_message_never_cuts_it() {
        let (tx, rx) = pipe::pipe().expect("pipe");
        let open = CancellationToken::new();
        let sink = Arc::new(PipeSink::new(tx, open.clone()));
        let mut source = PipeSource::new(rx, open, 0);
        // Nobody reads yet, so the first message fills the pipe and its sender waits; it is
        // then dropped while waiting.
        let waiting = tokio::spawn({
            let sink = sink.clone();
            async move { sink.send(Bytes::from(vec![b'a'; BIG])).await }
        });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        let next = tokio::spawn({
            let sink = sink.clone();
            async move { sink.send(Bytes::from_static(b"{\"id\":2}")).await }
        });
        let first = source.recv().await.expect("first");
        assert_eq!(
            first.len(),
            BIG,
            "the dropped sender's message arrives whole"
        );
        assert!(first.iter().all(|b| *b == b'a'));
        assert_eq!(&source.recv().await.expect("second")[..], b"{\"id\":2}");
        next.await.expect("task").expect("sent");
    }

    #[tokio::test]
    async fn try_send_never_waits_and_finishes_what_it_starts() {
        let (tx, rx) = pipe::pipe().expect("pipe");
        let open = CancellationToken::new();
        let sink = PipeSink::new(tx, open.clone());
        let mut source = PipeSource::new(rx, open, 0);
        // The first send learns that the pipe is writable.
        sink.send(Bytes::from_static(b"{\"id\":0}"))
            .await
            .expect("sent");
        sink.try_send(Bytes::from_static(b"{\"id\":1}"))
            .expect("sent at once");
        // More than the pipe holds: started now, finished by a task.
        sink.try_send(Bytes::from(vec![b'b'; BIG]))
            .expect("started");
        let busy = sink.try_send(Bytes::from_static(b"{\"id\":3}"));
        assert!(
            matches!(busy, Err(TrySendError::Busy(_))),
            "the pipe is still taken: {busy:?}"
        );
        assert_eq!(&source.recv().await.expect("first")[..], b"{\"id\":0}");
        assert_eq!(&source.recv().await.expect("second")[..], b"{\"id\":1}");
        let big = source.recv().await.expect("big");
        assert!(big.len() == BIG && big.iter().all(|b| *b == b'b'));
    }
}
