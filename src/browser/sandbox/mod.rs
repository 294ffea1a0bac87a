//! The sandbox a local browser runs in: its own unprivileged user (one per browser, from
//! `--browser-uids`), Chromium's own sandbox, Landlock confining its files (and, when asked,
//! its TCP ports), a cleared environment, and crash reports kept in its session.
//!
//! Owns detecting at start-up which of those mechanisms this machine offers (saying loudly
//! what is missing and what that means), the [`SandboxStatus`] the gateway shows, and what
//! one launch needs from it: a user id, a Landlock ruleset, the child's set-up. Must not
//! know about sessions or HTTP; `local.rs` decides when to call it.

mod child;
mod landlock;
pub(super) mod owner;
mod uids;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tracing::{error, info, warn};

use super::SandboxError;

pub(super) use child::{ChildSetup, install};
pub use uids::{BadUidRange, UidLease, UidPool, UidRange};

/// The default `--browser-uids`.
pub const DEFAULT_BROWSER_UIDS: UidRange = UidRange {
    first: 600_000,
    last: 600_999,
};

/// Capabilities a gateway needs to run browsers as other users: switch to them, give them
/// their directories and take those back, reach their files, and kill their processes.
/// (Their bit numbers, from `linux/capability.h`.)
const UID_CAPS: &[(u32, &str)] = &[
    (7, "CAP_SETUID"),
    (6, "CAP_SETGID"),
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (5, "CAP_KILL"),
];

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `--insecure-shared-browser-user`: every browser as the gateway's user, with
    /// `--no-sandbox`, no Landlock, the gateway's environment (the behaviour before the
    /// sandbox).
    pub insecure_shared_browser_user: bool,
    /// `--browser-uids`.
    pub browser_uids: UidRange,
    /// TCP ports every browser may connect to (Landlock network rules); empty leaves the
    /// network unconfined.
    pub allowed_tcp_ports: Vec<u16>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            insecure_shared_browser_user: false,
            browser_uids: DEFAULT_BROWSER_UIDS,
            allowed_tcp_ports: Vec::new(),
        }
    }
}

/// How browsers are isolated on this gateway, as start-up found it; `/healthz` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `confined`, or `insecure_shared_browser_user`.
    pub mode: &'static str,
    /// `per_browser` (a distinct uid each, from `browserUids`) or `gateway` (the gateway's
    /// own user).
    pub browser_user: &'static str,
    /// The configured range, when browsers get their own users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_uids: Option<String>,
    /// Ids of the range free at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spare_uids: Option<usize>,
    /// Chromium's own (namespace) sandbox is on: no `--no-sandbox`.
    pub chromium_sandbox: bool,
    /// The Landlock ABI browsers are confined with; absent when they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landlock_abi: Option<u32>,
    /// Landlock also restricts the browsers' TCP (ABI 4 and later): no bind, and connect
    /// only to the browser's own egress forwarder.
    pub network_rules: bool,
    /// The browsers' environment is cleared (no `INGOT_*` variable reaches them).
    pub environment_cleared: bool,
    /// Each mechanism that is missing, and what that means.
    pub missing: Vec<String>,
}

/// The sandbox, as detected: what every launch uses.
#[derive(Debug)]
pub struct Sandbox {
    status: SandboxStatus,
    uids: Option<Arc<UidPool>>,
    landlock: bool,
    config: SandboxConfig,
    /// Read-only paths beyond the system list: the executable's directory.
    extra_read_only: Vec<PathBuf>,
}

impl Sandbox {
    /// No isolation at all: the behaviour before the sandbox. Logs a warning.
    pub fn insecure() -> Sandbox {
        let config = SandboxConfig {
            insecure_shared_browser_user: true,
            ..SandboxConfig::default()
        };
        Sandbox::detect_insecure(config)
    }

    fn detect_insecure(config: SandboxConfig) -> Sandbox {
        warn!(
            "--insecure-shared-browser-user: TENANTS ARE NOT ISOLATED. Every browser runs as the gateway's \
             user with --no-sandbox, no Landlock and the gateway's environment: a page or a CDP client \
             can read any file the gateway can (other sessions' files and profiles, the usage database, \
             the API keys). Use it only for a single tenant you trust"
        );
        Sandbox {
            status: SandboxStatus {
                mode: "insecure_shared_browser_user",
                browser_user: "gateway",
                browser_uids: None,
                spare_uids: None,
                chromium_sandbox: false,
                landlock_abi: None,
                network_rules: false,
                environment_cleared: false,
                missing: vec!["isolation turned off by --insecure-shared-browser-user".into()],
            },
            uids: None,
            landlock: false,
            config,
            extra_read_only: Vec::new(),
        }
    }

    /// Finds out which mechanisms work here, and says loudly (one warning or error each)
    /// what is missing. `data_dir` and `scratch` are where the browsers' directories go.
    /// Blocking: it reads `/proc` and starts a short-lived probe process.
    pub fn detect(
        config: SandboxConfig,
        data_dir: &Path,
        scratch: &Path,
        executables: &[&Path],
    ) -> Sandbox {
        if config.insecure_shared_browser_user {
            return Sandbox::detect_insecure(config);
        }
        let mut missing = Vec::new();
        let landlock_abi = detect_landlock(&mut missing);
        let uids = detect_uids(&config, data_dir, scratch, &mut missing);
        let chromium_sandbox = detect_user_namespaces(uids.as_deref(), &mut missing);
        // Every browser may connect to its own egress forwarder's port only.
        let network_rules = landlock_abi.is_some_and(|abi| abi >= 4);
        let status = SandboxStatus {
            mode: "confined",
            browser_user: if uids.is_some() {
                "per_browser"
            } else {
                "gateway"
            },
            browser_uids: uids.as_ref().map(|_| config.browser_uids.to_string()),
            spare_uids: uids.as_ref().map(|pool| pool.free()),
            chromium_sandbox,
            landlock_abi,
            network_rules,
            environment_cleared: true,
            missing,
        };
        info!(
            browser_user = status.browser_user,
            browser_uids = status.browser_uids.as_deref().unwrap_or("-"),
            chromium_sandbox,
            landlock_abi = landlock_abi.unwrap_or(0),
            network_rules,
            "browser sandbox"
        );
        Sandbox {
            status,
            uids,
            landlock: landlock_abi.is_some(),
            extra_read_only: executables
                .iter()
                .flat_map(|e| executable_dirs(e))
                .collect(),
            config,
        }
    }

    /// What start-up found.
    pub fn status(&self) -> &SandboxStatus {
        &self.status
    }

    /// Whether browsers run exactly as before the sandbox (`--insecure-shared-browser-user`).
    pub fn is_insecure(&self) -> bool {
        self.config.insecure_shared_browser_user
    }

    /// Whether Chromium's own sandbox is on (no `--no-sandbox`).
    pub fn chromium_sandbox(&self) -> bool {
        self.status.chromium_sandbox
    }

    /// Whether each browser runs as a user of its own.
    pub fn per_browser_users(&self) -> bool {
        self.uids.is_some()
    }

    /// Says at start-up when the range cannot hold `browsers` browsers at once.
    pub fn check_capacity(&self, browsers: usize) {
        if let Some(pool) = &self.uids
            && pool.free() < browsers
        {
            error!(
                browser_uids = %pool.range(),
                spare_uids = pool.free(),
                needed = browsers,
                "--browser-uids holds fewer spare user ids than --max-sessions plus --pool-size: launches beyond \
                 {} browsers at once fail; widen the range",
                pool.free()
            );
        }
    }

    /// A user id for one browser, or `None` when browsers run as the gateway's user. An id
    /// another gateway holds, or that a process still runs as, is skipped. Blocking.
    pub fn allocate_uid(&self) -> Result<Option<UidLease>, SandboxError> {
        match &self.uids {
            None => Ok(None),
            Some(pool) => pool
                .allocate(|uid| !processes_of(uid).is_empty())
                .map(Some)
                .ok_or_else(|| SandboxError::UidsExhausted(pool.range())),
        }
    }

    /// The Landlock ruleset for a browser whose own directories are `own`, or `None` when
    /// Landlock is off. Its TCP connections are confined to the configured ports plus
    /// `ports` (this launch's own, such as its session's egress proxy), and then also to
    /// `forwarder` (its proxy credentials' forwarder); with no port at all, its network is
    /// left alone. Blocking.
    pub fn ruleset(
        &self,
        own: Vec<PathBuf>,
        ports: &[u16],
        forwarder: Option<u16>,
    ) -> Result<Option<OwnedFd>, SandboxError> {
        if !self.landlock {
            return Ok(None);
        }
        let mut tcp_ports = self.config.allowed_tcp_ports.clone();
        tcp_ports.extend_from_slice(ports);
        if !tcp_ports.is_empty() {
            tcp_ports.extend(forwarder);
        }
        landlock::build(&landlock::Rules {
            extra_read_only: self.extra_read_only.clone(),
            own,
            tcp_ports,
        })
    }
}

/// The Landlock ABI, or `None` (and an error said) when the kernel has none.
fn detect_landlock(missing: &mut Vec<String>) -> Option<u32> {
    let why = match landlock::abi_version() {
        Ok(abi) if abi >= 1 => return Some(abi),
        Ok(abi) => format!("ABI {abi}"),
        Err(e) => e.to_string(),
    };
    let text = format!(
        "Landlock is not available ({why}): browsers' files are NOT confined; a browser can read \
         whatever its user can. Use a kernel with Landlock enabled (CONFIG_SECURITY_LANDLOCK, \
         landlock in the lsm= boot list)"
    );
    error!("{text}");
    missing.push(text);
    None
}

/// The pool of browser user ids, or `None` (and a warning said) when browsers must run as
/// the gateway's user.
fn detect_uids(
    config: &SandboxConfig,
    data_dir: &Path,
    scratch: &Path,
    missing: &mut Vec<String>,
) -> Option<Arc<UidPool>> {
    let range = config.browser_uids;
    let refuse = |missing: &mut Vec<String>, why: String| {
        let text = format!(
            "browsers cannot run as users of their own ({why}): every browser runs as the gateway's \
             user, and sessions are kept apart by Landlock alone"
        );
        warn!("{text}");
        missing.push(text);
        None
    };
    if let Err(why) = uids_usable(range, data_dir, scratch) {
        return refuse(missing, why.to_string());
    }
    let busy = busy_uids(range);
    if !busy.is_empty() {
        warn!(
            browser_uids = %range,
            busy = busy.len(),
            "processes not started by this gateway already run as ids of --browser-uids (another gateway with \
             the same range?); those ids are skipped. Give each gateway on a machine a range of its own"
        );
    }
    let locks = match uids::lock_dir() {
        Ok(dir) => dir,
        Err(e) => {
            return refuse(
                missing,
                format!("no private directory to lock the ids gateways hand out in ({e})"),
            );
        }
    };
    Some(UidPool::new(range, &busy, Some(locks)))
}

/// Whether this gateway can run browsers as ids of `range`: it has the capabilities, the
/// range is mapped and holds neither 0 nor the gateway's own id, and other users can reach
/// the data and scratch directories. `Err` says why not.
fn uids_usable(range: UidRange, data_dir: &Path, scratch: &Path) -> Result<(), UidsUnusable> {
    let me = nix::unistd::geteuid().as_raw();
    if let Some(lacking) = lacking_capabilities() {
        return Err(UidsUnusable::Capabilities { me, lacking });
    }
    if range.contains(0) || range.contains(me) {
        return Err(UidsUnusable::Overlap { range, me });
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if !range.mapped_in(&map) {
        let map = map.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(UidsUnusable::Unmapped { range, map });
    }
    let _ = std::fs::create_dir_all(data_dir);
    // The data directory itself is opened to them at the first launch (`owner::harden`); the
    // scratch root's parent is not the gateway's.
    for (dir, shown) in [
        (data_dir.to_path_buf(), data_dir),
        (scratch.join("x"), scratch),
    ] {
        if let Some(closed) = owner::closed_ancestor(&dir) {
            let reached = shown.to_path_buf();
            return Err(UidsUnusable::Closed { closed, reached });
        }
    }
    Ok(())
}

/// Why this gateway cannot run browsers as ids of `--browser-uids`.
#[derive(Debug, thiserror::Error)]
enum UidsUnusable {
    /// It lacks capabilities it needs.
    #[error(
        "the gateway runs as uid {me} without {lacking}; run it as root, or grant those capabilities"
    )]
    Capabilities { me: u32, lacking: String },
    /// The range holds root or the gateway's own id.
    #[error("--browser-uids {range} includes uid 0 or the gateway's uid {me}")]
    Overlap { range: UidRange, me: u32 },
    /// The range is not mapped in this user namespace.
    #[error(
        "--browser-uids {range} is not mapped in this user namespace (/proc/self/uid_map: {map}); \
         choose a mapped range, or map one into the container"
    )]
    Unmapped { range: UidRange, map: String },
    /// A directory on the way to the data or scratch directory is closed to other users.
    #[error(
        "{} is closed to other users (no o+x), so they cannot reach {}; chmod o+x it, or \
         choose another --data-dir",
        closed.display(),
        reached.display()
    )]
    Closed { closed: PathBuf, reached: PathBuf },
}

/// The capabilities [`UID_CAPS`] this process lacks, named, or `None` when it has all.
fn lacking_capabilities() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let lacking: Vec<&str> = UID_CAPS
        .iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    (!lacking.is_empty()).then(|| lacking.join(", "))
}

/// Ids of `range` that running processes already use.
fn busy_uids(range: UidRange) -> Vec<u32> {
    let mut busy: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| process_uid(&e.path()))
        .filter(|uid| range.contains(*uid))
        .collect();
    busy.sort_unstable();
    busy.dedup();
    busy
}

/// Running (non-zombie) processes whose real user is `uid`. Reads `/proc`: blocking.
pub(in crate::browser) fn processes_of(uid: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            let real_uid: u32 = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
            let zombie = field("State:")?.starts_with('Z');
            (real_uid == uid && !zombie).then_some(pid)
        })
        .collect()
}

/// The real user id of the process whose `/proc` directory is `dir`.
pub(super) fn process_uid(dir: &Path) -> Option<u32> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether Chromium's namespace sandbox can work: a process running as a browser's user (or
/// as the gateway's, when browsers share it) can create a user namespace, and a PID and a
/// network namespace inside it. Says why not otherwise.
fn detect_user_namespaces(uids: Option<&UidPool>, missing: &mut Vec<String>) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    let user = uids.map(|pool| pool.range().first);
    let why = if user.is_none() && me == 0 {
        Some("the browsers would run as root, which Chromium's sandbox refuses".to_owned())
    } else {
        probe_user_namespaces(user).err().map(|e| {
            format!("a browser's user cannot create user namespaces ({e}; see kernel.unprivileged_userns_clone, user.max_user_namespaces, or the container's seccomp and AppArmor profiles)")
        })
    };
    match why {
        None => true,
        Some(why) => {
            let text = format!(
                "Chromium's own sandbox is OFF (--no-sandbox): {why}. Pages' renderers are not \
                 sandboxed; browsers are confined by Landlock and their user alone"
            );
            warn!("{text}");
            missing.push(text);
            false
        }
    }
}

/// Forks a child that (as `uid`, when given) unshares a user namespace, then PID and
/// network namespaces inside it, and exits without running anything.
#[allow(unsafe_code)]
fn probe_user_namespaces(uid: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    // The child reports success as this error, so that it never needs to exec anything.
    const DONE: i32 = libc::ECANCELED;
    let mut cmd = std::process::Command::new("/nonexistent-ingot-userns-probe");
    cmd.env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: runs in the forked child, where only async-signal-safe calls are sound, and
    // makes raw system calls only (setgroups, setresgid, setresuid, unshare) on integers
    // captured before the fork. Its errors are `last_os_error` / `from_raw_os_error`: a
    // bare errno, neither allocated nor freed, which std sends to the parent over its
    // close-on-exec pipe before `_exit`. (The `io::Error::other` below is the parent's.)
    unsafe {
        cmd.pre_exec(move || {
            if let Some(uid) = uid
                && (libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                    || libc::syscall(libc::SYS_setresgid, uid, uid, uid) < 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWUSER) < 0
                || libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNET) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Err(std::io::Error::from_raw_os_error(DONE))
        });
    }
    match cmd.spawn() {
        Err(e) if e.raw_os_error() == Some(DONE) => Ok(()),
        Err(e) => Err(e),
        Ok(mut child) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other("the probe ran past its checks"))
        }
    }
}

/// The executable's own directory (and its real one, behind links), when it is not under a
/// system path Landlock already allows.
fn executable_dirs(executable: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let real = std::fs::canonicalize(executable).unwrap_or_else(|_| executable.to_path_buf());
    for exe in [executable.to_path_buf(), real] {
        let Some(dir) = exe.parent() else { continue };
        let covered = landlock::READ_ONLY
            .iter()
            .any(|allowed| dir.starts_with(allowed));
        if !covered && !dirs.iter().any(|d: &PathBuf| d == dir) {
            dirs.push(dir.to_path_buf());
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_reads_as_json_the_gateway_can_show() {
        let sandbox = Sandbox::insecure();
        let json = serde_json::to_value(sandbox.status()).unwrap();
        assert_eq!(json["mode"], "insecure_shared_browser_user");
        assert_eq!(json["chromiumSandbox"], false);
        assert!(json.get("landlockAbi").is_none());
        assert!(sandbox.allocate_uid().unwrap().is_none());
    }

    #[test]
    fn an_executable_outside_the_system_paths_is_readable_too() {
        assert!(executable_dirs(Path::new("/usr/lib/chromium/chromium")).is_empty());
        assert_eq!(
            executable_dirs(Path::new("/nonexistent/chrome/chrome")),
            vec![PathBuf::from("/nonexistent/chrome")]
        );
    }
}
