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
