//! The cluster's ledger: one PostgreSQL database that every node writes to (`--database-url`).
//!
//! Owns the PostgreSQL schema, its versioned migrations (applied once, under an advisory
//! lock, so that nodes starting together are safe) and every statement. Each record names the
//! node that runs its session, so that a restarting node closes only its own abandoned
//! records. Statuses and reasons are bound as `vocab::RecordStatus`'s and `RecordReason`'s
//! stored words and parsed back into them (an unknown status is `MeterError::UnknownWord`; an unknown reason reads as a crash);
//! the SQL names a status literally only in the schema (its `CHECK`, held to
//! `RecordStatus::ALL` by a test, and the partial indexes) and in filters that must match
//! those indexes. It must not know about sessions' states, clocks or HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls, Row};
use uuid::Uuid;

use super::MeterError;
use super::ledger::Ledger;
use super::store::{
    Checkpoint, FinalRecord, HistoryQuery, HistoryRow, NewRecord, Retention, TrafficTotals,
    UsageSums, from_sql, to_sql,
};
use crate::sync::lock;
use crate::telemetry;
use crate::vocab::{RecordReason, RecordStatus};

/// Key of the advisory lock held while migrations run.
const MIGRATION_LOCK: i64 = 0x696e_676f_7400_0001;
/// Most connections one node holds for its records and the directory.
const POOL_SIZE: usize = 8;
/// Connections one node holds for its lease.
const LEASE_POOL_SIZE: usize = 2;

/// Every migration, in order; the position is the version (1-based).
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE ingot_sessions (
    record_id           BIGSERIAL PRIMARY KEY,
    session_id          TEXT    NOT NULL,
    tenant              TEXT,
    node                TEXT    NOT NULL,
    created_at_ms       BIGINT  NOT NULL,
    ended_at_ms         BIGINT,
    checkpoint_at_ms    BIGINT  NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('live', 'released', 'failed')),
    reason              TEXT,
    billed_minutes      BIGINT  NOT NULL CHECK (billed_minutes >= 1),
    bytes_to_browser    BIGINT  NOT NULL DEFAULT 0,
    bytes_to_client     BIGINT  NOT NULL DEFAULT 0,
    messages_to_browser BIGINT  NOT NULL DEFAULT 0,
    messages_to_client  BIGINT  NOT NULL DEFAULT 0,
    event_count         BIGINT  NOT NULL DEFAULT 0,
    details             TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX ingot_sessions_by_creation ON ingot_sessions (created_at_ms);
CREATE INDEX ingot_sessions_by_tenant ON ingot_sessions (tenant, record_id);
CREATE INDEX ingot_sessions_by_session ON ingot_sessions (session_id);
CREATE INDEX ingot_sessions_live_by_node ON ingot_sessions (node) WHERE status = 'live';
",
    "
CREATE TABLE ingot_nodes (
    node           TEXT   PRIMARY KEY,
    host           TEXT   NOT NULL,
    data_dir       TEXT   NOT NULL,
    advertise_url  TEXT,
    lease_until_ms BIGINT NOT NULL,
    joined_at_ms   BIGINT NOT NULL
);
",
    "
ALTER TABLE ingot_nodes
    ADD COLUMN free_slots BIGINT  NOT NULL DEFAULT 0,
    ADD COLUMN ready      BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE ingot_cluster (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    secret TEXT    NOT NULL
);
CREATE INDEX ingot_sessions_live_by_tenant ON ingot_sessions (tenant) WHERE status = 'live';
CREATE UNIQUE INDEX ingot_sessions_one_live_id ON ingot_sessions (session_id)
    WHERE status = 'live';
",
];

/// Whether any record has session id `$1` (`ingot_sessions_by_session` answers it).
const SESSION_ID_USED: &str = "SELECT EXISTS (SELECT 1 FROM ingot_sessions WHERE session_id = $1)";

/// First key of the advisory locks (one per tenant, the second key) held while a tenant's
/// live sessions are counted against its quota and a new one is recorded.
const QUOTA_LOCK: i32 = 0x696e_6701;

/// The columns of a [`HistoryRow`], in its field order.
const HISTORY_COLUMNS: &str = "record_id, session_id, created_at_ms,
    coalesce(ended_at_ms, checkpoint_at_ms), status, reason, billed_minutes, event_count, details";

/// Records visible to tenant `$1` (all when NULL) under a retention of `$2` (since, Unix
/// milliseconds) and `$3` (the newest kept, less one).
const VISIBLE: &str = "($1::text IS NULL OR tenant = $1)
    AND (created_at_ms >= $2 OR record_id >= coalesce(
        (SELECT record_id FROM ingot_sessions WHERE ($1::text IS NULL OR tenant = $1)
         ORDER BY record_id DESC LIMIT 1 OFFSET $3), 0))";

/// How long each kind of database call may take, and how fast a dead path is noticed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// A lease call (join, renew, leave): one renewal slot.
    pub lease: Duration,
    /// Every other call: connect, pool checkout, query and transaction together.
    pub call: Duration,
    /// How long unacknowledged data or unanswered keepalives may last before the kernel
    /// calls a connection dead (`TCP_USER_TIMEOUT`, keepalive probes).
    pub dead_path: Duration,
}

impl Deadlines {
    /// The deadlines for a node whose lease lasts `lease`: a renewal gets one slot (a sixth
    /// of the lease), any other call a third of it (at least 1 s, at most 10 s), and a
    /// silently dropped path is noticed within a third of it.
    pub(crate) fn for_lease(lease: Duration) -> Deadlines {
        let third = lease / 3;
        Deadlines {
            lease: renewal_slot(lease),
            call: third.clamp(Duration::from_secs(1), Duration::from_secs(10)),
            dead_path: third,
        }
    }

    fn of(&self, kind: DbCall) -> Duration {
        match kind {
            DbCall::Lease => self.lease,
            DbCall::Migrate => MIGRATE_DEADLINE,
            DbCall::Membership | DbCall::Write | DbCall::Read => self.call,
        }
    }
}

/// How often a node renews its lease, and how long one renewal may take: a sixth of the
/// lease, at least 100 ms.
pub(crate) fn renewal_slot(lease: Duration) -> Duration {
    (lease / 6).max(Duration::from_millis(100))
}

/// What a database call is for: it picks the call's deadline and labels its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbCall {
    /// This node's lease: join, renew, leave.
    Lease,
    /// What nodes learn of each other: capacity, live nodes, owners, dead nodes, the secret.
    Membership,
    /// A session's usage record: insert, checkpoint, finish, details, closing abandoned ones.
    Write,
    /// Reads for the API: history, usage, quotas, ids.
    Read,
    /// Schema migrations at start.
    Migrate,
}

impl DbCall {
    /// Every kind; their labels are `telemetry::DATABASE_CALL_KINDS`.
    #[cfg(test)]
    const ALL: [DbCall; 5] = [
        DbCall::Lease,
        DbCall::Membership,
        DbCall::Write,
        DbCall::Read,
        DbCall::Migrate,
    ];

    /// The `kind` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DbCall::Lease => "lease",
            DbCall::Membership => "membership",
            DbCall::Write => "write",
            DbCall::Read => "read",
            DbCall::Migrate => "migrate",
        }
    }
}

/// Longest a start's migrations may take.
const MIGRATE_DEADLINE: Duration = Duration::from_secs(60);

/// The ledger in PostgreSQL, for the node `node`.
pub(crate) struct PgLedger {
    pool: Pool,
    /// Connections for the lease alone (join, renew, leave).
    lease_pool: Pool,
    node: String,
    deadlines: Deadlines,
    /// When a call last overran its deadline: connections opened before then may hang on a
    /// dead path and are not handed out again.
    overran_at: Arc<Mutex<Option<std::time::Instant>>>,
}

fn db(e: impl std::fmt::Display) -> MeterError {
    MeterError::Database(e.to_string())
}

impl PgLedger {
    /// Connects to `url`, checks that the database answers, and brings its schema up to date.
    /// Every call it makes later ends within `deadlines`.
    pub(crate) async fn connect(
        url: &str,
        node: &str,
        deadlines: Deadlines,
    ) -> Result<PgLedger, MeterError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(db)?;
        watch_the_path(&mut config, &deadlines);
        let overran_at: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let pool = pool(config.clone(), POOL_SIZE, &deadlines, &overran_at)?;
        // The lease has connections of its own, so that other traffic neither starves a
        // renewal nor retires the connection it is about to use.
        let lease_pool = pool_for_lease(config, &deadlines)?;
        let ledger = PgLedger {
            pool,
            lease_pool,
            node: node.to_owned(),
            deadlines,
            overran_at,
        };
        ledger.call(DbCall::Migrate, ledger.migrate()).await?;
        Ok(ledger)
    }

    /// Runs one database call of `kind` within its deadline, timing it. A call that overruns
    /// is abandoned, and the connections opened before it are not used again (one of them
    /// may be stuck on a dead path).
    pub(crate) async fn call<T>(
        &self,
        kind: DbCall,
        work: impl Future<Output = Result<T, MeterError>>,
    ) -> Result<T, MeterError> {
        let deadline = self.deadlines.of(kind);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(deadline, work).await;
        telemetry::database_call(kind.as_str(), started.elapsed());
        result.unwrap_or_else(|_| {
            telemetry::database_timeout(kind.as_str());
            // A slow read is cut short by the server's statement_timeout and leaves its
            // connection usable; any other overrun may mean a dead path.
            if kind != DbCall::Read {
                *lock(&self.overran_at) = Some(std::time::Instant::now());
                self.pool.retain(|_, _| false);
                self.lease_pool.retain(|_, _| false);
            }
            Err(MeterError::DeadlineExceeded {
                kind: kind.as_str(),
                ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            })
        })
    }

    /// Applies the migrations this database lacks, in one transaction under an advisory lock.
    async fn migrate(&self) -> Result<(), MeterError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        // Waiting for another node's migrations may take longer than one ordinary call.
        let wait = format!(
            "SET LOCAL statement_timeout = {}",
            MIGRATE_DEADLINE.as_millis()
        );
        tx.batch_execute(&wait).await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS ingot_migrations (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
        let applied: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM ingot_migrations",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        let known = MIGRATIONS.len() as i32;
        if applied > known {
            return Err(MeterError::Database(format!(
                "the database's schema version {applied} is newer than this ingot understands ({known})"
            )));
        }
        for (version, sql) in (1..).zip(MIGRATIONS).skip(applied as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute(
                "INSERT INTO ingot_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// A connection for the lease (join, renew, leave).
    pub(crate) async fn lease_client(&self) -> Result<deadpool_postgres::Object, MeterError> {
        self.lease_pool.get().await.map_err(db)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, MeterError> {
        self.pool.get().await.map_err(db)
    }
}

fn history_row(row: &Row) -> Result<HistoryRow, MeterError> {
    let id: String = row.get(1);
    let reason: Option<&str> = row.get(5);
    Ok(HistoryRow {
        record_id: row.get(0),
        session_id: Uuid::parse_str(&id).map_err(db)?,
        created_at_ms: row.get(2),
        ended_at_ms: row.get(3),
        status: row.get::<_, &str>(4).parse()?,
        reason: reason.map(RecordReason::read),
        billed_minutes: from_sql(row.get(6)),
        event_count: from_sql(row.get(7)),
        details: row.get(8),
    })
}

/// Fails with [`MeterError::OverQuota`] when `tenant` already has `limit` live sessions on
/// any node. Holds the tenant's advisory lock until `tx` ends, so that creates on different
/// nodes are counted one after the other: never one session over the quota.
async fn within_quota(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    limit: u64,
) -> Result<(), MeterError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&QUOTA_LOCK, &tenant],
    )
    .await
    .map_err(db)?;
    let live: i64 = tx
        .query_one(
            "SELECT count(*) FROM ingot_sessions WHERE status = 'live' AND tenant = $1",
            &[&tenant],
        )
        .await
        .map_err(db)?
        .get(0);
    if from_sql(live) >= limit {
        return Err(MeterError::OverQuota(limit));
    }
    Ok(())
}

/// Brings a live record up to `c`; an ended record is left as it is.
async fn write_checkpoint(
    tx: &deadpool_postgres::Transaction<'_>,
    c: &Checkpoint,
) -> Result<(), MeterError> {
    let sql = "UPDATE ingot_sessions SET checkpoint_at_ms = $2, billed_minutes = $3,
            bytes_to_browser = $4, bytes_to_client = $5,
            messages_to_browser = $6, messages_to_client = $7, event_count = $8
         WHERE record_id = $1 AND status = 'live'";
    with_figures(tx, sql, c).await
}

/// Runs `sql` with a checkpoint's figures as its parameters: `$1` the record, `$2` the
/// moment, `$3` the billed minutes, `$4`–`$7` the traffic, `$8` the events.
async fn with_figures(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    c: &Checkpoint,
) -> Result<(), MeterError> {
    let t = c.traffic;
    tx.execute(
        sql,
        &[
            &c.record_id,
            &c.at_ms,
            &to_sql(c.billed_minutes),
            &to_sql(t.bytes_to_browser),
            &to_sql(t.bytes_to_client),
            &to_sql(t.messages_to_browser),
            &to_sql(t.messages_to_client),
            &to_sql(c.event_count),
        ],
    )
    .await
    .map(drop)
    .map_err(db)
}

/// A pool of at most `size` connections made with `config`, waiting and connecting within
/// the call deadline; a connection opened before the last overrun (`overran_at`) is not
/// handed out again.
fn pool(
    config: tokio_postgres::Config,
    size: usize,
    deadlines: &Deadlines,
    overran_at: &Arc<Mutex<Option<std::time::Instant>>>,
) -> Result<Pool, MeterError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let seen = overran_at.clone();
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(deadlines.call))
        .create_timeout(Some(deadlines.call))
        .recycle_timeout(Some(deadlines.call))
        .pre_recycle(Hook::sync_fn(move |_, metrics| match *lock(&seen) {
            Some(at) if metrics.created <= at => Err(HookError::message(
                "opened before a call overran its deadline",
            )),
            _ => Ok(()),
        }))
        .build()
        .map_err(db)
}

/// The lease's own connections: two, opened within a renewal slot.
fn pool_for_lease(
    config: tokio_postgres::Config,
    deadlines: &Deadlines,
) -> Result<Pool, MeterError> {
    let mut lease = *deadlines;
    lease.call = deadlines.lease;
    pool(config, LEASE_POOL_SIZE, &lease, &Arc::default())
}

/// Sets the connection's own deadlines: opening it, TCP keepalives and `TCP_USER_TIMEOUT`,
/// so that a silently dropped path fails within `dead_path` instead of hanging, and a
/// server-side `statement_timeout` as a second line behind the client's deadlines.
fn watch_the_path(config: &mut tokio_postgres::Config, deadlines: &Deadlines) {
    let probe = (deadlines.dead_path / 3).max(Duration::from_secs(1));
    config
        .connect_timeout(deadlines.call)
        .keepalives(true)
        .keepalives_idle(probe)
        .keepalives_interval(probe)
        .keepalives_retries(2)
        .tcp_user_timeout(deadlines.dead_path);
    let statement = format!("-c statement_timeout={}", deadlines.call.as_millis());
    let options = match config.get_options() {
        Some(theirs) if !theirs.is_empty() => format!("{theirs} {statement}"),
        _ => statement,
    };
    config.options(&options);
}

/// A session another node failed while this one was cut off (`node_lost`, billed up to its
/// last checkpoint) gets this node's own figures: every minute it was served is billed,
/// and its traffic and end are what this node saw. The status and reason stay.
async fn correct_lost(
    tx: &deadpool_postgres::Transaction<'_>,
    c: &Checkpoint,
) -> Result<(), MeterError> {
    let lost = RecordReason::NodeLost;
    let sql = format!(
        "UPDATE ingot_sessions SET
            billed_minutes = greatest(billed_minutes, $3),
            bytes_to_browser = greatest(bytes_to_browser, $4),
            bytes_to_client = greatest(bytes_to_client, $5),
            messages_to_browser = greatest(messages_to_browser, $6),
            messages_to_client = greatest(messages_to_client, $7),
            event_count = greatest(event_count, $8),
            ended_at_ms = greatest(ended_at_ms, $2),
            checkpoint_at_ms = greatest(checkpoint_at_ms, $2)
         WHERE record_id = $1 AND status = '{}' AND reason = '{}'",
        lost.status().as_str(),
        lost.as_str()
    );
    with_figures(tx, &sql, c).await
}

impl PgLedger {
    async fn insert_now(&self, record: NewRecord) -> Result<i64, MeterError> {
        self.call(DbCall::Write, async move {
            let sql = "INSERT INTO ingot_sessions (session_id, tenant, node, created_at_ms,
                checkpoint_at_ms, status, billed_minutes, details)
             VALUES ($1, $2, $3, $4, $4, 'live', 1, $5) RETURNING record_id";
            let id = record.session_id.to_string();
            let mut client = self.client().await?;
            // The quota count must see every record committed before the tenant's lock was
            // taken: one statement snapshot each, whatever the database's default isolation.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()
                .await
                .map_err(db)?;
            if let (Some(tenant), Some(limit)) = (&record.tenant, record.tenant_limit) {
                within_quota(&tx, tenant, limit).await?;
            }
            // An ended record of this id (on any node) refuses it too: ids are never reused. A
            // concurrent live insert of the same id is refused by the unique index.
            if id_recorded(&tx, &id).await? {
                return Err(MeterError::Duplicate);
            }
            let row = tx
                .query_one(
                    sql,
                    &[
                        &id,
                        &record.tenant,
                        &self.node,
                        &record.created_at_ms,
                        &record.details,
                    ],
                )
                .await
                .map_err(|e| match e.code() {
                    Some(&SqlState::UNIQUE_VIOLATION) => MeterError::Duplicate,
                    _ => db(e),
                })?;
            tx.commit().await.map_err(db)?;
            Ok(row.get(0))
        })
        .await
    }

    async fn checkpoint_now(&self, checkpoints: Vec<Checkpoint>) -> Result<(), MeterError> {
        self.call(DbCall::Write, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            for c in &checkpoints {
                write_checkpoint(&tx, c).await?;
            }
            tx.commit().await.map_err(db)
        })
        .await
    }

    async fn finish_now(&self, record: FinalRecord) -> Result<(), MeterError> {
        self.call(DbCall::Write, async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let c = &record.checkpoint;
            write_checkpoint(&tx, c).await?;
            tx.execute(
                "UPDATE ingot_sessions SET ended_at_ms = $2, status = $3, reason = $4
                 WHERE record_id = $1 AND status = 'live'",
                &[
                    &c.record_id,
                    &c.at_ms,
                    &record.status().as_str(),
                    &record.reason.as_str(),
                ],
            )
            .await
            .map_err(db)?;
            correct_lost(&tx, c).await?;
            tx.commit().await.map_err(db)
        })
        .await
    }

    async fn close_abandoned_now(&self, reason: RecordReason) -> Result<u64, MeterError> {
        self.call(DbCall::Write, async move {
            self.client()
                .await?
                .execute(
                    "UPDATE ingot_sessions
                 SET status = $3, reason = $1, ended_at_ms = checkpoint_at_ms
                 WHERE status = 'live' AND node = $2",
                    &[&reason.as_str(), &self.node, &reason.status().as_str()],
                )
                .await
                .map_err(db)
        })
        .await
    }

    async fn usage_by_day_now(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<String>,
    ) -> Result<Vec<(String, UsageSums)>, MeterError> {
        self.call(DbCall::Read, async move {
            let sql = "SELECT to_char(to_timestamp(created_at_ms / 1000.0) AT TIME ZONE 'UTC',
                           'YYYY-MM-DD') AS day,
                   count(*)::bigint,
                   count(*) FILTER (WHERE status = 'live')::bigint,
                   count(*) FILTER (WHERE status = 'released')::bigint,
                   count(*) FILTER (WHERE status = 'failed')::bigint,
                   coalesce(sum(billed_minutes), 0)::bigint,
                   coalesce(sum(bytes_to_browser), 0)::bigint,
                   coalesce(sum(bytes_to_client), 0)::bigint,
                   coalesce(sum(messages_to_browser), 0)::bigint,
                   coalesce(sum(messages_to_client), 0)::bigint
             FROM ingot_sessions
             WHERE created_at_ms >= $1 AND created_at_ms < $2
               AND ($3::text IS NULL OR tenant = $3)
             GROUP BY day ORDER BY day";
            let rows = self
                .client()
                .await?
                .query(sql, &[&from_ms, &to_ms, &tenant])
                .await
                .map_err(db)?;
            Ok(rows.iter().map(usage_row).collect())
        })
        .await
    }

    async fn history_page_now(&self, query: HistoryQuery) -> Result<Vec<HistoryRow>, MeterError> {
        self.call(DbCall::Read, async move {
            let sql = format!(
                "SELECT {HISTORY_COLUMNS} FROM ingot_sessions
             WHERE {VISIBLE} AND ($4::text IS NULL OR status = $4)
               AND ($5::bigint IS NULL OR record_id < $5)
             ORDER BY record_id DESC LIMIT $6"
            );
            let r = query.retention;
            let status = query.status.map(RecordStatus::as_str);
            let rows = self
                .client()
                .await?
                .query(
                    &sql,
                    &[
                        &query.tenant,
                        &r.since_ms,
                        &to_sql(r.newest.saturating_sub(1)),
                        &status,
                        &query.before,
                        &to_sql(query.limit as u64),
                    ],
                )
                .await
                .map_err(db)?;
            rows.iter().map(history_row).collect()
        })
        .await
    }

    async fn history_count_now(
        &self,
        tenant: Option<String>,
        status: RecordStatus,
        r: Retention,
    ) -> Result<u64, MeterError> {
        self.call(DbCall::Read, async move {
            let sql =
                format!("SELECT count(*) FROM ingot_sessions WHERE {VISIBLE} AND status = $4");
            let row = self
                .client()
                .await?
                .query_one(
                    &sql,
                    &[
                        &tenant,
                        &r.since_ms,
                        &to_sql(r.newest.saturating_sub(1)),
                        &status.as_str(),
                    ],
                )
                .await
                .map_err(db)?;
            Ok(from_sql(row.get(0)))
        })
        .await
    }

    async fn history_get_now(
        &self,
        session_id: Uuid,
        tenant: Option<String>,
        r: Retention,
    ) -> Result<Option<HistoryRow>, MeterError> {
        self.call(DbCall::Read, async move {
            let sql = format!(
                "SELECT {HISTORY_COLUMNS} FROM ingot_sessions WHERE {VISIBLE} AND session_id = $4
             ORDER BY record_id DESC LIMIT 1"
            );
            let id = session_id.to_string();
            let rows = self
                .client()
                .await?
                .query(
                    &sql,
                    &[
                        &tenant,
                        &r.since_ms,
                        &to_sql(r.newest.saturating_sub(1)),
                        &id,
                    ],
                )
                .await
                .map_err(db)?;
            rows.first().map(history_row).transpose()
        })
        .await
    }
}

fn usage_row(row: &Row) -> (String, UsageSums) {
    let n = |i: usize| from_sql(row.get::<_, i64>(i));
    (
        row.get(0),
        UsageSums {
            sessions: n(1),
            live: n(2),
            released: n(3),
            failed: n(4),
            billed_minutes: n(5),
            traffic: TrafficTotals {
                bytes_to_browser: n(6),
                bytes_to_client: n(7),
                messages_to_browser: n(8),
                messages_to_client: n(9),
            },
        },
    )
}

/// Runs a lookup of the cluster's directory, timing it for
/// `ingot_cluster_directory_query_seconds`.
async fn timed<T>(lookup: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = lookup.await;
    telemetry::directory_query(started.elapsed());
    result
}

impl Ledger for PgLedger {
    fn set_details(
        &self,
        record_id: i64,
        details: String,
    ) -> BoxFuture<'_, Result<(), MeterError>> {
        self.call(DbCall::Write, async move {
            self.client()
                .await?
                .execute(
                    "UPDATE ingot_sessions SET details = $2 WHERE record_id = $1 AND status = 'live'",
                    &[&record_id, &details],
                )
                .await
                .map(drop)
                .map_err(db)
        })
        .boxed()
    }

    fn live_of_tenant(&self, tenant: String) -> BoxFuture<'_, Result<Option<u64>, MeterError>> {
        self.call(DbCall::Read, async move {
            let row = self
                .client()
                .await?
                .query_one(
                    "SELECT count(*) FROM ingot_sessions WHERE status = 'live' AND tenant = $1",
                    &[&tenant],
                )
                .await
                .map_err(db)?;
            Ok(Some(from_sql(row.get(0))))
        })
        .boxed()
    }

    fn insert(&self, record: NewRecord) -> BoxFuture<'_, Result<i64, MeterError>> {
        self.insert_now(record).boxed()
    }

    fn checkpoint(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<(), MeterError>> {
        self.checkpoint_now(checkpoints).boxed()
    }

    fn finish(&self, record: FinalRecord) -> BoxFuture<'_, Result<(), MeterError>> {
        self.finish_now(record).boxed()
    }

    fn close_abandoned(&self, reason: RecordReason) -> BoxFuture<'_, Result<u64, MeterError>> {
        self.close_abandoned_now(reason).boxed()
    }

    fn usage_by_day(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, UsageSums)>, MeterError>> {
        self.usage_by_day_now(from_ms, to_ms, tenant).boxed()
    }

    fn history_page(
        &self,
        query: HistoryQuery,
    ) -> BoxFuture<'_, Result<Vec<HistoryRow>, MeterError>> {
        timed(self.history_page_now(query)).boxed()
    }

    fn history_count(
        &self,
        tenant: Option<String>,
        status: RecordStatus,
        retention: Retention,
    ) -> BoxFuture<'_, Result<u64, MeterError>> {
        self.history_count_now(tenant, status, retention).boxed()
    }

    fn history_get(
        &self,
        session_id: Uuid,
        tenant: Option<String>,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Option<HistoryRow>, MeterError>> {
        timed(self.history_get_now(session_id, tenant, retention)).boxed()
    }

    fn shared(&self) -> bool {
        true
    }

    fn session_id_used(&self, session_id: Uuid) -> BoxFuture<'_, Result<bool, MeterError>> {
        self.call(DbCall::Read, async move {
            let client = self.client().await?;
            id_recorded(&client, &session_id.to_string()).await
        })
        .boxed()
    }
}

/// Whether any record, on any node, live or ended, has session id `id`.
async fn id_recorded(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<bool, MeterError> {
    let row = client
        .query_one(SESSION_ID_USED, &[&id])
        .await
        .map_err(db)?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_kind_is_a_registered_metric_label() {
        let labels: Vec<&str> = DbCall::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels, telemetry::DATABASE_CALL_KINDS);
    }

    /// The schema refuses any status but the ones the code knows.
    #[test]
    fn the_schema_allows_exactly_the_record_statuses() {
        let words = RecordStatus::ALL.map(|s| format!("'{}'", s.as_str()));
        let check = format!("CHECK (status IN ({}))", words.join(", "));
        assert!(MIGRATIONS[0].contains(&check), "{check}");
    }

    #[test]
    fn deadlines_follow_the_lease() {
        let d = Deadlines::for_lease(Duration::from_secs(3));
        assert_eq!(d.lease, Duration::from_millis(500), "one renewal slot");
        assert_eq!(d.call, Duration::from_secs(1));
        assert_eq!(d.dead_path, Duration::from_secs(1), "a third of the lease");
        let long = Deadlines::for_lease(Duration::from_secs(600));
        assert_eq!(long.call, Duration::from_secs(10), "capped");
        assert_eq!(long.of(DbCall::Migrate), MIGRATE_DEADLINE);
    }
}
