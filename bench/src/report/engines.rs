//! The `## Engines` section of the report (issue 22): the headless shell against the full
//! Chromium, both through ingot and both launched directly, with the issue's targets judged
//! on shell ÷ Chromium (or on the shell's own figure); the headful table; the capacity rows;
//! its method; and putting it into an existing file on its own (`--only engines`).
//!
//! Self-contained like the cluster, viewer and sandbox sections: its intro line says which
//! run measured it, so an engines-only run replaces it without touching the rest of the file.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Goal, Machine, splice};
use crate::chromium::Engine;
use crate::engines::{
    BURST_CREATE_TIMEOUT_MS, CAPACITY_FLOOR_SHARE, CAPACITY_MEMORY_SHARE, Capacity,
    DEFAULT_CREATE_TIMEOUT_MS, EngineBurst, Engines, EnginesResults, Headful, SETTLE, Selection,
    Stop, WARM_POOL, WARM_SETTLE,
};
use crate::procfs::Footprint;
use crate::sessions::Start;
use crate::stats::{fmt_num, median, percentile};

/// The section's heading line.
const HEADING: &str = "## Engines";
/// The shell's PSS per idle session at most this share of the full Chromium's (issue 22).
const PSS_GOAL: f64 = 0.6;
/// The shell's cold create p50 through ingot at most this share of the full Chromium's.
const COLD_RATIO_GOAL: f64 = 0.4;
/// The shell's cold create p50 through ingot at most direct shell's plus this, in ms.
const COLD_PLUS_GOAL_MS: f64 = 10.0;
/// "Nothing gets worse than on full Chromium": the shell's warm create, round trip and
/// reconnect at most this many times the full Chromium's in the same run (the noise between
/// two interleaved series on this machine).
const NOT_WORSE_GOAL: f64 = 1.05;
/// The full Chromium's figures in this file before issue 22 (6bbf78f, 2026-11-30, run 1):
/// warm create p50 (ms), round trip p50 (µs), reconnect p50 (ms).
const BEFORE: (f64, f64, f64) = (3.15, 431.0, 1.26);

/// One row: a figure per engine (shell, full Chromium), judged on shell ÷ Chromium, or (for
/// [`Goal::AtMost`]) on the shell's own figure.
struct EngineRow {
    metric: String,
    unit: &'static str,
    figures: [Option<f64>; 2],
    /// Whether the ratio column means something (not for differences and counts).
    ratio: bool,
    /// Whether the figures are counts, printed whole.
    whole: bool,
    goal: Option<Goal>,
    note: String,
}

impl EngineRow {
    fn new(metric: impl Into<String>, unit: &'static str, figures: [Option<f64>; 2]) -> Self {
        EngineRow {
            metric: metric.into(),
            unit,
            figures,
            ratio: true,
            whole: false,
            goal: None,
            note: String::new(),
        }
    }

    fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    fn no_ratio(mut self) -> Self {
        self.ratio = false;
        self
    }

    fn whole(mut self) -> Self {
        self.whole = true;
        self
    }

    /// Shell ÷ Chromium.
    fn ratio(&self) -> Option<f64> {
        match (self.ratio, self.figures) {
            (true, [Some(s), Some(c)]) if c > 0.0 => Some(s / c),
            _ => None,
        }
    }

    /// `Some(true)` met, `Some(false)` missed, `None` when no target applies or no figure.
    fn met(&self) -> Option<bool> {
        let shell = self.figures[0];
        match self.goal? {
            Goal::RatioAtMost(max) => Some(self.ratio()? <= max),
            Goal::RatioAtLeast(min) => Some(self.ratio()? >= min),
            Goal::AtMost(max) => Some(shell? <= max),
            Goal::AtLeast(min) => Some(shell? >= min),
            Goal::PlusAtMost(max) => Some(shell? - self.figures[1]? <= max),
        }
    }

    fn cells(&self) -> [String; 6] {
        let figure = |v: Option<f64>| {
            v.map_or("n/a".to_owned(), |v| {
                let v = if self.whole {
                    format!("{v:.0}")
                } else {
                    fmt_num(v)
                };
                format!("{v} {}", self.unit).trim_end().to_owned()
            })
        };
        let ratio = self.ratio().map_or("–".to_owned(), |r| format!("{r:.2}×"));
        let target = match self.goal {
            None => "–".to_owned(),
            Some(goal) => {
                let what = match goal {
                    Goal::RatioAtMost(x) => format!("≤ {x:.2}× Chromium"),
                    Goal::RatioAtLeast(x) => format!("≥ {x:.2}× Chromium"),
                    Goal::AtMost(x) => format!("shell ≤ {} {}", fmt_num(x), self.unit),
                    Goal::AtLeast(x) => format!("shell ≥ {} {}", fmt_num(x), self.unit),
                    Goal::PlusAtMost(x) => format!("≤ Chromium + {} {}", fmt_num(x), self.unit),
                };
                let verdict = match self.met() {
                    Some(true) => "**met**",
                    Some(false) => "**missed**",
                    None => "not measured",
                };
                format!("{what}: {verdict}")
            }
        };
        [
            self.metric.clone(),
            figure(self.figures[0]),
            figure(self.figures[1]),
            ratio,
            target,
            self.note.clone(),
        ]
    }
}

fn totals(starts: &[Start]) -> Vec<f64> {
    starts.iter().map(|s| s.total_ms).collect()
}

/// `f` of each engine's samples.
fn each<T: ?Sized>(samples: [&T; 2], f: impl Fn(&T) -> Option<f64>) -> [Option<f64>; 2] {
    [f(samples[0]), f(samples[1])]
}

fn pair<T>(v: &[T; 2]) -> [&T; 2] {
    [&v[0], &v[1]]
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// Memory per idle session at each burst size: PSS (the target), private memory, processes.
fn memory_rows(r: &EnginesResults) -> Vec<EngineRow> {
    let mut rows = Vec::new();
    for (n, bursts) in &r.bursts {
        let per = |f: fn(&Footprint) -> u64| {
            move |b: &EngineBurst| {
                let v: Vec<f64> = b.memory.iter().map(|m| f(m) as f64 / *n as f64).collect();
                median(&v)
            }
        };
        let pss = each(pair(bursts), per(|m| m.pss_kib)).map(|v| v.map(mib));
        let private = each(pair(bursts), per(|m| m.private_kib)).map(|v| v.map(mib));
        let processes = each(pair(bursts), per(|m| m.processes as u64));
        rows.push(
            EngineRow::new(format!("PSS per idle session, {n} sessions"), "MiB", pss)
                .goal(Goal::RatioAtMost(PSS_GOAL))
                .note(format!(
                    "every process of the gateway's browsers (process groups, crash handlers, descendants) ÷ {n}, read {} s after the last of {n} concurrent creates answered; median of {} rounds; processes per session {} / {}",
                    fmt_num(SETTLE.as_secs_f64()),
                    r.plan.burst_rounds,
                    processes[0].map_or("?".to_owned(), fmt_num),
                    processes[1].map_or("?".to_owned(), fmt_num),
                )),
        );
        rows.push(
            EngineRow::new(
                format!("private memory per idle session, {n} sessions"),
                "MiB",
                private,
            )
            .note("`Private_Clean` + `Private_Dirty` of the same processes"),
        );
    }
    rows
}

/// Cold create through ingot and direct launches, p50 and p99, and the gateway's share.
fn cold_rows(r: &EnginesResults) -> Vec<EngineRow> {
    let p = |q: f64| move |s: &Vec<Start>| percentile(&totals(s), q);
    let ingot50 = each(pair(&r.cold_ingot), p(50.0));
    let direct50 = each(pair(&r.cold_direct), p(50.0));
    let plus = |i: Option<f64>, d: Option<f64>| Some(i? - d?);
    let shared = match &r.cold_shared {
        Some(shared) => {
            let s50 = each(pair(shared), p(50.0));
            format!(
                "; with `--insecure-shared-browser-user` (no uid of its own, no Chromium sandbox, like direct): p50 {} / {} ms, so {} / {} ms over direct",
                s50[0].map_or("?".to_owned(), fmt_num),
                s50[1].map_or("?".to_owned(), fmt_num),
                plus(s50[0], direct50[0]).map_or("?".to_owned(), fmt_num),
                plus(s50[1], direct50[1]).map_or("?".to_owned(), fmt_num),
            )
        }
        None => String::new(),
    };
    vec![
        EngineRow::new("create → first CDP reply, cold, through ingot, p50", "ms", ingot50)
            .goal(Goal::RatioAtMost(COLD_RATIO_GOAL))
            .note(format!(
                "{} creates per target (`--pool-size 0`), every target of this table's cold rows (and the headful create, below) taking turns, each browser gone before the next start",
                r.plan.cold
            )),
        EngineRow::new("same, p99", "ms", each(pair(&r.cold_ingot), p(99.0))),
        EngineRow::new("direct launch → first CDP reply, p50", "ms", direct50).note(
            "the same executable launched by the benchmark with ingot's flags: the shell without `--headless`, the full Chromium with `--headless=new`",
        ),
        EngineRow::new("same, p99", "ms", each(pair(&r.cold_direct), p(99.0))),
        EngineRow::new("through ingot − direct, cold p50", "ms", [plus(ingot50[0], direct50[0]), plus(ingot50[1], direct50[1])])
            .no_ratio()
            .goal(Goal::AtMost(COLD_PLUS_GOAL_MS))
            .note(format!("the gateway's share of a cold create, per engine, with ingot's default sandbox (direct runs as root with `--no-sandbox`): the target is the shell's ≤ direct shell + 10 ms{shared}")),
    ]
}

/// Warm create, round trip and reconnect: the shell against the full Chromium in the same
/// run, and the full Chromium's figures in this file before issue 22.
fn warm_rows(r: &EnginesResults) -> Vec<EngineRow> {
    let p = |q: f64| move |s: &Vec<Start>| percentile(&totals(s), q);
    let med = |v: &Vec<f64>| median(v);
    let before = format!(
        "before issue 22 (full Chromium, 6bbf78f, run 1 of 2026-11-30 above): warm {} ms, round trip {} µs, reconnect {} ms",
        fmt_num(BEFORE.0),
        fmt_num(BEFORE.1),
        fmt_num(BEFORE.2)
    );
    let mut rows = Vec::new();
    if let Some(warm) = &r.warm {
        rows.push(
            EngineRow::new("create → first CDP reply, warm pool, p50", "ms", each(pair(warm), p(50.0)))
                .goal(Goal::RatioAtMost(NOT_WORSE_GOAL))
                .note(format!(
                    "{} creates per engine, `--pool-size {WARM_POOL}` on a gateway per engine, both pools full and idle for {} s before each create, the engines taking turns; {before}",
                    r.plan.warm,
                    fmt_num(WARM_SETTLE.as_secs_f64())
                )),
        );
        rows.push(EngineRow::new("same, p99", "ms", each(pair(warm), p(99.0))));
    }
    let p50 = |v: &Vec<f64>| percentile(v, 50.0);
    rows.extend([
        EngineRow::new("`Runtime.evaluate 1+1` round trip, p50", "µs", each(pair(&r.rtt_p50_us), med))
            .goal(Goal::RatioAtMost(NOT_WORSE_GOAL))
            .note(format!(
                "{} per engine per round in blocks of {}, the engines taking turns; median of {} rounds' p50",
                r.plan.rtt_runs, r.plan.rtt_block, r.plan.rtt_rounds
            )),
        EngineRow::new("same, p99", "µs", each(pair(&r.rtt_p99_us), med)),
        EngineRow::new("new WebSocket to first CDP reply (reconnect), p50", "ms", each(pair(&r.reconnect_ms), p50))
            .goal(Goal::RatioAtMost(NOT_WORSE_GOAL))
            .note(format!(
                "{} per engine after each round's round trips, all rounds pooled",
                r.plan.reconnects
            )),
    ]);
    rows
}

/// Bursts of concurrent creates: the wall time until all answered, p50 and p99 per create.
fn burst_rows(r: &EnginesResults) -> Vec<EngineRow> {
    let mut rows = Vec::new();
    for (n, bursts) in &r.bursts {
        let wall = each(pair(bursts), |b: &EngineBurst| median(&b.wall_ms));
        let p50 = each(pair(bursts), |b: &EngineBurst| median(&b.round_p50_ms));
        let p99 = each(pair(bursts), |b: &EngineBurst| {
            percentile(&b.start_ms, 99.0)
        });
        let rounds = |b: &EngineBurst| {
            b.wall_ms
                .iter()
                .map(|w| format!("{w:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push(
            EngineRow::new(format!("{n} concurrent creates: all answered"), "ms", wall).note(format!(
                "from firing {n} creates at once (`--pool-size 0`) to the last first CDP reply; median of {} rounds, the engines taking turns at going first (shell {}; Chromium {} ms)",
                r.plan.burst_rounds,
                rounds(&bursts[0]),
                rounds(&bursts[1])
            )),
        );
        rows.push(
            EngineRow::new(
                format!("{n} concurrent creates: create → first reply, p50"),
                "ms",
                p50,
            )
            .note("median of the rounds' p50s"),
        );
        let over = |b: &EngineBurst| {
            b.start_ms
                .iter()
                .filter(|&&t| t > DEFAULT_CREATE_TIMEOUT_MS)
                .count()
        };
        rows.push(
            EngineRow::new(format!("{n} concurrent creates: same, p99"), "ms", p99).note(format!(
                "every round's creates pooled; over ingot's default `--create-timeout-ms` ({} s, raised to {} s here): shell {} of {}, Chromium {} of {}",
                fmt_num(DEFAULT_CREATE_TIMEOUT_MS / 1000.0),
                BURST_CREATE_TIMEOUT_MS / 1000,
                over(&bursts[0]),
                bursts[0].start_ms.len(),
                over(&bursts[1]),
                bursts[1].start_ms.len()
            )),
        );
    }
    rows
}

/// Capacity with each engine's derived `--max-sessions`.
fn capacity_rows(r: &EnginesResults) -> Vec<EngineRow> {
    let c = pair(&r.capacity);
    let count = |f: fn(&Capacity) -> Option<f64>| each(c, f);
    let gib = r.mem_total_kib as f64 / 1048576.0;
    let fit = count(|c| c.fit().0);
    let per_gib = fit.map(|f| f.filter(|_| gib > 0.0).map(|f| f / gib));
    let by_pss = count(|c| c.pss_per_session_kib().map(|p| 1048576.0 / p));
    vec![
        EngineRow::new("derived `--max-sessions` (unset)", "", count(|c| c.limit.map(|l| l as f64)))
            .no_ratio()
            .whole()
            .note("`maxSessions` of `/readyz` on a gateway started without `--max-sessions`, `--pool-size 0`"),
        EngineRow::new("sessions created before the first refusal", "", count(|c| Some(c.created as f64)))
            .no_ratio()
            .whole()
            .note(format!("shell: {}; Chromium: {}", stop_note(c[0]), stop_note(c[1]))),
        EngineRow::new("PSS per idle session at that count", "MiB", count(|c| c.pss_per_session_kib().map(mib)))
            .note(format!(
                "MemAvailable before / after the creates: shell {} / {} GiB, Chromium {} / {} GiB",
                gib_of(c[0].available_start_kib),
                gib_of(c[0].available_end_kib),
                gib_of(c[1].available_start_kib),
                gib_of(c[1].available_end_kib)
            )),
        EngineRow::new("sessions that fit in this machine", "", fit)
            .whole()
            .note(format!(
                "{}{}",
                fit_note(c[0], "shell"),
                fit_note(c[1], "Chromium")
            )),
        EngineRow::new("sessions per GiB of the machine's memory", "", per_gib)
            .note(format!("the row above ÷ {} GiB (`MemTotal`)", fmt_num(gib))),
        EngineRow::new("sessions per GiB by memory alone (1 GiB ÷ PSS per session)", "", by_pss)
            .note("what the memory holds when the session limit is not what stops creates"),
    ]
}

fn gib_of(kib: u64) -> String {
    fmt_num(kib as f64 / 1048576.0)
}

/// Why a capacity phase stopped, for people.
fn stop_note(c: &Capacity) -> String {
    match &c.stop {
        Stop::Refused { status, body } => {
            let short: String = body.chars().take(80).collect();
            format!(
                "refused with {status} at session {} (`{short}`)",
                c.created + 1
            )
        }
        Stop::Limit {
            beyond: Some(status),
        } => {
            format!("reached the limit; the next create was refused with {status}")
        }
        Stop::Limit { beyond: None } => {
            "reached the limit, and the next create was **not** refused (counted)".to_owned()
        }
        Stop::MemoryRule => format!(
            "stopped at {}: PSS per session × the limit would exceed {:.0} % of MemAvailable",
            c.created,
            CAPACITY_MEMORY_SHARE * 100.0
        ),
        Stop::Floor => format!(
            "stopped at {}: MemAvailable fell under {:.0} % of the machine's memory",
            c.created,
            CAPACITY_FLOOR_SHARE * 100.0
        ),
        Stop::Cap => format!("stopped at {}: the plan's cap (a smoke run)", c.created),
    }
}

/// Whether the fit is counted or extrapolated.
fn fit_note(c: &Capacity, name: &str) -> String {
    match c.fit() {
        (_, false) => format!("{name}: counted. "),
        (Some(f), true) => format!(
            "{name}: **extrapolated**, not counted: the lower of the limit and MemAvailable at the start ÷ PSS per session ({}). ",
            fmt_num(f)
        ),
        (None, true) => format!("{name}: not known. "),
    }
}

fn rows(r: &EnginesResults) -> Vec<EngineRow> {
    let mut rows = memory_rows(r);
    rows.extend(cold_rows(r));
    rows.extend(warm_rows(r));
    rows.extend(burst_rows(r));
    rows.extend(capacity_rows(r));
    rows
}

fn render(header: &str, rows: &[EngineRow]) -> String {
    let mut out = format!("{header}\n|---|---:|---:|---:|---|---|\n");
    for row in rows {
        out.push_str(&format!("| {} |\n", row.cells().join(" | ")));
    }
    out
}

/// The headful rows: cold create and the memory of one session with its `Xvfb`, against one
/// headless full Chromium session read the same way.
fn headful_rows(r: &EnginesResults, h: &Headful) -> Vec<EngineRow> {
    let cold = [
        totals(&h.cold),
        totals(&r.cold_ingot[Engine::Chromium.index()]),
    ];
    let p = |q: f64| [percentile(&cold[0], q), percentile(&cold[1], q)];
    let med = |f: &[Footprint], g: fn(&Footprint) -> u64| {
        median(&f.iter().map(|m| g(m) as f64).collect::<Vec<_>>())
    };
    let both = |g: fn(&Footprint) -> u64| [med(&h.memory, g), med(&h.headless, g)];
    let pss = both(|m| m.pss_kib).map(|v| v.map(mib));
    vec![
        EngineRow::new("create (`\"headless\": false`) → first CDP reply, cold, p50", "ms", p(50.0))
            .note(format!(
                "{} creates in the cold loop above, taking turns with the other targets; headless: the full Chromium's creates of the same loop",
                h.cold.len()
            )),
        EngineRow::new("same, p99", "ms", p(99.0)),
        EngineRow::new("PSS of one idle session, its `Xvfb` included", "MiB", pss).note(format!(
            "one session alone on the gateway, read {} s after its create; median of {} readings, headful and headless taking turns; processes {} / {}",
            fmt_num(SETTLE.as_secs_f64()),
            h.memory.len(),
            both(|m| m.processes as u64)[0].map_or("?".to_owned(), fmt_num),
            both(|m| m.processes as u64)[1].map_or("?".to_owned(), fmt_num),
        )),
        EngineRow::new("of which `Xvfb`", "MiB", [med(&h.xvfb, |m| m.pss_kib).map(mib), None])
            .note(format!(
                "processes named `Xvfb` among them: {}",
                h.xvfb.first().map_or(0, |x| x.processes)
            )),
        EngineRow::new("private memory of the same", "MiB", both(|m| m.private_kib).map(|v| v.map(mib))),
    ]
}

/// The section's tables, or why it was not measured.
pub(crate) fn engines_table(e: &Engines) -> String {
    let r = match e {
        Engines::Measured(r) => r,
        Engines::Skipped(why) => return format!("Not measured: {why}.\n"),
    };
    let mut out = render(
        "| metric | headless shell | full Chromium | shell ÷ Chromium | target | notes |",
        &rows(r),
    );
    out.push('\n');
    match &r.headful {
        Ok(h) => out.push_str(&render(
            "| headful | headful full Chromium on `Xvfb` | headless full Chromium | headful ÷ headless | target | notes |",
            &headful_rows(r, h),
        )),
        Err(why) => out.push_str(&format!("Headful sessions not measured: {why}.\n")),
    }
    out
}

/// How many of the section's targets were met, out of those measured.
pub(crate) fn engines_targets_met(e: &Engines) -> (usize, usize) {
    let Engines::Measured(r) = e else {
        return (0, 0);
    };
    let verdicts: Vec<bool> = rows(r).iter().filter_map(EngineRow::met).collect();
    (verdicts.iter().filter(|m| **m).count(), verdicts.len())
}

/// The whole section, from its heading to its method, ending with one newline.
pub(super) fn section(e: &Engines, intro: &str, quick: bool) -> String {
    let quick = if quick {
        " **A quick smoke run (`--quick`): too few samples to quote.**"
    } else {
        ""
    };
    let body = match e {
        Engines::Measured(r) => format!("{}\n{}", engines_table(e), method(r)),
        Engines::Skipped(_) => engines_table(e),
    };
    format!("{HEADING}\n\n{intro}{quick}\n\n{body}")
}

fn method(r: &EnginesResults) -> String {
    let [shell, chromium] = &r.executables.0;
    let how = match r.selection {
        Selection::Flag => format!(
            "`--engine shell` / `--engine chromium`, each with `--chromium-shell {}` and `--chromium {}`",
            shell.display(),
            chromium.display()
        ),
        Selection::Executable => format!(
            "this ingot has no `--engine`, so each gateway's `--chromium` names the engine's executable ({} / {}), the issue's own method",
            shell.display(),
            chromium.display()
        ),
    };
    let healthz = |i: usize| {
        r.healthz[i]
            .as_ref()
            .map_or("none".to_owned(), |v| format!("`{v}`"))
    };
    format!(
        "\
- **Targets.** Gateways of one engine each: {how}. Sessions ran `{ls}` and `{lc}` (read from \
`/proc`); `/healthz` `engines`: {hs} / {hc}. *Direct* is the same executable launched by the \
benchmark with ingot's flags and a DevTools port (the shell without `--headless`, the full \
Chromium with `--headless=new`). Every gateway here has `--pool-size 0` except the warm ones.
- **Memory per idle session** is read in the bursts: {sizes} creates at once on `about:blank`, \
{settle} s after the last answered, the PSS (and `Private_Clean` + `Private_Dirty`) of \
`/proc/<pid>/smaps_rollup` summed over every process of the gateway's browsers (their process \
groups, the crash handlers naming a profile, and every other descendant of the gateway) ÷ the \
count. The issue's target: the shell at ≤ {PSS_GOAL:.1}× the full Chromium's PSS.
- **Cold create** to first CDP reply: `POST /v1/sessions` → WebSocket to `websocketUrl` → reply to \
`Browser.getVersion`; direct: spawn → `DevToolsActivePort` → WebSocket → the same reply. Direct \
shell, ingot shell, direct Chromium, ingot Chromium (and a headful create) take turns, each going \
first equally often; one unmeasured direct launch per engine first. Targets: the shell through \
ingot ≤ {COLD_RATIO_GOAL:.1}× the full Chromium's p50, and ≤ direct shell + {plus} ms.
- **Warm create, round trip, reconnect** on a gateway per engine with `--pool-size {WARM_POOL}`; \
the issue's \"nothing gets worse than on full Chromium\" is judged against the full Chromium in the \
same run (≤ {NOT_WORSE_GOAL:.2}×), and the notes give the figures of this file before issue 22.
- **Headful**: `{{\"headless\": false}}` creates on the full Chromium's gateway: a full Chromium on \
an `Xvfb` of its own; its memory is every process of the gateway's tree with one session alone, \
the `Xvfb` found by its name among them.
- **Capacity**: a gateway per engine without `--max-sessions` (ingot derives it from memory at \
start-up), `--pool-size 0`; creates in batches of {batch} until one is refused (429/503) or the \
limit is reached, then one more create to see it refused. It never fills the machine: past \
{check} sessions it goes on only while PSS per session × the limit stays under \
{share:.0} % of `MemAvailable` at the start (else it stops there and extrapolates, and says so), \
and it stops at once if `MemAvailable` falls under {floor:.0} % of `MemTotal`. Every session is \
released at the end.
",
        ls = r.launched[0],
        lc = r.launched[1],
        hs = healthz(0),
        hc = healthz(1),
        sizes = r
            .bursts
            .iter()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        settle = fmt_num(SETTLE.as_secs_f64()),
        plus = fmt_num(COLD_PLUS_GOAL_MS),
        batch = r.plan.capacity_batch,
        check = r.plan.capacity_check_at,
        share = CAPACITY_MEMORY_SHARE * 100.0,
        floor = CAPACITY_FLOOR_SHARE * 100.0,
    )
}

/// Puts the section, measured by `--only engines`, into the report at `path` (creating the
/// file if there is none), leaving the rest of the file as it was.
pub(crate) fn write_engines(
    path: &Path,
    e: &Engines,
    machine: &Machine,
    took: Duration,
    quick: bool,
) -> Result<()> {
    let intro = format!(
        "Written by `cargo run --release -p ingot-bench -- --only engines{}` on {date}; the section took {mins} min {secs} s \
         (ingot commit {commit}, {chromium}, {cpu}, {cores} cores, {mem:.1} GiB, load average at start / end {start} / {end}; \
         other Chromium processes running at start: {foreign}). The rest of this file is from the runs described above.",
        if quick { " --quick" } else { "" },
        date = machine.date,
        mins = took.as_secs() / 60,
        secs = took.as_secs() % 60,
        commit = machine.ingot_commit,
        chromium = machine.chromium,
        cpu = machine.cpu,
        cores = machine.cores,
        mem = machine.memory_gib,
        start = machine.load_start,
        end = machine.load_end,
        foreign = machine.foreign_chromium,
    );
    let section = section(e, &intro, quick);
    let text = match std::fs::read_to_string(path) {
        Ok(doc) => splice(&doc, HEADING, &section),
        Err(_) => format!("# Benchmarks\n\n{section}"),
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::{EnginesPlan, Executables};

    fn start(ms: f64) -> Start {
        Start {
            total_ms: ms,
            address_ms: ms / 2.0,
        }
    }

    fn footprint(n: usize, pss_mib: u64, private_mib: u64, processes: usize) -> Footprint {
        Footprint {
            processes: processes * n,
            pss_kib: pss_mib * 1024 * n as u64,
            rss_kib: 0,
            private_kib: private_mib * 1024 * n as u64,
        }
    }

    fn burst(n: usize, pss: u64, private: u64, processes: usize) -> EngineBurst {
        EngineBurst {
            start_ms: vec![100.0; n],
            round_p50_ms: vec![100.0],
            wall_ms: vec![900.0],
            memory: vec![footprint(n, pss, private, processes)],
        }
    }

    fn capacity(limit: usize, created: usize, stop: Stop, pss_mib: u64) -> Capacity {
        Capacity {
            limit: Some(limit),
            created,
            stop,
            memory: footprint(created, pss_mib, pss_mib / 2, 6),
            available_start_kib: 20 << 20,
            available_end_kib: 10 << 20,
        }
    }

    /// Figures that meet every target.
    fn results() -> EnginesResults {
        EnginesResults {
            plan: EnginesPlan {
                cold: 3,
                bursts: vec![10],
                burst_rounds: 1,
                warm: 3,
                rtt_rounds: 1,
                rtt_runs: 100,
                rtt_block: 50,
                reconnects: 2,
                headful_memory: 1,
                capacity_batch: 10,
                capacity_check_at: 40,
                capacity_cap: 400,
            },
            selection: Selection::Flag,
            executables: Executables(["/s".into(), "/c".into()]),
            launched: ["/s".into(), "/c".into()],
            healthz: [None, None],
            cold_direct: [vec![start(60.0); 3], vec![start(240.0); 3]],
            cold_ingot: [vec![start(68.0); 3], vec![start(250.0); 3]],
            cold_shared: Some([vec![start(65.0); 3], vec![start(245.0); 3]]),
            headful: Err("no Xvfb".into()),
            bursts: vec![(10, [burst(10, 80, 50, 6), burst(10, 140, 90, 10)])],
            warm: Some([vec![start(3.0); 3], vec![start(3.1); 3]]),
            rtt_p50_us: [vec![400.0], vec![410.0]],
            rtt_p99_us: [vec![800.0], vec![800.0]],
            reconnect_ms: [vec![1.0, 1.0], vec![1.0, 1.0]],
            capacity: [
                capacity(100, 100, Stop::Limit { beyond: Some(429) }, 80),
                capacity(200, 40, Stop::MemoryRule, 140),
            ],
            mem_total_kib: 24 << 20,
        }
    }

    fn row<'a>(table: &'a str, metric: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {metric} |")))
            .unwrap_or_else(|| panic!("no row {metric} in\n{table}"))
    }

    #[test]
    fn targets_are_the_issues() {
        let ok = Engines::Measured(Box::new(results()));
        // PSS at 10, cold ratio, cold plus, warm, round trip, reconnect.
        assert_eq!(engines_targets_met(&ok), (6, 6));
        let table = engines_table(&ok);
        assert!(
            row(&table, "PSS per idle session, 10 sessions")
                .contains("| 80.0 MiB | 140 MiB | 0.57× | ≤ 0.60× Chromium: **met** |"),
            "{table}"
        );
        assert!(
            row(&table, "through ingot − direct, cold p50")
                .contains("| 8.00 ms | 10.0 ms | – | shell ≤ 10.0 ms: **met** |"),
            "{table}"
        );
        let mut slow = results();
        slow.cold_ingot[0] = vec![start(120.0); 3];
        slow.bursts[0].1[0] = burst(10, 100, 60, 6);
        let slow = Engines::Measured(Box::new(slow));
        // Cold 120 ms is 0.48× and 60 ms over direct; PSS 0.71×.
        assert_eq!(engines_targets_met(&slow), (3, 6));
    }

    #[test]
    fn capacity_says_what_was_counted_and_what_extrapolated() {
        let table = engines_table(&Engines::Measured(Box::new(results())));
        let fit = row(&table, "sessions that fit in this machine");
        // Chromium: 20 GiB at 140 MiB hold 146, under its limit of 200.
        assert!(fit.contains("| 100 | 146 |"), "{fit}");
        assert!(fit.contains("shell: counted"), "{fit}");
        assert!(fit.contains("Chromium: **extrapolated**"), "{fit}");
        let per_gib = row(&table, "sessions per GiB of the machine's memory");
        assert!(per_gib.contains("| 4.17 | 6.08 |"), "{per_gib}");
        let created = row(&table, "sessions created before the first refusal");
        assert!(
            created.contains("next create was refused with 429"),
            "{created}"
        );
        assert!(
            table.contains("Headful sessions not measured: no Xvfb."),
            "{table}"
        );
    }

    #[test]
    fn the_section_replaces_its_own_and_keeps_the_rest() {
        let doc = "# B\n\n## Sandbox\n\ns\n\n## Method\n\n- m\n";
        let text = section(&Engines::Skipped("no shell".into()), "intro", false);
        assert_eq!(text, "## Engines\n\nintro\n\nNot measured: no shell.\n");
        let once = splice(doc, HEADING, &text);
        assert_eq!(
            once,
            "# B\n\n## Sandbox\n\ns\n\n## Engines\n\nintro\n\nNot measured: no shell.\n\n## Method\n\n- m\n"
        );
        let full = section(&Engines::Measured(Box::new(results())), "intro", false);
        let twice = splice(&once, HEADING, &full);
        assert!(twice.starts_with("# B\n\n## Sandbox\n\ns\n\n## Engines\n\nintro\n\n| metric |"));
        assert!(twice.ends_with("\n\n## Method\n\n- m\n"), "{twice}");
        assert_eq!(engines_targets_met(&Engines::Skipped("x".into())), (0, 0));
    }
}
