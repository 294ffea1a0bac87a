//! The engines (issue 22): the lean headless shell (`chromium-headless-shell`) against the
//! full Chromium, both through ingot (`--engine shell|chromium`) and both launched directly,
//! measured in one run with the targets taking turns: memory per idle session at several
//! counts, cold create to first CDP reply, bursts of concurrent creates, warm create, round
//! trip and reconnect, a headful session on its own `Xvfb`, and how many sessions fit before
//! the first refusal with each engine's derived `--max-sessions`.
//!
//! Owns the order of this section's phases, which gateways run when and with which flags,
//! and the bounds of the capacity phase (it never fills the machine's memory: see
//! [`capacity`]). Every browser and gateway it starts is owned by a guard
//! ([`DirectChromium`], [`Gateway`]), and every session it creates is released here, so every
//! exit path stops them. It reports figures only: [`crate::report`] judges them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::future::{join_all, try_join_all};
use serde_json::Value;

use crate::chromium::{Engine, TempRoot};
use crate::gateway::{self, Created, Gateway, GatewayOptions, Session};
use crate::percommand::Page;
use crate::procfs::{self, Footprint};
use crate::sessions::{self, Start};
use crate::stats::{ms, percentile};

/// The flag of an ingot that has both engines.
pub(crate) const ENGINE_FLAG: &str = "--engine";
/// ingot's create timeout, and what the cold and burst gateways get instead of its default…
pub(crate) const CREATE_TIMEOUT_FLAG: &str = "--create-timeout-ms";
pub(crate) const BURST_CREATE_TIMEOUT_MS: u64 = 120_000;
/// …which is this.
pub(crate) const DEFAULT_CREATE_TIMEOUT_MS: f64 = 20_000.0;
/// The create body of a headful session.
pub(crate) const HEADFUL_BODY: &str = r#"{"headless": false}"#;
/// The warm pool of each warm gateway.
pub(crate) const WARM_POOL: usize = 2;
/// How long idle sessions (or a full pool) settle before they are read or used.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);
/// How long the full pools idle before a warm create.
pub(crate) const WARM_SETTLE: Duration = Duration::from_secs(1);
/// The capacity phase goes past [`EnginesPlan::capacity_check_at`] sessions only while the
/// PSS per session so far times the limit stays under this share of `MemAvailable`…
pub(crate) const CAPACITY_MEMORY_SHARE: f64 = 0.8;
/// …and stops at once if `MemAvailable` falls under this share of the machine's memory.
pub(crate) const CAPACITY_FLOOR_SHARE: f64 = 0.25;
/// Capacity creates ask for a lifetime long enough to outlast the phase.
const CAPACITY_BODY: &str = r#"{"timeout": 1800000}"#;

/// How many samples of what.
#[derive(Debug, Clone)]
pub(crate) struct EnginesPlan {
    /// Cold creates (and direct launches) per target.
    pub cold: usize,
    /// Sizes of the bursts of concurrent creates; their idle memory is the per-session figure.
    pub bursts: Vec<usize>,
    pub burst_rounds: usize,
    /// Warm creates per engine.
    pub warm: usize,
    pub rtt_rounds: usize,
    pub rtt_runs: usize,
    pub rtt_block: usize,
    /// Reconnects per engine per round.
    pub reconnects: usize,
    /// Readings of one idle headful session (and one headless full Chromium).
    pub headful_memory: usize,
    /// Capacity creates made at once.
    pub capacity_batch: usize,
    /// Where the capacity phase weighs whether going on to the limit is safe.
    pub capacity_check_at: usize,
    /// Most sessions the capacity phase creates, whatever the limit (a smoke run stops
    /// early and extrapolates).
    pub capacity_cap: usize,
}

/// How a gateway is told its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// `--engine shell|chromium`, with `--chromium-shell` and `--chromium` naming both builds.
    Flag,
    /// An ingot without `--engine`: `--chromium` names the engine's executable (the issue's own
    /// method for its first figures). No headful sessions.
    Executable,
}

/// Both engines' executables, indexed by [`Engine::index`].
#[derive(Debug, Clone)]
pub(crate) struct Executables(pub [PathBuf; 2]);

impl Executables {
    pub(crate) fn of(&self, engine: Engine) -> &Path {
        &self.0[engine.index()]
    }
}

/// This section's outcome.
#[derive(Debug)]
pub(crate) enum Engines {
    Measured(Box<EnginesResults>),
    Skipped(String),
}

/// One size of burst on one engine, every round.
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineBurst {
    /// Every create's time to first reply, all rounds together.
    pub start_ms: Vec<f64>,
    /// Each round's p50 of its creates.
    pub round_p50_ms: Vec<f64>,
    /// Each round's time from firing the creates until the last first reply.
    pub wall_ms: Vec<f64>,
    /// Each round's memory of every browser process, read once the sessions idled.
    pub memory: Vec<Footprint>,
}

/// The headful figures: cold creates and the memory of one idle headful session.
#[derive(Debug, Clone, Default)]
pub(crate) struct Headful {
    pub cold: Vec<Start>,
    /// Each reading: every process of the headful session, its `Xvfb` included…
    pub memory: Vec<Footprint>,
    /// …the `Xvfb` alone…
    pub xvfb: Vec<Footprint>,
    /// …and one headless full Chromium session read the same way, right after.
    pub headless: Vec<Footprint>,
}

/// Why the capacity phase stopped creating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A create was refused with this status (and body).
    Refused { status: u16, body: String },
    /// The derived limit was reached, and one more create was answered so.
    Limit { beyond: Option<u16> },
    /// Past the checkpoint, PSS × limit would not stay under the share of `MemAvailable`.
    MemoryRule,
    /// `MemAvailable` fell under the floor.
    Floor,
    /// The plan's [`EnginesPlan::capacity_cap`] was reached below the limit.
    Cap,
}

/// How many sessions of one engine fit with its derived `--max-sessions`.
#[derive(Debug, Clone)]
pub(crate) struct Capacity {
    /// `maxSessions` of `/readyz` (or `ingot_sessions_max`), as ingot derived it.
    pub limit: Option<usize>,
    pub created: usize,
    pub stop: Stop,
    /// Every browser process once the sessions idled, at the end.
    pub memory: Footprint,
    pub available_start_kib: u64,
    pub available_end_kib: u64,
}

impl Capacity {
    /// PSS per session at the end, in KiB.
    pub(crate) fn pss_per_session_kib(&self) -> Option<f64> {
        (self.created > 0).then(|| self.memory.pss_kib as f64 / self.created as f64)
    }

    /// How many sessions fit: the count created, or (when the memory rule stopped the phase)
    /// the limit or what `MemAvailable` at the start holds at the PSS per session, whichever
    /// is lower; and whether that is an extrapolation.
    pub(crate) fn fit(&self) -> (Option<f64>, bool) {
        match self.stop {
            Stop::MemoryRule | Stop::Floor | Stop::Cap => {
                let by_memory = self
                    .pss_per_session_kib()
                    .map(|p| (self.available_start_kib as f64 / p).floor());
                let fit = match (by_memory, self.limit) {
                    (Some(m), Some(l)) => Some(m.min(l as f64)),
                    (m, _) => m,
                };
                (fit, true)
            }
            _ => (Some(self.created as f64), false),
        }
    }
}

/// Every figure of the section; `[_; 2]` are indexed by [`Engine::index`].
#[derive(Debug)]
pub(crate) struct EnginesResults {
    pub plan: EnginesPlan,
    pub selection: Selection,
    pub executables: Executables,
    /// The executable each engine's gateway launched for a session (its command line's first
    /// word), as read from `/proc`.
    pub launched: [String; 2],
    /// `engines` of each gateway's `/healthz`, when it has one.
    pub healthz: [Option<Value>; 2],
    pub cold_direct: [Vec<Start>; 2],
    pub cold_ingot: [Vec<Start>; 2],
    /// Through gateways with `--insecure-shared-browser-user`, when ingot has it: the
    /// gateway's own share, without the sandbox's.
    pub cold_shared: Option<[Vec<Start>; 2]>,
    /// Why there are no headful figures, or them.
    pub headful: Result<Headful, String>,
    /// (size, per engine).
    pub bursts: Vec<(usize, [EngineBurst; 2])>,
    pub warm: Option<[Vec<Start>; 2]>,
    pub rtt_p50_us: [Vec<f64>; 2],
    pub rtt_p99_us: [Vec<f64>; 2],
    pub reconnect_ms: [Vec<f64>; 2],
    pub capacity: [Capacity; 2],
    pub mem_total_kib: u64,
}

/// The cold and burst gateways of both engines, `--pool-size 0`.
struct Pair {
    gateways: [Gateway; 2],
    /// The same with `--insecure-shared-browser-user` (cold loop only), when ingot has it.
    shared: Option<[Gateway; 2]>,
}

impl Pair {
    fn of(&self, engine: Engine) -> &Gateway {
        &self.gateways[engine.index()]
    }
}

/// The cold gateways: one per engine, and one per engine with
/// `--insecure-shared-browser-user` when this ingot has it and runs as root (else its
/// default is already the shared user).
async fn cold_pair(
    ingot: &Path,
    root: &TempRoot,
    selection: Selection,
    exes: &Executables,
    opts: GatewayOptions,
) -> Result<Pair> {
    // A burst of 40 full Chromiums on 2 cores outlasts ingot's default create timeout: the
    // bursts measure how long creates take, so they get longer (a note counts the ones over).
    let patient = gateway::supports_flag(ingot, CREATE_TIMEOUT_FLAG)?;
    let start = |e: Engine, shared: bool| async move {
        let mut args = engine_args(selection, exes, e);
        if patient {
            args.extend([
                CREATE_TIMEOUT_FLAG.to_owned(),
                BURST_CREATE_TIMEOUT_MS.to_string(),
            ]);
        }
        if shared {
            args.push(crate::sandbox::SHARED_FLAG.to_owned());
        }
        Gateway::start_with(ingot, root, opts, &args).await
    };
    let gateways = [
        start(Engine::Shell, false).await?,
        start(Engine::Chromium, false).await?,
    ];
    let shared = if nix::unistd::geteuid().is_root()
        && gateway::supports_flag(ingot, crate::sandbox::SHARED_FLAG)?
    {
        Some([
            start(Engine::Shell, true).await?,
            start(Engine::Chromium, true).await?,
        ])
    } else {
        None
    };
    Ok(Pair { gateways, shared })
}

/// The arguments that make a gateway run `engine`.
fn engine_args(selection: Selection, exes: &Executables, engine: Engine) -> Vec<String> {
    let path = |e: Engine| exes.of(e).display().to_string();
    match selection {
        Selection::Flag => vec![
            ENGINE_FLAG.to_owned(),
            engine.name().to_owned(),
            "--chromium-shell".to_owned(),
            path(Engine::Shell),
            "--chromium".to_owned(),
            path(Engine::Chromium),
        ],
        Selection::Executable => vec!["--chromium".to_owned(), path(engine)],
    }
}

/// Starts a gateway running `engine`.
async fn start_engine(
    ingot: &Path,
    root: &TempRoot,
    selection: Selection,
    exes: &Executables,
    engine: Engine,
    options: GatewayOptions,
) -> Result<Gateway> {
    Gateway::start_with(ingot, root, options, &engine_args(selection, exes, engine))
        .await
        .with_context(|| format!("starting ingot with the {} engine", engine.name()))
}

/// Measures the section, or says why it cannot be measured with this ingot.
pub(crate) async fn measure(
    ingot: &Path,
    exes: &Executables,
    root: &TempRoot,
    pool: bool,
    plan: EnginesPlan,
) -> Result<Engines> {
    for e in Engine::ALL {
        if !exes.of(e).is_file() {
            return Ok(Engines::Skipped(format!(
                "no {} at {}",
                e.name(),
                exes.of(e).display()
            )));
        }
    }
    if !pool {
        return Ok(Engines::Skipped(
            "this ingot has no --pool-size (every create is cold only with --pool-size 0)".into(),
        ));
    }
    let selection = if gateway::supports_flag(ingot, ENGINE_FLAG)? {
        Selection::Flag
    } else {
        progress!("engines: this ingot has no {ENGINE_FLAG}; each engine is chosen by --chromium");
        Selection::Executable
    };
    let max = plan.bursts.iter().copied().max().unwrap_or(1).max(4);
    let cold_opts = GatewayOptions {
        pool_size: Some(0),
        max_sessions: Some(max),
    };
    let pair = cold_pair(ingot, root, selection, exes, cold_opts).await?;
    let healthz = [
        healthz_engines(pair.of(Engine::Shell)).await,
        healthz_engines(pair.of(Engine::Chromium)).await,
    ];
    let mut headful_ok = headful_available(selection, &healthz[Engine::Chromium.index()]);
    if headful_ok.is_ok() {
        headful_ok = probe_headful(pair.of(Engine::Chromium)).await;
    }
    let launched = [
        launched(pair.of(Engine::Shell)).await?,
        launched(pair.of(Engine::Chromium)).await?,
    ];
    describe_launches(exes, &launched, &healthz);
    let cold = cold_starts(exes, root, &pair, plan.cold, headful_ok.is_ok()).await?;
    let headful = match headful_ok {
        Ok(()) => Ok(Headful {
            cold: cold.headful,
            ..headful_memory(pair.of(Engine::Chromium), plan.headful_memory).await?
        }),
        Err(why) => Err(why),
    };
    let bursts = bursts(&pair, &plan.bursts, plan.burst_rounds).await?;
    drop(pair);
    let (warm, rtt, reconnect_ms) =
        warm_and_round_trips(ingot, root, selection, exes, &plan).await?;
    let capacity = [
        capacity(ingot, root, selection, exes, Engine::Shell, &plan).await?,
        capacity(ingot, root, selection, exes, Engine::Chromium, &plan).await?,
    ];
    Ok(Engines::Measured(Box::new(EnginesResults {
        plan,
        selection,
        executables: exes.clone(),
        launched,
        healthz,
        cold_direct: cold.direct,
        cold_ingot: cold.ingot,
        cold_shared: cold.shared,
        headful,
        bursts,
        warm: Some(warm),
        rtt_p50_us: rtt.0,
        rtt_p99_us: rtt.1,
        reconnect_ms,
        capacity,
        mem_total_kib: procfs::meminfo_kib("MemTotal:").unwrap_or(0),
    })))
}

/// `engines` of a gateway's `/healthz`, when it has one.
async fn healthz_engines(gw: &Gateway) -> Option<Value> {
    gw.json("/healthz")
        .await
        .ok()
        .and_then(|h| h.get("engines").cloned())
}

/// Whether headful sessions can be measured: an ingot with engines whose `/healthz` says so.
fn headful_available(selection: Selection, engines: &Option<Value>) -> Result<(), String> {
    if selection == Selection::Executable {
        return Err(format!(
            "this ingot has no {ENGINE_FLAG} (built before issue 22)"
        ));
    }
    match engines.as_ref().and_then(|e| e.get("headful")) {
        Some(Value::Bool(true)) => Ok(()),
        Some(other) => Err(format!("`/healthz` says `headful: {other}`")),
        None => Err("`/healthz` has no `engines.headful`".to_owned()),
    }
}

/// One headful create, to see that it works here before the loops rely on it: its browser
/// must have no `--headless` flag, and an `Xvfb` must run in the gateway's tree. Says what it
/// found; a failure is the reason the headful rows are not measured, not an error.
async fn probe_headful(gw: &Gateway) -> Result<(), String> {
    let session = match sessions::ingot_start_with(gw, HEADFUL_BODY).await {
        Ok((_, session)) => session,
        Err(e) => {
            let why: String = format!("{e:#}").chars().take(300).collect();
            return Err(format!("a headful create failed: {why}…"));
        }
    };
    let pids = gw.tree_processes();
    let xvfb = pids
        .iter()
        .filter(|&&p| procfs::comm(p).is_some_and(|c| c == "Xvfb"))
        .count();
    let headless = pids
        .iter()
        .any(|&p| procfs::cmdline_mentions(p, "--headless"));
    let session_json = gw.session(&session.id).await.ok();
    let released = sessions::release_and_settle(gw, &session).await;
    progress!(
        "  headful probe: {xvfb} Xvfb process(es) in the gateway's tree, --headless {}, Session JSON headless: {}",
        if headless { "present" } else { "absent" },
        session_json
            .as_ref()
            .and_then(|v| v.get("headless"))
            .map_or("(none)".to_owned(), Value::to_string)
    );
    if let Err(e) = released {
        return Err(format!("releasing the headful probe failed: {e:#}"));
    }
    match (xvfb, headless) {
        (0, _) => Err("a headful create ran no Xvfb in the gateway's process tree".to_owned()),
        (_, true) => Err("a headful create's browser has a --headless flag".to_owned()),
        _ => Ok(()),
    }
}

/// Creates a session, reads which executable its browser runs (the command line's first
/// word of its browser process), and releases it. Also warms the page cache for the
/// cold starts that follow.
async fn launched(gw: &Gateway) -> Result<String> {
    let (_, session) = sessions::ingot_start(gw).await?;
    let exe = gw
        .browser_processes()
        .into_iter()
        .find(|&p| {
            procfs::cmdline_mentions(p, "--remote-debugging-pipe")
                && !procfs::cmdline_mentions(p, "--type=")
        })
        .and_then(first_word);
    sessions::release_and_settle(gw, &session).await?;
    exe.ok_or_else(|| anyhow!("no browser process with --remote-debugging-pipe under ingot"))
}

/// The first word of a process's command line.
fn first_word(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = raw.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(first).into_owned())
}

/// Says which executable each gateway launched, and warns when it is not the engine's.
fn describe_launches(exes: &Executables, launched: &[String; 2], healthz: &[Option<Value>; 2]) {
    for e in Engine::ALL {
        let ran = &launched[e.index()];
        progress!(
            "  {} gateway: sessions run {ran}; /healthz engines {}",
            e.name(),
            healthz[e.index()]
                .as_ref()
                .map_or("(none)".to_owned(), Value::to_string)
        );
        if Path::new(ran) != exes.of(e) {
            progress!(
                "  warning: the {} gateway's browser is {ran}, not {}",
                e.name(),
                exes.of(e).display()
            );
        }
    }
}

/// A target of the cold loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cold {
    /// The engine's executable launched by the benchmark.
    Direct(Engine),
    /// A create on the engine's gateway (ingot's defaults: sandboxed when root).
    Ingot(Engine),
    /// A create on the engine's gateway with `--insecure-shared-browser-user`.
    Shared(Engine),
    /// A `{"headless": false}` create on the full Chromium's gateway.
    Headful,
}

impl Cold {
    fn name(self) -> String {
        match self {
            Cold::Direct(e) => format!("direct {}", e.name()),
            Cold::Ingot(e) => format!("ingot {}", e.name()),
            Cold::Shared(e) => format!("shared-user {}", e.name()),
            Cold::Headful => "ingot headful".to_owned(),
        }
    }
}

/// The cold loop's samples.
#[derive(Debug, Default)]
struct ColdStarts {
    direct: [Vec<Start>; 2],
    ingot: [Vec<Start>; 2],
    shared: Option<[Vec<Start>; 2]>,
    headful: Vec<Start>,
}

/// The order in which `targets` targets go in turn `k`: each goes first, second, … equally
/// often over every `targets` turns.
pub(crate) fn turn(k: usize, targets: usize) -> Vec<usize> {
    (0..targets).map(|i| (k + i) % targets).collect()
}

/// `n` cold creates per target, the targets taking turns, each browser torn down before the
/// next start; one unmeasured direct launch per engine first.
async fn cold_starts(
    exes: &Executables,
    root: &TempRoot,
    pair: &Pair,
    n: usize,
    headful: bool,
) -> Result<ColdStarts> {
    let mut targets = vec![
        Cold::Direct(Engine::Shell),
        Cold::Ingot(Engine::Shell),
        Cold::Direct(Engine::Chromium),
        Cold::Ingot(Engine::Chromium),
    ];
    if headful {
        targets.push(Cold::Headful);
    }
    if pair.shared.is_some() {
        targets.extend([Cold::Shared(Engine::Shell), Cold::Shared(Engine::Chromium)]);
    }
    let names: Vec<String> = targets.iter().map(|t| t.name()).collect();
    progress!(
        "engines: {n} cold creates per target ({}), taking turns",
        names.join(", ")
    );
    for e in Engine::ALL {
        drop(sessions::direct_start_engine(exes.of(e), e, root).await?);
    }
    let mut starts: Vec<Vec<Start>> = vec![Vec::with_capacity(n); targets.len()];
    for k in 0..n {
        for t in turn(k, targets.len()) {
            starts[t].push(cold_start(exes, root, pair, targets[t]).await?);
        }
    }
    let mut out = ColdStarts::default();
    for (target, s) in targets.iter().zip(starts) {
        progress!("  {:20} p50 {:.1} ms", target.name(), p50_ms(&s));
        match *target {
            Cold::Direct(e) => out.direct[e.index()] = s,
            Cold::Ingot(e) => out.ingot[e.index()] = s,
            Cold::Shared(e) => out.shared.get_or_insert_with(Default::default)[e.index()] = s,
            Cold::Headful => out.headful = s,
        }
    }
    Ok(out)
}

/// One cold start of `target`, torn down before it returns.
async fn cold_start(
    exes: &Executables,
    root: &TempRoot,
    pair: &Pair,
    target: Cold,
) -> Result<Start> {
    let (gw, body) = match target {
        Cold::Direct(e) => {
            let (took, browser) = sessions::direct_start_engine(exes.of(e), e, root).await?;
            drop(browser);
            return Ok(took);
        }
        Cold::Ingot(e) => (pair.of(e), "{}"),
        Cold::Headful => (pair.of(Engine::Chromium), HEADFUL_BODY),
        Cold::Shared(e) => match &pair.shared {
            Some(shared) => (&shared[e.index()], "{}"),
            None => bail!("no shared-user gateway"),
        },
    };
    let (took, session) = sessions::ingot_start_with(gw, body).await?;
    sessions::release_and_settle(gw, &session).await?;
    Ok(took)
}

fn p50_ms(starts: &[Start]) -> f64 {
    let total: Vec<f64> = starts.iter().map(|s| s.total_ms).collect();
    percentile(&total, 50.0).unwrap_or(f64::NAN)
}

/// `n` times: one headful session alone on the gateway, read after [`SETTLE`] (every process
/// of the gateway's tree: the browser's, and its `Xvfb` wherever ingot starts it), released;
/// then one headless session the same way.
async fn headful_memory(gw: &Gateway, n: usize) -> Result<Headful> {
    progress!("engines: memory of one idle headful session, {n} times (and one headless)");
    let mut out = Headful::default();
    for _ in 0..n {
        for headful in [true, false] {
            let body = if headful { HEADFUL_BODY } else { "{}" };
            let (_, session) = sessions::ingot_start_with(gw, body).await?;
            tokio::time::sleep(SETTLE).await;
            let pids = gw.tree_processes();
            let footprint = procfs::footprint(&pids);
            if headful {
                let xvfb: Vec<i32> = pids
                    .iter()
                    .copied()
                    .filter(|&p| procfs::comm(p).is_some_and(|c| c == "Xvfb"))
                    .collect();
                out.memory.push(footprint);
                out.xvfb.push(procfs::footprint(&xvfb));
            } else {
                out.headless.push(footprint);
            }
            sessions::release_and_settle(gw, &session).await?;
        }
    }
    let mib = |f: &[Footprint]| {
        let v: Vec<f64> = f.iter().map(|f| f.pss_kib as f64 / 1024.0).collect();
        percentile(&v, 50.0).unwrap_or(f64::NAN)
    };
    progress!(
        "  headful PSS p50 {:.0} MiB (Xvfb {:.0} MiB, {} Xvfb process(es)); headless {:.0} MiB",
        mib(&out.memory),
        mib(&out.xvfb),
        out.xvfb.first().map_or(0, |f| f.processes),
        mib(&out.headless)
    );
    Ok(out)
}

/// Every burst size in each round, the engines taking turns at going first.
async fn bursts(
    pair: &Pair,
    sizes: &[usize],
    rounds: usize,
) -> Result<Vec<(usize, [EngineBurst; 2])>> {
    let mut out: Vec<(usize, [EngineBurst; 2])> =
        sizes.iter().map(|&n| (n, Default::default())).collect();
    for round in 0..rounds {
        for (i, (n, per_engine)) in out.iter_mut().enumerate() {
            let order = if (i + round).is_multiple_of(2) {
                Engine::ALL
            } else {
                [Engine::Chromium, Engine::Shell]
            };
            for e in order {
                burst(pair.of(e), *n, &mut per_engine[e.index()]).await?;
                let b = &per_engine[e.index()];
                progress!(
                    "  {n} concurrent {}: all answered in {:.0} ms, p50 {:.0} ms, {:.0} MiB PSS per session",
                    e.name(),
                    b.wall_ms.last().copied().unwrap_or(f64::NAN),
                    b.round_p50_ms.last().copied().unwrap_or(f64::NAN),
                    b.memory
                        .last()
                        .map_or(f64::NAN, |m| m.pss_kib as f64 / 1024.0 / *n as f64)
                );
            }
        }
    }
    Ok(out)
}

/// `n` creates at once; once all answered and idled [`SETTLE`], the memory of every process
/// of the gateway's tree; then every session released.
async fn burst(gw: &Gateway, n: usize, out: &mut EngineBurst) -> Result<()> {
    let started = Instant::now();
    let results = join_all((0..n).map(|_| sessions::ingot_start(gw))).await;
    let wall = ms(started.elapsed());
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
                Err(e) => bail!("a create among {n} concurrent ones failed: {e:#}"),
            }
        }
        tokio::time::sleep(SETTLE).await;
        out.memory.push(procfs::footprint(&gw.tree_processes()));
        out.round_p50_ms.extend(percentile(&start_ms, 50.0));
        out.start_ms.extend(start_ms);
        out.wall_ms.push(wall);
        Ok(())
    }
    .await;
    release_all(gw, live.into_iter()).await?;
    outcome
}

/// Releases every session (20 at a time) and waits until the gateway has no browser left.
async fn release_all<'a>(gw: &Gateway, sessions: impl Iterator<Item = &'a Session>) -> Result<()> {
    let all: Vec<&Session> = sessions.collect();
    for chunk in all.chunks(20) {
        try_join_all(chunk.iter().map(|s| gw.release(&s.id)))
            .await
            .context("releasing sessions")?;
    }
    gw.wait_no_browsers(Duration::from_secs(180)).await
}

type RoundTrips = ([Vec<f64>; 2], [Vec<f64>; 2]);

/// On one gateway per engine with `--pool-size` [`WARM_POOL`]: warm creates, the engines
/// taking turns, both pools full and idle for [`WARM_SETTLE`] before each; then round trips
/// on one page per engine in blocks that take turns, and reconnects after each round.
async fn warm_and_round_trips(
    ingot: &Path,
    root: &TempRoot,
    selection: Selection,
    exes: &Executables,
    plan: &EnginesPlan,
) -> Result<([Vec<Start>; 2], RoundTrips, [Vec<f64>; 2])> {
    progress!(
        "engines: {} warm creates per engine, --pool-size {WARM_POOL}",
        plan.warm
    );
    let opts = GatewayOptions {
        pool_size: Some(WARM_POOL),
        max_sessions: Some(WARM_POOL + 2),
    };
    let pair = Pair {
        gateways: [
            start_engine(ingot, root, selection, exes, Engine::Shell, opts).await?,
            start_engine(ingot, root, selection, exes, Engine::Chromium, opts).await?,
        ],
        shared: None,
    };
    let refill = Duration::from_secs(60);
    let mut warm: [Vec<Start>; 2] = Default::default();
    for k in 0..plan.warm {
        let order = if k.is_multiple_of(2) {
            Engine::ALL
        } else {
            [Engine::Chromium, Engine::Shell]
        };
        for e in order {
            for gw in &pair.gateways {
                gw.wait_pool_full(WARM_POOL, refill).await?;
            }
            tokio::time::sleep(WARM_SETTLE).await;
            let (took, session) = sessions::ingot_start(pair.of(e)).await?;
            pair.of(e).release(&session.id).await?;
            warm[e.index()].push(took);
        }
    }
    for e in Engine::ALL {
        progress!(
            "  warm {:8} p50 {:.1} ms",
            e.name(),
            p50_ms(&warm[e.index()])
        );
    }
    for gw in &pair.gateways {
        gw.wait_pool_full(WARM_POOL, refill).await?;
    }
    let (rtt, reconnects) = round_trips(&pair, plan).await?;
    Ok((warm, rtt, reconnects))
}

/// Round trips on one session per engine, in blocks that take turns, each round's p50 and
/// p99; after each round's round trips, reconnects to each.
async fn round_trips(pair: &Pair, plan: &EnginesPlan) -> Result<(RoundTrips, [Vec<f64>; 2])> {
    progress!(
        "engines: {} rounds of {} round trips per engine, {} reconnects each",
        plan.rtt_rounds,
        plan.rtt_runs,
        plan.reconnects
    );
    let sessions = [
        pair.of(Engine::Shell).create("{}").await?,
        pair.of(Engine::Chromium).create("{}").await?,
    ];
    let outcome = async {
        let mut pages = [
            Page::open(&sessions[0].websocket_url).await?,
            Page::open(&sessions[1].websocket_url).await?,
        ];
        let (mut p50, mut p99): RoundTrips = Default::default();
        let mut reconnects: [Vec<f64>; 2] = Default::default();
        let blocks = plan.rtt_runs.div_ceil(plan.rtt_block.max(1));
        for round in 0..plan.rtt_rounds {
            let mut rtt: [Vec<f64>; 2] = Default::default();
            for b in 0..blocks {
                for t in turn(round + b, 2) {
                    pages[t].round_trips(plan.rtt_block, &mut rtt[t]).await?;
                }
            }
            for t in turn(round, 2) {
                p50[t].push(percentile(&rtt[t], 50.0).context("no round trips")?);
                p99[t].push(percentile(&rtt[t], 99.0).context("no round trips")?);
                pages[t]
                    .reconnects(plan.reconnects, &mut reconnects[t])
                    .await?;
            }
            progress!(
                "  round {}/{}: p50 {:.0} / {:.0} µs (shell / chromium)",
                round + 1,
                plan.rtt_rounds,
                p50[0][round],
                p50[1][round]
            );
        }
        for page in pages {
            page.close().await;
        }
        Ok::<_, anyhow::Error>(((p50, p99), reconnects))
    }
    .await;
    for e in Engine::ALL {
        pair.of(e).release(&sessions[e.index()].id).await?;
    }
    outcome
}

/// The session limit a gateway derived: `maxSessions` of `/readyz`, else the
/// `ingot_sessions_max` gauge.
async fn derived_limit(gw: &Gateway) -> Option<usize> {
    let ready = gw.json("/readyz").await.ok();
    let from_ready = ready
        .as_ref()
        .and_then(|r| r.get("maxSessions").or_else(|| r.get("max_sessions")))
        .and_then(Value::as_u64);
    if let Some(n) = from_ready {
        return usize::try_from(n).ok();
    }
    let metrics = gw.metrics().await.ok()?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ingot_sessions_max "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as usize)
}

/// How many sessions of `engine` fit before the first refusal, on a gateway that derives its
/// own `--max-sessions` (`--pool-size 0`): creates in batches until a refusal or the limit
/// (then one more, to see it refused). Bounded so as never to fill the machine: past
/// `capacity_check_at` sessions it goes on only if the PSS per session so far times the limit
/// stays under [`CAPACITY_MEMORY_SHARE`] of `MemAvailable` at the start, and it stops at once
/// when `MemAvailable` falls under [`CAPACITY_FLOOR_SHARE`] of the machine's memory. Every
/// session is released before it returns.
async fn capacity(
    ingot: &Path,
    root: &TempRoot,
    selection: Selection,
    exes: &Executables,
    engine: Engine,
    plan: &EnginesPlan,
) -> Result<Capacity> {
    let opts = GatewayOptions {
        pool_size: Some(0),
        max_sessions: None,
    };
    let gw = start_engine(ingot, root, selection, exes, engine, opts).await?;
    let limit = derived_limit(&gw).await;
    let available_start_kib = procfs::meminfo_kib("MemAvailable:").unwrap_or(0);
    progress!(
        "engines: capacity of {}: derived --max-sessions {}, MemAvailable {:.1} GiB",
        engine.name(),
        limit.map_or("unknown".to_owned(), |l| l.to_string()),
        available_start_kib as f64 / 1048576.0
    );
    let mut live: Vec<Session> = Vec::new();
    let outcome = fill(&gw, limit, available_start_kib, plan, &mut live).await;
    let memory = match &outcome {
        Ok(_) => {
            tokio::time::sleep(SETTLE).await;
            procfs::footprint(&gw.tree_processes())
        }
        Err(_) => Footprint::default(),
    };
    let available_end_kib = procfs::meminfo_kib("MemAvailable:").unwrap_or(0);
    release_all(&gw, live.iter()).await?;
    let stop = outcome?;
    let c = Capacity {
        limit,
        created: live.len(),
        stop,
        memory,
        available_start_kib,
        available_end_kib,
    };
    progress!(
        "  {} sessions, stopped by {:?}; {:.0} MiB PSS per session",
        c.created,
        c.stop,
        c.pss_per_session_kib().unwrap_or(f64::NAN) / 1024.0
    );
    Ok(c)
}

/// The capacity phase's creates (see [`capacity`]), into `live`; returns why it stopped.
async fn fill(
    gw: &Gateway,
    limit: Option<usize>,
    available_start_kib: u64,
    plan: &EnginesPlan,
    live: &mut Vec<Session>,
) -> Result<Stop> {
    let total_kib = procfs::meminfo_kib("MemTotal:").unwrap_or(0) as f64;
    let cap = limit.unwrap_or(plan.capacity_check_at);
    let mut weighed = false;
    // Bounded: each pass creates at least one session or stops.
    for _ in 0..=cap.div_ceil(plan.capacity_batch.max(1)) + 1 {
        if live.len() >= plan.capacity_cap && live.len() < cap {
            return Ok(Stop::Cap);
        }
        if live.len() >= cap {
            let beyond = match try_create(gw).await? {
                Created::Live(s) => {
                    live.push(s);
                    None
                }
                Created::Refused { status, .. } => Some(status.as_u16()),
            };
            return Ok(Stop::Limit { beyond });
        }
        let batch = plan
            .capacity_batch
            .max(1)
            .min(cap - live.len())
            .min(plan.capacity_cap - live.len());
        let answers = try_join_all((0..batch).map(|_| try_create(gw))).await?;
        let mut refused = None;
        for a in answers {
            match a {
                Created::Live(s) => live.push(s),
                Created::Refused { status, body } => {
                    refused.get_or_insert(Stop::Refused {
                        status: status.as_u16(),
                        body,
                    });
                }
            }
        }
        if let Some(stop) = refused {
            return Ok(stop);
        }
        let available = procfs::meminfo_kib("MemAvailable:").unwrap_or(0) as f64;
        if available < CAPACITY_FLOOR_SHARE * total_kib {
            return Ok(Stop::Floor);
        }
        if !weighed && live.len() >= plan.capacity_check_at && cap > live.len() {
            weighed = true;
            tokio::time::sleep(SETTLE).await;
            let pss = procfs::footprint(&gw.tree_processes()).pss_kib as f64;
            let projected = pss / live.len() as f64 * cap as f64;
            progress!(
                "  at {}: {:.0} MiB PSS per session; × {cap} = {:.1} GiB against {:.0} % of {:.1} GiB available",
                live.len(),
                pss / live.len() as f64 / 1024.0,
                projected / 1048576.0,
                CAPACITY_MEMORY_SHARE * 100.0,
                available_start_kib as f64 / 1048576.0
            );
            if projected >= CAPACITY_MEMORY_SHARE * available_start_kib as f64 {
                return Ok(Stop::MemoryRule);
            }
        }
    }
    bail!("the capacity phase did not stop within its bound ({cap} sessions)")
}

/// One capacity create; the WebSocket is not opened (the session's browser answered the
/// gateway before the create was answered).
async fn try_create(gw: &Gateway) -> Result<Created> {
    gw.try_create(CAPACITY_BODY).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(limit: Option<usize>, created: usize, stop: Stop, pss_mib: u64) -> Capacity {
        Capacity {
            limit,
            created,
            stop,
            memory: Footprint {
                processes: created * 6,
                pss_kib: pss_mib * 1024 * created as u64,
                rss_kib: 0,
                private_kib: 0,
            },
            available_start_kib: 20 * 1024 * 1024,
            available_end_kib: 0,
        }
    }

    #[test]
    fn what_fits_is_counted_or_extrapolated_and_says_which() {
        let limit = capacity(Some(80), 80, Stop::Limit { beyond: Some(429) }, 100);
        assert_eq!(limit.fit(), (Some(80.0), false));
        let refused = capacity(
            Some(80),
            57,
            Stop::Refused {
                status: 503,
                body: String::new(),
            },
            100,
        );
        assert_eq!(refused.fit(), (Some(57.0), false));
        // 20 GiB available at 200 MiB per session hold 102; the limit is lower.
        let rule = capacity(Some(90), 40, Stop::MemoryRule, 200);
        assert_eq!(rule.fit(), (Some(90.0), true));
        let rule = capacity(Some(300), 40, Stop::MemoryRule, 200);
        assert_eq!(rule.fit(), (Some(102.0), true));
        assert_eq!(rule.pss_per_session_kib(), Some(200.0 * 1024.0));
    }

    #[test]
    fn every_cold_target_goes_first_equally_often() {
        for targets in [4, 5] {
            let mut first = vec![0; targets];
            for k in 0..targets * 2 {
                let order = turn(k, targets);
                let mut seen = order.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..targets).collect::<Vec<_>>());
                first[order[0]] += 1;
            }
            assert!(first.iter().all(|&f| f == 2), "{first:?}");
        }
    }

    #[test]
    fn the_engine_is_chosen_by_flag_or_by_executable() {
        let exes = Executables([
            PathBuf::from("/x/chromium-headless-shell"),
            PathBuf::from("/x/chromium"),
        ]);
        assert_eq!(
            engine_args(Selection::Flag, &exes, Engine::Shell),
            [
                "--engine",
                "shell",
                "--chromium-shell",
                "/x/chromium-headless-shell",
                "--chromium",
                "/x/chromium"
            ]
        );
        assert_eq!(
            engine_args(Selection::Executable, &exes, Engine::Shell),
            ["--chromium", "/x/chromium-headless-shell"]
        );
        assert_eq!(
            engine_args(Selection::Executable, &exes, Engine::Chromium),
            ["--chromium", "/x/chromium"]
        );
        assert!(headful_available(Selection::Executable, &None).is_err());
        let yes = Some(serde_json::json!({"default": "shell", "headful": true}));
        assert!(headful_available(Selection::Flag, &yes).is_ok());
        let no = Some(serde_json::json!({"default": "shell", "headful": false}));
        assert!(headful_available(Selection::Flag, &no).is_err());
    }
}
