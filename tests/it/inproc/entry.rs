//! A create's entry check (id unused, tenant within quota) in a cluster, before a browser is
//! spent, and the typed marks a node puts on its answers to another node: in-process nodes on
//! one PostgreSQL.

use serde_json::json;

use super::*;

/// The cluster's secret, as the first node stored it.
fn secret(pg: &crate::common::postgres::Postgres, db: &str) -> String {
    pg.sql(db, "SELECT secret FROM ingot_cluster WHERE id = 1")
        .trim()
        .to_owned()
}

/// A create by `key` as a node of the cluster passes it (with `secret`), or as a client
/// (without): the status, the internal marks and the body.
async fn create(
    gw: &FakeGateway,
    key: &str,
    secret: Option<&str>,
) -> (u16, Option<String>, Option<String>, Value) {
    let mut request = gw
        .http
        .post(gw.url("/v1/sessions"))
        .header("steel-api-key", key)
        .json(&json!({}));
    if let Some(secret) = secret {
        request = request.header("x-ingot-cluster-secret", secret);
    }
    let answer = request.send().await.expect("answer");
    let mark = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (refusal, created) = (mark("x-ingot-refusal"), mark("x-ingot-session-id"));
    let status = answer.status().as_u16();
    let body = answer.json::<Value>().await.unwrap_or_default();
    (status, refusal, created, body)
}

/// A tenant at its quota on one node is refused on another before that node spends a
/// browser; that node marks the refusal for a node that passed the create on
/// (`x-ingot-refusal: tenant_quota`) and a created session with its id, and a client never
/// sees either mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_checked_across_nodes_before_a_launch_and_refusals_are_typed() {
    let pg = crate::common::postgres::Postgres::start();
    pg.create_database("entry_marks");
    let url = pg.url("entry_marks");
    let node = |name: &'static str| {
        let url = url.clone();
        move |s: &mut Settings| {
            s.api_keys = Some(TENANTS.into());
            s.max_sessions_per_tenant = Some(1);
            s.database_url = Some(url);
            s.node_id = Some(name.into());
        }
    };
    let a = FakeGateway::start_with(node("a")).await;
    let b = FakeGateway::start_with(node("b")).await;
    let secret = secret(&pg, "entry_marks");
    a.create_as(Some(ALICE), json!({})).await;

    let (status, refusal, created, body) = create(&b, ALICE, None).await;
    assert_error((status, &body), 429, "tenant_quota");
    assert_eq!((refusal, created), (None, None), "a client sees no mark");
    let (status, refusal, _, peer_body) = create(&b, ALICE, Some(&secret)).await;
    assert_eq!(status, 429);
    assert_eq!(refusal.as_deref(), Some("tenant_quota"));
    assert_eq!(peer_body, body, "the public answer is the same");
    assert_eq!(
        b.host.launches(),
        1,
        "no browser was started over the quota"
    );

    let (status, refusal, created, body) = create(&b, BOB, Some(&secret)).await;
    assert_eq!((status, refusal), (200, None), "{body}");
    assert_eq!(created.as_deref(), Some(id_of(&body).as_str()));
    let (status, _, created, body) = create(&b, BOB, None).await;
    assert_eq!(
        (status, created),
        (429, None),
        "bob is at his quota: {body}"
    );
    b.stop().await;
    a.stop().await;
}
