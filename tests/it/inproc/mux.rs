//! The CDP multiplexer and the WebSocket proxy in-process, through real WebSockets: each
//! client sees what a direct connection to Chromium would show it (its own ids, its own
//! auto-attach, no trace of its browser session), cannot reach another client's sessions,
//! and is closed with the right code when it breaks the rules, while the session goes on.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// Creates a session; returns its id and JSON.
async fn live_session(gw: &FakeGateway) -> (String, Value) {
    let session = gw.create(json!({})).await;
    (id_of(&session), session)
}

/// The browser-level CDP session the gateway gave a client: the `sessionId` on the most
/// recent `Browser.getVersion` the fake received from a client.
fn browser_session_of_last_caller(gw: &FakeGateway, id: &str) -> String {
    gw.browser_of(id)
        .received()
        .into_iter()
        .rev()
        .find(|c| c.method == "Browser.getVersion" && c.session_id.is_some())
        .and_then(|c| c.session_id)
        .expect("a client's Browser.getVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_command_gets_the_reply_under_its_own_id() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let mut a = CdpClient::connect_to(&session).await;
    let mut b = CdpClient::connect_to(&session).await;
    // Both clients use the same id at once: ids are never rewritten, routing is by session.
    let command = json!({"id": 41, "method": "Browser.getVersion"}).to_string();
    a.send_text(&command).await;
    b.send_text(&command).await;
    for client in [&mut a, &mut b] {
        let reply = client.next().await;
        assert_eq!(reply["id"], 41, "{reply}");
        assert_eq!(reply["result"]["product"], FAKE_PRODUCT, "{reply}");
        assert!(
            reply.get("sessionId").is_none(),
            "no browser session shows: {reply}"
        );
    }
    let browser = gw.browser_of(&id);
    let sessions: Vec<Option<String>> = browser
        .received()
        .into_iter()
        .filter(|c| c.id == Some(41))
        .map(|c| c.session_id)
        .collect();
    assert_eq!(sessions.len(), 2, "both reached the browser");
    assert!(
        sessions.iter().all(Option::is_some) && sessions[0] != sessions[1],
        "each on its own browser session: {sessions:?}"
    );
    a.close().await;
    b.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_attach_announces_the_page_and_page_replies_keep_their_session() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let mut cdp = CdpClient::connect_to(&session).await;
    let page = cdp.auto_attach().await;
    assert!(gw.browser_of(&id).sessions().contains(&page));

    let (events, reply) = cdp
        .call(
            "Runtime.evaluate",
            json!({"expression": "1+1"}),
            Some(&page),
        )
        .await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(reply["result"]["result"]["value"], 2, "{reply}");
    assert_eq!(
        reply["sessionId"],
        page.as_str(),
        "a page reply keeps its sessionId"
    );

    // Auto-attach again: the page is already attached, so it is not announced twice.
    let (events, reply) = cdp
        .call(
            "Target.setAutoAttach",
            json!({"autoAttach": true, "flatten": true}),
            None,
        )
        .await;
    assert!(events.is_empty(), "{events:?}");
    assert!(reply.get("error").is_none(), "{reply}");
    cdp.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_get_their_own_page_sessions_and_cannot_use_each_others() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let mut a = CdpClient::connect_to(&session).await;
    let mut b = CdpClient::connect_to(&session).await;
    let page_a = a.auto_attach().await;
    let page_b = b.auto_attach().await;
    assert_ne!(page_a, page_b, "each client gets its own attach event");

    let (_, stolen) = b
        .call(
            "Runtime.evaluate",
            json!({"expression": "'b'"}),
            Some(&page_a),
        )
        .await;
    let id_used = stolen["id"].clone();
    assert_eq!(
        stolen,
        json!({"id": id_used, "error": {"code": -32001, "message": "Session with given id not found."}})
    );
    let reached = gw
        .browser_of(&id)
        .received()
        .into_iter()
        .any(|c| c.params["expression"] == "'b'");
    assert!(!reached, "the gateway refused it before the browser saw it");

    for (client, page) in [(&mut a, &page_a), (&mut b, &page_b)] {
        let (_, own) = client
            .call("Runtime.evaluate", json!({"expression": "1+1"}), Some(page))
            .await;
        assert_eq!(own["result"]["result"]["value"], 2, "{own}");
    }
    a.close().await;
    b.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commands_get_cdp_errors_and_the_session_goes_on() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let mut cdp = CdpClient::connect_to(&session).await;
    cdp.send_text("this is not JSON").await;
    assert_eq!(
        cdp.next().await,
        json!({"error": {"code": -32700, "message": "Message must be a valid JSON object"}})
    );
    cdp.send_text(r#"{"id": 5, "method": "Runtime.evaluate", "sessionId": 7}"#)
        .await;
    let reply = cdp.next().await;
    assert_eq!(
        (&reply["id"], &reply["error"]["code"]),
        (&json!(5), &json!(-32600))
    );

    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    assert_eq!(gw.session(&id).await["status"], "live");
    cdp.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_that_is_not_utf8_closes_only_that_client_with_1007() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let mut a = CdpClient::connect_to(&session).await;
    // A binary frame holding UTF-8 JSON is a command like any other.
    let command = br#"{"id": 3, "method": "Browser.getVersion"}"#.to_vec();
    a.send(Message::Binary(command.into())).await;
    assert_eq!(a.next().await["result"]["product"], FAKE_PRODUCT);

    a.send(Message::Binary(vec![b'{', 0xff, 0xfe, b'}'].into()))
        .await;
    let (code, reason) = a.closed().await;
    assert_eq!(
        code, 1007,
        "close code for a binary frame that is not UTF-8 ({reason})"
    );
    assert_eq!(
        gw.session(&id).await["status"],
        "live",
        "the session goes on"
    );
    let mut b = CdpClient::connect_to(&session).await;
    let (_, reply) = b.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    b.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_bytes_closes_that_client_with_1009() {
    let gw = FakeGateway::start_with(|s| s.max_message_bytes = 1024).await;
    let (id, session) = live_session(&gw).await;
    let mut a = CdpClient::connect_to(&session).await;
    let fits = "x".repeat(900);
    let (_, reply) = a
        .call("Runtime.evaluate", json!({"expression": fits}), None)
        .await;
    assert_eq!(
        reply["result"]["result"]["value"],
        fits.as_str(),
        "900 bytes pass"
    );

    let too_big = "y".repeat(2000);
    a.send_command("Runtime.evaluate", json!({"expression": too_big}), None)
        .await;
    let (code, reason) = a.closed().await;
    assert_eq!(
        code, 1009,
        "close code for a message over the limit ({reason})"
    );
    let reached = gw
        .browser_of(&id)
        .received()
        .into_iter()
        .any(|c| c.params["expression"] == too_big.as_str());
    assert!(!reached, "the oversized message never reached the browser");
    assert_eq!(
        gw.session(&id).await["status"],
        "live",
        "the session goes on"
    );
    let mut b = CdpClient::connect_to(&session).await;
    b.call("Browser.getVersion", json!({}), None).await;
    b.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_has_its_browser_session_detached() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let browser = gw.browser_of(&id);
    let mut cdp = CdpClient::connect_to(&session).await;
    cdp.call("Browser.getVersion", json!({}), None).await;
    let own = browser_session_of_last_caller(&gw, &id);
    let page = cdp.auto_attach().await;
    assert!(browser.sessions().contains(&own) && browser.sessions().contains(&page));

    cdp.close().await;
    gw.wait_host("the gateway detaches the client's browser session", |_| {
        browser.received().iter().any(|c| {
            c.method == "Target.detachFromTarget"
                && c.session_id.is_none()
                && c.params["sessionId"] == own.as_str()
        })
    })
    .await;
    gw.wait_host(
        "its sessions are gone from the browser; only the gateway's spare is left",
        |_| {
            let left = browser.sessions();
            !left.contains(&own) && !left.contains(&page) && left.len() == 1
        },
    )
    .await;
    assert_eq!(
        gw.session(&id).await["status"],
        "live",
        "a disconnect ends nothing"
    );
    let mut again = CdpClient::connect_to(&session).await;
    let (_, reply) = again
        .call(
            "Runtime.evaluate",
            json!({"expression": "1+1"}),
            Some(&page),
        )
        .await;
    assert_eq!(
        reply["error"]["code"], -32001,
        "the old page session is gone: {reply}"
    );
    again.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_a_page_session_reach_only_its_client_and_are_counted() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let browser = gw.browser_of(&id);
    let mut a = CdpClient::connect_to(&session).await;
    let mut b = CdpClient::connect_to(&session).await;
    let page_a = a.auto_attach().await;
    b.auto_attach().await;
    a.call("Browser.getVersion", json!({}), None).await;
    let own_a = browser_session_of_last_caller(&gw, &id);

    for n in 0..3 {
        browser.emit("Page.loadEventFired", json!({"n": n}), Some(&page_a));
    }
    browser.emit("Target.targetInfoChanged", json!({"root": true}), None);
    browser.emit("Target.targetCreated", json!({"own": true}), Some(&own_a));
    for n in 0..3 {
        let event = a.next().await;
        assert_eq!(
            event,
            json!({"method": "Page.loadEventFired", "params": {"n": n}, "sessionId": page_a})
        );
    }
    let event = a.next().await;
    assert_eq!(
        event,
        json!({"method": "Target.targetCreated", "params": {"own": true}}),
        "an event on A's browser session reaches A without it; the root event reaches nobody"
    );
    // Anything misrouted to B would have been queued before this reply.
    for client in [&mut a, &mut b] {
        let (events, _) = client.call("Browser.getVersion", json!({}), None).await;
        assert!(events.is_empty(), "unexpected events: {events:?}");
    }
    // Two attach events, three page events, one browser-session event.
    let counted = timeout(STEP, async {
        loop {
            let count = gw.session(&id).await["eventCount"].clone();
            if count == 6 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "eventCount: {}",
        gw.session(&id).await["eventCount"]
    );
    a.close().await;
    b.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_attached_without_flatten_cannot_be_used_by_session_id() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let mut cdp = CdpClient::connect_to(&session).await;
    let page = gw.browser_of(&id).page_target_id();
    let (events, reply) = cdp
        .call("Target.attachToTarget", json!({"targetId": page}), None)
        .await;
    assert_eq!(events.len(), 1, "the attach is announced: {events:?}");
    let unflattened = reply["result"]["sessionId"].as_str().expect("sessionId");
    // Chromium serves such a session only through Target.sendMessageToTarget.
    let (_, refused) = cdp
        .call(
            "Runtime.evaluate",
            json!({"expression": "1+1"}),
            Some(unflattened),
        )
        .await;
    assert_eq!(refused["error"]["code"], -32001, "{refused}");

    let (_, reply) = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
            None,
        )
        .await;
    let flat = reply["result"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    let (_, evaluated) = cdp
        .call(
            "Runtime.evaluate",
            json!({"expression": "1+1"}),
            Some(&flat),
        )
        .await;
    assert_eq!(evaluated["result"]["result"]["value"], 2, "{evaluated}");
    cdp.close().await;
    gw.stop().await;
}

/// A client that sends and receives nothing gets a WebSocket ping after the interval (a
/// second here, 30 by default), so that load balancers keep its socket open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_gets_a_ping() {
    let gw = FakeGateway::start_with(|s| s.ws_ping_interval_ms = 1_000).await;
    let session = gw.create(json!({})).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url(&id_of(&session)))
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let first = timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a frame within 5 s")
        .expect("open")
        .expect("a frame");
    let waited = started.elapsed();
    assert!(matches!(first, Message::Ping(_)), "{first:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2_500),
        "pinged after {waited:?} of silence"
    );
    drop(ws);
    gw.release(&id_of(&session)).await;
    gw.stop().await;
}

/// A reply the browser sends for a client that has already left is dropped, never taken
/// for the answer to one of the gateway's own commands with the same id. (Client ids and
/// the gateway's ids overlap; a stray reply once failed the next client's attach with 502.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_clients_late_replies_never_answer_the_gateway() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let browser = gw.browser_of(&id_of(&session));
    let mut first = CdpClient::connect_to(&session).await;
    browser.hang();
    // Ids 1 to 50 cover the ids of the gateway's next commands on this browser.
    for _ in 0..50 {
        first
            .send_command("Browser.getVersion", json!({}), None)
            .await;
    }
    first.close().await;
    let url = gw.ws_url(&id_of(&session));
    let second = tokio::spawn(async move { tokio_tungstenite::connect_async(url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    browser.resume();
    let (mut ws, _) = timeout(Duration::from_secs(5), second)
        .await
        .expect("in time")
        .expect("no panic")
        .expect("the second client attaches");
    let probe = json!({"id": 7, "method": "Browser.getVersion"}).to_string();
    ws.send(Message::Text(probe.into())).await.expect("send");
    let reply = timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a reply in time")
        .expect("open")
        .expect("a frame");
    let reply: Value = serde_json::from_str(reply.to_text().expect("text")).expect("JSON");
    assert_eq!(reply["id"], 7, "{reply}");
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT, "{reply}");
    drop(ws);
    gw.release(&id_of(&session)).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_takes_a_browser_session_attached_before_it_came() {
    let gw = FakeGateway::start().await;
    let (id, session) = live_session(&gw).await;
    let browser = gw.browser_of(&id);
    for round in 0..3 {
        gw.wait_host("one spare browser session is attached", |_| {
            browser.count("Target.attachToBrowserTarget") == round + 1
                && browser.sessions().len() == 1
        })
        .await;
        let spare = browser.sessions().remove(0);
        let mut cdp = CdpClient::connect_to(&session).await;
        cdp.call("Browser.getVersion", json!({}), None).await;
        let own = browser_session_of_last_caller(&gw, &id);
        assert_eq!(own, spare, "round {round}: the client got the spare");
        gw.wait_host("the next spare is attached, and only one", |_| {
            browser.count("Target.attachToBrowserTarget") == round + 2
                && browser.sessions().len() == 2
        })
        .await;
        // The replacement was asked for only after the client's first message, so the
        // browser answered that message first.
        let methods = browser.methods();
        let first_message = methods
            .iter()
            .rposition(|m| m == "Browser.getVersion")
            .expect("the client's Browser.getVersion");
        let replacement = methods
            .iter()
            .rposition(|m| m == "Target.attachToBrowserTarget")
            .expect("the replacement's attach");
        assert!(
            first_message < replacement,
            "round {round}: the spare was replaced before the client's message: {methods:?}"
        );
        cdp.close().await;
        gw.wait_host("the client's session is detached", |_| {
            !browser.sessions().contains(&own)
        })
        .await;
    }
    gw.stop().await;
}
