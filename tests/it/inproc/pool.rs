//! The warm pool in-process: a plain create takes a pooled browser (and its id) without a
//! launch, the pool refills, options that need launch flags get their own launch (evicting a
//! pooled browser at the session limit), and a pooled browser that dies is replaced, never
//! handed out.
//!
//! With `max_sessions` equal to `pool_size`, every slot is the pool's while no session runs,
//! so `/readyz` answers 200 exactly when a pooled browser is ready: the tests wait on that.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::*;

/// A gateway whose only slot belongs to a pool of one; returns once the pooled browser is
/// ready.
async fn one_slot_one_pooled() -> FakeGateway {
    let gw = FakeGateway::start_with(|s| {
        s.pool_size = 1;
        s.max_sessions = Some(1);
    })
    .await;
    wait_pool_ready(&gw, 2).await;
    gw
}

/// Waits until `launched` browsers were started (probe included) and the pool has one ready.
async fn wait_pool_ready(gw: &FakeGateway, launched: usize) {
    gw.wait_host("the pool launches", |h| h.browsers().len() == launched)
        .await;
    gw.wait_readyz(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_create_takes_the_pooled_browser_and_the_pool_refills() {
    let gw = one_slot_one_pooled().await;
    let pooled = gw.host.last().expect("the pooled browser");
    assert_eq!(
        pooled.spec().user_agent,
        None,
        "pooled browsers have default flags"
    );
    // Any launch from now on would hang, so a create that returns launched nothing.
    gw.host.hang_launches(true);
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    assert_eq!(
        id,
        pooled.spec().session_id.to_string(),
        "it takes the pooled browser's id"
    );
    assert_eq!(gw.host.launches(), 2, "no launch during the create");
    assert!(pooled.is_alive() && !pooled.was_killed());
    let mut cdp = CdpClient::connect_to(&session).await;
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    cdp.close().await;

    // The slot comes back with the release, and the pool refills into it.
    gw.host.hang_launches(false);
    gw.release(&id).await;
    assert!(
        pooled.was_killed(),
        "a used browser never goes back to the pool"
    );
    wait_pool_ready(&gw, 3).await;
    let refilled = gw.host.last().expect("the new pooled browser");
    let next = id_of(&gw.create(json!({})).await);
    assert_eq!(next, refilled.spec().session_id.to_string());
    assert_eq!(gw.host.launches(), 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_with_a_user_agent_gets_its_own_launch_beside_the_pool() {
    let gw = FakeGateway::start_with(|s| s.pool_size = 1).await;
    gw.wait_host("the pool launches", |h| h.browsers().len() == 2)
        .await;
    let pooled = gw.host.last().expect("the pooled browser");
    let session = gw.create(json!({"userAgent": "agent/7"})).await;
    let id = id_of(&session);
    assert_eq!(session["userAgent"], "agent/7");
    assert_ne!(id, pooled.spec().session_id.to_string());
    let own = gw.browser_of(&id);
    assert_eq!(own.spec().user_agent.as_deref(), Some("agent/7"));
    assert!(own.index() >= 2, "launched for this session");
    assert!(
        pooled.is_alive() && !pooled.was_killed(),
        "with free slots the pooled browser stays"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_a_create_with_options_evicts_the_pooled_browser() {
    let gw = one_slot_one_pooled().await;
    let pooled = gw.host.last().expect("the pooled browser");
    let session = gw
        .create(json!({"userAgent": "agent/8", "dimensions": {"width": 640, "height": 480}}))
        .await;
    let own = gw.browser_of(&id_of(&session));
    assert_eq!(own.spec().user_agent.as_deref(), Some("agent/8"));
    assert_eq!(own.spec().dimensions.width, 640);
    assert!(pooled.was_killed(), "the pooled browser gave its slot up");
    gw.release(&id_of(&session)).await;
    wait_pool_ready(&gw, 4).await;
    gw.stop().await;
}

/// A failed create that evicted the pooled browser gives its slot back and tells the pool,
/// which refills at once (not when some session ends), and a successful pool launch makes
/// the gateway ready again after the failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_refills_after_a_failed_create_that_evicted_it() {
    let gw = one_slot_one_pooled().await;
    let pooled = gw.host.last().expect("the pooled browser");
    // The create evicts the pooled browser, then its own launch fails after a while.
    gw.host.set_launch_delay(Duration::from_millis(300));
    gw.host.fail_launches(Some("fake launch failure"));
    let r = gw
        .request(
            Method::POST,
            "/v1/sessions",
            None,
            Some(json!({"userAgent": "agent/9"})),
        )
        .await;
    assert_error((r.status, &r.body), 503, "browser_start_failed");
    assert!(pooled.was_killed(), "evicted for the create");
    gw.host.fail_launches(None);
    gw.host.set_launch_delay(Duration::ZERO);
    // The slot is free again: the pool should grow back into it.
    gw.wait_host("the pool launches a browser into the freed slot", |h| {
        h.browsers().len() == 3
    })
    .await;
    wait_pool_ready(&gw, 3).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_browser_that_crashes_is_replaced_and_never_handed_out() {
    let gw = FakeGateway::start_with(|s| s.pool_size = 1).await;
    gw.wait_host("the pool launches", |h| h.browsers().len() == 2)
        .await;
    let crashed = gw.host.last().expect("the pooled browser");
    crashed.crash();
    gw.wait_host("the crashed browser is reaped and replaced", |h| {
        crashed.was_killed() && h.browsers().len() == 3
    })
    .await;
    let replacement = gw.host.last().expect("the replacement");
    assert_eq!(replacement.spec().user_agent, None);
    assert!(replacement.is_alive());
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    assert_ne!(
        id,
        crashed.spec().session_id.to_string(),
        "never handed out"
    );
    let mut cdp = CdpClient::connect_to(&session).await;
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    assert_eq!(
        crashed.count("Target.attachToBrowserTarget"),
        0,
        "no client ever reached the crashed browser"
    );
    cdp.close().await;
    gw.stop().await;
}

/// When the pool holds the last free slot, the crashed browser's slot comes back only once
/// it is reaped; the reap wakes the refill loop, which replaces the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_browser_that_crashes_holding_the_last_slot_is_replaced() {
    let gw = one_slot_one_pooled().await;
    let crashed = gw.host.last().expect("the pooled browser");
    crashed.crash();
    gw.wait_host("the crashed browser is reaped", |_| crashed.was_killed())
        .await;
    gw.wait_host("the crashed browser is replaced", |h| {
        h.browsers().len() == 3
    })
    .await;
    let replacement = gw.host.last().expect("the replacement");
    let id = id_of(&gw.create(json!({})).await);
    assert_ne!(
        id,
        crashed.spec().session_id.to_string(),
        "never handed out"
    );
    assert_eq!(id, replacement.spec().session_id.to_string());
    gw.stop().await;
}

/// Waits until the pool has launched its first browser and that browser has answered its
/// first command; returns it.
async fn first_pooled_browser_answers(gw: &FakeGateway) -> Arc<FakeBrowser> {
    gw.wait_host("the pool launches", |h| h.browsers().len() == 2)
        .await;
    let pooled = gw.host.last().expect("the pooled browser");
    gw.wait_host("the pooled browser answers", |_| {
        pooled.count("Browser.getVersion") == 1
    })
    .await;
    pooled
}

/// A pooled browser that has just started answering is not handed out before it has
/// settled: a create meanwhile gets a launch of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pooled_browser_is_not_handed_out_before_it_settles() {
    let gw = FakeGateway::start_with(|s| {
        s.pool_size = 1;
        s.max_sessions = Some(2);
        s.pool_settle_ms = 60_000;
    })
    .await;
    let pooled = first_pooled_browser_answers(&gw).await;
    let session = gw.create(json!({})).await;
    assert_ne!(
        id_of(&session),
        pooled.spec().session_id.to_string(),
        "the settling browser is not taken"
    );
    assert_eq!(gw.host.launches(), 3, "the create launched its own");
    assert!(pooled.is_alive());
    gw.stop().await;
}

/// After a hand-out, the pool leaves the machine to the new session for its settling time
/// before it launches a replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_waits_before_it_replaces_a_browser_it_handed_out() {
    let settle = Duration::from_millis(1_500);
    let gw = FakeGateway::start_with(|s| {
        s.pool_size = 1;
        s.max_sessions = Some(2);
        s.pool_settle_ms = settle.as_millis() as u64;
    })
    .await;
    let pooled = first_pooled_browser_answers(&gw).await;
    tokio::time::sleep(settle + Duration::from_millis(500)).await;
    let handed_out = std::time::Instant::now();
    let session = gw.create(json!({})).await;
    assert_eq!(id_of(&session), pooled.spec().session_id.to_string());
    if handed_out.elapsed() < settle / 2 {
        assert_eq!(gw.host.launches(), 2, "no replacement launched yet");
    }
    gw.wait_host("the replacement launches after the quiet time", |h| {
        h.launches() == 3
    })
    .await;
    assert!(handed_out.elapsed() >= settle);
    gw.stop().await;
}
