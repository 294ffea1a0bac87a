//! [`InMemoryCluster`]: what the nodes of a cluster share (the directory of nodes and
//! sessions, the leases, the secret and the ledger), in one process, so that several
//! gateways built with [`crate::Gateway::build_in_cluster`] form a cluster without
//! PostgreSQL. Each gateway gets a [`ClusterNode`], its handle on the shared state, which is
//! at once its [`NodeDirectory`], its [`Membership`] and its [`Ledger`].
//!
//! The records are kept by one [`SqliteLedger`] in a directory the test gives; the cluster
//! keeps beside it which node runs each record and whether it is live, the way
//! `metering::postgres` tags records with their node. It must not start processes or reach
//! the network.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cluster::directory::{NodeDirectory, NodeRow};
use crate::cluster::lease::Membership;
use crate::metering::MeterError;
use crate::metering::ledger::{Ledger, SqliteLedger};
use crate::metering::store::{
    Checkpoint, FinalRecord, HistoryQuery, HistoryRow, NewRecord, Retention, UsageSums,
};
use crate::sync::lock;
use crate::vocab::{RecordReason, RecordStatus};

/// How often the nodes of an in-process cluster exchange what they can take: often, so that
/// tests wait milliseconds, not the production second.
const REFRESH_EVERY: Duration = Duration::from_millis(25);

/// The shared state of an in-process cluster.
pub struct InMemoryCluster {
    state: Mutex<State>,
    ledger: SqliteLedger,
    /// Held while a first record is counted against its tenant's quota and written, as the
    /// tenant's advisory lock is in PostgreSQL: creates on different nodes take turns.
    inserting: tokio::sync::Mutex<()>,
    secret: String,
    lease: Duration,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeEntry>,
    records: HashMap<i64, Record>,
}

/// A node, as the directory knows it.
struct NodeEntry {
    advertise_url: Option<String>,
    free_slots: i64,
    ready: bool,
    /// Whether it has told the others what it can take at least once.
    published: bool,
    /// Until when its lease lasts.
    lease_until: Instant,
    /// The node is gone (its process died): its calls fail, and its lease is over.
    lost: bool,
    /// How many published, reachable nodes its latest look at the live nodes showed.
    sees: usize,
    /// How many times it looked at the live nodes.
    looks: u64,
}

/// A session's record, as the directory knows it.
struct Record {
    session_id: Uuid,
    tenant: Option<String>,
    node: String,
    live: bool,
    /// Its latest figures: a record the cluster fails is billed up to them.
    last: Checkpoint,
}

impl InMemoryCluster {
    /// A cluster whose ledger is a SQLite file in `ledger_dir` and whose nodes' leases last
    /// `lease`.
    pub async fn new(
        ledger_dir: &Path,
        lease: Duration,
    ) -> Result<Arc<InMemoryCluster>, MeterError> {
        Ok(Arc::new(InMemoryCluster {
            state: Mutex::default(),
            ledger: SqliteLedger::open(ledger_dir).await?,
            inserting: tokio::sync::Mutex::new(()),
            secret: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
            lease,
        }))
    }

    /// Node `node` joins (its lease starts now); returns its handle, for
    /// [`crate::Gateway::build_in_cluster`].
    pub fn join(self: &Arc<Self>, node: &str) -> Arc<ClusterNode> {
        lock(&self.state).nodes.insert(
            node.to_owned(),
            NodeEntry {
                advertise_url: None,
                free_slots: 0,
                ready: false,
                published: false,
                lease_until: Instant::now() + self.lease,
                lost: false,
                sees: 0,
                looks: 0,
            },
        );
        Arc::new(ClusterNode {
            cluster: self.clone(),
            node: node.to_owned(),
        })
    }

    /// Node `node` is gone, as when its process is killed: its lease is over now, and its
    /// calls fail from now on (it cannot renew). The others see it gone at their next
    /// refresh, and fail its live sessions once its lease has been over for the margin.
    pub fn lose(&self, node: &str) {
        if let Some(entry) = lock(&self.state).nodes.get_mut(node) {
            entry.lost = true;
            entry.lease_until = Instant::now();
        }
    }

    /// Node `node` stays listed, live and leased, but the others reach it at `url` from now on
    /// (a closed port, an address that drops packets): a node the others cannot reach while
    /// the directory still lists it, as when nodes are cut off from each other but not from
    /// the database. Returns the address it advertised before, to give back.
    pub fn readdress(&self, node: &str, url: &str) -> Option<String> {
        let mut state = lock(&self.state);
        let entry = state.nodes.get_mut(node)?;
        entry.advertise_url.replace(url.to_owned())
    }

    /// The cluster's secret, which keys every node's viewer tokens (a test makes the token
    /// of a session no node knows with it).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether every one of `nodes` nodes has published its offer and every node's latest
    /// look at the live nodes showed all of them, with their addresses: placement works.
    pub fn all_see_each_other(&self, nodes: usize) -> bool {
        let state = lock(&self.state);
        state.nodes.len() == nodes && state.nodes.values().all(|n| n.sees == nodes)
    }

    /// What node `node` last told the others: its free slots and whether it takes sessions.
    pub fn offer(&self, node: &str) -> Option<(i64, bool)> {
        let state = lock(&self.state);
        state.nodes.get(node).map(|n| (n.free_slots, n.ready))
    }

    /// How many times node `node` has looked at the live nodes (and their offers).
    pub fn looks(&self, node: &str) -> u64 {
        lock(&self.state).nodes.get(node).map_or(0, |n| n.looks)
    }

    /// The node that runs (or ran) session `id`, from the directory.
    pub fn node_of(&self, id: Uuid) -> Option<String> {
        let state = lock(&self.state);
        let newest = state
            .records
            .iter()
            .filter(|(_, r)| r.session_id == id)
            .max_by_key(|(record_id, _)| **record_id);
        newest.map(|(_, r)| r.node.clone())
    }

    /// How many sessions are live in the whole cluster.
    pub fn live_sessions(&self) -> usize {
        lock(&self.state)
            .records
            .values()
            .filter(|r| r.live)
            .count()
    }
}

/// One node's handle on an [`InMemoryCluster`].
pub struct ClusterNode {
    cluster: Arc<InMemoryCluster>,
    node: String,
}

impl ClusterNode {
    /// How often the gateway exchanges what it can take with the others.
    pub fn refresh_every(&self) -> Duration {
        REFRESH_EVERY
    }

    /// Fails while this node is lost, as calls to an unreachable database do.
    fn reach(&self) -> Result<(), MeterError> {
        let state = lock(&self.cluster.state);
        match state.nodes.get(&self.node) {
            Some(entry) if !entry.lost => Ok(()),
            _ => Err(MeterError::Database(format!(
                "node {} is lost to the in-memory cluster",
                self.node
            ))),
        }
    }

    /// Runs `f` on this node's entry, when it can reach the cluster.
    fn with_me(&self, f: impl FnOnce(&mut NodeEntry)) -> Result<(), MeterError> {
        self.reach()?;
        if let Some(entry) = lock(&self.cluster.state).nodes.get_mut(&self.node) {
            f(entry);
        }
        Ok(())
    }

    /// The node, other than this one and with a live lease and an address, whose newest
    /// record of `id` (of `tenant` when given; live only when `live_only`) this is.
    fn node_of(
        &self,
        id: Uuid,
        tenant: Option<&str>,
        live_only: bool,
    ) -> Result<Option<(String, String)>, MeterError> {
        self.reach()?;
        let state = lock(&self.cluster.state);
        let now = Instant::now();
        let found = state
            .records
            .iter()
            .filter(|(_, r)| r.session_id == id && r.node != self.node)
            .filter(|(_, r)| !live_only || r.live)
            .filter(|(_, r)| tenant.is_none() || r.tenant.as_deref() == tenant)
            .filter_map(|(record_id, r)| {
                let entry = state.nodes.get(&r.node)?;
                let url = entry.advertise_url.clone()?;
                (entry.lease_until > now).then(|| (*record_id, (r.node.clone(), url)))
            })
            .max_by_key(|(record_id, _)| *record_id);
        Ok(found.map(|(_, owner)| owner))
    }

    /// Ends the live records `ids` as `failed` for `reason`, billed up to their latest
    /// figures; returns how many it ended.
    async fn fail_records(&self, ids: Vec<i64>, reason: RecordReason) -> Result<u64, MeterError> {
        let mut failed = 0;
        for id in ids {
            let last = {
                let mut state = lock(&self.cluster.state);
                match state.records.get_mut(&id) {
                    Some(r) if r.live => {
                        r.live = false;
                        r.last
                    }
                    _ => continue,
                }
            };
            let end = FinalRecord {
                checkpoint: last,
                reason,
            };
            self.cluster.ledger.finish(end).await?;
            failed += 1;
        }
        Ok(failed)
    }
}

impl NodeDirectory for ClusterNode {
    fn cluster_secret(&self) -> BoxFuture<'_, Result<String, MeterError>> {
        Box::pin(async move { self.reach().map(|()| self.cluster.secret.clone()) })
    }

    fn advertise<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<(), MeterError>> {
        Box::pin(async move { self.with_me(|me| me.advertise_url = Some(url.to_owned())) })
    }

    fn publish(&self, free_slots: i64, ready: bool) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(async move {
            self.with_me(|me| {
                me.free_slots = free_slots;
                me.ready = ready;
                me.published = true;
            })
        })
    }

    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRow>, MeterError>> {
        Box::pin(async move {
            self.reach()?;
            let mut state = lock(&self.cluster.state);
            let now = Instant::now();
            let live: Vec<NodeRow> = state
                .nodes
                .iter()
                .filter(|(_, n)| n.lease_until > now)
                .map(|(node, n)| NodeRow {
                    node: node.clone(),
                    advertise_url: n.advertise_url.clone(),
                    free_slots: n.free_slots,
                    ready: n.ready,
                })
                .collect();
            let sees = state
                .nodes
                .values()
                .filter(|n| n.lease_until > now && n.published && n.advertise_url.is_some())
                .count();
            if let Some(me) = state.nodes.get_mut(&self.node) {
                me.sees = sees;
                me.looks += 1;
            }
            Ok(live)
        })
    }

    fn owner_of<'a>(
        &'a self,
        id: Uuid,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>> {
        Box::pin(async move { self.node_of(id, tenant, true) })
    }

    fn holder_of<'a>(
        &'a self,
        id: Uuid,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>> {
        Box::pin(async move { self.node_of(id, tenant, false) })
    }

    fn live_sessions<'a>(
        &'a self,
        tenant: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String)>, MeterError>> {
        Box::pin(async move {
            self.reach()?;
            let state = lock(&self.cluster.state);
            Ok(state
                .records
                .values()
                .filter(|r| r.live && (tenant.is_none() || r.tenant.as_deref() == tenant))
                .take(usize::try_from(limit).unwrap_or(0))
                .map(|r| (r.session_id, r.node.clone()))
                .collect())
        })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(async move { self.with_me(|me| me.lease_until = Instant::now()) })
    }
}

impl Membership for ClusterNode {
    fn renew(&self) -> BoxFuture<'_, Result<(), MeterError>> {
        let lease = self.cluster.lease;
        Box::pin(async move { self.with_me(|me| me.lease_until = Instant::now() + lease) })
    }

    fn ended_elsewhere(&self, records: Vec<i64>) -> BoxFuture<'_, Result<Vec<i64>, MeterError>> {
        Box::pin(async move {
            self.reach()?;
            let state = lock(&self.cluster.state);
            Ok(records
                .into_iter()
                .filter(|id| state.records.get(id).is_some_and(|r| !r.live))
                .collect())
        })
    }

    fn fail_dead_nodes(&self, margin: Duration) -> BoxFuture<'_, Result<u64, MeterError>> {
        Box::pin(async move {
            self.reach()?;
            let dead_records: Vec<i64> = {
                let state = lock(&self.cluster.state);
                let now = Instant::now();
                state
                    .records
                    .iter()
                    .filter(|(_, r)| {
                        r.live
                            && state
                                .nodes
                                .get(&r.node)
                                .is_some_and(|n| n.lease_until + margin < now)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            };
            self.fail_records(dead_records, RecordReason::NodeLost)
                .await
        })
    }
}

impl Ledger for ClusterNode {
    fn insert(&self, record: NewRecord) -> BoxFuture<'_, Result<i64, MeterError>> {
        Box::pin(async move {
            let _turn = self.cluster.inserting.lock().await;
            if let (Some(tenant), Some(limit)) = (&record.tenant, record.tenant_limit) {
                let live = live_of(&lock(&self.cluster.state), tenant);
                if live >= limit {
                    return Err(MeterError::OverQuota(limit));
                }
            }
            if self
                .cluster
                .ledger
                .session_id_used(record.session_id)
                .await?
            {
                return Err(MeterError::Duplicate);
            }
            let (session_id, tenant, at_ms) = (
                record.session_id,
                record.tenant.clone(),
                record.created_at_ms,
            );
            let record_id = self.cluster.ledger.insert(record).await?;
            let last = Checkpoint {
                record_id,
                at_ms,
                billed_minutes: 1,
                traffic: Default::default(),
                event_count: 0,
            };
            let node = self.node.clone();
            let entry = Record {
                session_id,
                tenant,
                node,
                live: true,
                last,
            };
            lock(&self.cluster.state).records.insert(record_id, entry);
            Ok(record_id)
        })
    }

    fn checkpoint(&self, checkpoints: Vec<Checkpoint>) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(async move {
            {
                let mut state = lock(&self.cluster.state);
                for c in &checkpoints {
                    if let Some(r) = state.records.get_mut(&c.record_id).filter(|r| r.live) {
                        r.last = *c;
                    }
                }
            }
            self.cluster.ledger.checkpoint(checkpoints).await
        })
    }

    fn finish(&self, record: FinalRecord) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(async move {
            let id = record.checkpoint.record_id;
            self.cluster.ledger.finish(record).await?;
            if let Some(r) = lock(&self.cluster.state).records.get_mut(&id) {
                r.live = false;
            }
            Ok(())
        })
    }

    fn set_details(
        &self,
        record_id: i64,
        details: String,
    ) -> BoxFuture<'_, Result<(), MeterError>> {
        self.cluster.ledger.set_details(record_id, details)
    }

    fn close_abandoned(&self, reason: RecordReason) -> BoxFuture<'_, Result<u64, MeterError>> {
        Box::pin(async move {
            let mine: Vec<i64> = lock(&self.cluster.state)
                .records
                .iter()
                .filter(|(_, r)| r.live && r.node == self.node)
                .map(|(id, _)| *id)
                .collect();
            self.fail_records(mine, reason).await
        })
    }

    fn usage_by_day(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, UsageSums)>, MeterError>> {
        self.cluster.ledger.usage_by_day(from_ms, to_ms, tenant)
    }

    fn history_page(
        &self,
        query: HistoryQuery,
    ) -> BoxFuture<'_, Result<Vec<HistoryRow>, MeterError>> {
        self.cluster.ledger.history_page(query)
    }

    fn history_count(
        &self,
        tenant: Option<String>,
        status: RecordStatus,
        retention: Retention,
    ) -> BoxFuture<'_, Result<u64, MeterError>> {
        self.cluster.ledger.history_count(tenant, status, retention)
    }

    fn live_of_tenant(&self, tenant: String) -> BoxFuture<'_, Result<Option<u64>, MeterError>> {
        Box::pin(async move { Ok(Some(live_of(&lock(&self.cluster.state), &tenant))) })
    }

    fn history_get(
        &self,
        session_id: Uuid,
        tenant: Option<String>,
        retention: Retention,
    ) -> BoxFuture<'_, Result<Option<HistoryRow>, MeterError>> {
        self.cluster
            .ledger
            .history_get(session_id, tenant, retention)
    }

    fn session_id_used(&self, session_id: Uuid) -> BoxFuture<'_, Result<bool, MeterError>> {
        self.cluster.ledger.session_id_used(session_id)
    }

    fn shared(&self) -> bool {
        true
    }
}

/// How many live sessions `tenant` has on every node.
fn live_of(state: &State, tenant: &str) -> u64 {
    let live = state
        .records
        .values()
        .filter(|r| r.live && r.tenant.as_deref() == Some(tenant))
        .count();
    u64::try_from(live).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tenant: &str) -> NewRecord {
        NewRecord {
            session_id: Uuid::new_v4(),
            tenant: Some(tenant.to_owned()),
            created_at_ms: 1,
            details: "{}".to_owned(),
            tenant_limit: Some(2),
        }
    }

    const ANY: Retention = Retention {
        since_ms: 0,
        newest: 100,
    };

    /// The shared ledger counts a tenant's live sessions on every node and refuses ids used
    /// anywhere; the directory finds a session's node while that node's lease is live; a
    /// restart closes only its own node's records; a lost node's sessions are failed
    /// `node_lost` by another once its lease has been over for the margin.
    #[tokio::test(start_paused = true)]
    async fn nodes_share_records_quotas_and_owners_and_fail_a_lost_node() {
        let dir = tempfile::tempdir().expect("dir");
        let cluster = InMemoryCluster::new(dir.path(), Duration::from_secs(1))
            .await
            .expect("cluster");
        let (a, b) = (cluster.join("a"), cluster.join("b"));
        a.advertise("http://a").await.expect("advertise");
        let on_a = record("t");
        let (id_a, session_a) = (a.insert(on_a.clone()).await.expect("a"), on_a.session_id);
        let id_b = b.insert(record("t")).await.expect("b");
        assert!(matches!(
            a.insert(record("t")).await,
            Err(MeterError::OverQuota(2))
        ));
        assert_eq!(b.live_of_tenant("t".into()).await.expect("count"), Some(2));
        let again = NewRecord {
            tenant_limit: None,
            ..on_a
        };
        assert!(matches!(b.insert(again).await, Err(MeterError::Duplicate)));
        let owner = b.owner_of(session_a, Some("t")).await.expect("owner");
        assert_eq!(owner, Some(("a".to_owned(), "http://a".to_owned())));
        assert_eq!(a.owner_of(session_a, None).await.expect("owner"), None);

        assert_eq!(
            b.close_abandoned(RecordReason::GatewayRestart)
                .await
                .expect("close"),
            1
        );
        assert!(a.ended_elsewhere(vec![id_a]).await.expect("a's").is_empty());
        assert_eq!(
            b.ended_elsewhere(vec![id_b]).await.expect("b's"),
            vec![id_b]
        );

        cluster.lose("a");
        assert!(a.renew().await.is_err(), "a lost node cannot renew");
        assert_eq!(b.owner_of(session_a, None).await.expect("owner"), None);
        let margin = Duration::from_millis(250);
        assert_eq!(
            b.fail_dead_nodes(margin).await.expect("judge"),
            0,
            "within the margin"
        );
        tokio::time::advance(margin * 2).await;
        assert_eq!(b.fail_dead_nodes(margin).await.expect("judge"), 1);
        let row = b.history_get(session_a, None, ANY).await.expect("read");
        let row = row.expect("recorded");
        assert_eq!(
            (row.status, row.reason),
            (RecordStatus::Failed, Some(RecordReason::NodeLost))
        );
        assert_eq!(cluster.live_sessions(), 0);
    }
}
