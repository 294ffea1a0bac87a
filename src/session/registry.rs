//! The front door of the session layer: create, look up, list, release, probe, shut down.
//!
//! Owns the wiring of admission, the directory, the warm pool and the browser host, the
//! count of live sessions, readiness, and the tasks of every session (so that shutdown waits
//! for them). It asks the state machine for every transition and leaves tearing a session
//! down to that session's supervisor.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

use super::Session;
use super::admission::{Admission, Admitter};
use super::directory::{Directory, ListError, ListPage, ListQuery};
use super::handle::NotExtended;
use super::pool::{LaunchHealth, WarmPool};
use super::supervisor::LivenessProbe;
use super::view::SessionView;
use crate::auth::Caller;
use crate::browser::{BrowserHost, LaunchError, LaunchSpec};
use crate::files::FileStore;
use crate::metering::{Billable, HistoryQuery, HistoryRow, Meter, MeterError, Retention};
use crate::telemetry;
use crate::vocab::{EndReason, RecordStatus};

/// How long a release waits for the browser to be gone before answering anyway.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// Which ended sessions stay listed: those created within `keep_for`, and in any case each
/// tenant's newest `keep_newest`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    /// How long an ended session stays listed.
    pub keep_for: Duration,
    /// Each tenant's newest sessions stay listed however old they are.
    pub keep_newest: u64,
}

impl HistoryLimits {
    /// What is shown at `now_ms` (Unix milliseconds).
    fn at(&self, now_ms: i128) -> Retention {
        let keep_ms = i128::try_from(self.keep_for.as_millis()).unwrap_or(i128::MAX);
        Retention {
            since_ms: i64::try_from(now_ms.saturating_sub(keep_ms)).unwrap_or(i64::MIN),
            newest: self.keep_newest.max(1),
        }
    }
}

/// Whether the gateway should be sent new sessions (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// A create would start now.
    Ready,
    /// Every slot is taken and no pooled browser waits.
    AtCapacity,
    /// New sessions are refused.
    ShuttingDown,
    /// The latest browser launch failed, with its error.
    ChromiumUnavailable(String),
}

/// The session registry.
pub(crate) struct Registry {
    pub(super) directory: Directory,
    pub(super) admitter: Admitter,
    pool: Arc<WarmPool>,
    /// Sessions that went live and have not ended yet.
    pub(super) live: AtomicUsize,
    pub(super) host: Arc<dyn BrowserHost>,
    pub(super) meter: Arc<Meter>,
    /// The outcome of the latest browser launch.
    launch_health: Arc<LaunchHealth>,
    /// Every session's tasks (create pipelines, supervisors, the pool's launches).
    pub(super) tasks: TaskTracker,
    /// Cancelled when new sessions are refused (draining or shutting down).
    closed: CancellationToken,
    /// Cancelled when every live session must end.
    pub(super) shutdown: CancellationToken,
    /// How each live browser is checked for hangs.
    pub(super) probe: LivenessProbe,
    history: HistoryLimits,
    /// Every session's files on this node.
    files: Arc<FileStore>,
    /// The caps on each session's CDP traffic, once the gateway set them (else defaults).
    cdp_limits: std::sync::OnceLock<crate::cdp::guard::Limits>,
}

impl Registry {
    /// A registry; its warm pool starts filling when [`Registry::start_pool`] is called.
    pub(crate) fn new(
        host: Arc<dyn BrowserHost>,
        meter: Arc<Meter>,
        admission: Admission,
        probe: LivenessProbe,
        history: HistoryLimits,
        files: Arc<FileStore>,
    ) -> Arc<Registry> {
        let capacity = Arc::new(Semaphore::new(admission.max_sessions));
        let tasks = TaskTracker::new();
        let closed = CancellationToken::new();
        let launch_health = Arc::new(LaunchHealth::default());
        let pool = WarmPool::new(
            (admission.pool_size, admission.pool_settle),
            host.clone(),
            capacity.clone(),
            tasks.clone(),
            launch_health.clone(),
            files.clone(),
        );
        Arc::new(Registry {
            directory: Directory::default(),
            admitter: Admitter::new(admission, capacity, pool.clone(), closed.clone()),
            pool,
            live: AtomicUsize::new(0),
            host,
            meter,
            launch_health,
            tasks,
            closed,
            shutdown: CancellationToken::new(),
            probe,
            history,
            files,
            cdp_limits: std::sync::OnceLock::new(),
        })
    }

    /// Sets the caps on each session's CDP traffic, for sessions started from now on. Once.
    pub(crate) fn set_cdp_limits(&self, limits: crate::cdp::guard::Limits) {
        let _ = self.cdp_limits.set(limits);
    }

    /// The caps on each session's CDP traffic.
    pub(super) fn cdp_limits(&self) -> crate::cdp::guard::Limits {
        self.cdp_limits.get().copied().unwrap_or_default()
    }

    /// Every session's files on this node.
    pub(crate) fn files(&self) -> &Arc<FileStore> {
        &self.files
    }

    /// Whether session `id` is starting or live on this node.
    pub(crate) fn runs_here(&self, id: &Uuid) -> bool {
        self.directory.runs(id)
    }

    /// Whether new sessions are refused.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Remembers how the latest launch went, for readiness.
    pub(super) fn note_launch(&self, failure: Option<String>) {
        self.launch_health.note(failure);
    }

    /// Launches a browser and kills it again, to learn whether browsers can start. Returns
    /// the launch time, or the launch error; readiness follows the outcome.
    pub(crate) async fn probe_browser(&self) -> Result<Duration, LaunchError> {
        let started = Instant::now();
        let spec = LaunchSpec::plain(Uuid::new_v4());
        let result = self.host.launch(spec).await;
        let elapsed = started.elapsed();
        self.note_launch(result.as_ref().err().map(ToString::to_string));
        match result {
            Ok(launched) => {
                launched.process.kill().await;
                telemetry::browser_launched(elapsed);
                Ok(elapsed)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts keeping the warm pool filled.
    pub(crate) fn start_pool(&self) {
        self.pool.start();
    }

    /// Whether new sessions can be served now.
    pub(crate) fn readiness(&self) -> Readiness {
        if self.is_closed() {
            Readiness::ShuttingDown
        } else if let Some(error) = self.launch_health.failure() {
            Readiness::ChromiumUnavailable(error)
        } else if !self.admitter.has_room() {
            Readiness::AtCapacity
        } else {
            Readiness::Ready
        }
    }

    /// Whether a create would start here now without waiting: this node takes sessions
    /// and has a free slot or a pooled browser.
    pub(crate) fn takes_sessions_now(&self) -> bool {
        self.readiness() == Readiness::Ready
    }

    /// What this node tells the other nodes of a cluster: how many creates it could start
    /// now, and whether it takes sessions at all (not draining, browsers start).
    pub(crate) fn offer(&self) -> (usize, bool) {
        let ready = matches!(self.readiness(), Readiness::Ready | Readiness::AtCapacity);
        (if ready { self.admitter.room() } else { 0 }, ready)
    }

    /// Records that a session ended: its final usage record, metrics, and history.
    pub(super) async fn note_ended(&self, session: &Arc<Session>, reason: EndReason) {
        // The proxy's byte count changes while the session lives: the record gets it once,
        // before it is closed.
        if session.proxy_bytes_used() > 0
            && let Err(e) = self.meter.details_changed(session.as_ref()).await
        {
            warn!(session_id = %session.id, error = %e, "cannot record the bytes its proxy carried");
        }
        self.meter.finish(session.as_ref(), reason).await;
        let live = self.live.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        telemetry::sessions_live(live);
        telemetry::session_ended(reason, session.duration());
        self.directory.note_ended(session.id);
        self.files.session_ended(session.id).await;
    }

    /// A session `caller` may see; another tenant's is `None`, like an unknown id.
    pub(crate) fn get_for(&self, id: &Uuid, caller: &Caller) -> Option<Arc<Session>> {
        self.directory.get_for(id, caller)
    }

    /// A session `caller` may see, live here or known from its record (it ended before a
    /// restart, say); `None` like an unknown id otherwise.
    pub(crate) async fn retrieve(
        &self,
        id: &Uuid,
        caller: &Caller,
    ) -> Result<Option<SessionView>, MeterError> {
        let here = self.get_for(id, caller);
        if let Some(session) = here.as_ref().filter(|s| s.phase().is_live()) {
            return Ok(Some(SessionView::of(session)));
        }
        // An ended session is what its record says, once written (in a cluster, another
        // node may have failed it while this one was cut off).
        let row = self
            .meter
            .history_get(
                *id,
                caller.tenant_name().map(|t| t.to_string()),
                self.retention(),
            )
            .await?;
        Ok(match (row, here) {
            // Another record than this session's, or its final record not written yet.
            (Some(row), Some(session))
                if session.usage().record_id() != Some(row.record_id)
                    || row.status == RecordStatus::Live =>
            {
                Some(SessionView::of(&session))
            }
            (Some(row), _) => Some(SessionView::from_record(&row)),
            (None, here) => here.as_deref().map(SessionView::of),
        })
    }

    /// `caller`'s sessions newest first, filtered and paginated as the Steel SDKs expect:
    /// from the usage records, so sessions of earlier runs are listed too, with the live
    /// figures of the sessions running here.
    pub(crate) async fn list(
        &self,
        query: ListQuery,
        caller: &Caller,
    ) -> Result<ListPage, ListError> {
        let tenant = caller.tenant_name().map(|t| t.to_string());
        let retention = self.retention();
        let before = match query.cursor {
            None => None,
            Some(id) => Some(
                self.record_of(&id, caller, retention)
                    .await?
                    .ok_or(ListError::UnknownCursor(id))?,
            ),
        };
        let rows = self
            .meter
            .history_page(HistoryQuery {
                tenant: tenant.clone(),
                status: query.status.map(RecordStatus::of_steel),
                before,
                limit: query.limit,
                retention,
            })
            .await?;
        let next_cursor = (rows.len() == query.limit)
            .then(|| rows.last().map(|r| r.session_id))
            .flatten();
        let sessions = rows
            .iter()
            .map(|row| self.view_of(row, caller))
            .filter(|v| query.status.is_none_or(|s| v.status == s))
            .collect();
        let total_count = match query.status {
            Some(status) => Some(
                self.meter
                    .history_count(tenant, RecordStatus::of_steel(status), retention)
                    .await?,
            ),
            None => None,
        };
        Ok(ListPage {
            sessions,
            next_cursor,
            total_count,
        })
    }

    /// A record's session as a client sees it: with live figures when it runs here, on a
    /// single node. In a cluster every node answers from the records alone, so that every
    /// node lists the same; and an ended session is always what its record says (the
    /// cluster may have failed it while this node was cut off).
    fn view_of(&self, row: &HistoryRow, caller: &Caller) -> SessionView {
        if self.meter.shared() || row.status != RecordStatus::Live {
            return SessionView::from_record(row);
        }
        match self.get_for(&row.session_id, caller) {
            Some(s) if s.usage().record_id() == Some(row.record_id) => SessionView::of(&s),
            _ => SessionView::from_record(row),
        }
    }

    /// The record of the session a cursor names.
    async fn record_of(
        &self,
        id: &Uuid,
        caller: &Caller,
        retention: Retention,
    ) -> Result<Option<i64>, MeterError> {
        if let Some(record) = self.get_for(id, caller).and_then(|s| s.usage().record_id()) {
            return Ok(Some(record));
        }
        let tenant = caller.tenant_name().map(|t| t.to_string());
        let row = self.meter.history_get(*id, tenant, retention).await?;
        Ok(row.map(|r| r.record_id))
    }

    /// What list and retrieve show now.
    fn retention(&self) -> Retention {
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        self.history.at(now_ms)
    }

    /// `caller`'s only live session, if it has exactly one.
    pub(crate) fn sole_live_session(&self, caller: &Caller) -> Option<Arc<Session>> {
        self.directory.sole_live(caller)
    }

    /// Releases a session and waits until its browser is gone. Releasing an ended session
    /// changes nothing. `None` when the id is unknown to `caller`.
    pub(crate) async fn release(&self, id: &Uuid, caller: &Caller) -> Option<Arc<Session>> {
        let session = self.get_for(id, caller)?;
        let _ = session.request_end(EndReason::UserRequested);
        wait_reaped(&session).await;
        Some(session)
    }

    /// Sets the total timeout of a live session of `caller` and records it; `None` when the
    /// id is unknown to `caller` here.
    pub(crate) async fn extend(
        &self,
        id: &Uuid,
        caller: &Caller,
        total_ms: u64,
    ) -> Option<Result<SessionView, NotExtended>> {
        let session = self.get_for(id, caller)?;
        if let Err(e) = session.extend(total_ms) {
            return Some(Err(e));
        }
        info!(session_id = %id, timeout_ms = total_ms, "session timeout changed");
        if let Err(e) = self.meter.details_changed(session.as_ref()).await {
            warn!(session_id = %id, error = %e, "cannot record the new timeout; the session keeps it");
        }
        Some(Ok(SessionView::of(&session)))
    }

    /// Releases every live session of `caller`; returns how many this call ended.
    pub(crate) async fn release_all(&self, caller: &Caller) -> usize {
        let live = self.directory.live_for(caller);
        let released = live
            .iter()
            .filter(|s| s.request_end(EndReason::UserRequested).is_ok())
            .count();
        for s in &live {
            wait_reaped(s).await;
        }
        released
    }

    /// Ends the live sessions of `records` as lost by the cluster (`node_lost`), as of `at`
    /// (when this node stopped serving them). Their supervisors reap them; their clients,
    /// held while the node was fenced, are closed and get nothing more (the proxy checks
    /// the session before it relays a held message). Returns how many it ended.
    pub(crate) fn end_lost(&self, records: &[i64], at: std::time::Instant) -> usize {
        let mut ended = 0;
        for session in self.directory.live_for(&Caller::Open) {
            let lost = session
                .usage()
                .record_id()
                .is_some_and(|r| records.contains(&r));
            if lost && session.request_end_at(EndReason::NodeLost, at).is_ok() {
                warn!(session_id = %session.id,
                    "the cluster failed this session while its node was cut off; ended it here");
                ended += 1;
            }
        }
        ended
    }

    /// Freezes (`true`) or thaws the browser of every live session here.
    pub(crate) fn freeze_all(&self, frozen: bool) {
        for session in self.directory.live_for(&Caller::Open) {
            session.freeze(frozen);
        }
    }

    /// Number of live sessions.
    pub(crate) fn live_count(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Most sessions live (or starting, or pooled) at once.
    pub(crate) fn max_sessions(&self) -> usize {
        self.admitter.limits().max_sessions
    }

    /// Refuses new sessions from now on, and empties the warm pool; live sessions go on.
    pub(crate) async fn stop_accepting(&self) {
        self.closed.cancel();
        self.pool.close().await;
    }

    /// A session gave its slot back.
    pub(super) fn slot_freed(&self) {
        self.pool.capacity_freed();
    }

    /// Ends every session (reason `gateway_shutdown`), refuses new ones, and waits up to
    /// `grace` for every browser to be reaped.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop_accepting().await;
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = self.tasks.len(),
                "sessions still shutting down after {grace:?}"
            );
        }
    }
}

async fn wait_reaped(session: &Session) {
    if tokio::time::timeout(REAP_WAIT, session.reaped())
        .await
        .is_err()
    {
        warn!(session_id = %session.id, "browser not reaped within {REAP_WAIT:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_limits_keep_the_last_days_and_the_newest() {
        let day_ms = 86_400_000_i128;
        let limits = HistoryLimits {
            keep_for: Duration::from_secs(30 * 86_400),
            keep_newest: 10_000,
        };
        let r = limits.at(100 * day_ms);
        assert_eq!((r.since_ms, r.newest), ((70 * day_ms) as i64, 10_000));
        let none = HistoryLimits {
            keep_for: Duration::MAX,
            keep_newest: 0,
        };
        let r = none.at(day_ms);
        assert_eq!(
            (r.since_ms, r.newest),
            (i64::MIN, 1),
            "saturates, keeps at least one"
        );
    }
}
