//! The session state machine: `starting → live → released | failed`, or `starting → failed`
//! (`startup_failed`), and nothing else.
//!
//! This is the only place that decides whether a transition is allowed. Other code asks
//! [`Lifecycle`] for a transition and acts on the answer; it never sets a state itself.
//! It knows nothing about browsers, sockets or HTTP.

use std::sync::Mutex;
use std::time::Instant;

use crate::sync::lock;
use crate::vocab::{EndReason, Status};

/// A read-only view of where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Chromium is being launched; the session is not visible to clients yet.
    Starting,
    /// Ready: Chromium answered its first CDP command.
    Live,
    /// Final. `at` is when the session ended.
    Ended { reason: EndReason, at: Instant },
}

impl Phase {
    /// The status a client sees. A starting session is reported as live because it is
    /// never shown before it is ready.
    pub(crate) fn status(&self) -> Status {
        match self {
            Phase::Starting | Phase::Live => Status::Live,
            Phase::Ended { reason, .. } => reason.status(),
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        matches!(self, Phase::Live)
    }
}

/// A transition the state machine refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("session already ended ({})", .0.as_str())]
    AlreadyEnded(EndReason),
    #[error("session is not starting")]
    NotStarting,
    #[error("a session that never became live can only end as startup_failed")]
    NeverLive,
    #[error("startup_failed applies only to a session that is still starting")]
    AlreadyLive,
}

/// The state of one session. Transitions are atomic and happen at most once each, so
/// concurrent release, timeout and crash agree on exactly one outcome.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    phase: Mutex<Phase>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub(crate) fn new() -> Self {
        Lifecycle {
            phase: Mutex::new(Phase::Starting),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        *self.lock()
    }

    /// `starting → live`.
    pub(crate) fn mark_live(&self) -> Result<(), Refused> {
        let mut phase = self.lock();
        match *phase {
            Phase::Starting => {
                *phase = Phase::Live;
                Ok(())
            }
            Phase::Live => Err(Refused::NotStarting),
            Phase::Ended { reason, .. } => Err(Refused::AlreadyEnded(reason)),
        }
    }

    /// `starting → failed(startup_failed)` or `live → released | failed`. The first caller
    /// wins; every later caller learns how the session did end.
    pub(crate) fn end(&self, reason: EndReason) -> Result<Instant, Refused> {
        self.end_at(reason, Instant::now())
    }

    /// As [`Lifecycle::end`], as of `at` (not later than now): a session whose node stopped
    /// serving it earlier ended then.
    pub(crate) fn end_at(&self, reason: EndReason, at: Instant) -> Result<Instant, Refused> {
        let at = at.min(Instant::now());
        let mut phase = self.lock();
        let startup_failure = reason == EndReason::StartupFailed;
        match *phase {
            Phase::Ended { reason: prior, .. } => Err(Refused::AlreadyEnded(prior)),
            Phase::Starting if !startup_failure => Err(Refused::NeverLive),
            Phase::Live if startup_failure => Err(Refused::AlreadyLive),
            Phase::Starting | Phase::Live => {
                *phase = Phase::Ended { reason, at };
                Ok(at)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        lock(&self.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_then_released_once() {
        let l = Lifecycle::new();
        assert_eq!(l.phase(), Phase::Starting);
        l.mark_live().unwrap();
        assert!(l.end(EndReason::Timeout).is_ok());
        assert_eq!(
            l.end(EndReason::UserRequested),
            Err(Refused::AlreadyEnded(EndReason::Timeout))
        );
        assert_eq!(
            l.end(EndReason::BrowserCrashed),
            Err(Refused::AlreadyEnded(EndReason::Timeout))
        );
        assert_eq!(l.phase().status(), Status::Released);
        assert_eq!(
            l.mark_live(),
            Err(Refused::AlreadyEnded(EndReason::Timeout))
        );
    }

    #[test]
    fn crash_is_failed() {
        let l = Lifecycle::new();
        l.mark_live().unwrap();
        l.end(EndReason::BrowserCrashed).unwrap();
        assert_eq!(l.phase().status(), Status::Failed);
    }

    #[test]
    fn startup_failure_only_from_starting() {
        let l = Lifecycle::new();
        assert_eq!(l.end(EndReason::UserRequested), Err(Refused::NeverLive));
        l.end(EndReason::StartupFailed).unwrap();
        assert_eq!(l.phase().status(), Status::Failed);

        let l = Lifecycle::new();
        l.mark_live().unwrap();
        assert_eq!(l.end(EndReason::StartupFailed), Err(Refused::AlreadyLive));
        assert!(l.phase().is_live());
    }

    #[test]
    fn concurrent_enders_agree_on_one_outcome() {
        let l = std::sync::Arc::new(Lifecycle::new());
        l.mark_live().unwrap();
        let reasons = [
            EndReason::UserRequested,
            EndReason::Timeout,
            EndReason::BrowserCrashed,
            EndReason::BrowserClosed,
        ];
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = reasons
                .iter()
                .map(|r| {
                    let l = l.clone();
                    let r = *r;
                    s.spawn(move || l.end(r).is_ok() as usize)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }
}
