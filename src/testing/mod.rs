//! Test doubles for running the gateway in-process, without Chromium.
//!
//! Owns fakes that stand in for the outside world behind the crate's own interfaces:
//! [`FakeBrowserHost`], a [`crate::browser::BrowserHost`] whose browsers are tokio tasks
//! speaking enough CDP over the same [`crate::browser::CdpTransport`] as a real Chromium;
//! [`InMemoryMembership`], one node's lease; and [`InMemoryCluster`], what the nodes of a
//! cluster share (directory, leases, secret, ledger), for several gateways in one process.
//! Compiled only for tests and with the `test-util` feature. This module must not touch
//! real processes or the network, nor files but the cluster's ledger in the directory a
//! test gives it, and production code must not depend on it.

mod cluster;
mod fake_browser;
mod membership;

pub use cluster::{ClusterNode, InMemoryCluster};
pub use fake_browser::{FAKE_JPEG, FAKE_VIEWPORT, FakeBrowser, FakeBrowserHost, ReceivedCommand};
pub use membership::InMemoryMembership;
