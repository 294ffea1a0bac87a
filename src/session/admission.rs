//! Admission: whether a create may start a session now, may wait for room, or is refused.
//!
//! Owns the session slots (a semaphore of `max_sessions` permits, shared with the warm
//! pool), the queue of creates waiting for a slot, the per-tenant quota, and the one entry
//! check of a create ([`Registry::admit_entry`]: its id unused, its tenant within quota),
//! which runs in the same place on a single node and in a cluster, before a browser is
//! spent. It hands out [`Slot`]s and never starts or ends a session itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use uuid::Uuid;

use super::create::CreateError;
use super::pool::{WarmBrowser, WarmPool};
pub(crate) use super::quota::OverQuota;
use super::quota::{QuotaHold, TenantQuota};
use super::registry::Registry;
use crate::metering::MeterError;
use crate::telemetry;
use crate::vocab::Rejection;

/// Limits on live sessions and on creates waiting for one to end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    /// Most sessions (plus pooled browsers) at once.
    pub max_sessions: usize,
    /// Pre-launched browsers to keep ready.
    pub pool_size: usize,
    /// The warm pool's quiet time after a hand-out, and a new pooled browser's settling time.
    pub pool_settle: Duration,
    /// Most creates waiting for a slot; beyond it a create is refused at once.
    pub queue_limit: usize,
    /// How long a create waits for a slot.
    pub queue_timeout: Duration,
    /// Most sessions one tenant may have live (or starting) at once.
    pub per_tenant: Option<usize>,
    /// Longest a create may take, queue included, before it is answered 503.
    pub create_timeout: Duration,
}

/// Why admission refused a create.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Every slot is taken and the queue is full.
    #[error("all session slots are in use and {0} creates are already waiting; retry later")]
    QueueFull(usize),
    /// No slot freed up in time.
    #[error("all session slots stayed in use for {0:?}; release a session or retry later")]
    QueueTimeout(Duration),
    /// The gateway takes no new sessions.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The tenant is at its limit.
    #[error(transparent)]
    OverQuota(#[from] OverQuota),
}

/// Room for one session.
pub(super) enum Slot {
    /// A pooled browser, with its permit.
    Warm(WarmBrowser),
    /// A permit; the browser is still to be launched.
    Cold(OwnedSemaphorePermit),
}

/// Hands out session slots.
pub(super) struct Admitter {
    limits: Admission,
    capacity: Arc<Semaphore>,
    /// Creates waiting for a slot.
    queued: AtomicUsize,
    pool: Arc<WarmPool>,
    quota: TenantQuota,
    /// Cancelled when new sessions are refused.
    closed: CancellationToken,
}

/// Counts a create in the queue for as long as it is held.
struct QueueTicket<'a>(&'a Admitter);

impl<'a> QueueTicket<'a> {
    fn new(admitter: &'a Admitter) -> Self {
        telemetry::admission_queue(admitter.queued.load(Ordering::Acquire));
        QueueTicket(admitter)
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

impl Admitter {
    pub(super) fn new(
        limits: Admission,
        capacity: Arc<Semaphore>,
        pool: Arc<WarmPool>,
        closed: CancellationToken,
    ) -> Admitter {
        Admitter {
            limits,
            capacity,
            queued: AtomicUsize::new(0),
            pool,
            quota: TenantQuota::new(limits.per_tenant),
            closed,
        }
    }

    /// The limits in force.
    pub(super) fn limits(&self) -> &Admission {
        &self.limits
    }

    /// Takes a place in `tenant`'s quota, given back when the hold is dropped.
    pub(super) fn reserve_quota(&self, tenant: Option<Arc<str>>) -> Result<QuotaHold, Refusal> {
        Ok(self.quota.reserve(tenant)?)
    }

    /// Whether a create could start now without waiting.
    pub(super) fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// How many creates could start now without waiting: free slots plus pooled browsers.
    pub(super) fn room(&self) -> usize {
        self.capacity.available_permits() + self.pool.ready_count()
    }

    /// Finds room for one more session: a pooled browser when the session can use one, else
    /// a free slot, else a pooled browser's slot, else a place in the queue until a slot or a
    /// pooled browser frees up, for at most the queue timeout.
    pub(super) async fn admit(&self, poolable: bool) -> Result<Slot, Refusal> {
        if let Some(slot) = self.admit_now(poolable).await {
            return Ok(slot);
        }
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let _leave = QueueTicket::new(self);
        if queued >= self.limits.queue_limit {
            telemetry::admission_rejected(Rejection::QueueFull);
            return Err(Refusal::QueueFull(self.limits.queue_limit));
        }
        self.pool.set_waiters(true);
        if !self.limits.queue_timeout.is_zero() {
            debug!(queued = queued + 1, "create waits for a free slot");
        }
        self.wait_for_room(poolable).await
    }

    /// Waits in the queue until a slot or a pooled browser frees up.
    async fn wait_for_room(&self, poolable: bool) -> Result<Slot, Refusal> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.limits.queue_timeout;
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
                    let permit = permit.map_err(|_| Refusal::ShuttingDown)?;
                    telemetry::admission_waited(started.elapsed());
                    return Ok(Slot::Cold(permit));
                }
                _ = &mut became_ready => {}
                _ = tokio::time::sleep_until(deadline) => {
                    telemetry::admission_rejected(Rejection::QueueTimeout);
                    return Err(Refusal::QueueTimeout(self.limits.queue_timeout));
                }
                _ = self.closed.cancelled() => return Err(Refusal::ShuttingDown),
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
}

impl Registry {
    /// The entry check of every create, on a single node and in a cluster alike, before
    /// it waits for a slot or spends a browser: the id asked for (`id`) must be unused, and
    /// `tenant` within its quota. Holds the tenant's place until the hold is dropped.
    ///
    /// - The id is checked against this process's sessions and the records: a single
    ///   node's own, and in a cluster the shared ledger, so an id live or ended on any node
    ///   is refused with the same answer whoever asks.
    /// - The quota is checked against this node's live and starting sessions (the hold)
    ///   and, where the records are shared, the tenant's live sessions on every node.
    ///
    /// The record's insert repeats both atomically, but only to catch two creates that
    /// passed this check at the same moment; a node that places a create elsewhere checks
    /// nothing itself and passes the other node's refusal on.
    pub(super) async fn admit_entry(
        &self,
        id: Option<Uuid>,
        tenant: Option<&Arc<str>>,
    ) -> Result<QuotaHold, CreateError> {
        if let Some(id) = id {
            self.refuse_used_id(id).await?;
        }
        let hold = self.admitter.reserve_quota(tenant.cloned())?;
        self.within_cluster_quota(tenant).await?;
        Ok(hold)
    }

    /// Refuses an id that a session of any tenant has or had: one in this process's
    /// directory, or one with a usage record (live on any node, or ended, however old).
    async fn refuse_used_id(&self, id: Uuid) -> Result<(), CreateError> {
        if self.directory.contains(&id) {
            return Err(CreateError::Duplicate(id));
        }
        match self.meter.session_id_used(id).await {
            Ok(false) => Ok(()),
            Ok(true) => {
                debug!(session_id = %id, "create refused: the id was used before");
                Err(CreateError::Duplicate(id))
            }
            Err(e) => Err(records_unavailable(e)),
        }
    }

    /// Where the records are shared, refuses a create of a tenant already at its quota on
    /// all nodes together; a single node's records count nothing beyond the hold.
    async fn within_cluster_quota(&self, tenant: Option<&Arc<str>>) -> Result<(), CreateError> {
        let (Some(tenant), Some(limit)) = (tenant, self.admitter.limits().per_tenant) else {
            return Ok(());
        };
        match self.meter.live_in_cluster(tenant).await {
            Ok(Some(live)) if live >= limit as u64 => Err(CreateError::Refused(
                OverQuota {
                    tenant: tenant.clone(),
                    limit,
                }
                .into(),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(records_unavailable(e)),
        }
    }
}

/// A create refused because the records could not be read: 503 while the shared database
/// does not answer, else the usage database's own failure.
fn records_unavailable(e: MeterError) -> CreateError {
    match e {
        e @ MeterError::DeadlineExceeded { .. } => CreateError::DatabaseUnavailable(e.to_string()),
        MeterError::Database(e) => CreateError::DatabaseUnavailable(e),
        e => CreateError::Usage(e.to_string()),
    }
}
