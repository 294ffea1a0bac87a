//! The session memory cap in-process: a browser its host ends over the memory limit fails
//! its session within 2 s, recorded as `memory_limit` and shown to Steel's clients as
//! `browser_crashed`, while its neighbour stays live; and the gateway tells its host the
//! caps it derived from `--session-memory-max` and `--session-pids-max`.

use std::time::{Duration, Instant};

use ingot::browser::cgroup::Limits;
use ingot::config::{Cap, derived_session_memory, total_memory};
use serde_json::{Value, json};

use super::*;

/// Creates a session and connects a client that has made one round trip.
async fn session_with_client(gw: &FakeGateway) -> (String, CdpClient) {
    let session = gw.create(json!({})).await;
    let mut cdp = CdpClient::connect_to(&session).await;
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    (id_of(&session), cdp)
}

/// The session ended `failed` in Steel's words, within 2 s of `since`.
async fn assert_failed_within_2s(gw: &FakeGateway, id: &str, since: Instant) -> Value {
    let ended = gw.wait_ended(id).await;
    assert!(
        since.elapsed() < Duration::from_secs(2),
        "ended after {:?}",
        since.elapsed()
    );
    assert_eq!(
        (&ended["status"], &ended["releaseReason"]),
        (&json!("failed"), &json!("browser_crashed")),
        "Steel's clients see a crash: {ended}"
    );
    ended
}

/// The neighbour is live, answers, and its browser was not touched.
async fn assert_untouched(gw: &FakeGateway, id: &str, cdp: &mut CdpClient) {
    assert_eq!(gw.session(id).await["status"], "live");
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    let browser = gw.browser_of(id);
    assert!(browser.is_alive() && !browser.was_killed());
}

fn assert_recorded(data_dir: &std::path::Path, id: &str, status: &str, reason: &str) {
    let record = crate::common::usage_record(data_dir, id);
    assert_eq!(
        (record.status.as_str(), record.reason.as_deref()),
        (status, Some(reason)),
        "{record:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_over_its_memory_limit_fails_its_session_and_spares_its_neighbour() {
    let gw = FakeGateway::start().await;
    let (hog, mut hog_cdp) = session_with_client(&gw).await;
    let (neighbour, mut neighbour_cdp) = session_with_client(&gw).await;
    let browser = gw.browser_of(&hog);
    let since = Instant::now();
    browser.exceed_memory();
    let (code, reason) = hog_cdp.closed().await;
    assert_eq!(
        (code, reason.as_str()),
        (1011, "browser over the session memory limit")
    );
    assert_failed_within_2s(&gw, &hog, since).await;
    gw.wait_host("the browser is reaped", |_| browser.was_killed())
        .await;
    assert_untouched(&gw, &neighbour, &mut neighbour_cdp).await;
    let data_dir = gw.stop().await;
    assert_recorded(data_dir.path(), &hog, "failed", "memory_limit");
    assert_recorded(data_dir.path(), &neighbour, "released", "gateway_shutdown");
}

/// A real browser's pipe closes when the host kills it, before the host reports why it
/// exited: the session still ends as `memory_limit`, not as a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_is_recorded_when_the_pipe_closes_before_the_exit_is_known() {
    let gw = FakeGateway::start().await;
    let (hog, mut hog_cdp) = session_with_client(&gw).await;
    let (neighbour, mut neighbour_cdp) = session_with_client(&gw).await;
    let since = Instant::now();
    gw.browser_of(&hog)
        .exceed_memory_pipe_first(Duration::from_millis(300));
    let (code, reason) = hog_cdp.closed().await;
    assert_eq!(code, 1011, "{reason}");
    assert_failed_within_2s(&gw, &hog, since).await;
    assert_untouched(&gw, &neighbour, &mut neighbour_cdp).await;
    let data_dir = gw.stop().await;
    assert_recorded(data_dir.path(), &hog, "failed", "memory_limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_told_the_caps_derived_from_the_flags() {
    let gw = FakeGateway::start().await;
    assert_eq!(
        gw.host.limits(),
        Some(Limits {
            memory_max: Some(derived_session_memory(total_memory().unwrap_or(0), 4)),
            pids_max: Some(2048),
        }),
        "derived from the machine's memory and --max-sessions 4"
    );
    gw.stop().await;
    let gw = FakeGateway::start_with(|s| {
        s.session_memory_max = Some(Cap::At(512 << 20));
        s.session_pids_max = Cap::Off;
    })
    .await;
    assert_eq!(
        gw.host.limits(),
        Some(Limits {
            memory_max: Some(512 << 20),
            pids_max: None,
        })
    );
    gw.stop().await;
}
