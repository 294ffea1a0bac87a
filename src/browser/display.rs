//! The virtual X display of a headful browser: one Xvfb per session, started, watched and
//! killed with it.
//!
//! Owns running Xvfb and everything it leaves on disk. Must not know about sessions' states,
//! Chromium's flags or HTTP; `local.rs` decides when a browser gets a display, and runs the
//! browser with [`Display::env`] and [`Display::install_client`].
//!
//! # Where the socket lives (found by experiment on Debian 12: Xvfb 21.1.7, libxcb 1.15)
//! - Xvfb always makes its socket at `/tmp/.X11-unix/X<n>`. It is started in a private mount
//!   namespace (`unshare(CLONE_NEWNS)`, `/` made recursively private) where `<dir>/X11-unix`
//!   is bind-mounted over `/tmp/.X11-unix`: the socket is then `<dir>/X11-unix/X0`, and
//!   nothing of it lands in the machine's `/tmp/.X11-unix`. `-nolock`: no `/tmp/.X0-lock`
//!   either. Every display is `:0`, each in its own namespace, so two never collide. Only
//!   `/tmp/.X11-unix` is covered, not `/tmp`: the `-auth` file, and for the browser its
//!   profile, may be anywhere, even under `/tmp` (binding over all of `/tmp` hid them when
//!   the session directory was under `/tmp`: Xvfb then found no cookie and let every local
//!   client in). The mount point `/tmp/.X11-unix` is created (root's, mode 1777, as X
//!   servers make it) when missing; a link or non-directory there is refused.
//! - libxcb 1.15 does not accept a socket path in `DISPLAY` (`unix:/path`, `/path`,
//!   `/path:0` all fail to open); it always connects to `/tmp/.X11-unix/X<n>`. So the browser
//!   is started the same way: [`Display::install_client`] gives it the same bind in a mount
//!   namespace of its own, and `DISPLAY=:0`. (Checked by hand with full Chromium 2026-12:
//!   it stays up and paints no "Missing X server" error.)
//! - `-nolisten tcp` (no TCP port) and `-nolisten local` (no abstract-namespace socket
//!   `@/tmp/.X11-unix/X0`, which is per network namespace, so reachable by every process on
//!   the machine and colliding between displays): `/proc/net/unix` then shows the path
//!   socket only. `-nolisten unix` is never given.
//! - `-auth <dir>/Xauthority`: a random MIT-MAGIC-COOKIE-1 in one wildcard entry (any
//!   address, any display number) that both the server and the browser read; a client
//!   without it is refused. (Xvfb lets every local client in when it cannot read its
//!   `-auth` file or finds no cookie there, so a test checks the refusal.)
//! - `-displayfd 4`: Xvfb writes its display number there once it accepts clients.
//! - Xvfb compiles its keymap with `xkbcomp` into `/var/lib/xkb` when it may write there,
//!   else `/tmp`, in a file named after the display number only: every display would share
//!   `server-0.xkm` (a race between two starting displays), and under Landlock neither is
//!   writable ("XKB: Failed to compile keymap", fatal). So Xvfb's namespace also binds
//!   `<dir>/xkb` over `/var/lib/xkb`. Landlock sees a bind mount's files through its mount
//!   point, not beneath `<dir>`: its ruleset needs both bound directories by name
//!   ([`landlock_dirs`]).
//!
//! # Processes
//! Xvfb leads a process group of its own (its `xkbcomp` children join it) and is killed as a
//! group. It runs with the browser's confinement when given: its cgroups, its user,
//! `no_new_privs` and a Landlock ruleset, through the sandbox's own [`ChildSetup`], after the
//! mounts (which need the gateway's privileges). A [`Display`] dropped without
//! [`Display::kill`] still kills its group; a gateway killed outright leaves an Xvfb whose
//! command line names its `-auth` file under the sessions directory, which the start-up sweep
//! finds ([`sweep_marker`]).

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{OpenOptionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{debug, warn};
use uuid::Uuid;

use super::sandbox::{ChildSetup, install, owner};
use super::{BrowserExit, DisplayError};

/// How long Xvfb may take to accept clients (it takes a few tens of ms).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The display number inside every display's own namespace.
const NUMBER: u32 = 0;
/// The Xauthority file in the display's directory.
const AUTH_FILE: &str = "Xauthority";
/// The directory bind-mounted over `/tmp/.X11-unix` for Xvfb and its browser.
const SOCKET_DIR: &str = "X11-unix";
/// Where X clients and servers look for sockets (the mount point).
const X11_UNIX: &str = "/tmp/.X11-unix";
/// The directory bind-mounted over `/var/lib/xkb` for Xvfb.
const XKB_DIR: &str = "xkb";
/// Where Debian's Xvfb writes compiled keymaps when it may (else `/tmp`), by a name of the
/// display number only (the mount point).
const XKM_OUTPUT: &str = "/var/lib/xkb";
/// Xvfb's stderr.
const LOG_FILE: &str = "xvfb.log";

/// What one display needs.
#[derive(Debug, Clone)]
pub(super) struct DisplaySpec<'a> {
    /// A directory of its own (created if missing, removed by [`Display::kill`]); inside the
    /// session's directory, so the start-up sweep finds a leftover Xvfb by it.
    pub dir: &'a Path,
    /// Screen size in pixels.
    pub width: u32,
    /// Screen size in pixels.
    pub height: u32,
    /// For the logs.
    pub session_id: Uuid,
    /// The browser's user and group: Xvfb runs as them, and its directory is theirs.
    pub user: Option<(u32, u32)>,
    /// Open `cgroup.procs` files Xvfb joins (above fd 4), as for the browser.
    pub cgroup_procs: Vec<RawFd>,
    /// `PR_SET_NO_NEW_PRIVS` (Landlock needs it).
    pub no_new_privs: bool,
    /// A Landlock ruleset allowing `dir` read-write, as for the browser (copied above fd 4).
    pub landlock: Option<RawFd>,
}

/// A running Xvfb.
#[derive(Debug)]
pub(super) struct Display {
    pid: i32,
    dir: PathBuf,
    /// `<dir>/X11-unix`, for the browser's bind mount.
    sockets: CString,
    session_id: Uuid,
    exit: watch::Receiver<Option<BrowserExit>>,
}

/// What `start` prepared on disk.
struct Prepared {
    sockets: CString,
    xkb: CString,
    log: std::fs::File,
    /// `/dev/null`, for the fd 3 the sandbox's set-up fills.
    null: std::fs::File,
}

impl Display {
    /// Starts Xvfb (`xvfb` is its executable) and returns once it accepts clients. On any
    /// failure nothing is left running, and its directory is removed.
    pub(super) async fn start(xvfb: &Path, spec: DisplaySpec<'_>) -> Result<Display, DisplayError> {
        let dir = spec.dir.to_path_buf();
        let prepared = {
            let (dir, user) = (dir.clone(), spec.user);
            tokio::task::spawn_blocking(move || prepare(&dir, user))
                .await
                .map_err(DisplayError::Worker)??
        };
        match Display::spawn(xvfb, &spec, prepared).await {
            Ok(display) => Ok(display),
            Err(e) => {
                remove_dir(dir).await;
                Err(e)
            }
        }
    }

    async fn spawn(
        xvfb: &Path,
        spec: &DisplaySpec<'_>,
        prepared: Prepared,
    ) -> Result<Display, DisplayError> {
        let (ready_read, ready_write) = pipe()?;
        let null = high_fd(OwnedFd::from(prepared.null))?;
        let landlock = spec.landlock.map(high_copy).transpose()?;
        let mut cmd = xvfb_command(xvfb, spec, prepared.log);
        // The mounts first, while the child still has the gateway's privileges.
        install_mounts(
            cmd.as_std_mut(),
            prepared.sockets.clone(),
            Some(prepared.xkb),
        );
        install(
            &mut cmd,
            ChildSetup {
                commands_fd: null.as_raw_fd(),
                replies_fd: ready_write.as_raw_fd(),
                gateway_pid: std::process::id() as libc::pid_t,
                cgroup_procs: spec.cgroup_procs.clone(),
                user: spec.user,
                no_new_privs: spec.no_new_privs,
                landlock: landlock.as_ref().map(AsRawFd::as_raw_fd),
            },
        );
        let spawned = cmd.spawn();
        drop((ready_write, null, landlock));
        let child = spawned.map_err(|source| DisplayError::Spawn {
            executable: xvfb.to_path_buf(),
            source,
        })?;
        let pid = child
            .id()
            .map(|p| p as i32)
            .ok_or(DisplayError::ExitedDuringSpawn)?;
        let (tx, exit) = watch::channel(None);
        tokio::spawn(watch_exit(child, tx));
        let display = Display {
            pid,
            dir: spec.dir.to_path_buf(),
            sockets: prepared.sockets,
            session_id: spec.session_id,
            exit,
        };
        if let Err(e) = display.serving(ready_read).await {
            display.kill().await;
            return Err(e);
        }
        debug!(session_id = %spec.session_id, pid, "Xvfb is up");
        Ok(display)
    }

    /// Waits until Xvfb accepts clients ([`Display::ready`]), then checks that it refuses
    /// one without the cookie.
    async fn serving(&self, ready: OwnedFd) -> Result<(), DisplayError> {
        self.ready(ready).await?;
        match admits_strangers(&self.socket()).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(DisplayError::Open {
                last_output: self.log_tail().await,
            }),
            Err(e) => Err(DisplayError::Check(e)),
        }
    }

    /// Waits for Xvfb's display number on the `-displayfd` pipe.
    async fn ready(&self, ready: OwnedFd) -> Result<(), DisplayError> {
        let mut ready =
            tokio::net::unix::pipe::Receiver::from_owned_fd(ready).map_err(DisplayError::Pipe)?;
        let mut said = Vec::new();
        let read = tokio::time::timeout(READY_TIMEOUT, async {
            let mut buf = [0u8; 16];
            loop {
                match ready.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => said.extend_from_slice(&buf[..n]),
                }
                if said.contains(&b'\n') {
                    return true;
                }
            }
        })
        .await;
        match read {
            Ok(true) => Ok(()),
            Ok(false) => {
                let exit = tokio::time::timeout(READY_TIMEOUT, self.exited())
                    .await
                    .unwrap_or_else(|_| unknown("its readiness pipe failed while it ran"));
                Err(DisplayError::Exited {
                    exit,
                    last_output: self.log_tail().await,
                })
            }
            Err(_) => Err(DisplayError::Timeout {
                after: READY_TIMEOUT,
                last_output: self.log_tail().await,
            }),
        }
    }

    /// The last lines Xvfb wrote, joined with ` | `.
    async fn log_tail(&self) -> String {
        let text = tokio::fs::read_to_string(self.dir.join(LOG_FILE))
            .await
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Xvfb's process id (it leads its own process group).
    pub(super) fn pid(&self) -> i32 {
        self.pid
    }

    /// What the browser's environment needs: `DISPLAY` and `XAUTHORITY`. The browser must
    /// also be started with [`Display::install_client`], which makes `DISPLAY` reach this
    /// display's socket.
    pub(super) fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("DISPLAY".into(), format!(":{NUMBER}").into()),
            (
                "XAUTHORITY".into(),
                self.dir.join(AUTH_FILE).into_os_string(),
            ),
        ]
    }

    /// Where the socket is (for tests and the logs).
    pub(super) fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_DIR).join(format!("X{NUMBER}"))
    }

    /// Runs the browser (`cmd`) in a mount namespace of its own where this display's socket
    /// directory is `/tmp/.X11-unix`, so that `DISPLAY=:0` reaches this display (and no
    /// other). Call it before the sandbox's `install`, which drops the privileges the mounts
    /// need.
    pub(super) fn install_client(&self, cmd: &mut Command) {
        install_mounts(cmd.as_std_mut(), self.sockets.clone(), None);
    }

    /// Resolves when Xvfb has exited, with how.
    pub(super) async fn exited(&self) -> BrowserExit {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or_else(|| unknown("no status")),
            Err(_) => unknown("its watcher is gone"),
        }
    }

    /// Kills Xvfb's process group, waits until Xvfb is reaped, and removes its directory.
    /// Idempotent.
    pub(super) async fn kill(&self) {
        self.signal_group();
        let exit = self.exited().await;
        debug!(session_id = %self.session_id, pid = self.pid, %exit, "Xvfb is gone");
        remove_dir(self.dir.clone()).await;
    }

    /// SIGKILL to Xvfb's group, unless it was already reaped (its id may then be another's),
    /// without waiting: the last resort of an owner that cannot wait.
    pub(super) fn signal_group(&self) {
        if self.exit.borrow().is_none() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.signal_group();
    }
}

/// Whether the X server at `socket` accepts a connection set-up without any cookie (it
/// answers 1, Success, rather than 0, Failed). Xvfb does when it could not read its `-auth`
/// file or found no cookie in it, so every display is checked before it is used.
async fn admits_strangers(socket: &Path) -> std::io::Result<bool> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut stream = connect(&socket)?;
        let limit = Some(Duration::from_secs(5));
        stream.set_read_timeout(limit)?;
        stream.set_write_timeout(limit)?;
        // Little-endian, protocol 11.0, no authorization name or data.
        stream.write_all(&[b'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
        let mut status = [0u8; 1];
        std::io::Read::read_exact(&mut stream, &mut status)?;
        Ok(status[0] == 1)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Connects to the Unix socket at `socket` however long its path (a socket address holds
/// at most 107 bytes): through `/proc/self/fd/<its directory>`. Blocking.
fn connect(socket: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::unix::fs::OpenOptionsExt;
    let (Some(parent), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(parent)?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    std::os::unix::net::UnixStream::connect(short)
}

/// Xvfb's command for `spec`: display `:0` with no TCP, no abstract socket and no lock
/// file, its cookie file, its readiness on fd 4, the session's screen size, an empty
/// environment, stderr to `log`, a process group of its own.
fn xvfb_command(xvfb: &Path, spec: &DisplaySpec<'_>, log: std::fs::File) -> Command {
    let mut cmd = Command::new(xvfb);
    cmd.arg(format!(":{NUMBER}"))
        .args([
            "-nolisten",
            "tcp",
            "-nolisten",
            "local",
            "-nolock",
            "-noreset",
        ])
        .arg("-auth")
        .arg(spec.dir.join(AUTH_FILE))
        .args(["-displayfd", "4", "-screen", "0"])
        .arg(format!("{}x{}x24", spec.width, spec.height))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(false);
    cmd
}

/// Whether displays can run here: a child can make the private mount namespace and the bind
/// mount every display and its browser need (`CAP_SYS_ADMIN`; a container without it, or a
/// gateway run as an ordinary user, cannot). Says why not, for `/healthz` and the 501 of a
/// headful create. Blocking: it runs `/bin/true` so.
pub(super) fn probe() -> Result<(), String> {
    let cannot = |what: &str, e: std::io::Error| {
        format!(
            "headless: false needs a private mount namespace for each session's X server, and \
             this gateway cannot make one ({what}: {e}); run it as root with CAP_SYS_ADMIN \
             (in a container: --cap-add SYS_ADMIN and a seccomp profile that allows mount)"
        )
    };
    mount_point(X11_UNIX, 0o1777).map_err(|e| cannot(X11_UNIX, e))?;
    let sockets = CString::new(X11_UNIX).map_err(|e| cannot("path", e.into()))?;
    let mut cmd = std::process::Command::new("/bin/true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    install_mounts(&mut cmd, sockets, None);
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(cannot("probe", std::io::Error::other(status.to_string()))),
        Err(e) => Err(cannot("unshare and mount", e)),
    }
}

/// What the start-up sweep looks for in a command line to recognise an Xvfb that a display
/// under `parent` (the sessions or scratch directory) started.
pub(super) fn sweep_marker(parent: &Path) -> String {
    format!("-auth {}/", parent.display())
}

fn unknown(why: &str) -> BrowserExit {
    BrowserExit::Unknown(why.to_owned())
}

/// Reaps Xvfb and says how it ended.
async fn watch_exit(mut child: tokio::process::Child, tx: watch::Sender<Option<BrowserExit>>) {
    use std::os::unix::process::ExitStatusExt;
    let exit = match child.wait().await {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => BrowserExit::Code(code),
            (None, Some(signal)) => BrowserExit::Signal(signal),
            (None, None) => unknown("no code and no signal"),
        },
        Err(e) => BrowserExit::Unknown(e.to_string()),
    };
    let _ = tx.send(Some(exit));
}

/// Removes a display's directory (off the runtime); a failure is logged.
async fn remove_dir(dir: PathBuf) {
    let shown = dir.clone();
    match tokio::task::spawn_blocking(move || owner::remove_tree(&dir)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(dir = %shown.display(), error = %e, "cannot remove a display's directory")
        }
        Err(e) => warn!(dir = %shown.display(), error = %e, "cannot remove a display's directory"),
    }
}

/// The directories a Landlock ruleset for this display's Xvfb must give every right on:
/// `dir`, its socket directory and its keymap directory, which Landlock sees through the
/// bind mounts (as `/tmp/.X11-unix` and `/var/lib/xkb`), so not beneath `dir`. Make them with [`make_dirs`] before building
/// the ruleset (a missing path gets no rule).
pub(super) fn landlock_dirs(dir: &Path) -> Vec<PathBuf> {
    vec![dir.to_path_buf(), dir.join(SOCKET_DIR), dir.join(XKB_DIR)]
}

/// Makes `dir` and `dir/xkb` (given to `user`) and `dir/X11-unix` (mode 1777, as
/// `/tmp/.X11-unix`), and checks the mount points. [`Display::start`] does it too. Blocking.
pub(super) fn make_dirs(dir: &Path, user: Option<(u32, u32)>) -> Result<(), DisplayError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |source| DisplayError::Directory {
        dir: dir.to_path_buf(),
        source,
    };
    for (point, mode) in [(X11_UNIX, 0o1777), (XKM_OUTPUT, 0o755)] {
        mount_point(point, mode).map_err(|source| DisplayError::Directory {
            dir: point.into(),
            source,
        })?;
    }
    owner::own_dir(dir, user).map_err(fail)?;
    owner::own_dir(&dir.join(XKB_DIR), user).map_err(fail)?;
    let sockets = dir.join(SOCKET_DIR);
    std::fs::create_dir_all(&sockets).map_err(fail)?;
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o1777)).map_err(fail)
}

/// Makes the directories ([`make_dirs`]), the Xauthority file with a fresh cookie and
/// Xvfb's log (both `user`'s). Blocking.
fn prepare(dir: &Path, user: Option<(u32, u32)>) -> Result<Prepared, DisplayError> {
    let fail = |source| DisplayError::Directory {
        dir: dir.to_path_buf(),
        source,
    };
    make_dirs(dir, user)?;
    let sockets = dir.join(SOCKET_DIR);
    let mut cookie = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut cookie))
        .map_err(fail)?;
    let auth = dir.join(AUTH_FILE);
    write_private(&auth, &xauthority(&cookie)).map_err(fail)?;
    let log_path = dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(fail)?;
    if let Some((uid, gid)) = user {
        for path in [&auth, &log_path] {
            lchown(path, Some(uid), Some(gid)).map_err(fail)?;
        }
    }
    let c_path = |path: PathBuf| {
        CString::new(path.into_os_string().into_vec())
            .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
    };
    Ok(Prepared {
        null: std::fs::File::open("/dev/null").map_err(fail)?,
        sockets: c_path(sockets)?,
        xkb: c_path(dir.join(XKB_DIR))?,
        log,
    })
}

/// Makes sure `point` is a real directory to mount on: creates it (with `mode`) when
/// missing, refuses a link or anything else.
fn mount_point(point: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(mode).create(point) {
        Ok(()) => std::fs::set_permissions(point, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(point)?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::other("it is not a directory"))
            }
        }
        Err(e) => Err(e),
    }
}

/// Creates `path` (mode 0600, never following a link) holding `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(bytes)
}

/// An Xauthority file of one entry: family FamilyWild (any address), no display number
/// (any display), `MIT-MAGIC-COOKIE-1` with `cookie`. Each field is a big-endian 16-bit
/// length and its bytes (libXau's format).
fn xauthority(cookie: &[u8; 16]) -> Vec<u8> {
    let mut out = 0xffffu16.to_be_bytes().to_vec();
    for field in [&b""[..], b"", b"MIT-MAGIC-COOKIE-1", cookie] {
        out.extend_from_slice(&(field.len() as u16).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// A close-on-exec pipe, both ends above fd 4 (as [`ChildSetup`] wants).
fn pipe() -> Result<(OwnedFd, OwnedFd), DisplayError> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| DisplayError::Pipe(e.into()))?;
    Ok((high_fd(read)?, high_fd(write)?))
}

fn high_fd(fd: OwnedFd) -> Result<OwnedFd, DisplayError> {
    high_copy(fd.as_raw_fd())
}

/// A close-on-exec copy of `fd` above fd 9 (`fd` must be open).
fn high_copy(fd: RawFd) -> Result<OwnedFd, DisplayError> {
    // SAFETY: the caller keeps `fd` open for this call.
    #[allow(unsafe_code)]
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map_err(|e| DisplayError::Pipe(e.into()))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Installs, between fork and exec, a private mount namespace where `sockets` is
/// `/tmp/.X11-unix` and, when given, `xkb` is `/var/lib/xkb`.
#[allow(unsafe_code)]
fn install_mounts(cmd: &mut std::process::Command, sockets: CString, xkb: Option<CString>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child of a multi-threaded process, so only raw system calls
    // on values built before the fork: `sockets` and `xkb` are owned by the closure and only
    // borrowed as pointers, the other paths are static C strings. Its error is a bare errno
    // (`from_raw_os_error` does not allocate), which std sends to the parent.
    unsafe {
        cmd.pre_exec(move || {
            let none = std::ptr::null::<libc::c_char>();
            let bind = |from: &CString, to: &std::ffi::CStr| {
                libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::unshare(libc::CLONE_NEWNS) < 0
                || libc::mount(none, c"/".as_ptr(), none, private, std::ptr::null()) < 0
                || bind(&sockets, c"/tmp/.X11-unix") < 0
                || xkb
                    .as_ref()
                    .is_some_and(|xkb| bind(xkb, c"/var/lib/xkb") < 0)
            {
                return Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::last_raw(),
                ));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;

    pub(super) const XVFB: &str = "/usr/bin/Xvfb";

    /// A fresh directory of the test's own (removed by the display's `kill`, or the test).
    pub(super) fn scratch(name: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!("ingot-display-{name}-{}", Uuid::new_v4())))
    }

    /// A test's directory, removed when the test ends, even by a panic.
    pub(super) struct Scratch(pub(super) PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for Scratch {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(super) fn spec(dir: &Path, width: u32, height: u32) -> DisplaySpec<'_> {
        DisplaySpec {
            dir,
            width,
            height,
            session_id: Uuid::new_v4(),
            user: None,
            cgroup_procs: Vec::new(),
            no_new_privs: false,
            landlock: None,
        }
    }

    pub(super) fn cookie(display: &Display) -> [u8; 16] {
        let auth = std::fs::read(display.dir.join(AUTH_FILE)).unwrap();
        auth[auth.len() - 16..].try_into().unwrap()
    }

    /// An X11 connection set-up over `socket` with `cookie` (or none): the screen's size if
    /// the server accepts, else the status byte it answered (0 failed, 2 authenticate).
    pub(super) async fn handshake(socket: &Path, cookie: Option<&[u8]>) -> Result<(u16, u16), u8> {
        let stream = connect(socket).unwrap();
        stream.set_nonblocking(true).unwrap();
        let mut stream = UnixStream::from_std(stream).unwrap();
        let (name, data): (&[u8], &[u8]) = match cookie {
            Some(c) => (b"MIT-MAGIC-COOKIE-1", c),
            None => (b"", b""),
        };
        let mut req = vec![b'l', 0, 11, 0, 0, 0];
        req.extend_from_slice(&(name.len() as u16).to_le_bytes());
        req.extend_from_slice(&(data.len() as u16).to_le_bytes());
        req.extend_from_slice(&[0, 0]);
        for field in [name, data] {
            req.extend_from_slice(field);
            req.resize(req.len().next_multiple_of(4), 0);
        }
        stream.write_all(&req).await.unwrap();
        let mut head = [0u8; 8];
        stream.read_exact(&mut head).await.unwrap();
        let mut rest = vec![0u8; usize::from(u16::from_le_bytes([head[6], head[7]])) * 4];
        stream.read_exact(&mut rest).await.unwrap();
        if head[0] != 1 {
            return Err(head[0]);
        }
        // After the fixed 32 bytes: the vendor (padded), the pixmap formats (8 bytes each),
        // then the first screen, whose width and height are at its bytes 20 and 22.
        let vendor = usize::from(u16::from_le_bytes([rest[16], rest[17]]));
        let formats = usize::from(rest[21]);
        let screen = 32 + vendor.next_multiple_of(4) + 8 * formats;
        let at = |i: usize| u16::from_le_bytes([rest[screen + i], rest[screen + i + 1]]);
        Ok((at(20), at(22)))
    }

    /// The inodes of the sockets process `pid` holds.
    fn socket_inodes(pid: i32) -> Vec<u64> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
            })
            .collect()
    }

    /// Lines of `/proc/net/<table>` whose inode (field `column`) is one of `inodes`.
    fn net_lines(table: &str, column: usize, inodes: &[u64]) -> Vec<String> {
        std::fs::read_to_string(format!("/proc/net/{table}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter(|l| {
                l.split_whitespace()
                    .nth(column)
                    .and_then(|i| i.parse::<u64>().ok())
                    .is_some_and(|i| inodes.contains(&i))
            })
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn the_socket_is_in_the_dir_only_and_the_screen_has_the_size_asked() {
        let dir = scratch("socket");
        let began = std::time::Instant::now();
        let display = Display::start(Path::new(XVFB), spec(&dir, 1024, 600))
            .await
            .unwrap();
        eprintln!("Xvfb accepted clients {:?} after start", began.elapsed());
        let socket = display.socket();
        assert!(socket.starts_with(&dir), "{}", socket.display());
        let ino = std::fs::metadata(&socket).unwrap().ino();
        // Not in the machine's /tmp (another X server's socket there would be another inode).
        if let Ok(meta) = std::fs::metadata("/tmp/.X11-unix/X0") {
            assert_ne!(meta.ino(), ino);
        }
        let inodes = socket_inodes(display.pid());
        let unix = net_lines("unix", 6, &inodes);
        // One listening path socket (its name as bound, inside the namespace), no abstract
        // one; flags 00010000 mark a listening socket (the others are accepted connections).
        let listening: Vec<&String> = unix
            .iter()
            .filter(|l| l.split_whitespace().nth(3) == Some("00010000"))
            .collect();
        assert_eq!(listening.len(), 1, "{unix:?}");
        assert!(listening[0].ends_with(" /tmp/.X11-unix/X0"), "{unix:?}");
        assert!(!unix.iter().any(|l| l.contains(" @")), "{unix:?}");
        for table in ["tcp", "tcp6", "udp", "udp6"] {
            assert_eq!(
                net_lines(table, 9, &inodes),
                Vec::<String>::new(),
                "{table}"
            );
        }
        let size = handshake(&socket, Some(&cookie(&display))).await;
        assert_eq!(size, Ok((1024, 600)));
        assert_eq!(
            display.env(),
            vec![
                ("DISPLAY".into(), ":0".into()),
                ("XAUTHORITY".into(), dir.join("Xauthority").into_os_string()),
            ]
        );
        display.kill().await;
    }

    #[tokio::test]
    async fn a_client_without_the_cookie_is_refused() {
        let dir = scratch("cookie");
        let display = Display::start(Path::new(XVFB), spec(&dir, 800, 600))
            .await
            .unwrap();
        let socket = display.socket();
        assert_eq!(handshake(&socket, None).await, Err(0));
        assert_eq!(handshake(&socket, Some(&[7u8; 16])).await, Err(0));
        assert_eq!(
            handshake(&socket, Some(&cookie(&display))).await,
            Ok((800, 600))
        );
        let mode = std::fs::metadata(dir.join(AUTH_FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        display.kill().await;
    }

    #[tokio::test]
    async fn two_displays_at_once_do_not_collide_nor_share_cookies() {
        let (dir_a, dir_b) = (scratch("a"), scratch("b"));
        let a = Display::start(Path::new(XVFB), spec(&dir_a, 640, 480))
            .await
            .unwrap();
        let b = Display::start(Path::new(XVFB), spec(&dir_b, 320, 200))
            .await
            .unwrap();
        assert_ne!(cookie(&a), cookie(&b));
        assert_eq!(
            handshake(&a.socket(), Some(&cookie(&a))).await,
            Ok((640, 480))
        );
        assert_eq!(
            handshake(&b.socket(), Some(&cookie(&b))).await,
            Ok((320, 200))
        );
        assert_eq!(handshake(&b.socket(), Some(&cookie(&a))).await, Err(0));
        a.kill().await;
        b.kill().await;
    }

    #[tokio::test]
    async fn kill_leaves_no_process_and_no_files_and_may_be_repeated() {
        let dir = scratch("kill");
        let display = Display::start(Path::new(XVFB), spec(&dir, 800, 600))
            .await
            .unwrap();
        let pid = display.pid();
        assert!(super::super::sweep::group_has_running_member(pid));
        display.kill().await;
        assert!(!super::super::sweep::group_has_running_member(pid));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.exists());
        display.kill().await;
        assert!(matches!(display.exited().await, BrowserExit::Signal(9)));
    }

    #[tokio::test]
    async fn a_dropped_display_takes_its_xvfb_with_it() {
        let dir = scratch("drop");
        let display = Display::start(Path::new(XVFB), spec(&dir, 800, 600))
            .await
            .unwrap();
        let pid = display.pid();
        drop(display);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while super::super::sweep::group_has_running_member(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "Xvfb outlived its Display"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_killed_xvfb_is_noticed() {
        let dir = scratch("exited");
        let display = Display::start(Path::new(XVFB), spec(&dir, 800, 600))
            .await
            .unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(200), display.exited()).await;
        assert!(pending.is_err(), "a running Xvfb counts as exited");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(display.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(5), display.exited()).await;
        assert_eq!(exit.unwrap(), BrowserExit::Signal(libc::SIGKILL));
        display.kill().await;
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn an_xvfb_that_fails_leaves_nothing_and_says_how() {
        let dir = scratch("fails");
        let err = Display::start(Path::new("/bin/false"), spec(&dir, 800, 600))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                DisplayError::Exited {
                    exit: BrowserExit::Code(1),
                    ..
                }
            ),
            "{err}"
        );
        assert!(!dir.exists());
        let missing = Display::start(Path::new("/nonexistent/Xvfb"), spec(&dir, 800, 600))
            .await
            .unwrap_err();
        assert!(matches!(missing, DisplayError::Spawn { .. }), "{missing}");
        assert!(!dir.exists());
        // Xvfb's own complaint reaches the error.
        let bad = Display::start(Path::new(XVFB), spec(&dir, 0, 0)).await;
        let err = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("its last output"), "{err}");
        assert!(!dir.exists());
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    /// The check that guards every start tells an open server from one that wants its
    /// cookie: an Xvfb started without `-auth` (in the same mounts) admits strangers.
    #[tokio::test]
    async fn a_server_that_admits_strangers_is_told_apart() {
        let dir = super::tests::scratch("guard");
        let display = Display::start(
            Path::new(super::tests::XVFB),
            super::tests::spec(&dir, 800, 600),
        )
        .await
        .unwrap();
        assert!(!admits_strangers(&display.socket()).await.unwrap());
        display.kill().await;

        let open_dir = super::tests::scratch("open");
        make_dirs(&open_dir, None).unwrap();
        let sockets = CString::new(open_dir.join(SOCKET_DIR).into_os_string().into_vec()).unwrap();
        let xkb = CString::new(open_dir.join(XKB_DIR).into_os_string().into_vec()).unwrap();
        let mut cmd = Command::new(super::tests::XVFB);
        cmd.args([":0", "-nolisten", "tcp", "-nolisten", "local", "-nolock"])
            .stderr(Stdio::null())
            .process_group(0);
        install_mounts(cmd.as_std_mut(), sockets, Some(xkb));
        let mut open = cmd.spawn().unwrap();
        let socket = open_dir.join(SOCKET_DIR).join("X0");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(std::time::Instant::now() < deadline, "no socket");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admitted = admits_strangers(&socket).await;
        let _ = open.kill().await;
        std::fs::remove_dir_all(&open_dir).unwrap();
        assert!(admitted.unwrap());
    }
}

#[cfg(test)]
mod confined_tests {
    use std::os::fd::AsRawFd;

    use super::super::sandbox::{Sandbox, SandboxConfig};
    use super::*;

    /// Xvfb runs as the browser's user, with no_new_privs and the browser's Landlock
    /// ruleset (its own directory only), and still serves its display.
    #[tokio::test]
    async fn xvfb_runs_under_the_browsers_sandbox() {
        let data = super::tests::scratch("sbx");
        std::fs::create_dir_all(&data).unwrap();
        let sandbox = Sandbox::detect(
            SandboxConfig::default(),
            &data,
            Path::new("/tmp"),
            &[Path::new("/usr/bin/Xvfb")],
        );
        let dir = data.join("display");
        let lease = sandbox.allocate_uid().unwrap();
        let user = lease.as_ref().map(|l| (l.uid(), l.uid()));
        make_dirs(&dir, user).unwrap();
        let ruleset = sandbox.ruleset(landlock_dirs(&dir), &[], None).unwrap();
        let spec = DisplaySpec {
            user,
            no_new_privs: true,
            landlock: ruleset.as_ref().map(AsRawFd::as_raw_fd),
            ..super::tests::spec(&dir, 500, 400)
        };
        // This machine confines browsers (root, Landlock): the test must see both at work.
        assert!(
            user.is_some() && spec.landlock.is_some(),
            "{:?}",
            sandbox.status()
        );
        let started = Display::start(Path::new(super::tests::XVFB), spec).await;
        drop(ruleset);
        let display = started.unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", display.pid())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let nnp = status
            .lines()
            .find(|l| l.starts_with("NoNewPrivs:"))
            .unwrap();
        if let Some((uid, _)) = user {
            assert!(uid_line.contains(&uid.to_string()), "{uid_line}");
        }
        assert!(nnp.ends_with('1'), "{nnp}");
        let cookie = super::tests::cookie(&display);
        let size = super::tests::handshake(&display.socket(), Some(&cookie)).await;
        assert_eq!(size, Ok((500, 400)));
        assert_eq!(
            super::tests::handshake(&display.socket(), None).await,
            Err(0)
        );
        display.kill().await;
        assert!(!dir.exists());
        drop(lease);
        std::fs::remove_dir_all(&data).unwrap();
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    /// An Xvfb whose gateway died without killing it is killed by the next start's sweep,
    /// which finds it by its `-auth` file under the sessions directory.
    #[tokio::test]
    async fn the_start_up_sweep_kills_a_leftover_xvfb() {
        let data = super::tests::scratch("sweep");
        let dir = data.join("sessions").join(Uuid::new_v4().to_string());
        let display = Display::start(
            Path::new(super::tests::XVFB),
            super::tests::spec(&dir, 800, 600),
        )
        .await
        .unwrap();
        let pid = display.pid();
        // As if the gateway were SIGKILLed: nothing kills it on drop.
        std::mem::forget(display);
        let swept = {
            let data = data.to_path_buf();
            tokio::task::spawn_blocking(move || super::super::sweep::sweep(&data))
                .await
                .unwrap()
        };
        assert_eq!(swept.process_groups, 1, "{swept:?}");
        assert!(!super::super::sweep::group_has_running_member(pid));
        assert!(!dir.exists());
        std::fs::remove_dir_all(&data).unwrap();
    }
}

#[cfg(test)]
mod chromium_tests {
    use super::*;

    const CHROMIUM: &str = "/usr/lib/chromium/chromium";

    /// A full (headful) Chromium given the display's environment and mounts opens it and
    /// stays up; without `install_client` it would find no X server at `:0`.
    #[tokio::test]
    async fn a_headful_chromium_runs_on_the_display() {
        if !Path::new(CHROMIUM).exists() {
            eprintln!("skipped: no {CHROMIUM}");
            return;
        }
        // Short: Chromium's singleton socket goes under TMPDIR (at most 107 bytes).
        let root = super::tests::Scratch(
            std::env::temp_dir().join(format!("ingot-dc-{}", &Uuid::new_v4().to_string()[..8])),
        );
        let dir = root.join("display");
        let display = Display::start(
            Path::new(super::tests::XVFB),
            super::tests::spec(&dir, 1280, 720),
        )
        .await
        .unwrap();
        let profile = root.join("profile");
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--no-sandbox",
            "--ozone-platform=x11",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .env_clear()
        .envs(display.env())
        .env("HOME", &root.0)
        .env("TMPDIR", &root.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
        display.install_client(&mut cmd);
        let mut chromium = cmd.spawn().unwrap();
        let pid = chromium.id().unwrap() as i32;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let running = chromium.try_wait().unwrap().is_none();
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = chromium.wait().await;
        let mut stderr = String::new();
        if let Some(mut pipe) = chromium.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        assert!(running, "Chromium exited: {stderr}");
        for complaint in [
            "Missing X server",
            "cannot open display",
            "Authorization required",
        ] {
            assert!(!stderr.contains(complaint), "{stderr}");
        }
        display.kill().await;
        std::fs::remove_dir_all(&root).unwrap();
    }
}
