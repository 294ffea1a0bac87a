//! Session files with real Chromium: a page's download lands in the session's files, and
//! an uploaded file's `path` fills a page's `<input type=file>` through
//! `DOM.setFileInputFiles`; from a warm-pool browser and a cold one alike.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// A page that downloads a generated file when asked, and reads the file its input holds.
fn site() -> Vec<(&'static str, String)> {
    vec![(
        "/",
        "<title>files</title><input id=pick type=file>\
         <script>function download() { const a = document.createElement('a'); \
         a.href = URL.createObjectURL(new Blob(['made by the page'])); \
         a.download = 'report.txt'; document.body.append(a); a.click(); }</script>"
            .into(),
    )]
}

/// Waits until the session lists a file whose path ends with `/name`; returns it.
async fn wait_listed(gw: &Gateway, id: &str, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, list) = gw.get(&format!("/v1/sessions/{id}/files")).await;
        assert_eq!(status, 200, "{list}");
        let found = list["data"].as_array().and_then(|files| {
            files
                .iter()
                .find(|f| {
                    f["path"]
                        .as_str()
                        .is_some_and(|p| p.ends_with(&format!("/{name}")))
                })
                .cloned()
        });
        if let Some(file) = found {
            return file;
        }
        assert!(Instant::now() < deadline, "{name} never listed: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_land_in_the_files_and_uploads_fill_file_inputs() {
    let _shared = shared().await;
    let site = PageServer::start(site()).await;
    let mut gw = Gateway::start(&["--pool-size", "1", "--max-sessions", "3"]).await;
    // The first session takes the pooled browser, the second is launched for it.
    for _ in 0..2 {
        let session = gw.create(json!({})).await;
        let id = session["id"].as_str().expect("id").to_owned();
        let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
        let page = cdp.attach_first_page().await;
        cdp.navigate(&page, &site.url("/")).await;

        cdp.eval(&page, "download()").await;
        let report = wait_listed(&gw, &id, "report.txt").await;
        assert_eq!(report["size"], 16, "{report}");
        let (status, bytes) = download(&gw, &format!("/v1/sessions/{id}/files/report.txt")).await;
        assert_eq!((status, bytes.as_str()), (200, "made by the page"));

        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(b"uploaded bytes".to_vec()).file_name("in.txt"),
            )
            .text("path", "inputs/in.txt");
        let uploaded: Value = gw
            .http
            .post(gw.url(&format!("/v1/sessions/{id}/files")))
            .multipart(form)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("File JSON");
        let path = uploaded["path"].as_str().expect("path");
        let document = cdp.call("DOM.getDocument", json!({}), Some(&page)).await;
        let input = cdp
            .call(
                "DOM.querySelector",
                json!({"nodeId": document["root"]["nodeId"], "selector": "#pick"}),
                Some(&page),
            )
            .await;
        cdp.call(
            "DOM.setFileInputFiles",
            json!({"files": [path], "nodeId": input["nodeId"]}),
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
        assert_eq!(read, "in.txt:uploaded bytes");
        cdp.close().await;
        gw.release(&id).await;
    }
    assert!(gw.stop().success());
    gw.assert_clean(Duration::from_secs(10)).await;
}

async fn download(gw: &Gateway, path: &str) -> (u16, String) {
    let r = gw.http.get(gw.url(path)).send().await.expect("GET");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}
