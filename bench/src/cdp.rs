//! A minimal CDP client over one WebSocket, the same for direct Chromium and for ingot.
//!
//! Owns framing commands, matching replies by id and skipping events. It reads the socket
//! itself on the caller's task (no background task, no channel), so the client adds as
//! little as possible to what is measured; reply ids are found without parsing the whole
//! message, which matters for 60 MiB replies.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Largest message accepted: 60 MiB replies must pass.
const MAX_MESSAGE: usize = 256 << 20;
/// Messages larger than this are never parsed in full just to find out what they are.
const PARSE_LIMIT: usize = 1 << 20;

/// One CDP WebSocket connection.
pub(crate) struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    timeout: Duration,
}

/// A reply to one command, kept as the raw text received (never copied).
pub(crate) struct Reply {
    pub text: Utf8Bytes,
}

impl Reply {
    /// The reply parsed as JSON, with `result` taken out; an `error` reply is an error.
    pub(crate) fn result(&self) -> Result<Value> {
        let mut v: Value = serde_json::from_str(self.text.as_str()).context("reply is not JSON")?;
        if let Some(e) = v.get("error") {
            bail!("CDP error: {e}");
        }
        Ok(v.get_mut("result").map(Value::take).unwrap_or(Value::Null))
    }
}

/// WebSocket limits for every client connection the benchmark opens.
pub(crate) fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

impl Cdp {
    /// Opens a WebSocket to `url` (Nagle off, as CDP clients do).
    pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<Cdp> {
        let (ws, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async_with_config(url, Some(websocket_config()), true),
        )
        .await
        .map_err(|_| anyhow!("WebSocket connect to {url} timed out after {timeout:?}"))?
        .with_context(|| format!("WebSocket connect to {url}"))?;
        Ok(Cdp {
            ws,
            next_id: 1,
            timeout,
        })
    }

    /// Builds the text of one command and returns it with its id.
    fn frame(&mut self, method: &str, params: &Value, session: Option<&str>) -> (u64, String) {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.to_owned());
        }
        (id, msg.to_string())
    }

    /// Sends one command without waiting for its reply; returns its id.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        params: &Value,
        session: Option<&str>,
    ) -> Result<u64> {
        let (id, text) = self.frame(method, params, session);
        self.ws
            .send(Message::text(text))
            .await
            .context("WebSocket send")?;
        Ok(id)
    }

    /// Queues `count` copies of one command (each with its own id) and flushes them together,
    /// the way a pipelining client writes; returns the ids.
    pub(crate) async fn send_many(
        &mut self,
        count: usize,
        method: &str,
        params: &Value,
        session: Option<&str>,
    ) -> Result<Vec<u64>> {
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let (id, text) = self.frame(method, params, session);
            self.ws
                .feed(Message::text(text))
                .await
                .context("WebSocket send")?;
            ids.push(id);
        }
        self.ws.flush().await.context("WebSocket flush")?;
        Ok(ids)
    }

    /// Reads until the reply with `id` arrives, skipping events and other replies.
    pub(crate) async fn reply(&mut self, id: u64) -> Result<Reply> {
        tokio::time::timeout(self.timeout, async {
            loop {
                let text = self.next_text().await?;
                if reply_id(&text) == Some(id) {
                    return Ok(Reply { text });
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no reply to command {id} within {:?}", self.timeout))?
    }

    /// Reads until every id in `ids` has been answered.
    pub(crate) async fn replies(&mut self, ids: &[u64]) -> Result<()> {
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok(());
        };
        let mut left = ids.len();
        tokio::time::timeout(self.timeout, async {
            while left > 0 {
                let text = self.next_text().await?;
                if reply_id(&text).is_some_and(|id| (first..=last).contains(&id)) {
                    left -= 1;
                }
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map_err(|_| {
            anyhow!(
                "{left} of {} replies missing after {:?}",
                ids.len(),
                self.timeout
            )
        })?
    }

    /// Sends a command and waits for its reply.
    pub(crate) async fn call(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Reply> {
        let id = self.send(method, &params, session).await?;
        self.reply(id).await
    }

    /// Sends a command and returns its parsed `result`.
    pub(crate) async fn call_result(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value> {
        self.call(method, params, session)
            .await?
            .result()
            .with_context(|| format!("{method} failed"))
    }

    /// The next message, reply or event, for callers that wait for events themselves.
    pub(crate) async fn next_message(&mut self) -> Result<Utf8Bytes> {
        self.next_text().await
    }

    /// The next text message; pings are answered by the library, closes are errors.
    async fn next_text(&mut self) -> Result<Utf8Bytes> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Binary(b))) => {
                    return Utf8Bytes::try_from(b).context("binary CDP message is not UTF-8");
                }
                Some(Ok(Message::Close(frame))) => bail!("WebSocket closed by peer: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("WebSocket read"),
                None => bail!("WebSocket ended"),
            }
        }
    }

    /// Closes the socket politely; errors are ignored (the peer may be gone).
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// The id of a reply, or `None` for an event. Chromium writes `{"id":N,` first in every
/// reply, so large messages are recognised from their first bytes; anything else small
/// enough is parsed in full.
pub(crate) fn reply_id(text: &str) -> Option<u64> {
    if let Some(rest) = text.strip_prefix("{\"id\":") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        return rest[..digits].parse().ok();
    }
    if text.len() > PARSE_LIMIT {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("method").is_some() {
        return None;
    }
    v.get("id")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::reply_id;

    #[test]
    fn finds_reply_ids_and_skips_events() {
        assert_eq!(reply_id(r#"{"id":42,"result":{}}"#), Some(42));
        assert_eq!(reply_id(r#"{"result":{},"id":7}"#), Some(7));
        assert_eq!(
            reply_id(r#"{"method":"Target.targetCreated","params":{"id":3}}"#),
            None
        );
    }
}
