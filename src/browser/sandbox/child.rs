//! What a browser's process does between `fork` and `exec`: only raw system calls on values
//! built before the fork.
//!
//! Owns the order of those calls: join the session's cgroups, put the CDP pipes on fds 3
//! and 4, drop to the browser's user, die with the gateway, forbid new privileges, restrict
//! itself with the pre-built Landlock ruleset. Must not allocate, lock or log: its failure
//! is a bare errno ([`Errno`]), which std's `spawn` sends to the parent over its own
//! close-on-exec pipe before `_exit`, and which the parent's `spawn` returns as its error.

use std::io;
use std::os::fd::RawFd;

use tokio::process::Command;

/// Everything the child needs, prepared in the parent.
#[derive(Debug, Clone)]
pub(crate) struct ChildSetup {
    /// The pipe end Chromium reads commands from; goes to fd 3. Must be above 4.
    pub commands_fd: RawFd,
    /// The pipe end Chromium writes replies to; goes to fd 4. Must be above 4.
    pub replies_fd: RawFd,
    /// The gateway's pid: a child whose parent is no longer it gives up.
    pub gateway_pid: libc::pid_t,
    /// Open `cgroup.procs` files the child joins by writing "0" into each, before anything
    /// else (and while it still has the gateway's credentials).
    pub cgroup_procs: Vec<RawFd>,
    /// The user and group to run as; `None` keeps the gateway's.
    pub user: Option<(libc::uid_t, libc::gid_t)>,
    /// `PR_SET_NO_NEW_PRIVS`, which Landlock needs.
    pub no_new_privs: bool,
    /// A Landlock ruleset's descriptor (above 4) to restrict the child with.
    pub landlock: Option<RawFd>,
}

/// Installs `setup` to run in the child between fork and exec.
#[allow(unsafe_code)]
pub(crate) fn install(cmd: &mut Command, setup: ChildSetup) {
    // SAFETY: the closure runs in the forked child of a multi-threaded process, where only
    // async-signal-safe operations are sound (another thread may have held the allocator's
    // or any other lock at the fork). Everything it reads was built before the fork and is
    // owned by the closure: `setup`'s integers and its `Vec` of descriptors, which is only
    // iterated. `in_child` makes raw system calls only (write, dup2, setgroups, setresgid,
    // setresuid, prctl, getppid, landlock_restrict_self; the id changes as raw syscalls,
    // not glibc's wrappers, which would signal the parent's other threads), and its error
    // type is a bare errno, so it cannot allocate one. The `io::Error` made from it here is
    // `from_raw_os_error`, an integer that neither allocates nor frees; std reads its
    // `raw_os_error`, writes that to the parent over its close-on-exec pipe and calls
    // `_exit`. Nothing here locks or logs. Every descriptor it names is open in the child:
    // the caller keeps them open until `spawn` returns.
    unsafe {
        cmd.pre_exec(move || in_child(&setup).map_err(|Errno(e)| io::Error::from_raw_os_error(e)));
    }
}

/// A failed call's errno: all the child can report, and nothing to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Errno(i32);

/// The errno of the last failed call (read from the thread's `errno`, without allocating).
fn errno() -> Errno {
    Errno(nix::errno::Errno::last_raw())
}

#[allow(unsafe_code)]
fn in_child(setup: &ChildSetup) -> Result<(), Errno> {
    // SAFETY: each call below is a raw system call on integers, a static byte or a null
    // pointer with a zero count; see `install`.
    unsafe {
        for &fd in &setup.cgroup_procs {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(errno());
            }
        }
        if libc::dup2(setup.commands_fd, 3) < 0 || libc::dup2(setup.replies_fd, 4) < 0 {
            return Err(errno());
        }
        if let Some((uid, gid)) = setup.user
            && (libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0)
        {
            return Err(errno());
        }
        // After the credentials change, which clears it. If the gateway dies without reaping,
        // the browser dies with it.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return Err(errno());
        }
        // The gateway may have died before prctl; then no signal will come.
        if libc::getppid() != setup.gateway_pid {
            return Err(Errno(libc::ESRCH));
        }
        if setup.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(errno());
        }
        if let Some(ruleset) = setup.landlock
            && libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) < 0
        {
            return Err(errno());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// A child set up with `setup` that would run `true`: the error `spawn` returns.
    async fn spawn_error(setup: ChildSetup) -> Option<i32> {
        let mut cmd = Command::new("true");
        install(&mut cmd, setup);
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = child.wait().await;
                None
            }
            Err(e) => Some(e.raw_os_error().unwrap_or(-1)),
        }
    }

    fn setup(null: &std::fs::File) -> ChildSetup {
        ChildSetup {
            commands_fd: null.as_raw_fd(),
            replies_fd: null.as_raw_fd(),
            gateway_pid: std::process::id() as libc::pid_t,
            cgroup_procs: Vec::new(),
            user: None,
            no_new_privs: false,
            landlock: None,
        }
    }

    /// The child's failure reaches the parent as the failed call's errno, which is all a
    /// child that may not allocate can send.
    #[tokio::test]
    async fn a_failure_in_the_child_comes_back_from_spawn_as_its_errno() {
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        assert_eq!(spawn_error(setup(&null)).await, None, "a sound set-up runs");
        let bad_cgroup = ChildSetup {
            cgroup_procs: vec![-1],
            ..setup(&null)
        };
        assert_eq!(spawn_error(bad_cgroup).await, Some(libc::EBADF));
        // No process has this pid (pid_max is at most 2^22): the child's parent is not it.
        let orphan = ChildSetup {
            gateway_pid: libc::pid_t::MAX,
            ..setup(&null)
        };
        assert_eq!(spawn_error(orphan).await, Some(libc::ESRCH));
    }
}
