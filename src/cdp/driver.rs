//! The gateway as a CDP client of a session's browser: for work that needs page sessions
//! (reading a page's storage, preparing pages before a session is handed over).
//!
//! A [`Driver`] attaches to the multiplexer like any client, with its own browser-level
//! session, so that the sessions it opens are routed to it alone. `call` sends one command
//! and waits for its reply, dropping events that arrive meanwhile; work that must see every
//! event (the viewer's screencast) uses `send_command` and `next_message` instead. It must
//! not be used on a path that a client's message takes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::mux::{CommandError, Forwarded, Mux};

/// Longest wait for one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A private client of one browser.
pub(crate) struct Driver {
    link: super::mux::ClientLink,
    next_id: i64,
}

impl Driver {
    /// Attaches a new private client to `mux`.
    pub(crate) async fn attach(mux: &Arc<Mux>) -> Result<Driver, CommandError> {
        Ok(Driver {
            link: mux.attach().await?,
            next_id: 1,
        })
    }

    /// Sends `method` (on page session `session`, else on the browser) and returns the
    /// reply's `result`.
    pub(crate) async fn call(
        &mut self,
        method: &'static str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, CommandError> {
        let id = self.send(method, params, session).await?;
        self.reply(method, id, |_, _| None).await
    }

    /// Navigates page session `session` to `url`, answering every request the page makes
    /// meanwhile (`Fetch` must be enabled on it) with `body_base64` instead of the network.
    pub(crate) async fn navigate_fulfilled(
        &mut self,
        session: &str,
        url: &str,
        body_base64: &str,
    ) -> Result<(), CommandError> {
        let id = self
            .send("Page.navigate", json!({"url": url}), Some(session))
            .await?;
        let fulfil = |event: &Value, session: &str| {
            (event["method"] == "Fetch.requestPaused").then(|| {
                json!({
                    "method": "Fetch.fulfillRequest",
                    "sessionId": session,
                    "params": {
                        "requestId": event["params"]["requestId"],
                        "responseCode": 200,
                        "responseHeaders": [{"name": "Content-Type", "value": "text/html"}],
                        "body": body_base64,
                    },
                })
            })
        };
        self.reply("Page.navigate", id, fulfil).await.map(drop)
    }

    /// Sends `method` without waiting for its reply; returns its id, which the reply that
    /// [`Driver::next_message`] later yields carries. For work that must see every event.
    pub(crate) async fn send_command(
        &mut self,
        method: &'static str,
        params: Value,
        session: Option<&str>,
    ) -> Result<i64, CommandError> {
        self.send(method, params, session).await
    }

    /// The next message for this client (a reply or an event), parsed; `None` once the
    /// browser connection is gone.
    pub(crate) async fn next_message(&mut self) -> Option<Value> {
        loop {
            let bytes = self.link.outbound.recv().await?;
            if let Ok(message) = serde_json::from_slice(&bytes) {
                return Some(message);
            }
        }
    }

    /// Sends one command; returns its id.
    async fn send(
        &mut self,
        method: &'static str,
        params: Value,
        session: Option<&str>,
    ) -> Result<i64, CommandError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        match self.link.forward(Bytes::from(message.to_string())).await {
            Forwarded::Sent => Ok(id),
            Forwarded::Reply(reply) => Err(CommandError::Refused(method, reply)),
            Forwarded::BrowserClose(..) | Forwarded::Closed => Err(CommandError::Closed),
        }
    }

    /// Waits for the reply to command `id`. Each event that arrives meanwhile is given to
    /// `on_event` (with its session); a command it returns is sent, its reply unread.
    async fn reply(
        &mut self,
        method: &'static str,
        id: i64,
        on_event: impl Fn(&Value, &str) -> Option<Value>,
    ) -> Result<Value, CommandError> {
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.link.outbound.recv()).await;
            let bytes = match next {
                Err(_) => return Err(CommandError::Timeout(method, REPLY_TIMEOUT)),
                Ok(None) => return Err(CommandError::Closed),
                Ok(Some(bytes)) => bytes,
            };
            let Ok(mut reply) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if reply.get("method").is_some() {
                let session = reply["sessionId"].as_str().unwrap_or_default().to_owned();
                if let Some(mut command) = on_event(&reply, &session) {
                    command["id"] = json!(self.next_id);
                    self.next_id += 1;
                    let _ = self.link.forward(Bytes::from(command.to_string())).await;
                }
                continue;
            }
            if reply.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(error) = reply.get("error") {
                return Err(CommandError::Refused(method, error.to_string()));
            }
            return Ok(reply
                .get_mut("result")
                .map(Value::take)
                .unwrap_or(Value::Null));
        }
    }

    /// The target id of the browser's first page, as `Target.getTargets` lists them.
    pub(crate) async fn first_page(&mut self) -> Result<String, CommandError> {
        let targets = self.call("Target.getTargets", json!({}), None).await?;
        targets["targetInfos"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["targetId"].as_str().map(str::to_owned))
            .ok_or(CommandError::Refused("Target.getTargets", "no page".into()))
    }

    /// Attaches to page target `target_id`; returns the page session.
    pub(crate) async fn attach_page(&mut self, target_id: &str) -> Result<String, CommandError> {
        let reply = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                None,
            )
            .await?;
        reply["sessionId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| CommandError::Refused("Target.attachToTarget", "no sessionId".into()))
    }

    /// The value of `expression` evaluated in page session `session`.
    pub(crate) async fn evaluate(
        &mut self,
        session: &str,
        expression: &str,
    ) -> Result<Value, CommandError> {
        let reply = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                Some(session),
            )
            .await?;
        if let Some(exception) = reply.get("exceptionDetails") {
            return Err(CommandError::Refused(
                "Runtime.evaluate",
                exception.to_string(),
            ));
        }
        Ok(reply["result"]["value"].clone())
    }
}
