//! Prometheus metrics: every metric's name, help text, unit and buckets, and the recorder.
//!
//! Other modules report events through the functions here and never name a metric
//! themselves, so the exported set is visible in one place. No label carries a session id
//! or any other unbounded value. Without an installed recorder (unit tests) every call is a
//! no-op. It imports only the shared vocabulary and the lock helper; it must not change
//! anything it observes.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::vocab::{CreateFailure, EndReason, RecordReason, Rejection};

pub(crate) const SESSIONS_LIVE: &str = "ingot_sessions_live";
pub(crate) const SESSIONS_MAX: &str = "ingot_sessions_max";
pub(crate) const SESSIONS_CREATED: &str = "ingot_sessions_created_total";
pub(crate) const SESSIONS_ENDED: &str = "ingot_sessions_ended_total";
pub(crate) const CREATE_ERRORS: &str = "ingot_session_create_errors_total";
pub(crate) const BILLED_MINUTES: &str = "ingot_billed_minutes_total";
pub(crate) const SESSION_DURATION: &str = "ingot_session_duration_seconds";
pub(crate) const BROWSER_LAUNCH: &str = "ingot_browser_launch_seconds";
pub(crate) const CREATE_TO_READY: &str = "ingot_session_create_to_ready_seconds";
pub(crate) const CDP_MESSAGES: &str = "ingot_cdp_messages_total";
pub(crate) const CDP_BYTES: &str = "ingot_cdp_bytes_total";
pub(crate) const CLIENT_CONNECTIONS: &str = "ingot_client_connections";
pub(crate) const CHROMIUM_MEMORY: &str = "ingot_chromium_resident_memory_bytes";
pub(crate) const CHROMIUM_PROCESSES: &str = "ingot_chromium_processes";
pub(crate) const USAGE_WRITE_ERRORS: &str = "ingot_usage_write_errors_total";
pub(crate) const BUILD_INFO: &str = "ingot_build_info";
pub(crate) const POOL_BROWSERS: &str = "ingot_pool_browsers";
pub(crate) const POOL_SIZE: &str = "ingot_pool_size";
pub(crate) const POOL_HANDOUTS: &str = "ingot_pool_handouts_total";
pub(crate) const QUEUE_LENGTH: &str = "ingot_admission_queue_length";
pub(crate) const QUEUE_WAIT: &str = "ingot_admission_wait_seconds";
pub(crate) const REJECTIONS: &str = "ingot_admission_rejections_total";
pub(crate) const SESSIONS_LOST_WITH_NODE: &str = "ingot_sessions_lost_with_node_total";
pub(crate) const LEASE_RENEWALS: &str = "ingot_cluster_lease_renewals_total";
pub(crate) const CLUSTER_NODES: &str = "ingot_cluster_nodes";
pub(crate) const FORWARDED: &str = "ingot_cluster_forwarded_total";
pub(crate) const DIRECTORY_QUERY: &str = "ingot_cluster_directory_query_seconds";
pub(crate) const DATABASE_CALL: &str = "ingot_database_call_seconds";
pub(crate) const DATABASE_TIMEOUTS: &str = "ingot_database_timeouts_total";
pub(crate) const CLUSTER_FENCED: &str = "ingot_cluster_fenced";
pub(crate) const CLUSTER_FENCED_SECONDS: &str = "ingot_cluster_fenced_seconds";

/// The kinds of database calls (`metering::postgres::DbCall`), each with its own deadline.
pub(crate) const DATABASE_CALL_KINDS: [&str; 5] =
    ["lease", "membership", "write", "read", "migrate"];
pub(crate) const SESSION_FILES_BYTES: &str = "ingot_session_files_bytes";
pub(crate) const HTTP_CONNECTIONS: &str = "ingot_http_connections";
pub(crate) const HTTP_CONNECTIONS_MAX: &str = "ingot_http_connections_max";
pub(crate) const HTTP_CONNECTIONS_REFUSED: &str = "ingot_http_connections_refused_total";

/// Declares [`ForwardKind`] and its label values together, so that every kind is
/// registered at zero and no label value exists without a kind.
macro_rules! forward_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident => $label:literal,)*) => {
        /// What a node passes to another node of the cluster (the `kind` label of
        /// [`FORWARDED`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum ForwardKind {
            $($(#[doc = $doc])* $kind,)*
        }

        impl ForwardKind {
            /// Every kind, in declaration order.
            pub(crate) const ALL: &'static [ForwardKind] = &[$(ForwardKind::$kind,)*];

            /// The metric's label value.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(ForwardKind::$kind => $label,)*
                }
            }
        }
    };
}

forward_kinds! {
    /// A create placed on a node with room.
    Create => "create",
    /// `GET /v1/sessions/{id}`.
    Retrieve => "retrieve",
    /// `POST /v1/sessions/{id}/release`.
    Release => "release",
    /// `POST /v1/sessions/{id}/timeout`.
    Timeout => "timeout",
    /// `GET /v1/sessions/{id}/live-details`.
    LiveDetails => "live_details",
    /// `GET /v1/sessions/{id}/context`.
    Context => "context",
    /// A release-all fanned out to every other node.
    ReleaseAll => "release_all",
    /// CDP discovery (`/json/version`).
    Version => "version",
    /// A WebSocket upgrade (CDP or the viewer's socket).
    Upgrade => "upgrade",
    /// The session files API.
    Files => "files",
    /// `POST /v1/sessions/{id}/computer`.
    Computer => "computer",
    /// The live viewer's pages, facts and thumbnail.
    Viewer => "viewer",
}

/// The process-wide recorder, installed by the first gateway of the process. The lock makes
/// checking and installing one step, so gateways built at the same moment share it.
static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder (once: later gateways in the same process,
/// such as in-process tests, share it) and registers every metric at zero, histograms
/// included, so that dashboards and `rate()` see each series from the first scrape.
pub(crate) fn install(max_sessions: usize, pool_size: usize) -> anyhow::Result<PrometheusHandle> {
    let handle = {
        let mut installed = crate::sync::lock(&HANDLE);
        match &*installed {
            Some(handle) => handle.clone(),
            None => installed.insert(build_recorder()?).clone(),
        }
    };
    register_at_zero(max_sessions, pool_size);
    Ok(handle)
}

fn build_recorder() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(SESSION_DURATION.into()),
            &[
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
                86400.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(BROWSER_LAUNCH.into()),
            &[
                0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(QUEUE_WAIT.into()),
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(CREATE_TO_READY.into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0,
                10.0, 30.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(DATABASE_CALL.into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(DIRECTORY_QUERY.into()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ],
        )?
        .install_recorder()?)
}

fn register_at_zero(max_sessions: usize, pool_size: usize) {
    describe();
    gauge!(SESSIONS_MAX).set(max_sessions as f64);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(SESSIONS_LIVE).set(0.0);
    gauge!(CLIENT_CONNECTIONS).set(0.0);
    gauge!(CHROMIUM_MEMORY).set(0.0);
    gauge!(CHROMIUM_PROCESSES).set(0.0);
    gauge!(POOL_SIZE).set(pool_size as f64);
    gauge!(POOL_BROWSERS).set(0.0);
    gauge!(QUEUE_LENGTH).set(0.0);
    counter!(POOL_HANDOUTS).absolute(0);
    for r in Rejection::ALL {
        counter!(REJECTIONS, "reason" => r.as_str()).absolute(0);
    }
    counter!(SESSIONS_CREATED).absolute(0);
    counter!(SESSIONS_LOST_WITH_NODE).absolute(0);
    for outcome in ["ok", "failed"] {
        counter!(LEASE_RENEWALS, "outcome" => outcome).absolute(0);
    }
    gauge!(CLUSTER_NODES).set(0.0);
    gauge!(CLUSTER_FENCED).set(0.0);
    gauge!(CLUSTER_FENCED_SECONDS).set(0.0);
    for kind in DATABASE_CALL_KINDS {
        counter!(DATABASE_TIMEOUTS, "kind" => kind).absolute(0);
        let _ = histogram!(DATABASE_CALL, "kind" => kind);
    }
    gauge!(SESSION_FILES_BYTES).set(0.0);
    gauge!(HTTP_CONNECTIONS).set(0.0);
    for how in ["probes_only", "closed"] {
        counter!(HTTP_CONNECTIONS_REFUSED, "how" => how).absolute(0);
    }
    for kind in ForwardKind::ALL {
        for outcome in ["ok", "error"] {
            counter!(FORWARDED, "kind" => kind.as_str(), "outcome" => outcome).absolute(0);
        }
    }
    counter!(BILLED_MINUTES).absolute(0);
    counter!(USAGE_WRITE_ERRORS).absolute(0);
    for reason in EndReason::ALL {
        ended_counter(reason.status().as_str(), reason.as_str()).absolute(0);
    }
    abandoned_counter().absolute(0);
    for reason in CreateFailure::ALL {
        counter!(CREATE_ERRORS, "reason" => reason.as_str()).absolute(0);
    }
    // A registered histogram is exported with zero counts until its first sample.
    for name in [
        SESSION_DURATION,
        BROWSER_LAUNCH,
        CREATE_TO_READY,
        QUEUE_WAIT,
        DIRECTORY_QUERY,
    ] {
        let _ = histogram!(name);
    }
    LazyLock::force(&CDP);
}

fn describe() {
    describe_gauge!(SESSIONS_LIVE, "Sessions live now (browser running).");
    describe_gauge!(
        SESSIONS_MAX,
        "Most sessions that may be live at once (--max-sessions)."
    );
    describe_counter!(SESSIONS_CREATED, "Sessions created (went live).");
    describe_counter!(
        SESSIONS_ENDED,
        "Sessions ended, by final status and reason."
    );
    describe_counter!(
        CREATE_ERRORS,
        "Create requests that got no session, by reason."
    );
    describe_counter!(
        BILLED_MINUTES,
        "Billed session minutes, counted as each minute of a session starts."
    );
    describe_histogram!(SESSION_DURATION, Unit::Seconds, "Life of ended sessions.");
    describe_histogram!(
        BROWSER_LAUNCH,
        Unit::Seconds,
        "Time from starting Chromium to its first CDP answer."
    );
    describe_histogram!(
        CREATE_TO_READY,
        Unit::Seconds,
        "Time from a create request to a live session."
    );
    describe_counter!(
        CDP_MESSAGES,
        "CDP messages proxied, by direction (to_browser: from clients; to_client)."
    );
    describe_counter!(
        CDP_BYTES,
        Unit::Bytes,
        "CDP message bytes proxied, by direction."
    );
    describe_gauge!(CLIENT_CONNECTIONS, "CDP WebSocket clients attached now.");
    describe_gauge!(
        CHROMIUM_MEMORY,
        Unit::Bytes,
        "Resident memory summed over every session's Chromium processes (shared pages count once per process)."
    );
    describe_gauge!(CHROMIUM_PROCESSES, "Chromium processes of all sessions.");
    describe_counter!(USAGE_WRITE_ERRORS, "Failed writes to the usage database.");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which ingot runs."
    );
    describe_limits();
    describe_cluster();
    describe_admission();
}

/// Help texts of the warm pool's and the admission queue's metrics.
fn describe_admission() {
    describe_gauge!(
        POOL_BROWSERS,
        "Pre-launched browsers ready in the pool now."
    );
    describe_gauge!(POOL_SIZE, "Browsers the pool keeps ready (--pool-size).");
    describe_counter!(
        POOL_HANDOUTS,
        "Sessions that got a pooled browser (the rest of the created sessions were cold launches)."
    );
    describe_gauge!(QUEUE_LENGTH, "Create requests waiting for a slot now.");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "How long create requests that had to wait for a slot waited."
    );
    describe_counter!(
        REJECTIONS,
        "Create requests refused with 429, by reason (queue_full, queue_timeout)."
    );
}

/// Help texts of the cluster's metrics: nodes, leases, the fence, the shared database.
fn describe_cluster() {
    describe_counter!(
        SESSIONS_LOST_WITH_NODE,
        "Live sessions of dead nodes (lease ran out) this node marked failed."
    );
    describe_counter!(
        LEASE_RENEWALS,
        "Renewals of this node's lease in the shared database, by outcome."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Nodes with a live lease this node sees, itself included (0 on a single node)."
    );
    describe_counter!(
        FORWARDED,
        "Requests and WebSocket upgrades passed to another node, by kind and outcome."
    );
    describe_histogram!(
        DATABASE_CALL,
        Unit::Seconds,
        "Latency of calls to the shared database, by kind (lease, membership, write, read, migrate), deadline overruns included."
    );
    describe_counter!(
        DATABASE_TIMEOUTS,
        "Calls to the shared database abandoned at their deadline, by kind."
    );
    describe_gauge!(
        CLUSTER_FENCED,
        "1 while this node is fenced (it could not renew its lease in time: its browsers are frozen and it takes no new connection), else 0."
    );
    describe_gauge!(
        CLUSTER_FENCED_SECONDS,
        Unit::Seconds,
        "Time this node has spent fenced since it started (only ever grows)."
    );
    describe_histogram!(
        DIRECTORY_QUERY,
        Unit::Seconds,
        "Latency of lookups in the cluster's shared database (session owners, the node list)."
    );
}

/// Help texts of the gauges and counters of what sessions and connections take.
fn describe_limits() {
    describe_gauge!(
        SESSION_FILES_BYTES,
        Unit::Bytes,
        "Bytes the sessions' files (uploads and downloads) take on this node, live and retained."
    );
    describe_gauge!(
        HTTP_CONNECTIONS,
        "Open connections to the gateway (HTTP and upgraded WebSockets)."
    );
    describe_gauge!(
        HTTP_CONNECTIONS_MAX,
        "Most open connections (--max-connections)."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections over the cap, by how they were handled: probes_only (only /healthz, /readyz and /metrics served, others 503) or closed (closed at once)."
    );
}

fn ended_counter(status: &'static str, reason: &'static str) -> Counter {
    counter!(SESSIONS_ENDED, "status" => status, "reason" => reason)
}

/// The ended counter of the sessions a killed predecessor left live.
fn abandoned_counter() -> Counter {
    let reason = RecordReason::GatewayRestart;
    ended_counter(reason.status().as_str(), reason.as_str())
}

/// Handles of the per-message counters, resolved once: they are hit for every CDP message.
struct CdpCounters {
    messages_to_browser: Counter,
    bytes_to_browser: Counter,
    messages_to_client: Counter,
    bytes_to_client: Counter,
}

static CDP: LazyLock<CdpCounters> = LazyLock::new(|| CdpCounters {
    messages_to_browser: counter!(CDP_MESSAGES, "direction" => "to_browser"),
    bytes_to_browser: counter!(CDP_BYTES, "direction" => "to_browser"),
    messages_to_client: counter!(CDP_MESSAGES, "direction" => "to_client"),
    bytes_to_client: counter!(CDP_BYTES, "direction" => "to_client"),
});

static CLIENTS: LazyLock<Gauge> = LazyLock::new(|| gauge!(CLIENT_CONNECTIONS));

pub(crate) fn cdp_to_browser(bytes: usize) {
    CDP.messages_to_browser.increment(1);
    CDP.bytes_to_browser.increment(bytes as u64);
}

pub(crate) fn cdp_to_client(bytes: usize) {
    CDP.messages_to_client.increment(1);
    CDP.bytes_to_client.increment(bytes as u64);
}

/// A session went live.
pub(crate) fn session_created(create_to_ready: Duration) {
    counter!(SESSIONS_CREATED).increment(1);
    histogram!(CREATE_TO_READY).record(create_to_ready.as_secs_f64());
}

/// A browser launch finished (for a session, the pool or a probe; failed or not).
pub(crate) fn browser_launched(launch: Duration) {
    histogram!(BROWSER_LAUNCH).record(launch.as_secs_f64());
}

/// Sessions of dead nodes this node marked failed.
pub(crate) fn sessions_lost_with_node(n: u64) {
    counter!(SESSIONS_LOST_WITH_NODE).increment(n);
}

/// Live nodes this node sees, itself included.
pub(crate) fn cluster_nodes(n: usize) {
    gauge!(CLUSTER_NODES).set(n as f64);
}

/// A request or WebSocket upgrade passed to another node; `ok` unless that node could
/// not be reached.
pub(crate) fn forwarded(kind: ForwardKind, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!(FORWARDED, "kind" => kind.as_str(), "outcome" => outcome).increment(1);
}

/// Bytes the sessions' files take on this node.
pub(crate) fn session_files_bytes(n: u64) {
    gauge!(SESSION_FILES_BYTES).set(n as f64);
}

/// How long a lookup in the cluster's shared database took.
pub(crate) fn directory_query(took: Duration) {
    histogram!(DIRECTORY_QUERY).record(took.as_secs_f64());
}

/// A call to the shared database of `kind` took `took`.
pub(crate) fn database_call(kind: &'static str, took: Duration) {
    histogram!(DATABASE_CALL, "kind" => kind).record(took.as_secs_f64());
}

/// A call to the shared database of `kind` was abandoned at its deadline.
pub(crate) fn database_timeout(kind: &'static str) {
    counter!(DATABASE_TIMEOUTS, "kind" => kind).increment(1);
}

/// This node fenced itself (`true`) or serves again (`false`).
pub(crate) fn cluster_fenced(fenced: bool) {
    gauge!(CLUSTER_FENCED).set(if fenced { 1.0 } else { 0.0 });
}

/// This node spent `took` fenced.
pub(crate) fn cluster_fenced_for(took: Duration) {
    gauge!(CLUSTER_FENCED_SECONDS).increment(took.as_secs_f64());
}

/// A lease renewal, by outcome.
pub(crate) fn lease_renewed(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!(LEASE_RENEWALS, "outcome" => outcome).increment(1);
}

/// A create request got no session.
pub(crate) fn create_failed(reason: CreateFailure) {
    counter!(CREATE_ERRORS, "reason" => reason.as_str()).increment(1);
}

pub(crate) fn session_ended(reason: EndReason, duration: Duration) {
    ended_counter(reason.status().as_str(), reason.as_str()).increment(1);
    histogram!(SESSION_DURATION).record(duration.as_secs_f64());
}

/// Sessions a killed predecessor left live, closed at start-up.
pub(crate) fn sessions_abandoned(n: u64) {
    abandoned_counter().increment(n);
}

pub(crate) fn sessions_live(n: usize) {
    gauge!(SESSIONS_LIVE).set(n as f64);
}

pub(crate) fn billed_minutes(n: u64) {
    counter!(BILLED_MINUTES).increment(n);
}

pub(crate) fn pool_handout() {
    counter!(POOL_HANDOUTS).increment(1);
}

pub(crate) fn pool_ready(n: usize) {
    gauge!(POOL_BROWSERS).set(n as f64);
}

pub(crate) fn admission_queue(n: usize) {
    gauge!(QUEUE_LENGTH).set(n as f64);
}

pub(crate) fn admission_waited(waited: Duration) {
    histogram!(QUEUE_WAIT).record(waited.as_secs_f64());
}

pub(crate) fn admission_rejected(r: Rejection) {
    counter!(REJECTIONS, "reason" => r.as_str()).increment(1);
}

pub(crate) fn usage_write_error() {
    counter!(USAGE_WRITE_ERRORS).increment(1);
}

/// Counts a connection to the gateway as it opens.
pub(crate) fn http_connection_opened() {
    gauge!(HTTP_CONNECTIONS).increment(1.0);
}

/// Counts a connection to the gateway as it closes.
pub(crate) fn http_connection_closed() {
    gauge!(HTTP_CONNECTIONS).decrement(1.0);
}

/// Counts a connection over the cap, by how it was handled.
pub(crate) fn http_connection_refused(how: &'static str) {
    counter!(HTTP_CONNECTIONS_REFUSED, "how" => how).increment(1);
}

/// Sets the connection cap's gauge.
pub(crate) fn http_connections_max(max: usize) {
    gauge!(HTTP_CONNECTIONS_MAX).set(max as f64);
}

/// Counts an attached client for as long as it is held.
pub(crate) struct ClientConnection(());

impl ClientConnection {
    pub(crate) fn open() -> ClientConnection {
        CLIENTS.increment(1.0);
        ClientConnection(())
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        CLIENTS.decrement(1.0);
    }
}

/// The collector of the gateway's own process metrics (`ingot_process_*`), described.
pub(crate) fn process_collector() -> metrics_process::Collector {
    let collector = metrics_process::Collector::new("ingot_");
    collector.describe();
    collector
}

/// Sets the gauges of the browsers' memory, as the host measured it.
pub(crate) fn chromium_memory(processes: usize, resident_bytes: u64) {
    gauge!(CHROMIUM_MEMORY).set(resident_bytes as f64);
    gauge!(CHROMIUM_PROCESSES).set(processes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_forward_kind_is_one_label_value() {
        let labels: std::collections::HashSet<&str> =
            ForwardKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels.len(),
            ForwardKind::ALL.len(),
            "no two kinds share a label"
        );
        for label in labels {
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
        assert_eq!(ForwardKind::Upgrade.as_str(), "upgrade");
    }
}
