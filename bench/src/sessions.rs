//! Whole-browser figures: create to first CDP reply (cold and warm), many sessions at once,
//! and the memory that idle client WebSockets cost.
//!
//! Owns the recipe for "create to first reply" on each target and the memory bookkeeping;
//! every browser it starts is owned by a guard ([`DirectChromium`], or a session released
//! here and, failing that, by the [`Gateway`]'s shutdown).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::future::try_join_all;
use serde_json::json;

use crate::cdp::Cdp;
use crate::chromium::{Build, DirectChromium, Engine, TempRoot};
use crate::gateway::{Gateway, Session};
use crate::procfs::{self, Footprint};
use crate::stats::ms;

/// How long a browser may take to start, 40 at once on two cores included.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long browsers idle before their memory is read, so both targets are read alike.
const SETTLE: Duration = Duration::from_secs(2);
/// Client WebSockets opened at once when opening many.
const CLIENT_BATCH: usize = 50;

/// The time from asking for a browser to its first CDP reply, and its first part.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    pub total_ms: f64,
    /// Until the browser's address is known: `DevToolsActivePort` written (direct), or the
    /// create call answered (ingot). The rest is the WebSocket and the first reply.
    pub address_ms: f64,
}

/// Direct: spawn → `DevToolsActivePort` → connect → first reply to `Browser.getVersion`.
/// Returns the timing and the browser, still running.
pub(crate) async fn direct_start(
    executable: &Path,
    root: &TempRoot,
) -> Result<(Start, DirectChromium)> {
    direct_start_engine(executable, Engine::Chromium, root).await
}

/// [`direct_start`] of either engine's build (`executable`), launched as that engine is.
pub(crate) async fn direct_start_engine(
    executable: &Path,
    engine: Engine,
    root: &TempRoot,
) -> Result<(Start, DirectChromium)> {
    let dir = root.fresh_dir("direct")?;
    let started = Instant::now();
    let mut browser = DirectChromium::spawn_engine(executable, engine, dir)?;
    let url = browser.devtools_url(START_TIMEOUT).await?;
    let address_ms = ms(started.elapsed());
    let mut cdp = Cdp::connect(&url, START_TIMEOUT).await?;
    cdp.call_result("Browser.getVersion", json!({}), None)
        .await?;
    let total_ms = ms(started.elapsed());
    cdp.close().await;
    Ok((
        Start {
            total_ms,
            address_ms,
        },
        browser,
    ))
}

/// ingot: `POST /v1/sessions` → connect `websocketUrl` → first reply to `Browser.getVersion`.
/// Returns the timing and the session, still live.
pub(crate) async fn ingot_start(gateway: &Gateway) -> Result<(Start, Session)> {
    ingot_start_with(gateway, "{}").await
}

/// [`ingot_start`] with a create body of its own (`{"headless": false}`, …).
pub(crate) async fn ingot_start_with(gateway: &Gateway, body: &str) -> Result<(Start, Session)> {
    let started = Instant::now();
    let session = gateway.create(body).await?;
    let address_ms = ms(started.elapsed());
    let mut cdp = Cdp::connect(&session.websocket_url, START_TIMEOUT).await?;
    cdp.call_result("Browser.getVersion", json!({}), None)
        .await?;
    let total_ms = ms(started.elapsed());
    cdp.close().await;
    Ok((
        Start {
            total_ms,
            address_ms,
        },
        session,
    ))
}

/// Releases a session and waits until its browser is gone, so the next sample starts quiet.
pub(crate) async fn release_and_settle(gateway: &Gateway, session: &Session) -> Result<()> {
    gateway.release(&session.id).await?;
    gateway.wait_no_browsers(Duration::from_secs(60)).await
}

/// `n` browsers started at once on one target.
#[derive(Debug, Default)]
pub(crate) struct Burst {
    /// Every create's (or launch's) time to first reply, all rounds together.
    pub start_ms: Vec<f64>,
    /// Each round's p50 of `start_ms`.
    pub round_p50_ms: Vec<f64>,
    /// Every browser process, all `n` browsers together.
    pub memory: Footprint,
    /// ingot's own resident memory while they run (ingot only).
    pub gateway_rss_kib: Option<u64>,
}

impl Burst {
    /// Adds a later round of the same burst: its samples and its p50; the memory stays the
    /// first round's.
    pub(crate) fn merge(&mut self, later: Burst) {
        self.start_ms.extend(later.start_ms);
        self.round_p50_ms.extend(later.round_p50_ms);
    }
}

/// Starts `n` direct browsers of `build` at once and reads their memory once they idle.
pub(crate) async fn direct_burst(build: &Build, root: &TempRoot, n: usize) -> Result<Burst> {
    let started =
        try_join_all((0..n).map(|_| direct_start_engine(&build.executable, build.engine, root)))
            .await?;
    tokio::time::sleep(SETTLE).await;
    let pids: Vec<i32> = started.iter().flat_map(|(_, b)| b.processes()).collect();
    let memory = procfs::footprint(&pids);
    let start_ms: Vec<f64> = started.iter().map(|(t, _)| t.total_ms).collect();
    drop(started);
    Ok(Burst {
        round_p50_ms: crate::stats::percentile(&start_ms, 50.0)
            .into_iter()
            .collect(),
        start_ms,
        memory,
        gateway_rss_kib: None,
    })
}

/// Creates `n` ingot sessions at once, reads the memory of every browser ingot runs and
/// ingot's own, then releases them all.
pub(crate) async fn ingot_burst(gateway: &Gateway, n: usize) -> Result<Burst> {
    let results = futures_util::future::join_all((0..n).map(|_| ingot_start(gateway))).await;
    let live: Vec<&Session> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|(_, s)| s)
        .collect();
    let outcome = async {
        let mut start_ms = Vec::with_capacity(n);
        for r in &results {
            match r {
                Ok((t, _)) => start_ms.push(t.total_ms),
                Err(e) => anyhow::bail!("a create among {n} concurrent ones failed: {e:#}"),
            }
        }
        tokio::time::sleep(SETTLE).await;
        let memory = procfs::footprint(&gateway.browser_processes());
        Ok(Burst {
            round_p50_ms: crate::stats::percentile(&start_ms, 50.0)
                .into_iter()
                .collect(),
            start_ms,
            memory,
            gateway_rss_kib: Some(gateway.rss_kib()?),
        })
    }
    .await;
    try_join_all(live.iter().map(|s| gateway.release(&s.id)))
        .await
        .context("releasing the burst's sessions")?;
    gateway.wait_no_browsers(Duration::from_secs(120)).await?;
    outcome
}

/// Memory held for many idle client WebSockets on one browser.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleClients {
    pub count: usize,
    /// The process holding the sockets: ingot, or Chromium's browser process for direct.
    pub holder_before_kib: u64,
    pub holder_after_kib: u64,
    /// For ingot: Chromium's browser process, which gets one CDP session per client.
    pub browser_before_kib: Option<u64>,
    pub browser_after_kib: Option<u64>,
}

impl IdleClients {
    /// Growth of the holder per client, in KiB.
    pub(crate) fn per_client_kib(&self) -> f64 {
        (self.holder_after_kib as f64 - self.holder_before_kib as f64) / self.count as f64
    }
}

/// Opens `count` WebSockets to `url` in batches, each answering one `Browser.getVersion`
/// so it is really attached, and returns them open.
async fn open_clients(url: &str, count: usize) -> Result<Vec<Cdp>> {
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = CLIENT_BATCH.min(count - clients.len());
        let opened = try_join_all((0..batch).map(|_| async {
            let mut cdp = Cdp::connect(url, START_TIMEOUT).await?;
            cdp.call_result("Browser.getVersion", json!({}), None)
                .await?;
            Ok::<_, anyhow::Error>(cdp)
        }))
        .await
        .with_context(|| format!("opening client WebSocket {} of {count}", clients.len() + 1))?;
        clients.extend(opened);
    }
    Ok(clients)
}

/// Reads a process's RSS, failing clearly.
fn rss(pid: i32, what: &str) -> Result<u64> {
    procfs::rss_kib(pid).with_context(|| format!("cannot read the memory of {what} (pid {pid})"))
}

/// `count` idle clients on one ingot session: ingot's growth, and its browser's.
pub(crate) async fn ingot_idle_clients(gateway: &Gateway, count: usize) -> Result<IdleClients> {
    let (_, session) = ingot_start(gateway).await?;
    let outcome = async {
        // One client first, so that paths used once per process are warm before "before".
        let warm = open_clients(&session.websocket_url, 1).await?;
        drop(warm);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let browser = browser_leader(gateway)?;
        let holder_before_kib = gateway.rss_kib()?;
        let browser_before_kib = rss(browser, "the session's Chromium")?;
        let clients = open_clients(&session.websocket_url, count).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let holder_after_kib = gateway.rss_kib()?;
        let browser_after_kib = rss(browser, "the session's Chromium")?;
        drop(clients);
        Ok(IdleClients {
            count,
            holder_before_kib,
            holder_after_kib,
            browser_before_kib: Some(browser_before_kib),
            browser_after_kib: Some(browser_after_kib),
        })
    }
    .await;
    release_and_settle(gateway, &session).await?;
    outcome
}

/// The browser process of a gateway's only browser: the leader of its process group.
fn browser_leader(gateway: &Gateway) -> Result<i32> {
    let groups = procfs::groups_led_by_children_of(gateway.pid());
    let mut leaders: Vec<i32> = groups.into_iter().collect();
    match leaders.as_slice() {
        [one] => Ok(*one),
        _ => {
            leaders.sort_unstable();
            anyhow::bail!("expected one browser under ingot, found {leaders:?}")
        }
    }
}

/// `count` idle clients on a direct browser's DevTools port: its browser process's growth.
pub(crate) async fn direct_idle_clients(
    build: &Build,
    root: &TempRoot,
    count: usize,
) -> Result<IdleClients> {
    let dir = root.fresh_dir("direct")?;
    let mut browser = DirectChromium::spawn_engine(&build.executable, build.engine, dir)?;
    let url = browser.devtools_url(START_TIMEOUT).await?;
    let warm = open_clients(&url, 1).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holder_before_kib = rss(browser.pid(), "Chromium")?;
    let clients = open_clients(&url, count).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holder_after_kib = rss(browser.pid(), "Chromium")?;
    drop(clients);
    Ok(IdleClients {
        count,
        holder_before_kib,
        holder_after_kib,
        browser_before_kib: None,
        browser_after_kib: None,
    })
}
