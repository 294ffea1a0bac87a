//! The session's identity on the fake browser: the multiplexer's root auto-attaches to every
//! page, overrides its user agent before letting it run, and keeps those sessions to itself
//! (no client sees or may address them); a client's `Target.createTarget` for a URL opens
//! `about:blank` and the gateway loads the URL after the override. What the pages then
//! report is `tests/it/identity.rs`'s, on real Chromium.

use std::time::Duration;

use ingot::testing::FakeBrowser;
use serde_json::{Value, json};

use super::*;

const WINDOWS_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

/// The commands the fake received on CDP session `session`, in order, as method names.
fn methods_on(browser: &FakeBrowser, session: &str) -> Vec<String> {
    browser
        .received()
        .into_iter()
        .filter(|c| c.session_id.as_deref() == Some(session))
        .map(|c| c.method)
        .collect()
}

/// The params of the override the fake received on `session`.
fn override_on(browser: &FakeBrowser, session: &str) -> Value {
    browser
        .received()
        .into_iter()
        .find(|c| {
            c.session_id.as_deref() == Some(session) && c.method == "Emulation.setUserAgentOverride"
        })
        .map(|c| c.params)
        .unwrap_or_else(|| panic!("no override on {session}"))
}

/// Asserts that no message names one of the root's page sessions.
fn assert_unseen(messages: &[Value], own: &[(String, String)]) {
    for message in messages {
        let text = message.to_string();
        for (_, session) in own {
            assert!(
                !text.contains(session.as_str()),
                "a client saw {session}: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_page_has_the_sessions_user_agent_before_the_create_answers() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({"userAgent": WINDOWS_UA})).await;
    let browser = gw.browser_of(&id_of(&session));
    let root_auto_attach = browser
        .received()
        .into_iter()
        .find(|c| c.method == "Target.setAutoAttach" && c.session_id.is_none())
        .expect("the root auto-attaches");
    assert_eq!(root_auto_attach.params["waitForDebuggerOnStart"], true);
    let own = browser.root_page_sessions();
    assert_eq!(own.len(), 1, "{own:?}");
    let (page, session_id) = &own[0];
    assert_eq!(*page, browser.page_target_id());
    // Answered before the create answered: in order, the override, the page's own
    // auto-attach, and only then the page runs.
    assert_eq!(
        methods_on(&browser, session_id),
        [
            "Emulation.setUserAgentOverride",
            "Target.setAutoAttach",
            "Runtime.runIfWaitingForDebugger"
        ]
    );
    let params = override_on(&browser, session_id);
    assert_eq!(params["userAgent"], WINDOWS_UA);
    assert_eq!(params["platform"], "Win32");
    assert_eq!(params["userAgentMetadata"]["platform"], "Windows");
    assert_eq!(
        params["userAgentMetadata"]["brands"][1],
        json!({"brand": "Chromium", "version": "120"})
    );

    // Without `userAgent`: the browser's own, whose (fake) string is not Chromium's, so no
    // client hints.
    let plain = gw.create(json!({})).await;
    let browser = gw.browser_of(&id_of(&plain));
    let own = browser.root_page_sessions();
    let params = override_on(&browser, &own[0].1);
    assert_eq!(params["userAgent"], "Mozilla/5.0 (fake) FakeChrome/1.0");
    assert!(params.get("userAgentMetadata").is_none(), "{params}");
    assert_eq!(plain["userAgent"], "Mozilla/5.0 (fake) FakeChrome/1.0");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_sees_or_addresses_the_roots_page_sessions() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let browser = gw.browser_of(&id_of(&session));
    let own = browser.root_page_sessions();
    let root_page = own[0].1.clone();
    let mut cdp = CdpClient::connect_to(&session).await;
    let mut seen = Vec::new();
    let page = cdp.auto_attach().await;
    assert_ne!(page, root_page);

    // Events and late replies on the root's session go nowhere.
    browser.emit(
        "Runtime.consoleAPICalled",
        json!({"type": "log"}),
        Some(&root_page),
    );
    browser.emit("Page.frameNavigated", json!({}), Some(&root_page));
    let (before, reply) = cdp
        .call(
            "Runtime.evaluate",
            json!({"expression": "1+1"}),
            Some(&page),
        )
        .await;
    assert_eq!(reply["result"]["result"]["value"], 2, "{reply}");
    seen.extend(before);

    // A client may not address it.
    let (before, refused) = cdp
        .call(
            "Runtime.evaluate",
            json!({"expression": "1+1"}),
            Some(&root_page),
        )
        .await;
    assert_eq!(refused["error"]["code"], -32001, "{refused}");
    seen.extend(before);
    assert!(
        !methods_on(&browser, &root_page).contains(&"Runtime.evaluate".to_owned()),
        "the client's command never reached the root's session"
    );

    // A page the client opens for a URL: `about:blank` first, the URL after the override.
    let url = "http://127.0.0.1:9/created";
    let (before, created) = cdp
        .call("Target.createTarget", json!({"url": url}), None)
        .await;
    seen.extend(before);
    let target = created["result"]["targetId"]
        .as_str()
        .expect("targetId")
        .to_owned();
    let sent = browser
        .received()
        .into_iter()
        .rfind(|c| c.method == "Target.createTarget")
        .expect("the client's createTarget");
    assert_eq!(sent.params["url"], "about:blank");
    let own = browser.root_page_sessions();
    let created_session = own
        .iter()
        .find(|(page, _)| *page == target)
        .map(|(_, s)| s.clone())
        .expect("the root attached the new page");
    gw.wait_host("the gateway loads the URL after the override", |_| {
        methods_on(&browser, &created_session)
            .last()
            .map(String::as_str)
            == Some("Page.navigate")
    })
    .await;
    assert_eq!(
        methods_on(&browser, &created_session),
        [
            "Emulation.setUserAgentOverride",
            "Target.setAutoAttach",
            "Runtime.runIfWaitingForDebugger",
            "Page.navigate"
        ]
    );
    let navigate = browser
        .received()
        .into_iter()
        .rfind(|c| c.method == "Page.navigate")
        .expect("Page.navigate");
    assert_eq!(navigate.params["url"], url);

    // Whatever else came, none of it named the root's sessions or answered its commands.
    while let Some(message) = cdp.next_within(Duration::from_millis(200)).await {
        seen.push(message);
    }
    assert_unseen(&seen, &own);
    for message in &seen {
        assert!(message.get("id").is_none(), "an unasked reply: {message}");
    }
    cdp.close().await;
    gw.stop().await;
}
