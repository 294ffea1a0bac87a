//! `ingot-bench`: measures direct Chromium and the same work through ingot, interleaved in
//! one run, and writes the figures with their ratios to `BENCHMARKS.md`.
//!
//! This file owns the command line, the plan (how many samples of what), the order of the
//! phases and progress output. The pieces:
//!
//! * [`cdp`]: the CDP client both targets are driven with;
//! * [`chromium`]: direct Chromium and the temporary directory, torn down on drop;
//! * [`gateway`]: the ingot under test and HTTP to it, stopped with SIGTERM on drop;
//! * [`percommand`]: round trips, large replies, pipelining, screenshots, reconnects (with
//!   the CPU time and context switches of the gateway, the browsers and this client around
//!   them);
//! * [`sessions`]: create to first reply, concurrent sessions, idle client memory;
//! * [`cluster`]: two nodes on one PostgreSQL ([`postgres`]): forwarding and failover, a
//!   section of its own (`--only cluster` runs just it) that prints its own progress lines;
//! * [`viewer`]: the live viewer against direct Chromium's screencast (frame latency, frames
//!   per second, the gateway's cost per viewer, input latency), a section of its own too
//!   (`--only viewer`);
//! * [`sandbox`]: the sandbox's cost, ingot's sandboxed default against the same gateway
//!   with `--insecure-shared-browser-user` and direct Chromium, a section of its own too
//!   (`--only sandbox`);
//! * [`engines`]: the headless shell against the full Chromium (memory per session, cold,
//!   warm and concurrent creates, round trips, headful sessions on `Xvfb`, sessions that fit
//!   with each engine's derived session limit), a section of its own too (`--only engines`);
//! * [`procfs`]: processes, memory, CPU time and context switches from `/proc`;
//! * [`report`]: the table and the file;
//! * [`stats`]: percentiles and number formatting.
//!
//! Progress goes to stderr, the tables to stdout. `--only core` measures the per-command
//! figures and cold and warm starts alone and prints their table without touching the file.
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

use chromium::{Build, DirectChromium, Engine, TempRoot};
use gateway::{Gateway, GatewayOptions};
use percommand::{Page, RoundPlan, Samples};
use procfs::Usage;
use report::{Core, Machine, Results, Warm};
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
mod engines;
mod sandbox;
mod viewer;

/// Benchmarks ingot against direct Chromium and writes BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "ingot-bench", version)]
struct Args {
    /// Few samples of everything: a smoke test of about a minute, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Where to write the Markdown report (its "## Findings" section is kept); by default
    /// `BENCHMARKS.md`. `--only core` writes no file unless this is given.
    #[arg(long)]
    out: Option<PathBuf>,
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
    /// The headless shell, for the engines section (its gateways are given both executables,
    /// and its direct launches use each).
    #[arg(long, default_value = "/usr/lib/chromium/chromium-headless-shell")]
    chromium_shell: PathBuf,
    /// Run only this section and update only its part of the report (`## Cluster`,
    /// `## Viewer`, `## Sandbox`, `## Engines`), keeping the rest of the file; `core` prints its table and writes a file
    /// of its own only with `--out`. A full run (the default) runs every section.
    #[arg(long, value_enum)]
    only: Option<Section>,
}

/// Where the report goes when `--out` is not given.
const DEFAULT_OUT: &str = "BENCHMARKS.md";

impl Args {
    /// The report file: `--out`, else [`DEFAULT_OUT`].
    fn out(&self) -> &Path {
        self.out.as_deref().unwrap_or(Path::new(DEFAULT_OUT))
    }
}

/// A section that can run on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// For quick iteration: the per-command rounds (round trip, reconnect, large replies,
    /// pipelining, screenshots) and cold and warm starts against one ingot and direct
    /// Chromium; prints the table, and writes it to a file only when `--out` is given.
    Core,
    /// Bursts of concurrent creates against as many direct launches, every size for the
    /// plan's rounds; prints the rows, writes no file.
    Bursts,
    /// Two nodes on one PostgreSQL: CDP through a forwarding node, create through a node
    /// without a free slot, and the time until a SIGKILLed node's sessions read `failed`.
    Cluster,
    /// The live viewer against direct Chromium's own screencast: frame latency, frames per
    /// second with 1 and 10 viewers, the gateway's CPU and memory per viewer, input latency.
    Viewer,
    /// The sandbox's cost: ingot's default (a uid per browser, Chromium's sandbox, Landlock)
    /// against the same ingot with `--insecure-shared-browser-user` and direct Chromium:
    /// cold and warm create, round trip, memory per idle session. Needs root.
    Sandbox,
    /// The headless shell against the full Chromium, through ingot and direct: memory per
    /// idle session at 10/20/40, cold, warm and concurrent creates, round trip, reconnect,
    /// headful sessions, and the sessions that fit with each engine's derived limit.
    Engines,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Core => "core",
            Section::Bursts => "bursts",
            Section::Cluster => "cluster",
            Section::Viewer => "viewer",
            Section::Sandbox => "sandbox",
            Section::Engines => "engines",
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
    /// Rounds of every burst size, direct and ingot taking turns at going first.
    burst_rounds: usize,
    idle_clients: usize,
    cluster: cluster::ClusterPlan,
    viewer: viewer::ViewerPlan,
    sandbox: sandbox::SandboxPlan,
    engines: engines::EnginesPlan,
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
                burst_rounds: 1,
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
                sandbox: sandbox::SandboxPlan {
                    cold: 3,
                    warm: 3,
                    rtt_rounds: 2,
                    rtt_runs: 300,
                    rtt_block: 50,
                    memory: 2,
                },
                engines: engines::EnginesPlan {
                    cold: 3,
                    bursts: vec![10],
                    burst_rounds: 1,
                    warm: 3,
                    rtt_rounds: 2,
                    rtt_runs: 300,
                    rtt_block: 50,
                    reconnects: 3,
                    headful_memory: 1,
                    capacity_batch: 10,
                    capacity_check_at: 10,
                    capacity_cap: 10,
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
                burst_rounds: 3,
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
                sandbox: sandbox::SandboxPlan {
                    cold: 12,
                    warm: 12,
                    rtt_rounds: 3,
                    rtt_runs: 2000,
                    rtt_block: 100,
                    memory: 5,
                },
                engines: engines::EnginesPlan {
                    cold: 16,
                    bursts: vec![10, 20, 40],
                    burst_rounds: 2,
                    warm: 12,
                    rtt_rounds: 3,
                    rtt_runs: 2000,
                    rtt_block: 100,
                    reconnects: 5,
                    headful_memory: 3,
                    capacity_batch: 10,
                    capacity_check_at: 40,
                    // Bounds the loop; the memory rule stops it far earlier on any machine
                    // of today.
                    capacity_cap: 400,
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
        Some(Section::Core) => {
            if let Some(out) = &args.out {
                report::check_core_out(out)?;
            }
            let root = TempRoot::create()?;
            let gw = start_gateway(&ingot, &root, None, pool).await?;
            let core = measure_core(args, &plan, &ingot, pool, &root, &gw).await?;
            progress!("stopping ingot");
            drop(gw);
            drop(root);
            return publish_core(args, &core, machine);
        }
        Some(Section::Bursts) => {
            let root = TempRoot::create()?;
            let max = plan.bursts.iter().copied().max();
            let gw = start_gateway(&ingot, &root, max, pool).await?;
            let (direct, _) = baseline(args, &gw).await;
            let bursts =
                concurrent_bursts(&direct, &root, &gw, &plan.bursts, plan.burst_rounds).await?;
            drop(gw);
            drop(root);
            println!("{}", report::bursts_table(&bursts, plan.burst_rounds));
            return Ok(());
        }
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
        Some(Section::Sandbox) => {
            let root = TempRoot::create()?;
            let sandbox =
                sandbox::measure(&args.chromium, &ingot, &root, pool, plan.sandbox).await?;
            drop(root);
            return publish_sandbox(args, &sandbox, machine);
        }
        Some(Section::Engines) => {
            let root = TempRoot::create()?;
            let engines =
                engines::measure(&ingot, &executables(args), &root, pool, plan.engines).await?;
            drop(root);
            return publish_engines(args, &engines, machine);
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
/// gets a second one), then the cluster, viewer and sandbox sections with gateways of their own;
/// stops ingot and removes the temporary directory before returning.
async fn measure(args: &Args, plan: &Plan, ingot: &Path, pool: bool) -> Result<Results> {
    let root = TempRoot::create()?;
    let gw = start_gateway(ingot, &root, plan.bursts.iter().copied().max(), pool).await?;
    let core = measure_core(args, plan, ingot, pool, &root, &gw).await?;
    let (direct, _) = baseline(args, &gw).await;
    let bursts = concurrent_bursts(&direct, &root, &gw, &plan.bursts, plan.burst_rounds).await?;
    let idle = idle_clients(&direct, &root, &gw, plan.idle_clients).await?;
    progress!("stopping ingot");
    drop(gw);
    let cluster = cluster::measure(&args.chromium, ingot, &root, plan.cluster).await?;
    let viewer = viewer::measure(&args.chromium, ingot, &root, pool, plan.viewer).await?;
    let sandbox = sandbox::measure(&args.chromium, ingot, &root, pool, plan.sandbox).await?;
    let engines =
        engines::measure(ingot, &executables(args), &root, pool, plan.engines.clone()).await?;
    drop(root);
    Ok(Results {
        core,
        bursts,
        burst_rounds: plan.burst_rounds,
        idle,
        cluster,
        viewer,
        sandbox,
        engines,
    })
}

/// Both engines' executables, as the command line names them.
fn executables(args: &Args) -> engines::Executables {
    engines::Executables([args.chromium_shell.clone(), args.chromium.clone()])
}

/// The per-command rounds, cold starts on `gw` and warm starts on an ingot of their own
/// (when this one has a pool): the phases `--only core` runs.
async fn measure_core(
    args: &Args,
    plan: &Plan,
    ingot: &Path,
    pool: bool,
    root: &TempRoot,
    gw: &Gateway,
) -> Result<Core> {
    let (build, engine) = baseline(args, gw).await;
    progress!("ingot's engine: {engine}; direct: {}", build.describe());
    let (direct, ingot_samples, direct_viewport, ingot_viewport) =
        per_command(&build, root, gw, plan).await?;
    let (cold_direct, cold_ingot) = cold_starts(&build, root, gw, plan.cold_starts).await?;
    let warm = if pool {
        warm_starts(ingot, root, plan.warm_starts).await?
    } else {
        Warm::Unsupported
    };
    Ok(Core {
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
        engine,
        direct_build: build.describe(),
    })
}

/// What the direct baseline launches: the build of ingot's default engine (as `/healthz`
/// names it), so that ingot ÷ direct compares like with like; and ingot's engine, for people.
/// An ingot without engines runs the full Chromium.
async fn baseline(args: &Args, gw: &Gateway) -> (Build, String) {
    let engines = gw
        .json("/healthz")
        .await
        .ok()
        .and_then(|h| h.get("engines").cloned());
    let Some(engines) = engines else {
        let build = Build {
            executable: args.chromium.clone(),
            engine: Engine::Chromium,
        };
        return (
            build,
            "the full Chromium (this ingot has no engines)".to_owned(),
        );
    };
    let default = engines
        .get("default")
        .and_then(|d| d.as_str())
        .unwrap_or("chromium");
    let path = |key: &str, fallback: &Path| {
        engines
            .get(key)
            .and_then(|p| p.as_str())
            .map_or_else(|| fallback.to_owned(), PathBuf::from)
    };
    let build = if default == "shell" {
        Build {
            executable: path("shell", &args.chromium_shell),
            engine: Engine::Shell,
        }
    } else {
        Build {
            executable: path("chromium", &args.chromium),
            engine: Engine::Chromium,
        }
    };
    let engine = format!("`{default}`, {}", build.describe());
    (build, engine)
}

/// Starts the ingot under test: without a warm pool (when it has one to turn off), and with
/// room for the largest burst.
async fn start_gateway(
    ingot: &Path,
    root: &TempRoot,
    max_burst: Option<usize>,
    pool: bool,
) -> Result<Gateway> {
    let max_burst = max_burst.unwrap_or(1);
    let gw = Gateway::start(
        ingot,
        root,
        GatewayOptions {
            pool_size: pool.then_some(0),
            max_sessions: Some(max_burst.max(4)),
        },
    )
    .await?;
    progress!("ingot up (pid {})", gw.pid());
    Ok(gw)
}

/// One burst of concurrent starts per size, direct and ingot, alternating which goes first;
/// returns (sessions, direct, ingot) per size.
async fn concurrent_bursts(
    direct: &Build,
    root: &TempRoot,
    gw: &Gateway,
    sizes: &[usize],
    rounds: usize,
) -> Result<Vec<(usize, sessions::Burst, sessions::Burst)>> {
    let mut bursts: Vec<(usize, sessions::Burst, sessions::Burst)> = Vec::new();
    for round in 0..rounds {
        for (i, &n) in sizes.iter().enumerate() {
            let (d, g) = if (i + round).is_multiple_of(2) {
                let d = direct_burst(direct, root, n).await?;
                (d, ingot_burst(gw, n).await?)
            } else {
                let g = ingot_burst(gw, n).await?;
                (direct_burst(direct, root, n).await?, g)
            };
            match bursts.get_mut(i) {
                Some((_, direct, ingot)) => {
                    direct.merge(d);
                    ingot.merge(g);
                }
                None => bursts.push((n, d, g)),
            }
        }
    }
    Ok(bursts)
}

/// `n` idle client WebSockets on direct Chromium, then on one ingot session; returns
/// (direct, ingot).
async fn idle_clients(
    direct: &Build,
    root: &TempRoot,
    gw: &Gateway,
    n: usize,
) -> Result<(sessions::IdleClients, sessions::IdleClients)> {
    progress!("idle clients: {n} WebSockets on direct Chromium");
    let idle_direct = sessions::direct_idle_clients(direct, root, n).await?;
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
    println!("{}", report::sandbox_table(&results.sandbox));
    println!("{}", report::engines_table(&results.engines));
    report::write(args.out(), results, &machine, took)?;
    let (met, measured) = report::targets_met(results);
    progress!(
        "wrote {} ({met} of {measured} targets met); total {:.0} s",
        args.out().display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// After `--only core`: notes the load at the end, prints the table to stdout, and writes it
/// to a file of its own only when `--out` was given (never over a full report).
fn publish_core(args: &Args, core: &Core, mut machine: Machine) -> Result<()> {
    machine.finish();
    let took = STARTED.get().map_or(Duration::ZERO, |s| s.elapsed());
    println!("{}", report::core_table(core));
    let (met, measured) = report::core_targets_met(core);
    match &args.out {
        Some(out) => {
            report::write_core(out, core, &machine, took)?;
            progress!(
                "wrote {} ({met} of {measured} targets met); total {:.0} s",
                out.display(),
                took.as_secs_f64()
            );
        }
        None => progress!(
            "{met} of {measured} targets met; no file written (give --out for one); total {:.0} s",
            took.as_secs_f64()
        ),
    }
    Ok(())
}

/// After `--only cluster`: notes the load at the end, prints the section's tables to stdout
/// and puts the section into the report file, leaving the rest of it as it was.
fn publish_cluster(args: &Args, cluster: &cluster::Cluster, mut machine: Machine) -> Result<()> {
    machine.finish();
    let took = STARTED.get().map_or(Duration::ZERO, |s| s.elapsed());
    println!("{}", report::cluster_tables(cluster));
    report::write_cluster(args.out(), cluster, &machine, took, args.quick)?;
    let (met, measured) = report::cluster_targets_met(cluster);
    progress!(
        "updated the cluster section of {} ({met} of {measured} targets met); total {:.0} s",
        args.out().display(),
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
    report::write_viewer(args.out(), viewer, &machine, took, args.quick)?;
    let (met, measured) = report::viewer_targets_met(viewer);
    progress!(
        "updated the viewer section of {} ({met} of {measured} targets met); total {:.0} s",
        args.out().display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// After `--only sandbox`: notes the load at the end, prints the section's table to stdout
/// and puts the section into the report file, leaving the rest of it as it was.
fn publish_sandbox(args: &Args, sandbox: &sandbox::Sandbox, mut machine: Machine) -> Result<()> {
    machine.finish();
    let took = STARTED.get().map_or(Duration::ZERO, |s| s.elapsed());
    println!("{}", report::sandbox_table(sandbox));
    report::write_sandbox(args.out(), sandbox, &machine, took, args.quick)?;
    let (met, measured) = report::sandbox_targets_met(sandbox);
    progress!(
        "updated the sandbox section of {} ({met} of {measured} targets met); total {:.0} s",
        args.out().display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// After `--only engines`: notes the load at the end, prints the section's tables to stdout
/// and puts the section into the report file, leaving the rest of it as it was.
fn publish_engines(args: &Args, engines: &engines::Engines, mut machine: Machine) -> Result<()> {
    machine.finish();
    let took = STARTED.get().map_or(Duration::ZERO, |s| s.elapsed());
    println!("{}", report::engines_table(engines));
    report::write_engines(args.out(), engines, &machine, took, args.quick)?;
    let (met, measured) = report::engines_targets_met(engines);
    progress!(
        "updated the engines section of {} ({met} of {measured} targets met); total {:.0} s",
        args.out().display(),
        took.as_secs_f64()
    );
    Ok(())
}

/// Per-command rounds on one page per target, alternating targets and their order.
async fn per_command(
    direct: &Build,
    root: &TempRoot,
    gw: &Gateway,
    plan: &Plan,
) -> Result<(Samples, Samples, String, String)> {
    let dir = root.fresh_dir("direct")?;
    let mut browser = DirectChromium::spawn_engine(&direct.executable, direct.engine, dir)?;
    let url = browser.devtools_url(Duration::from_secs(60)).await?;
    let session = gw.create("{}").await?;
    let outcome = async {
        let watched = Watched {
            gateway: gw.pid(),
            browsers: [browser.pid(), session_browser(gw)?],
            client: std::process::id() as i32,
        };
        let mut pages = [Page::open(&url).await?, Page::open(&session.websocket_url).await?];
        let mut samples = [Samples::default(), Samples::default()];
        const NAMES: [&str; 2] = ["direct", "ingot"];
        for round in 0..plan.rounds {
            let order = if round.is_multiple_of(2) { [0, 1] } else { [1, 0] };
            round_trips(&mut pages, &mut samples, order, watched, &plan.round).await?;
            for t in order {
                let started = Instant::now();
                reconnects(&pages[t], &mut samples[t], t, watched, plan.round.reconnects).await?;
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

/// The Chromium browser process of the gateway's only session: its child with
/// `--remote-debugging-pipe` on its command line.
fn session_browser(gw: &Gateway) -> Result<i32> {
    match procfs::pipe_browsers_of(gw.pid()).as_slice() {
        [one] => Ok(*one),
        found => bail!("expected one browser under ingot, found {found:?}"),
    }
}

/// The processes whose CPU time and context switches the per-command rounds read: the
/// gateway, each target's Chromium browser process (index 0 direct, 1 ingot's session) and
/// this client.
#[derive(Debug, Clone, Copy)]
struct Watched {
    gateway: i32,
    browsers: [i32; 2],
    client: i32,
}

/// What the watched processes used, or had used by some moment.
#[derive(Debug, Clone, Copy, Default)]
struct Used {
    gateway: Usage,
    browser: Usage,
    client: Usage,
}

impl Used {
    fn since(self, before: Used) -> Used {
        Used {
            gateway: self.gateway.since(before.gateway),
            browser: self.browser.since(before.browser),
            client: self.client.since(before.client),
        }
    }

    fn plus(self, other: Used) -> Used {
        Used {
            gateway: self.gateway.plus(other.gateway),
            browser: self.browser.plus(other.browser),
            client: self.client.plus(other.client),
        }
    }
}

impl Watched {
    /// The usage so far of the gateway, target `t`'s browser and this client, read in that
    /// order (this client last, so that little of its reading falls inside the window).
    fn before(&self, t: usize) -> Result<Used> {
        let gateway = read_usage(self.gateway, "ingot")?;
        let browser = read_usage(self.browsers[t], "Chromium's browser process")?;
        let client = read_usage(self.client, "this benchmark")?;
        Ok(Used {
            gateway,
            browser,
            client,
        })
    }

    /// Like [`Watched::before`], this client first.
    fn after(&self, t: usize) -> Result<Used> {
        let client = read_usage(self.client, "this benchmark")?;
        let browser = read_usage(self.browsers[t], "Chromium's browser process")?;
        let gateway = read_usage(self.gateway, "ingot")?;
        Ok(Used {
            gateway,
            browser,
            client,
        })
    }
}

fn read_usage(pid: i32, what: &str) -> Result<Usage> {
    procfs::usage(pid).with_context(|| {
        format!("cannot read the CPU time and context switches of {what} (pid {pid})")
    })
}

/// One round of round trips on both pages, in blocks that alternate between the targets so
/// that noise on the machine hits both alike; records each target's p50 and p99, and the CPU
/// time and context switches per round trip of the gateway (ingot's blocks only), of each
/// target's browser process and of this client, read around each block.
async fn round_trips(
    pages: &mut [Page; 2],
    samples: &mut [Samples; 2],
    order: [usize; 2],
    watched: Watched,
    plan: &RoundPlan,
) -> Result<()> {
    let mut rtt = [Vec::new(), Vec::new()];
    let mut used = [Used::default(); 2];
    let blocks = plan.rtt_runs.div_ceil(plan.rtt_block);
    for _ in 0..blocks {
        for t in order {
            let before = watched.before(t)?;
            pages[t].round_trips(plan.rtt_block, &mut rtt[t]).await?;
            used[t] = used[t].plus(watched.after(t)?.since(before));
        }
    }
    for (t, rtt) in rtt.iter().enumerate() {
        let p = |q| stats::percentile(rtt, q).context("no round trips");
        samples[t].rtt_p50_us.push(p(50.0)?);
        samples[t].rtt_p99_us.push(p(99.0)?);
        samples[t].browser_rtt.push(used[t].browser, rtt.len());
        samples[t].client_rtt.push(used[t].client, rtt.len());
    }
    samples[1].gateway_rtt.push(used[1].gateway, rtt[1].len());
    let last = |v: &Vec<f64>| v.last().copied().unwrap_or(f64::NAN);
    progress!(
        "  per round trip: gateway {:.1} µs CPU, {:.2} context switches; browser process {:.2} vs {:.2} switches (direct vs ingot)",
        last(&samples[1].gateway_rtt.cpu_us),
        last(&samples[1].gateway_rtt.switches),
        last(&samples[0].browser_rtt.switches),
        last(&samples[1].browser_rtt.switches),
    );
    Ok(())
}

/// `n` reconnects to target `t`, with the CPU time and context switches per reconnect of its
/// browser process and (ingot) the gateway.
async fn reconnects(
    page: &Page,
    samples: &mut Samples,
    t: usize,
    watched: Watched,
    n: usize,
) -> Result<()> {
    let before = watched.before(t)?;
    page.reconnects(n, &mut samples.reconnect_ms).await?;
    tokio::time::sleep(percommand::RECONNECT_SETTLE).await;
    let used = watched.after(t)?.since(before);
    samples.browser_reconnect.push(used.browser, n);
    if t == 1 {
        samples.gateway_reconnect.push(used.gateway, n);
    }
    Ok(())
}

/// Cold create to first reply, alternating direct and ingot.
async fn cold_starts(
    direct_build: &Build,
    root: &TempRoot,
    gw: &Gateway,
    n: usize,
) -> Result<(Vec<Start>, Vec<Start>)> {
    progress!("cold starts: {n} direct, {n} through ingot, alternating");
    let (mut direct, mut ingot) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for leg in if i.is_multiple_of(2) { [0, 1] } else { [1, 0] } {
            if leg == 0 {
                let (took, browser) = sessions::direct_start_engine(
                    &direct_build.executable,
                    direct_build.engine,
                    root,
                )
                .await?;
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
            max_sessions: Some(4),
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

async fn direct_burst(direct: &Build, root: &TempRoot, n: usize) -> Result<sessions::Burst> {
    progress!("{n} concurrent direct browsers ({})", direct.describe());
    let b = sessions::direct_burst(direct, root, n).await?;
    progress!(
        "  direct: p50 {:.0} ms, p99 {:.0} ms, {:.0} MiB PSS per browser",
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
        "  ingot: p50 {:.0} ms, p99 {:.0} ms, {:.0} MiB PSS per session, ingot RSS {:.1} MiB",
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
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft >= want {
        return Ok(());
    }
    let raised = hard.min(want);
    setrlimit(Resource::RLIMIT_NOFILE, raised, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    if raised < want {
        bail!("the open-file limit is {hard} (hard); {want} are needed");
    }
    Ok(())
}
