//! The `## Viewer` section of the report: one table (the live viewer against direct
//! Chromium's own screencast: frame latency, frames per second, the gateway's CPU and memory
//! per viewer, first frames, input latency), its method, and putting it into an existing file
//! on its own (`--only viewer`).
//!
//! Like the cluster section, it is self-contained (its own intro line says which run measured
//! it), so that a viewer-only run replaces it without touching the rest of the file.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Better, Goal, Machine, Row, splice};
use crate::stats::{fmt_num, median, percentile};
use crate::viewer::{
    FrameFigures, HEIGHT, LATE_WAIT, Latency, SLICE_WARM_UP, SLICES, Viewer, ViewerResults, WAIT,
    WIDTH,
};

/// The section's heading line.
const HEADING: &str = "## Viewer";
/// The issue's targets: frame latency p50 at most this, in ms…
const LATENCY_GOAL_MS: f64 = 100.0;
/// …and at least this many frames per second with one viewer.
const FPS_GOAL: f64 = 15.0;

/// `1 round`, `3 rounds`.
fn rounds(n: usize) -> String {
    if n == 1 {
        "1 round".to_owned()
    } else {
        format!("{n} rounds")
    }
}

/// A figure for a note, or `?`.
fn num(v: Option<f64>) -> String {
    v.map_or("?".to_owned(), fmt_num)
}

/// The mean of `v`, in KiB, for a note.
fn mean_kib(v: &[f64]) -> String {
    if v.is_empty() {
        return "?".to_owned();
    }
    fmt_num(v.iter().sum::<f64>() / v.len() as f64 / 1024.0)
}

/// `a[i] − b[i]` per round, as `from min to max ms (median m)` (a range of negative figures
/// would read badly with a dash).
fn paired_differences(a: &[f64], b: &[f64]) -> String {
    let d: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
    match (percentile(&d, 0.0), percentile(&d, 100.0), median(&d)) {
        (Some(lo), Some(hi), Some(mid)) => format!(
            "from {} to {} ms (median {})",
            fmt_num(lo),
            fmt_num(hi),
            fmt_num(mid)
        ),
        _ => "?".to_owned(),
    }
}

/// The gateway's CPU, % of one core, per round: the first viewer's (1 − 0 viewers) and each
/// further viewer's ((N − 1) ÷ (N − 1)).
fn cpu_per_viewer(v: &ViewerResults) -> (Vec<f64>, Vec<f64>) {
    let [none, one, many] = &v.cpu_pct;
    let further = (v.plan.viewers.max(2) - 1) as f64;
    let first = one.iter().zip(none).map(|(a, b)| a - b).collect();
    let each = many
        .iter()
        .zip(one)
        .map(|(a, b)| (a - b) / further)
        .collect();
    (first, each)
}

/// The gateway's RSS growth in KiB per round: the first viewer's and each further viewer's
/// (only the first round's are on a fresh process).
fn memory_per_viewer(v: &ViewerResults) -> (Vec<f64>, Vec<f64>) {
    let [before, one, many] = &v.rss_kib;
    let further = (v.plan.viewers.max(2) - 1) as f64;
    let first = one
        .iter()
        .zip(before)
        .map(|(a, b)| *a as f64 - *b as f64)
        .collect();
    let each = many
        .iter()
        .zip(one)
        .map(|(a, b)| (*a as f64 - *b as f64) / further)
        .collect();
    (first, each)
}

/// How many of the late joiners got a frame, and their median wait.
fn late(f: &FrameFigures) -> (usize, Option<f64>) {
    let got: Vec<f64> = f.late_frame_ms.iter().flatten().copied().collect();
    (got.len(), median(&got))
}

fn latency_rows(v: &ViewerResults) -> Vec<Row> {
    let (d, i, p) = (&v.direct, &v.ingot, &v.plan);
    let misses = match (d.misses, i.misses) {
        (0, 0) => "no change was lost".to_owned(),
        (a, b) => format!(
            "**changes lost (no frame within {} s): {a} direct, {b} ingot**",
            WAIT.as_secs_f64()
        ),
    };
    let painted_misses = match v.painted_misses {
        0 => "no change was lost".to_owned(),
        n => format!(
            "**{n} changes never painted within {} s**",
            WAIT.as_secs_f64()
        ),
    };
    vec![
        Row::new(
            "change on the page → frame painted by ingot's viewer page (in headless Chromium), p50",
            "ms",
            Better::Lower,
        )
        .figures(None, median(&v.painted.p50))
        .goal(Goal::AtMost(LATENCY_GOAL_MS))
        .note(format!(
            "the issue's figure: `debugUrl` open in a headless Chromium, timed until the page's `drawImage` of the new colour on its canvas (reported through a binding); {} changes per round; median of {}; a person's screen shows it at the next display refresh; {painted_misses}",
            p.changes.div_ceil(2),
            rounds(p.rounds),
        )),
        Row::new("same, p99", "ms", Better::Lower)
            .figures(None, median(&v.painted.p99)),
        Row::new(
            "change on the page → frame decoded by a WebSocket client, p50",
            "ms",
            Better::Lower,
        )
        .figures(median(&d.latency.p50), median(&i.latency.p50))
        .note(format!(
            "{} colour changes of a 320×240 box per target per round, in blocks of {} alternating between the targets; median of {}; ingot − direct per round {}; until the frame's message arrived (before decoding) p50 {} vs {} ms; JPEG {} vs {} KiB; {misses}",
            p.changes,
            p.block,
            rounds(p.rounds),
            paired_differences(&i.latency.p50, &d.latency.p50),
            num(percentile(&d.arrival_ms, 50.0)),
            num(percentile(&i.arrival_ms, 50.0)),
            mean_kib(&d.still_bytes),
            mean_kib(&i.still_bytes),
        )),
        Row::new("same, p99", "ms", Better::Lower)
            .figures(median(&d.latency.p99), median(&i.latency.p99))
            .note(format!(
                "all samples pooled: p99 {} vs {} ms, max {} vs {} ms",
                num(percentile(&d.latency.all, 99.0)),
                num(percentile(&i.latency.all, 99.0)),
                num(percentile(&d.latency.all, 100.0)),
                num(percentile(&i.latency.all, 100.0)),
            )),
    ]
}

fn fps_rows(v: &ViewerResults) -> Vec<Row> {
    let p = &v.plan;
    let n = p.viewers;
    let medians: Vec<f64> = v.fps_many.iter().filter_map(|r| median(r)).collect();
    let slowest: Vec<f64> = v
        .fps_many
        .iter()
        .filter_map(|r| percentile(r, 0.0))
        .collect();
    let fastest: Vec<f64> = v
        .fps_many
        .iter()
        .filter_map(|r| percentile(r, 100.0))
        .collect();
    let ratios = |a: &[f64], b: &[f64]| -> String {
        let r: Vec<f64> = a
            .iter()
            .zip(b)
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect();
        match (percentile(&r, 0.0), percentile(&r, 100.0)) {
            (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2}×"),
            _ => "?".to_owned(),
        }
    };
    vec![
        Row::new("frames per second, animated page, 1 viewer", "fps", Better::Higher)
            .figures(median(&v.fps_direct), median(&v.fps_one))
            .goal(Goal::AtLeast(FPS_GOAL))
            .note(format!(
                "the box moves and changes colour on every `requestAnimationFrame`; per round {SLICES} slices of {} s per target, each after {} s of animation, direct and ingot taking turns, frames ÷ the slices' time; median of {}; ingot ÷ direct per round {}; JPEG {} vs {} KiB",
                fmt_num(p.window.as_secs_f64() / f64::from(SLICES)),
                fmt_num(SLICE_WARM_UP.as_secs_f64()),
                rounds(p.rounds),
                ratios(&v.fps_one, &v.fps_direct),
                mean_kib(&v.direct.animated_bytes),
                mean_kib(&v.ingot.animated_bytes),
            )),
        Row::new(
            format!("same, each of {n} viewers at once (median viewer)"),
            "fps",
            Better::Higher,
        )
        .figures(median(&v.fps_direct_many), median(&medians))
        .note(format!(
            "a second series of slices, direct's one client taking turns with ingot's {n} viewers; ingot ÷ direct per round {}; the fastest of the {n} viewers {} fps (median of rounds)",
            ratios(&medians, &v.fps_direct_many),
            num(median(&fastest))
        )),
        Row::new(format!("same, slowest of the {n} viewers"), "fps", Better::Higher)
            .figures(median(&v.fps_direct_many), median(&slowest)),
    ]
}

fn cost_rows(v: &ViewerResults) -> Vec<Row> {
    let n = v.plan.viewers;
    let (cpu_first, cpu_each) = cpu_per_viewer(v);
    let (rss_first, rss_each) = memory_per_viewer(v);
    let [none, one, many] = &v.cpu_pct;
    let mib = |k: &[u64]| num(k.first().map(|&k| k as f64 / 1024.0));
    let [rss_before, rss_one, rss_many] = &v.rss_kib;
    let later: Vec<String> = rss_each.iter().skip(1).map(|&k| fmt_num(k)).collect();
    vec![
        Row::new("gateway CPU for the first viewer", "% of a core", Better::Lower)
            .figures(None, median(&cpu_first))
            .note(format!(
                "ingot's CPU time (`schedstat`, all threads) during its slices on the animated page, with 0 / 1 / {n} viewers: {} / {} / {} % of one core (medians of rounds); the first viewer starts the screencast, whose frames ingot reads from the pipe, base64-decodes and acknowledges",
                num(median(none)),
                num(median(one)),
                num(median(many)),
            )),
        Row::new(
            format!("gateway CPU per further viewer (1 → {n} viewers)"),
            "% of a core",
            Better::Lower,
        )
        .figures(None, median(&cpu_each))
        .note("each further viewer is sent the same frames over its own WebSocket"),
        Row::new(
            format!("gateway memory per further viewer (1 → {n} viewers)"),
            "KiB",
            Better::Lower,
        )
        .figures(None, rss_each.first().copied())
        .note(format!(
            "growth of ingot's `VmRSS` in the first round, on a fresh gateway: before the first viewer / with 1 / with {n}: {} / {} / {} MiB, so the first viewer (the live view's task and its screencast) added {} KiB; later rounds {} KiB per further viewer, as the allocator reuses what earlier viewers freed",
            mib(rss_before),
            mib(rss_one),
            mib(rss_many),
            num(rss_first.first().copied()),
            if later.is_empty() { "–".to_owned() } else { later.join(", ") },
        )),
    ]
}

fn first_frame_rows(v: &ViewerResults) -> Vec<Row> {
    let (d, i) = (&v.direct, &v.ingot);
    let total = v.plan.rounds;
    let (d_late, d_wait) = late(d);
    let (i_late, i_wait) = late(i);
    vec![
        Row::new("new client to its first frame, still page, p50", "ms", Better::Lower)
            .figures(
                percentile(&d.first_frame_ms, 50.0),
                percentile(&i.first_frame_ms, 50.0),
            )
            .note(format!(
                "one per round, until the first frame showing the page (its box's colour decoded); direct: CDP WebSocket, attach, `Page.startScreencast`; ingot: the viewer's WebSocket, after which ingot attaches and starts the screencast; blank frames before it, all rounds: {} vs {}",
                d.blank_first_frames,
                i.blank_first_frames,
            )),
        Row::new(
            "a second client joining a still page: its first frame",
            "ms",
            Better::Lower,
        )
        .figures(d_wait, i_wait)
        .note(format!(
            "while the first client watches; a frame within {} s in {d_late} of {total} rounds direct (a screencast of its own), {i_late} of {total} ingot (the running screencast, shared)",
            LATE_WAIT.as_secs_f64()
        )),
    ]
}

fn input_rows(v: &ViewerResults) -> Vec<Row> {
    let p = &v.plan;
    let (d, c, w): (&Latency, &Latency, &Latency) =
        (&v.input_direct, &v.input_cdp, &v.input_viewer);
    vec![
        Row::new(
            "viewer click → the page's `mousedown` handler, p50",
            "ms",
            Better::Lower,
        )
        .figures(median(&d.p50), median(&w.p50))
        .note(format!(
            "direct: `Input.dispatchMouseEvent` over CDP to direct Chromium; ingot: the viewer's `mousePressed`; timed from just before sending to the handler's `Runtime.bindingCalled` arriving over the page's CDP connection; {} per path per round, three paths taking turns; median of {}",
            p.clicks,
            rounds(p.rounds)
        )),
        Row::new("same, p99", "ms", Better::Lower).figures(median(&d.p99), median(&w.p99)),
        Row::new(
            "`Input.dispatchMouseEvent` → handler through `websocketUrl`, p50",
            "ms",
            Better::Lower,
        )
        .figures(median(&d.p50), median(&c.p50))
        .note(format!(
            "the CDP path on the same session, for comparison with the viewer's; p99 {} vs {} ms",
            num(median(&d.p99)),
            num(median(&c.p99)),
        )),
    ]
}

fn rows(v: &ViewerResults) -> Vec<Row> {
    let mut rows = latency_rows(v);
    rows.extend(fps_rows(v));
    rows.extend(cost_rows(v));
    rows.extend(first_frame_rows(v));
    rows.extend(input_rows(v));
    rows
}

/// The section's table, or why it was not measured.
pub(crate) fn viewer_table(v: &Viewer) -> String {
    let v = match v {
        Viewer::Measured(v) => v,
        Viewer::Skipped(why) => return format!("Not measured: {why}.\n"),
    };
    let mut out = String::from(
        "| metric | direct Chromium | through ingot | ingot ÷ direct | target | notes |\n|---|---:|---:|---:|---|---|\n",
    );
    for row in rows(v) {
        out.push_str(&format!("| {} |\n", row.cells().join(" | ")));
    }
    out
}

/// How many of the section's targets were met, out of those measured.
pub(crate) fn viewer_targets_met(v: &Viewer) -> (usize, usize) {
    let Viewer::Measured(v) = v else {
        return (0, 0);
    };
    let verdicts: Vec<bool> = rows(v).iter().filter_map(Row::met).collect();
    (verdicts.iter().filter(|m| **m).count(), verdicts.len())
}

/// The whole section, from its heading to its method, ending with one newline.
pub(super) fn section(v: &Viewer, intro: &str, quick: bool) -> String {
    let quick = if quick {
        " **A quick smoke run (`--quick`): too few samples to quote.**"
    } else {
        ""
    };
    let body = match v {
        Viewer::Measured(r) => format!("{}\n{}", viewer_table(v), method(r)),
        Viewer::Skipped(_) => viewer_table(v),
    };
    format!("{HEADING}\n\n{intro}{quick}\n\n{body}")
}

fn method(r: &ViewerResults) -> String {
    let p = &r.plan;
    format!(
        "\
- **Targets.** One ingot (`--pool-size 0`) with one session created with `dimensions` \
{WIDTH}×{HEIGHT}, and direct Chromium launched as for the other sections, its window resized \
(`Browser.setWindowBounds`) until its page is {WIDTH}×{HEIGHT} too (pages: {direct} direct, \
{ingot} ingot). Each page is driven over CDP, attached as Puppeteer does: direct Chromium's DevTools \
WebSocket, and the session's `websocketUrl`. Both show the same page: a gradient and text under a \
320×240 box in the middle. *ingot's viewer* is a WebSocket client (Rust, tokio-tungstenite) of \
`/v1/sessions/{{id}}/viewer/ws?token=…` with the `Origin` a viewer page sends. *Direct* is a CDP \
client of its own that attaches to the page and runs `Page.startScreencast` with ingot's \
parameters (JPEG quality 70, at most 1920 px a side, every frame), acknowledging each frame the \
moment it arrives as ingot does: the gateway's cost is the difference.
- **Frame latency.** The bench sets the box to the next of six far-apart colours with \
`Runtime.evaluate` (the clock starts just before the command is sent) and the client decodes \
every frame's JPEG at 1/8 scale (`jpeg-decoder`) to read the middle pixel; the clock stops when \
the new colour is decoded. Pauses of 20–70 ms (random) between changes keep them out of step \
with the page's frame clock. {changes} changes per target per round in blocks of {block} \
alternating between the targets; {rounds}, which target goes first alternating; p50 and \
p99 per round, median over rounds.
- **Painted by the viewer page.** A third, headless Chromium (the person's browser; launched as \
direct Chromium is) opens `debugUrl` in a tab, with a script injected before the page's own \
(`Page.addScriptToEvaluateOnNewDocument`) that wraps `drawImage`: after each draw on the \
viewer's canvas it reads the middle pixel (`getImageData`) and calls a binding. Each round, \
after the clients' changes, {painted} changes on the session's page are timed from just before \
the command to that binding's event showing the new colour (so the figure includes the page's \
`createImageBitmap` decode and draw, and the event's CDP hop to the bench, but not the display's \
next refresh). The tab is then sent to `about:blank`, so the other figures have no such viewer.
- **Frames per second.** `requestAnimationFrame` moves and recolours the box every frame, on \
one page at a time (the other is still). Each round has two series of {slices} slices per \
target, direct and ingot taking turns (which goes first alternates): in a slice the page \
animates for {warm} s, then the frames each client receives are counted for {slice} s. The \
first series is direct's one client against ingot's one viewer; then {more} more viewers join \
(while the page animates), and the second series is direct's client against each of the {n} \
viewers. A round's figure is its slices' frames ÷ their time. ingot's CPU time \
(`/proc/<pid>/task/*/schedstat`, all threads) is summed over its slices, and read once more \
over {window} s of animation with no viewer at all; its `VmRSS` before the round's first \
viewer, after the first series and after the second (memory figures are the first round's, \
on a fresh gateway). The clients decode nothing here.
- **First frames.** Each round opens new clients on the still page and times them to their \
first frame; then, while they watch, a second client of each target joins and waits up to \
{late} s for a frame (direct's starts a screencast of its own; ingot's joins the running one).
- **Input latency.** The page's `mousedown` and `mouseup` handlers call a binding \
(`Runtime.addBinding`), so the bench gets `Runtime.bindingCalled` over the page's CDP \
connection the moment the handler runs. A click at the middle of the page is sent three ways, \
taking turns: `Input.dispatchMouseEvent` to direct Chromium; the same through the session's \
`websocketUrl`; and the viewer's `mousePressed`/`mouseReleased`. Timed from just before the \
press is sent to the handler's event arriving; the event's way back is the same CDP connection \
for both ingot paths. {clicks} clicks per path per round (two unmeasured first).
- Everything runs on this 2-core machine at once: the bench's own clients, ingot and its \
session's Chromium, direct Chromium and the person's. The bench stops every process it started \
(SIGTERM to ingot, which releases the session; process group SIGKILL for the other Chromiums) \
and removes its directories, also on errors and Ctrl-C.
",
        direct = r.viewport.0,
        ingot = r.viewport.1,
        changes = p.changes,
        painted = p.changes.div_ceil(2),
        block = p.block,
        rounds = rounds(p.rounds),
        warm = fmt_num(SLICE_WARM_UP.as_secs_f64()),
        slices = SLICES,
        slice = fmt_num(p.window.as_secs_f64() / f64::from(SLICES)),
        more = p.viewers.saturating_sub(1),
        window = fmt_num(p.window.as_secs_f64()),
        n = p.viewers,
        late = LATE_WAIT.as_secs_f64(),
        clicks = p.clicks,
    )
}

/// Puts the section, measured by `--only viewer`, into the report at `path` (creating the
/// file if there is none), leaving the rest of the file as it was.
pub(crate) fn write_viewer(
    path: &Path,
    v: &Viewer,
    machine: &Machine,
    took: Duration,
    quick: bool,
) -> Result<()> {
    let intro = format!(
        "Written by `cargo run --release -p ingot-bench -- --only viewer{}` on {date}; the section took {mins} min {secs} s \
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
    let section = section(v, &intro, quick);
    let text = match std::fs::read_to_string(path) {
        Ok(doc) => splice(&doc, HEADING, &section),
        Err(_) => format!("# Benchmarks\n\n{section}"),
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::viewer::ViewerPlan;

    fn results() -> ViewerResults {
        let plan = ViewerPlan {
            rounds: 2,
            changes: 4,
            block: 2,
            clicks: 3,
            window: Duration::from_secs(1),
            viewers: 10,
        };
        let latency = |p50: [f64; 2]| Latency {
            p50: p50.to_vec(),
            p99: p50.iter().map(|v| v * 2.0).collect(),
            all: p50.to_vec(),
        };
        ViewerResults {
            plan,
            viewport: ("1280x720".into(), "1280x720".into()),
            direct: FrameFigures {
                latency: latency([40.0, 44.0]),
                late_frame_ms: vec![Some(30.0), Some(50.0)],
                ..FrameFigures::default()
            },
            ingot: FrameFigures {
                latency: latency([50.0, 60.0]),
                late_frame_ms: vec![None, None],
                ..FrameFigures::default()
            },
            fps_direct: vec![20.0, 22.0],
            fps_one: vec![14.0, 16.0],
            fps_direct_many: vec![18.0, 20.0],
            fps_many: vec![vec![10.0, 12.0, 14.0], vec![11.0, 13.0, 15.0]],
            cpu_pct: [vec![0.5, 0.5], vec![5.5, 6.5], vec![14.5, 15.5]],
            rss_kib: [
                vec![10_000, 12_000],
                vec![10_900, 12_100],
                vec![11_800, 13_000],
            ],
            painted: latency([70.0, 80.0]),
            painted_misses: 0,
            input_direct: latency([1.0, 1.2]),
            input_cdp: latency([1.4, 1.6]),
            input_viewer: latency([2.0, 2.2]),
        }
    }

    #[test]
    fn targets_are_the_issues() {
        let v = Viewer::Measured(Box::new(results()));
        // Painted 75 ms ≤ 100 ms is met; 15 fps (median of 14 and 16) ≥ 15 is met.
        assert_eq!(viewer_targets_met(&v), (2, 2));
        let table = viewer_table(&v);
        assert!(
            table.contains("| n/a | 75.0 ms | – | ≤ 100 ms: **met** |"),
            "{table}"
        );
        assert!(
            table.contains("| 42.0 ms | 55.0 ms | 1.31× | – |"),
            "{table}"
        );
        assert!(
            table.contains("| 15.0 fps | 0.71× | ≥ 15.0 fps: **met** |"),
            "{table}"
        );
        let mut slow = results();
        slow.fps_one = vec![12.0, 14.0];
        slow.painted.p50 = vec![101.0];
        assert_eq!(
            viewer_targets_met(&Viewer::Measured(Box::new(slow))),
            (0, 2)
        );
    }

    #[test]
    fn differences_are_paired_by_round() {
        assert_eq!(
            paired_differences(&[27.4, 30.3, 27.6], &[28.4, 30.8, 28.8]),
            "from -1.20 to -0.50 ms (median -1.00)"
        );
        assert_eq!(paired_differences(&[], &[]), "?");
    }

    #[test]
    fn costs_are_per_viewer() {
        let r = results();
        let (first, each) = cpu_per_viewer(&r);
        assert_eq!(first, [5.0, 6.0]);
        assert_eq!(each, [1.0, 1.0]);
        let (first, each) = memory_per_viewer(&r);
        assert_eq!(first, [900.0, 100.0]);
        assert_eq!(each, [100.0, 100.0]);
        assert_eq!(late(&r.ingot), (0, None));
        assert_eq!(late(&r.direct), (2, Some(40.0)));
    }

    #[test]
    fn the_section_replaces_its_own_and_keeps_the_rest() {
        let doc = "# B\n\n## Cluster\n\nc\n\n## Method\n\n- m\n";
        let once = splice(doc, HEADING, "## Viewer\n\nold\n");
        assert_eq!(
            once,
            "# B\n\n## Cluster\n\nc\n\n## Viewer\n\nold\n\n## Method\n\n- m\n"
        );
        assert_eq!(
            splice(&once, HEADING, "## Viewer\n\nnew\n"),
            "# B\n\n## Cluster\n\nc\n\n## Viewer\n\nnew\n\n## Method\n\n- m\n"
        );
        let skipped = section(&Viewer::Skipped("no viewer".into()), "intro", false);
        assert_eq!(skipped, "## Viewer\n\nintro\n\nNot measured: no viewer.\n");
    }
}
