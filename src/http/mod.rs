//! The HTTP accept loop: one task per connection, with limits that keep a hostile or broken
//! client from holding resources.
//!
//! Owns connection-level policy only (header size and header read timeout, the cap on open
//! connections ([`cap`]), upgrades, graceful close, and the answers to requests that never
//! reach routing: 408 for a head that does not arrive in time, 431 for one too large for
//! hyper's buffer, both in ingot's JSON error shape); routing and everything after it
//! belong to [`crate::api`].

mod cap;
mod watched;

pub(crate) use cap::default_max_connections;

use std::os::fd::AsFd;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// A client must send its whole request head within this time, or the connection closes.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_head_bytes: usize,
    /// Most header fields in one request; more get 431.
    pub max_headers: usize,
    /// Most open connections (see [`cap`]).
    pub max_connections: usize,
    /// Paths still served on a connection over the soft cap (the probe routes).
    pub probe_paths: &'static [&'static str],
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            max_head_bytes: 64 << 10,
            max_headers: 100,
            max_connections: default_max_connections(),
            probe_paths: &[],
        }
    }
}

/// Accepts connections until `shutdown`, then lets open requests finish for up to `grace`.
/// Upgraded connections (CDP WebSockets) are not waited for here: the proxy owns them.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let connections = TaskTracker::new();
    let cap = cap::Cap::new(limits.max_connections);
    info!(
        max_connections = cap.max(),
        reserve = cap.reserve(),
        "open connections are capped"
    );
    let probes_only = cap::probes_only(router.clone(), limits.probe_paths);
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
        let (admit, slot) = cap.admit();
        let router = match admit {
            cap::Admit::Close => {
                debug!(%peer, "connection closed at once: at --max-connections");
                drop(stream);
                continue;
            }
            cap::Admit::ProbesOnly => probes_only.clone(),
            cap::Admit::Serve => router.clone(),
        };
        let accepted = Accepted {
            stream,
            peer,
            slot,
            router,
        };
        connections.spawn(serve_connection(
            &builder,
            accepted,
            shutdown.clone(),
            limits.header_read_timeout,
        ));
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

/// A connection the cap let in.
struct Accepted {
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    /// Its place under the cap.
    slot: Option<std::sync::Arc<cap::Slot>>,
    /// What serves it (every route, or only the probes).
    router: Router,
}

/// Serves one connection until it closes (or hands it over on an upgrade), finishing the
/// request in flight on `shutdown`; a head cut short by the `timeout` gets 408.
fn serve_connection(
    builder: &http1::Builder,
    accepted: Accepted,
    shutdown: CancellationToken,
    timeout: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let Accepted {
        stream,
        peer,
        slot,
        router,
    } = accepted;
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, to answer 408 after hyper gave the stream up; it keeps
    // the connection's place under the cap while it is open.
    let spare = stream.as_fd().try_clone_to_owned().ok();
    let spare_slot = slot.clone();
    let (stream, head_started) = watched::Watched::new(stream, slot);
    let service = TowerToHyperService::new(router);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    async move {
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
        drop(spare_slot);
    }
}
