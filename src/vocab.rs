//! Shared vocabulary: the small value types that several modules name.
//!
//! Window dimensions, session statuses and end reasons with their wire names, the words a
//! usage record stores for its status and end reason ([`RecordStatus`], [`RecordReason`]) and
//! their one mapping to Steel's words, why a create was refused, and why a client is
//! disconnected. This module is a leaf: it imports nothing
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
pub(crate) enum Status {
    /// The browser runs and clients may connect.
    Live,
    /// Ended normally (released, timed out, closed, gateway shutdown).
    Released,
    /// Ended because the browser failed.
    Failed,
}

impl Status {
    /// Wire name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Live => "live",
            Status::Released => "released",
            Status::Failed => "failed",
        }
    }

    /// Parses a `status` query value.
    pub(crate) fn parse(s: &str) -> Option<Status> {
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
pub(crate) enum EndReason {
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
    pub(crate) const ALL: [EndReason; 11] = [
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
    pub(crate) fn status(self) -> Status {
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
    pub(crate) fn as_str(self) -> &'static str {
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

impl EndReason {
    /// Steel's `releaseReason` for this reason (see [`RecordReason::steel`]).
    pub(crate) fn steel(self) -> &'static str {
        RecordReason::from(self).steel()
    }
}

/// A word in a stored record that this ingot does not know: a column holds something no
/// version of ingot writes (or a newer one does). Reading such a record fails with this
/// rather than guess what the record says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored record's {column} is {word:?}, which this ingot does not know")]
pub struct UnknownWord {
    /// The column: `status` or `reason`.
    pub column: &'static str,
    /// What it holds.
    pub word: String,
}

/// Where a session's record stands, as the usage database stores it (its `status`
/// column). The stored words never change: databases written by earlier versions must read
/// back. What a client sees is [`RecordStatus::steel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RecordStatus {
    /// The session runs (or ran until its node was killed; the next start closes it).
    Live,
    /// It ended normally.
    Released,
    /// It ended because something failed.
    Failed,
}

impl RecordStatus {
    /// Every status; the schemas' `CHECK` lists exactly these words.
    pub(crate) const ALL: [RecordStatus; 3] = [
        RecordStatus::Live,
        RecordStatus::Released,
        RecordStatus::Failed,
    ];

    /// The stored word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Live => "live",
            RecordStatus::Released => "released",
            RecordStatus::Failed => "failed",
        }
    }

    /// The status a client sees: Steel's `status`.
    pub(crate) fn steel(self) -> Status {
        match self {
            RecordStatus::Live => Status::Live,
            RecordStatus::Released => Status::Released,
            RecordStatus::Failed => Status::Failed,
        }
    }

    /// The records a client's `status` filter (Steel's word) selects.
    pub(crate) fn of_steel(status: Status) -> RecordStatus {
        match status {
            Status::Live => RecordStatus::Live,
            Status::Released => RecordStatus::Released,
            Status::Failed => RecordStatus::Failed,
        }
    }
}

impl std::str::FromStr for RecordStatus {
    type Err = UnknownWord;

    fn from_str(word: &str) -> Result<RecordStatus, UnknownWord> {
        RecordStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| UnknownWord {
                column: "status",
                word: word.to_owned(),
            })
    }
}

/// Why a record says its session ended, as the usage database stores it (its `reason`
/// column): how a session ended ([`EndReason`]), or that the gateway running it was
/// killed. The stored words never change; what a client sees is [`RecordReason::steel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RecordReason {
    /// [`EndReason::UserRequested`].
    UserRequested,
    /// [`EndReason::Timeout`].
    Timeout,
    /// [`EndReason::InactivityTimeout`].
    InactivityTimeout,
    /// [`EndReason::BrowserClosed`].
    BrowserClosed,
    /// [`EndReason::BrowserCrashed`].
    BrowserCrashed,
    /// [`EndReason::BrowserUnresponsive`].
    BrowserUnresponsive,
    /// [`EndReason::StartupFailed`].
    StartupFailed,
    /// [`EndReason::GatewayShutdown`].
    GatewayShutdown,
    /// [`EndReason::MemoryLimit`].
    MemoryLimit,
    /// [`EndReason::NodeLost`]; also written by the node that fails a dead node's sessions.
    NodeLost,
    /// [`EndReason::CreationAbandoned`].
    CreationAbandoned,
    /// The gateway was killed while the session was live; its next start closed the record
    /// (billed up to its last checkpoint).
    GatewayRestart,
}

impl RecordReason {
    /// Every reason.
    pub(crate) const ALL: [RecordReason; 12] = [
        RecordReason::UserRequested,
        RecordReason::Timeout,
        RecordReason::InactivityTimeout,
        RecordReason::BrowserClosed,
        RecordReason::BrowserCrashed,
        RecordReason::BrowserUnresponsive,
        RecordReason::StartupFailed,
        RecordReason::GatewayShutdown,
        RecordReason::MemoryLimit,
        RecordReason::NodeLost,
        RecordReason::CreationAbandoned,
        RecordReason::GatewayRestart,
    ];

    /// The stored word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RecordReason::UserRequested => "user_requested",
            RecordReason::Timeout => "timeout",
            RecordReason::InactivityTimeout => "inactivity_timeout",
            RecordReason::BrowserClosed => "browser_closed",
            RecordReason::BrowserCrashed => "browser_crashed",
            RecordReason::BrowserUnresponsive => "browser_unresponsive",
            RecordReason::StartupFailed => "startup_failed",
            RecordReason::GatewayShutdown => "gateway_shutdown",
            RecordReason::MemoryLimit => "memory_limit",
            RecordReason::NodeLost => "node_lost",
            RecordReason::CreationAbandoned => "creation_abandoned",
            RecordReason::GatewayRestart => "gateway_restart",
        }
    }

    /// The status a record ended for this reason has.
    pub(crate) fn status(self) -> RecordStatus {
        match self {
            RecordReason::UserRequested
            | RecordReason::Timeout
            | RecordReason::InactivityTimeout
            | RecordReason::BrowserClosed
            | RecordReason::GatewayShutdown => RecordStatus::Released,
            RecordReason::BrowserCrashed
            | RecordReason::BrowserUnresponsive
            | RecordReason::StartupFailed
            | RecordReason::MemoryLimit
            | RecordReason::NodeLost
            | RecordReason::CreationAbandoned
            | RecordReason::GatewayRestart => RecordStatus::Failed,
        }
    }

    /// Steel's `releaseReason` for this reason: the one place ingot's reasons are told in
    /// Steel's words. Steel's clients know only [`STEEL_RELEASE_REASONS`], so ingot's finer
    /// causes are told in those: a hung browser, a browser ended over its memory limit, a
    /// node lost by the cluster or a gateway killed under it is `browser_crashed` (Steel:
    /// "crashed or its machine became unresponsive"), a gateway shutdown ends a session as
    /// if its time were up, and a session nobody waited for any more is
    /// `creation_timeout`. Records, logs and metrics keep the precise cause.
    pub(crate) fn steel(self) -> &'static str {
        match self {
            RecordReason::UserRequested => "user_requested",
            RecordReason::Timeout | RecordReason::GatewayShutdown => "timeout",
            RecordReason::InactivityTimeout => "inactivity_timeout",
            RecordReason::CreationAbandoned => "creation_timeout",
            RecordReason::StartupFailed => "startup_failed",
            RecordReason::BrowserClosed => "browser_closed",
            RecordReason::BrowserCrashed
            | RecordReason::BrowserUnresponsive
            | RecordReason::MemoryLimit
            | RecordReason::NodeLost
            | RecordReason::GatewayRestart => "browser_crashed",
        }
    }
}

impl From<EndReason> for RecordReason {
    fn from(reason: EndReason) -> RecordReason {
        match reason {
            EndReason::UserRequested => RecordReason::UserRequested,
            EndReason::Timeout => RecordReason::Timeout,
            EndReason::InactivityTimeout => RecordReason::InactivityTimeout,
            EndReason::BrowserClosed => RecordReason::BrowserClosed,
            EndReason::BrowserCrashed => RecordReason::BrowserCrashed,
            EndReason::BrowserUnresponsive => RecordReason::BrowserUnresponsive,
            EndReason::StartupFailed => RecordReason::StartupFailed,
            EndReason::GatewayShutdown => RecordReason::GatewayShutdown,
            EndReason::MemoryLimit => RecordReason::MemoryLimit,
            EndReason::NodeLost => RecordReason::NodeLost,
            EndReason::CreationAbandoned => RecordReason::CreationAbandoned,
        }
    }
}

impl RecordReason {
    /// Reads a stored reason. A word this ingot does not know (a newer version wrote it to
    /// a shared database) is logged and read as [`RecordReason::BrowserCrashed`], what
    /// Steel's clients were told of such records before reasons were typed, so that one
    /// record from a newer node leaves retrieve and lists readable.
    pub(crate) fn read(word: &str) -> RecordReason {
        word.parse().unwrap_or_else(|unknown: UnknownWord| {
            tracing::warn!(%unknown, "reading it as browser_crashed");
            RecordReason::BrowserCrashed
        })
    }
}

impl std::str::FromStr for RecordReason {
    type Err = UnknownWord;

    fn from_str(word: &str) -> Result<RecordReason, UnknownWord> {
        RecordReason::ALL
            .into_iter()
            .find(|r| r.as_str() == word)
            .ok_or_else(|| UnknownWord {
                column: "reason",
                word: word.to_owned(),
            })
    }
}

/// Every `releaseReason` Steel's clients know (a strict client refuses anything else).
pub(crate) const STEEL_RELEASE_REASONS: [&str; 7] = [
    "user_requested",
    "timeout",
    "inactivity_timeout",
    "creation_timeout",
    "startup_failed",
    "browser_closed",
    "browser_crashed",
];

/// Why admission refused a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Too many creates were already waiting.
    QueueFull,
    /// No slot freed up within the queue timeout.
    QueueTimeout,
}

impl Rejection {
    /// Every rejection, for registering metrics up front.
    pub(crate) const ALL: [Rejection; 2] = [Rejection::QueueFull, Rejection::QueueTimeout];

    /// Label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
        }
    }
}

/// Why a create request got no session for a reason that is not the client's own mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateFailure {
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
    pub(crate) const ALL: [CreateFailure; 4] = [
        CreateFailure::BrowserStartFailed,
        CreateFailure::ShuttingDown,
        CreateFailure::UsageUnavailable,
        CreateFailure::TimedOut,
    ];

    /// Label value and error code.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CreateFailure::BrowserStartFailed => "browser_start_failed",
            CreateFailure::ShuttingDown => "shutting_down",
            CreateFailure::UsageUnavailable => "usage_unavailable",
            CreateFailure::TimedOut => "create_timeout",
        }
    }
}

/// Why the gateway disconnects a client. [`Disconnect::close`] is the one table of the
/// WebSocket close code and reason a client gets for each; the modules that own sockets
/// (`proxy` for CDP and viewer clients, `cluster::forward` for forwarded ones) only frame it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disconnect {
    /// The client's session ended.
    SessionEnded(EndReason),
    /// The client's session ended, for no recorded reason.
    SessionGone,
    /// The client left its queue of messages full for too long.
    NotReading,
    /// The client sent a message over the size limit.
    TooBig,
    /// The client sent a text frame that is not UTF-8.
    NotUtf8,
    /// The client sent a CDP socket a binary frame that is not UTF-8 (Chromium reads JSON).
    BinaryNotUtf8,
    /// The client broke the WebSocket protocol.
    ProtocolError,
    /// The node relaying a forwarded connection is stopping.
    RelayStopping,
    /// The node running a forwarded connection's session left the cluster.
    OwnerLeft,
    /// The node running a forwarded connection's session cannot be reached.
    OwnerUnreachable,
}

/// WebSocket close codes (RFC 6455, section 7.4.1) that ingot sends.
pub(crate) mod close_code {
    /// The purpose of the connection was fulfilled.
    pub(crate) const NORMAL: u16 = 1000;
    /// The endpoint is going away (a timeout, a shutdown).
    pub(crate) const AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub(crate) const PROTOCOL: u16 = 1002;
    /// Data inconsistent with the message type (not UTF-8).
    pub(crate) const INVALID: u16 = 1007;
    /// A message that violates the endpoint's policy.
    pub(crate) const POLICY: u16 = 1008;
    /// A message too big to process.
    pub(crate) const SIZE: u16 = 1009;
    /// An unexpected condition prevented the endpoint from going on.
    pub(crate) const ERROR: u16 = 1011;
}

impl Disconnect {
    /// The close code and reason a client gets.
    pub(crate) fn close(self) -> (u16, &'static str) {
        use close_code::*;
        match self {
            Disconnect::SessionEnded(reason) => reason.close(),
            Disconnect::SessionGone => (AWAY, "session ended"),
            Disconnect::NotReading => (POLICY, "client is not reading its messages"),
            Disconnect::TooBig => (SIZE, "message too big"),
            Disconnect::NotUtf8 => (INVALID, "text frame is not valid UTF-8"),
            Disconnect::BinaryNotUtf8 => (INVALID, "binary frame is not valid UTF-8"),
            Disconnect::ProtocolError => (PROTOCOL, "WebSocket protocol error"),
            Disconnect::RelayStopping => (AWAY, "the node relaying this connection is stopping"),
            Disconnect::OwnerLeft => (ERROR, "the node running this session left the cluster"),
            Disconnect::OwnerUnreachable => {
                (ERROR, "the node running this session cannot be reached")
            }
        }
    }
}

impl EndReason {
    /// The close code and reason a client of a session that ended so gets.
    fn close(self) -> (u16, &'static str) {
        use close_code::*;
        match self {
            EndReason::UserRequested => (NORMAL, "session released"),
            EndReason::BrowserClosed => (NORMAL, "browser closed"),
            EndReason::Timeout => (AWAY, "session timed out"),
            EndReason::InactivityTimeout => (AWAY, "session released after inactivity"),
            EndReason::GatewayShutdown => (AWAY, "gateway shutting down"),
            EndReason::BrowserCrashed | EndReason::StartupFailed => (ERROR, "browser crashed"),
            EndReason::BrowserUnresponsive => (ERROR, "browser not responding"),
            EndReason::MemoryLimit => (ERROR, "browser over the session memory limit"),
            EndReason::NodeLost => (
                ERROR,
                "session failed: its node lost contact with the cluster",
            ),
            EndReason::CreationAbandoned => (AWAY, "the session's create was abandoned"),
        }
    }
}

#[cfg(test)]
mod records {
    use super::*;

    #[test]
    fn every_stored_word_reads_back_as_what_was_written() {
        for status in RecordStatus::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        for reason in RecordReason::ALL {
            assert_eq!(reason.as_str().parse(), Ok(reason));
        }
    }

    /// The words databases already hold: changing one would strand existing records.
    #[test]
    fn the_stored_words_are_those_earlier_versions_wrote() {
        let statuses = RecordStatus::ALL.map(RecordStatus::as_str);
        assert_eq!(statuses, ["live", "released", "failed"]);
        let reasons = RecordReason::ALL.map(RecordReason::as_str);
        assert_eq!(
            reasons,
            [
                "user_requested",
                "timeout",
                "inactivity_timeout",
                "browser_closed",
                "browser_crashed",
                "browser_unresponsive",
                "startup_failed",
                "gateway_shutdown",
                "memory_limit",
                "node_lost",
                "creation_abandoned",
                "gateway_restart",
            ]
        );
    }

    #[test]
    fn an_unknown_word_is_an_error_naming_its_column() {
        assert_eq!(
            "paused".parse::<RecordStatus>(),
            Err(UnknownWord {
                column: "status",
                word: "paused".into()
            })
        );
        for word in ["", "Released", "creation_timeout", "eaten_by_a_grue"] {
            let err = word.parse::<RecordReason>().expect_err(word);
            assert_eq!((err.column, err.word.as_str()), ("reason", word));
        }
    }

    /// Every way a session of this process ends is recorded under the word its logs and
    /// metrics use, with the status a client is told.
    #[test]
    fn an_end_is_recorded_as_its_reason_and_status() {
        for reason in EndReason::ALL {
            let recorded = RecordReason::from(reason);
            assert_eq!(recorded.as_str(), reason.as_str());
            assert_eq!(recorded.status().steel(), reason.status(), "{reason:?}");
        }
        assert_eq!(RecordReason::GatewayRestart.status(), RecordStatus::Failed);
    }

    /// The stored status and reason as Steel's clients see them, pinned row by row.
    #[test]
    fn what_steels_clients_are_told() {
        let table = [
            (RecordReason::UserRequested, "released", "user_requested"),
            (RecordReason::Timeout, "released", "timeout"),
            (
                RecordReason::InactivityTimeout,
                "released",
                "inactivity_timeout",
            ),
            (RecordReason::BrowserClosed, "released", "browser_closed"),
            (RecordReason::GatewayShutdown, "released", "timeout"),
            (RecordReason::BrowserCrashed, "failed", "browser_crashed"),
            (
                RecordReason::BrowserUnresponsive,
                "failed",
                "browser_crashed",
            ),
            (RecordReason::StartupFailed, "failed", "startup_failed"),
            (RecordReason::MemoryLimit, "failed", "browser_crashed"),
            (RecordReason::NodeLost, "failed", "browser_crashed"),
            (
                RecordReason::CreationAbandoned,
                "failed",
                "creation_timeout",
            ),
            (RecordReason::GatewayRestart, "failed", "browser_crashed"),
        ];
        assert_eq!(
            table.len(),
            RecordReason::ALL.len(),
            "every reason has a row"
        );
        for (reason, status, steel) in table {
            assert_eq!(
                (reason.status().steel().as_str(), reason.steel()),
                (status, steel),
                "{reason:?}"
            );
            assert!(STEEL_RELEASE_REASONS.contains(&reason.steel()));
        }
        for status in RecordStatus::ALL {
            assert_eq!(status.steel().as_str(), status.as_str());
            assert_eq!(RecordStatus::of_steel(status.steel()), status);
        }
        assert_eq!(EndReason::MemoryLimit.steel(), "browser_crashed");
    }
}

#[cfg(test)]
mod close_codes {
    use super::*;

    /// The one table of close codes: what each kind of client learns when it is let go.
    #[test]
    fn every_disconnect_has_its_close_code() {
        let cases = [
            (Disconnect::SessionEnded(EndReason::UserRequested), 1000),
            (Disconnect::SessionEnded(EndReason::BrowserClosed), 1000),
            (Disconnect::SessionEnded(EndReason::Timeout), 1001),
            (Disconnect::SessionEnded(EndReason::GatewayShutdown), 1001),
            (Disconnect::SessionEnded(EndReason::BrowserCrashed), 1011),
            (Disconnect::SessionEnded(EndReason::NodeLost), 1011),
            (Disconnect::SessionGone, 1001),
            (Disconnect::NotReading, 1008),
            (Disconnect::TooBig, 1009),
            (Disconnect::NotUtf8, 1007),
            (Disconnect::BinaryNotUtf8, 1007),
            (Disconnect::ProtocolError, 1002),
            (Disconnect::RelayStopping, 1001),
            (Disconnect::OwnerLeft, 1011),
            (Disconnect::OwnerUnreachable, 1011),
        ];
        for (why, code) in cases {
            let (got, reason) = why.close();
            assert_eq!(got, code, "{why:?}");
            // A close frame's reason fits its 123 bytes.
            assert!(!reason.is_empty() && reason.len() <= 123, "{why:?}");
        }
    }
}
