//! Caps on what one browser may take: a cgroup per browser with a memory limit and a task
//! (pids) limit, or, where cgroups are unavailable, a PSS watchdog on its process group.
//!
//! Owns the gateway's parent group (`ingot-<hash of the data directory>`, see [`detect`]),
//! the one child group of each browser under it ([`SessionCgroup`]), the start-up
//! [`sweep`] of a killed predecessor's groups, and the [`pss`] watchdog. Both guards tell
//! the launcher the same thing through [`MemoryWatch::watch`]: the browser went over its
//! memory limit. This module starts no browser and decides nothing about sessions: the
//! launcher moves its child into the group (writing `0` into [`SessionCgroup::procs_fds`]
//! between fork and exec, [`join_groups`]), ends the browser when `watch` resolves, reports
//! [`super::BrowserExit::MemoryLimit`], and calls [`SessionCgroup::remove`] once the browser
//! is reaped. It must not touch groups outside its parent group.

mod detect;
pub mod pss;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::{debug, info, warn};

pub use detect::{CgroupSupport, detect, detect_quietly, parent_name};
pub use pss::{PssWatchdog, pss_of_group};

/// How often a cgroup's OOM counter is read.
pub const OOM_POLL: Duration = Duration::from_millis(250);

/// How long [`SessionCgroup::remove`] and [`sweep`] wait for a group's tasks to die and
/// its directory to go.
const REMOVE_WITHIN: Duration = Duration::from_secs(3);

/// The caps of one browser. `None` leaves that resource uncapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most memory its whole process tree may use, in bytes (`--session-memory-max`).
    pub memory_max: Option<u64>,
    /// Most tasks (processes and threads) it may have at once (`--session-pids-max`).
    pub pids_max: Option<u64>,
}

/// Why a cgroup could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// This machine offers no cgroups for browsers ([`CgroupSupport::Unavailable`]).
    #[error("cgroups are unavailable: {0}")]
    Unavailable(String),
    /// The group's name is not a single path component.
    #[error("{0:?} is not a valid cgroup name")]
    Name(String),
    /// A file system operation on the cgroup file system failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Tasks were still in the group when it had to go.
    #[error("{} still has tasks after {:?}", path.display(), REMOVE_WITHIN)]
    Busy {
        /// The group.
        path: PathBuf,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// How a browser went over its memory limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBreach {
    /// The kernel's OOM killer killed tasks of its cgroup: the group reached `memory.max`.
    OomKilled {
        /// Tasks killed so far.
        kills: u64,
    },
    /// The proportional set size of its process group went over the limit.
    Pss {
        /// PSS summed over the group, in bytes.
        bytes: u64,
        /// The limit, in bytes.
        limit: u64,
    },
}

impl std::fmt::Display for MemoryBreach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryBreach::OomKilled { kills } => {
                write!(f, "the OOM killer killed {kills} task(s) in its cgroup")
            }
            MemoryBreach::Pss { bytes, limit } => write!(
                f,
                "its processes' PSS is {} MiB, over the {} MiB limit",
                bytes >> 20,
                limit >> 20
            ),
        }
    }
}

/// What the launcher watches, whichever guard is in force.
pub trait MemoryWatch: Send + Sync {
    /// A future, independent of `self`, that resolves once the browser went over its
    /// memory limit, and never when it has none.
    fn watch(&self) -> BoxFuture<'static, MemoryBreach>;
}

/// One browser's cgroup: one directory on v2, one per hierarchy (memory, pids) on v1.
/// Dropped without [`SessionCgroup::remove`], it is removed on a thread of its own.
#[derive(Debug)]
pub struct SessionCgroup {
    /// Each hierarchy's directory of the group.
    dirs: Vec<PathBuf>,
    /// Each directory's `cgroup.procs`, open for writing, at descriptors of 10 and above.
    procs: Vec<OwnedFd>,
    /// The file with the `oom_kill` counter, when memory is capped.
    oom_file: Option<PathBuf>,
}

impl SessionCgroup {
    /// Makes the group `name` (one path component, such as the session's id) under the
    /// gateway's parent group, with `limits`. Blocking (cgroup file system). A group of that
    /// name left behind is emptied and made again.
    pub fn create(
        support: &CgroupSupport,
        name: &str,
        limits: Limits,
    ) -> Result<SessionCgroup, CgroupError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(CgroupError::Name(name.into()));
        }
        let (dirs, oom_file) = match support {
            CgroupSupport::Unavailable { reason } => {
                return Err(CgroupError::Unavailable(reason.clone()));
            }
            CgroupSupport::V2 { parent } => {
                let dir = parent.join(name);
                (vec![dir.clone()], dir.join("memory.events"))
            }
            CgroupSupport::V1 { memory, pids, .. } => {
                let dir = memory.join(name);
                (
                    vec![dir.clone(), pids.join(name)],
                    dir.join("memory.oom_control"),
                )
            }
        };
        let mut group = SessionCgroup {
            dirs: Vec::with_capacity(dirs.len()),
            procs: Vec::with_capacity(dirs.len()),
            oom_file: limits.memory_max.map(|_| oom_file),
        };
        if let Err(e) = group.make(support, dirs, limits) {
            // Blocking already; removing what was made costs no more.
            if let Err(undo) = group.remove() {
                warn!(error = %undo, "cannot remove a cgroup whose creation failed");
            }
            return Err(e);
        }
        debug!(groups = ?group.dirs, ?limits, "cgroup created");
        Ok(group)
    }

    /// Makes each hierarchy's directory, writes the limits, opens `cgroup.procs`.
    fn make(
        &mut self,
        support: &CgroupSupport,
        dirs: Vec<PathBuf>,
        limits: Limits,
    ) -> Result<(), CgroupError> {
        for dir in dirs {
            if dir.exists() {
                warn!(group = %dir.display(), "a cgroup of that name was left behind; emptying it");
                empty_and_remove(&dir)?;
            }
            std::fs::create_dir(&dir).map_err(io_error("create", &dir))?;
            self.dirs.push(dir);
        }
        set_limits(support, &self.dirs, limits)?;
        for dir in &self.dirs {
            self.procs.push(open_procs(dir)?);
        }
        Ok(())
    }

    /// The group's directories (one per hierarchy), for logs and tests.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The group's `cgroup.procs` files, open for writing (`O_WRONLY | O_CLOEXEC`, at
    /// descriptors of 10 and above so that `dup2` onto 3 and 4 cannot clobber them), for
    /// [`join_groups`] between fork and exec. Valid while `self` lives.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Tasks the OOM killer killed in the group so far (0 when memory is not capped or the
    /// counter cannot be read). Blocking: one small read of the cgroup file system.
    pub fn oom_kills(&self) -> u64 {
        self.oom_file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| oom_kill_count(&text))
            .unwrap_or(0)
    }

    /// The file holding the group's `oom_kill` counter, when memory is capped.
    pub fn oom_file(&self) -> Option<&Path> {
        self.oom_file.as_deref()
    }

    /// Kills whatever still runs in the group (v2: `cgroup.kill`; v1: `SIGKILL` to each
    /// task) and removes it. Blocking, for at most a few seconds: call it once the browser
    /// was reaped, on the blocking pool.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.procs.clear();
        let dirs = std::mem::take(&mut self.dirs);
        let mut result = Ok(());
        for dir in dirs.iter().rev() {
            if let Err(e) = empty_and_remove(dir) {
                result = Err(e);
            }
        }
        result
    }
}

impl MemoryWatch for SessionCgroup {
    /// Polls the OOM counter every [`OOM_POLL`] (with `tokio::fs`, off the runtime's
    /// threads) and resolves once it is above 0.
    fn watch(&self) -> BoxFuture<'static, MemoryBreach> {
        let file = self.oom_file.clone();
        async move {
            let Some(file) = file else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(OOM_POLL).await;
                match tokio::fs::read_to_string(&file).await {
                    Ok(text) => match oom_kill_count(&text) {
                        Some(kills) if kills > 0 => return MemoryBreach::OomKilled { kills },
                        _ => {}
                    },
                    // The group is gone: the browser was reaped and nothing is left to watch.
                    Err(_) => return std::future::pending().await,
                }
            }
        }
        .boxed()
    }
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        self.procs.clear();
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.is_empty() {
            return;
        }
        // Removing waits for tasks to die: never on the caller's (maybe async) thread.
        let spawned = std::thread::Builder::new()
            .name("cgroup-remove".into())
            .spawn(move || {
                for dir in dirs.iter().rev() {
                    if let Err(e) = empty_and_remove(dir) {
                        warn!(error = %e, "cannot remove a dropped browser's cgroup; the next start's sweep will");
                    }
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a thread to remove a dropped browser's cgroup");
        }
    }
}

/// Moves the calling process into the groups whose `cgroup.procs` descriptors are `fds`
/// ([`SessionCgroup::procs_fds`]) by writing `0` into each. Meant for a child between fork
/// and exec (`pre_exec`): it calls only `write(2)` and allocates nothing. Call it before
/// the child drops privileges or moves descriptors with `dup2`.
#[allow(unsafe_code)]
pub fn join_groups(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: `write` is async-signal-safe; the buffer is a static byte, and a stale or
        // closed descriptor makes it fail with EBADF, which is reported.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes every group left under the gateway's parent groups (by a killed predecessor),
/// killing their tasks first. Blocking; call it before the first launch. Returns how many
/// groups it removed (a v1 group counts once for its two hierarchies).
pub fn sweep(support: &CgroupSupport) -> usize {
    let mut removed = std::collections::BTreeSet::new();
    for parent in support.parents() {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match empty_and_remove(&entry.path()) {
                Ok(()) => {
                    removed.insert(entry.file_name());
                }
                Err(e) => warn!(error = %e, "cannot remove a leftover browser cgroup"),
            }
        }
    }
    if !removed.is_empty() {
        info!(
            groups = removed.len(),
            "start-up sweep removed browser cgroups a previous run left"
        );
    }
    removed.len()
}

/// Removes the gateway's parent groups (at shutdown, once every browser's group is gone).
/// Blocking. A parent that still holds groups stays, with an error naming it.
pub fn remove_parents(support: &CgroupSupport) -> Result<(), CgroupError> {
    for parent in support.parents() {
        match std::fs::remove_dir(parent) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error("remove", parent)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes the limits into each hierarchy's directory of a new group.
fn set_limits(
    support: &CgroupSupport,
    dirs: &[PathBuf],
    limits: Limits,
) -> Result<(), CgroupError> {
    let value = |v: Option<u64>, none: &str| v.map_or_else(|| none.to_owned(), |v| v.to_string());
    match (support, dirs) {
        (CgroupSupport::V2 { .. }, [dir]) => {
            write_value(&dir.join("memory.max"), &value(limits.memory_max, "max"))?;
            if limits.memory_max.is_some() {
                // No swap to escape to; the whole group dies together when one task is
                // killed, as a browser without its renderer is no use.
                write_optional(&dir.join("memory.swap.max"), "0")?;
                write_optional(&dir.join("memory.oom.group"), "1")?;
            }
            write_value(&dir.join("pids.max"), &value(limits.pids_max, "max"))
        }
        (CgroupSupport::V1 { memsw, .. }, [memory, pids]) => {
            if let Some(max) = limits.memory_max {
                write_value(&memory.join("memory.limit_in_bytes"), &max.to_string())?;
                if *memsw {
                    write_value(
                        &memory.join("memory.memsw.limit_in_bytes"),
                        &max.to_string(),
                    )?;
                }
            }
            write_value(&pids.join("pids.max"), &value(limits.pids_max, "max"))
        }
        (CgroupSupport::Unavailable { reason }, _) => Err(CgroupError::Unavailable(reason.clone())),
        _ => Err(CgroupError::Unavailable(format!(
            "{} directories for a group of {support:?}",
            dirs.len()
        ))),
    }
}

fn write_value(file: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io_error("write", file))
}

/// Writes a file the kernel may not have (older kernels, no swap accounting).
fn write_optional(file: &Path, value: &str) -> Result<(), CgroupError> {
    match write_value(file, value) {
        Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[allow(unsafe_code)]
fn open_procs(dir: &Path) -> Result<OwnedFd, CgroupError> {
    let path = dir.join("cgroup.procs");
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_error("open", &path))?;
    let raw = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|e| io_error("duplicate", &path)(e.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// The `oom_kill` counter of a v2 `memory.events` or a v1 `memory.oom_control`.
/// Tasks the OOM killer killed so far, as the counter file `file`
/// ([`SessionCgroup::oom_file`]) says; 0 when it cannot be read. Reads with `tokio::fs`.
pub async fn oom_kills_at(file: &Path) -> u64 {
    tokio::fs::read_to_string(file)
        .await
        .ok()
        .and_then(|text| oom_kill_count(&text))
        .unwrap_or(0)
}

fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// The tasks of a group (`cgroup.procs`); none when it is gone.
fn tasks(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error("read", &dir.join("cgroup.procs"))(e)),
    }
}

/// Kills every task of the group until none is left, then removes its directory, each
/// within [`REMOVE_WITHIN`]. A group that is already gone is fine.
fn empty_and_remove(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + REMOVE_WITHIN;
    let kill_file = dir.join("cgroup.kill");
    loop {
        let left = tasks(dir)?;
        if left.is_empty() {
            break;
        }
        if kill_file.exists() {
            write_optional(&kill_file, "1")?;
        } else {
            for pid in left {
                // A task that is already gone (ESRCH) is what we want.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Busy { path: dir.into() });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Tasks that just died may still be leaving the group.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_error("remove", dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_oom_kill_counter_of_both_versions() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n";
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(oom_kill_count(v2), Some(2));
        assert_eq!(oom_kill_count(v1), Some(1));
        assert_eq!(oom_kill_count("oom 1\n"), None);
    }

    #[test]
    fn refuses_names_that_are_not_one_component() {
        let support = CgroupSupport::V2 {
            parent: PathBuf::from("/nonexistent"),
        };
        for name in ["", ".", "..", "a/b", "/abs"] {
            let err =
                SessionCgroup::create(&support, name, Limits::default()).expect_err("refused");
            assert!(matches!(err, CgroupError::Name(_)), "{name}: {err}");
        }
        let off = CgroupSupport::Unavailable {
            reason: "read-only".into(),
        };
        let err = SessionCgroup::create(&off, "a", Limits::default()).expect_err("refused");
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[test]
    fn the_pre_exec_write_reports_a_bad_descriptor() {
        let err = join_groups(&[-1]).expect_err("EBADF");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert!(join_groups(&[]).is_ok());
    }
}
