//! The sandbox's cost: the same ingot started twice, sandboxed (its default: each session's
//! browser as a uid of its own, Chromium's sandbox on, Landlock) and with
//! `--insecure-shared-browser-user` (today's launch: the gateway's user, `--no-sandbox`), and
//! direct Chromium, measured in one run with the targets taking turns: create to first CDP
//! reply cold (`--pool-size 0`) and warm (a pool of one), the CDP round trip, and the memory
//! of an idle session.
//!
//! Owns the order of this section's phases and which gateways run when; every browser and
//! gateway it starts is owned by a guard ([`DirectChromium`], [`Gateway`]) so every exit path
//! stops them. It reports figures only: [`crate::report`] judges them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::chromium::TempRoot;
use crate::gateway::{self, Gateway, GatewayOptions};
use crate::percommand::Page;
use crate::procfs::{self, Footprint};
use crate::sessions::{self, Start};
use crate::stats::percentile;

/// The flag that starts today's launch.
pub(crate) const SHARED_FLAG: &str = "--insecure-shared-browser-user";

/// The targets, in the order of every `[_; 3]` here.
pub(crate) const TARGETS: [&str; 3] = ["direct", "shared", "sandboxed"];
pub(crate) const DIRECT: usize = 0;
pub(crate) const SHARED: usize = 1;
pub(crate) const SANDBOXED: usize = 2;

/// The warm pool each warm gateway keeps.
pub(crate) const WARM_POOL: usize = 1;
/// How long an idle session (or a full pool) settles before it is measured.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);
/// How long the full pool idles before a warm create.
pub(crate) const WARM_SETTLE: Duration = Duration::from_secs(1);

/// How many samples of what.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SandboxPlan {
    /// Cold creates per target.
    pub cold: usize,
    /// Warm creates per gateway.
    pub warm: usize,
    /// Rounds of round trips; each round's p50 and p99 are kept.
    pub rtt_rounds: usize,
    /// Round trips per target per round…
    pub rtt_runs: usize,
    /// …in blocks of this many, the targets taking turns.
    pub rtt_block: usize,
    /// Idle sessions per target whose memory is read.
    pub memory: usize,
}

/// This section's outcome.
#[derive(Debug)]
pub(crate) enum Sandbox {
    Measured(Box<SandboxResults>),
    /// Why it was not measured (an ingot without the flag, a benchmark not run as root).
    Skipped(String),
}

/// The memory of one idle session's browser (or one direct browser), and what the gateway
/// grew by for it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IdleMemory {
    pub browser: Footprint,
    /// The gateway's `VmRSS` growth from before the create to the reading (none for direct).
    pub gateway_growth_kib: Option<i64>,
}

/// How a gateway's browsers ran, as read from `/proc` during the run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    /// The browser process's uid.
    pub uid: Option<u32>,
    /// Whether its command line has `--no-sandbox`.
    pub no_sandbox: bool,
}

/// Every figure of the section, indexed by [`DIRECT`], [`SHARED`], [`SANDBOXED`].
#[derive(Debug)]
pub(crate) struct SandboxResults {
    pub plan: SandboxPlan,
    pub cold: [Vec<Start>; 3],
    /// Shared and sandboxed (direct has no pool), when this ingot has `--pool-size`.
    pub warm: Option<[Vec<Start>; 2]>,
    /// Per round: p50 and p99 of the round trips, in µs.
    pub rtt_p50_us: [Vec<f64>; 3],
    pub rtt_p99_us: [Vec<f64>; 3],
    pub memory: [Vec<IdleMemory>; 3],
    /// How the shared and the sandboxed gateways' browsers ran.
    pub launches: [Launch; 2],
    /// The uid this benchmark (and so direct Chromium and the shared gateway) ran as.
    pub bench_uid: u32,
}

/// The order in which the targets go in turn `k`: each goes first, second and third equally
/// often over every three turns.
pub(crate) fn turn_order(k: usize) -> [usize; 3] {
    [k % 3, (k + 1) % 3, (k + 2) % 3]
}

/// Measures the section, or says why it cannot be measured with this ingot or user.
pub(crate) async fn measure(
    chromium: &Path,
    ingot: &Path,
    root: &TempRoot,
    pool: bool,
    plan: SandboxPlan,
) -> Result<Sandbox> {
    if !gateway::supports_flag(ingot, SHARED_FLAG)? {
        return Ok(Sandbox::Skipped(format!(
            "this ingot has no {SHARED_FLAG} (built before the sandbox)"
        )));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Ok(Sandbox::Skipped(
            "the sandboxed gateway switches uids, so it must run as root: run the benchmark as root"
                .to_owned(),
        ));
    }
    progress!("sandbox: cold gateways (--pool-size 0), sandboxed and {SHARED_FLAG}");
    let cold_opts = GatewayOptions {
        pool_size: pool.then_some(0),
        max_sessions: Some(4),
    };
    let shared = Gateway::start_with(ingot, root, cold_opts, &[SHARED_FLAG.to_owned()]).await?;
    let sandboxed = Gateway::start(ingot, root, cold_opts).await?;
    let gateways = [&shared, &sandboxed];
    let launches = [launch_of(&shared).await?, launch_of(&sandboxed).await?];
    describe_launches(&launches, euid);
    let cold = cold_starts(chromium, root, gateways, plan.cold).await?;
    let (rtt_p50_us, rtt_p99_us) = round_trips(chromium, root, gateways, &plan).await?;
    let memory = idle_memory(chromium, root, gateways, plan.memory).await?;
    drop(sandboxed);
    drop(shared);
    let warm = if pool {
        Some(warm_starts(ingot, root, plan.warm).await?)
    } else {
        progress!("sandbox: this ingot has no --pool-size; warm creates skipped");
        None
    };
    Ok(Sandbox::Measured(Box::new(SandboxResults {
        plan,
        cold,
        warm,
        rtt_p50_us,
        rtt_p99_us,
        memory,
        launches,
        bench_uid: euid,
    })))
}

/// The browser process of a gateway's only session: the one of its processes with
/// `--remote-debugging-pipe` and no `--type=` (helpers have one).
fn session_browser(gw: &Gateway) -> Result<i32> {
    let found: Vec<i32> = gw
        .browser_processes()
        .into_iter()
        .filter(|&p| {
            procfs::cmdline_mentions(p, "--remote-debugging-pipe")
                && !procfs::cmdline_mentions(p, "--type=")
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        _ => bail!("expected one browser process under ingot, found {found:?}"),
    }
}

/// Creates a session, reads how its browser runs, and releases it.
async fn launch_of(gw: &Gateway) -> Result<Launch> {
    let (_, session) = sessions::ingot_start(gw).await?;
    let launch = session_browser(gw).map(|pid| Launch {
        uid: procfs::uid(pid),
        no_sandbox: procfs::cmdline_mentions(pid, "--no-sandbox"),
    });
    sessions::release_and_settle(gw, &session).await?;
    launch
}

/// Says how each gateway's browsers run, and warns when the sandboxed one does not look
/// sandboxed (its figures would then not be the sandbox's).
fn describe_launches(launches: &[Launch; 2], bench_uid: u32) {
    for (launch, name) in launches.iter().zip(["shared", "sandboxed"]) {
        progress!(
            "  {name}: browser uid {}, {}",
            launch.uid.map_or("?".to_owned(), |u| u.to_string()),
            if launch.no_sandbox {
                "--no-sandbox"
            } else {
                "Chromium's sandbox on"
            }
        );
    }
    let sandboxed = &launches[1];
    if sandboxed.no_sandbox || sandboxed.uid == Some(bench_uid) {
        progress!(
            "  warning: the default gateway's browser runs as uid {:?} with{} --no-sandbox: not the full sandbox",
            sandboxed.uid,
            if sandboxed.no_sandbox { "" } else { "out" }
        );
    }
}

/// `n` cold creates per target, the targets taking turns ([`turn_order`]), each browser torn
/// down before the next start.
async fn cold_starts(
    chromium: &Path,
    root: &TempRoot,
    gateways: [&Gateway; 2],
    n: usize,
) -> Result<[Vec<Start>; 3]> {
    progress!("sandbox: {n} cold creates per target, taking turns");
    let mut starts: [Vec<Start>; 3] = Default::default();
    for k in 0..n {
        for t in turn_order(k) {
            let took = if t == DIRECT {
                let (took, browser) = sessions::direct_start(chromium, root).await?;
                drop(browser);
                took
            } else {
                let gw = gateways[t - 1];
                let (took, session) = sessions::ingot_start(gw).await?;
                sessions::release_and_settle(gw, &session).await?;
                took
            };
            starts[t].push(took);
        }
    }
    for (t, s) in starts.iter().enumerate() {
        progress!("  {:9} p50 {:.1} ms", TARGETS[t], p50_ms(s));
    }
    Ok(starts)
}

fn p50_ms(starts: &[Start]) -> f64 {
    let total: Vec<f64> = starts.iter().map(|s| s.total_ms).collect();
    percentile(&total, 50.0).unwrap_or(f64::NAN)
}

/// Round trips on one page per target, in blocks that take turns; each round's p50 and p99.
async fn round_trips(
    chromium: &Path,
    root: &TempRoot,
    gateways: [&Gateway; 2],
    plan: &SandboxPlan,
) -> Result<([Vec<f64>; 3], [Vec<f64>; 3])> {
    progress!(
        "sandbox: {} rounds of {} round trips per target",
        plan.rtt_rounds,
        plan.rtt_runs
    );
    let mut browser = crate::chromium::DirectChromium::spawn(chromium, root.fresh_dir("direct")?)?;
    let url = browser.devtools_url(Duration::from_secs(60)).await?;
    let shared = gateways[0].create("{}").await?;
    let sandboxed = gateways[1].create("{}").await?;
    let outcome = async {
        let mut pages = [
            Page::open(&url).await?,
            Page::open(&shared.websocket_url).await?,
            Page::open(&sandboxed.websocket_url).await?,
        ];
        let (mut p50, mut p99): ([Vec<f64>; 3], [Vec<f64>; 3]) = Default::default();
        let blocks = plan.rtt_runs.div_ceil(plan.rtt_block.max(1));
        for round in 0..plan.rtt_rounds {
            let mut rtt: [Vec<f64>; 3] = Default::default();
            for b in 0..blocks {
                for t in turn_order(round + b) {
                    pages[t].round_trips(plan.rtt_block, &mut rtt[t]).await?;
                }
            }
            for t in 0..3 {
                p50[t].push(percentile(&rtt[t], 50.0).context("no round trips")?);
                p99[t].push(percentile(&rtt[t], 99.0).context("no round trips")?);
            }
            progress!(
                "  round {}/{}: p50 {:.0} / {:.0} / {:.0} µs (direct / shared / sandboxed)",
                round + 1,
                plan.rtt_rounds,
                p50[0][round],
                p50[1][round],
                p50[2][round]
            );
        }
        for page in pages {
            page.close().await;
        }
        Ok::<_, anyhow::Error>((p50, p99))
    }
    .await;
    gateways[0].release(&shared.id).await?;
    gateways[1].release(&sandboxed.id).await?;
    for gw in gateways {
        gw.wait_no_browsers(Duration::from_secs(60)).await?;
    }
    drop(browser);
    outcome
}

/// `n` times: one idle browser per target at once (a direct launch, a session on each
/// gateway), each answered one CDP command, read after [`SETTLE`], then all torn down.
async fn idle_memory(
    chromium: &Path,
    root: &TempRoot,
    gateways: [&Gateway; 2],
    n: usize,
) -> Result<[Vec<IdleMemory>; 3]> {
    progress!("sandbox: memory of {n} idle sessions per target");
    let mut memory: [Vec<IdleMemory>; 3] = Default::default();
    for _ in 0..n {
        let before = [gateways[0].rss_kib()?, gateways[1].rss_kib()?];
        let (_, browser) = sessions::direct_start(chromium, root).await?;
        let (_, shared) = sessions::ingot_start(gateways[0]).await?;
        let (_, sandboxed) = sessions::ingot_start(gateways[1]).await?;
        tokio::time::sleep(SETTLE).await;
        memory[DIRECT].push(IdleMemory {
            browser: procfs::footprint(&browser.processes()),
            gateway_growth_kib: None,
        });
        for (i, gw) in gateways.iter().enumerate() {
            memory[i + 1].push(IdleMemory {
                browser: procfs::footprint(&gw.browser_processes()),
                gateway_growth_kib: Some(gw.rss_kib()? as i64 - before[i] as i64),
            });
        }
        drop(browser);
        sessions::release_and_settle(gateways[0], &shared).await?;
        sessions::release_and_settle(gateways[1], &sandboxed).await?;
    }
    for (t, m) in memory.iter().enumerate() {
        let pss: Vec<f64> = m
            .iter()
            .map(|m| m.browser.pss_kib as f64 / 1024.0)
            .collect();
        progress!(
            "  {:9} PSS p50 {:.0} MiB",
            TARGETS[t],
            percentile(&pss, 50.0).unwrap_or(f64::NAN)
        );
    }
    Ok(memory)
}

/// `n` warm creates per gateway, each gateway with a pool of [`WARM_POOL`]: both pools full
/// and idle for [`WARM_SETTLE`] before each create, the gateways taking turns at going first.
async fn warm_starts(ingot: &Path, root: &TempRoot, n: usize) -> Result<[Vec<Start>; 2]> {
    progress!("sandbox: {n} warm creates per gateway, --pool-size {WARM_POOL}");
    let opts = GatewayOptions {
        pool_size: Some(WARM_POOL),
        max_sessions: Some(4),
    };
    let shared = Gateway::start_with(ingot, root, opts, &[SHARED_FLAG.to_owned()]).await?;
    let sandboxed = Gateway::start(ingot, root, opts).await?;
    let gateways = [&shared, &sandboxed];
    let refill = Duration::from_secs(60);
    let mut starts: [Vec<Start>; 2] = Default::default();
    for k in 0..n {
        let order = if k.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        for g in order {
            for gw in gateways {
                gw.wait_pool_full(WARM_POOL, refill).await?;
            }
            tokio::time::sleep(WARM_SETTLE).await;
            let (took, session) = sessions::ingot_start(gateways[g]).await?;
            gateways[g].release(&session.id).await?;
            starts[g].push(took);
        }
    }
    for (g, s) in starts.iter().enumerate() {
        progress!("  {:9} p50 {:.1} ms", TARGETS[g + 1], p50_ms(s));
    }
    Ok(starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_goes_first_second_and_third_equally_often() {
        let mut places = [[0usize; 3]; 3];
        for k in 0..6 {
            let order = turn_order(k);
            let mut seen = order.to_vec();
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2], "each target once per turn");
            for (place, t) in order.iter().enumerate() {
                places[*t][place] += 1;
            }
        }
        assert_eq!(places, [[2; 3]; 3]);
    }
}
