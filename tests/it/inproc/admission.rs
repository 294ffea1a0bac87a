//! Admission in-process: the session limit, the queue (its timeout and its limit), the
//! per-tenant quota, and creates refused once shutdown began.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::*;

/// Long enough for a spawned create to reach the admission queue in-process.
const SETTLE: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_without_a_queue_refuses_with_429_and_retry_after() {
    let gw = FakeGateway::start_with(|s| {
        s.max_sessions = Some(1);
        s.queue_timeout_ms = 0;
    })
    .await;
    let a = id_of(&gw.create(json!({})).await);
    let started = Instant::now();
    let r = gw
        .request(Method::POST, "/v1/sessions", None, Some(json!({})))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_error((r.status, &r.body), 429, "at_capacity");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(gw.host.launches(), 2, "the refused create launched nothing");
    let r = gw.request(Method::GET, "/readyz", None, None).await;
    assert_eq!((r.status, &r.body["reason"]), (503, &json!("at_capacity")));

    gw.release(&a).await;
    let b = id_of(&gw.create(json!({})).await);
    assert_ne!(a, b);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_create_starts_once_the_slot_is_released() {
    let gw = FakeGateway::start_with(|s| {
        s.max_sessions = Some(1);
        s.queue_timeout_ms = 10_000;
    })
    .await;
    let a = id_of(&gw.create(json!({})).await);
    let queued = tokio::spawn(gw.create_later(None, json!({})));
    tokio::time::sleep(SETTLE).await;
    assert!(
        !queued.is_finished(),
        "the second create waits for the slot"
    );
    assert_eq!(gw.host.launches(), 2, "and launches nothing meanwhile");

    gw.release(&a).await;
    let b = timeout(STEP, queued)
        .await
        .expect("the queued create ends in time")
        .expect("task");
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.body["status"], "live");
    assert!(gw.browser_of(&id_of(&b.body)).is_alive());
    assert_eq!(gw.host.alive(), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_beyond_the_queue_limit_is_refused_at_once() {
    let gw = FakeGateway::start_with(|s| {
        s.max_sessions = Some(1);
        s.queue_timeout_ms = 10_000;
        s.queue_limit = 1;
    })
    .await;
    let a = id_of(&gw.create(json!({})).await);
    let queued = tokio::spawn(gw.create_later(None, json!({})));
    tokio::time::sleep(SETTLE).await;
    assert!(!queued.is_finished(), "the first waiter is queued");

    let started = Instant::now();
    let r = gw
        .request(Method::POST, "/v1/sessions", None, Some(json!({})))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after the 10 s queue timeout"
    );
    let message = assert_error((r.status, &r.body), 429, "at_capacity");
    assert!(message.contains("already waiting"), "{message}");
    assert_eq!(r.retry_after.as_deref(), Some("1"));

    gw.release(&a).await;
    let b = timeout(STEP, queued).await.expect("in time").expect("task");
    assert_eq!(
        b.status, 200,
        "the queued create still gets the slot: {}",
        b.body
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_gets_429_tenant_quota() {
    let gw = FakeGateway::start_with(|s| {
        s.api_keys = Some(TENANTS.into());
        s.max_sessions_per_tenant = Some(1);
    })
    .await;
    let a = id_of(&gw.create_as(Some(ALICE), json!({})).await);
    let r = gw
        .request(Method::POST, "/v1/sessions", Some(ALICE), Some(json!({})))
        .await;
    let message = assert_error((r.status, &r.body), 429, "tenant_quota");
    assert!(message.contains("alice"), "{message}");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(gw.host.launches(), 2, "the refused create launched nothing");

    // Another tenant has its own count, and a release gives alice's place back.
    gw.create_as(Some(BOB), json!({})).await;
    let release = format!("/v1/sessions/{a}/release");
    let r = gw.request(Method::POST, &release, Some(ALICE), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    gw.create_as(Some(ALICE), json!({})).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_during_the_shutdown_drain_is_refused() {
    let gw = FakeGateway::start_with(|s| s.shutdown_drain_ms = 30_000).await;
    let a = id_of(&gw.create(json!({})).await);
    gw.begin_shutdown();
    // The drain begins: /readyz says so, new sessions are refused, the live one goes on.
    let ready = gw.wait_readyz(503).await;
    assert_eq!(ready["reason"], "shutting_down", "{ready}");
    let r = gw
        .request(Method::POST, "/v1/sessions", None, Some(json!({})))
        .await;
    assert_error((r.status, &r.body), 503, "shutting_down");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(gw.host.launches(), 2, "the refused create launched nothing");
    assert_eq!(gw.session(&a).await["status"], "live");

    // The drain ends when the last session does.
    gw.release(&a).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_create_is_refused_when_shutdown_begins() {
    let gw = FakeGateway::start_with(|s| {
        s.max_sessions = Some(1);
        s.queue_timeout_ms = 10_000;
    })
    .await;
    gw.create(json!({})).await;
    let queued = tokio::spawn(gw.create_later(None, json!({})));
    tokio::time::sleep(SETTLE).await;
    assert!(!queued.is_finished(), "the second create is queued");
    gw.begin_shutdown();
    let r = timeout(STEP, queued).await.expect("in time").expect("task");
    assert_error((r.status, &r.body), 503, "shutting_down");
    assert_eq!(gw.host.launches(), 2, "the refused create launched nothing");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_browser_is_starting_when_shutdown_begins_is_refused() {
    let gw = FakeGateway::start().await;
    gw.host.set_launch_delay(Duration::from_millis(300));
    let creating = tokio::spawn(gw.create_later(None, json!({})));
    gw.wait_host("the launch begins", |h| h.launches() == 2)
        .await;
    gw.begin_shutdown();
    let r = timeout(STEP, creating)
        .await
        .expect("in time")
        .expect("task");
    assert_error((r.status, &r.body), 503, "shutting_down");
    // `stop` checks that the browser started for it was reaped.
    gw.stop().await;
}

/// A create answers within `--create-timeout-ms` (503 `create_timeout`), and the session
/// that its slow browser starts afterwards is released at once: nothing is left live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_past_its_timeout_is_refused_and_leaves_nothing_live() {
    let gw = FakeGateway::start_with(|s| {
        s.queue_timeout_ms = 0;
        s.create_timeout_ms = 1_000;
    })
    .await;
    gw.host.set_launch_delay(Duration::from_millis(1_500));
    let started = Instant::now();
    let r = gw
        .request(Method::POST, "/v1/sessions", None, Some(json!({})))
        .await;
    let took = started.elapsed();
    assert_error((r.status, &r.body), 503, "create_timeout");
    assert!(
        took < Duration::from_millis(1_500),
        "answered at its timeout: {took:?}"
    );
    let deadline = Instant::now() + STEP;
    while gw.host.alive() > 0 {
        assert!(
            Instant::now() < deadline,
            "the late browser is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, list) = gw.get("/v1/sessions?status=live").await;
    assert_eq!(list["sessions"], json!([]), "{list}");
    gw.host.set_launch_delay(Duration::ZERO);
    gw.release(&id_of(&gw.create(json!({})).await)).await;
    gw.stop().await;
}

/// A client that hangs up before its create is answered leaves no live session behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_client_hangs_up_leaves_nothing_live() {
    use tokio::io::AsyncWriteExt;
    let gw = FakeGateway::start().await;
    gw.host.set_launch_delay(Duration::from_millis(500));
    let launched_before = gw.host.launches();
    let mut socket = TcpStream::connect(gw.addr).await.expect("connect");
    socket
        .write_all(
            b"POST /v1/sessions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        gw.host.launches(),
        launched_before + 1,
        "the create did start a browser"
    );
    let deadline = Instant::now() + STEP;
    while gw.host.alive() > 0 {
        assert!(
            Instant::now() < deadline,
            "the unheld session's browser still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, list) = gw.get("/v1/sessions").await;
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{list}");
    assert_eq!(sessions[0]["status"], "failed", "{list}");
    assert_eq!(sessions[0]["releaseReason"], "creation_timeout", "{list}");
    gw.stop().await;
}
