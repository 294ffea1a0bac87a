//! The engines on real Chromium: the headless shell by default, full Chromium with
//! `--engine chromium`, what `/healthz` and the start-up log say, and start-up refusing an
//! engine that is not installed with how to install it.

use std::time::Duration;

use serde_json::json;

use crate::common::{BIN, Gateway, browser_leader, shared};

/// The executable a session's browser runs, as `/proc/<pid>/exe` names it.
fn executable_of(gw: &Gateway, id: &str) -> String {
    let pid = browser_leader(&gw.data_dir, id);
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn command_line_of(gw: &Gateway, id: &str) -> String {
    let pid = browser_leader(&gw.data_dir, id);
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_is_the_default_engine_and_healthz_names_every_engine() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let (_, health) = gw.get("/healthz").await;
    let engines = &health["engines"];
    assert_eq!(engines["default"], "shell", "{health}");
    assert!(
        engines["shell"]
            .as_str()
            .is_some_and(|p| p.ends_with("chromium-headless-shell")),
        "{health}"
    );
    assert!(engines["chromium"].as_str().is_some(), "{health}");
    assert_eq!(engines["headful"], true, "Xvfb is installed here: {health}");
    assert!(
        gw.wait_for_log("engine shell (shell: ", Duration::from_secs(5))
            .await,
        "the start-up log names the engines"
    );
    // The derived session limit uses the shell's budget per session.
    assert!(
        gw.wait_for_log("engine=shell per_session_mib=144", Duration::from_secs(2))
            .await,
        "{}",
        gw.log_text()
    );
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    assert!(
        executable_of(&gw, &id).ends_with("chromium-headless-shell"),
        "{}",
        executable_of(&gw, &id)
    );
    assert!(!command_line_of(&gw, &id).contains("--headless"));
    assert_eq!(session["headless"], true);
    gw.release(&id).await;
    gw.assert_clean(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_chromium_runs_full_chromium_headless() {
    let _shared = shared().await;
    let gw = Gateway::start(&["--engine", "chromium"]).await;
    let (_, health) = gw.get("/healthz").await;
    assert_eq!(health["engines"]["default"], "chromium", "{health}");
    assert!(
        gw.wait_for_log(
            "engine=chromium per_session_mib=256",
            Duration::from_secs(2)
        )
        .await,
        "the derived session limit uses full Chromium's budget:\n{}",
        gw.log_text()
    );
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    assert!(
        executable_of(&gw, &id).ends_with("/chromium"),
        "{}",
        executable_of(&gw, &id)
    );
    assert!(command_line_of(&gw, &id).contains("--headless=new"));
    gw.release(&id).await;
    gw.assert_clean(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_engine_flag_stops_start_up_naming_it() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} must not start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&["--chromium-shell", "/nonexistent/shell"], &[]);
    assert!(
        stderr.contains("--chromium-shell /nonexistent/shell is not an executable file"),
        "{stderr}"
    );
    let stderr = run(&[], &[("INGOT_ENGINE", "firefox")]);
    assert!(stderr.contains("unknown engine \"firefox\""), "{stderr}");
}

/// The pid of the session's `Xvfb`: the process whose command line names the session's
/// Xauthority file.
fn xvfb_of(gw: &Gateway, id: &str) -> Option<i32> {
    let marker = format!("{}/sessions/{id}/display/", gw.data_dir.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (cmdline.starts_with("/usr/bin/Xvfb") && cmdline.contains(&marker)).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headful_session_runs_full_chromium_on_its_own_display_and_leaves_nothing() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw
        .create(json!({"headless": false, "dimensions": {"width": 1280, "height": 800}}))
        .await;
    assert_eq!(session["headless"], false, "{session}");
    let id = session["id"].as_str().expect("id").to_owned();
    assert!(executable_of(&gw, &id).ends_with("/chromium"));
    let line = command_line_of(&gw, &id);
    assert!(!line.contains("--headless"), "{line}");
    let xvfb = xvfb_of(&gw, &id).expect("the session has an Xvfb");
    let xvfb_line =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{xvfb}/cmdline")).unwrap())
            .replace('\0', " ");
    assert!(xvfb_line.contains("-screen 0 1280x800x24"), "{xvfb_line}");
    assert!(xvfb_line.contains("-nolisten tcp"), "{xvfb_line}");
    // Its socket is in the session's directory, and nowhere in the machine's /tmp/.X11-unix.
    let socket = gw
        .data_dir
        .join(format!("sessions/{id}/display/X11-unix/X0"));
    assert!(socket.exists(), "{}", socket.display());

    // The page has the session's size, on a screen of the same size.
    let mut cdp = crate::common::Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let page = cdp.attach_first_page().await;
    let seen = cdp
        .eval(
            &page,
            "[innerWidth, innerHeight, screen.width, screen.height, navigator.webdriver, navigator.userAgent.includes('HeadlessChrome')].join(' ')",
        )
        .await;
    assert_eq!(seen, "1280 800 1280 800 false false");
    cdp.close().await;

    gw.release(&id).await;
    gw.assert_clean(Duration::from_secs(10)).await;
    assert_eq!(xvfb_of(&gw, &id), None, "no Xvfb outlives its session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_headful_sessions_xvfb_fails_the_session_and_ends_its_browser() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({"headless": false})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let mut cdp = crate::common::Cdp::connect(session["websocketUrl"].as_str().unwrap()).await;
    let xvfb = xvfb_of(&gw, &id).expect("the session has an Xvfb");
    crate::common::signal(xvfb, 9);
    let (ended, _) = gw.wait_ended(&id, Duration::from_secs(10)).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(ended["releaseReason"], "browser_crashed", "{ended}");
    assert!(matches!(
        cdp.wait_end(Duration::from_secs(10)).await,
        crate::common::Ended::Closed(Some(ref f)) if u16::from(f.code) == 1011
    ));
    gw.assert_clean(Duration::from_secs(10)).await;
    assert!(
        gw.wait_for_log("virtual display (Xvfb) ended", Duration::from_secs(2))
            .await,
        "the log says why"
    );
}
