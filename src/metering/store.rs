//! The usage database: one SQLite file (`<data-dir>/usage.sqlite3`, WAL, `synchronous=FULL`)
//! with one record per session: its billing figures, and the facts a client sees of it
//! (`details`, opaque JSON), so that ended sessions can be listed after a restart.
//!
//! Owns the schema, its migrations and every SQL statement. Statuses and reasons are bound
//! as [`RecordStatus`]'s and [`RecordReason`]'s stored words and parsed back into them; the
//! SQL names a status literally only where the schema must (its `CHECK`, which a test holds
//! to [`RecordStatus::ALL`]) and in filters on those same words. Calls block on disk, so the async code in
//! [`super`] runs them on the blocking pool; this module must not know about sessions,
//! clocks or Prometheus.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::vocab::{RecordReason, RecordStatus};

/// File name of the usage database inside the data directory.
pub(crate) const DB_FILE: &str = "usage.sqlite3";
/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    record_id           INTEGER PRIMARY KEY,
    session_id          TEXT    NOT NULL,
    tenant              TEXT,
    created_at_ms       INTEGER NOT NULL,
    ended_at_ms         INTEGER,
    checkpoint_at_ms    INTEGER NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('live', 'released', 'failed')),
    reason              TEXT,
    billed_minutes      INTEGER NOT NULL CHECK (billed_minutes >= 1),
    bytes_to_browser    INTEGER NOT NULL DEFAULT 0,
    bytes_to_client     INTEGER NOT NULL DEFAULT 0,
    messages_to_browser INTEGER NOT NULL DEFAULT 0,
    messages_to_client  INTEGER NOT NULL DEFAULT 0,
    event_count         INTEGER NOT NULL DEFAULT 0,
    details             TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sessions_by_creation ON sessions (created_at_ms);
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status);
CREATE INDEX IF NOT EXISTS sessions_by_tenant ON sessions (tenant, record_id);
CREATE INDEX IF NOT EXISTS sessions_by_session ON sessions (session_id);
";

/// Version 1 to 2: what a client sees of a session, and its event count.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE sessions ADD COLUMN event_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN details TEXT NOT NULL DEFAULT '{}';
";

/// Which records list and retrieve show: those created since `since_ms`, and in any case
/// the newest `newest` of the tenant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Unix milliseconds.
    pub since_ms: i64,
    /// At least 1.
    pub newest: u64,
}

/// A page of history: the records visible to `tenant` (every tenant when `None`), newest
/// first.
#[derive(Debug, Clone)]
pub(crate) struct HistoryQuery {
    /// Only this tenant's records; `None` for every record (a gateway without keys).
    pub tenant: Option<String>,
    /// Only records with this status.
    pub status: Option<RecordStatus>,
    /// Only records older than this one.
    pub before: Option<i64>,
    /// Most records returned.
    pub limit: usize,
    /// What is still shown.
    pub retention: Retention,
}

/// One session as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistoryRow {
    /// The record's id: larger is newer.
    pub record_id: i64,
    /// The session's id.
    pub session_id: Uuid,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// Unix milliseconds; the last checkpoint while live.
    pub ended_at_ms: i64,
    /// Where it stands.
    pub status: RecordStatus,
    /// Why it ended; `None` while it is live.
    pub reason: Option<RecordReason>,
    /// Minutes billed.
    pub billed_minutes: u64,
    /// CDP events delivered to its clients.
    pub event_count: u64,
    /// What a client sees of it, as the session layer wrote it.
    pub details: String,
}

/// The columns of a [`HistoryRow`], in its field order.
const HISTORY_COLUMNS: &str = "record_id, session_id, created_at_ms,
    coalesce(ended_at_ms, checkpoint_at_ms), status, reason, billed_minutes, event_count, details";

/// Records visible to tenant `?1` (all when NULL) under a retention of `?2` (since, Unix
/// milliseconds) and `?3` (the newest kept, less one).
const VISIBLE: &str = "(?1 IS NULL OR tenant = ?1)
    AND (created_at_ms >= ?2 OR record_id >= coalesce(
        (SELECT record_id FROM sessions WHERE (?1 IS NULL OR tenant = ?1)
         ORDER BY record_id DESC LIMIT 1 OFFSET ?3), 0))";

/// Bytes and messages in each direction, as counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TrafficTotals {
    pub bytes_to_browser: u64,
    pub bytes_to_client: u64,
    pub messages_to_browser: u64,
    pub messages_to_client: u64,
}

/// A session's record as first written, when it goes live.
#[derive(Debug, Clone)]
pub(crate) struct NewRecord {
    pub session_id: Uuid,
    pub tenant: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    /// What a client sees of the session (JSON, opaque here).
    pub details: String,
    /// Most live sessions its tenant may have on all nodes together; checked by a ledger
    /// that more than one node writes (a single node counts its own).
    pub tenant_limit: Option<u64>,
}

/// The state of a live session at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoint {
    pub record_id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub billed_minutes: u64,
    pub traffic: TrafficTotals,
    /// CDP events delivered to its clients so far.
    pub event_count: u64,
}

/// How a session ended, written once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FinalRecord {
    pub checkpoint: Checkpoint,
    /// Why it ended; its status follows ([`FinalRecord::status`]).
    pub reason: RecordReason,
}

impl FinalRecord {
    /// The status the record ends with.
    pub(crate) fn status(&self) -> RecordStatus {
        self.reason.status()
    }
}

/// One group of records, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UsageSums {
    pub sessions: u64,
    pub live: u64,
    pub released: u64,
    pub failed: u64,
    pub billed_minutes: u64,
    pub traffic: TrafficTotals,
}

/// An open usage database.
pub(crate) struct UsageStore {
    conn: Connection,
    path: PathBuf,
}

/// Inserts one first record: live, one minute billed.
fn insert_record(conn: &Connection, record: &NewRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (session_id, tenant, created_at_ms, checkpoint_at_ms,
                               status, billed_minutes, details)
         VALUES (?1, ?2, ?3, ?3, 'live', 1, ?4)",
    )?
    .execute(params![
        record.session_id.to_string(),
        record.tenant,
        record.created_at_ms,
        record.details,
    ])?;
    Ok(())
}

/// A database error, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("usage database {path}: {source}")]
pub struct StoreError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

impl UsageStore {
    /// Opens (creating if needed) the database in `data_dir`.
    pub(crate) fn open(data_dir: &Path) -> Result<UsageStore, StoreError> {
        let path = data_dir.join(DB_FILE);
        let wrap = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(wrap)?;
        // WAL lets the usage query read while a checkpoint writes; FULL makes every commit
        // durable before it returns, so a record that was written survives a power cut too.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(wrap)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(wrap)?;
        if version > SCHEMA_VERSION {
            return Err(wrap(rusqlite::Error::InvalidParameterName(format!(
                "schema version {version} is newer than this ingot understands ({SCHEMA_VERSION})"
            ))));
        }
        migrate(&conn, version).map_err(wrap)?;
        Ok(UsageStore { conn, path })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Writes the first record of a session: live, one minute billed. Returns its record id.
    pub(crate) fn insert(&self, record: &NewRecord) -> Result<i64, StoreError> {
        insert_record(&self.conn, record).map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Writes the first records of several sessions in one transaction (one `fsync`).
    /// Returns their record ids, in order; on error, none is written.
    pub(crate) fn insert_all(&mut self, records: &[&NewRecord]) -> Result<Vec<i64>, StoreError> {
        let path = &self.path;
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let mut ids = Vec::with_capacity(records.len());
        for record in records {
            insert_record(&tx, record).map_err(err)?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit().map_err(err)?;
        Ok(ids)
    }

    /// Writes checkpoints of live sessions in one transaction. A record that has already
    /// ended is left as it is, so a late checkpoint can never undo an end.
    pub(crate) fn checkpoint(&mut self, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
        let path = &self.path;
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        for c in checkpoints {
            write_checkpoint(&tx, c).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Writes how a session ended: its last checkpoint, then its end, in one transaction.
    /// Idempotent: only a live record is changed.
    pub(crate) fn finish(&mut self, record: &FinalRecord) -> Result<(), StoreError> {
        let path = &self.path;
        let err = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        let c = &record.checkpoint;
        let tx = self.conn.transaction().map_err(err)?;
        write_checkpoint(&tx, c).map_err(err)?;
        tx.prepare_cached(
            "UPDATE sessions SET ended_at_ms = ?2, status = ?3, reason = ?4
             WHERE record_id = ?1 AND status = 'live'",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                c.record_id,
                c.at_ms,
                record.status().as_str(),
                record.reason.as_str()
            ])
        })
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Replaces the details of a live record.
    pub(crate) fn set_details(&mut self, record_id: i64, details: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE sessions SET details = ?2 WHERE record_id = ?1 AND status = 'live'",
                params![record_id, details],
            )
            .map(drop)
            .map_err(|source| StoreError {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Whether any record, live or ended, however old, has session id `id`.
    pub(crate) fn session_id_used(&self, id: Uuid) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM sessions WHERE session_id = ?1)")
            .and_then(|mut stmt| stmt.query_row(params![id.to_string()], |row| row.get(0)))
            .map_err(|e| self.err(e))
    }

    /// Closes every record a previous run left live with `reason` (and its status), ended
    /// at its last checkpoint and billed up to it. Returns how many were closed.
    pub(crate) fn close_abandoned(&self, reason: RecordReason) -> Result<u64, StoreError> {
        let closed = self
            .conn
            .execute(
                "UPDATE sessions SET status = ?2, reason = ?1, ended_at_ms = checkpoint_at_ms
                 WHERE status = 'live'",
                params![reason.as_str(), reason.status().as_str()],
            )
            .map_err(|e| self.err(e))?;
        Ok(closed as u64)
    }

    /// Sums of the records created in `[from_ms, to_ms)`, per UTC day (`YYYY-MM-DD`), oldest
    /// first. Days without sessions are left out.
    pub(crate) fn usage_by_day(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<(String, UsageSums)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT date(created_at_ms / 1000, 'unixepoch') AS day,
                        count(*),
                        coalesce(sum(status = 'live'), 0),
                        coalesce(sum(status = 'released'), 0),
                        coalesce(sum(status = 'failed'), 0),
                        coalesce(sum(billed_minutes), 0),
                        coalesce(sum(bytes_to_browser), 0),
                        coalesce(sum(bytes_to_client), 0),
                        coalesce(sum(messages_to_browser), 0),
                        coalesce(sum(messages_to_client), 0)
                 FROM sessions
                 WHERE created_at_ms >= ?1 AND created_at_ms < ?2
                   AND (?3 IS NULL OR tenant = ?3)
                 GROUP BY day
                 ORDER BY day",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![from_ms, to_ms, tenant], |row| {
                let n = |i| row.get::<_, i64>(i).map(from_sql);
                Ok((
                    row.get::<_, String>(0)?,
                    UsageSums {
                        sessions: n(1)?,
                        live: n(2)?,
                        released: n(3)?,
                        failed: n(4)?,
                        billed_minutes: n(5)?,
                        traffic: TrafficTotals {
                            bytes_to_browser: n(6)?,
                            bytes_to_client: n(7)?,
                            messages_to_browser: n(8)?,
                            messages_to_client: n(9)?,
                        },
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// A page of the records `query` asks for, newest first.
    pub(crate) fn history_page(&self, query: &HistoryQuery) -> Result<Vec<HistoryRow>, StoreError> {
        let sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM sessions
             WHERE {VISIBLE} AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR record_id < ?5)
             ORDER BY record_id DESC LIMIT ?6"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    query.tenant,
                    query.retention.since_ms,
                    to_sql(query.retention.newest.saturating_sub(1)),
                    query.status.map(RecordStatus::as_str),
                    query.before,
                    to_sql(query.limit as u64),
                ],
                history_row,
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// How many visible records of `tenant` have `status`.
    pub(crate) fn history_count(
        &self,
        tenant: Option<&str>,
        status: RecordStatus,
        retention: Retention,
    ) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) FROM sessions WHERE {VISIBLE} AND status = ?4");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        tenant,
                        retention.since_ms,
                        to_sql(retention.newest.saturating_sub(1)),
                        status.as_str()
                    ],
                    |row| row.get::<_, i64>(0),
                )
            })
            .map(from_sql)
            .map_err(|e| self.err(e))
    }

    /// The newest visible record of session `session_id`.
    pub(crate) fn history_get(
        &self,
        session_id: Uuid,
        tenant: Option<&str>,
        retention: Retention,
    ) -> Result<Option<HistoryRow>, StoreError> {
        let sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM sessions WHERE {VISIBLE} AND session_id = ?4
             ORDER BY record_id DESC LIMIT 1"
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        tenant,
                        retention.since_ms,
                        to_sql(retention.newest.saturating_sub(1)),
                        session_id.to_string()
                    ],
                    history_row,
                )
                .optional()
            })
            .map_err(|e| self.err(e))
    }
}

/// Creates the schema, or brings an older one up to date, in one transaction.
fn migrate(conn: &Connection, version: i64) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    if version == 1 {
        tx.execute_batch(MIGRATE_1_TO_2)?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Brings a live record up to `c`; an ended record is left as it is.
fn write_checkpoint(conn: &Connection, c: &Checkpoint) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE sessions SET checkpoint_at_ms = ?2, billed_minutes = ?3,
            bytes_to_browser = ?4, bytes_to_client = ?5,
            messages_to_browser = ?6, messages_to_client = ?7, event_count = ?8
         WHERE record_id = ?1 AND status = 'live'",
    )?
    .execute(params![
        c.record_id,
        c.at_ms,
        to_sql(c.billed_minutes),
        to_sql(c.traffic.bytes_to_browser),
        to_sql(c.traffic.bytes_to_client),
        to_sql(c.traffic.messages_to_browser),
        to_sql(c.traffic.messages_to_client),
        to_sql(c.event_count),
    ])
}

fn history_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRow> {
    let unreadable = |column: usize, e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e)
    };
    let id: String = row.get(1)?;
    let session_id = Uuid::parse_str(&id).map_err(|e| unreadable(1, Box::new(e)))?;
    let status: String = row.get(4)?;
    let reason: Option<String> = row.get(5)?;
    Ok(HistoryRow {
        record_id: row.get(0)?,
        session_id,
        created_at_ms: row.get(2)?,
        ended_at_ms: row.get(3)?,
        status: status.parse().map_err(|e| unreadable(4, Box::new(e)))?,
        reason: reason.as_deref().map(RecordReason::read),
        billed_minutes: from_sql(row.get(6)?),
        event_count: from_sql(row.get(7)?),
        details: row.get(8)?,
    })
}

/// SQLite integers are signed; counts beyond `i64::MAX` cannot happen in practice, and are
/// clamped rather than wrapped.
pub(super) fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl UsageStore {
        /// The status and reason of one record, for diagnostics and tests.
        pub(crate) fn record_status(
            &self,
            record_id: i64,
        ) -> Result<Option<(String, Option<String>)>, StoreError> {
            self.conn
                .query_row(
                    "SELECT status, reason FROM sessions WHERE record_id = ?1",
                    params![record_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(|e| self.err(e))
        }
    }

    fn checkpoint(record_id: i64, at_ms: i64, minutes: u64) -> Checkpoint {
        Checkpoint {
            record_id,
            at_ms,
            billed_minutes: minutes,
            traffic: TrafficTotals {
                bytes_to_browser: 10,
                bytes_to_client: 20,
                messages_to_browser: 1,
                messages_to_client: 2,
            },
            event_count: 3,
        }
    }

    #[test]
    fn records_live_checkpoint_end_and_close_abandoned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = UsageStore::open(dir.path()).expect("open");
        let day_ms = 86_400_000;
        let new = |n: i64| NewRecord {
            session_id: Uuid::new_v4(),
            tenant: None,
            created_at_ms: 20_000 * day_ms + n,
            details: "{}".into(),
            tenant_limit: None,
        };
        let ended = store.insert(&new(0)).expect("insert");
        let abandoned = store.insert(&new(1)).expect("insert");
        store
            .checkpoint(&[checkpoint(ended, 20_000 * day_ms + 60_001, 2)])
            .expect("checkpoint");
        store
            .finish(&FinalRecord {
                checkpoint: checkpoint(ended, 20_000 * day_ms + 90_000, 2),
                reason: RecordReason::UserRequested,
            })
            .expect("finish");
        // A checkpoint that arrives after the end changes nothing.
        store
            .checkpoint(&[checkpoint(ended, 20_000 * day_ms + 200_000, 4)])
            .expect("late checkpoint");
        assert_eq!(
            store
                .close_abandoned(RecordReason::GatewayRestart)
                .expect("close"),
            1
        );
        assert_eq!(
            store.record_status(abandoned).expect("status"),
            Some(("failed".into(), Some("gateway_restart".into())))
        );
        assert_eq!(
            store.record_status(ended).expect("status"),
            Some(("released".into(), Some("user_requested".into())))
        );

        let days = store.usage_by_day(0, i64::MAX, None).expect("usage");
        assert_eq!(days.len(), 1);
        let (day, sums) = &days[0];
        assert_eq!(day, "2024-10-04");
        assert_eq!(sums.sessions, 2);
        assert_eq!(sums.released, 1);
        assert_eq!(sums.failed, 1);
        assert_eq!(
            sums.billed_minutes, 3,
            "2 for the ended one, 1 for the abandoned"
        );
        assert_eq!(sums.traffic.bytes_to_client, 20);

        drop(store);
        let reopened = UsageStore::open(dir.path()).expect("reopen");
        assert_eq!(
            reopened
                .usage_by_day(0, i64::MAX, Some("nobody"))
                .expect("usage"),
            Vec::new()
        );
    }

    fn insert_many(store: &UsageStore, tenant: Option<&str>, n: usize, at_ms: i64) -> Vec<Uuid> {
        store.conn.execute_batch("BEGIN").expect("begin");
        let ids: Vec<Uuid> = (0..n)
            .map(|i| {
                let id = Uuid::new_v4();
                store
                    .insert(&NewRecord {
                        session_id: id,
                        tenant: tenant.map(str::to_owned),
                        created_at_ms: at_ms + i as i64,
                        details: format!("{{\"n\":{i}}}"),
                        tenant_limit: None,
                    })
                    .expect("insert");
                id
            })
            .collect();
        store.conn.execute_batch("COMMIT").expect("commit");
        ids
    }

    const KEEP_ALL: Retention = Retention {
        since_ms: 0,
        newest: 1,
    };

    #[test]
    fn history_pages_newest_first_and_keeps_the_newest_ten_thousand_of_old_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = UsageStore::open(dir.path()).expect("open");
        let ids = insert_many(&store, Some("alice"), 10_003, 1_000);
        insert_many(&store, Some("bob"), 5, 1_000);
        // Everything is older than the retention time: only the newest 10,000 are shown.
        let retention = Retention {
            since_ms: i64::MAX,
            newest: 10_000,
        };
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let query = HistoryQuery {
                tenant: Some("alice".into()),
                status: None,
                before,
                limit: 100,
                retention,
            };
            let page = store.history_page(&query).expect("page");
            let Some(last) = page.last() else { break };
            before = Some(last.record_id);
            seen.extend(page.iter().map(|r| r.session_id));
        }
        let expected: Vec<Uuid> = ids[3..].iter().rev().copied().collect();
        assert_eq!(seen, expected);
        let count = store.history_count(Some("alice"), RecordStatus::Live, retention);
        assert_eq!(count.expect("count"), 10_000);
        assert!(
            store
                .history_get(ids[2], Some("alice"), retention)
                .expect("get")
                .is_none()
        );
        let kept = store
            .history_get(ids[3], Some("alice"), retention)
            .expect("get");
        assert_eq!(kept.map(|r| r.details), Some("{\"n\":3}".to_owned()));
        // Within the retention time, everything is shown.
        let all = store.history_count(Some("alice"), RecordStatus::Live, KEEP_ALL);
        assert_eq!(all.expect("count"), 10_003);
        assert!(
            store
                .history_get(ids[0], Some("bob"), KEEP_ALL)
                .expect("get")
                .is_none(),
            "tenants see only their own"
        );
        assert_eq!(
            store
                .history_count(None, RecordStatus::Live, KEEP_ALL)
                .expect("count"),
            10_008
        );
    }

    #[test]
    fn history_filters_by_status_and_shows_how_sessions_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = UsageStore::open(dir.path()).expect("open");
        let ids = insert_many(&store, None, 3, 5_000);
        store
            .finish(&FinalRecord {
                checkpoint: checkpoint(2, 95_000, 2),
                reason: RecordReason::Timeout,
            })
            .expect("finish");
        let query = HistoryQuery {
            tenant: None,
            status: Some(RecordStatus::Released),
            before: None,
            limit: 10,
            retention: KEEP_ALL,
        };
        let page = store.history_page(&query).expect("page");
        assert_eq!(page.len(), 1);
        let row = &page[0];
        assert_eq!(
            (row.session_id, row.status, row.reason),
            (ids[1], RecordStatus::Released, Some(RecordReason::Timeout))
        );
        assert_eq!(
            (row.ended_at_ms, row.billed_minutes, row.event_count),
            (95_000, 2, 3)
        );
    }

    /// Every reason is stored under its word, with its status, and reads back as itself.
    #[test]
    fn every_reason_is_stored_as_its_word_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = UsageStore::open(dir.path()).expect("open");
        let ids = insert_many(&store, None, RecordReason::ALL.len(), 1_000);
        for (record_id, reason) in (1..).zip(RecordReason::ALL) {
            store
                .finish(&FinalRecord {
                    checkpoint: checkpoint(record_id, 70_000, 2),
                    reason,
                })
                .expect("finish");
            assert_eq!(
                store.record_status(record_id).expect("status"),
                Some((
                    reason.status().as_str().to_owned(),
                    Some(reason.as_str().to_owned())
                )),
            );
        }
        for (id, reason) in ids.into_iter().zip(RecordReason::ALL) {
            let row = store.history_get(id, None, KEEP_ALL).expect("get");
            let row = row.expect("kept");
            assert_eq!((row.status, row.reason), (reason.status(), Some(reason)));
        }
        let live = insert_many(&store, None, 1, 2_000)[0];
        let row = store.history_get(live, None, KEEP_ALL).expect("get");
        let row = row.expect("kept");
        assert_eq!((row.status, row.reason), (RecordStatus::Live, None));
    }

    /// A reason no ingot writes (a newer node sharing the database did, say) reads as
    /// `browser_crashed`, as before reasons were typed; the record stays readable.
    #[test]
    fn an_unknown_stored_reason_reads_as_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = UsageStore::open(dir.path()).expect("open");
        let id = insert_many(&store, None, 1, 1_000)[0];
        store
            .conn
            .execute_batch("UPDATE sessions SET status = 'failed', reason = 'eaten_by_a_grue'")
            .expect("a word from elsewhere");
        let row = store.history_get(id, None, KEEP_ALL).expect("readable");
        let row = row.expect("kept");
        assert_eq!(
            (row.status, row.reason),
            (RecordStatus::Failed, Some(RecordReason::BrowserCrashed))
        );
    }

    /// The schema refuses any status but the ones the code knows.
    #[test]
    fn the_schema_allows_exactly_the_record_statuses() {
        let words = RecordStatus::ALL.map(|s| format!("'{}'", s.as_str()));
        let check = format!("CHECK (status IN ({}))", words.join(", "));
        assert!(SCHEMA.contains(&check), "{check}");
    }

    #[test]
    fn a_version_one_database_is_migrated_and_keeps_its_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("create");
            conn.execute_batch(
                "CREATE TABLE sessions (
                    record_id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, tenant TEXT,
                    created_at_ms INTEGER NOT NULL, ended_at_ms INTEGER,
                    checkpoint_at_ms INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT,
                    billed_minutes INTEGER NOT NULL, bytes_to_browser INTEGER NOT NULL DEFAULT 0,
                    bytes_to_client INTEGER NOT NULL DEFAULT 0,
                    messages_to_browser INTEGER NOT NULL DEFAULT 0,
                    messages_to_client INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO sessions (session_id, created_at_ms, ended_at_ms, checkpoint_at_ms,
                    status, reason, billed_minutes)
                 VALUES ('123e4567-e89b-12d3-a456-426614174000', 10, 70, 70, 'released',
                    'user_requested', 1);
                 PRAGMA user_version = 1;",
            )
            .expect("a version 1 database");
        }
        let store = UsageStore::open(dir.path()).expect("migrated");
        let id = Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").expect("uuid");
        let row = store
            .history_get(id, None, KEEP_ALL)
            .expect("get")
            .expect("kept");
        assert_eq!(
            (row.details.as_str(), row.event_count, row.ended_at_ms),
            ("{}", 0, 70)
        );
        drop(store);
        assert!(
            UsageStore::open(dir.path()).is_ok(),
            "opening again changes nothing"
        );
    }
}
