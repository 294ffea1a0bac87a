//! Sessions: what a client created, where it is in its life, and the browser behind it.
//!
//! * [`state`] is the state machine; nothing else decides transitions.
//! * [`params`] validates create bodies.
//! * [`registry`] holds every session, admits creates (capacity, queue) and answers list
//!   queries.
//! * [`pool`] keeps pre-launched browsers ready for new sessions.
//! * [`supervisor`] is the one task per session that ends it and always reaps its browser.
//!
//! This module must not know about HTTP or WebSocket framing.

pub mod params;
mod pool;
mod quota;
pub mod registry;
pub mod state;
pub mod supervisor;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cdp::mux::Mux;
use crate::metering::{self, Billable, SessionUsage};
use params::SessionOptions;
use state::{EndReason, Lifecycle, Phase, Refused};

/// One browser session.
pub struct Session {
    pub id: Uuid,
    /// Creation order, for listing newest first.
    seq: u64,
    pub created_at: OffsetDateTime,
    created: Instant,
    pub options: SessionOptions,
    /// The tenant that created it; `None` when the gateway runs without keys.
    pub tenant: Option<Arc<str>>,
    lifecycle: Lifecycle,
    browser: OnceLock<BrowserLink>,
    /// Cancelled when someone other than the supervisor ended the session.
    end_requested: CancellationToken,
    /// Cancelled once the browser is dead and its directory removed.
    reaped: CancellationToken,
    /// Billing record and CDP traffic counters.
    usage: SessionUsage,
}

/// What the session knows about its running browser.
struct BrowserLink {
    mux: Arc<Mux>,
    /// The reply to `Browser.getVersion`, for `/json/version`.
    version: Value,
}

impl Session {
    fn new(id: Uuid, seq: u64, options: SessionOptions, tenant: Option<Arc<str>>) -> Session {
        Session {
            id,
            seq,
            tenant,
            created_at: OffsetDateTime::now_utc(),
            created: Instant::now(),
            options,
            lifecycle: Lifecycle::new(),
            browser: OnceLock::new(),
            end_requested: CancellationToken::new(),
            reaped: CancellationToken::new(),
            usage: SessionUsage::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.lifecycle.phase()
    }

    /// Time from creation until now, or until the session ended.
    pub fn duration(&self) -> Duration {
        match self.phase() {
            Phase::Ended { at, .. } => at.saturating_duration_since(self.created),
            Phase::Starting | Phase::Live => self.created.elapsed(),
        }
    }

    /// Minutes billed: every started minute of the session's life, at least one.
    pub fn billed_minutes(&self) -> u64 {
        metering::billed_minutes(self.duration())
    }

    /// When the session will time out.
    pub fn deadline(&self) -> Instant {
        self.created + Duration::from_millis(self.options.timeout_ms)
    }

    /// The reason the session ended, if it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        match self.phase() {
            Phase::Ended { reason, .. } => Some(reason),
            Phase::Starting | Phase::Live => None,
        }
    }

    /// CDP events delivered to this session's clients.
    pub fn event_count(&self) -> u64 {
        self.browser
            .get()
            .map(|b| b.mux.events_delivered())
            .unwrap_or(0)
    }

    /// The browser's `Browser.getVersion` reply.
    pub fn browser_version(&self) -> Option<&Value> {
        self.browser.get().map(|b| &b.version)
    }

    /// The browser connection, while the session is live.
    pub fn mux(&self) -> Option<Arc<Mux>> {
        if self.phase().is_live() {
            self.browser.get().map(|b| b.mux.clone())
        } else {
            None
        }
    }

    /// Ends a live session for `reason` and has its supervisor tear it down. Returns how
    /// the session actually ended when someone else got there first.
    pub fn request_end(&self, reason: EndReason) -> Result<(), Refused> {
        self.lifecycle.end(reason)?;
        self.end_requested.cancel();
        Ok(())
    }

    /// Resolves once the browser is gone and its directory removed.
    pub async fn reaped(&self) {
        self.reaped.cancelled().await
    }
}

impl Billable for Session {
    fn session_id(&self) -> Uuid {
        self.id
    }

    fn created_at(&self) -> OffsetDateTime {
        self.created_at
    }

    fn billed_duration(&self) -> Duration {
        self.duration()
    }

    fn usage(&self) -> &SessionUsage {
        &self.usage
    }
}
