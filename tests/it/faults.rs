//! Faults, each tried for real against a running gateway and real Chromium, with the outcome
//! asserted and the measured figures printed (run with `--nocapture` to read them):
//!
//! - Chromium SIGKILLed while a navigation is in flight: `failed` within 1 s, clients get 1011.
//! - Chromium hung (SIGSTOP of its process group): the liveness probe ends the session as
//!   `failed`/`browser_unresponsive` and the stopped processes are reaped.
//! - The profile disk full or read-only (a real tmpfs mounted on `<data>/sessions`; needs
//!   root): creation fails with a 503 that names the problem and leaves nothing behind.
//! - 200 create/connect/release cycles, 8 at a time, with the warm pool on: processes, fds and
//!   directories return to the baseline, and the gateway's memory stays flat.
//! - The gateway SIGKILLed with 5 live sessions and restarted: orphans reaped, usage records
//!   closed as `failed`/`gateway_restart`.
//! - Release, timeout and crash of one session racing in every order: one outcome, one record,
//!   one billed minute.
//!
//! The tests of this module run alone, one at a time and with no other module's gateway
//! test alongside (see [`crate::common::exclusive`]): several measure how fast something
//! happens, and the 200-cycle test keeps both cores of the test machine busy.

use crate::common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
}

fn ws_url(session: &Value) -> String {
    session["websocketUrl"]
        .as_str()
        .expect("websocketUrl")
        .to_owned()
}

/// The close code and reason of a connection that must have ended with a close frame.
fn close_of(ended: Ended, what: &str) -> (u16, String) {
    match ended {
        Ended::Closed(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("{what}: expected a close frame, got {other:?}"),
    }
}

/// A test's data directory. Dropped after the gateway (declare it first), it also removes
/// the scratch root `/tmp/ingot-<hash>` that ingot leaves behind, empty, when it stops.
struct DataDir {
    tmp: tempfile::TempDir,
}

impl DataDir {
    fn new() -> DataDir {
        DataDir {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        // Only if empty: anything in it would be a leak for a test to report, not to hide.
        let _ = std::fs::remove_dir(ingot::browser::scratch_root(self.tmp.path()));
    }
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

/// What each open file descriptor of a process points at, for failure messages.
fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{}->{target}", e.file_name().to_string_lossy())
        })
        .collect();
    targets.sort();
    targets
}

/// Resident memory of a process in KiB (`VmRSS`).
fn vm_rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The state letter of a process (`R`, `S`, `T`, `Z`, ...), or `None` when it is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether a process runs (zombies and vanished processes do not).
fn runs(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z')
}

/// Polls until the usage record of `id` is no longer live; returns it.
async fn final_record(data_dir: &Path, id: &str, within: Duration) -> UsageRecord {
    let deadline = Instant::now() + within;
    loop {
        let record = usage_record(data_dir, id);
        if record.status != "live" {
            return record;
        }
        assert!(
            Instant::now() < deadline,
            "usage record of {id} still live after {within:?}: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that the gateway's log shows no panic.
fn assert_no_panic(gw: &Gateway) {
    let log = gw.log_text();
    assert!(
        !log.contains("panicked"),
        "the gateway panicked:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A loopback HTTP server that accepts connections, reads the request and never answers, so
/// that a navigation to it stays in flight. Counts the requests it has read.
struct Tarpit {
    port: u16,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Tarpit {
    async fn start() -> Tarpit {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tarpit");
        let port = listener.local_addr().expect("tarpit address").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            // Dropped (and every held connection with it) when the accept task is aborted.
            let mut held = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                held.spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = vec![0u8; 8192];
                    let mut head = Vec::new();
                    let mut counted = false;
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if !counted => {
                                head.extend_from_slice(&buf[..n]);
                                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                    counted = true;
                                    counter.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        Tarpit {
            port,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tmpfs mounted by a test; unmounted when dropped (after the gateway using it is gone).
struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs with `options` on `path`. Mounting needs root: fail loudly, never skip.
    fn tmpfs(path: &Path, options: &str) -> Mount {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Mount {
                path: path.to_path_buf(),
            },
            Ok(o) => panic!(
                "this test needs root to mount a tmpfs on {} (mount -t tmpfs -o {options}): {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("this test needs root and mount(8) to mount a tmpfs: {e}"),
        }
    }

    /// Remounts read-only. Fails while a file on it is open for writing, so retry a little.
    fn remount_read_only(&self) {
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&self.path)
                .output()
                .expect("run mount");
            if out.status.success() {
                return;
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot remount {} read-only: {last}", self.path.display());
    }

    /// Unmounts now; panics if it cannot.
    fn unmount(mut self) {
        assert!(self.try_unmount(), "cannot unmount {}", self.path.display());
        self.path = PathBuf::new();
    }

    fn try_unmount(&self) -> bool {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if !self.try_unmount() {
            // Never leave a mount behind, even a busy one.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Fills a filesystem: one file takes every free block, then empty files take every free
/// inode (when `inodes` is set). Returns how many files it made.
fn fill(dir: &Path, inodes: bool) -> usize {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("filler")).expect("create filler");
    let block = vec![0u8; 4096];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    drop(file);
    let mut files = 1;
    if inodes {
        loop {
            match std::fs::File::create(dir.join(format!("inode-{files}"))) {
                Ok(_) => files += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the inodes of {}: {e}", dir.display()),
            }
            assert!(
                files < 100_000,
                "{} has too many inodes to fill",
                dir.display()
            );
        }
    }
    files
}

/// Session directories (named by a session id) in `<data_dir>/sessions`, plus scratch
/// directories: what ingot owns there, leaving out a test's filler files.
fn owned_dirs(data_dir: &Path) -> usize {
    let sessions = std::fs::read_dir(data_dir.join("sessions"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| uuid::Uuid::parse_str(n).is_ok())
        })
        .count();
    let scratch = std::fs::read_dir(ingot::browser::scratch_root(data_dir))
        .map(|d| d.count())
        .unwrap_or(0);
    sessions + scratch
}

// ---------------------------------------------------------------------------------------
// Chromium SIGKILLed mid-navigation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_navigation_fails_within_a_second() {
    let _alone = exclusive().await;
    let data = DataDir::new();
    let gw = Gateway::start_in(data.path(), &[]).await;
    let tarpit = Tarpit::start().await;
    let s = gw.create(json!({})).await;
    let id = id_of(&s);
    let mut cdp = Cdp::connect(&ws_url(&s)).await;
    let page = cdp.attach_first_page().await;
    cdp.call("Page.enable", json!({}), Some(&page)).await;
    // Not awaited: its reply would only come once the server answered, which it never does.
    cdp.send_raw(
        json!({"id": 9000, "method": "Page.navigate", "sessionId": page,
               "params": {"url": tarpit.url("/never-answers")}})
        .to_string(),
    )
    .await;
    let deadline = Instant::now() + secs(10);
    while tarpit.requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "Chromium never requested the page"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The request is read and unanswered: the navigation is in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.session(&id).await["status"], "live");

    let leader = browser_leader(&gw.data_dir, &id);
    kill_group(leader, libc::SIGKILL);
    let killed = Instant::now();
    let (ended, _) = gw.wait_ended(&id, secs(5)).await;
    let noticed = killed.elapsed();
    eprintln!(
        "mid-navigation: SIGKILL of pgid {leader} → status {} ({}) after {noticed:?}",
        ended["status"], ended["releaseReason"]
    );
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(ended["releaseReason"], "browser_crashed", "{ended}");
    assert!(
        noticed < Duration::from_secs(1),
        "crash noticed only after {noticed:?}\n{}",
        gw.log_text()
    );

    let (code, reason) = close_of(
        cdp.wait_end(secs(10)).await,
        "client of the crashed session",
    );
    eprintln!("mid-navigation: client closed with {code} {reason:?}");
    assert_eq!(code, 1011, "close code (reason {reason:?})");
    gw.assert_clean(secs(10)).await;

    let record = final_record(&gw.data_dir, &id, secs(5)).await;
    assert_eq!(
        (record.status.as_str(), record.reason.as_deref()),
        ("failed", Some("browser_crashed")),
        "{record:?}"
    );
    assert_eq!(record.billed_minutes, 1, "{record:?}");
    assert_eq!(usage_records(&gw.data_dir).len(), 1);
    assert_no_panic(&gw);
}

// ---------------------------------------------------------------------------------------
// Chromium hung (SIGSTOP)
// ---------------------------------------------------------------------------------------

/// Resumes a stopped process group if a test ends early, so nothing stays stopped; the
/// gateway's shutdown then reaps it.
struct ResumeOnDrop {
    data_dir: PathBuf,
    pgid: i32,
}

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        if browser_pids_in(&self.data_dir)
            .iter()
            .any(|&(_, pgid)| pgid == self.pgid)
        {
            kill_group(self.pgid, libc::SIGCONT);
        }
    }
}

/// The probe settings of the hung-browser test: a probe every 500 ms, answered within 1.5 s.
const INTERVAL_MS: u64 = 500;
const TIMEOUT_MS: u64 = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_browser_is_detected_by_the_probe_and_reaped() {
    let _alone = exclusive().await;
    let data = DataDir::new();
    let gw = Gateway::start_in(
        data.path(),
        &[
            "--browser-probe-interval-ms",
            &INTERVAL_MS.to_string(),
            "--browser-probe-timeout-ms",
            &TIMEOUT_MS.to_string(),
        ],
    )
    .await;
    let hung = gw.create(json!({})).await;
    let healthy = gw.create(json!({})).await;
    let hung_id = id_of(&hung);
    let healthy_id = id_of(&healthy);
    let mut cdp = Cdp::connect(&ws_url(&hung)).await;
    cdp.call("Browser.getVersion", json!({}), None).await;
    the_probe_does_not_fire_while_the_browser_answers(&gw, &hung_id).await;

    let (leader, group, _resume, stopped) = the_browser_group_is_stopped(&gw, &hung_id).await;
    the_probe_ends_the_hung_session_as_unresponsive(&gw, &hung_id, leader, &group, stopped).await;
    the_client_of_the_hung_session_gets_1011(&mut cdp).await;
    every_stopped_process_and_the_profile_are_gone(&gw, &hung_id, &group, stopped).await;
    the_healthy_session_was_not_touched(&gw, &healthy, &healthy_id).await;
    one_failed_record_and_one_counted_unresponsive_end(&gw, &hung_id).await;
}

/// A few probe rounds pass while the browser is fine: the probe does not fire falsely.
async fn the_probe_does_not_fire_while_the_browser_answers(gw: &Gateway, hung_id: &str) {
    tokio::time::sleep(Duration::from_millis(3 * (INTERVAL_MS + 100))).await;
    assert_eq!(gw.session(hung_id).await["status"], "live");
}

/// SIGSTOPs the session's browser process group and waits until its leader is stopped.
/// Returns the leader, the group's processes, the guard that resumes them if the test ends
/// early (hold it to the end) and when they were stopped.
async fn the_browser_group_is_stopped(
    gw: &Gateway,
    hung_id: &str,
) -> (i32, Vec<i32>, ResumeOnDrop, Instant) {
    let leader = browser_leader(&gw.data_dir, hung_id);
    let group: Vec<i32> = browser_pids_in(&gw.data_dir)
        .into_iter()
        .filter(|&(_, pgid)| pgid == leader)
        .map(|(pid, _)| pid)
        .collect();
    let resume = ResumeOnDrop {
        data_dir: gw.data_dir.clone(),
        pgid: leader,
    };
    kill_group(leader, libc::SIGSTOP);
    let stopped = Instant::now();
    let deadline = Instant::now() + secs(2);
    while proc_state(leader) != Some('T') {
        assert!(Instant::now() < deadline, "the browser did not stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (leader, group, resume, stopped)
}

async fn the_probe_ends_the_hung_session_as_unresponsive(
    gw: &Gateway,
    hung_id: &str,
    leader: i32,
    group: &[i32],
    stopped: Instant,
) {
    let (ended, _) = gw.wait_ended(hung_id, secs(15)).await;
    let detected = stopped.elapsed();
    eprintln!(
        "hang: SIGSTOP of pgid {leader} ({} processes) → status {} ({}) after {detected:?} \
         (probe every {INTERVAL_MS} ms, timeout {TIMEOUT_MS} ms)",
        group.len(),
        ended["status"],
        ended["releaseReason"]
    );
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(ended["releaseReason"], "browser_crashed", "{ended}");
    // It takes a whole probe timeout (the browser answered every probe until it stopped),
    // and at most an interval, a timeout and some scheduling slack.
    assert!(
        detected >= Duration::from_millis(TIMEOUT_MS - 500),
        "detected after only {detected:?}: not by the probe?\n{}",
        gw.log_text()
    );
    assert!(
        detected < Duration::from_millis(INTERVAL_MS + TIMEOUT_MS + 1500),
        "hang detected only after {detected:?}"
    );
}

async fn the_client_of_the_hung_session_gets_1011(cdp: &mut Cdp) {
    let (code, reason) = close_of(cdp.wait_end(secs(10)).await, "client of the hung session");
    eprintln!("hang: client closed with {code} {reason:?}");
    assert_eq!(code, 1011, "close code (reason {reason:?})");
}

/// Every process of the stopped group is gone, not merely stopped; the profile too.
async fn every_stopped_process_and_the_profile_are_gone(
    gw: &Gateway,
    hung_id: &str,
    group: &[i32],
    stopped: Instant,
) {
    let deadline = Instant::now() + secs(10);
    while group.iter().any(|&pid| runs(pid)) {
        assert!(
            Instant::now() < deadline,
            "stopped processes left: {:?}",
            group
                .iter()
                .map(|&p| (p, proc_state(p)))
                .filter(|(_, s)| s.is_some_and(|s| s != 'Z'))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "hang: all {} processes reaped after {:?}",
        group.len(),
        stopped.elapsed()
    );
    // The profile goes right after the processes (the status turns `failed` before that).
    let profile = gw.data_dir.join("sessions").join(hung_id);
    let deadline = Instant::now() + secs(5);
    while profile.exists() {
        assert!(
            Instant::now() < deadline,
            "the hung session's profile is left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The other session was not touched.
async fn the_healthy_session_was_not_touched(gw: &Gateway, healthy: &Value, healthy_id: &str) {
    let other = gw.session(healthy_id).await;
    assert_eq!(other["status"], "live", "{other}");
    let mut other_cdp = Cdp::connect(&ws_url(healthy)).await;
    let page = other_cdp.attach_first_page().await;
    assert_eq!(other_cdp.eval(&page, "6 * 7").await, json!(42));
    other_cdp.close().await;
    gw.release(healthy_id).await;
    gw.assert_clean(secs(10)).await;
}

async fn one_failed_record_and_one_counted_unresponsive_end(gw: &Gateway, hung_id: &str) {
    let record = final_record(&gw.data_dir, hung_id, secs(5)).await;
    assert_eq!(
        (record.status.as_str(), record.reason.as_deref()),
        ("failed", Some("browser_unresponsive")),
        "{record:?}"
    );
    assert_eq!(record.billed_minutes, 1);
    let scrape = gw.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "ingot_sessions_ended_total",
            &[("status", "failed"), ("reason", "browser_unresponsive")]
        ),
        1.0
    );
    assert_no_panic(gw);
}

// ---------------------------------------------------------------------------------------
// Profile disk full or read-only
// ---------------------------------------------------------------------------------------

/// A create on a broken profile disk: 503 `browser_start_failed` whose message contains
/// `problem`, and nothing left: no process, no directory, no usage record, one counted error.
async fn assert_create_refused(gw: &Gateway, problem: &str, errors_before: f64) {
    let (status, body) = gw.post("/v1/sessions", json!({})).await;
    eprintln!("disk: create answered {status} {body}");
    assert_eq!(
        status,
        503,
        "create on a broken disk: {body}\n{}",
        gw.log_text()
    );
    assert_eq!(body["error"]["code"], "browser_start_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(problem) && message.contains("sessions"),
        "the message should name the problem ({problem:?}) and the directory: {body}"
    );
    assert_eq!(body["message"], body["error"]["message"], "{body}");
    assert_eq!(gw.chromium_processes(), 0, "a browser was left running");
    assert_eq!(owned_dirs(&gw.data_dir), 0, "a session directory was left");
    assert!(
        usage_records(&gw.data_dir).is_empty(),
        "a failed create left a usage record: {:?}",
        usage_records(&gw.data_dir)
    );
    let scrape = gw.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "ingot_session_create_errors_total",
            &[("reason", "browser_start_failed")]
        ),
        errors_before + 1.0
    );
    assert_eq!(metric(&scrape, "ingot_sessions_live", &[]), 0.0);
    let (ready, why) = gw.get("/readyz").await;
    eprintln!("disk: /readyz answers {ready} {why}");
    assert_eq!(ready, 503, "{why}");
    assert_eq!(why["reason"], "chromium_unavailable", "{why}");
}

/// Once the disk is fixed, the next create works and is cleaned up as usual.
async fn assert_create_works_again(gw: &Gateway) {
    let s = gw.create(json!({})).await;
    let id = id_of(&s);
    let mut cdp = Cdp::connect(&ws_url(&s)).await;
    let page = cdp.attach_first_page().await;
    assert_eq!(cdp.eval(&page, "1 + 1").await, json!(2));
    cdp.close().await;
    gw.release(&id).await;
    gw.assert_clean(secs(10)).await;
    let records = usage_records(&gw.data_dir);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].session_id, id);
    let (ready, why) = gw.get("/readyz").await;
    assert_eq!(ready, 200, "readiness after a successful launch: {why}");
}

/// A profile disk with no free block and no free inode: the session directory cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_profile_disk_refuses_create_with_503() {
    let _alone = exclusive().await;
    let tmp = DataDir::new();
    let sessions = tmp.path().join("sessions");
    std::fs::create_dir(&sessions).expect("create the mount point");
    // Enough inodes for the gateway's start-up probe browser, few enough to use them all up.
    let mount = Mount::tmpfs(&sessions, "size=512k,nr_inodes=2000");
    let gw = Gateway::start_in(tmp.path(), &[]).await;
    let files = fill(&sessions, true);
    eprintln!("disk full: {files} files fill {}", sessions.display());

    assert_create_refused(&gw, "not enough free disk space", 0.0).await;
    // And once more, to see the failure is stable and counted each time.
    assert_create_refused(&gw, "not enough free disk space", 1.0).await;

    // Fix the disk under the running gateway: it recovers without a restart.
    mount.unmount();
    assert_create_works_again(&gw).await;
    assert_no_panic(&gw);
}

/// A profile disk with no free block but free inodes, as a full disk usually is: Chromium
/// would start on it, so ingot checks the free space itself (64 MiB at least) and answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_disk_without_free_blocks_refuses_create() {
    let _alone = exclusive().await;
    let tmp = DataDir::new();
    let sessions = tmp.path().join("sessions");
    std::fs::create_dir(&sessions).expect("create the mount point");
    let mount = Mount::tmpfs(&sessions, "size=512k");
    let gw = Gateway::start_in(tmp.path(), &[]).await;
    fill(&sessions, false);
    let output = Command::new("df").arg(&sessions).output().expect("df");
    eprintln!("disk full: {}", String::from_utf8_lossy(&output.stdout));

    assert_create_refused(&gw, "space", 0.0).await;
    drop(gw);
    mount.unmount();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_profile_disk_refuses_create_with_503() {
    let _alone = exclusive().await;
    let tmp = DataDir::new();
    let sessions = tmp.path().join("sessions");
    std::fs::create_dir(&sessions).expect("create the mount point");
    let mount = Mount::tmpfs(&sessions, "size=512k");
    let gw = Gateway::start_in(tmp.path(), &[]).await;
    // The start-up probe browser is reaped before the gateway serves: nothing is open there.
    mount.remount_read_only();
    assert!(
        std::fs::create_dir(sessions.join("probe")).is_err(),
        "the remounted tmpfs is still writable"
    );

    assert_create_refused(&gw, "read-only file system", 0.0).await;

    // Fix the disk under the running gateway: it recovers without a restart.
    mount.unmount();
    assert_create_works_again(&gw).await;
    assert_no_panic(&gw);
}

// ---------------------------------------------------------------------------------------
// 200 cycles, 8 at a time
// ---------------------------------------------------------------------------------------

/// What the leak check compares: Chromium processes, owned directories, gateway fds.
fn footprint(gw: &Gateway) -> (usize, usize, usize) {
    (
        gw.chromium_processes(),
        gw.session_dirs(),
        fd_count(gw.pid()),
    )
}

/// Runs `count` create/connect/evaluate/disconnect/release cycles, `parallel` at a time.
async fn cycles(base: &str, client: &reqwest::Client, count: usize, parallel: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let next = next.clone();
        let client = client.clone();
        let base = base.to_owned();
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < count {
                let r = client
                    .post(format!("{base}/v1/sessions"))
                    .json(&json!({}))
                    .send()
                    .await
                    .expect("create");
                let status = r.status().as_u16();
                let s: Value = r.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 200, "create: {s}");
                let mut cdp = Cdp::connect(&ws_url(&s)).await;
                let page = cdp.attach_first_page().await;
                assert_eq!(cdp.eval(&page, "1 + 1").await, json!(2));
                cdp.close().await;
                let r = client
                    .post(format!("{base}/v1/sessions/{}/release", id_of(&s)))
                    .send()
                    .await
                    .expect("release");
                assert_eq!(r.status().as_u16(), 200, "release");
            }
        });
    }
    let all = async {
        while let Some(done) = workers.join_next().await {
            done.expect("a cycle failed");
        }
    };
    tokio::time::timeout(Duration::from_secs(600), all)
        .await
        .expect("cycles did not finish within 10 minutes");
}

/// Browsers in the warm pool of the 200-cycle test, and cycles run at a time.
const POOL: usize = 2;
const PARALLEL: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cycles_eight_at_a_time_leak_nothing() {
    let _alone = exclusive().await;
    // Room for 8 sessions plus the 2 pooled browsers.
    let data = DataDir::new();
    let mut gw = Gateway::start_in(
        data.path(),
        &[
            "--pool-size",
            &POOL.to_string(),
            "--max-sessions",
            &(PARALLEL + POOL).to_string(),
        ],
    )
    .await;
    let base = gw.url("");
    // No idle keep-alive connections: they would count as the gateway's fds. The harness's
    // client (which holds one from polling `/healthz`) is replaced, closing it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    gw.http = client.clone();
    let cycling = Cycling {
        gw: &gw,
        client,
        base,
    };

    let (baseline, fds_baseline, rss_before) =
        the_footprint_settles_with_the_pool_full(&cycling).await;
    let rss_100 = a_hundred_cycles_return_to_the_baseline(&cycling, baseline).await;
    a_hundred_more_return_to_the_baseline_with_flat_memory(
        &cycling,
        baseline,
        &fds_baseline,
        rss_before,
        rss_100,
    )
    .await;
    every_session_was_released_billed_and_counted(&gw).await;
}

/// The 200-cycle test's gateway, and its HTTP client without idle connections.
struct Cycling<'a> {
    gw: &'a Gateway,
    client: reqwest::Client,
    base: String,
}

impl Cycling<'_> {
    /// Browsers in the warm pool, as `/metrics` tells.
    async fn pooled(&self) -> usize {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("metrics parse");
        metric(&scrape, "ingot_pool_browsers", &[]) as usize
    }

    /// The same footprint for 2 s in a row, with the pool full: the baseline (or `want`).
    async fn settle(&self, want: Option<(usize, usize, usize)>) -> (usize, usize, usize) {
        let gw = self.gw;
        let deadline = Instant::now() + secs(30);
        let mut last = footprint(gw);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = footprint(gw);
            if now != last {
                (last, since) = (now, Instant::now());
            }
            let stable = since.elapsed() >= Duration::from_secs(2);
            if stable && self.pooled().await == POOL && want.is_none_or(|w| w == now) {
                return now;
            }
            if Instant::now() > deadline {
                panic!(
                    "footprint (processes, dirs, fds) {now:?} did not settle at {want:?} \
                     within 30s; pooled {}\nfds: {:?}",
                    self.pooled().await,
                    fd_targets(gw.pid())
                );
            }
        }
    }
}

/// Returns the baseline footprint, the gateway's fds and its VmRSS.
async fn the_footprint_settles_with_the_pool_full(
    cycling: &Cycling<'_>,
) -> ((usize, usize, usize), Vec<String>, u64) {
    let gw = cycling.gw;
    let baseline = cycling.settle(None).await;
    let fds_baseline = fd_targets(gw.pid());
    let rss_before = vm_rss_kib(gw.pid());
    eprintln!(
        "cycles: pool {POOL}, baseline {} Chromium processes, {} dirs, {} gateway fds, \
         VmRSS {rss_before} KiB",
        baseline.0, baseline.1, baseline.2
    );
    assert_eq!(
        baseline.1,
        2 * POOL,
        "a profile and a scratch dir per pooled browser"
    );
    assert!(baseline.0 >= POOL, "pooled browsers are running");
    (baseline, fds_baseline, rss_before)
}

/// Returns the gateway's VmRSS after the first 100 cycles.
async fn a_hundred_cycles_return_to_the_baseline(
    cycling: &Cycling<'_>,
    baseline: (usize, usize, usize),
) -> u64 {
    let started = Instant::now();
    cycles(&cycling.base, &cycling.client, 100, PARALLEL).await;
    let first_half = started.elapsed();
    let after_100 = cycling.settle(Some(baseline)).await;
    let rss_100 = vm_rss_kib(cycling.gw.pid());
    eprintln!("cycles: 100 took {first_half:?}; footprint {after_100:?}, VmRSS {rss_100} KiB");
    rss_100
}

async fn a_hundred_more_return_to_the_baseline_with_flat_memory(
    cycling: &Cycling<'_>,
    baseline: (usize, usize, usize),
    fds_baseline: &[String],
    rss_before: u64,
    rss_100: u64,
) {
    let gw = cycling.gw;
    let started = Instant::now();
    cycles(&cycling.base, &cycling.client, 100, PARALLEL).await;
    let second_half = started.elapsed();
    let settling = Instant::now();
    let after_200 = cycling.settle(Some(baseline)).await;
    let rss_200 = vm_rss_kib(gw.pid());
    eprintln!(
        "cycles: 100 more took {second_half:?}; footprint {after_200:?} (settled in {:?}), \
         VmRSS {rss_200} KiB",
        settling.elapsed()
    );
    eprintln!(
        "cycles: VmRSS before {rss_before} KiB, after 100 {rss_100} KiB, after 200 {rss_200} KiB"
    );
    let fds_after = fd_targets(gw.pid());
    eprintln!(
        "cycles: gateway fds at the baseline {fds_baseline:?}\nafter 200 cycles {fds_after:?}"
    );
    assert_eq!(
        after_200, baseline,
        "after 200 cycles {after_200:?}, baseline {baseline:?}\nfds before {fds_baseline:?}\nafter {fds_after:?}"
    );
    let growth = rss_200.saturating_sub(rss_100);
    assert!(
        growth < 8 * 1024,
        "the gateway grew {growth} KiB between cycle 100 and 200 \
         ({rss_before} → {rss_100} → {rss_200} KiB)"
    );
}

async fn every_session_was_released_billed_and_counted(gw: &Gateway) {
    let records = usage_records(&gw.data_dir);
    assert_eq!(records.len(), 200);
    assert!(
        records.iter().all(|r| r.status == "released"
            && r.reason.as_deref() == Some("user_requested")
            && r.billed_minutes == 1),
        "records not all released/user_requested/1 minute"
    );
    let scrape = gw.scrape().await;
    eprintln!(
        "cycles: {} sessions created, {} from the pool",
        metric(&scrape, "ingot_sessions_created_total", &[]),
        metric(&scrape, "ingot_pool_handouts_total", &[])
    );
    assert_eq!(metric(&scrape, "ingot_sessions_created_total", &[]), 200.0);
    assert_eq!(metric(&scrape, "ingot_sessions_live", &[]), 0.0);
    assert_eq!(metric(&scrape, "ingot_client_connections", &[]), 0.0);
    assert_no_panic(gw);
}

// ---------------------------------------------------------------------------------------
// The gateway SIGKILLed with 5 live sessions
// ---------------------------------------------------------------------------------------

/// Starts a Chromium in its own process group with a profile under `<dir>/sessions/<id>`,
/// like a browser a killed gateway left behind, and waits until it runs.
async fn plant_orphan(dir: &Path) -> (std::process::Child, PathBuf) {
    use std::os::unix::process::CommandExt;
    let planted_dir = dir.join("sessions").join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&planted_dir).expect("create planted session dir");
    let profile = planted_dir.join("profile");
    let mut child = Command::new("/usr/lib/chromium/chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn planted chromium");
    let pid = child.id() as i32;
    let deadline = Instant::now() + secs(20);
    while !(profile.exists()
        && browser_pids_in(dir)
            .iter()
            .any(|&(p, pgid)| p == pid && pgid == pid))
    {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("planted chromium exited early: {st:?}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("planted chromium did not start within 20s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let it start its helpers, so that there is a real group to sweep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (child, planted_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigkill_with_five_live_sessions_then_restart() {
    let _alone = exclusive().await;
    let tmp = DataDir::new();
    let dir = tmp.path().to_path_buf();

    let first = Gateway::start_in(&dir, &[]).await;
    let (ids, cdp, leaders) = five_sessions_go_live_one_with_traffic(&first, &dir).await;
    let killed = the_gateway_dies_of_sigkill(first, cdp);
    the_browsers_die_with_it_and_leave_their_directories(&dir, &leaders, killed).await;

    let (mut orphan, orphan_dir) = plant_orphan(&dir).await;
    let orphan_pid = orphan.id() as i32;
    eprintln!(
        "restart: planted orphan pgid {orphan_pid} with {} processes",
        browser_pids_in(&dir)
            .iter()
            .filter(|&&(_, g)| g == orphan_pid)
            .count()
    );

    let second = Gateway::start_in(&dir, &[]).await;
    the_restart_sweeps_the_leftovers_and_the_orphan(&second, &mut orphan, &orphan_dir).await;
    every_record_is_closed_as_failed_by_the_restart(&second, &dir, &ids).await;
    the_new_run_serves_as_usual(&second, &dir).await;
}

/// Returns the sessions' ids, a client of the first one and their browsers' leaders.
async fn five_sessions_go_live_one_with_traffic(
    first: &Gateway,
    dir: &Path,
) -> (Vec<String>, Cdp, Vec<i32>) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&first.create(json!({"timeout": 600_000})).await));
    }
    let first_session = first.session(&ids[0]).await;
    let mut cdp = Cdp::connect(&ws_url(&first_session)).await;
    let page = cdp.attach_first_page().await;
    cdp.eval(&page, "'traffic'.repeat(100)").await;
    let leaders: Vec<i32> = ids.iter().map(|id| browser_leader(dir, id)).collect();
    let processes = first.chromium_processes();
    eprintln!("restart: 5 sessions live, {processes} Chromium processes");
    (ids, cdp, leaders)
}

/// SIGKILLs the gateway and drops it and its client; returns when it was killed.
fn the_gateway_dies_of_sigkill(mut first: Gateway, cdp: Cdp) -> Instant {
    first.signal(libc::SIGKILL);
    let killed = Instant::now();
    let exit = first.wait_exit(secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exit),
        Some(libc::SIGKILL)
    );
    drop(cdp);
    drop(first);
    killed
}

/// The parent-death signal takes the browsers down with the gateway; their directories and
/// live usage records stay.
async fn the_browsers_die_with_it_and_leave_their_directories(
    dir: &Path,
    leaders: &[i32],
    killed: Instant,
) {
    let deadline = Instant::now() + secs(5);
    while leaders.iter().any(|&pid| runs(pid)) {
        assert!(
            Instant::now() < deadline,
            "browsers still run 5s after the gateway was SIGKILLed: {:?}",
            leaders.iter().filter(|&&p| runs(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = killed.elapsed();
    // Helpers may take a moment longer than their leader.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left_procs = chromium_processes_in(dir);
    let left_dirs = session_dirs_in(dir);
    eprintln!(
        "restart: browsers gone {gone_after:?} after the SIGKILL; {left_procs} Chromium \
         processes and {left_dirs} directories left"
    );
    assert_eq!(
        left_dirs, 10,
        "5 profiles and 5 scratch dirs survive a SIGKILL"
    );
    let before = usage_records(dir);
    assert_eq!(before.len(), 5);
    assert!(before.iter().all(|r| r.status == "live"), "{before:?}");
}

async fn the_restart_sweeps_the_leftovers_and_the_orphan(
    second: &Gateway,
    orphan: &mut std::process::Child,
    orphan_dir: &Path,
) {
    assert!(
        second.wait_for_log("start-up sweep done", secs(5)).await,
        "no sweep log line\n{}",
        second.log_text()
    );
    let log = second.log_text();
    let sweep = log
        .lines()
        .find(|l| l.contains("start-up sweep done"))
        .unwrap_or_default();
    eprintln!("restart: {sweep}");
    second.assert_clean(secs(10)).await;
    assert!(!orphan_dir.exists(), "the orphan's directory survived");
    let deadline = Instant::now() + secs(10);
    let orphan_exit = loop {
        if let Some(st) = orphan.try_wait().expect("try_wait orphan") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = orphan.kill();
            let _ = orphan.wait();
            panic!("the orphan still runs 10s after the sweep");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("restart: orphan ended with {orphan_exit:?}");
}

async fn every_record_is_closed_as_failed_by_the_restart(
    second: &Gateway,
    dir: &Path,
    ids: &[String],
) {
    let records = usage_records(dir);
    assert_eq!(records.len(), 5, "{records:?}");
    for id in ids {
        let r = usage_record(dir, id);
        eprintln!(
            "restart: {id}: {} {:?}, {} min, ended {:?}, checkpoint {}",
            r.status, r.reason, r.billed_minutes, r.ended_at_ms, r.checkpoint_at_ms
        );
        assert_eq!(r.status, "failed", "{r:?}");
        assert_eq!(r.reason.as_deref(), Some("gateway_restart"), "{r:?}");
        assert_eq!(r.ended_at_ms, Some(r.checkpoint_at_ms), "{r:?}");
        assert!(r.billed_minutes >= 1, "{r:?}");
    }
    let scrape = second.scrape().await;
    assert_eq!(
        metric(
            &scrape,
            "ingot_sessions_ended_total",
            &[("status", "failed"), ("reason", "gateway_restart")]
        ),
        5.0
    );
    assert_eq!(metric(&scrape, "ingot_sessions_live", &[]), 0.0);
}

/// The new run serves as usual.
async fn the_new_run_serves_as_usual(second: &Gateway, dir: &Path) {
    let s = second.create(json!({})).await;
    second.release(&id_of(&s)).await;
    second.assert_clean(secs(10)).await;
    assert_eq!(usage_records(dir).len(), 6);
    assert_no_panic(second);
}

// ---------------------------------------------------------------------------------------
// Release, timeout and crash of the same session, in every order
// ---------------------------------------------------------------------------------------

/// The browser process (group leader) of a live session, or `None` when the session has
/// already ended (its timeout can pass first on a loaded machine); on failure, says what
/// there is.
async fn leader_of(gw: &Gateway, id: &str) -> Option<i32> {
    let marker = format!(
        "--user-data-dir={}/sessions/{id}/profile",
        gw.data_dir.display()
    );
    let deadline = Instant::now() + secs(2);
    loop {
        for (pid, pgid) in browser_pids_in(&gw.data_dir) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if pid == pgid && cmdline.contains(&marker) && !cmdline.contains("--type=") {
                return Some(pid);
            }
        }
        let session = gw.session(id).await;
        if session["status"] != "live" {
            return None;
        }
        if Instant::now() > deadline {
            panic!(
                "no browser process for live session {id}: {session}\nprocesses {:?}\n{}",
                browser_pids_in(&gw.data_dir),
                gw.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Order {
    /// Release, then the crash 15 ms later, before ingot can have noticed the release.
    ReleaseFirst,
    /// The crash, noticed before the release arrives 65 ms later.
    CrashFirst,
    /// The crash, then the release 10 ms later, before ingot has noticed the crash.
    CrashJustBefore,
    /// Both at the same moment.
    Together,
    /// Both at the moment the session times out.
    AtTimeout,
}

impl Order {
    const ALL: [Order; 5] = [
        Order::ReleaseFirst,
        Order::CrashFirst,
        Order::CrashJustBefore,
        Order::Together,
        Order::AtTimeout,
    ];

    /// When the release and the crash are fired, in ms after the session's creation; the
    /// session times out at 1000.
    fn offsets_ms(self) -> (u64, u64) {
        match self {
            Order::ReleaseFirst => (950, 965),
            Order::CrashFirst => (965, 900),
            Order::CrashJustBefore => (965, 955),
            Order::Together => (975, 975),
            Order::AtTimeout => (1000, 1000),
        }
    }
}

/// Creates a session with a 1 s timeout and fires its release and its crash as `order`
/// says. Returns its id and what was fired when, or `late …` when the session was answered
/// too late to fire anything before its timeout.
async fn race_once(gw: &Gateway, order: Order) -> (String, String) {
    let (status, s) = gw.post("/v1/sessions", json!({"timeout": 1000})).await;
    let answered = Instant::now();
    assert_eq!(status, 200, "create: {s}\n{}", gw.log_text());
    let id = id_of(&s);
    let age = Duration::from_millis(s["duration"].as_u64().expect("duration"));
    if age > Duration::from_millis(850) {
        return (id, format!("late: answered {age:?} after creation"));
    }
    let created = answered - age;
    let Some(leader) = leader_of(gw, &id).await else {
        return (
            id,
            format!("late: ended before its browser could be found ({age:?} old when answered)"),
        );
    };
    let (release_ms, crash_ms) = order.offsets_ms();
    let release = async {
        tokio::time::sleep_until((created + Duration::from_millis(release_ms)).into()).await;
        let fired = created.elapsed();
        let answer = gw
            .post_raw(
                &format!("/v1/sessions/{id}/release"),
                "application/json",
                vec![],
            )
            .await;
        (fired, answer)
    };
    let crash = async {
        tokio::time::sleep_until((created + Duration::from_millis(crash_ms)).into()).await;
        kill_group(leader, libc::SIGKILL);
        created.elapsed()
    };
    let ((release_fired, (release_status, release_body)), crash_fired) =
        tokio::join!(release, crash);
    assert_eq!(
        release_status, 200,
        "release is idempotent whatever came first: {release_body}"
    );
    let fired = format!(
        "answered {age:?} after creation; release at {release_fired:?}, crash at {crash_fired:?}"
    );
    (id, fired)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_timeout_and_crash_race_to_one_outcome() {
    let _alone = exclusive().await;
    let data = DataDir::new();
    let gw = Gateway::start_in(data.path(), &[]).await;
    let ids = every_order_races_to_one_allowed_outcome(&gw).await;
    one_record_and_one_billed_minute_per_session(&gw, &ids).await;
}

/// Races every order four times; returns the ids of every session created.
async fn every_order_races_to_one_allowed_outcome(gw: &Gateway) -> Vec<String> {
    const ROUNDS: usize = 4;
    let mut tally: HashMap<(Order, String), usize> = HashMap::new();
    let mut ids = Vec::new();
    let mut late = 0;
    for round in 0..ROUNDS {
        for order in Order::ALL {
            // A launch slower than the session's timeout (a loaded machine) leaves no time to
            // fire anything: such a session only times out. It is still checked, and counted in
            // the totals, and the order is tried again with a new session.
            for attempt in 1.. {
                let (id, fired, outcome) =
                    one_race_ends_in_one_allowed_outcome(gw, round, order).await;
                ids.push(id);
                if fired.starts_with("late") {
                    late += 1;
                    assert!(
                        attempt < 5,
                        "{order:?}: 5 launches in a row slower than the 1 s timeout"
                    );
                    continue;
                }
                *tally.entry((order, outcome)).or_default() += 1;
                break;
            }
        }
    }
    let mut summary: Vec<_> = tally.iter().collect();
    summary.sort_by_key(|((o, r), _)| (format!("{o:?}"), r.clone()));
    eprintln!("race: outcomes {summary:?}; {late} sessions launched too late to race");
    ids
}

/// One race of `order`: the session ends in one allowed outcome, which its record and a
/// later look agree with. Returns its id, what was fired when, and `status/reason`.
async fn one_race_ends_in_one_allowed_outcome(
    gw: &Gateway,
    round: usize,
    order: Order,
) -> (String, String, String) {
    let allowed = [
        ("released", "user_requested"),
        ("released", "timeout"),
        ("failed", "browser_crashed"),
    ];
    let (id, fired) = race_once(gw, order).await;
    let (ended, _) = gw.wait_ended(&id, secs(5)).await;
    let record = final_record(&gw.data_dir, &id, secs(5)).await;
    let status = ended["status"].as_str().unwrap_or_default().to_owned();
    let reason = ended["releaseReason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "race {round} {order:?}: {fired} → {status}/{reason}, duration {} ms, \
         record {}/{:?} {} min",
        ended["duration"], record.status, record.reason, record.billed_minutes
    );
    assert!(
        allowed.contains(&(status.as_str(), reason.as_str())),
        "{order:?}: outcome {status}/{reason} not allowed: {ended}"
    );
    assert_eq!(
        (record.status.as_str(), record.reason.as_deref()),
        (status.as_str(), Some(reason.as_str())),
        "{order:?}: the record disagrees with the session: {record:?} vs {ended}"
    );
    assert_eq!(record.billed_minutes, 1, "{order:?}: {record:?}");
    assert_eq!(ended["creditsUsed"], 1, "{ended}");
    // Asked again later, the session tells the same story.
    let again = gw.session(&id).await;
    assert_eq!(
        (&again["status"], &again["releaseReason"]),
        (&ended["status"], &ended["releaseReason"]),
        "{again}"
    );
    (id, fired, format!("{status}/{reason}"))
}

/// Nothing left, one record per session, and as many ended sessions and billed minutes as
/// sessions, in the metrics and the usage report.
async fn one_record_and_one_billed_minute_per_session(gw: &Gateway, ids: &[String]) {
    gw.assert_clean(secs(10)).await;
    let n = ids.len();
    let records = usage_records(&gw.data_dir);
    assert_eq!(records.len(), n, "one record per session: {records:?}");
    for id in ids {
        let count = records.iter().filter(|r| &r.session_id == id).count();
        assert_eq!(count, 1, "{id} has {count} records");
    }
    let scrape = gw.scrape().await;
    let ended_total = metric_sum(&scrape, "ingot_sessions_ended_total");
    let billed_total = metric(&scrape, "ingot_billed_minutes_total", &[]);
    eprintln!("race: {n} sessions, {ended_total} counted ended, {billed_total} minutes billed");
    assert_eq!(ended_total, n as f64, "sessions counted as ended");
    assert_eq!(billed_total, n as f64, "billed minutes");
    assert_eq!(metric(&scrape, "ingot_sessions_live", &[]), 0.0);
    let (_, report) = gw.get("/v1/usage").await;
    assert_eq!(report["total"]["billedMinutes"], n, "{report}");
    assert_eq!(report["total"]["sessions"], n, "{report}");
    assert_no_panic(gw);
}

/// Every process of a process group, zombies included: (pid, parent pid, state).
fn group_members(pgid: i32) -> Vec<(i32, i32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if fields.get(2).and_then(|p| p.parse().ok()) == Some(pgid) {
            found.push((pid, ppid, state));
        }
    }
    found
}

/// When a browser's leader dies, its children are re-parented to the gateway (a child
/// subreaper), not to PID 1, and the gateway reaps every process of the browser: no zombie
/// is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_of_a_dead_browser_are_adopted_and_reaped_by_the_gateway() {
    let _exclusive = exclusive().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let leader = browser_leader(&gw.data_dir, &id);
    let helpers = the_leaders_children_are_adopted_by_the_gateway(&gw, leader).await;
    assert!(!helpers.is_empty(), "Chromium runs helper processes");
    let (ended, _) = gw.wait_ended(&id, secs(10)).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let deadline = Instant::now() + secs(10);
    while !group_members(leader).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left in the browser's group: {:?}",
            group_members(leader)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_no_panic(&gw);
}

/// Kills the leader while the gateway is stopped, so that the adoption is seen before the
/// gateway reaps anything (stopped helpers cannot exit on their own either). Each helper's
/// parent is then the gateway or another helper (Chromium's zygote parents the
/// renderers), never PID 1. Returns the helpers.
async fn the_leaders_children_are_adopted_by_the_gateway(
    gw: &Gateway,
    leader: i32,
) -> Vec<(i32, i32, char)> {
    let gateway = gw.pid() as i32;
    let children: Vec<i32> = group_members(leader)
        .into_iter()
        .filter(|&(_, ppid, _)| ppid == leader)
        .map(|(pid, ..)| pid)
        .collect();
    assert!(!children.is_empty(), "the browser has child processes");
    signal(gateway, libc::SIGSTOP);
    kill_group(leader, libc::SIGSTOP);
    signal(leader, libc::SIGKILL);
    let deadline = Instant::now() + secs(5);
    let helpers = loop {
        let helpers: Vec<_> = group_members(leader)
            .into_iter()
            .filter(|&(pid, ..)| pid != leader)
            .collect();
        if helpers.iter().all(|&(_, ppid, _)| ppid != leader) || Instant::now() >= deadline {
            break helpers;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    signal(gateway, libc::SIGCONT);
    let members: Vec<i32> = helpers.iter().map(|&(pid, ..)| pid).collect();
    for &(pid, ppid, _) in &helpers {
        if children.contains(&pid) {
            assert_eq!(
                ppid, gateway,
                "child {pid} of the dead leader was adopted by {ppid}"
            );
        } else {
            assert!(
                members.contains(&ppid),
                "helper {pid} has parent {ppid}, outside the browser"
            );
        }
    }
    helpers
}

/// A SIGKILLed gateway leaves its scratch root behind; the next start removes it, and a
/// gateway whose browsers are all gone leaves none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scratch_root_of_a_killed_gateway_is_removed_by_the_next_start() {
    let _shared = shared().await;
    let data = DataDir::new();
    let scratch = ingot::browser::scratch_root(data.path());
    let mut gw = Gateway::start_in(data.path(), &[]).await;
    let session = gw.create(json!({})).await;
    assert!(scratch.exists(), "a live browser has its scratch directory");
    gw.signal(libc::SIGKILL);
    gw.wait_exit(secs(10));
    assert!(scratch.exists(), "the killed gateway left its scratch root");
    let mut gw = Gateway::start_in(data.path(), &[]).await;
    assert!(
        !scratch.exists(),
        "the next start removed the scratch root (its probe browser is gone too)"
    );
    let again = gw.create(json!({})).await;
    assert!(scratch.exists());
    gw.release(&id_of(&again)).await;
    assert!(
        !scratch.exists(),
        "the last browser out removed the scratch root"
    );
    let _ = session;
    gw.stop();
}
