//! The CDP guard and the caps on one session's CDP traffic, in-process on fake browsers:
//! host paths confined to the session's files directory (rewritten or refused with a CDP
//! error naming the rule), `file:` URLs and `Extensions.loadUnpacked` refused, clients per
//! session (429 before the upgrade), the message size (1009), the in-flight budget, pages
//! per session (`Target.createTarget` refused, pages the page opened closed), and downloads
//! over `--max-file-bytes` cancelled.

use std::path::PathBuf;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// The session's files directory, as the gateway gave it to the browser at launch.
fn files_dir(gw: &FakeGateway, id: &str) -> PathBuf {
    gw.browser_of(id)
        .spec()
        .downloads
        .clone()
        .expect("a files directory")
}

/// The params of the last command with `method` the session's browser received.
fn last_params(gw: &FakeGateway, id: &str, method: &str) -> Option<Value> {
    gw.browser_of(id)
        .received()
        .into_iter()
        .rev()
        .find(|c| c.method == method)
        .map(|c| c.params)
}

/// Asserts a CDP error reply from the guard whose message contains `words`.
fn assert_refused(reply: &Value, words: &str) {
    assert_eq!(reply["error"]["code"], -32000, "{reply}");
    let message = reply["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("ingot: ") && message.contains(words),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_directories_are_rewritten_to_the_sessions_files() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let other = gw.create(json!({})).await;
    let dir = files_dir(&gw, &id);
    let elsewhere = files_dir(&gw, &id_of(&other));
    let mut cdp = CdpClient::connect_to(&session).await;
    let page = cdp.auto_attach().await;
    for (method, on, asked, sent) in [
        (
            "Browser.setDownloadBehavior",
            None,
            json!({"behavior": "allowAndName", "downloadPath": elsewhere, "eventsEnabled": true}),
            json!({"behavior": "allowAndName", "downloadPath": dir, "eventsEnabled": true}),
        ),
        (
            "Browser.setDownloadBehavior",
            None,
            json!({"behavior": "default"}),
            json!({"behavior": "allow", "downloadPath": dir}),
        ),
        (
            "Page.setDownloadBehavior",
            Some(page.as_str()),
            json!({"behavior": "allow", "downloadPath": "/tmp"}),
            json!({"behavior": "allow", "downloadPath": dir}),
        ),
    ] {
        let (_, reply) = cdp.call(method, asked, on).await;
        assert!(reply.get("error").is_none(), "{reply}");
        assert_eq!(last_params(&gw, &id, method), Some(sent));
    }
    cdp.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_paths_must_be_in_the_sessions_files() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let other = gw.create(json!({})).await;
    let dir = std::fs::canonicalize(files_dir(&gw, &id)).expect("files directory");
    std::fs::create_dir_all(dir.join("in")).expect("dir");
    std::fs::write(dir.join("in/mine.txt"), "mine").expect("own file");
    let theirs = std::fs::canonicalize(files_dir(&gw, &id_of(&other))).expect("theirs");
    std::fs::write(theirs.join("secret.txt"), "theirs").expect("other file");
    std::os::unix::fs::symlink(theirs.join("secret.txt"), dir.join("link.txt")).expect("link");
    let mut cdp = CdpClient::connect_to(&session).await;
    let page = cdp.auto_attach().await;

    let mine = dir.join("in/mine.txt");
    for name in [
        mine.to_str().expect("UTF-8"),
        "in/mine.txt",
        "in/../in/mine.txt",
    ] {
        let params = json!({"files": [name], "nodeId": 1});
        let (_, reply) = cdp.call("DOM.setFileInputFiles", params, Some(&page)).await;
        assert!(reply.get("error").is_none(), "{name}: {reply}");
        let sent = last_params(&gw, &id, "DOM.setFileInputFiles").expect("forwarded");
        assert_eq!(sent["files"], json!([mine]), "{name} resolved");
    }
    let forwarded = gw.browser_of(&id).count("DOM.setFileInputFiles");
    let secret = theirs.join("secret.txt");
    for name in [
        "/etc/passwd",
        secret.to_str().expect("UTF-8"),
        "../secret.txt",
        "link.txt",
        "missing.txt",
    ] {
        let params = json!({"files": [mine, name], "nodeId": 1});
        let (_, reply) = cdp.call("DOM.setFileInputFiles", params, Some(&page)).await;
        assert_refused(
            &reply,
            "DOM.setFileInputFiles may only name files in this session's files directory",
        );
        assert_eq!(reply["sessionId"], page.as_str(), "answered on its session");
    }
    let drag = json!({"type": "drop", "x": 1, "y": 1,
        "data": {"items": [], "files": ["/etc/passwd"], "dragOperationsMask": 1}});
    let (_, reply) = cdp.call("Input.dispatchDragEvent", drag, Some(&page)).await;
    assert_refused(&reply, "Input.dispatchDragEvent may only name files");
    let drag = json!({"type": "drop", "x": 1, "y": 1,
        "data": {"items": [], "files": ["in/mine.txt"], "dragOperationsMask": 1}});
    let (_, reply) = cdp.call("Input.dispatchDragEvent", drag, Some(&page)).await;
    assert!(reply.get("error").is_none(), "{reply}");
    let sent = last_params(&gw, &id, "Input.dispatchDragEvent").expect("forwarded");
    assert_eq!(sent["data"]["files"], json!([mine]));
    let files = json!({"manifestId": "m", "files": ["/etc/passwd"]});
    let (_, reply) = cdp.call("PWA.launchFilesInApp", files, None).await;
    assert_refused(&reply, "PWA.launchFilesInApp may only name files");
    assert_eq!(
        gw.browser_of(&id).count("DOM.setFileInputFiles"),
        forwarded,
        "no refused command reached the browser"
    );
    cdp.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_and_unpacked_extensions_are_refused() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let mut cdp = CdpClient::connect_to(&session).await;
    let page = cdp.auto_attach().await;
    for url in [
        "file:///etc/passwd",
        " FILE:/etc/passwd",
        "view-source:file:///etc",
    ] {
        let (_, reply) = cdp
            .call("Page.navigate", json!({"url": url}), Some(&page))
            .await;
        assert_refused(&reply, "Page.navigate may not load file: URLs");
        let (_, reply) = cdp
            .call("Target.createTarget", json!({"url": url}), None)
            .await;
        assert_refused(&reply, "Target.createTarget may not load file: URLs");
    }
    let params = json!({"frameId": "F", "url": "file:///etc/passwd", "options": {"disableCache": true, "includeCredentials": false}});
    let (_, reply) = cdp
        .call("Network.loadNetworkResource", params, Some(&page))
        .await;
    assert_refused(
        &reply,
        "Network.loadNetworkResource may not load file: URLs",
    );
    let (_, reply) = cdp
        .call("Extensions.loadUnpacked", json!({"path": "/tmp/ext"}), None)
        .await;
    assert_refused(&reply, "Extensions.loadUnpacked is not allowed");
    let (_, reply) = cdp
        .call(
            "Target.exposeDevToolsProtocol",
            json!({"targetId": "T", "bindingName": "cdp"}),
            None,
        )
        .await;
    assert_refused(&reply, "Target.exposeDevToolsProtocol is not allowed");
    // A command a session attached without `flatten` would carry, and one the guard cannot
    // read as JSON (a lone surrogate, which a lenient router skips), are refused too.
    let carried =
        json!({"id": 1, "method": "Page.navigate", "params": {"url": "file:///etc/passwd"}});
    let (_, reply) = cdp
        .call(
            "Target.sendMessageToTarget",
            json!({"sessionId": "S", "message": carried.to_string()}),
            None,
        )
        .await;
    assert_refused(
        &reply,
        "Page.navigate may not be sent through Target.sendMessageToTarget",
    );
    cdp.send_text(
        r#"{"id":77,"method":"Page.navigate","params":{"url":"file:///etc/passwd","referrer":"\ud800"}}"#,
    )
    .await;
    let reply = cdp.next().await;
    assert_eq!(reply["id"], 77, "{reply}");
    assert_refused(&reply, "cannot read this command as JSON");
    let browser = gw.browser_of(&id);
    assert_eq!(
        (
            browser.count("Page.navigate"),
            browser.count("Target.createTarget"),
            browser.count("Extensions.loadUnpacked"),
            browser.count("Target.exposeDevToolsProtocol"),
            browser.count("Target.sendMessageToTarget")
        ),
        (0, 0, 0, 0, 0)
    );
    let (_, reply) = cdp
        .call(
            "Page.navigate",
            json!({"url": "https://example.com/file:"}),
            Some(&page),
        )
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(browser.count("Page.navigate"), 1);
    cdp.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_more_than_the_cap_gets_429_before_the_upgrade() {
    let gw = FakeGateway::start_with(|s| s.max_clients_per_session = 2).await;
    let session = gw.create(json!({})).await;
    let url = session["websocketUrl"].as_str().expect("url").to_owned();
    let a = CdpClient::connect(&url).await;
    let mut b = CdpClient::connect(&url).await;
    let attempt = timeout(STEP, tokio_tungstenite::connect_async(&url))
        .await
        .expect("answer in time");
    let Err(tungstenite::Error::Http(response)) = attempt else {
        panic!("the third client was not refused: {attempt:?}");
    };
    assert_eq!(response.status().as_u16(), 429);
    let body: Value =
        serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_clients", "{body}");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("--max-clients-per-session"), "{message}");
    let (_, reply) = b.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT, "the others go on");
    a.close().await;
    // A place is free again once a client left.
    let deadline = tokio::time::Instant::now() + STEP;
    let mut c = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => break ws,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no place after a client left: {e}"),
        }
    };
    let _ = c.close(None).await;
    b.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_default_32_mib_closes_only_that_client() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let url = session["websocketUrl"].as_str().expect("url");
    let (big, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let mut other = CdpClient::connect_to(&session).await;
    let command = format!(
        r#"{{"id":1,"method":"Runtime.evaluate","params":{{"expression":"{}"}}}}"#,
        "x".repeat(32 << 20)
    );
    // The gateway refuses the frame from its header: read its close frame while writing.
    let (mut write, mut read) = futures_util::StreamExt::split(big);
    let writing = tokio::spawn(async move {
        let _ = futures_util::SinkExt::send(&mut write, Message::Text(command.into())).await;
    });
    let close = timeout(STEP, async {
        while let Some(frame) = futures_util::StreamExt::next(&mut read).await {
            if let Ok(Message::Close(Some(frame))) = frame {
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
    let (_, reply) = other.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    assert_eq!(gw.session(&id).await["status"], "live");
    other.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_inflight_budget_takes_all_of_it_and_passes() {
    let gw = FakeGateway::start_with(|s| {
        s.session_inflight_bytes = 1 << 20;
        s.max_message_bytes = 4 << 20;
    })
    .await;
    let session = gw.create(json!({})).await;
    let mut a = CdpClient::connect_to(&session).await;
    let mut b = CdpClient::connect_to(&session).await;
    let large = "z".repeat(3 << 20);
    for _ in 0..3 {
        let ia = a
            .send_command("Runtime.evaluate", json!({"expression": large}), None)
            .await;
        let ib = b
            .send_command("Runtime.evaluate", json!({"expression": "1+1"}), None)
            .await;
        let ra = a.next().await;
        let rb = b.next().await;
        assert_eq!((ra["id"].clone(), rb["id"].clone()), (json!(ia), json!(ib)));
        assert_eq!(ra["result"]["result"]["value"], large.as_str());
        assert_eq!(rb["result"]["result"]["value"], 2);
    }
    a.close().await;
    b.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_beyond_the_cap_are_refused_or_closed() {
    let gw = FakeGateway::start_with(|s| s.max_pages_per_session = 3).await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let mut cdp = CdpClient::connect_to(&session).await;
    // The first page is open; pipelined creates are counted before they are answered.
    for _ in 0..4 {
        cdp.send_command("Target.createTarget", json!({"url": "about:blank"}), None)
            .await;
    }
    let mut replies = Vec::new();
    while replies.len() < 4 {
        let message = cdp.next().await;
        if message.get("id").is_some() {
            replies.push(message);
        }
    }
    // Never more than the cap; a create in flight counts at once.
    let created = replies
        .iter()
        .filter(|r| r["result"]["targetId"].is_string())
        .count();
    assert!((1..=2).contains(&created), "{replies:?}");
    for refused in replies.iter().filter(|r| r.get("error").is_some()) {
        assert_refused(refused, "--max-pages-per-session");
    }
    // One at a time, up to the cap exactly.
    let mut targets: Vec<String> = replies
        .iter()
        .filter_map(|r| r["result"]["targetId"].as_str().map(str::to_owned))
        .collect();
    loop {
        let (_, reply) = cdp
            .call("Target.createTarget", json!({"url": "about:blank"}), None)
            .await;
        match reply["result"]["targetId"].as_str() {
            Some(target) => targets.push(target.to_owned()),
            None => {
                assert_refused(&reply, "the most --max-pages-per-session allows");
                break;
            }
        }
    }
    let browser = gw.browser_of(&id);
    assert_eq!((targets.len(), browser.pages()), (2, 3));

    // A page the page itself opens beyond the cap is closed by the gateway.
    let opened = "0000000000000000000000000000F00D";
    let info = json!({"targetId": opened, "type": "page", "title": "", "url": "about:blank",
        "attached": false, "canAccessOpener": true, "openerId": browser.page_target_id()});
    browser.emit("Target.targetCreated", json!({"targetInfo": info}), None);
    gw.wait_host("the extra page closed", |_| {
        last_params(&gw, &id, "Target.closeTarget").is_some_and(|p| p["targetId"] == opened)
    })
    .await;

    // Closing pages makes room again (the page the fake never closed still counts).
    for target in &targets {
        let (_, reply) = cdp
            .call("Target.closeTarget", json!({"targetId": target}), None)
            .await;
        assert_eq!(reply["result"]["success"], true, "{reply}");
    }
    let (_, reply) = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}), None)
        .await;
    assert!(reply["result"]["targetId"].is_string(), "{reply}");
    cdp.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_over_max_file_bytes_is_cancelled_and_its_leftovers_removed() {
    let gw = FakeGateway::start_with(|s| s.max_file_bytes = 1000).await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let browser = gw.browser_of(&id);
    let dir = files_dir(&gw, &id);
    let partial = dir.join("big.bin.crdownload");
    std::fs::write(&partial, "partial").expect("partial file");
    let begin = json!({"frameId": browser.page_target_id(), "guid": "G1",
        "url": "http://127.0.0.1/big.bin", "suggestedFilename": "big.bin"});
    browser.emit("Browser.downloadWillBegin", begin, None);
    let progress = |received: u64, state: &str| json!({"guid": "G1", "totalBytes": 0, "receivedBytes": received, "state": state});
    browser.emit(
        "Browser.downloadProgress",
        progress(500, "inProgress"),
        None,
    );
    browser.emit(
        "Browser.downloadProgress",
        progress(1500, "inProgress"),
        None,
    );
    // In the default browser context and in the page's.
    gw.wait_host("the download cancelled", |h| {
        h.commands("Browser.cancelDownload") == 2
    })
    .await;
    assert_eq!(
        last_params(&gw, &id, "Browser.cancelDownload").expect("cancel")["guid"],
        "G1"
    );
    browser.emit("Browser.downloadProgress", progress(1500, "canceled"), None);
    gw.wait_for("the partial file removed", || !partial.exists())
        .await;
    // A small download is left alone.
    let small = json!({"guid": "G2", "totalBytes": 10, "receivedBytes": 10, "state": "completed"});
    browser.emit("Browser.downloadProgress", small, None);
    let mut cdp = CdpClient::connect_to(&session).await;
    cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(browser.count("Browser.cancelDownload"), 2);
    cdp.close().await;
    gw.stop().await;
}
