//! The per-session supervisor in-process: whatever ends a session (hang, shutdown,
//! inactivity; crash and timeout are `inproc::scenarios`) gives it the right status and
//! reason, closes its clients with the right code and reaps its browser; a session whose
//! browser fails or starts too late never shows at all.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::*;

/// Creates a session and connects a client that has made one round trip.
async fn session_with_client(gw: &FakeGateway, body: Value) -> (String, CdpClient) {
    let session = gw.create(body).await;
    let mut cdp = CdpClient::connect_to(&session).await;
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    (id_of(&session), cdp)
}

fn assert_ended(session: &Value, status: &str, reason: &str) {
    assert_eq!(
        (&session["status"], &session["releaseReason"]),
        (&json!(status), &json!(reason)),
        "{session}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_browser_fails_the_session_as_unresponsive() {
    let gw = FakeGateway::start_with(|s| {
        s.browser_probe_interval_ms = 100;
        s.browser_probe_timeout_ms = 200;
    })
    .await;
    let (id, mut cdp) = session_with_client(&gw, json!({})).await;
    let browser = gw.browser_of(&id);
    // A healthy browser answers the probe: the session outlives several probes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gw.session(&id).await["status"], "live");
    browser.hang();
    let (code, reason) = cdp.closed().await;
    assert_eq!(code, 1011, "close code when the browser hangs ({reason})");
    assert_ended(&gw.wait_ended(&id).await, "failed", "browser_crashed");
    gw.wait_host("the hung browser is killed", |_| browser.was_killed())
        .await;
    assert!(!browser.is_alive());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_slower_than_the_timeout_fails_the_create_and_never_shows_it() {
    let gw = FakeGateway::start().await;
    gw.host.set_launch_delay(Duration::from_millis(1300));
    let id = uuid::Uuid::new_v4().to_string();
    let creating = tokio::spawn(gw.create_later(None, json!({"sessionId": id, "timeout": 1000})));
    // While its browser starts, the session is neither retrievable nor listed.
    while !creating.is_finished() {
        let (status, _) = gw.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 404, "a starting session is not shown");
        let (_, list) = gw.get("/v1/sessions").await;
        assert_eq!(
            list["sessions"],
            json!([]),
            "a starting session is not listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = creating.await.expect("task");
    let message = assert_error((r.status, &r.body), 503, "browser_start_failed");
    assert!(message.contains("timeout"), "{message}");
    let (status, _) = gw.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 404, "the session never existed for clients");
    let (_, list) = gw.get("/v1/sessions").await;
    assert_eq!(list["sessions"], json!([]));
    gw.wait_host("the late browser is reaped", |h| h.unreaped() == 0)
        .await;
    assert_eq!(gw.host.browsers().len(), 2, "it did start, late");

    // Its id is free again.
    gw.host.set_launch_delay(Duration::ZERO);
    assert_eq!(id_of(&gw.create(json!({"sessionId": id})).await), id);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_launch_leaves_no_session_and_no_browser() {
    let gw = FakeGateway::start().await;
    gw.host.fail_launches(Some("fake Chromium cannot start"));
    let id = uuid::Uuid::new_v4().to_string();
    let r = gw
        .request(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"sessionId": id})),
        )
        .await;
    let message = assert_error((r.status, &r.body), 503, "browser_start_failed");
    assert!(message.contains("fake Chromium cannot start"), "{message}");
    assert_eq!(gw.get(&format!("/v1/sessions/{id}")).await.0, 404);
    let (_, list) = gw.get("/v1/sessions").await;
    assert_eq!(list["sessions"], json!([]));
    assert_eq!(gw.host.failed_launches(), 1);
    assert_eq!((gw.host.unreaped(), gw.host.alive()), (0, 0));

    // A hung launch whose browser dies fails the same way and leaves nothing either.
    gw.host.fail_launches(None);
    gw.host.hang_launches(true);
    let creating = tokio::spawn(gw.create_later(None, json!({"sessionId": id})));
    gw.wait_host("the hung launch starts", |h| h.browsers().len() == 2)
        .await;
    gw.host.last().expect("hung browser").crash();
    let r = timeout(STEP, creating)
        .await
        .expect("in time")
        .expect("task");
    assert_error((r.status, &r.body), 503, "browser_start_failed");
    assert_eq!(gw.get(&format!("/v1/sessions/{id}")).await.0, 404);
    gw.wait_host("the crashed launch is reaped", |h| h.unreaped() == 0)
        .await;

    gw.host.hang_launches(false);
    assert_eq!(
        id_of(&gw.create(json!({"sessionId": id})).await),
        id,
        "the id is free"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_live_sessions_and_closes_clients_with_1001() {
    let gw = FakeGateway::start().await;
    let (a, mut cdp_a) = session_with_client(&gw, json!({})).await;
    let (b, mut cdp_b) = session_with_client(&gw, json!({})).await;
    gw.begin_shutdown();
    for cdp in [&mut cdp_a, &mut cdp_b] {
        let (code, reason) = cdp.closed().await;
        assert_eq!(code, 1001, "close code on shutdown ({reason})");
    }
    let data_dir = gw.stop().await;
    for id in [&a, &b] {
        let record = crate::common::usage_record(data_dir.path(), id);
        assert_eq!(
            (record.status.as_str(), record.reason.as_deref()),
            ("released", Some("gateway_shutdown")),
            "{record:?}"
        );
    }
}

/// `inactivityTimeout`: every CDP message from a client starts it again; once no client has
/// sent one for that long, the session is released (`inactivity_timeout`), its clients are
/// closed with 1001, and the value is echoed in the Session JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_released_after_its_inactivity_timeout() {
    let gw = FakeGateway::start().await;
    let (id, mut cdp) =
        session_with_client(&gw, json!({"timeout": 60_000, "inactivityTimeout": 1_000})).await;
    assert_eq!(gw.session(&id).await["inactivityTimeout"], 1_000);
    // Busy for twice the inactivity timeout: the session goes on.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        cdp.call("Browser.getVersion", json!({}), None).await;
    }
    assert_eq!(gw.session(&id).await["status"], "live");
    let quiet = std::time::Instant::now();
    let (code, reason) = cdp.closed().await;
    let took = quiet.elapsed();
    assert_eq!(code, 1001, "close code after inactivity ({reason})");
    assert!(!reason.is_empty());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3_000),
        "released {took:?} after the last message"
    );
    let ended = gw.wait_ended(&id).await;
    assert_ended(&ended, "released", "inactivity_timeout");
    assert_eq!(ended["inactivityTimeout"], 1_000, "{ended}");
    gw.stop().await;
}

/// A session without `inactivityTimeout` never ends for lack of activity, and its JSON has
/// no such field; bad values are refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_timeouts_are_validated_and_off_by_default() {
    let gw = FakeGateway::start().await;
    for bad in [
        json!("soon"),
        json!(999),
        json!(86_400_001),
        json!(1.5),
        json!(-1),
    ] {
        let (status, body) = gw
            .post("/v1/sessions", json!({"inactivityTimeout": bad}))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.starts_with("inactivityTimeout"), "{message}");
    }
    assert_eq!(
        gw.host.launches(),
        1,
        "no browser was launched for them (only the probe)"
    );
    let s = gw.create(json!({})).await;
    assert!(s.get("inactivityTimeout").is_none(), "{s}");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(gw.session(&id_of(&s)).await["status"], "live");
    gw.stop().await;
}

/// `POST /v1/sessions/{id}/timeout` sets a live session's total life: the supervisor
/// follows the new deadline and the Session JSON (and its record) shows it; an ended
/// session answers 409, a total already lived 400, bad bodies 400 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_can_be_given_more_time() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({"timeout": 1_500})).await);
    let path = format!("/v1/sessions/{id}/timeout");
    let (status, extended) = gw.post(&path, json!({"timeout": 3_500})).await;
    assert_eq!(status, 200, "{extended}");
    assert_eq!(
        (&extended["id"], &extended["timeout"]),
        (&json!(id), &json!(3_500))
    );
    for (body, field) in [
        (json!({}), "timeout"),
        (json!({"timeout": "later"}), "timeout"),
        (json!({"timeout": 100}), "timeout"),
        (json!({"timeout": 86_400_001}), "timeout"),
        (json!({"timeout": 5_000, "extra": 1}), "extra"),
        (json!([1]), "body"),
    ] {
        let (status, refused) = gw.post(&path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {refused}");
        let message = refused["error"]["message"].as_str().expect("message");
        assert!(message.starts_with(field), "{body}: {message}");
    }
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        gw.session(&id).await["status"],
        "live",
        "past its first timeout"
    );
    let (status, refused) = gw.post(&path, json!({"timeout": 1_000})).await;
    assert_eq!(status, 400, "a total it has already lived: {refused}");
    let ended = gw.wait_ended(&id).await;
    assert_ended(&ended, "released", "timeout");
    let lived = ended["duration"].as_u64().expect("duration");
    assert!((3_500..5_000).contains(&lived), "ended after {lived} ms");
    assert_eq!(
        ended["timeout"], 3_500,
        "the JSON keeps the new timeout: {ended}"
    );
    let (status, refused) = gw.post(&path, json!({"timeout": 9_000})).await;
    assert_eq!(status, 409, "{refused}");
    let unknown = format!("/v1/sessions/{}/timeout", uuid::Uuid::new_v4());
    assert_eq!(gw.post(&unknown, json!({"timeout": 9_000})).await.0, 404);
    gw.stop().await;
}
