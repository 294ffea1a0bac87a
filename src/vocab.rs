//! Shared vocabulary: the small value types that several modules name.
//!
//! Window dimensions, session statuses and end reasons with their wire names, why a create
//! was refused, and why a client is disconnected. This module is a leaf: it imports nothing
//! from the rest of ingot, so every other module may use it without forming a cycle. It holds
//! no state and no behaviour beyond naming.

use serde::{Deserialize, Serialize};

/// Width and height of the browser window, in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Dimensions {
    /// Page width.
    pub width: u32,
    /// Page height.
    pub height: u32,
}

impl Default for Dimensions {
    fn default() -> Self {
        Dimensions {
            width: 1920,
            height: 1080,
        }
    }
}

/// The status a client sees, with Steel's wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The browser runs and clients may connect.
    Live,
    /// Ended normally (released, timed out, closed, gateway shutdown).
    Released,
    /// Ended because the browser failed.
    Failed,
}

impl Status {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Live => "live",
            Status::Released => "released",
            Status::Failed => "failed",
        }
    }

    /// Parses a `status` query value.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "live" => Some(Status::Live),
            "released" => Some(Status::Released),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// Why a session ended, with the wire names of Steel's `releaseReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Released through the API (one session or release-all).
    UserRequested,
    /// The session's `timeout` elapsed.
    Timeout,
    /// No client sent a CDP message for the session's `inactivityTimeout`.
    InactivityTimeout,
    /// A client sent `Browser.close`.
    BrowserClosed,
    /// Chromium crashed or exited, or the gateway lost its connection to it.
    BrowserCrashed,
    /// Chromium stopped answering the gateway's liveness probe (hung).
    BrowserUnresponsive,
    /// Chromium could not be started for this session.
    StartupFailed,
    /// The gateway was asked to stop (SIGTERM) while the session was live.
    GatewayShutdown,
    /// The browser's process tree went over the session memory limit
    /// (`--session-memory-max`) and was ended.
    MemoryLimit,
    /// The session's node lost the cluster: it could not renew its lease, and another node
    /// failed its sessions (the node itself ends them when it is heard from again).
    NodeLost,
    /// The create's caller was gone (it hung up, or its create timed out) by the time the
    /// session went live: nobody holds it, so it is ended at once.
    CreationAbandoned,
}

impl EndReason {
    /// Every reason, for registering metrics up front.
    pub const ALL: [EndReason; 11] = [
        EndReason::UserRequested,
        EndReason::Timeout,
        EndReason::InactivityTimeout,
        EndReason::BrowserClosed,
        EndReason::BrowserCrashed,
        EndReason::BrowserUnresponsive,
        EndReason::StartupFailed,
        EndReason::GatewayShutdown,
        EndReason::MemoryLimit,
        EndReason::NodeLost,
        EndReason::CreationAbandoned,
    ];

    /// The final status each reason leads to.
    pub fn status(self) -> Status {
        match self {
            EndReason::UserRequested
            | EndReason::Timeout
            | EndReason::InactivityTimeout
            | EndReason::BrowserClosed
            | EndReason::GatewayShutdown => Status::Released,
            EndReason::BrowserCrashed
            | EndReason::BrowserUnresponsive
            | EndReason::StartupFailed
            | EndReason::MemoryLimit
            | EndReason::NodeLost
            | EndReason::CreationAbandoned => Status::Failed,
        }
    }

    /// Wire name, for logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::UserRequested => "user_requested",
            EndReason::Timeout => "timeout",
            EndReason::InactivityTimeout => "inactivity_timeout",
            EndReason::BrowserClosed => "browser_closed",
            EndReason::BrowserCrashed => "browser_crashed",
            EndReason::BrowserUnresponsive => "browser_unresponsive",
            EndReason::StartupFailed => "startup_failed",
            EndReason::GatewayShutdown => "gateway_shutdown",
            EndReason::MemoryLimit => "memory_limit",
            EndReason::NodeLost => "node_lost",
            EndReason::CreationAbandoned => "creation_abandoned",
        }
    }
}

/// The reason recorded for sessions that a killed gateway left live; the next start closes
/// them as `failed` with this reason.
pub const GATEWAY_RESTART: &str = "gateway_restart";

/// Every `releaseReason` Steel's clients know (a strict client refuses anything else).
pub const STEEL_RELEASE_REASONS: [&str; 7] = [
    "user_requested",
    "timeout",
    "inactivity_timeout",
    "creation_timeout",
    "startup_failed",
    "browser_closed",
    "browser_crashed",
];

/// Steel's `releaseReason` for a reason ingot recorded. Steel's clients know only
/// [`STEEL_RELEASE_REASONS`], so ingot's finer causes are told in those words: a hung
/// browser, a browser ended over its memory limit, or a gateway killed under it is
/// `browser_crashed` (Steel: "crashed or its machine became unresponsive"), and a gateway shutdown ends a session as if its time were up.
/// Records, logs and metrics keep the precise cause.
pub fn steel_release_reason(recorded: &str) -> &'static str {
    match recorded {
        "user_requested" => "user_requested",
        "timeout" | "gateway_shutdown" => "timeout",
        "inactivity_timeout" => "inactivity_timeout",
        "creation_timeout" | "creation_abandoned" => "creation_timeout",
        "startup_failed" => "startup_failed",
        "browser_closed" => "browser_closed",
        _ => "browser_crashed",
    }
}

/// Why admission refused a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Too many creates were already waiting.
    QueueFull,
    /// No slot freed up within the queue timeout.
    QueueTimeout,
}

impl Rejection {
    /// Every rejection, for registering metrics up front.
    pub const ALL: [Rejection; 2] = [Rejection::QueueFull, Rejection::QueueTimeout];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
        }
    }
}

/// Why a create request got no session for a reason that is not the client's own mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFailure {
    /// Chromium could not be started (or started too late).
    BrowserStartFailed,
    /// The gateway is draining or shutting down.
    ShuttingDown,
    /// The usage record could not be written.
    UsageUnavailable,
    /// The create did not finish within `--create-timeout-ms`.
    TimedOut,
}

impl CreateFailure {
    /// Every failure, for registering metrics up front.
    pub const ALL: [CreateFailure; 4] = [
        CreateFailure::BrowserStartFailed,
        CreateFailure::ShuttingDown,
        CreateFailure::UsageUnavailable,
        CreateFailure::TimedOut,
    ];

    /// Label value and error code.
    pub fn as_str(self) -> &'static str {
        match self {
            CreateFailure::BrowserStartFailed => "browser_start_failed",
            CreateFailure::ShuttingDown => "shutting_down",
            CreateFailure::UsageUnavailable => "usage_unavailable",
            CreateFailure::TimedOut => "create_timeout",
        }
    }
}

/// Why the gateway disconnects a client. The module that owns client sockets turns it into
/// a WebSocket close frame; everything else only names the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client's session ended.
    SessionEnded(EndReason),
    /// The client left its queue of messages full for too long.
    NotReading,
}

#[cfg(test)]
mod steel_words {
    use super::*;

    #[test]
    fn every_recorded_reason_is_told_in_steels_words() {
        let steel = STEEL_RELEASE_REASONS;
        for reason in EndReason::ALL
            .map(EndReason::as_str)
            .iter()
            .chain([&GATEWAY_RESTART])
        {
            assert!(steel.contains(&steel_release_reason(reason)), "{reason}");
        }
        for word in steel {
            assert_eq!(
                steel_release_reason(word),
                word,
                "Steel's own words pass unchanged"
            );
        }
        assert_eq!(
            steel_release_reason("browser_unresponsive"),
            "browser_crashed"
        );
        assert_eq!(steel_release_reason("gateway_shutdown"), "timeout");
        assert_eq!(steel_release_reason("memory_limit"), "browser_crashed");
        assert_eq!(EndReason::MemoryLimit.status(), Status::Failed);
    }
}
