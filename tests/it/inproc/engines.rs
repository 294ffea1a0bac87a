//! Headful sessions (`headless: false`) on the fake host: what a create asks of the host,
//! what the Session JSON says, that the warm pool never serves one, and the 501 of a node
//! that cannot run one.

use std::path::PathBuf;

use ingot::browser::Engines;
use serde_json::json;

use super::{FakeGateway, assert_error, id_of};

fn engines(chromium: bool, xvfb: bool) -> Engines {
    let path = |yes: bool, p: &str| yes.then(|| PathBuf::from(p));
    Engines::choose(
        None,
        path(chromium, "/usr/lib/chromium/chromium"),
        Some(PathBuf::from("/usr/lib/chromium/chromium-headless-shell")),
        path(xvfb, "/usr/bin/Xvfb"),
    )
    .expect("the shell is there")
}

#[tokio::test]
async fn a_headful_create_launches_a_headful_browser_cold_and_says_so() {
    let gw = FakeGateway::start_with(|s| s.pool_size = 1).await;
    gw.host.set_engines(engines(true, true));
    gw.wait_host("a full pool", |h| h.launches() >= 2).await;
    let pooled = gw.host.launches();

    let session = gw.create(json!({"headless": false})).await;
    assert_eq!(session["headless"], false, "{session}");
    let id = id_of(&session);
    assert!(
        gw.browser_of(&id).spec().headful,
        "the host was asked for a headful browser"
    );
    assert!(
        gw.host.launches() > pooled,
        "a headful create launches its own browser"
    );
    assert_eq!(gw.session(&id).await["headless"], false);

    let headless = gw.create(json!({})).await;
    assert_eq!(headless["headless"], true);
    assert!(!gw.browser_of(&id_of(&headless)).spec().headful);

    gw.release(&id).await;
    let ended = gw.wait_ended(&id).await;
    assert_eq!(ended["headless"], false, "the record keeps it: {ended}");
    let (_, list) = gw.get("/v1/sessions?status=released").await;
    let listed = list["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id.as_str()).cloned())
        .expect("listed");
    assert_eq!(listed["headless"], false);
    gw.stop().await;
}

#[tokio::test]
async fn a_node_without_xvfb_or_full_chromium_refuses_headful_with_501_naming_the_packages() {
    for (chromium, xvfb, packages) in [
        (true, false, "apt-get install -y xvfb"),
        (false, true, "apt-get install -y chromium`"),
        (false, false, "apt-get install -y chromium xvfb"),
    ] {
        let gw = FakeGateway::start().await;
        gw.host.set_engines(engines(chromium, xvfb));
        let launches = gw.host.launches();
        let reply = gw.post("/v1/sessions", json!({"headless": false})).await;
        let message = assert_error((reply.0, &reply.1), 501, "headful_unavailable");
        assert!(message.contains(packages), "{message}");
        assert_eq!(gw.host.launches(), launches, "nothing was launched");
        // Headless sessions are served as ever.
        let session = gw.create(json!({"headless": true})).await;
        assert_eq!(session["headless"], true);
        gw.stop().await;
    }
}
