//! The locate policies end to end: every route about one session (`src/api/locate.rs`'s
//! `Route`), asked on a node of an in-process cluster that does not run the session, in each
//! of the cases the README's table "Where a request about a session is answered" names:
//! relayed to the owner, which answers as it would itself; owner listed but unreachable;
//! session ended on its owner, or its node gone; unknown id. Each case is a table (route →
//! request → expected answer), and [`every_route_of_locate_is_in_the_table`] fails when
//! `Route` gains a variant this table does not drive.
//!
//! It owns no gateway code: it only asks gateways of a [`FakeCluster`], and points one node's
//! advertised address somewhere unreachable through `InMemoryCluster::readdress`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::cluster::FakeCluster;
use super::{FAKE_PRODUCT, FakeGateway, STEP, id_of};

/// The routes of `locate::Route`, by the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Retrieve,
    Release,
    Timeout,
    Context,
    LiveDetails,
    Computer,
    Version,
    Connect,
    Viewer,
    ViewerSocket,
    Files,
    Upload,
}

/// Every route, in the order the relayed case drives them: an upload before the list that
/// shows it, the release (which ends the session) last.
const ROUTES: [Route; 12] = [
    Route::Retrieve,
    Route::Timeout,
    Route::Context,
    Route::LiveDetails,
    Route::Computer,
    Route::Version,
    Route::Connect,
    Route::Viewer,
    Route::ViewerSocket,
    Route::Upload,
    Route::Files,
    Route::Release,
];

/// Longest a relayed request may take to fail when its owner cannot be reached: the
/// connect deadline (1.5 s), with room for a loaded machine.
const UNREACHABLE_WITHIN: Duration = Duration::from_millis(2_500);

/// What a route answered: the status (101 for an accepted upgrade) and a JSON body (for an
/// accepted CDP socket, the answer to `Browser.getVersion`; for the viewer's socket, its
/// first message).
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

/// What a case expects of one route.
#[derive(Debug, Clone)]
enum Want {
    /// This status, and the JSON value at this pointer.
    Ok(u16, &'static str, Value),
    /// This status and `error.code`.
    Err(u16, &'static str),
}

/// The session a request is about, and the viewer token for it.
struct Target<'a> {
    id: &'a str,
    token: String,
}

/// Asks `node` about `target` by `route`.
async fn ask(node: &FakeGateway, route: Route, target: &Target<'_>) -> Answer {
    let (id, token) = (target.id, target.token.as_str());
    let session = format!("/v1/sessions/{id}");
    let (method, path, body) = match route {
        Route::Retrieve => (Method::GET, session, None),
        Route::Release => (Method::POST, format!("{session}/release"), Some(json!({}))),
        Route::Timeout => (
            Method::POST,
            format!("{session}/timeout"),
            Some(json!({"timeout": 600_000})),
        ),
        Route::Context => (Method::GET, format!("{session}/context"), None),
        Route::LiveDetails => (Method::GET, format!("{session}/live-details"), None),
        Route::Computer => (
            Method::POST,
            format!("{session}/computer"),
            Some(json!({"action": "get_cursor_position"})),
        ),
        Route::Version => (Method::GET, format!("/json/version?sessionId={id}"), None),
        Route::Viewer => (
            Method::GET,
            format!("{session}/viewer/facts?token={token}"),
            None,
        ),
        Route::Files => (Method::GET, format!("{session}/files"), None),
        Route::Upload => return upload(node, &format!("{session}/files")).await,
        Route::Connect => return connect(node, &node.ws_url(id)).await,
        Route::ViewerSocket => {
            let url = node.url(&format!("{session}/viewer/ws?token={token}"));
            return connect(node, &url.replace("http://", "ws://")).await;
        }
    };
    let reply = node.request(method, &path, None, body).await;
    Answer {
        status: reply.status,
        body: reply.body,
    }
}

/// Uploads `a.txt` (`abc`).
async fn upload(node: &FakeGateway, path: &str) -> Answer {
    let part = Part::bytes(b"abc".to_vec()).file_name("a.txt");
    let request = node
        .http
        .post(node.url(path))
        .multipart(Form::new().part("file", part));
    let reply = timeout(STEP, request.send())
        .await
        .expect("answer in time")
        .expect("POST files");
    let status = reply.status().as_u16();
    let body = reply.json().await.unwrap_or(Value::Null);
    Answer { status, body }
}

/// A WebSocket upgrade to `url` from the node's own origin (the viewer's socket takes no
/// other): a refusal's status and body, or 101 and what the socket says first (for CDP,
/// the answer to `Browser.getVersion`).
async fn connect(node: &FakeGateway, url: &str) -> Answer {
    let mut request = url.into_client_request().expect("a WebSocket request");
    let origin = format!("http://{}", node.addr);
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("an origin header"));
    let attempt = timeout(STEP, tokio_tungstenite::connect_async(request))
        .await
        .expect("answer in time");
    let mut ws = match attempt {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(refused)) => {
            let body = refused.body().as_deref().unwrap_or_default();
            return Answer {
                status: refused.status().as_u16(),
                body: serde_json::from_slice(body).unwrap_or(Value::Null),
            };
        }
        Err(e) => panic!("connecting to {url}: {e}"),
    };
    let cdp = !url.contains("/viewer/ws");
    if cdp {
        let command = json!({"id": 1, "method": "Browser.getVersion"}).to_string();
        ws.send(Message::text(command)).await.expect("send");
    }
    let first = timeout(STEP, async {
        while let Some(message) = ws.next().await {
            if let Message::Text(text) = message.expect("a message") {
                return serde_json::from_str::<Value>(&text).expect("JSON");
            }
        }
        panic!("{url} closed before its first message")
    })
    .await
    .expect("a first message in time");
    let _ = ws.close(None).await;
    Answer {
        status: 101,
        body: first,
    }
}

/// Asserts `answer` is what `want` says, for `what`.
fn check(answer: &Answer, want: &Want, what: &str) {
    match want {
        Want::Ok(status, pointer, value) => {
            assert_eq!(answer.status, *status, "{what}: {}", answer.body);
            assert_eq!(
                answer.body.pointer(pointer),
                Some(value),
                "{what}: {pointer} of {}",
                answer.body
            );
        }
        Want::Err(status, code) => {
            assert_eq!(answer.status, *status, "{what}: {}", answer.body);
            assert_eq!(
                answer.body["error"]["code"], *code,
                "{what}: {}",
                answer.body
            );
        }
    }
}

/// The viewer token of session `id` in a cluster with `secret` (the interactive one, as
/// `viewer::Viewers::token` makes it), for an id no node knows.
fn token_of_unknown(secret: &str, id: &str) -> String {
    let id = uuid::Uuid::parse_str(id).expect("a session id");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
    mac.update(b"ingot viewer token\0");
    mac.update(id.as_bytes());
    let digest = mac.finalize().into_bytes();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The viewer token in a session's `debugUrl`.
fn token_of(session: &Value) -> String {
    let url = session["debugUrl"].as_str().expect("debugUrl");
    let (_, token) = url.split_once("token=").expect("a viewer token");
    token.to_owned()
}

/// Two nodes, a session live on `a` (asked on `b`), with its viewer token.
async fn cluster_with_a_session_on_a() -> (FakeCluster, String, String) {
    let cluster = FakeCluster::start(2, |_| {}).await;
    let session = cluster.node("a").create(json!({})).await;
    let id = id_of(&session);
    assert_eq!(cluster.owner(&id), "a");
    (cluster, id, token_of(&session))
}

/// The route names in `locate::Route`'s declaration, in `src/api/locate.rs`.
fn declared_routes() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/locate.rs");
    let source = std::fs::read_to_string(path).expect("src/api/locate.rs");
    let (_, after) = source
        .split_once(" enum Route {")
        .expect("locate declares `enum Route`");
    let (body, _) = after.split_once("\n}").expect("the enum ends");
    body.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("#["))
        .filter_map(|l| l.strip_suffix(','))
        .map(str::to_owned)
        .collect()
}

/// The table here drives every route `locate` declares: a new route fails this test until
/// it is added to [`ROUTES`] (and so to every case below).
#[test]
fn every_route_of_locate_is_in_the_table() {
    let mut declared = declared_routes();
    let mut driven: Vec<String> = ROUTES.iter().map(|r| format!("{r:?}")).collect();
    declared.sort();
    driven.sort();
    assert_eq!(declared.len(), 12, "{declared:?}");
    assert_eq!(driven, declared);
}

/// 1. Asked on the node that does not run the session, every route is relayed to the owner,
///    which answers as it would itself; the session ended last (the release) is then asked
///    once more on `b`:
/// 3. every route gives its "runs nowhere" answer (the records, 409, 410), the files still
///    served by the node that ran the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_is_relayed_to_the_owner_then_answers_as_ended() {
    let (cluster, id, token) = cluster_with_a_session_on_a().await;
    let b = cluster.node("b");
    let target = Target { id: &id, token };
    for route in ROUTES {
        let want = match route {
            Route::Retrieve => Want::Ok(200, "/id", json!(id)),
            Route::Release => Want::Ok(200, "/success", json!(true)),
            Route::Timeout => Want::Ok(200, "/timeout", json!(600_000)),
            Route::Context => Want::Ok(200, "/cookies", json!([])),
            Route::LiveDetails => Want::Ok(200, "/pages/0/url", json!("about:blank")),
            Route::Computer => Want::Ok(200, "/output", json!("X=0,Y=0")),
            Route::Version => Want::Ok(200, "/Browser", json!(FAKE_PRODUCT)),
            Route::Connect => Want::Ok(101, "/result/product", json!(FAKE_PRODUCT)),
            Route::Viewer => Want::Ok(200, "/status", json!("live")),
            Route::ViewerSocket => Want::Ok(101, "/type", json!("tabs")),
            Route::Files => Want::Ok(200, "/data/0/size", json!(3)),
            Route::Upload => Want::Ok(200, "/size", json!(3)),
        };
        check(&ask(b, route, &target).await, &want, &format!("{route:?}"));
    }
    assert_eq!(
        cluster.node("a").session(&id).await["status"],
        "released",
        "the release reached the owner"
    );
    for route in ROUTES {
        let want = match route {
            // The files stay with the node that ran the session, which answers.
            Route::Files => Want::Ok(200, "/data/0/size", json!(3)),
            _ => when_not_running(route, "released"),
        };
        check(
            &ask(b, route, &target).await,
            &want,
            &format!("ended: {route:?}"),
        );
    }
    cluster.stop().await;
}

/// What a route gives for a session that runs nowhere, asked on a node that never ran it
/// (the README's "runs nowhere" column): `status` is what its record says.
fn when_not_running(route: Route, status: &str) -> Want {
    match route {
        Route::Retrieve => Want::Ok(200, "/status", json!(status)),
        Route::Release => Want::Ok(200, "/success", json!(true)),
        Route::Timeout | Route::Context | Route::LiveDetails | Route::Computer | Route::Upload => {
            Want::Err(409, "session_ended")
        }
        Route::Version | Route::Connect | Route::Viewer | Route::ViewerSocket => {
            Want::Err(410, "session_ended")
        }
        // This node's files of it: none.
        Route::Files => Want::Ok(200, "/data", json!([])),
    }
}

/// 3. (its node is gone) The node that ran a session has left the cluster (its lease is
///    over) and the records still call the session live: every route asked on `b` gives its
///    "runs nowhere" answer, from `b` alone (the files with it: `b` has none of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_of_a_session_whose_node_is_gone_answers_as_not_running() {
    let (cluster, id, token) = cluster_with_a_session_on_a().await;
    let b = cluster.node("b");
    let target = Target { id: &id, token };
    let uploaded = ask(b, Route::Upload, &target).await;
    check(&uploaded, &Want::Ok(200, "/size", json!(3)), "upload to a");
    cluster.shared.lose("a");
    for route in ROUTES {
        let want = when_not_running(route, "live");
        check(&ask(b, route, &target).await, &want, &format!("{route:?}"));
    }
    cluster.stop().await;
}

/// What a route gives when its owner is listed, live, but cannot be reached: retrieve
/// answers from the records, every other route 502 `node_unreachable`.
fn when_unreachable(route: Route) -> Want {
    match route {
        Route::Retrieve => Want::Ok(200, "/status", json!("live")),
        Route::Release
        | Route::Timeout
        | Route::Context
        | Route::LiveDetails
        | Route::Computer
        | Route::Version
        | Route::Connect
        | Route::Viewer
        | Route::ViewerSocket
        | Route::Files
        | Route::Upload => Want::Err(502, "node_unreachable"),
    }
}

/// 2. The owner is still listed, live, but its address (`leads_to`) leads nowhere: every
///    route, asked on `b` at once, gives what [`when_unreachable`] says, each within the
///    connect deadline; once its address is given back, `a` is reached again. Returns the
///    longest any route took.
async fn an_unreachable_owner_gives_what_each_route_declares(leads_to: &str) -> Duration {
    let (cluster, id, token) = cluster_with_a_session_on_a().await;
    let b = cluster.node("b");
    let target = Target { id: &id, token };
    let advertised = cluster
        .shared
        .readdress("a", leads_to)
        .expect("a is listed");
    let asked = ROUTES.map(|route| {
        let target = &target;
        async move {
            let started = Instant::now();
            let answer = ask(b, route, target).await;
            (route, answer, started.elapsed())
        }
    });
    let mut longest = Duration::ZERO;
    for (route, answer, took) in futures_util::future::join_all(asked).await {
        check(
            &answer,
            &when_unreachable(route),
            &format!("{route:?} to {leads_to}"),
        );
        assert!(took < UNREACHABLE_WITHIN, "{route:?} took {took:?}");
        longest = longest.max(took);
    }
    cluster.shared.readdress("a", &advertised);
    b.release(&id).await;
    cluster.stop().await;
    longest
}

/// The owner's port is closed: every connection is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_on_a_closed_port_gives_what_each_route_declares() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let longest = an_unreachable_owner_gives_what_each_route_declares(&url).await;
    assert!(
        longest < Duration::from_millis(500),
        "refused at once: {longest:?}"
    );
}

/// The owner's address drops every connection attempt (a listener that accepts nothing,
/// its queue full: the kernel drops further SYNs, as a black-holed route does): the connect
/// deadline cuts each request off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_drops_packets_gives_what_each_route_declares() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let addr = socket.local_addr().expect("address");
    let _deaf = socket.listen(0).expect("listen");
    let mut queued = Vec::new();
    loop {
        match timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(stream) => queued.push(stream.expect("a queued connection")),
            Err(_) => break,
        }
        assert!(queued.len() < 16, "the listener's queue never fills");
    }
    let longest =
        an_unreachable_owner_gives_what_each_route_declares(&format!("http://{addr}")).await;
    assert!(
        longest > Duration::from_millis(1_400),
        "the connects waited for their deadline: {longest:?}"
    );
}

/// 4. An id no node knows: 404 `session_not_found` on every route from every node, but the
///    viewer's routes, where even a token that fits gives 410 (it stands for the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_is_not_found_on_every_route_of_every_node() {
    let (cluster, _, _) = cluster_with_a_session_on_a().await;
    let id = uuid::Uuid::new_v4().to_string();
    let target = Target {
        id: &id,
        token: token_of_unknown(cluster.shared.secret(), &id),
    };
    for node in &cluster.nodes {
        for route in ROUTES {
            let want = match route {
                Route::Viewer | Route::ViewerSocket => Want::Err(410, "session_ended"),
                _ => Want::Err(404, "session_not_found"),
            };
            let what = format!("{route:?} on {}", node.addr);
            check(&ask(node, route, &target).await, &want, &what);
        }
    }
    cluster.stop().await;
}
