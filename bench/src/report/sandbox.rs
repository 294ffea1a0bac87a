//! The `## Sandbox` section of the report: the sandboxed gateway (ingot's default) against
//! the same gateway with `--insecure-shared-browser-user` (today's launch) and direct
//! Chromium, with the issue's targets judged on sandboxed ÷ shared; its method; and putting
//! it into an existing file on its own (`--only sandbox`).
//!
//! Self-contained like the cluster and viewer sections: its intro line says which run
//! measured it, so a sandbox-only run replaces it without touching the rest of the file.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Goal, Machine, splice};
use crate::sandbox::{
    DIRECT, IdleMemory, Launch, SANDBOXED, SETTLE, SHARED, SHARED_FLAG, Sandbox, SandboxResults,
    WARM_POOL, WARM_SETTLE,
};
use crate::sessions::Start;
use crate::stats::{fmt_num, median, percentile};

/// The section's heading line.
const HEADING: &str = "## Sandbox";
/// The issue's targets: sandboxed ÷ shared at most this…
const RATIO_GOAL: f64 = 1.05;
/// …except cold create: sandboxed − shared at most this, in ms.
const COLD_PLUS_GOAL_MS: f64 = 40.0;

/// One row: a figure per target (direct, shared, sandboxed), judged on sandboxed against
/// shared.
struct SandboxRow {
    metric: String,
    unit: &'static str,
    figures: [Option<f64>; 3],
    goal: Option<Goal>,
    note: String,
}

impl SandboxRow {
    fn new(metric: impl Into<String>, unit: &'static str, figures: [Option<f64>; 3]) -> Self {
        SandboxRow {
            metric: metric.into(),
            unit,
            figures,
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

    /// Sandboxed ÷ shared.
    fn ratio(&self) -> Option<f64> {
        match (self.figures[SHARED], self.figures[SANDBOXED]) {
            (Some(s), Some(x)) if s > 0.0 => Some(x / s),
            _ => None,
        }
    }

    /// `Some(true)` met, `Some(false)` missed, `None` when no target applies or no figure.
    fn met(&self) -> Option<bool> {
        let (shared, sandboxed) = (self.figures[SHARED], self.figures[SANDBOXED]);
        match self.goal? {
            Goal::RatioAtMost(max) => Some(self.ratio()? <= max),
            Goal::RatioAtLeast(min) => Some(self.ratio()? >= min),
            Goal::AtMost(max) => Some(sandboxed? <= max),
            Goal::AtLeast(min) => Some(sandboxed? >= min),
            Goal::PlusAtMost(max) => Some(sandboxed? - shared? <= max),
        }
    }

    fn cells(&self) -> [String; 7] {
        let figure = |v: Option<f64>| {
            v.map_or("n/a".to_owned(), |v| {
                format!("{} {}", fmt_num(v), self.unit)
                    .trim_end()
                    .to_owned()
            })
        };
        let ratio = self.ratio().map_or("–".to_owned(), |r| format!("{r:.2}×"));
        let target = match self.goal {
            None => "–".to_owned(),
            Some(goal) => {
                let what = match goal {
                    Goal::RatioAtMost(x) => format!("≤ {x:.2}× shared"),
                    Goal::RatioAtLeast(x) => format!("≥ {x:.2}× shared"),
                    Goal::AtMost(x) => format!("≤ {} {}", fmt_num(x), self.unit),
                    Goal::AtLeast(x) => format!("≥ {} {}", fmt_num(x), self.unit),
                    Goal::PlusAtMost(x) => format!("≤ shared + {} {}", fmt_num(x), self.unit),
                };
                let verdict = match self.met() {
                    Some(true) => "**met**",
                    Some(false) => "**missed**",
                    None => "not measured",
                };
                let difference = match (goal, self.figures[SHARED], self.figures[SANDBOXED]) {
                    (Goal::PlusAtMost(_), Some(s), Some(x)) => format!(
                        " ({}{} {})",
                        if x >= s { "+" } else { "−" },
                        fmt_num((x - s).abs()),
                        self.unit
                    ),
                    _ => String::new(),
                };
                format!("{what}: {verdict}{difference}")
            }
        };
        [
            self.metric.clone(),
            figure(self.figures[DIRECT]),
            figure(self.figures[SHARED]),
            figure(self.figures[SANDBOXED]),
            ratio,
            target,
            self.note.clone(),
        ]
    }
}

/// The totals of `starts`, in ms.
fn totals(starts: &[Start]) -> Vec<f64> {
    starts.iter().map(|s| s.total_ms).collect()
}

/// `f` of each target's samples.
fn each<T>(samples: &[Vec<T>; 3], f: impl Fn(&[T]) -> Option<f64>) -> [Option<f64>; 3] {
    [f(&samples[0]), f(&samples[1]), f(&samples[2])]
}

fn start_rows(r: &SandboxResults) -> Vec<SandboxRow> {
    let p = |q: f64| move |s: &[Start]| percentile(&totals(s), q);
    let mut rows = vec![
        SandboxRow::new("create → first CDP reply, cold, p50", "ms", each(&r.cold, p(50.0)))
            .goal(Goal::PlusAtMost(COLD_PLUS_GOAL_MS))
            .note(format!(
                "{} creates per target (`--pool-size 0`), the targets taking turns; direct is a launch of its own",
                r.plan.cold
            )),
        SandboxRow::new("same, p99", "ms", each(&r.cold, p(99.0))),
    ];
    match &r.warm {
        Some([shared, sandboxed]) => {
            let warm = |q: f64| {
                [
                    None,
                    percentile(&totals(shared), q),
                    percentile(&totals(sandboxed), q),
                ]
            };
            rows.push(
                SandboxRow::new("create → first CDP reply, warm pool, p50", "ms", warm(50.0))
                    .goal(Goal::RatioAtMost(RATIO_GOAL))
                    .note(format!(
                        "the issue's \"unchanged\": {} creates per gateway, each with `--pool-size {WARM_POOL}` full and idle for {} s first",
                        r.plan.warm,
                        fmt_num(WARM_SETTLE.as_secs_f64())
                    )),
            );
            rows.push(SandboxRow::new("same, p99", "ms", warm(99.0)));
        }
        None => rows.push(
            SandboxRow::new("create → first CDP reply, warm pool, p50", "ms", [None; 3])
                .goal(Goal::RatioAtMost(RATIO_GOAL))
                .note("not measured: this ingot has no `--pool-size`"),
        ),
    }
    rows
}

fn round_trip_rows(r: &SandboxResults) -> Vec<SandboxRow> {
    let med = |v: &[f64]| median(v);
    vec![
        SandboxRow::new("CDP round trip (`Runtime.evaluate 1+1`), p50", "µs", each(&r.rtt_p50_us, med))
            .goal(Goal::RatioAtMost(RATIO_GOAL))
            .note(format!(
                "{} per target per round in blocks of {}, the targets taking turns; median of {} rounds' p50",
                r.plan.rtt_runs, r.plan.rtt_block, r.plan.rtt_rounds
            )),
        SandboxRow::new("same, p99", "µs", each(&r.rtt_p99_us, med))
            .goal(Goal::RatioAtMost(RATIO_GOAL))
            .note("median of the rounds' p99"),
    ]
}

fn memory_rows(r: &SandboxResults) -> Vec<SandboxRow> {
    let mib = |f: fn(&IdleMemory) -> u64| {
        move |m: &[IdleMemory]| median(&m.iter().map(|m| f(m) as f64 / 1024.0).collect::<Vec<_>>())
    };
    let processes = each(&r.memory, |m| {
        median(
            &m.iter()
                .map(|m| m.browser.processes as f64)
                .collect::<Vec<_>>(),
        )
    });
    let growth = each(&r.memory, |m| {
        let g: Vec<f64> = m
            .iter()
            .filter_map(|m| m.gateway_growth_kib)
            .map(|k| k as f64 / 1024.0)
            .collect();
        median(&g)
    });
    vec![
        SandboxRow::new("memory per idle session: PSS of its browser's processes", "MiB", each(&r.memory, mib(|m| m.browser.pss_kib)))
            .goal(Goal::RatioAtMost(RATIO_GOAL))
            .note(format!(
                "median of {} readings, one idle browser per target at once, read {} s after its first CDP reply; processes: {}",
                r.plan.memory,
                fmt_num(SETTLE.as_secs_f64()),
                processes
                    .map(|p| p.map_or("?".to_owned(), |p| format!("{p:.0}")))
                    .join(" / ")
            )),
        SandboxRow::new("same, private (clean + dirty)", "MiB", each(&r.memory, mib(|m| m.browser.private_kib)))
            .goal(Goal::RatioAtMost(RATIO_GOAL)),
        SandboxRow::new("gateway's RSS growth per idle session", "MiB", growth)
            .note("VmRSS of the gateway from before the create to the reading"),
    ]
}

fn rows(r: &SandboxResults) -> Vec<SandboxRow> {
    let mut rows = start_rows(r);
    rows.extend(round_trip_rows(r));
    rows.extend(memory_rows(r));
    rows
}

/// The section's table, or why it was not measured.
pub(crate) fn sandbox_table(s: &Sandbox) -> String {
    let r = match s {
        Sandbox::Measured(r) => r,
        Sandbox::Skipped(why) => return format!("Not measured: {why}.\n"),
    };
    let mut out = String::from(
        "| metric | direct Chromium | ingot, shared user (today) | ingot, sandboxed | sandboxed ÷ shared | target | notes |\n|---|---:|---:|---:|---:|---|---|\n",
    );
    for row in rows(r) {
        out.push_str(&format!("| {} |\n", row.cells().join(" | ")));
    }
    out
}

/// How many of the section's targets were met, out of those measured.
pub(crate) fn sandbox_targets_met(s: &Sandbox) -> (usize, usize) {
    let Sandbox::Measured(r) = s else {
        return (0, 0);
    };
    let verdicts: Vec<bool> = rows(r).iter().filter_map(SandboxRow::met).collect();
    (verdicts.iter().filter(|m| **m).count(), verdicts.len())
}

/// How a gateway's browsers ran, for the method.
fn launch(l: &Launch) -> String {
    format!(
        "uid {}, {}",
        l.uid.map_or("?".to_owned(), |u| u.to_string()),
        if l.no_sandbox {
            "`--no-sandbox`"
        } else {
            "Chromium's sandbox on"
        }
    )
}

/// The whole section, from its heading to its method, ending with one newline.
pub(super) fn section(s: &Sandbox, intro: &str, quick: bool) -> String {
    let quick = if quick {
        " **A quick smoke run (`--quick`): too few samples to quote.**"
    } else {
        ""
    };
    let body = match s {
        Sandbox::Measured(r) => format!("{}\n{}", sandbox_table(s), method(r)),
        Sandbox::Skipped(_) => sandbox_table(s),
    };
    format!("{HEADING}\n\n{intro}{quick}\n\n{body}")
}

fn method(r: &SandboxResults) -> String {
    let [shared, sandboxed] = &r.launches;
    let warning = if sandboxed.no_sandbox || sandboxed.uid == Some(r.bench_uid) {
        "\n- **The sandboxed gateway's browser did not run fully sandboxed here** (see the uid and flags above): its column is not the sandbox's cost."
    } else {
        ""
    };
    format!(
        "\
- **Targets.** *Sandboxed* is ingot as it starts by default: each session's browser as a uid of \
its own from `--browser-uids`, Chromium's sandbox on, Landlock, a cgroup per session (here: {sandboxed}). \
*Shared* is the same executable with `{SHARED_FLAG}`: every browser as the gateway's user with \
`--no-sandbox`, as before the sandbox (here: {shared}). *Direct* is Chromium launched by the benchmark \
with ingot's flags, as in the other sections (uid {bench}). Targets are judged on sandboxed ÷ shared: \
within {RATIO_GOAL:.2}×, cold create within +{COLD_PLUS_GOAL_MS:.0} ms, warm create unchanged (within \
{RATIO_GOAL:.2}×).
- **Cold create to first CDP reply**: two gateways with `--pool-size 0` run side by side; direct, shared \
and sandboxed take turns, each going first, second and third equally often; each browser is torn down \
before the next start. Direct is spawn → `DevToolsActivePort` → WebSocket → reply to \
`Browser.getVersion`; a gateway is `POST /v1/sessions` → WebSocket to `websocketUrl` → the same reply.
- **Warm create**: afterwards, two gateways with `--pool-size {WARM_POOL}`; before each create both \
pools are full (the `ingot_pool_browsers` gauge) and have idled {warm_settle} s; the gateways take turns \
at going first.
- **Round trip**: one page per target, opened as Puppeteer does; {rounds} rounds of {runs} sequential \
`Runtime.evaluate 1+1` per target, in blocks of {block} that take turns between the three.
- **Memory per idle session**: {memory} times, one direct browser and one session on each cold gateway \
at once, each having answered one CDP command, read {settle} s later: PSS and private memory \
(`Private_Clean` + `Private_Dirty`) from `/proc/<pid>/smaps_rollup`, summed over every process of the \
browser (its process group and the crash handlers naming its profile); and the gateway's `VmRSS` growth \
over the create.{warning}
",
        sandboxed = launch(sandboxed),
        shared = launch(shared),
        bench = r.bench_uid,
        warm_settle = fmt_num(WARM_SETTLE.as_secs_f64()),
        rounds = r.plan.rtt_rounds,
        runs = r.plan.rtt_runs,
        block = r.plan.rtt_block,
        memory = r.plan.memory,
        settle = fmt_num(SETTLE.as_secs_f64()),
    )
}

/// Puts the section, measured by `--only sandbox`, into the report at `path` (creating the
/// file if there is none), leaving the rest of the file as it was.
pub(crate) fn write_sandbox(
    path: &Path,
    s: &Sandbox,
    machine: &Machine,
    took: Duration,
    quick: bool,
) -> Result<()> {
    let intro = format!(
        "Written by `cargo run --release -p ingot-bench -- --only sandbox{}` on {date}; the section took {mins} min {secs} s \
         (ingot commit {commit}, {chromium}, {cpu}, {cores} cores, load average at start / end {start} / {end}; \
         other Chromium processes running at start: {foreign}). The rest of this file is from the runs described above.",
        if quick { " --quick" } else { "" },
        date = machine.date,
        mins = took.as_secs() / 60,
        secs = took.as_secs() % 60,
        commit = machine.ingot_commit,
        chromium = machine.chromium,
        cpu = machine.cpu,
        cores = machine.cores,
        start = machine.load_start,
        end = machine.load_end,
        foreign = machine.foreign_chromium,
    );
    let section = section(s, &intro, quick);
    let text = match std::fs::read_to_string(path) {
        Ok(doc) => splice(&doc, HEADING, &section),
        Err(_) => format!("# Benchmarks\n\n{section}"),
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::Footprint;
    use crate::sandbox::SandboxPlan;

    fn start(ms: f64) -> Start {
        Start {
            total_ms: ms,
            address_ms: ms / 2.0,
        }
    }

    fn idle(pss_mib: u64, private_mib: u64, growth: Option<i64>) -> IdleMemory {
        IdleMemory {
            browser: Footprint {
                processes: 7,
                pss_kib: pss_mib * 1024,
                rss_kib: pss_mib * 2048,
                private_kib: private_mib * 1024,
            },
            gateway_growth_kib: growth,
        }
    }

    /// Figures that meet every target: sandboxed cold +30 ms, the rest within 1.05×.
    fn results() -> SandboxResults {
        SandboxResults {
            plan: SandboxPlan {
                cold: 3,
                warm: 3,
                rtt_rounds: 2,
                rtt_runs: 100,
                rtt_block: 50,
                memory: 2,
            },
            cold: [
                vec![start(200.0), start(210.0), start(205.0)],
                vec![start(250.0), start(260.0), start(255.0)],
                vec![start(280.0), start(290.0), start(285.0)],
            ],
            warm: Some([vec![start(20.0); 3], vec![start(20.5); 3]]),
            rtt_p50_us: [vec![90.0, 92.0], vec![120.0, 122.0], vec![124.0, 126.0]],
            rtt_p99_us: [vec![200.0; 2], vec![300.0; 2], vec![310.0; 2]],
            memory: [
                vec![idle(180, 120, None); 2],
                vec![idle(200, 130, Some(100)); 2],
                vec![idle(205, 133, Some(150)); 2],
            ],
            launches: [
                Launch {
                    uid: Some(0),
                    no_sandbox: true,
                },
                Launch {
                    uid: Some(600_001),
                    no_sandbox: false,
                },
            ],
            bench_uid: 0,
        }
    }

    #[test]
    fn targets_are_the_issues_and_judge_sandboxed_against_shared() {
        let ok = Sandbox::Measured(Box::new(results()));
        // Cold p50, warm p50, round trip p50 and p99, PSS, private.
        assert_eq!(sandbox_targets_met(&ok), (6, 6));
        let table = sandbox_table(&ok);
        assert!(
            table.contains("≤ shared + 40.0 ms: **met** (+30.0 ms)"),
            "{table}"
        );
        // Cold create 50 ms slower than shared misses, though direct is far faster still.
        let mut slow = results();
        slow.cold[SANDBOXED] = vec![start(300.0), start(310.0), start(305.0)];
        slow.rtt_p50_us[SANDBOXED] = vec![130.0, 130.0];
        let slow = Sandbox::Measured(Box::new(slow));
        assert_eq!(sandbox_targets_met(&slow), (4, 6));
        let table = sandbox_table(&slow);
        assert!(table.contains("**missed** (+50.0 ms)"), "{table}");
        assert!(table.contains("1.07×"), "{table}");
    }

    #[test]
    fn the_table_has_three_figures_a_ratio_and_the_launches_in_the_method() {
        let r = results();
        let text = section(&Sandbox::Measured(Box::new(r)), "intro", false);
        let cold = text
            .lines()
            .find(|l| l.starts_with("| create → first CDP reply, cold, p50"))
            .expect("the cold row");
        assert!(
            cold.contains("| 205 ms | 255 ms | 285 ms | 1.12× |"),
            "{cold}"
        );
        let warm = text
            .lines()
            .find(|l| l.starts_with("| create → first CDP reply, warm pool, p50"))
            .expect("the warm row");
        assert!(
            warm.contains("| n/a | 20.0 ms | 20.5 ms | 1.02× |"),
            "{warm}"
        );
        assert!(
            text.contains("(here: uid 600001, Chromium's sandbox on)"),
            "{text}"
        );
        assert!(text.contains("(here: uid 0, `--no-sandbox`)"), "{text}");
        assert!(!text.contains("did not run fully sandboxed"), "{text}");
        let mut unsandboxed = results();
        unsandboxed.launches[1].no_sandbox = true;
        let text = section(&Sandbox::Measured(Box::new(unsandboxed)), "intro", false);
        assert!(text.contains("did not run fully sandboxed"), "{text}");
    }

    #[test]
    fn without_a_pool_the_warm_row_says_so_and_counts_no_target() {
        let mut r = results();
        r.warm = None;
        let s = Sandbox::Measured(Box::new(r));
        assert_eq!(sandbox_targets_met(&s), (5, 5));
        assert!(sandbox_table(&s).contains("no `--pool-size`"));
    }

    #[test]
    fn the_section_replaces_its_own_and_keeps_the_rest() {
        let doc = "# B\n\n## Viewer\n\nv\n\n## Method\n\n- m\n";
        let once = splice(doc, HEADING, "## Sandbox\n\nold\n");
        assert_eq!(
            once,
            "# B\n\n## Viewer\n\nv\n\n## Sandbox\n\nold\n\n## Method\n\n- m\n"
        );
        assert_eq!(
            splice(&once, HEADING, "## Sandbox\n\nnew\n"),
            "# B\n\n## Viewer\n\nv\n\n## Sandbox\n\nnew\n\n## Method\n\n- m\n"
        );
        let skipped = section(
            &Sandbox::Skipped("this ingot has no --insecure-shared-browser-user".into()),
            "intro",
            false,
        );
        assert_eq!(
            skipped,
            "## Sandbox\n\nintro\n\nNot measured: this ingot has no --insecure-shared-browser-user.\n"
        );
        assert_eq!(sandbox_targets_met(&Sandbox::Skipped("x".into())), (0, 0));
    }
}
