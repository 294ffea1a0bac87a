//! Test doubles for running the gateway in-process, without Chromium.
//!
//! Owns fakes that stand in for the outside world behind the crate's own interfaces; today
//! [`FakeBrowserHost`], a [`crate::browser::BrowserHost`] whose browsers are tokio tasks
//! speaking enough CDP over the same [`crate::browser::CdpTransport`] as a real Chromium.
//! Compiled only for tests and with the `test-util` feature. This module must not touch
//! real processes, the file system or the network, and production code must not depend on
//! it.

mod fake_browser;
mod membership;

pub use fake_browser::{FAKE_JPEG, FAKE_VIEWPORT, FakeBrowser, FakeBrowserHost, ReceivedCommand};
pub use membership::InMemoryMembership;
