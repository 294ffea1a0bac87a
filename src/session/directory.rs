//! The directory of sessions: every session of this process, live ones and the recent
//! history of ended ones, in creation order. (Listing reads the usage records, which also
//! hold earlier runs' sessions: see [`super::registry::Registry::list`].)
//!
//! Owns lookup by id, tenant visibility and trimming of the in-memory history. It never
//! changes a session's state and never touches a browser.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use uuid::Uuid;

use super::Session;
use super::state::Phase;
use super::view::SessionView;
use crate::auth::Caller;
use crate::metering::{Billable, MeterError};
use crate::sync::lock;
use crate::vocab::Status;

/// Ended sessions kept for listing and lookup, newest kept.
pub(crate) const ENDED_HISTORY: usize = 10_000;

/// A `GET /v1/sessions` query, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListQuery {
    /// Only sessions with this status.
    pub status: Option<Status>,
    /// Most sessions on the page.
    pub limit: usize,
    /// Return sessions strictly after this one.
    pub cursor: Option<Uuid>,
}

/// One page of sessions, newest first.
pub(crate) struct ListPage {
    /// The page.
    pub sessions: Vec<SessionView>,
    /// The cursor of the next page, when this one is full.
    pub next_cursor: Option<Uuid>,
    /// Sessions matching a status filter in all pages; only for filtered queries.
    pub total_count: Option<u64>,
}

/// A list query that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The cursor does not name a listed session.
    #[error("cursorId {0} does not name a listed session")]
    UnknownCursor(Uuid),
    /// The records cannot be read.
    #[error(transparent)]
    Store(#[from] MeterError),
}

/// Every session of this process.
#[derive(Default)]
pub(crate) struct Directory {
    sessions: DashMap<Uuid, Arc<Session>>,
    /// Ended sessions, oldest first, so that the in-memory history can be trimmed.
    ended: Mutex<VecDeque<Uuid>>,
}

impl Directory {
    /// Whether any session (even one still starting) has this id.
    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.sessions.contains_key(id)
    }

    /// Whether a session with this id is starting or live.
    pub(crate) fn runs(&self, id: &Uuid) -> bool {
        self.sessions
            .get(id)
            .is_some_and(|s| !matches!(s.phase(), Phase::Ended { .. }))
    }

    /// Adds a starting session; fails when its id is taken.
    pub(crate) fn insert(&self, session: &Arc<Session>) -> Result<(), Uuid> {
        match self.sessions.entry(session.id) {
            Entry::Occupied(_) => Err(session.id),
            Entry::Vacant(slot) => {
                slot.insert(session.clone());
                Ok(())
            }
        }
    }

    /// Removes a session that never became live, so that its id can be used again.
    pub(crate) fn forget(&self, session: &Session) {
        self.sessions.remove(&session.id);
    }

    /// Records that a session ended, dropping the oldest ended ones beyond
    /// [`ENDED_HISTORY`] from memory (their records still list them).
    pub(crate) fn note_ended(&self, id: Uuid) {
        let mut ended = lock(&self.ended);
        ended.push_back(id);
        while ended.len() > ENDED_HISTORY {
            let Some(old) = ended.pop_front() else { break };
            self.sessions.remove(&old);
        }
    }

    /// A session that clients may see: one that went live and is metered (a session is
    /// never shown, let alone served, before its usage record exists).
    fn get(&self, id: &Uuid) -> Option<Arc<Session>> {
        let session = self.sessions.get(id).map(|s| s.value().clone())?;
        visible(&session).then_some(session)
    }

    /// A session `caller` may see. Another tenant's session is `None`, exactly like an
    /// unknown id, so that its existence does not leak.
    pub(crate) fn get_for(&self, id: &Uuid, caller: &Caller) -> Option<Arc<Session>> {
        self.get(id)
            .filter(|s| caller.may_access(s.tenant.as_deref()))
    }

    /// `caller`'s live sessions.
    pub(crate) fn live_for(&self, caller: &Caller) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .map(|e| e.value().clone())
            .filter(|s| visible(s) && s.phase().is_live())
            .filter(|s| caller.may_access(s.tenant.as_deref()))
            .collect()
    }

    /// `caller`'s only live session, if it has exactly one.
    pub(crate) fn sole_live(&self, caller: &Caller) -> Option<Arc<Session>> {
        let mut live = self
            .sessions
            .iter()
            .filter(|e| {
                let s = e.value();
                visible(s) && s.phase().is_live() && caller.may_access(s.tenant.as_deref())
            })
            .map(|e| e.value().clone());
        let first = live.next()?;
        live.next().is_none().then_some(first)
    }
}

/// Whether clients may see a session: it left `starting` and has its usage record.
fn visible(session: &Session) -> bool {
    session.phase() != Phase::Starting && session.usage().record_id().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::params::SessionOptions;
    use crate::vocab::{Dimensions, EndReason};

    fn options() -> SessionOptions {
        SessionOptions {
            session_id: None,
            timeout_ms: 60_000,
            user_agent: None,
            dimensions: Dimensions::default(),
            proxy_server: None,
            proxy_authorization: None,
            inactivity_timeout_ms: None,
            fullscreen: false,
            context: None,
            headful: false,
        }
    }

    fn ended_session(directory: &Directory) -> Arc<Session> {
        let session = Arc::new(Session::new(Uuid::new_v4(), options(), None));
        directory.insert(&session).expect("new id");
        session.go_live().expect("live");
        session.usage().pretend_recorded(1);
        session.request_end(EndReason::UserRequested).expect("ends");
        directory.note_ended(session.id);
        session
    }

    #[test]
    fn keeps_the_last_ten_thousand_ended_sessions_in_memory() {
        let directory = Directory::default();
        let ids: Vec<Uuid> = (0..ENDED_HISTORY + 3)
            .map(|_| ended_session(&directory).id)
            .collect();
        for old in &ids[..3] {
            assert!(directory.get_for(old, &Caller::Open).is_none(), "trimmed");
        }
        for kept in &ids[3..] {
            assert!(directory.get_for(kept, &Caller::Open).is_some(), "kept");
        }
        assert!(directory.live_for(&Caller::Open).is_empty());
    }

    #[test]
    fn a_starting_session_is_not_shown_and_a_failed_start_leaves_no_trace() {
        let directory = Directory::default();
        let starting = Arc::new(Session::new(Uuid::new_v4(), options(), None));
        directory.insert(&starting).expect("new id");
        assert_eq!(
            directory.insert(&starting),
            Err(starting.id),
            "ids are unique"
        );
        assert!(directory.get_for(&starting.id, &Caller::Open).is_none());
        directory.forget(&starting);
        assert!(!directory.contains(&starting.id));
        let live = Arc::new(Session::new(Uuid::new_v4(), options(), None));
        directory.insert(&live).expect("new id");
        live.go_live().expect("live");
        assert!(
            directory.sole_live(&Caller::Open).is_none(),
            "not metered yet"
        );
        live.usage().pretend_recorded(2);
        assert_eq!(
            directory.sole_live(&Caller::Open).map(|s| s.id),
            Some(live.id)
        );
    }
}
