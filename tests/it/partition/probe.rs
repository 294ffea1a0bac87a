//! A CDP client that keeps asking its browser: attached to the session's first page, it
//! sends `Runtime.evaluate {expression: "1+1"}` every 100 ms without waiting for replies,
//! and records when each reply arrives and how the socket ended (close code and reason, or
//! no close frame at all). Partition tests read from it when a browser last answered.
//! Knows nothing of the cluster or the network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How often a command is sent.
const EVERY: Duration = Duration::from_millis(100);
/// A reply later than this counts as a timed-out command (it is still recorded).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// The first id the probe's commands use (lower ones are the set-up's).
const FIRST_ID: u64 = 100;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a probe's socket ended.
#[derive(Debug, Clone)]
pub struct End {
    pub at: Instant,
    /// The close frame's code; `None` when the socket ended without one (1006).
    pub code: Option<u16>,
    pub reason: String,
}

/// What a probe saw so far.
#[derive(Debug, Default)]
struct Seen {
    sent: HashMap<u64, Instant>,
    /// (sent, answered) for every command answered with a result.
    answers: Vec<(Instant, Instant)>,
    /// CDP error replies, by arrival.
    errors: Vec<(Instant, String)>,
    end: Option<End>,
}

/// A running probe; dropping it stops it.
pub struct Probe {
    pub name: String,
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Sends `request` and reads until the reply with `id`; events are skipped.
async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Result<Value, String> {
    let msg = json!({"id": id, "method": method, "params": params});
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                if v["id"] == id {
                    return Ok(v);
                }
            }
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("{method}: {other:?}")),
        }
    }
}

impl Probe {
    /// Connects to `url`, attaches to the first page and starts asking.
    pub async fn start(name: &str, url: &str) -> Probe {
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .unwrap_or_else(|_| panic!("probe {name}: connect {url} timed out"))
        .unwrap_or_else(|e| panic!("probe {name}: connect {url}: {e}"));
        let targets = call(&mut ws, 1, "Target.getTargets", json!({}))
            .await
            .expect("getTargets");
        let page = targets["result"]["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .map(|t| t["targetId"].clone())
            .unwrap_or_else(|| panic!("probe {name}: no page in {targets}"));
        let attached = call(
            &mut ws,
            2,
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        )
        .await
        .expect("attachToTarget");
        let session = attached["result"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("probe {name}: {attached}"))
            .to_owned();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (sink, stream) = ws.split();
        let reader = tokio::spawn(read(stream, seen.clone()));
        let writer = tokio::spawn(write(sink, session, seen.clone()));
        Probe {
            name: name.to_owned(),
            seen,
            tasks: vec![reader, writer],
        }
    }

    /// When each answered command got its answer.
    pub fn answer_times(&self) -> Vec<Instant> {
        let seen = self.seen.lock().unwrap();
        seen.answers.iter().map(|(_, at)| *at).collect()
    }

    /// When the last answer arrived.
    pub fn last_answer(&self) -> Option<Instant> {
        self.answer_times().into_iter().max()
    }

    /// The first answer that arrived after `t`.
    pub fn first_answer_after(&self, t: Instant) -> Option<Instant> {
        self.answer_times().into_iter().filter(|a| *a > t).min()
    }

    /// How many answers arrived in `[from, to)`.
    pub fn answers_between(&self, from: Instant, to: Instant) -> usize {
        let times = self.answer_times();
        times.iter().filter(|a| **a >= from && **a < to).count()
    }

    /// The longest time between two answers (or from `from` to the first) in `[from, to)`.
    pub fn longest_silence(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .answer_times()
            .into_iter()
            .filter(|a| *a >= from && *a < to)
            .collect();
        times.sort();
        let mut longest = Duration::ZERO;
        let mut previous = from;
        for t in times.into_iter().chain(std::iter::once(to)) {
            longest = longest.max(t - previous);
            previous = t;
        }
        longest
    }

    /// Commands sent, and of them answered within [`COMMAND_TIMEOUT`].
    pub fn counts(&self) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        let in_time = seen
            .answers
            .iter()
            .filter(|(sent, at)| *at - *sent <= COMMAND_TIMEOUT)
            .count();
        (seen.sent.len(), in_time)
    }

    /// The CDP error replies so far.
    pub fn errors(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.errors.iter().map(|(_, e)| e.clone()).collect()
    }

    /// How the socket ended, if it has.
    pub fn end(&self) -> Option<End> {
        self.seen.lock().unwrap().end.clone()
    }

    /// Waits up to `within` for the socket to end.
    pub async fn wait_end(&self, within: Duration) -> Option<End> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.end() {
                return Some(end);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Records every reply and how the socket ends.
async fn read(mut stream: futures_util::stream::SplitStream<Ws>, seen: Arc<Mutex<Seen>>) {
    let end = loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => {
                let now = Instant::now();
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                let Some(id) = v["id"].as_u64().filter(|id| *id >= FIRST_ID) else {
                    continue;
                };
                let mut seen = seen.lock().unwrap();
                let sent = seen.sent.get(&id).copied().unwrap_or(now);
                if v.get("result").is_some() {
                    seen.answers.push((sent, now));
                } else {
                    seen.errors.push((now, v["error"].to_string()));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break (
                    frame.as_ref().map(|f| u16::from(f.code)),
                    frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break (None, e.to_string()),
            None => break (None, "the stream ended without a close frame".into()),
        }
    };
    seen.lock().unwrap().end = Some(End {
        at: Instant::now(),
        code: end.0,
        reason: end.1,
    });
}

/// Sends a command every [`EVERY`] until the socket ends.
async fn write(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    page: String,
    seen: Arc<Mutex<Seen>>,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for id in FIRST_ID.. {
        tick.tick().await;
        if seen.lock().unwrap().end.is_some() {
            return;
        }
        let msg = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": "1+1", "returnByValue": true},
            "sessionId": page,
        });
        seen.lock().unwrap().sent.insert(id, Instant::now());
        let sent = tokio::time::timeout(
            COMMAND_TIMEOUT,
            sink.send(Message::Text(msg.to_string().into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            // A socket that takes no more is ended by the reader; keep the pace meanwhile.
            continue;
        }
    }
}
