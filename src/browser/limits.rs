//! One browser's resource caps as the local launcher applies them: a cgroup of its own
//! (`memory.max`, `pids.max`) or, where cgroups are unavailable, a PSS watchdog on its
//! process group; and the verdict whether it ended for going over its memory.
//!
//! Owns which guard is in force and the caps in force. The cgroup mechanics live in
//! [`super::cgroup`]; process launching and reaping stay in [`super::local`]. Must not know
//! about sessions.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::warn;
use uuid::Uuid;

use super::cgroup::{self, CgroupSupport, Limits, MemoryBreach, MemoryWatch, SessionCgroup};
use super::{BrowserExit, LaunchError};

/// The caps of every browser of one host, and how they are enforced here.
pub(super) struct Limiter {
    support: CgroupSupport,
    limits: OnceLock<Limits>,
}

impl Limiter {
    /// Finds out whether this process can make cgroups (and says so). Blocking.
    pub(super) fn detect(data_dir: &Path) -> Limiter {
        Limiter {
            support: cgroup::detect(data_dir),
            limits: OnceLock::new(),
        }
    }

    /// Sets the caps, once, before the first launch.
    pub(super) fn set(&self, limits: Limits) {
        if self.limits.set(limits).is_err() {
            warn!("the browsers' caps were set twice; the first ones stay");
        }
    }

    /// Removes the groups a killed predecessor left, killing their tasks. Blocking.
    pub(super) fn sweep(&self) -> usize {
        cgroup::sweep(&self.support)
    }

    /// Removes this gateway's parent groups, once every browser's group is gone (at
    /// shutdown). Blocking. A parent that still holds a group stays, and is said so.
    pub(super) fn remove_parents(&self) {
        if let Err(e) = cgroup::remove_parents(&self.support) {
            warn!(error = %e, "cannot remove the gateway's cgroups at shutdown; the next start's sweep will");
        }
    }

    /// The caps in force (none until [`Limiter::set`]).
    fn limits(&self) -> Limits {
        self.limits.get().copied().unwrap_or_default()
    }

    /// Makes browser `id`'s group, when cgroups are available and any cap is set.
    pub(super) async fn prepare(&self, id: Uuid) -> Result<BrowserLimits, LaunchError> {
        let limits = self.limits();
        let memory_max = limits.memory_max;
        if !self.support.is_available() || (memory_max.is_none() && limits.pids_max.is_none()) {
            return Ok(BrowserLimits {
                cgroup: None,
                memory_max,
            });
        }
        let support = self.support.clone();
        let made = tokio::task::spawn_blocking(move || {
            SessionCgroup::create(&support, &id.simple().to_string(), limits)
        })
        .await
        .map_err(|source| LaunchError::Worker {
            what: "cannot make the browser's cgroup",
            source,
        })??;
        Ok(BrowserLimits {
            cgroup: Some(made),
            memory_max,
        })
    }
}

/// One browser's caps: its cgroup, if it has one, and its memory cap.
pub(super) struct BrowserLimits {
    cgroup: Option<SessionCgroup>,
    memory_max: Option<u64>,
}

impl BrowserLimits {
    /// The open `cgroup.procs` files the child joins before it runs.
    pub(super) fn procs_fds(&self) -> Vec<RawFd> {
        self.cgroup
            .as_ref()
            .map(SessionCgroup::procs_fds)
            .unwrap_or_default()
    }

    /// Starts watching the browser whose process group is `pgid`: over its memory cap, the
    /// whole group is killed, and the returned verdict says so to the exit watcher.
    pub(super) fn watch(&self, pgid: i32) -> MemoryVerdict {
        let over = Arc::new(AtomicBool::new(false));
        let watch: BoxFuture<'static, MemoryBreach> = match (&self.cgroup, self.memory_max) {
            (Some(group), Some(_)) => group.watch(),
            (None, Some(max)) => cgroup::PssWatchdog::new(pgid, max).watch(),
            (_, None) => std::future::pending().boxed(),
        };
        let flag = over.clone();
        let watcher = tokio::spawn(async move {
            let breach = watch.await;
            flag.store(true, Ordering::Release);
            warn!(pid = pgid, %breach, "browser over the session memory limit; killing it");
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        });
        MemoryVerdict {
            over,
            oom_file: self
                .cgroup
                .as_ref()
                .and_then(|g| g.oom_file().map(Path::to_path_buf)),
            watcher: watcher.abort_handle(),
        }
    }

    /// Removes the group once the browser's processes are gone (killing any left).
    pub(super) async fn remove(self) {
        if let Some(group) = self.cgroup {
            let removed = tokio::task::spawn_blocking(move || group.remove()).await;
            if let Ok(Err(e)) = removed {
                warn!(error = %e, "cannot remove a browser's cgroup; the next start's sweep will");
            }
        }
    }
}

/// Whether a browser went over its memory: asked by its exit watcher.
pub(super) struct MemoryVerdict {
    over: Arc<AtomicBool>,
    oom_file: Option<PathBuf>,
    watcher: tokio::task::AbortHandle,
}

impl MemoryVerdict {
    /// The exit to report for a browser that exited with `exit`: [`BrowserExit::MemoryLimit`]
    /// when the watcher killed it or the kernel's OOM killer acted in its group. Stops the
    /// watcher.
    pub(super) async fn judge(self, exit: BrowserExit) -> BrowserExit {
        self.watcher.abort();
        let killed = matches!(exit, BrowserExit::Signal(_));
        if self.over.load(Ordering::Acquire) {
            return BrowserExit::MemoryLimit;
        }
        if let (true, Some(file)) = (killed, &self.oom_file)
            && cgroup::oom_kills_at(file).await > 0
        {
            return BrowserExit::MemoryLimit;
        }
        exit
    }
}
