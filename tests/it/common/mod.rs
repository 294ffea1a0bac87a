//! Test harness: a real `ingot` binary on a free loopback port with its own data directory,
//! a raw CDP client over tokio-tungstenite, a loopback page server, and process counting.
#![allow(dead_code)]

pub mod harness;
pub mod netns;
pub mod openapi;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_ingot");

/// Tests of every module share this process and run in parallel threads. Most only touch
/// their own gateway (own port, own data directory, browsers counted by that directory) and
/// may overlap freely: each takes [`shared`]. A test that measures how fast something
/// happens, or keeps every core busy, takes [`exclusive`] and runs alone, as it did when each
/// file was its own test binary run after the others. Take one guard, at the top of the test,
/// and hold it to the end; never take a second one (a waiting writer would deadlock it).
static RUN_ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held for a whole test that starts a gateway or a browser: it waits while an
/// [`exclusive`] test runs.
pub async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    RUN_ALONE.read().await
}

/// Held for a whole test that must run alone: no other gateway or browser test runs
/// meanwhile.
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    RUN_ALONE.write().await
}

/// A gateway process started for one test.
pub struct Gateway {
    pub port: u16,
    /// The address it listens on: loopback, or its network namespace's address.
    pub host: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    pub http: reqwest::Client,
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Gateway {
    pub async fn start(extra: &[&str]) -> Gateway {
        Gateway::start_with_env(extra, &[]).await
    }

    /// Starts a gateway with extra arguments and environment variables.
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        let mut gw = Gateway::launch(&data_dir, extra, env).await;
        gw._tmp = Some(tmp);
        gw
    }

    /// Starts a gateway on an existing data directory (for restart tests).
    pub async fn start_in(data_dir: &Path, extra: &[&str]) -> Gateway {
        Gateway::launch(data_dir, extra, &[]).await
    }

    async fn launch(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        Gateway::spawn(Command::new(BIN), "127.0.0.1", port, data_dir, extra, env).await
    }

    /// Starts a gateway inside network namespace `netns`, listening on `addr:port` (the
    /// namespace's own address), on data directory `data_dir`; [`Gateway::url`] then
    /// points there.
    pub async fn start_in_netns(
        netns: &str,
        addr: std::net::Ipv4Addr,
        port: u16,
        data_dir: &Path,
        extra: &[&str],
    ) -> Gateway {
        // nsenter enters the network namespace only: `ip netns exec` would also mount a
        // sysfs of the namespace's own over /sys, hiding the cgroup file system.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}")).arg(BIN);
        let host = addr.to_string();
        Gateway::spawn(cmd, &host, port, data_dir, extra, &[]).await
    }

    /// Runs `cmd` (the binary, maybe behind a wrapper that execs it) as a gateway
    /// listening on `host:port`, and waits until it is healthy.
    async fn spawn(
        mut cmd: Command,
        host: &str,
        port: u16,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let listen = format!("{host}:{port}");
        // No warm pool unless a test asks for one, so that counting browsers and directories
        // counts sessions only.
        let pool: &[&str] = if extra.contains(&"--pool-size") {
            &[]
        } else {
            &["--pool-size", "0"]
        };
        let mut child = cmd
            .args(["--listen", &listen, "--data-dir"])
            .arg(data_dir)
            .args(pool)
            .args(extra)
            .env("RUST_LOG", "info,ingot=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingot");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let gw = Gateway {
            port,
            host: host.to_owned(),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            child: Some(child),
            log,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = gw.http.get(gw.url("/healthz")).send().await
                && r.status() == 200
            {
                break;
            }
            if Instant::now() > deadline {
                panic!("gateway did not become healthy:\n{}", gw.log_text());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until the log has a line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST with the body and content type exactly as given.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a session and asserts it is live.
    pub async fn create(&self, body: Value) -> Value {
        let (status, session) = self.post("/v1/sessions", body).await;
        assert_eq!(status, 200, "create failed: {session}\n{}", self.log_text());
        assert_eq!(session["status"], "live");
        session
    }

    pub async fn release(&self, id: &str) -> Value {
        let (status, body) = self
            .post_raw(
                &format!("/v1/sessions/{id}/release"),
                "application/json",
                vec![],
            )
            .await;
        assert_eq!(status, 200, "release failed: {body}");
        body
    }

    pub async fn session(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 200, "retrieve failed: {body}");
        body
    }

    /// Polls until the session's status is no longer live; returns it and the time taken.
    pub async fn wait_ended(&self, id: &str, within: Duration) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let s = self.session(id).await;
            if s["status"] != "live" {
                return (s, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "session {id} still live after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own.
        signal(self.pid() as i32, sig);
    }

    /// Waits for the gateway to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("gateway already reaped");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "gateway did not exit within {within:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(15);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Chromium processes (not zombies) whose command line points into this data directory.
    pub fn chromium_processes(&self) -> usize {
        chromium_processes_in(&self.data_dir)
    }

    /// Session directories present: profiles in the data directory plus scratch directories.
    pub fn session_dirs(&self) -> usize {
        session_dirs_in(&self.data_dir)
    }

    /// Waits until no Chromium of this gateway runs and no session directory remains.
    pub async fn assert_clean(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (procs, dirs) = (self.chromium_processes(), self.session_dirs());
            if procs == 0 && dirs == 0 {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{procs} Chromium processes and {dirs} session directories left\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid we own.
            signal(child.id() as i32, 15);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to a process group.
pub fn kill_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) on a process group this test created or owns.
    signal(-pgid, sig);
}

/// Profile directories under `<data_dir>/sessions` plus the sessions' scratch directories.
pub fn session_dirs_in(data_dir: &Path) -> usize {
    let count = |dir: PathBuf| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    count(data_dir.join("sessions")) + count(ingot::browser::scratch_root(data_dir))
}

/// Non-zombie processes whose command line contains `<data_dir>/sessions/`.
pub fn chromium_processes_in(data_dir: &Path) -> usize {
    browser_pids_in(data_dir).len()
}

/// A running (non-zombie) process, as `/proc` shows it.
struct Proc {
    pid: i32,
    pgid: i32,
    cmdline: String,
}

fn running_processes() -> Vec<Proc> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may contain spaces and parentheses; fields resume after the last ')'.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let pgid: i32 = fields.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        found.push(Proc { pid, pgid, cmdline });
    }
    found
}

/// (pid, pgid) of non-zombie processes whose command line points into the sessions dir.
pub fn browser_pids_in(data_dir: &Path) -> Vec<(i32, i32)> {
    let marker = format!("{}/sessions/", data_dir.display());
    running_processes()
        .into_iter()
        .filter(|p| p.cmdline.contains(&marker))
        .map(|p| (p.pid, p.pgid))
        .collect()
}

/// The process group leader (the browser process) of a session.
pub fn browser_leader(data_dir: &Path, session_id: &str) -> i32 {
    let marker = format!(
        "--user-data-dir={}/sessions/{session_id}/profile",
        data_dir.display()
    );
    running_processes()
        .into_iter()
        .find(|p| p.cmdline.contains(&marker) && !p.cmdline.contains("--type="))
        .map(|p| p.pid)
        .unwrap_or_else(|| panic!("no browser process for session {session_id}"))
}

/// A raw CDP client over tokio-tungstenite.
pub struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: i64,
    /// Events received while waiting for replies.
    pub events: Vec<Value>,
}

/// Why a CDP connection ended.
#[derive(Debug)]
pub enum Ended {
    Closed(Option<CloseFrame>),
    Error(String),
}

impl Cdp {
    pub async fn connect(url: &str) -> Cdp {
        Cdp::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    }

    pub async fn try_connect(url: &str) -> Result<Cdp, tungstenite::Error> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(512 << 20))
            .max_frame_size(Some(512 << 20));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
        Ok(Cdp {
            ws,
            next_id: 1,
            events: Vec::new(),
        })
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a command and returns its whole reply (`result` or `error`).
    pub async fn call_full(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.send_raw(msg.to_string()).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(remaining, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no reply to {method} within 60s"));
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON from gateway");
                    if v["id"] == id {
                        return v;
                    }
                    self.events.push(v);
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended while waiting for {method}: {other:?}"),
            }
        }
    }

    /// Sends a command and returns its `result`, panicking on a CDP error.
    pub async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let reply = self.call_full(method, params, session).await;
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// The session id of the first `Target.attachedToTarget` event received so far.
    pub fn attached_session(&self) -> String {
        let event = self
            .events
            .iter()
            .find(|e| e["method"] == "Target.attachedToTarget");
        event
            .and_then(|e| e["params"]["sessionId"].as_str())
            .expect("an attachedToTarget event")
            .to_owned()
    }

    /// Attaches to the first page target and returns its session id.
    pub async fn attach_first_page(&mut self) -> String {
        let targets = self.call("Target.getTargets", json!({}), None).await;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .cloned()
            .expect("a page target");
        let attached = self
            .call(
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

    /// Evaluates an expression in a page session and returns its value.
    pub async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                Some(session),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "evaluate {expression} threw: {r}"
        );
        r["result"]["value"].clone()
    }

    /// Navigates a page session and waits for the load event.
    pub async fn navigate(&mut self, session: &str, url: &str) {
        self.call("Page.enable", json!({}), Some(session)).await;
        self.call("Page.navigate", json!({"url": url}), Some(session))
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .events
            .iter()
            .any(|e| e["method"] == "Page.loadEventFired" && e["sessionId"] == session)
        {
            assert!(Instant::now() < deadline, "no load event for {url}");
            match tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.events.push(serde_json::from_str(&t).expect("JSON"))
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("connection ended while navigating: {other:?}"),
            }
        }
        self.events.clear();
    }

    /// Reads until the connection ends, skipping messages; returns how it ended.
    pub async fn wait_end(&mut self, within: Duration) -> Ended {
        let deadline = Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.ws.next()).await {
                Err(_) => panic!("connection still open after {within:?}"),
                Ok(Some(Ok(Message::Close(frame)))) => return Ended::Closed(frame),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Ended::Error(e.to_string()),
                Ok(None) => return Ended::Error("stream ended without a close frame".into()),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Asserts that a WebSocket upgrade to `url` is refused with `status` before the upgrade.
pub async fn assert_upgrade_refused(url: &str, status: u16) {
    match Cdp::try_connect(url).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(
                response.status().as_u16(),
                status,
                "wrong refusal status for {url}"
            )
        }
        Err(e) => panic!("unexpected error connecting to {url}: {e}"),
        Ok(_) => panic!("upgrade to {url} was accepted"),
    }
}

/// A loopback HTTP server with a couple of pages, for navigation tests.
pub struct PageServer {
    pub port: u16,
    _task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    /// Serves `pages` (path → HTML); unknown paths get 404.
    pub async fn start(pages: Vec<(&'static str, String)>) -> PageServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let pages = Arc::new(pages);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let pages = pages.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 8192];
                    let mut read = 0;
                    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                        match stream.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..read]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (status, body) = match pages.iter().find(|(p, _)| *p == path) {
                        Some((_, html)) => ("200 OK", html.clone()),
                        None => ("404 Not Found", "not found".to_owned()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        PageServer { port, _task: task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Seconds for polling loops.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One row of the gateway's usage database, read directly from the file.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub session_id: String,
    pub tenant: Option<String>,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub checkpoint_at_ms: i64,
    pub status: String,
    pub reason: Option<String>,
    pub billed_minutes: u64,
    pub bytes_to_browser: u64,
    pub bytes_to_client: u64,
    pub messages_to_browser: u64,
    pub messages_to_client: u64,
}

/// Every usage record in `<data_dir>/usage.sqlite3`, oldest first. Reads alongside a running
/// gateway (WAL allows a reader next to the writer).
pub fn usage_records(data_dir: &Path) -> Vec<UsageRecord> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("usage.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open usage database");
    let mut stmt = conn
        .prepare(
            "SELECT session_id, tenant, created_at_ms, ended_at_ms, checkpoint_at_ms, status,
                    reason, billed_minutes, bytes_to_browser, bytes_to_client,
                    messages_to_browser, messages_to_client
             FROM sessions ORDER BY record_id",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok(UsageRecord {
            session_id: r.get(0)?,
            tenant: r.get(1)?,
            created_at_ms: r.get(2)?,
            ended_at_ms: r.get(3)?,
            checkpoint_at_ms: r.get(4)?,
            status: r.get(5)?,
            reason: r.get(6)?,
            billed_minutes: r.get::<_, i64>(7)? as u64,
            bytes_to_browser: r.get::<_, i64>(8)? as u64,
            bytes_to_client: r.get::<_, i64>(9)? as u64,
            messages_to_browser: r.get::<_, i64>(10)? as u64,
            messages_to_client: r.get::<_, i64>(11)? as u64,
        })
    })
    .expect("query")
    .map(|r| r.expect("row"))
    .collect()
}

/// The record of one session.
pub fn usage_record(data_dir: &Path, session_id: &str) -> UsageRecord {
    usage_records(data_dir)
        .into_iter()
        .find(|r| r.session_id == session_id)
        .unwrap_or_else(|| panic!("no usage record for {session_id}"))
}

impl Gateway {
    /// Scrapes and parses `/metrics`.
    pub async fn scrape(&self) -> prometheus_parse::Scrape {
        let r = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200);
        let text = r.text().await.expect("metrics body");
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("metrics parse as Prometheus text")
    }
}

/// The value of the sample named `name` whose labels include all of `labels`; counters,
/// gauges and untyped samples only. Panics when there is no such sample.
pub fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_metric(scrape, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// The sum of every sample of a metric in `scrape`, whatever its labels.
pub fn metric_sum(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

pub fn try_metric(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Sends `sig` to `pid` (a negative pid names a process group), as `kill(2)` does; a
/// process that is already gone is not an error here.
pub fn signal(pid: i32, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).ok();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Runs `ingot` on loopback with a fresh data directory, no warm pool and `args`, expecting
/// it to refuse to start: asserts that it exits non-zero within 30 s and returns its stderr.
pub async fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("data dir");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--pool-size", "0"])
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}
