//! [`SessionView`]: what a client sees of a session at one moment, whether the session is
//! live in this process or known only from its record (it ended before a restart, or was
//! trimmed from memory).
//!
//! Owns the facts a session's record keeps for that (`Details`, stored as JSON by the
//! meter without reading it). It reads sessions and records; it changes neither.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Session;
use crate::metering::HistoryRow;
use crate::vocab::{Dimensions, RecordReason, RecordStatus, Status};

/// The facts of a session that do not change while it lives, as its record keeps them.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct Details {
    timeout: u64,
    inactivity_timeout: Option<u64>,
    fullscreen: bool,
    dimensions: Dimensions,
    user_agent: Option<String>,
    proxy: bool,
    /// Bytes its proxy carried, as of the last time the details were written.
    proxy_bytes_used: u64,
    /// `headless: false`; absent (headless) in records written before headful sessions.
    headful: bool,
}

impl Details {
    /// The details of a session that is going live.
    pub(super) fn of(session: &Session) -> Details {
        Details {
            timeout: session.timeout_ms(),
            inactivity_timeout: session.options.inactivity_timeout_ms,
            fullscreen: session.options.fullscreen,
            dimensions: session.options.dimensions,
            user_agent: session.user_agent(),
            proxy: session.options.proxy_server.is_some(),
            proxy_bytes_used: session.proxy_bytes_used(),
            headful: session.options.headful,
        }
    }
}

/// One page (tab) of a live session, as `live-details` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageInfo {
    /// Chromium's target id.
    pub id: String,
    pub url: String,
    pub title: String,
}

impl PageInfo {
    /// The pages among `Target.getTargets`' `targetInfos`, in Chromium's order.
    pub(crate) fn from_targets(reply: &serde_json::Value) -> Vec<PageInfo> {
        let text = |t: &serde_json::Value, k: &str| t[k].as_str().unwrap_or_default().to_owned();
        reply["targetInfos"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|t| t["type"] == "page")
            .map(|t| PageInfo {
                id: text(t, "targetId"),
                url: text(t, "url"),
                title: text(t, "title"),
            })
            .collect()
    }
}

/// A session as a client sees it.
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    /// The session's id.
    pub id: Uuid,
    /// Wall-clock creation time.
    pub created_at: OffsetDateTime,
    /// Live, released or failed.
    pub status: Status,
    /// Time from creation until now, or until it ended.
    pub duration: Duration,
    /// CDP events delivered to its clients.
    pub event_count: u64,
    /// Its `timeout`, in milliseconds.
    pub timeout_ms: u64,
    /// Its `inactivityTimeout`, in milliseconds, if it has one.
    pub inactivity_timeout_ms: Option<u64>,
    /// Minutes billed.
    pub credits_used: u64,
    /// The page size.
    pub dimensions: Dimensions,
    /// Whether the page fills its screen at 1920×1080 (`fullscreen`).
    pub fullscreen: bool,
    /// Whether it runs behind a proxy the client gave.
    pub proxy: bool,
    /// Bytes its proxy carried, where ingot counts them.
    pub proxy_bytes_used: u64,
    /// The user agent its browser sends.
    pub user_agent: Option<String>,
    /// Why it ended, once it has (Steel's word is [`RecordReason::steel`]).
    pub release_reason: Option<RecordReason>,
    /// Whether its browser is headful (`headless: false`).
    pub headful: bool,
}

impl SessionView {
    /// A session of this process, now.
    pub(crate) fn of(session: &Session) -> SessionView {
        SessionView {
            id: session.id,
            created_at: session.created_at,
            status: session.phase().status(),
            duration: session.duration(),
            event_count: session.event_count(),
            timeout_ms: session.timeout_ms(),
            inactivity_timeout_ms: session.options.inactivity_timeout_ms,
            credits_used: session.billed_minutes(),
            dimensions: session.options.dimensions,
            fullscreen: session.options.fullscreen,
            proxy: session.options.proxy_server.is_some(),
            proxy_bytes_used: session.proxy_bytes_used(),
            user_agent: session.user_agent(),
            release_reason: session.end_reason().map(RecordReason::from),
            headful: session.options.headful,
        }
    }

    /// A session known from its record.
    pub(crate) fn from_record(row: &HistoryRow) -> SessionView {
        let details: Details = serde_json::from_str(&row.details).unwrap_or_default();
        let created_ns = i128::from(row.created_at_ms) * 1_000_000;
        // A session live on another node has lasted until now, not until its checkpoint.
        let until_ms = match row.status {
            RecordStatus::Live => {
                i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(row.ended_at_ms)
            }
            _ => row.ended_at_ms,
        };
        let elapsed_ms = until_ms.saturating_sub(row.created_at_ms).max(0);
        SessionView {
            id: row.session_id,
            created_at: OffsetDateTime::from_unix_timestamp_nanos(created_ns)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            status: row.status.steel(),
            duration: Duration::from_millis(u64::try_from(elapsed_ms).unwrap_or(0)),
            event_count: row.event_count,
            timeout_ms: details.timeout,
            inactivity_timeout_ms: details.inactivity_timeout,
            credits_used: row.billed_minutes,
            dimensions: details.dimensions,
            fullscreen: details.fullscreen,
            proxy: details.proxy,
            proxy_bytes_used: details.proxy_bytes_used,
            user_agent: details.user_agent,
            release_reason: row.reason,
            headful: details.headful,
        }
    }
}
