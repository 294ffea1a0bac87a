//! Command-line and environment configuration (`INGOT_*`).
//!
//! Owns parsing and validation of settings only; it must not start anything.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Settings for one gateway process. Every flag has an `INGOT_*` environment equivalent;
/// a flag wins over its variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingot",
    version,
    about = "Browser session gateway that speaks Steel's sessions API"
)]
pub struct Config {
    /// IP address and port to serve HTTP and CDP WebSockets on.
    #[arg(long, env = "INGOT_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Base URL used in returned URLs (`websocketUrl`, `debugUrl`, ...), for example
    /// `https://browsers.example.com`. Defaults to `http://<listen address>`.
    #[arg(long, env = "INGOT_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Chromium executable. Auto-detected when unset.
    #[arg(long, env = "INGOT_CHROMIUM")]
    pub chromium: Option<PathBuf>,

    /// Directory for session profiles and gateway state.
    #[arg(long, env = "INGOT_DATA_DIR", default_value = "/var/lib/ingot")]
    pub data_dir: PathBuf,

    /// Session lifetime when a create request names none, in milliseconds.
    #[arg(long, env = "INGOT_DEFAULT_TIMEOUT_MS", default_value_t = 300_000)]
    pub default_timeout_ms: u64,

    /// Longest session lifetime a create request may ask for, in milliseconds.
    #[arg(long, env = "INGOT_MAX_TIMEOUT_MS", default_value_t = 86_400_000)]
    pub max_timeout_ms: u64,

    /// Most sessions live at once; creation beyond it answers 503.
    #[arg(long, env = "INGOT_MAX_SESSIONS", default_value_t = 16)]
    pub max_sessions: usize,

    /// On SIGTERM, how long live sessions may go on (while new ones are refused and
    /// `/readyz` answers 503) before they are ended, in milliseconds. 0 ends them at once;
    /// a second SIGTERM or SIGINT always does.
    #[arg(long, env = "INGOT_SHUTDOWN_DRAIN_MS", default_value_t = 0)]
    pub shutdown_drain_ms: u64,
}

/// Shortest session lifetime accepted, in milliseconds.
pub const MIN_TIMEOUT_MS: u64 = 1_000;

impl Config {
    /// Checks relations between settings that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_sessions == 0 {
            return Err("--max-sessions must be at least 1".into());
        }
        if self.max_timeout_ms < MIN_TIMEOUT_MS || self.max_timeout_ms > 86_400_000 {
            return Err(format!(
                "--max-timeout-ms must be between {MIN_TIMEOUT_MS} and 86400000"
            ));
        }
        if self.default_timeout_ms < MIN_TIMEOUT_MS || self.default_timeout_ms > self.max_timeout_ms
        {
            return Err(format!(
                "--default-timeout-ms must be between {MIN_TIMEOUT_MS} and --max-timeout-ms ({})",
                self.max_timeout_ms
            ));
        }
        if self.shutdown_drain_ms > 86_400_000 {
            return Err("--shutdown-drain-ms must be at most 86400000 (24 hours)".into());
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err("--public-url must start with http:// or https://".into());
        }
        Ok(())
    }
}
