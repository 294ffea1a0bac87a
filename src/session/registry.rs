//! Every session the gateway knows: live ones and the recent history of ended ones.
//!
//! Owns creation (capacity, id uniqueness, launch, readiness), lookup, listing order and
//! pagination, release, and shutdown of all sessions. It asks the state machine for every
//! transition and leaves tearing a session down to that session's supervisor.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::Session;
use super::params::Dimensions;
use super::params::SessionOptions;
use super::pool::{WarmBrowser, WarmPool};
use super::quota::{OverQuota, TenantQuota};
use super::state::{EndReason, Phase, Status};
use super::supervisor::{self, LivenessProbe};
use crate::auth::Caller;
use crate::browser::{BrowserHost, LaunchSpec};
use crate::cdp::mux::Mux;
use crate::metering::Meter;
use crate::telemetry::{self, CreateErrorReason};

/// Ended sessions kept for listing and lookup, newest kept.
pub const ENDED_HISTORY: usize = 10_000;
/// How long a release waits for the browser to be gone before answering anyway.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a session with id {0} already exists")]
    Duplicate(Uuid),
    #[error("all session slots are in use and {0} creates are already waiting; retry later")]
    QueueFull(usize),
    #[error("all session slots stayed in use for {0:?}; release a session or retry later")]
    QueueTimeout(Duration),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the browser could not be started: {0}")]
    Launch(String),
    #[error("the session could not be metered, so it was not started: {0}")]
    Usage(String),
    #[error(transparent)]
    OverQuota(#[from] OverQuota),
}

impl CreateError {
    /// The metrics label of a create that got no session; `None` for the client's own error.
    fn metric_reason(&self) -> Option<CreateErrorReason> {
        match self {
            CreateError::Duplicate(_)
            | CreateError::QueueFull(_)
            | CreateError::QueueTimeout(_)
            | CreateError::OverQuota(_) => None,
            CreateError::ShuttingDown => Some(CreateErrorReason::ShuttingDown),
            CreateError::Launch(_) => Some(CreateErrorReason::BrowserStartFailed),
            CreateError::Usage(_) => Some(CreateErrorReason::UsageUnavailable),
        }
    }
}

/// Limits on live sessions and on creates waiting for one to end.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Most sessions (plus pooled browsers) at once.
    pub max_sessions: usize,
    /// Pre-launched browsers to keep ready.
    pub pool_size: usize,
    /// Most creates waiting for a slot; beyond it a create is refused at once.
    pub queue_limit: usize,
    /// How long a create waits for a slot.
    pub queue_timeout: Duration,
    /// Most sessions one tenant may have live (or starting) at once.
    pub per_tenant: Option<usize>,
    /// How each live browser is checked for hangs.
    pub probe: LivenessProbe,
}

/// Room for one session.
enum Slot {
    /// A pooled browser, with its permit.
    Warm(WarmBrowser),
    /// A permit; the browser is still to be launched.
    Cold(OwnedSemaphorePermit),
}

/// Why admission refused a create, as a metrics label.
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    QueueFull,
    QueueTimeout,
}

/// Counts a create in the queue for as long as it is held.
struct QueueTicket<'a>(&'a Registry);

impl<'a> QueueTicket<'a> {
    fn new(registry: &'a Registry) -> Self {
        telemetry::admission_queue(registry.queued.load(Ordering::Acquire));
        QueueTicket(registry)
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        let left = self
            .0
            .queued
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        telemetry::admission_queue(left);
        if left == 0 {
            self.0.pool.set_waiters(false);
        }
    }
}

/// Whether the gateway should be sent new sessions (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    AtCapacity,
    ShuttingDown,
    /// The latest browser launch failed, with its error.
    ChromiumUnavailable(String),
}

/// A `GET /v1/sessions` query, validated.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub limit: usize,
    /// Return sessions strictly after this one.
    pub cursor: Option<Uuid>,
}

/// One page of sessions, newest first.
pub struct ListPage {
    pub sessions: Vec<Arc<Session>>,
    pub next_cursor: Option<Uuid>,
    /// Sessions matching a status filter in all pages; only for filtered queries.
    pub total_count: Option<usize>,
}

/// The cursor does not name a listed session.
#[derive(Debug, thiserror::Error)]
#[error("cursorId {0} does not name a listed session")]
pub struct UnknownCursor(pub Uuid);

/// The session registry.
pub struct Registry {
    sessions: DashMap<Uuid, Arc<Session>>,
    /// Creation sequence → id, for newest-first listing and cursors.
    order: Mutex<BTreeMap<u64, Uuid>>,
    /// Ended sessions, oldest first, so history can be trimmed.
    ended: Mutex<VecDeque<Uuid>>,
    next_seq: AtomicU64,
    capacity: Arc<Semaphore>,
    admission: Admission,
    /// Creates waiting for a slot.
    queued: AtomicUsize,
    pool: Arc<WarmPool>,
    tenant_quota: TenantQuota,
    /// Sessions that went live and have not ended yet.
    live: AtomicUsize,
    host: Arc<dyn BrowserHost>,
    meter: Arc<Meter>,
    /// The error of the latest browser launch, when it failed.
    launch_failure: Mutex<Option<String>>,
    tasks: TaskTracker,
    /// Cancelled when new sessions are refused (draining or shutting down).
    closed: CancellationToken,
    /// Cancelled when every live session must end.
    shutdown: CancellationToken,
}

impl Registry {
    /// A registry; its warm pool starts filling when [`Registry::start_pool`] is called.
    pub fn new(
        host: Arc<dyn BrowserHost>,
        meter: Arc<Meter>,
        admission: Admission,
    ) -> Arc<Registry> {
        let capacity = Arc::new(Semaphore::new(admission.max_sessions));
        let tasks = TaskTracker::new();
        let pool = WarmPool::new(
            admission.pool_size,
            host.clone(),
            capacity.clone(),
            tasks.clone(),
        );
        Arc::new(Registry {
            sessions: DashMap::new(),
            order: Mutex::new(BTreeMap::new()),
            ended: Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            capacity,
            admission,
            queued: AtomicUsize::new(0),
            pool,
            tenant_quota: TenantQuota::new(admission.per_tenant),
            live: AtomicUsize::new(0),
            host,
            meter,
            launch_failure: Mutex::new(None),
            tasks,
            closed: CancellationToken::new(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Creates a session and returns once its browser answers CDP. The work runs in its own
    /// task, so a client that hangs up mid-create cannot strand a half-started browser.
    pub async fn create(
        self: &Arc<Self>,
        options: SessionOptions,
        caller: &Caller,
    ) -> Result<Arc<Session>, CreateError> {
        let this = self.clone();
        let tenant = caller.tenant_name();
        let result = self
            .tasks
            .spawn(async move { this.create_now(options, tenant).await })
            .await
            .unwrap_or_else(|e| {
                Err(CreateError::Launch(format!(
                    "session start-up task failed: {e}"
                )))
            });
        if let Some(reason) = result.as_ref().err().and_then(CreateError::metric_reason) {
            telemetry::create_failed(reason);
        }
        result
    }

    async fn create_now(
        self: Arc<Self>,
        options: SessionOptions,
        tenant: Option<Arc<str>>,
    ) -> Result<Arc<Session>, CreateError> {
        let requested = Instant::now();
        if self.closed.is_cancelled() {
            return Err(CreateError::ShuttingDown);
        }
        if let Some(id) = options.session_id
            && self.sessions.contains_key(&id)
        {
            return Err(CreateError::Duplicate(id));
        }
        let quota = self.tenant_quota.reserve(tenant.clone())?;
        let poolable = options.user_agent.is_none()
            && options.proxy_server.is_none()
            && options.dimensions == Dimensions::default();
        let (permit, warm) = match self.admit(poolable).await? {
            Slot::Warm(warm) => (warm.permit, Some((warm.id, warm.launched))),
            Slot::Cold(permit) => (permit, None),
        };
        let id = options
            .session_id
            .or(warm.as_ref().map(|(id, _)| *id))
            .unwrap_or_else(Uuid::new_v4);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session::new(id, seq, options, tenant));
        match self.sessions.entry(id) {
            Entry::Occupied(_) => {
                if let Some((_, launched)) = warm {
                    launched.process.kill().await;
                }
                return Err(CreateError::Duplicate(id));
            }
            Entry::Vacant(slot) => {
                slot.insert(session.clone());
            }
        }
        lock(&self.order).insert(seq, id);

        let (launched, launch_time) = match warm {
            Some((_, launched)) => {
                debug!(session_id = %id, browser = %launched.process.address(), "session takes a pooled browser");
                (launched, None)
            }
            None => {
                let spec = LaunchSpec {
                    session_id: id,
                    dimensions: session.options.dimensions,
                    user_agent: session.options.user_agent.clone(),
                    proxy_server: session.options.proxy_server.clone(),
                };
                let launch_started = Instant::now();
                let launched = self.host.launch(spec).await;
                let launch_time = launch_started.elapsed();
                telemetry::browser_launched(launch_time);
                self.note_launch(launched.as_ref().err().map(|e| e.0.clone()));
                match launched {
                    Ok(launched) => (launched, Some(launch_time)),
                    Err(e) => {
                        self.forget_failed_start(&session);
                        return Err(CreateError::Launch(e.0));
                    }
                }
            }
        };
        let mux = Mux::start(launched.transport);
        let _ = session.browser.set(super::BrowserLink {
            mux: mux.clone(),
            version: launched.version,
        });
        let went_live = if self.closed.is_cancelled() {
            Err(CreateError::ShuttingDown)
        } else {
            session
                .lifecycle
                .mark_live()
                .map_err(|e| CreateError::Launch(e.to_string()))
        };
        // Metered before anyone can use it: a session without a usage record is never served.
        let went_live = match went_live {
            Ok(()) => self
                .meter
                .start(
                    session.clone(),
                    session.tenant.as_deref().map(str::to_owned),
                )
                .await
                .map_err(|e| CreateError::Usage(e.to_string())),
            Err(e) => Err(e),
        };
        if let Err(e) = went_live {
            if session.phase().is_live() {
                let _ = session.lifecycle.end(EndReason::BrowserCrashed);
            }
            launched.process.kill().await;
            self.forget_failed_start(&session);
            return Err(e);
        }
        let live = self.live.fetch_add(1, Ordering::AcqRel) + 1;
        telemetry::sessions_live(live);
        telemetry::session_created(requested.elapsed());
        info!(
            session_id = %id,
            timeout_ms = session.options.timeout_ms,
            warm = launch_time.is_none(),
            "session live"
        );
        self.tasks.spawn(supervisor::supervise(
            self.clone(),
            session.clone(),
            launched.process,
            mux,
            (permit, quota),
            self.admission.probe,
            self.shutdown.clone(),
        ));
        Ok(session)
    }

    /// Finds room for one more session: a pooled browser when the session can use one, else
    /// a free slot, else a pooled browser's slot, else a place in the queue until a slot or a
    /// pooled browser frees up, for at most the queue timeout.
    async fn admit(&self, poolable: bool) -> Result<Slot, CreateError> {
        if let Some(slot) = self.admit_now(poolable).await {
            return Ok(slot);
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave = QueueTicket::new(self);
        if queued >= self.admission.queue_limit {
            telemetry::admission_rejected(Rejection::QueueFull);
            return Err(CreateError::QueueFull(self.admission.queue_limit));
        }
        self.pool.set_waiters(true);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.admission.queue_timeout;
        if !self.admission.queue_timeout.is_zero() {
            debug!(queued = queued + 1, "create waits for a free slot");
        }
        loop {
            let became_ready = self.pool.became_ready();
            tokio::pin!(became_ready);
            became_ready.as_mut().enable();
            if let Some(slot) = self.admit_now(poolable).await {
                telemetry::admission_waited(started.elapsed());
                return Ok(slot);
            }
            tokio::select! {
                permit = self.capacity.clone().acquire_owned() => {
                    let permit = permit.map_err(|_| CreateError::ShuttingDown)?;
                    telemetry::admission_waited(started.elapsed());
                    return Ok(Slot::Cold(permit));
                }
                _ = &mut became_ready => {}
                _ = tokio::time::sleep_until(deadline) => {
                    telemetry::admission_rejected(Rejection::QueueTimeout);
                    return Err(CreateError::QueueTimeout(self.admission.queue_timeout));
                }
                _ = self.closed.cancelled() => return Err(CreateError::ShuttingDown),
            }
        }
    }

    /// Room available without waiting, if any.
    async fn admit_now(&self, poolable: bool) -> Option<Slot> {
        if poolable && let Some(warm) = self.pool.take() {
            return Some(Slot::Warm(warm));
        }
        if let Ok(permit) = self.capacity.clone().try_acquire_owned() {
            return Some(Slot::Cold(permit));
        }
        if !poolable {
            return self.pool.evict().await.map(Slot::Cold);
        }
        None
    }

    /// A session that never became live leaves no trace, so its id can be used again.
    fn forget_failed_start(&self, session: &Session) {
        let _ = session.lifecycle.end(EndReason::StartupFailed);
        self.sessions.remove(&session.id);
        lock(&self.order).remove(&session.seq);
        session.reaped.cancel();
    }

    /// Remembers how the latest launch went, for readiness.
    fn note_launch(&self, failure: Option<String>) {
        *lock(&self.launch_failure) = failure;
    }

    /// Launches a browser and kills it again, to learn whether browsers can start. Returns
    /// the launch error, if any; readiness follows the outcome.
    pub async fn probe_browser(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let spec = LaunchSpec {
            session_id: Uuid::new_v4(),
            dimensions: Default::default(),
            user_agent: None,
            proxy_server: None,
        };
        let result = self.host.launch(spec).await;
        let elapsed = started.elapsed();
        self.note_launch(result.as_ref().err().map(|e| e.0.clone()));
        match result {
            Ok(launched) => {
                launched.process.kill().await;
                telemetry::browser_launched(elapsed);
                Ok(elapsed)
            }
            Err(e) => Err(e.0),
        }
    }

    /// Starts keeping the warm pool filled.
    pub fn start_pool(&self) {
        self.pool.start();
    }

    /// Browsers waiting in the warm pool.
    pub fn pooled_count(&self) -> usize {
        self.pool.ready_count()
    }

    /// Whether new sessions can be served now.
    pub fn readiness(&self) -> Readiness {
        if self.closed.is_cancelled() {
            Readiness::ShuttingDown
        } else if let Some(error) = lock(&self.launch_failure).clone() {
            Readiness::ChromiumUnavailable(error)
        } else if self.capacity.available_permits() == 0 && self.pool.ready_count() == 0 {
            Readiness::AtCapacity
        } else {
            Readiness::Ready
        }
    }

    /// Records that a session ended: its final usage record, metrics, and history (trimming
    /// the oldest beyond [`ENDED_HISTORY`]).
    pub(super) async fn note_ended(&self, session: &Arc<Session>, reason: EndReason) {
        self.meter
            .finish(session.as_ref(), reason.status().as_str(), reason.as_str())
            .await;
        let live = self.live.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        telemetry::sessions_live(live);
        telemetry::session_ended(reason, session.duration());
        let mut ended = lock(&self.ended);
        ended.push_back(session.id);
        while ended.len() > ENDED_HISTORY {
            let Some(old) = ended.pop_front() else { break };
            if let Some((_, s)) = self.sessions.remove(&old) {
                lock(&self.order).remove(&s.seq);
            }
        }
    }

    /// A session that clients may see (any state but starting).
    fn get(&self, id: &Uuid) -> Option<Arc<Session>> {
        let session = self.sessions.get(id).map(|s| s.value().clone())?;
        (session.phase() != Phase::Starting).then_some(session)
    }

    /// A session `caller` may see. Another tenant's session is `None`, exactly like an
    /// unknown id, so that its existence does not leak.
    pub fn get_for(&self, id: &Uuid, caller: &Caller) -> Option<Arc<Session>> {
        self.get(id)
            .filter(|s| caller.may_access(s.tenant.as_deref()))
    }

    /// `caller`'s sessions newest first, filtered and paginated as the Steel SDKs expect.
    pub fn list(&self, query: ListQuery, caller: &Caller) -> Result<ListPage, UnknownCursor> {
        let upper = match query.cursor {
            None => Bound::Unbounded,
            Some(cursor) => {
                let seq = self
                    .get_for(&cursor, caller)
                    .map(|s| s.seq)
                    .ok_or(UnknownCursor(cursor))?;
                Bound::Excluded(seq)
            }
        };
        let ids: Vec<Uuid> = lock(&self.order)
            .range((Bound::Unbounded, upper))
            .rev()
            .map(|(_, id)| *id)
            .collect();
        let matches = |s: &Arc<Session>| {
            caller.may_access(s.tenant.as_deref())
                && query
                    .status
                    .is_none_or(|status| s.phase().status() == status)
        };
        let mut sessions = Vec::with_capacity(query.limit.min(ids.len()));
        for id in &ids {
            if sessions.len() == query.limit {
                break;
            }
            if let Some(s) = self.get(id).filter(matches) {
                sessions.push(s);
            }
        }
        let total_count = query.status.map(|_| {
            let all: Vec<Uuid> = lock(&self.order).values().copied().collect();
            all.iter()
                .filter_map(|id| self.get(id))
                .filter(matches)
                .count()
        });
        let next_cursor = (sessions.len() == query.limit)
            .then(|| sessions.last().map(|s| s.id))
            .flatten();
        Ok(ListPage {
            sessions,
            next_cursor,
            total_count,
        })
    }

    /// Releases a session and waits until its browser is gone. Releasing an ended session
    /// changes nothing. `None` when the id is unknown to `caller`.
    pub async fn release(&self, id: &Uuid, caller: &Caller) -> Option<Arc<Session>> {
        let session = self.get_for(id, caller)?;
        let _ = session.request_end(EndReason::UserRequested);
        wait_reaped(&session).await;
        Some(session)
    }

    /// Releases every live session of `caller`; returns how many this call ended.
    pub async fn release_all(&self, caller: &Caller) -> usize {
        let live: Vec<Arc<Session>> = self
            .sessions
            .iter()
            .map(|e| e.value().clone())
            .filter(|s| s.phase().is_live() && caller.may_access(s.tenant.as_deref()))
            .collect();
        let mut released = 0;
        for s in &live {
            if s.request_end(EndReason::UserRequested).is_ok() {
                released += 1;
            }
        }
        for s in &live {
            wait_reaped(s).await;
        }
        released
    }

    /// Number of live sessions.
    pub fn live_count(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Most sessions live (or starting, or pooled) at once.
    pub fn max_sessions(&self) -> usize {
        self.admission.max_sessions
    }

    /// `caller`'s only live session, if it has exactly one.
    pub fn sole_live_session(&self, caller: &Caller) -> Option<Arc<Session>> {
        let mut live = self
            .sessions
            .iter()
            .filter(|e| {
                e.value().phase().is_live() && caller.may_access(e.value().tenant.as_deref())
            })
            .map(|e| e.value().clone());
        let first = live.next()?;
        live.next().is_none().then_some(first)
    }

    /// Refuses new sessions from now on, and empties the warm pool; live sessions go on.
    pub async fn stop_accepting(&self) {
        self.closed.cancel();
        self.pool.close().await;
    }

    /// A session gave its slot back.
    pub(super) fn slot_freed(&self) {
        self.pool.capacity_freed();
    }

    /// Ends every session (reason `gateway_shutdown`), refuses new ones, and waits up to
    /// `grace` for every browser to be reaped.
    pub async fn shutdown(&self, grace: Duration) {
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
    use crate::browser::{BrowserExit, BrowserProcess, CdpTransport, LaunchError, Launched};
    use bytes::{Bytes, BytesMut};
    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;
    use tokio::sync::mpsc;

    /// A browser host whose "browser" answers every CDP command with an empty result: enough
    /// to drive the registry through thousands of sessions without Chromium.
    struct FakeHost;

    struct FakeProcess {
        killed: CancellationToken,
    }

    impl BrowserHost for FakeHost {
        fn launch(&self, _spec: LaunchSpec) -> BoxFuture<'_, Result<Launched, LaunchError>> {
            async {
                let (to_browser, mut commands) = mpsc::channel::<Bytes>(16);
                let (replies, from_browser) = mpsc::channel::<BytesMut>(16);
                tokio::spawn(async move {
                    while let Some(command) = commands.recv().await {
                        let command: serde_json::Value =
                            serde_json::from_slice(&command).unwrap_or_default();
                        let mut reply = serde_json::json!({"id": command["id"], "result": {}});
                        if let Some(session) = command.get("sessionId") {
                            reply["sessionId"] = session.clone();
                        }
                        let _ = replies
                            .send(BytesMut::from(reply.to_string().as_bytes()))
                            .await;
                    }
                });
                Ok(Launched {
                    transport: CdpTransport {
                        to_browser,
                        from_browser,
                    },
                    process: Arc::new(FakeProcess {
                        killed: CancellationToken::new(),
                    }),
                    version: serde_json::json!({"product": "Fake/1"}),
                })
            }
            .boxed()
        }
    }

    impl BrowserProcess for FakeProcess {
        fn address(&self) -> String {
            "fake".into()
        }
        fn wait_exit(&self) -> BoxFuture<'_, BrowserExit> {
            async {
                self.killed.cancelled().await;
                BrowserExit::Code(0)
            }
            .boxed()
        }
        fn kill(&self) -> BoxFuture<'_, ()> {
            self.killed.cancel();
            async {}.boxed()
        }
    }

    fn options() -> SessionOptions {
        SessionOptions {
            session_id: None,
            timeout_ms: 60_000,
            user_agent: None,
            dimensions: Dimensions::default(),
            proxy_server: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_last_ten_thousand_ended_sessions_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meter = Meter::open(dir.path()).await.expect("usage database");
        let registry = Registry::new(
            Arc::new(FakeHost),
            meter,
            Admission {
                max_sessions: 4,
                pool_size: 0,
                queue_limit: 0,
                queue_timeout: Duration::ZERO,
                per_tenant: None,
                probe: LivenessProbe {
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(5),
                },
            },
        );
        let mut ids = Vec::new();
        for _ in 0..ENDED_HISTORY + 3 {
            let session = registry
                .create(options(), &Caller::Open)
                .await
                .expect("create");
            registry
                .release(&session.id, &Caller::Open)
                .await
                .expect("release");
            ids.push(session.id);
        }
        for old in &ids[..3] {
            assert!(
                registry.get_for(old, &Caller::Open).is_none(),
                "the oldest ended sessions are trimmed"
            );
        }
        assert!(
            registry.get_for(&ids[3], &Caller::Open).is_some(),
            "the 10,000th newest is kept"
        );

        // Walking the pages as the SDKs do visits every kept session once, newest first.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = registry
                .list(
                    ListQuery {
                        status: None,
                        limit: 100,
                        cursor,
                    },
                    &Caller::Open,
                )
                .expect("list");
            let Some(last) = page.sessions.last() else {
                break;
            };
            cursor = Some(last.id);
            seen.extend(page.sessions.iter().map(|s| s.id));
        }
        let expected: Vec<Uuid> = ids[3..].iter().rev().copied().collect();
        assert_eq!(seen.len(), ENDED_HISTORY);
        assert_eq!(seen, expected);
        let released = registry
            .list(
                ListQuery {
                    status: Some(Status::Released),
                    limit: 1,
                    cursor: None,
                },
                &Caller::Open,
            )
            .expect("list");
        assert_eq!(released.total_count, Some(ENDED_HISTORY));
        assert_eq!(registry.live_count(), 0, "every slot was given back");
    }
}
