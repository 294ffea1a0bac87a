//! Per-minute metering: what each session is billed, durably.
//!
//! A session is billed for every started minute of its life, at least one. Its record is
//! written when it goes live, checkpointed as each new minute starts (so a checkpoint
//! always carries every minute begun so far), and finished when it ends. After a SIGKILL the
//! next start closes the records left live as `failed`/`gateway_restart`, billed up to their
//! last checkpoint.
//!
//! Owns when records are written (the minute clock), per-session traffic counters
//! ([`SessionUsage`]), and the seam to where records are kept ([`ledger`]; the SQLite one
//! is [`store`]). It reads sessions only through [`Billable`]; it must not change a
//! session's state or know about HTTP.

pub(crate) mod ledger;
pub(crate) mod postgres;
pub(crate) mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::sync::lock;
use crate::telemetry;
use crate::vocab::{EndReason, RecordReason, RecordStatus};
use ledger::{Ledger, SqliteLedger};
use store::{Checkpoint, FinalRecord, NewRecord, StoreError, TrafficTotals, UsageSums};
pub(crate) use store::{HistoryQuery, HistoryRow, Retention};

/// Length of a billed minute.
const MINUTE: Duration = Duration::from_secs(60);
/// Checkpoints fire this long after a minute starts, so the new minute is already counted.
const AFTER_BOUNDARY: Duration = Duration::from_millis(1);
/// Attempts at writing a session's final record before the clock takes over retrying it.
const FINISH_ATTEMPTS: u32 = 3;
/// How often the clock retries writes that failed (the database was unreachable).
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Minutes billed for a session that has lasted `duration`: every started minute, at least one.
pub(crate) fn billed_minutes(duration: Duration) -> u64 {
    let minutes = duration.as_millis().div_ceil(MINUTE.as_millis()).max(1);
    u64::try_from(minutes).unwrap_or(u64::MAX)
}

/// What metering needs to read from a session.
pub(crate) trait Billable: Send + Sync {
    fn session_id(&self) -> Uuid;
    /// Wall-clock creation time.
    fn created_at(&self) -> OffsetDateTime;
    /// Time from creation until now, or until the session ended. Never decreases.
    fn billed_duration(&self) -> Duration;
    fn usage(&self) -> &SessionUsage;
    /// CDP events delivered to the session's clients so far.
    fn event_count(&self) -> u64 {
        0
    }
    /// What a client sees of the session, as JSON that metering stores without reading, so
    /// that it can be shown after the session is gone.
    fn details(&self) -> String {
        "{}".into()
    }
}

/// A session's metering state: its record and its CDP traffic so far.
#[derive(Debug, Default)]
pub(crate) struct SessionUsage {
    record_id: OnceLock<i64>,
    /// Minutes already added to the Prometheus counter.
    minutes_counted: AtomicU64,
    bytes_to_browser: AtomicU64,
    bytes_to_client: AtomicU64,
    messages_to_browser: AtomicU64,
    messages_to_client: AtomicU64,
    /// The final record is written (or there was none to write).
    final_written: AtomicBool,
}

impl SessionUsage {
    /// Whether the session's final record is written: `false` while it is being tried, and
    /// while it is owed to a database that did not take it.
    pub(crate) fn final_written(&self) -> bool {
        self.final_written.load(Ordering::Acquire)
    }

    /// The id of the session's usage record, once written.
    pub(crate) fn record_id(&self) -> Option<i64> {
        self.record_id.get().copied()
    }

    /// Pretends the record was written, for tests of code that waits for it.
    #[cfg(test)]
    pub(crate) fn pretend_recorded(&self, record_id: i64) {
        let _ = self.record_id.set(record_id);
    }

    /// Counts one CDP message from a client to the browser.
    pub(crate) fn count_to_browser(&self, bytes: usize) {
        self.messages_to_browser.fetch_add(1, Ordering::Relaxed);
        self.bytes_to_browser
            .fetch_add(bytes as u64, Ordering::Relaxed);
        telemetry::cdp_to_browser(bytes);
    }

    /// Counts one CDP message from the gateway to a client.
    pub(crate) fn count_to_client(&self, bytes: usize) {
        self.messages_to_client.fetch_add(1, Ordering::Relaxed);
        self.bytes_to_client
            .fetch_add(bytes as u64, Ordering::Relaxed);
        telemetry::cdp_to_client(bytes);
    }

    pub(crate) fn totals(&self) -> TrafficTotals {
        TrafficTotals {
            bytes_to_browser: self.bytes_to_browser.load(Ordering::Relaxed),
            bytes_to_client: self.bytes_to_client.load(Ordering::Relaxed),
            messages_to_browser: self.messages_to_browser.load(Ordering::Relaxed),
            messages_to_client: self.messages_to_client.load(Ordering::Relaxed),
        }
    }

    /// Brings the Prometheus counter up to `minutes`. Safe to call from several places at
    /// once: each minute is counted exactly once.
    fn count_minutes(&self, minutes: u64) {
        let before = self.minutes_counted.fetch_max(minutes, Ordering::AcqRel);
        if minutes > before {
            telemetry::billed_minutes(minutes - before);
        }
    }
}

/// The usage database could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("usage database task failed: {0}")]
    Task(String),
    #[error("database: {0}")]
    Database(String),
    /// A record holds a status or reason this ingot does not know.
    #[error(transparent)]
    UnknownWord(#[from] crate::vocab::UnknownWord),
    /// A database call did not finish within its deadline (the database is unreachable,
    /// or the path to it drops packets silently).
    #[error("the database did not answer a {kind} call within {ms} ms")]
    DeadlineExceeded { kind: &'static str, ms: u64 },
    /// A session with this id exists or existed (on any node): ids are never reused.
    #[error("a session with this id exists or existed")]
    Duplicate,
    /// The tenant already has this many live sessions on all nodes together.
    #[error("the tenant already has {0} live sessions in the cluster, its limit")]
    OverQuota(u64),
}

/// Live sessions by when their next minute starts.
#[derive(Default)]
struct Schedule {
    due: BTreeSet<(Instant, i64)>,
    live: HashMap<i64, (Instant, Arc<dyn Billable>)>,
}

impl Schedule {
    fn insert(&mut self, record_id: i64, at: Instant, session: Arc<dyn Billable>) {
        self.remove(record_id);
        self.due.insert((at, record_id));
        self.live.insert(record_id, (at, session));
    }

    fn remove(&mut self, record_id: i64) -> Option<Arc<dyn Billable>> {
        let (at, session) = self.live.remove(&record_id)?;
        self.due.remove(&(at, record_id));
        Some(session)
    }
}

/// Writes the ledger still owes: they failed, and the clock retries them.
#[derive(Default)]
struct Owed {
    /// Final records of sessions that ended.
    finals: Vec<FinalRecord>,
    /// A checkpoint failed: every live session is checkpointed again.
    checkpoints: bool,
    /// When the next retry is due (set when something becomes owed).
    retry_at: Option<Instant>,
}

impl Owed {
    fn is_empty(&self) -> bool {
        self.finals.is_empty() && !self.checkpoints
    }
}

/// The meter: the ledger plus the clock that checkpoints live sessions.
pub(crate) struct Meter {
    ledger: Arc<dyn Ledger>,
    schedule: Mutex<Schedule>,
    owed: Mutex<Owed>,
    /// Wakes the minute clock when the schedule gains an earlier entry.
    changed: Notify,
}

impl Meter {
    /// A meter on one node's ledger, `<data_dir>/usage.sqlite3` (opened, created or
    /// migrated).
    pub(crate) async fn open(data_dir: &Path) -> Result<Arc<Meter>, MeterError> {
        Ok(Meter::new(Arc::new(SqliteLedger::open(data_dir).await?)))
    }

    /// A meter that keeps its records in `ledger`.
    pub(crate) fn new(ledger: Arc<dyn Ledger>) -> Arc<Meter> {
        Arc::new(Meter {
            ledger,
            schedule: Mutex::new(Schedule::default()),
            owed: Mutex::default(),
            changed: Notify::new(),
        })
    }

    /// Closes the records a previous run left live (it was killed): `failed` with reason
    /// `gateway_restart`, billed up to the last checkpoint. Call once, before serving.
    pub(crate) async fn close_abandoned(&self) -> Result<u64, MeterError> {
        let closed = self
            .ledger
            .close_abandoned(RecordReason::GatewayRestart)
            .await?;
        if closed > 0 {
            warn!(
                sessions = closed,
                "closed usage records of the previous run as failed/gateway_restart"
            );
        }
        telemetry::sessions_abandoned(closed);
        Ok(closed)
    }

    /// Writes the first record of a session that is about to be handed to its client, and
    /// starts its minute clock. A session that cannot be metered must not be served.
    pub(crate) async fn start(
        &self,
        session: Arc<dyn Billable>,
        tenant: Option<String>,
        tenant_limit: Option<u64>,
    ) -> Result<(), MeterError> {
        let record = NewRecord {
            session_id: session.session_id(),
            tenant,
            tenant_limit,
            created_at_ms: unix_ms(session.created_at()),
            details: session.details(),
        };
        let record_id = self
            .ledger
            .insert(record)
            .await
            .inspect_err(|_| telemetry::usage_write_error())?;
        let _ = session.usage().record_id.set(record_id);
        session.usage().count_minutes(1);
        let next = next_minute(session.billed_duration());
        lock(&self.schedule).insert(record_id, next, session);
        self.changed.notify_one();
        Ok(())
    }

    /// Writes a session's final record. Call after the session ended; without a record
    /// (it never went live) there is nothing to write.
    pub(crate) async fn finish(&self, session: &dyn Billable, reason: EndReason) {
        let written = &session.usage().final_written;
        let Some(&record_id) = session.usage().record_id.get() else {
            written.store(true, Ordering::Release);
            return;
        };
        lock(&self.schedule).remove(record_id);
        let checkpoint = checkpoint_now(record_id, session);
        session.usage().count_minutes(checkpoint.billed_minutes);
        let record = FinalRecord {
            checkpoint,
            reason: reason.into(),
        };
        for attempt in 1..=FINISH_ATTEMPTS {
            match self.ledger.finish(record).await {
                Ok(()) => {
                    written.store(true, Ordering::Release);
                    return;
                }
                Err(e) => {
                    telemetry::usage_write_error();
                    warn!(session_id = %session.session_id(), error = %e, attempt,
                        "final usage record not written; retrying");
                    if attempt < FINISH_ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    }
                }
            }
        }
        // The clock retries it every second until the database answers. Should this
        // process die first, the next start closes the record at its last checkpoint.
        let mut owed = lock(&self.owed);
        owed.finals.push(record);
        owed.retry_at
            .get_or_insert_with(|| Instant::now() + RETRY_EVERY);
        drop(owed);
        self.changed.notify_one();
    }

    /// Retries the writes that failed, oldest first, stopping at the first that fails
    /// again (the database is still away); what is not written stays owed.
    async fn settle(&self) {
        let (mut finals, checkpoints) = {
            let mut owed = lock(&self.owed);
            owed.retry_at = None;
            (
                std::mem::take(&mut owed.finals),
                std::mem::take(&mut owed.checkpoints),
            )
        };
        let mut written = 0;
        while written < finals.len() && self.ledger.finish(finals[written]).await.is_ok() {
            written += 1;
        }
        let all_finals = written == finals.len();
        finals.drain(..written);
        let checkpointed = !checkpoints || (all_finals && self.flush().await.is_ok());
        let mut owed = lock(&self.owed);
        owed.finals.splice(0..0, finals);
        owed.checkpoints |= !checkpointed;
        if owed.is_empty() {
            info!("usage writes that had failed are written now");
        } else {
            owed.retry_at = Some(Instant::now() + RETRY_EVERY);
        }
    }

    /// Writes again what a client sees of a live session, after it changed.
    pub(crate) async fn details_changed(&self, session: &dyn Billable) -> Result<(), MeterError> {
        match session.usage().record_id.get() {
            Some(&record_id) => self.ledger.set_details(record_id, session.details()).await,
            None => Ok(()),
        }
    }

    /// The records of the sessions this meter is timing (the live ones).
    pub(crate) fn live_records(&self) -> Vec<i64> {
        lock(&self.schedule).live.keys().copied().collect()
    }

    /// Checkpoints every live session now, so that the database holds current figures.
    pub(crate) async fn flush(&self) -> Result<(), MeterError> {
        let live: Vec<(i64, Arc<dyn Billable>)> = lock(&self.schedule)
            .live
            .iter()
            .map(|(id, (_, s))| (*id, s.clone()))
            .collect();
        let checkpoints: Vec<Checkpoint> = live
            .iter()
            .map(|(id, s)| checkpoint_now(*id, s.as_ref()))
            .collect();
        self.write_checkpoints(checkpoints).await
    }

    /// Usage of the sessions created in `[from, to)`, per UTC day, with live sessions'
    /// figures brought up to date first on a single node (in a cluster, as of each live
    /// session's last checkpoint, the same from every node).
    pub(crate) async fn usage_by_day(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        tenant: Option<String>,
    ) -> Result<Vec<(String, UsageSums)>, MeterError> {
        // On a shared ledger every node answers from the records as they are: this node's
        // live sessions are not brought further up to date than the others'.
        if !self.ledger.shared() {
            self.flush().await?;
        }
        self.ledger
            .usage_by_day(unix_ms(from), unix_ms(to), tenant)
            .await
    }

    /// Whether other nodes share this meter's ledger.
    pub(crate) fn shared(&self) -> bool {
        self.ledger.shared()
    }

    /// How many live sessions `tenant` has on every node, when other nodes share the
    /// ledger; `None` on a single node.
    pub(crate) async fn live_in_cluster(&self, tenant: &str) -> Result<Option<u64>, MeterError> {
        self.ledger.live_of_tenant(tenant.to_owned()).await
    }

    /// Whether any record, of any tenant and however old, has this session id.
    pub(crate) async fn session_id_used(&self, session_id: Uuid) -> Result<bool, MeterError> {
        self.ledger.session_id_used(session_id).await
    }

    /// A page of recorded sessions, newest first.
    pub(crate) async fn history_page(
        &self,
        query: HistoryQuery,
    ) -> Result<Vec<HistoryRow>, MeterError> {
        self.ledger.history_page(query).await
    }

    /// How many visible records of `tenant` have `status`.
    pub(crate) async fn history_count(
        &self,
        tenant: Option<String>,
        status: RecordStatus,
        retention: Retention,
    ) -> Result<u64, MeterError> {
        self.ledger.history_count(tenant, status, retention).await
    }

    /// The newest visible record of one session.
    pub(crate) async fn history_get(
        &self,
        session_id: Uuid,
        tenant: Option<String>,
        retention: Retention,
    ) -> Result<Option<HistoryRow>, MeterError> {
        self.ledger.history_get(session_id, tenant, retention).await
    }

    /// The minute clock: checkpoints each live session as each of its minutes starts. Runs
    /// until `shutdown`; final records are written by [`Meter::finish`], not here.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let mut next = lock(&self.schedule).due.first().map(|(at, _)| *at);
            if let Some(retry) = lock(&self.owed).retry_at {
                next = Some(next.map_or(retry, |at| at.min(retry)));
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.changed.notified() => continue,
                _ = sleep => {}
            }
            let now = Instant::now();
            let mut checkpoints = Vec::new();
            {
                let mut schedule = lock(&self.schedule);
                while let Some(&(at, record_id)) = schedule.due.first() {
                    if at > now {
                        break;
                    }
                    let Some(session) = schedule.remove(record_id) else {
                        continue;
                    };
                    let checkpoint = checkpoint_now(record_id, session.as_ref());
                    session.usage().count_minutes(checkpoint.billed_minutes);
                    checkpoints.push(checkpoint);
                    let next = next_minute(session.billed_duration());
                    schedule.insert(record_id, next, session);
                }
            }
            if let Err(e) = self.write_checkpoints(checkpoints).await {
                error!(error = %e, "could not write usage checkpoints; retrying every second");
                let mut owed = lock(&self.owed);
                owed.checkpoints = true;
                owed.retry_at.get_or_insert_with(|| now + RETRY_EVERY);
            }
            let due = lock(&self.owed)
                .retry_at
                .is_some_and(|at| at <= Instant::now());
            if due {
                self.settle().await;
            }
        }
        // One last try, so that a database that came back just now gets what is owed.
        if !lock(&self.owed).is_empty() {
            self.settle().await;
        }
        info!("usage clock stopped");
    }

    async fn write_checkpoints(&self, checkpoints: Vec<Checkpoint>) -> Result<(), MeterError> {
        if checkpoints.is_empty() {
            return Ok(());
        }
        self.ledger
            .checkpoint(checkpoints)
            .await
            .inspect_err(|_| telemetry::usage_write_error())
    }
}

/// The session's figures at this moment.
fn checkpoint_now(record_id: i64, session: &dyn Billable) -> Checkpoint {
    let duration = session.billed_duration();
    let duration_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    Checkpoint {
        record_id,
        at_ms: unix_ms(session.created_at()).saturating_add(duration_ms),
        billed_minutes: billed_minutes(duration),
        traffic: session.usage().totals(),
        event_count: session.event_count(),
    }
}

/// When the next billed minute of a session that has lasted `duration` starts.
fn next_minute(duration: Duration) -> Instant {
    let minutes = u32::try_from(billed_minutes(duration)).unwrap_or(u32::MAX);
    let boundary = MINUTE.saturating_mul(minutes);
    Instant::now() + boundary.saturating_sub(duration) + AFTER_BOUNDARY
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bills_every_started_minute_at_least_one() {
        assert_eq!(billed_minutes(Duration::ZERO), 1);
        assert_eq!(billed_minutes(Duration::from_millis(59_999)), 1);
        assert_eq!(billed_minutes(Duration::from_millis(60_000)), 1);
        assert_eq!(billed_minutes(Duration::from_millis(60_001)), 2);
        assert_eq!(billed_minutes(Duration::from_secs(24 * 3600)), 1440);
    }

    struct Fake {
        id: Uuid,
        created_at: OffsetDateTime,
        elapsed: Mutex<Duration>,
        usage: SessionUsage,
    }

    impl Billable for Fake {
        fn session_id(&self) -> Uuid {
            self.id
        }
        fn created_at(&self) -> OffsetDateTime {
            self.created_at
        }
        fn billed_duration(&self) -> Duration {
            *lock(&self.elapsed)
        }
        fn usage(&self) -> &SessionUsage {
            &self.usage
        }
    }

    #[tokio::test]
    async fn final_record_and_counter_agree_with_the_duration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meter = Meter::open(dir.path()).await.expect("open");
        let session = Arc::new(Fake {
            id: Uuid::new_v4(),
            created_at: OffsetDateTime::now_utc(),
            elapsed: Mutex::new(Duration::from_millis(5)),
            usage: SessionUsage::default(),
        });
        meter
            .start(session.clone(), None, None)
            .await
            .expect("start");
        session.usage.count_to_browser(100);
        session.usage.count_to_client(250);
        session.usage.count_to_client(50);
        *lock(&session.elapsed) = Duration::from_millis(125_000);
        meter
            .finish(session.as_ref(), EndReason::UserRequested)
            .await;
        // Ended records are never touched again, by a flush or by a second finish.
        meter.flush().await.expect("flush");
        meter
            .finish(session.as_ref(), EndReason::BrowserCrashed)
            .await;
        assert_eq!(session.usage.minutes_counted.load(Ordering::Relaxed), 3);

        let now = OffsetDateTime::now_utc();
        let days = meter
            .usage_by_day(
                now - time::Duration::hours(1),
                now + time::Duration::hours(1),
                None,
            )
            .await
            .expect("usage");
        let total: Vec<&UsageSums> = days.iter().map(|(_, s)| s).collect();
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].billed_minutes, 3);
        assert_eq!(total[0].released, 1);
        assert_eq!(total[0].traffic.bytes_to_client, 300);
        assert_eq!(total[0].traffic.messages_to_client, 2);
        assert_eq!(total[0].traffic.bytes_to_browser, 100);
    }
}
