//! The gateway as a value: [`Gateway::build`] prepares everything that does not need a
//! socket, [`Gateway::serve`] serves on a listener until told to stop.
//!
//! Owns the order of start-up (validate settings, load keys, claim the data directory, let
//! the browser host clean up after a killed predecessor, metrics, usage database, a probe
//! launch) and of shutdown (refuse new sessions, drain, end every session, close every
//! socket, stop the background tasks). It holds no request logic, reads no flags and
//! installs no signal handlers: `main.rs` does that, and tests build gateways with a fake
//! browser host on port 0.

mod background;
mod data_dir;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, AppState, wire::PublicUrls};
use crate::auth::KeyRing;
use crate::browser::cgroup::Limits;
use crate::browser::{BrowserHost, Engine};
use crate::cluster::Cluster;
use crate::cluster::directory::{Member, NodeDirectory, PgDirectory};
use crate::cluster::lease::{Fence, LeaseTimes, Membership, PgMembership};
use crate::config::{
    MIN_TIMEOUT_MS, Settings, available_memory, host_name, sessions_for_memory, total_memory,
};
use crate::files::FileStore;
use crate::http::{self, HttpLimits};
use crate::metering::Meter;
use crate::metering::ledger::Ledger;
use crate::metering::postgres::{Deadlines, PgLedger};
use crate::session::admission::Admission;
use crate::session::params::TimeoutLimits;
use crate::session::registry::{HistoryLimits, Registry};
use crate::session::supervisor::LivenessProbe;
use crate::telemetry;
use crate::viewer::Viewers;

/// How often a node asks its own advertise URL before giving up, and how long it waits
/// between tries.
const ADVERTISE_TRIES: usize = 5;
const ADVERTISE_RETRY: Duration = Duration::from_millis(500);
/// Beyond the create timeout, how long this node waits for the answer of a create it passed
/// to another node (which answers within its own create timeout).
const RELAY_MARGIN: Duration = Duration::from_secs(1);
/// How long shutdown waits for sessions and sockets to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Why a gateway could not be built or served.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is out of range, or settings contradict each other.
    #[error("{0}")]
    Settings(String),
    /// The data directory cannot be created or is used by another gateway.
    #[error("{0}")]
    DataDir(String),
    /// The metrics recorder could not be installed.
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    /// The usage database cannot be opened or repaired.
    #[error("{0}")]
    Usage(String),
    /// The listener's address cannot be read.
    #[error("cannot read the listening address: {0}")]
    Listen(#[from] std::io::Error),
}

/// A gateway ready to serve.
pub struct Gateway {
    settings: Settings,
    max_sessions: usize,
    host: Arc<dyn BrowserHost>,
    registry: Arc<Registry>,
    meter: Arc<Meter>,
    metrics: PrometheusHandle,
    keys: Arc<KeyRing>,
    /// Whether this node serves: closed while its lease renewal is overdue (never on a
    /// single node).
    fence: Arc<Fence>,
    /// This node's part in a cluster (`--database-url`), all of it or none.
    cluster: Option<ClusterMode>,
    /// Held for the gateway's life: no other gateway may use the data directory.
    _data_dir: data_dir::DataDirLock,
}

/// A node's part in its cluster: its view of the others (through the directory the nodes
/// share) and its lease. One value, so that a node never has one without the other.
struct ClusterMode {
    /// The other nodes, where sessions run, the secret, placement.
    cluster: Arc<Cluster>,
    /// Where the lease is renewed.
    membership: Arc<dyn Membership>,
    /// The lease's length, renewal slot and margin.
    times: LeaseTimes,
    /// When the join that took the lease started.
    joined: tokio::time::Instant,
    /// How often this node tells the others what it can take and learns what they can.
    refresh_every: Duration,
}

/// What joining a cluster gives a node: the directory the nodes share and where its lease
/// is renewed.
struct Joined {
    directory: Arc<dyn NodeDirectory>,
    membership: Arc<dyn Membership>,
    refresh_every: Duration,
}

/// A cluster to join without a database (only tests make one): the ledger every node writes
/// and [`Joined`].
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
struct Joining {
    ledger: Arc<dyn Ledger>,
    joined: Joined,
}

impl Gateway {
    /// Prepares a gateway on `settings` that runs its browsers on `host`: everything but the
    /// socket. Sessions a killed predecessor left are closed and its browsers swept.
    pub async fn build(
        settings: Settings,
        host: Arc<dyn BrowserHost>,
    ) -> Result<Gateway, GatewayError> {
        Gateway::assemble(settings, host, None).await
    }

    /// Prepares a gateway as [`Gateway::build`] does, as node `node` of an in-process
    /// cluster (its id is `--node-id`; its lease lasts `--node-lease-ms`): for in-process
    /// tests of several gateways that share one directory and one ledger.
    #[cfg(feature = "test-util")]
    pub async fn build_in_cluster(
        settings: Settings,
        host: Arc<dyn BrowserHost>,
        node: Arc<crate::testing::ClusterNode>,
    ) -> Result<Gateway, GatewayError> {
        let joining = Joining {
            ledger: node.clone(),
            joined: Joined {
                directory: node.clone(),
                membership: node.clone(),
                refresh_every: node.refresh_every(),
            },
        };
        Gateway::assemble(settings, host, Some(joining)).await
    }

    async fn assemble(
        settings: Settings,
        host: Arc<dyn BrowserHost>,
        joining: Option<Joining>,
    ) -> Result<Gateway, GatewayError> {
        settings
            .validate()
            .map_err(|e| GatewayError::Settings(e.to_string()))?;
        let keys = load_keys(&settings)?;
        let dir = settings.data_dir.clone();
        let lock = tokio::task::spawn_blocking(move || data_dir::claim(&dir))
            .await
            .map_err(|e| {
                GatewayError::DataDir(format!("cannot claim the data directory: {e}"))
            })??;
        let swept = host.sweep().await;
        info!(
            process_groups = swept.process_groups,
            directories = swept.directories,
            "start-up sweep done"
        );
        let max_sessions = max_sessions(&settings, host.engines().map(|e| e.default));
        host.set_limits(session_limits(&settings, max_sessions));
        host.check_capacity(max_sessions + settings.pool_size);
        let metrics = telemetry::install(max_sessions, settings.pool_size)
            .map_err(|e| GatewayError::Metrics(format!("{e:#}")))?;
        let joined_at = tokio::time::Instant::now();
        let (meter, joined) = open_meter(&settings, joining).await?;
        let cluster = match joined {
            Some(joined) => Some(cluster_mode(joined, &settings, joined_at).await?),
            None => None,
        };
        let fence = Arc::new(match &cluster {
            Some(mode) => Fence::for_lease(mode.times, mode.joined),
            None => Fence::open_forever(),
        });
        let files = open_files(&settings).await?;
        let registry = Registry::new(
            host.clone(),
            meter.clone(),
            admission(&settings, max_sessions),
            liveness_probe(&settings),
            HistoryLimits {
                keep_for: Duration::from_secs(settings.history_days.saturating_mul(86_400)),
                keep_newest: settings.history_sessions,
            },
            files,
        );
        registry.set_cdp_limits(cdp_limits(&settings));
        probe(&registry).await;
        Ok(Gateway {
            settings,
            max_sessions,
            host,
            registry,
            meter,
            metrics,
            keys: Arc::new(keys),
            fence,
            cluster,
            _data_dir: lock,
        })
    }

    /// Makes this gateway a lone node of a cluster whose lease lasts `lease`, kept in
    /// `membership` from now on: for in-process tests of fencing on an in-memory membership.
    #[cfg(feature = "test-util")]
    pub fn with_lease(
        mut self,
        membership: Arc<crate::testing::InMemoryMembership>,
        lease: Duration,
    ) -> Gateway {
        let times = LeaseTimes::new(lease);
        let joined = tokio::time::Instant::now();
        self.fence = Arc::new(Fence::for_lease(times, joined));
        let cluster = Cluster::with_secret(
            membership.clone(),
            self.settings.node(),
            membership.secret(),
            relay_timeout(&self.settings),
        );
        self.cluster = Some(ClusterMode {
            cluster: Arc::new(cluster),
            membership,
            times,
            joined,
            refresh_every: background::OFFER_EVERY,
        });
        self
    }

    /// Serves until `shutdown` resolves, then ends every session and returns. Same as
    /// [`Gateway::serve_with_drain`] with no second signal.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), GatewayError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.serve_with_drain(listener, shutdown, std::future::pending())
            .await
    }

    /// Serves until `shutdown` resolves. Then new sessions are refused and live ones may go
    /// on for up to `--shutdown-drain-ms`, or until `urgent` resolves; then every session
    /// ends, every socket closes and the background tasks stop before this returns.
    pub async fn serve_with_drain<F, U>(
        self,
        listener: TcpListener,
        shutdown: F,
        urgent: U,
    ) -> Result<(), GatewayError>
    where
        F: Future<Output = ()> + Send + 'static,
        U: Future<Output = ()> + Send + 'static,
    {
        let local = listener.local_addr()?;
        self.settings
            .check_exposure_of(local, !self.keys.is_empty())
            .map_err(|e| GatewayError::Settings(e.to_string()))?;
        let public = self
            .settings
            .public_url
            .clone()
            .unwrap_or_else(|| default_public_url(local));
        let advertised = self.advertise(local).await?;
        let clients = TaskTracker::new();
        let state = self.app_state(&public, clients.clone());
        let background = background::Background::start(&self, shutdown, urgent);
        self.log_listening(local, &public);
        let serve = http::serve(
            listener,
            api::router(state),
            HttpLimits {
                header_read_timeout: Duration::from_millis(self.settings.header_timeout_ms),
                max_connections: self
                    .settings
                    .max_connections
                    .unwrap_or_else(http::default_max_connections),
                probe_paths: &api::OPERATIONAL_PATHS,
                ..HttpLimits::default()
            },
            background.stopping(),
            SHUTDOWN_GRACE,
        );
        let (_, _, reached) = tokio::join!(
            serve,
            end_sessions(
                &self.registry,
                &clients,
                background.stopping(),
                self.cluster.as_ref().map(|mode| mode.cluster.clone())
            ),
            self.check_advertised(advertised, background.stopping()),
        );
        background.stop().await;
        if let Some(mode) = &self.cluster
            && let Err(e) = mode.cluster.leave().await
        {
            warn!(error = %e, "cannot end this node's lease; it runs out by itself");
        }
        info!("ingot stopped");
        reached
    }

    /// In a cluster: the URL other nodes reach this one at (`--advertise-url`, else the
    /// listening address when it names one), recorded in the shared database.
    async fn advertise(&self, local: SocketAddr) -> Result<Option<String>, GatewayError> {
        let Some(mode) = &self.cluster else {
            return Ok(None);
        };
        if let Some(url) = &self.settings.advertise_url {
            return Ok(Some(url.trim_end_matches('/').to_owned()));
        }
        if local.ip().is_unspecified() {
            return Err(GatewayError::Settings(format!(
                "--advertise-url (INGOT_ADVERTISE_URL) is required with --database-url when listening on {local}: \
                 set it to the address other nodes reach this one at, such as http://10.0.0.7:{}",
                local.port()
            )));
        }
        let url = default_public_url(local);
        mode.cluster
            .advertise(&url)
            .await
            .map_err(|e| GatewayError::Usage(format!("cannot record this node's address: {e}")))?;
        Ok(Some(url))
    }

    /// Asks `/healthz` at this node's advertise URL and checks that this node answers; if
    /// not, the gateway stops (through `stopping`) and the error says why.
    async fn check_advertised(
        &self,
        advertised: Option<String>,
        stopping: CancellationToken,
    ) -> Result<(), GatewayError> {
        let (Some(mode), Some(url)) = (&self.cluster, advertised) else {
            return Ok(());
        };
        let cluster = &mode.cluster;
        let why = tokio::select! {
            why = reaches_itself(cluster, &url) => why,
            _ = stopping.cancelled() => None,
        };
        let Some(why) = why else {
            return Ok(());
        };
        stopping.cancel();
        Err(GatewayError::Settings(format!(
            "--advertise-url {url} does not reach this node ({}): {why}; set it to the address \
             other nodes reach this one at",
            cluster.node()
        )))
    }

    fn app_state(&self, public: &str, clients: TaskTracker) -> AppState {
        // Tokens are the same on every node of a cluster, which all know its secret.
        let viewers = Arc::new(match &self.cluster {
            Some(mode) => Viewers::new(mode.cluster.secret().as_bytes().to_vec()),
            None => Viewers::default(),
        });
        AppState {
            registry: self.registry.clone(),
            urls: Arc::new(PublicUrls::new(public).with_viewers(viewers.clone())),
            limits: TimeoutLimits {
                default_ms: self.settings.default_timeout_ms,
                min_ms: MIN_TIMEOUT_MS,
                max_ms: self.settings.max_timeout_ms,
            },
            clients,
            meter: self.meter.clone(),
            metrics: self.metrics.clone(),
            keys: self.keys.clone(),
            max_message: self.settings.max_message_bytes,
            ping_every: Duration::from_millis(self.settings.ws_ping_interval_ms),
            body_timeout: Duration::from_millis(self.settings.header_timeout_ms),
            cluster: self.cluster.as_ref().map(|mode| mode.cluster.clone()),
            fence: self.fence.clone(),
            viewers,
            viewer_frame_ancestors: self.settings.viewer_frame_ancestors.clone(),
            sandbox: self.host.sandbox().map(Arc::new),
            engines: self.host.engines().cloned().map(Arc::new),
        }
    }

    fn log_listening(&self, local: SocketAddr, public: &str) {
        info!(
            listen = %local,
            public_url = %public,
            browsers = %self.host.describe(),
            data_dir = %self.settings.data_dir.display(),
            max_sessions = self.max_sessions,
            pool_size = self.settings.pool_size,
            "ingot listening on http://{local}"
        );
    }
}

/// The sessions' files under `<data_dir>/files`.
async fn open_files(settings: &Settings) -> Result<Arc<FileStore>, GatewayError> {
    let root = settings.data_dir.join("files");
    let retention = Duration::from_millis(settings.files_retention_ms);
    let max_file = settings.max_file_bytes;
    let caps = crate::files::SessionCaps {
        bytes: settings.max_session_files_bytes,
        entries: settings.max_session_files,
    };
    let shown = root.display().to_string();
    tokio::task::spawn_blocking(move || FileStore::new(root, retention, max_file))
        .await
        .map_err(|e| GatewayError::DataDir(e.to_string()))?
        .map(|store| Arc::new(store.with_caps(caps)))
        .map_err(|e| GatewayError::DataDir(format!("cannot create {shown}: {e}")))
}

/// Why `url` does not lead to this node, after a few tries; `None` when it does.
async fn reaches_itself(cluster: &Cluster, url: &str) -> Option<String> {
    let mut why = String::new();
    for _ in 0..ADVERTISE_TRIES {
        match cluster.whoami(url).await {
            Ok(node) if node == cluster.node() => {
                info!(advertise_url = %url, "the advertise URL reaches this node");
                return None;
            }
            Ok(node) => return Some(format!("node {node:?} answers there")),
            Err(e) => why = e.to_string(),
        }
        tokio::time::sleep(ADVERTISE_RETRY).await;
    }
    Some(why)
}

/// Once `stopping` is cancelled: ends every session, closes the WebSockets forwarded to
/// other nodes, and waits for clients' sockets to close.
async fn end_sessions(
    registry: &Registry,
    clients: &TaskTracker,
    stopping: CancellationToken,
    cluster: Option<Arc<Cluster>>,
) {
    stopping.cancelled().await;
    info!(
        live_sessions = registry.live_count(),
        "shutting down: releasing every session"
    );
    registry.shutdown(SHUTDOWN_GRACE).await;
    if let Some(cluster) = cluster {
        cluster.close();
    }
    clients.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, clients.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = clients.len(),
            "client sockets still open after {SHUTDOWN_GRACE:?}"
        );
    }
}

fn load_keys(settings: &Settings) -> Result<KeyRing, GatewayError> {
    let keys = KeyRing::load(
        settings.api_keys_file.as_deref(),
        settings.api_keys.as_deref(),
        settings.admin_api_key.as_deref(),
    )
    .map_err(|e| GatewayError::Settings(e.to_string()))?;
    settings
        .check_exposure(!keys.is_empty())
        .map_err(|e| GatewayError::Settings(e.to_string()))?;
    if keys.is_empty() {
        warn!(
            listen = %settings.listen,
            "NO API KEYS CONFIGURED: every client that reaches {} can create, drive and release every session; \
             configure --api-keys-file or INGOT_API_KEYS",
            settings.listen
        );
    } else {
        info!(tenants = keys.len(), "API keys loaded");
    }
    Ok(keys)
}

/// `--max-sessions`, or what the available memory holds at the budget of `engine`'s
/// sessions (a host without engines runs the shell's).
fn max_sessions(settings: &Settings, engine: Option<Engine>) -> usize {
    let n = settings.max_sessions.unwrap_or_else(|| {
        let available = available_memory().unwrap_or(0);
        let engine = engine.unwrap_or(Engine::Shell);
        let per_session = engine.memory_per_session();
        let n = sessions_for_memory(available, per_session);
        info!(
            max_sessions = n,
            available_mib = available >> 20,
            engine = %engine,
            per_session_mib = per_session >> 20,
            "session limit derived from available memory (the engine's budget per session, 1 GiB kept spare); set --max-sessions to choose"
        );
        n
    });
    if settings.pool_size >= n {
        warn!(
            pool_size = settings.pool_size,
            max_sessions = n,
            "the warm pool can take every session slot; it gives them up when sessions need them"
        );
    }
    n
}

/// The caps of each session's browser: `--session-memory-max` (derived from the machine's
/// memory and the session limit when unset) and `--session-pids-max`.
fn session_limits(settings: &Settings, max_sessions: usize) -> Limits {
    let limits = Limits {
        memory_max: settings.session_memory_limit(total_memory(), max_sessions),
        pids_max: settings.session_pids_max.value(),
    };
    info!(
        memory_max_mib = limits.memory_max.map(|b| b >> 20),
        derived = settings.session_memory_max.is_none(),
        pids_max = limits.pids_max,
        "per-session caps (--session-memory-max, --session-pids-max)"
    );
    limits
}

fn admission(settings: &Settings, max_sessions: usize) -> Admission {
    Admission {
        max_sessions,
        pool_size: settings.pool_size,
        pool_settle: Duration::from_millis(settings.pool_settle_ms),
        queue_limit: settings.queue_limit,
        queue_timeout: Duration::from_millis(settings.queue_timeout_ms),
        per_tenant: settings.max_sessions_per_tenant,
        create_timeout: Duration::from_millis(settings.create_timeout_ms),
    }
}

fn liveness_probe(settings: &Settings) -> LivenessProbe {
    LivenessProbe {
        interval: Duration::from_millis(settings.browser_probe_interval_ms),
        timeout: Duration::from_millis(settings.browser_probe_timeout_ms),
    }
}

/// Opens the ledger (the shared PostgreSQL database, which this node joins, else this
/// node's SQLite file; in tests, the ledger of the cluster it is `joining`) and closes the
/// records a killed predecessor of this node left live.
async fn open_meter(
    settings: &Settings,
    joining: Option<Joining>,
) -> Result<(Arc<Meter>, Option<Joined>), GatewayError> {
    let (meter, joined) = match (joining, &settings.database_url) {
        (Some(joining), _) => (Meter::new(joining.ledger), Some(joining.joined)),
        (None, Some(_)) => {
            let (ledger, joined) = join_cluster(settings).await?;
            (Meter::new(ledger), Some(joined))
        }
        (None, None) => {
            let meter = Meter::open(&settings.data_dir)
                .await
                .map_err(|e| GatewayError::Usage(format!("cannot open the usage database: {e}")))?;
            (meter, None)
        }
    };
    meter.close_abandoned().await.map_err(|e| {
        GatewayError::Usage(format!(
            "cannot close the usage records of the previous run: {e}"
        ))
    })?;
    Ok((meter, joined))
}

/// Connects to the shared database and takes this node's lease.
async fn join_cluster(settings: &Settings) -> Result<(Arc<PgLedger>, Joined), GatewayError> {
    let url = settings.database_url.as_deref().unwrap_or_default();
    let shown = settings.database_shown().unwrap_or_default();
    let node = settings.node();
    let deadlines = Deadlines::for_lease(Duration::from_millis(settings.node_lease_ms));
    let ledger = PgLedger::connect(url, &node, deadlines).await.map_err(|e| {
        GatewayError::Usage(format!(
            "cannot use the database {shown}: {e}; check --database-url and that PostgreSQL accepts connections there"
        ))
    })?;
    let me = Member {
        host: host_name(),
        data_dir: settings.data_dir.display().to_string(),
        advertise_url: settings.advertise_url.clone(),
        lease_ms: i64::try_from(settings.node_lease_ms).unwrap_or(i64::MAX),
    };
    let ledger = Arc::new(ledger);
    let directory = Arc::new(PgDirectory::new(ledger.clone(), node.clone()));
    directory
        .join(&me)
        .await
        .map_err(|e| GatewayError::Settings(format!("cannot join the cluster: {e}")))?;
    info!(database = %shown, node = %node, lease_ms = settings.node_lease_ms, "joined the cluster's database");
    let membership = Arc::new(PgMembership {
        directory: directory.clone(),
        lease: Duration::from_millis(settings.node_lease_ms),
    });
    let joined = Joined {
        directory,
        membership,
        refresh_every: background::OFFER_EVERY,
    };
    Ok((ledger, joined))
}

/// This node's part in the cluster it joined (at `joined_at`): its view of the others
/// (which reads the cluster's secret) and its lease.
async fn cluster_mode(
    joined: Joined,
    settings: &Settings,
    joined_at: tokio::time::Instant,
) -> Result<ClusterMode, GatewayError> {
    let cluster = Cluster::new(joined.directory, settings.node(), relay_timeout(settings))
        .await
        .map_err(|e| GatewayError::Usage(format!("cannot read the cluster's secret: {e}")))?;
    Ok(ClusterMode {
        cluster: Arc::new(cluster),
        membership: joined.membership,
        times: LeaseTimes::new(Duration::from_millis(settings.node_lease_ms)),
        joined: joined_at,
        refresh_every: joined.refresh_every,
    })
}

/// Longest wait for the answer of a create passed to another node, which may wait in its
/// queue, then launch a browser.
fn relay_timeout(settings: &Settings) -> Duration {
    Duration::from_millis(settings.create_timeout_ms) + RELAY_MARGIN
}

/// One launch before serving: readiness is known from the first probe, and the first
/// session does not pay for measuring the browser's window.
async fn probe(registry: &Registry) {
    match registry.probe_browser().await {
        Ok(took) => info!(
            launch_ms = took.as_millis() as u64,
            "Chromium starts; probe browser reaped"
        ),
        Err(e) => warn!(
            error = %e,
            "Chromium cannot start; /readyz answers 503 until a launch succeeds"
        ),
    }
}

fn default_public_url(local: SocketAddr) -> String {
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    match local {
        SocketAddr::V6(_) if !local.ip().is_unspecified() => {
            format!("http://[{host}]:{}", local.port())
        }
        _ => format!("http://{host}:{}", local.port()),
    }
}

/// The caps on each session's CDP traffic, from the settings.
fn cdp_limits(settings: &Settings) -> crate::cdp::guard::Limits {
    crate::cdp::guard::Limits {
        max_clients: settings.max_clients_per_session,
        max_pages: settings.max_pages_per_session,
        inflight_bytes: settings.session_inflight_bytes,
        max_file_bytes: settings.max_file_bytes,
        max_session_bytes: settings.max_session_files_bytes,
    }
}
