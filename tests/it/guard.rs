//! The CDP guard and the caps on one session's CDP traffic, against real Chromium: a
//! download directory aimed at another session's files lands in the caller's own,
//! `DOM.setFileInputFiles` takes the session's own files and nothing outside them, the 33rd
//! client gets 429, an oversize message closes only its client, `Target.createTarget` and
//! `window.open` stop at the page cap, and a page's download over `--max-file-bytes` is
//! cancelled and never listed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A loopback server of two downloads (`/small.bin`, 16 bytes, and `/big.bin`, `big`
/// bytes written slowly) and a page (`/`) with links to them.
async fn download_server(big: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let mut read = 0;
                while !head[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < head.len() {
                    match stream.read(&mut head[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let head = String::from_utf8_lossy(&head[..read]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (kind, length) = match path.as_str() {
                    "/small.bin" => ("application/octet-stream", 16),
                    "/big.bin" => ("application/octet-stream", big),
                    _ => {
                        let page = "<title>downloads</title><a id=small href=/small.bin download>s</a>\
                                    <a id=big href=/big.bin download>b</a>";
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                            page.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        return;
                    }
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-disposition: attachment\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'd'; 64 << 10];
                let mut left = length;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                    if length > 16 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
        }
    });
    port
}

/// The names of the files session `id` lists.
async fn listed(gw: &Gateway, id: &str) -> Vec<String> {
    let (status, list) = gw.get(&format!("/v1/sessions/{id}/files")).await;
    assert_eq!(status, 200, "{list}");
    list["data"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|f| f["path"].as_str())
                .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until session `id` lists `name`.
async fn wait_listed(gw: &Gateway, id: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listed(gw, id).await.iter().any(|n| n == name) {
        assert!(Instant::now() < deadline, "{name} never listed for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn id(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
}

async fn connect(session: &Value) -> Cdp {
    Cdp::connect(session["websocketUrl"].as_str().expect("websocketUrl")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_directory_aimed_at_another_session_lands_in_the_callers_own() {
    let _shared = shared().await;
    let port = download_server(0).await;
    let mut gw = Gateway::start(&["--max-sessions", "2"]).await;
    let victim = gw.create(json!({})).await;
    let attacker = gw.create(json!({})).await;
    let victim_files = gw.data_dir.join("files").join(id(&victim));
    let mut cdp = connect(&attacker).await;
    let params = json!({"behavior": "allow", "downloadPath": victim_files, "eventsEnabled": true});
    cdp.call("Browser.setDownloadBehavior", params, None).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &format!("http://127.0.0.1:{port}/"))
        .await;
    cdp.eval(&page, "document.querySelector('#small').click()")
        .await;
    wait_listed(&gw, &id(&attacker), "small.bin").await;
    assert!(
        listed(&gw, &id(&victim)).await.is_empty(),
        "nothing planted"
    );
    cdp.close().await;
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_inputs_take_the_sessions_own_files_and_nothing_outside() {
    let _shared = shared().await;
    let site = PageServer::start(vec![("/", "<input id=pick type=file>".into())]).await;
    let mut gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let sid = id(&session);
    let mut cdp = connect(&session).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/")).await;
    let document = cdp.call("DOM.getDocument", json!({}), Some(&page)).await;
    let input = cdp
        .call(
            "DOM.querySelector",
            json!({"nodeId": document["root"]["nodeId"], "selector": "#pick"}),
            Some(&page),
        )
        .await;
    let keys = gw.data_dir.join("usage.sqlite3");
    for outside in [
        "/etc/passwd",
        keys.to_str().expect("UTF-8"),
        "../../usage.sqlite3",
    ] {
        let reply = cdp
            .call_full(
                "DOM.setFileInputFiles",
                json!({"files": [outside], "nodeId": input["nodeId"]}),
                Some(&page),
            )
            .await;
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("may only name files in this session's files directory"),
            "{outside}: {reply}"
        );
    }
    let count = "document.querySelector('#pick').files.length";
    assert_eq!(cdp.eval(&page, count).await, 0);

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"own bytes".to_vec()).file_name("own.txt"),
    );
    let uploaded: Value = gw
        .http
        .post(gw.url(&format!("/v1/sessions/{sid}/files")))
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("File JSON");
    let path = uploaded["path"].as_str().expect("path");
    for name in [path, "own.txt"] {
        cdp.call(
            "DOM.setFileInputFiles",
            json!({"files": [name], "nodeId": input["nodeId"]}),
            Some(&page),
        )
        .await;
        let read = cdp
            .eval(
                &page,
                "(async () => { const f = document.querySelector('#pick').files[0]; \
                 return f.name + ':' + await f.text(); })()",
            )
            .await;
        assert_eq!(read, "own.txt:own bytes", "{name}");
    }
    cdp.close().await;
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_33rd_client_gets_429_and_an_oversize_message_closes_only_its_client() {
    let _shared = shared().await;
    let mut gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let url = session["websocketUrl"].as_str().expect("url").to_owned();
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(Cdp::connect(&url).await);
    }
    match Cdp::try_connect(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("JSON");
            assert_eq!(body["error"]["code"], "too_many_clients", "{body}");
        }
        Err(e) => panic!("the 33rd client failed otherwise: {e}"),
        Ok(_) => panic!("the 33rd client was accepted"),
    }
    // One client sends a message over the default 32 MiB: it alone is closed with 1009.
    // The gateway refuses the frame from its header, so its close frame is read while the
    // message is still being written.
    clients.pop().expect("a client").close().await;
    let (big, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("a place is free again");
    let command = json!({"id": 1, "method": "Runtime.evaluate",
        "params": {"expression": "x".repeat(33 << 20)}});
    let (mut write, mut read) = futures_util::StreamExt::split(big);
    let writing = tokio::spawn(async move {
        let message = tokio_tungstenite::tungstenite::Message::Text(command.to_string().into());
        let _ = futures_util::SinkExt::send(&mut write, message).await;
    });
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = futures_util::StreamExt::next(&mut read).await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) = frame {
                return Some(frame);
            }
        }
        None
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    writing.abort();
    let version = clients[0].call("Browser.getVersion", json!({}), None).await;
    assert!(version["product"].is_string(), "{version}");
    assert_eq!(gw.session(&id(&session)).await["status"], "live");
    // Its place is free again.
    let again = Cdp::connect(&url).await;
    again.close().await;
    for client in clients {
        client.close().await;
    }
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_stop_at_the_cap() {
    let _shared = shared().await;
    let mut gw = Gateway::start(&["--max-pages-per-session", "3"]).await;
    let session = gw.create(json!({})).await;
    let mut cdp = connect(&session).await;
    for _ in 0..2 {
        cdp.call("Target.createTarget", json!({"url": "about:blank"}), None)
            .await;
    }
    let refused = cdp
        .call_full("Target.createTarget", json!({"url": "about:blank"}), None)
        .await;
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("--max-pages-per-session"), "{refused}");
    let pages = |targets: &Value| {
        targets["targetInfos"]
            .as_array()
            .map(|t| t.iter().filter(|t| t["type"] == "page").count())
            .unwrap_or(0)
    };
    let targets = cdp.call("Target.getTargets", json!({}), None).await;
    assert_eq!(pages(&targets), 3, "{targets}");

    // A page that opens another beyond the cap sees it closed.
    let page = cdp.attach_first_page().await;
    cdp.call(
        "Runtime.evaluate",
        json!({"expression": "window.open('about:blank#popup'); 1", "userGesture": true}),
        Some(&page),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let targets = cdp.call("Target.getTargets", json!({}), None).await;
        if pages(&targets) == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the popup stayed open: {targets}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gw.wait_for_log("beyond --max-pages-per-session", Duration::from_secs(5))
            .await,
        "the popup was seen and closed"
    );
    cdp.close().await;
    assert!(gw.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_download_over_max_file_bytes_is_cancelled_and_not_listed() {
    let _shared = shared().await;
    let port = download_server(8 << 20).await;
    let mut gw = Gateway::start(&["--max-file-bytes", "1048576"]).await;
    let session = gw.create(json!({})).await;
    let sid = id(&session);
    let mut cdp = connect(&session).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &format!("http://127.0.0.1:{port}/"))
        .await;
    cdp.eval(&page, "document.querySelector('#big').click()")
        .await;
    assert!(
        gw.wait_for_log("larger than --max-file-bytes", Duration::from_secs(20))
            .await,
        "the download was not cancelled"
    );
    // The small one still arrives; the big one never shows, whole or partial.
    cdp.eval(&page, "document.querySelector('#small').click()")
        .await;
    wait_listed(&gw, &sid, "small.bin").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(listed(&gw, &sid).await, vec!["small.bin".to_owned()]);
    let dir = gw.data_dir.join("files").join(&sid);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("files directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["small.bin".to_owned()], "nothing else on disk");
    cdp.close().await;
    assert!(gw.stop().success());
}
