//! ingot: a self-hosted browser session gateway that speaks Steel's sessions API.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! api (HTTP routes, JSON shapes, errors)
//!   └─> session (registry, state machine, per-session supervisor)
//!         └─> browser (where a Chromium runs: launch, exit, kill, start-up sweep)
//!         └─> cdp (one multiplexed CDP connection per browser)
//!         └─> metering (usage records in SQLite, the minute clock)
//!   └─> proxy (a client's WebSocket, attached to a session's cdp mux)
//! ```
//!
//! `telemetry` names every Prometheus metric; the others report to it and never read it.
//! `server` wires them together and owns start-up and graceful shutdown.

pub mod api;
pub mod auth;
pub mod browser;
pub mod cdp;
pub mod config;
pub mod http;
pub mod metering;
pub mod proxy;
pub mod server;
pub mod session;
mod sync;
pub mod telemetry;
