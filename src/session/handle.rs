//! [`Session`]: one browser session as the rest of the gateway sees it.
//!
//! Owns a session's identity, options, lifecycle, browser link and usage counters. Its
//! fields are private: the registry and the supervisor change a session only through the
//! methods here, and every change of state goes through [`Lifecycle`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::params::SessionOptions;
use super::state::{Lifecycle, Phase, Refused};
use crate::browser::BrowserProcess;
use crate::cdp::mux::{CommandError, Mux};
use crate::metering::{self, Billable, SessionUsage};
use crate::vocab::EndReason;

/// One browser session.
pub(crate) struct Session {
    /// The session's id, as clients name it.
    pub id: Uuid,
    /// Wall-clock creation time.
    pub created_at: OffsetDateTime,
    created: Instant,
    /// What the create request asked for.
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
    /// When a client last sent a CDP message, in milliseconds since `created`.
    active_at_ms: AtomicU64,
    /// How long the session may live, in milliseconds: `options.timeout_ms` until a client
    /// extends it.
    timeout_ms: AtomicU64,
    /// Woken when the timeout changes, so that the supervisor sleeps until the new one.
    timeout_moved: Notify,
    /// Bytes carried by the forwarding proxy of a proxy with credentials.
    proxy_bytes: Arc<AtomicU64>,
    /// Whether its browser is frozen (its node fenced itself), and how often it was.
    frozen: watch::Sender<Frozen>,
}

/// Whether a session's browser is frozen, and how many times it has been: a probe that
/// went unanswered across a freeze proves nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Frozen {
    /// Frozen now.
    pub now: bool,
    /// Freezes so far.
    pub times: u64,
}

/// Why a session's timeout could not be changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotExtended {
    /// The session has ended.
    #[error("the session has ended")]
    Ended,
    /// The new total is already over.
    #[error(
        "the session has already lived {lived_ms} ms, more than the new timeout of {asked_ms} ms"
    )]
    InThePast {
        /// How long the session has lived.
        lived_ms: u64,
        /// The timeout asked for.
        asked_ms: u64,
    },
}

/// What the session knows about its running browser.
struct BrowserLink {
    mux: Arc<Mux>,
    /// The browser's process, for freezing it. Weak: the supervisor owns the process, and
    /// an ended session kept in the history must not hold its sockets and pipes open.
    process: Weak<dyn BrowserProcess>,
    /// The reply to `Browser.getVersion`, for `/json/version`.
    version: Value,
}

/// Why a starting session could not go live.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotLive {
    /// The browser took longer to start than the session may live.
    #[error(
        "the browser took {took_ms} ms to start, longer than the session's timeout of {timeout_ms} ms"
    )]
    StartedTooLate {
        /// Time from the create request to the browser's readiness.
        took_ms: u64,
        /// The session's `timeout`.
        timeout_ms: u64,
    },
    /// The state machine refused.
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl Session {
    pub(super) fn new(id: Uuid, options: SessionOptions, tenant: Option<Arc<str>>) -> Session {
        let options_timeout = options.timeout_ms;
        Session {
            id,
            tenant,
            created_at: OffsetDateTime::now_utc(),
            created: Instant::now(),
            options,
            lifecycle: Lifecycle::new(),
            browser: OnceLock::new(),
            frozen: watch::channel(Frozen::default()).0,
            end_requested: CancellationToken::new(),
            reaped: CancellationToken::new(),
            usage: SessionUsage::default(),
            active_at_ms: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(options_timeout),
            timeout_moved: Notify::new(),
            proxy_bytes: Arc::default(),
        }
    }

    /// What the browser host needs to reach the session's proxy with its credentials.
    pub(crate) fn proxy_auth(&self) -> Option<crate::browser::proxy_auth::ProxyAuth> {
        let authorization = self.options.proxy_authorization.as_ref()?;
        let server = self.options.proxy_server.as_deref()?;
        let upstream = server.split_once("://").map_or(server, |(_, rest)| rest);
        Some(crate::browser::proxy_auth::ProxyAuth {
            upstream: upstream.to_owned(),
            authorization: authorization.0.clone(),
            bytes: self.proxy_bytes.clone(),
        })
    }

    /// Bytes carried through the session's proxy, where ingot can count them (a proxy with
    /// credentials goes through ingot's forwarder).
    pub(crate) fn proxy_bytes_used(&self) -> u64 {
        self.proxy_bytes.load(Ordering::Relaxed)
    }

    /// How long the session may live in all, in milliseconds.
    pub(crate) fn timeout_ms(&self) -> u64 {
        self.timeout_ms.load(Ordering::Acquire)
    }

    /// The pages of the live session, asked of its browser; `None` once it ended.
    pub(crate) async fn pages(&self) -> Option<Result<Vec<super::view::PageInfo>, CommandError>> {
        let mux = self.mux()?;
        let reply = mux
            .command("Target.getTargets", serde_json::json!({}))
            .await;
        Some(reply.map(|r| super::view::PageInfo::from_targets(&r)))
    }

    /// The session's context (cookies and web storage), read from its browser; `None` once
    /// it ended.
    pub(crate) async fn context(&self) -> Option<Result<Value, CommandError>> {
        let mux = self.mux()?;
        Some(super::context::read(&mux).await)
    }

    /// Sets how long the live session may live in all, counted from its creation.
    pub(crate) fn extend(&self, total_ms: u64) -> Result<(), NotExtended> {
        if !self.phase().is_live() {
            return Err(NotExtended::Ended);
        }
        let lived_ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        if total_ms <= lived_ms {
            return Err(NotExtended::InThePast {
                lived_ms,
                asked_ms: total_ms,
            });
        }
        self.timeout_ms.store(total_ms, Ordering::Release);
        self.timeout_moved.notify_waiters();
        Ok(())
    }

    /// Resolves when the session's timeout is reached, following any extension.
    pub(crate) async fn timed_out(&self) {
        loop {
            let moved = self.timeout_moved.notified();
            let deadline = tokio::time::Instant::from_std(self.deadline());
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= self.deadline() {
                        return;
                    }
                }
                _ = moved => {}
            }
        }
    }

    /// A client sent a CDP message: the inactivity timeout starts again. Without an
    /// inactivity timeout this costs nothing (no clock is read).
    pub(crate) fn note_activity(&self) {
        if self.options.inactivity_timeout_ms.is_none() {
            return;
        }
        let ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.active_at_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long no client has sent a CDP message (since creation, if none ever did).
    pub(crate) fn idle_for(&self) -> Duration {
        let active_at = Duration::from_millis(self.active_at_ms.load(Ordering::Relaxed));
        self.created.elapsed().saturating_sub(active_at)
    }

    /// Where the session is in its life.
    pub(crate) fn phase(&self) -> Phase {
        self.lifecycle.phase()
    }

    /// Time from creation until now, or until the session ended.
    pub(crate) fn duration(&self) -> Duration {
        match self.phase() {
            Phase::Ended { at, .. } => at.saturating_duration_since(self.created),
            Phase::Starting | Phase::Live => self.created.elapsed(),
        }
    }

    /// Minutes billed: every started minute of the session's life, at least one.
    pub(crate) fn billed_minutes(&self) -> u64 {
        metering::billed_minutes(self.duration())
    }

    /// When the session will time out.
    pub(crate) fn deadline(&self) -> Instant {
        self.created + Duration::from_millis(self.timeout_ms())
    }

    /// The reason the session ended, if it has.
    pub(crate) fn end_reason(&self) -> Option<EndReason> {
        match self.phase() {
            Phase::Ended { reason, .. } => Some(reason),
            Phase::Starting | Phase::Live => None,
        }
    }

    /// CDP events delivered to this session's clients.
    pub(crate) fn event_count(&self) -> u64 {
        self.browser
            .get()
            .map(|b| b.mux.events_delivered())
            .unwrap_or(0)
    }

    /// The user agent the browser's pages send: the one asked for, else the browser's own
    /// without its headless mark (what the multiplexer presents them as).
    pub(crate) fn user_agent(&self) -> Option<String> {
        self.options.user_agent.clone().or_else(|| {
            self.browser_version()
                .and_then(|v| v.get("userAgent"))
                .and_then(Value::as_str)
                .map(crate::cdp::identity::default_user_agent)
        })
    }

    /// The browser's `Browser.getVersion` reply.
    pub(crate) fn browser_version(&self) -> Option<&Value> {
        self.browser.get().map(|b| &b.version)
    }

    /// The browser connection, while the session is live.
    pub(crate) fn mux(&self) -> Option<Arc<Mux>> {
        if self.phase().is_live() {
            self.browser.get().map(|b| b.mux.clone())
        } else {
            None
        }
    }

    /// Ends a live session for `reason` and has its supervisor tear it down. Fails with how
    /// the session actually ended when someone else got there first.
    pub(crate) fn request_end(&self, reason: EndReason) -> Result<(), Refused> {
        self.lifecycle.end(reason)?;
        self.end_requested.cancel();
        Ok(())
    }

    /// Whether the session's final usage record is written (once it ended).
    pub(crate) fn final_record_written(&self) -> bool {
        self.usage.final_written()
    }

    /// Resolves once the browser is gone and its directory removed.
    pub(crate) async fn reaped(&self) {
        self.reaped.cancelled().await
    }

    /// Connects the session to its started browser.
    pub(super) fn attach_browser(
        &self,
        mux: Arc<Mux>,
        process: &Arc<dyn BrowserProcess>,
        version: Value,
    ) {
        let _ = self.browser.set(BrowserLink {
            mux,
            process: Arc::downgrade(process),
            version,
        });
    }

    /// Freezes (`true`) or thaws the session's browser: a frozen browser runs nothing and
    /// answers nothing. Thawing counts as client activity, so that the time frozen does not
    /// count against the session's `inactivityTimeout`.
    pub(crate) fn freeze(&self, frozen: bool) {
        let Some(link) = self.browser.get() else {
            return;
        };
        if !frozen {
            // Before the thaw is seen: the inactivity watch must not count the time frozen.
            self.note_activity();
        }
        if let Some(process) = link.process.upgrade() {
            process.freeze(frozen);
        }
        self.frozen.send_modify(|state| {
            if frozen && !state.now {
                state.times += 1;
            }
            state.now = frozen;
        });
    }

    /// Whether the session's browser is frozen, and how often it was.
    pub(super) fn frozen(&self) -> watch::Receiver<Frozen> {
        self.frozen.subscribe()
    }

    /// As [`Session::request_end`], with the session ended as of `at`: its node stopped
    /// serving it then (it was cut off from the cluster), so it is billed until then.
    pub(crate) fn request_end_at(&self, reason: EndReason, at: Instant) -> Result<(), Refused> {
        self.lifecycle.end_at(reason, at)?;
        self.end_requested.cancel();
        Ok(())
    }

    /// `starting → live`, unless the browser took longer to start than the session may
    /// live: such a session is never shown as live.
    pub(super) fn go_live(&self) -> Result<(), NotLive> {
        if Instant::now() >= self.deadline() {
            return Err(NotLive::StartedTooLate {
                took_ms: self.created.elapsed().as_millis() as u64,
                timeout_ms: self.options.timeout_ms,
            });
        }
        Ok(self.lifecycle.mark_live()?)
    }

    /// Ends the session from its supervisor (no one else is told: the supervisor acts on
    /// it). Losing the race to a concurrent end is fine: the first transition stands.
    pub(super) fn end_here(&self, reason: EndReason) {
        let _ = self.lifecycle.end(reason);
    }

    /// Resolves when someone other than the supervisor ended the session.
    pub(super) async fn end_requested(&self) {
        self.end_requested.cancelled().await
    }

    /// A live session whose start could not be completed (metering failed, the gateway
    /// began shutting down) ends as crashed; a starting one as `startup_failed`. Either way
    /// there is no browser left to reap.
    pub(super) fn abandon_start(&self) {
        if self.phase().is_live() {
            let _ = self.lifecycle.end(EndReason::BrowserCrashed);
        } else {
            let _ = self.lifecycle.end(EndReason::StartupFailed);
        }
        self.reaped.cancel();
    }

    /// The browser is gone and its directory removed.
    pub(super) fn mark_reaped(&self) {
        self.reaped.cancel();
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

    fn event_count(&self) -> u64 {
        Session::event_count(self)
    }

    fn details(&self) -> String {
        serde_json::to_string(&super::view::Details::of(self)).unwrap_or_else(|_| "{}".into())
    }
}
