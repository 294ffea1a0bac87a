//! Reaping of orphaned browser helpers.
//!
//! The gateway registers itself as a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that
//! when a browser's leader dies, its helper processes are re-parented to the gateway rather
//! than to PID 1 (which may reap slowly, or be the gateway itself in a container). This
//! module reaps those adopted children. It never waits for a browser leader: tokio's
//! process driver owns those, and [`Leaders`] names them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::sync::lock;

/// Reaping runs at least this often, even without a SIGCHLD.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// After a SIGCHLD, wait this long so that a dying process tree is reaped in one pass.
const SETTLE: Duration = Duration::from_millis(20);

/// The pids of browser leaders that tokio waits for. Spawning holds the lock from fork to
/// insertion, and reaping holds it from its check to its `waitpid`, so an adopted-children
/// pass can never take a leader's exit status.
#[derive(Clone, Default)]
pub(super) struct Leaders(Arc<Mutex<HashSet<i32>>>);

impl Leaders {
    /// Locks the set.
    pub(super) fn lock(&self) -> MutexGuard<'_, HashSet<i32>> {
        lock(&self.0)
    }
}

/// Makes this process a child subreaper. Failure is logged: helpers then go to PID 1.
pub(super) fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(error = %e, "cannot become a child subreaper; orphaned browser helpers go to PID 1");
    }
}

/// Reaps adopted children on every SIGCHLD (and every [`SWEEP_EVERY`]) until `stop`.
pub(super) async fn run(leaders: Leaders, stop: CancellationToken) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot watch SIGCHLD; reaping orphaned helpers every {SWEEP_EVERY:?}");
            None
        }
    };
    loop {
        let child = async {
            match sigchld.as_mut() {
                Some(s) => {
                    s.recv().await;
                    tokio::time::sleep(SETTLE).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = child => {}
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let leaders = leaders.clone();
        let reaped = tokio::task::spawn_blocking(move || reap_adopted(&leaders))
            .await
            .unwrap_or(0);
        if reaped > 0 {
            debug!(reaped, "reaped orphaned browser helpers");
        }
    }
}

/// Reaps every zombie child of this process that is not a browser leader. Reads `/proc`:
/// blocking. Returns how many it reaped.
pub(super) fn reap_adopted(leaders: &Leaders) -> usize {
    let me = std::process::id() as i32;
    let zombies: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| zombie_child_of(pid, me))
        .collect();
    let leaders = leaders.lock();
    zombies
        .into_iter()
        .filter(|pid| !leaders.contains(pid))
        .filter(|&pid| waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok())
        .count()
}

/// Whether `pid` is a zombie whose parent is `parent`.
fn zombie_child_of(pid: i32, parent: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
    state == Some("Z") && ppid == Some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subreaper_flag_is_set() {
        become_subreaper();
        assert_eq!(nix::sys::prctl::get_child_subreaper().ok(), Some(true));
    }

    #[test]
    #[allow(clippy::zombie_processes)] // the point: `reap_adopted` waits for the helper
    fn reaps_adopted_zombies_but_not_leaders() {
        // Two children that exit at once: one stands for an adopted helper, one for a
        // leader that tokio owns.
        let helper = std::process::Command::new("true").spawn().expect("spawn");
        let leader = std::process::Command::new("true").spawn().expect("spawn");
        let leaders = Leaders::default();
        leaders.lock().insert(leader.id() as i32);
        std::thread::sleep(Duration::from_millis(200));
        assert!(zombie_child_of(
            helper.id() as i32,
            std::process::id() as i32
        ));
        reap_adopted(&leaders);
        assert!(!std::path::Path::new(&format!("/proc/{}", helper.id())).exists());
        assert!(zombie_child_of(
            leader.id() as i32,
            std::process::id() as i32
        ));
        let mut leader = leader;
        leader.wait().expect("the leader's status is still there");
    }
}
