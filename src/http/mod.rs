//! The HTTP accept loop: one task per connection, with limits that keep a hostile or broken
//! client from holding resources.
//!
//! Owns connection-level policy only (header size and header read timeout, upgrades,
//! graceful close, and the answers to requests that never reach routing: 408 for a head
//! that does not arrive in time, 431 for one too large for hyper's buffer, both in ingot's
//! JSON error shape); routing and everything after it belong to [`crate::api`].

mod watched;

use std::os::fd::AsFd;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A client must send its whole request head within this time, or the connection closes.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_head_bytes: usize,
    /// Most header fields in one request; more get 431.
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 64 << 10,
            max_headers: 100,
        }
    }
}

/// Accepts connections until `shutdown`, then lets open requests finish for up to `grace`.
/// Upgraded connections (CDP WebSockets) are not waited for here: the proxy owns them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes)
        .max_headers(limits.max_headers);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // A second handle on the socket, to answer 408 after hyper gave the stream up.
        let spare = stream.as_fd().try_clone_to_owned().ok();
        let (stream, head_started) = watched::Watched::new(stream);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        let timeout = limits.header_read_timeout;
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, then close; idle connections close now.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "HTTP connection ended with an error");
                // An idle keep-alive connection just closes; a head cut short gets 408.
                if e.is_timeout() && head_started.is_started() {
                    watched::answer_timeout(spare, timeout).await;
                }
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!("HTTP connections still open {grace:?} after shutdown; closing anyway");
    }
}
