//! One task per live session: it waits for whatever ends the session first (timeout,
//! browser exit, lost connection, an end requested by a client or the API, or gateway
//! shutdown), then closes every client and reaps the browser.
//!
//! Because this task owns the browser process, there is exactly one path from "live" to
//! "reaped", whatever ended the session. It tells the multiplexer why clients must go and
//! leaves close frames to the proxy.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Session;
use super::handle::Frozen;
use super::quota::QuotaHold;
use crate::browser::{BrowserExit, BrowserProcess};
use crate::cdp::mux::{CommandError, Mux};
use crate::vocab::{Disconnect, EndReason};

/// Supervises one live session until it ends, then disconnects its clients, reaps its
/// browser and gives its slot back. Returns how the session ended; the caller records it.
pub(super) async fn supervise(
    session: &Session,
    process: Arc<dyn BrowserProcess>,
    mux: Arc<Mux>,
    slot: (OwnedSemaphorePermit, QuotaHold),
    probe: LivenessProbe,
    shutdown: CancellationToken,
) -> EndReason {
    let ended_here = tokio::select! {
        _ = session.end_requested() => None,
        _ = session.timed_out() => Some(EndReason::Timeout),
        idle = inactive(session) => {
            info!(session_id = %session.id, idle_ms = idle.as_millis() as u64,
                "no client activity for the session's inactivityTimeout; releasing it");
            Some(EndReason::InactivityTimeout)
        }
        exit = process.wait_exit() => Some(exit_reason(session, &exit)),
        _ = mux.lost() => Some(lost_reason(session, process.as_ref()).await),
        missed = unresponsive(&mux, probe, session.frozen()) => {
            warn!(session_id = %session.id, timeout_ms = probe.timeout.as_millis() as u64, %missed,
                "browser did not answer the liveness probe; ending the session");
            Some(EndReason::BrowserUnresponsive)
        }
        _ = shutdown.cancelled() => Some(EndReason::GatewayShutdown),
    };
    if let Some(reason) = ended_here {
        session.end_here(reason);
    }
    let reason = session.end_reason().unwrap_or(EndReason::BrowserCrashed);

    mux.close_all(Disconnect::SessionEnded(reason));
    process.kill().await;
    drop(slot);
    info!(
        session_id = %session.id,
        status = ?reason.status(),
        reason = reason.as_str(),
        duration_ms = session.duration().as_millis() as u64,
        "session ended; browser reaped"
    );
    reason
}

/// How long, once the connection to the browser is lost, the supervisor waits for the
/// browser's exit to tell why: a browser its host ended over the memory limit loses its pipe
/// before the host reports the exit.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Why the session ends, for a browser that exited this way.
fn exit_reason(session: &Session, exit: &BrowserExit) -> EndReason {
    if *exit == BrowserExit::MemoryLimit {
        warn!(session_id = %session.id, %exit, "browser ended over the session memory limit");
        EndReason::MemoryLimit
    } else {
        warn!(session_id = %session.id, %exit, "browser exited");
        EndReason::BrowserCrashed
    }
}

/// Why the session ends, for a browser whose connection was lost: its exit's reason when it
/// exits within [`EXIT_GRACE`], a crash otherwise.
async fn lost_reason(session: &Session, process: &dyn BrowserProcess) -> EndReason {
    match tokio::time::timeout(EXIT_GRACE, process.wait_exit()).await {
        Ok(exit) => {
            let reason = exit_reason(session, &exit);
            info!(session_id = %session.id, "the connection to the browser was lost as it exited");
            reason
        }
        Err(_) => {
            warn!(session_id = %session.id, "lost the connection to the browser");
            EndReason::BrowserCrashed
        }
    }
}

/// Resolves once no client has sent a CDP message for the session's `inactivityTimeout`,
/// with how long that was; never when it has none. Time frozen (the node was fenced, and no
/// client could send anything) does not count: thawing counts as activity.
async fn inactive(session: &Session) -> Duration {
    let mut frozen = session.frozen();
    let Some(limit) = session
        .options
        .inactivity_timeout_ms
        .map(Duration::from_millis)
    else {
        return std::future::pending().await;
    };
    loop {
        if frozen.wait_for(|f| !f.now).await.is_err() {
            return std::future::pending().await;
        }
        let idle = session.idle_for();
        if idle >= limit && !frozen.borrow().now {
            return idle;
        }
        tokio::select! {
            _ = tokio::time::sleep(limit.saturating_sub(idle)) => {}
            _ = frozen.changed() => {}
        }
    }
}

/// How often the supervisor checks that the browser still answers, and how long it waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LivenessProbe {
    /// Time between probes.
    pub interval: Duration,
    /// How long the browser may take to answer one.
    pub timeout: Duration,
}

/// Resolves when the browser fails to answer `Browser.getVersion` within the probe's timeout
/// (a hung or stopped process: it neither answers nor exits). Never resolves otherwise. A
/// browser frozen on purpose (its node is fenced) is not probed, and a probe that a freeze
/// interrupted proves nothing.
async fn unresponsive(
    mux: &Mux,
    probe: LivenessProbe,
    mut frozen: watch::Receiver<Frozen>,
) -> String {
    loop {
        tokio::time::sleep(probe.interval).await;
        let Ok(before) = frozen.wait_for(|f| !f.now).await.map(|f| *f) else {
            return std::future::pending().await;
        };
        match tokio::time::timeout(probe.timeout, mux.command("Browser.getVersion", json!({})))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(CommandError::Timeout(..))) | Err(_) => {
                if *frozen.borrow() != before {
                    continue;
                }
                return format!("no answer within {:?}", probe.timeout);
            }
            // A closed connection is the crash branch's to report.
            Ok(Err(_)) => std::future::pending::<()>().await,
        }
    }
}
