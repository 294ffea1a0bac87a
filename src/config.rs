//! Command-line and environment configuration (`INGOT_*`).
//!
//! Owns parsing and validation of settings only; it must not start anything. Every field
//! is public so that tests and embedders can build [`Settings`] without parsing flags.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::browser::egress::BadRule;
use crate::browser::{Engine, EngineFlags, UidRange, UnknownEngine};

/// Why the settings cannot be used. The message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value breaks its rule: `{flag} must {rule}`.
    #[error("{flag} must {rule}")]
    Invalid {
        /// The flag (or flags) at fault.
        flag: &'static str,
        /// What its value must be or do.
        rule: Cow<'static, str>,
    },
    /// `--browser-uids` holds root or the gateway's own uid.
    #[error("--browser-uids {range} must not include uid 0 or the gateway's own uid {gateway}")]
    BrowserUids {
        /// The range.
        range: UidRange,
        /// The gateway's uid.
        gateway: u32,
    },
    /// A bad `--egress-deny` / `--egress-allow` entry.
    #[error(transparent)]
    Egress(#[from] BadRule),
    /// Serving beyond loopback without API keys, unasked.
    #[error(
        "refusing to listen on {0} without API keys: anyone who can reach it could drive browsers here. \
         Configure keys (--api-keys-file or INGOT_API_KEYS), listen on 127.0.0.1, or pass --insecure-no-auth"
    )]
    Exposed(SocketAddr),
}

/// `{flag} must {rule}`.
fn invalid(flag: &'static str, rule: impl Into<Cow<'static, str>>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        rule: rule.into(),
    }
}

/// A `--session-memory-max` or `--session-pids-max` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// Not a number with an optional unit.
    #[error(
        "{0:?} is not a size: use bytes, or a whole number with a unit such as 512MiB or 1GiB, or off"
    )]
    NotASize(String),
    /// The unit is not one of the known ones.
    #[error(
        "unknown unit {unit:?} in {text:?}: use B, KiB, MiB, GiB, TiB (or K, M, G, T), KB, MB, GB or TB"
    )]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole value.
        text: String,
    },
    /// The size overflows 64 bits.
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// Not a whole number.
    #[error("{0:?} is not a whole number or off")]
    NotACount(String),
}

/// Settings for one gateway process. Every flag has an `INGOT_*` environment equivalent;
/// a flag wins over its variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingot",
    version,
    about = "Browser session gateway that speaks Steel's sessions API"
)]
pub struct Settings {
    /// IP address and port to serve HTTP and CDP WebSockets on.
    #[arg(long, env = "INGOT_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Base URL used in returned URLs (`websocketUrl`, `debugUrl`, ...), for example
    /// `https://browsers.example.com`. Defaults to `http://<listen address>`.
    #[arg(long, env = "INGOT_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// The engine of headless sessions: `shell` (Debian's `chromium-headless-shell`, about
    /// half the memory) or `chromium` (full Chromium, `--headless=new`). Defaults to `shell`
    /// when the shell is installed, else `chromium`. Headful sessions (`headless: false`)
    /// always run full Chromium on an `Xvfb` of their own.
    #[arg(long, env = "INGOT_ENGINE", value_parser = parse_engine)]
    pub engine: Option<Engine>,

    /// Full Chromium's executable. Auto-detected when unset.
    #[arg(long, env = "INGOT_CHROMIUM")]
    pub chromium: Option<PathBuf>,

    /// The headless shell's executable (`chromium-headless-shell`). Auto-detected when unset.
    #[arg(long, env = "INGOT_CHROMIUM_SHELL")]
    pub chromium_shell: Option<PathBuf>,

    /// `Xvfb`, the virtual display of headful sessions. Auto-detected when unset.
    #[arg(long, env = "INGOT_XVFB")]
    pub xvfb: Option<PathBuf>,

    /// Directory for session profiles and gateway state.
    #[arg(long, env = "INGOT_DATA_DIR", default_value = "/var/lib/ingot")]
    pub data_dir: PathBuf,

    /// Session lifetime when a create request names none, in milliseconds.
    #[arg(long, env = "INGOT_DEFAULT_TIMEOUT_MS", default_value_t = 300_000)]
    pub default_timeout_ms: u64,

    /// Longest session lifetime a create request may ask for, in milliseconds.
    #[arg(long, env = "INGOT_MAX_TIMEOUT_MS", default_value_t = 86_400_000)]
    pub max_timeout_ms: u64,

    /// Most sessions live at once, pooled browsers included. Defaults to what the memory
    /// available at start-up holds, keeping 1 GiB spare, at the default engine's budget per
    /// session: 144 MiB for the shell, 256 MiB for full Chromium.
    #[arg(long, env = "INGOT_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,

    /// Pre-launched browsers kept ready, so that creating a session skips Chromium's start.
    /// 0 turns the warm pool off.
    #[arg(long, env = "INGOT_POOL_SIZE", default_value_t = 2)]
    pub pool_size: usize,

    /// How long the warm pool leaves the machine to a session it just handed out before it
    /// launches a replacement, and how long a new pooled browser settles after it starts
    /// answering before it is handed out, in milliseconds. A starting Chromium takes both
    /// cores of a small machine for a while; this keeps that work away from sessions in
    /// their first moments.
    #[arg(long, env = "INGOT_POOL_SETTLE_MS", default_value_t = 250)]
    pub pool_settle_ms: u64,

    /// How long a create waits for a free slot when all are in use, in milliseconds, before
    /// it is refused with 429. 0 refuses at once.
    #[arg(long, env = "INGOT_QUEUE_TIMEOUT_MS", default_value_t = 10_000)]
    pub queue_timeout_ms: u64,

    /// Longest a create may take, its wait for a slot included, in milliseconds. Past it
    /// the create is answered 503 `create_timeout`, and whatever it started is released.
    #[arg(long, env = "INGOT_CREATE_TIMEOUT_MS", default_value_t = 20_000)]
    pub create_timeout_ms: u64,

    /// Most creates waiting for a slot at once; more are refused with 429 at once.
    #[arg(long, env = "INGOT_QUEUE_LIMIT", default_value_t = 64)]
    pub queue_limit: usize,

    /// File of API keys, one a line: `key` or `name:key` (the name shows in usage records
    /// and logs; keys never do). Lines starting with `#` are comments.
    #[arg(long, env = "INGOT_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// API keys, comma-separated, each `key` or `name:key`. Prefer the variable to the flag:
    /// flags show in `ps`.
    #[arg(long, env = "INGOT_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// A key that may read every tenant's usage (`GET /v1/usage`); it is also a tenant named
    /// `admin`.
    #[arg(long, env = "INGOT_ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<String>,

    /// Most sessions one tenant (API key) may have at once; more get 429. Unlimited when
    /// unset.
    #[arg(long, env = "INGOT_MAX_SESSIONS_PER_TENANT")]
    pub max_sessions_per_tenant: Option<usize>,

    /// Serve without API keys on an address other than loopback. Anyone who reaches the port
    /// can then drive browsers on this machine.
    #[arg(long, env = "INGOT_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Largest CDP message (WebSocket message) a client may send, in bytes; a client that
    /// sends a larger one is closed with 1009, and its session goes on.
    #[arg(long, env = "INGOT_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE)]
    pub max_message_bytes: usize,

    /// How often each live browser is asked `Browser.getVersion` to check it still works,
    /// in milliseconds.
    #[arg(long, env = "INGOT_BROWSER_PROBE_INTERVAL_MS", default_value_t = 5_000)]
    pub browser_probe_interval_ms: u64,

    /// How long a browser may take to answer the probe before its session ends as
    /// `failed`/`browser_unresponsive`, in milliseconds.
    #[arg(long, env = "INGOT_BROWSER_PROBE_TIMEOUT_MS", default_value_t = 10_000)]
    pub browser_probe_timeout_ms: u64,

    /// How long a client may take to send a request's head before its connection is closed,
    /// and again its body before the request gets 408, in milliseconds.
    #[arg(long, env = "INGOT_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// On SIGTERM, how long live sessions may go on (while new ones are refused and
    /// `/readyz` answers 503) before they are ended, in milliseconds. 0 ends them at once;
    /// a second SIGTERM or SIGINT always does.
    #[arg(long, env = "INGOT_SHUTDOWN_DRAIN_MS", default_value_t = 0)]
    pub shutdown_drain_ms: u64,

    /// PostgreSQL database that keeps the usage ledger and the sessions' history, shared by
    /// every node that names it (`postgres://user:password@host:port/database`). Without
    /// it, both live in `<data-dir>/usage.sqlite3`.
    #[arg(long, env = "INGOT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// This node's name in the shared database; must be unique among the nodes that use
    /// it. Defaults to the host name.
    #[arg(long, env = "INGOT_NODE_ID")]
    pub node_id: Option<String>,

    /// How peers reach this node (`http://10.0.0.7:3000`; in Kubernetes, the pod IP).
    /// Recorded in the shared database with `--database-url`.
    #[arg(long, env = "INGOT_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// With `--database-url`: how long this node's lease lasts without renewal, in
    /// milliseconds. It is renewed every sixth of it. A node that has not renewed it for
    /// three quarters of it fences itself (its browsers are frozen and it takes nothing
    /// new) until it renews; a node whose lease has been over for a quarter more is dead:
    /// another node marks its live sessions `failed` (`node_lost`).
    #[arg(long, env = "INGOT_NODE_LEASE_MS", default_value_t = 15_000)]
    pub node_lease_ms: u64,

    /// How long a client's CDP WebSocket may stay idle before the gateway sends it a ping,
    /// in milliseconds. Load balancers drop WebSockets idle for about a minute.
    #[arg(long, env = "INGOT_WS_PING_INTERVAL_MS", default_value_t = 30_000)]
    pub ws_ping_interval_ms: u64,

    /// How long ended sessions stay listed and retrievable (`GET /v1/sessions`), in days,
    /// across restarts. Each tenant's newest `--history-sessions` stay listed however old.
    /// Usage records are kept for billing either way.
    #[arg(long, env = "INGOT_HISTORY_DAYS", default_value_t = 30)]
    pub history_days: u64,

    /// Each tenant's newest sessions that stay listed however old they are.
    #[arg(long, env = "INGOT_HISTORY_SESSIONS", default_value_t = 10_000)]
    pub history_sessions: u64,

    /// How long a session's files (uploads and the page's downloads) are kept after the
    /// session ends, in milliseconds; then they are deleted.
    #[arg(long, env = "INGOT_FILES_RETENTION_MS", default_value_t = 3_600_000)]
    pub files_retention_ms: u64,

    /// Largest file a client may upload to a session, in bytes (a larger one gets 413).
    #[arg(long, env = "INGOT_MAX_FILE_BYTES", default_value_t = DEFAULT_MAX_FILE)]
    pub max_file_bytes: u64,

    /// Who may embed the live viewer in an iframe: a CSP `frame-ancestors` source list, for
    /// example `'self' https://app.example.com`.
    #[arg(long, env = "INGOT_VIEWER_FRAME_ANCESTORS", default_value = "'self'")]
    pub viewer_frame_ancestors: String,

    /// Most memory one session's browser (its whole process tree) may use: bytes, or a
    /// number with a unit (`512MiB`, `1GiB`; `K`, `M`, `G`, `T` are binary too, `KB`, `MB`,
    /// `GB`, `TB` decimal). A session over it ends as `failed` (reason `memory_limit`).
    /// Enforced by a cgroup per browser, or by a PSS watchdog where cgroups are unavailable.
    /// Defaults to the larger of 1 GiB and (the machine's memory less 1 GiB) divided by
    /// `--max-sessions`. `0` or `off` turns the cap off.
    #[arg(long, env = "INGOT_SESSION_MEMORY_MAX", value_parser = parse_memory_cap)]
    pub session_memory_max: Option<Cap>,

    /// Most tasks (processes and threads: Chromium runs many) one session's browser may
    /// have at once, with a cgroup's `pids.max`; stops fork bombs. `0` or `off` turns the
    /// cap off. Not enforced where cgroups are unavailable.
    #[arg(long, env = "INGOT_SESSION_PIDS_MAX", default_value = "2048", value_parser = parse_count_cap)]
    pub session_pids_max: Cap,

    /// Destinations no session's browser may reach, on top of the defaults (link-local
    /// addresses, the cloud metadata addresses, 0.0.0.0 and ::, this gateway's own ports
    /// and its forwarders' ports): comma-separated
    /// `CIDR`, `CIDR:PORT`, `CIDR:LO-HI` or `[IPv6-CIDR]:PORT`, checked on the address
    /// actually connected to. For a multi-tenant install, deny the private ranges
    /// (`10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,127.0.0.0/8,fc00::/7,::1/128`).
    #[arg(long, env = "INGOT_EGRESS_DENY", default_value = "")]
    pub egress_deny: String,

    /// Destinations reopened in spite of `--egress-deny` and the link-local default (allow
    /// beats deny for the same address), same syntax. This gateway's own ports stay denied.
    #[arg(long, env = "INGOT_EGRESS_ALLOW", default_value = "")]
    pub egress_allow: String,

    /// Most CDP WebSockets one session may have open at once on this node; one more is
    /// refused before the upgrade with 429 `too_many_clients`.
    #[arg(long, env = "INGOT_MAX_CLIENTS_PER_SESSION", default_value_t = 32)]
    pub max_clients_per_session: usize,

    /// Gateway memory one session's CDP clients may hold, in bytes, for messages received
    /// and not yet written into the browser's pipe (a message larger than this takes all of
    /// it). A client waits, and stops being read, while the budget is used up.
    #[arg(long, env = "INGOT_SESSION_INFLIGHT_BYTES", default_value_t = DEFAULT_SESSION_INFLIGHT)]
    pub session_inflight_bytes: usize,

    /// Most pages (tabs) one session may have open: `Target.createTarget` beyond it gets a CDP
    /// error, and a page the page itself opens beyond it (`window.open`) is closed.
    #[arg(long, env = "INGOT_MAX_PAGES_PER_SESSION", default_value_t = 50)]
    pub max_pages_per_session: usize,

    /// Most bytes one session's files may take (uploads and the page's downloads together,
    /// as they are on disk); an upload that would take more gets 413.
    #[arg(long, env = "INGOT_MAX_SESSION_FILES_BYTES", default_value_t = crate::files::DEFAULT_SESSION_BYTES)]
    pub max_session_files_bytes: u64,

    /// Most entries one session's files may hold, files and directories together (uploads
    /// and the page's downloads); an upload that would add more gets 413.
    #[arg(long, env = "INGOT_MAX_SESSION_FILES", default_value_t = crate::files::DEFAULT_SESSION_ENTRIES)]
    pub max_session_files: u64,

    /// Most open connections to the gateway (HTTP and WebSockets together). Past this less
    /// a reserve (1/16 of it, 8 to 32), new connections get 503 `too_many_connections`
    /// except on `/healthz`, `/readyz` and `/metrics`; at it, they are closed at once.
    /// Defaults to (the soft open-files limit - 256) / 2, at least 64.
    #[arg(long, env = "INGOT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// User ids the browsers run as, `FIRST-LAST`: each browser gets one of its own (and the
    /// group id of the same number), so that sessions cannot read each other's files. Needs
    /// a gateway running as root (or with CAP_SETUID, CAP_SETGID, CAP_CHOWN,
    /// CAP_DAC_OVERRIDE, CAP_FOWNER and CAP_KILL); must hold at least --max-sessions plus
    /// --pool-size ids, must not include 0 or the gateway's own uid, and must be mapped in
    /// the gateway's user namespace. Give each gateway on a machine a range of its own.
    #[arg(long, env = "INGOT_BROWSER_UIDS", default_value = "600000-600999")]
    pub browser_uids: UidRange,

    /// Run every browser as the gateway's own user, with `--no-sandbox`, no Landlock and the
    /// gateway's environment, as before the sandbox. Tenants are then NOT isolated: any
    /// session can read every file the gateway can. Only for a single tenant you trust.
    #[arg(long, env = "INGOT_INSECURE_SHARED_BROWSER_USER")]
    pub insecure_shared_browser_user: bool,
}

/// A cap that may be turned off (`0` or `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// No cap.
    Off,
    /// At most this much.
    At(u64),
}

impl Cap {
    /// The cap's value, `None` when off.
    pub fn value(self) -> Option<u64> {
        match self {
            Cap::Off => None,
            Cap::At(v) => Some(v),
        }
    }
}

/// `--engine`'s parser.
fn parse_engine(text: &str) -> Result<Engine, UnknownEngine> {
    text.parse()
}

/// Parses a size (`1073741824`, `512MiB`, `1GiB`, `2G`, `1500MB`), or `0`/`off`.
pub fn parse_memory_cap(text: &str) -> Result<Cap, CapError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(Cap::Off);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| CapError::NotASize(text.to_owned()))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(CapError::UnknownUnit {
                unit: other.to_owned(),
                text: text.to_owned(),
            });
        }
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| CapError::TooLarge(text.to_owned()))?;
    Ok(if bytes == 0 { Cap::Off } else { Cap::At(bytes) })
}

/// Parses a count, or `0`/`off`.
pub fn parse_count_cap(text: &str) -> Result<Cap, CapError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(Cap::Off);
    }
    match text.parse::<u64>() {
        Ok(0) => Ok(Cap::Off),
        Ok(n) => Ok(Cap::At(n)),
        Err(_) => Err(CapError::NotACount(text.to_owned())),
    }
}

/// Largest upload to a session's files, unless configured otherwise.
pub const DEFAULT_MAX_FILE: u64 = 100 << 20;

/// Largest CDP message a client may send, unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE: usize = 32 << 20;
/// Gateway memory for one session's in-flight client messages, unless configured otherwise.
pub const DEFAULT_SESSION_INFLIGHT: usize = 64 << 20;
/// This machine's name (`ingot` if it has none that is UTF-8).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "ingot".into())
}

/// Shortest session lifetime accepted, in milliseconds.
pub const MIN_TIMEOUT_MS: u64 = 1_000;
/// Memory left to the gateway and the system when the session limit is derived.
pub const MEMORY_RESERVE: u64 = 1 << 30;

/// Smallest memory cap per session accepted, and the floor of the derived one's share.
pub const MIN_SESSION_MEMORY: u64 = 64 << 20;
/// The derived memory cap per session is never below this.
pub const DERIVED_SESSION_MEMORY_FLOOR: u64 = 1 << 30;

/// The memory cap per session when `--session-memory-max` is unset: an even share of the
/// machine's `total` memory, less [`MEMORY_RESERVE`], among `max_sessions`, and at least
/// [`DERIVED_SESSION_MEMORY_FLOOR`].
pub fn derived_session_memory(total: u64, max_sessions: usize) -> u64 {
    let sessions = u64::try_from(max_sessions.max(1)).unwrap_or(u64::MAX);
    (total.saturating_sub(MEMORY_RESERVE) / sessions).max(DERIVED_SESSION_MEMORY_FLOOR)
}

/// This machine's memory: `MemTotal`, lowered to the cgroup's `memory.max` when one is set
/// (containers, systemd `MemoryMax=`).
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    Some((total_kib * 1024).min(limit))
}

/// The session limit that `available` bytes of memory hold at `per_session` bytes each (the
/// engine's [`Engine::memory_per_session`]): at least 1.
pub fn sessions_for_memory(available: u64, per_session: u64) -> usize {
    let sessions = available.saturating_sub(MEMORY_RESERVE) / per_session.max(1);
    usize::try_from(sessions).unwrap_or(usize::MAX).max(1)
}

/// Memory available to this process now: `MemAvailable`, lowered to the room left under
/// the cgroup's `memory.max` when one is set (containers, systemd `MemoryMax=`).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut available = available_kib * 1024;
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(limit) = read("memory.max") {
        let used = read("memory.current").unwrap_or(0);
        available = available.min(limit.saturating_sub(used));
    }
    Some(available)
}

impl Settings {
    /// Checks relations between settings that clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sessions()?;
        self.validate_limits()?;
        self.validate_cluster()?;
        self.validate_clients()?;
        self.validate_cdp_caps()?;
        self.validate_sandbox()?;
        self.egress_policy()?;
        Ok(())
    }

    /// The egress policy of `--egress-deny` and `--egress-allow`, for a gateway on
    /// `--listen`; the error names the flag and the bad entry.
    pub fn egress_policy(&self) -> Result<crate::browser::egress::Policy, BadRule> {
        crate::browser::egress::Policy::new(
            &self.egress_deny,
            &self.egress_allow,
            Some(self.listen.ip()),
        )
    }

    /// What one session's CDP traffic may take: clients, in-flight bytes, pages.
    fn validate_cdp_caps(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.max_clients_per_session) {
            return Err(invalid(
                "--max-clients-per-session",
                "be between 1 and 10000",
            ));
        }
        if !((1 << 20)..=(4 << 30)).contains(&self.session_inflight_bytes) {
            return Err(invalid(
                "--session-inflight-bytes",
                "be between 1048576 (1 MiB) and 4294967296 (4 GiB)",
            ));
        }
        if !(1..=10_000).contains(&self.max_pages_per_session) {
            return Err(invalid("--max-pages-per-session", "be between 1 and 10000"));
        }
        Ok(())
    }

    /// The browsers' user ids.
    fn validate_sandbox(&self) -> Result<(), ConfigError> {
        if self.insecure_shared_browser_user {
            return Ok(());
        }
        let range = self.browser_uids;
        let me = nix::unistd::geteuid().as_raw();
        if range.contains(0) || range.contains(me) {
            return Err(ConfigError::BrowserUids { range, gateway: me });
        }
        Ok(())
    }

    /// Session counts, timeouts and the browsers' liveness probe.
    fn validate_sessions(&self) -> Result<(), ConfigError> {
        if self.max_sessions == Some(0) {
            return Err(invalid("--max-sessions", "be at least 1"));
        }
        if self.queue_timeout_ms > 600_000 {
            return Err(invalid(
                "--queue-timeout-ms",
                "be at most 600000 (10 minutes)",
            ));
        }
        if !(1_000..=600_000).contains(&self.create_timeout_ms)
            || self.create_timeout_ms <= self.queue_timeout_ms
        {
            return Err(invalid(
                "--create-timeout-ms",
                format!(
                    "be between 1000 and 600000 and longer than --queue-timeout-ms ({}), so that a create that got a slot has time to start its browser",
                    self.queue_timeout_ms
                ),
            ));
        }
        if self.max_timeout_ms < MIN_TIMEOUT_MS || self.max_timeout_ms > 86_400_000 {
            return Err(invalid(
                "--max-timeout-ms",
                format!("be between {MIN_TIMEOUT_MS} and 86400000"),
            ));
        }
        if self.default_timeout_ms < MIN_TIMEOUT_MS || self.default_timeout_ms > self.max_timeout_ms
        {
            return Err(invalid(
                "--default-timeout-ms",
                format!(
                    "be between {MIN_TIMEOUT_MS} and --max-timeout-ms ({})",
                    self.max_timeout_ms
                ),
            ));
        }
        if self.browser_probe_interval_ms < 100 || self.browser_probe_timeout_ms < 100 {
            return Err(invalid(
                "--browser-probe-interval-ms and --browser-probe-timeout-ms",
                "be at least 100",
            ));
        }
        Ok(())
    }

    /// Message and request limits, tenants' quota, the drain.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        if !(1024..=(1 << 30)).contains(&self.max_message_bytes) {
            return Err(invalid(
                "--max-message-bytes",
                "be between 1024 and 1073741824",
            ));
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            return Err(invalid("--header-timeout-ms", "be between 100 and 600000"));
        }
        if self.max_sessions_per_tenant == Some(0) {
            return Err(invalid("--max-sessions-per-tenant", "be at least 1"));
        }
        if self.shutdown_drain_ms > 86_400_000 {
            return Err(invalid(
                "--shutdown-drain-ms",
                "be at most 86400000 (24 hours)",
            ));
        }
        if self.files_retention_ms > 30 * 86_400_000 {
            return Err(invalid(
                "--files-retention-ms",
                "be at most 2592000000 (30 days)",
            ));
        }
        if self.viewer_frame_ancestors.trim().is_empty()
            || self
                .viewer_frame_ancestors
                .chars()
                .any(|c| c.is_control() || c == ';' || c == ',')
        {
            return Err(invalid(
                "--viewer-frame-ancestors",
                "be a CSP source list, such as 'self' https://app.example.com (no ; or ,)",
            ));
        }
        if !(1..=(1 << 40)).contains(&self.max_file_bytes) {
            return Err(invalid(
                "--max-file-bytes",
                "be between 1 and 1099511627776 (1 TiB)",
            ));
        }
        self.validate_session_caps()?;
        self.validate_tenancy_caps()
    }

    /// The memory and task caps of each session's browser.
    fn validate_session_caps(&self) -> Result<(), ConfigError> {
        if let Some(Cap::At(bytes)) = self.session_memory_max
            && !(MIN_SESSION_MEMORY..=(1 << 50)).contains(&bytes)
        {
            return Err(invalid(
                "--session-memory-max",
                format!(
                    "be between 64MiB and 1024TiB, or off (got {bytes} bytes; Chromium does not start in less)"
                ),
            ));
        }
        if let Cap::At(n) = self.session_pids_max
            && !(64..=4_194_304).contains(&n)
        {
            return Err(invalid(
                "--session-pids-max",
                "be between 64 and 4194304, or off (Chromium runs a few hundred threads)",
            ));
        }
        Ok(())
    }

    /// Caps on one session's files and on the gateway's open connections.
    fn validate_tenancy_caps(&self) -> Result<(), ConfigError> {
        if !(1..=(1 << 44)).contains(&self.max_session_files_bytes) {
            return Err(invalid(
                "--max-session-files-bytes",
                "be between 1 and 17592186044416 (16 TiB)",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_session_files) {
            return Err(invalid("--max-session-files", "be between 1 and 10000000"));
        }
        if let Some(max) = self.max_connections
            && !(16..=10_000_000).contains(&max)
        {
            return Err(invalid("--max-connections", "be between 16 and 10000000"));
        }
        Ok(())
    }

    /// What the engine flags ask for (`--engine`, `--chromium`, `--chromium-shell`, `--xvfb`).
    pub fn engine_flags(&self) -> EngineFlags {
        EngineFlags {
            engine: self.engine,
            chromium: self.chromium.clone(),
            shell: self.chromium_shell.clone(),
            xvfb: self.xvfb.clone(),
        }
    }

    /// The memory cap of each session's browser in bytes (`None`: off):
    /// `--session-memory-max`, or [`derived_session_memory`] of the machine's `total`
    /// memory (1 GiB when unknown) and the session limit.
    pub fn session_memory_limit(&self, total: Option<u64>, max_sessions: usize) -> Option<u64> {
        match self.session_memory_max {
            Some(cap) => cap.value(),
            None => Some(derived_session_memory(total.unwrap_or(0), max_sessions)),
        }
    }

    /// The shared database, this node's id and address, its lease.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "--database-url",
                "start with postgres:// or postgresql://",
            ));
        }
        if let Some(node) = &self.node_id
            && (node.is_empty() || node.len() > 253 || node.chars().any(char::is_control))
        {
            return Err(invalid(
                "--node-id",
                "be 1 to 253 characters, without control characters",
            ));
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid("--advertise-url", "start with http:// or https://"));
        }
        if self.database_url.is_some()
            && self
                .advertise_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        {
            return Err(invalid(
                "--advertise-url",
                "be http://: nodes talk to each other in plain HTTP, so keep that traffic on a private network",
            ));
        }
        if !(1_000..=600_000).contains(&self.node_lease_ms) {
            return Err(invalid("--node-lease-ms", "be between 1000 and 600000"));
        }
        Ok(())
    }

    /// WebSocket pings, history retention, the public URL.
    fn validate_clients(&self) -> Result<(), ConfigError> {
        if !(1_000..=600_000).contains(&self.ws_ping_interval_ms) {
            return Err(invalid(
                "--ws-ping-interval-ms",
                "be between 1000 and 600000",
            ));
        }
        if !(1..=36_500).contains(&self.history_days) {
            return Err(invalid("--history-days", "be between 1 and 36500"));
        }
        if self.history_sessions == 0 {
            return Err(invalid("--history-sessions", "be at least 1"));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid("--public-url", "start with http:// or https://"));
        }
        Ok(())
    }

    /// Refuses to serve without keys beyond loopback unless the operator insists.
    pub fn check_exposure(&self, keys_configured: bool) -> Result<(), ConfigError> {
        self.check_exposure_of(self.listen, keys_configured)
    }

    /// [`Settings::check_exposure`] for the address actually listened on.
    pub fn check_exposure_of(
        &self,
        listen: SocketAddr,
        keys_configured: bool,
    ) -> Result<(), ConfigError> {
        if !keys_configured && !listen.ip().is_loopback() && !self.insecure_no_auth {
            return Err(ConfigError::Exposed(listen));
        }
        Ok(())
    }

    /// This node's name: `--node-id`, else the host name.
    pub fn node(&self) -> String {
        self.node_id.clone().unwrap_or_else(host_name)
    }

    /// `--database-url` with its password hidden, for messages and logs.
    pub fn database_shown(&self) -> Option<String> {
        let url = self.database_url.as_deref()?;
        Some(match url::Url::parse(url) {
            Ok(mut parsed) if parsed.password().is_some() => {
                let _ = parsed.set_password(Some("***"));
                parsed.to_string()
            }
            Ok(parsed) => parsed.to_string(),
            Err(_) => "(not a URL)".into(),
        })
    }

    /// Settings for a gateway on `data_dir` with every other value at its default, as if
    /// no flag were given and no `INGOT_*` variable were set.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Settings {
        let command = Settings::command().mut_args(|arg| arg.env(None));
        let defaults = command.get_matches_from(["ingot"]);
        let mut settings = match Settings::from_arg_matches(&defaults) {
            Ok(settings) => settings,
            // Every flag has a default or is optional, so this cannot fail.
            Err(e) => e.exit(),
        };
        settings.data_dir = data_dir.into();
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(flags: &[&str]) -> Result<Settings, String> {
        let settings =
            Settings::try_parse_from(std::iter::once("ingot").chain(flags.iter().copied()))
                .map_err(|e| e.to_string())?;
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }

    #[test]
    fn defaults_are_valid() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(s.listen.to_string(), "127.0.0.1:3000");
        assert_eq!((s.pool_size, s.queue_limit), (2, 64));
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        for (flags, flag) in [
            (&["--max-sessions", "0"][..], "--max-sessions"),
            (&["--queue-timeout-ms", "600001"], "--queue-timeout-ms"),
            (&["--max-timeout-ms", "999"], "--max-timeout-ms"),
            (&["--max-timeout-ms", "86400001"], "--max-timeout-ms"),
            (&["--default-timeout-ms", "999"], "--default-timeout-ms"),
            (
                &["--max-timeout-ms", "5000", "--default-timeout-ms", "6000"],
                "--default-timeout-ms",
            ),
            (
                &["--browser-probe-interval-ms", "99"],
                "--browser-probe-interval-ms",
            ),
            (&["--max-message-bytes", "1023"], "--max-message-bytes"),
            (&["--header-timeout-ms", "99"], "--header-timeout-ms"),
            (
                &["--max-sessions-per-tenant", "0"],
                "--max-sessions-per-tenant",
            ),
            (&["--shutdown-drain-ms", "86400001"], "--shutdown-drain-ms"),
            (&["--history-days", "0"], "--history-days"),
            (&["--ws-ping-interval-ms", "999"], "--ws-ping-interval-ms"),
            (&["--database-url", "mysql://x"], "--database-url"),
            (&["--node-id", ""], "--node-id"),
            (&["--advertise-url", "10.0.0.7:3000"], "--advertise-url"),
            (&["--node-lease-ms", "999"], "--node-lease-ms"),
            (&["--history-sessions", "0"], "--history-sessions"),
            (&["--public-url", "ftp://x"], "--public-url"),
            (&["--max-sessions", "many"], "--max-sessions"),
            (&["--listen", "nowhere"], "--listen"),
            (&["--egress-deny", "10.0.0.0/33"], "--egress-deny"),
            (&["--egress-allow", "127.0.0.1:http"], "--egress-allow"),
            (
                &["--max-clients-per-session", "0"],
                "--max-clients-per-session",
            ),
            (
                &["--session-inflight-bytes", "1000"],
                "--session-inflight-bytes",
            ),
            (&["--max-pages-per-session", "0"], "--max-pages-per-session"),
            (
                &["--max-session-files-bytes", "0"],
                "--max-session-files-bytes",
            ),
            (&["--max-session-files", "0"], "--max-session-files"),
            (&["--max-connections", "15"], "--max-connections"),
            (&["--browser-uids", "0-10"], "--browser-uids"),
            (&["--browser-uids", "10-5"], "--browser-uids"),
            (&["--browser-uids", "600000"], "--browser-uids"),
        ] {
            let err = settings(flags)
                .err()
                .unwrap_or_else(|| panic!("{flags:?} accepted"));
            assert!(err.contains(flag), "{flags:?}: {err}");
        }
    }

    #[test]
    fn refuses_to_serve_beyond_loopback_without_keys() {
        let open = settings(&["--listen", "0.0.0.0:3000"]).expect("valid");
        let err = open.check_exposure(false).expect_err("refused");
        assert!(matches!(err, ConfigError::Exposed(_)), "{err}");
        assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
        assert!(open.check_exposure(true).is_ok(), "keys make it safe");
        let insecure =
            settings(&["--listen", "0.0.0.0:3000", "--insecure-no-auth"]).expect("valid");
        assert!(insecure.check_exposure(false).is_ok());
        let local = settings(&[]).expect("valid");
        assert!(
            local.check_exposure(false).is_ok(),
            "loopback needs no keys"
        );
    }

    #[test]
    fn session_caps_parse_sizes_and_off() {
        let memory = |flags: &[&str]| settings(flags).map(|s| s.session_memory_max);
        assert_eq!(memory(&[]), Ok(None), "derived unless set");
        for (text, bytes) in [
            ("1GiB", 1 << 30),
            ("512MiB", 512 << 20),
            ("512 mib", 512 << 20),
            ("2G", 2 << 30),
            ("1500MB", 1_500_000_000),
            ("67108864", 64 << 20),
        ] {
            assert_eq!(
                memory(&["--session-memory-max", text]),
                Ok(Some(Cap::At(bytes))),
                "{text}"
            );
        }
        for off in ["0", "off", "OFF"] {
            assert_eq!(memory(&["--session-memory-max", off]), Ok(Some(Cap::Off)));
        }
        let pids = |flags: &[&str]| settings(flags).map(|s| s.session_pids_max);
        assert_eq!(pids(&[]), Ok(Cap::At(2048)));
        assert_eq!(pids(&["--session-pids-max", "off"]), Ok(Cap::Off));
        assert_eq!(pids(&["--session-pids-max", "0"]), Ok(Cap::Off));
        for (flags, flag) in [
            (
                &["--session-memory-max", "1.5GiB"][..],
                "--session-memory-max",
            ),
            (
                &["--session-memory-max", "12 parsecs"],
                "--session-memory-max",
            ),
            (&["--session-memory-max", "63MiB"], "--session-memory-max"),
            (
                &["--session-memory-max", "99999999999TiB"],
                "--session-memory-max",
            ),
            (&["--session-pids-max", "63"], "--session-pids-max"),
            (&["--session-pids-max", "lots"], "--session-pids-max"),
        ] {
            let err = settings(flags)
                .err()
                .unwrap_or_else(|| panic!("{flags:?} accepted"));
            assert!(err.contains(flag), "{flags:?}: {err}");
        }
    }

    #[test]
    fn derives_the_session_memory_cap_from_the_machine_and_the_session_limit() {
        assert_eq!(
            derived_session_memory(24 << 30, 4),
            23 << 28,
            "(24-1)/4 GiB"
        );
        assert_eq!(
            derived_session_memory(24 << 30, 92),
            1 << 30,
            "never below 1 GiB"
        );
        assert_eq!(derived_session_memory(0, 0), 1 << 30);
        let derived = settings(&[]).expect("valid");
        assert_eq!(
            derived.session_memory_limit(Some(9 << 30), 2),
            Some(4 << 30)
        );
        assert_eq!(derived.session_memory_limit(None, 2), Some(1 << 30));
        let set = settings(&["--session-memory-max", "768MiB"]).expect("valid");
        assert_eq!(set.session_memory_limit(Some(9 << 30), 2), Some(768 << 20));
        let off = settings(&["--session-memory-max", "off"]).expect("valid");
        assert_eq!(off.session_memory_limit(Some(9 << 30), 2), None);
    }

    #[test]
    fn derives_the_session_limit_from_memory() {
        let full = Engine::Chromium.memory_per_session();
        assert_eq!(sessions_for_memory(0, full), 1, "never below one");
        assert_eq!(sessions_for_memory(2 << 30, full), 4);
        assert_eq!(sessions_for_memory(24 << 30, full), 92);
        // The shell's sessions are budgeted less, so more of them fit.
        let shell = Engine::Shell.memory_per_session();
        assert_eq!(sessions_for_memory(24 << 30, shell), 163);
    }
}
