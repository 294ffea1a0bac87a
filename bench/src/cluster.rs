//! The cluster section: two ingot nodes sharing one PostgreSQL (`--database-url`), node `a`
//! owning the sessions and node `b` forwarding to it.
//!
//! Owns the section's plan and results and its three measurements, with their progress
//! lines: the CDP round trip through the forwarding node against the owner and against
//! direct Chromium, in one run; create to first CDP reply through a node without a free slot
//! (so the session is placed on the other node and the WebSocket is forwarded) against a
//! create on the owner; and the time from a node's SIGKILL to its session reading `failed` on
//! the survivor. Every process it starts is owned by a guard ([`Postgres`], [`Gateway`],
//! [`DirectChromium`]); nodes are dropped before the database so that they can record their
//! sessions' end.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::chromium::{DirectChromium, TempRoot};
use crate::gateway::{self, Gateway, GatewayOptions};
use crate::percommand::Page;
use crate::postgres::{self, Postgres};
use crate::sessions::{self, Start};
use crate::stats::{self, ms};
use crate::{WARM_SETTLE, procfs};

/// The database the nodes share.
const DATABASE: &str = "ingot_bench";
/// Node `a`, which owns the sessions: a warm pool, so that creates show the forwarding's cost
/// rather than Chromium's start.
const POOL: usize = 2;
const OWNER: GatewayOptions = GatewayOptions {
    pool_size: Some(POOL),
    max_sessions: Some(4),
};
/// Node `b`, which forwards: one slot, taken by a session of its own while creates are
/// measured, so that every create it receives is placed on `a`.
const FORWARDER: GatewayOptions = GatewayOptions {
    pool_size: Some(0),
    max_sessions: Some(1),
};
/// How often the survivor is asked for the dead node's session.
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// How long a node's pool may take to refill.
const REFILL: Duration = Duration::from_secs(60);

/// How many samples of what the section takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClusterPlan {
    /// Rounds of round trips, and per round the round trips per target, in blocks of
    /// `rtt_block` rotating among the three targets.
    pub rounds: usize,
    pub rtt_runs: usize,
    pub rtt_block: usize,
    /// New WebSockets to the first CDP reply per target per round.
    pub reconnects: usize,
    /// Creates on each node, alternating.
    pub creates: usize,
    /// SIGKILLs of node `a`.
    pub kills: usize,
    /// Every node's `--node-lease-ms`.
    pub lease_ms: u64,
}

/// The section's outcome.
#[derive(Debug)]
pub(crate) enum Cluster {
    Measured(Box<ClusterResults>),
    /// Why it was not measured (no PostgreSQL, or an ingot without `--database-url`).
    Skipped(String),
}

/// One target's page: each round's round-trip p50 and p99, in µs, and every reconnect (a
/// new WebSocket to its first CDP reply), in ms.
#[derive(Debug, Default)]
pub(crate) struct PageFigures {
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub reconnect_ms: Vec<f64>,
}

/// Every figure of the section.
#[derive(Debug)]
pub(crate) struct ClusterResults {
    pub postgres: String,
    pub plan: ClusterPlan,
    pub pool: usize,
    pub direct: PageFigures,
    pub owner: PageFigures,
    pub forwarded: PageFigures,
    /// The forwarding node's CPU time per forwarded round trip, per round, in µs.
    pub forwarder_cpu_us: Vec<f64>,
    pub create_owner: Vec<Start>,
    pub create_forwarded: Vec<Start>,
    /// Per SIGKILL: until the survivor answered `failed`, in ms.
    pub failover_ms: Vec<f64>,
}

/// The whole section; skipped, with the reason, when PostgreSQL or cluster mode is missing.
pub(crate) async fn measure(
    chromium: &Path,
    ingot: &Path,
    root: &TempRoot,
    plan: ClusterPlan,
) -> Result<Cluster> {
    if !gateway::supports_flag(ingot, "--database-url")? {
        let why = "this ingot has no `--database-url` (no cluster mode)";
        progress!("cluster: skipped: {why}");
        return Ok(Cluster::Skipped(why.to_owned()));
    }
    let Some(bin) = postgres::find() else {
        progress!("cluster: skipped: {}", postgres::INSTALL_HINT);
        return Ok(Cluster::Skipped(postgres::INSTALL_HINT.to_owned()));
    };
    let pg = Postgres::start(bin, root)?;
    pg.create_database(DATABASE)?;
    let url = pg.url(DATABASE);
    let mut a = start_node(ingot, root, &url, "a", OWNER, plan.lease_ms).await?;
    let b = start_node(ingot, root, &url, "b", FORWARDER, plan.lease_ms).await?;
    progress!(
        "cluster: {}, node a (owner, pid {}, --pool-size {POOL}) and node b (forwarding, pid {}), --node-lease-ms {}",
        pg.version(),
        a.pid(),
        b.pid(),
        plan.lease_ms
    );
    a.wait_pool_full(POOL, REFILL).await?;
    let (direct, owner, forwarded, forwarder_cpu_us) =
        round_trips(chromium, root, &a, &b, &plan).await?;
    let (create_owner, create_forwarded) = creates(&a, &b, plan.creates).await?;
    let failover_ms = failovers(ingot, root, &url, &mut a, &b, &plan).await?;
    drop(b);
    drop(a);
    Ok(Cluster::Measured(Box::new(ClusterResults {
        postgres: pg.version(),
        plan,
        pool: POOL,
        direct,
        owner,
        forwarded,
        forwarder_cpu_us,
        create_owner,
        create_forwarded,
        failover_ms,
    })))
}

/// Starts one node of the cluster and waits until it answers.
async fn start_node(
    ingot: &Path,
    root: &TempRoot,
    database_url: &str,
    name: &str,
    options: GatewayOptions,
    lease_ms: u64,
) -> Result<Gateway> {
    let extra = [
        "--database-url".to_owned(),
        database_url.to_owned(),
        "--node-id".to_owned(),
        name.to_owned(),
        "--node-lease-ms".to_owned(),
        lease_ms.to_string(),
    ];
    Gateway::start_with(ingot, root, options, &extra)
        .await
        .with_context(|| format!("cannot start cluster node {name}"))
}

/// The same URL with its host and port replaced by `node`'s: a session's `websocketUrl`
/// taken to another node.
fn on_node(url: &str, node: SocketAddr) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("not a URL: {url}"))?;
    let host = authority(url).unwrap_or_default();
    Ok(format!("{scheme}://{node}{}", &rest[host.len()..]))
}

/// The `host:port` of a URL.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    rest.split(['/', '?', '#']).next()
}

/// Round trips on one page per target: direct Chromium, a session on node `a` through `a`,
/// and the same session through `b`; returns (direct, owner, forwarded, b's CPU time per
/// forwarded round trip per round).
async fn round_trips(
    chromium: &Path,
    root: &TempRoot,
    a: &Gateway,
    b: &Gateway,
    plan: &ClusterPlan,
) -> Result<(PageFigures, PageFigures, PageFigures, Vec<f64>)> {
    let dir = root.fresh_dir("direct")?;
    let mut browser = DirectChromium::spawn(chromium, dir)?;
    let direct_url = browser.devtools_url(Duration::from_secs(60)).await?;
    let session = a.create("{}").await?;
    let outcome = async {
        let via_b = on_node(&session.websocket_url, b.addr())?;
        let mut pages = [
            Page::open(&direct_url).await?,
            Page::open(&session.websocket_url).await?,
            Page::open(&via_b).await.context("a CDP WebSocket through node b")?,
        ];
        let mut rtt: [PageFigures; 3] = Default::default();
        let mut cpu = Vec::with_capacity(plan.rounds);
        for round in 0..plan.rounds {
            cpu.push(rtt_round(&mut pages, &mut rtt, round, b.pid(), plan).await?);
            reconnects(&mut pages, &mut rtt, plan.reconnects).await?;
            let last = |r: &PageFigures| r.p50_us.last().copied().unwrap_or(f64::NAN);
            progress!(
                "cluster round {}/{}: rtt p50 direct {:.0} µs, owner {:.0} µs, through b {:.0} µs (b's CPU {:.1} µs per round trip)",
                round + 1,
                plan.rounds,
                last(&rtt[0]),
                last(&rtt[1]),
                last(&rtt[2]),
                cpu.last().copied().unwrap_or(f64::NAN),
            );
        }
        for page in pages {
            page.close().await;
        }
        let [direct, owner, forwarded] = rtt;
        Ok::<_, anyhow::Error>((direct, owner, forwarded, cpu))
    }
    .await;
    a.release(&session.id).await?;
    drop(browser);
    outcome
}

/// `n` new WebSockets to each page's browser endpoint, each until its first CDP reply.
async fn reconnects(pages: &mut [Page; 3], out: &mut [PageFigures; 3], n: usize) -> Result<()> {
    for (page, figures) in pages.iter().zip(out.iter_mut()) {
        page.reconnects(n, &mut figures.reconnect_ms).await?;
    }
    Ok(())
}

/// One round of round trips on the three pages, in blocks rotating among them (the first
/// target changes every round); records each one's p50 and p99 and returns the forwarding
/// node's CPU time per forwarded round trip, in µs.
async fn rtt_round(
    pages: &mut [Page; 3],
    out: &mut [PageFigures; 3],
    round: usize,
    forwarder: i32,
    plan: &ClusterPlan,
) -> Result<f64> {
    let order = [round % 3, (round + 1) % 3, (round + 2) % 3];
    let mut samples: [Vec<f64>; 3] = Default::default();
    let mut cpu_ns = 0;
    for _ in 0..plan.rtt_runs.div_ceil(plan.rtt_block) {
        for t in order {
            let before = procfs::cpu_ns(forwarder);
            pages[t]
                .round_trips(plan.rtt_block, &mut samples[t])
                .await?;
            if t == 2 {
                let (Some(before), Some(after)) = (before, procfs::cpu_ns(forwarder)) else {
                    bail!("cannot read node b's CPU time");
                };
                cpu_ns += after.saturating_sub(before);
            }
        }
    }
    for (rtt, samples) in out.iter_mut().zip(&samples) {
        let p = |q| stats::percentile(samples, q).context("no round trips");
        rtt.p50_us.push(p(50.0)?);
        rtt.p99_us.push(p(99.0)?);
    }
    Ok(cpu_ns as f64 / 1e3 / samples[2].len() as f64)
}

/// `n` creates to first CDP reply on node `a`, and `n` through node `b` while `b`'s only
/// slot is taken (so they are placed on `a`), alternating; `a`'s pool is full and has idled
/// before each. Returns (owner, forwarded).
async fn creates(a: &Gateway, b: &Gateway, n: usize) -> Result<(Vec<Start>, Vec<Start>)> {
    progress!("cluster: {n} creates on node a, {n} through node b (full), alternating");
    let blocker = b.create("{}").await.context("taking node b's only slot")?;
    let outcome = async {
        let (mut owner, mut forwarded) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            for through_b in if i.is_multiple_of(2) { [false, true] } else { [true, false] } {
                a.wait_pool_full(POOL, REFILL).await?;
                tokio::time::sleep(WARM_SETTLE).await;
                let node = if through_b { b } else { a };
                let (took, session) = sessions::ingot_start(node)
                    .await
                    .with_context(|| format!("create {} through node {}", i + 1, ["a", "b"][usize::from(through_b)]))?;
                a.release(&session.id).await?;
                let expected = node.addr().to_string();
                if authority(&session.websocket_url) != Some(expected.as_str()) {
                    bail!(
                        "the create answered by {expected} gave websocketUrl {}, not one on that node",
                        session.websocket_url
                    );
                }
                let series = if through_b { &mut forwarded } else { &mut owner };
                series.push(took);
            }
        }
        Ok::<_, anyhow::Error>((owner, forwarded))
    }
    .await;
    b.release(&blocker.id).await?;
    let (owner, forwarded) = outcome?;
    progress!(
        "  on a {}; through b {}",
        crate::describe(&owner),
        crate::describe(&forwarded)
    );
    Ok((owner, forwarded))
}

/// `plan.kills` times: a session on node `a`, `a` SIGKILLed, node `b` polled every
/// [`POLL`] until the session is no longer live (it must read `failed`/`browser_crashed`);
/// `a` is restarted between kills. Returns the times from each SIGKILL, in ms.
async fn failovers(
    ingot: &Path,
    root: &TempRoot,
    database_url: &str,
    a: &mut Gateway,
    b: &Gateway,
    plan: &ClusterPlan,
) -> Result<Vec<f64>> {
    let mut took = Vec::with_capacity(plan.kills);
    for kill in 0..plan.kills {
        if kill > 0 {
            *a = start_node(ingot, root, database_url, "a", OWNER, plan.lease_ms).await?;
        }
        let session = a.create("{}").await?;
        let seen = b.session(&session.id).await?;
        if status(&seen) != "live" {
            bail!("node b does not see node a's new session as live: {seen}");
        }
        let killed_at = a.kill()?;
        let (after, record) = poll_until_ended(b, &session.id, killed_at, plan.lease_ms).await?;
        if status(&record) != "failed" || record["releaseReason"] != "browser_crashed" {
            bail!("after node a's SIGKILL its session reads {record}, not failed/browser_crashed");
        }
        took.push(ms(after));
        progress!(
            "cluster: SIGKILL {}/{}: node a's session read failed on node b after {:.0} ms (lease {} ms)",
            kill + 1,
            plan.kills,
            ms(after),
            plan.lease_ms
        );
    }
    Ok(took)
}

/// Asks `node` for session `id` every [`POLL`] until it is no longer live; returns how long
/// after `since` that answer came, and the session as answered.
async fn poll_until_ended(
    node: &Gateway,
    id: &str,
    since: Instant,
    lease_ms: u64,
) -> Result<(Duration, Value)> {
    let limit = Duration::from_millis(lease_ms * 3) + Duration::from_secs(10);
    let mut ticks = tokio::time::interval(POLL);
    loop {
        ticks.tick().await;
        let seen = node.session(id).await?;
        let after = since.elapsed();
        if status(&seen) != "live" {
            return Ok((after, seen));
        }
        if after > limit {
            bail!("node a's session still reads live {after:?} after its SIGKILL: {seen}");
        }
    }
}

fn status(session: &Value) -> &str {
    session["status"].as_str().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_url_moves_to_another_node() {
        let b: SocketAddr = "127.0.0.1:4002".parse().expect("addr");
        let url = "ws://127.0.0.1:4001/?sessionId=7a6b19a4-dc66-4e39-84ad-9a0bdc81b36a";
        assert_eq!(
            on_node(url, b).expect("a URL"),
            "ws://127.0.0.1:4002/?sessionId=7a6b19a4-dc66-4e39-84ad-9a0bdc81b36a"
        );
        assert_eq!(
            on_node("ws://localhost:9/devtools/browser/x", b).expect("a URL"),
            "ws://127.0.0.1:4002/devtools/browser/x"
        );
        assert!(on_node("127.0.0.1:4001/x", b).is_err());
    }

    #[test]
    fn authority_is_host_and_port() {
        assert_eq!(
            authority("ws://127.0.0.1:4001/?sessionId=x"),
            Some("127.0.0.1:4001")
        );
        assert_eq!(authority("ws://h:1?x"), Some("h:1"));
        assert_eq!(authority("ws://h:1"), Some("h:1"));
        assert_eq!(authority("h:1/x"), None);
    }
}
