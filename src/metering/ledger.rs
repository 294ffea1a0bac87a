//! Where session records are kept, behind one interface: [`Ledger`].
//!
//! Today the one ledger is [`SqliteLedger`], one node's `<data-dir>/usage.sqlite3`; the
//! cluster's PostgreSQL goes behind the same trait. The meter ([`super::Meter`]) decides
//! when to write what; a ledger only keeps records and answers queries. It must not know
//! about sessions' states, clocks or HTTP.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::MeterError;
use super::store::{
    Checkpoint, FinalRecord, HistoryQuery, HistoryRow, NewRecord, Retention, StoreError,
    UsageStore, UsageSums,
};
use crate::sync::lock;
use crate::vocab::{RecordReason, RecordStatus};

/// A durable, shared record of every session: its billing and what a client sees of it.
pub(crate) trait Ledger: Send + Sync + 'static {
    /// Writes the first record of a session (live, one minute billed); returns its id.
    fn insert(&self, record: NewRecord) -> BoxFuture<'_, Result<i64, MeterError>>;
    /// Brings live records up to their checkpoints; ended records are left as they are.
    fn checkpoint(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<(), MeterError>>;
    /// Writes how a session ended. Idempotent: only a live record changes.
    fn finish(&self, record: FinalRecord) -> BoxFuture<'_, Result<(), MeterError>>;
    /// Replaces what a client sees of a live session (its timeout was extended, say); an
    /// ended record is left as it is.
    fn set_details(&self, record_id: i64, details: String)
    -> BoxFuture<'_, Result<(), MeterError>>;
    /// Closes every record this node left live with `reason` (and the status it leads
    /// to), billed up to its last checkpoint; returns how many.
    fn close_abandoned(&self, reason: RecordReason) -> BoxFuture<'_, Result<u64, MeterError>>;
    /// Sums of the records created in `[from_ms, to_ms)`, per UTC day, oldest first.
    fn usage_by_day(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, UsageSums)>, MeterError>>;
    /// A page of records, newest first.
    fn history_page(
        &self,
        query: HistoryQuery,
    ) -> BoxFuture<'_, Result<Vec<HistoryRow>, MeterError>>;
    /// How many visible records of `tenant` have `status`.
    fn history_count(
        &self,
        tenant: Option<String>,
        status: RecordStatus,
        retention: Retention,
    ) -> BoxFuture<'_, Result<u64, MeterError>>;
    /// How many live sessions `tenant` has on every node that writes this ledger; `None`
    /// when this node alone writes it (then its own count is exact and no query is made).
    /// A ledger that other nodes write must count them: the tenant quota across the
    /// cluster rests on it.
    fn live_of_tenant(&self, tenant: String) -> BoxFuture<'_, Result<Option<u64>, MeterError>>;
    /// The newest visible record of one session.
    fn history_get(
        &self,
        session_id: Uuid,
        tenant: Option<String>,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Option<HistoryRow>, MeterError>>;
    /// Whether any record, of any tenant, live or ended, however old (retention only hides
    /// records from lists), has this session id: session ids are never used twice.
    fn session_id_used(&self, session_id: Uuid) -> BoxFuture<'_, Result<bool, MeterError>>;
    /// Whether other nodes write to this ledger too. Then every node answers usage and
    /// lists from the records alone (as of each session's last checkpoint), so that every
    /// node answers the same at the same moment.
    fn shared(&self) -> bool;
}

/// The ledger of a single node: a SQLite file, written on the blocking pool. First records
/// are committed in groups: every insert that arrives while a commit is under way goes
/// into the next one, so a burst of creates waits for one `fsync` together rather than one
/// each in turn.
pub(crate) struct SqliteLedger {
    store: Arc<Mutex<UsageStore>>,
    inserts: Arc<Mutex<InsertQueue>>,
}

/// First records waiting for the next group commit.
#[derive(Default)]
struct InsertQueue {
    waiting: Vec<(NewRecord, oneshot::Sender<Result<i64, MeterError>>)>,
    /// Whether a writer is at work on the blocking pool; it takes what waits until nothing
    /// does.
    writing: bool,
}

impl SqliteLedger {
    /// Opens (or creates, or migrates) `<data_dir>/usage.sqlite3`.
    pub(crate) async fn open(data_dir: &Path) -> Result<SqliteLedger, MeterError> {
        let dir = data_dir.to_path_buf();
        let store = blocking(move || UsageStore::open(&dir)).await?;
        Ok(SqliteLedger {
            store: Arc::new(Mutex::new(store)),
            inserts: Arc::default(),
        })
    }

    /// Runs `f` on the store, off the async runtime.
    fn with<T, F>(&self, f: F) -> BoxFuture<'_, Result<T, MeterError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut UsageStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        blocking(move || f(&mut lock(&store))).boxed()
    }
}

impl Ledger for SqliteLedger {
    fn insert(&self, record: NewRecord) -> BoxFuture<'_, Result<i64, MeterError>> {
        let (done, written) = oneshot::channel();
        let start_writer = {
            let mut queue = lock(&self.inserts);
            queue.waiting.push((record, done));
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            let (store, queue) = (self.store.clone(), self.inserts.clone());
            tokio::task::spawn_blocking(move || write_inserts(&store, &queue));
        }
        async move {
            written
                .await
                .map_err(|_| MeterError::Task("the usage writer stopped".into()))?
        }
        .boxed()
    }

    fn checkpoint(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<(), MeterError>> {
        self.with(move |s| s.checkpoint(&checkpoints))
    }

    fn finish(&self, record: FinalRecord) -> BoxFuture<'_, Result<(), MeterError>> {
        self.with(move |s| s.finish(&record))
    }

    fn set_details(
        &self,
        record_id: i64,
        details: String,
    ) -> BoxFuture<'_, Result<(), MeterError>> {
        self.with(move |s| s.set_details(record_id, &details))
    }

    fn close_abandoned(&self, reason: RecordReason) -> BoxFuture<'_, Result<u64, MeterError>> {
        self.with(move |s| s.close_abandoned(reason))
    }

    fn usage_by_day(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, UsageSums)>, MeterError>> {
        self.with(move |s| s.usage_by_day(from_ms, to_ms, tenant.as_deref()))
    }

    fn history_page(
        &self,
        query: HistoryQuery,
    ) -> BoxFuture<'_, Result<Vec<HistoryRow>, MeterError>> {
        self.with(move |s| s.history_page(&query))
    }

    fn history_count(
        &self,
        tenant: Option<String>,
        status: RecordStatus,
        retention: Retention,
    ) -> BoxFuture<'_, Result<u64, MeterError>> {
        self.with(move |s| s.history_count(tenant.as_deref(), status, retention))
    }

    /// Always `None`: this node alone writes this file, so the admission's own count of
    /// its live sessions is exact, and no query is made.
    fn live_of_tenant(&self, tenant: String) -> BoxFuture<'_, Result<Option<u64>, MeterError>> {
        drop(tenant);
        futures_util::future::ready(Ok(None)).boxed()
    }

    fn history_get(
        &self,
        session_id: Uuid,
        tenant: Option<String>,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Option<HistoryRow>, MeterError>> {
        self.with(move |s| s.history_get(session_id, tenant.as_deref(), retention))
    }

    fn shared(&self) -> bool {
        false
    }

    fn session_id_used(&self, session_id: Uuid) -> BoxFuture<'_, Result<bool, MeterError>> {
        self.with(move |s| s.session_id_used(session_id))
    }
}

/// Commits waiting first records, a group at a time, until none waits. Blocking.
fn write_inserts(store: &Mutex<UsageStore>, queue: &Mutex<InsertQueue>) {
    let _unwinding = ReleaseOnPanic(queue);
    loop {
        let group = {
            let mut queue = lock(queue);
            if queue.waiting.is_empty() {
                queue.writing = false;
                return;
            }
            std::mem::take(&mut queue.waiting)
        };
        let mut store = lock(store);
        let records: Vec<&NewRecord> = group.iter().map(|(record, _)| record).collect();
        match store.insert_all(&records) {
            Ok(ids) => {
                for ((_, done), id) in group.into_iter().zip(ids) {
                    let _ = done.send(Ok(id));
                }
            }
            // One by one, so that each create learns its own error.
            Err(_) => {
                for (record, done) in group {
                    let _ = done.send(store.insert(&record).map_err(MeterError::from));
                }
            }
        }
    }
}

/// Should the writer panic, its waiting creates get an error (their senders are dropped)
/// and the next insert starts a new writer, rather than every later create waiting forever.
struct ReleaseOnPanic<'a>(&'a Mutex<InsertQueue>);

impl Drop for ReleaseOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = lock(self.0);
            queue.waiting.clear();
            queue.writing = false;
        }
    }
}

async fn blocking<T, F>(f: F) -> Result<T, MeterError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MeterError::Task(e.to_string()))?
        .map_err(MeterError::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::*;
    use crate::metering::{Billable, Meter, SessionUsage};
    use crate::vocab::EndReason;

    /// A ledger whose every call fails, as a database that went away would.
    struct Unreachable;

    fn down<T: Send + 'static>() -> BoxFuture<'static, Result<T, MeterError>> {
        async { Err(MeterError::Task("the database is unreachable".into())) }.boxed()
    }

    impl Ledger for Unreachable {
        fn insert(&self, _: NewRecord) -> BoxFuture<'_, Result<i64, MeterError>> {
            down()
        }
        fn checkpoint(&self, _: Vec<Checkpoint>) -> BoxFuture<'_, Result<(), MeterError>> {
            down()
        }
        fn finish(&self, _: FinalRecord) -> BoxFuture<'_, Result<(), MeterError>> {
            down()
        }
        fn set_details(&self, _: i64, _: String) -> BoxFuture<'_, Result<(), MeterError>> {
            down()
        }
        fn close_abandoned(&self, _: RecordReason) -> BoxFuture<'_, Result<u64, MeterError>> {
            down()
        }
        fn usage_by_day(
            &self,
            _: i64,
            _: i64,
            _: Option<String>,
        ) -> BoxFuture<'_, Result<Vec<(String, UsageSums)>, MeterError>> {
            down()
        }
        fn history_page(
            &self,
            _: HistoryQuery,
        ) -> BoxFuture<'_, Result<Vec<HistoryRow>, MeterError>> {
            down()
        }
        fn history_count(
            &self,
            _: Option<String>,
            _: RecordStatus,
            _: Retention,
        ) -> BoxFuture<'_, Result<u64, MeterError>> {
            down()
        }
        fn live_of_tenant(&self, _: String) -> BoxFuture<'_, Result<Option<u64>, MeterError>> {
            down()
        }
        fn history_get(
            &self,
            _: Uuid,
            _: Option<String>,
            _: Retention,
        ) -> BoxFuture<'_, Result<Option<HistoryRow>, MeterError>> {
            down()
        }
        fn shared(&self) -> bool {
            false
        }

        fn session_id_used(&self, _: Uuid) -> BoxFuture<'_, Result<bool, MeterError>> {
            down()
        }
    }

    struct Session(SessionUsage, Uuid);

    impl Billable for Session {
        fn session_id(&self) -> Uuid {
            self.1
        }
        fn created_at(&self) -> OffsetDateTime {
            OffsetDateTime::now_utc()
        }
        fn billed_duration(&self) -> Duration {
            Duration::from_millis(5)
        }
        fn usage(&self) -> &SessionUsage {
            &self.0
        }
    }

    /// The meter depends only on the seam: with a ledger that cannot write, a session
    /// cannot be metered (so it is not served), and nothing is counted as recorded.
    #[tokio::test]
    async fn a_session_is_not_metered_when_its_ledger_cannot_write() {
        let meter = Meter::new(Arc::new(Unreachable));
        let session = Arc::new(Session(SessionUsage::default(), Uuid::new_v4()));
        assert!(meter.start(session.clone(), None, None).await.is_err());
        assert_eq!(session.0.record_id(), None);
        assert!(meter.close_abandoned().await.is_err());
    }

    /// The SQLite ledger round-trips a record through the seam.
    #[tokio::test]
    async fn the_sqlite_ledger_keeps_what_it_is_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meter = Meter::new(Arc::new(
            SqliteLedger::open(dir.path()).await.expect("open"),
        ));
        let session = Arc::new(Session(SessionUsage::default(), Uuid::new_v4()));
        meter
            .start(session.clone(), Some("t".into()), None)
            .await
            .expect("start");
        let retention = Retention {
            since_ms: 0,
            newest: 1,
        };
        let row = meter
            .history_get(session.1, Some("t".into()), retention)
            .await
            .expect("read")
            .expect("recorded");
        assert_eq!((row.status, row.record_id), (RecordStatus::Live, 1));
        assert_eq!(session.0.record_id(), Some(row.record_id));
    }

    /// The SQLite ledger replaces a live record's details (a timeout extended), leaves an
    /// ended one as it is, and counts no other node's sessions.
    #[tokio::test]
    async fn the_sqlite_ledger_keeps_changed_details_and_counts_no_other_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = SqliteLedger::open(dir.path()).await.expect("open");
        let record = |details: &str| NewRecord {
            session_id: Uuid::new_v4(),
            tenant: Some("t".into()),
            created_at_ms: 1,
            details: details.into(),
            tenant_limit: None,
        };
        let (live, ended) = (record("{\"timeout\":1}"), record("{\"timeout\":1}"));
        let (live_id, ended_id) = (live.session_id, ended.session_id);
        let live = ledger.insert(live).await.expect("insert");
        let ended = ledger.insert(ended).await.expect("insert");
        let end = Checkpoint {
            record_id: ended,
            at_ms: 2,
            billed_minutes: 1,
            traffic: Default::default(),
            event_count: 0,
        };
        ledger
            .finish(FinalRecord {
                checkpoint: end,
                reason: RecordReason::Timeout,
            })
            .await
            .expect("finish");
        for id in [live, ended] {
            let details = "{\"timeout\":2}".to_owned();
            ledger.set_details(id, details).await.expect("details");
        }
        let all = Retention {
            since_ms: 0,
            newest: 10,
        };
        let details = |id| {
            let ledger = &ledger;
            async move {
                let row = ledger.history_get(id, None, all).await.expect("read");
                row.expect("recorded").details
            }
        };
        assert_eq!(details(live_id).await, "{\"timeout\":2}");
        assert_eq!(
            details(ended_id).await,
            "{\"timeout\":1}",
            "ended: unchanged"
        );
        let counted = ledger.live_of_tenant("t".into()).await.expect("count");
        assert_eq!(counted, None, "a single node counts its own sessions");
    }

    /// The SQLite ledger, with writes failing while `down` is set: a database that goes
    /// away for a while.
    struct Flaky {
        ledger: SqliteLedger,
        down: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn is_down(&self) -> bool {
            self.down.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Ledger for Flaky {
        fn insert(&self, r: NewRecord) -> BoxFuture<'_, Result<i64, MeterError>> {
            self.ledger.insert(r)
        }
        fn checkpoint(&self, c: Vec<Checkpoint>) -> BoxFuture<'_, Result<(), MeterError>> {
            if self.is_down() {
                down()
            } else {
                self.ledger.checkpoint(c)
            }
        }
        fn finish(&self, r: FinalRecord) -> BoxFuture<'_, Result<(), MeterError>> {
            if self.is_down() {
                down()
            } else {
                self.ledger.finish(r)
            }
        }
        fn set_details(&self, id: i64, d: String) -> BoxFuture<'_, Result<(), MeterError>> {
            self.ledger.set_details(id, d)
        }
        fn close_abandoned(&self, r: RecordReason) -> BoxFuture<'_, Result<u64, MeterError>> {
            self.ledger.close_abandoned(r)
        }
        fn usage_by_day(
            &self,
            from: i64,
            to: i64,
            t: Option<String>,
        ) -> BoxFuture<'_, Result<Vec<(String, UsageSums)>, MeterError>> {
            self.ledger.usage_by_day(from, to, t)
        }
        fn history_page(
            &self,
            q: HistoryQuery,
        ) -> BoxFuture<'_, Result<Vec<HistoryRow>, MeterError>> {
            self.ledger.history_page(q)
        }
        fn history_count(
            &self,
            t: Option<String>,
            s: RecordStatus,
            r: Retention,
        ) -> BoxFuture<'_, Result<u64, MeterError>> {
            self.ledger.history_count(t, s, r)
        }
        fn live_of_tenant(&self, t: String) -> BoxFuture<'_, Result<Option<u64>, MeterError>> {
            self.ledger.live_of_tenant(t)
        }
        fn history_get(
            &self,
            id: Uuid,
            t: Option<String>,
            r: Retention,
        ) -> BoxFuture<'_, Result<Option<HistoryRow>, MeterError>> {
            self.ledger.history_get(id, t, r)
        }
        fn shared(&self) -> bool {
            false
        }

        fn session_id_used(&self, id: Uuid) -> BoxFuture<'_, Result<bool, MeterError>> {
            self.ledger.session_id_used(id)
        }
    }

    /// A final record that cannot be written while the database is away is owed, and the
    /// minute clock writes it once the database answers again.
    #[tokio::test]
    async fn a_final_record_refused_by_the_database_is_written_once_it_is_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Arc::new(Flaky {
            ledger: SqliteLedger::open(dir.path()).await.expect("open"),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let meter = Meter::new(ledger.clone());
        let session = Arc::new(Session(SessionUsage::default(), Uuid::new_v4()));
        meter
            .start(session.clone(), None, None)
            .await
            .expect("start");
        let written = Arc::new(Session(SessionUsage::default(), Uuid::new_v4()));
        meter
            .start(written.clone(), None, None)
            .await
            .expect("start");
        assert!(!written.0.final_written(), "not before it ended");
        meter
            .finish(written.as_ref(), EndReason::UserRequested)
            .await;
        assert!(written.0.final_written(), "a release may answer 200");
        ledger.down.store(true, std::sync::atomic::Ordering::SeqCst);
        meter
            .finish(session.as_ref(), EndReason::UserRequested)
            .await;
        assert!(
            !session.0.final_written(),
            "a release must not answer 200 for a record the database did not take"
        );
        let retention = Retention {
            since_ms: 0,
            newest: 1,
        };
        let status = || async {
            let row = meter
                .history_get(session.1, None, retention)
                .await
                .expect("read");
            row.expect("recorded").status
        };
        assert_eq!(
            status().await,
            RecordStatus::Live,
            "not written while the database is away"
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let clock = tokio::spawn(meter.clone().run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(status().await, RecordStatus::Live, "still away");
        ledger
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while status().await != RecordStatus::Released {
            assert!(
                std::time::Instant::now() < deadline,
                "the owed record was never written"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.cancel();
        clock.await.expect("clock");
    }

    /// Creates that arrive together are committed together, and each gets its own record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_records_that_arrive_together_are_all_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Arc::new(SqliteLedger::open(dir.path()).await.expect("ledger"));
        let ids: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
        let inserts = ids.iter().map(|id| {
            let ledger = ledger.clone();
            let record = NewRecord {
                session_id: *id,
                tenant: None,
                created_at_ms: 1,
                details: "{}".into(),
                tenant_limit: None,
            };
            tokio::spawn(async move { ledger.insert(record).await })
        });
        let mut record_ids: Vec<i64> = futures_util::future::join_all(inserts)
            .await
            .into_iter()
            .map(|r| r.expect("task").expect("written"))
            .collect();
        record_ids.sort_unstable();
        record_ids.dedup();
        assert_eq!(record_ids.len(), ids.len(), "one record each");
        let all = Retention {
            since_ms: 0,
            newest: 1_000,
        };
        for id in ids {
            let row = ledger.history_get(id, None, all).await.expect("read");
            assert!(row.is_some(), "{id} was written");
        }
    }

    /// A writer that panics answers its waiting creates with an error and lets the next
    /// insert start a new writer.
    #[test]
    fn a_writer_that_panics_leaves_no_create_waiting() {
        let queue = Mutex::new(InsertQueue::default());
        let (done, answer) = oneshot::channel();
        let record = NewRecord {
            session_id: Uuid::new_v4(),
            tenant: None,
            created_at_ms: 1,
            details: "{}".into(),
            tenant_limit: None,
        };
        {
            let mut q = lock(&queue);
            q.waiting.push((record, done));
            q.writing = true;
        }
        let panicked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _unwinding = ReleaseOnPanic(&queue);
                    panic!("the writer fails");
                })
                .join()
        });
        assert!(panicked.is_err());
        let q = lock(&queue);
        assert!(!q.writing && q.waiting.is_empty());
        drop(q);
        assert!(answer.blocking_recv().is_err(), "the create is answered");
    }
}
