//! The partition scenarios of issue 20, each a test with a heal: node b ↔ database (an
//! immediate-error cut, a silent drop, b's link down), database ↔ every node (three nodes,
//! 60 s), node ↔ node, and a release during a cut. Each prints one line of numbers and
//! asserts the properties.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::net_cluster::*;
use super::probe::{End, Probe};
use crate::common::exclusive;
use crate::common::netns::Fault;

/// How long a cut lasts (the database ↔ every node cut lasts [`OUTAGE`]).
const CUT: Duration = Duration::from_secs(20);
/// The database ↔ every node outage.
const OUTAGE: Duration = Duration::from_secs(60);
/// Lease, as a duration.
const LEASE: Duration = Duration::from_millis(LEASE_MS);

fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
}

fn secs_since(t0: Instant, t: Option<Instant>) -> String {
    t.map(|t| format!("{:+.1}s", ms_between(t0, t) as f64 / 1000.0))
        .unwrap_or_else(|| "never".into())
}

/// How node b loses the database in scenarios a–c.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Loss {
    /// b ↔ database, immediate errors.
    Cut,
    /// b ↔ database, packets silently dropped.
    Silent,
    /// b's link down: b ↔ everything.
    Link,
}

/// What a node says of session `id`: status, reason, duration, credits (`None` when it
/// does not answer).
async fn view(node: &crate::common::Gateway, id: &str) -> Option<Value> {
    let (status, body) = get(node, &format!("/v1/sessions/{id}"), Duration::from_secs(3)).await?;
    // A live session's duration grows while the nodes are asked in turn.
    let duration = match body["status"].as_str() {
        Some("live") => Value::Null,
        _ => body["duration"].clone(),
    };
    (status == 200).then(|| {
        json!({
            "status": body["status"],
            "reason": body["releaseReason"],
            "duration": duration,
            "credits": body["creditsUsed"],
        })
    })
}

/// Waits (up to `within`) until every node says the same of session `id` and its status
/// is `status`; returns how long that took, or what they said when they never agreed.
async fn agree(
    cluster: &NetCluster,
    id: &str,
    status: &str,
    within: Duration,
) -> Result<Duration, Vec<Option<Value>>> {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for node in &cluster.nodes {
            seen.push(view(node, id).await);
        }
        let same = seen.iter().all(|v| v.is_some() && *v == seen[0]);
        if same && seen[0].as_ref().is_some_and(|v| v["status"] == status) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(seen);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What happened while b was cut off, as seen from the test.
#[derive(Debug, Default)]
struct DuringCut {
    /// A fresh connection straight to b.
    fresh_on_b: Option<Upgrade>,
    /// A fresh connection to b's session through a, once its record read failed.
    fresh_via_a: Option<Upgrade>,
    /// A create on b: status and error code.
    create_on_b: Option<(u16, String)>,
    /// Chromium processes of b before the cut and after that create.
    chromium: (usize, usize),
    /// b's `ingot_cluster_fenced` during the cut.
    fenced: Option<f64>,
}

/// Probes b during the cut, 6 s in (b fenced itself, its lease ran out and a failed its
/// session by then).
async fn during_cut(cluster: &NetCluster, loss: Loss, on_b: &str, cut_at: Instant) -> DuringCut {
    let b = cluster.node("b");
    let mut seen = DuringCut {
        chromium: (b.chromium_processes(), 0),
        ..DuringCut::default()
    };
    tokio::time::sleep_until((cut_at + Duration::from_secs(6)).into()).await;
    seen.fresh_via_a = Some(upgrade(&cluster.ws_url("a", on_b), Duration::from_secs(5)).await);
    if loss != Loss::Link {
        seen.fresh_on_b = Some(upgrade(&cluster.ws_url("b", on_b), Duration::from_secs(5)).await);
        seen.fenced = gauge(b, "ingot_cluster_fenced", &[]).await;
        let created = post(b, "/v1/sessions", Duration::from_secs(25)).await;
        seen.create_on_b = created.map(|(s, body)| {
            let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
            (s, code)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    seen.chromium.1 = b.chromium_processes();
    seen
}

/// Two nodes, a session on each, and three clients: straight to b's session, to b's
/// session through a, and to a's own.
struct TwoNodes {
    cluster: NetCluster,
    on_a: String,
    on_b: String,
    /// When b's session existed by (its create had answered).
    b_created: Instant,
    direct: Probe,
    via_a: Probe,
    a_own: Probe,
}

impl TwoNodes {
    async fn start(db: &'static str) -> Option<TwoNodes> {
        let cluster = NetCluster::start(db, &["a", "b"], &[]).await?;
        let on_b = id_of(&cluster.node("b").create(json!({})).await);
        let b_created = Instant::now();
        let on_a = id_of(&cluster.node("a").create(json!({})).await);
        assert_eq!(cluster.row(&on_b).0, "b", "b's create ran on b");
        let direct = Probe::start("direct to b", &cluster.ws_url("b", &on_b)).await;
        let via_a = Probe::start("through a", &cluster.ws_url("a", &on_b)).await;
        let a_own = Probe::start("a's own", &cluster.ws_url("a", &on_a)).await;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let answered = direct.answers_between(started, Instant::now());
        assert!(answered >= 10, "answers before the cut: {answered}");
        Some(TwoNodes {
            cluster,
            on_a,
            on_b,
            b_created,
            direct,
            via_a,
            a_own,
        })
    }
}

/// What scenarios a–c measured after the heal.
struct AfterHeal {
    cut_at: Instant,
    healed_at: Instant,
    /// How b's clients ended: straight, through a.
    ended: (Option<End>, Option<End>),
    agreed: Result<Duration, Vec<Option<Value>>>,
    /// b's metrics before the cut and after the heal.
    metrics: (prometheus_parse::Scrape, prometheus_parse::Scrape),
}

/// The time spent fenced, from `ingot_cluster_fenced_seconds` (a gauge that only grows).
fn fenced_seconds(scrape: &prometheus_parse::Scrape) -> Option<f64> {
    crate::common::try_metric(scrape, "ingot_cluster_fenced_seconds", &[])
}

/// Whether `code` is a create refused for want of the database: `node_fenced` once the
/// node fenced itself, `database_unavailable` before.
fn database_refusal(code: &str) -> bool {
    matches!(code, "node_fenced" | "database_unavailable")
}

/// Failed renewals counted in `scrape`.
fn renewals_failed(scrape: &prometheus_parse::Scrape) -> f64 {
    let labels = [("outcome", "failed")];
    crate::common::try_metric(scrape, "ingot_cluster_lease_renewals_total", &labels).unwrap_or(0.0)
}

/// Scenarios a–c: b loses the database for [`CUT`] as `loss` says, then the heal.
async fn node_loses_the_database(db: &'static str, loss: Loss) {
    let _alone = exclusive().await;
    let Some(t) = TwoNodes::start(db).await else {
        return;
    };
    let b = t.cluster.node("b");
    let before = scrape(b).await.expect("b's metrics");
    let watch = t.cluster.watch(&[t.on_b.clone(), t.on_a.clone()]).await;
    let cut_at = Instant::now();
    let fault = match loss {
        Loss::Cut => t.cluster.net.cut("b", "pg"),
        Loss::Silent => t.cluster.net.drop_silently("b", "pg"),
        Loss::Link => t.cluster.net.link_down("b"),
    };
    let during = during_cut(&t.cluster, loss, &t.on_b, cut_at).await;
    tokio::time::sleep_until((cut_at + CUT).into()).await;
    t.cluster.net.heal(&fault);
    let healed_at = Instant::now();
    let ended = (
        t.direct.wait_end(Duration::from_secs(10)).await,
        t.via_a.wait_end(Duration::from_secs(5)).await,
    );
    let agreed = agree(
        &t.cluster,
        &t.on_b,
        "failed",
        LEASE + Duration::from_secs(1),
    )
    .await;
    let after = scrape(b).await.expect("b's metrics after the heal");
    let seen = AfterHeal {
        cut_at,
        healed_at,
        ended,
        agreed,
        metrics: (before, after),
    };
    let failed = watch.changed(&t.on_b);
    let last = [t.direct.last_answer(), t.via_a.last_answer()];
    let last = last.into_iter().flatten().max();
    let window = failed
        .as_ref()
        .zip(last)
        .map(|((at, ..), l)| ms_between(*at, l));
    print_loss(db, loss, &t, &during, &seen, (&failed, window));
    let failed = failed.expect("b's session was failed during the cut");
    assert_eq!(
        (failed.1.as_str(), failed.2.as_str()),
        ("failed", "node_lost")
    );
    assert!(
        window.expect("answers") <= 1_000,
        "split brain for {window:?} ms"
    );
    assert_during(&during, loss);
    assert_after_heal(&t, seen.ended, seen.agreed).await;
    assert!(
        watch.changed(&t.on_a).is_none(),
        "a's session lives on: {:?}",
        watch.all()
    );
    let silence = t.a_own.longest_silence(cut_at, Instant::now());
    assert!(
        t.a_own.end().is_none() && silence < Duration::from_secs(1),
        "a's client: {silence:?}"
    );
    let rose = renewals_failed(&seen.metrics.0) < renewals_failed(&seen.metrics.1);
    assert_metrics(&seen.metrics.1, loss, rose);
    if loss == Loss::Silent {
        assert!(
            b.log_text().contains("cannot renew"),
            "the failed renewal is logged"
        );
    }
}

/// The one-line summary of scenarios a–c.
fn print_loss(
    db: &str,
    loss: Loss,
    t: &TwoNodes,
    during: &DuringCut,
    seen: &AfterHeal,
    (failed, window): (&Option<(Instant, String, String)>, Option<i64>),
) {
    let cut_at = seen.cut_at;
    let end = |e: &Option<End>| e.as_ref().map(|e| (e.code, e.reason.clone()));
    let (sent, in_time) = t.direct.counts();
    eprintln!(
        "partition {db} ({loss:?}, {}s): db {} at {}; last answer direct {} through-a {}; \
         split-brain window {window:?} ms; direct client {in_time}/{sent} answered within 1 s; \
         a's own client: {} answers, longest silence {:?}; during: fresh on b {:?}, \
         fresh via a {:?}, create on b {:?}, chromium {:?}, fenced {:?}; after heal: direct \
         client {:?} at {}, through-a {:?} at {}; agree {:?}; failed renewals {} -> {}; \
         fenced seconds {:?}",
        CUT.as_secs(),
        failed
            .as_ref()
            .map(|f| format!("{}/{}", f.1, f.2))
            .unwrap_or("live".into()),
        secs_since(cut_at, failed.as_ref().map(|f| f.0)),
        secs_since(cut_at, t.direct.last_answer()),
        secs_since(cut_at, t.via_a.last_answer()),
        t.a_own.answers_between(cut_at, Instant::now()),
        t.a_own.longest_silence(cut_at, Instant::now()),
        during.fresh_on_b,
        during.fresh_via_a,
        during.create_on_b,
        during.chromium,
        during.fenced,
        end(&seen.ended.0),
        secs_since(seen.healed_at, seen.ended.0.as_ref().map(|e| e.at)),
        end(&seen.ended.1),
        secs_since(seen.healed_at, seen.ended.1.as_ref().map(|e| e.at)),
        seen.agreed,
        renewals_failed(&seen.metrics.0),
        renewals_failed(&seen.metrics.1),
        fenced_seconds(&seen.metrics.1),
    );
}

/// What b answered while cut off.
fn assert_during(during: &DuringCut, loss: Loss) {
    assert_eq!(
        during.fresh_via_a.as_ref().and_then(Upgrade::status),
        Some(410),
        "a refuses a fresh connection to a failed session: {:?}",
        during.fresh_via_a
    );
    if loss == Loss::Link {
        return;
    }
    match &during.fresh_on_b {
        Some(Upgrade::Refused(503, code, Some(_))) if code == "node_fenced" => {}
        other => panic!(
            "a fresh connection to fenced b: 503 node_fenced with Retry-After, got {other:?}"
        ),
    }
    match &during.create_on_b {
        Some((503, code)) if database_refusal(code) => {}
        other => panic!("a create on b cut from the database: 503, got {other:?}"),
    }
    assert!(
        during.chromium.1 <= during.chromium.0,
        "no browser launched for a create on b: {:?}",
        during.chromium
    );
    assert_eq!(during.fenced, Some(1.0), "b says it is fenced");
}

/// After the heal: b's clients closed with 1011, every node and the database agree, fresh
/// connections refused with 410, b's browser gone.
async fn assert_after_heal(
    t: &TwoNodes,
    (direct, via_a): (Option<End>, Option<End>),
    agreed: Result<Duration, Vec<Option<Value>>>,
) {
    let direct = direct.expect("b's client is closed after the heal");
    assert_eq!(direct.code, Some(1011), "closed with 1011: {direct:?}");
    assert!(!direct.reason.is_empty(), "with a reason: {direct:?}");
    agreed.unwrap_or_else(|seen| panic!("nodes disagree a lease after the heal: {seen:?}"));
    let (cluster, on_a, on_b) = (&t.cluster, &t.on_a, &t.on_b);
    let (_, status, reason, _) = cluster.row(on_b);
    assert_eq!((status.as_str(), reason.as_str()), ("failed", "node_lost"));
    for name in ["a", "b"] {
        let fresh = upgrade(&cluster.ws_url(name, on_b), Duration::from_secs(5)).await;
        assert_eq!(
            fresh.status(),
            Some(410),
            "fresh connection through {name}: {fresh:?}"
        );
    }
    assert_eq!(cluster.row(on_a).1, "live");
    same_lists_and_usage(cluster).await;
    every_node_has_the_cluster_metrics(cluster).await;
    let b = cluster.node("b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.chromium_processes() > 0 {
        assert!(
            Instant::now() < deadline,
            "b's failed session's browser still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    billed_for_its_use(cluster, on_b, t.b_created, t.direct.last_answer()).await;
    let via_a = via_a.expect("the client through a is closed");
    assert!(
        via_a.code.is_some(),
        "with a close frame, not 1006: {via_a:?}"
    );
}

/// Session `id`, created by `created`, whose client got its last answer at `last`: its
/// duration covers that use and every minute of it is billed, in the database and on
/// every node.
async fn billed_for_its_use(
    cluster: &NetCluster,
    id: &str,
    created: Instant,
    last: Option<Instant>,
) {
    let used = last.expect("answers").saturating_duration_since(created);
    let minutes = used.as_secs().div_ceil(60).max(1) as i64;
    let billed = cluster.row(id).3;
    for node in &cluster.nodes {
        let seen = view(node, id).await.expect("the session");
        let duration = seen["duration"].as_u64().unwrap_or(0);
        assert!(
            u128::from(duration) >= used.as_millis() || seen["status"] == "live",
            "duration {duration} ms covers the {used:?} it answered: {seen}"
        );
        assert_eq!(
            seen["credits"],
            json!(billed),
            "credits are the database's minutes: {seen}"
        );
    }
    assert!(
        billed >= minutes,
        "{billed} minutes billed for {used:?} of answers"
    );
}

/// Every node exports the fencing state and time, database call latency and timeouts by
/// kind, and its renewals.
async fn every_node_has_the_cluster_metrics(cluster: &NetCluster) {
    for (name, node) in cluster.names().iter().zip(&cluster.nodes) {
        let scrape = scrape(node).await.expect("metrics");
        let has = |metric: &str, label: Option<&str>| {
            scrape
                .samples
                .iter()
                .any(|s| s.metric == metric && label.is_none_or(|l| s.labels.get(l).is_some()))
        };
        assert!(has("ingot_cluster_fenced", None), "{name}: fenced gauge");
        assert!(
            fenced_seconds(&scrape).is_some(),
            "{name}: time spent fenced"
        );
        assert!(
            has("ingot_database_call_seconds", Some("kind")),
            "{name}: call latency by kind"
        );
        assert!(
            has("ingot_database_timeouts_total", Some("kind")),
            "{name}: timeouts by kind"
        );
        assert!(
            has("ingot_cluster_lease_renewals_total", Some("outcome")),
            "{name}: renewals"
        );
    }
}

/// b's metrics after the heal.
fn assert_metrics(after: &prometheus_parse::Scrape, loss: Loss, renewals_failed_rose: bool) {
    use crate::common::try_metric;
    assert_eq!(
        try_metric(after, "ingot_cluster_fenced", &[]),
        Some(0.0),
        "unfenced"
    );
    let fenced_for = fenced_seconds(after).unwrap_or(0.0);
    assert!(
        fenced_for > 1.0,
        "time spent fenced is counted: {fenced_for}"
    );
    assert!(renewals_failed_rose, "failed renewals are counted");
    if loss == Loss::Silent {
        assert!(
            crate::common::metric_sum(after, "ingot_database_timeouts_total") >= 1.0,
            "timeouts are counted"
        );
    }
}

/// `GET /v1/sessions` and `/v1/usage` (over a fixed range) answer the same from every
/// node asked at the same moment. Asked at once, up to five times 300 ms apart, since a
/// checkpoint may land between the answers.
pub async fn same_lists_and_usage(cluster: &NetCluster) {
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let format = &time::format_description::well_known::Rfc3339;
    let usage = format!(
        "/v1/usage?from={}&to={}",
        (now - day).format(format).expect("from"),
        (now + day).format(format).expect("to")
    );
    for path in ["/v1/sessions", usage.as_str()] {
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers = at_once(cluster, path).await;
            if answers.iter().all(|a| *a == answers[0]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for (i, answer) in answers.iter().enumerate().skip(1) {
            assert_eq!(
                answer, &answers[0],
                "{path} differs between node 0 and node {i}"
            );
        }
    }
}

/// `path` asked of every node at once, each answer made [`comparable`].
async fn at_once(cluster: &NetCluster, path: &str) -> Vec<Value> {
    let asked = cluster
        .nodes
        .iter()
        .map(|node| get(node, path, Duration::from_secs(5)));
    let mut answers = Vec::new();
    for answer in futures_util::future::join_all(asked).await {
        let (status, body) = answer.unwrap_or_else(|| panic!("{path}: no answer"));
        assert_eq!(status, 200, "{path}: {body}");
        answers.push(comparable(body));
    }
    answers
}

/// An answer without what differs by nature from node to node (links, and durations of
/// live sessions, which grow while the nodes are asked in turn).
fn comparable(mut body: Value) -> Value {
    if let Some(sessions) = body["sessions"].as_array_mut() {
        for s in sessions {
            let Some(s) = s.as_object_mut() else { continue };
            for link in ["websocketUrl", "debugUrl", "sessionViewerUrl"] {
                s.remove(link);
            }
            if s.get("status") == Some(&json!("live")) {
                s.remove("duration");
            }
        }
    }
    body
}

/// a. Node b ↔ database, immediate errors, 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_database_fences_before_it_is_failed() {
    node_loses_the_database("part_cut", Loss::Cut).await;
}

/// b. Node b ↔ database, packets silently dropped, 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_node_silently_dropped_from_the_database_fences_and_logs() {
    node_loses_the_database("part_silent", Loss::Silent).await;
}

/// c. Node b ↔ everything (its link down), 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_node_cut_from_everything_fences_and_clients_through_others_stop() {
    node_loses_the_database("part_link", Loss::Link).await;
}

/// d. Database ↔ every node, silent drop, 60 s, three nodes: no session fails, clients
/// answer again within 5 s of the heal, every node agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_database_outage_fails_no_session() {
    let _alone = exclusive().await;
    let Some(cluster) = NetCluster::start("part_outage", &["a", "b", "c"], &[]).await else {
        return;
    };
    let (mut ids, mut probes, mut created) = (Vec::new(), Vec::new(), Vec::new());
    for name in cluster.names() {
        let id = id_of(&cluster.node(&name).create(json!({})).await);
        created.push(Instant::now());
        assert_eq!(cluster.row(&id).0, name);
        probes.push(Probe::start(&name, &cluster.ws_url(&name, &id)).await);
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watch = cluster.watch(&ids).await;
    let cut_at = Instant::now();
    let faults: Vec<Fault> = cluster
        .names()
        .iter()
        .map(|n| cluster.net.drop_silently("pg", n))
        .collect();
    tokio::time::sleep(OUTAGE).await;
    for fault in &faults {
        cluster.net.heal(fault);
    }
    let healed_at = Instant::now();
    tokio::time::sleep(LEASE * 2 + Duration::from_secs(2)).await;
    let mut agreed = Vec::new();
    for id in &ids {
        agreed.push(agree(&cluster, id, "live", LEASE).await);
    }
    let summary: Vec<String> = probes
        .iter()
        .map(|p| {
            format!(
                "{}: {} answers in the outage, {} CDP errors, first after heal {}, ended {:?}",
                p.name,
                p.answers_between(cut_at, healed_at),
                p.errors().len(),
                secs_since(healed_at, p.first_answer_after(healed_at)),
                p.end().map(|e| (e.code, e.reason))
            )
        })
        .collect();
    eprintln!(
        "partition outage (pg <-> a, b, c silent, {}s): records changed {:?}; {}; agree {agreed:?}",
        OUTAGE.as_secs(),
        watch.all(),
        summary.join("; ")
    );
    assert!(
        watch.all().is_empty(),
        "no session fails in a database outage: {:?}",
        watch.all()
    );
    for p in &probes {
        assert!(p.end().is_none(), "{}'s client stays connected", p.name);
        let first = p
            .first_answer_after(healed_at)
            .expect("answers after the heal");
        assert!(
            first - healed_at <= Duration::from_secs(5),
            "{} answers within 5 s",
            p.name
        );
    }
    for (id, agreed) in ids.iter().zip(agreed) {
        agreed.unwrap_or_else(|seen| panic!("{id}: nodes disagree: {seen:?}"));
    }
    same_lists_and_usage(&cluster).await;
    for ((name, id), (probe, created)) in cluster
        .names()
        .iter()
        .zip(&ids)
        .zip(probes.iter().zip(created))
    {
        cluster.node(name).release(id).await;
        billed_for_its_use(&cluster, id, created, probe.last_answer()).await;
    }
}

/// e. Node a ↔ node b, silently, database reachable, 20 s: no session fails, the client
/// forwarded through a to b's session is closed with a close frame, relayed requests
/// answer 502 `node_unreachable` within 2 s, direct clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_a_node_to_node_cut_fails_nothing_and_closes_forwarded_clients() {
    let _alone = exclusive().await;
    let Some(cluster) = NetCluster::start("part_nodes", &["a", "b"], &[]).await else {
        return;
    };
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let on_a = id_of(&a.create(json!({})).await);
    let on_b = id_of(&b.create(json!({})).await);
    let direct_a = Probe::start("a direct", &cluster.ws_url("a", &on_a)).await;
    let direct_b = Probe::start("b direct", &cluster.ws_url("b", &on_b)).await;
    let forwarded = Probe::start("a to b", &cluster.ws_url("a", &on_b)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watch = cluster.watch(&[on_a.clone(), on_b.clone()]).await;
    let cut_at = Instant::now();
    let fault = cluster.net.drop_silently("a", "b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = Instant::now();
    let relayed = get(
        a,
        &format!("/v1/sessions/{on_b}/live-details"),
        Duration::from_secs(10),
    )
    .await;
    let relay_took = asked.elapsed();
    tokio::time::sleep_until((cut_at + CUT).into()).await;
    let healed_at = Instant::now();
    cluster.net.heal(&fault);
    tokio::time::sleep(LEASE * 2).await;
    let agreed_a = agree(&cluster, &on_a, "live", LEASE).await;
    let agreed_b = agree(&cluster, &on_b, "live", LEASE).await;
    let end = forwarded.end();
    eprintln!(
        "partition a <-> b (silent, {}s): records changed {:?}; forwarded client ended {:?} at {}; \
         relayed live-details {:?} in {relay_took:?}; direct a longest silence {:?}, direct b {:?}; \
         agree {agreed_a:?} {agreed_b:?}",
        CUT.as_secs(),
        watch.all(),
        end.as_ref().map(|e| (e.code, e.reason.clone())),
        secs_since(cut_at, end.as_ref().map(|e| e.at)),
        relayed
            .as_ref()
            .map(|(s, body)| (*s, body["error"]["code"].clone())),
        direct_a.longest_silence(cut_at, healed_at),
        direct_b.longest_silence(cut_at, healed_at),
    );
    assert!(
        watch.all().is_empty(),
        "no session failed: {:?}",
        watch.all()
    );
    for p in [&direct_a, &direct_b] {
        assert!(p.end().is_none(), "{} stays connected", p.name);
        let silence = p.longest_silence(cut_at, healed_at);
        assert!(
            silence < Duration::from_secs(1),
            "{} unaffected: silent {silence:?}",
            p.name
        );
    }
    agreed_a.expect("nodes agree on a's session");
    agreed_b.expect("nodes agree on b's session");
    same_lists_and_usage(&cluster).await;
    let (status, body) = relayed.expect("the relayed request is answered");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("node_unreachable"))
    );
    assert!(
        relay_took <= Duration::from_secs(2),
        "502 within 2 s: {relay_took:?}"
    );
    let end = end.expect("the forwarded client is closed");
    assert!(
        end.code.is_some() && !end.reason.is_empty(),
        "a close frame with a reason: {end:?}"
    );
}

/// f. A release on b during a b ↔ database silent drop, 1 s in (before b fences) and 5 s
/// in (fenced): each answers 503, or 200 and every node shows `released` afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_a_release_during_a_cut_is_refused_or_recorded_everywhere() {
    let _alone = exclusive().await;
    let Some(cluster) = NetCluster::start("part_release", &["a", "b"], &[]).await else {
        return;
    };
    let b = cluster.node("b");
    let early = id_of(&b.create(json!({})).await);
    let late = id_of(&b.create(json!({})).await);
    let cut_at = Instant::now();
    let fault = cluster.net.drop_silently("b", "pg");
    let mut answers = Vec::new();
    for (id, at) in [(&early, 1), (&late, 5)] {
        tokio::time::sleep_until((cut_at + Duration::from_secs(at)).into()).await;
        let asked = Instant::now();
        let answer = post(
            b,
            &format!("/v1/sessions/{id}/release"),
            Duration::from_secs(30),
        )
        .await;
        answers.push((answer, asked.elapsed()));
    }
    tokio::time::sleep_until((cut_at + CUT).into()).await;
    cluster.net.heal(&fault);
    let mut outcomes = Vec::new();
    for ((answer, _), id) in answers.iter().zip([&early, &late]) {
        let status = answer.as_ref().map(|(s, _)| *s);
        let expect = if status == Some(200) {
            "released"
        } else {
            "failed"
        };
        outcomes.push((
            agree(&cluster, id, expect, LEASE + Duration::from_secs(1)).await,
            cluster.row(id),
        ));
    }
    eprintln!(
        "partition release on b (b <-> pg silent, {}s): answers {:?}; afterwards {outcomes:?}",
        CUT.as_secs(),
        answers
            .iter()
            .map(|(a, took)| (
                a.as_ref().map(|(s, b)| (*s, b["error"]["code"].clone())),
                *took
            ))
            .collect::<Vec<_>>(),
    );
    for ((answer, took), (agreed, row)) in answers.iter().zip(outcomes) {
        let (status, body) = answer.as_ref().expect("the release is answered");
        assert!(
            matches!(status, 200 | 503),
            "200 or 503: {status} {body} after {took:?}"
        );
        agreed.unwrap_or_else(|seen| panic!("after a {status}, nodes disagree: {seen:?}"));
        if *status == 200 {
            assert_eq!(row.1, "released", "a 200 release is recorded: {row:?}");
        }
    }
    same_lists_and_usage(&cluster).await;
}
