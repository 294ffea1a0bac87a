//! The Landlock ruleset a browser is confined by: read-only system paths, read and
//! write-file on `/proc` and a few devices, everything on the session's own directories
//! and `/dev/shm`, optionally TCP restricted to a few ports, and no signals or abstract
//! sockets outside the browser's own processes.
//!
//! Owns which paths a browser may touch and building the ruleset (in the parent, before
//! `fork`). It never calls `landlock_restrict_self`: the child does that on the ruleset's
//! descriptor (see `child.rs`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::browser::SandboxError;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};

/// The newest Landlock ABI this code was written and tested for; newer rights are not
/// handled (so they stay allowed), older kernels get what they support.
const TESTED_ABI: ABI = ABI::V7;

/// Read-only (execute, read file, read directory): what Chromium and Debian's
/// `/usr/bin/chromium` wrapper (a shell script that sources `/etc/chromium.d`) read outside
/// their session. Paths that do not exist are skipped.
pub(super) const READ_ONLY: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/opt",
    "/etc/fonts",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/mime.types",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/chromium",
    "/etc/chromium.d",
    "/etc/debian_version",
    "/etc/os-release",
    "/etc/lsb-release",
    "/var/cache/fontconfig",
    "/sys",
];

/// Read and write-file: Chromium's namespace sandbox writes `/proc/self/uid_map` and
/// `setgroups` (with `/proc` read-only it reports "No usable sandbox!"), and everything
/// writes `/dev/null`.
pub(super) const READ_WRITE_FILE: &[&str] = &[
    "/proc",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Every right: shared memory. Chromium's files there are its own uid's, mode 0600.
pub(super) const SHARED: &[&str] = &["/dev/shm"];

/// What one browser may reach.
#[derive(Debug, Clone, Default)]
pub(super) struct Rules {
    /// Read-only beyond [`READ_ONLY`]: the browser's executable's own directory, when it
    /// is elsewhere.
    pub extra_read_only: Vec<PathBuf>,
    /// Every right: the session's own directories.
    pub own: Vec<PathBuf>,
    /// TCP ports it may connect to; empty leaves the network alone. When not empty (and the
    /// kernel has network rules), it may bind no port and connect to these only.
    pub tcp_ports: Vec<u16>,
}

/// Builds the ruleset and returns its descriptor, for the child to restrict itself with.
/// `None` when the kernel has no Landlock. Blocking (opens every path).
pub(super) fn build(rules: &Rules) -> Result<Option<OwnedFd>, SandboxError> {
    let all = AccessFs::from_all(TESTED_ABI);
    let read = AccessFs::from_read(TESTED_ABI);
    let read_write_file = read | AccessFs::WriteFile;
    let mut ruleset = Ruleset::default()
        .handle_access(all)?
        .scope(Scope::from_all(TESTED_ABI))?;
    if !rules.tcp_ports.is_empty() {
        ruleset = ruleset.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?;
    }
    let mut created = ruleset.create()?;
    let fixed = READ_ONLY
        .iter()
        .map(|p| (Path::new(*p), read))
        .chain(
            READ_WRITE_FILE
                .iter()
                .map(|p| (Path::new(*p), read_write_file)),
        )
        .chain(SHARED.iter().map(|p| (Path::new(*p), all)));
    let extra = rules.extra_read_only.iter().map(|p| (p.as_path(), read));
    let own = rules.own.iter().map(|p| (p.as_path(), all));
    for (path, access) in fixed.chain(extra).chain(own) {
        let Some((fd, access)) = open_beneath(path, access) else {
            continue;
        };
        created = created.add_rule(PathBeneath::new(fd, access))?;
    }
    for port in &rules.tcp_ports {
        created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
    }
    Ok(created.into())
}

/// Opens `path` for a rule, with the rights a file (rather than a directory) can take when
/// it is one. `None` when it does not exist.
fn open_beneath(path: &Path, access: BitFlags<AccessFs>) -> Option<(PathFd, BitFlags<AccessFs>)> {
    let meta = std::fs::metadata(path).ok()?;
    let access = if meta.is_dir() {
        access
    } else {
        access & AccessFs::from_file(TESTED_ABI)
    };
    PathFd::new(path).ok().map(|fd| (fd, access))
}

/// The Landlock ABI version this kernel offers, or why there is none.
pub(super) fn abi_version() -> Result<u32, std::io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the VERSION flag
    // only returns a number; it reads and writes no memory.
    #[allow(unsafe_code)]
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if version < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u32::try_from(version).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::browser::sandbox::{ChildSetup, install};

    /// Runs `script` with bash in a child confined by `rules` through the same set-up a
    /// browser gets (without a user change); returns its exit status and stdout.
    async fn confined(rules: &Rules, script: &str) -> (i32, String) {
        let ruleset = build(rules).unwrap().expect("this kernel has Landlock");
        let (read, write) = nix::unistd::pipe().unwrap();
        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let ruleset_fd =
            nix::fcntl::fcntl(&ruleset, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).unwrap();
        install(
            &mut cmd,
            ChildSetup {
                commands_fd: nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                    .unwrap(),
                replies_fd: nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                    .unwrap(),
                gateway_pid: std::process::id() as libc::pid_t,
                cgroup_procs: Vec::new(),
                user: None,
                no_new_privs: true,
                landlock: Some(ruleset_fd),
            },
        );
        let out = cmd.output().await.unwrap();
        let _ = (read.as_raw_fd(), write.as_raw_fd());
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[tokio::test]
    async fn a_confined_child_reads_its_own_files_only_and_connects_to_allowed_ports_only() {
        let own = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(own.path().join("mine"), "MINE").unwrap();
        std::fs::write(other.path().join("theirs"), "THEIRS").unwrap();
        let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (allowed, denied) = (
            allowed.local_addr().unwrap().port(),
            denied.local_addr().unwrap().port(),
        );
        let rules = Rules {
            own: vec![own.path().to_path_buf()],
            tcp_ports: vec![allowed],
            ..Rules::default()
        };
        let script = format!(
            "cat {own}/mine; echo; cat {other}/theirs 2>/dev/null || echo no-read; \
             (exec 5<>/dev/tcp/127.0.0.1/{allowed}) 2>/dev/null && echo allowed-ok; \
             (exec 5<>/dev/tcp/127.0.0.1/{denied}) 2>/dev/null || echo denied-refused",
            own = own.path().display(),
            other = other.path().display(),
        );
        let (status, out) = confined(&rules, &script).await;
        assert_eq!(status, 0, "{out}");
        assert_eq!(out, "MINE\nno-read\nallowed-ok\ndenied-refused\n");
        // With no ports, the network is left alone.
        let open = Rules {
            tcp_ports: Vec::new(),
            ..rules
        };
        let script = format!("(exec 5<>/dev/tcp/127.0.0.1/{denied}) 2>/dev/null && echo open");
        assert_eq!(confined(&open, &script).await.1, "open\n");
    }
}
