//! Per-tenant limit on sessions live (or starting) at once.
//!
//! Owns the count of each tenant's sessions; the registry reserves a place before a session
//! starts and the place is given back when the reservation is dropped, whatever happens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// A tenant is at its limit.
#[derive(Debug, thiserror::Error)]
#[error("tenant {tenant} already has {limit} live sessions, its limit; release one or retry later")]
pub struct OverQuota {
    pub tenant: Arc<str>,
    pub limit: usize,
}

/// Sessions per tenant, against one limit for every tenant.
pub(super) struct TenantQuota {
    limit: Option<usize>,
    counts: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// One session's place in its tenant's count, given back on drop.
pub(super) struct QuotaHold {
    counts: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    tenant: Option<Arc<str>>,
}

impl TenantQuota {
    pub(super) fn new(limit: Option<usize>) -> TenantQuota {
        TenantQuota {
            limit,
            counts: Arc::default(),
        }
    }

    /// Takes a place for one more session of `tenant`. Without a tenant (no keys) only the
    /// gateway's own limit applies.
    pub(super) fn reserve(&self, tenant: Option<Arc<str>>) -> Result<QuotaHold, OverQuota> {
        if let Some(name) = &tenant {
            let mut counts = lock(&self.counts);
            let count = counts.entry(name.clone()).or_insert(0);
            if let Some(limit) = self.limit
                && *count >= limit
            {
                return Err(OverQuota {
                    tenant: name.clone(),
                    limit,
                });
            }
            *count += 1;
        }
        Ok(QuotaHold {
            counts: self.counts.clone(),
            tenant,
        })
    }
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        if let Some(name) = &self.tenant {
            let mut counts = lock(&self.counts);
            if let Some(count) = counts.get_mut(name) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_tenant_and_gives_places_back() {
        let quota = TenantQuota::new(Some(2));
        let alice: Arc<str> = "alice".into();
        let a1 = quota.reserve(Some(alice.clone())).expect("first");
        let _a2 = quota.reserve(Some(alice.clone())).expect("second");
        let over = quota
            .reserve(Some(alice.clone()))
            .err()
            .expect("third refused");
        assert_eq!((&*over.tenant, over.limit), ("alice", 2));
        let _b = quota
            .reserve(Some("bob".into()))
            .expect("bob has his own count");
        for _ in 0..10 {
            let _open = quota.reserve(None).expect("no tenant, no quota");
        }
        drop(a1);
        assert!(quota.reserve(Some(alice)).is_ok());
    }
}
