//! The OpenAPI document against a real gateway and real Chromium: what a real browser reports
//! (its version, its pages, the cookies and storage a page set) validates against the schemas
//! the document gives, as do the sessions API's answers around it. `inproc::openapi` covers
//! every route and the error answers on the fake browser host.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::openapi::{Answer, Spec};
use crate::common::*;

/// One request to `gw`, checked against `spec` as `method template`; returns the JSON body.
async fn check(
    gw: &Gateway,
    spec: &Spec,
    (method, template): (&str, &str),
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut request = gw
        .http
        .request(method.parse().expect("method"), gw.url(url));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = Answer::read(request.send().await.expect("request")).await;
    assert_eq!(answer.status, 200, "{method} {url}: {}", answer.text);
    spec.check(method, template, &answer);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_browsers_answers_validate_against_the_document() {
    let _shared = shared().await;
    let site = PageServer::start(vec![(
        "/login",
        "<title>login</title><script>document.cookie = 'auth=yes; max-age=3600; path=/'; \
         localStorage.setItem('token', 't123'); sessionStorage.setItem('tab', 'x');</script>"
            .into(),
    )])
    .await;
    let gw = Gateway::start(&[]).await;
    let doc = gw
        .http
        .get(gw.url("/v1/openapi.json"))
        .send()
        .await
        .expect("document");
    let spec = Spec::new(doc.json().await.expect("JSON"));
    let origin = site.url("").trim_end_matches('/').to_owned();
    let context = json!({
        "cookies": [{"name": "seed", "value": "1", "url": origin}],
        "localStorage": {origin.clone(): {"seeded": "yes"}},
    });
    let body = json!({"sessionContext": context, "userAgent": "openapi-test/1",
                      "dimensions": {"width": 1024, "height": 768}});
    let session = check(
        &gw,
        &spec,
        ("POST", "/v1/sessions"),
        "/v1/sessions",
        Some(body),
    )
    .await;
    let id = session["id"].as_str().expect("id").to_owned();
    let one = format!("/v1/sessions/{id}");

    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/login")).await;
    let read = check(
        &gw,
        &spec,
        ("GET", "/v1/sessions/{id}/context"),
        &format!("{one}/context"),
        None,
    )
    .await;
    assert!(
        read["cookies"]
            .as_array()
            .expect("cookies")
            .iter()
            .any(|c| c["name"] == "auth"),
        "{read}"
    );
    assert_eq!(read["localStorage"][&origin]["token"], "t123", "{read}");
    let details = check(
        &gw,
        &spec,
        ("GET", "/v1/sessions/{id}/live-details"),
        &format!("{one}/live-details"),
        None,
    )
    .await;
    assert_eq!(details["pages"][0]["title"], "login", "{details}");
    let url = format!("/json/version?sessionId={id}");
    let version = check(&gw, &spec, ("GET", "/json/version"), &url, None).await;
    assert!(
        version["Browser"]
            .as_str()
            .is_some_and(|b| b.contains("Chrom")),
        "{version}"
    );
    cdp.close().await;

    let body = Some(json!({"timeout": 600_000}));
    check(
        &gw,
        &spec,
        ("POST", "/v1/sessions/{id}/timeout"),
        &format!("{one}/timeout"),
        body,
    )
    .await;
    check(
        &gw,
        &spec,
        ("POST", "/v1/sessions/{id}/release"),
        &format!("{one}/release"),
        None,
    )
    .await;
    let ended = check(&gw, &spec, ("GET", "/v1/sessions/{id}"), &one, None).await;
    assert_eq!(ended["status"], "released");
    check(&gw, &spec, ("GET", "/v1/sessions"), "/v1/sessions", None).await;
    let usage = check(&gw, &spec, ("GET", "/v1/usage"), "/v1/usage", None).await;
    assert_eq!(usage["total"]["sessions"], 1, "{usage}");
    gw.assert_clean(Duration::from_secs(10)).await;
}
