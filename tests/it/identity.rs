//! What a session's pages say they are (issue 22), read from pages on real Chromium, on
//! both engines (the headless shell and full Chromium's `--headless=new`) and headful: no
//! `HeadlessChrome` in `navigator.userAgent`, `userAgentData.brands` or the `User-Agent` and
//! `Sec-CH-UA` headers; a session's `userAgent` changes the string and the client hints agree
//! with it; the first page, a page a client opens with `Target.createTarget` and one a page
//! opens with `window.open` all get it from their first request; a client's own override wins.
//!
//! One thing Chromium does not keep: `navigator.platform`. The override sets it, but once a
//! client has its own CDP session on a page (every client does), each new document of that
//! page reports the browser's own again (a session without an override resets it; measured
//! on Chromium 156, shell and full). `userAgentData.platform` and `Sec-CH-UA-Platform` do
//! follow the override; the test pins both behaviours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// How each case runs: the engine, and whether the session is headful.
const SHELL: (&str, bool) = ("shell", false);
const FULL: (&str, bool) = ("chromium", false);
const HEADFUL: (&str, bool) = ("chromium", true);
const WINDOWS_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

/// What a page reports of itself.
const READ_IDENTITY: &str = r#"(async () => {
    const d = navigator.userAgentData;
    return {
        ua: navigator.userAgent,
        platform: navigator.platform,
        webdriver: navigator.webdriver,
        brands: d ? d.brands : null,
        mobile: d ? d.mobile : null,
        high: d ? await d.getHighEntropyValues(['platform', 'fullVersionList']) : null,
    };
})()"#;

/// A loopback HTTP server that answers every path with a small page and keeps each
/// request's headers (names lower-cased) by path.
struct HeaderServer {
    port: u16,
    seen: Arc<Mutex<HashMap<String, HashMap<String, String>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl HeaderServer {
    async fn start() -> HeaderServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Arc<Mutex<HashMap<String, HashMap<String, String>>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_one(stream, record.clone()));
            }
        });
        HeaderServer {
            port,
            seen,
            _task: task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The headers of the first request for `path`, once it came (within 20 s).
    async fn headers(&self, path: &str) -> HashMap<String, String> {
        let deadline = Instant::now() + secs(20);
        loop {
            if let Some(h) = self.seen.lock().unwrap().get(path) {
                return h.clone();
            }
            assert!(Instant::now() < deadline, "no request for {path}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve_one(
    mut stream: tokio::net::TcpStream,
    seen: Arc<Mutex<HashMap<String, HashMap<String, String>>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    let mut read = 0;
    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
        match stream.read(&mut buf[read..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
    let head = String::from_utf8_lossy(&buf[..read]).to_string();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let host = headers.get("host").cloned().unwrap_or_default();
    seen.lock().unwrap().entry(path.clone()).or_insert(headers);
    let (kind, body) = body_of(&path, &host);
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {kind}; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// What a frame or worker reports of itself, as one string.
const REPORT: &str = "navigator.userAgent + ' | ' + JSON.stringify(navigator.userAgentData && navigator.userAgentData.brands)";

/// The page at `path`: `/nested` runs a dedicated worker and a cross-site frame (`localhost`
/// in place of `127.0.0.1`, so its own process where sites are isolated), which report to
/// it; every other path is a plain page.
fn body_of(path: &str, host: &str) -> (&'static str, String) {
    let port = host.rsplit(':').next().unwrap_or("");
    match path {
        "/nested" => (
            "text/html",
            format!(
                "<html><body><script>window.results = {{}};\
             new Worker('/worker.js').onmessage = e => window.results.worker = e.data;\
             window.onmessage = e => window.results.frame = e.data;</script>\
             <iframe src='http://localhost:{port}/frame'></iframe></body></html>"
            ),
        ),
        "/worker.js" => ("text/javascript", format!("postMessage({REPORT})")),
        "/frame" => (
            "text/html",
            format!("<script>parent.postMessage({REPORT}, '*')</script>"),
        ),
        _ => (
            "text/html",
            "<html><head><title>identity</title></head><body>identity</body></html>".into(),
        ),
    }
}

/// The brands as `name/version` strings.
fn brands(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|b| {
                    format!(
                        "{}/{}",
                        b["brand"].as_str().unwrap_or(""),
                        b["version"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that nothing a page reports or sends says headless.
fn assert_not_headless(identity: &Value, headers: &HashMap<String, String>) {
    let ua = identity["ua"].as_str().expect("a user agent");
    assert!(!ua.contains("Headless"), "{identity}");
    assert_eq!(headers.get("user-agent").map(String::as_str), Some(ua));
    for brand in brands(&identity["brands"]) {
        assert!(!brand.contains("Headless"), "{identity}");
    }
    for brand in brands(&identity["high"]["fullVersionList"]) {
        assert!(!brand.contains("Headless"), "{identity}");
    }
    let ch = headers.get("sec-ch-ua").expect("a Sec-CH-UA header");
    assert!(
        !ch.contains("Headless") && ch.contains("\"Chromium\""),
        "{ch}"
    );
    assert_eq!(identity["webdriver"], json!(false), "{identity}");
}

/// Attaches to the page target whose URL is `url` (waiting for it up to 20 s).
async fn attach_url(cdp: &mut Cdp, url: &str) -> String {
    let deadline = Instant::now() + secs(20);
    loop {
        let targets = cdp.call("Target.getTargets", json!({}), None).await;
        let found = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page" && t["url"] == url))
            .map(|t| t["targetId"].clone());
        if let Some(target) = found {
            let attached = cdp
                .call(
                    "Target.attachToTarget",
                    json!({"targetId": target, "flatten": true}),
                    None,
                )
                .await;
            return attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned();
        }
        assert!(Instant::now() < deadline, "no page at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One session without `userAgent` on the browser at `chromium`: the first page before and
/// after a load, a `Target.createTarget` page, a `window.open` page, and a client override.
async fn default_identity((engine, headful): (&str, bool)) {
    let gw = Gateway::start(&["--engine", engine]).await;
    let server = HeaderServer::start().await;
    let session = gw.create(json!({"headless": !headful})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    let reported = session["userAgent"].as_str().unwrap_or("").to_owned();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;

    // The first page, open since launch, before anything else: already overridden.
    let first = cdp.attach_first_page().await;
    let blank_ua = cdp.eval(&first, "navigator.userAgent").await;
    assert!(
        !blank_ua.as_str().unwrap().contains("Headless"),
        "{blank_ua}"
    );
    assert!(
        blank_ua.as_str().unwrap().contains(" Chrome/"),
        "{blank_ua}"
    );
    assert!(blank_ua.as_str().unwrap().contains(".0.0.0 "), "{blank_ua}");
    assert_eq!(
        reported,
        blank_ua.as_str().unwrap(),
        "the Session JSON's userAgent"
    );

    cdp.navigate(&first, &server.url("/first")).await;
    let identity = cdp.eval(&first, READ_IDENTITY).await;
    assert_not_headless(&identity, &server.headers("/first").await);
    assert_eq!(identity["high"]["platform"], "Linux", "{identity}");
    let major = blank_ua
        .as_str()
        .unwrap()
        .split(" Chrome/")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        brands(&identity["brands"]).contains(&format!("Chromium/{major}")),
        "{identity}"
    );

    // A page the client opens: its very first request is overridden.
    let created = server.url("/created");
    cdp.call("Target.createTarget", json!({"url": created}), None)
        .await;
    let headers = server.headers("/created").await;
    let page = attach_url(&mut cdp, &created).await;
    assert_not_headless(&cdp.eval(&page, READ_IDENTITY).await, &headers);

    // A dedicated worker and a cross-site frame of a page.
    cdp.navigate(&first, &server.url("/nested")).await;
    let deadline = Instant::now() + secs(20);
    let results = loop {
        let results = cdp.eval(&first, "window.results").await;
        if results["worker"].is_string() && results["frame"].is_string() {
            break results;
        }
        assert!(Instant::now() < deadline, "no reports: {results}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for from in ["worker", "frame"] {
        let report = results[from].as_str().unwrap();
        assert!(
            report.starts_with(blank_ua.as_str().unwrap()),
            "{from}: {report}"
        );
        assert!(!report.contains("Headless"), "{from}: {report}");
    }

    // A page a page opens (with a user's gesture: full Chromium blocks other popups).
    let popup = server.url("/popup");
    let open = json!({"expression": format!("window.open('{popup}'), true"), "userGesture": true});
    cdp.call("Runtime.evaluate", open, Some(&first)).await;
    let headers = server.headers("/popup").await;
    let page = attach_url(&mut cdp, &popup).await;
    assert_not_headless(&cdp.eval(&page, READ_IDENTITY).await, &headers);

    // A client's own override wins over the gateway's.
    cdp.call(
        "Emulation.setUserAgentOverride",
        json!({"userAgent": "client/1"}),
        Some(&first),
    )
    .await;
    assert_eq!(cdp.eval(&first, "navigator.userAgent").await, "client/1");

    cdp.close().await;
    gw.release(&id).await;
    gw.assert_clean(secs(10)).await;
}

/// One session with a Windows Chrome `userAgent`: the string and every client hint agree.
async fn requested_identity((engine, headful): (&str, bool)) {
    let gw = Gateway::start(&["--engine", engine]).await;
    let server = HeaderServer::start().await;
    let session = gw
        .create(json!({"userAgent": WINDOWS_UA, "headless": !headful}))
        .await;
    let id = session["id"].as_str().unwrap().to_owned();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let first = cdp.attach_first_page().await;
    // `navigator.platform` follows the override on the first document only: once a client
    // has a session of its own on the page, Chromium resets it to its own on every new
    // document (pinned here; see the module's doc).
    assert_eq!(cdp.eval(&first, "navigator.platform").await, "Win32");
    cdp.navigate(&first, &server.url("/windows")).await;
    let identity = cdp.eval(&first, READ_IDENTITY).await;
    let headers = server.headers("/windows").await;
    assert_eq!(identity["ua"], WINDOWS_UA);
    assert_eq!(identity["platform"], "Linux x86_64", "{identity}");
    assert_eq!(identity["mobile"], false, "{identity}");
    assert_eq!(identity["high"]["platform"], "Windows", "{identity}");
    assert_eq!(
        brands(&identity["brands"]),
        ["Not_A Brand/8", "Chromium/120"],
        "{identity}"
    );
    assert_eq!(
        brands(&identity["high"]["fullVersionList"]),
        ["Not_A Brand/8.0.0.0", "Chromium/120.0.0.0"],
        "{identity}"
    );
    assert_eq!(
        headers.get("user-agent").map(String::as_str),
        Some(WINDOWS_UA)
    );
    assert_eq!(
        headers.get("sec-ch-ua").map(String::as_str),
        Some(r#""Not_A Brand";v="8", "Chromium";v="120""#)
    );
    assert_eq!(
        headers.get("sec-ch-ua-platform").map(String::as_str),
        Some(r#""Windows""#)
    );
    assert_eq!(
        headers.get("sec-ch-ua-mobile").map(String::as_str),
        Some("?0")
    );
    assert_eq!(identity["webdriver"], json!(false), "{identity}");

    // A page the client opens gets it too, from its first request.
    let created = server.url("/windows-created");
    cdp.call("Target.createTarget", json!({"url": created}), None)
        .await;
    let headers = server.headers("/windows-created").await;
    assert_eq!(
        headers.get("user-agent").map(String::as_str),
        Some(WINDOWS_UA)
    );
    assert_eq!(
        headers.get("sec-ch-ua-platform").map(String::as_str),
        Some(r#""Windows""#)
    );

    cdp.close().await;
    gw.release(&id).await;
    gw.assert_clean(secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_pages_do_not_say_headless() {
    let _shared = shared().await;
    default_identity(SHELL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_do_not_say_headless() {
    let _shared = shared().await;
    default_identity(FULL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_client_hints_follow_the_sessions_user_agent() {
    let _shared = shared().await;
    requested_identity(SHELL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_client_hints_follow_the_sessions_user_agent() {
    let _shared = shared().await;
    requested_identity(FULL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headful_pages_do_not_say_headless() {
    let _shared = shared().await;
    default_identity(HEADFUL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headful_client_hints_follow_the_sessions_user_agent() {
    let _shared = shared().await;
    requested_identity(HEADFUL).await;
}
