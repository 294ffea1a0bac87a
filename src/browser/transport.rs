//! The gateway's two ends of one CDP connection: [`ToBrowser`], which every sender clones
//! and writes on, and [`FromBrowser`], which one reader reads.
//!
//! A local Chromium's ends are its pipe ([`super::pipe`]), written and read in place with no
//! task in between. A host may instead pass messages through channels
//! ([`ToBrowser::channel`], [`FromBrowser::channel`]), as the fake browsers of the tests do.
//! Owns neither what the messages say nor who reads them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::pipe::{PipeSink, PipeSource};

/// The connection to the browser is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection to the browser is closed")]
pub struct Closed;

/// Why [`ToBrowser::try_send`] did not send a message.
#[derive(Debug)]
pub enum TrySendError {
    /// Sending it now would mean waiting (for another sender, or for room); here it is back.
    Busy(Bytes),
    /// The connection is closed.
    Closed,
}

/// Sends whole CDP messages to a browser. Clones share the connection.
#[derive(Clone)]
pub struct ToBrowser(Arc<Sink>);

enum Sink {
    Pipe(PipeSink),
    Channel(mpsc::Sender<Bytes>),
}

impl ToBrowser {
    /// Messages go into `tx`, one per message; the connection closes with its receiver.
    pub fn channel(tx: mpsc::Sender<Bytes>) -> ToBrowser {
        ToBrowser(Arc::new(Sink::Channel(tx)))
    }

    pub(super) fn pipe(sink: PipeSink) -> ToBrowser {
        ToBrowser(Arc::new(Sink::Pipe(sink)))
    }

    /// Sends one message, waiting while the browser does not read. Messages from one sender
    /// arrive in order.
    pub async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        match &*self.0 {
            Sink::Pipe(pipe) => pipe.send(msg).await,
            Sink::Channel(tx) => tx.send(msg).await.map_err(|_| Closed),
        }
    }

    /// Sends one message if that needs no waiting, from code that cannot wait.
    pub fn try_send(&self, msg: Bytes) -> Result<(), TrySendError> {
        match &*self.0 {
            Sink::Pipe(pipe) => pipe.try_send(msg),
            Sink::Channel(tx) => tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(msg) => TrySendError::Busy(msg),
                mpsc::error::TrySendError::Closed(_) => TrySendError::Closed,
            }),
        }
    }

    /// Sends one message without waiting here: now if possible, else from a task.
    pub fn send_soon(&self, msg: Bytes) {
        if let Err(TrySendError::Busy(msg)) = self.try_send(msg) {
            let to_browser = self.clone();
            tokio::spawn(async move {
                let _ = to_browser.send(msg).await;
            });
        }
    }
}

/// Receives whole CDP messages from a browser, mutable so that routing can trim them in
/// place. Ends when the connection is lost.
pub struct FromBrowser(Source);

enum Source {
    Pipe(Box<PipeSource>),
    Channel(mpsc::Receiver<BytesMut>),
}

impl FromBrowser {
    /// Messages come out of `rx`; the connection ends when its senders are gone.
    pub fn channel(rx: mpsc::Receiver<BytesMut>) -> FromBrowser {
        FromBrowser(Source::Channel(rx))
    }

    pub(super) fn pipe(source: PipeSource) -> FromBrowser {
        FromBrowser(Source::Pipe(Box::new(source)))
    }

    /// The next message, or `None` once the connection is lost.
    pub async fn recv(&mut self) -> Option<BytesMut> {
        match &mut self.0 {
            Source::Pipe(pipe) => pipe.recv().await,
            Source::Channel(rx) => rx.recv().await,
        }
    }
}
