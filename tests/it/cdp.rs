//! The CDP proxy with real clients: chromiumoxide and raw tokio-tungstenite. Covers the
//! initial page, session options, several clients at once, reconnects, large messages in
//! both directions, discovery, refusals before the upgrade, and isolation between sessions.

use std::time::Duration;

use crate::common::*;
use chromiumoxide::Browser;
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use serde_json::{Value, json};

fn test_pages() -> Vec<(&'static str, String)> {
    vec![
        ("/", "<html><head><title>ingot test</title></head><body><h1 id=greeting>hello from 127.0.0.1</h1></body></html>".into()),
        ("/second", "<html><head><title>second</title></head><body>second page</body></html>".into()),
    ]
}

async fn chromiumoxide_connect(url: &str) -> (Browser, tokio::task::JoinHandle<()>) {
    let (browser, mut handler) = Browser::connect(url).await.expect("chromiumoxide connect");
    let task = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromiumoxide_navigates_evaluates_screenshots_and_reconnects() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let pages = PageServer::start(test_pages()).await;
    let session = gw.create(json!({})).await;
    let ws = session["websocketUrl"].as_str().unwrap().to_owned();
    let id = session["id"].as_str().unwrap().to_owned();

    chromiumoxide_navigates_evaluates_and_screenshots(&ws, &pages).await;
    a_disconnect_does_not_end_the_session(&gw, &id).await;
    a_reconnect_through_http_discovery_finds_the_page(&gw, &id, &pages).await;
    // Still connected when the session is released.
    let _cdp = the_page_kept_its_state(&ws, &pages).await;
    gw.release(&id).await;
    gw.assert_clean(secs(5)).await;
}

/// chromiumoxide's own pages: its handling of a pre-existing page races between two
/// attachments (it does the same against Chromium directly), so it opens one.
async fn chromiumoxide_navigates_evaluates_and_screenshots(ws: &str, pages: &PageServer) {
    let (browser, handler) = chromiumoxide_connect(ws).await;
    let page = browser.new_page(pages.url("/")).await.expect("new page");
    let greeting: String = page
        .evaluate("document.querySelector('#greeting').textContent")
        .await
        .expect("evaluate")
        .into_value()
        .expect("string");
    assert_eq!(greeting, "hello from 127.0.0.1");
    page.evaluate("window.__marker = 42")
        .await
        .expect("set marker");
    let png = page
        .screenshot(ScreenshotParams::builder().build())
        .await
        .expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{} bytes",
        png.len()
    );
    page.goto(pages.url("/second")).await.expect("goto");
    assert_eq!(
        page.evaluate("document.title")
            .await
            .expect("title")
            .into_value::<String>()
            .expect("string"),
        "second"
    );
    page.evaluate("window.__marker = 42")
        .await
        .expect("set marker");
    drop(page);
    drop(browser);
    handler.abort();
}

async fn a_disconnect_does_not_end_the_session(gw: &Gateway, id: &str) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gw.session(id).await["status"],
        "live",
        "a disconnect does not end the session"
    );
}

/// Reconnect through the HTTP discovery form: the page survived.
async fn a_reconnect_through_http_discovery_finds_the_page(
    gw: &Gateway,
    id: &str,
    pages: &PageServer,
) {
    let (browser, handler) =
        chromiumoxide_connect(&gw.url(&format!("/devtools/browser/{id}"))).await;
    let targets = browser
        .execute(chromiumoxide::cdp::browser_protocol::target::GetTargetsParams::default())
        .await
        .expect("getTargets");
    let urls: Vec<String> = targets
        .result
        .target_infos
        .iter()
        .map(|t| t.url.clone())
        .collect();
    assert!(
        urls.contains(&pages.url("/second")),
        "pages after reconnect: {urls:?}"
    );
    drop(browser);
    handler.abort();
}

/// The page's state survived the disconnects. Returns the client, still connected.
async fn the_page_kept_its_state(ws: &str, pages: &PageServer) -> Cdp {
    let mut cdp = Cdp::connect(ws).await;
    let targets = cdp.call("Target.getTargets", json!({}), None).await;
    let target = targets["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"] == pages.url("/second"))
        .cloned()
        .expect("the page survived the disconnect");
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
            None,
        )
        .await;
    assert_eq!(
        cdp.eval(attached["sessionId"].as_str().unwrap(), "window.__marker")
            .await,
        42
    );
    cdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_session_has_one_blank_page_and_honours_size_and_user_agent() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw
        .create(json!({"dimensions": {"width": 1280, "height": 800}, "userAgent": "ingot-test-agent/1.0"}))
        .await;
    assert_eq!(session["userAgent"], "ingot-test-agent/1.0");
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let targets = cdp.call("Target.getTargets", json!({}), None).await;
    let pages: Vec<_> = targets["targetInfos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "page")
        .cloned()
        .collect();
    assert_eq!(pages.len(), 1, "exactly one open page: {targets}");
    assert_eq!(pages[0]["url"], "about:blank");
    let page = cdp.attach_first_page().await;
    // Checked again after a moment: Chromium's infobars would shrink the page late.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        cdp.eval(&page, "[innerWidth, innerHeight]").await,
        json!([1280, 800])
    );
    assert_eq!(
        cdp.eval(&page, "navigator.userAgent").await,
        "ingot-test-agent/1.0"
    );
    let version = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(version["userAgent"], "ingot-test-agent/1.0");

    let default = gw.create(json!({})).await;
    let mut cdp = Cdp::connect(default["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    assert_eq!(
        cdp.eval(&page, "[innerWidth, innerHeight]").await,
        json!([1920, 1080])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_share_a_session_without_seeing_each_other() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let ws = session["websocketUrl"].as_str().unwrap();
    let mut a = Cdp::connect(ws).await;
    let mut b = Cdp::connect(ws).await;

    let (page_a, page_b) = each_client_gets_its_own_attach_event(&mut a, &mut b).await;
    both_clients_see_the_same_page(&mut a, &mut b, &page_a, &page_b).await;
    b_cannot_use_the_cdp_session_of_a(&mut b, &page_a).await;
    events_of_a_stay_with_a(&mut a, &mut b, &page_a).await;
    event_count_counts_events_delivered_to_clients(&gw, &session).await;
    b_carries_on_when_a_leaves(a, &mut b, &page_b).await;
    // Both clients stay connected to the end.
    let _c = clients_may_use_the_same_id_at_the_same_time(ws, &mut b).await;
}

/// Each client gets its own auto-attach: both are told about the page. Returns the page
/// sessions of A and B.
async fn each_client_gets_its_own_attach_event(a: &mut Cdp, b: &mut Cdp) -> (String, String) {
    for client in [&mut *a, &mut *b] {
        client
            .call(
                "Target.setAutoAttach",
                json!({"autoAttach": true, "waitForDebuggerOnStart": false, "flatten": true}),
                None,
            )
            .await;
    }
    let attached = |c: &Cdp| {
        c.events
            .iter()
            .filter(|e| e["method"] == "Target.attachedToTarget")
            .count()
    };
    assert_eq!(
        (attached(a), attached(b)),
        (1, 1),
        "each client sees its own attach event"
    );
    let page_a = a.attached_session();
    let page_b = b.attached_session();
    assert_ne!(page_a, page_b);
    (page_a, page_b)
}

/// Same page, seen by both.
async fn both_clients_see_the_same_page(a: &mut Cdp, b: &mut Cdp, page_a: &str, page_b: &str) {
    a.eval(page_a, "window.shared = 'from a'").await;
    assert_eq!(b.eval(page_b, "window.shared").await, "from a");
}

/// B cannot use A's CDP session.
async fn b_cannot_use_the_cdp_session_of_a(b: &mut Cdp, page_a: &str) {
    let reply = b
        .call_full("Runtime.evaluate", json!({"expression": "1"}), Some(page_a))
        .await;
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
}

/// A's events stay A's: enabling Page on A produces nothing on B.
async fn events_of_a_stay_with_a(a: &mut Cdp, b: &mut Cdp, page_a: &str) {
    b.events.clear();
    a.call("Page.enable", json!({}), Some(page_a)).await;
    a.call("Page.reload", json!({}), Some(page_a)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe = b.call("Browser.getVersion", json!({}), None).await;
    assert!(probe["product"].is_string());
    assert!(
        b.events
            .iter()
            .all(|e| !e["method"].as_str().unwrap_or("").starts_with("Page.")),
        "B saw A's Page events: {:?}",
        b.events
    );
}

/// eventCount counts the CDP events delivered to the session's clients.
async fn event_count_counts_events_delivered_to_clients(gw: &Gateway, session: &Value) {
    let (_, listed) = gw
        .get(&format!("/v1/sessions/{}", session["id"].as_str().unwrap()))
        .await;
    assert!(listed["eventCount"].as_u64().unwrap() >= 3, "{listed}");
}

/// A leaves; B carries on.
async fn b_carries_on_when_a_leaves(a: Cdp, b: &mut Cdp, page_b: &str) {
    a.close().await;
    assert_eq!(b.eval(page_b, "1 + 1").await, 2);
}

/// Ids are the clients' own: both may use the same id at the same time. Returns the new
/// client, still connected.
async fn clients_may_use_the_same_id_at_the_same_time(ws: &str, b: &mut Cdp) -> Cdp {
    let mut c = Cdp::connect(ws).await;
    let (rb, rc) = tokio::join!(
        b.call_full("Browser.getVersion", json!({}), None),
        c.call_full("Browser.getVersion", json!({}), None)
    );
    assert_eq!(
        (
            rb["result"]["product"].is_string(),
            rc["result"]["product"].is_string()
        ),
        (true, true)
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_pass_both_ways() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw
        .create(json!({"dimensions": {"width": 800, "height": 600}}))
        .await;
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;

    // A 3000x3000 PNG of noise does not compress: a single frame of tens of MiB.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 3000, "height": 3000, "deviceScaleFactor": 1, "mobile": false}),
        Some(&page),
    )
    .await;
    cdp.eval(
        &page,
        "(() => { const c = document.createElement('canvas'); c.width = 3000; c.height = 3000; \
         c.style = 'position:fixed;left:0;top:0'; document.body.style.margin = 0; document.body.appendChild(c); \
         const ctx = c.getContext('2d'); const img = ctx.createImageData(3000, 3000); \
         const buf = new Uint32Array(img.data.buffer); let x = 2463534242; \
         for (let i = 0; i < buf.length; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; buf[i] = x | 0xff000000; } \
         ctx.putImageData(img, 0, 0); return true; })()",
    )
    .await;
    let shot = cdp
        .call(
            "Page.captureScreenshot",
            json!({"format": "png"}),
            Some(&page),
        )
        .await;
    let data = shot["data"].as_str().unwrap();
    assert!(
        data.len() > 20 << 20,
        "screenshot reply is only {} bytes",
        data.len()
    );
    eprintln!("3000x3000 screenshot: {} MiB of base64", data.len() >> 20);

    // Client to browser: a 30 MiB command, just under the default --max-message-bytes.
    let big = "x".repeat(30 << 20);
    let len = cdp.eval(&page, &format!("'{big}'.length")).await;
    assert_eq!(len, 30 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_refused_before_the_upgrade() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let base = format!("ws://127.0.0.1:{}", gw.port);
    assert_upgrade_refused(&format!("{base}/?sessionId={}", uuid::Uuid::new_v4()), 404).await;
    assert_upgrade_refused(
        &format!("{base}/devtools/browser/{}", uuid::Uuid::new_v4()),
        404,
    )
    .await;
    assert_upgrade_refused(&format!("{base}/?sessionId=garbage"), 400).await;
    assert_upgrade_refused(&format!("{base}/"), 400).await;

    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().unwrap();
    let (status, _) = gw.get(&format!("/devtools/browser/{id}")).await;
    assert_eq!(
        status, 426,
        "a plain GET on a CDP endpoint asks for an upgrade"
    );
    gw.release(id).await;
    assert_upgrade_refused(session["websocketUrl"].as_str().unwrap(), 410).await;
    assert_upgrade_refused(&format!("{base}/devtools/browser/{id}"), 410).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_version_points_at_the_gateway() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let (status, _) = gw.get("/json/version").await;
    assert_eq!(status, 400, "no session to describe");
    let a = gw.create(json!({})).await;
    let id = a["id"].as_str().unwrap();
    let expected = format!("ws://127.0.0.1:{}/devtools/browser/{id}", gw.port);
    for path in [
        format!("/json/version?sessionId={id}"),
        format!("/json/version/?sessionId={id}"),
        format!("/devtools/browser/{id}/json/version"),
        format!("/devtools/browser/{id}/json/version/"),
        // Puppeteer's browserURL drops path and query; one live session is unambiguous.
        "/json/version".to_owned(),
    ] {
        let (status, v) = gw.get(&path).await;
        assert_eq!(status, 200, "{path}: {v}");
        assert_eq!(v["webSocketDebuggerUrl"], expected, "{path}");
        assert!(v["Browser"].as_str().unwrap().starts_with("Chrome/"), "{v}");
        assert_eq!(v["Protocol-Version"], "1.3");
    }
    let mut cdp = Cdp::connect(&expected).await;
    assert!(cdp.call("Browser.getVersion", json!({}), None).await["product"].is_string());

    let _b = gw.create(json!({})).await;
    assert_eq!(
        gw.get("/json/version").await.0,
        400,
        "ambiguous with two live sessions"
    );
    assert_eq!(
        gw.get(&format!("/json/version?sessionId={}", uuid::Uuid::new_v4()))
            .await
            .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cannot_reach_another_sessions_browser() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let victim = gw.create(json!({})).await;
    let victim_id = victim["id"].as_str().unwrap();
    let attacker = gw.create(json!({})).await;
    let pages = PageServer::start(test_pages()).await;

    // No browser listens on any TCP port: the pipe is the only way in.
    let listening = listening_socket_inodes();
    for (pid, _) in browser_pids_in(&gw.data_dir) {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = std::fs::read_link(fd.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                assert!(
                    !listening.contains(inode),
                    "browser process {pid} listens on a TCP socket"
                );
            }
        }
    }

    // A page in the attacker's browser knows the victim's id and tries the gateway itself.
    let mut cdp = Cdp::connect(attacker["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &pages.url("/")).await;
    let script = format!(
        "new Promise(resolve => {{ \
           const ws = new WebSocket('ws://127.0.0.1:{port}/?sessionId={victim_id}'); \
           ws.onopen = () => {{ ws.send(JSON.stringify({{id: 1, method: 'Browser.close'}})); resolve('opened'); }}; \
           ws.onerror = () => resolve('refused'); \
           setTimeout(() => resolve('timeout'), 5000); }})",
        port = gw.port
    );
    assert_eq!(cdp.eval(&page, &script).await, "refused");
    let release_all = format!(
        "fetch('http://127.0.0.1:{port}/v1/sessions/release', {{method: 'POST', mode: 'no-cors'}}).then(() => 'sent', () => 'failed')",
        port = gw.port
    );
    cdp.eval(&page, &release_all).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gw.session(victim_id).await["status"],
        "live",
        "the victim's session survived"
    );
    let mut victim_cdp = Cdp::connect(victim["websocketUrl"].as_str().unwrap()).await;
    let victim_page = victim_cdp.attach_first_page().await;
    assert_eq!(victim_cdp.eval(&victim_page, "1 + 1").await, 2);
}

/// Inodes of TCP sockets in LISTEN state (IPv4 and IPv6).
fn listening_socket_inodes() -> std::collections::HashSet<String> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A")
                && let Some(inode) = fields.get(9)
            {
                inodes.insert((*inode).to_owned());
            }
        }
    }
    inodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_url_routes_page_traffic_through_the_proxy() {
    let _shared = shared().await;
    // A minimal HTTP proxy on loopback that answers every request itself.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_by_proxy = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = proxy.accept().await else {
                return;
            };
            let seen = seen_by_proxy.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                seen.lock().unwrap().push(head);
                let body = "<html><body>served by the test proxy</body></html>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    let gw = Gateway::start(&[]).await;
    let session = gw
        .create(json!({"proxyUrl": format!("http://127.0.0.1:{proxy_port}")}))
        .await;
    assert_eq!(session["proxySource"], "external");
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, "http://ingot-proxy-test.invalid/hello")
        .await;
    assert_eq!(
        cdp.eval(&page, "document.body.textContent").await,
        "served by the test proxy"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l.contains("ingot-proxy-test.invalid/hello")),
        "proxy saw {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_close_from_a_page_session_and_malformed_session_ids() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().unwrap();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    // A null sessionId is not "no session": it is refused, and the client gets an answer.
    let reply = cdp.call_full("Browser.getVersion", json!({}), None).await;
    assert!(reply["result"]["product"].is_string());
    cdp.send_raw(json!({"id": 77, "method": "Browser.getVersion", "sessionId": null}).to_string())
        .await;
    let reply = cdp
        .call_full("Runtime.evaluate", json!({"expression": "1"}), Some(&page))
        .await;
    assert!(reply["result"].is_object(), "{reply}");
    let refused = cdp
        .events
        .iter()
        .find(|m| m["id"] == 77)
        .cloned()
        .expect("an answer to id 77");
    assert_eq!(refused["error"]["code"], -32600, "{refused}");

    // Browser.close sent to a page session still ends the session cleanly.
    let reply = cdp.call_full("Browser.close", json!({}), Some(&page)).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let (ended, _) = gw.wait_ended(id, secs(5)).await;
    assert_eq!(
        (ended["status"].clone(), ended["releaseReason"].clone()),
        (json!("released"), json!("browser_closed"))
    );
    gw.assert_clean(secs(5)).await;
}

/// `live-details` shows the pages of a real browser: the URL and title of the page a
/// client navigated, and a tab the client opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_details_show_what_the_browser_shows() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let pages = PageServer::start(test_pages()).await;
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &pages.url("/")).await;
    cdp.call(
        "Target.createTarget",
        json!({"url": pages.url("/second")}),
        None,
    )
    .await;
    let deadline = std::time::Instant::now() + secs(10);
    let details = loop {
        let (status, details) = gw.get(&format!("/v1/sessions/{id}/live-details")).await;
        assert_eq!(status, 200, "{details}");
        let titles: Vec<&str> = details["pages"]
            .as_array()
            .expect("pages")
            .iter()
            .filter_map(|p| p["title"].as_str())
            .collect();
        if titles.contains(&"ingot test") && titles.contains(&"second") {
            break details;
        }
        assert!(std::time::Instant::now() < deadline, "{details}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = details["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .find(|p| p["title"] == "ingot test")
        .expect("the navigated page");
    assert_eq!(first["url"], pages.url("/"), "{details}");
    assert_eq!(details["wsUrl"], session["websocketUrl"]);
    cdp.close().await;
    gw.release(&id).await;
    gw.assert_clean(secs(10)).await;
}

/// `fullscreen: true` gives a 1920×1080 page that fills its screen (`innerHeight` equals
/// `screen.height`), whatever `dimensions` says, and is echoed back. Every page fills its
/// screen, which is the page's size: headless Chromium's own screen is 800×600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fullscreen_pages_fill_a_1920_by_1080_screen() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let metrics = "[innerWidth, innerHeight, screen.width, screen.height]";
    for (body, want) in [
        (
            json!({"fullscreen": true, "dimensions": {"width": 800, "height": 600}}),
            [1920, 1080, 1920, 1080],
        ),
        (
            json!({"dimensions": {"width": 1280, "height": 720}}),
            [1280, 720, 1280, 720],
        ),
    ] {
        let session = gw.create(body.clone()).await;
        let fullscreen = body["fullscreen"] == true;
        assert_eq!(session["fullscreen"], fullscreen, "{session}");
        if fullscreen {
            assert_eq!(
                session["dimensions"],
                json!({"width": 1920, "height": 1080})
            );
        }
        let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
        let page = cdp.attach_first_page().await;
        assert_eq!(cdp.eval(&page, metrics).await, json!(want), "{body}");
        cdp.close().await;
        gw.release(session["id"].as_str().expect("id")).await;
    }
    let (status, refused) = gw.post("/v1/sessions", json!({"fullscreen": "yes"})).await;
    assert_eq!(status, 400, "{refused}");
    gw.assert_clean(secs(10)).await;
}
