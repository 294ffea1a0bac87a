//! Session files in-process: upload, list, download, delete, the archive, retention, and
//! every kind of hostile input (paths, sizes, stalls, URLs, other tenants).

use std::io::Read;
use std::path::Path;

use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::*;

fn files(id: &str) -> String {
    format!("/v1/sessions/{id}/files")
}

/// Uploads `bytes` as `file` (named `filename`, if any) with an optional `path` field.
async fn upload(
    gw: &FakeGateway,
    id: &str,
    key: Option<&str>,
    file: (&[u8], Option<&str>),
    path: Option<&str>,
) -> Reply {
    let mut part = Part::bytes(file.0.to_vec());
    if let Some(name) = file.1 {
        part = part.file_name(name.to_owned());
    }
    let mut form = Form::new().part("file", part);
    if let Some(path) = path {
        form = form.text("path", path.to_owned());
    }
    let mut request = gw.http.post(gw.url(&files(id))).multipart(form);
    if let Some(key) = key {
        request = request.header("steel-api-key", key);
    }
    send(request).await
}

/// The bytes of a `GET`, with its status.
async fn fetch(gw: &FakeGateway, path: &str) -> (u16, Vec<u8>) {
    let r = timeout(STEP, gw.http.get(gw.url(path)).send())
        .await
        .expect("answer in time")
        .expect("GET");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body").to_vec())
}

fn names(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_uploaded_listed_downloaded_archived_and_deleted() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    let (status, empty) = gw.get(&files(&id)).await;
    assert_eq!((status, &empty), (200, &json!({"data": []})));

    let named = upload(
        &gw,
        &id,
        None,
        (b"hello", Some("a.txt")),
        Some("docs/a.txt"),
    )
    .await;
    assert_eq!(named.status, 200, "{:?}", named.body);
    let path = named.body["path"].as_str().expect("path").to_owned();
    assert!(
        path.starts_with('/') && path.ends_with(&format!("/{id}/docs/a.txt")),
        "{path}"
    );
    assert_eq!(std::fs::read(&path).expect("the file is on disk"), b"hello");
    assert_eq!(named.body["size"], 5);
    let modified = named.body["lastModified"].as_str().expect("lastModified");
    assert!(
        modified.ends_with('Z') && modified.len() == 24,
        "{modified}"
    );
    // Without `path`, the file keeps its own name.
    let own = upload(&gw, &id, None, (b"second", Some("b.bin")), None).await;
    assert!(own.body["path"].as_str().expect("path").ends_with("/b.bin"));

    let (_, list) = gw.get(&files(&id)).await;
    assert_eq!(names(&list).len(), 2, "{list}");
    assert!(names(&list).contains(&path));
    for way in ["docs/a.txt", "docs%2Fa.txt", path.as_str()] {
        let (status, bytes) = fetch(&gw, &format!("{}/{way}", files(&id))).await;
        assert_eq!((status, bytes.as_slice()), (200, &b"hello"[..]), "{way}");
    }

    let (status, zip) = fetch(&gw, &format!("/v1/sessions/{id}/files.zip")).await;
    assert_eq!(status, 200);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip archive");
    let mut text = String::new();
    archive
        .by_name("docs/a.txt")
        .expect("docs/a.txt in the archive")
        .read_to_string(&mut text)
        .expect("read");
    assert_eq!((archive.len(), text.as_str()), (2, "hello"));

    let gone = gw
        .request(
            Method::DELETE,
            &format!("{}/docs/a.txt", files(&id)),
            None,
            None,
        )
        .await;
    assert_eq!(gone.status, 200, "{:?}", gone.body);
    assert!(!Path::new(&path).exists());
    let again = gw
        .request(
            Method::DELETE,
            &format!("{}/docs/a.txt", files(&id)),
            None,
            None,
        )
        .await;
    assert_error((again.status, &again.body), 404, "file_not_found");
    let all = gw.request(Method::DELETE, &files(&id), None, None).await;
    assert_eq!(all.status, 200);
    assert_eq!(gw.get(&files(&id)).await.1, json!({"data": []}));
    gw.release(&id).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_and_nothing_is_written_outside() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    let stored = upload(&gw, &id, None, (b"x", Some("ok.txt")), None).await;
    let session_dir = Path::new(stored.body["path"].as_str().expect("path"))
        .parent()
        .expect("session directory")
        .to_owned();
    let data_dir = session_dir
        .ancestors()
        .nth(2)
        .expect("data directory")
        .to_owned();
    for raw in [
        "../escape.txt",
        "a/../../escape.txt",
        "/tmp/escape.txt",
        "a\0b.txt",
        "a\\..\\escape.txt",
        "a//b.txt",
        "./x",
    ] {
        let r = upload(&gw, &id, None, (b"evil", Some("x.txt")), Some(raw)).await;
        assert_error((r.status, &r.body), 400, "invalid_path");
    }
    // The same as a file name of its own.
    let r = upload(&gw, &id, None, (b"evil", Some("../escape.txt")), None).await;
    assert_error((r.status, &r.body), 400, "invalid_path");
    // Sent as they are: HTTP clients would resolve dot segments before sending.
    for raw in [
        "../../usage.sqlite3",
        "%2e%2e/%2e%2e/usage.sqlite3",
        "..%2F..%2Fusage.sqlite3",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "a%00b",
        "a%5C..%5Cb",
    ] {
        for method in ["GET", "DELETE"] {
            let answer = raw_request(&gw, method, &format!("{}/{raw}", files(&id))).await;
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{method} {raw}: {answer}"
            );
            assert!(answer.contains("invalid_path"), "{method} {raw}: {answer}");
        }
    }
    assert!(!data_dir.join("escape.txt").exists() && !Path::new("/tmp/escape.txt").exists());
    assert!(
        data_dir.join("usage.sqlite3").exists(),
        "the usage database is untouched"
    );
    assert_eq!(names(&gw.get(&files(&id)).await.1).len(), 1);
    gw.release(&id).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_limit_is_413_and_leaves_nothing() {
    let gw = FakeGateway::start_with(|s| s.max_file_bytes = 1000).await;
    let id = id_of(&gw.create(json!({})).await);
    let fits = upload(&gw, &id, None, (&[7u8; 1000], Some("fits.bin")), None).await;
    assert_eq!(fits.status, 200, "{:?}", fits.body);
    let big = upload(&gw, &id, None, (&[7u8; 5000], Some("big.bin")), None).await;
    assert_error((big.status, &big.body), 413, "file_too_large");
    assert_eq!(
        names(&gw.get(&files(&id)).await.1).len(),
        1,
        "only the one that fits"
    );
    let partial = partial_dir(&fits.body);
    gw.wait_for("no unfinished upload left", || empty_dir(&partial))
        .await;
    gw.release(&id).await;
    gw.stop().await;
}

fn partial_dir(file: &Value) -> std::path::PathBuf {
    let path = Path::new(file["path"].as_str().expect("path"));
    path.ancestors()
        .nth(2)
        .expect("files root")
        .join(".partial")
}

fn empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.count() == 0)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stalls_is_cut_off_with_408() {
    let gw = FakeGateway::start_with(|s| s.header_timeout_ms = 300).await;
    let id = id_of(&gw.create(json!({})).await);
    let known = upload(&gw, &id, None, (b"k", Some("k.txt")), None).await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST /v1/sessions/{id}/files HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: multipart/form-data; boundary=XX\r\ncontent-length: 100000\r\n\r\n\
         --XX\r\ncontent-disposition: form-data; name=\"file\"; filename=\"slow.bin\"\r\n\r\nsome bytes"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    // Then nothing more: the gateway gives up and answers.
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    let partial = partial_dir(&known.body);
    gw.wait_for("the stalled upload's bytes removed", || empty_dir(&partial))
        .await;
    assert_eq!(names(&gw.get(&files(&id)).await.1).len(), 1);
    gw.release(&id).await;
    gw.stop().await;
}

/// A request sent byte for byte as given, and the whole answer.
async fn raw_request(gw: &FakeGateway, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
        match timeout(STEP, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer to a stalled upload within {STEP:?}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_in_place_of_a_file_is_refused_and_never_fetched() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/secret", target.local_addr().expect("addr"));
    // As the Node SDK sends a string (a plain field), and as the Python SDK does (a file
    // named "upload").
    for name in [None, Some("upload")] {
        let r = upload(&gw, &id, None, (url.as_bytes(), name), Some("x.txt")).await;
        assert_error((r.status, &r.body), 400, "url_upload_refused");
    }
    let r = upload(&gw, &id, None, (b"file:///etc/passwd", None), Some("x")).await;
    assert_error((r.status, &r.body), 400, "url_upload_refused");
    let fetched = timeout(Duration::from_millis(200), target.accept()).await;
    assert!(fetched.is_err(), "the gateway connected to the URL");
    // A real file that happens to hold a URL keeps its name, and is taken.
    let link = upload(&gw, &id, None, (url.as_bytes(), Some("link.txt")), None).await;
    assert_eq!(link.status, 200, "{:?}", link.body);
    gw.release(&id).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_forms_get_400_naming_the_field() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    let json_body = gw.post(&files(&id), json!({"file": "x"})).await;
    assert!(
        assert_error((json_body.0, &json_body.1), 400, "invalid_request").contains("multipart")
    );
    let no_file = send(
        gw.http
            .post(gw.url(&files(&id)))
            .multipart(Form::new().text("path", "a.txt")),
    )
    .await;
    assert!(assert_error((no_file.status, &no_file.body), 400, "invalid_request").contains("file"));
    let unnamed = upload(&gw, &id, None, (b"bytes", None), None).await;
    assert!(assert_error((unnamed.status, &unnamed.body), 400, "invalid_request").contains("path"));
    let extra = send(
        gw.http.post(gw.url(&files(&id))).multipart(
            Form::new()
                .part("file", Part::bytes(b"x".to_vec()).file_name("x"))
                .text("color", "red"),
        ),
    )
    .await;
    assert!(assert_error((extra.status, &extra.body), 400, "invalid_request").contains("color"));
    let (status, body) = gw.get("/v1/sessions/not-a-uuid/files").await;
    assert_error((status, &body), 400, "invalid_request");
    let unknown = uuid::Uuid::new_v4();
    let (status, body) = gw.get(&files(&unknown.to_string())).await;
    assert_error((status, &body), 404, "session_not_found");
    gw.release(&id).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_session_files_are_404() {
    let gw = FakeGateway::start_with(|s| s.api_keys = Some(TENANTS.into())).await;
    let id = id_of(&gw.create_as(Some(ALICE), json!({})).await);
    let mine = upload(&gw, &id, Some(ALICE), (b"alice", Some("a.txt")), None).await;
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    let theirs = upload(&gw, &id, Some(BOB), (b"bob", Some("b.txt")), None).await;
    assert_error((theirs.status, &theirs.body), 404, "session_not_found");
    for (method, path) in [
        (Method::GET, files(&id)),
        (Method::GET, format!("{}/a.txt", files(&id))),
        (Method::GET, format!("/v1/sessions/{id}/files.zip")),
        (Method::DELETE, format!("{}/a.txt", files(&id))),
        (Method::DELETE, files(&id)),
    ] {
        let r = gw.request(method, &path, Some(BOB), None).await;
        assert_error((r.status, &r.body), 404, "session_not_found");
    }
    let list = gw
        .request(Method::GET, &files(&id), Some(ALICE), None)
        .await;
    assert_eq!(names(&list.body).len(), 1, "alice's file is still there");
    let r = gw.request(Method::GET, &files(&id), None, None).await;
    assert_eq!(r.status, 401);
    let released = gw
        .request(
            Method::POST,
            &format!("/v1/sessions/{id}/release"),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(released.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outlive_the_session_for_the_retention_then_are_deleted() {
    let gw = FakeGateway::start_with(|s| s.files_retention_ms = 1_500).await;
    let id = id_of(&gw.create(json!({})).await);
    let stored = upload(&gw, &id, None, (b"keep me", Some("k.txt")), None).await;
    let session_dir = Path::new(stored.body["path"].as_str().expect("path"))
        .parent()
        .expect("dir")
        .to_owned();
    gw.release(&id).await;
    let (status, list) = gw.get(&files(&id)).await;
    assert_eq!(
        (status, names(&list).len()),
        (200, 1),
        "kept after the end: {list}"
    );
    let (status, bytes) = fetch(&gw, &format!("{}/k.txt", files(&id))).await;
    assert_eq!((status, bytes.as_slice()), (200, &b"keep me"[..]));
    let late = upload(&gw, &id, None, (b"late", Some("late.txt")), None).await;
    assert_error((late.status, &late.body), 409, "session_ended");
    gw.wait_for("the files deleted after the retention", || {
        !session_dir.exists()
    })
    .await;
    let (status, list) = gw.get(&files(&id)).await;
    assert_eq!((status, list), (200, json!({"data": []})));
    gw.stop().await;
}

/// The directories each browser was told to save downloads in, with the commands' ids.
fn download_paths(browser: &FakeBrowser) -> Vec<(Option<i64>, std::path::PathBuf)> {
    browser
        .received()
        .into_iter()
        .filter(|c| c.method == "Browser.setDownloadBehavior")
        .map(|c| {
            let path = c.params["downloadPath"].as_str().unwrap_or_default();
            (c.id, path.into())
        })
        .collect()
}

/// Where a browser saves downloads is set with its first commands, at launch, so a create
/// waits for no extra round trip; only a pooled browser taken under an id of the client's
/// own is told again, before the session is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_go_to_the_sessions_files_from_the_browsers_first_commands() {
    let gw = FakeGateway::start_with(|s| {
        s.pool_size = 1;
        s.max_sessions = Some(3);
    })
    .await;
    let files_dir = gw.tmp.as_ref().expect("data dir").path().join("files");
    gw.wait_host("the pool launches", |h| h.browsers().len() == 2)
        .await;
    gw.wait_readyz(200).await;
    let pooled = gw.create(json!({})).await;
    let pooled_id = id_of(&pooled);
    let browser = gw.browser_of(&pooled_id);
    let first: Vec<String> = browser.methods().into_iter().take(2).collect();
    assert_eq!(first, ["Browser.getVersion", "Browser.setDownloadBehavior"]);
    assert_eq!(
        download_paths(&browser),
        [(Some(1), files_dir.join(&pooled_id))]
    );
    assert!(files_dir.join(&pooled_id).is_dir());

    // A launch of its own (launch flags): told at launch too.
    let cold = gw.create(json!({"userAgent": "ingot-test"})).await;
    let cold_id = id_of(&cold);
    assert_eq!(
        download_paths(&gw.browser_of(&cold_id)),
        [(Some(1), files_dir.join(&cold_id))]
    );

    // A pooled browser taken under the client's own id: told again, at handover.
    // Launched: the probe, the first pooled browser, its refill, the session of its own.
    gw.wait_host("the pool refills", |h| h.browsers().len() == 4)
        .await;
    gw.wait_readyz(200).await;
    let refill = gw
        .host
        .browsers()
        .into_iter()
        .skip(1)
        .find(|b| ![&pooled_id, &cold_id].contains(&&b.spec().session_id.to_string()))
        .expect("the pool's refill");
    let own_id = uuid::Uuid::new_v4().to_string();
    let own = gw.create(json!({"sessionId": own_id})).await;
    assert_eq!(id_of(&own), own_id);
    let paths = download_paths(&refill);
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(paths[0].0, Some(1));
    assert_eq!(paths[1].1, files_dir.join(&own_id));
    assert!(files_dir.join(&own_id).is_dir());
    gw.stop().await;
}
