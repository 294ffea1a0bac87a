//! The viewer's routes in-process: their pages need the session's viewer token instead of
//! an API key, carry the CSP the operator set, and the console's page needs nothing; the
//! API still refuses keyless and cross-origin requests.

use reqwest::Method;
use serde_json::json;

use super::*;

fn token_of(session: &Value) -> String {
    session["debugUrl"]
        .as_str()
        .and_then(|u| u.split_once("token="))
        .map(|(_, t)| t.to_owned())
        .expect("a viewer token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_pages_take_the_token_and_carry_the_operators_csp() {
    let gw = FakeGateway::start_with(|s| {
        s.api_keys = Some(TENANTS.into());
        s.viewer_frame_ancestors = "'self' https://app.example.com".into();
    })
    .await;
    let session = gw.create_as(Some(ALICE), json!({})).await;
    let id = id_of(&session);
    let token = token_of(&session);
    for page in ["viewer", "view"] {
        let r = gw
            .http
            .get(gw.url(&format!("/v1/sessions/{id}/{page}?token={token}")))
            .send()
            .await
            .expect("page");
        assert_eq!(r.status(), 200, "{page}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with("text/html"));
        assert_eq!(header("referrer-policy"), "no-referrer");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("frame-ancestors 'self' https://app.example.com"),
            "{csp}"
        );
        assert!(csp.contains("default-src 'none'"), "{csp}");
        let html = r.text().await.expect("html");
        for outside in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "@import",
            "src='http",
        ] {
            assert!(
                !html.contains(outside),
                "{page} loads nothing from elsewhere: {outside}"
            );
        }
    }
    // A wrong token, another session's token, or none: 403.
    let other = gw.create_as(Some(ALICE), json!({})).await;
    for bad in ["", "?token=0", &format!("?token={}", token_of(&other))] {
        let (status, body) = gw.get(&format!("/v1/sessions/{id}/viewer{bad}")).await;
        assert_error((status, &body), 403, "viewer_token_refused");
    }
    // The console's page needs no key; the API still does, and refuses other origins.
    let (status, _) = gw.get("/ui").await;
    assert_eq!(status, 200);
    let r = gw.request(Method::GET, "/v1/sessions", None, None).await;
    assert_eq!(r.status, 401);
    let foreign = send(
        gw.http
            .get(gw.url("/v1/sessions"))
            .header("steel-api-key", ALICE)
            .header("origin", "http://evil.example"),
    )
    .await;
    assert_error((foreign.status, &foreign.body), 403, "cross_origin_refused");
    let own = send(
        gw.http
            .get(gw.url("/v1/sessions"))
            .header("steel-api-key", ALICE)
            .header("origin", format!("http://{}", gw.addr)),
    )
    .await;
    assert_eq!(
        own.status, 200,
        "ingot's own pages (the console) may call the API with a key"
    );
    // The viewer's socket refuses a page of another origin before anything else.
    let socket = send(
        gw.http
            .get(gw.url(&format!("/v1/sessions/{id}/viewer/ws?token={token}")))
            .header("origin", "http://evil.example"),
    )
    .await;
    assert_eq!(socket.status, 403);
    for ended in [&id, &id_of(&other)] {
        let r = gw
            .request(
                Method::POST,
                &format!("/v1/sessions/{ended}/release"),
                Some(ALICE),
                None,
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let (status, _) = gw
        .get(&format!("/v1/sessions/{id}/viewer/facts?token={token}"))
        .await;
    assert_eq!(
        status, 410,
        "the token works only while the session is live"
    );
    gw.stop().await;
}
