//! Cluster mode in-process: several gateways on fake browser hosts, each on its own
//! loopback port, sharing one [`InMemoryCluster`] (the directory of nodes and sessions, the
//! leases, the secret and the ledger) in place of PostgreSQL. Creates are placed where there
//! is room, requests and CDP WebSockets reach the owner through any node, release-all fans
//! out, quotas and session ids hold across nodes, and a client forwarded to a node that
//! leaves is closed with 1011. The real PostgreSQL + Chromium cluster is `tests/it/cluster.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ingot::testing::{FakeBrowserHost, InMemoryCluster};
use ingot::{Gateway, Settings};
use serde_json::{Value, json};
use tokio::time::timeout;

use super::{ALICE, BOB, CdpClient, FAKE_PRODUCT, FakeGateway, STEP, TENANTS, id_of};

/// Every node's lease: long, so that no node is judged dead unless a test loses it.
const LEASE: Duration = Duration::from_secs(10);

/// N gateways of one in-process cluster, named `a`, `b`, `c`…
pub(super) struct FakeCluster {
    pub(super) nodes: Vec<FakeGateway>,
    pub(super) shared: Arc<InMemoryCluster>,
    _ledger: tempfile::TempDir,
}

impl FakeCluster {
    /// Starts `n` nodes with the harness defaults (no pool, 4 sessions each), then `adjust`ed,
    /// and waits until each sees every other one with its offer.
    pub(super) async fn start(n: usize, adjust: impl Fn(&mut Settings)) -> FakeCluster {
        let guard = Arc::new(crate::common::shared().await);
        let ledger = tempfile::tempdir().expect("ledger dir");
        let shared = InMemoryCluster::new(ledger.path(), LEASE)
            .await
            .expect("the cluster's ledger opens");
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = char::from(b'a' + u8::try_from(i).expect("few nodes")).to_string();
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut settings = Settings::with_data_dir(tmp.path());
            settings.pool_size = 0;
            settings.max_sessions = Some(4);
            settings.node_id = Some(name.clone());
            settings.node_lease_ms = u64::try_from(LEASE.as_millis()).expect("ms");
            adjust(&mut settings);
            let host = FakeBrowserHost::new();
            let built = Gateway::build_in_cluster(settings, host.clone(), shared.join(&name));
            let gateway = timeout(STEP, built)
                .await
                .expect("build in time")
                .expect("the node builds");
            nodes.push(FakeGateway::serve(gateway, host, tmp, guard.clone()).await);
        }
        let cluster = FakeCluster {
            nodes,
            shared,
            _ledger: ledger,
        };
        cluster
            .wait_for("the nodes meet", |c| c.all_see_each_other(n))
            .await;
        cluster
    }

    /// Waits until `condition` holds of the shared cluster.
    async fn wait_for(&self, what: &str, condition: impl Fn(&InMemoryCluster) -> bool) {
        let started = Instant::now();
        while !condition(&self.shared) {
            assert!(started.elapsed() < STEP, "{what}: not within {STEP:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(super) fn node(&self, name: &str) -> &FakeGateway {
        &self.nodes[usize::from(name.as_bytes()[0] - b'a')]
    }

    /// The node that runs session `id`, from the directory.
    pub(super) fn owner(&self, id: &str) -> String {
        let id = uuid::Uuid::parse_str(id).expect("a session id");
        self.shared.node_of(id).expect("a recorded session")
    }

    /// Stops every node; each reaps every browser it launched.
    pub(super) async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

/// A request with `key` (none for `None`), a JSON body for POST.
async fn call(node: &FakeGateway, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let method = method.parse().expect("method");
    let body = (method == reqwest::Method::POST).then(|| json!({}));
    let r = node.request(method, path, key, body).await;
    (r.status, r.body)
}

/// The fields of a session that must read the same whichever node answers.
fn stable_fields(s: &Value) -> Value {
    let mut s = s.clone();
    for volatile in ["duration", "websocketUrl", "debugUrl", "sessionViewerUrl"] {
        s.as_object_mut().expect("object").remove(volatile);
    }
    s
}

/// CDP through `url` reaches a fake browser.
async fn cdp_works(url: &str) -> CdpClient {
    let mut client = CdpClient::connect(url).await;
    let (_, version) = client.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(version["result"]["product"], FAKE_PRODUCT, "{version}");
    client
}

/// A create on a full node is placed on another, with links to the node asked; the session
/// is retrieved, listed, discovered, driven over CDP and released through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_on_a_full_node_is_placed_elsewhere_and_served_through_any_node() {
    let cluster = FakeCluster::start(3, |s| s.max_sessions = Some(1)).await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    let here = a.create(json!({})).await;
    assert_eq!(cluster.owner(&id_of(&here)), "a", "a had room");
    let placed = a.create(json!({})).await;
    let id = id_of(&placed);
    let owner = cluster.owner(&id);
    assert_ne!(owner, "a", "a was full: the create went elsewhere");
    let ws = placed["websocketUrl"].as_str().expect("websocketUrl");
    assert_eq!(
        ws,
        a.ws_url(&id),
        "links point at the node the client asked"
    );
    let third = if owner == "b" { c } else { b };

    let through_a = cdp_works(ws).await;
    let devtools = third.url(&format!("/devtools/browser/{id}"));
    cdp_works(&devtools.replace("http://", "ws://"))
        .await
        .close()
        .await;
    let (status, version) = third.get(&format!("/json/version?sessionId={id}")).await;
    assert_eq!(status, 200, "{version}");
    let endpoint = version["webSocketDebuggerUrl"].as_str().expect("url");
    assert!(endpoint.contains(&third.addr.to_string()), "{endpoint}");

    let seen: Vec<Value> =
        futures_util::future::join_all(cluster.nodes.iter().map(|n| n.session(&id))).await;
    for s in &seen[1..] {
        assert_eq!(stable_fields(s), stable_fields(&seen[0]));
    }
    for node in &cluster.nodes {
        let (_, list) = node.get("/v1/sessions").await;
        let ids: Vec<&str> = list["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, [id.as_str(), &id_of(&here)], "newest first: {list}");
    }
    let (status, extended) = third
        .post(
            &format!("/v1/sessions/{id}/timeout"),
            json!({"timeout": 600_000}),
        )
        .await;
    assert_eq!(
        (status, &extended["timeout"]),
        (200, &json!(600_000)),
        "{extended}"
    );

    third.release(&id).await;
    let mut through_a = through_a;
    through_a.closed().await;
    assert_eq!(a.session(&id).await["status"], "released");
    super::assert_upgrade_refused(ws, 410).await;
    a.release(&id_of(&here)).await;
    let (_, usage) = c.get("/v1/usage").await;
    assert_eq!(usage["total"]["sessions"], 2, "one ledger: {usage}");
    cluster.stop().await;
}

/// Release-all through one node ends the caller's sessions on every node and no other
/// tenant's; another tenant's session id answers 404 on every node, for every route; a
/// tenant's only session is discovered through every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_all_fans_out_and_tenants_stay_apart_on_every_node() {
    let cluster = FakeCluster::start(3, |s| {
        s.api_keys = Some(TENANTS.into());
        s.max_sessions = Some(1);
    })
    .await;
    let a = cluster.node("a");
    let mut created = Vec::new();
    for key in [ALICE, ALICE, BOB] {
        created.push(a.create_as(Some(key), json!({})).await);
    }
    let owners: std::collections::BTreeSet<String> =
        created.iter().map(|s| cluster.owner(&id_of(s))).collect();
    assert_eq!(owners.len(), 3, "one session per node: {owners:?}");
    let (alice1, alice2, bob1) = (id_of(&created[0]), id_of(&created[1]), id_of(&created[2]));

    for node in &cluster.nodes {
        let get = call(node, "GET", &format!("/v1/sessions/{alice1}"), Some(BOB)).await;
        assert_eq!(get.0, 404, "{}", get.1);
        let release = format!("/v1/sessions/{alice1}/release");
        assert_eq!(call(node, "POST", &release, Some(BOB)).await.0, 404);
        let ws = format!("{}&apiKey={BOB}", node.ws_url(&alice1));
        super::assert_upgrade_refused(&ws, 404).await;
        let (status, version) = call(node, "GET", "/json/version", Some(BOB)).await;
        assert_eq!(status, 200, "{version}");
        let endpoint = version["webSocketDebuggerUrl"].as_str().expect("url");
        let expected = format!("{}/devtools/browser/{bob1}", node.addr);
        assert!(endpoint.contains(&expected), "{endpoint}");
    }

    let b = cluster.node("b");
    assert_eq!(
        call(b, "POST", "/v1/sessions/release", Some(ALICE)).await.0,
        200
    );
    for id in [&alice1, &alice2] {
        let (_, seen) = call(b, "GET", &format!("/v1/sessions/{id}"), Some(ALICE)).await;
        assert_eq!(seen["status"], "released", "{seen}");
    }
    let (_, bob_seen) = call(b, "GET", &format!("/v1/sessions/{bob1}"), Some(BOB)).await;
    assert_eq!(
        bob_seen["status"], "live",
        "bob's session goes on: {bob_seen}"
    );
    assert_eq!(cluster.shared.live_sessions(), 1);
    cluster.stop().await;
}

/// A tenant's quota counts its live sessions on every node: creates fired at once on three
/// nodes never take it one session over, and the others are refused `tenant_quota`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_quota_holds_across_nodes_under_concurrent_creates() {
    let cluster = FakeCluster::start(3, |s| {
        s.api_keys = Some(TENANTS.into());
        s.max_sessions_per_tenant = Some(2);
        s.max_sessions = Some(2);
        s.queue_timeout_ms = 0;
    })
    .await;
    let creates = cluster
        .nodes
        .iter()
        .flat_map(|node| (0..2).map(move |_| node.create_later(Some(ALICE), json!({}))));
    let answers = futures_util::future::join_all(creates).await;
    let created = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(created, 2, "{answers:?}");
    for refused in answers.iter().filter(|r| r.status != 200) {
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(
            refused.body["error"]["code"], "tenant_quota",
            "{}",
            refused.body
        );
    }
    assert_eq!(cluster.shared.live_sessions(), 2);
    // The refused creates' browsers are gone and every node has said so: 4 slots are free.
    cluster
        .wait_for("the refused creates give their slots back", |c| {
            ["a", "b", "c"]
                .iter()
                .filter_map(|n| c.offer(n))
                .map(|o| o.0)
                .sum::<i64>()
                == 4
        })
        .await;
    let bob = cluster.node("c").create_as(Some(BOB), json!({})).await;
    assert_eq!(bob["status"], "live", "another tenant is not counted");
    for node in &cluster.nodes {
        for key in [ALICE, BOB] {
            call(node, "POST", "/v1/sessions/release", Some(key)).await;
        }
    }
    cluster.stop().await;
}

/// A session id live on one node cannot be taken on another, nor once it has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_is_taken_once_across_nodes() {
    let cluster = FakeCluster::start(2, |_| {}).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let id = uuid::Uuid::new_v4().to_string();
    a.create(json!({"sessionId": id})).await;
    let (status, taken) = b.post("/v1/sessions", json!({"sessionId": id})).await;
    assert_eq!(status, 409, "live on a: {taken}");
    a.release(&id).await;
    let (status, taken) = b.post("/v1/sessions", json!({"sessionId": id})).await;
    assert_eq!(status, 409, "ended on a, never reused: {taken}");
    assert_eq!(b.host.launches(), 1, "b launched nothing but its probe");
    cluster.stop().await;
}

/// A draining node takes no new sessions and its session goes on; the others keep placing,
/// and once every node is full or draining a create is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_takes_no_sessions_and_the_others_keep_placing() {
    let cluster = FakeCluster::start(3, |s| {
        s.max_sessions = Some(1);
        s.shutdown_drain_ms = 60_000;
        s.queue_timeout_ms = 0;
    })
    .await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let on_a = a.create(json!({})).await;
    let mut client = cdp_works(on_a["websocketUrl"].as_str().expect("url")).await;
    a.begin_shutdown();
    cluster
        .wait_for("a says it takes no sessions", |c| {
            c.offer("a").is_some_and(|o| !o.1)
        })
        .await;
    let looked = cluster.shared.looks("b");
    cluster
        .wait_for("b reads the offers again", |c| c.looks("b") > looked)
        .await;
    let on_b = b.create(json!({})).await;
    assert_eq!(cluster.owner(&id_of(&on_b)), "b");
    let placed = b.create(json!({})).await;
    assert_eq!(
        cluster.owner(&id_of(&placed)),
        "c",
        "b is full and a drains"
    );
    let (status, refused) = b.post("/v1/sessions", json!({})).await;
    assert_eq!(status, 429, "every node is full or draining: {refused}");
    let (_, version) = client.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(
        version["result"]["product"], FAKE_PRODUCT,
        "a's session goes on"
    );
    b.release(&id_of(&on_a)).await;
    client.closed().await;
    for s in [&on_b, &placed] {
        b.release(&id_of(s)).await;
    }
    cluster.stop().await;
}

/// When the node that runs a session leaves the cluster (its lease is over: killed, or cut
/// off), a client connected through another node is closed with 1011 and a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_through_another_node_is_closed_1011_when_the_owner_leaves() {
    let cluster = FakeCluster::start(2, |_| {}).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let on_a = id_of(&a.create(json!({})).await);
    let on_b = id_of(&b.create(json!({})).await);
    let mut lost = cdp_works(&b.ws_url(&on_a)).await;
    let mut kept = cdp_works(&a.ws_url(&on_b)).await;
    let left = Instant::now();
    cluster.shared.lose("a");
    let (code, reason) = lost.closed().await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("left the cluster"), "{reason}");
    assert!(
        left.elapsed() < Duration::from_secs(1),
        "{:?}",
        left.elapsed()
    );
    let (_, version) = kept.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(
        version["result"]["product"], FAKE_PRODUCT,
        "a's forwarding of b's session is not cut: b is live"
    );
    kept.close().await;
    cluster.stop().await;
}

/// Internal headers need the cluster's secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_headers_without_the_secret_are_refused() {
    let cluster = FakeCluster::start(1, |_| {}).await;
    let a = cluster.node("a");
    let answer = a
        .http
        .get(a.url("/healthz"))
        .header("x-ingot-cluster-secret", "guess")
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 403);
    let (status, health) = a.get("/healthz").await;
    assert_eq!((status, &health["node"]), (200, &json!("a")), "{health}");
    cluster.stop().await;
}

/// An advertise URL that leads to another node stops the start, with a message that names
/// the node that answers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertise_url_that_leads_to_another_node_stops_the_start() {
    let cluster = FakeCluster::start(1, |_| {}).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::with_data_dir(tmp.path());
    settings.pool_size = 0;
    settings.node_id = Some("lost".into());
    settings.advertise_url = Some(cluster.node("a").url(""));
    let host = FakeBrowserHost::new();
    let built = Gateway::build_in_cluster(settings, host, cluster.shared.join("lost"));
    let gateway = built.await.expect("the node builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let served = timeout(STEP, gateway.serve(listener, std::future::pending()))
        .await
        .expect("the node stops by itself");
    let refused = served.expect_err("the start is refused").to_string();
    assert!(refused.contains("node \"a\" answers there"), "{refused}");
    cluster.stop().await;
}
