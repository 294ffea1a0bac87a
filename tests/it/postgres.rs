//! The usage ledger and the sessions' history in PostgreSQL (`--database-url`): a real
//! PostgreSQL started by the test, real `ingot` nodes and real Chromium.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::postgres::Postgres;
use crate::common::*;

fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
}

fn node(pg: &Postgres, db: &str, name: &str) -> Vec<String> {
    vec![
        "--database-url".into(),
        pg.url(db),
        "--node-id".into(),
        name.into(),
    ]
}

async fn start(dir: &std::path::Path, args: &[String]) -> Gateway {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start_in(dir, &args).await
}

/// Nodes `a` and `b` on database `db`, with 2 s leases, each in its own data directory.
async fn two_nodes_with_short_leases(pg: &Postgres, db: &str) -> (Gateway, Gateway) {
    let args = |name: &str| {
        let mut args = node(pg, db, name);
        args.extend(["--node-lease-ms".to_owned(), "2000".to_owned()]);
        args
    };
    let (a, b) = (args("a"), args("b"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    (Gateway::start(&a).await, Gateway::start(&b).await)
}

fn ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Two nodes on one database: each lists the other's sessions, `/v1/usage` and the list
/// answer the same on either (the sum of every record), and a restarting node closes only
/// its own abandoned records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_ledger_and_close_only_their_own_sessions() {
    let _shared = shared().await;
    let pg = Postgres::start();
    pg.create_database("two_nodes");
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let mut a = start(dir_a.path(), &node(&pg, "two_nodes", "a")).await;
    let b = start(dir_b.path(), &node(&pg, "two_nodes", "b")).await;
    let on_a = a.create(json!({})).await;
    let on_b = b.create(json!({})).await;
    b.release(&id_of(&on_b)).await;
    let (_, list) = b.get("/v1/sessions").await;
    assert_eq!(ids(&list), [id_of(&on_b), id_of(&on_a)], "{list}");
    let (status, usage) = a.get("/v1/usage").await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["total"]["sessions"], 2, "{usage}");
    // Traffic on a's live session: every node still answers the same usage and list
    // (from the records, as of the last checkpoint), whichever node is asked.
    let mut client = Cdp::connect(on_a["websocketUrl"].as_str().expect("url")).await;
    for _ in 0..20 {
        client.call("Browser.getVersion", json!({}), None).await;
    }
    // b first: were a to bring its own live session's figures up to date when asked, its
    // answer would then differ from b's.
    let (_, usage_b) = b.get("/v1/usage").await;
    let (_, usage_a) = a.get("/v1/usage").await;
    assert_eq!(usage_a["total"], usage_b["total"], "usage differs by node");
    assert_eq!(usage_a["days"], usage_b["days"], "usage differs by node");
    let ((_, list_a), (_, list_b)) = tokio::join!(a.get("/v1/sessions"), b.get("/v1/sessions"));
    // Everything but the duration, which runs until the moment each node is asked, and the
    // links, which name the node asked.
    let stable = |list: &Value| -> Vec<Value> {
        list["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| {
                let mut s = s.clone();
                for own in ["duration", "debugUrl", "sessionViewerUrl", "websocketUrl"] {
                    s[own] = Value::Null;
                }
                s
            })
            .collect()
    };
    assert_eq!(stable(&list_a), stable(&list_b), "the list differs by node");
    drop(client);

    // Node a dies; node b restarts and leaves a's session alone.
    a.signal(9);
    a.wait_exit(secs(10));
    drop(b);
    let b = start(dir_b.path(), &node(&pg, "two_nodes", "b")).await;
    let record = pg.sql(
        "two_nodes",
        &format!(
            "SELECT status FROM ingot_sessions WHERE session_id = '{}'",
            id_of(&on_a)
        ),
    );
    assert_eq!(record, "live", "another node's session is not b's to close");
    // Node a comes back and closes its own, billed up to the last checkpoint.
    let a = start(dir_a.path(), &node(&pg, "two_nodes", "a")).await;
    let closed = b.session(&id_of(&on_a)).await;
    assert_eq!(closed["status"], "failed", "{closed}");
    assert_eq!(closed["releaseReason"], "browser_crashed", "{closed}");
    assert_eq!(closed["creditsUsed"], 1, "{closed}");
    let kept = a.session(&id_of(&on_b)).await;
    assert_eq!(kept["releaseReason"], "user_requested", "{kept}");
    let billed = pg.sql(
        "two_nodes",
        "SELECT sum(billed_minutes) FROM ingot_sessions",
    );
    let (_, usage) = b.get("/v1/usage").await;
    assert_eq!(
        usage["total"]["billedMinutes"].to_string(),
        billed,
        "{usage}"
    );
}

/// Nodes starting at the same moment on an empty database apply the schema once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let _shared = shared().await;
    let pg = Postgres::start();
    pg.create_database("together");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let args: Vec<Vec<String>> = (0..3)
        .map(|i| node(&pg, "together", &format!("n{i}")))
        .collect();
    let (n0, n1, n2) = tokio::join!(
        start(dirs[0].path(), &args[0]),
        start(dirs[1].path(), &args[1]),
        start(dirs[2].path(), &args[2]),
    );
    let versions = "SELECT string_agg(version::text, ',' ORDER BY version) FROM ingot_migrations";
    assert_eq!(
        pg.sql("together", versions),
        "1,2,3",
        "each migration applied once"
    );
    let session = n1.create(json!({})).await;
    assert_eq!(n2.session(&id_of(&session)).await["status"], "live");
    n1.release(&id_of(&session)).await;
    drop((n0, n1, n2));
}

/// A database that does not answer is a clear error at start, and the node exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_stops_the_start_with_a_clear_message() {
    let url = format!("postgres://ingot:secret@127.0.0.1:{}/nothing", free_port());
    let stderr = refused_start(&["--database-url", &url]).await;
    assert!(stderr.contains("cannot use the database"), "{stderr}");
    assert!(stderr.contains("check --database-url"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "the password is never shown: {stderr}"
    );
}

/// A node that dies (SIGKILL) loses its lease; within the lease plus 5 s a surviving node
/// marks its live sessions failed (`browser_crashed`), billed up to the last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_sessions_are_failed_by_a_survivor_within_the_lease() {
    let _shared = shared().await;
    let pg = Postgres::start();
    pg.create_database("dead_node");
    let (mut a, b) = two_nodes_with_short_leases(&pg, "dead_node").await;
    let session = a.create(json!({})).await;
    let survivor = b.create(json!({})).await;
    a.signal(9);
    a.wait_exit(secs(10));
    let killed_at = std::time::Instant::now();
    let failed = loop {
        let seen = b.session(&id_of(&session)).await;
        if seen["status"] != "live" {
            break seen;
        }
        assert!(
            killed_at.elapsed() < Duration::from_millis(2_000 + 5_000),
            "still live {:?} after the SIGKILL: {seen}\n{}",
            killed_at.elapsed(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["releaseReason"], "browser_crashed", "{failed}");
    assert_eq!(failed["creditsUsed"], 1, "{failed}");
    let own = b.session(&id_of(&survivor)).await;
    assert_eq!(
        own["status"], "live",
        "the survivor's own session goes on: {own}"
    );
    b.release(&id_of(&survivor)).await;
}

/// A second node that takes an id a live node holds is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_held_by_a_live_node_is_refused() {
    let _shared = shared().await;
    let pg = Postgres::start();
    pg.create_database("same_id");
    let dir = tempfile::tempdir().expect("dir");
    let first = start(dir.path(), &node(&pg, "same_id", "twin")).await;
    let args = node(&pg, "same_id", "twin");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused_start(&args).await;
    assert!(stderr.contains("is held by a live node"), "{stderr}");
    assert_eq!(
        first.get("/healthz").await.0,
        200,
        "the first node is untouched"
    );
}

/// A node stopped past its lease (SIGSTOP) has its sessions failed by the cluster
/// (`node_lost`); when it wakes (SIGCONT) it ends them too, within a second: its client is
/// closed and its browser reaped, and the record keeps the one minute it was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_wakes_after_its_lease_ends_what_the_cluster_failed() {
    let _exclusive = exclusive().await;
    let pg = Postgres::start();
    pg.create_database("hung_node");
    let (a, b) = two_nodes_with_short_leases(&pg, "hung_node").await;
    let session = a.create(json!({})).await;
    let mut client = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    a.signal(libc::SIGSTOP);
    let stopped_at = std::time::Instant::now();
    loop {
        let seen = b.session(&id_of(&session)).await;
        if seen["status"] == "failed" {
            break;
        }
        if stopped_at.elapsed() > Duration::from_secs(10) {
            a.signal(libc::SIGCONT);
            panic!("not failed 10 s after the node stopped: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.signal(libc::SIGCONT);
    let woke = std::time::Instant::now();
    let ended = client.wait_end(secs(3)).await;
    let took = woke.elapsed();
    eprintln!("the woken node closed its client {took:?} after SIGCONT");
    assert!(matches!(ended, Ended::Closed(..)), "{ended:?}");
    assert!(
        took < Duration::from_secs(1),
        "closed {took:?} after waking"
    );
    let deadline = std::time::Instant::now() + secs(3);
    while chromium_processes_in(&a.data_dir) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the browser is still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = pg.sql(
        "hung_node",
        &format!(
            "SELECT status || ' ' || reason || ' ' || billed_minutes FROM ingot_sessions
             WHERE session_id = '{}'",
            id_of(&session)
        ),
    );
    assert_eq!(record, "failed node_lost 1");
}

/// While the database is down, creates and releases get 503 (`database_unavailable` once a
/// renewal failed, `node_fenced` once the node fenced itself) with `Retry-After`, and no
/// node declares another dead before every node had the time to renew its lease: the
/// session lives on, and its client gets answers again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_refuses_creates_and_fails_no_session() {
    let _shared = shared().await;
    let pg = Postgres::start();
    pg.create_database("outage");
    let (a, b) = two_nodes_with_short_leases(&pg, "outage").await;
    let session = a.create(json!({})).await;
    let mut client = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    client.call("Browser.getVersion", json!({}), None).await;
    pg.stop();
    // Once a renewal failed (within a slot of a third of a second), nothing that would need
    // the database is taken.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for (node, method, path) in [
        (&b, "POST", "/v1/sessions".to_owned()),
        (
            &a,
            "POST",
            format!("/v1/sessions/{}/release", id_of(&session)),
        ),
    ] {
        let refused = node
            .http
            .request(method.parse().expect("method"), node.url(&path))
            .json(&json!({}))
            .send()
            .await
            .expect("an answer");
        assert_eq!(refused.status(), 503, "{method} {path}");
        assert!(refused.headers().contains_key("retry-after"));
        let body: Value = refused.json().await.expect("JSON");
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            code == "database_unavailable" || code == "node_fenced",
            "{method} {path}: {body}"
        );
    }
    // Down for longer than a lease: every lease in the database has run out, and the nodes
    // have fenced themselves (a load balancer stops sending them anything).
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (status, ready) = a.get("/readyz").await;
    assert_eq!(
        (status, &ready["reason"]),
        (503, &json!("node_fenced")),
        "{ready}"
    );
    let (status, health) = a.get("/healthz").await;
    assert_eq!((status, &health["fenced"]), (200, &json!(true)), "{health}");
    pg.start_again();
    let back = std::time::Instant::now();
    client.call("Browser.getVersion", json!({}), None).await;
    eprintln!(
        "the client got an answer {:?} after the database came back",
        back.elapsed()
    );
    assert!(back.elapsed() < Duration::from_secs(5));
    // Two leases after the database is back, the session is still live everywhere.
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let record = pg.sql(
        "outage",
        &format!(
            "SELECT status FROM ingot_sessions WHERE session_id = '{}'",
            id_of(&session)
        ),
    );
    assert_eq!(
        record,
        "live",
        "no session is failed because of the outage\n{}",
        b.log_text()
    );
    assert_eq!(a.session(&id_of(&session)).await["status"], "live");
    client.call("Browser.getVersion", json!({}), None).await;
    let (status, health) = a.get("/healthz").await;
    assert_eq!(
        (status, &health["fenced"]),
        (200, &json!(false)),
        "{health}"
    );
    let again = b.create(json!({})).await;
    b.release(&id_of(&again)).await;
    a.release(&id_of(&session)).await;
}
