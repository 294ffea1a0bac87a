//! The HTTP API in-process: ids and queries, tenants and keys, CDP discovery, readiness.
//! Steel's Session JSON, list and paging, create-body validation, release and release-all
//! are `inproc::scenarios`.

use reqwest::Method;
use serde_json::{Value, json};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_queries_get_400_and_unknown_ids_404() {
    let gw = FakeGateway::start().await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        "/v1/sessions/not-a-uuid".to_owned(),
        "/v1/sessions/%ff".to_owned(),
        "/v1/sessions?limit=0".to_owned(),
        "/v1/sessions?limit=101".to_owned(),
        "/v1/sessions?limit=ten".to_owned(),
        "/v1/sessions?status=sleeping".to_owned(),
        "/v1/sessions?cursorId=nope".to_owned(),
        format!("/v1/sessions?cursorId={unknown}"),
        "/json/version?sessionId=nope".to_owned(),
    ] {
        let (status, err) = gw.get(&path).await;
        assert_error((status, &err), 400, "invalid_request");
    }
    let (status, err) = gw.post("/v1/sessions/not-a-uuid/release", json!({})).await;
    assert_error((status, &err), 400, "invalid_request");

    let (status, err) = gw.get(&format!("/v1/sessions/{unknown}")).await;
    let message = assert_error((status, &err), 404, "session_not_found");
    assert!(message.contains(&unknown.to_string()), "{message}");
    let (status, err) = gw
        .post(&format!("/v1/sessions/{unknown}/release"), json!({}))
        .await;
    assert_error((status, &err), 404, "session_not_found");
    let (status, err) = gw.get(&format!("/json/version?sessionId={unknown}")).await;
    assert_error((status, &err), 404, "session_not_found");
    assert_upgrade_refused(&gw.ws_url(&unknown.to_string()), 404).await;
    let (status, err) = gw.get("/v1/nothing-here").await;
    assert_error((status, &err), 404, "not_found");
    assert_eq!(gw.host.launches(), 1, "only the probe launched");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_get_401_except_health() {
    let gw = FakeGateway::start_with(|s| s.api_keys = Some(TENANTS.into())).await;
    for key in [None, Some("wrong-key-0123456789abcdef")] {
        let r = gw
            .request(Method::POST, "/v1/sessions", key, Some(json!({})))
            .await;
        assert_error((r.status, &r.body), 401, "unauthorized");
        let r = gw.request(Method::GET, "/v1/sessions", key, None).await;
        assert_error((r.status, &r.body), 401, "unauthorized");
    }
    assert_upgrade_refused(&gw.ws_url(&uuid::Uuid::new_v4().to_string()), 401).await;
    assert_eq!(gw.get("/healthz").await.0, 200);
    assert_eq!(gw.get("/readyz").await.0, 200);
    assert_eq!(gw.host.launches(), 1, "nothing was launched");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_version_answers_with_the_fake_browsers_product() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    let (status, v) = gw.get(&format!("/json/version?sessionId={id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Browser"], FAKE_PRODUCT);
    assert_eq!(v["Protocol-Version"], "1.3");
    assert_eq!(v["User-Agent"], "Mozilla/5.0 (fake) FakeChrome/1.0");
    let endpoint = format!("ws://{}/devtools/browser/{id}", gw.addr);
    assert_eq!(v["webSocketDebuggerUrl"], endpoint);
    let (_, by_path) = gw
        .get(&format!("/devtools/browser/{id}/json/version"))
        .await;
    assert_eq!(by_path, v);
    let (_, sole) = gw.get("/json/version").await;
    assert_eq!(sole, v, "without sessionId: the only live session");

    // The advertised endpoint is a working CDP WebSocket.
    let mut cdp = CdpClient::connect(&endpoint).await;
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert_eq!(reply["result"]["product"], FAKE_PRODUCT);
    cdp.close().await;

    let agent = gw.create(json!({"userAgent": "agent/9"})).await;
    let (_, v) = gw
        .get(&format!("/json/version?sessionId={}", id_of(&agent)))
        .await;
    assert_eq!(v["User-Agent"], "agent/9");
    let (status, _) = gw.get("/json/version").await;
    assert_eq!(status, 400, "two live sessions: sessionId is needed");
    gw.release(&id).await;
    let (status, err) = gw.get(&format!("/json/version?sessionId={id}")).await;
    assert_error((status, &err), 410, "session_ended");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_chromium_unavailable_after_a_failed_launch() {
    let gw = FakeGateway::start().await;
    let (status, ready) = gw.get("/readyz").await;
    assert_eq!(
        (status, &ready["status"]),
        (200, &json!("ready")),
        "{ready}"
    );
    assert_eq!(ready["maxSessions"], 4);

    gw.host.fail_launches(Some("no display for the fake"));
    let r = gw
        .request(Method::POST, "/v1/sessions", None, Some(json!({})))
        .await;
    let message = assert_error((r.status, &r.body), 503, "browser_start_failed");
    assert!(message.contains("no display for the fake"), "{message}");
    assert_eq!(r.retry_after.as_deref(), Some("1"));

    let r = gw.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["reason"], "chromium_unavailable");
    let message = r.body["message"].as_str().expect("message");
    assert!(message.contains("no display for the fake"), "{message}");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(
        gw.get("/healthz").await.0,
        200,
        "still alive, only not ready"
    );

    // The next launch that works makes the gateway ready again.
    gw.host.fail_launches(None);
    gw.create(json!({})).await;
    assert_eq!(gw.get("/readyz").await.0, 200);
    gw.stop().await;
}

/// Headers meant for the nodes of a cluster are refused without the cluster's secret, on a
/// single node too: a client cannot pose as another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_headers_without_the_secret_are_refused() {
    let gw = FakeGateway::start().await;
    let s = gw.create(json!({})).await;
    let id = id_of(&s);
    for (name, value) in [
        ("x-ingot-cluster-secret", "guess"),
        ("x-ingot-via", "http://evil.example"),
        ("X-Ingot-Anything", "1"),
    ] {
        let r = gw
            .http
            .get(gw.url(&format!("/v1/sessions/{id}")))
            .header(name, value)
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 403, "{name}");
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "cluster_only", "{body}");
    }
    let (status, _) = gw.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200, "without them the same request is served");
    gw.release(&id).await;
}

/// Steel routes ingot does not implement answer 501 naming the feature (a 404 would read as
/// "no such session" in the SDKs), after authentication like any route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_steel_routes_answer_501_naming_the_feature() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    for (method, path, feature) in [
        (
            Method::POST,
            format!("/v1/sessions/{id}/captchas/solve"),
            "captcha",
        ),
        (
            Method::GET,
            format!("/v1/sessions/{id}/captchas/status"),
            "captcha",
        ),
        (Method::GET, format!("/v1/sessions/{id}/hls"), "recordings"),
        (
            Method::GET,
            format!("/v1/sessions/{id}/events"),
            "recordings",
        ),
        (Method::GET, "/v1/files/a/b.txt".to_owned(), "global files"),
        (Method::POST, "/v1/files".to_owned(), "global files"),
        (Method::GET, "/v1/profiles/p1".to_owned(), "profiles"),
        (Method::POST, "/v1/credentials".to_owned(), "credentials"),
        (Method::GET, "/v1/extensions".to_owned(), "extensions"),
    ] {
        let Reply { status, body, .. } = gw.request(method.clone(), &path, None, None).await;
        assert_eq!(status, 501, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_implemented", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.contains(feature), "{path}: {message}");
    }
    let (status, _) = gw.get("/v1/nothing-here").await;
    assert_eq!(status, 404, "other paths are still unknown");
    gw.release(&id).await;
}

/// `projectId` on list and release-all is refused with a 400 naming it, never ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_ids_are_refused_not_ignored() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    let (status, body) = gw.get("/v1/sessions?projectId=p1").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("projectId")
    );
    let (status, body) = gw
        .post("/v1/sessions/release?projectId=p1", json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = gw
        .post("/v1/sessions/release", json!({"projectId": "p1"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        gw.session(&id).await["status"],
        "live",
        "nothing was released"
    );
    gw.release(&id).await;
}

/// `live-details` lists a live session's pages as its browser reports them, in Steel's
/// shape; an ended session answers 409 and an unknown one 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_details_list_the_pages_of_a_live_session() {
    let gw = FakeGateway::start().await;
    let id = id_of(&gw.create(json!({})).await);
    let (status, details) = gw.get(&format!("/v1/sessions/{id}/live-details")).await;
    assert_eq!(status, 200, "{details}");
    let pages = details["pages"].as_array().expect("pages");
    assert_eq!(pages.len(), 1, "{details}");
    assert_eq!(pages[0]["id"], gw.browser_of(&id).page_target_id());
    for field in [
        "url",
        "title",
        "sessionViewerUrl",
        "sessionViewerFullscreenUrl",
    ] {
        assert!(pages[0][field].is_string(), "{field}: {details}");
    }
    assert!(pages[0]["favicon"].is_null());
    let viewer = pages[0]["sessionViewerFullscreenUrl"]
        .as_str()
        .expect("url");
    assert!(
        viewer.contains("/viewer?token=")
            && viewer.ends_with(&format!("&pageId={}", pages[0]["id"].as_str().expect("id"))),
        "the live viewer on that page: {viewer}"
    );
    assert_eq!(details["wsUrl"], gw.ws_url(&id));
    gw.release(&id).await;
    assert_eq!(
        gw.get(&format!("/v1/sessions/{id}/live-details")).await.0,
        409
    );
    let unknown = uuid::Uuid::new_v4();
    assert_eq!(
        gw.get(&format!("/v1/sessions/{unknown}/live-details"))
            .await
            .0,
        404
    );
    gw.stop().await;
}
