//! Cluster mode (`--database-url`): the other nodes, where each session lives, and where a
//! new session should go.
//!
//! Owns this node's view of the live nodes (refreshed every second from the directory the
//! nodes share, [`directory::NodeDirectory`], with what each can take), the cache of session owners (an owner never
//! changes), placement of creates, the secret nodes present to each other, and the HTTP
//! client that passes requests and WebSockets on ([`forward`]). It must not know about
//! sessions' states or Steel's JSON: the node that owns a session answers for it, and
//! forwarded bytes pass through unread.

pub(crate) mod directory;
pub(crate) mod forward;
pub(crate) mod lease;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metering::MeterError;
use crate::sync::lock;
use crate::telemetry;
use directory::{NodeDirectory, NodeRow};

/// Most session owners remembered; the cache starts over when it is full.
const MAX_OWNERS: usize = 10_000;

/// This node's membership of a cluster.
pub(crate) struct Cluster {
    directory: Arc<dyn NodeDirectory>,
    node: String,
    secret: String,
    /// The other nodes with a live lease, as they last described themselves.
    peers: Mutex<Vec<NodeRow>>,
    /// Where sessions of other nodes live: their node's advertise URL.
    owners: Mutex<HashMap<Uuid, Arc<str>>>,
    /// One token per node that forwarded WebSockets lead to, cancelled when that node
    /// leaves the live list (its lease ran out): those sockets close.
    departures: Mutex<HashMap<String, CancellationToken>>,
    /// Cancelled when this node stops: forwarded WebSockets close.
    stop: CancellationToken,
    /// Longest wait for another node's answer to a create passed to it.
    create_timeout: Duration,
}

impl Cluster {
    /// Membership for node `node`, which has joined the cluster behind `directory`. A create
    /// passed to another node is answered within `create_timeout` (its queue and a launch).
    pub(crate) async fn new(
        directory: Arc<dyn NodeDirectory>,
        node: String,
        create_timeout: Duration,
    ) -> Result<Cluster, MeterError> {
        let secret = directory.cluster_secret().await?;
        Ok(Cluster::with_secret(
            directory,
            node,
            secret,
            create_timeout,
        ))
    }

    /// Membership for node `node` of the cluster behind `directory`, whose secret is
    /// `secret`.
    pub(crate) fn with_secret(
        directory: Arc<dyn NodeDirectory>,
        node: String,
        secret: String,
        create_timeout: Duration,
    ) -> Cluster {
        Cluster {
            directory,
            node,
            secret,
            peers: Mutex::default(),
            owners: Mutex::default(),
            departures: Mutex::default(),
            stop: CancellationToken::new(),
            create_timeout,
        }
    }

    /// Longest wait for another node's answer to a create.
    pub(crate) fn create_timeout(&self) -> Duration {
        self.create_timeout
    }

    /// A token cancelled when the node at `url` leaves the cluster.
    pub(crate) fn departure(&self, url: &str) -> CancellationToken {
        lock(&self.departures)
            .entry(url.to_owned())
            .or_default()
            .clone()
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The secret this node presents to the others.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether `presented` is the cluster's secret (compared in constant time).
    pub(crate) fn secret_matches(&self, presented: &[u8]) -> bool {
        bool::from(self.secret.as_bytes().ct_eq(presented))
    }

    /// A token cancelled when this node stops.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Closes every forwarded WebSocket: this node is stopping.
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }

    /// The advertise URL of the ready node with the most free slots, other than this one,
    /// if any has a free slot. Its count is lowered here at once, so that creates arriving
    /// before the next refresh spread out.
    pub(crate) fn place(&self) -> Option<String> {
        choose(&mut lock(&self.peers))
    }

    /// Notes that the node at `url` has no room after all (until it says otherwise).
    pub(crate) fn full(&self, url: &str) {
        for peer in lock(&self.peers).iter_mut() {
            if peer.advertise_url.as_deref() == Some(url) {
                peer.free_slots = 0;
            }
        }
    }

    /// The advertise URLs of every other live node.
    pub(crate) fn peer_urls(&self) -> Vec<String> {
        lock(&self.peers)
            .iter()
            .filter_map(|p| p.advertise_url.clone())
            .collect()
    }

    /// The advertise URL of the node that runs live session `id` of `tenant` (any tenant's
    /// when `None`), when it is another live node; from the cache, else from the database.
    /// A cached node that is no longer live is asked about again.
    pub(crate) async fn owner_of(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<Arc<str>>, MeterError> {
        let cached = lock(&self.owners).get(&id).cloned();
        if let Some(url) = cached {
            if self.is_live(&url) {
                return Ok(Some(url));
            }
            self.forget(id);
        }
        let started = Instant::now();
        let owner = self.directory.owner_of(id, tenant).await;
        telemetry::directory_query(started.elapsed());
        let Some((_, url)) = owner? else {
            return Ok(None);
        };
        self.remember(id, &url);
        Ok(Some(url.into()))
    }

    /// The advertise URL of the node that ran session `id` of `tenant` (live or ended),
    /// when it is another live node: where the session's files are.
    pub(crate) async fn holder_of(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<Arc<str>>, MeterError> {
        let cached = lock(&self.owners).get(&id).cloned();
        if let Some(url) = cached.filter(|url| self.is_live(url)) {
            return Ok(Some(url));
        }
        let started = Instant::now();
        let holder = self.directory.holder_of(id, tenant).await;
        telemetry::directory_query(started.elapsed());
        Ok(holder?.map(|(_, url)| url.into()))
    }

    /// The only live session of `tenant` (any tenant's when `None`) in the cluster, if
    /// it has exactly one and another node runs it.
    pub(crate) async fn sole_live_session(
        &self,
        tenant: Option<&str>,
    ) -> Result<Option<Uuid>, MeterError> {
        let started = Instant::now();
        let live = self.directory.live_sessions(tenant, 2).await;
        telemetry::directory_query(started.elapsed());
        Ok(match live?.as_slice() {
            [(id, node)] if *node != self.node => Some(*id),
            _ => None,
        })
    }

    /// Whether the node at `url` is among the live nodes this node last saw.
    fn is_live(&self, url: &str) -> bool {
        lock(&self.peers)
            .iter()
            .any(|p| p.advertise_url.as_deref() == Some(url))
    }

    /// Remembers that session `id` runs on the node at `url` (this node placed it there).
    pub(crate) fn remember(&self, id: Uuid, url: &str) {
        let mut owners = lock(&self.owners);
        if owners.len() >= MAX_OWNERS {
            owners.clear();
        }
        owners.insert(id, url.into());
    }

    /// Forgets where session `id` lives: it ended, or its node could not be reached.
    pub(crate) fn forget(&self, id: Uuid) {
        lock(&self.owners).remove(&id);
    }

    /// Records how the other nodes reach this one.
    pub(crate) async fn advertise(&self, url: &str) -> Result<(), MeterError> {
        self.directory.advertise(url).await
    }

    /// Leaves the cluster: this node's lease ends now (every session here has ended).
    pub(crate) async fn leave(&self) -> Result<(), MeterError> {
        self.directory.leave().await
    }

    /// Tells the others what this node can take (`free_slots`, `ready`), then reads which
    /// nodes are live and what they can take.
    pub(crate) async fn refresh(&self, free_slots: usize, ready: bool) -> Result<(), MeterError> {
        self.directory
            .publish(i64::try_from(free_slots).unwrap_or(i64::MAX), ready)
            .await?;
        let started = Instant::now();
        let nodes = self.directory.live_nodes().await;
        telemetry::directory_query(started.elapsed());
        let nodes = nodes?;
        telemetry::cluster_nodes(nodes.len());
        let peers: Vec<NodeRow> = nodes.into_iter().filter(|n| n.node != self.node).collect();
        lock(&self.departures).retain(|url, gone| {
            let live = peers
                .iter()
                .any(|p| p.advertise_url.as_deref() == Some(url));
            if !live {
                gone.cancel();
            }
            live
        });
        *lock(&self.peers) = peers;
        Ok(())
    }
}

/// Takes one slot of the ready node with the most free slots; returns its URL.
fn choose(peers: &mut [NodeRow]) -> Option<String> {
    let best = peers
        .iter_mut()
        .filter(|p| p.ready && p.free_slots > 0 && p.advertise_url.is_some())
        .max_by_key(|p| p.free_slots)?;
    best.free_slots -= 1;
    best.advertise_url.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(node: &str, free: i64, ready: bool) -> NodeRow {
        NodeRow {
            node: node.into(),
            advertise_url: Some(format!("http://{node}")),
            free_slots: free,
            ready,
        }
    }

    #[test]
    fn placement_prefers_the_ready_node_with_most_free_slots_and_spreads() {
        let mut peers = vec![row("a", 1, true), row("b", 2, true), row("c", 9, false)];
        assert_eq!(choose(&mut peers).as_deref(), Some("http://b"));
        let second = choose(&mut peers);
        assert!(second.is_some(), "a and b tie at 1");
        let third = choose(&mut peers);
        assert_ne!(second, third, "each placed create lowers its node's count");
        assert_eq!(
            choose(&mut peers),
            None,
            "c is not ready; nobody else has room"
        );
    }
}
