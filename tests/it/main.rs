//! The integration tests, one test crate, one module per area: `inproc` builds gateways in
//! this process on the fake browser host; the others run a real `ingot` binary and real
//! Chromium (see `common`). A behaviour both show is written once in `scenario`, generic
//! over `common::harness::Harness`, and run by both (`inproc::scenarios`,
//! `scenario::chromium_*`). `tidy` reads the sources and `ARCHITECTURE.md` and checks the
//! architecture (allowed imports, module docs, metric help). One crate means the harness and the dependencies are
//! compiled and linked once, and `cargo test --test it <module>::` runs one area.
//!
//! All modules' tests share one process and run in parallel threads. Each test starts its own
//! gateway with its own data directory and port, and counts only its own browsers (by data
//! directory), so tests of different modules do not see each other. The ones that measure
//! timings or load the whole machine (`faults`) run alone: see [`common::exclusive`].

// The helpers of this test crate are not an API: `pub` inside it marks what other test
// modules use, so the workspace's `unreachable_pub` does not apply here.
#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod admission;
mod api;
mod cdp;
mod cgroup;
mod cluster;
mod computer;
mod context;
mod deploy;
mod egress;
mod engines;
mod faults;
mod files;
mod fuzz;
mod guard;
mod hostile;
mod identity;
mod inproc;
mod lifecycle;
mod memory_cap;
mod metering;
mod metrics;
mod openapi;
mod partition;
mod postgres;
mod postgres_records;
mod proxy_auth;
mod sandbox;
mod scenario;
mod tenants;
mod tidy;
mod viewer;
