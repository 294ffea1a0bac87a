//! `proxyUrl` with a user and password, against a real proxy that wants Basic
//! authentication (Debian's tinyproxy, started by the test on loopback): the right
//! credentials load a page through it, wrong ones do not and the session stays live, and
//! the credentials appear nowhere: not in the log, the Session JSON or the usage database.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// A tinyproxy on a loopback port that wants `alice:s3cret`; killed when dropped.
struct Tinyproxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start() -> Tinyproxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let config = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\n\
                 BasicAuth alice s3cret\nLogLevel Info\nLogFile \"{}\"\n",
                log.display()
            ),
        )
        .expect("config");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run tinyproxy ({e}): apt-get install tinyproxy (tests/run.sh installs it)")
            });
        let deadline = std::time::Instant::now() + secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tinyproxy did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Tinyproxy { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a page saw loading `url` in a new session behind `proxy_url`: the HTTP status of
/// the document and its title; and the session.
async fn load_through(
    gw: &Gateway,
    proxy_url: &str,
    url: &str,
) -> (Option<u64>, String, serde_json::Value) {
    let session = gw.create(json!({"proxyUrl": proxy_url})).await;
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, url).await;
    let title = cdp.eval(&page, "document.title").await;
    let status = cdp
        .eval(
            &page,
            "performance.getEntriesByType('navigation')[0]?.responseStatus ?? null",
        )
        .await
        .as_u64();
    cdp.close().await;
    (
        status,
        title.as_str().unwrap_or_default().to_owned(),
        session,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_credentials_carries_the_session_and_keeps_them_secret() {
    let _shared = shared().await;
    let proxy = Tinyproxy::start();
    let site = PageServer::start(vec![("/", "<title>via proxy</title>ok".into())]).await;
    let gw = Gateway::start(&[]).await;
    let good = format!("http://alice:s3cret@127.0.0.1:{}", proxy.port);
    let (status, title, session) = load_through(&gw, &good, &site.url("/")).await;
    assert_eq!(
        (status, title.as_str()),
        (Some(200), "via proxy"),
        "{}",
        proxy.log()
    );
    assert!(
        proxy.log().contains("GET"),
        "the page came through the proxy: {}",
        proxy.log()
    );
    let id = session["id"].as_str().expect("id").to_owned();
    let seen = gw.session(&id).await;
    assert!(
        seen["proxyBytesUsed"].as_u64().expect("bytes") > 0,
        "{seen}"
    );
    assert_eq!(seen["status"], "live");

    let bad = format!("http://alice:wrong@127.0.0.1:{}", proxy.port);
    let (status, title, other) = load_through(&gw, &bad, &site.url("/")).await;
    // The proxy's own refusal reaches the page unchanged: tinyproxy answers wrong
    // credentials with 401 (and missing ones with 407).
    assert!(
        matches!(status, Some(401 | 407)),
        "the page gets the proxy's refusal, not the site: {status:?} {title}"
    );
    assert_ne!(
        title, "via proxy",
        "wrong credentials must not load the page"
    );
    let other_id = other["id"].as_str().expect("id").to_owned();
    assert_eq!(
        gw.session(&other_id).await["status"],
        "live",
        "the session stays live"
    );

    let bare = format!("http://127.0.0.1:{}", proxy.port);
    let (status, _, third) = load_through(&gw, &bare, &site.url("/")).await;
    assert_eq!(
        status,
        Some(407),
        "without credentials the proxy asks for them"
    );
    gw.release(third["id"].as_str().expect("id")).await;

    gw.release(&id).await;
    gw.release(&other_id).await;
    let carried = seen["proxyBytesUsed"].as_u64().expect("bytes");
    let recorded: String = rusqlite::Connection::open(gw.data_dir.join("usage.sqlite3"))
        .expect("database")
        .query_row(
            "SELECT details FROM sessions WHERE session_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .expect("record");
    let recorded: serde_json::Value = serde_json::from_str(&recorded).expect("JSON");
    assert!(
        recorded["proxyBytesUsed"].as_u64().expect("in the record") >= carried,
        "history keeps the bytes the proxy carried: {recorded}"
    );
    let (_, listed) = gw.get("/v1/sessions").await;
    let database = std::fs::read(gw.data_dir.join("usage.sqlite3")).expect("database");
    for secret in ["s3cret", "YWxpY2U6czNjcmV0"] {
        assert!(!gw.log_text().contains(secret), "{secret} in the log");
        assert!(!listed.to_string().contains(secret), "{secret} in the JSON");
        assert!(
            !database
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret} in the usage database"
        );
    }
    gw.assert_clean(secs(10)).await;
}
