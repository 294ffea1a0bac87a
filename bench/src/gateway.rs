//! The gateway under test: an `ingot` process on a free loopback port with its own data
//! directory, and the HTTP calls the benchmark makes to it.
//!
//! Owns starting ingot, talking HTTP to it (hyper's client over one TCP connection per
//! request), and stopping it: [`Gateway`]'s `Drop` sends SIGTERM, waits for ingot to release
//! its sessions and exit, reports anything it left behind, and removes the data directory.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::chromium::TempRoot;
use crate::procfs;

/// How long one HTTP call may take (a create waits for a cold browser, 40 at once here).
const HTTP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long ingot may take to answer `/healthz` after it starts (it launches a probe browser).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGTERM may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How an ingot is started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatewayOptions {
    /// `--pool-size`, passed only when ingot has the flag.
    pub pool_size: Option<usize>,
    /// `--max-sessions`; `None` leaves it unset, so that ingot derives it from memory.
    pub max_sessions: Option<usize>,
}

/// A running ingot. Dropping it stops it with SIGTERM.
pub(crate) struct Gateway {
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    /// Killed on purpose ([`Gateway::kill`]): what it left behind is expected, not a bug.
    killed: bool,
}

/// A live session: its id and where to connect.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub id: String,
    pub websocket_url: String,
    /// The live viewer's page (`debugUrl`), when this ingot answers one.
    pub debug_url: Option<String>,
}

/// What a create answered.
#[derive(Debug)]
pub(crate) enum Created {
    Live(Session),
    /// Not created: the status and the body of the answer.
    Refused {
        status: StatusCode,
        body: String,
    },
}

/// Whether this ingot has a warm pool (`--pool-size` in its `--help`).
pub(crate) fn supports_pool(executable: &Path) -> Result<bool> {
    supports_flag(executable, "--pool-size")
}

/// Whether this ingot's `--help` lists `flag`.
pub(crate) fn supports_flag(executable: &Path, flag: &str) -> Result<bool> {
    let out = Command::new(executable)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} --help", executable.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// A loopback port free right now.
pub(crate) fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    listener.local_addr().context("cannot read the free port")
}

impl Gateway {
    /// Starts ingot and waits until it answers `/healthz`.
    pub(crate) async fn start(
        executable: &Path,
        root: &TempRoot,
        options: GatewayOptions,
    ) -> Result<Gateway> {
        Gateway::start_with(executable, root, options, &[]).await
    }

    /// [`Gateway::start`] with `extra` arguments (a cluster node's `--database-url`, …).
    pub(crate) async fn start_with(
        executable: &Path,
        root: &TempRoot,
        options: GatewayOptions,
        extra: &[String],
    ) -> Result<Gateway> {
        let addr = free_port()?;
        let data_dir = root.fresh_dir("ingot-data")?;
        let log = root.path().join(format!(
            "{}.log",
            data_dir
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(executable);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(n) = options.pool_size {
            cmd.arg("--pool-size").arg(n.to_string());
        }
        if let Some(n) = options.max_sessions {
            cmd.arg("--max-sessions").arg(n.to_string());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", executable.display()))?;
        let mut gateway = Gateway {
            child,
            addr,
            data_dir,
            log,
            killed: false,
        };
        gateway.wait_healthy().await?;
        Ok(gateway)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Ok((StatusCode::OK, _)) = self.request(Method::GET, "/healthz", None).await {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("cannot poll ingot")? {
                bail!(
                    "ingot exited during start-up ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "ingot did not answer /healthz within {START_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway process's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The loopback address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// SIGKILLs the gateway, as a machine failure would, and returns when it was sent. Waits
    /// (up to 10 s) for its browsers to die with it (ingot starts them with a parent-death
    /// signal), so that the next measurement starts quiet.
    pub(crate) fn kill(&mut self) -> Result<Instant> {
        let browsers = self.browser_processes();
        kill(Pid::from_raw(self.pid()), Signal::SIGKILL).context("cannot SIGKILL ingot")?;
        let killed_at = Instant::now();
        self.killed = true;
        self.child.wait().context("cannot reap ingot")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while browsers
            .iter()
            .any(|&p| procfs::stat(p).is_some_and(|s| !s.zombie))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        procfs::kill_mentioning(&self.data_dir.to_string_lossy());
        Ok(killed_at)
    }

    /// The gateway's own resident memory, in KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        procfs::rss_kib(self.pid()).ok_or_else(|| anyhow!("cannot read ingot's memory"))
    }

    /// Every browser process this gateway started (pool and sessions alike).
    pub(crate) fn browser_processes(&self) -> Vec<i32> {
        let groups = procfs::groups_led_by_children_of(self.pid());
        procfs::browser_processes(&groups, &self.data_dir, self.pid())
    }

    /// Waits until no browser of this gateway is left (after releases), up to `timeout`.
    pub(crate) async fn wait_no_browsers(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let left = self.browser_processes().len();
            if left == 0 {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("{left} browser process(es) still running {timeout:?} after release");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/sessions` with `body`.
    pub(crate) async fn create(&self, body: &str) -> Result<Session> {
        match self.try_create(body).await? {
            Created::Live(session) => Ok(session),
            Created::Refused { status, body } => bail!("create answered {status}: {body}"),
        }
    }

    /// `POST /v1/sessions` with `body`, where a refusal (any status but success) is an answer
    /// rather than an error.
    pub(crate) async fn try_create(&self, body: &str) -> Result<Created> {
        let (status, reply) = self
            .request(Method::POST, "/v1/sessions", Some(body.to_owned()))
            .await?;
        if !status.is_success() {
            return Ok(Created::Refused {
                status,
                body: String::from_utf8_lossy(&reply).into_owned(),
            });
        }
        let v: Value = serde_json::from_slice(&reply).context("create reply is not JSON")?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("create reply has no {name}: {v}"))
        };
        Ok(Created::Live(Session {
            id: field("id")?,
            websocket_url: field("websocketUrl")?,
            debug_url: field("debugUrl").ok(),
        }))
    }

    /// `GET path` as JSON, whatever the status (`/readyz` answers 503 when full).
    pub(crate) async fn json(&self, path: &str) -> Result<Value> {
        let (_, body) = self.request(Method::GET, path, None).await?;
        serde_json::from_slice(&body).with_context(|| format!("{path} did not answer JSON"))
    }

    /// Every process of this gateway's browsers, as [`Gateway::browser_processes`] finds them,
    /// and every other descendant of the gateway (an `Xvfb`, a helper re-parented to it).
    pub(crate) fn tree_processes(&self) -> Vec<i32> {
        let mut pids = self.browser_processes();
        pids.extend(procfs::descendants_of(self.pid()));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// `GET /v1/sessions/{id}`, as JSON.
    pub(crate) async fn session(&self, id: &str) -> Result<Value> {
        let (status, reply) = self
            .request(Method::GET, &format!("/v1/sessions/{id}"), None)
            .await?;
        if !status.is_success() {
            bail!(
                "GET /v1/sessions/{id} answered {status}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        serde_json::from_slice(&reply).context("session reply is not JSON")
    }

    /// `POST /v1/sessions/{id}/release`.
    pub(crate) async fn release(&self, id: &str) -> Result<()> {
        let (status, reply) = self
            .request(Method::POST, &format!("/v1/sessions/{id}/release"), None)
            .await?;
        if !status.is_success() {
            bail!(
                "release answered {status}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        Ok(())
    }

    /// `GET /metrics`, as text.
    pub(crate) async fn metrics(&self) -> Result<String> {
        let (status, body) = self.request(Method::GET, "/metrics", None).await?;
        if status != StatusCode::OK {
            bail!("/metrics answered {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits until the warm pool holds `size` browsers, judged by a `*pool*` gauge in
    /// `/metrics` that counts ready/idle browsers. Without such a gauge, waits a fixed time
    /// long enough for a launch on this machine. Returns whether the gauge was found.
    pub(crate) async fn wait_pool_full(&self, size: usize, timeout: Duration) -> Result<bool> {
        let started = Instant::now();
        loop {
            let metrics = self.metrics().await?;
            match pool_ready(&metrics) {
                None => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    return Ok(false);
                }
                Some(n) if n >= size as f64 => return Ok(true),
                Some(_) if started.elapsed() > timeout => {
                    bail!("the warm pool did not refill to {size} within {timeout:?}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// One HTTP/1.1 request on a fresh connection.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        tokio::time::timeout(HTTP_TIMEOUT, async {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("cannot connect to ingot at {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, self.addr.to_string());
            if body.is_some() {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            let response = sender.send_request(request).await.context("HTTP request")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("HTTP body")?
                .to_bytes();
            Ok((status, body))
        })
        .await
        .map_err(|_| anyhow!("{path} did not answer within {HTTP_TIMEOUT:?}"))?
    }

    /// The last lines of ingot's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The number of ready pool browsers, from `ingot_pool_browsers` (or, for another
/// version of ingot, a gauge named like `*pool*ready`/`*pool*idle`), if ingot exports one.
fn pool_ready(metrics: &str) -> Option<f64> {
    let samples: Vec<(&str, &str)> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.split('{').next().unwrap_or(name), value))
        })
        .collect();
    let exact = samples
        .iter()
        .find(|(name, _)| *name == "ingot_pool_browsers");
    let loose = || {
        samples.iter().find(|(name, _)| {
            name.contains("pool")
                && ["ready", "idle", "warm", "available"]
                    .iter()
                    .any(|w| name.ends_with(w))
        })
    };
    exact.or_else(loose).and_then(|(_, v)| v.parse().ok())
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid());
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match self.child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            eprintln!("cleanup: ingot exited with {status} after SIGTERM");
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        eprintln!(
                            "cleanup: ingot did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it"
                        );
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = self.child.wait();
                        break;
                    }
                }
            }
        }
        // ingot must have reaped every browser before exiting; anything left is its bug.
        std::thread::sleep(Duration::from_millis(100));
        let stray = procfs::kill_mentioning(&self.data_dir.to_string_lossy());
        if stray > 0 && !self.killed {
            eprintln!("cleanup: ingot left {stray} browser process(es) running; killed them");
        }
        let scratch = scratch_root(&self.data_dir);
        if let Ok(mut entries) = std::fs::read_dir(&scratch) {
            if entries.next().is_some() && !self.killed {
                eprintln!(
                    "cleanup: ingot left files in {}; removing them",
                    scratch.display()
                );
            }
            let _ = std::fs::remove_dir_all(&scratch);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.data_dir) {
            eprintln!("cleanup: cannot remove {}: {e}", self.data_dir.display());
        }
    }
}

/// Where ingot puts its browsers' `TMPDIR`s for a data directory: `/tmp/ingot-<FNV-1a of the
/// path, low 32 bits>` (mirrors `ingot::browser::scratch_root`, kept separate so the
/// benchmark does not depend on the gateway's internals).
fn scratch_root(data_dir: &Path) -> PathBuf {
    let hash = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    PathBuf::from(format!("/tmp/ingot-{:08x}", hash as u32))
}

#[cfg(test)]
mod tests {
    use super::pool_ready;

    #[test]
    fn finds_a_pool_gauge() {
        let m = "# HELP x\ningot_pool_size 2\ningot_pool_browsers 1\n";
        assert_eq!(pool_ready(m), Some(1.0));
        assert_eq!(
            pool_ready("ingot_pool_size 2\ningot_pool_idle 2\n"),
            Some(2.0)
        );
        assert_eq!(pool_ready("ingot_sessions_live 0\n"), None);
    }
}
