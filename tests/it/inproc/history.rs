//! Sessions' history survives a restart: retrieve and list read ended sessions from the
//! usage records, newest first, with the same paging, per tenant, within the retention.

use serde_json::json;

use reqwest::Method;

use super::*;

/// Two runs on one data directory. The first releases one session and leaves one live at
/// shutdown; the second finds both, as the first showed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_of_a_previous_run_are_retrieved_and_listed() {
    let gw = FakeGateway::start().await;
    let released = gw
        .create(json!({"timeout": 120000, "dimensions": {"width": 800, "height": 600}}))
        .await;
    gw.release(&id_of(&released)).await;
    let before_restart = gw.session(&id_of(&released)).await;
    let at_shutdown = gw.create(json!({"userAgent": "history-agent/1"})).await;
    let dir = gw.stop().await;

    let gw = FakeGateway::start_in(dir, |_| {}).await;
    let found = gw.session(&id_of(&released)).await;
    for field in [
        "id",
        "createdAt",
        "status",
        "duration",
        "timeout",
        "creditsUsed",
        "dimensions",
        "userAgent",
        "releaseReason",
        "eventCount",
    ] {
        assert_eq!(found[field], before_restart[field], "{field}: {found}");
    }
    let ended = gw.session(&id_of(&at_shutdown)).await;
    assert_eq!(ended["status"], "released", "{ended}");
    assert_eq!(ended["releaseReason"], "timeout", "Steel's word for it");
    assert_eq!(ended["userAgent"], "history-agent/1");

    let (status, list) = gw.get("/v1/sessions").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [id_of(&at_shutdown), id_of(&released)], "newest first");
    let (_, live) = gw.get("/v1/sessions?status=live").await;
    assert_eq!(live["sessions"], json!([]), "{live}");
    assert_eq!(live["totalCount"], 0);
    let (status, body) = gw
        .get(&format!(
            "/v1/sessions?limit=1&cursorId={}",
            id_of(&at_shutdown)
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"][0]["id"], id_of(&released).as_str());
    assert_upgrade_refused(&gw.ws_url(&id_of(&released)), 410).await;
    gw.stop().await;
}

/// A new run's sessions come before the old ones, live figures come from the running
/// session, and paging walks across both runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_walk_across_runs_newest_first() {
    let gw = FakeGateway::start().await;
    let mut expected = Vec::new();
    for _ in 0..3 {
        let s = gw.create(json!({})).await;
        gw.release(&id_of(&s)).await;
        expected.push(id_of(&s));
    }
    let dir = gw.stop().await;
    let gw = FakeGateway::start_in(dir, |_| {}).await;
    let live = gw.create(json!({})).await;
    expected.push(id_of(&live));
    expected.reverse();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            None => "/v1/sessions?limit=2".to_owned(),
            Some(c) => format!("/v1/sessions?limit=2&cursorId={c}"),
        };
        let (status, page) = gw.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["sessions"]
                .as_array()
                .expect("sessions")
                .iter()
                .map(|s| s["id"].as_str().expect("id").to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    let (_, first) = gw.get("/v1/sessions?limit=1").await;
    assert_eq!(first["sessions"][0]["status"], "live", "{first}");
    let (_, released) = gw.get("/v1/sessions?status=released").await;
    assert_eq!(released["totalCount"], 3, "{released}");
    gw.release(&id_of(&live)).await;
    gw.stop().await;
}

/// After a restart a tenant still sees only its own sessions; another tenant's id answers
/// 404, like an unknown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_sessions_stay_with_their_tenant() {
    let keys = |s: &mut Settings| s.api_keys = Some(TENANTS.into());
    let gw = FakeGateway::start_with(keys).await;
    let alices = gw.create_as(Some(ALICE), json!({})).await;
    let dir = gw.stop().await;
    let gw = FakeGateway::start_in(dir, keys).await;
    let path = format!("/v1/sessions/{}", id_of(&alices));
    let own = gw.request(Method::GET, &path, Some(ALICE), None).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let other = gw.request(Method::GET, &path, Some(BOB), None).await;
    assert_error((other.status, &other.body), 404, "session_not_found");
    let bobs = gw
        .request(Method::GET, "/v1/sessions", Some(BOB), None)
        .await;
    assert_eq!(bobs.body["sessions"], json!([]), "{}", bobs.body);
    gw.stop().await;
}
