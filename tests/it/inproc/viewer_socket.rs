//! The live viewer's WebSocket in-process, on the fake browser's screencast: the page loads,
//! the socket streams frames, a person's input becomes CDP `Input.*` commands on the page,
//! bad messages get an `error` answer, and the socket closes with the code `proxy.rs` gives
//! the reason.

use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A viewer's socket, opened as ingot's own page would (same origin), for the page at
/// `debug_url` (a `debugUrl`).
async fn open(gw: &FakeGateway, debug_url: &str) -> Socket {
    let url = debug_url
        .replace("http://", "ws://")
        .replace("/viewer?", "/viewer/ws?");
    let mut request = url.into_client_request().expect("request");
    let origin = format!("http://{}", gw.addr);
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("origin"));
    let (ws, _) = timeout(STEP, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("the viewer's socket");
    ws
}

fn debug_url(session: &Value) -> String {
    session["debugUrl"].as_str().expect("debugUrl").to_owned()
}

/// The next message on the viewer's socket.
async fn next(ws: &mut Socket) -> Message {
    timeout(STEP, ws.next())
        .await
        .expect("a message in time")
        .expect("the socket is open")
        .expect("a message")
}

/// The next text message of type `kind`, as JSON; frames and other types skipped.
async fn next_of(ws: &mut Socket, kind: &str) -> Value {
    loop {
        if let Message::Text(text) = next(ws).await {
            let message: Value = serde_json::from_str(&text).expect("JSON");
            if message["type"] == kind {
                return message;
            }
        }
    }
}

/// The next frame: its header and its JPEG.
async fn next_frame(ws: &mut Socket) -> (Value, Vec<u8>) {
    loop {
        if let Message::Binary(frame) = next(ws).await {
            let n = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
            let header = serde_json::from_slice(&frame[4..4 + n]).expect("header");
            return (header, frame[4 + n..].to_vec());
        }
    }
}

/// Reads until the gateway closes the socket; the close code and reason.
async fn closed(ws: &mut Socket) -> (u16, String) {
    loop {
        match timeout(STEP, ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                // Reading on sends the answer the gateway waits for.
                let _ = timeout(STEP, async { while let Some(Ok(_)) = ws.next().await {} }).await;
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

async fn send(ws: &mut Socket, message: Value) {
    let text = Message::text(message.to_string());
    timeout(STEP, ws.send(text))
        .await
        .expect("send in time")
        .expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_loads_and_its_socket_streams_the_pages_frames() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let page = gw.http.get(debug_url(&session)).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("/viewer/ws"),
        "the page opens the viewer's socket"
    );
    let mut ws = open(&gw, &debug_url(&session)).await;
    let browser = gw.browser_of(&id);
    // The first tabs may come before the live view has learnt of the page.
    let tabs = loop {
        let tabs = next_of(&mut ws, "tabs").await;
        if tabs["tabs"].as_array().is_some_and(|t| !t.is_empty()) {
            break tabs;
        }
    };
    assert_eq!(tabs["tabs"][0]["id"], browser.page_target_id(), "{tabs}");
    assert_eq!(tabs["active"], browser.page_target_id(), "{tabs}");
    let (header, jpeg) = next_frame(&mut ws).await;
    assert_eq!(
        header,
        json!({"pageId": browser.page_target_id(), "width": 800.0, "height": 600.0})
    );
    assert_eq!(
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &jpeg),
        ingot::testing::FAKE_JPEG,
        "the screencast's JPEG, unchanged"
    );
    assert_eq!(browser.screencasts(), 1);
    // A second viewer of the same page shares the screencast and gets the kept frame at once.
    let mut second = open(&gw, &debug_url(&session)).await;
    next_frame(&mut second).await;
    assert_eq!(
        browser.count("Page.startScreencast"),
        1,
        "one screencast per page"
    );
    // The screencast stops when its last viewer leaves.
    for ws in [ws, second] {
        let mut ws = ws;
        let _ = timeout(STEP, ws.close(None)).await;
    }
    gw.wait_host("the screencast stopped", |_| browser.screencasts() == 0)
        .await;
    assert_eq!(browser.count("Page.stopScreencast"), 1);
    // The thumbnail is the page's JPEG.
    let thumbnail = debug_url(&session).replace("/viewer?", "/viewer/thumbnail?");
    let r = gw.http.get(thumbnail).send().await.expect("thumbnail");
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = r.bytes().await.expect("bytes");
    assert_eq!(&bytes[..2], &[0xff, 0xd8], "a JPEG");
    gw.release(&id).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_input_becomes_cdp_input_on_the_watched_page() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let browser = gw.browser_of(&id);
    let mut ws = open(&gw, &debug_url(&session)).await;
    next_frame(&mut ws).await;
    let inputs = [
        json!({"type": "mouse", "event": "mousePressed", "x": 900.5, "y": 20, "button": "left", "clickCount": 1, "modifiers": 2}),
        json!({"type": "wheel", "x": 10, "y": 10, "deltaX": 0, "deltaY": 120, "modifiers": 0}),
        json!({"type": "key", "event": "keyDown", "key": "a", "code": "KeyA", "modifiers": 0, "text": "a"}),
        json!({"type": "text", "text": "pasted"}),
        json!({"type": "navigate", "url": "https://example.com/"}),
        json!({"type": "reload"}),
    ];
    for input in inputs {
        send(&mut ws, input).await;
    }
    let methods = [
        "Input.dispatchMouseEvent",
        "Input.dispatchKeyEvent",
        "Input.insertText",
        "Page.navigate",
        "Page.reload",
    ];
    gw.wait_host("every input reached the page", |_| {
        browser.count("Page.reload") == 1
    })
    .await;
    let received = browser.received();
    let on_page: Vec<_> = received
        .iter()
        .filter(|c| methods.contains(&c.method.as_str()))
        .collect();
    let names: Vec<_> = on_page.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(
        names,
        [
            "Input.dispatchMouseEvent",
            "Input.dispatchMouseEvent",
            "Input.dispatchKeyEvent",
            "Input.insertText",
            "Page.navigate",
            "Page.reload"
        ]
    );
    let press = &on_page[0].params;
    assert_eq!(
        (
            &press["type"],
            &press["x"],
            &press["y"],
            &press["modifiers"]
        ),
        (
            &json!("mousePressed"),
            &json!(800.0),
            &json!(20.0),
            &json!(2)
        ),
        "clamped to the frame's width"
    );
    assert_eq!(on_page[1].params["type"], "mouseWheel");
    assert_eq!(on_page[3].params, json!({"text": "pasted"}));
    assert_eq!(on_page[4].params, json!({"url": "https://example.com/"}));
    assert!(
        on_page.iter().all(|c| c.session_id.is_some()),
        "sent on the watched page's session"
    );
    // The page changed: its viewer gets a new frame.
    next_frame(&mut ws).await;
    gw.release(&id).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_and_read_only_input_get_an_error_and_the_socket_stays_open() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let browser = gw.browser_of(&id);
    let mut ws = open(&gw, &debug_url(&session)).await;
    next_frame(&mut ws).await;
    for (bad, why) in [
        (Message::text("not json"), "not a viewer message"),
        (
            Message::text(r#"{"type":"eval","expression":"1"}"#),
            "not a viewer message",
        ),
        (
            Message::text(r#"{"type":"mouse","x":"a"}"#),
            "not a viewer message",
        ),
        (Message::binary(vec![1, 2, 3]), "not a viewer message"),
        (
            Message::text(r#"{"type":"navigate","url":"javascript:alert(1)"}"#),
            "url: ",
        ),
    ] {
        timeout(STEP, ws.send(bad.clone()))
            .await
            .expect("in time")
            .expect("send");
        let error = next_of(&mut ws, "error").await;
        let message = error["message"].as_str().expect("message");
        assert!(message.starts_with(why), "{bad:?}: {error}");
    }
    assert_eq!(browser.count("Page.navigate"), 0);
    send(&mut ws, json!({"type": "reload"})).await;
    gw.wait_host("the socket still serves", |_| {
        browser.count("Page.reload") == 1
    })
    .await;
    // A read-only link (the page sends `interactive=false` on with the read-only token).
    let asked = format!("{}&interactive=false", debug_url(&session));
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_redirect.get(&asked).send().await.expect("page");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let read_only = format!("{}/v1/sessions/{id}/{location}", gw.url(""));
    let mut watcher = open(&gw, &read_only).await;
    next_frame(&mut watcher).await;
    send(&mut watcher, json!({"type": "reload"})).await;
    let error = next_of(&mut watcher, "error").await;
    assert_eq!(error["message"], "this viewer is read-only");
    assert_eq!(browser.count("Page.reload"), 1, "nothing reached the page");
    gw.release(&id).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_closes_with_the_code_of_how_the_session_ended() {
    let gw = FakeGateway::start_with(|s| s.max_message_bytes = 4096).await;
    // Released: told, then closed as CDP clients are (1000).
    let session = gw.create(json!({})).await;
    let mut ws = open(&gw, &debug_url(&session)).await;
    next_frame(&mut ws).await;
    gw.release(&id_of(&session)).await;
    let ended = next_of(&mut ws, "ended").await;
    assert_eq!(ended["reason"], "user_requested");
    assert_eq!(closed(&mut ws).await, (1000, "session released".into()));
    // Timed out: 1001.
    let session = gw.create(json!({"timeout": 1000})).await;
    let mut ws = open(&gw, &debug_url(&session)).await;
    let ended = next_of(&mut ws, "ended").await;
    assert_eq!(ended["reason"], "timeout");
    assert_eq!(closed(&mut ws).await, (1001, "session timed out".into()));
    // A message over the limit: 1009, as for a CDP client; the session goes on.
    let session = gw.create(json!({})).await;
    let mut ws = open(&gw, &debug_url(&session)).await;
    next_frame(&mut ws).await;
    let huge = json!({"type": "text", "text": "x".repeat(8192)});
    let _ = timeout(STEP, ws.send(Message::text(huge.to_string()))).await;
    assert_eq!(closed(&mut ws).await, (1009, "message too big".into()));
    assert_eq!(gw.session(&id_of(&session)).await["status"], "live");
    gw.release(&id_of(&session)).await;
    gw.stop().await;
}
