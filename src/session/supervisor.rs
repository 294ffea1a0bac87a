//! One task per live session: it waits for whatever ends the session first (timeout,
//! browser exit, lost connection, an end requested by a client or the API, or gateway
//! shutdown), then closes every client and reaps the browser.
//!
//! Because this task owns the browser process, there is exactly one path from "live" to
//! "reaped", whatever ended the session.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Session;
use super::quota::QuotaHold;
use super::registry::Registry;
use super::state::EndReason;
use crate::browser::BrowserProcess;
use crate::cdp::mux::{CommandError, Mux};

pub(super) async fn supervise(
    registry: Arc<Registry>,
    session: Arc<Session>,
    process: Arc<dyn BrowserProcess>,
    mux: Arc<Mux>,
    slot: (OwnedSemaphorePermit, QuotaHold),
    probe: LivenessProbe,
    shutdown: CancellationToken,
) {
    let deadline = tokio::time::Instant::from_std(session.deadline());
    let ended_here = tokio::select! {
        _ = session.end_requested.cancelled() => None,
        _ = tokio::time::sleep_until(deadline) => Some(EndReason::Timeout),
        exit = process.wait_exit() => {
            warn!(session_id = %session.id, %exit, "browser exited");
            Some(EndReason::BrowserCrashed)
        }
        _ = mux.lost() => {
            warn!(session_id = %session.id, "lost the connection to the browser");
            Some(EndReason::BrowserCrashed)
        }
        missed = unresponsive(&mux, probe) => {
            warn!(session_id = %session.id, timeout_ms = probe.timeout.as_millis() as u64, %missed,
                "browser did not answer the liveness probe; ending the session");
            Some(EndReason::BrowserUnresponsive)
        }
        _ = shutdown.cancelled() => Some(EndReason::GatewayShutdown),
    };
    if let Some(reason) = ended_here {
        // Losing this race to a concurrent request is fine: the first transition stands.
        let _ = session.lifecycle.end(reason);
    }
    let reason = session.end_reason().unwrap_or(EndReason::BrowserCrashed);

    mux.close_all(close_frame(reason));
    process.kill().await;
    drop(slot);
    registry.slot_freed();
    // Usage record and history first: whoever waits for the reap (a release call) then sees
    // them complete.
    registry.note_ended(&session, reason).await;
    session.reaped.cancel();
    info!(
        session_id = %session.id,
        status = ?reason.status(),
        reason = reason.as_str(),
        duration_ms = session.duration().as_millis() as u64,
        "session ended; browser reaped"
    );
}

/// How often the supervisor checks that the browser still answers, and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct LivenessProbe {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Resolves when the browser fails to answer `Browser.getVersion` within the probe's timeout
/// (a hung or stopped process: it neither answers nor exits). Never resolves otherwise.
async fn unresponsive(mux: &Mux, probe: LivenessProbe) -> String {
    loop {
        tokio::time::sleep(probe.interval).await;
        match tokio::time::timeout(probe.timeout, mux.command("Browser.getVersion", json!({})))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(CommandError::Timeout(..))) | Err(_) => {
                return format!("no answer within {:?}", probe.timeout);
            }
            // A closed connection is the crash branch's to report.
            Ok(Err(_)) => std::future::pending::<()>().await,
        }
    }
}

/// The close frame attached clients get for each way a session can end.
fn close_frame(reason: EndReason) -> CloseFrame {
    let (code, text) = match reason {
        EndReason::UserRequested => (CloseCode::Normal, "session released"),
        EndReason::BrowserClosed => (CloseCode::Normal, "browser closed"),
        EndReason::Timeout => (CloseCode::Away, "session timed out"),
        EndReason::GatewayShutdown => (CloseCode::Away, "gateway shutting down"),
        EndReason::BrowserCrashed | EndReason::StartupFailed => {
            (CloseCode::Error, "browser crashed")
        }
        EndReason::BrowserUnresponsive => (CloseCode::Error, "browser not responding"),
    };
    CloseFrame {
        code,
        reason: text.into(),
    }
}
