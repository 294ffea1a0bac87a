//! Start-up, serving and graceful shutdown of the whole gateway.
//!
//! Owns the order of things: validate settings, find Chromium, claim the data directory,
//! sweep what a killed predecessor left, serve, and on SIGTERM or SIGINT release every
//! session, close every socket and exit. It holds no request logic.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, AppState, wire::PublicUrls};
use crate::auth::KeyRing;
use crate::browser::detect::find_chromium;
use crate::browser::local::{LocalChromium, scratch_root};
use crate::browser::sweep::sweep;
use crate::config::{Config, MIN_TIMEOUT_MS, available_memory, sessions_for_memory};
use crate::http::{self, HttpLimits};
use crate::metering::Meter;
use crate::session::params::TimeoutLimits;
use crate::session::registry::{Admission, Readiness, Registry};
use crate::session::supervisor::LivenessProbe;
use crate::telemetry;

/// How long shutdown waits for sessions and sockets to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// While the latest browser launch failed, a probe launch is tried this often.
const REPROBE_EVERY: Duration = Duration::from_secs(10);
/// How often a drain reports the sessions it is still waiting for.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let keys = KeyRing::load(
        config.api_keys_file.as_deref(),
        config.api_keys.as_deref(),
        config.admin_api_key.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    config
        .check_exposure(!keys.is_empty())
        .map_err(anyhow::Error::msg)?;
    if keys.is_empty() {
        warn!(
            listen = %config.listen,
            "NO API KEYS CONFIGURED: every client that reaches {} can create, drive and release every session; \
             configure --api-keys-file or INGOT_API_KEYS",
            config.listen
        );
    } else {
        info!(tenants = keys.len(), "API keys loaded");
    }
    let chromium = find_chromium(config.chromium.as_deref()).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let _lock = claim_data_dir(&config.data_dir)?;
    let data_dir = config.data_dir.clone();
    let swept = tokio::task::spawn_blocking(move || sweep(&data_dir))
        .await
        .context("start-up sweep failed")?;
    info!(
        process_groups = swept.process_groups,
        directories = swept.directories,
        "start-up sweep done"
    );
    let max_sessions = match config.max_sessions {
        Some(n) => n,
        None => {
            let available = available_memory().unwrap_or(0);
            let n = sessions_for_memory(available);
            info!(
                max_sessions = n,
                available_mib = available >> 20,
                "session limit derived from available memory (256 MiB per session, 1 GiB kept spare); set --max-sessions to choose"
            );
            n
        }
    };
    if config.pool_size >= max_sessions {
        warn!(
            pool_size = config.pool_size,
            max_sessions,
            "the warm pool can take every session slot; it gives them up when sessions need them"
        );
    }
    let metrics =
        telemetry::install(max_sessions, config.pool_size).context("cannot set up metrics")?;
    let meter = Meter::open(&config.data_dir)
        .await
        .context("cannot open the usage database")?;
    meter
        .close_abandoned()
        .await
        .context("cannot close the usage records of the previous run")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let public = config
        .public_url
        .clone()
        .unwrap_or_else(|| default_public_url(local));
    let host = Arc::new(LocalChromium::new(chromium.clone(), &config.data_dir));
    let registry = Registry::new(
        host.clone(),
        meter.clone(),
        Admission {
            max_sessions,
            pool_size: config.pool_size,
            queue_limit: config.queue_limit,
            queue_timeout: Duration::from_millis(config.queue_timeout_ms),
            per_tenant: config.max_sessions_per_tenant,
            probe: LivenessProbe {
                interval: Duration::from_millis(config.browser_probe_interval_ms),
                timeout: Duration::from_millis(config.browser_probe_timeout_ms),
            },
        },
    );
    // One launch before serving: readiness is known from the first probe, and the first
    // session does not pay for measuring the browser's window.
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
    registry.start_pool();
    let clients = TaskTracker::new();
    let state = AppState {
        registry: registry.clone(),
        urls: Arc::new(PublicUrls::new(&public)),
        limits: TimeoutLimits {
            default_ms: config.default_timeout_ms,
            min_ms: MIN_TIMEOUT_MS,
            max_ms: config.max_timeout_ms,
        },
        clients: clients.clone(),
        meter: meter.clone(),
        metrics: metrics.clone(),
        keys: Arc::new(keys),
        max_message: config.max_message_bytes,
        body_timeout: Duration::from_millis(config.header_timeout_ms),
    };

    let shutdown = CancellationToken::new();
    let background = CancellationToken::new();
    tokio::spawn(meter.clone().run(background.clone()));
    tokio::spawn(telemetry::run_sampler(metrics, host, background.clone()));
    tokio::spawn(reprobe_while_unavailable(
        registry.clone(),
        background.clone(),
    ));
    let (stop_accepting, urgent) = spawn_signal_handler()?;
    tokio::spawn(drain_then_shut_down(
        registry.clone(),
        Duration::from_millis(config.shutdown_drain_ms),
        stop_accepting,
        urgent,
        shutdown.clone(),
    ));
    info!(
        listen = %local,
        public_url = %public,
        chromium = %chromium.display(),
        data_dir = %config.data_dir.display(),
        max_sessions,
        pool_size = config.pool_size,
        "ingot listening on http://{local}"
    );

    let serve = http::serve(
        listener,
        api::router(state),
        HttpLimits {
            header_read_timeout: Duration::from_millis(config.header_timeout_ms),
            ..HttpLimits::default()
        },
        shutdown.clone(),
        SHUTDOWN_GRACE,
    );
    let drain = async {
        shutdown.cancelled().await;
        info!(
            live_sessions = registry.live_count(),
            "shutting down: releasing every session"
        );
        registry.shutdown(SHUTDOWN_GRACE).await;
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
    };
    tokio::join!(serve, drain);
    background.cancel();
    // Sessions' scratch directories are gone; their parent goes too if nothing else is in it.
    let _ = std::fs::remove_dir(scratch_root(&config.data_dir));
    info!("ingot stopped");
    Ok(())
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

/// Holds an exclusive lock on `<data_dir>/ingot.lock` for the life of the process, so the
/// start-up sweep can never kill browsers of another running gateway.
fn claim_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = data_dir.join("ingot.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
            "another ingot is using data directory {}; give each gateway its own --data-dir",
            data_dir.display()
        ),
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    }
}

/// Returns two tokens: the first SIGTERM or SIGINT cancels the first, the second cancels
/// the other.
fn spawn_signal_handler() -> anyhow::Result<(CancellationToken, CancellationToken)> {
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let (first, second) = (CancellationToken::new(), CancellationToken::new());
    let (on_first, on_second) = (first.clone(), second.clone());
    tokio::spawn(async move {
        for token in [on_first, on_second] {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
            token.cancel();
        }
    });
    Ok((first, second))
}

/// After the first signal: refuse new sessions, let live ones go on for up to `drain` (or
/// until a second signal), then start the shutdown that ends them.
async fn drain_then_shut_down(
    registry: Arc<Registry>,
    drain: Duration,
    stop_accepting: CancellationToken,
    urgent: CancellationToken,
    shutdown: CancellationToken,
) {
    stop_accepting.cancelled().await;
    registry.stop_accepting().await;
    if !drain.is_zero() && registry.live_count() > 0 {
        info!(
            live_sessions = registry.live_count(),
            drain_ms = drain.as_millis() as u64,
            "draining: new sessions are refused; live sessions may go on until they end or the drain time is up (signal again to end them now)"
        );
        let deadline = tokio::time::Instant::now() + drain;
        let mut report = tokio::time::Instant::now() + DRAIN_REPORT_EVERY;
        while registry.live_count() > 0 {
            tokio::select! {
                _ = urgent.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if tokio::time::Instant::now() >= report {
                info!(live_sessions = registry.live_count(), "still draining");
                report += DRAIN_REPORT_EVERY;
            }
        }
    }
    shutdown.cancel();
}

/// While the latest launch failed, probes Chromium now and then, so that readiness comes
/// back by itself once browsers can start again (nobody sends sessions to an unready pod).
async fn reprobe_while_unavailable(registry: Arc<Registry>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REPROBE_EVERY) => {}
        }
        if let Readiness::ChromiumUnavailable(_) = registry.readiness() {
            match registry.probe_browser().await {
                Ok(_) => info!("Chromium starts again; ready for sessions"),
                Err(e) => warn!(error = %e, "Chromium still cannot start"),
            }
        }
    }
}
