//! `ingot-bench`: measures direct Chromium and the same work through ingot, interleaved in
//! one run, and writes the figures with their ratios to `BENCHMARKS.md`.
//!
//! This file owns the command line, the plan (how many samples of what), the order of the
//! phases and progress output. The pieces:
//!
//! * [`cdp`]: the CDP client both targets are driven with;
//! * [`chromium`]: direct Chromium and the temporary directory, torn down on drop;
//! * [`gateway`]: the ingot under test and HTTP to it, stopped with SIGTERM on drop;
//! * [`percommand`]: round trips, large replies, pipelining, screenshots, reconnects;
//! * [`sessions`]: create to first reply, concurrent sessions, idle client memory;
//! * [`cluster`]: two nodes on one PostgreSQL ([`postgres`]): forwarding and failover, a
//!   section of its own (`--only cluster` runs just it) that prints its own progress lines;
//! * [`viewer`]: the live viewer against direct Chromium's screencast (frame latency, frames
//!   per second, the gateway's cost per viewer, input latency), a section of its own too
//!   (`--only viewer`);
//! * [`procfs`]: processes and memory from `/proc`;
//! * [`report`]: the table and the file;
//! * [`stats`]: percentiles and number formatting.
//!
//! Progress goes to stderr, the tables to stdout.
//!
//! A workspace member of its own (`bench/`), so that its dependencies stay out of the gateway
//! crate. From the repository root, with the release gateway it runs next to it in the shared
//! target directory: `cargo build --release --bin ingot && cargo run --release -p ingot-bench`.

mod cdp;
mod chromium;
mod gateway;
mod percommand;
mod postgres;
mod procfs;
mod report;
mod sessions;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;

use chromium::{DirectChromium, TempRoot};
use gateway::{Gateway, GatewayOptions};
use percommand::{Page, RoundPlan, Samples};
use report::{Machine, Results, Warm};
use sessions::Start;

/// When the run started, for progress lines.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Prints one progress line to stderr, stamped with the time since the start.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[{:6.1}s] {}",
            $crate::STARTED.get().map_or(0.0, |s| s.elapsed().as_secs_f64()),
            format!($($arg)*)
        )
    };
}

// After `progress!`, which they use: a `macro_rules!` macro is visible only below its definition.
mod cluster;
mod viewer;

/// Benchmarks ingot against direct Chromium and writes BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "ingot-bench", version)]
struct Args {
    /// Few samples of everything: a smoke test of about a minute, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Where to write the Markdown report (its "## Findings" section is kept).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// The ingot executable; by default the `ingot` next to this program.
    #[arg(long)]
    ingot: Option<PathBuf>,
    /// The ingot commit to record in the report; by default `git rev-parse --short HEAD` in
    /// the current directory (give it when `--ingot` was built elsewhere).
    #[arg(long)]
    commit: Option<String>,
    /// The Chromium executable for the direct baseline (ingot finds its own).
    #[arg(long, default_value = "/usr/lib/chromium/chromium")]
    chromium: PathBuf,
    /// Run only this section and update only its part of the report (`## Cluster`,
    /// `## Viewer`), keeping the rest of the file. A full run (the default) runs every section.
    #[arg(long, value_enum)]
    only: Option<Section>,
}

/// A section that can run on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// Two nodes on one PostgreSQL: CDP through a forwarding node, create through a node
    /// without a free slot, and the time until a SIGKILLed node's sessions read `failed`.
    Cluster,
    /// The live viewer against direct Chromium's own screencast: frame latency, frames per
    /// second with 1 and 10 viewers, the gateway's CPU and memory per viewer, input latency.
    Viewer,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Cluster => "cluster",
            Section::Viewer => "viewer",
        }
    }
}

/// How many samples of what.
#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    round: RoundPlan,
    cold_starts: usize,
    warm_starts: usize,
    bursts: Vec<usize>,
    idle_clients: usize,
    cluster: cluster::ClusterPlan,
    viewer: viewer::ViewerPlan,
}

/// Every cluster node's `--node-lease-ms`: short, so that failover is quick to measure.
const CLUSTER_LEASE_MS: u64 = 3_000;

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 2,
                round: RoundPlan {
                    rtt_runs: 300,
                    rtt_block: 50,
                    reps_4mib: 2,
                    reps_60mib: 1,
                    pipelined_reps: 3,
                    screenshots: 2,
                    reconnects: 3,
                },
                cold_starts: 3,
                warm_starts: 4,
                bursts: vec![10],
                idle_clients: 200,
                cluster: cluster::ClusterPlan {
                    rounds: 2,
                    rtt_runs: 300,
                    rtt_block: 50,
                    reconnects: 2,
                    creates: 3,
                    kills: 2,
                    lease_ms: CLUSTER_LEASE_MS,
                },
                viewer: viewer::ViewerPlan {
                    rounds: 1,
                    changes: 16,
                    block: 8,
                    clicks: 10,
                    window: Duration::from_secs(2),
                    viewers: 10,
                },
            }
        } else {
            Plan {
                rounds: 5,
                round: RoundPlan {
                    rtt_runs: 2000,
                    rtt_block: 100,
                    reps_4mib: 3,
                    reps_60mib: 2,
                    pipelined_reps: 10,
                    screenshots: 2,
                    reconnects: 5,
                },
                cold_starts: 20,
                warm_starts: 20,
                bursts: vec![10, 20, 40],
                idle_clients: 1000,
                cluster: cluster::ClusterPlan {
                    rounds: 5,
                    rtt_runs: 2000,
                    rtt_block: 100,
                    reconnects: 5,
                    creates: 20,
                    kills: 5,
                    lease_ms: CLUSTER_LEASE_MS,
                },
                viewer: viewer::ViewerPlan {
                    rounds: 3,
                    changes: 60,
                    block: 10,
                    clicks: 30,
                    window: Duration::from_secs(5),
                    viewers: 10,
                },
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    STARTED.get_or_init(Instant::now);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ingot-bench: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        // Dropping `run` on a signal drops its guards, which stop every browser and gateway.
        tokio::select! {
            r = run(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; cleaning up")),
            _ = sigterm.recv() => Err(anyhow!("terminated; cleaning up")),
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingot-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The whole benchmark: checks its inputs, measures, then prints the table and writes the
/// report.
async fn run(args: &Args) -> Result<()> {
    let plan = Plan::new(args.quick);
    raise_fd_limit(plan.idle_clients as u64 * 3 + 1024)?;
    let ingot = check_executables(args)?;
    let pool = gateway::supports_pool(&ingot)?;
    let machine = Machine::detect(chromium::version(&args.chromium), args.commit.clone());
    announce(args, &ingot, &machine, pool);
    match args.only {
        Some(Section::Cluster) => {
            let root = TempRoot::create()?;
            let cluster = cluster::measure(&args.chromium, &ingot, &root, plan.cluster).await?;
            drop(root);
            return publish_cluster(args, &cluster, machine);
        }
        Some(Section::Viewer) => {
            let root = TempRoot::create()?;
            let viewer = viewer::measure(&args.chromium, &ingot, &root, pool, plan.viewer).await?;
            drop(root);
            return publish_viewer(args, &viewer, machine);
        }
        None => {}
    }
    let results = measure(args, &plan, &ingot, pool).await?;
    publish(args, &results, machine)
}

/// The ingot executable to benchmark (`--ingot`, or the `ingot` next to this program), once
/// it and the Chromium executable are known to exist.
fn check_executables(args: &Args) -> Result<PathBuf> {
    let ingot = match &args.ingot {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("ingot"),
    };
    if !ingot.is_file() {
        bail!(
            "no ingot at {}: build it (`cargo build --release --bin ingot`) or pass --ingot",
            ingot.display()
        );
    }
    if !args.chromium.is_file() {
        bail!(
            "no Chromium at {}: pass --chromium",
            args.chromium.display()
        );
    }
    Ok(ingot)
}

/// Says what is about to run, and warns when Chromiums of others share the machine.
fn announce(args: &Args, ingot: &Path, machine: &Machine, pool: bool) {
    progress!(
        "ingot-bench ({}{}): ingot {}, {}, warm pool {}",
        if args.quick { "quick" } else { "full" },
        args.only
            .map(|s| format!(", {} section only", s.name()))
            .unwrap_or_default(),
        ingot.display(),
        machine.chromium,
        if pool {
            "supported"
        } else {
            "not supported (no --pool-size): its row is skipped"
        }
    );
    if machine.foreign_chromium > 0 {
        progress!(
            "note: {} Chromium processes of others are running (load {}); figures may be noisy",
            machine.foreign_chromium,
            machine.load_start
        );
    }
}

/// Every phase of the plan, in order, against direct Chromium and one ingot (the warm pool
/// gets a second one), then the cluster and viewer sections with gateways of their own;
/// stops ingot and removes the temporary directory before returning.
async fn measure(args: &Args, plan: &Plan, ingot: &Path, pool: bool) -> Result<Results> {
    let root = TempRoot::create()?;
    let gw = start_gateway(ingot, &root, plan, pool).await?;
    let (direct, ingot_samples, direct_viewport, ingot_viewport) =
        per_command(&args.chromium, &root, &gw, plan).await?;
    let (cold_direct, cold_ingot) =
        cold_starts(&args.chromium, &root, &gw, plan.cold_starts).await?;
    let warm = if pool {
        warm_starts(ingot, &root, plan.warm_starts).await?
    } else {
        Warm::Unsupported
    };
    let bursts = concurrent_bursts(&args.chromium, &root, &gw, &plan.bursts).await?;
    let idle = idle_clients(&args.chromium, &root, &gw, plan.idle_clients).await?;
    progress!("stopping ingot");
    drop(gw);
    let cluster = cluster::measure(&args.chromium, ingot, &root, plan.cluster).await?;
    let viewer = viewer::measure(&args.chromium, ingot, &root, pool, plan.viewer).await?;
    drop(root);
    Ok(Results {
        quick: args.quick,
        rounds: plan.rounds,
        rtt_runs: plan.round.rtt_runs,
        direct,
        ingot: ingot_samples,
        direct_viewport,
        ingot_viewport,
        cold_direct,
        cold_ingot,
        warm,
        bursts,
        idle,
        cluster,
        viewer,
    })
}

/// Starts the ingot under test: without a warm pool (when it has one to turn off), and with
/// room for the largest burst.
async fn start_gateway(ingot: &Path, root: &TempRoot, plan: &Plan, pool: bool) -> Result<Gateway> {
    let max_burst = plan.bursts.iter().copied().max().unwrap_or(1);
    let gw = Gateway::start(
        ingot,
        root,
        GatewayOptions {
            pool_size: pool.then_some(0),
            max_sessions: max_burst.max(4),
        },
    )
    .await?;
    progress!("ingot up (pid {})", gw.pid());
    Ok(gw)
}

/// One burst of concurrent starts per size, direct and ingot, alternating which goes first;
/// returns (sessions, direct, ingot) per size.
async fn concurrent_bursts(
    chromium: &Path,
    root: &TempRoot,
    gw: &Gateway,
    sizes: &[usize],
) -> Result<Vec<(usize, sessions::Burst, sessions::Burst)>> {
    let mut bursts = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let (d, g) = if i.is_multiple_of(2) {
            let d = direct_burst(chromium, root, n).await?;
            (d, ingot_burst(gw, n).await?)
        } else {
            let g = ingot_burst(gw, n).await?;
            (direct_burst(chromium, root, n).await?, g)
        };
        bursts.push((n, d, g));
    }
    Ok(bursts)
}

/// `n` idle client WebSockets on direct Chromium, then on one ingot session; returns
/// (direct, ingot).
async fn idle_clients(
    chromium: &Path,
    root: &TempRoot,
    gw: &Gateway,
    n: usize,
) -> Result<(sessions::IdleClients, sessions::IdleClients)> {
    progress!("idle clients: {n} WebSockets on direct Chromium");
    let idle_direct = sessions::direct_idle_clients(chromium, root, n).await?;
    progress!(
        "  Chromium grew {:.1} KiB per client",
        idle_direct.per_client_kib()
    );
    progress!("idle clients: {n} WebSockets on one ingot session");
    let idle_ingot = sessions::ingot_idle_clients(gw, n).await?;
    progress!(
        "  ingot grew {:.1} KiB per client",
        idle_ingot.per_client_kib()
    );
    Ok((idle_direct, idle_ingot))
}

/// Notes the load at the end, prints the tables to stdout, writes the report file and says how
/// many targets were met.
fn publish(args: &Args, results: &Results, mut machine: Machine) -> Result<()> {
    machine.finish();
    let took = STARTED.get().map_or(Duration::ZERO, |s| s.elapsed());
    println!("{}", report::table(results));
    println!("{}", report::cluster_tables(&results.cluster));
    println!("{}", report::viewer_table(&results.viewer));
    report::write(&args.out, results, &machine, took)?;
    let (met, measured) = report::targets_met(results);
    progress!(
        "wrote {} ({met} of {measured} targets met); total {:.0} s",
        args.out.display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// After `--only cluster`: notes the load at the end, prints the section's tables to stdout
/// and puts the section into the report file, leaving the rest of it as it was.
fn publish_cluster(args: &Args, cluster: &cluster::Cluster, mut machine: Machine) -> Result<()> {
    machine.finish();
    let took = STARTED.get().map_or(Duration::ZERO, |s| s.elapsed());
    println!("{}", report::cluster_tables(cluster));
    report::write_cluster(&args.out, cluster, &machine, took, args.quick)?;
    let (met, measured) = report::cluster_targets_met(cluster);
    progress!(
        "updated the cluster section of {} ({met} of {measured} targets met); total {:.0} s",
        args.out.display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// After `--only viewer`: notes the load at the end, prints the section's table to stdout and
/// puts the section into the report file, leaving the rest of it as it was.
fn publish_viewer(args: &Args, viewer: &viewer::Viewer, mut machine: Machine) -> Result<()> {
    machine.finish();
    let took = STARTED.get().map_or(Duration::ZERO, |s| s.elapsed());
    println!("{}", report::viewer_table(viewer));
    report::write_viewer(&args.out, viewer, &machine, took, args.quick)?;
    let (met, measured) = report::viewer_targets_met(viewer);
    progress!(
        "updated the viewer section of {} ({met} of {measured} targets met); total {:.0} s",
        args.out.display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// Per-command rounds on one page per target, alternating targets and their order.
async fn per_command(
    chromium: &Path,
    root: &TempRoot,
    gw: &Gateway,
    plan: &Plan,
) -> Result<(Samples, Samples, String, String)> {
    let dir = root.fresh_dir("direct")?;
    let mut browser = DirectChromium::spawn(chromium, dir)?;
    let url = browser.devtools_url(Duration::from_secs(60)).await?;
    let session = gw.create("{}").await?;
    let outcome = async {
        let mut pages = [Page::open(&url).await?, Page::open(&session.websocket_url).await?];
        let mut samples = [Samples::default(), Samples::default()];
        const NAMES: [&str; 2] = ["direct", "ingot"];
        for round in 0..plan.rounds {
            let order = if round.is_multiple_of(2) { [0, 1] } else { [1, 0] };
            round_trips(&mut pages, &mut samples, order, gw.pid(), &plan.round).await?;
            for t in order {
                let started = Instant::now();
                pages[t].round(&plan.round, &mut samples[t]).await?;
                let s = &samples[t];
                progress!(
                    "round {}/{} {:6}: rtt p50 {:.0} µs, 4 MiB {:.1} MB/s, 60 MiB {:.1} MB/s, {} in flight {:.1} ms, screenshot {:.0} ms ({:.1} s)",
                    round + 1,
                    plan.rounds,
                    NAMES[t],
                    s.rtt_p50_us.last().copied().unwrap_or(f64::NAN),
                    s.reply_4mib_mbps.last().copied().unwrap_or(f64::NAN),
                    s.reply_60mib_mbps.last().copied().unwrap_or(f64::NAN),
                    percommand::PIPELINED,
                    s.pipelined_ms.last().copied().unwrap_or(f64::NAN),
                    s.screenshot_ms.last().copied().unwrap_or(f64::NAN),
                    started.elapsed().as_secs_f64(),
                );
            }
        }
        let [direct_page, ingot_page] = pages;
        let viewports = (direct_page.viewport.clone(), ingot_page.viewport.clone());
        direct_page.close().await;
        ingot_page.close().await;
        let [direct, ingot] = samples;
        Ok::<_, anyhow::Error>((direct, ingot, viewports.0, viewports.1))
    }
    .await;
    sessions::release_and_settle(gw, &session).await?;
    drop(browser);
    outcome
}

/// One round of round trips on both pages, in blocks that alternate between the targets so
/// that noise on the machine hits both alike; records each target's p50 and p99, and the
/// gateway's CPU time per round trip.
async fn round_trips(
    pages: &mut [Page; 2],
    samples: &mut [Samples; 2],
    order: [usize; 2],
    gateway: i32,
    plan: &RoundPlan,
) -> Result<()> {
    let mut rtt = [Vec::new(), Vec::new()];
    let mut gateway_cpu_ns = 0;
    let blocks = plan.rtt_runs.div_ceil(plan.rtt_block);
    for _ in 0..blocks {
        for t in order {
            let before = procfs::cpu_ns(gateway);
            pages[t].round_trips(plan.rtt_block, &mut rtt[t]).await?;
            if t == 1 {
                let after = procfs::cpu_ns(gateway);
                let (Some(before), Some(after)) = (before, after) else {
                    bail!("cannot read ingot's CPU time");
                };
                gateway_cpu_ns += after.saturating_sub(before);
            }
        }
    }
    for (t, rtt) in rtt.iter().enumerate() {
        let p = |q| stats::percentile(rtt, q).context("no round trips");
        samples[t].rtt_p50_us.push(p(50.0)?);
        samples[t].rtt_p99_us.push(p(99.0)?);
    }
    samples[1]
        .cpu_per_rtt_us
        .push(gateway_cpu_ns as f64 / 1e3 / rtt[1].len() as f64);
    Ok(())
}

/// Cold create to first reply, alternating direct and ingot.
async fn cold_starts(
    chromium: &Path,
    root: &TempRoot,
    gw: &Gateway,
    n: usize,
) -> Result<(Vec<Start>, Vec<Start>)> {
    progress!("cold starts: {n} direct, {n} through ingot, alternating");
    let (mut direct, mut ingot) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for leg in if i.is_multiple_of(2) { [0, 1] } else { [1, 0] } {
            if leg == 0 {
                let (took, browser) = sessions::direct_start(chromium, root).await?;
                drop(browser);
                direct.push(took);
            } else {
                let (took, session) = sessions::ingot_start(gw).await?;
                sessions::release_and_settle(gw, &session).await?;
                ingot.push(took);
            }
        }
    }
    progress!("  direct {}; ingot {}", describe(&direct), describe(&ingot));
    Ok((direct, ingot))
}

/// How long the warm pool idles, once full, before a "settled" warm create (the cluster
/// section's creates wait as long).
const WARM_SETTLE: Duration = Duration::from_secs(1);

/// Warm-pool creates on a second ingot with `--pool-size 2`, waiting for refills.
async fn warm_starts(ingot: &Path, root: &TempRoot, n: usize) -> Result<Warm> {
    const POOL: usize = 2;
    progress!("warm starts: 2×{n} creates on an ingot with --pool-size {POOL}");
    let gw = Gateway::start(
        ingot,
        root,
        GatewayOptions {
            pool_size: Some(POOL),
            max_sessions: 4,
        },
    )
    .await?;
    let refill = Duration::from_secs(60);
    let mut gauge = gw.wait_pool_full(POOL, refill).await?;
    let (mut settled, mut fresh) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Alternate: a create once the pool has idled a moment, and one the moment the pool is
    // full again, while the browser launched last may still be finishing its start-up.
    for i in 0..2 * n {
        let settle = i.is_multiple_of(2);
        if settle {
            tokio::time::sleep(WARM_SETTLE).await;
        }
        let (took, session) = sessions::ingot_start(&gw).await?;
        if settle {
            settled.push(took);
        } else {
            fresh.push(took);
        }
        gw.release(&session.id).await?;
        gauge = gw.wait_pool_full(POOL, refill).await?;
    }
    progress!(
        "  settled {}; right after a refill {} (refill awaited {})",
        describe(&settled),
        describe(&fresh),
        if gauge {
            "through the pool gauge"
        } else {
            "with a fixed pause"
        }
    );
    Ok(Warm::Measured {
        settled,
        fresh,
        gauge,
    })
}

async fn direct_burst(chromium: &Path, root: &TempRoot, n: usize) -> Result<sessions::Burst> {
    progress!("{n} concurrent direct Chromiums");
    let b = sessions::direct_burst(chromium, root, n).await?;
    progress!(
        "  p50 {:.0} ms, p99 {:.0} ms, {:.0} MiB PSS per browser",
        stats::percentile(&b.start_ms, 50.0).unwrap_or(f64::NAN),
        stats::percentile(&b.start_ms, 99.0).unwrap_or(f64::NAN),
        b.memory.pss_kib as f64 / 1024.0 / n as f64
    );
    Ok(b)
}

async fn ingot_burst(gw: &Gateway, n: usize) -> Result<sessions::Burst> {
    progress!("{n} concurrent ingot sessions");
    let b = sessions::ingot_burst(gw, n).await?;
    progress!(
        "  p50 {:.0} ms, p99 {:.0} ms, {:.0} MiB PSS per session, ingot RSS {:.1} MiB",
        stats::percentile(&b.start_ms, 50.0).unwrap_or(f64::NAN),
        stats::percentile(&b.start_ms, 99.0).unwrap_or(f64::NAN),
        b.memory.pss_kib as f64 / 1024.0 / n as f64,
        b.gateway_rss_kib.unwrap_or(0) as f64 / 1024.0
    );
    Ok(b)
}

/// p50 and p99 of start times, and the p50 of their first part, for progress lines.
fn describe(starts: &[Start]) -> String {
    let total: Vec<f64> = starts.iter().map(|s| s.total_ms).collect();
    let address: Vec<f64> = starts.iter().map(|s| s.address_ms).collect();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms (address known at p50 {:.1} ms)",
        stats::percentile(&total, 50.0).unwrap_or(f64::NAN),
        stats::percentile(&total, 99.0).unwrap_or(f64::NAN),
        stats::percentile(&address, 50.0).unwrap_or(f64::NAN),
    )
}

/// Raises this process's open-file limit (ingot, started later, inherits it) to at least
/// `want`, within the hard limit.
fn raise_fd_limit(want: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        if limit.rlim_cur >= want {
            return Ok(());
        }
        limit.rlim_cur = limit.rlim_max.min(want.max(limit.rlim_cur));
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    if limit.rlim_cur < want {
        bail!(
            "the open-file limit is {} (hard); {want} are needed",
            limit.rlim_max
        );
    }
    Ok(())
}
