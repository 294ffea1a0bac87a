//! ingot: a self-hosted browser session gateway that speaks Steel's sessions API.
//!
//! Build a [`Gateway`] from [`Settings`] and a [`browser::BrowserHost`] (a
//! [`browser::LocalChromium`] in production, a fake in tests), then serve it on a listener.
//! `ARCHITECTURE.md` at the top of the repository maps the modules (its table "Allowed
//! imports" lists every edge between them, and `tests/it/tidy.rs` checks the code against
//! it); in short, data flows one way:
//!
//! ```text
//! main.rs ─> gateway ─> http ─> api ─┬─> proxy ─> session ─┬─> cdp ─> browser
//!                                    │                     ├─> metering ─> telemetry
//!                                    ├─> viewer ─> cdp     ├─> files
//!                                    ├─> files             └─> auth
//!                                    └─> cluster ─> metering (PgLedger's pool)
//! proxy ─> cluster::lease (the Fence it asks before relaying)
//! config ─> browser, files (defaults of flags); testing (test-util) ─> browser, cluster, metering
//! every module may use the leaves: vocab (shared words) and sync (the lock helper)
//! ```

// `unreachable_pub` (the workspace's lints) keeps `pub` for what leaves the crate. Some
// items leave it only through `testing` and `validation`, which exist with the `test-util`
// feature; without it they would be reported, so the lint is checked where they exist (CI's
// clippy builds the library with `test-util`).
#![cfg_attr(not(any(test, feature = "test-util")), allow(unreachable_pub))]

mod api;
mod auth;
pub mod browser;
mod cdp;
mod cluster;
pub mod config;
mod files;
mod gateway;
mod http;
mod metering;
mod proxy;
mod session;
mod sync;
mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod viewer;
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
