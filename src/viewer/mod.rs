//! Seeing and steering a live session from outside CDP: Steel's computer API
//! ([`computer`]), built on one input vocabulary ([`input`]).
//!
//! Owns per-session input state (where each session's pointer is). Drives browsers only
//! through private `cdp::driver::Driver`s, so it never disturbs a client's CDP sessions;
//! knows nothing of HTTP or of sessions' states (callers check that a session is live).

pub mod computer;
pub mod input;

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use uuid::Uuid;

/// Most sessions whose pointer is remembered; beyond it the oldest are forgotten.
const MAX_TRACKED: usize = 10_000;

/// Input state of every session on this node.
#[derive(Default)]
pub struct Viewers {
    cursors: DashMap<Uuid, Arc<Mutex<computer::Point>>>,
}

impl Viewers {
    /// Where session `id`'s pointer is (the page's top left until it moves).
    pub fn cursor(&self, id: Uuid) -> Arc<Mutex<computer::Point>> {
        if self.cursors.len() >= MAX_TRACKED && !self.cursors.contains_key(&id) {
            self.cursors.clear();
        }
        self.cursors.entry(id).or_default().clone()
    }
}
