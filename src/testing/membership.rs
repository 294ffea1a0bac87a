//! [`InMemoryMembership`]: a cluster's lease table in memory, for in-process tests of a
//! gateway's fence. It can be cut off (every call then fails at its deadline, as a silently
//! dropped path does) and told that the cluster failed the node's live sessions. As a
//! directory it is a cluster of one node, which the cut does not reach: no other node, no
//! session elsewhere. (Several gateways share an [`super::InMemoryCluster`].)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use crate::cluster::directory::{NodeDirectory, NodeRow};
use crate::cluster::lease::Membership;
use crate::metering::MeterError;
use crate::metering::postgres::renewal_slot;

/// One node's lease in an in-memory cluster.
pub struct InMemoryMembership {
    slot: Duration,
    cut: AtomicBool,
    /// The next check reports every live session of the node as failed by the cluster.
    fail_live: AtomicBool,
    renewals: AtomicU64,
}

impl InMemoryMembership {
    /// A membership for a node whose lease lasts `lease`.
    pub fn new(lease: Duration) -> InMemoryMembership {
        InMemoryMembership {
            slot: renewal_slot(lease),
            cut: AtomicBool::new(false),
            fail_live: AtomicBool::new(false),
            renewals: AtomicU64::new(0),
        }
    }

    /// Cuts the node off from the database (`true`), or heals the cut.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// Has the cluster fail every session that is live on the node now (as a survivor
    /// would once the node's lease ran out).
    pub fn fail_live_sessions(&self) {
        self.fail_live.store(true, Ordering::SeqCst);
    }

    /// The cluster's secret.
    pub fn secret(&self) -> String {
        "in-memory-membership-secret".to_owned()
    }

    /// Successful renewals so far.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::SeqCst)
    }

    async fn reach(&self) -> Result<(), MeterError> {
        if self.cut.load(Ordering::SeqCst) {
            tokio::time::sleep(self.slot).await;
            return Err(MeterError::DeadlineExceeded {
                kind: "lease",
                ms: u64::try_from(self.slot.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }
}

impl Membership for InMemoryMembership {
    fn renew(&self) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(async move {
            self.reach().await?;
            self.renewals.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn ended_elsewhere(&self, records: Vec<i64>) -> BoxFuture<'_, Result<Vec<i64>, MeterError>> {
        Box::pin(async move {
            self.reach().await?;
            if self.fail_live.swap(false, Ordering::SeqCst) {
                return Ok(records);
            }
            Ok(Vec::new())
        })
    }

    fn fail_dead_nodes(&self, _margin: Duration) -> BoxFuture<'_, Result<u64, MeterError>> {
        Box::pin(async move {
            self.reach().await?;
            Ok(0)
        })
    }
}

impl NodeDirectory for InMemoryMembership {
    fn cluster_secret(&self) -> BoxFuture<'_, Result<String, MeterError>> {
        Box::pin(async move { Ok(self.secret()) })
    }

    fn advertise<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, Result<(), MeterError>> {
        Box::pin(async move { Ok(()) })
    }

    fn publish(&self, _free: i64, _ready: bool) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(async move { Ok(()) })
    }

    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRow>, MeterError>> {
        Box::pin(async move { Ok(Vec::new()) })
    }

    fn owner_of<'a>(
        &'a self,
        _id: Uuid,
        _tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>> {
        Box::pin(async move { Ok(None) })
    }

    fn holder_of<'a>(
        &'a self,
        _id: Uuid,
        _tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, MeterError>> {
        Box::pin(async move { Ok(None) })
    }

    fn live_sessions<'a>(
        &'a self,
        _tenant: Option<&'a str>,
        _limit: i64,
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String)>, MeterError>> {
        Box::pin(async move { Ok(Vec::new()) })
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), MeterError>> {
        Box::pin(async move { Ok(()) })
    }
}
