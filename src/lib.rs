//! ingot: a self-hosted browser session gateway that speaks Steel's sessions API.
//!
//! Build a [`Gateway`] from [`Settings`] and a [`browser::BrowserHost`] (a
//! [`browser::LocalChromium`] in production, a fake in tests), then serve it on a listener.
//! `ARCHITECTURE.md` at the top of the repository maps the modules; in short, data flows one
//! way:
//!
//! ```text
//! gateway (start-up, background tasks, shutdown)
//!   └─> api (HTTP routes, extractors, JSON shapes, errors)
//!         └─> proxy (a client's WebSocket; close codes)
//!               └─> session (registry, admission, directory, state machine, supervisor)
//!                     └─> cdp (one multiplexed CDP connection per browser)
//!                     └─> browser (where a Chromium runs: launch, exit, kill, reap, sweep)
//!                     └─> metering (usage records in SQLite, the minute clock)
//!                           └─> telemetry (every Prometheus metric)
//!                                 └─> vocab (shared words: statuses, reasons, dimensions)
//! ```

mod api;
mod auth;
pub mod browser;
mod cdp;
pub mod config;
mod gateway;
mod http;
mod metering;
mod proxy;
mod session;
mod sync;
mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod vocab;

/// The validation entry points (create bodies, session ids, API keys), for property tests
/// outside the crate.
#[cfg(any(test, feature = "test-util"))]
pub mod validation {
    pub use crate::api::extract::parse_id;
    pub use crate::auth::{KeyRing, MIN_KEY_LEN};
    pub use crate::session::params::{
        InvalidField, SessionOptions, TimeoutLimits, parse_create_body,
    };
}

pub use config::Settings;
pub use gateway::{Gateway, GatewayError};
pub use vocab::Dimensions;
