//! Where a browser runs, behind one small interface: launch, address, wait for exit, kill.
//!
//! Today the only real host is [`LocalChromium`], a Chromium process on this machine
//! talking CDP over `--remote-debugging-pipe` ([`pipe`] frames it). Nothing above this
//! module knows about processes, pipes or profile directories; it sees a [`CdpTransport`]
//! and a [`BrowserProcess`]. This module must not know about sessions' states, HTTP or
//! WebSocket framing.

pub mod cgroup;
mod detect;
mod display;
pub mod egress;
mod engine;
mod error;
mod limits;
mod local;
mod paths;
mod pipe;
pub mod proxy_auth;
mod reaper;
pub mod sandbox;
mod startup;
mod sweep;
mod transport;
mod window;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::vocab::Dimensions;

pub use detect::find_chromium;
pub use engine::{Engine, EngineError, EngineFlags, Engines, UnknownEngine};
pub use error::{
    ChromiumNotFound, DiskError, DisplayError, LaunchError, NotReady, SandboxError, StartupError,
};
pub use local::{BASE_FLAGS, LocalChromium};
pub use paths::scratch_root;
pub use sandbox::{SandboxConfig, SandboxStatus, UidRange};
pub(crate) use startup::Startup;
pub use sweep::SweepReport;
pub use transport::{Closed, FromBrowser, ToBrowser, TrySendError};

/// What a session needs from its browser.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The session (or pooled browser) it is for; its directories are named after it.
    pub session_id: Uuid,
    /// Page size.
    pub dimensions: Dimensions,
    /// `--user-agent`, if the session asked for one.
    pub user_agent: Option<String>,
    /// `--proxy-server`, if the session asked for one.
    pub proxy_server: Option<String>,
    /// The credentials that proxy wants, if any: the browser then talks to a local
    /// forwarding proxy that adds them.
    pub proxy_auth: Option<proxy_auth::ProxyAuth>,
    /// Where the browser saves downloads (`Browser.setDownloadBehavior`), set with its very
    /// first commands, before anyone else talks to it. `None` leaves Chromium's default.
    pub downloads: Option<PathBuf>,
    /// A headful browser (`headless: false`): full Chromium on a virtual display of its own.
    /// Otherwise the host's default engine, headless.
    pub headful: bool,
}

impl LaunchSpec {
    /// A browser for `session_id` with every default: the page size, no user agent, no
    /// proxy, Chromium's own downloads folder.
    pub fn plain(session_id: Uuid) -> LaunchSpec {
        LaunchSpec {
            session_id,
            dimensions: Dimensions::default(),
            user_agent: None,
            proxy_server: None,
            proxy_auth: None,
            downloads: None,
            headful: false,
        }
    }
}

/// One CDP connection to a browser, as whole JSON messages.
pub struct CdpTransport {
    /// Messages to the browser; every sender clones it.
    pub to_browser: ToBrowser,
    /// Messages from the browser, for the one task that routes them.
    pub from_browser: FromBrowser,
}

/// How a browser ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserExit {
    /// Exit status code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Could not be determined.
    Unknown(String),
    /// Ended by its host because its process tree went over the session memory limit
    /// (its cgroup's OOM killer struck, or the PSS watchdog saw it over).
    MemoryLimit,
    /// A headful browser's virtual display (`Xvfb`) ended (how, in the text), so its host
    /// killed the browser.
    DisplayLost(String),
}

impl fmt::Display for BrowserExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrowserExit::Code(c) => write!(f, "exit status {c}"),
            BrowserExit::Signal(s) => write!(f, "killed by signal {s}"),
            BrowserExit::Unknown(e) => write!(f, "unknown exit ({e})"),
            BrowserExit::MemoryLimit => write!(f, "over the session memory limit"),
            BrowserExit::DisplayLost(how) => write!(f, "its virtual display (Xvfb) ended: {how}"),
        }
    }
}

/// A launched browser, ready to be driven over [`Launched::transport`].
pub struct Launched {
    /// Its CDP connection.
    pub transport: CdpTransport,
    /// The process (tree) to wait for and to kill.
    pub process: Arc<dyn BrowserProcess>,
    /// The `result` of `Browser.getVersion`: the first command the browser answered, which
    /// is what made it count as ready.
    pub version: serde_json::Value,
    /// Where it saves downloads: [`LaunchSpec::downloads`], which it accepted.
    pub downloads: Option<PathBuf>,
}

/// Memory used by all the browsers a host runs, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    /// Browser processes counted.
    pub processes: usize,
    /// Resident memory summed over the processes (shared pages count once per process).
    pub resident_bytes: u64,
}

/// Starts browsers.
pub trait BrowserHost: Send + Sync + 'static {
    /// Launches a browser for a session and returns once it answers CDP. Whatever it started
    /// is gone again when this fails.
    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<Launched, LaunchError>>;

    /// Measures the memory of every browser this host runs. A host that cannot tell reports
    /// nothing.
    fn sample_memory(&self) -> BoxFuture<'_, MemorySample> {
        Box::pin(async { MemorySample::default() })
    }

    /// The caps every browser launched from now on runs under (`--session-memory-max`,
    /// `--session-pids-max`), told once by the gateway at build, before the first launch.
    /// A host that cannot cap browsers ignores them.
    fn set_limits(&self, limits: cgroup::Limits) {
        let _ = limits;
    }

    /// What and where this host runs, for the start-up log.
    fn describe(&self) -> String {
        "browser host".into()
    }

    /// The engines this host runs, for the start-up log, `/healthz` and the session limit;
    /// `None` for a host without a choice of engines (its browsers count as the shell's).
    fn engines(&self) -> Option<&Engines> {
        None
    }

    /// Before the first launch: removes what a killed predecessor left (browsers still
    /// running, directories). Called once, with the data directory locked.
    fn sweep(&self) -> BoxFuture<'_, SweepReport> {
        Box::pin(async { SweepReport::default() })
    }

    /// Housekeeping for as long as the gateway runs (for a local host: reaping orphaned
    /// browser helpers). Returns when `stop` is cancelled.
    fn upkeep(&self, stop: CancellationToken) -> BoxFuture<'_, ()> {
        Box::pin(async move { stop.cancelled().await })
    }

    /// How this host isolates its browsers, for the start-up log and `/healthz`; `None`
    /// for a host that has nothing to say.
    fn sandbox(&self) -> Option<SandboxStatus> {
        None
    }

    /// Says at start-up when this host cannot run `browsers` browsers at once (for a local
    /// host: too few user ids).
    fn check_capacity(&self, browsers: usize) {
        let _ = browsers;
    }
}

/// A running browser and everything it owns (process tree, profile directory).
pub trait BrowserProcess: Send + Sync {
    /// Where the browser runs, for logs (for a local process: its pid and profile directory).
    fn address(&self) -> String;
    /// Resolves once the browser has exited, however that happened. May be awaited many times.
    fn wait_exit(&self) -> BoxFuture<'_, BrowserExit>;
    /// Kills the browser and everything it started, and removes what it left on disk.
    /// Idempotent; resolves once all of it is gone.
    fn kill(&self) -> BoxFuture<'_, ()>;
    /// Stops (`true`) or resumes every process of the browser. A stopped browser runs no
    /// script and answers nothing; killing it still works. Used while the gateway's node is
    /// fenced off from its cluster.
    fn freeze(&self, frozen: bool);

    /// Before a session that took this (pooled) browser under an id of its own tells it to
    /// save downloads in `to`: moves the directory it was launched to save them in there,
    /// so that a browser confined to that directory can still write them. Hosts that do
    /// not confine their browsers have nothing to do.
    fn adopt_downloads(&self, to: &Path) -> BoxFuture<'_, Result<(), LaunchError>> {
        let _ = to;
        Box::pin(async { Ok(()) })
    }
}
