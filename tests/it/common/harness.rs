//! The verbs a scenario needs from a gateway under test, behind one trait, so that a
//! behaviour is written once (in `crate::scenario`) and run on both gateways: in-process on
//! the fake browser host ([`FakeGateway`], the default, milliseconds) and as a real `ingot`
//! binary with real Chromium ([`Gateway`], the slow suite). It owns no scenario and no
//! assertion about behaviour; each implementation only maps a verb to its gateway's own
//! helpers (HTTP requests, killing a browser, counting browsers).

use std::time::Duration;

use serde_json::Value;

use super::{Gateway, browser_leader, kill_group, running_processes, secs};
use crate::inproc::{CdpClient, FakeGateway};

/// A gateway a scenario drives: HTTP, CDP clients, and its browsers seen from outside.
#[allow(async_fn_in_trait)]
pub trait Harness {
    /// `POST path` with a JSON body: the status and the JSON answer (`Null` if not JSON).
    async fn post(&self, path: &str, body: Value) -> (u16, Value);
    /// `POST path` with exactly these bytes as an `application/json` body.
    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value);
    /// `GET path`.
    async fn get(&self, path: &str) -> (u16, Value);
    /// `method path` with `key` as `steel-api-key` when given (and `{}` as a POST's body).
    async fn request_as(&self, method: &str, path: &str, key: Option<&str>) -> (u16, Value);
    /// Creates a session, asserting it is live; its Session JSON.
    async fn create(&self, body: Value) -> Value;
    /// Retrieves a session, asserting it is found.
    async fn session(&self, id: &str) -> Value;
    /// Polls until the session is no longer live; returns it.
    async fn wait_ended(&self, id: &str) -> Value;
    /// The gateway's HTTP URL of `path`.
    fn url(&self, path: &str) -> String;
    /// The session's CDP WebSocket URL as the gateway hands it out.
    fn ws_url(&self, id: &str) -> String;
    /// Connects a CDP client to the session's `websocketUrl`.
    async fn connect(&self, session: &Value) -> CdpClient {
        CdpClient::connect_to(session).await
    }
    /// Kills the session's browser from outside the gateway (a crash).
    fn kill_browser(&self, id: &str);
    /// Whether the session's browser still runs.
    fn browser_running(&self, id: &str) -> bool;
    /// Browsers of this gateway running now.
    fn browsers_running(&self) -> usize;
    /// Waits until no browser of this gateway runs and nothing of one is left.
    async fn wait_clean(&self);
    /// What a timing of the real world may take beyond the ideal (a session's end after its
    /// timeout): a real browser and a loaded machine take longer than a tokio task.
    fn slack(&self) -> Duration;
    /// A short session timeout (ms) that a session still surely goes live within.
    fn short_timeout_ms(&self) -> u64;
}

impl Harness for FakeGateway {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        FakeGateway::post(self, path, body).await
    }

    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .request_bytes(reqwest::Method::POST, path, "application/json", body)
            .await;
        (r.status, r.body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        FakeGateway::get(self, path).await
    }

    async fn request_as(&self, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
        let method: reqwest::Method = method.parse().expect("an HTTP method");
        let body = (method == reqwest::Method::POST).then(|| serde_json::json!({}));
        let r = self.request(method, path, key, body).await;
        (r.status, r.body)
    }

    async fn create(&self, body: Value) -> Value {
        FakeGateway::create(self, body).await
    }

    async fn session(&self, id: &str) -> Value {
        FakeGateway::session(self, id).await
    }

    async fn wait_ended(&self, id: &str) -> Value {
        FakeGateway::wait_ended(self, id).await
    }

    fn url(&self, path: &str) -> String {
        FakeGateway::url(self, path)
    }

    fn ws_url(&self, id: &str) -> String {
        FakeGateway::ws_url(self, id)
    }

    fn kill_browser(&self, id: &str) {
        self.browser_of(id).crash();
    }

    fn browser_running(&self, id: &str) -> bool {
        self.browser_of(id).is_alive()
    }

    fn browsers_running(&self) -> usize {
        self.host.alive()
    }

    async fn wait_clean(&self) {
        self.wait_host("every browser is reaped", |host| {
            host.alive() == 0 && host.unreaped() == 0
        })
        .await;
    }

    fn slack(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn short_timeout_ms(&self) -> u64 {
        1000
    }
}

impl Harness for Gateway {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        Gateway::post(self, path, body).await
    }

    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.post_raw(path, "application/json", body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        Gateway::get(self, path).await
    }

    async fn request_as(&self, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
        let method: reqwest::Method = method.parse().expect("an HTTP method");
        let mut r = self.http.request(method.clone(), self.url(path));
        if method == reqwest::Method::POST {
            r = r.json(&serde_json::json!({}));
        }
        if let Some(key) = key {
            r = r.header("steel-api-key", key);
        }
        let r = r.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, body: Value) -> Value {
        Gateway::create(self, body).await
    }

    async fn session(&self, id: &str) -> Value {
        Gateway::session(self, id).await
    }

    async fn wait_ended(&self, id: &str) -> Value {
        Gateway::wait_ended(self, id, secs(10)).await.0
    }

    fn url(&self, path: &str) -> String {
        Gateway::url(self, path)
    }

    fn ws_url(&self, id: &str) -> String {
        Gateway::url(self, &format!("/?sessionId={id}")).replacen("http://", "ws://", 1)
    }

    fn kill_browser(&self, id: &str) {
        kill_group(browser_leader(&self.data_dir, id), 9);
    }

    fn browser_running(&self, id: &str) -> bool {
        let marker = format!(
            "--user-data-dir={}/sessions/{id}/profile",
            self.data_dir.display()
        );
        running_processes()
            .iter()
            .any(|p| p.cmdline.contains(&marker))
    }

    fn browsers_running(&self) -> usize {
        // Browser processes only (a renderer or a helper has a --type= flag).
        let marker = format!("--user-data-dir={}/sessions/", self.data_dir.display());
        running_processes()
            .iter()
            .filter(|p| p.cmdline.contains(&marker) && !p.cmdline.contains("--type="))
            .count()
    }

    async fn wait_clean(&self) {
        self.assert_clean(secs(10)).await;
    }

    fn slack(&self) -> Duration {
        Duration::from_secs(4)
    }

    fn short_timeout_ms(&self) -> u64 {
        2000
    }
}
