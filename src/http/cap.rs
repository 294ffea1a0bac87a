//! The cap on open connections, so that a flood of them cannot take every file descriptor.
//!
//! Below `max - reserve` open connections, a new one is served as usual. From there up to
//! `max`, a new connection is served only on the probe routes (`/healthz`, `/readyz`,
//! `/metrics`); any other request on it gets a fast 503 `too_many_connections` with
//! `Retry-After`, and the connection closes. At `max`, a new connection is accepted and
//! closed at once. Connections already open, upgraded WebSockets included, are never
//! touched: each holds its place ([`Slot`]) until it closes.
//!
//! Owns the count and the busy answer; it knows no route but the probe paths it is given.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::telemetry;

/// Descriptors kept out of the derived cap, for the usage database, browsers' pipes, logs.
const FD_HEADROOM: u64 = 256;
/// Lowest derived cap.
const MIN_DERIVED: u64 = 64;
/// Highest derived cap (an unlimited descriptor limit derives this).
const MAX_DERIVED: u64 = 1_000_000;

/// The cap when none is configured: (the soft open-files limit - 256) / 2, since each
/// connection may hold two descriptors; at least 64.
pub(crate) fn default_max_connections() -> usize {
    let soft = open_files_limit().unwrap_or(1024);
    let derived = (soft.saturating_sub(FD_HEADROOM) / 2).clamp(MIN_DERIVED, MAX_DERIVED);
    usize::try_from(derived).unwrap_or(usize::MAX)
}

/// Connections kept for the probe routes under a cap of `max`: 1/16 of it, 8 to 32 (at most
/// half the cap).
pub(super) fn reserve_for(max: usize) -> usize {
    (max / 16).clamp(8, 32).min(max / 2)
}

/// This process's soft `RLIMIT_NOFILE`.
#[allow(unsafe_code)]
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes one `rlimit` into the struct it is given, which lives on
    // this stack for the whole call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

/// What the accept loop does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Serve it.
    Serve,
    /// Serve only the probe routes on it.
    ProbesOnly,
    /// Close it at once.
    Close,
}

/// The open connections, against the cap.
#[derive(Debug)]
pub(super) struct Cap {
    open: Arc<AtomicUsize>,
    max: usize,
    reserve: usize,
}

impl Cap {
    pub(super) fn new(max: usize) -> Cap {
        telemetry::http_connections_max(max);
        Cap {
            open: Arc::default(),
            max,
            reserve: reserve_for(max),
        }
    }

    pub(super) fn max(&self) -> usize {
        self.max
    }

    pub(super) fn reserve(&self) -> usize {
        self.reserve
    }

    /// Decides about a connection just accepted; unless it is to be closed, it holds a
    /// place until every clone of its [`Slot`] is dropped.
    pub(super) fn admit(&self) -> (Admit, Option<Arc<Slot>>) {
        let open = self.open.load(Ordering::Acquire);
        if open >= self.max {
            telemetry::http_connection_refused("closed");
            return (Admit::Close, None);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        telemetry::http_connection_opened();
        let slot = Arc::new(Slot(self.open.clone()));
        if open >= self.max - self.reserve {
            telemetry::http_connection_refused("probes_only");
            return (Admit::ProbesOnly, Some(slot));
        }
        (Admit::Serve, Some(slot))
    }
}

/// One open connection's place under the cap.
#[derive(Debug)]
pub(super) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        telemetry::http_connection_closed();
    }
}

/// `router` for a connection over the soft cap: the probe routes as usual, anything else
/// 503 `too_many_connections`.
pub(super) fn probes_only(router: Router, probes: &'static [&'static str]) -> Router {
    router.layer(axum::middleware::from_fn_with_state(probes, only_probes))
}

async fn only_probes(
    State(probes): State<&'static [&'static str]>,
    request: Request,
    next: Next,
) -> Response {
    if probes.contains(&request.uri().path()) {
        // The probe is answered, and the connection closes with it: a connection over the
        // soft cap never stays open to hold a place in the reserve.
        let mut response = next.run(request).await;
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    busy()
}

/// The answer to a request on a connection over the soft cap; the connection then closes.
fn busy() -> Response {
    let message = "the gateway has too many open connections (--max-connections); retry shortly";
    let body = serde_json::json!({
        "message": message,
        "error": {"code": "too_many_connections", "message": message},
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_serves_then_keeps_the_reserve_for_probes_then_closes() {
        let cap = Cap::new(40);
        assert_eq!(cap.reserve(), 8);
        let mut held = Vec::new();
        for _ in 0..32 {
            let (admit, slot) = cap.admit();
            assert_eq!(admit, Admit::Serve);
            held.push(slot);
        }
        for _ in 32..40 {
            let (admit, slot) = cap.admit();
            assert_eq!(admit, Admit::ProbesOnly);
            held.push(slot);
        }
        let (admit, slot) = cap.admit();
        assert_eq!(admit, Admit::Close);
        assert!(slot.is_none(), "a closed connection holds no place");
        held.truncate(10);
        assert_eq!(cap.admit().0, Admit::Serve, "places come back on close");
    }

    #[test]
    fn reserves_and_derived_defaults_are_bounded() {
        assert_eq!(reserve_for(16), 8);
        assert_eq!(reserve_for(64), 8);
        assert_eq!(reserve_for(384), 24);
        assert_eq!(reserve_for(100_000), 32);
        assert!(default_max_connections() >= 64);
    }
}
