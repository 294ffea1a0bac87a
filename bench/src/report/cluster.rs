//! The `## Cluster` section of the report: its two tables (round trip and create, each
//! through a forwarding node against the owner node and direct Chromium; failover), its
//! method, and putting it into an existing file on its own (`--only cluster`).
//!
//! The section is self-contained (its own intro line says which run measured it, and its own
//! method), so that a cluster-only run can replace it without touching the figures, the
//! machine description or the method of the full run the rest of the file comes from.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Machine, splice, totals};
use crate::cluster::{Cluster, ClusterResults, POLL};
use crate::sessions::Start;
use crate::stats::{fmt_num, median, percentile};

/// The section's heading line.
const HEADING: &str = "## Cluster";
/// The round trip through a forwarding node, at most this many times the owner's (p50).
const FORWARDING_GOAL: f64 = 1.15;

/// One row of the round-trip and create table.
struct ClusterRow {
    metric: String,
    unit: &'static str,
    direct: Option<f64>,
    owner: Option<f64>,
    forwarded: Option<f64>,
    /// Forwarded ÷ owner at most this.
    goal: Option<f64>,
    note: String,
}

/// `a ÷ b`, when both are known.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl ClusterRow {
    fn new(metric: impl Into<String>, unit: &'static str) -> ClusterRow {
        ClusterRow {
            metric: metric.into(),
            unit,
            direct: None,
            owner: None,
            forwarded: None,
            goal: None,
            note: String::new(),
        }
    }

    /// `Some(true)` met, `Some(false)` missed, `None` when no target applies or no figure.
    fn met(&self) -> Option<bool> {
        Some(ratio(self.forwarded, self.owner)? <= self.goal?)
    }

    fn cells(&self) -> [String; 8] {
        let figure = |v: Option<f64>| {
            v.map_or("n/a".to_owned(), |v| {
                format!("{} {}", fmt_num(v), self.unit)
            })
        };
        let times = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{r:.2}×"));
        let target = match (self.goal, self.met()) {
            (None, _) => "–".to_owned(),
            (Some(goal), met) => format!(
                "≤ {goal}× owner: {}",
                match met {
                    Some(true) => "**met**",
                    Some(false) => "**missed**",
                    None => "not measured",
                }
            ),
        };
        [
            format!("{} (lower is better)", self.metric),
            figure(self.direct),
            figure(self.owner),
            figure(self.forwarded),
            times(ratio(self.forwarded, self.owner)),
            times(ratio(self.owner, self.direct)),
            target,
            self.note.clone(),
        ]
    }
}

/// Round trips (median over rounds of each round's p50 and p99) and creates (p50 and p99).
fn rows(c: &ClusterResults) -> Vec<ClusterRow> {
    let p = &c.plan;
    let rtt = |f: fn(&crate::cluster::PageFigures) -> &Vec<f64>, row: ClusterRow| ClusterRow {
        direct: median(f(&c.direct)),
        owner: median(f(&c.owner)),
        forwarded: median(f(&c.forwarded)),
        ..row
    };
    let (owner, forwarded) = (totals(&c.create_owner), totals(&c.create_forwarded));
    let create = |q: f64, row: ClusterRow| ClusterRow {
        owner: percentile(&owner, q),
        forwarded: percentile(&forwarded, q),
        ..row
    };
    vec![
        rtt(
            |r| &r.p50_us,
            ClusterRow {
                goal: Some(FORWARDING_GOAL),
                note: format!(
                    "{} per target per round, in blocks rotating among the three; median of {} rounds; b ÷ a within each round {}; node b spent {} µs of CPU per forwarded round trip",
                    p.rtt_runs,
                    p.rounds,
                    spread(&paired_ratios(&c.forwarded.p50_us, &c.owner.p50_us)),
                    median(&c.forwarder_cpu_us).map_or("?".to_owned(), fmt_num)
                ),
                ..ClusterRow::new("`Runtime.evaluate 1+1` round trip, p50", "µs")
            },
        ),
        rtt(|r| &r.p99_us, ClusterRow::new("same, p99", "µs")),
        ClusterRow {
            direct: percentile(&c.direct.reconnect_ms, 50.0),
            owner: percentile(&c.owner.reconnect_ms, 50.0),
            forwarded: percentile(&c.forwarded.reconnect_ms, 50.0),
            note: format!(
                "{} each, {} per round after its round trips; the WebSocket through b is joined to one b opens to a",
                c.owner.reconnect_ms.len(),
                p.reconnects
            ),
            ..ClusterRow::new("new WebSocket to first CDP reply (reconnect), p50", "ms")
        },
        create(
            50.0,
            ClusterRow {
                note: format!(
                    "{} each, alternating; node a `--pool-size {}`, its pool full and idle for 1 s before each create; no direct figure (a client launching Chromium has no pool); p50 until the create is answered: {} ms on a, {} ms through b, the rest is WebSocket and first reply",
                    owner.len(),
                    c.pool,
                    answered_p50(&c.create_owner),
                    answered_p50(&c.create_forwarded),
                ),
                ..ClusterRow::new("create to first CDP reply, warm pool, p50", "ms")
            },
        ),
        create(99.0, ClusterRow::new("same, p99", "ms")),
    ]
}

/// `a[i] ÷ b[i]` for each round: a ratio that round-to-round noise hitting both alike leaves
/// alone, unlike the ratio of two medians taken separately.
fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

/// `1.11–1.24× (median 1.13×)`, or `?` without ratios.
fn spread(ratios: &[f64]) -> String {
    let (Some(min), Some(max), Some(mid)) = (
        percentile(ratios, 0.0),
        percentile(ratios, 100.0),
        median(ratios),
    ) else {
        return "?".to_owned();
    };
    format!("{min:.2}–{max:.2}× (median {mid:.2}×)")
}

/// The p50 of the time until the create was answered.
fn answered_p50(starts: &[Start]) -> String {
    let v: Vec<f64> = starts.iter().map(|s| s.address_ms).collect();
    percentile(&v, 50.0).map_or("?".to_owned(), fmt_num)
}

/// How many of `samples` exceed `bound`.
fn beyond(samples: &[f64], bound: f64) -> usize {
    samples.iter().filter(|&&s| s > bound).count()
}

/// The failover table: one row, its figure against the expected bound (not a target).
fn failover_table(c: &ClusterResults) -> String {
    let lease = c.plan.lease_ms;
    let bound = (lease + lease / 3) as f64;
    let n = c.failover_ms.len();
    let verdict = match beyond(&c.failover_ms, bound) {
        0 => format!("all {n} within"),
        k => format!("**{k} of {n} beyond**"),
    };
    let each: Vec<String> = c.failover_ms.iter().map(|&v| fmt_num(v)).collect();
    format!(
        "| metric | figure | expected | notes |\n|---|---:|---|---|\n\
         | a node's SIGKILL to its session reading `failed` on another node, `--node-lease-ms {lease}`, median of {n} (lower is better) \
         | {median} ms | ≤ {bound} ms (lease + lease/3 renewal period): {verdict} \
         | each: {each} ms; node b polled every {poll} ms; `releaseReason` `browser_crashed` every time |\n",
        median = median(&c.failover_ms).map_or("n/a".to_owned(), fmt_num),
        bound = fmt_num(bound),
        each = each.join(", "),
        poll = POLL.as_millis(),
    )
}

/// The section's tables, or why it was not measured.
pub(crate) fn cluster_tables(c: &Cluster) -> String {
    let c = match c {
        Cluster::Measured(c) => c,
        Cluster::Skipped(why) => return format!("Not measured: {why}.\n"),
    };
    let mut out = String::from(
        "| metric | direct Chromium | owner node (a) | through another node (b) | b ÷ a | a ÷ direct | target | notes |\n\
         |---|---:|---:|---:|---:|---:|---|---|\n",
    );
    for row in rows(c) {
        out.push_str(&format!("| {} |\n", row.cells().join(" | ")));
    }
    out.push('\n');
    out.push_str(&failover_table(c));
    out
}

/// How many of the section's targets were met, out of those measured.
pub(crate) fn cluster_targets_met(c: &Cluster) -> (usize, usize) {
    let Cluster::Measured(c) = c else {
        return (0, 0);
    };
    let verdicts: Vec<bool> = rows(c).iter().filter_map(ClusterRow::met).collect();
    (verdicts.iter().filter(|m| **m).count(), verdicts.len())
}

/// The whole section, from its heading to its method, ending with one newline.
pub(super) fn section(c: &Cluster, intro: &str, quick: bool) -> String {
    let quick = if quick {
        " **A quick smoke run (`--quick`): too few samples to quote.**"
    } else {
        ""
    };
    let body = match c {
        Cluster::Measured(r) => format!("{}\n{}", cluster_tables(c), method(r)),
        Cluster::Skipped(_) => cluster_tables(c),
    };
    format!("{HEADING}\n\n{intro}{quick}\n\n{body}")
}

fn method(r: &ClusterResults) -> String {
    let p = &r.plan;
    format!(
        "\
- **Nodes.** {postgres}, started by the benchmark (a fresh database cluster in its temporary \
directory, a loopback port, `fsync=off`), and two `ingot` nodes on this machine with `--database-url` \
naming the same database, `--node-id a` / `b`, `--node-lease-ms {lease}`, and each its own port and \
data directory. Node a owns the sessions (`--pool-size {pool} --max-sessions 4`); node b forwards \
(`--pool-size 0 --max-sessions 1`).
- **Round trip.** One session created on a, and three pages opened as for the per-command figures: \
direct Chromium's DevTools WebSocket, the session's `websocketUrl` on a, and the same URL with b's \
address, which b forwards to a. Both ingot pages are the same tab of the same browser, so what differs \
is the forwarding hop. {rounds} rounds of {rtt} sequential `Runtime.evaluate 1+1` per target, in blocks \
of {block} rotating among the three (the first changes every round); p50 and p99 per round, median over \
rounds; b's CPU time (`schedstat`, all threads) read around its blocks. After each round's round trips, \
{reconnects} new WebSockets per target to the same URL as its page, each until the reply to `Browser.getVersion`.
- **Create through another node.** b's one slot is taken by a session of its own, so `POST /v1/sessions` \
to b places the session on a, answers with a `websocketUrl` on b, and the WebSocket to it goes through b \
to a; against `POST /v1/sessions` to a with its `websocketUrl` on a. Each: create → WebSocket → reply to \
`Browser.getVersion`; {creates} of each, alternating, a's pool full and idle for 1 s before every create.
- **Failover.** A session created on a and seen `live` on b; a SIGKILLed (its browsers die with it); b \
asked `GET /v1/sessions/{{id}}` every {poll} ms until the session is no longer `live`, which must then read \
`failed` with `releaseReason` `browser_crashed`. The figure is the time from the SIGKILL to that answer. \
A node renews its lease every lease/3 and survivors look for expired leases as often, so the time is \
between 2/3 of the lease (a kill just before a renewal) and the lease plus lease/3. a is restarted \
(same `--node-id`, fresh data directory) between the {kills} kills.
",
        postgres = r.postgres,
        lease = p.lease_ms,
        pool = r.pool,
        rounds = p.rounds,
        rtt = p.rtt_runs,
        block = p.rtt_block,
        reconnects = p.reconnects,
        creates = p.creates,
        poll = POLL.as_millis(),
        kills = p.kills,
    )
}

/// Puts the section, measured by `--only cluster`, into the report at `path` (creating the
/// file if there is none), leaving the rest of the file as it was.
pub(crate) fn write_cluster(
    path: &Path,
    c: &Cluster,
    machine: &Machine,
    took: Duration,
    quick: bool,
) -> Result<()> {
    let intro = format!(
        "Written by `cargo run --release -p ingot-bench -- --only cluster{}` on {date}; the section took {mins} min {secs} s \
         (ingot commit {commit}, {chromium}, load average at start / end {start} / {end}). The rest of this file \
         is from the run described at its top.",
        if quick { " --quick" } else { "" },
        date = machine.date,
        mins = took.as_secs() / 60,
        secs = took.as_secs() % 60,
        commit = machine.ingot_commit,
        chromium = machine.chromium,
        start = machine.load_start,
        end = machine.load_end,
    );
    let section = section(c, &intro, quick);
    let text = match std::fs::read_to_string(path) {
        Ok(doc) => splice(&doc, HEADING, &section),
        Err(_) => format!("# Benchmarks\n\n{section}"),
    };
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "# Benchmarks\n\n## Results\n\n| a |\n\n## Method\n\n- m\n\n## Findings\n\n- f\n";

    #[test]
    fn the_section_goes_before_the_method_once_and_is_then_replaced() {
        let first = splice(DOC, HEADING, "## Cluster\n\nold\n");
        assert_eq!(
            first,
            "# Benchmarks\n\n## Results\n\n| a |\n\n## Cluster\n\nold\n\n## Method\n\n- m\n\n## Findings\n\n- f\n"
        );
        let second = splice(&first, HEADING, "## Cluster\n\nnew\n| t |\n");
        assert_eq!(
            second,
            "# Benchmarks\n\n## Results\n\n| a |\n\n## Cluster\n\nnew\n| t |\n\n## Method\n\n- m\n\n## Findings\n\n- f\n"
        );
    }

    #[test]
    fn without_a_method_the_section_goes_before_the_findings_or_at_the_end() {
        let doc = "# B\n\n## Findings\n\n- f\n";
        assert_eq!(
            splice(doc, HEADING, "## Cluster\n\nx\n"),
            "# B\n\n## Cluster\n\nx\n\n## Findings\n\n- f\n"
        );
        assert_eq!(
            splice("# B\n", HEADING, "## Cluster\n\nx\n"),
            "# B\n\n## Cluster\n\nx\n"
        );
        let last = "# B\n\n## Cluster\n\nold\n";
        assert_eq!(
            splice(last, HEADING, "## Cluster\n\nnew\n"),
            "# B\n\n## Cluster\n\nnew\n"
        );
    }

    #[test]
    fn a_heading_that_only_starts_like_the_sections_is_not_it() {
        let doc = "# B\n\n## Clusters of things\n\ny\n\n## Method\n\n- m\n";
        assert_eq!(
            splice(doc, HEADING, "## Cluster\n\nx\n"),
            "# B\n\n## Clusters of things\n\ny\n\n## Cluster\n\nx\n\n## Method\n\n- m\n"
        );
    }

    #[test]
    fn the_forwarding_target_is_judged_against_the_owner() {
        let row = |owner, forwarded| ClusterRow {
            direct: Some(200.0),
            owner: Some(owner),
            forwarded: Some(forwarded),
            goal: Some(FORWARDING_GOAL),
            ..ClusterRow::new("rtt", "µs")
        };
        assert_eq!(row(250.0, 280.0).met(), Some(true));
        assert_eq!(row(250.0, 290.0).met(), Some(false));
        let cells = row(250.0, 275.0).cells();
        assert_eq!(cells[4], "1.10×");
        assert_eq!(cells[5], "1.25×");
        assert_eq!(cells[6], "≤ 1.15× owner: **met**");
        let untargeted = ClusterRow::new("p99", "µs");
        assert_eq!(untargeted.met(), None);
        assert_eq!(untargeted.cells()[4], "–");
    }

    #[test]
    fn rounds_are_compared_pairwise() {
        let ratios = paired_ratios(&[537.0, 562.0, 528.0], &[485.0, 502.0, 426.0]);
        assert_eq!(spread(&ratios), "1.11–1.24× (median 1.12×)");
        assert_eq!(paired_ratios(&[1.0, 2.0], &[0.0, 1.0]), [2.0]);
        assert_eq!(spread(&[]), "?");
    }

    #[test]
    fn failovers_beyond_the_bound_are_counted() {
        assert_eq!(beyond(&[2100.0, 3990.0, 4000.0], 4000.0), 0);
        assert_eq!(beyond(&[4001.0, 3000.0, 5000.0], 4000.0), 2);
    }
}
