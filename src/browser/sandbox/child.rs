//! What a browser's process does between `fork` and `exec`: only raw system calls on values
//! built before the fork.
//!
//! Owns the order of those calls: join the session's cgroups, put the CDP pipes on fds 3
//! and 4, drop to the browser's user, die with the gateway, forbid new privileges, restrict
//! itself with the pre-built Landlock ruleset. Must not allocate, lock or log.

use std::io;
use std::os::fd::RawFd;

use tokio::process::Command;

/// Everything the child needs, prepared in the parent.
#[derive(Debug, Clone)]
pub struct ChildSetup {
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
pub fn install(cmd: &mut Command, setup: ChildSetup) {
    // SAFETY: the closure runs in the forked child, where only async-signal-safe operations
    // are sound. It makes raw system calls only (write, dup2, setgroups, setresgid,
    // setresuid, prctl, getppid, landlock_restrict_self) on descriptors and numbers built
    // before the fork and owned by the closure; it allocates nothing (its errors come from
    // `io::Error::from_raw_os_error`, which does not allocate), takes no lock and does not
    // log. Every descriptor it names is open in the child: the caller keeps them open until
    // `spawn` returns.
    unsafe {
        cmd.pre_exec(move || in_child(&setup));
    }
}

/// The errno of the last failed call, as an error, without allocating.
fn errno() -> io::Error {
    // `last_os_error` is `from_raw_os_error(errno)`.
    io::Error::last_os_error()
}

#[allow(unsafe_code)]
fn in_child(setup: &ChildSetup) -> io::Result<()> {
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
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
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
