//! API keys and tenants: 401 without a valid key, each tenant seeing and touching only its
//! own sessions (another tenant's id answers exactly like an unknown one), per-tenant quota,
//! usage per tenant, keys never written anywhere, and no open gateway beyond loopback.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";
const ADMIN: &str = "admin-key-0123456789abcdef";

struct Keyed {
    gw: Gateway,
    _keys: tempfile::TempDir,
}

async fn start() -> Keyed {
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("keys");
    std::fs::write(&file, format!("# tenants\nalice:{ALICE}\n")).unwrap();
    let gw = Gateway::start_with_env(
        &[
            "--api-keys-file",
            file.to_str().unwrap(),
            "--max-sessions-per-tenant",
            "2",
            "--queue-timeout-ms",
            "0",
        ],
        &[
            ("INGOT_API_KEYS", &format!("bob:{BOB}")),
            ("INGOT_ADMIN_API_KEY", ADMIN),
        ],
    )
    .await;
    Keyed { gw, _keys: keys }
}

async fn call(gw: &Gateway, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = gw
        .http
        .request(method.parse().unwrap(), gw.url(path))
        .header("content-type", "application/json");
    if method == "POST" {
        r = r.body("{}");
    }
    if let Some(key) = key {
        r = r.header("steel-api-key", key);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn with_key(url: &str, key: &str) -> String {
    format!("{url}&apiKey={key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_and_touch_only_their_own_sessions() {
    let _shared = shared().await;
    let Keyed { gw, _keys } = start().await;
    assert!(gw.wait_for_log("API keys loaded", secs(5)).await);

    requests_without_a_valid_key_get_401_and_start_nothing(&gw).await;
    let a1 = header_names_are_case_insensitive(&gw).await;
    let a1_id = a1["id"].as_str().unwrap().to_owned();
    let ws = a1["websocketUrl"].as_str().unwrap().to_owned();
    let (mut cdp, page) = the_websocket_wants_the_key_as_a_query_parameter(&ws).await;
    crate::scenario::another_tenants_session_answers_as_an_unknown_one(&gw, ALICE, BOB, &a1).await;
    assert_eq!(
        cdp.eval(&page, "2 + 2").await,
        json!(4),
        "alice's client went on"
    );
    discovery_links_carry_the_key(&gw, &a1_id).await;
    cdp.close().await;
    let a3 = each_tenant_has_a_quota_of_two_live_sessions(&gw).await;
    usage_is_per_tenant_and_the_admin_key_reads_everyones(&gw).await;
    releasing_everything_leaves_nothing(&gw, &a1_id, &a3).await;
    no_key_is_written_anywhere(&gw).await;
}

/// No key, a wrong key: 401 JSON, and nothing happens. Health and metrics need no key.
async fn requests_without_a_valid_key_get_401_and_start_nothing(gw: &Gateway) {
    for key in [None, Some("not-a-key-0123456789"), Some("")] {
        let (status, body) = call(gw, "POST", "/v1/sessions", key).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(call(gw, "GET", "/v1/sessions", key).await.0, 401);
    }
    assert_eq!(gw.chromium_processes(), 0, "no browser was started");
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
}

/// Creates Alice's first session with the key header in capitals; returns it.
async fn header_names_are_case_insensitive(gw: &Gateway) -> Value {
    let r = gw
        .http
        .post(gw.url("/v1/sessions"))
        .header("STEEL-API-KEY", ALICE)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Returns Alice's client and its page session.
async fn the_websocket_wants_the_key_as_a_query_parameter(ws: &str) -> (Cdp, String) {
    assert_upgrade_refused(ws, 401).await;
    assert_upgrade_refused(&with_key(ws, "wrong-key-0123456789"), 401).await;
    let mut cdp = Cdp::connect(&with_key(ws, ALICE)).await;
    let page = cdp.attach_first_page().await;
    assert_eq!(cdp.eval(&page, "1 + 1").await, json!(2));
    (cdp, page)
}

/// Discovery links carry the key, so clients that follow them get in.
async fn discovery_links_carry_the_key(gw: &Gateway, a1_id: &str) {
    let (status, version) = gw
        .get(&format!("/json/version?sessionId={a1_id}&apiKey={ALICE}"))
        .await;
    assert_eq!(status, 200);
    let endpoint = version["webSocketDebuggerUrl"].as_str().unwrap();
    assert!(
        endpoint.ends_with(&format!("?apiKey={ALICE}")),
        "{endpoint}"
    );
    let mut second = Cdp::connect(endpoint).await;
    second.call("Browser.getVersion", json!({}), None).await;
    second.close().await;
}

/// Quota: two live sessions per tenant. Returns Alice's session created once one was
/// released.
async fn each_tenant_has_a_quota_of_two_live_sessions(gw: &Gateway) -> Value {
    let a2 = call(gw, "POST", "/v1/sessions", Some(ALICE)).await.1;
    let (status, body) = call(gw, "POST", "/v1/sessions", Some(ALICE)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "tenant_quota");
    assert!(
        body["message"].as_str().unwrap().contains("alice"),
        "{body}"
    );
    assert_eq!(
        call(gw, "POST", "/v1/sessions", Some(BOB)).await.0,
        200,
        "Bob's quota is his own"
    );
    call(
        gw,
        "POST",
        &format!("/v1/sessions/{}/release", a2["id"].as_str().unwrap()),
        Some(ALICE),
    )
    .await;
    let (status, a3) = call(gw, "POST", "/v1/sessions", Some(ALICE)).await;
    assert_eq!(status, 200, "a released session frees its place");
    a3
}

/// Usage per tenant; the admin key reads everyone's.
async fn usage_is_per_tenant_and_the_admin_key_reads_everyones(gw: &Gateway) {
    let (_, mine) = call(gw, "GET", "/v1/usage", Some(ALICE)).await;
    assert_eq!(mine["tenant"], "alice");
    assert_eq!(mine["total"]["sessions"], 3);
    let (status, _) = call(gw, "GET", "/v1/usage?tenant=bob", Some(ALICE)).await;
    assert_eq!(status, 403);
    let (_, all) = call(gw, "GET", "/v1/usage", Some(ADMIN)).await;
    assert_eq!(all["tenant"], Value::Null);
    assert_eq!(all["total"]["sessions"], 5);
    let (_, bobs) = call(gw, "GET", &format!("/v1/usage?apiKey={BOB}"), Some(ADMIN)).await;
    assert_eq!(bobs["tenant"], "bob");
    assert_eq!(bobs["total"]["sessions"], 2);
    let records = usage_records(&gw.data_dir);
    assert_eq!(records.len(), 5);
    assert!(
        records
            .iter()
            .all(|r| matches!(r.tenant.as_deref(), Some("alice" | "bob")))
    );
}

async fn releasing_everything_leaves_nothing(gw: &Gateway, a1_id: &str, a3: &Value) {
    for id in [a1_id, a3["id"].as_str().unwrap()] {
        call(
            gw,
            "POST",
            &format!("/v1/sessions/{id}/release"),
            Some(ALICE),
        )
        .await;
    }
    call(gw, "POST", "/v1/sessions/release", Some(BOB)).await;
    gw.assert_clean(secs(5)).await;
}

/// No key is written anywhere: not in the log, not in the usage database.
async fn no_key_is_written_anywhere(gw: &Gateway) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut written = gw.log_text().into_bytes();
    for entry in std::fs::read_dir(&gw.data_dir).unwrap().flatten() {
        if entry.path().is_file() {
            written.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    let written = String::from_utf8_lossy(&written);
    for key in [ALICE, BOB, ADMIN] {
        assert!(!written.contains(key), "a key was written out");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_only_loopback_and_a_loud_warning() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    assert!(
        gw.wait_for_log("NO API KEYS CONFIGURED", secs(5)).await,
        "{}",
        gw.log_text()
    );
    drop(gw);

    // Never listens on a public address without keys, unless told to.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run ingot");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without API keys")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );

    // Bad key configuration stops start-up with a message naming the problem.
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "alice:short\n").unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--api-keys-file"])
        .arg(&keys)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run ingot");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 1") && stderr.contains("at least 16"),
        "{stderr}"
    );
}
