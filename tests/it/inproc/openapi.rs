//! The OpenAPI document (`GET /v1/openapi.json`) against the gateway it describes: every
//! route is documented and every documented operation is routed; real answers (successes and
//! errors) validate against the schema the document gives their status; and the create
//! body's schema agrees with the validation `session::params` does. `crate::openapi`
//! checks answers of real Chromium the same way.

use reqwest::Method;
use serde_json::{Value, json};

use super::*;
use crate::common::openapi::{Answer, Spec, routed_paths};

/// A request as a client sends it, read as an [`Answer`].
async fn call(
    gw: &FakeGateway,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = gw.http.request(method, gw.url(path));
    if let Some(key) = key {
        request = request.header("steel-api-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = timeout(STEP, request.send())
        .await
        .expect("answer in time")
        .expect("HTTP request");
    timeout(STEP, Answer::read(response))
        .await
        .expect("body in time")
}

/// The document as `gw` serves it, fetched without an API key.
async fn spec(gw: &FakeGateway) -> Spec {
    let answer = call(gw, Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(answer.content_type.starts_with("application/json"));
    Spec::new(answer.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1_served_without_a_key() {
    let gw = FakeGateway::start_with(|s| {
        s.api_keys = Some(TENANTS.into());
        s.max_timeout_ms = 600_000;
    })
    .await;
    let spec = spec(&gw).await;
    let schemes = &spec.doc["components"]["securitySchemes"];
    assert_eq!(
        schemes["steel-api-key"],
        json!({"type": "apiKey", "in": "header", "name": "steel-api-key",
               "description": schemes["steel-api-key"]["description"]})
    );
    assert_eq!(schemes["apiKey"]["in"], "query");
    assert_eq!(
        spec.operation("POST", "/v1/sessions")["security"],
        json!([{"steel-api-key": []}])
    );
    assert!(spec.operation("GET", "/healthz").get("security").is_none());
    // This gateway's own limits.
    let timeout = &spec.doc["components"]["schemas"]["CreateSessionBody"]["properties"]["timeout"];
    assert_eq!(
        (&timeout["minimum"], &timeout["maximum"]),
        (&json!(1000), &json!(600_000))
    );
    assert_eq!(timeout["default"], 300_000);
    // A wrong key does not matter either; other checks still apply.
    let with_bad_key = call(&gw, Method::GET, "/v1/openapi.json", Some("nope"), None).await;
    assert_eq!(with_bad_key.status, 200);
    let from_a_page = gw
        .http
        .get(gw.url("/v1/openapi.json"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("request");
    assert_eq!(from_a_page.status(), 403);
    gw.stop().await;
}

/// Every `.route("…")` of `src/api/mod.rs` has a path in the document, and every path of the
/// document is one of them; the routes of `unsupported.rs` (501 by design) are left out. Each
/// documented operation reaches a handler: neither the 404 of an unknown route nor a 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_operation_is_routed() {
    let routed = routed_paths(concat!(
        include_str!("../../../src/api/mod.rs"),
        include_str!("../../../src/api/files.rs")
    ));
    assert!(routed.len() >= 18, "{routed:?}");
    let gw = FakeGateway::start().await;
    let spec = spec(&gw).await;
    let paths = spec.doc["paths"].as_object().expect("paths");
    for path in &routed {
        assert!(
            paths.contains_key(path),
            "route {path} is not in the document"
        );
    }
    for path in paths.keys() {
        assert!(routed.contains(path), "{path} is documented but not routed");
    }
    let unsupported = include_str!("../../../src/api/unsupported.rs");
    for path in paths.keys().filter(|p| p.starts_with("/v1/")) {
        assert!(
            !unsupported.contains(&format!("(\"{path}\"")),
            "{path} answers 501 and must not be documented"
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            let method =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            let url = path.replace("{id}", &id);
            let answer = call(&gw, method.clone(), &url, None, None).await;
            let code = answer.json()["error"]["code"].clone();
            assert!(
                code != "not_found" && code != "method_not_allowed",
                "{method} {path} is documented but not routed: {} {}",
                answer.status,
                answer.text
            );
        }
    }
    gw.stop().await;
}

/// Requests of tenant alice to a keyed gateway, each answer checked against the document.
struct Checker {
    gw: FakeGateway,
    spec: Spec,
}

impl Checker {
    async fn start() -> Checker {
        let gw = FakeGateway::start_with(|s| s.api_keys = Some(TENANTS.into())).await;
        let spec = spec(&gw).await;
        Checker { gw, spec }
    }

    /// `method url` answers `status`, as the document says `method template` answers it.
    async fn check(
        &self,
        (method, template): (Method, &str),
        url: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let answer = call(&self.gw, method.clone(), url, Some(ALICE), body).await;
        assert_eq!(answer.status, status, "{method} {url}: {}", answer.text);
        self.spec.check(method.as_str(), template, &answer);
        answer.json()
    }
}

const CREATE: (Method, &str) = (Method::POST, "/v1/sessions");
const LIST: (Method, &str) = (Method::GET, "/v1/sessions");
const RETRIEVE: (Method, &str) = (Method::GET, "/v1/sessions/{id}");
const RELEASE: (Method, &str) = (Method::POST, "/v1/sessions/{id}/release");
const TIMEOUT: (Method, &str) = (Method::POST, "/v1/sessions/{id}/timeout");
const LIVE_DETAILS: (Method, &str) = (Method::GET, "/v1/sessions/{id}/live-details");
const CONTEXT: (Method, &str) = (Method::GET, "/v1/sessions/{id}/context");

/// The sessions API, through a session's life, validates against the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_answers_validate_against_the_document() {
    let c = Checker::start().await;
    let session = c.check(CREATE, "/v1/sessions", Some(json!({})), 200).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let full = json!({"timeout": 60_000, "inactivityTimeout": 30_000, "userAgent": "agent/1",
                      "dimensions": {"width": 800, "height": 600}, "blockAds": false});
    let other = c.check(CREATE, "/v1/sessions", Some(full), 200).await;
    assert_eq!(other["inactivityTimeout"], 30_000);
    let body = Some(json!({"sessionId": id}));
    c.check(CREATE, "/v1/sessions", body, 409).await;
    let body = Some(json!({"dimensions": {"width": 0, "height": 1}}));
    c.check(CREATE, "/v1/sessions", body, 400).await;

    let one = format!("/v1/sessions/{id}");
    c.check(RETRIEVE, &one, None, 200).await;
    c.check(LIST, "/v1/sessions", None, 200).await;
    let page = c
        .check(LIST, "/v1/sessions?status=live&limit=1", None, 200)
        .await;
    assert!(page["nextCursor"].is_string(), "{page}");
    c.check(LIST, "/v1/sessions?limit=0", None, 400).await;
    c.check(LIVE_DETAILS, &format!("{one}/live-details"), None, 200)
        .await;
    c.check(CONTEXT, &format!("{one}/context"), None, 200).await;
    let body = Some(json!({"timeout": 120_000}));
    c.check(TIMEOUT, &format!("{one}/timeout"), body, 200).await;
    let body = Some(json!({"timeout": "soon"}));
    c.check(TIMEOUT, &format!("{one}/timeout"), body, 400).await;

    c.check(RELEASE, &format!("{one}/release"), None, 200).await;
    let ended = c.check(RETRIEVE, &one, None, 200).await;
    assert_eq!(ended["releaseReason"], "user_requested");
    let body = Some(json!({"timeout": 120_000}));
    c.check(TIMEOUT, &format!("{one}/timeout"), body, 409).await;
    c.check(LIVE_DETAILS, &format!("{one}/live-details"), None, 409)
        .await;
    c.check(CONTEXT, &format!("{one}/context"), None, 409).await;

    let unknown = format!("/v1/sessions/{}", uuid::Uuid::new_v4());
    c.check(RETRIEVE, &unknown, None, 404).await;
    c.check(RELEASE, &format!("{unknown}/release"), None, 404)
        .await;
    c.check(RETRIEVE, "/v1/sessions/not-a-uuid", None, 400)
        .await;
    let release_all = (Method::POST, "/v1/sessions/release");
    c.check(release_all.clone(), "/v1/sessions/release", None, 200)
        .await;
    let url = "/v1/sessions/release?projectId=p";
    c.check(release_all, url, None, 400).await;
    c.gw.stop().await;
}

/// CDP discovery and the WebSocket endpoints (without an upgrade) validate against the
/// document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdp_answers_validate_against_the_document() {
    let c = Checker::start().await;
    let by_query = (Method::GET, "/json/version");
    let by_path = (Method::GET, "/devtools/browser/{id}/json/version");
    let root = (Method::GET, "/");
    c.check(by_query.clone(), "/json/version", None, 400).await;
    let session = c.check(CREATE, "/v1/sessions", Some(json!({})), 200).await;
    let id = session["id"].as_str().expect("id").to_owned();
    c.check(by_query.clone(), "/json/version", None, 200).await;
    let url = format!("/json/version?sessionId={id}");
    c.check(by_query.clone(), &url, None, 200).await;
    let url = format!("/json/version/?sessionId={id}");
    c.check((Method::GET, "/json/version/"), &url, None, 200)
        .await;
    let url = format!("/devtools/browser/{id}/json/version");
    c.check(by_path.clone(), &url, None, 200).await;
    c.check(root.clone(), "/", None, 200).await;
    c.check(root.clone(), &format!("/?sessionId={id}"), None, 426)
        .await;
    c.check(root, "/?sessionId=nope", None, 400).await;
    let url = format!("/devtools/browser/{id}");
    c.check((Method::GET, "/devtools/browser/{id}"), &url, None, 426)
        .await;

    c.check(RELEASE, &format!("/v1/sessions/{id}/release"), None, 200)
        .await;
    let url = format!("/json/version?sessionId={id}");
    c.check(by_query, &url, None, 410).await;
    let url = format!("/devtools/browser/{id}/json/version/");
    let slash = (Method::GET, "/devtools/browser/{id}/json/version/");
    c.check(slash, &url, None, 410).await;
    let url = format!("/devtools/browser/{}/json/version", uuid::Uuid::new_v4());
    c.check(by_path, &url, None, 404).await;
    c.gw.stop().await;
}

/// Usage, the operational endpoints, and the middleware's refusals validate against the
/// document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_answers_validate_against_the_document() {
    let c = Checker::start().await;
    let usage = (Method::GET, "/v1/usage");
    c.check(usage.clone(), "/v1/usage", None, 200).await;
    c.check(usage.clone(), "/v1/usage?format=csv", None, 200)
        .await;
    c.check(usage.clone(), "/v1/usage?from=yesterday", None, 400)
        .await;
    c.check(usage, "/v1/usage?tenant=bob", None, 403).await;
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        c.check((Method::GET, path), path, None, 200).await;
    }
    for (key, path) in [
        (None, "/v1/sessions"),
        (Some("wrong-key-0123456789abcdef"), "/v1/usage"),
        (None, "/json/version"),
    ] {
        let answer = call(&c.gw, Method::GET, path, key, None).await;
        assert_eq!(answer.status, 401, "{path}: {}", answer.text);
        c.spec.check("GET", path, &answer);
    }
    let refused =
        c.gw.http
            .get(c.gw.url("/v1/sessions"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .expect("request");
    let refused = Answer::read(refused).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    c.spec.check("GET", "/v1/sessions", &refused);
    c.gw.stop().await;
}

/// `/readyz` at capacity: the 503 shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_is_not_ready_as_documented() {
    let gw = FakeGateway::start_with(|s| s.max_sessions = Some(1)).await;
    let spec = spec(&gw).await;
    gw.create(json!({})).await;
    gw.wait_readyz(503).await;
    let answer = call(&gw, Method::GET, "/readyz", None, None).await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    spec.check("GET", "/readyz", &answer);
    assert_eq!(answer.json()["reason"], "at_capacity");
    gw.stop().await;
}

/// The create body's schema and `session::params` agree: whatever the gateway accepts, the
/// schema allows, and whatever the schema forbids, the gateway refuses (so a fuzzer's invalid
/// bodies never start a browser). Checked over bodies near every rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_body_schema_agrees_with_the_validation() {
    let gw = FakeGateway::start().await;
    let spec = spec(&gw).await;
    gw.stop().await;
    let schema = spec.component("CreateSessionBody");
    let limits = ingot::validation::TimeoutLimits {
        default_ms: 300_000,
        min_ms: 1_000,
        max_ms: 86_400_000,
    };
    let properties = spec.doc["components"]["schemas"]["CreateSessionBody"]["properties"]
        .as_object()
        .expect("properties");
    let bodies = create_bodies(properties.keys());
    assert!(bodies.len() > 1000, "{}", bodies.len());
    let disagreements: Vec<String> = bodies
        .iter()
        .filter(|body| {
            let accepted =
                ingot::validation::parse_create_body(body.to_string().as_bytes(), limits);
            accepted.is_ok() && !schema.is_valid(body)
        })
        .map(Value::to_string)
        .collect();
    assert!(
        disagreements.is_empty(),
        "accepted, but the schema forbids them:\n{}",
        disagreements.join("\n")
    );
}

/// Bodies near each rule of a create body: every documented field with values of every JSON
/// type and at its bounds, and a few whole bodies.
fn create_bodies<'a>(fields: impl Iterator<Item = &'a String>) -> Vec<Value> {
    let values = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(2),
        json!(-1),
        json!(1.5),
        json!(999),
        json!(1000),
        json!(1000.0),
        json!(16384),
        json!(16385),
        json!(86_400_000),
        json!(86_400_001),
        json!(""),
        json!("x"),
        json!("a\u{7}b"),
        json!("x".repeat(1024)),
        json!("x".repeat(1025)),
        json!("123e4567-e89b-12d3-a456-426614174000"),
        json!("123e4567e89b12d3a456426614174000"),
        json!("{123e4567-e89b-12d3-a456-426614174000}"),
        json!("urn:uuid:123e4567-e89b-12d3-a456-426614174000"),
        json!("http://127.0.0.1:8080"),
        json!([]),
        json!([1]),
        json!({}),
        json!({"a": 1}),
        json!({"device": "desktop"}),
        json!({"device": "mobile"}),
        json!({"width": 800, "height": 600}),
        json!({"width": 0, "height": 600}),
        json!({"width": 800}),
        json!({"width": 800, "height": 600, "depth": 1}),
        json!({"cookies": [{"name": "a", "value": "b", "domain": "example.com"}]}),
        json!({"cookies": [{"name": "a", "value": "b"}]}),
        json!({"cookies": [{"name": "a", "value": "b", "domain": 5, "url": "https://a.example"}]}),
        json!({"cookies": {}}),
        json!({"localStorage": {"https://a.example": {"k": "v"}}}),
        json!({"localStorage": {"https://a.example/": {"k": "v"}}}),
        json!({"localStorage": {"https://a.example": {"k": 1}}}),
        json!({"sessionStorage": null, "indexedDB": {}}),
        json!({"indexedDB": {"db": []}}),
        json!({"indexedDB": 5}),
        json!({"other": {}}),
    ];
    let mut bodies: Vec<Value> = fields
        .flat_map(|field| values.iter().map(move |v| json!({ field: v })))
        .collect();
    bodies.extend([
        json!({}),
        json!({"unknown": 1}),
        json!({"timeout": 60_000, "dimensions": {"width": 800, "height": 600},
               "fullscreen": true, "headless": true, "userAgent": "a/1",
               "concurrency": 1, "deviceConfig": {"device": "desktop"}}),
    ]);
    bodies
}

/// Files, the computer API and the viewer's facts validate against the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_computer_and_viewer_answers_validate_against_the_document() {
    let c = Checker::start().await;
    let session = c.check(CREATE, "/v1/sessions", Some(json!({})), 200).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let files = format!("/v1/sessions/{id}/files");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("a.txt"),
    );
    let uploaded =
        c.gw.http
            .post(c.gw.url(&files))
            .header("steel-api-key", ALICE)
            .multipart(form)
            .send()
            .await
            .expect("upload");
    let uploaded = Answer::read(uploaded).await;
    assert_eq!(uploaded.status, 200, "{}", uploaded.text);
    c.spec.check("POST", "/v1/sessions/{id}/files", &uploaded);
    c.check((Method::GET, "/v1/sessions/{id}/files"), &files, None, 200)
        .await;
    let one = "/v1/sessions/{id}/files/{path}";
    c.check((Method::GET, one), &format!("{files}/nope.txt"), None, 404)
        .await;
    c.check((Method::DELETE, one), &format!("{files}/a.txt"), None, 200)
        .await;
    c.check(
        (Method::DELETE, "/v1/sessions/{id}/files"),
        &files,
        None,
        200,
    )
    .await;
    let computer = (Method::POST, "/v1/sessions/{id}/computer");
    let url = format!("/v1/sessions/{id}/computer");
    c.check(
        computer.clone(),
        &url,
        Some(json!({"action": "get_cursor_position"})),
        200,
    )
    .await;
    c.check(computer.clone(), &url, Some(json!({"action": "fly"})), 400)
        .await;
    let token = session["debugUrl"]
        .as_str()
        .and_then(|u| u.split_once("token="))
        .map(|(_, t)| t.to_owned())
        .expect("token");
    let facts = (Method::GET, "/v1/sessions/{id}/viewer/facts");
    let facts_url = format!("/v1/sessions/{id}/viewer/facts?token={token}");
    c.check(facts.clone(), &facts_url, None, 200).await;
    c.check(
        facts.clone(),
        &format!("/v1/sessions/{id}/viewer/facts?token=x"),
        None,
        403,
    )
    .await;
    c.check(RELEASE, &format!("/v1/sessions/{id}/release"), None, 200)
        .await;
    c.check(facts, &facts_url, None, 410).await;
    c.check(
        computer,
        &url,
        Some(json!({"action": "take_screenshot"})),
        409,
    )
    .await;
    c.gw.stop().await;
}
