//! Framing of Chromium's `--remote-debugging-pipe`: whole CDP messages, each followed by a
//! NUL byte, on fd 3 (to the browser) and fd 4 (from it).
//!
//! Owns turning the two pipes into the message channels of a [`super::CdpTransport`]; it
//! knows nothing about what the messages say.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Largest message accepted from the browser; beyond it the connection counts as lost.
const MAX_PIPE_MESSAGE: usize = 512 << 20;
/// Messages shorter than this are copied next to their NUL and written in one call.
const COALESCE_BELOW: usize = 64 << 10;

/// Writes each message followed by the NUL that delimits messages on the pipe. Ends when
/// `outgoing` closes or the pipe breaks.
pub(super) async fn write_pipe(mut pipe: pipe::Sender, mut outgoing: mpsc::Receiver<Bytes>) {
    let mut scratch = Vec::with_capacity(COALESCE_BELOW + 1);
    while let Some(msg) = outgoing.recv().await {
        let written = if msg.len() < COALESCE_BELOW {
            scratch.clear();
            scratch.extend_from_slice(&msg);
            scratch.push(0);
            pipe.write_all(&scratch).await
        } else {
            match pipe.write_all(&msg).await {
                Ok(()) => pipe.write_all(&[0]).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = written {
            debug!(error = %e, "CDP pipe to the browser closed");
            return;
        }
    }
}

/// Splits the browser's output on NUL into messages. Ends (closing `incoming`) on EOF, on a
/// read error, or on a message over [`MAX_PIPE_MESSAGE`].
pub(super) async fn read_pipe(
    mut pipe: pipe::Receiver,
    incoming: mpsc::Sender<BytesMut>,
    pid: i32,
) {
    let mut buf = BytesMut::with_capacity(256 << 10);
    let mut scanned = 0;
    loop {
        while let Some(pos) = memchr::memchr(0, &buf[scanned..]) {
            let end = scanned + pos;
            let msg = buf.split_to(end);
            let _ = buf.split_to(1);
            scanned = 0;
            if incoming.send(msg).await.is_err() {
                return;
            }
        }
        scanned = buf.len();
        if buf.len() > MAX_PIPE_MESSAGE {
            warn!(
                pid,
                "browser sent a message over {} MiB; dropping the connection",
                MAX_PIPE_MESSAGE >> 20
            );
            return;
        }
        if buf.capacity() - buf.len() < (64 << 10) {
            buf.reserve((buf.len()).max(256 << 10));
        }
        match pipe.read_buf(&mut buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                debug!(pid, error = %e, "CDP pipe from the browser failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_on_nul_and_writes_with_nul() {
        let (tx, rx) = pipe::pipe().expect("pipe");
        let (to_pipe, outgoing) = mpsc::channel(4);
        let (incoming, mut from_pipe) = mpsc::channel(4);
        tokio::spawn(write_pipe(tx, outgoing));
        tokio::spawn(read_pipe(rx, incoming, 0));
        let big = Bytes::from(vec![b'x'; COALESCE_BELOW + 10]);
        for msg in [Bytes::from_static(b"{\"id\":1}"), big.clone(), Bytes::new()] {
            to_pipe.send(msg).await.expect("send");
        }
        assert_eq!(&from_pipe.recv().await.expect("first")[..], b"{\"id\":1}");
        assert_eq!(from_pipe.recv().await.expect("big").len(), big.len());
        assert!(from_pipe.recv().await.expect("empty").is_empty());
        drop(to_pipe);
        assert!(from_pipe.recv().await.is_none(), "EOF ends the stream");
    }
}
