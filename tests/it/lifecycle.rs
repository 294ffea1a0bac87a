//! Session lifecycle end to end: SIGTERM, restart after SIGKILL (start-up sweep), and a leak
//! check over many create/release cycles. Timeout, crash, `Browser.close` and release are
//! scenarios written once in `crate::scenario` (run here on real Chromium as
//! `scenario::chromium_*`).

use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The close code and reason of a connection that must have ended with a close frame.
fn close_of(ended: Ended, what: &str) -> (u16, String) {
    match ended {
        Ended::Closed(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("{what}: expected a close frame, got {other:?}"),
    }
}

fn ws_url(session: &Value) -> String {
    session["websocketUrl"]
        .as_str()
        .expect("websocketUrl")
        .to_owned()
}

fn id_of(session: &Value) -> String {
    session["id"].as_str().expect("id").to_owned()
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
            let name = e.file_name().to_string_lossy().into_owned();
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{name}"))
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("flags:").map(|f| f.trim().to_owned()))
                })
                .unwrap_or_default();
            format!("{name}->{target} (flags {flags})")
        })
        .collect();
    targets.sort();
    targets
}

/// Session directories directly under `<data_dir>/sessions`.
fn session_dirs_in(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("sessions"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The numeric value of `key=` in a log line.
fn log_field(line: &str, key: &str) -> Option<u64> {
    let needle = format!("{key}=");
    let start = line.find(&needle)? + needle.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_everything_and_exits_zero() {
    let _shared = shared().await;
    let mut gw = Gateway::start(&[]).await;
    let s1 = gw.create(json!({})).await;
    let s2 = gw.create(json!({})).await;
    let mut c1 = Cdp::connect(&ws_url(&s1)).await;
    let mut c2 = Cdp::connect(&ws_url(&s2)).await;
    c1.call("Browser.getVersion", json!({}), None).await;
    c2.call("Browser.getVersion", json!({}), None).await;
    assert!(
        gw.chromium_processes() > 0,
        "no Chromium running before SIGTERM"
    );

    let signalled = Instant::now();
    gw.signal(15);
    let (code1, reason1) = close_of(c1.wait_end(secs(20)).await, "client 1");
    let (code2, reason2) = close_of(c2.wait_end(secs(20)).await, "client 2");
    assert_eq!(
        code1,
        1001,
        "client 1 close code (reason {reason1:?})\n{}",
        gw.log_text()
    );
    assert_eq!(
        code2,
        1001,
        "client 2 close code (reason {reason2:?})\n{}",
        gw.log_text()
    );

    let status = gw.wait_exit(secs(30));
    eprintln!(
        "sigterm: gateway exited with {status:?} {:?} after the signal",
        signalled.elapsed()
    );
    assert!(
        status.success(),
        "gateway exit status {status:?}\n{}",
        gw.log_text()
    );
    assert_eq!(status.code(), Some(0));

    // Everything is reaped before the gateway exits, so check at once.
    let (procs, dirs) = (
        chromium_processes_in(&gw.data_dir),
        session_dirs_in(&gw.data_dir),
    );
    assert_eq!(
        (procs, dirs),
        (0, 0),
        "Chromium processes and session dirs after exit\n{}",
        gw.log_text()
    );
    gw.assert_clean(secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_sweeps_leftovers() {
    let _shared = shared().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();

    a_first_run_is_sigkilled_with_two_sessions(&dir).await;
    let (mut child, planted_dir) = an_orphan_browser_of_a_previous_run_runs(&dir).await;
    let second = the_second_run_sweeps_the_leftovers(&dir, &planted_dir).await;
    the_planted_browser_exits(&mut child).await;
    the_second_run_works_on_the_swept_directory(&second).await;
    drop(second);
    drop(tmp);
}

async fn a_first_run_is_sigkilled_with_two_sessions(dir: &Path) {
    let mut first = Gateway::start_in(dir, &[]).await;
    first.create(json!({})).await;
    first.create(json!({})).await;
    let listing: Vec<_> = std::fs::read_dir(dir.join("sessions"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(
        listing.len(),
        2,
        "session dirs of the first run: {listing:?}\n{}",
        first.log_text()
    );
    first.signal(9);
    let status = first.wait_exit(secs(10));
    assert!(
        !status.success(),
        "SIGKILLed gateway exited with {status:?}"
    );
    drop(first);
}

/// An orphan browser of a "previous run", in its own process group like ingot's. Returns it
/// and its session directory.
async fn an_orphan_browser_of_a_previous_run_runs(dir: &Path) -> (std::process::Child, PathBuf) {
    let planted_id = uuid::Uuid::new_v4();
    let planted_dir = dir.join("sessions").join(planted_id.to_string());
    std::fs::create_dir_all(&planted_dir).expect("create planted session dir");
    let profile = planted_dir.join("profile");
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("/usr/lib/chromium/chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn planted chromium")
    };
    let planted_pid = child.id() as i32;
    let deadline = Instant::now() + secs(20);
    while !(profile.exists()
        && browser_pids_in(dir)
            .iter()
            .any(|&(pid, pgid)| pid == planted_pid && pgid == planted_pid))
    {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("planted chromium exited early: {st:?}");
        }
        assert!(
            Instant::now() < deadline,
            "planted chromium did not start within 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give it a moment to spawn its helpers, so there is a real group to sweep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = browser_pids_in(dir);
    eprintln!(
        "restart: before the second run: {} browser processes, {} session dirs",
        before.len(),
        session_dirs_in(dir)
    );
    assert!(
        before.iter().any(|&(_, pgid)| pgid == planted_pid),
        "planted browser not running"
    );
    (child, planted_dir)
}

/// The second run's start-up sweep kills the orphan's group and removes the directories.
/// Returns the second run.
async fn the_second_run_sweeps_the_leftovers(dir: &Path, planted_dir: &Path) -> Gateway {
    let second = Gateway::start_in(dir, &[]).await;
    assert!(
        second.wait_for_log("start-up sweep done", secs(5)).await,
        "no sweep log line\n{}",
        second.log_text()
    );
    let log = second.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("start-up sweep done"))
        .expect("sweep line");
    eprintln!("restart: {line}");
    let groups = log_field(line, "process_groups")
        .unwrap_or_else(|| panic!("no process_groups= in {line:?}"));
    let dirs =
        log_field(line, "directories").unwrap_or_else(|| panic!("no directories= in {line:?}"));
    assert!(groups >= 1, "sweep killed {groups} process groups: {line}");
    assert!(dirs >= 1, "sweep removed {dirs} directories: {line}");
    second.assert_clean(secs(5)).await;
    assert!(
        !planted_dir.exists(),
        "planted session dir survived the sweep"
    );
    second
}

/// Reap the planted leader so it does not linger as our zombie.
async fn the_planted_browser_exits(child: &mut std::process::Child) {
    let deadline = Instant::now() + secs(10);
    let exit = loop {
        if let Some(st) = child.try_wait().expect("try_wait planted") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("planted chromium still not exited 10s after the sweep");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("restart: planted chromium ended with {exit:?}");
}

/// The second run works normally on the swept directory.
async fn the_second_run_works_on_the_swept_directory(second: &Gateway) {
    let s = second.create(json!({})).await;
    second.release(&id_of(&s)).await;
    second.assert_clean(secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_check_twenty_cycles() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let procs_before = gw.chromium_processes();
    let dirs_before = gw.session_dirs();
    let fds_before = fd_count(gw.pid());
    let fd_list_before = fd_targets(gw.pid());
    assert_eq!(
        (procs_before, dirs_before),
        (0, 0),
        "fresh gateway is not clean"
    );

    let started = Instant::now();
    for cycle in 0..20 {
        let s = gw.create(json!({})).await;
        let mut cdp = Cdp::connect(&ws_url(&s)).await;
        let page = cdp.attach_first_page().await;
        let two = cdp.eval(&page, "1+1").await;
        assert_eq!(two, json!(2), "cycle {cycle}: 1+1 gave {two}");
        cdp.close().await;
        let released = gw.release(&id_of(&s)).await;
        assert_eq!(
            released["success"], true,
            "cycle {cycle}: release answer {released}"
        );
    }
    eprintln!("leak: 20 cycles took {:?}", started.elapsed());

    gw.assert_clean(secs(10)).await;
    assert_eq!(gw.chromium_processes(), procs_before);
    assert_eq!(gw.session_dirs(), dirs_before);

    // Descriptors of ended sessions may be closed a moment after release returns.
    let deadline = Instant::now() + secs(5);
    let mut fds_after = fd_count(gw.pid());
    while fds_after > fds_before + 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fds_after = fd_count(gw.pid());
    }
    eprintln!("leak: gateway fds before {fds_before}, after {fds_after}");
    assert!(
        fds_after <= fds_before + 5,
        "gateway holds {fds_after} fds after 20 cycles, {fds_before} before\nbefore: {fd_list_before:?}\nafter: {:?}",
        fd_targets(gw.pid())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_hold_up_release_or_shutdown() {
    let _shared = shared().await;
    let mut gw = Gateway::start(&[]).await;
    let stuck_session = gw.create(json!({})).await;
    let id = stuck_session["id"].as_str().unwrap().to_owned();
    let mut stuck = Cdp::connect(stuck_session["websocketUrl"].as_str().unwrap()).await;
    let page = stuck.attach_first_page().await;
    // 300 replies of 256 KiB that this client will never read: more than its queue and the
    // socket buffers hold, so the gateway must give up on it (after 2 s) to serve others.
    for i in 0..300 {
        let cmd = json!({"id": 1000 + i, "method": "Runtime.evaluate", "sessionId": page,
                         "params": {"expression": "'x'.repeat(1 << 18)", "returnByValue": true}});
        stuck.send_raw(cmd.to_string()).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Another client of the same session is served again once the stuck one is dropped.
    let mut sibling = Cdp::connect(stuck_session["websocketUrl"].as_str().unwrap()).await;
    let sibling_page = sibling.attach_first_page().await;
    let started = Instant::now();
    assert_eq!(sibling.eval(&sibling_page, "2 + 2").await, json!(4));
    eprintln!(
        "a sibling of a non-reading client got its reply after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "sibling waited {:?}",
        started.elapsed()
    );
    match stuck.wait_end(Duration::from_secs(30)).await {
        Ended::Closed(Some(frame)) => assert_eq!(u16::from(frame.code), 1008, "{frame:?}"),
        other => panic!("the non-reading client should be closed with 1008, got {other:?}"),
    }

    // Another session is unaffected.
    let other = gw.create(json!({})).await;
    let mut cdp = Cdp::connect(other["websocketUrl"].as_str().unwrap()).await;
    let other_page = cdp.attach_first_page().await;
    assert_eq!(cdp.eval(&other_page, "1 + 1").await, json!(2));

    let started = Instant::now();
    gw.release(&id).await;
    let took = started.elapsed();
    eprintln!("release with a non-reading client took {took:?}");
    assert!(took < Duration::from_secs(5), "release took {took:?}");
    assert_eq!(gw.session(&id).await["releaseReason"], "user_requested");

    let started = Instant::now();
    let status = gw.stop();
    let took = started.elapsed();
    eprintln!("shutdown with a non-reading client took {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_eq!((gw.chromium_processes(), gw.session_dirs()), (0, 0));
    drop(stuck);
}

/// A SIGKILLed run's sessions are still there after the restart: retrieved and listed as
/// failed with reason `gateway_restart`, billed up to their last checkpoint; a session the
/// run released keeps how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_killed_run_are_listed_after_the_restart() {
    let _shared = shared().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut first = Gateway::start_in(tmp.path(), &[]).await;
    let released = first
        .create(json!({"dimensions": {"width": 1024, "height": 768}}))
        .await;
    first.release(&id_of(&released)).await;
    let killed = first.create(json!({})).await;
    first.signal(9);
    first.wait_exit(secs(10));

    let second = Gateway::start_in(tmp.path(), &[]).await;
    let found = second.session(&id_of(&killed)).await;
    assert_eq!(found["status"], "failed", "{found}");
    assert_eq!(found["releaseReason"], "browser_crashed", "{found}");
    assert_eq!(found["creditsUsed"], 1, "{found}");
    let kept = second.session(&id_of(&released)).await;
    assert_eq!(kept["status"], "released", "{kept}");
    assert_eq!(kept["releaseReason"], "user_requested");
    assert_eq!(kept["dimensions"], json!({"width": 1024, "height": 768}));
    let (_, list) = second.get("/v1/sessions").await;
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [id_of(&killed), id_of(&released)], "{list}");
    let (_, failed) = second.get("/v1/sessions?status=failed").await;
    assert_eq!(failed["totalCount"], 1, "{failed}");
    drop(second);
}
