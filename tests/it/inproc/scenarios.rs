//! The scenarios of `crate::scenario`, each run in-process on the fake browser host, plus
//! what only the fake host can show (how many browsers were launched, how often one was
//! killed). The same scenarios run once against real Chromium in `scenario::chromium_*`.

use serde_json::json;

use crate::scenario;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_create_bodies_get_400_naming_the_field_and_create_nothing() {
    let gw = FakeGateway::start().await;
    scenario::bad_create_bodies_get_400_naming_the_field_and_create_nothing(&gw).await;
    assert_eq!(
        gw.host.launches(),
        3,
        "the probe, the bystander and the session at defaults: no bad body launched one"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_closes_clients_with_1000_and_release_all_ends_every_session() {
    let gw = FakeGateway::start().await;
    let (a, b) =
        scenario::release_closes_clients_with_1000_and_release_all_ends_every_session(&gw).await;
    for id in [&a, &b] {
        let browser = gw.browser_of(id);
        assert!(browser.was_killed() && !browser.is_alive());
        assert_eq!(browser.kill_count(), 1, "reaped once");
    }
    assert_eq!((gw.host.alive(), gw.host.unreaped()), (0, 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_browser_fails_the_session_and_closes_clients_with_1011() {
    let gw = FakeGateway::start().await;
    let id = scenario::a_crashed_browser_fails_the_session_and_closes_clients_with_1011(&gw).await;
    assert!(
        gw.browser_of(&id).was_killed(),
        "the crashed browser is reaped"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_times_out_is_released_and_its_client_gets_1001() {
    let gw = FakeGateway::start().await;
    let id = scenario::a_session_that_times_out_is_released_and_its_client_gets_1001(&gw).await;
    assert!(gw.browser_of(&id).was_killed(), "the browser is reaped");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_steels_session_json_and_retrieve_matches() {
    let gw = FakeGateway::start().await;
    let (id, sized) = scenario::create_answers_steels_session_json_and_retrieve_matches(&gw).await;
    assert_eq!(
        gw.session(&id).await["userAgent"],
        "Mozilla/5.0 (fake) FakeChrome/1.0"
    );
    assert_eq!(gw.host.launches(), 3, "the probe, then the two sessions");
    assert_eq!(gw.browser_of(&id).spec().user_agent, None);
    let spec = gw.browser_of(&sized).spec().dimensions;
    assert_eq!(
        (spec.width, spec.height),
        (800, 600),
        "launched at that size"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_newest_first_and_pages_with_limit_and_cursor() {
    let gw = FakeGateway::start().await;
    scenario::list_is_newest_first_and_pages_with_limit_and_cursor(&gw).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_close_replies_then_closes_clients_with_1000_and_releases() {
    let gw = FakeGateway::start().await;
    let id = scenario::browser_close_replies_then_closes_clients_with_1000_and_releases(&gw).await;
    assert!(gw.browser_of(&id).was_killed(), "the browser is reaped");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_session_answers_as_an_unknown_one() {
    let gw = FakeGateway::start_with(|s| s.api_keys = Some(TENANTS.into())).await;
    let session = gw.create_as(Some(ALICE), json!({})).await;
    scenario::another_tenants_session_answers_as_an_unknown_one(&gw, ALICE, BOB, &session).await;
    gw.stop().await;
}
