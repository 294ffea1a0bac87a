//! The egress policy, from inside a real session's browser: every browser's traffic goes
//! through its own forwarder, which refuses link-local and metadata addresses and the
//! gateway's own ports (by address or by a name it resolves itself), serves pages on
//! 127.0.0.1 unless `--egress-deny` says otherwise, lets `--egress-allow` reopen a port,
//! and cannot be used as another session's `proxyUrl`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// A session with its first page attached.
async fn open_page(gw: &Gateway, body: Value) -> (Value, Cdp, String) {
    let session = gw.create(body).await;
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    (session, cdp, page)
}

/// What the page shows after navigating to `url`.
async fn text_at(cdp: &mut Cdp, page: &str, url: &str) -> String {
    cdp.navigate(page, url).await;
    let text = cdp
        .eval(page, "document.body ? document.body.innerText : ''")
        .await;
    text.as_str().unwrap_or_default().to_owned()
}

/// How a `fetch` of `url` from the page ended, and how long it took.
async fn fetch_from(cdp: &mut Cdp, page: &str, url: &str) -> (String, Duration) {
    let started = Instant::now();
    let outcome = cdp
        .eval(
            page,
            &format!(
                "fetch({url:?}).then(r => r.text().then(t => 'status ' + r.status + ': ' + t), e => 'failed: ' + e)"
            ),
        )
        .await;
    (
        outcome.as_str().unwrap_or_default().to_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_cannot_reach_metadata_or_the_gateway_but_reaches_local_pages() {
    let _shared = shared().await;
    let site = PageServer::start(vec![("/", "<title>local</title>served".into())]).await;
    let gw = Gateway::start(&[]).await;
    let (session, mut cdp, page) = open_page(&gw, json!({})).await;

    let shown = text_at(&mut cdp, &page, "http://169.254.169.254/latest/meta-data/").await;
    assert!(
        shown.contains("ingot egress policy: 169.254.169.254 is the cloud metadata address"),
        "the proxy's refusal names the rule: {shown:?}"
    );
    let (fetched, took) = fetch_from(&mut cdp, &page, "https://169.254.169.254/").await;
    assert!(fetched.starts_with("failed"), "{fetched}");
    assert!(took < secs(5), "refused at once, not timed out: {took:?}");

    let healthz = format!("http://127.0.0.1:{}/healthz", gw.port);
    let shown = text_at(&mut cdp, &page, &healthz).await;
    assert!(
        shown.contains("ingot egress policy")
            && shown.contains(&format!("127.0.0.1:{} is the gateway's own port", gw.port)),
        "{shown:?}"
    );
    // A name is resolved by the forwarder, which checks the addresses it gets.
    let by_name = format!("http://localhost:{}/", gw.port);
    let shown = text_at(&mut cdp, &page, &by_name).await;
    assert!(shown.contains("the gateway's own port"), "{shown:?}");

    assert_eq!(text_at(&mut cdp, &page, &site.url("/")).await, "served");
    assert_eq!(cdp.eval(&page, "document.title").await, "local");
    assert!(
        gw.log_text().contains("egress refused"),
        "refusals are logged at debug"
    );

    let seen = gw.session(session["id"].as_str().expect("id")).await;
    assert_eq!(
        seen["proxyBytesUsed"], 0,
        "without a proxyUrl nothing is counted as proxy traffic: {seen}"
    );
    cdp.close().await;
    gw.release(session["id"].as_str().expect("id")).await;
    gw.assert_clean(secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_deny_closes_loopback_and_egress_allow_reopens_one_port() {
    let _shared = shared().await;
    let closed = PageServer::start(vec![("/", "<title>closed</title>closed".into())]).await;
    let open = PageServer::start(vec![("/", "<title>open</title>open".into())]).await;
    let allow = format!("127.0.0.1:{}", open.port);
    let gw = Gateway::start(&["--egress-deny", "127.0.0.0/8", "--egress-allow", &allow]).await;
    let (session, mut cdp, page) = open_page(&gw, json!({})).await;

    let shown = text_at(&mut cdp, &page, &closed.url("/")).await;
    assert!(
        shown.contains(&format!(
            "ingot egress policy: 127.0.0.1:{} matches --egress-deny 127.0.0.0/8",
            closed.port
        )),
        "{shown:?}"
    );
    assert_eq!(text_at(&mut cdp, &page, &open.url("/")).await, "open");
    cdp.close().await;
    gw.release(session["id"].as_str().expect("id")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_egress_entries_stop_the_start_naming_the_flag() {
    let _shared = shared().await;
    let err = refused_start(&["--egress-deny", "10.0.0.0/8,10.0.0.0/40"]).await;
    assert!(
        err.contains("--egress-deny") && err.contains("10.0.0.0/40"),
        "{err}"
    );
    let err = refused_start(&["--egress-allow", "[fd00::/8]443"]).await;
    assert!(err.contains("--egress-allow"), "{err}");
}

/// The forwarder's port, from the browser's own command line.
fn forwarder_port(gw: &Gateway, session_id: &str) -> u16 {
    let pid = browser_leader(&gw.data_dir, session_id);
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let flag = cmdline
        .split('\0')
        .find_map(|a| a.strip_prefix("--proxy-server=http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no forwarder in {cmdline:?}"));
    flag.parse().expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_session_cannot_use_a_sessions_forwarder() {
    let _shared = shared().await;
    let site = PageServer::start(vec![("/", "<title>site</title>site".into())]).await;
    let gw = Gateway::start(&[]).await;
    // The first tenant's session goes through a proxy with credentials.
    let upstream = format!("http://alice:s3cret@127.0.0.1:{}", free_port());
    let (first, first_cdp, _) = open_page(&gw, json!({"proxyUrl": upstream})).await;
    let first_id = first["id"].as_str().expect("id");
    let port = forwarder_port(&gw, first_id);

    // The second tenant names that forwarder as its proxy: its own forwarder refuses to
    // connect there.
    let stolen = format!("http://127.0.0.1:{port}");
    let (second, mut cdp, page) = open_page(&gw, json!({"proxyUrl": stolen})).await;
    let shown = text_at(&mut cdp, &page, &site.url("/")).await;
    assert!(
        shown.contains(&format!(
            "ingot egress policy: 127.0.0.1:{port} is an internal forwarder's port"
        )),
        "{shown:?}"
    );
    // Nor can a page of a plain session reach it.
    let (third, mut third_cdp, third_page) = open_page(&gw, json!({})).await;
    let shown = text_at(
        &mut third_cdp,
        &third_page,
        &format!("http://127.0.0.1:{port}/"),
    )
    .await;
    assert!(shown.contains("internal forwarder"), "{shown:?}");
    assert_eq!(
        gw.session(first_id).await["proxyBytesUsed"],
        0,
        "nothing went through the first tenant's proxy account"
    );
    for cdp in [first_cdp, cdp, third_cdp] {
        cdp.close().await;
    }
    for session in [&first, &second, &third] {
        gw.release(session["id"].as_str().expect("id")).await;
    }
    gw.assert_clean(secs(10)).await;
}

/// A WebSocket server on loopback that echoes each text message; its port.
async fn echo_server() -> u16 {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.ok()?;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() {
                        ws.send(message).await.ok()?;
                    }
                }
                Some(())
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_websockets_go_through_the_forwarder() {
    let _shared = shared().await;
    let site = PageServer::start(vec![("/", "<title>ws</title>ws".into())]).await;
    let echo = echo_server().await;
    let gw = Gateway::start(&[]).await;
    let (session, mut cdp, page) = open_page(&gw, json!({})).await;
    cdp.navigate(&page, &site.url("/")).await;
    let talk = |url: String| {
        format!(
            "new Promise(r => {{ const ws = new WebSocket({url:?}); \
             ws.onopen = () => ws.send('hi'); ws.onmessage = e => r('got ' + e.data); \
             ws.onerror = () => r('error'); setTimeout(() => r('timeout'), 10000); }})"
        )
    };
    let echoed = cdp
        .eval(&page, &talk(format!("ws://127.0.0.1:{echo}/")))
        .await;
    assert_eq!(echoed, "got hi");
    let gateway = format!(
        "ws://127.0.0.1:{}/v1/sessions/{}",
        gw.port,
        session["id"].as_str().expect("id")
    );
    assert_eq!(cdp.eval(&page, &talk(gateway)).await, "error");
    assert!(
        gw.log_text().contains("the gateway's own port"),
        "refused by the policy"
    );
    cdp.close().await;
    gw.release(session["id"].as_str().expect("id")).await;
}

/// A SOCKS5 proxy on loopback (no authentication, CONNECT only) that records the
/// destinations it was asked for; its port.
async fn socks5_proxy(asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let asked = asked.clone();
            tokio::spawn(async move {
                let mut hello = [0u8; 3];
                client.read_exact(&mut hello).await.ok()?;
                client.write_all(&[5, 0]).await.ok()?;
                let mut request = [0u8; 4];
                client.read_exact(&mut request).await.ok()?;
                let host = match request[3] {
                    1 => {
                        let mut ip = [0u8; 4];
                        client.read_exact(&mut ip).await.ok()?;
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    3 => {
                        let mut name = vec![0u8; usize::from(client.read_u8().await.ok()?)];
                        client.read_exact(&mut name).await.ok()?;
                        String::from_utf8(name).ok()?
                    }
                    _ => return None,
                };
                let port = client.read_u16().await.ok()?;
                asked.lock().unwrap().push(format!("{host}:{port}"));
                let mut server = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .ok()?;
                client
                    .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                    .await
                    .ok()?;
                tokio::io::copy_bidirectional(&mut client, &mut server)
                    .await
                    .ok()
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_proxies_are_reached_through_the_forwarder_and_checked() {
    let _shared = shared().await;
    let site = PageServer::start(vec![("/", "<title>s</title>via socks".into())]).await;
    let gw = Gateway::start(&[]).await;
    let asked = std::sync::Arc::default();
    let socks = socks5_proxy(std::sync::Arc::clone(&asked)).await;
    let (first, mut cdp, page) = open_page(
        &gw,
        json!({"proxyUrl": format!("socks5://127.0.0.1:{socks}")}),
    )
    .await;
    assert_eq!(text_at(&mut cdp, &page, &site.url("/")).await, "via socks");
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked.contains(&format!("127.0.0.1:{}", site.port)),
        "the page came through the SOCKS proxy: {asked:?}"
    );
    cdp.close().await;

    // An upstream at a denied address: every request is refused, and the session lives on.
    for proxy in ["http://169.254.169.254:80", "https://169.254.169.254:443"] {
        let (session, mut cdp, page) = open_page(&gw, json!({"proxyUrl": proxy})).await;
        let started = Instant::now();
        let shown = text_at(&mut cdp, &page, &site.url("/")).await;
        assert!(
            shown.contains("ingot egress policy: 169.254.169.254 is the cloud metadata address"),
            "{proxy}: {shown:?}"
        );
        assert!(started.elapsed() < secs(5), "{proxy}: refused at once");
        let id = session["id"].as_str().expect("id");
        assert_eq!(gw.session(id).await["status"], "live");
        cdp.close().await;
        gw.release(id).await;
    }
    gw.release(first["id"].as_str().expect("id")).await;
    gw.assert_clean(secs(10)).await;
}

/// A browser context made over CDP with its own `proxyServer` would bypass the forwarder
/// (without the CDP guard's rule, `direct://` and `http://127.0.0.1:1` both loaded the
/// gateway's `/healthz`, loopback bypassing a context's proxy). The guard refuses
/// `proxyServer` in `Target.createBrowserContext`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_context_cannot_set_its_own_proxy() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let (session, mut cdp, _page) = open_page(&gw, json!({})).await;
    let healthz = format!("http://127.0.0.1:{}/healthz", gw.port);
    for params in [
        json!({"proxyServer": "direct://"}),
        json!({"proxyServer": "http://127.0.0.1:1", "proxyBypassList": "<-loopback>"}),
    ] {
        let made = cdp
            .call_full("Target.createBrowserContext", params.clone(), None)
            .await;
        let Some(context) = made["result"]["browserContextId"].as_str() else {
            assert_eq!(made["error"]["code"], -32000, "{made}");
            continue;
        };
        let target = cdp
            .call(
                "Target.createTarget",
                json!({"url": "about:blank", "browserContextId": context}),
                None,
            )
            .await;
        let attached = cdp
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
                None,
            )
            .await;
        let page = attached["sessionId"].as_str().expect("session").to_owned();
        let shown = text_at(&mut cdp, &page, &healthz).await;
        assert!(
            !shown.contains("\"ok\""),
            "{params}: a context's own proxy reached the gateway: {shown:?}"
        );
    }
    cdp.close().await;
    gw.release(session["id"].as_str().expect("id")).await;
}
