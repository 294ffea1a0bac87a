//! Steel's session context with real Chromium: log in on a page, read the context, create a
//! new session with it (from the warm pool), and the first load shows the logged-in state.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// A site on 127.0.0.1: `/login` sets a cookie and a `localStorage` token; `/` shows, from
/// its first script, whether both are there.
fn site() -> Vec<(&'static str, String)> {
    vec![
        (
            "/login",
            "<title>login</title><script>document.cookie = 'auth=yes; max-age=3600; path=/'; \
             localStorage.setItem('token', 't123'); sessionStorage.setItem('tab', 'x');</script>"
                .into(),
        ),
        (
            "/",
            "<script>document.title = document.cookie.includes('auth=yes') && \
             localStorage.getItem('token') === 't123' ? 'logged in' : 'anonymous';</script>"
                .into(),
        ),
    ]
}

/// The title of `/` on the first load in a new session created with `body`.
async fn first_load_title(gw: &Gateway, site: &PageServer, body: Value) -> (String, String) {
    let session = gw.create(body).await;
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/")).await;
    let title = cdp.eval(&page, "document.title").await;
    cdp.close().await;
    let id = session["id"].as_str().expect("id").to_owned();
    (title.as_str().unwrap_or_default().to_owned(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_read_from_one_session_logs_the_next_one_in() {
    let _shared = shared().await;
    let site = PageServer::start(site()).await;
    let gw = Gateway::start(&["--pool-size", "1", "--max-sessions", "4"]).await;
    let first = gw.create(json!({})).await;
    let id = first["id"].as_str().expect("id").to_owned();
    let mut cdp = Cdp::connect(first["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/login")).await;
    let (status, context) = gw.get(&format!("/v1/sessions/{id}/context")).await;
    assert_eq!(status, 200, "{context}");
    let origin = site.url("").trim_end_matches('/').to_owned();
    assert!(
        context["cookies"]
            .as_array()
            .expect("cookies")
            .iter()
            .any(|c| c["name"] == "auth" && c["value"] == "yes"),
        "{context}"
    );
    assert_eq!(
        context["localStorage"][&origin]["token"], "t123",
        "{context}"
    );
    assert_eq!(context["sessionStorage"][&origin]["tab"], "x", "{context}");
    cdp.close().await;
    gw.release(&id).await;

    let (control, control_id) = first_load_title(&gw, &site, json!({})).await;
    assert_eq!(control, "anonymous", "without a context");
    gw.release(&control_id).await;
    wait_for_full_pool(&gw).await;
    let handouts = gw.scrape().await;
    let before = metric(&handouts, "ingot_pool_handouts_total", &[]);
    let (title, next_id) = first_load_title(&gw, &site, json!({"sessionContext": context})).await;
    assert_eq!(
        title, "logged in",
        "the first load carries the cookie and the token"
    );
    let after = metric(&gw.scrape().await, "ingot_pool_handouts_total", &[]);
    assert_eq!(after, before + 1.0, "the session took a pooled browser");
    gw.release(&next_id).await;

    let (status, refused) = gw
        .post(
            "/v1/sessions",
            json!({"sessionContext": {"cookies": [{"name": "a"}]}}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .expect("message")
            .contains("sessionContext.cookies[0].value"),
        "{refused}"
    );
}

async fn wait_for_full_pool(gw: &Gateway) {
    let deadline = std::time::Instant::now() + secs(20);
    while metric(&gw.scrape().await, "ingot_pool_browsers", &[]) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never refilled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
