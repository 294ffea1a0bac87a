//! In-process tests: the gateway built with [`Gateway::build`] on a [`FakeBrowserHost`]
//! (browsers are tokio tasks speaking enough CDP), served on a loopback port of this process
//! and driven through real HTTP requests and real WebSockets. No Chromium and no process is
//! started, so a test takes milliseconds, or the second that a session's shortest timeout
//! lasts.
//!
//! One module per area: the HTTP API and its OpenAPI document, admission, the warm pool, the
//! per-session supervisor, and the CDP multiplexer with the WebSocket proxy. The metrics recorder is process-wide,
//! shared with every other gateway of the test process, so no test here asserts a metric.

mod admission;
mod api;
mod cluster;
mod engines;
mod entry;
mod fence;
mod files;
mod guard;
mod history;
mod identity;
mod locate;
mod memory_limit;
mod mux;
mod openapi;
mod pool;
mod scenarios;
mod supervisor;
mod tenancy;
mod viewer;
mod viewer_socket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ingot::testing::{FakeBrowser, FakeBrowserHost, InMemoryMembership};
use ingot::{Gateway, GatewayError, Settings};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::RwLockReadGuard;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Longest any single step (a request, a message, a state change) may take before the test
/// fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(5);

/// Longest a background sweep may take to happen (a retention of a second or two, swept
/// every second).
pub const SLOW_STEP: Duration = Duration::from_secs(15);

/// How long `stop` waits for `serve` to return.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// Two tenants' keys, for `api_keys = Some(TENANTS.into())`.
pub const TENANTS: &str = "alice:alice-key-0123456789abcdef,bob:bob-key-0123456789abcdef";
pub const ALICE: &str = "alice-key-0123456789abcdef";
pub const BOB: &str = "bob-key-0123456789abcdef";

/// The fake browsers' `Browser.getVersion` product.
pub const FAKE_PRODUCT: &str = "FakeChrome/1.0";

/// A gateway served in-process on a fake browser host.
pub struct FakeGateway {
    pub host: Arc<FakeBrowserHost>,
    pub http: reqwest::Client,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    serving: Option<JoinHandle<Result<(), GatewayError>>>,
    tmp: Option<tempfile::TempDir>,
    /// Gateways of the test process wait while a test that must run alone runs (the
    /// gateways of one in-process cluster share one guard).
    _shared: Arc<RwLockReadGuard<'static, ()>>,
}

/// An HTTP answer: status, `Retry-After`, and the JSON body (`Null` if not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl FakeGateway {
    /// A gateway with the harness defaults: no warm pool, at most 4 sessions.
    pub async fn start() -> FakeGateway {
        FakeGateway::start_with(|_| {}).await
    }

    /// A gateway with the harness defaults, then `adjust`ed.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> FakeGateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        FakeGateway::start_in(tmp, adjust).await
    }

    /// A gateway on the data directory a stopped one left (a restart).
    pub async fn start_in(
        tmp: tempfile::TempDir,
        adjust: impl FnOnce(&mut Settings),
    ) -> FakeGateway {
        FakeGateway::start_built(tmp, adjust, |gateway| gateway).await
    }

    /// A gateway that keeps a lease of `lease` in an in-memory cluster, which the test can
    /// cut it off from: a node of a cluster, for the fence.
    pub async fn start_leased(
        lease: Duration,
        adjust: impl FnOnce(&mut Settings),
    ) -> (FakeGateway, Arc<InMemoryMembership>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let membership = Arc::new(InMemoryMembership::new(lease));
        let leased = membership.clone();
        let gw = FakeGateway::start_built(tmp, adjust, move |gateway| {
            gateway.with_lease(leased, lease)
        })
        .await;
        (gw, membership)
    }

    /// Builds a gateway on `tmp` with the test defaults and `adjust`, lets `finish` change
    /// the built gateway, and serves it.
    async fn start_built(
        tmp: tempfile::TempDir,
        adjust: impl FnOnce(&mut Settings),
        finish: impl FnOnce(Gateway) -> Gateway,
    ) -> FakeGateway {
        let shared = crate::common::shared().await;
        let mut settings = Settings::with_data_dir(tmp.path());
        settings.pool_size = 0;
        settings.max_sessions = Some(4);
        adjust(&mut settings);
        let host = FakeBrowserHost::new();
        // Gateways built at the same moment share the process-wide metrics recorder.
        let gateway = timeout(STEP, Gateway::build(settings, host.clone()))
            .await
            .expect("build in time")
            .expect("the gateway builds");
        FakeGateway::serve(finish(gateway), host, tmp, Arc::new(shared)).await
    }

    async fn serve(
        gateway: Gateway,
        host: Arc<FakeBrowserHost>,
        tmp: tempfile::TempDir,
        shared: Arc<RwLockReadGuard<'static, ()>>,
    ) -> FakeGateway {
        assert_eq!(host.launches(), 1, "build makes one probe launch");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(gateway.serve(listener, shutdown.clone().cancelled_owned()));
        FakeGateway {
            host,
            http: reqwest::Client::new(),
            addr,
            shutdown,
            serving: Some(serving),
            tmp: Some(tmp),
            _shared: shared,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The session's `websocketUrl`, as the gateway builds it.
    pub fn ws_url(&self, session: &str) -> String {
        format!("ws://{}/?sessionId={session}", self.addr)
    }

    /// Starts shutting down (as SIGTERM does) without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts the gateway down, asserts `serve` returned `Ok` in time and that every fake
    /// browser was reaped. Returns the data directory, still present, for reading what the
    /// gateway left there.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        let serving = self.serving.take().expect("still serving");
        let served = timeout(STOP_WITHIN, serving)
            .await
            .expect("serve returns in time after shutdown")
            .expect("the serve task did not panic");
        assert!(served.is_ok(), "serve failed: {served:?}");
        assert_eq!(
            (self.host.unreaped(), self.host.alive()),
            (0, 0),
            "every fake browser is reaped once the gateway stopped (unreaped, alive)"
        );
        self.tmp.take().expect("data directory")
    }

    /// A request with an optional API key (`steel-api-key`) and JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, self.url(path));
        if let Some(key) = key {
            request = request.header("steel-api-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request).await
    }

    /// A request with exactly these bytes as its body, of `content_type`.
    pub async fn request_bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let request = self
            .http
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body);
        send(request).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.request(reqwest::Method::GET, path, None, None).await;
        (r.status, r.body)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::POST, path, None, Some(body))
            .await;
        (r.status, r.body)
    }

    /// A `POST /v1/sessions` that runs on its own, for creates that wait in the queue.
    pub fn create_later(
        &self,
        key: Option<&str>,
        body: Value,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let mut request = self.http.post(self.url("/v1/sessions")).json(&body);
        if let Some(key) = key {
            request = request.header("steel-api-key", key);
        }
        async move {
            let r = request.send().await.expect("POST /v1/sessions");
            reply(r).await
        }
    }

    /// Creates a session and asserts it is live.
    pub async fn create(&self, body: Value) -> Value {
        self.create_as(None, body).await
    }

    pub async fn create_as(&self, key: Option<&str>, body: Value) -> Value {
        let r = self
            .request(reqwest::Method::POST, "/v1/sessions", key, Some(body))
            .await;
        assert_eq!(r.status, 200, "create failed: {}", r.body);
        assert_eq!(r.body["status"], "live", "{}", r.body);
        r.body
    }

    /// Retrieves a session and asserts it is found.
    pub async fn session(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 200, "retrieve {id}: {body}");
        body
    }

    /// Releases a session and asserts the answer.
    pub async fn release(&self, id: &str) {
        let (status, body) = self
            .post(&format!("/v1/sessions/{id}/release"), json!({}))
            .await;
        assert_eq!(status, 200, "release {id}: {body}");
        assert_eq!(
            body,
            json!({"success": true, "message": "Session released successfully"})
        );
    }

    /// Polls until the session is no longer live; returns it.
    pub async fn wait_ended(&self, id: &str) -> Value {
        let ended = timeout(STEP, async {
            loop {
                let session = self.session(id).await;
                if session["status"] != "live" {
                    return session;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        ended.unwrap_or_else(|_| panic!("session {id} still live after {STEP:?}"))
    }

    /// Polls `/readyz` until it answers `status`.
    pub async fn wait_readyz(&self, status: u16) -> Value {
        let ready = timeout(STEP, async {
            loop {
                let (got, body) = self.get("/readyz").await;
                if got == status {
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        ready.unwrap_or_else(|_| panic!("/readyz did not answer {status} within {STEP:?}"))
    }

    /// The fake browser launched for (or pooled under) this session id.
    pub fn browser_of(&self, id: &str) -> Arc<FakeBrowser> {
        let id = uuid::Uuid::parse_str(id).expect("a session id");
        self.host
            .browsers()
            .into_iter()
            .find(|b| b.spec().session_id == id)
            .unwrap_or_else(|| panic!("no fake browser for session {id}"))
    }

    /// Waits until `condition` holds on the host.
    pub async fn wait_host(&self, what: &str, condition: impl Fn(&FakeBrowserHost) -> bool) {
        assert!(
            self.host.wait_until(STEP, condition).await,
            "{what}: not within {STEP:?}"
        );
    }

    /// Waits (polling, at most [`SLOW_STEP`]) until `condition` holds.
    pub async fn wait_for(&self, what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + SLOW_STEP;
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {SLOW_STEP:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        // A test that failed before `stop` must not leave its gateway serving.
        self.shutdown.cancel();
    }
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let r = timeout(STEP, request.send())
        .await
        .expect("answer in time")
        .expect("HTTP request");
    timeout(STEP, reply(r)).await.expect("body in time")
}

async fn reply(r: reqwest::Response) -> Reply {
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        retry_after,
        body,
    }
}

/// Asserts an error answer: status, `error.code`, and the JSON shape
/// `{"message", "error": {"code", "message"}}`. Returns the message.
pub fn assert_error(reply: (u16, &Value), status: u16, code: &str) -> String {
    let (got, body) = reply;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["message"].as_str().expect("message").to_owned();
    assert_eq!(body["error"]["message"], message.as_str(), "{body}");
    message
}

/// The id of a Session JSON.
pub fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
}

/// A raw CDP client over a real WebSocket.
pub struct CdpClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: i64,
}

impl CdpClient {
    pub async fn connect(url: &str) -> CdpClient {
        let connected = timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time");
        let (ws, _) = connected.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        CdpClient { ws, next_id: 1 }
    }

    /// Connects to a session's `websocketUrl`.
    pub async fn connect_to(session: &Value) -> CdpClient {
        CdpClient::connect(session["websocketUrl"].as_str().expect("websocketUrl")).await
    }

    pub async fn send(&mut self, message: Message) {
        timeout(STEP, self.ws.send(message))
            .await
            .expect("send in time")
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::Text(text.into())).await;
    }

    /// Sends a command with the next id, on `session` when given; returns the id.
    pub async fn send_command(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        self.send_text(&command.to_string()).await;
        id
    }

    /// The next message from the gateway, as JSON. Panics on anything else.
    pub async fn next(&mut self) -> Value {
        loop {
            let frame = timeout(STEP, self.ws.next())
                .await
                .expect("a message in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("JSON from the gateway");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next message from the gateway within `within`, if one comes (pings skipped).
    pub async fn next_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("JSON from the gateway"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Sends a command and reads up to its reply; returns the events read first, and the
    /// reply.
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> (Vec<Value>, Value) {
        let id = self.send_command(method, params, session).await;
        let mut before = Vec::new();
        loop {
            let message = self.next().await;
            if message["id"] == id {
                return (before, message);
            }
            before.push(message);
        }
    }

    /// Turns on auto-attach as Playwright and Puppeteer do; asserts the page's announcement
    /// comes first, as Chromium sends it to a direct client, then the reply. Returns the
    /// page's CDP session.
    pub async fn auto_attach(&mut self) -> String {
        let params = json!({"autoAttach": true, "waitForDebuggerOnStart": false, "flatten": true});
        let id = self
            .send_command("Target.setAutoAttach", params, None)
            .await;
        let event = self.next().await;
        assert_eq!(event["method"], "Target.attachedToTarget", "{event}");
        assert!(
            event.get("sessionId").is_none(),
            "the client's browser session is stripped: {event}"
        );
        assert_eq!(event["params"]["targetInfo"]["type"], "page", "{event}");
        assert_eq!(event["params"]["waitingForDebugger"], false, "{event}");
        let reply = self.next().await;
        assert_eq!(reply, json!({"id": id, "result": {}}));
        event["params"]["sessionId"]
            .as_str()
            .expect("page session")
            .to_owned()
    }

    /// Reads until the gateway closes the socket; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let frame = timeout(STEP, self.ws.next()).await.expect("closed in time");
            match frame {
                Some(Ok(Message::Close(Some(frame)))) => {
                    // Reading on sends the answer to the close frame, as clients do; the
                    // gateway waits for it before it lets go of the socket.
                    let _ = timeout(STEP, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Closes the socket from the client's side and waits for the gateway's answer.
    pub async fn close(mut self) {
        let _ = timeout(STEP, self.ws.close(None)).await;
        let _ = timeout(STEP, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Asserts that a WebSocket upgrade to `url` is refused with `status` before the upgrade.
pub async fn assert_upgrade_refused(url: &str, status: u16) {
    let attempt = timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .expect("answer in time");
    match attempt {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), status, "refusal of {url}");
        }
        Err(e) => panic!("unexpected error connecting to {url}: {e}"),
        Ok(_) => panic!("the upgrade to {url} was accepted"),
    }
}
