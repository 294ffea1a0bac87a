//! The `ingot` binary: reads flags, sets up logging, chooses the local Chromium host,
//! installs the signal handlers, and serves.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ingot::browser::egress::BadRule;
use ingot::browser::{EngineError, Engines, LocalChromium, SandboxConfig};
use ingot::config::ConfigError;

use ingot::{Gateway, GatewayError, Settings};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the gateway did not start, or stopped with an error; printed as `ingot: <message>`.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Settings(#[from] ConfigError),
    #[error(transparent)]
    Egress(#[from] BadRule),
    #[error(transparent)]
    Engines(#[from] EngineError),
    #[error("cannot set up the browser host: {0}")]
    Host(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Bound(#[source] std::io::Error),
    #[error("cannot install {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

async fn run(settings: Settings) -> Result<(), StartError> {
    settings.validate()?;
    let flags = settings.engine_flags();
    let engines = tokio::task::spawn_blocking(move || Engines::detect(&flags))
        .await
        .map_err(StartError::Host)??;
    let egress = Arc::new(settings.egress_policy()?);
    let sandbox = SandboxConfig {
        insecure_shared_browser_user: settings.insecure_shared_browser_user,
        browser_uids: settings.browser_uids,
        // Machine-wide ports every browser may connect to; each browser's own egress
        // forwarder is added at its launch.
        allowed_tcp_ports: Vec::new(),
    };
    let data_dir = settings.data_dir.clone();
    // Detecting the sandbox probes the machine (reads /proc, forks a probe): blocking.
    let host = tokio::task::spawn_blocking(move || LocalChromium::new(engines, &data_dir, sandbox))
        .await
        .map_err(StartError::Host)?;
    let host = Arc::new(host.with_egress(egress.clone()));
    let listen = settings.listen;
    let gateway = Gateway::build(settings, host).await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen { listen, source })?;
    // No session's browser may reach the gateway itself (the egress policy).
    let bound = listener.local_addr().map_err(StartError::Bound)?;
    egress
        .own_ports()
        .register(bound.port(), "the gateway's own port");
    let (first, second) = signals()?;
    gateway
        .serve_with_drain(
            listener,
            async move { first.cancelled().await },
            async move { second.cancelled().await },
        )
        .await?;
    Ok(())
}

/// Two tokens: the first SIGTERM or SIGINT cancels the first (drain, then stop), the second
/// cancels the other (stop now).
fn signals() -> Result<(CancellationToken, CancellationToken), StartError> {
    let handler = |signal| move |source| StartError::Signal { signal, source };
    let mut term = signal(SignalKind::terminate()).map_err(handler("SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(handler("SIGINT"))?;
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
