//! The machine description and the results table, printed and written to `BENCHMARKS.md`.
//!
//! Owns turning samples into rows (the figure each row reports, its ratio to direct
//! Chromium, and whether a target was met) and the file's layout. A hand-written
//! `## Findings` section already in the file is kept when the file is rewritten. The
//! `## Cluster` section ([`cluster`]), the `## Viewer` section ([`viewer`]) and the
//! `## Sandbox` section ([`sandbox`]) and the `## Engines` section ([`engines`]) have their
//! own tables and method, so that `--only cluster`, `--only viewer`, `--only sandbox` or
//! `--only engines` can replace one alone and leave the rest of the file, written by a full
//! run, as it was.

mod cluster;
mod engines;
mod sandbox;
mod viewer;

pub(crate) use cluster::{cluster_tables, cluster_targets_met, write_cluster};
pub(crate) use engines::{engines_table, engines_targets_met, write_engines};
pub(crate) use sandbox::{sandbox_table, sandbox_targets_met, write_sandbox};
pub(crate) use viewer::{viewer_table, viewer_targets_met, write_viewer};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cluster::Cluster;
use crate::engines::Engines;
use crate::percommand::{Cost, PIPELINED, RECONNECT_SETTLE, Samples};
use crate::procfs;
use crate::sandbox::Sandbox;
use crate::sessions::{Burst, IdleClients, Start};
use crate::stats::{fmt_num, median, percentile};
use crate::viewer::Viewer;

/// The intro line of a section (`## Cluster`, `## Viewer`) that a full run measured.
const FULL_RUN: &str = "Measured in the full run described at the top of this file.";

/// Where and when the benchmark ran.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub chromium: String,
    pub date: String,
    pub ingot_commit: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures at the start and at the end.
    pub load_start: String,
    pub load_end: String,
    /// Chromium processes of others running when the benchmark started (a shared machine).
    pub foreign_chromium: usize,
}

impl Machine {
    pub(crate) fn detect(chromium_version: String, commit: Option<String>) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let date = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .unwrap_or_else(|_| "unknown".into());
        let ingot_commit = commit.unwrap_or_else(git_head);

        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel,
            chromium: chromium_version,
            date,
            ingot_commit,
            load_start: load_average(),
            load_end: String::new(),
            foreign_chromium: procfs::count_named("chromium"),
        }
    }

    /// Notes the load at the end of the run.
    pub(crate) fn finish(&mut self) {
        self.load_end = load_average();
    }
}

/// The commit checked out in the current directory (read-only: the gateway was built from it
/// when the benchmark runs inside the repository).
fn git_head() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether the warm pool was measured.
#[derive(Debug)]
pub(crate) enum Warm {
    Measured {
        /// Creates after the full pool idled for a second.
        settled: Vec<Start>,
        /// Creates the moment the pool was full again.
        fresh: Vec<Start>,
        /// Whether refills were awaited through a pool gauge rather than a fixed pause.
        gauge: bool,
    },
    /// This ingot has no `--pool-size`.
    Unsupported,
}

/// The figures `--only core` measures: per-command rounds, cold and warm starts.
#[derive(Debug)]
pub(crate) struct Core {
    pub quick: bool,
    pub rounds: usize,
    pub rtt_runs: usize,
    pub direct: Samples,
    pub ingot: Samples,
    pub direct_viewport: String,
    pub ingot_viewport: String,
    pub cold_direct: Vec<Start>,
    pub cold_ingot: Vec<Start>,
    pub warm: Warm,
    /// ingot's engine, for people (`` `shell`, the headless shell (`/usr/…`) ``).
    pub engine: String,
    /// What the direct column launched, for people.
    pub direct_build: String,
}

/// Every figure of one run.
#[derive(Debug)]
pub(crate) struct Results {
    pub core: Core,
    /// (sessions, direct, ingot)
    pub bursts: Vec<(usize, Burst, Burst)>,
    /// Rounds of each burst size.
    pub burst_rounds: usize,
    pub idle: (IdleClients, IdleClients),
    pub cluster: Cluster,
    pub viewer: Viewer,
    pub sandbox: Sandbox,
    pub engines: Engines,
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Better {
    Lower,
    Higher,
}

/// A target a row is judged against.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// ingot ÷ direct at most this.
    RatioAtMost(f64),
    /// ingot ÷ direct at least this.
    RatioAtLeast(f64),
    /// ingot's own figure at most this, in the row's unit.
    AtMost(f64),
    /// ingot's own figure at least this, in the row's unit.
    AtLeast(f64),
    /// ingot − direct at most this, in the row's unit.
    PlusAtMost(f64),
}

struct Row {
    metric: String,
    unit: &'static str,
    better: Better,
    direct: Option<f64>,
    ingot: Option<f64>,
    goal: Option<Goal>,
    note: String,
}

impl Row {
    fn new(metric: impl Into<String>, unit: &'static str, better: Better) -> Row {
        Row {
            metric: metric.into(),
            unit,
            better,
            direct: None,
            ingot: None,
            goal: None,
            note: String::new(),
        }
    }
    fn figures(mut self, direct: Option<f64>, ingot: Option<f64>) -> Row {
        self.direct = direct;
        self.ingot = ingot;
        self
    }
    fn goal(mut self, goal: Goal) -> Row {
        self.goal = Some(goal);
        self
    }
    fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    fn ratio(&self) -> Option<f64> {
        match (self.direct, self.ingot) {
            (Some(d), Some(i)) if d > 0.0 => Some(i / d),
            _ => None,
        }
    }

    /// `Some(true)` met, `Some(false)` missed, `None` when no target applies or no figure.
    fn met(&self) -> Option<bool> {
        match self.goal? {
            Goal::RatioAtMost(max) => Some(self.ratio()? <= max),
            Goal::RatioAtLeast(min) => Some(self.ratio()? >= min),
            Goal::AtMost(max) => Some(self.ingot? <= max),
            Goal::AtLeast(min) => Some(self.ingot? >= min),
            Goal::PlusAtMost(max) => Some(self.ingot? - self.direct? <= max),
        }
    }

    fn cells(&self) -> [String; 6] {
        let figure = |v: Option<f64>| {
            v.map_or("n/a".to_owned(), |v| {
                format!("{} {}", fmt_num(v), self.unit)
                    .trim_end()
                    .to_owned()
            })
        };
        let direction = match self.better {
            Better::Lower => "lower is better",
            Better::Higher => "higher is better",
        };
        let ratio = self.ratio().map_or("–".to_owned(), |r| format!("{r:.2}×"));
        let target = match (self.goal, self.met()) {
            (None, _) => "–".to_owned(),
            (Some(goal), met) => {
                let what = match goal {
                    Goal::RatioAtMost(x) => format!("≤ {x:.2}× direct"),
                    Goal::RatioAtLeast(x) => format!("≥ {x:.2}× direct"),
                    Goal::AtMost(x) => format!("≤ {} {}", fmt_num(x), self.unit),
                    Goal::AtLeast(x) => format!("≥ {} {}", fmt_num(x), self.unit),
                    Goal::PlusAtMost(x) => format!("≤ direct + {} {}", fmt_num(x), self.unit),
                };
                let verdict = match met {
                    Some(true) => "**met**",
                    Some(false) => "**missed**",
                    None => "not measured",
                };
                // The ratio column does not show a difference: say it.
                let difference = match (goal, self.direct, self.ingot) {
                    (Goal::PlusAtMost(_), Some(d), Some(i)) => {
                        format!(
                            " ({}{} {})",
                            if i >= d { "+" } else { "−" },
                            fmt_num((i - d).abs()),
                            self.unit
                        )
                    }
                    _ => String::new(),
                };
                format!("{what}: {verdict}{difference}")
            }
        };
        [
            format!("{} ({direction})", self.metric),
            figure(self.direct),
            figure(self.ingot),
            ratio,
            target,
            self.note.clone(),
        ]
    }
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every row of the table, in order: per-command figures, cold and warm starts, bursts of
/// concurrent sessions, idle clients.
fn rows(r: &Results) -> Vec<Row> {
    let mut rows = core_rows(&r.core);
    for (n, direct, ingot) in &r.bursts {
        rows.extend(burst_rows(*n, direct, ingot, r.burst_rounds));
    }
    rows.push(idle_clients_row(&r.idle.0, &r.idle.1));
    rows
}

/// The rows `--only core` measures: per-command figures, cold and warm starts.
fn core_rows(r: &Core) -> Vec<Row> {
    let mut rows = round_trip_rows(r);
    rows.extend(command_rows(r));
    rows.extend(cold_start_rows(r));
    rows.extend(warm_pool_rows(r));
    rows
}

/// Round trips: p50 and p99 (medians over rounds); the gateway's CPU time per round trip and
/// per message; context switches per round trip of the gateway, the browser process and the
/// client; the browser process's CPU time per round trip.
fn round_trip_rows(r: &Core) -> Vec<Row> {
    let gateway_cpu = median(&r.ingot.gateway_rtt.cpu_us);
    let gateway_switches = median(&r.ingot.gateway_rtt.switches);
    let browser_switches = (
        median(&r.direct.browser_rtt.switches),
        median(&r.ingot.browser_rtt.switches),
    );
    let with_gateway = match (browser_switches.1, gateway_switches) {
        (Some(b), Some(g)) => fmt_num(b + g),
        _ => "?".to_owned(),
    };
    vec![
        Row::new(
            "`Runtime.evaluate 1+1` round trip, p50",
            "µs",
            Better::Lower,
        )
        .figures(median(&r.direct.rtt_p50_us), median(&r.ingot.rtt_p50_us))
        .goal(Goal::RatioAtMost(RTT_GOAL))
        .note(format!(
            "ingot's engine: {}; direct: {}; {} per target per round, in blocks alternating between the targets; median of {} rounds",
            r.engine, r.direct_build, r.rtt_runs, r.rounds
        )),
        Row::new("same, p99", "µs", Better::Lower)
            .figures(median(&r.direct.rtt_p99_us), median(&r.ingot.rtt_p99_us)),
        Row::new("gateway CPU time per round trip", "µs", Better::Lower)
            .figures(None, gateway_cpu)
            .goal(Goal::AtMost(GATEWAY_CPU_GOAL_US))
            .note("all of ingot's threads (`/proc/<pid>/task/*/schedstat`) during its round trips; median of rounds"),
        Row::new("gateway CPU time per message", "µs", Better::Lower)
            .figures(None, gateway_cpu.map(|c| c / 2.0))
            .note("the row above ÷ 2: a round trip is two messages through the gateway, the command from the client to the browser and its reply back"),
        Row::new("context switches per round trip, gateway (all threads)", "", Better::Lower)
            .figures(None, gateway_switches)
            .note("`voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` summed over `/proc/<pid>/task/*/status`, read around ingot's blocks; median of rounds"),
        Row::new("context switches per round trip, Chromium browser process (all threads)", "", Better::Lower)
            .figures(browser_switches.0, browser_switches.1)
            .note(format!(
                "the browser process only (renderers not counted): direct's serves the client's WebSocket, ingot's session browser (ingot's child with `--remote-debugging-pipe`) its pipe to ingot; with the gateway's: {} vs {with_gateway}",
                browser_switches.0.map_or("?".to_owned(), fmt_num)
            )),
        Row::new("Chromium browser process CPU time per round trip", "µs", Better::Lower)
            .figures(median(&r.direct.browser_rtt.cpu_us), median(&r.ingot.browser_rtt.cpu_us))
            .note("the same process, all its threads, `schedstat`"),
        Row::new("context switches per round trip, benchmark client (all threads)", "", Better::Lower)
            .figures(median(&r.direct.client_rtt.switches), median(&r.ingot.client_rtt.switches))
            .note("the client driving both targets (one tokio thread); the same method"),
    ]
}

/// The round trip through ingot, p50, at most this many times direct's (issue 13).
const RTT_GOAL: f64 = 1.10;
/// A reconnect through ingot, p50, at most this many times direct's (issue 13).
const RECONNECT_GOAL: f64 = 1.20;
/// The gateway's CPU time per round trip at most this, in µs (issue 13).
const GATEWAY_CPU_GOAL_US: f64 = 20.0;
/// A cold create through ingot, p50, at most this many ms more than direct's (issue 13).
const COLD_GOAL_PLUS_MS: f64 = 10.0;
/// A warm create the moment the pool has refilled, p99, at most this, in ms (issue 13).
const WARM_REFILL_P99_GOAL_MS: f64 = 20.0;
/// Each burst of concurrent creates through ingot, p50, at most this many times direct's
/// (issue 13).
const BURST_GOAL: f64 = 1.10;

/// The other per-command rows: reconnects (with the gateway's cost per reconnect), 4 MiB and
/// 60 MiB replies, pipelined commands and screenshots.
fn command_rows(r: &Core) -> Vec<Row> {
    let switches = |c: &Cost| median(&c.switches).map_or("?".to_owned(), fmt_num);
    vec![
        Row::new(
            "new WebSocket to first CDP reply (reconnect), p50",
            "ms",
            Better::Lower,
        )
        .figures(
            median(&r.direct.reconnect_ms),
            median(&r.ingot.reconnect_ms),
        )
        .goal(Goal::RatioAtMost(RECONNECT_GOAL))
        .note("5 per target per round; ingot gives each new client its own browser-level CDP session, attached ahead of time (the spare)"),
        Row::new("gateway CPU time per reconnect", "µs", Better::Lower)
            .figures(None, median(&r.ingot.gateway_reconnect.cpu_us))
            .note(format!(
                "read around each round's reconnects, {} ms after the last one closed included; median of rounds; context switches per reconnect: gateway {}, Chromium browser process {} direct vs {} via ingot",
                RECONNECT_SETTLE.as_millis(),
                switches(&r.ingot.gateway_reconnect),
                switches(&r.direct.browser_reconnect),
                switches(&r.ingot.browser_reconnect),
            )),
        Row::new("4 MiB reply", "MB/s", Better::Higher)
            .figures(
                median(&r.direct.reply_4mib_mbps),
                median(&r.ingot.reply_4mib_mbps),
            )
            .goal(Goal::RatioAtLeast(0.9))
            .note(format!("median of {}", r.direct.reply_4mib_mbps.len())),
        Row::new("60 MiB reply", "MB/s", Better::Higher)
            .figures(
                median(&r.direct.reply_60mib_mbps),
                median(&r.ingot.reply_60mib_mbps),
            )
            .goal(Goal::RatioAtLeast(0.9))
            .note(format!("median of {}", r.direct.reply_60mib_mbps.len())),
        Row::new(
            format!("{PIPELINED} commands in flight"),
            "ms",
            Better::Lower,
        )
        .figures(
            median(&r.direct.pipelined_ms),
            median(&r.ingot.pipelined_ms),
        )
        .note(format!("median of {}", r.direct.pipelined_ms.len())),
        Row::new("1920×1080 PNG screenshot, p50", "ms", Better::Lower)
            .figures(
                percentile(&r.direct.screenshot_ms, 50.0),
                percentile(&r.ingot.screenshot_ms, 50.0),
            )
            .note(screenshot_note(r)),
    ]
}

/// Cold create to first reply, p50 and p99, with where the time goes.
fn cold_start_rows(r: &Core) -> Vec<Row> {
    let cold_direct = totals(&r.cold_direct);
    let cold_ingot = totals(&r.cold_ingot);
    vec![
        Row::new("create to first CDP reply, cold, p50", "ms", Better::Lower)
            .figures(
                percentile(&cold_direct, 50.0),
                percentile(&cold_ingot, 50.0),
            )
            .goal(Goal::PlusAtMost(COLD_GOAL_PLUS_MS))
            .note(format!(
                "{} each, ingot ({}) without a warm pool; {}",
                cold_direct.len(),
                r.engine,
                split_note(&r.cold_direct, &r.cold_ingot)
            )),
        Row::new("same, p99", "ms", Better::Lower).figures(
            percentile(&cold_direct, 99.0),
            percentile(&cold_ingot, 99.0),
        ),
    ]
}

/// The warm-pool rows, whose direct column is the direct cold start (a client launching
/// Chromium itself has no pool); one unmeasured row when this ingot has no pool.
fn warm_pool_rows(r: &Core) -> Vec<Row> {
    match &r.warm {
        Warm::Measured {
            settled,
            fresh,
            gauge,
        } => measured_warm_rows(&r.cold_direct, settled, fresh, *gauge),
        Warm::Unsupported => vec![
            Row::new(
                "create to first CDP reply, warm pool, p50",
                "ms",
                Better::Lower,
            )
            .figures(percentile(&totals(&r.cold_direct), 50.0), None)
            .goal(Goal::AtMost(30.0))
            .note("not measured: this ingot has no `--pool-size`"),
        ],
    }
}

/// Warm-pool creates after the pool idled (p50 against the target, and p99), and creates the
/// moment it was full again.
fn measured_warm_rows(
    cold_direct: &[Start],
    settled: &[Start],
    fresh: &[Start],
    gauge: bool,
) -> Vec<Row> {
    let direct_ms = totals(cold_direct);
    let direct_cold = percentile(&direct_ms, 50.0);
    let start_ms = totals(settled);
    let fresh_ms = totals(fresh);
    let how = if gauge {
        "waiting for `ingot_pool_browsers` to show a full pool between creates"
    } else {
        "pausing 3 s between creates for the pool to refill (no pool gauge in /metrics)"
    };
    vec![
        Row::new("create to first CDP reply, warm pool, p50", "ms", Better::Lower)
            .figures(direct_cold, percentile(&start_ms, 50.0))
            .goal(Goal::AtMost(30.0))
            .note(format!(
                "{} creates, `--pool-size 2`, {how}, then 1 s idle; direct is its cold start; {}",
                start_ms.len(),
                split_note(cold_direct, settled)
            )),
        Row::new("same, p99", "ms", Better::Lower)
            .figures(percentile(&direct_ms, 99.0), percentile(&start_ms, 99.0)),
        Row::new("warm pool the moment it is full again, p50", "ms", Better::Lower)
            .figures(direct_cold, percentile(&fresh_ms, 50.0))
            .note(format!(
                "{} creates with no idle second, interleaved with the above: the browser launched last may still be busy starting",
                fresh_ms.len(),
            )),
        Row::new("warm pool the moment it is full again, p99", "ms", Better::Lower)
            .figures(percentile(&direct_ms, 99.0), percentile(&fresh_ms, 99.0))
            .goal(Goal::AtMost(WARM_REFILL_P99_GOAL_MS)),
    ]
}

/// One burst of `n` concurrent sessions over `rounds` rounds: create to first reply (the
/// median of the rounds' p50s; p99 of all samples), and memory per session (first round).
fn burst_rows(n: usize, direct: &Burst, ingot: &Burst, rounds: usize) -> Vec<Row> {
    let per = |b: &Burst| kib_to_mib(b.memory.pss_kib) / n as f64;
    let note = format!(
        "PSS of all browser processes ÷ {n} ({} vs {} processes; RSS sum {:.0} vs {:.0} MiB); ingot's own RSS {}",
        direct.memory.processes,
        ingot.memory.processes,
        kib_to_mib(direct.memory.rss_kib),
        kib_to_mib(ingot.memory.rss_kib),
        ingot
            .gateway_rss_kib
            .map_or("n/a".to_owned(), |k| format!("{:.1} MiB", kib_to_mib(k))),
    );
    vec![
        Row::new(
            format!("{n} concurrent sessions: create to first reply, p50"),
            "ms",
            Better::Lower,
        )
        .figures(median(&direct.round_p50_ms), median(&ingot.round_p50_ms))
        .goal(Goal::RatioAtMost(BURST_GOAL))
        .note(format!(
            "{rounds} rounds, direct and ingot taking turns at going first; median of the rounds' p50s (direct {}; ingot {} ms)",
            list_ms(&direct.round_p50_ms),
            list_ms(&ingot.round_p50_ms)
        )),
        Row::new(
            format!("{n} concurrent sessions: same, p99"),
            "ms",
            Better::Lower,
        )
        .figures(
            percentile(&direct.start_ms, 99.0),
            percentile(&ingot.start_ms, 99.0),
        )
        .note(format!("all {} samples of the rounds together", direct.start_ms.len())),
        Row::new(
            format!("{n} concurrent sessions: memory per session"),
            "MiB",
            Better::Lower,
        )
        .figures(Some(per(direct)), Some(per(ingot)))
        .note(note),
    ]
}

fn list_ms(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Memory per idle client WebSocket, against the target, with the holder's and (for ingot)
/// the browser's growth.
fn idle_clients_row(direct: &IdleClients, ingot: &IdleClients) -> Row {
    let browser_growth = match (ingot.browser_before_kib, ingot.browser_after_kib) {
        (Some(b), Some(a)) => format!(
            "; the session's Chromium browser process grew {:.1} KiB per client (one CDP session each)",
            (a as f64 - b as f64) / ingot.count as f64
        ),
        _ => String::new(),
    };
    Row::new(format!("memory per idle client WebSocket ({} clients)", ingot.count), "KiB", Better::Lower)
        .figures(Some(direct.per_client_kib()), Some(ingot.per_client_kib()))
        .goal(Goal::AtMost(256.0))
        .note(format!(
            "RSS growth of the process holding the sockets: Chromium's browser process (direct) vs the gateway, Chromium excluded (ingot {:.1} → {:.1} MiB){browser_growth}",
            kib_to_mib(ingot.holder_before_kib),
            kib_to_mib(ingot.holder_after_kib),
        ))
}

fn totals(starts: &[Start]) -> Vec<f64> {
    starts.iter().map(|s| s.total_ms).collect()
}

/// Where the start time goes: until the address is known, and the rest.
fn split_note(direct: &[Start], ingot: &[Start]) -> String {
    let address = |s: &[Start]| {
        let v: Vec<f64> = s.iter().map(|s| s.address_ms).collect();
        percentile(&v, 50.0).map_or("?".to_owned(), fmt_num)
    };
    format!(
        "p50 until the address is known (`DevToolsActivePort` / create answered): {} vs {} ms, the rest is WebSocket and first reply",
        address(direct),
        address(ingot)
    )
}

fn screenshot_note(r: &Core) -> String {
    let shot = |s: &Samples| {
        s.shot.map_or("?".to_owned(), |s| {
            format!("{}×{}, {} KiB", s.width, s.height, s.bytes / 1024)
        })
    };
    format!(
        "{} each; PNG {} vs {}; viewport {} vs {}",
        r.direct.screenshot_ms.len(),
        shot(&r.direct),
        shot(&r.ingot),
        r.direct_viewport,
        r.ingot_viewport
    )
}

/// The results as a Markdown table.
pub(crate) fn table(r: &Results) -> String {
    render(&rows(r))
}

/// The `--only core` results as a Markdown table.
/// The rows of bursts measured on their own (`--only bursts`).
pub(crate) fn bursts_table(bursts: &[(usize, Burst, Burst)], rounds: usize) -> String {
    let rows: Vec<Row> = bursts
        .iter()
        .flat_map(|(n, direct, ingot)| burst_rows(*n, direct, ingot, rounds))
        .collect();
    render(&rows)
}

pub(crate) fn core_table(core: &Core) -> String {
    render(&core_rows(core))
}

/// How many of the core rows' targets were met, out of those measured.
pub(crate) fn core_targets_met(core: &Core) -> (usize, usize) {
    let verdicts: Vec<bool> = core_rows(core).iter().filter_map(Row::met).collect();
    (verdicts.iter().filter(|m| **m).count(), verdicts.len())
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| metric | direct Chromium | through ingot | ingot ÷ direct | target | notes |\n|---|---:|---:|---:|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!("| {} |\n", row.cells().join(" | ")));
    }
    out
}

/// How many targets were met, out of those measured (the cluster and viewer sections'
/// included).
pub(crate) fn targets_met(r: &Results) -> (usize, usize) {
    let verdicts: Vec<bool> = rows(r).iter().filter_map(Row::met).collect();
    let (cluster_met, cluster_measured) = cluster_targets_met(&r.cluster);
    let (viewer_met, viewer_measured) = viewer_targets_met(&r.viewer);
    let (sandbox_met, sandbox_measured) = sandbox_targets_met(&r.sandbox);
    let (engines_met, engines_measured) = engines_targets_met(&r.engines);
    (
        verdicts.iter().filter(|m| **m).count()
            + cluster_met
            + viewer_met
            + sandbox_met
            + engines_met,
        verdicts.len() + cluster_measured + viewer_measured + sandbox_measured + engines_measured,
    )
}

/// The whole file: header, machine, table, method, and the findings kept from `previous`.
pub(crate) fn document(
    r: &Results,
    machine: &Machine,
    took: Duration,
    previous: Option<&str>,
) -> String {
    let (met, measured) = targets_met(r);
    let kind = if r.core.quick {
        "**a quick smoke run (`--quick`): too few samples to quote**"
    } else {
        "a full run"
    };
    let findings = previous
        .and_then(|p| p.find("\n## Findings").map(|i| p[i + 1..].trim_end().to_owned()))
        .unwrap_or_else(|| {
            "## Findings\n\n_Not written yet. `ingot-bench` keeps this section when it rewrites the file._"
                .to_owned()
        });
    format!(
        "# Benchmarks\n\n\
         Written by `cargo run --release -p ingot-bench` ({kind}) on {date}; the run took {mins} min {secs} s. \
         Targets met: {met} of {measured}.\n\n\
         ## Machine\n\n\
         | | |\n|---|---|\n\
         | CPU | {cpu} |\n| cores | {cores} |\n| memory | {mem:.1} GiB |\n| kernel | {kernel} |\n\
         | Chromium | {chromium} |\n| ingot commit | {commit} |\n| date | {date} |\n\
         | load average (1, 5, 15 min) at start / end | {load_start} / {load_end} |\n\
         | other Chromium processes running at start | {foreign} |\n\n\
         ## Results\n\n{table}\n\
         {cluster}\n\
         {viewer}\n\
         {sandbox}\n\
         {engines}\n\
         ## Method\n\n{method}\n{findings}\n",
        date = machine.date,
        mins = took.as_secs() / 60,
        secs = took.as_secs() % 60,
        cpu = machine.cpu,
        cores = machine.cores,
        mem = machine.memory_gib,
        kernel = machine.kernel,
        chromium = machine.chromium,
        commit = machine.ingot_commit,
        load_start = machine.load_start,
        load_end = machine.load_end,
        foreign = machine.foreign_chromium,
        table = table(r),
        cluster = cluster::section(&r.cluster, FULL_RUN, r.core.quick),
        viewer = viewer::section(&r.viewer, FULL_RUN, r.core.quick),
        sandbox = sandbox::section(&r.sandbox, FULL_RUN, r.core.quick),
        engines = engines::section(&r.engines, FULL_RUN, r.core.quick),
        method = method(r),
    )
}

fn method(r: &Results) -> String {
    format!(
        "\
- **Targets.** *Direct* is {direct} started by the benchmark with ingot's own flags \
(`--no-sandbox --disable-gpu … --test-type`, and `--headless=new` for the full Chromium, not for the \
headless shell), `--window-size=1920,1080`, \
`--remote-debugging-port=0` and a fresh profile: the build of ingot's default engine, so that \
ingot ÷ direct compares like with like; the client uses its `/devtools/browser/<id>` WebSocket. \
*ingot* is `target/release/ingot` on a loopback port with its own data directory and its default \
engine ({engine}), driven through a session's `websocketUrl`. One client implementation (Rust, tokio-tungstenite, Nagle off, one task, no \
background reader) drives both.
- **Per-command figures** use one page per target, opened the way Puppeteer does \
(`Target.getTargets`, `Target.attachToTarget` with `flatten`), with the viewport set to 1920×1080 by \
`Emulation.setDeviceMetricsOverride` and a gradient and text filling the page, and 100 unmeasured \
round trips. {rounds} rounds alternate direct and ingot (and which goes first) so that noise on this \
shared machine hits both. Each round: {rtt} sequential `Runtime.evaluate 1+1` per target, in blocks \
that alternate between the two open pages (p50 and p99 of the round; the table gives the median over \
rounds), with the CPU time (`schedstat`) and context switches (`voluntary_ctxt_switches` + \
`nonvoluntary_ctxt_switches`) of every thread (`/proc/<pid>/task/*`) of ingot, of the target's Chromium \
browser process (the one the benchmark launched, or the one ingot launched for the session: its child \
with `--remote-debugging-pipe`) and of the benchmark client read around each block (ingot's around its \
own blocks only), per round trip, median over rounds; the gateway's CPU time per message is half its \
CPU time per round trip (the command in, the reply out). Then, per target, reconnects (the same \
figures read around them), 4 MiB and 60 MiB \
replies (`'x'.repeat(N)` with `returnByValue`, reply bytes ÷ time from send to the whole message \
received, MB = 10^6 bytes), {PIPELINED} commands written in one flush until the last reply, and PNG \
screenshots.
- **Create to first CDP reply**: direct is spawn → `DevToolsActivePort` written (polled every 2 ms) → \
WebSocket → reply to `Browser.getVersion`; ingot is `POST /v1/sessions` → WebSocket to `websocketUrl` → \
the same reply. Cold starts alternate direct/ingot on an ingot without a warm pool, each browser torn \
down before the next start. The warm-pool row uses a second ingot with `--pool-size 2` and waits for the \
pool to refill before each create, then lets it idle for a second (a second series, interleaved, \
creates the moment the pool is full again); its direct column is the direct cold start, since a client \
launching Chromium itself has no pool.
- **Concurrent sessions**: N creates (or N direct launches) fired at once; each one's time to first \
reply. Every size is run in each of several rounds, direct and ingot taking turns at going first; the \
p50 row is the median of the rounds' p50s, the p99 row pools every sample. Two seconds after the last is up, memory is the sum of PSS (`/proc/<pid>/smaps_rollup`: shared \
pages split among the processes sharing them) over every browser process (each browser's process \
group, plus the crash handlers, which leave the group but name the profile), divided by N. ingot runs \
with `--pool-size 0` here so that both columns count cold browsers only. Memory is the first round's.
- **Idle client WebSockets**: {idle} WebSockets opened to one browser in batches of 50, each answering \
one `Browser.getVersion` before the next batch (so ingot has attached it with \
`Target.attachToBrowserTarget`), then held idle for a second; the figure is the growth of `VmRSS` of \
the process holding them (the gateway for ingot, Chromium's browser process for direct) ÷ {idle}.
- The benchmark kills every browser it started (process group SIGKILL for direct, SIGTERM to ingot, \
which releases its sessions), checks nothing is left, and removes its temporary directories, also on \
errors and Ctrl-C.
",
        rounds = r.core.rounds,
        rtt = r.core.rtt_runs,
        direct = r.core.direct_build,
        engine = r.core.engine,
        idle = r.idle.1.count,
    )
}

/// `doc` with its `heading` section (`## Cluster`, …) replaced by `section`; without one,
/// `section` goes before `## Method` (where a full run puts it), else before `## Findings`,
/// else at the end.
fn splice(doc: &str, heading: &str, section: &str) -> String {
    let section = section.trim_end();
    if let Some(start) = heading_at(doc, heading) {
        let after = start + heading.len();
        let end = doc[after..]
            .find("\n## ")
            .map_or(doc.len(), |i| after + i + 1);
        let rest = &doc[end..];
        let gap = if rest.is_empty() { "\n" } else { "\n\n" };
        return format!("{}{section}{gap}{rest}", &doc[..start]);
    }
    for next in ["## Method", "## Findings"] {
        if let Some(at) = heading_at(doc, next) {
            return format!("{}{section}\n\n{}", &doc[..at], &doc[at..]);
        }
    }
    format!("{}\n\n{section}\n", doc.trim_end())
}

/// Where the line `heading` starts in `doc`, if it has one.
fn heading_at(doc: &str, heading: &str) -> Option<usize> {
    if doc.starts_with(&format!("{heading}\n")) {
        return Some(0);
    }
    doc.find(&format!("\n{heading}\n")).map(|i| i + 1)
}

/// The file `--only core --out` writes: a header, the machine in one line, and the table.
pub(crate) fn core_document(core: &Core, machine: &Machine, took: Duration) -> String {
    let (met, measured) = core_targets_met(core);
    format!(
        "# Benchmarks: core figures only\n\n\
         Written by `cargo run --release -p ingot-bench -- {quick}--only core` on {date}; the run took {mins} min {secs} s \
         (ingot commit {commit}, {chromium}, {cpu}, {cores} cores, load average at start / end {load_start} / {load_end}; \
         other Chromium processes running at start: {foreign}). Targets met: {met} of {measured}. \
         The method is the full report's (`BENCHMARKS.md`).\n\n\
         ## Results\n\n{table}",
        quick = if core.quick { "--quick " } else { "" },
        date = machine.date,
        mins = took.as_secs() / 60,
        secs = took.as_secs() % 60,
        commit = machine.ingot_commit,
        chromium = machine.chromium,
        cpu = machine.cpu,
        cores = machine.cores,
        load_start = machine.load_start,
        load_end = machine.load_end,
        foreign = machine.foreign_chromium,
        table = core_table(core),
    )
}

/// Fails when `path` holds a full report (a file with a `## Findings` section), which
/// `--only core` must not overwrite; checked before measuring and again before writing.
pub(crate) fn check_core_out(path: &Path) -> Result<()> {
    if let Ok(previous) = std::fs::read_to_string(path)
        && heading_at(&previous, "## Findings").is_some()
    {
        anyhow::bail!(
            "{} is a full report (it has a Findings section); `--only core` will not overwrite it: give another --out",
            path.display()
        );
    }
    Ok(())
}

/// Writes [`core_document`] to `path`, unless that is a full report ([`check_core_out`]).
pub(crate) fn write_core(
    path: &Path,
    core: &Core,
    machine: &Machine,
    took: Duration,
) -> Result<()> {
    check_core_out(path)?;
    let text = core_document(core, machine, took);
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the document to `path`, keeping the findings section already there.
pub(crate) fn write(path: &Path, r: &Results, machine: &Machine, took: Duration) -> Result<()> {
    let previous = std::fs::read_to_string(path).ok();
    let text = document(r, machine, took, previous.as_deref());
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_additive_target_is_judged_on_the_difference_and_shows_it() {
        let row = |direct, ingot| {
            Row::new("create, cold, p50", "ms", Better::Lower)
                .figures(Some(direct), Some(ingot))
                .goal(Goal::PlusAtMost(10.0))
        };
        let met = row(188.0, 196.0);
        assert_eq!(met.met(), Some(true));
        assert_eq!(met.cells()[4], "≤ direct + 10.0 ms: **met** (+8.00 ms)");
        let missed = row(188.0, 216.0);
        assert_eq!(missed.met(), Some(false));
        assert_eq!(
            missed.cells()[4],
            "≤ direct + 10.0 ms: **missed** (+28.0 ms)"
        );
        assert_eq!(
            row(188.0, 180.0).cells()[4],
            "≤ direct + 10.0 ms: **met** (−8.00 ms)"
        );
    }

    #[test]
    fn a_row_without_a_unit_has_no_trailing_space() {
        let row =
            Row::new("context switches per round trip", "", Better::Lower).figures(None, Some(4.0));
        assert_eq!(row.cells()[1..3], ["n/a".to_owned(), "4.00".to_owned()]);
    }
}
