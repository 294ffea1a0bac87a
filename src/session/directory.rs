//! The directory of sessions: every session the gateway knows, live ones and the recent
//! history of ended ones, in creation order.
//!
//! Owns lookup by id, tenant visibility, newest-first listing with cursors, and trimming of
//! the history. It never changes a session's state and never touches a browser.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use uuid::Uuid;

use super::Session;
use super::state::Phase;
use crate::auth::Caller;
use crate::sync::lock;
use crate::vocab::Status;

/// Ended sessions kept for listing and lookup, newest kept.
pub const ENDED_HISTORY: usize = 10_000;

/// A `GET /v1/sessions` query, validated.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery {
    /// Only sessions with this status.
    pub status: Option<Status>,
    /// Most sessions on the page.
    pub limit: usize,
    /// Return sessions strictly after this one.
    pub cursor: Option<Uuid>,
}

/// One page of sessions, newest first.
pub struct ListPage {
    /// The page.
    pub sessions: Vec<Arc<Session>>,
    /// The cursor of the next page, when this one is full.
    pub next_cursor: Option<Uuid>,
    /// Sessions matching a status filter in all pages; only for filtered queries.
    pub total_count: Option<usize>,
}

/// The cursor does not name a listed session.
#[derive(Debug, thiserror::Error)]
#[error("cursorId {0} does not name a listed session")]
pub struct UnknownCursor(pub Uuid);

/// Every session the gateway knows.
#[derive(Default)]
pub struct Directory {
    sessions: DashMap<Uuid, Arc<Session>>,
    /// Creation sequence → id, for newest-first listing and cursors.
    order: Mutex<BTreeMap<u64, Uuid>>,
    /// Ended sessions, oldest first, so history can be trimmed.
    ended: Mutex<VecDeque<Uuid>>,
    next_seq: AtomicU64,
}

impl Directory {
    /// The creation number of the next session.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether any session (even one still starting) has this id.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.sessions.contains_key(id)
    }

    /// Adds a starting session; fails when its id is taken.
    pub fn insert(&self, session: &Arc<Session>) -> Result<(), Uuid> {
        match self.sessions.entry(session.id) {
            Entry::Occupied(_) => return Err(session.id),
            Entry::Vacant(slot) => {
                slot.insert(session.clone());
            }
        }
        lock(&self.order).insert(session.seq(), session.id);
        Ok(())
    }

    /// Removes a session that never became live, so that its id can be used again.
    pub fn forget(&self, session: &Session) {
        self.sessions.remove(&session.id);
        lock(&self.order).remove(&session.seq());
    }

    /// Records that a session ended, trimming the oldest beyond [`ENDED_HISTORY`].
    pub fn note_ended(&self, id: Uuid) {
        let mut ended = lock(&self.ended);
        ended.push_back(id);
        while ended.len() > ENDED_HISTORY {
            let Some(old) = ended.pop_front() else { break };
            if let Some((_, s)) = self.sessions.remove(&old) {
                lock(&self.order).remove(&s.seq());
            }
        }
    }

    /// A session that clients may see (any state but starting).
    fn get(&self, id: &Uuid) -> Option<Arc<Session>> {
        let session = self.sessions.get(id).map(|s| s.value().clone())?;
        (session.phase() != Phase::Starting).then_some(session)
    }

    /// A session `caller` may see. Another tenant's session is `None`, exactly like an
    /// unknown id, so that its existence does not leak.
    pub fn get_for(&self, id: &Uuid, caller: &Caller) -> Option<Arc<Session>> {
        self.get(id)
            .filter(|s| caller.may_access(s.tenant.as_deref()))
    }

    /// `caller`'s live sessions.
    pub fn live_for(&self, caller: &Caller) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .map(|e| e.value().clone())
            .filter(|s| s.phase().is_live() && caller.may_access(s.tenant.as_deref()))
            .collect()
    }

    /// `caller`'s only live session, if it has exactly one.
    pub fn sole_live(&self, caller: &Caller) -> Option<Arc<Session>> {
        let mut live = self
            .sessions
            .iter()
            .filter(|e| {
                e.value().phase().is_live() && caller.may_access(e.value().tenant.as_deref())
            })
            .map(|e| e.value().clone());
        let first = live.next()?;
        live.next().is_none().then_some(first)
    }

    /// `caller`'s sessions newest first, filtered and paginated as the Steel SDKs expect.
    pub fn list(&self, query: ListQuery, caller: &Caller) -> Result<ListPage, UnknownCursor> {
        let upper = match query.cursor {
            None => Bound::Unbounded,
            Some(cursor) => {
                let seq = self
                    .get_for(&cursor, caller)
                    .map(|s| s.seq())
                    .ok_or(UnknownCursor(cursor))?;
                Bound::Excluded(seq)
            }
        };
        let ids: Vec<Uuid> = lock(&self.order)
            .range((Bound::Unbounded, upper))
            .rev()
            .map(|(_, id)| *id)
            .collect();
        let matches = |s: &Arc<Session>| {
            caller.may_access(s.tenant.as_deref())
                && query
                    .status
                    .is_none_or(|status| s.phase().status() == status)
        };
        let sessions: Vec<Arc<Session>> = ids
            .iter()
            .filter_map(|id| self.get(id).filter(matches))
            .take(query.limit)
            .collect();
        let total_count = query.status.map(|_| {
            let all: Vec<Uuid> = lock(&self.order).values().copied().collect();
            all.iter()
                .filter_map(|id| self.get(id))
                .filter(matches)
                .count()
        });
        let next_cursor = (sessions.len() == query.limit)
            .then(|| sessions.last().map(|s| s.id))
            .flatten();
        Ok(ListPage {
            sessions,
            next_cursor,
            total_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::params::SessionOptions;
    use crate::vocab::{Dimensions, EndReason};

    fn ended_session(directory: &Directory) -> Arc<Session> {
        let options = SessionOptions {
            session_id: None,
            timeout_ms: 60_000,
            user_agent: None,
            dimensions: Dimensions::default(),
            proxy_server: None,
        };
        let session = Arc::new(Session::new(
            Uuid::new_v4(),
            directory.next_seq(),
            options,
            None,
        ));
        directory.insert(&session).expect("new id");
        session.go_live().expect("live");
        session.request_end(EndReason::UserRequested).expect("ends");
        directory.note_ended(session.id);
        session
    }

    #[test]
    fn keeps_the_last_ten_thousand_ended_sessions_listed() {
        let directory = Directory::default();
        let ids: Vec<Uuid> = (0..ENDED_HISTORY + 3)
            .map(|_| ended_session(&directory).id)
            .collect();
        for old in &ids[..3] {
            assert!(directory.get_for(old, &Caller::Open).is_none(), "trimmed");
        }
        assert!(directory.get_for(&ids[3], &Caller::Open).is_some(), "kept");

        // Walking the pages as the SDKs do visits every kept session once, newest first.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let query = ListQuery {
                status: None,
                limit: 100,
                cursor,
            };
            let page = directory.list(query, &Caller::Open).expect("list");
            let Some(last) = page.sessions.last() else {
                break;
            };
            cursor = Some(last.id);
            seen.extend(page.sessions.iter().map(|s| s.id));
        }
        let expected: Vec<Uuid> = ids[3..].iter().rev().copied().collect();
        assert_eq!(seen, expected);
        let query = ListQuery {
            status: Some(Status::Released),
            limit: 1,
            cursor: None,
        };
        let released = directory.list(query, &Caller::Open).expect("list");
        assert_eq!(released.total_count, Some(ENDED_HISTORY));
    }

    #[test]
    fn an_unknown_cursor_and_a_starting_session_are_not_listed() {
        let directory = Directory::default();
        let shown = ended_session(&directory);
        let starting = Arc::new(Session::new(
            Uuid::new_v4(),
            directory.next_seq(),
            shown.options.clone(),
            None,
        ));
        directory.insert(&starting).expect("new id");
        assert_eq!(
            directory.insert(&starting),
            Err(starting.id),
            "ids are unique"
        );
        assert!(directory.get_for(&starting.id, &Caller::Open).is_none());
        let query = ListQuery {
            status: None,
            limit: 10,
            cursor: Some(Uuid::new_v4()),
        };
        assert!(directory.list(query, &Caller::Open).is_err());
        directory.forget(&starting);
        assert!(
            !directory.contains(&starting.id),
            "a failed start leaves no trace"
        );
    }
}
