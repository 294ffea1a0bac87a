//! The fence in-process: a gateway that keeps a lease in an in-memory cluster, cut off from
//! it and healed. While it cannot renew it refuses new work; once its renewal is overdue it
//! freezes its browsers and holds every client message; when it renews again it thaws the
//! sessions the cluster still holds (their clients get the held answers) and ends the ones
//! the cluster failed (their clients get close 1011).

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// The lease: renewed every 200 ms; fenced 900 ms after the last renewal started.
const LEASE: Duration = Duration::from_millis(1_200);

/// Waits until `/readyz` gives `reason` (or is ready, for `None`).
async fn wait_ready_reason(gw: &FakeGateway, reason: Option<&str>) {
    let deadline = Instant::now() + STEP;
    loop {
        let (status, ready) = gw.get("/readyz").await;
        let now = ready["reason"].as_str();
        if now == reason && (reason.is_some() || status == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never said {reason:?}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_refuses_new_work_freezes_and_thaws_after_the_heal() {
    let (gw, cluster) = FakeGateway::start_leased(LEASE, |_| {}).await;
    let session = gw.create(json!({})).await;
    let mut client = CdpClient::connect_to(&session).await;
    client.call("Browser.getVersion", json!({}), None).await;

    cluster.cut(true);
    let cut = Instant::now();
    wait_ready_reason(&gw, Some("database_unavailable")).await;
    let (status, refused) = gw.post("/v1/sessions", json!({})).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (503, &json!("database_unavailable")),
        "{refused}"
    );
    wait_ready_reason(&gw, Some("node_fenced")).await;
    let fenced_after = cut.elapsed();
    assert!(
        fenced_after < LEASE,
        "fenced {fenced_after:?} after the cut"
    );
    assert!(
        gw.host.last().expect("browser").is_hung(),
        "the browser is frozen"
    );
    for (path, body) in [
        ("/v1/sessions", json!({})),
        ("/v1/sessions/release", json!({})),
    ] {
        let (status, refused) = gw.post(path, body).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (503, &json!("node_fenced")),
            "{path}: {refused}"
        );
    }
    assert_upgrade_refused(&gw.ws_url(session["id"].as_str().expect("id")), 503).await;
    let id = client
        .send_command("Browser.getVersion", json!({}), None)
        .await;
    assert_eq!(
        client.next_within(Duration::from_millis(700)).await,
        None,
        "nothing is answered while fenced"
    );

    cluster.cut(false);
    let healed = Instant::now();
    let held = client
        .next_within(STEP)
        .await
        .expect("the held command is answered");
    assert_eq!(held["id"], id, "{held}");
    eprintln!("answered {:?} after the heal", healed.elapsed());
    assert!(healed.elapsed() < Duration::from_secs(1));
    assert!(!gw.host.last().expect("browser").is_hung(), "thawed");
    wait_ready_reason(&gw, None).await;
    assert_eq!(
        gw.session(session["id"].as_str().expect("id")).await["status"],
        "live"
    );
    client.call("Browser.getVersion", json!({}), None).await;
    gw.release(session["id"].as_str().expect("id")).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_cluster_failed_meanwhile_ends_when_the_node_is_heard_again() {
    let (gw, cluster) = FakeGateway::start_leased(LEASE, |_| {}).await;
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let mut client = CdpClient::connect_to(&session).await;
    client.call("Browser.getVersion", json!({}), None).await;

    cluster.cut(true);
    wait_ready_reason(&gw, Some("node_fenced")).await;
    client
        .send_command("Browser.getVersion", json!({}), None)
        .await;
    cluster.fail_live_sessions();
    cluster.cut(false);
    let (code, reason) = client.closed().await;
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("lost contact with the cluster"), "{reason}");
    wait_ready_reason(&gw, None).await;
    let ended = gw.wait_ended(&id).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(
        ended["releaseReason"], "browser_crashed",
        "Steel's word for node_lost: {ended}"
    );
    gw.wait_host("the frozen browser reaped", |h| h.alive() == 0)
        .await;
    let other = gw.create(json!({})).await;
    gw.release(other["id"].as_str().expect("id")).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_session_is_neither_unresponsive_nor_inactive() {
    let (gw, cluster) = FakeGateway::start_leased(LEASE, |s| {
        s.browser_probe_interval_ms = 200;
        s.browser_probe_timeout_ms = 300;
    })
    .await;
    let session = gw.create(json!({"inactivityTimeout": 1000})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    cluster.cut(true);
    wait_ready_reason(&gw, Some("node_fenced")).await;
    // Longer than the inactivity timeout, and than the liveness probe waits for an answer.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    cluster.cut(false);
    wait_ready_reason(&gw, None).await;
    assert_eq!(
        gw.session(&id).await["status"],
        "live",
        "not ended while frozen"
    );
    let mut client = CdpClient::connect_to(&session).await;
    client.call("Browser.getVersion", json!({}), None).await;
    gw.release(&id).await;
    gw.stop().await;
}
