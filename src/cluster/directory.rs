//! The cluster's directory: the nodes (their leases, advertise URLs and offers), the secret
//! they present to each other, and where each session runs.
//!
//! Owns [`NodeDirectory`], what [`super::Cluster`] asks of it, and its PostgreSQL
//! implementation [`PgDirectory`] with every statement about nodes; the schema itself is
//! migrated with the ledger's (`metering::postgres`), and every call goes through the
//! ledger's pool and deadlines. (The in-memory implementation that tests share between
//! gateways of one process is `testing::InMemoryCluster`.) It must not write usage records,
//! except failing the live ones of dead nodes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::metering::MeterError;
use crate::metering::postgres::{DbCall, PgLedger};
use crate::vocab::RecordReason;

/// The database's clock, in Unix milliseconds: every node's lease is measured on one clock.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
/// Key of the advisory lock held by the one node that fails dead nodes' sessions.
const TAKEOVER_LOCK: i64 = 0x696e_676f_7400_0002;

fn db(e: impl std::fmt::Display) -> MeterError {
    MeterError::Database(e.to_string())
}

/// A node with a live lease, as it last described itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRow {
    /// Its `--node-id`.
    pub node: String,
    /// How peers reach it.
    pub advertise_url: Option<String>,
    /// Session slots it could fill now (free slots plus pooled browsers).
    pub free_slots: i64,
    /// Whether it takes new sessions (not draining, browsers start).
    pub ready: bool,
}

/// What a node's view of the cluster ([`super::Cluster`]) asks of the directory the nodes
/// share, as node `node` (the one that holds it) sees it. The lease itself (renew, judge
/// dead nodes) is [`super::lease::Membership`].
pub(crate) trait NodeDirectory: Send + Sync {
    /// The secret nodes present to each other (made once, by the first node to ask).
    fn cluster_secret(&self) -> BoxFuture<'_, Result<String, MeterError>>;
    /// Records how peers reach this node, once it is known (after the listener is bound).
    fn advertise<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(), MeterError>>;
    /// Tells the other nodes how many sessions this node could start now, and whether it
    /// takes any.
    fn publish(&self, free_slots: i64, ready: bool) -> BoxFuture<'_, Result<(), MeterError>>;
    /// Every node whose lease is live, this one included, ordered by id.
    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRow>, MeterError>>;
    /// The node that runs live session `id` of `tenant` (any tenant's when `None`) and how
    /// to reach it, when that is another node with a live lease.
    fn owner_of<'a>(
        &'a self,
        id: Uuid,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>>;
    /// The live node, other than this one, that ran session `id` of `tenant` (any tenant's
    /// when `None`), live or ended: where its files are.
    fn holder_of<'a>(
        &'a self,
        id: Uuid,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>>;
    /// Up to `limit` live sessions of `tenant` (any tenant's when `None`) on any node, with
    /// their nodes.
    fn live_sessions<'a>(
        &'a self,
        tenant: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String)>, MeterError>>;
    /// Leaves the cluster (after every session of this node ended): the lease ends now.
    fn leave(&self) -> BoxFuture<'_, Result<(), MeterError>>;
}

/// What a node tells the others about itself when it joins.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// This machine's name.
    pub host: String,
    /// This node's data directory: with the host, it tells a restart of this node (whose
    /// data directory lock proves the old process is gone) from another node with the same
    /// id.
    pub data_dir: String,
    /// How peers reach this node.
    pub advertise_url: Option<String>,
    /// How long a lease lasts without renewal, in milliseconds.
    pub lease_ms: i64,
}

/// The directory of the cluster whose database `ledger` reaches, as node `node` sees it.
pub(crate) struct PgDirectory {
    ledger: Arc<PgLedger>,
    node: String,
}

impl PgDirectory {
    async fn client(&self) -> Result<deadpool_postgres::Object, MeterError> {
        self.ledger.client().await
    }

    /// Runs one statement of `kind` that changes this node's row, within its deadline (on
    /// the lease's own connections for a lease call).
    async fn update(
        &self,
        kind: DbCall,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), MeterError> {
        self.ledger
            .call(kind, async move {
                let client = match kind {
                    DbCall::Lease => self.ledger.lease_client().await?,
                    _ => self.client().await?,
                };
                client.execute(sql, params).await.map(drop).map_err(db)
            })
            .await
    }

    /// The directory for node `node` on the database behind `ledger`.
    pub(crate) fn new(ledger: Arc<PgLedger>, node: String) -> PgDirectory {
        PgDirectory { ledger, node }
    }

    /// Joins the cluster: takes this node's lease, unless another live node holds its id.
    pub(crate) async fn join(&self, me: &Member) -> Result<(), MeterError> {
        self.ledger.call(DbCall::Lease, async move {
        let mut client = self.ledger.lease_client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let sql = format!(
            "SELECT host, data_dir, lease_until_ms > {NOW_MS} FROM ingot_nodes
             WHERE node = $1 FOR UPDATE"
        );
        if let Some(row) = tx.query_opt(&sql, &[&self.node]).await.map_err(db)? {
            let (host, dir, live): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
            if live && (host != me.host || dir != me.data_dir) {
                return Err(MeterError::Database(format!(
                    "node id {:?} is held by a live node on {host} (data directory {dir}); give each node its own --node-id",
                    self.node
                )));
            }
        }
        let sql = format!(
            "INSERT INTO ingot_nodes (node, host, data_dir, advertise_url, lease_until_ms, joined_at_ms)
             VALUES ($1, $2, $3, $4, {NOW_MS} + $5, {NOW_MS})
             ON CONFLICT (node) DO UPDATE SET host = $2, data_dir = $3, advertise_url = $4,
                 lease_until_ms = {NOW_MS} + $5, joined_at_ms = {NOW_MS}"
        );
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &self.node,
            &me.host,
            &me.data_dir,
            &me.advertise_url,
            &me.lease_ms,
        ];
        tx.execute(&sql, &args).await.map_err(db)?;
        tx.commit().await.map_err(db)
            })
        .await
    }

    /// Extends this node's lease by `lease_ms` from now.
    pub(crate) async fn renew(&self, lease_ms: i64) -> Result<(), MeterError> {
        let sql = format!("UPDATE ingot_nodes SET lease_until_ms = {NOW_MS} + $2 WHERE node = $1");
        self.update(DbCall::Lease, &sql, &[&self.node, &lease_ms])
            .await
    }

    /// Ends every live session of every node whose lease ran out more than `margin` ago
    /// with `reason` (and the status it leads to), billed up to its last checkpoint (the node corrects the
    /// figures when it is heard from again). One node at a time does it (an advisory lock;
    /// the others skip). The dead nodes' rows are locked first, so that a renewal racing
    /// with this either lands before (and its node is spared) or waits until the failure is
    /// committed (and its node sees it). Returns how many sessions it ended.
    pub(crate) async fn fail_dead_nodes(
        &self,
        reason: RecordReason,
        margin: Duration,
    ) -> Result<u64, MeterError> {
        let margin_ms = i64::try_from(margin.as_millis()).unwrap_or(i64::MAX);
        self.ledger
            .call(DbCall::Membership, async move {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(db)?;
                let row = tx
                    .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&TAKEOVER_LOCK])
                    .await
                    .map_err(db)?;
                if !row.get::<_, bool>(0) {
                    return Ok(0);
                }
                let sql = format!(
                    "SELECT node FROM ingot_nodes WHERE lease_until_ms < {NOW_MS} - $1 FOR UPDATE"
                );
                let dead: Vec<String> = tx
                    .query(&sql, &[&margin_ms])
                    .await
                    .map_err(db)?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if dead.is_empty() {
                    return Ok(0);
                }
                let failed = tx
                    .execute(
                        "UPDATE ingot_sessions
                     SET status = $3, reason = $1, ended_at_ms = checkpoint_at_ms
                     WHERE status = 'live' AND node = ANY($2)",
                        &[&reason.as_str(), &dead, &reason.status().as_str()],
                    )
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(failed)
            })
            .await
    }

    /// Of `records` (this node's live ones), those the cluster has already ended: another
    /// node declared this node dead while it was silent (stopped, or cut off).
    pub(crate) async fn ended_elsewhere(&self, records: &[i64]) -> Result<Vec<i64>, MeterError> {
        self.ledger
            .call(DbCall::Membership, async move {
                if records.is_empty() {
                    return Ok(Vec::new());
                }
                let rows = self
                    .client()
                    .await?
                    .query(
                        "SELECT record_id FROM ingot_sessions
                 WHERE record_id = ANY($1) AND status <> 'live'",
                        &[&records],
                    )
                    .await
                    .map_err(db)?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await
    }

    /// The secret nodes present to each other: made once, by the first node, and kept in the
    /// database, so that only nodes that can read the database know it.
    pub(crate) async fn cluster_secret(&self) -> Result<String, MeterError> {
        self.ledger
            .call(DbCall::Membership, async move {
                let client = self.client().await?;
                let candidate = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
                client
            .execute(
                "INSERT INTO ingot_cluster (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                &[&candidate],
            )
            .await
            .map_err(db)?;
                let row = client
                    .query_one("SELECT secret FROM ingot_cluster WHERE id = 1", &[])
                    .await
                    .map_err(db)?;
                Ok(row.get(0))
            })
            .await
    }

    /// Records how peers reach this node, once it is known (after the listener is bound).
    pub(crate) async fn advertise(&self, url: &str) -> Result<(), MeterError> {
        let sql = "UPDATE ingot_nodes SET advertise_url = $2 WHERE node = $1";
        self.update(DbCall::Membership, sql, &[&self.node, &url])
            .await
    }

    /// Tells the other nodes how many sessions this node could start now, and whether it
    /// takes any.
    pub(crate) async fn publish(&self, free_slots: i64, ready: bool) -> Result<(), MeterError> {
        let sql = "UPDATE ingot_nodes SET free_slots = $2, ready = $3 WHERE node = $1";
        self.update(DbCall::Membership, sql, &[&self.node, &free_slots, &ready])
            .await
    }

    /// Every node whose lease is live, this one included.
    pub(crate) async fn live_nodes(&self) -> Result<Vec<NodeRow>, MeterError> {
        self.ledger
            .call(DbCall::Membership, async move {
                let sql = format!(
                    "SELECT node, advertise_url, free_slots, ready FROM ingot_nodes
             WHERE lease_until_ms > {NOW_MS} ORDER BY node"
                );
                let rows = self
                    .ledger
                    .client()
                    .await?
                    .query(&sql, &[])
                    .await
                    .map_err(db)?;
                Ok(rows
                    .iter()
                    .map(|r| NodeRow {
                        node: r.get(0),
                        advertise_url: r.get(1),
                        free_slots: r.get(2),
                        ready: r.get(3),
                    })
                    .collect())
            })
            .await
    }

    /// The node that runs live session `id` of `tenant` (any tenant's when `None`) and how
    /// to reach it, when that is another node with a live lease.
    pub(crate) async fn owner_of(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<(String, String)>, MeterError> {
        self.node_of(id, tenant, true).await
    }

    /// The live node, other than this one, that ran session `id` of `tenant` (any tenant's
    /// when `None`), live or ended: where its files are.
    pub(crate) async fn holder_of(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<(String, String)>, MeterError> {
        self.node_of(id, tenant, false).await
    }

    async fn node_of(
        &self,
        id: Uuid,
        tenant: Option<&str>,
        live_only: bool,
    ) -> Result<Option<(String, String)>, MeterError> {
        self.ledger
            .call(DbCall::Membership, async move {
                let status = if live_only {
                    "AND s.status = 'live'"
                } else {
                    ""
                };
                let sql = format!(
                    "SELECT n.node, n.advertise_url FROM ingot_sessions s
             JOIN ingot_nodes n ON n.node = s.node
             WHERE s.session_id = $1 {status} AND s.node <> $2
               AND ($3::text IS NULL OR s.tenant = $3)
               AND n.lease_until_ms > {NOW_MS} AND n.advertise_url IS NOT NULL
             ORDER BY s.record_id DESC LIMIT 1"
                );
                let id = id.to_string();
                let row = self
                    .client()
                    .await?
                    .query_opt(&sql, &[&id, &self.node, &tenant])
                    .await
                    .map_err(db)?;
                Ok(row.map(|r| (r.get(0), r.get(1))))
            })
            .await
    }

    /// Up to `limit` live sessions of `tenant` (any tenant's when `None`) on any node, with
    /// their nodes.
    pub(crate) async fn live_sessions(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>, MeterError> {
        self.ledger
            .call(DbCall::Membership, async move {
                let rows = self
                    .client()
                    .await?
                    .query(
                        "SELECT session_id, node FROM ingot_sessions
                 WHERE status = 'live' AND ($1::text IS NULL OR tenant = $1) LIMIT $2",
                        &[&tenant, &limit],
                    )
                    .await
                    .map_err(db)?;
                rows.iter()
                    .map(|r| {
                        let id: String = r.get(0);
                        Ok((Uuid::parse_str(&id).map_err(db)?, r.get(1)))
                    })
                    .collect()
            })
            .await
    }

    /// Leaves the cluster (after every session of this node ended): the lease ends now.
    pub(crate) async fn leave(&self) -> Result<(), MeterError> {
        let sql = "UPDATE ingot_nodes SET lease_until_ms = 0 WHERE node = $1";
        self.update(DbCall::Lease, sql, &[&self.node]).await
    }
}

impl NodeDirectory for PgDirectory {
    fn cluster_secret(&self) -> BoxFuture<'_, Result<String, MeterError>> {
        Box::pin(PgDirectory::cluster_secret(self))
    }

    fn advertise<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(), MeterError>> {
        Box::pin(PgDirectory::advertise(self, url))
    }

    fn publish(&self, free_slots: i64, ready: bool) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(PgDirectory::publish(self, free_slots, ready))
    }

    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRow>, MeterError>> {
        Box::pin(PgDirectory::live_nodes(self))
    }

    fn owner_of<'a>(
        &'a self,
        id: Uuid,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>> {
        Box::pin(PgDirectory::owner_of(self, id, tenant))
    }

    fn holder_of<'a>(
        &'a self,
        id: Uuid,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>> {
        Box::pin(PgDirectory::holder_of(self, id, tenant))
    }

    fn live_sessions<'a>(
        &'a self,
        tenant: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String)>, MeterError>> {
        Box::pin(PgDirectory::live_sessions(self, tenant, limit))
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(PgDirectory::leave(self))
    }
}
