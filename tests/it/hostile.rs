//! Hostile input against a real gateway and real Chromium: each case gets a clear error (an
//! HTTP status with a JSON body, or a WebSocket close code for that one client), and the
//! gateway and every other session carry on. HTTP: oversized, nested and non-UTF-8 bodies
//! (mistyped create fields are `crate::scenario`'s), oversized and slow headers, unknown
//! routes and methods. WebSocket: oversized and non-UTF-8 messages, binary frames, a client that floods and never reads, 500 connections
//! dropped at once, and upgrades to sessions that are unknown, ended or malformed.

use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A session with an attached client, checked before and after the hostile part of a test:
/// "every other session carries on".
struct Bystander {
    id: String,
    cdp: Cdp,
    page: String,
}

impl Bystander {
    async fn start(gw: &Gateway) -> Bystander {
        let session = gw.create(json!({})).await;
        let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("websocketUrl")).await;
        let page = cdp.attach_first_page().await;
        let mut b = Bystander {
            id: session["id"].as_str().expect("id").to_owned(),
            cdp,
            page,
        };
        b.check(gw).await;
        b
    }

    /// The session is live, its client still answers, and the gateway is healthy.
    async fn check(&mut self, gw: &Gateway) {
        let (status, _) = gw.get("/healthz").await;
        assert_eq!(status, 200, "gateway unhealthy\n{}", gw.log_text());
        assert_eq!(gw.session(&self.id).await["status"], "live");
        let answer = tokio::time::timeout(secs(10), self.cdp.eval(&self.page, "20 + 22"))
            .await
            .expect("bystander did not answer within 10 s");
        assert_eq!(answer, json!(42));
    }

    /// Checks one last time, releases the session and checks nothing is left behind.
    async fn finish(mut self, gw: &Gateway) {
        self.check(gw).await;
        self.cdp.close().await;
        gw.release(&self.id).await;
        gw.assert_clean(secs(5)).await;
    }
}

/// An HTTP answer read from a raw socket.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawAnswer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answer is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` as is over a fresh connection, writing while reading (the gateway may
/// answer before it has read everything), and returns the first answer. `None` when the
/// connection ended without one.
async fn raw_http(port: u16, request: Vec<u8>) -> Option<RawAnswer> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    // The write half is kept (not dropped, which would half-close) until the answer is read.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let deadline = Instant::now() + secs(15);
    let answer = loop {
        if let Some(answer) = parse_answer(&buf) {
            break Some(answer);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, rd.read(&mut chunk)).await {
            Err(_) => panic!("no complete answer within 15 s; got {:?}", lossy(&buf)),
            Ok(Ok(0)) | Ok(Err(_)) => break parse_answer(&buf),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    writer.abort();
    answer
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(400)]).into_owned()
}

/// POSTs a JSON body over a raw socket; returns the status and the JSON answer.
async fn post_over_socket(gw: &Gateway, path: &str, body: Vec<u8>) -> (u16, Value) {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = raw_http(gw.port, request)
        .await
        .unwrap_or_else(|| panic!("no answer to a {} byte POST {path}", body.len()));
    (answer.status, answer.json())
}

/// A complete answer (head, and as much body as `content-length` says).
fn parse_answer(buf: &[u8]) -> Option<RawAnswer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let body = buf.get(end + 4..end + 4 + length)?.to_vec();
    Some(RawAnswer { status, head, body })
}

/// Asserts an error answer in ingot's JSON shape and returns its message.
fn assert_error(status: u16, body: &Value, want: u16, what: &str) -> String {
    assert_eq!(status, want, "{what}: {body}");
    let message = body["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "{what}: no message in {body}");
    assert_eq!(body["error"]["message"], body["message"], "{what}: {body}");
    assert!(
        body["error"]["code"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{what}: no code in {body}"
    );
    message.to_owned()
}

/// Count of sessions the gateway has created so far.
async fn sessions_created(gw: &Gateway) -> f64 {
    metric(&gw.scrape().await, "ingot_sessions_created_total", &[])
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client without the harness's wrapper, for hand-built frames.
async fn ws_connect(url: &str) -> Ws {
    let config = WebSocketConfig::default()
        .max_message_size(Some(512 << 20))
        .max_frame_size(Some(512 << 20));
    tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

/// Reads until the message whose `id` is `id`; returns it and whether it came as text.
async fn ws_reply<S>(ws: &mut WebSocketStream<S>, id: i64) -> (Value, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = Instant::now() + secs(30);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (v, text) = match tokio::time::timeout(remaining, ws.next()).await {
            Err(_) => panic!("no reply {id} within 30 s"),
            Ok(Some(Ok(Message::Text(t)))) => {
                (serde_json::from_str::<Value>(&t).expect("JSON"), true)
            }
            Ok(Some(Ok(Message::Binary(b)))) => (serde_json::from_slice(&b).expect("JSON"), false),
            Ok(Some(Ok(_))) => continue,
            other => panic!("connection ended while waiting for reply {id}: {other:?}"),
        };
        if v["id"] == id {
            return (v, text);
        }
    }
}

async fn ws_call(
    ws: &mut Ws,
    id: i64,
    method: &str,
    params: Value,
    session: Option<&str>,
) -> Value {
    let mut msg = json!({"id": id, "method": method, "params": params});
    if let Some(s) = session {
        msg["sessionId"] = s.into();
    }
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .expect("send");
    let (reply, _) = ws_reply(ws, id).await;
    assert!(reply.get("error").is_none(), "{method} failed: {reply}");
    reply["result"].clone()
}

/// Attaches to the first page; `id` and `id + 1` are used.
async fn ws_attach_page(ws: &mut Ws, id: i64) -> String {
    let targets = ws_call(ws, id, "Target.getTargets", json!({}), None).await;
    let page = targets["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .cloned()
        .expect("a page target");
    let attached = ws_call(
        ws,
        id + 1,
        "Target.attachToTarget",
        json!({"targetId": page["targetId"], "flatten": true}),
        None,
    )
    .await;
    attached["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned()
}

/// How a WebSocket ended, read to the end: the close code, or the error.
async fn ws_ending(ws: &mut Ws, within: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + within;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, ws.next()).await {
            Err(_) => panic!("connection still open after {within:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return Ok((u16::from(frame.code), frame.reason.to_string()));
            }
            Ok(Some(Ok(Message::Close(None)))) => return Err("close without a code".into()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("stream ended without a close frame".into()),
        }
    }
}

/// `ingot_client_connections` reaches `want` within five seconds.
async fn wait_client_connections(gw: &Gateway, want: f64) {
    let deadline = Instant::now() + secs(5);
    loop {
        let now = metric(&gw.scrape().await, "ingot_client_connections", &[]);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ingot_client_connections is {now}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("read /proc/<pid>/fd")
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let i = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[i]
}

/// Round-trip time of one `Runtime.evaluate 1+1` on a page session.
async fn eval_rtt(cdp: &mut Cdp, page: &str) -> Duration {
    let start = Instant::now();
    let v = tokio::time::timeout(secs(10), cdp.eval(page, "1+1"))
        .await
        .expect("evaluate 1+1 did not answer within 10 s");
    assert_eq!(v, json!(2));
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_get_413() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let mut bystander = Bystander::start(&gw).await;

    // Exactly 64 KiB is read and judged (400 naming the unknown field), one byte more is 413.
    let pad = |n: usize| {
        let mut b = br#"{"bogus":1}"#.to_vec();
        b.resize(n, b' ');
        b
    };
    let (status, body) = gw
        .post_raw("/v1/sessions", "application/json", pad(64 << 10))
        .await;
    let message = assert_error(status, &body, 400, "64 KiB body");
    assert!(message.starts_with("bogus"), "{message}");
    // Over the limit, the gateway answers before reading everything, so the bodies are
    // sent over a raw socket that reads while it writes (reqwest may fail on the broken
    // pipe before it reads the answer).
    let (status, body) = post_over_socket(&gw, "/v1/sessions", pad((64 << 10) + 1)).await;
    assert_error(status, &body, 413, "64 KiB + 1 body");
    assert_eq!(body["error"]["code"], "body_too_large");
    let (status, body) = post_over_socket(&gw, "/v1/sessions", pad(8 << 20)).await;
    assert_error(status, &body, 413, "8 MiB body");

    // A content-length of 1 GB: refused once 64 KiB are in, not read to the end. (With no
    // body sent at all there is no answer: see `a_body_that_never_arrives_...` below.)
    let mut huge =
        b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 1000000000\r\nConnection: close\r\n\r\n"
            .to_vec();
    huge.extend(std::iter::repeat_n(b' ', 100 << 10));
    let answer = raw_http(gw.port, huge)
        .await
        .expect("an answer to a huge content-length");
    assert_error(answer.status, &answer.json(), 413, "content-length 1e9");

    // Chunked, with no length announced: cut off at the limit.
    let mut chunked =
        b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        chunked.extend_from_slice(&[b' '; 8192]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_http(gw.port, chunked)
        .await
        .expect("an answer to a long chunked body");
    assert_error(answer.status, &answer.json(), 413, "160 KiB chunked");

    // Release takes no body and ignores one, however large.
    let (status, body) = post_over_socket(
        &gw,
        &format!("/v1/sessions/{}/release", uuid::Uuid::new_v4()),
        vec![b'x'; 1 << 20],
    )
    .await;
    // The release route never reads a body, so the limit does not come into it: 404.
    assert_error(
        status,
        &body,
        404,
        "release of an unknown session with a 1 MiB body",
    );

    assert_eq!(sessions_created(&gw).await, 1.0, "only the bystander");
    bystander.check(&gw).await;
    bystander.finish(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_deeply_nested_json_gets_400() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let bystander = Bystander::start(&gw).await;
    each_hostile_body_gets_400_naming_its_field(&gw, hostile_json_bodies()).await;
    the_same_json_over_the_limit_gets_413(&gw).await;
    assert_eq!(sessions_created(&gw).await, 1.0, "only the bystander");
    bystander.finish(&gw).await;
}

/// Create bodies under the 64 KiB limit that are not JSON the API takes: (what, body, the
/// field the refusal must name).
fn hostile_json_bodies() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        ("60k [", vec![b'['; 60_000], "body"),
        (
            "60k [ inside a field",
            {
                let mut b = br#"{"sessionContext":"#.to_vec();
                b.extend(std::iter::repeat_n(b'[', 60_000));
                b
            },
            "body",
        ),
        (
            "10k nested objects",
            {
                let mut b = Vec::new();
                for _ in 0..10_000 {
                    b.extend_from_slice(br#"{"a":"#);
                }
                b.extend_from_slice(b"1");
                b.extend(std::iter::repeat_n(b'}', 10_000));
                b
            },
            "body",
        ),
        (
            "200 nested objects, valid JSON",
            {
                let mut b = br#"{"stealthConfig":"#.to_vec();
                for _ in 0..200 {
                    b.extend_from_slice(br#"{"a":"#);
                }
                b.extend_from_slice(b"1");
                b.extend(std::iter::repeat_n(b'}', 201));
                b
            },
            "body",
        ),
        (
            "100 nested arrays in a known field",
            {
                let mut b = br#"{"stealthConfig":"#.to_vec();
                b.extend(std::iter::repeat_n(b'[', 100));
                b.extend(std::iter::repeat_n(b']', 100));
                b.push(b'}');
                b
            },
            "stealthConfig",
        ),
        (
            "60 KiB user agent",
            format!(r#"{{"userAgent":"{}"}}"#, "u".repeat(60 << 10)).into_bytes(),
            "userAgent",
        ),
        (
            "60 KiB session id",
            format!(r#"{{"sessionId":"{}"}}"#, "7".repeat(60 << 10)).into_bytes(),
            "sessionId",
        ),
        (
            "60 KiB region",
            format!(r#"{{"region":"{}"}}"#, "r".repeat(60 << 10)).into_bytes(),
            "region",
        ),
        (
            "60 KiB of escapes",
            format!(r#"{{"userAgent":"{}"}}"#, "\\u0041".repeat(10_000)).into_bytes(),
            "userAgent",
        ),
        (
            "a 60,000-digit integer (out of range for serde_json)",
            format!(r#"{{"timeout":{}}}"#, "9".repeat(60_000)).into_bytes(),
            "body",
        ),
        ("1e999", br#"{"timeout":1e999}"#.to_vec(), "body"),
        ("-1e999", br#"{"timeout":-1e999}"#.to_vec(), "body"),
        ("1e-999", br#"{"timeout":1e-999}"#.to_vec(), "timeout"),
        (
            "2^64",
            br#"{"timeout":18446744073709551616}"#.to_vec(),
            "timeout",
        ),
        (
            "-2^63",
            br#"{"timeout":-9223372036854775808}"#.to_vec(),
            "timeout",
        ),
        (
            "huge width",
            br#"{"dimensions":{"width":1e308,"height":1}}"#.to_vec(),
            "dimensions.width",
        ),
        ("NaN", br#"{"timeout":NaN}"#.to_vec(), "body"),
        (
            "lone surrogate",
            br#"{"userAgent":"\ud800"}"#.to_vec(),
            "body",
        ),
        (
            "NUL in a string",
            br#"{"userAgent":"a\u0000b"}"#.to_vec(),
            "userAgent",
        ),
        (
            "10k keys",
            {
                let mut b = b"{".to_vec();
                for i in 0..5_000 {
                    b.extend_from_slice(format!(r#""k{i}":0,"#).as_bytes());
                }
                b.extend_from_slice(br#""z":0}"#);
                b
            },
            "k0",
        ),
        // The last of duplicate keys wins, as in JavaScript's JSON.parse.
        (
            "duplicate keys",
            br#"{"timeout":60000,"timeout":"x"}"#.to_vec(),
            "timeout",
        ),
        ("trailing garbage", br#"{} {}"#.to_vec(), "body"),
        (
            "top-level string",
            format!(r#""{}""#, "s".repeat(60_000)).into_bytes(),
            "body",
        ),
        ("top-level number", b"1e400".to_vec(), "body"),
    ]
}

async fn each_hostile_body_gets_400_naming_its_field(
    gw: &Gateway,
    cases: Vec<(&'static str, Vec<u8>, &'static str)>,
) {
    for (what, body, field) in cases {
        assert!(body.len() <= 64 << 10, "{what} is over the body limit");
        let (status, answer) = gw.post_raw("/v1/sessions", "application/json", body).await;
        let message = assert_error(status, &answer, 400, what);
        assert!(
            message.starts_with(&format!("{field}:")),
            "{what}: expected the message to name {field}, got {:.300}",
            message
        );
        assert!(
            message.len() < 80 << 10,
            "{what}: a {} byte message",
            message.len()
        );
    }
}

/// The same JSON, over the limit, is 413 rather than parsed.
async fn the_same_json_over_the_limit_gets_413(gw: &Gateway) {
    let (status, answer) = post_over_socket(gw, "/v1/sessions", vec![b'['; 100_000]).await;
    assert_error(status, &answer, 413, "100k [");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_utf8_get_400() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let bystander = Bystander::start(&gw).await;
    let cases: [(&str, &[u8]); 6] = [
        ("in a value", b"{\"userAgent\":\"\xff\xfe\"}"),
        ("in a key", b"{\"user\xc3\x28Agent\":\"x\"}"),
        ("overlong encoding", b"{\"userAgent\":\"\xc0\xaf\"}"),
        ("encoded surrogate", b"{\"userAgent\":\"\xed\xa0\x80\"}"),
        ("whole body", b"\xff\xff\xff\xff"),
        ("UTF-16", b"\xff\xfe{\x00}\x00"),
    ];
    for (what, body) in cases {
        for content_type in ["application/json", "text/plain; charset=latin1"] {
            let (status, answer) = gw
                .post_raw("/v1/sessions", content_type, body.to_vec())
                .await;
            let message = assert_error(status, &answer, 400, what);
            assert!(message.starts_with("body:"), "{what}: {message}");
        }
    }
    assert_eq!(sessions_created(&gw).await, 1.0, "only the bystander");
    bystander.finish(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let bystander = Bystander::start(&gw).await;

    let request = |headers: &str| {
        format!(
            "GET /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    // One header of about 200 KB.
    let big = format!("X-Big: {}\r\n", "b".repeat(200_000));
    let answer = raw_http(gw.port, request(&big))
        .await
        .expect("answer to a 200 KB header");
    assert_eq!(answer.status, 431, "{}", answer.head);
    // Too large for hyper's own buffer, and still ingot's JSON error.
    assert_eq!(
        answer.json()["error"]["code"],
        "head_too_large",
        "{}",
        answer.head
    );
    // 150 small header fields.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_http(gw.port, request(&many))
        .await
        .expect("answer to 150 headers");
    assert_eq!(answer.status, 431, "{}", answer.head);
    assert_eq!(
        answer.json()["error"]["code"],
        "head_too_large",
        "{}",
        answer.head
    );
    // A 200 KB request line.
    let line = format!(
        "GET /v1/sessions?x={} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        "q".repeat(200_000)
    );
    let answer = raw_http(gw.port, line.into_bytes())
        .await
        .expect("answer to a 200 KB line");
    assert!(
        answer.status == 431 || answer.status == 414,
        "{}",
        answer.head
    );

    // Under the limits: 90 fields and a 30 KB header are served.
    let fine: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_http(gw.port, request(&fine))
        .await
        .expect("answer to 90 headers");
    assert_eq!(answer.status, 200, "{}", answer.head);
    let fine = format!("X-Big: {}\r\n", "b".repeat(30_000));
    let answer = raw_http(gw.port, request(&fine))
        .await
        .expect("answer to a 30 KB header");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.json()["sessions"].as_array().map(Vec::len), Some(1));

    bystander.finish(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_after_the_header_timeout() {
    let _shared = shared().await;
    let gw = Gateway::start(&["--header-timeout-ms", "1000"]).await;
    let mut bystander = Bystander::start(&gw).await;
    an_incomplete_head_is_closed_after_the_header_timeout(&gw).await;
    a_head_that_arrives_slowly_within_the_timeout_is_served(&gw).await;
    many_slow_clients_at_once_do_not_hold_up_anyone(&gw, &mut bystander).await;
    bystander.finish(&gw).await;
}

/// Time until the gateway ends the connection, and what it sent first.
async fn time_to_close(port: u16, trickle: bool) -> (Duration, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        // Slowloris: a byte every 100 ms, never the blank line that ends the head.
        while trickle && wr.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(secs(10), rd.read(&mut chunk)).await {
            Err(_) => panic!("connection still open after 10 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    writer.abort();
    (started.elapsed(), got)
}

/// A head that stops, or trickles in a byte at a time, is closed after about the header
/// timeout, with a 408 or nothing.
async fn an_incomplete_head_is_closed_after_the_header_timeout(gw: &Gateway) {
    for trickle in [false, true] {
        let (took, got) = time_to_close(gw.port, trickle).await;
        eprintln!(
            "incomplete head (trickle: {trickle}): closed after {took:?}, sent {:?}",
            lossy(&got)
        );
        assert!(
            took >= Duration::from_millis(500) && took <= Duration::from_millis(3000),
            "closed after {took:?}; the header timeout is 1 s"
        );
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "a head cut short gets 408 before the close: {:?}",
            lossy(&got)
        );
        let body = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| &got[at + 4..])
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(body).expect("a JSON body");
        assert_eq!(body["error"]["code"], "header_timeout", "{body}");
    }
}

async fn a_head_that_arrives_slowly_within_the_timeout_is_served(gw: &Gateway) {
    let mut stream = TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream
        .write_all(b"Connection: close\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(secs(5), stream.read_to_end(&mut got))
        .await
        .expect("answer within 5 s")
        .expect("read");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", lossy(&got));
}

/// 50 slow clients at once: the bystander is served meanwhile, and their connections are
/// closed.
async fn many_slow_clients_at_once_do_not_hold_up_anyone(gw: &Gateway, bystander: &mut Bystander) {
    let slow: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..50 {
            let mut s = TcpStream::connect(("127.0.0.1", gw.port))
                .await
                .expect("connect");
            s.write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .expect("write");
            v.push(s);
        }
        v
    };
    bystander.check(gw).await;
    let pid = gw.pid();
    let with_slow = fd_count(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = fd_count(pid);
    assert!(
        after + 45 <= with_slow,
        "50 slow connections not closed: {with_slow} fds with them, {after} 1.5 s later"
    );
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_get_404_and_wrong_methods_405() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let bystander = Bystander::start(&gw).await;
    let id = bystander.id.clone();

    for path in [
        "/nope",
        "/v1",
        "/v1/",
        "/v2/sessions",
        "/v1/sessions/x/y/z",
        &format!("/v1/sessions/{id}/extra"),
        "/json",
        "/json/list",
        "/devtools/page/1",
        "/%ff%fe",
        "/..%2f..%2fetc/passwd",
        "/v1/sessions/",
    ] {
        let (status, body) = gw.get(path).await;
        assert_error(status, &body, 404, path);
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }

    let client = &gw.http;
    let methods: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::DELETE, "/v1/sessions".into()),
        (reqwest::Method::PUT, "/v1/sessions".into()),
        (reqwest::Method::PATCH, "/v1/sessions".into()),
        (reqwest::Method::GET, "/v1/sessions/release".into()),
        (reqwest::Method::DELETE, format!("/v1/sessions/{id}")),
        (reqwest::Method::POST, format!("/v1/sessions/{id}")),
        (reqwest::Method::GET, format!("/v1/sessions/{id}/release")),
        (reqwest::Method::POST, "/json/version".into()),
        (reqwest::Method::POST, "/healthz".into()),
        (reqwest::Method::POST, "/metrics".into()),
        (reqwest::Method::DELETE, "/v1/usage".into()),
        (reqwest::Method::POST, "/".into()),
        (
            reqwest::Method::from_bytes(b"BREW").expect("method"),
            "/v1/sessions".into(),
        ),
    ];
    for (method, path) in methods {
        let r = client
            .request(method.clone(), gw.url(&path))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_error(status, &body, 405, &format!("{method} {path}"));
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
    }
    // Neither the release route nor anything else was triggered by the wrong methods.
    assert_eq!(gw.session(&id).await["status"], "live");

    // A request line that is not HTTP at all gets a 400 from the HTTP layer.
    let answer = raw_http(
        gw.port,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
    )
    .await;
    let answer = answer.expect("an answer to a TLS hello");
    assert_eq!(answer.status, 400, "{}", answer.head);
    bystander.finish(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_messages_close_only_that_client_with_1009() {
    let _shared = shared().await;
    let gw = Gateway::start(&["--max-message-bytes", "65536"]).await;
    let session = gw.create(json!({})).await;
    let ws_url = session["websocketUrl"].as_str().expect("websocketUrl");
    let id = session["id"].as_str().expect("id");
    let mut other = Cdp::connect(ws_url).await;
    let other_page = other.attach_first_page().await;

    // Just under the limit passes.
    let mut ws = ws_connect(ws_url).await;
    let page = ws_attach_page(&mut ws, 1).await;
    let under = "a".repeat(60 << 10);
    let r = ws_call(
        &mut ws,
        3,
        "Runtime.evaluate",
        json!({"expression": format!("'{under}'.length"), "returnByValue": true}),
        Some(&page),
    )
    .await;
    assert_eq!(r["result"]["value"], json!(60 << 10));

    // One 100 KiB frame.
    let big = json!({"id": 4, "method": "Runtime.evaluate", "sessionId": page,
                     "params": {"expression": format!("'{}'.length", "a".repeat(100 << 10))}});
    ws.send(Message::Text(big.to_string().into()))
        .await
        .expect("send");
    let ending = ws_ending(&mut ws, secs(10)).await;
    eprintln!("100 KiB frame: {ending:?}");
    assert_eq!(ending.as_ref().map(|e| e.0), Ok(1009), "{ending:?}");

    // A 100 KiB message in four frames of 25 KiB, each under the limit.
    let mut ws = ws_connect(ws_url).await;
    let text = big.to_string().into_bytes();
    let parts: Vec<&[u8]> = text.chunks(text.len().div_ceil(4)).collect();
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.to_vec(), opcode, i == parts.len() - 1);
        if ws.send(Message::Frame(frame)).await.is_err() {
            break; // closed already
        }
    }
    let ending = ws_ending(&mut ws, secs(10)).await;
    eprintln!("100 KiB in four frames: {ending:?}");
    assert_eq!(ending.as_ref().map(|e| e.0), Ok(1009), "{ending:?}");

    // The other client of the same session never noticed; the session is live; new
    // clients are welcome.
    assert_eq!(other.eval(&other_page, "1+1").await, json!(2));
    assert_eq!(gw.session(id).await["status"], "live");
    let mut again = Cdp::connect(ws_url).await;
    let again_page = again.attach_first_page().await;
    assert_eq!(again.eval(&again_page, "2+2").await, json!(4));
    wait_client_connections(&gw, 2.0).await;
    again.close().await;
    other.close().await;
    gw.release(id).await;
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_frames_close_only_that_client_with_1007() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let ws_url = session["websocketUrl"].as_str().expect("websocketUrl");
    let id = session["id"].as_str().expect("id");
    let mut other = Cdp::connect(ws_url).await;
    let other_page = other.attach_first_page().await;

    let payloads: [(&str, Vec<u8>, bool); 3] = [
        (
            "one frame",
            b"{\"id\":1,\"method\":\"Browser.getVersion\",\"x\":\"\xff\xfe\"}".to_vec(),
            false,
        ),
        (
            "a truncated character",
            b"{\"id\":1,\"method\":\"\xe2\x82".to_vec(),
            false,
        ),
        // The bad byte in the second fragment of a fragmented message.
        (
            "fragmented",
            b"{\"id\":1,\"method\":\"Browser.getVersion\",\"x\":\"\xc3\x28\"}".to_vec(),
            true,
        ),
    ];
    for (what, payload, fragmented) in payloads {
        let mut ws = ws_connect(ws_url).await;
        // Working before the bad frame.
        ws_call(&mut ws, 100, "Browser.getVersion", json!({}), None).await;
        if fragmented {
            let (a, b) = payload.split_at(20);
            ws.send(Message::Frame(Frame::message(
                a.to_vec(),
                OpCode::Data(Data::Text),
                false,
            )))
            .await
            .expect("send");
            let _ = ws
                .send(Message::Frame(Frame::message(
                    b.to_vec(),
                    OpCode::Data(Data::Continue),
                    true,
                )))
                .await;
        } else {
            ws.send(Message::Frame(Frame::message(
                payload,
                OpCode::Data(Data::Text),
                true,
            )))
            .await
            .expect("send");
        }
        let ending = ws_ending(&mut ws, secs(10)).await;
        eprintln!("invalid UTF-8, {what}: {ending:?}");
        assert_eq!(ending.as_ref().map(|e| e.0), Ok(1007), "{what}: {ending:?}");
        assert_eq!(
            other.eval(&other_page, "1+1").await,
            json!(2),
            "after {what}"
        );
    }
    assert_eq!(gw.session(id).await["status"], "live");
    wait_client_connections(&gw, 1.0).await;
    other.close().await;
    gw.release(id).await;
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_answered_like_text() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let ws_url = session["websocketUrl"].as_str().expect("websocketUrl");
    let id = session["id"].as_str().expect("id");
    let mut ws = ws_connect(ws_url).await;
    let page = ws_attach_page(&mut ws, 1).await;

    // A CDP command in a binary frame is forwarded; its reply comes as text, like every
    // message the gateway sends.
    let command = json!({"id": 10, "method": "Runtime.evaluate", "sessionId": page,
                         "params": {"expression": "6*7", "returnByValue": true}});
    ws.send(Message::Binary(command.to_string().into_bytes().into()))
        .await
        .expect("send");
    let (reply, text) = ws_reply(&mut ws, 10).await;
    assert!(text, "the reply to a binary command came as binary");
    assert_eq!(reply["result"]["result"]["value"], json!(42), "{reply}");
    // Without a sessionId, on the client's own browser session, also fine.
    ws.send(Message::Binary(
        br#"{"id":11,"method":"Browser.getVersion"}"#.to_vec().into(),
    ))
    .await
    .expect("send");
    let (reply, _) = ws_reply(&mut ws, 11).await;
    assert!(reply["result"]["product"].is_string(), "{reply}");

    // Binary garbage that is UTF-8: a CDP parse error, and the connection stays. (Bytes that
    // are not UTF-8 close the client: see `binary_frames_that_are_not_utf8_close_with_1007`.)
    for (n, garbage) in [
        b"\x00\x01\x02".to_vec(),
        // A NUL inside a string, where ingot does not look: still refused, so it never
        // reaches the NUL-delimited pipe.
        b"{\"id\":15,\"method\":\"Browser.getVersion\",\"params\":{\"x\":\"a\x00b\"}}".to_vec(),
        // Two commands glued with NUL, Chromium's pipe delimiter: never passed on as two.
        b"{\"id\":13,\"method\":\"Browser.getVersion\"}\x00{\"id\":14,\"method\":\"Browser.close\"}"
            .to_vec(),
        b"[1,2,3]".to_vec(),
        Vec::new(),
    ]
    .into_iter()
    .enumerate()
    {
        ws.send(Message::Binary(garbage.into())).await.expect("send");
        let deadline = Instant::now() + secs(10);
        let reply = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if v.get("error").is_some() {
                        break v;
                    }
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("garbage {n}: connection ended: {other:?}\n{}", gw.log_text()),
            }
        };
        assert_eq!(reply["error"]["code"], json!(-32700), "garbage {n}: {reply}");
    }
    let r = ws_call(
        &mut ws,
        20,
        "Runtime.evaluate",
        json!({"expression": "1+1", "returnByValue": true}),
        Some(&page),
    )
    .await;
    assert_eq!(r["result"]["value"], json!(2));
    assert_eq!(
        gw.session(id).await["status"],
        "live",
        "NUL did not smuggle a Browser.close"
    );
    let _ = ws.close(None).await;
    gw.release(id).await;
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_and_never_reads_is_cut_off_without_stalling_anyone() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let pid = gw.pid();

    let quiet = gw.create(json!({})).await;
    let mut q = Cdp::connect(quiet["websocketUrl"].as_str().expect("ws")).await;
    let q_page = q.attach_first_page().await;
    let victim = gw.create(json!({})).await;
    let victim_url = victim["websocketUrl"].as_str().expect("ws").to_owned();
    let victim_id = victim["id"].as_str().expect("id").to_owned();

    let (before, rss_before) =
        the_quiet_session_answers_before_the_flood(&mut q, &q_page, pid).await;
    let flood = a_client_floods_the_victim_and_never_reads(&victim_url).await;
    let (mut flooder, figures) = the_quiet_session_is_timed_during_the_flood(
        &mut q, &q_page, pid, flood, before, rss_before,
    )
    .await;
    the_flooder_is_cut_off_and_the_quiet_session_never_stalls(&gw, &mut flooder, figures).await;
    the_victim_session_lives_on_and_the_counts_are_back(&gw, q, &quiet, &victim_url, &victim_id)
        .await;
}

/// Baseline latency of the quiet session, and the gateway's memory.
async fn the_quiet_session_answers_before_the_flood(
    q: &mut Cdp,
    q_page: &str,
    pid: u32,
) -> (Vec<Duration>, u64) {
    for _ in 0..5 {
        eval_rtt(q, q_page).await;
    }
    let mut before: Vec<Duration> = Vec::new();
    for _ in 0..40 {
        before.push(eval_rtt(q, q_page).await);
    }
    let rss_before = rss_bytes(pid);
    (before, rss_before)
}

/// What the flooder ended with: its connection, commands sent, why it stopped, how long.
type Flooded = (Ws, u64, String, Duration);

/// The flooder: asks for 256 KiB answers as fast as it can send, and never reads.
async fn a_client_floods_the_victim_and_never_reads(
    victim_url: &str,
) -> tokio::task::JoinHandle<Flooded> {
    let mut flooder = ws_connect(victim_url).await;
    let f_page = ws_attach_page(&mut flooder, 1).await;
    tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0u64;
        let mut id = 10i64;
        let outcome = loop {
            if started.elapsed() > secs(30) {
                break "still sending after 30 s".to_owned();
            }
            let cmd = json!({"id": id, "method": "Runtime.evaluate", "sessionId": f_page,
                             "params": {"expression": "'x'.repeat(262144)", "returnByValue": true}});
            id += 1;
            match tokio::time::timeout(
                secs(10),
                flooder.send(Message::Text(cmd.to_string().into())),
            )
            .await
            {
                Ok(Ok(())) => sent += 1,
                Ok(Err(e)) => break format!("send failed: {e}"),
                Err(_) => break "a send blocked for 10 s".to_owned(),
            }
        };
        (flooder, sent, outcome, started.elapsed())
    })
}

/// The quiet session's latency and the gateway's memory before and during the flood, and
/// what the flooder did.
struct FloodFigures {
    before: Vec<Duration>,
    during: Vec<Duration>,
    rss_before: u64,
    rss_peak: u64,
    sent: u64,
    outcome: String,
    flood_took: Duration,
}

/// While it floods: the quiet session's latency, and the gateway's memory. Returns the
/// flooder's connection and the figures.
async fn the_quiet_session_is_timed_during_the_flood(
    q: &mut Cdp,
    q_page: &str,
    pid: u32,
    flood: tokio::task::JoinHandle<Flooded>,
    before: Vec<Duration>,
    rss_before: u64,
) -> (Ws, FloodFigures) {
    let mut during: Vec<Duration> = Vec::new();
    let mut rss_peak = rss_before;
    let flood_start = Instant::now();
    while !flood.is_finished() && flood_start.elapsed() < secs(40) {
        during.push(eval_rtt(q, q_page).await);
        rss_peak = rss_peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (flooder, sent, outcome, flood_took) = flood.await.expect("flood task");
    rss_peak = rss_peak.max(rss_bytes(pid));
    let figures = FloodFigures {
        before,
        during,
        rss_before,
        rss_peak,
        sent,
        outcome,
        flood_took,
    };
    (flooder, figures)
}

async fn the_flooder_is_cut_off_and_the_quiet_session_never_stalls(
    gw: &Gateway,
    flooder: &mut Ws,
    figures: FloodFigures,
) {
    let FloodFigures {
        mut before,
        mut during,
        rss_before,
        rss_peak,
        sent,
        outcome,
        flood_took,
    } = figures;
    // The flooder's connection is over; reading now shows how it ended.
    let ending = ws_ending(flooder, secs(20)).await;
    let before_p50 = percentile(&mut before, 0.5);
    let during_p50 = percentile(&mut during, 0.5);
    let during_max = percentile(&mut during, 1.0);
    eprintln!(
        "flooder: {sent} commands in {flood_took:?}, then {outcome}; it saw {ending:?}\n\
         quiet session evaluate 1+1: p50 {before_p50:?} before, p50 {during_p50:?} / max {during_max:?} \
         during ({} samples)\ngateway RSS {} MiB before, {} MiB peak",
        during.len(),
        rss_before >> 20,
        rss_peak >> 20
    );
    assert!(
        gw.wait_for_log("has not read for", secs(5)).await,
        "the flooder was never cut off for not reading: {outcome}, {ending:?}"
    );
    assert!(
        flood_took < secs(30),
        "the flooder could send for 30 s: {outcome}"
    );
    match &ending {
        Ok((code, _)) => assert_eq!(*code, 1008, "{ending:?}"),
        // A client that does not read cannot be handed a close frame: the socket was
        // dropped under it instead, which it sees as a reset or a cut stream.
        Err(e) => eprintln!("the flooder saw no close frame: {e}"),
    }
    assert!(
        during.len() >= 5,
        "too few samples while flooding: {}",
        during.len()
    );
    assert!(
        during_p50 < Duration::from_millis(100),
        "the quiet session stalled: p50 {during_p50:?} during the flood, {before_p50:?} before"
    );
    assert!(
        rss_peak < rss_before + (200 << 20),
        "gateway memory grew from {} MiB to {} MiB",
        rss_before >> 20,
        rss_peak >> 20
    );
}

/// The victim session lives on and takes new clients; the counts are back.
async fn the_victim_session_lives_on_and_the_counts_are_back(
    gw: &Gateway,
    q: Cdp,
    quiet: &Value,
    victim_url: &str,
    victim_id: &str,
) {
    assert_eq!(gw.session(victim_id).await["status"], "live");
    let mut again = Cdp::connect(victim_url).await;
    let again_page = again.attach_first_page().await;
    assert_eq!(again.eval(&again_page, "3+3").await, json!(6));
    wait_client_connections(gw, 2.0).await;
    again.close().await;
    wait_client_connections(gw, 1.0).await;
    q.close().await;
    gw.release(victim_id).await;
    gw.release(quiet["id"].as_str().expect("id")).await;
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_and_comes_back_finds_close_1008() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let ws_url = session["websocketUrl"].as_str().expect("ws").to_owned();
    let id = session["id"].as_str().expect("id").to_owned();
    let mut other = Cdp::connect(&ws_url).await;
    let other_page = other.attach_first_page().await;

    let (mut ws, page) = a_client_with_a_small_receive_buffer_attaches(&gw, &ws_url).await;
    it_is_cut_off_after_400_large_answers_it_does_not_read(&gw, &mut ws, &page).await;
    back_within_the_close_grace_it_reads_what_was_queued_then_1008(&mut ws).await;
    the_session_and_its_other_client_carry_on(&gw, other, &other_page, &id).await;
}

/// A small receive buffer, so that the gateway's queue for this client fills soon. Returns
/// the client and its page session.
async fn a_client_with_a_small_receive_buffer_attaches(
    gw: &Gateway,
    ws_url: &str,
) -> (WebSocketStream<TcpStream>, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
    let tcp = socket
        .connect(([127, 0, 0, 1], gw.port).into())
        .await
        .expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(ws_url, tcp, None)
        .await
        .expect("upgrade");
    let targets = {
        ws.send(Message::Text(
            json!({"id": 1, "method": "Target.getTargets"})
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
        ws_reply(&mut ws, 1).await.0
    };
    let page_target = targets["result"]["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .map(|t| t["targetId"].clone())
        .expect("a page");
    ws.send(Message::Text(
        json!({"id": 2, "method": "Target.attachToTarget",
               "params": {"targetId": page_target, "flatten": true}})
        .to_string()
        .into(),
    ))
    .await
    .expect("send");
    let page = ws_reply(&mut ws, 2).await.0["result"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    (ws, page)
}

/// 400 commands with 256 KiB answers, and no reading until the gateway gives up on us.
async fn it_is_cut_off_after_400_large_answers_it_does_not_read(
    gw: &Gateway,
    ws: &mut WebSocketStream<TcpStream>,
    page: &str,
) {
    for id in 10..410 {
        let cmd = json!({"id": id, "method": "Runtime.evaluate", "sessionId": page,
                         "params": {"expression": "'x'.repeat(262144)", "returnByValue": true}});
        tokio::time::timeout(secs(10), ws.send(Message::Text(cmd.to_string().into())))
            .await
            .expect("a send blocked for 10 s")
            .expect("send");
    }
    let stopped = Instant::now();
    assert!(
        gw.wait_for_log("has not read for", secs(30)).await,
        "a client that stopped reading was never cut off"
    );
    eprintln!("cut off {:?} after it stopped reading", stopped.elapsed());
}

/// Back within the close grace: what was queued, then the close frame.
async fn back_within_the_close_grace_it_reads_what_was_queued_then_1008(
    ws: &mut WebSocketStream<TcpStream>,
) {
    let deadline = Instant::now() + secs(20);
    let mut replies = 0;
    let ending = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, ws.next()).await {
            Err(_) => panic!("connection still open 20 s after it was cut off"),
            Ok(Some(Ok(Message::Text(_)))) => replies += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                break frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("after {replies} replies, no close frame: {other:?}"),
        }
    };
    eprintln!("read {replies} replies, then {ending:?}");
    assert_eq!(ending.as_ref().map(|e| e.0), Some(1008), "{ending:?}");
    assert!(
        replies < 400,
        "every reply was delivered: it was not cut off"
    );
}

/// The session and its other client carry on.
async fn the_session_and_its_other_client_carry_on(
    gw: &Gateway,
    mut other: Cdp,
    other_page: &str,
    id: &str,
) {
    assert_eq!(other.eval(other_page, "1+1").await, json!(2));
    assert_eq!(gw.session(id).await["status"], "live");
    wait_client_connections(gw, 1.0).await;
    other.close().await;
    gw.release(id).await;
    gw.assert_clean(secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_connections_dropped_at_once_leave_nothing_behind() {
    let _shared = shared().await;
    // 501 clients on one session: over the default --max-clients-per-session (32).
    let gw = Gateway::start(&["--max-clients-per-session", "501"]).await;
    let pid = gw.pid();
    let session = gw.create(json!({})).await;
    let ws_url = session["websocketUrl"].as_str().expect("ws").to_owned();
    let id = session["id"].as_str().expect("id").to_owned();
    let mut keeper = Cdp::connect(&ws_url).await;
    let page = keeper.attach_first_page().await;
    wait_client_connections(&gw, 1.0).await;
    // The test's own keep-alive HTTP connection exists now, so it counts in the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = fd_count(pid);

    let started = Instant::now();
    let port = gw.port;
    let connects = (0..500).map(|_| {
        let url = ws_url.clone();
        async move {
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            tokio_tungstenite::client_async_with_config(url, tcp, None)
                .await
                .ok()
                .map(|(ws, _)| ws)
        }
    });
    let clients: Vec<_> = futures_util::future::join_all(connects).await;
    let upgraded = clients.iter().filter(|c| c.is_some()).count();
    eprintln!("500 upgrades: {upgraded} done in {:?}", started.elapsed());
    assert_eq!(upgraded, 500, "some upgrades failed");
    wait_client_connections(&gw, 501.0).await;
    let peak = fd_count(pid);
    assert!(
        peak >= baseline + 500,
        "{peak} fds with 500 clients, {baseline} before"
    );

    // Drop them all without a close frame: half with a FIN, half with a reset.
    for (i, ws) in clients.into_iter().flatten().enumerate() {
        if i % 2 == 0 {
            ws.get_ref().set_zero_linger().expect("SO_LINGER");
        }
        drop(ws);
    }
    let dropped = Instant::now();
    let deadline = dropped + secs(5);
    let mut fds = fd_count(pid);
    while fds > baseline + 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fds = fd_count(pid);
    }
    eprintln!(
        "fds: {baseline} before, {peak} with 500 clients, {fds} {:?} after dropping them",
        dropped.elapsed()
    );
    assert!(
        fds <= baseline + 3,
        "fds: {baseline} before, {fds} 5 s after the drop"
    );
    wait_client_connections(&gw, 1.0).await;

    // The session and its remaining client work; a new client can attach.
    assert_eq!(keeper.eval(&page, "5*5").await, json!(25));
    let mut fresh = Cdp::connect(&ws_url).await;
    let fresh_page = fresh.attach_first_page().await;
    assert_eq!(fresh.eval(&fresh_page, "7*7").await, json!(49));
    // The 500 attachments left no targets behind: still the one page the session began with.
    let targets = fresh.call("Target.getTargets", json!({}), None).await;
    let pages = targets["targetInfos"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["type"] == "page").count());
    assert_eq!(pages, Some(1), "{targets}");
    fresh.close().await;
    keeper.close().await;
    wait_client_connections(&gw, 0.0).await;
    gw.release(&id).await;
    gw.assert_clean(secs(5)).await;
}

/// The refusal of a WebSocket upgrade: its status and JSON body.
async fn refusal(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(e) => panic!("unexpected error connecting to {url}: {e}"),
        Ok(_) => panic!("upgrade to {url} was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_to_unknown_ended_or_malformed_sessions_are_refused() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let bystander = Bystander::start(&gw).await;
    let base = format!("ws://127.0.0.1:{}", gw.port);

    let unknown = uuid::Uuid::new_v4();
    for (url, want, code) in [
        (
            format!("{base}/?sessionId={unknown}"),
            404,
            "session_not_found",
        ),
        (
            format!("{base}/devtools/browser/{unknown}"),
            404,
            "session_not_found",
        ),
        (format!("{base}/?sessionId=nope"), 400, "invalid_request"),
        (format!("{base}/?sessionId="), 400, "invalid_request"),
        (format!("{base}/?sessionId=%ff%00"), 400, "invalid_request"),
        (
            format!("{base}/?sessionId={}", "9".repeat(1_000)),
            400,
            "invalid_request",
        ),
        (
            format!("{base}/devtools/browser/nope"),
            400,
            "invalid_request",
        ),
        (
            format!("{base}/devtools/browser/%ff"),
            400,
            "invalid_request",
        ),
        (
            format!("{base}/devtools/browser/{unknown}x"),
            400,
            "invalid_request",
        ),
        (format!("{base}/"), 400, "invalid_request"),
    ] {
        let (status, body) = refusal(&url).await;
        assert_error(status, &body, want, &url);
        assert_eq!(body["error"]["code"], code, "{url:.200}: {body}");
    }

    let ended = gw.create(json!({})).await;
    let ended_id = ended["id"].as_str().expect("id");
    gw.release(ended_id).await;
    for url in [
        ended["websocketUrl"].as_str().expect("ws").to_owned(),
        format!("{base}/devtools/browser/{ended_id}"),
    ] {
        let (status, body) = refusal(&url).await;
        assert_error(status, &body, 410, &url);
        assert_eq!(body["error"]["code"], "session_ended", "{body}");
    }
    assert_upgrade_refused(&format!("{base}/?sessionId={unknown}"), 404).await;

    wait_client_connections(&gw, 1.0).await;
    bystander.finish(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// Bugs these tests found, fixed since: a soft head limit, no body deadline, binary frames that
// are not UTF-8 going unanswered, proxy host names longer than DNS allows.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_just_over_64_kib_get_431() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    for size in [66_000, 80_000, 100_000] {
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(size)
        );
        let answer = raw_http(gw.port, request.into_bytes())
            .await
            .expect("an answer");
        assert_eq!(
            answer.status, 431,
            "a {size} byte header (documented limit 64 KiB): {}",
            answer.head
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_does_not_hold_the_connection_forever() {
    let _shared = shared().await;
    let gw = Gateway::start(&["--header-timeout-ms", "1000"]).await;
    let pid = gw.pid();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = fd_count(pid);
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .expect("connect");
        s.write_all(
            b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"timeout\":",
        )
        .await
        .expect("write");
        held.push(s);
    }
    // Within 15 s every connection must have been answered with 408 JSON.
    let started = Instant::now();
    let mut done = vec![false; held.len()];
    let mut timed_out = 0;
    while done.contains(&false) && started.elapsed() < secs(15) {
        for (s, done) in held.iter_mut().zip(done.iter_mut()).filter(|(_, d)| !**d) {
            let mut buf = [0u8; 512];
            if let Ok(read) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await
            {
                *done = true;
                let answer = String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).into_owned();
                if answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout") {
                    timed_out += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(timed_out, 50, "every half-sent body gets 408 body_timeout");
    let open = done.iter().filter(|d| !**d).count();
    let fds = fd_count(pid);
    eprintln!(
        "50 half-sent bodies: {open} still open after {:?}; gateway fds {baseline} before, {fds} now",
        started.elapsed()
    );
    assert_eq!(
        open,
        0,
        "{open} of 50 connections whose body never came are still open and unanswered after \
         {:?}; the gateway holds {fds} fds, {baseline} before",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_that_are_not_utf8_close_with_1007() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let ws_url = session["websocketUrl"].as_str().expect("websocketUrl");
    let id = session["id"].as_str().expect("id");
    for (n, bad) in [
        b"\x00\x01\x02\xff".to_vec(),
        // Not UTF-8 where ingot reads (the method)...
        b"{\"id\":12,\"method\":\"Runtime.evaluate\xff\"}".to_vec(),
        // ...and where it does not (inside params): Chromium would drop it unanswered.
        b"{\"id\":12,\"method\":\"Runtime.evaluate\",\"params\":{\"expression\":\"'\xff'\"}}"
            .to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut ws = ws_connect(ws_url).await;
        let page = ws_attach_page(&mut ws, 1).await;
        assert!(!page.is_empty());
        ws.send(Message::Binary(bad.into())).await.expect("send");
        let deadline = Instant::now() + secs(10);
        let code = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                other => panic!("bad frame {n}: no close frame: {other:?}"),
            }
        };
        assert_eq!(code, Some(1007), "bad frame {n}");
    }
    // The session goes on for its other clients.
    let mut ws = ws_connect(ws_url).await;
    let page = ws_attach_page(&mut ws, 1).await;
    let r = ws_call(
        &mut ws,
        13,
        "Runtime.evaluate",
        json!({"expression": "1+1", "returnByValue": true}),
        Some(&page),
    )
    .await;
    assert_eq!(r["result"]["value"], json!(2));
    assert_eq!(gw.session(id).await["status"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_urls_with_impossible_host_names_get_400() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    for len in [300, 60 << 10] {
        let body = json!({"proxyUrl": format!("http://{}.example:1", "h".repeat(len))});
        let (status, answer) = gw.post("/v1/sessions", body).await;
        if status == 200 {
            // Accepted: release it so the evidence does not leak a browser.
            gw.release(answer["id"].as_str().expect("id")).await;
        }
        let message = assert_error(status, &answer, 400, &format!("{len}-character proxy host"));
        assert!(message.starts_with("proxyUrl:"), "{message}");
    }
    gw.assert_clean(secs(5)).await;
}
