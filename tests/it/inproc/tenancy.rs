//! What one tenant cannot take from another, in-process: session ids that are never used
//! twice (across tenants and restarts), viewer tokens that carry their mode, a keys file
//! without keys, the caps on one session's files, and the cap on open connections.

use std::path::Path;

use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;

fn with_tenants(s: &mut Settings) {
    s.api_keys = Some(TENANTS.into());
}

/// A create with `sessionId` `id` by `key`, expected refused: returns the whole answer.
async fn refused_create(gw: &FakeGateway, key: &str, id: &str) -> Value {
    let r = gw
        .request(
            Method::POST,
            "/v1/sessions",
            Some(key),
            Some(json!({"sessionId": id})),
        )
        .await;
    let message = assert_error((r.status, &r.body), 409, "session_exists");
    for tenant in ["alice", "bob"] {
        assert!(!message.contains(tenant), "names no tenant: {message}");
    }
    r.body
}

async fn upload_as(
    gw: &FakeGateway,
    id: &str,
    key: Option<&str>,
    path: &str,
    bytes: &[u8],
) -> Reply {
    let form = Form::new()
        .part("file", Part::bytes(bytes.to_vec()).file_name("f.bin"))
        .text("path", path.to_owned());
    let mut request = gw
        .http
        .post(gw.url(&format!("/v1/sessions/{id}/files")))
        .multipart(form);
    if let Some(key) = key {
        request = request.header("steel-api-key", key);
    }
    send(request).await
}

/// A session id is refused with the same 409 for every tenant while it is live, once it
/// ended, and after a restart on the same data directory, before any browser is started
/// for it; the old session's files stay out of reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_is_never_reused_by_any_tenant_even_after_a_restart() {
    let gw = FakeGateway::start_with(with_tenants).await;
    let id = uuid::Uuid::new_v4().to_string();
    gw.create_as(Some(ALICE), json!({"sessionId": id})).await;
    let r = upload_as(&gw, &id, Some(ALICE), "secret.txt", b"ALPHA-SECRET").await;
    assert_eq!(r.status, 200, "{}", r.body);

    let to_bob = refused_create(&gw, BOB, &id).await;
    let to_alice = refused_create(&gw, ALICE, &id).await;
    assert_eq!(to_bob, to_alice, "the same answer whoever asks, while live");
    let r = gw
        .request(
            Method::POST,
            &format!("/v1/sessions/{id}/release"),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(refused_create(&gw, BOB, &id).await, to_bob, "once ended");
    assert_eq!(refused_create(&gw, ALICE, &id).await, to_bob);

    let data = gw.stop().await;
    let gw = FakeGateway::start_in(data, with_tenants).await;
    assert_eq!(
        refused_create(&gw, BOB, &id).await,
        to_bob,
        "after a restart"
    );
    assert_eq!(refused_create(&gw, ALICE, &id).await, to_bob);
    assert_eq!(
        gw.host.launches(),
        1,
        "no browser was started for a taken id"
    );
    let r = gw
        .request(
            Method::GET,
            &format!("/v1/sessions/{id}/files"),
            Some(BOB),
            None,
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let fresh = uuid::Uuid::new_v4().to_string();
    let session = gw.create_as(Some(BOB), json!({"sessionId": fresh})).await;
    assert_eq!(id_of(&session), fresh, "a new id is taken");
    gw.stop().await;
}

/// Whatever a directory named after a new session's id held, the session starts with none
/// of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_starts_with_an_empty_files_directory() {
    let data = tempfile::tempdir().expect("tempdir");
    let id = uuid::Uuid::new_v4().to_string();
    let left = data.path().join("files").join(&id);
    std::fs::create_dir_all(left.join("old")).expect("mkdir");
    std::fs::write(left.join("old/secret.txt"), b"OLD").expect("write");
    std::fs::write(left.join("top.txt"), b"OLD").expect("write");
    let gw = FakeGateway::start_in(data, |_| {}).await;
    gw.create(json!({"sessionId": id})).await;
    let (status, list) = gw.get(&format!("/v1/sessions/{id}/files")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"], json!([]), "nothing inherited");
    let data = gw.stop().await;
    let left = data.path().join("files").join(&id);
    assert!(!left.join("top.txt").exists() && !left.join("old").exists());
}

/// The token of a link, from its URL.
fn token_in(url: &str) -> String {
    url.split_once("token=")
        .map(|(_, t)| t.split('&').next().unwrap_or(t).to_owned())
        .expect("a token")
}

/// Opens the viewer's socket with `query`, from ingot's own origin, and waits until it
/// watches the session's page (the fake browser announces it to the view).
async fn viewer_socket(
    gw: &FakeGateway,
    id: &str,
    query: &str,
) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let url = format!("ws://{}/v1/sessions/{id}/viewer/ws?{query}", gw.addr);
    let mut request = url.into_client_request().expect("request");
    let origin = format!("http://{}", gw.addr).parse().expect("origin");
    request.headers_mut().insert("origin", origin);
    let (mut ws, _) = timeout(STEP, tokio_tungstenite::connect_async(request))
        .await
        .expect("in time")
        .expect("the viewer's socket opens");
    let browser = gw.browser_of(id);
    let mut announced: Option<String> = None;
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the viewer never watched the page"
        );
        // The view's own browser session: the newest that asked to discover targets.
        let view = browser
            .received()
            .into_iter()
            .rev()
            .find(|c| c.method == "Target.setDiscoverTargets")
            .and_then(|c| c.session_id);
        if view.is_some() && view != announced {
            let info = json!({"targetInfo": {"targetId": browser.page_target_id(),
                "type": "page", "url": "about:blank", "title": ""}});
            browser.emit("Target.targetCreated", info, view.as_deref());
            announced = view;
        }
        let next = timeout(Duration::from_millis(100), ws.next()).await;
        if let Ok(Some(Ok(Message::Text(text)))) = next {
            let message: Value = serde_json::from_str(&text).expect("JSON");
            if message["type"] == "tabs" && message["active"].is_string() {
                return ws;
            }
        }
    }
}

/// Sends a navigation as the viewer's page would; returns whether the browser was told.
async fn navigation_reaches_the_page(
    gw: &FakeGateway,
    id: &str,
    ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>,
) -> bool {
    let browser = gw.browser_of(id);
    let before = browser.count("Page.navigate");
    let input = json!({"type": "navigate", "url": "about:blank#input"});
    ws.send(Message::text(input.to_string()))
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        if browser.count("Page.navigate") > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A read-only viewer token stays read-only whatever its URL says; an interactive one works
/// and can be lowered by `interactive=false`, whose page then hands out the read-only token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_tokens_carry_their_mode() {
    let gw = FakeGateway::start().await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let interactive = token_in(session["debugUrl"].as_str().expect("debugUrl"));
    assert_eq!(
        token_in(session["sessionViewerUrl"].as_str().expect("url")),
        interactive
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let asked =
        format!("/v1/sessions/{id}/viewer?token={interactive}&interactive=false&theme=light");
    let r = no_redirects.get(gw.url(&asked)).send().await.expect("GET");
    assert_eq!(r.status().as_u16(), 303);
    let location = r.headers()["location"].to_str().expect("text").to_owned();
    let read_only = token_in(&location);
    assert_ne!(read_only, interactive);
    assert!(location.starts_with("viewer?") && location.contains("interactive=false"));
    assert!(location.contains("theme=light"), "{location}");
    let lost = format!("/v1/sessions/{id}/view?token={read_only}&interactive=true");
    let r = no_redirects.get(gw.url(&lost)).send().await.expect("GET");
    assert_eq!(
        r.status().as_u16(),
        303,
        "a read-only token's page drops its controls"
    );
    let location = r.headers()["location"].to_str().expect("text").to_owned();
    assert!(
        location.starts_with("view?") && location.contains("interactive=false"),
        "{location}"
    );
    assert!(!location.contains("interactive=true"), "{location}");
    for page in ["viewer", "view", "viewer/facts"] {
        let (status, _) = gw
            .get(&format!("/v1/sessions/{id}/{page}?token={read_only}"))
            .await;
        assert_eq!(status, 200, "{page} with the read-only token");
    }

    for query in [
        format!("token={read_only}"),
        format!("token={read_only}&interactive=true"),
        format!("token={read_only}&interactive=1"),
    ] {
        let mut ws = viewer_socket(&gw, &id, &query).await;
        assert!(
            !navigation_reaches_the_page(&gw, &id, &mut ws).await,
            "read-only with {query}"
        );
    }
    let mut lowered =
        viewer_socket(&gw, &id, &format!("token={interactive}&interactive=false")).await;
    assert!(!navigation_reaches_the_page(&gw, &id, &mut lowered).await);
    let mut ws = viewer_socket(&gw, &id, &format!("token={interactive}")).await;
    assert!(
        navigation_reaches_the_page(&gw, &id, &mut ws).await,
        "the interactive token steers the page"
    );
    gw.stop().await;
}

/// A keys file that holds no key stops the gateway from starting, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_keys_file_without_keys_refuses_to_start() {
    let _shared = crate::common::shared().await;
    let data = tempfile::tempdir().expect("tempdir");
    let keys = data.path().join("keys");
    std::fs::write(&keys, "# nobody yet\n\n").expect("write");
    let mut settings = Settings::with_data_dir(data.path().join("data"));
    settings.api_keys_file = Some(keys.clone());
    settings.pool_size = 0;
    let built = Gateway::build(settings, FakeBrowserHost::new()).await;
    let Err(GatewayError::Settings(message)) = built else {
        panic!("the gateway started open with an empty keys file");
    };
    assert!(
        message.contains("--api-keys-file") && message.contains(&keys.display().to_string()),
        "{message}"
    );
}

/// Uploads count what the session's directory holds, the page's downloads included, against
/// `--max-session-files-bytes` and `--max-session-files`; a refused upload leaves nothing;
/// a path more than 8 directories deep is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_files_are_capped_in_bytes_entries_and_depth() {
    let gw = FakeGateway::start_with(|s| {
        s.max_session_files_bytes = 1000;
        s.max_session_files = 5;
    })
    .await;
    let id = id_of(&gw.create(json!({})).await);
    let ok = |r: Reply| assert_eq!(r.status, 200, "{}", r.body);
    ok(upload_as(&gw, &id, None, "a.bin", &[1; 600]).await);
    let deep = format!("{}f.txt", "d/".repeat(9));
    let r = upload_as(&gw, &id, None, &deep, b"x").await;
    let message = assert_error((r.status, &r.body), 400, "invalid_path");
    assert!(message.contains("at most 8 directories deep"), "{message}");
    let r = upload_as(&gw, &id, None, "b.bin", &[2; 600]).await;
    let message = assert_error((r.status, &r.body), 413, "session_files_too_large");
    assert!(message.contains("--max-session-files-bytes"), "{message}");
    ok(upload_as(&gw, &id, None, "a.bin", &[3; 900]).await);

    // A download the page made counts too.
    let dir = files_dir(&gw, &id).await;
    std::fs::write(dir.join("download.pdf"), [4; 200]).expect("a download");
    let r = upload_as(&gw, &id, None, "c.bin", b"x").await;
    assert_error((r.status, &r.body), 413, "session_files_too_large");
    std::fs::remove_file(dir.join("download.pdf")).expect("rm");

    // Entries: a.bin, then d1, d1/d2 and f make 4; x and x/y.txt would make 6.
    ok(upload_as(&gw, &id, None, "d1/d2/f", b"x").await);
    let r = upload_as(&gw, &id, None, "x/y.txt", b"x").await;
    let message = assert_error((r.status, &r.body), 413, "too_many_session_files");
    assert!(message.contains("--max-session-files"), "{message}");
    ok(upload_as(&gw, &id, None, "z.txt", b"x").await);
    let r = upload_as(&gw, &id, None, "one.txt", b"x").await;
    assert_error((r.status, &r.body), 413, "too_many_session_files");

    let (_, list) = gw.get(&format!("/v1/sessions/{id}/files")).await;
    let mut names: Vec<String> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|f| {
            f["path"]
                .as_str()
                .expect("path")
                .rsplit(&id)
                .next()
                .expect("name")
                .to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["/a.bin", "/d1/d2/f", "/z.txt"],
        "refused uploads left nothing"
    );
    let partial = dir.parent().expect("files root").join(".partial");
    assert_eq!(std::fs::read_dir(partial).expect("partial").count(), 0);
    gw.stop().await;
}

/// The session's files directory, from a listed file's path.
async fn files_dir(gw: &FakeGateway, id: &str) -> std::path::PathBuf {
    let (_, list) = gw.get(&format!("/v1/sessions/{id}/files")).await;
    let path = list["data"][0]["path"].as_str().expect("a file");
    Path::new(path).parent().expect("dir").to_path_buf()
}

/// A client that opens a new connection for each request.
fn fresh() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// A `GET` on a new connection that the gateway closes after answering; `None` when the
/// connection was closed without an answer.
async fn get_once(client: &reqwest::Client, gw: &FakeGateway, path: &str) -> Option<Reply> {
    let request = client.get(gw.url(path)).header("connection", "close");
    match timeout(STEP, request.send()).await.expect("in time") {
        Ok(r) => Some(reply(r).await),
        Err(_) => None,
    }
}

/// As [`get_once`], tried again while connections that just closed are still counted.
async fn get_retrying(client: &reqwest::Client, gw: &FakeGateway, path: &str) -> Reply {
    for _ in 0..100 {
        if let Some(r) = get_once(client, gw, path).await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path}: every connection was closed at once");
}

/// A keep-alive connection that made one request (`/healthz`) and stays open; `None` when
/// the gateway closed it at once.
async fn open_idle(gw: &FakeGateway) -> Option<TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";
    stream.write_all(head).await.ok()?;
    let mut answer = [0u8; 4096];
    let n = timeout(STEP, stream.read(&mut answer))
        .await
        .expect("in time")
        .unwrap_or(0);
    (n > 0).then_some(stream)
}

/// Whether the gateway closes `stream` within a short wait (EOF), having sent nothing more
/// than an answer already read.
fn connection_closes(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    for _ in 0..25 {
        match stream.try_read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return true,
        }
    }
    false
}

/// Over the soft connection cap, new connections serve only the probe routes (others get
/// 503 `too_many_connections` with `Retry-After`); at the cap they are closed at once;
/// connections already open, a CDP WebSocket among them, go on; once connections close,
/// the API answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped_with_a_reserve_for_probes() {
    let gw = FakeGateway::start_with(|s| {
        s.max_connections = Some(40);
        s.header_timeout_ms = 60_000;
    })
    .await;
    let session = gw.create(json!({})).await;
    let mut cdp = CdpClient::connect_to(&session).await;
    let client = fresh();
    let mut idle = Vec::new();
    let busy = loop {
        assert!(
            idle.len() < 40,
            "never refused with {} idle connections",
            idle.len()
        );
        match get_once(&client, &gw, "/v1/sessions").await {
            Some(r) if r.status == 200 => idle.push(open_idle(&gw).await.expect("under the cap")),
            Some(r) => break r,
            // Closed at once: connections that just closed are still being counted.
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let message = assert_error((busy.status, &busy.body), 503, "too_many_connections");
    assert!(message.contains("--max-connections"), "{message}");
    assert_eq!(busy.retry_after.as_deref(), Some("1"));
    eprintln!("refused after {} idle connections", idle.len());
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = get_retrying(&client, &gw, probe).await;
        assert_eq!(r.status, 200, "{probe} over the soft cap");
    }
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(
        reply["result"]["product"], FAKE_PRODUCT,
        "an open socket goes on"
    );

    // A probe over the soft cap closes its connection, so probes cannot fill the reserve.
    assert!(
        open_idle(&gw)
            .await
            .is_none_or(|mut s| connection_closes(&mut s)),
        "a probe over the soft cap keeps its connection"
    );
    // Connections that send nothing still count until their head times out; at the cap
    // a new one is closed at once.
    let mut silent = Vec::new();
    let mut closed = false;
    for _ in 0..12 {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        if connection_closes(&mut stream) {
            closed = true;
            break;
        }
        silent.push(stream);
    }
    assert!(closed, "a connection past the cap is closed at once");

    drop(idle);
    drop(silent);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if get_once(&client, &gw, "/v1/sessions")
            .await
            .is_some_and(|r| r.status == 200)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API is still refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = client
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "ingot_http_connections ",
        "ingot_http_connections_max ",
        "ingot_http_connections_refused_total{",
    ] {
        let series = name.trim_end_matches([' ', '{']);
        assert!(
            metrics.contains(&format!("# HELP {series} ")),
            "{series} has help"
        );
        assert!(metrics.contains(name), "{name} exported");
    }
    cdp.close().await;
    gw.stop().await;
}

/// In a cluster, an id live on one node, or ended there, is refused on another with the
/// same 409 whoever asks (the check reads the shared PostgreSQL ledger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_used_on_another_node_is_refused() {
    let pg = crate::common::postgres::Postgres::start();
    pg.create_database("ids_across_nodes");
    let url = pg.url("ids_across_nodes");
    let node = |name: &'static str| {
        let url = url.clone();
        move |s: &mut Settings| {
            with_tenants(s);
            s.database_url = Some(url);
            s.node_id = Some(name.into());
        }
    };
    let a = FakeGateway::start_with(node("a")).await;
    let b = FakeGateway::start_with(node("b")).await;
    let id = uuid::Uuid::new_v4().to_string();
    a.create_as(Some(ALICE), json!({"sessionId": id})).await;
    let live = refused_create(&b, BOB, &id).await;
    assert_eq!(refused_create(&b, ALICE, &id).await, live, "live on a");
    let r = a
        .request(
            Method::POST,
            &format!("/v1/sessions/{id}/release"),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(refused_create(&b, BOB, &id).await, live, "ended on a");
    assert_eq!(refused_create(&b, ALICE, &id).await, live);
    assert_eq!(refused_create(&a, BOB, &id).await, live);
    assert_eq!(
        b.host.launches(),
        1,
        "no browser was started for a taken id"
    );
    b.stop().await;
    a.stop().await;
}
