//! A Chromium process on this machine, driven over `--remote-debugging-pipe`.
//!
//! Owns launching (flags, profile directory, process group, pipes), readiness (the first CDP
//! reply), exit detection and reaping (kill the whole process group, then delete the
//! session directory). The browser opens no TCP listener at all, so only the gateway can
//! drive it. This module must not know about sessions' states or clients.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::egress;
use super::paths::{SESSIONS_SUBDIR, scratch_root};
use super::pipe::{PipeSink, PipeSource};
use super::reaper::{self, Leaders};
use super::sweep::{SweepReport, sweep};
use super::window::{Frame, FrameCalibration, measure_and_fit, window_size};
use super::{
    BrowserExit, BrowserHost, BrowserProcess, CdpTransport, FromBrowser, LaunchError, LaunchSpec,
    Launched, MemorySample, Startup, ToBrowser,
};
use crate::sync::lock;

/// Flags every session's Chromium gets. The background-networking flags stop Chromium from
/// flooding a closed network; the `--disable-features` list drops a WebUI renderer that
/// headless sessions never use (a third less memory per browser).
pub const BASE_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=WebUIReloadButton,WebUIOmniboxPopup,WebUIOmniboxAimPopup",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--remote-debugging-pipe",
    // Suppresses the "unsupported command-line flag" infobar that --no-sandbox brings, which
    // would otherwise shrink the page a moment after start.
    "--test-type",
];

/// How long a browser may take to answer its first CDP command.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A start slower than this is logged while it is still waiting.
const SLOW_START: Duration = Duration::from_secs(5);
/// Stderr lines kept for diagnosing a failed start.
const STDERR_TAIL: usize = 30;
/// Free disk space a launch needs, in the profile and the scratch directories' file systems.
const MIN_FREE_DISK: u64 = 64 << 20;
/// How long a failed start waits for the rest of the browser's stderr.
const STDERR_SETTLE: Duration = Duration::from_millis(500);

/// Launches Chromium processes, each with its own profile under `<data_dir>/sessions/<id>`
/// and its own scratch directory under [`scratch_root`].
pub struct LocalChromium {
    executable: PathBuf,
    data_dir: PathBuf,
    sessions_dir: PathBuf,
    scratch: Arc<ScratchRoot>,
    frame: FrameCalibration,
    leaders: Leaders,
    /// The egress policy every browser's forwarder applies.
    egress: Arc<egress::Policy>,
}

impl LocalChromium {
    /// A host that runs `executable` with its sessions under `data_dir`. Makes this process
    /// a child subreaper, so that helpers of a dead browser are re-parented to the gateway,
    /// which reaps them (see [`BrowserHost::upkeep`]).
    pub fn new(executable: PathBuf, data_dir: &Path) -> Self {
        reaper::become_subreaper();
        LocalChromium {
            executable,
            data_dir: data_dir.to_path_buf(),
            sessions_dir: data_dir.join(SESSIONS_SUBDIR),
            scratch: Arc::new(ScratchRoot {
                path: scratch_root(data_dir),
                users: Mutex::new(0),
            }),
            frame: FrameCalibration::default(),
            leaders: Leaders::default(),
            egress: Arc::default(),
        }
    }

    /// The same host with `policy` for its browsers' traffic (the default denies
    /// link-local addresses only).
    pub fn with_egress(mut self, policy: Arc<egress::Policy>) -> Self {
        self.egress = policy;
        self
    }
}

/// The parent of every browser's scratch directory. It exists only while a browser uses
/// it: the last one out removes it, so an idle gateway leaves nothing in `/tmp`.
struct ScratchRoot {
    path: PathBuf,
    /// Browsers whose directories exist; creating and removing happen under this lock.
    users: Mutex<usize>,
}

impl ScratchRoot {
    /// Creates a browser's directories and counts it in. Blocking.
    fn enter(&self, dirs: &[PathBuf]) -> std::io::Result<()> {
        let mut users = lock(&self.users);
        for dir in dirs {
            std::fs::create_dir_all(dir)?;
        }
        *users += 1;
        Ok(())
    }

    /// Counts a browser out, removing the root with the last one. Blocking.
    fn leave(&self) {
        let mut users = lock(&self.users);
        *users = users.saturating_sub(1);
        if *users == 0 {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

impl BrowserHost for LocalChromium {
    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<Launched, LaunchError>> {
        async move {
            let dirs = SessionDirs {
                root: self.sessions_dir.join(spec.session_id.to_string()),
                scratch: self.scratch.path.join(spec.session_id.simple().to_string()),
                owner: self.scratch.clone(),
                removed: Arc::new(AtomicBool::new(false)),
            };
            let started = Instant::now();
            let (frame, unmeasured) = self.frame.frame();
            // The scratch root exists only while browsers use it: check the file system it
            // lives on through its parent.
            let scratch_fs = self.scratch.path.parent().unwrap_or(Path::new("/tmp"));
            let space = [self.sessions_dir.clone(), scratch_fs.to_path_buf()];
            let mut result = self.launch_in(dirs, space, &spec, frame).await;
            if let (Ok(launched), true) = (&mut result, unmeasured) {
                match measure_and_fit(&mut launched.transport, spec.dimensions, frame).await {
                    Ok(real) => {
                        info!(?real, "measured the space Chromium's window takes around the page");
                        self.frame.learn(real);
                    }
                    Err(e) => warn!(session_id = %spec.session_id, error = %e, "cannot measure the page size"),
                }
            }
            match &result {
                Ok(launched) => info!(
                    session_id = %spec.session_id,
                    browser = %launched.process.address(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "browser ready"
                ),
                Err(e) => {
                    warn!(session_id = %spec.session_id, error = %e, "browser failed to start")
                }
            }
            result
        }
        .boxed()
    }

    fn sample_memory(&self) -> BoxFuture<'_, MemorySample> {
        async {
            tokio::task::spawn_blocking(sample_browser_memory)
                .await
                .unwrap_or_default()
        }
        .boxed()
    }

    fn describe(&self) -> String {
        self.executable.display().to_string()
    }

    fn sweep(&self) -> BoxFuture<'_, SweepReport> {
        let data_dir = self.data_dir.clone();
        async move {
            tokio::task::spawn_blocking(move || sweep(&data_dir))
                .await
                .unwrap_or_default()
        }
        .boxed()
    }

    fn upkeep(&self, stop: CancellationToken) -> BoxFuture<'_, ()> {
        reaper::run(self.leaders.clone(), stop).boxed()
    }
}

/// Refuses to launch into a disk with less than [`MIN_FREE_DISK`] free, or a read-only one:
/// Chromium starts on a full disk, but then fails to write its profile and cache as the
/// session goes on. Blocking.
fn check_free_space(dirs: &[PathBuf; 2]) -> Result<(), String> {
    dirs.iter().try_for_each(|dir| check_dir_space(dir))
}

fn check_dir_space(dir: &Path) -> Result<(), String> {
    let unusable = |e: &dyn std::fmt::Display| {
        format!("cannot use the session directory {}: {e}", dir.display())
    };
    std::fs::create_dir_all(dir).map_err(|e| unusable(&e))?;
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| unusable(&e))?;
    if stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(unusable(&"it is on a read-only file system"));
    }
    let bytes = stat.blocks_available().saturating_mul(stat.fragment_size());
    let inodes = stat.files_available();
    if bytes < MIN_FREE_DISK || inodes == 0 {
        return Err(format!(
            "not enough free disk space in {}: {} MiB and {inodes} inodes free, sessions need at least {} MiB",
            dir.display(),
            bytes >> 20,
            MIN_FREE_DISK >> 20
        ));
    }
    Ok(())
}

/// Sums the resident memory of every browser process this gateway started: the processes in
/// the process groups led by the gateway's children. Reads `/proc`, so it blocks.
fn sample_browser_memory() -> MemorySample {
    let gateway = std::process::id() as i32;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(4096);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return MemorySample::default();
    };
    // (pid, ppid, process group, resident pages)
    let processes: Vec<(i32, i32, i32, u64)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name, which may itself contain spaces and parentheses.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ppid = fields.get(1)?.parse().ok()?;
            let pgrp = fields.get(2)?.parse().ok()?;
            let rss = fields.get(21)?.parse().ok()?;
            Some((pid, ppid, pgrp, rss))
        })
        .collect();
    let leaders: std::collections::HashSet<i32> = processes
        .iter()
        .filter(|(pid, ppid, pgrp, _)| *ppid == gateway && pgrp == pid)
        .map(|(pid, ..)| *pid)
        .collect();
    processes
        .iter()
        .filter(|(_, _, pgrp, _)| leaders.contains(pgrp))
        .fold(MemorySample::default(), |sample, (.., rss)| MemorySample {
            processes: sample.processes + 1,
            resident_bytes: sample.resident_bytes + rss * page_size,
        })
}

/// The directories one browser owns; both are removed when it is reaped.
#[derive(Clone)]
struct SessionDirs {
    /// `<data_dir>/sessions/<id>`, holding the profile.
    root: PathBuf,
    /// The browser's `TMPDIR`.
    scratch: PathBuf,
    owner: Arc<ScratchRoot>,
    /// Set by the first removal, so that the root's count drops once.
    removed: Arc<AtomicBool>,
}

impl SessionDirs {
    fn profile(&self) -> PathBuf {
        self.root.join("profile")
    }

    /// Checks that the disks holding `space` have room, then creates both directories, in
    /// one trip to the blocking pool.
    async fn create(&self, space: [PathBuf; 2]) -> Result<(), LaunchError> {
        let owner = self.owner.clone();
        let dirs = [self.profile(), self.scratch.clone()];
        let created = tokio::task::spawn_blocking(move || {
            check_free_space(&space).map_err(|e| (e, false))?;
            owner.enter(&dirs).map_err(|e| (e.to_string(), true))
        })
        .await;
        match created {
            Ok(Ok(())) => Ok(()),
            Ok(Err((e, false))) => Err(LaunchError(e)),
            Ok(Err((e, true))) => {
                remove_dir(&self.root).await;
                remove_dir(&self.scratch).await;
                Err(LaunchError(format!("cannot create session directory: {e}")))
            }
            Err(e) => Err(LaunchError(format!("cannot create session directory: {e}"))),
        }
    }

    /// Removes both directories (once; later calls do nothing).
    async fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        remove_dir(&self.root).await;
        remove_dir(&self.scratch).await;
        let owner = self.owner.clone();
        let _ = tokio::task::spawn_blocking(move || owner.leave()).await;
    }
}

impl LocalChromium {
    /// Creates the browser's directories, starts it and waits until it answers CDP; on
    /// failure, removes everything it started.
    async fn launch_in(
        &self,
        dirs: SessionDirs,
        space: [PathBuf; 2],
        spec: &LaunchSpec,
        frame: Frame,
    ) -> Result<Launched, LaunchError> {
        dirs.create(space).await?;
        // Every browser's traffic goes through its own forwarder, which applies the egress
        // policy. The uid the browser runs as goes here once browsers run as their own users
        // (`None`: any local peer may connect).
        let forwarder = match egress::for_browser(&self.egress, spec, None).await {
            Ok(forwarder) => forwarder,
            Err(e) => {
                dirs.remove().await;
                return Err(LaunchError(format!(
                    "cannot start the proxy forwarder: {e}"
                )));
            }
        };
        let proxy = forwarder.as_ref().map(|f| f.address.as_str());
        let args = chromium_args(&dirs, spec, frame, proxy);
        let spawned = spawn(&self.executable, args, &dirs, &self.leaders);
        let (mut process, mut transport) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                dirs.remove().await;
                return Err(e);
            }
        };
        process.proxy = forwarder;
        match wait_until_ready(&process, &mut transport, spec).await {
            Ok(version) => Ok(Launched {
                transport,
                process: Arc::new(process),
                version,
                downloads: spec.downloads.clone(),
            }),
            Err(reason) => {
                process.kill().await;
                // Its last words may still be in the pipe; they say why it did not start.
                let _ =
                    tokio::time::timeout(STDERR_SETTLE, process.stderr_closed.cancelled()).await;
                let tail = process.stderr_tail();
                if tail.is_empty() {
                    Err(LaunchError(format!("Chromium did not start: {reason}")))
                } else {
                    Err(LaunchError(format!(
                        "Chromium did not start: {reason}; its last output: {tail}"
                    )))
                }
            }
        }
    }
}

/// Sends the first CDP commands ([`Startup`]) and waits for their replies, the browser's
/// exit or a timeout. Returns the `result` of `Browser.getVersion`.
async fn wait_until_ready(
    process: &LocalProcess,
    transport: &mut CdpTransport,
    spec: &LaunchSpec,
) -> Result<serde_json::Value, String> {
    let (commands, mut startup) = Startup::begin(spec);
    for command in commands {
        if transport.to_browser.send(command).await.is_err() {
            return Err("the CDP pipe closed at once".into());
        }
    }
    let started = tokio::time::Instant::now();
    let mut slow_logged = false;
    loop {
        tokio::select! {
            msg = transport.from_browser.recv() => match msg {
                Some(msg) => match startup.take(&msg) {
                    Some(ready) => return ready,
                    None => continue,
                },
                None => {
                    let exit = tokio::time::timeout(Duration::from_secs(1), process.wait_exit()).await;
                    return Err(match exit {
                        Ok(exit) => format!("it exited ({exit}) before answering"),
                        Err(_) => "its CDP pipe closed before it answered".into(),
                    });
                }
            },
            _ = tokio::time::sleep_until(started + SLOW_START), if !slow_logged => {
                slow_logged = true;
                warn!(browser = %process.address(), "browser has not answered after {}s; still waiting", SLOW_START.as_secs());
            }
            _ = tokio::time::sleep_until(started + READY_TIMEOUT) => {
                return Err(format!("no answer to its first CDP command within {}s", READY_TIMEOUT.as_secs()));
            }
        }
    }
}

/// Chromium's arguments for one browser; `forwarder` is the browser's egress forwarder
/// (absent only for an `https://` `proxyUrl`, which the browser reaches itself).
fn chromium_args(
    dirs: &SessionDirs,
    spec: &LaunchSpec,
    frame: Frame,
    forwarder: Option<&str>,
) -> Vec<String> {
    let (width, height) = window_size(spec.dimensions, frame);
    let mut args: Vec<String> = BASE_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    args.push(format!("--user-data-dir={}", dirs.profile().display()));
    args.push(format!("--window-size={width},{height}"));
    // The screen is the page's size (headless Chromium's own is 800x600), so that the page
    // fills its screen as a full-screen window's does: innerHeight equals screen.height.
    let page = spec.dimensions;
    args.push(format!("--screen-info={{{}x{}}}", page.width, page.height));
    if let Some(ua) = &spec.user_agent {
        args.push(format!("--user-agent={ua}"));
    }
    if let Some(proxy) = forwarder.or(spec.proxy_server.as_deref()) {
        args.push(format!("--proxy-server={proxy}"));
        // Loopback addresses go through the proxy too, rather than to this machine.
        args.push("--proxy-bypass-list=<-loopback>".into());
    }
    // WebRTC may not send UDP around the proxy (QUIC is off in BASE_FLAGS).
    args.push("--force-webrtc-ip-handling-policy=disable_non_proxied_udp".into());
    args.push("about:blank".into());
    args
}

/// Starts Chromium in its own process group, with the CDP pipes on fds 3 and 4, and the
/// tasks that watch its exit, drain its stderr and frame its pipes.
fn spawn(
    executable: &Path,
    args: Vec<String>,
    dirs: &SessionDirs,
    leaders: &Leaders,
) -> Result<(LocalProcess, CdpTransport), LaunchError> {
    let io_err = |what: &str, e: std::io::Error| LaunchError(format!("{what}: {e}"));
    // Chromium reads commands from fd 3 and writes replies and events to fd 4.
    let (command_tx, command_rx) = pipe::pipe().map_err(|e| io_err("cannot create pipe", e))?;
    let (reply_tx, reply_rx) = pipe::pipe().map_err(|e| io_err("cannot create pipe", e))?;
    let child_reads = high_fd(
        command_rx
            .into_blocking_fd()
            .map_err(|e| io_err("pipe", e))?,
    )?;
    let child_writes = high_fd(reply_tx.into_blocking_fd().map_err(|e| io_err("pipe", e))?)?;
    let mut cmd = Command::new(executable);
    cmd.args(args)
        .env("TMPDIR", &dirs.scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    wire_child(&mut cmd, child_reads.as_raw_fd(), child_writes.as_raw_fd());
    // Held from fork until the pid is recorded, so the reaper never takes its status.
    let mut known = leaders.lock();
    let mut child = cmd
        .spawn()
        .map_err(|e| LaunchError(format!("cannot run {}: {e}", executable.display())))?;
    // The child has its copies; ours must close so that EOF reaches each side.
    drop(child_reads);
    drop(child_writes);
    let pid = child
        .id()
        .ok_or_else(|| LaunchError("Chromium exited during spawn".into()))? as i32;
    known.insert(pid);
    drop(known);
    let (stderr_tail, stderr_closed) = drain_stderr_of(&mut child, pid);
    let exit = watch_exit(child, pid, leaders.clone());
    let (transport, pipes_open) = frame_pipes(command_tx, reply_rx, pid);
    let process = LocalProcess {
        pid,
        dirs: dirs.clone(),
        exit,
        stderr_tail,
        stderr_closed,
        pipes_open,
        reaped: OnceCell::new(),
        proxy: None,
    };
    Ok((process, transport))
}

/// Sets up, between fork and exec: the CDP pipes on fds 3 and 4, and death with the
/// gateway.
#[allow(unsafe_code)]
fn wire_child(cmd: &mut Command, read_fd: i32, write_fd: i32) {
    let gateway_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (dup2, prctl, getppid) on descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(read_fd, 3) < 0 || libc::dup2(write_fd, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If the gateway dies without reaping, the browser dies with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The gateway may have died between fork and prctl; then no signal will come.
            if libc::getppid() != gateway_pid {
                return Err(std::io::Error::other("the gateway exited during spawn"));
            }
            Ok(())
        });
    }
}

/// Keeps the last lines of the browser's stderr; the token is cancelled at its EOF.
fn drain_stderr_of(
    child: &mut tokio::process::Child,
    pid: i32,
) -> (Arc<Mutex<VecDeque<String>>>, CancellationToken) {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let closed = CancellationToken::new();
    match child.stderr.take() {
        Some(stderr) => {
            let guard = closed.clone().drop_guard();
            let tail = tail.clone();
            tokio::spawn(async move {
                drain_stderr(stderr, tail, pid).await;
                drop(guard);
            });
        }
        None => closed.cancel(),
    }
    (tail, closed)
}

/// Waits for the browser leader's exit status; the receiver sees it once known.
fn watch_exit(
    mut child: tokio::process::Child,
    pid: i32,
    leaders: Leaders,
) -> watch::Receiver<Option<BrowserExit>> {
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let exit = match child.wait().await {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => BrowserExit::Code(code),
                (None, Some(sig)) => BrowserExit::Signal(sig),
                (None, None) => BrowserExit::Unknown(status.to_string()),
            },
            Err(e) => BrowserExit::Unknown(e.to_string()),
        };
        leaders.lock().remove(&pid);
        debug!(pid, %exit, "browser process exited");
        let _ = exit_tx.send(Some(exit));
    });
    exit_rx
}

/// Turns the two pipes into a [`CdpTransport`]. Cancelling the token closes both pipes even
/// while someone still holds the transport.
fn frame_pipes(
    command_tx: pipe::Sender,
    reply_rx: pipe::Receiver,
    pid: i32,
) -> (CdpTransport, CancellationToken) {
    let pipes_open = CancellationToken::new();
    let transport = CdpTransport {
        to_browser: ToBrowser::pipe(PipeSink::new(command_tx, pipes_open.clone())),
        from_browser: FromBrowser::pipe(PipeSource::new(reply_rx, pipes_open.clone(), pid)),
    };
    (transport, pipes_open)
}

/// Moves a descriptor above 10 so that `dup2` onto 3 and 4 in the child cannot clobber it.
#[allow(unsafe_code)]
fn high_fd(fd: OwnedFd) -> Result<OwnedFd, LaunchError> {
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
        .map(|raw| {
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        })
        .map_err(|e| LaunchError(format!("cannot duplicate pipe descriptor: {e}")))
}

async fn drain_stderr(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    pid: i32,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        debug!(pid, "chromium: {line}");
        let mut tail = lock(&tail);
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// A running local Chromium: its process group and its session directory.
pub struct LocalProcess {
    pid: i32,
    dirs: SessionDirs,
    exit: watch::Receiver<Option<BrowserExit>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Cancelled once the browser's stderr reached EOF.
    stderr_closed: CancellationToken,
    pipes_open: CancellationToken,
    reaped: OnceCell<()>,
    /// The forwarding proxy all the browser's traffic goes through; it stops with the
    /// process.
    proxy: Option<egress::Forwarder>,
}

impl LocalProcess {
    fn stderr_tail(&self) -> String {
        let tail = lock(&self.stderr_tail);
        tail.iter()
            .filter(|l| !l.contains("dbus"))
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    }

    async fn reap(&self) {
        // The browser leads its own process group, so one signal reaches every helper process.
        match killpg(Pid::from_raw(self.pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                warn!(pid = self.pid, error = %e, "cannot signal the browser's process group")
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.wait_exit()).await;
        // Helpers re-parented to init may outlive the leader for a moment. Looking for them
        // reads /proc, so it runs off the async runtime.
        let pgid = self.pid;
        let gone = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(2);
            while group_alive(pgid) {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            true
        })
        .await
        .unwrap_or(false);
        if !gone {
            warn!(
                pid = self.pid,
                "browser process group still has members 2s after SIGKILL"
            );
        }
        self.pipes_open.cancel();
        self.dirs.remove().await;
    }
}

/// Whether any process of the group is still running (zombies excluded: they hold nothing).
fn group_alive(pgid: i32) -> bool {
    match killpg(Pid::from_raw(pgid), None) {
        Err(_) => false,
        Ok(()) => super::sweep::group_has_running_member(pgid),
    }
}

impl BrowserProcess for LocalProcess {
    fn address(&self) -> String {
        format!("pid {} ({})", self.pid, self.dirs.root.display())
    }

    fn wait_exit(&self) -> BoxFuture<'_, BrowserExit> {
        let mut exit = self.exit.clone();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(state) => state
                    .clone()
                    .unwrap_or(BrowserExit::Unknown("no status".into())),
                Err(_) => BrowserExit::Unknown("exit watcher ended".into()),
            }
        }
        .boxed()
    }

    fn kill(&self) -> BoxFuture<'_, ()> {
        async move {
            self.reaped.get_or_init(|| self.reap()).await;
        }
        .boxed()
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        if self.reaped.get().is_none() {
            // Last resort if an owner forgot to reap: never leave a browser running.
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            self.pipes_open.cancel();
            warn!(
                pid = self.pid,
                "browser dropped without being reaped; killed its process group"
            );
        }
    }
}

/// Removes a session directory off the async runtime.
async fn remove_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let result = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err((dir, e)),
        _ => Ok(()),
    })
    .await;
    if let Ok(Err((dir, e))) = result {
        warn!(dir = %dir.display(), error = %e, "cannot remove session directory");
    }
}
