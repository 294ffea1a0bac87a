//! Capacity: the warm pool (fresh browsers handed over, refilled, replaced when they die,
//! giving way at the session limit) and the admission queue (waits for a slot, then 429 with
//! `Retry-After`). Browsers and directories are counted, pool included.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

/// Browser leaders (the main Chromium process of each browser) of this gateway.
fn browsers(gw: &Gateway) -> usize {
    let pids = browser_pids_in(&gw.data_dir);
    pids.iter().filter(|(pid, pgid)| pid == pgid).count()
}

/// Names of the profile directories under `<data>/sessions`.
fn profile_dirs(gw: &Gateway) -> Vec<String> {
    std::fs::read_dir(gw.data_dir.join("sessions"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_pool(gw: &Gateway, ready: f64, browsers_total: usize) {
    let deadline = Instant::now() + secs(20);
    loop {
        let pooled = metric(&gw.scrape().await, "ingot_pool_browsers", &[]);
        if pooled == ready && browsers(gw) == browsers_total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool has {pooled} ready and {} browsers run, expected {ready} and {browsers_total}\n{}",
            browsers(gw),
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_hands_over_fresh_browsers_and_refills() {
    let _shared = shared().await;
    let site = PageServer::start(vec![(
        "/",
        "<title>site</title><script>document.cookie='seen=1; max-age=3600'</script>".to_owned(),
    )])
    .await;
    let mut gw = Gateway::start(&["--pool-size", "2", "--max-sessions", "6"]).await;
    let pooled_dirs = the_pool_fills_with_two_browsers(&gw).await;
    let a_leader = a_plain_session_takes_a_pooled_browser(&gw, &site, &pooled_dirs).await;
    let b_id =
        the_next_session_gets_another_browser_with_an_empty_profile(&gw, &site, a_leader).await;
    let c_id = options_that_need_launch_flags_get_a_cold_launch(&gw, &pooled_dirs).await;
    a_pooled_browser_that_dies_is_replaced_never_handed_out(&gw, &b_id, &c_id).await;
    only_the_pool_is_left_then_nothing_after_sigterm(&mut gw, &b_id, &c_id).await;
}

/// The pool fills with two browsers; returns their profile directories.
async fn the_pool_fills_with_two_browsers(gw: &Gateway) -> Vec<String> {
    wait_pool(gw, 2.0, 2).await;
    let pooled_dirs = profile_dirs(gw);
    assert_eq!(pooled_dirs.len(), 2);
    pooled_dirs
}

/// A session without options takes a pooled browser, and its id is that browser's. Returns
/// that browser's leader.
async fn a_plain_session_takes_a_pooled_browser(
    gw: &Gateway,
    site: &PageServer,
    pooled_dirs: &[String],
) -> i32 {
    let a = gw.create(json!({})).await;
    let a_id = a["id"].as_str().unwrap().to_owned();
    assert!(pooled_dirs.contains(&a_id), "{a_id} not in {pooled_dirs:?}");
    assert!(gw.wait_for_log("warm=true", secs(5)).await);
    let mut cdp = Cdp::connect(a["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/")).await;
    assert_eq!(cdp.eval(&page, "document.cookie").await, json!("seen=1"));
    let size = cdp.eval(&page, "[innerWidth, innerHeight].join('x')").await;
    assert_eq!(
        size,
        json!("1920x1080"),
        "pooled browsers have the default size"
    );
    cdp.close().await;
    let a_leader = browser_leader(&gw.data_dir, &a_id);
    // The pool refills behind it.
    wait_pool(gw, 2.0, 3).await;
    gw.release(&a_id).await;
    assert!(!profile_dirs(gw).contains(&a_id), "its profile is deleted");
    a_leader
}

/// The next session gets another browser with an empty profile. Returns its id.
async fn the_next_session_gets_another_browser_with_an_empty_profile(
    gw: &Gateway,
    site: &PageServer,
    a_leader: i32,
) -> String {
    let b = gw.create(json!({})).await;
    let b_id = b["id"].as_str().unwrap().to_owned();
    assert_ne!(browser_leader(&gw.data_dir, &b_id), a_leader);
    let mut cdp = Cdp::connect(b["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/other")).await;
    assert_eq!(
        cdp.eval(&page, "document.cookie").await,
        json!(""),
        "no cookie from the previous session"
    );
    cdp.close().await;
    b_id
}

/// Options that need launch flags get a cold launch; the pool is untouched. Returns the
/// session's id.
async fn options_that_need_launch_flags_get_a_cold_launch(
    gw: &Gateway,
    pooled_dirs: &[String],
) -> String {
    let handouts = metric(&gw.scrape().await, "ingot_pool_handouts_total", &[]);
    assert_eq!(handouts, 2.0);
    let c = gw
        .create(json!({"userAgent": "ingot-test/1", "dimensions": {"width": 800, "height": 600}}))
        .await;
    let c_id = c["id"].as_str().unwrap().to_owned();
    assert!(!pooled_dirs.contains(&c_id));
    let mut cdp = Cdp::connect(c["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    assert_eq!(
        cdp.eval(
            &page,
            "navigator.userAgent + ' ' + innerWidth + 'x' + innerHeight"
        )
        .await,
        json!("ingot-test/1 800x600")
    );
    cdp.close().await;
    assert_eq!(
        metric(&gw.scrape().await, "ingot_pool_handouts_total", &[]),
        handouts
    );
    c_id
}

/// A pooled browser that dies is reaped and replaced, never handed out.
async fn a_pooled_browser_that_dies_is_replaced_never_handed_out(
    gw: &Gateway,
    b_id: &str,
    c_id: &str,
) {
    wait_pool(gw, 2.0, 4).await;
    let sessions = [b_id.to_owned(), c_id.to_owned()];
    let victim = profile_dirs(gw)
        .into_iter()
        .find(|d| !sessions.contains(d))
        .expect("a pooled browser");
    kill_group(browser_leader(&gw.data_dir, &victim), 9);
    let deadline = Instant::now() + secs(20);
    while profile_dirs(gw).contains(&victim) {
        assert!(Instant::now() < deadline, "dead pooled browser not reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_pool(gw, 2.0, 4).await;
    for _ in 0..2 {
        let d = gw.create(json!({})).await;
        let d_id = d["id"].as_str().unwrap();
        assert_ne!(d_id, victim);
        let mut cdp = Cdp::connect(d["websocketUrl"].as_str().unwrap()).await;
        let page = cdp.attach_first_page().await;
        assert_eq!(cdp.eval(&page, "1 + 1").await, json!(2));
        cdp.close().await;
        gw.release(d_id).await;
    }
}

/// Nothing but the pool is left once the sessions end, and nothing at all after SIGTERM.
async fn only_the_pool_is_left_then_nothing_after_sigterm(
    gw: &mut Gateway,
    b_id: &str,
    c_id: &str,
) {
    gw.release(b_id).await;
    gw.release(c_id).await;
    wait_pool(gw, 2.0, 2).await;
    assert_eq!(
        gw.session_dirs(),
        4,
        "two profiles and two scratch directories"
    );
    let exit = gw.stop();
    assert!(exit.success());
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_gives_way_at_the_session_limit() {
    let _shared = shared().await;
    let gw = Gateway::start(&[
        "--pool-size",
        "2",
        "--max-sessions",
        "2",
        "--queue-timeout-ms",
        "0",
    ])
    .await;
    wait_pool(&gw, 2.0, 2).await;
    let a = gw.create(json!({})).await;
    // One slot is A's, the other stays with the remaining pooled browser.
    wait_pool(&gw, 1.0, 2).await;
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 200, "a pooled browser is a free slot: {body}");

    // A session that needs its own flags takes the pooled browser's slot.
    let b = gw.create(json!({"userAgent": "ingot-test/2"})).await;
    wait_pool(&gw, 0.0, 2).await;
    let (status, body) = gw.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "at_capacity");
    let (status, body) = gw.post("/v1/sessions", json!({})).await;
    assert_eq!(status, 429, "{body}");

    // A slot that frees up goes back to the pool.
    gw.release(a["id"].as_str().unwrap()).await;
    wait_pool(&gw, 1.0, 2).await;
    gw.release(b["id"].as_str().unwrap()).await;
    wait_pool(&gw, 2.0, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_queue_for_a_slot_then_get_429() {
    let _shared = shared().await;
    let gw = Gateway::start(&[
        "--max-sessions",
        "1",
        "--queue-timeout-ms",
        "3000",
        "--queue-limit",
        "1",
    ])
    .await;
    let a = gw.create(json!({})).await;
    let waiting = b_queues_and_c_finds_the_queue_full(&gw).await;
    let b = releasing_a_lets_b_in(&gw, &a, waiting).await;
    d_waits_the_whole_queue_timeout_then_gets_429(&gw).await;
    gw.release(b["id"].as_str().unwrap()).await;
    the_metrics_count_each_rejection_and_wait(&gw).await;
}

/// What a create that waited in the queue got: status, time taken and body.
type Queued = tokio::task::JoinHandle<(u16, Duration, reqwest::Result<serde_json::Value>)>;

/// B waits in the queue; C finds the queue full and is refused at once. Returns B's create.
async fn b_queues_and_c_finds_the_queue_full(gw: &Gateway) -> Queued {
    let (url, http) = (gw.url("/v1/sessions"), gw.http.clone());
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let r = http.post(url).json(&json!({})).send().await.expect("POST");
        (
            r.status().as_u16(),
            started.elapsed(),
            r.json::<serde_json::Value>().await,
        )
    });
    let deadline = Instant::now() + secs(5);
    while metric(&gw.scrape().await, "ingot_admission_queue_length", &[]) != 1.0 {
        assert!(Instant::now() < deadline, "B never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = gw
        .http
        .post(gw.url("/v1/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "at_capacity");
    assert!(
        body["message"].as_str().unwrap().contains("waiting"),
        "{body}"
    );
    waiting
}

/// Releasing A lets B in. Returns B.
async fn releasing_a_lets_b_in(
    gw: &Gateway,
    a: &serde_json::Value,
    waiting: Queued,
) -> serde_json::Value {
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.release(a["id"].as_str().unwrap()).await;
    let (status, waited, b) = waiting.await.unwrap();
    let b = b.unwrap();
    assert_eq!(status, 200, "{b}");
    assert!(
        waited >= Duration::from_millis(300),
        "B waited for A: {waited:?}"
    );
    b
}

/// With B holding the only slot, D waits the whole queue timeout, then gets 429.
async fn d_waits_the_whole_queue_timeout_then_gets_429(gw: &Gateway) {
    let started = Instant::now();
    let r = gw
        .http
        .post(gw.url("/v1/sessions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(started.elapsed() >= Duration::from_millis(2900));
}

/// One rejection of each kind, one wait, two sessions, an empty queue; nothing left.
async fn the_metrics_count_each_rejection_and_wait(gw: &Gateway) {
    let scrape = gw.scrape().await;
    let rejected = |reason| {
        metric(
            &scrape,
            "ingot_admission_rejections_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(rejected("queue_full"), 1.0);
    assert_eq!(rejected("queue_timeout"), 1.0);
    assert_eq!(metric(&scrape, "ingot_admission_queue_length", &[]), 0.0);
    assert_eq!(
        metric(&scrape, "ingot_admission_wait_seconds_count", &[]),
        1.0
    );
    assert_eq!(metric(&scrape, "ingot_sessions_created_total", &[]), 2.0);
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_pool_refill_leaves_nothing() {
    let _shared = shared().await;
    let mut gw = Gateway::start(&["--pool-size", "2", "--max-sessions", "4"]).await;
    wait_pool(&gw, 2.0, 2).await;
    // Taking a pooled browser starts a refill launch; stop the gateway while it runs.
    gw.create(json!({})).await;
    let exit = gw.stop();
    assert!(exit.success(), "{exit:?}");
    // No deadline slack: everything must be gone once the gateway has exited.
    gw.assert_clean(Duration::ZERO).await;
}
