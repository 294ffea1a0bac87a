//! The REST API against a real gateway and real Chromium: ids, routes and methods, a
//! client's own session id, wire details, settings, and start-up failures. Steel's Session
//! JSON, listing and paging, create-body validation and release are scenarios written once
//! in `crate::scenario`.

use crate::common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_routes_methods_and_origins_get_clear_errors_and_create_nothing() {
    // Bad create bodies: `scenario::*bad_create_bodies_get_400_naming_the_field*`.
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    unknown_and_malformed_ids_routes_methods_and_origins_are_refused(&gw).await;
    no_bad_request_created_a_session(&gw).await;
}

/// Unknown and malformed ids, routes and methods; a request from a web page.
async fn unknown_and_malformed_ids_routes_methods_and_origins_are_refused(gw: &Gateway) {
    let unknown = uuid::Uuid::new_v4();
    assert_eq!(gw.get(&format!("/v1/sessions/{unknown}")).await.0, 404);
    assert_eq!(
        gw.post_raw(
            &format!("/v1/sessions/{unknown}/release"),
            "application/json",
            vec![]
        )
        .await
        .0,
        404
    );
    let (status, err) = gw.get("/v1/sessions/not-a-uuid").await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = gw.get("/v1/nothing-here").await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let r = gw.http.delete(gw.url("/v1/sessions")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "method_not_allowed");
    // A request from a web page is refused.
    let r = gw
        .http
        .post(gw.url("/v1/sessions/release"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

async fn no_bad_request_created_a_session(gw: &Gateway) {
    let (_, list) = gw.get("/v1/sessions").await;
    assert_eq!(
        list["sessions"],
        json!([]),
        "no bad request may create a session"
    );
    assert_eq!((gw.chromium_processes(), gw.session_dirs()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_id_and_duplicates() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let id = uuid::Uuid::new_v4().to_string();
    let s = gw.create(json!({"sessionId": id, "timeout": 60_000})).await;
    assert_eq!(s["id"], id);
    assert_eq!(s["timeout"], 60_000);
    let (status, err) = gw.post("/v1/sessions", json!({"sessionId": id})).await;
    assert_eq!(status, 409, "{err}");
    gw.release(&id).await;
    // Ended sessions stay retrievable, so their id stays taken.
    assert_eq!(
        gw.post("/v1/sessions", json!({"sessionId": id})).await.0,
        409
    );
    assert_eq!(gw.chromium_processes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_that_cannot_start_gives_503_and_leaves_nothing() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("broken-chromium");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake chromium: cannot open display' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let gw = Gateway::start(&["--engine", "chromium", "--chromium", fake.to_str().unwrap()]).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (status, err) = gw.post("/v1/sessions", json!({"sessionId": id})).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "browser_start_failed");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("exit status 3") && message.contains("cannot open display"),
        "{message}"
    );
    assert_eq!(gw.session_dirs(), 0, "no directory may be left behind");
    assert_eq!(
        gw.get(&format!("/v1/sessions/{id}")).await.0,
        404,
        "a failed start leaves no session"
    );
    // The id is free again, so an SDK retry with the same sessionId is not a conflict.
    assert_eq!(
        gw.post("/v1/sessions", json!({"sessionId": id})).await.0,
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_chromium_fails_start_up_with_install_hint() {
    let _shared = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--chromium",
            "/nonexistent/chromium",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/chromium"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_cannot_share_a_data_dir() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let out = std::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&gw.data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ingot is using data directory"));
    assert_eq!(
        gw.get("/healthz").await.0,
        200,
        "the first gateway is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_details_dates_floats_paths_and_hosts() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    // 60 * 1000.0 in Python or JavaScript is still a whole number of milliseconds.
    let s = gw.create(json!({"timeout": 60000.0})).await;
    assert_eq!(s["timeout"], 60_000);
    let created = s["createdAt"].as_str().unwrap();
    let fraction = created.rsplit_once('.').map(|(_, f)| f).unwrap_or("");
    assert!(
        fraction.len() == 4 && fraction.ends_with('Z'),
        "createdAt {created} needs exactly 3 fractional digits"
    );
    let (status, err) = gw.post("/v1/sessions", json!({"timeout": -1})).await;
    assert_eq!(status, 400);
    assert!(
        err["message"].as_str().unwrap().contains("between"),
        "{err}"
    );

    // A path that does not decode still gets a JSON error.
    let r = gw
        .http
        .get(gw.url("/v1/sessions/%ff"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.expect("JSON error body");
    assert_eq!(err["error"]["code"], "invalid_request");

    // DNS rebinding: a foreign host name is refused; IP literals and localhost are fine.
    let r = gw
        .http
        .get(gw.url("/v1/sessions"))
        .header("host", "attacker.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for host in ["localhost", "127.0.0.1", "[::1]:3000"] {
        let r = gw
            .http
            .get(gw.url("/v1/sessions"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "Host {host}");
    }
    gw.release(s["id"].as_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_and_ingot_variables() {
    let _shared = shared().await;
    // Variables alone; a flag wins over its variable (INGOT_MAX_SESSIONS=1 vs --max-sessions 2).
    let gw = Gateway::start_with_env(
        &["--max-sessions", "2", "--max-timeout-ms", "10000"],
        &[
            ("INGOT_MAX_SESSIONS", "1"),
            ("INGOT_DEFAULT_TIMEOUT_MS", "5000"),
            ("INGOT_PUBLIC_URL", "https://browsers.example.com/"),
            ("INGOT_QUEUE_TIMEOUT_MS", "0"),
        ],
    )
    .await;
    assert!(
        gw.wait_for_log(
            "(shell: /usr/lib/chromium/chromium-headless-shell; chromium: /usr/lib/chromium/chromium;",
            secs(5)
        )
        .await,
        "the shell and Chromium behind Debian's wrappers are preferred:\n{}",
        gw.log_text()
    );
    let (status, err) = gw.post("/v1/sessions", json!({"timeout": 20_000})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap().contains("10000"), "{err}");

    let a = gw.create(json!({})).await;
    let id = a["id"].as_str().unwrap();
    assert_eq!(a["timeout"], 5000, "INGOT_DEFAULT_TIMEOUT_MS");
    assert_eq!(
        a["websocketUrl"],
        format!("wss://browsers.example.com/?sessionId={id}")
    );
    assert!(
        a["sessionViewerUrl"]
            .as_str()
            .expect("sessionViewerUrl")
            .starts_with(&format!(
                "https://browsers.example.com/v1/sessions/{id}/view?token="
            )),
        "{a}"
    );
    let (status, v) = gw.get(&format!("/json/version?sessionId={id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["webSocketDebuggerUrl"],
        format!("wss://browsers.example.com/devtools/browser/{id}")
    );
    // The public host is this gateway's own name.
    let r = gw
        .http
        .get(gw.url("/healthz"))
        .header("host", "browsers.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let b = gw.create(json!({})).await;
    assert_eq!(
        gw.post("/v1/sessions", json!({})).await.0,
        429,
        "--max-sessions 2 wins over INGOT_MAX_SESSIONS=1; INGOT_QUEUE_TIMEOUT_MS=0 refuses at once"
    );
    for s in [&a, &b] {
        gw.release(s["id"].as_str().unwrap()).await;
    }
}
