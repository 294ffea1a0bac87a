//! This node's lease in the cluster, and the fence that keeps a node cut off from the
//! database from serving sessions the others may fail.
//!
//! Owns the lease protocol: renewals (one per slot, a sixth of the lease, each within its
//! slot), self-fencing, the heal, and judging dead nodes. It reaches the database only
//! through [`Membership`] and this node's sessions only through [`NodeSessions`], so that
//! the protocol runs in tests on tokio's paused clock with in-memory fakes. It must not know
//! about HTTP, CDP or how a browser is frozen.
//!
//! The timeline, for a lease `L` and a margin `M = L/4`:
//! - a node renews every `L/6`; a renewal that started at `t` sets its lease to end at
//!   `t + L` or later on the database's clock;
//! - a node that has not started a successful renewal within `L - M` fences itself, on its
//!   own monotonic clock: its browsers are frozen and no client gets an answer;
//! - the others fail its sessions only once its lease has been over for more than `M`, so
//!   at least `2M` after it fenced itself;
//! - when it renews again it ends the sessions the cluster failed meanwhile (their clients
//!   are closed with a reason) and thaws the others, whose clients carry on;
//! - a node judges others only after it has itself renewed for a whole lease, so that after
//!   a database outage every node first gets the time to renew.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::directory::PgDirectory;
use crate::metering::MeterError;
use crate::metering::postgres::renewal_slot;
use crate::sync::lock;
use crate::telemetry;

/// What the lease protocol asks of the shared database.
pub(crate) trait Membership: Send + Sync {
    /// Extends this node's lease by a whole lease from now (within one slot).
    fn renew(&self) -> BoxFuture<'_, Result<(), MeterError>>;
    /// Of `records` (this node's live sessions), those the cluster has already ended.
    fn ended_elsewhere(&self, records: Vec<i64>) -> BoxFuture<'_, Result<Vec<i64>, MeterError>>;
    /// Fails the live sessions of nodes whose lease has been over for more than `margin`;
    /// returns how many.
    fn fail_dead_nodes(&self, margin: Duration) -> BoxFuture<'_, Result<u64, MeterError>>;
}

/// [`Membership`] in the shared PostgreSQL database.
pub(crate) struct PgMembership {
    /// The cluster's directory.
    pub directory: Arc<PgDirectory>,
    /// How long this node's lease lasts.
    pub lease: Duration,
}

impl Membership for PgMembership {
    fn renew(&self) -> BoxFuture<'_, Result<(), MeterError>> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        Box::pin(self.directory.renew(lease_ms))
    }

    fn ended_elsewhere(&self, records: Vec<i64>) -> BoxFuture<'_, Result<Vec<i64>, MeterError>> {
        Box::pin(async move { self.directory.ended_elsewhere(&records).await })
    }

    fn fail_dead_nodes(&self, margin: Duration) -> BoxFuture<'_, Result<u64, MeterError>> {
        Box::pin(
            self.directory
                .fail_dead_nodes(crate::vocab::RecordReason::NodeLost, margin),
        )
    }
}

/// What the lease protocol does to this node's sessions.
pub(crate) trait NodeSessions: Send + Sync {
    /// The usage records of the sessions live here.
    fn live_records(&self) -> Vec<i64>;
    /// Freezes (`true`) or thaws every live session's browser.
    fn freeze(&self, frozen: bool);
    /// Ends the sessions of `records` as lost by the cluster, as of `at` (when this node
    /// stopped serving them), before the fence opens: their clients get nothing more.
    /// Returns how many.
    fn end_lost(&self, records: Vec<i64>, at: Instant) -> BoxFuture<'_, usize>;
}

/// Whether this node serves its sessions: the fence's state machine. `Serving → Fenced`
/// when a renewal is overdue, `Fenced → Serving` after a renewal; nothing else. Besides the
/// state it keeps the deadline the last renewal gives: past it nothing is relayed even
/// before the lease task has run (a node whose whole process was stopped wakes up late).
pub(crate) struct Fence {
    state: Mutex<FenceState>,
    /// What a proxy asks for every message, without a lock: whether the state is
    /// `Serving`, the last renewal's deadline in nanoseconds since `base` (`u64::MAX`: none,
    /// a single node), and whether the latest renewal failed.
    serving: AtomicBool,
    serve_until_ns: AtomicU64,
    failing: AtomicBool,
    base: Instant,
    /// `true` while fenced, to wake the proxies that stopped relaying.
    paused: watch::Sender<bool>,
    /// Up to when the time fenced is counted in the metrics.
    counted_at: Mutex<Option<Instant>>,
}

/// The fence's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceState {
    /// Renewals are on time: serve.
    Serving,
    /// A renewal is overdue since `since`: browsers frozen, nothing relayed, no new
    /// connection taken.
    Fenced { since: Instant },
}

/// Why this node takes no new connection or session now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// The node fenced itself: its lease renewal is overdue.
    #[error(
        "this node lost contact with the cluster's database and has fenced itself; its sessions are paused until it renews its lease"
    )]
    Fenced,
    /// The latest lease renewal failed: the database may be unreachable.
    #[error("this node cannot reach the cluster's database just now")]
    DatabaseUnavailable,
}

impl Fence {
    /// A fence that never closes: a single node, which has no lease.
    pub(crate) fn open_forever() -> Fence {
        Fence::with(None)
    }

    /// A fence for a node whose lease lasts `lease` and that started taking it at `joined`.
    pub(crate) fn for_lease(times: LeaseTimes, joined: Instant) -> Fence {
        Fence::with(Some(joined + times.lease - times.margin))
    }

    fn with(serve_until: Option<Instant>) -> Fence {
        let fence = Fence {
            state: Mutex::new(FenceState::Serving),
            serving: AtomicBool::new(true),
            serve_until_ns: AtomicU64::new(u64::MAX),
            failing: AtomicBool::new(false),
            base: Instant::now(),
            paused: watch::channel(false).0,
            counted_at: Mutex::new(None),
        };
        if let Some(until) = serve_until {
            fence.serve_until(until);
        }
        fence
    }

    /// The state now.
    pub(crate) fn state(&self) -> FenceState {
        *lock(&self.state)
    }

    /// Whether this node may relay its sessions' traffic now: not fenced, and the last
    /// renewal's deadline not passed. Asked for every message: two atomic loads and a read
    /// of the monotonic clock.
    pub(crate) fn may_serve(&self) -> bool {
        if !self.serving.load(Ordering::Acquire) {
            return false;
        }
        let until = self.serve_until_ns.load(Ordering::Acquire);
        until == u64::MAX || nanos(self.base.elapsed()) < until
    }

    /// Whether this node may take a new connection or session now: it serves, and its
    /// latest renewal succeeded (a node that cannot reach the database starts nothing).
    pub(crate) fn admits(&self) -> Result<(), Unavailable> {
        if !self.may_serve() {
            return Err(Unavailable::Fenced);
        }
        if self.failing.load(Ordering::Acquire) {
            return Err(Unavailable::DatabaseUnavailable);
        }
        Ok(())
    }

    /// Ticks while fenced; proxies that stopped relaying wait on it.
    pub(crate) fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// A renewal succeeded: serve until `until`.
    fn renewed(&self, until: Instant) {
        self.serve_until(until);
        self.failing.store(false, Ordering::Release);
    }

    fn serve_until(&self, until: Instant) {
        let ns = nanos(until.saturating_duration_since(self.base)).min(u64::MAX - 1);
        self.serve_until_ns.store(ns, Ordering::Release);
    }

    /// A renewal failed.
    fn renewal_failed(&self) {
        self.failing.store(true, Ordering::Release);
    }

    /// Whether this node is fenced now.
    fn is_fenced(&self) -> bool {
        self.state() != FenceState::Serving
    }

    /// Adds the time fenced since it was last counted to `ingot_cluster_fenced_seconds`, so
    /// that a long fence shows while it lasts.
    fn account(&self) {
        let mut counted = lock(&self.counted_at);
        if let (FenceState::Fenced { .. }, Some(at)) = (self.state(), *counted) {
            let now = Instant::now();
            telemetry::cluster_fenced_for(now - at);
            *counted = Some(now);
        }
    }

    /// `Serving → Fenced` at `now`. `false` when it already was.
    fn close(&self, now: Instant) -> bool {
        let mut state = lock(&self.state);
        if *state != FenceState::Serving {
            return false;
        }
        *state = FenceState::Fenced { since: now };
        *lock(&self.counted_at) = Some(now);
        self.serving.store(false, Ordering::Release);
        self.paused.send_replace(true);
        telemetry::cluster_fenced(true);
        true
    }

    /// `Fenced → Serving`; how long it was fenced, `None` when it was not.
    fn open(&self) -> Option<Duration> {
        let mut state = lock(&self.state);
        let FenceState::Fenced { since } = *state else {
            return None;
        };
        *state = FenceState::Serving;
        self.serving.store(true, Ordering::Release);
        self.paused.send_replace(false);
        if let Some(at) = lock(&self.counted_at).take() {
            telemetry::cluster_fenced_for(at.elapsed());
        }
        telemetry::cluster_fenced(false);
        Some(since.elapsed())
    }
}

/// How long a node waits before it tries again after a failed renewal: a quarter of a slot
/// (each try still has the whole slot as its deadline).
fn retry_after_failure(slot: Duration) -> Duration {
    (slot / 4).max(Duration::from_millis(25))
}

/// `d` in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The lease's timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseTimes {
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How often a renewal starts, and how long one may take.
    pub slot: Duration,
    /// The fence closes this long before the lease would run out; others wait this long
    /// after it ran out before they fail the node's sessions.
    pub margin: Duration,
}

impl LeaseTimes {
    /// The times for a lease of `lease`.
    pub(crate) fn new(lease: Duration) -> LeaseTimes {
        LeaseTimes {
            lease,
            slot: renewal_slot(lease),
            margin: lease / 4,
        }
    }
}

/// Keeps this node's lease until `stop`: renews it every slot, fences the node when a
/// renewal is overdue, heals it after the next renewal, and fails dead nodes' sessions.
/// `joined` is when the join that took the lease started.
pub(crate) async fn keep(
    membership: &dyn Membership,
    node: &dyn NodeSessions,
    fence: &Fence,
    times: LeaseTimes,
    joined: Instant,
    stop: CancellationToken,
) {
    let mut renewed_at = joined;
    // Since when renewals succeed without a failure in between: others are judged only
    // after a whole lease of that.
    let mut reachable_since: Option<Instant> = Some(joined);
    let mut failures: u64 = 0;
    // The first renewal goes at once: starting up took some of the lease (its own
    // deadline still fences the node if it hangs).
    let mut wait = Duration::ZERO;
    loop {
        let fence_at = renewed_at + times.lease - times.margin;
        let first = wait.is_zero();
        fence.account();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::time::sleep_until(fence_at), if !first && !fence.is_fenced() => {
                fence_now(node, fence, renewed_at, failures);
                continue;
            }
        }
        let started = Instant::now();
        let renewal = membership.renew();
        tokio::pin!(renewal);
        let renewed = loop {
            tokio::select! {
                result = &mut renewal => break result,
                _ = tokio::time::sleep_until(fence_at), if !fence.is_fenced() => {
                    fence_now(node, fence, renewed_at, failures + 1);
                }
            }
        };
        telemetry::lease_renewed(renewed.is_ok());
        if let Err(e) = renewed {
            fence.renewal_failed();
            // Try again soon: after a heal the node should serve again within a slot.
            wait = retry_after_failure(times.slot);
            failures += 1;
            reachable_since = None;
            warn!(error = %e, failures, overdue_in_ms = fence_at.saturating_duration_since(Instant::now()).as_millis() as u64,
                "cannot renew this node's lease");
            continue;
        }
        if failures > 0 {
            info!(failures, "this node's lease is renewed again");
        }
        failures = 0;
        wait = times.slot;
        renewed_at = started;
        fence.renewed(started + times.lease - times.margin);
        let since = *reachable_since.get_or_insert(started);
        if !settle(membership, node, fence).await {
            continue;
        }
        if since.elapsed() >= times.lease {
            fail_dead_nodes(membership, times.margin).await;
        }
    }
}

/// Closes the fence and freezes the sessions: the last successful renewal started at
/// `renewed_at`, and the lease may run out soon.
fn fence_now(node: &dyn NodeSessions, fence: &Fence, renewed_at: Instant, failures: u64) {
    if fence.close(Instant::now()) {
        node.freeze(true);
        warn!(
            since_renewal_ms = renewed_at.elapsed().as_millis() as u64,
            failures,
            "this node cannot renew its lease in time: fenced (browsers frozen, clients paused, new connections refused) until it renews"
        );
    }
}

/// After a renewal: ends the sessions the cluster failed while this node was silent, then,
/// if fenced, thaws the others and serves again. `false` when the database could not say
/// which sessions it failed (a fenced node then stays fenced).
async fn settle(membership: &dyn Membership, node: &dyn NodeSessions, fence: &Fence) -> bool {
    let lost = match membership.ended_elsewhere(node.live_records()).await {
        Ok(lost) => lost,
        Err(e) => {
            warn!(error = %e, "cannot check this node's sessions in the database");
            return false;
        }
    };
    if !lost.is_empty() {
        let at = match fence.state() {
            FenceState::Fenced { since } => since,
            FenceState::Serving => Instant::now(),
        };
        let ended = node.end_lost(lost, at).await;
        warn!(
            sessions = ended,
            "the cluster failed sessions of this node while it was cut off; they are ended here"
        );
    }
    if let Some(fenced_for) = fence.open() {
        node.freeze(false);
        info!(
            fenced_ms = fenced_for.as_millis() as u64,
            "this node renewed its lease: serving again, its sessions thawed"
        );
    }
    true
}

/// Fails the live sessions of nodes whose lease ran out more than `margin` ago.
async fn fail_dead_nodes(membership: &dyn Membership, margin: Duration) {
    match membership.fail_dead_nodes(margin).await {
        Ok(0) => {}
        Ok(n) => {
            warn!(
                sessions = n,
                "a node's lease ran out: its live sessions are marked failed (node_lost)"
            );
            telemetry::sessions_lost_with_node(n);
        }
        Err(e) => warn!(error = %e, "cannot check for dead nodes"),
    }
}

#[cfg(test)]
mod tests {
    //! The protocol on tokio's paused clock: two nodes share an in-memory database that
    //! either can be cut off from.

    use std::collections::HashMap;

    use super::*;

    const LEASE: Duration = Duration::from_millis(3000);

    /// The shared database: leases on its own clock, live records by node.
    #[derive(Default)]
    struct Db {
        leases: HashMap<&'static str, Instant>,
        /// record → (node, live)
        records: HashMap<i64, (&'static str, bool)>,
        cut: HashMap<&'static str, bool>,
        failed_at: Option<Instant>,
    }

    /// One node's view of the database: calls from a cut node fail at their deadline.
    struct Member {
        db: Arc<Mutex<Db>>,
        node: &'static str,
    }

    impl Member {
        async fn reach(&self) -> Result<(), MeterError> {
            if lock(&self.db).cut.get(self.node).copied().unwrap_or(false) {
                tokio::time::sleep(renewal_slot(LEASE)).await;
                return Err(MeterError::DeadlineExceeded {
                    kind: "lease",
                    ms: 500,
                });
            }
            Ok(())
        }
    }

    impl Membership for Member {
        fn renew(&self) -> BoxFuture<'_, Result<(), MeterError>> {
            Box::pin(async move {
                self.reach().await?;
                lock(&self.db)
                    .leases
                    .insert(self.node, Instant::now() + LEASE);
                Ok(())
            })
        }

        fn ended_elsewhere(
            &self,
            records: Vec<i64>,
        ) -> BoxFuture<'_, Result<Vec<i64>, MeterError>> {
            Box::pin(async move {
                self.reach().await?;
                let db = lock(&self.db);
                Ok(records
                    .into_iter()
                    .filter(|r| db.records.get(r).is_some_and(|(_, live)| !live))
                    .collect())
            })
        }

        fn fail_dead_nodes(&self, margin: Duration) -> BoxFuture<'_, Result<u64, MeterError>> {
            Box::pin(async move {
                self.reach().await?;
                let mut db = lock(&self.db);
                let now = Instant::now();
                let dead: Vec<&str> = db
                    .leases
                    .iter()
                    .filter(|(_, until)| **until + margin < now)
                    .map(|(node, _)| *node)
                    .collect();
                let mut n = 0;
                for (node, live) in db.records.values_mut() {
                    if *live && dead.contains(node) {
                        *live = false;
                        n += 1;
                    }
                }
                if n > 0 {
                    db.failed_at = Some(now);
                }
                Ok(n)
            })
        }
    }

    /// A node's sessions: one record, frozen or not, ended or not.
    #[derive(Default)]
    struct Sessions {
        records: Mutex<Vec<i64>>,
        /// When it froze and thawed.
        frozen: Mutex<Vec<(bool, Instant)>>,
        lost: Mutex<Vec<(i64, Instant)>>,
    }

    impl NodeSessions for Sessions {
        fn live_records(&self) -> Vec<i64> {
            lock(&self.records).clone()
        }

        fn freeze(&self, frozen: bool) {
            lock(&self.frozen).push((frozen, Instant::now()));
        }

        fn end_lost(&self, records: Vec<i64>, at: Instant) -> BoxFuture<'_, usize> {
            Box::pin(async move {
                lock(&self.records).retain(|r| !records.contains(r));
                let mut lost = lock(&self.lost);
                lost.extend(records.iter().map(|r| (*r, at)));
                records.len()
            })
        }
    }

    struct Node {
        sessions: Arc<Sessions>,
        fence: Arc<Fence>,
    }

    /// Starts node `name` with live record `record` on `db`.
    fn start(
        db: &Arc<Mutex<Db>>,
        name: &'static str,
        record: i64,
        stop: &CancellationToken,
    ) -> Node {
        let times = LeaseTimes::new(LEASE);
        let joined = Instant::now();
        {
            let mut db = lock(db);
            db.leases.insert(name, joined + LEASE);
            db.records.insert(record, (name, true));
        }
        let sessions = Arc::new(Sessions::default());
        lock(&sessions.records).push(record);
        let fence = Arc::new(Fence::for_lease(times, joined));
        let member = Member {
            db: db.clone(),
            node: name,
        };
        let (s, f, stop) = (sessions.clone(), fence.clone(), stop.clone());
        tokio::spawn(async move { keep(&member, s.as_ref(), &f, times, joined, stop).await });
        Node { sessions, fence }
    }

    fn cut(db: &Arc<Mutex<Db>>, node: &'static str, cut: bool) {
        lock(db).cut.insert(node, cut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_cut_off_fences_itself_well_before_the_others_fail_its_sessions() {
        let db = Arc::new(Mutex::new(Db::default()));
        let stop = CancellationToken::new();
        let a = start(&db, "a", 1, &stop);
        let b = start(&db, "b", 2, &stop);
        tokio::time::sleep(LEASE * 2).await;
        assert!(a.fence.may_serve() && b.fence.may_serve());
        let cut_at = Instant::now();
        cut(&db, "b", true);
        tokio::time::sleep(LEASE * 4).await;
        let fenced_at = match b.fence.state() {
            FenceState::Fenced { since } => since,
            FenceState::Serving => panic!("b never fenced"),
        };
        assert!(!b.fence.may_serve());
        assert!(
            fenced_at - cut_at <= LEASE - LEASE / 4,
            "fenced within L-M of its last renewal"
        );
        let failed_at = lock(&db).failed_at.expect("a failed b's session");
        assert!(
            failed_at - fenced_at >= LEASE / 2,
            "at least 2M between b's fence and a's judgement: {:?}",
            failed_at - fenced_at
        );
        assert!(a.fence.may_serve(), "a is unaffected");
        assert_eq!(lock(&b.sessions.frozen).first().map(|f| f.0), Some(true));

        cut(&db, "b", false);
        tokio::time::sleep(LEASE).await;
        assert!(b.fence.may_serve(), "b serves again after it renewed");
        let lost = lock(&b.sessions.lost).clone();
        assert_eq!(
            lost,
            vec![(2, fenced_at)],
            "its failed session ended as of the fence"
        );
        assert_eq!(lock(&b.sessions.frozen).last().map(|f| f.0), Some(false));
        assert_eq!(lock(&db).records[&1], ("a", true), "a's session lives on");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_database_outage_fails_nobody_and_every_node_thaws_after_it() {
        let db = Arc::new(Mutex::new(Db::default()));
        let stop = CancellationToken::new();
        let a = start(&db, "a", 1, &stop);
        let b = start(&db, "b", 2, &stop);
        tokio::time::sleep(LEASE * 2).await;
        cut(&db, "a", true);
        cut(&db, "b", true);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!a.fence.may_serve() && !b.fence.may_serve(), "both fenced");
        cut(&db, "a", false);
        cut(&db, "b", false);
        let healed = Instant::now();
        while !(a.fence.may_serve() && b.fence.may_serve()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            healed.elapsed() <= Duration::from_secs(1),
            "{:?}",
            healed.elapsed()
        );
        tokio::time::sleep(LEASE * 3).await;
        let db = lock(&db);
        assert_eq!(db.failed_at, None, "nobody failed anybody");
        assert!(db.records.values().all(|(_, live)| *live));
        assert!(lock(&a.sessions.lost).is_empty() && lock(&b.sessions.lost).is_empty());
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_refuses_new_work_before_the_fence_closes() {
        let db = Arc::new(Mutex::new(Db::default()));
        let stop = CancellationToken::new();
        let b = start(&db, "b", 2, &stop);
        tokio::time::sleep(LEASE).await;
        assert_eq!(b.fence.admits(), Ok(()));
        cut(&db, "b", true);
        tokio::time::sleep(renewal_slot(LEASE) * 2 + Duration::from_millis(10)).await;
        assert_eq!(b.fence.admits(), Err(Unavailable::DatabaseUnavailable));
        assert!(b.fence.may_serve(), "its sessions are still served");
        tokio::time::sleep(LEASE).await;
        assert_eq!(b.fence.admits(), Err(Unavailable::Fenced));
        stop.cancel();
    }
}
