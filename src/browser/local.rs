//! A Chromium process on this machine, driven over `--remote-debugging-pipe`.
//!
//! Owns launching (flags, profile directory, process group, pipes, the sandbox each browser
//! runs in: its user, Landlock, its environment; see [`super::sandbox`]), readiness (the
//! first CDP reply), exit detection and reaping (kill the whole process group, give the
//! session's files back to the gateway, delete the session directory, free the browser's
//! user id). The browser opens no TCP listener at all, so only the gateway can drive it.
//! This module must not know about sessions' states or clients.

use std::collections::VecDeque;
use std::ffi::OsString;
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

use super::cgroup;
use super::display::{self, Display, DisplaySpec};
use super::egress;
use super::engine::{Engines, Mode};
use super::limits::{BrowserLimits, Limiter, MemoryVerdict};
use super::paths::{FILES_SUBDIR, SESSIONS_SUBDIR, scratch_root};
use super::pipe::{PipeSink, PipeSource};
use super::reaper::{self, Groups};
use super::sandbox::owner::{self, Owner};
use super::sandbox::{ChildSetup, Sandbox, SandboxConfig, SandboxStatus, UidLease, processes_of};
use super::sweep::{SweepReport, sweep};
use super::window::{Frame, FrameCalibration, measure_and_fit, window_size};
use super::{
    BrowserExit, BrowserHost, BrowserProcess, CdpTransport, DiskError, FromBrowser, LaunchError,
    LaunchSpec, Launched, MemorySample, NotReady, Startup, ToBrowser,
};
use crate::sync::lock;

/// Flags every session's Chromium gets, whatever its engine and mode (see
/// [`super::Engine::headless_flags`] for the rest). The background-networking flags stop Chromium from
/// flooding a closed network; the `--disable-features` list drops a WebUI renderer that
/// headless sessions never use (a third less memory per browser).
pub const BASE_FLAGS: &[&str] = &[
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
    // `navigator.webdriver` is false, as in a user's browser.
    "--disable-blink-features=AutomationControlled",
    "--remote-debugging-pipe",
    // Suppresses the "unsupported command-line flag" infobar that --no-sandbox brings, which
    // would otherwise shrink the page a moment after start.
    "--test-type",
];

/// Flags a confined browser gets beyond [`BASE_FLAGS`] (less `--no-sandbox` when Chromium's
/// own sandbox works): no crash reporter, whose dumps hold the browser's memory.
pub(super) const CONFINED_FLAGS: &[&str] = &["--disable-crash-reporter"];

/// `PATH` of a confined browser: system directories only, never the gateway's own.
const BROWSER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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
    /// The executables it runs, and the default engine.
    engines: Engines,
    data_dir: PathBuf,
    sessions_dir: PathBuf,
    scratch: Arc<ScratchRoot>,
    /// The window's frame around the page, learned per mode.
    frames: [FrameCalibration; Mode::COUNT],
    /// The process groups of the browsers it launched: all the reaper may reap.
    groups: Groups,
    /// The egress policy every browser's forwarder applies.
    egress: Arc<egress::Policy>,
    sandbox: Arc<Sandbox>,
    /// Set once the data directory was closed to browsers (see [`owner::harden`]).
    hardened: AtomicBool,
    /// Each browser's memory and task caps, and how they are enforced.
    limiter: Arc<Limiter>,
}

impl LocalChromium {
    /// A host that runs `engines` with its sessions under `data_dir`, in the sandbox
    /// `sandbox` asks for as far as this machine offers it (start-up says what is missing).
    /// Makes this process a child subreaper, so that helpers of a dead browser are
    /// re-parented to the gateway, which reaps them (see [`BrowserHost::upkeep`]): only
    /// processes of its browsers' groups, never another child of the gateway.
    /// Blocking: it probes the machine.
    pub fn new(engines: Engines, data_dir: &Path, sandbox: SandboxConfig) -> Self {
        reaper::become_subreaper();
        let scratch = scratch_root(data_dir);
        let scratch_parent = scratch.parent().unwrap_or(Path::new("/tmp")).to_path_buf();
        let executables: Vec<&Path> = [engines.chromium.as_deref(), engines.shell.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let sandbox = Sandbox::detect(sandbox, data_dir, &scratch_parent, &executables);
        LocalChromium {
            engines,
            data_dir: data_dir.to_path_buf(),
            sessions_dir: data_dir.join(SESSIONS_SUBDIR),
            scratch: Arc::new(ScratchRoot {
                path: scratch,
                users: Mutex::new(0),
            }),
            frames: Default::default(),
            groups: Groups::default(),
            sandbox: Arc::new(sandbox),
            hardened: AtomicBool::new(false),
            egress: Arc::default(),
            limiter: Arc::new(Limiter::detect(data_dir)),
        }
    }

    /// The same host with `policy` for its browsers' traffic (the default denies
    /// link-local addresses only).
    pub fn with_egress(mut self, policy: Arc<egress::Policy>) -> Self {
        self.egress = policy;
        self
    }

    /// How the browsers are isolated, as start-up found it.
    pub fn sandbox(&self) -> &SandboxStatus {
        self.sandbox.status()
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
    /// Creates a browser's directories (given to `owner`, mode 0700, when there is one)
    /// and counts it in. Blocking.
    fn enter(&self, dirs: &[PathBuf], owner: Option<Owner>) -> std::io::Result<()> {
        let mut users = lock(&self.users);
        for dir in dirs {
            std::fs::create_dir_all(dir)?;
        }
        if owner.is_some() {
            // Other users' browsers traverse the root to their own directories, but do not
            // list it.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o711))?;
            for dir in dirs {
                owner::own_dir(dir, owner)?;
            }
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
                confined: !self.sandbox.is_insecure(),
            };
            let started = Instant::now();
            let mode = self.engines.mode(spec.headful);
            if let (Mode::Headful, Some(missing)) = (mode, self.engines.headful_missing()) {
                return Err(LaunchError::HeadfulUnavailable(missing));
            }
            let calibration = &self.frames[mode.index()];
            let (frame, unmeasured) = calibration.frame();
            // The scratch root exists only while browsers use it: check the file system it
            // lives on through its parent.
            let scratch_fs = self.scratch.path.parent().unwrap_or(Path::new("/tmp"));
            let space = [self.sessions_dir.clone(), scratch_fs.to_path_buf()];
            let mut result = self.launch_in(dirs, space, &spec, (mode, frame)).await;
            if let (Ok(launched), true) = (&mut result, unmeasured) {
                match measure_and_fit(&mut launched.transport, spec.dimensions, frame).await {
                    Ok(real) => {
                        info!(?real, mode = mode.as_str(), "measured the space Chromium's window takes around the page");
                        calibration.learn(real);
                    }
                    Err(e) => warn!(session_id = %spec.session_id, error = %e, "cannot measure the page size"),
                }
            }
            match &result {
                Ok(launched) => info!(
                    session_id = %spec.session_id,
                    browser = %launched.process.address(),
                    mode = mode.as_str(),
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
        let shown =
            |p: Option<&Path>| p.map_or("not installed".to_owned(), |p| p.display().to_string());
        format!(
            "engine {} (shell: {}; chromium: {}; headful on Xvfb: {})",
            self.engines.default,
            shown(self.engines.shell.as_deref()),
            shown(self.engines.chromium.as_deref()),
            shown(self.engines.xvfb.as_deref())
                .replace("not installed", "no, needs chromium and xvfb"),
        )
    }

    fn engines(&self) -> Option<&Engines> {
        Some(&self.engines)
    }

    fn sweep(&self) -> BoxFuture<'_, SweepReport> {
        let data_dir = self.data_dir.clone();
        let limiter = self.limiter.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let groups = limiter.sweep();
                if groups > 0 {
                    info!(groups, "removed the cgroups a previous run left");
                }
                sweep(&data_dir)
            })
            .await
            .unwrap_or_default()
        }
        .boxed()
    }

    fn set_limits(&self, limits: cgroup::Limits) {
        self.limiter.set(limits);
    }

    fn upkeep(&self, stop: CancellationToken) -> BoxFuture<'_, ()> {
        let limiter = self.limiter.clone();
        async move {
            reaper::run(self.groups.clone(), stop).await;
            // Upkeep stops at shutdown, after every session ended: the browsers' groups
            // are gone, and so go their parents.
            let _ = tokio::task::spawn_blocking(move || limiter.remove_parents()).await;
        }
        .boxed()
    }

    fn sandbox(&self) -> Option<SandboxStatus> {
        Some(self.sandbox.status().clone())
    }

    fn check_capacity(&self, browsers: usize) {
        self.sandbox.check_capacity(browsers);
    }
}

/// Refuses to launch into a disk with less than [`MIN_FREE_DISK`] free, or a read-only one:
/// Chromium starts on a full disk, but then fails to write its profile and cache as the
/// session goes on. Blocking.
fn check_free_space(dirs: &[PathBuf; 2]) -> Result<(), DiskError> {
    dirs.iter().try_for_each(|dir| check_dir_space(dir))
}

fn check_dir_space(dir: &Path) -> Result<(), DiskError> {
    let unusable = |source: std::io::Error| DiskError::Unusable {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(unusable)?;
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| unusable(e.into()))?;
    if stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(DiskError::ReadOnly {
            dir: dir.to_path_buf(),
        });
    }
    let bytes = stat.blocks_available().saturating_mul(stat.fragment_size());
    let inodes = stat.files_available();
    if bytes < MIN_FREE_DISK || inodes == 0 {
        return Err(DiskError::Full {
            dir: dir.to_path_buf(),
            free_mib: bytes >> 20,
            inodes,
            need_mib: MIN_FREE_DISK >> 20,
        });
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
    /// Whether the browser is sandboxed (its home, crash and downloads directories are
    /// made for it, and its environment points there).
    confined: bool,
}

/// The TCP ports one browser may connect to, when any are confined.
struct Network {
    /// This launch's own ports.
    ports: Vec<u16>,
    /// The port of its proxy credentials' forwarder, allowed whenever ports are confined.
    forwarder: Option<u16>,
}

/// The port of `http://127.0.0.1:<port>`.
fn port_of(address: &str) -> Option<u16> {
    address
        .rsplit_once(':')?
        .1
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// What one launch gets from the sandbox, built before the fork.
struct Confinement {
    /// The browser's user id; `None` runs it as the gateway's user.
    uid: Option<UidLease>,
    /// The Landlock ruleset to restrict it with.
    ruleset: Option<OwnedFd>,
}

impl SessionDirs {
    fn profile(&self) -> PathBuf {
        self.root.join("profile")
    }

    /// `HOME`, and the `XDG_*` directories under it.
    fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// A headful browser's virtual display: its socket, cookie and log.
    fn display(&self) -> PathBuf {
        self.root.join("display")
    }

    /// Where crash dumps would go (the crash reporter is off).
    fn crash(&self) -> PathBuf {
        self.root.join("crash")
    }

    /// Every directory the browser owns: made for it at launch, the only ones Landlock
    /// lets it write. `downloads` (the session's files) outlives it.
    fn own(&self, downloads: Option<&Path>) -> Vec<PathBuf> {
        if !self.confined {
            return vec![self.profile(), self.scratch.clone()];
        }
        let mut own = vec![
            self.root.clone(),
            self.profile(),
            self.home(),
            self.crash(),
            self.scratch.clone(),
        ];
        own.extend(downloads.map(Path::to_path_buf));
        own
    }

    /// Checks that the disks holding `space` have room, creates the browser's directories
    /// (given to its user, when it has one) and builds its Landlock ruleset, in one trip to
    /// the blocking pool.
    async fn create(
        &self,
        space: [PathBuf; 2],
        uid: Option<UidLease>,
        downloads: Option<&Path>,
        (sandbox, network): (&Arc<Sandbox>, Network),
    ) -> Result<Confinement, LaunchError> {
        let owner = self.owner.clone();
        let dirs = self.own(downloads);
        let user = uid.as_ref().map(|l| (l.uid(), l.uid()));
        let sandbox = sandbox.clone();
        // What to undo on failure: nothing, the directories, or the entered directories.
        enum Undo {
            Nothing,
            Dirs,
            Entered,
        }
        let created = tokio::task::spawn_blocking(move || {
            check_free_space(&space).map_err(|e| (e.into(), Undo::Nothing))?;
            owner
                .enter(&dirs, user)
                .map_err(|e| (LaunchError::Directory(e), Undo::Dirs))?;
            sandbox
                .ruleset(dirs, &network.ports, network.forwarder)
                .map_err(|e| (e.into(), Undo::Entered))
        })
        .await
        .unwrap_or_else(|source| {
            let what = "cannot create session directory";
            Err((LaunchError::Worker { what, source }, Undo::Nothing))
        });
        let (e, undo) = match created {
            Ok(ruleset) => return Ok(Confinement { uid, ruleset }),
            Err(failed) => failed,
        };
        match undo {
            Undo::Nothing => {}
            Undo::Dirs => {
                remove_dir(&self.root).await;
                remove_dir(&self.scratch).await;
            }
            Undo::Entered => self.remove().await,
        }
        // No process ever ran as it.
        if let Some(uid) = uid {
            give_back(downloads.map(Path::to_path_buf)).await;
            uid.release();
        }
        Err(e)
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
        (mode, frame): (Mode, Frame),
    ) -> Result<Launched, LaunchError> {
        let executable = self
            .engines
            .executable(mode.engine())
            .ok_or_else(|| LaunchError::HeadfulUnavailable(mode.as_str().to_owned()))?
            .to_path_buf();
        self.harden().await;
        let limits = self.limiter.prepare(spec.session_id).await?;
        let preparing = Instant::now();
        let sandbox = self.sandbox.clone();
        let uid = tokio::task::spawn_blocking(move || sandbox.allocate_uid())
            .await
            .map_err(|source| LaunchError::Worker {
                what: "cannot choose the browser's user",
                source,
            })??;
        let downloads = spec.downloads.as_deref().filter(|_| dirs.confined);
        let peer = uid.as_ref().map(UidLease::uid);
        let (forwarder, network) = match self.forwarder(spec, peer).await {
            Ok(started) => started,
            Err(e) => {
                undo_launch(&dirs, uid, downloads).await;
                return Err(e);
            }
        };
        let proxy = forwarder.as_ref().map(|f| f.address.as_str());
        let confinement = dirs
            .create(space, uid, downloads, (&self.sandbox, network))
            .await?;
        debug!(
            session_id = %spec.session_id,
            elapsed_ms = preparing.elapsed().as_secs_f64() * 1e3,
            "browser's user, directories and Landlock ruleset ready"
        );
        let display = match mode {
            Mode::Headful => match self.display(&dirs, spec, &confinement, &limits).await {
                Ok(display) => Some(self.watch_group(display, &confinement)),
                Err(e) => {
                    undo_launch(&dirs, confinement.uid, downloads).await;
                    return Err(e);
                }
            },
            Mode::Headless(_) => None,
        };
        let args = chromium_args(&dirs, spec, (mode, frame), proxy, &self.sandbox);
        let launch = Launch {
            executable: &executable,
            args,
            dirs: &dirs,
            groups: &self.groups,
            sandbox: &self.sandbox,
            limits: Some(limits),
            display,
        };
        let (mut process, mut transport) = match spawn(launch, confinement, downloads) {
            Ok(spawned) => spawned,
            Err((e, uid, display)) => {
                if let Some(display) = display {
                    display.kill().await;
                }
                undo_launch(&dirs, uid, downloads).await;
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
            Err(reason) => Err(failed_start(process, reason).await),
        }
    }

    /// Starts a headful browser's virtual display in `<session>/display`: the session's
    /// size, run as the browser's user in its cgroup, under a Landlock ruleset of its own
    /// when the browser has one.
    async fn display(
        &self,
        dirs: &SessionDirs,
        spec: &LaunchSpec,
        confinement: &Confinement,
        limits: &BrowserLimits,
    ) -> Result<Display, LaunchError> {
        let xvfb = self.engines.xvfb.clone().ok_or_else(|| {
            LaunchError::HeadfulUnavailable(self.engines.headful_missing().unwrap_or_default())
        })?;
        let dir = dirs.display();
        let user = confinement.uid.as_ref().map(|l| (l.uid(), l.uid()));
        let ruleset = match confinement.ruleset {
            None => None,
            Some(_) => {
                let (sandbox, made) = (self.sandbox.clone(), dir.clone());
                tokio::task::spawn_blocking(move || -> Result<_, LaunchError> {
                    display::make_dirs(&made, user)?;
                    Ok(sandbox.ruleset(display::landlock_dirs(&made), &[], None)?)
                })
                .await
                .map_err(|source| LaunchError::Worker {
                    what: "cannot prepare the virtual display",
                    source,
                })??
            }
        };
        let started = Display::start(
            &xvfb,
            DisplaySpec {
                dir: &dir,
                width: spec.dimensions.width,
                height: spec.dimensions.height,
                session_id: spec.session_id,
                user,
                cgroup_procs: limits.procs_fds(),
                no_new_privs: !self.sandbox.is_insecure(),
                landlock: ruleset.as_ref().map(AsRawFd::as_raw_fd),
            },
        )
        .await;
        drop(ruleset);
        let xvfb = started?;
        debug!(
            session_id = %spec.session_id,
            xvfb_pid = xvfb.pid(),
            socket = %xvfb.socket().display(),
            "virtual display ready"
        );
        Ok(xvfb)
    }

    /// Records the display's process group with the reaper, as a browser's, so that the
    /// helpers it starts (`xkbcomp`) are reaped when orphaned, until Xvfb itself is reaped.
    fn watch_group(&self, display: Display, confinement: &Confinement) -> Arc<Display> {
        let display = Arc::new(display);
        let pgid = display.pid();
        self.groups
            .launched(pgid, confinement.uid.as_ref().map(UidLease::uid));
        let (groups, watched) = (self.groups.clone(), display.clone());
        tokio::spawn(async move {
            watched.exited().await;
            groups.leader_exited(pgid);
        });
        display
    }

    /// Starts the browser's egress forwarder, which applies the egress policy and serves
    /// only the browser's own uid (`peer`), and says which TCP ports the browser may then
    /// connect to: its forwarder's, or for an `https://` proxyUrl that the forwarder cannot
    /// speak, that proxy's.
    async fn forwarder(
        &self,
        spec: &LaunchSpec,
        peer: Option<u32>,
    ) -> Result<(Option<egress::Forwarder>, Network), LaunchError> {
        let forwarder = egress::for_browser(&self.egress, spec, peer)
            .await
            .map_err(LaunchError::Forwarder)?;
        let own_port = forwarder
            .as_ref()
            .map(|f| f.port)
            .or_else(|| spec.proxy_server.as_deref().and_then(port_of));
        let network = Network {
            ports: own_port.into_iter().collect(),
            forwarder: own_port,
        };
        Ok((forwarder, network))
    }
}

/// Kills a browser that did not become ready and says why, with its last words.
async fn failed_start(process: LocalProcess, reason: NotReady) -> LaunchError {
    process.kill().await;
    // Its last words may still be in the pipe; they say why it did not start.
    let _ = tokio::time::timeout(STDERR_SETTLE, process.stderr_closed.cancelled()).await;
    LaunchError::NotReady {
        reason,
        last_output: process.stderr_tail(),
    }
}

impl LocalChromium {
    /// Once, before the first launch with per-browser users: closes the data directory to
    /// them beyond what they must traverse (see [`owner::harden`]).
    async fn harden(&self) {
        if !self.sandbox.per_browser_users() || self.hardened.swap(true, Ordering::AcqRel) {
            return;
        }
        let data_dir = self.data_dir.clone();
        let files = data_dir.join(FILES_SUBDIR);
        let traversed = vec![self.sessions_dir.clone(), files.clone()];
        let private = vec![files.join(".partial")];
        let hardened = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&traversed[0])?;
            owner::harden(&data_dir, &traversed, &private)
        })
        .await;
        if let Ok(Err(e)) = hardened {
            warn!(error = %e, "cannot close the data directory to browsers' users");
        }
    }
}

/// Undoes a launch that created its directories but started no browser: removes them,
/// gives the session's files back and frees the user id.
async fn undo_launch(dirs: &SessionDirs, uid: Option<UidLease>, downloads: Option<&Path>) {
    dirs.remove().await;
    if let Some(uid) = uid {
        give_back(downloads.map(Path::to_path_buf)).await;
        uid.release();
    }
}

/// Gives a session's files directory (and everything in it) back to the gateway's user, so
/// that a later browser with the same user id cannot touch it.
async fn give_back(downloads: Option<PathBuf>) {
    let Some(dir) = downloads else { return };
    let shown = dir.display().to_string();
    let result =
        tokio::task::spawn_blocking(move || owner::reclaim_tree(&dir, owner::gateway_owner()))
            .await;
    if let Ok(Err(e)) = result {
        warn!(dir = %shown, error = %e, "cannot give the session's files back to the gateway's user");
    }
}

/// Sends the first CDP commands ([`Startup`]) and waits for their replies, the browser's
/// exit or a timeout. Returns the `result` of `Browser.getVersion`.
async fn wait_until_ready(
    process: &LocalProcess,
    transport: &mut CdpTransport,
    spec: &LaunchSpec,
) -> Result<serde_json::Value, NotReady> {
    let (commands, mut startup) = Startup::begin(spec);
    for command in commands {
        if transport.to_browser.send(command).await.is_err() {
            let exit = tokio::time::timeout(Duration::from_secs(1), process.wait_exit()).await;
            return Err(exit.map_or(NotReady::PipeClosedAtOnce, NotReady::Exited));
        }
    }
    let started = tokio::time::Instant::now();
    let mut slow_logged = false;
    loop {
        tokio::select! {
            msg = transport.from_browser.recv() => match msg {
                Some(msg) => match startup.take(&msg) {
                    Some(ready) => return ready.map_err(NotReady::from),
                    None => continue,
                },
                None => {
                    let exit = tokio::time::timeout(Duration::from_secs(1), process.wait_exit()).await;
                    return Err(exit.map_or(NotReady::PipeClosed, NotReady::Exited));
                }
            },
            _ = tokio::time::sleep_until(started + SLOW_START), if !slow_logged => {
                slow_logged = true;
                warn!(browser = %process.address(), "browser has not answered after {}s; still waiting", SLOW_START.as_secs());
            }
            _ = tokio::time::sleep_until(started + READY_TIMEOUT) => {
                return Err(NotReady::Timeout(READY_TIMEOUT));
            }
        }
    }
}

/// Chromium's arguments for one browser; `forwarder` is the browser's egress forwarder
/// (absent only for an `https://` `proxyUrl`, which the browser reaches itself).
fn chromium_args(
    dirs: &SessionDirs,
    spec: &LaunchSpec,
    (mode, frame): (Mode, Frame),
    forwarder: Option<&str>,
    sandbox: &Sandbox,
) -> Vec<String> {
    let (width, height) = window_size(spec.dimensions, frame);
    let mut args: Vec<String> = BASE_FLAGS
        .iter()
        .chain(mode.flags())
        .filter(|f| !(**f == "--no-sandbox" && sandbox.chromium_sandbox()))
        .map(|f| (*f).to_owned())
        .collect();
    if dirs.confined {
        args.extend(CONFINED_FLAGS.iter().map(|f| (*f).to_owned()));
        args.push(format!("--crash-dumps-dir={}", dirs.crash().display()));
    }
    args.push(format!("--user-data-dir={}", dirs.profile().display()));
    args.push(format!("--window-size={width},{height}"));
    // The screen is the page's size (headless Chromium's own is 800x600), so that the page
    // fills its screen as a full-screen window's does: innerHeight equals screen.height.
    // A headful browser's screen is its display's, which has the page's size already.
    let page = spec.dimensions;
    if mode != Mode::Headful {
        args.push(format!("--screen-info={{{}x{}}}", page.width, page.height));
    }
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

/// A confined browser's whole environment: its directories, a system `PATH`, and the
/// gateway's `LANG` and `TZ` when set. Nothing else of the gateway's reaches it.
fn browser_env(dirs: &SessionDirs) -> Vec<(OsString, OsString)> {
    let home = dirs.home();
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), BROWSER_PATH.into()),
        ("HOME".into(), home.clone().into()),
        ("TMPDIR".into(), dirs.scratch.clone().into()),
        ("XDG_CONFIG_HOME".into(), home.join(".config").into()),
        ("XDG_CACHE_HOME".into(), home.join(".cache").into()),
        ("XDG_DATA_HOME".into(), home.join(".local/share").into()),
        ("XDG_RUNTIME_DIR".into(), dirs.scratch.clone().into()),
    ];
    for name in ["LANG", "TZ"] {
        if let Some(value) = std::env::var_os(name) {
            env.push((name.into(), value));
        }
    }
    env
}

/// What [`spawn`] starts.
struct Launch<'a> {
    executable: &'a Path,
    args: Vec<String>,
    dirs: &'a SessionDirs,
    groups: &'a Groups,
    sandbox: &'a Sandbox,
    /// Its memory and task caps: the browser joins its cgroup before it runs.
    limits: Option<BrowserLimits>,
    /// A headful browser's display, started already.
    display: Option<Arc<Display>>,
}

/// Starts Chromium in its own process group, with the CDP pipes on fds 3 and 4, as its own
/// user and confined when the sandbox says so, and the tasks that watch its exit, drain its
/// stderr and frame its pipes. On failure, gives the user id and the display back for the
/// caller to free.
#[allow(clippy::type_complexity)]
fn spawn(
    mut launch: Launch<'_>,
    confinement: Confinement,
    downloads: Option<&Path>,
) -> Result<(LocalProcess, CdpTransport), (LaunchError, Option<UidLease>, Option<Arc<Display>>)> {
    let Confinement { uid, ruleset } = confinement;
    let display = launch.display.take();
    let pipes = match browser_pipes() {
        Ok(pipes) => pipes,
        Err(e) => return Err((e, uid, display)),
    };
    let ruleset = match ruleset.map(high_fd).transpose() {
        Ok(ruleset) => ruleset,
        Err(e) => return Err((e, uid, display)),
    };
    let dirs = launch.dirs;
    let setup = ChildSetup {
        commands_fd: pipes.child_reads.as_raw_fd(),
        replies_fd: pipes.child_writes.as_raw_fd(),
        gateway_pid: std::process::id() as libc::pid_t,
        cgroup_procs: launch
            .limits
            .as_ref()
            .map(BrowserLimits::procs_fds)
            .unwrap_or_default(),
        user: uid.as_ref().map(|l| (l.uid(), l.uid())),
        no_new_privs: !launch.sandbox.is_insecure(),
        landlock: ruleset.as_ref().map(AsRawFd::as_raw_fd),
    };
    let mut cmd = browser_command(&mut launch, setup, display.as_deref());
    let spawned = cmd.spawn();
    // The child has its copies; ours must close so that EOF reaches each side.
    drop((pipes.child_reads, pipes.child_writes, ruleset));
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            let executable = launch.executable.to_path_buf();
            return Err((LaunchError::Spawn { executable, source }, uid, display));
        }
    };
    let Some(pid) = child.id().map(|pid| pid as i32) else {
        return Err((LaunchError::ExitedDuringSpawn, uid, display));
    };
    // The reaper takes only the adopted helpers of recorded groups (or of this browser's own
    // user), never a group's leader: tokio collects this one's status.
    launch.groups.launched(pid, uid.as_ref().map(UidLease::uid));
    let (stderr_tail, stderr_closed) = drain_stderr_of(&mut child, pid);
    let limits = launch.limits.take();
    let verdict = limits.as_ref().map(|l| l.watch(pid));
    let exit = watch_exit(
        child,
        pid,
        launch.groups.clone(),
        (verdict, display.clone()),
    );
    let (transport, pipes_open) = frame_pipes(pipes.commands, pipes.replies, pid);
    let process = LocalProcess {
        pid,
        dirs: dirs.clone(),
        exit,
        stderr_tail,
        stderr_closed,
        pipes_open,
        reaped: OnceCell::new(),
        proxy: None,
        uid: Mutex::new(uid),
        downloads: Mutex::new(downloads.map(Path::to_path_buf)),
        limits: Mutex::new(limits),
        display,
    };
    Ok((process, transport))
}

/// The command that runs the browser: its own process group, stderr piped, its environment
/// cleared when confined (the gateway's plus `TMPDIR` otherwise), its `display` (a headful
/// one's), and `setup` between fork and exec.
fn browser_command(
    launch: &mut Launch<'_>,
    setup: ChildSetup,
    display: Option<&Display>,
) -> Command {
    let mut cmd = Command::new(launch.executable);
    cmd.args(std::mem::take(&mut launch.args))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if launch.dirs.confined {
        cmd.env_clear().envs(browser_env(launch.dirs));
    } else {
        cmd.env("TMPDIR", &launch.dirs.scratch);
    }
    if let Some(display) = display {
        cmd.envs(display.env());
        // Its mount namespace first, while the child still has the gateway's privileges.
        display.install_client(&mut cmd);
    }
    super::sandbox::install(&mut cmd, setup);
    cmd
}

/// The two CDP pipes: the gateway's ends, and the child's (above fd 10, so that `dup2` onto
/// 3 and 4 in the child cannot clobber them).
struct BrowserPipes {
    commands: pipe::Sender,
    replies: pipe::Receiver,
    child_reads: OwnedFd,
    child_writes: OwnedFd,
}

fn browser_pipes() -> Result<BrowserPipes, LaunchError> {
    let io_err = |what: &'static str, source: std::io::Error| LaunchError::Pipe { what, source };
    // Chromium reads commands from fd 3 and writes replies and events to fd 4.
    let (command_tx, command_rx) = pipe::pipe().map_err(|e| io_err("cannot create pipe", e))?;
    let (reply_tx, reply_rx) = pipe::pipe().map_err(|e| io_err("cannot create pipe", e))?;
    let child_reads = high_fd(
        command_rx
            .into_blocking_fd()
            .map_err(|e| io_err("pipe", e))?,
    )?;
    let child_writes = high_fd(reply_tx.into_blocking_fd().map_err(|e| io_err("pipe", e))?)?;
    Ok(BrowserPipes {
        commands: command_tx,
        replies: reply_rx,
        child_reads,
        child_writes,
    })
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
/// A headful browser's display is watched too: when it ends first, the browser's group is
/// killed and its exit is [`BrowserExit::DisplayLost`].
fn watch_exit(
    mut child: tokio::process::Child,
    pid: i32,
    groups: Groups,
    (memory, display): (Option<MemoryVerdict>, Option<Arc<Display>>),
) -> watch::Receiver<Option<BrowserExit>> {
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(async move {
        let lost = async {
            match &display {
                Some(display) => display.exited().await,
                None => std::future::pending().await,
            }
        };
        let (status, lost) = tokio::select! {
            status = child.wait() => (status, None),
            how = lost => {
                warn!(pid, exit = %how, "a headful browser's virtual display ended; killing the browser");
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                (child.wait().await, Some(how))
            }
        };
        let exit = match (lost, status) {
            (Some(how), _) => BrowserExit::DisplayLost(how.to_string()),
            (None, Ok(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => BrowserExit::Code(code),
                (None, Some(sig)) => BrowserExit::Signal(sig),
                (None, None) => BrowserExit::Unknown(status.to_string()),
            },
            (None, Err(e)) => BrowserExit::Unknown(e.to_string()),
        };
        // At once, so that the group is forgotten as soon as it is empty: from then on its
        // id (the leader's pid) may be given to another process.
        groups.leader_exited(pid);
        let exit = match memory {
            Some(memory) => memory.judge(exit).await,
            None => exit,
        };
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
        .map_err(|e| LaunchError::Pipe {
            what: "cannot duplicate a descriptor",
            source: e.into(),
        })
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
pub(super) struct LocalProcess {
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
    /// The browser's own user id, freed once its processes are gone.
    uid: Mutex<Option<UidLease>>,
    /// The session's files directory, made for a confined browser: given back to the
    /// gateway's user when the browser ends.
    downloads: Mutex<Option<PathBuf>>,
    /// Its cgroup (or watchdog), removed once its processes are gone.
    limits: Mutex<Option<BrowserLimits>>,
    /// A headful browser's virtual display, killed with it.
    display: Option<Arc<Display>>,
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
        // Its display after it (the browser would log the X server's loss), before its cgroup
        // and its user, which the display's process shares.
        if let Some(display) = &self.display {
            display.kill().await;
        }
        let limits = lock(&self.limits).take();
        if let Some(limits) = limits {
            limits.remove().await;
        }
        let uid = lock(&self.uid).take();
        let gone = match &uid {
            Some(lease) if gone => kill_user(lease.uid()).await,
            _ => gone,
        };
        // Taking files back while a process of the browser's user still runs would race
        // with it (a link swapped in under the walk); such a user's id stays out of use and
        // its directories wait for the next start's sweep.
        if uid.is_some() && gone {
            let downloads = lock(&self.downloads).clone();
            give_back(downloads).await;
        }
        if uid.is_none() || gone {
            self.dirs.remove().await;
        } else {
            warn!(
                pid = self.pid,
                "the browser's user still runs processes; its directories are left for the next start's sweep"
            );
        }
        // Only once nothing runs as it can another browser have its id; else it stays out.
        if let (Some(lease), true) = (uid, gone) {
            lease.release();
        }
    }
}

/// Kills whatever still runs as `uid` (a helper that left the browser's process group) and
/// waits up to 2 s for it to go; whether it went. The id is this browser's alone, so nothing
/// else runs as it.
async fn kill_user(uid: u32) -> bool {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = processes_of(uid);
            if left.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                warn!(
                    uid,
                    left = left.len(),
                    "processes of a browser's user outlive it"
                );
                return false;
            }
            for pid in left {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap_or(false)
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

    fn freeze(&self, frozen: bool) {
        // The browser leads its own process group: one signal reaches every helper.
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        match killpg(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                warn!(pid = self.pid, error = %e, ?signal, "cannot signal the browser's process group")
            }
        }
    }

    fn adopt_downloads(&self, to: &Path) -> BoxFuture<'_, Result<(), LaunchError>> {
        let to = to.to_path_buf();
        async move {
            let Some(from) = lock(&self.downloads).clone() else {
                return Ok(());
            };
            if from == to {
                return Ok(());
            }
            let (moved_from, moved_to) = (from.clone(), to.clone());
            let moved = tokio::task::spawn_blocking(move || move_dir(&moved_from, &moved_to))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            match moved {
                Ok(()) => {
                    *lock(&self.downloads) = Some(to);
                    Ok(())
                }
                Err(source) => Err(LaunchError::MoveDownloads { from, to, source }),
            }
        }
        .boxed()
    }
}

/// Renames directory `from` to `to`, replacing `to` if it is an empty directory. The
/// browser's Landlock rule names the directory itself, not its path, so it follows.
fn move_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::rename(from, to)
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
    let result = tokio::task::spawn_blocking(move || match owner::remove_tree(&dir) {
        Err(e) => Err((dir, e)),
        Ok(()) => Ok(()),
    })
    .await;
    if let Ok(Err((dir, e))) = result {
        warn!(dir = %dir.display(), error = %e, "cannot remove session directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarders_port_is_read_from_its_address() {
        assert_eq!(port_of("http://127.0.0.1:45225"), Some(45225));
        assert_eq!(port_of("http://127.0.0.1:45225/"), Some(45225));
        assert_eq!(port_of("http://127.0.0.1"), None);
    }
}
