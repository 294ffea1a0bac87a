//! Reaping of orphaned browser helpers, and of nothing else.
//!
//! The gateway registers itself as a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that
//! when a browser's leader (or one of its helpers) dies, the helpers it started are
//! re-parented to the gateway rather than to PID 1 (which may reap slowly, or be the
//! gateway itself in a container). This module reaps those adopted helpers.
//!
//! It reaps only what a browser started: every browser leads its own process group, whose
//! id [`Groups`] records together with the browser's own user id when it has one (a
//! confined browser), and a pass waits (`waitid(P_PID, pid, WNOHANG)`) for each zombie
//! child of the gateway whose process group is one of those, or which runs as one of those
//! users (a helper that left its browser's group with `setsid`, as crash handlers do), by
//! pid. It never waits for
//! "any child" (`waitpid(-1)`), never for a group's leader (tokio's process driver owns the
//! leaders' exit statuses), and never for a child outside the recorded groups: the exit
//! status of any other child of the gateway stays for its owner to collect.
//!
//! It listens for SIGCHLD (through tokio, whose process driver listens too) to reap
//! promptly; `main.rs` installs the shutdown signals' handlers. It must not know about
//! sessions, directories or the browsers' pipes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::sync::lock;

/// Reaping runs at least this often, even without a SIGCHLD.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// After a SIGCHLD, wait this long so that a dying process tree is reaped in one pass.
const SETTLE: Duration = Duration::from_millis(20);

/// A browser's group, as the reaper knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    leader: Leader,
    /// The browser's own user, when it has one: its helpers run as it in any group.
    uid: Option<u32>,
}

/// Whether a browser's leader still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// Its leader runs; its group stays known.
    Running,
    /// Its leader exited: the group is forgotten once no process of it is left.
    Exited,
}

/// The process groups of the browsers this host launched (a group's id is its leader's
/// pid). Only their members are ever reaped here.
#[derive(Clone, Default)]
pub(super) struct Groups(Arc<Mutex<HashMap<i32, Group>>>);

impl Groups {
    /// Records the group a browser just spawned leads, and the user it runs as when that
    /// user is its own (`None` when browsers share the gateway's user).
    pub(super) fn launched(&self, pgid: i32, uid: Option<u32>) {
        let group = Group {
            leader: Leader::Running,
            uid,
        };
        lock(&self.0).insert(pgid, group);
    }

    /// Says that the group's leader exited (tokio collected its status). Its helpers stay
    /// reapable until none is left.
    pub(super) fn leader_exited(&self, pgid: i32) {
        if let Some(group) = lock(&self.0).get_mut(&pgid) {
            group.leader = Leader::Exited;
        }
    }

    /// `seen` if it belongs to a browser: it is in a browser's group, or runs as a
    /// browser's own user. Its user is read (`/proc/<pid>/status`) only when its group does
    /// not settle it and some browser has a user of its own.
    fn claim(&self, seen: Seen) -> Option<Seen> {
        let users: Vec<u32> = {
            let groups = lock(&self.0);
            if groups.contains_key(&seen.pgid) {
                return Some(seen);
            }
            groups.values().filter_map(|g| g.uid).collect()
        };
        if users.is_empty() {
            return None;
        }
        let seen = with_uid(seen);
        seen.uid.filter(|uid| users.contains(uid)).map(|_| seen)
    }

    /// Whether `pid` leads a browser's group (tokio collects a leader's status).
    fn leads(&self, pid: i32) -> bool {
        lock(&self.0).contains_key(&pid)
    }

    /// Forgets the groups whose leader exited and that have no process left in `alive`
    /// (by group, or by the browser's user).
    fn forget_empty(&self, alive: &[Seen]) {
        lock(&self.0).retain(|pgid, group| {
            group.leader == Leader::Running
                || alive
                    .iter()
                    .any(|s| s.pgid == *pgid || (group.uid.is_some() && group.uid == s.uid))
        });
    }

    /// How many groups are known.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

/// Makes this process a child subreaper. Failure is logged: helpers then go to PID 1.
pub(super) fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(error = %e, "cannot become a child subreaper; orphaned browser helpers go to PID 1");
    }
}

/// Reaps adopted browser helpers on every SIGCHLD (and every [`SWEEP_EVERY`]) until `stop`.
pub(super) async fn run(groups: Groups, stop: CancellationToken) {
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
        let groups = groups.clone();
        let reaped = tokio::task::spawn_blocking(move || reap_adopted(&groups))
            .await
            .unwrap_or(0);
        if reaped > 0 {
            debug!(reaped, "reaped orphaned browser helpers");
        }
    }
}

/// One process, as a pass sees it in `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    pid: i32,
    zombie: bool,
    ppid: i32,
    pgid: i32,
    /// Its real user, from `/proc/<pid>/status`.
    uid: Option<u32>,
}

/// Reaps every zombie child of this process that belongs to a browser (its group, or its
/// own user) and does not lead a browser's group, each by its pid, and forgets the groups of exited leaders that have no
/// process left. Reads `/proc`: blocking. Returns how many it reaped.
pub(super) fn reap_adopted(groups: &Groups) -> usize {
    let me = std::process::id() as i32;
    let seen: Vec<Seen> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .filter_map(|s| groups.claim(s))
        .collect();
    let reaped: Vec<i32> = seen
        .iter()
        .filter(|s| s.zombie && s.ppid == me && !groups.leads(s.pid))
        .map(|s| s.pid)
        .filter(|&pid| reap(pid))
        .collect();
    // A member adopted after the read keeps its group until a later pass: it was counted.
    let alive: Vec<Seen> = seen
        .into_iter()
        .filter(|s| !reaped.contains(&s.pid))
        .collect();
    groups.forget_empty(&alive);
    reaped.len()
}

/// Collects the exit status of child `pid`, which must be a zombie (so that `WNOHANG`
/// cannot miss it). Whether it did.
fn reap(pid: i32) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
    matches!(
        waitid(Id::Pid(Pid::from_raw(pid)), flags),
        Ok(status) if status.pid().is_some()
    )
}

/// A process's state, parent and group, from `/proc/<pid>/stat` (fields after the command
/// name, which may itself contain spaces and parentheses); its user is not read.
fn read_stat(pid: i32) -> Option<Seen> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &stat)
}

/// `seen` with its user, from `/proc/<pid>/status`.
fn with_uid(seen: Seen) -> Seen {
    let status = std::fs::read_to_string(format!("/proc/{}/status", seen.pid)).ok();
    Seen {
        uid: status.as_deref().and_then(parse_uid),
        ..seen
    }
}

/// The real user id in a `/proc/<pid>/status` text (`Uid:\treal\teffective\t…`).
fn parse_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

fn parse_stat(pid: i32, stat: &str) -> Option<Seen> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let zombie = fields.next()? == "Z";
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(Seen {
        pid,
        zombie,
        ppid,
        pgid,
        uid: None,
    })
}

#[cfg(test)]
mod tests;
