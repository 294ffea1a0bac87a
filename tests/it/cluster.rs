//! Cluster mode end to end: three `ingot` nodes on one PostgreSQL (started by the test),
//! real Chromium. What only they show: real CDP (a 3000×3000 screenshot, the viewer, files)
//! through a forwarding node, the quota under the tenant's advisory lock, a bad advertise
//! URL stopping the process, and a killed or stopped owner with its lease on PostgreSQL.
//! Placement, relaying, release-all, tenants apart, quotas, ids and draining are checked
//! in-process on the fake browser, in `inproc::cluster`.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::common::postgres::Postgres;
use crate::common::*;

const ALICE: &str = "alice-key-0123456789abcdef";

fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
}

/// A cluster of nodes named `a`, `b`, `c`… on database `db`, each with `extra` flags.
struct Cluster {
    pg: Postgres,
    db: &'static str,
    nodes: Vec<Gateway>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(db: &'static str, n: usize, extra: &[&str]) -> Cluster {
        let pg = Postgres::start();
        pg.create_database(db);
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("data dir");
            let name = ((b'a' + i as u8) as char).to_string();
            let url = pg.url(db);
            let mut args = vec!["--database-url", &url, "--node-id", &name];
            args.extend_from_slice(extra);
            nodes.push(Gateway::start_in(dir.path(), &args).await);
            dirs.push(dir);
        }
        let cluster = Cluster {
            pg,
            db,
            nodes,
            _dirs: dirs,
        };
        cluster.wait_until_all_see(n).await;
        cluster
    }

    /// Waits until every node sees `n` live nodes (they exchange capacity every second).
    async fn wait_until_all_see(&self, n: usize) {
        for node in &self.nodes {
            let deadline = std::time::Instant::now() + secs(10);
            while node.scrape().await.samples.iter().all(|s| {
                s.metric != "ingot_cluster_nodes"
                    || !matches!(s.value, prometheus_parse::Value::Gauge(v) if v as usize == n)
            }) {
                assert!(std::time::Instant::now() < deadline, "nodes never met");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The node that runs session `id`, from the shared database.
    fn owner(&self, id: &str) -> String {
        self.pg.sql(
            self.db,
            &format!("SELECT node FROM ingot_sessions WHERE session_id = '{id}'"),
        )
    }

    /// The reason recorded for session `id` in the shared database.
    fn owner_reason(&self, id: &str) -> String {
        self.pg.sql(
            self.db,
            &format!("SELECT coalesce(reason, '') FROM ingot_sessions WHERE session_id = '{id}'"),
        )
    }

    fn node(&self, name: &str) -> &Gateway {
        &self.nodes[(name.as_bytes()[0] - b'a') as usize]
    }
}

/// The fields of a session that must read the same whichever node answers.
fn stable_fields(s: &Value) -> Value {
    let mut s = s.clone();
    for volatile in ["duration", "websocketUrl", "debugUrl", "sessionViewerUrl"] {
        s.as_object_mut().expect("object").remove(volatile);
    }
    s
}

/// Width and height of a PNG, from its header.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[1..4], b"PNG", "a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

/// A create on a full node is placed on another; its WebSocket URL points at the node the
/// client asked; CDP (including a 3000×3000 screenshot), discovery, retrieve, list and
/// release work through every node; the figures agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_session() {
    let _exclusive = exclusive().await;
    let cluster = Cluster::start("any_node", 3, &["--max-sessions", "1"]).await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    let here = a.create(json!({})).await;
    assert_eq!(cluster.owner(&id_of(&here)), "a", "a had room: {here}");
    let placed = a.create(json!({})).await;
    let id = id_of(&placed);
    let owner = cluster.owner(&id);
    assert_ne!(owner, "a", "a was full, so the session went elsewhere");
    let ws = placed["websocketUrl"].as_str().expect("websocketUrl");
    assert!(
        ws.starts_with(&format!("ws://127.0.0.1:{}/", a.port)),
        "links point at the node the client asked: {ws}"
    );
    let non_owner = if owner == "b" { c } else { b };

    // CDP through the node that took the create, and through the third node.
    let mut through_a = Cdp::connect(ws).await;
    let page = through_a.attach_first_page().await;
    assert_eq!(through_a.eval(&page, "6 * 7").await, json!(42));
    let third = non_owner.url(&format!("/devtools/browser/{id}"));
    let mut through_third = Cdp::connect(&third.replace("http://", "ws://")).await;
    let page3 = through_third.attach_first_page().await;
    screenshot_3000(&mut through_third, &page3).await;
    through_third.close().await;

    // Discovery answers with a WebSocket URL on the node asked.
    let (status, version) = non_owner
        .get(&format!("/json/version?sessionId={id}"))
        .await;
    assert_eq!(status, 200, "{version}");
    let endpoint = version["webSocketDebuggerUrl"].as_str().expect("url");
    assert!(
        endpoint.contains(&format!(":{}/", non_owner.port)),
        "{endpoint}"
    );

    // The same session, whichever node answers.
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

    // More time, asked of a node that does not run it; the record shows it on every node.
    let (status, extended) = non_owner
        .post(
            &format!("/v1/sessions/{id}/timeout"),
            json!({"timeout": 600_000}),
        )
        .await;
    assert_eq!(status, 200, "{extended}");
    assert_eq!(extended["timeout"], 600_000, "{extended}");
    let (_, listed) = a.get("/v1/sessions?status=live").await;
    let mine = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["id"] == json!(id))
        .cloned()
        .expect("listed");
    assert_eq!(mine["timeout"], 600_000, "from the record: {mine}");

    // The live viewer through a node that does not run the session.
    viewer_through(non_owner, &placed).await;

    // Files, uploaded through a node that does not run the session, are on its owner.
    let uploaded = upload_through(non_owner, &id, "notes/n.txt", b"through another node").await;
    assert!(
        uploaded.starts_with('/') && uploaded.ends_with("/notes/n.txt"),
        "{uploaded}"
    );
    let owner_node = cluster.node(&owner);
    assert!(
        uploaded.starts_with(&owner_node.data_dir.display().to_string()),
        "stored where the browser runs: {uploaded}"
    );
    assert_files(a, &id, "notes/n.txt", "through another node").await;

    // Released through a node that does not own it: the owner ends it.
    let (status, released) = non_owner
        .post(&format!("/v1/sessions/{id}/release"), json!({}))
        .await;
    assert_eq!(status, 200, "{released}");
    let ended = through_a.wait_end(secs(5)).await;
    assert!(matches!(ended, Ended::Closed(_)), "{ended:?}");
    assert_eq!(a.session(&id).await["status"], "released");
    assert_upgrade_refused(ws, 410).await;
    // The ended session's files are still served, from its owner, through any node.
    assert_files(non_owner, &id, "notes/n.txt", "through another node").await;
    a.release(&id_of(&here)).await;

    let scrape = a.scrape().await;
    let forwarded = |kind: &str| {
        metric(
            &scrape,
            "ingot_cluster_forwarded_total",
            &[("kind", kind), ("outcome", "ok")],
        )
    };
    assert!(forwarded("create") >= 1.0 && forwarded("upgrade") >= 1.0);
    let lookups = scrape
        .samples
        .iter()
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets)
                if s.metric == "ingot_cluster_directory_query_seconds" =>
            {
                buckets.last().map(|b| b.count)
            }
            _ => None,
        })
        .expect("the directory latency histogram");
    assert!(lookups >= 1.0, "directory lookups are timed: {lookups}");
    let (_, usage) = c.get("/v1/usage").await;
    assert_eq!(usage["total"]["sessions"], 2, "{usage}");
    let billed = cluster
        .pg
        .sql(cluster.db, "SELECT sum(billed_minutes) FROM ingot_sessions");
    assert_eq!(
        usage["total"]["billedMinutes"].to_string(),
        billed,
        "{usage}"
    );
}

/// The viewer of `session` works through `node`: its page (the token is the same on every
/// node), its facts, and its WebSocket, which sends the session's tabs and frames.
async fn viewer_through(node: &Gateway, session: &Value) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let id = id_of(session);
    let token = session["debugUrl"]
        .as_str()
        .and_then(|u| u.split_once("token="))
        .map(|(_, t)| t.to_owned())
        .expect("a viewer token");
    let page = node
        .http
        .get(node.url(&format!("/v1/sessions/{id}/viewer?token={token}")))
        .send()
        .await
        .expect("viewer page");
    assert_eq!(page.status(), 200);
    let (status, facts) = node
        .get(&format!("/v1/sessions/{id}/viewer/facts?token={token}"))
        .await;
    assert_eq!((status, &facts["status"]), (200, &json!("live")), "{facts}");
    let url = format!(
        "ws://127.0.0.1:{}/v1/sessions/{id}/viewer/ws?token={token}",
        node.port
    );
    let mut request = url.into_client_request().expect("request");
    let origin = format!("http://127.0.0.1:{}", node.port);
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("origin"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the viewer's socket through another node");
    let mut frames = 0;
    for _ in 0..50 {
        match tokio::time::timeout(secs(10), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(_)))) => {
                frames += 1;
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the viewer's socket ended: {other:?}"),
        }
    }
    assert_eq!(frames, 1, "a frame arrives through the forwarding node");
}

/// Uploads `bytes` as `name` to session `id` through `node`; returns the stored path.
async fn upload_through(node: &Gateway, id: &str, name: &str, bytes: &'static [u8]) -> String {
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("f"),
        )
        .text("path", name.to_owned());
    let r = node
        .http
        .post(node.url(&format!("/v1/sessions/{id}/files")))
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let file: Value = r.json().await.expect("File JSON");
    file["path"].as_str().expect("path").to_owned()
}

/// Session `id`, asked through `node`, lists exactly one file, `name`, which downloads as
/// `content`, alone and in the archive.
async fn assert_files(node: &Gateway, id: &str, name: &str, content: &str) {
    let (status, list) = node.get(&format!("/v1/sessions/{id}/files")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    let file = node
        .http
        .get(node.url(&format!("/v1/sessions/{id}/files/{name}")))
        .send()
        .await
        .expect("download");
    assert_eq!(file.text().await.expect("body"), content);
    let zip = node
        .http
        .get(node.url(&format!("/v1/sessions/{id}/files.zip")))
        .send()
        .await
        .expect("archive")
        .bytes()
        .await
        .expect("body");
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip archive");
    assert_eq!(archive.len(), 1);
}

/// A 3000×3000 PNG screenshot passes through a forwarding node whole.
async fn screenshot_3000(cdp: &mut Cdp, page: &str) {
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 3000, "height": 3000, "deviceScaleFactor": 1, "mobile": false}),
        Some(page),
    )
    .await;
    cdp.eval(
        page,
        "document.body.style.background = 'linear-gradient(45deg, red, blue)'; 1",
    )
    .await;
    let shot = cdp
        .call(
            "Page.captureScreenshot",
            json!({"format": "png"}),
            Some(page),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("data"))
        .expect("base64");
    assert_eq!(png_size(&png), (3000, 3000));
}

/// A tenant's quota counts its live sessions on every node: creates fired at once on three
/// nodes never take it one session over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_quota_holds_across_nodes_under_concurrent_creates() {
    let _shared = shared().await;
    let keys = format!("alice:{ALICE}");
    let cluster = Cluster::start(
        "quota",
        3,
        &[
            "--api-keys",
            &keys,
            "--max-sessions-per-tenant",
            "2",
            "--max-sessions",
            "2",
            "--queue-timeout-ms",
            "0",
        ],
    )
    .await;
    let creates = cluster.nodes.iter().flat_map(|node| {
        (0..2).map(move |_| async move {
            let r = node
                .http
                .post(node.url("/v1/sessions"))
                .header("steel-api-key", ALICE)
                .json(&json!({}))
                .send()
                .await
                .expect("answer");
            (r.status().as_u16(), r.json::<Value>().await.expect("JSON"))
        })
    });
    let answers = futures_util::future::join_all(creates).await;
    let created = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(created, 2, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "tenant_quota", "{body}");
    }
    let live = cluster.pg.sql(
        cluster.db,
        "SELECT count(*) FROM ingot_sessions WHERE status = 'live'",
    );
    assert_eq!(live, "2");
    let a = cluster.node("a");
    let released = a
        .http
        .post(a.url("/v1/sessions/release"))
        .header("steel-api-key", ALICE)
        .send()
        .await
        .expect("release-all");
    assert_eq!(released.status(), 200);
}

/// An advertise URL that does not lead to the node stops it at start, with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertise_url_that_misses_the_node_stops_the_start() {
    let _shared = shared().await;
    let pg = Postgres::start();
    pg.create_database("advertise");
    let dir = tempfile::tempdir().expect("dir");
    let other = Gateway::start_in(
        dir.path(),
        &["--database-url", &pg.url("advertise"), "--node-id", "other"],
    )
    .await;
    for (url, says) in [
        (
            format!("http://127.0.0.1:{}", free_port()),
            "does not reach this node",
        ),
        (
            format!("http://127.0.0.1:{}", other.port),
            "node \"other\" answers there",
        ),
    ] {
        let db = pg.url("advertise");
        let stderr = refused_start(&[
            "--node-id",
            "lost",
            "--database-url",
            &db,
            "--advertise-url",
            &url,
        ])
        .await;
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    let answer = other
        .http
        .get(other.url("/healthz"))
        .header("x-ingot-cluster-secret", "guess")
        .send()
        .await
        .expect("answer");
    assert_eq!(
        answer.status(),
        403,
        "internal headers need the cluster's secret"
    );
}

/// When the node that runs a session dies, a client connected through another node is
/// closed at once with a close frame (1011 and a reason) and a release through another node gets 502 `node_unreachable`; when it
/// hangs, the client is closed once the node's lease runs out. A live session's id cannot
/// be taken on another node (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_through_other_nodes_learn_when_the_owner_dies_or_hangs() {
    let _exclusive = exclusive().await;
    let mut cluster = Cluster::start(
        "owner_lost",
        3,
        &["--node-lease-ms", "2000", "--ws-ping-interval-ms", "1000"],
    )
    .await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    let on_a = id_of(&a.create(json!({})).await);
    let on_c = id_of(&c.create(json!({})).await);
    let via_b = |id: &str| format!("ws://127.0.0.1:{}/?sessionId={id}", b.port);
    let mut client_a = Cdp::connect(&via_b(&on_a)).await;
    let mut client_c = Cdp::connect(&via_b(&on_c)).await;
    let (status, taken) = b.post("/v1/sessions", json!({"sessionId": on_a})).await;
    assert_eq!(status, 409, "a live id is taken on another node: {taken}");
    an_idle_client_through_another_node_gets_pings(&via_b(&on_c)).await;

    cluster.nodes[0].signal(libc::SIGKILL);
    let (status, refused) = b
        .post(&format!("/v1/sessions/{on_a}/release"), json!({}))
        .await;
    assert_eq!(status, 502, "{refused}");
    assert_eq!(refused["error"]["code"], "node_unreachable", "{refused}");
    // Closed at once, with a close frame that says why (not a bare reset): `wait_end`
    // fails the test if it stays open.
    let ended = client_a.wait_end(secs(3)).await;
    assert!(
        matches!(&ended, Ended::Closed(Some(f)) if u16::from(f.code) == 1011),
        "{ended:?}"
    );

    let c = &cluster.nodes[2];
    c.signal(libc::SIGSTOP);
    let stopped = std::time::Instant::now();
    let ended = client_c.wait_end(secs(8)).await;
    let took = stopped.elapsed();
    c.signal(libc::SIGCONT);
    assert!(
        matches!(&ended, Ended::Closed(Some(f)) if u16::from(f.code) == 1011),
        "{ended:?}"
    );
    eprintln!("the client through b was closed {took:?} after the owner stopped");
    assert!(
        took >= Duration::from_millis(1_500),
        "not before the lease ran out: {took:?}"
    );

    let b = &cluster.nodes[1];
    let failed = b.wait_ended(&on_a, secs(10)).await.0;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["releaseReason"], "browser_crashed", "{failed}");
    assert_eq!(
        cluster.owner_reason(&on_a),
        "node_lost",
        "recorded as lost with its node"
    );
    let _ = cluster.nodes[0].wait_exit(secs(5));
}

/// The owner's pings to an idle client reach it through the node that forwards its socket
/// (load balancers drop WebSockets idle for about a minute).
async fn an_idle_client_through_another_node_gets_pings(url: &str) {
    use futures_util::StreamExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let first = tokio::time::timeout(secs(5), ws.next())
        .await
        .expect("a frame within 5 s")
        .expect("open")
        .expect("a frame");
    assert!(
        matches!(first, tokio_tungstenite::tungstenite::Message::Ping(_)),
        "{first:?}"
    );
}
