//! One scenario, one place: behaviours that both gateways show, each written once as a
//! function generic over [`Harness`]. `inproc::scenarios` runs every one in-process on the
//! fake browser host (the default, milliseconds); the tests here run each once against a
//! real `ingot` binary and real Chromium (the slow suite). A scenario asserts only what
//! both gateways must do; what only one of them can show (a fake browser's kill count, a
//! real browser's process group) stays with its runner. The tenants scenario runs on
//! Chromium inside `tenants::tenants_see_and_touch_only_their_own_sessions`, on the gateway
//! that test configures.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::harness::Harness;
use crate::common::{Gateway, shared};
use crate::inproc::{CdpClient, assert_error, assert_upgrade_refused, id_of};

/// Values of every JSON type, for fields that want another.
const JUNK: [&str; 10] = [
    "true",
    "false",
    "7",
    "-1",
    "1.5",
    "\"x\"",
    "[]",
    "[1]",
    "{}",
    "{\"a\":1}",
];

fn junk() -> Vec<Value> {
    JUNK.iter()
        .map(|j| serde_json::from_str(j).expect("JSON"))
        .collect()
}

/// A session with a client that has made a round trip, checked before and after the
/// hostile part of a scenario: every other session carries on.
pub struct Bystander {
    id: String,
    cdp: CdpClient,
}

impl Bystander {
    pub async fn start(gw: &impl Harness) -> Bystander {
        let session = gw.create(json!({})).await;
        let mut bystander = Bystander {
            id: id_of(&session),
            cdp: gw.connect(&session).await,
        };
        bystander.check(gw).await;
        bystander
    }

    /// The gateway is healthy, the session live, and its client still answered.
    pub async fn check(&mut self, gw: &impl Harness) {
        assert_eq!(gw.get("/healthz").await.0, 200, "the gateway is healthy");
        assert_eq!(gw.session(&self.id).await["status"], "live");
        let (_, reply) = self.cdp.call("Browser.getVersion", json!({}), None).await;
        assert!(
            reply["result"]["product"]
                .as_str()
                .is_some_and(|p| !p.is_empty()),
            "{reply}"
        );
    }

    /// Checks one last time and releases the session.
    pub async fn finish(mut self, gw: &impl Harness) {
        self.check(gw).await;
        self.cdp.close().await;
        release(gw, &self.id).await;
    }
}

/// Releases a session and asserts Steel's answer.
pub async fn release(gw: &impl Harness, id: &str) {
    let (status, body) = gw
        .post(&format!("/v1/sessions/{id}/release"), json!({}))
        .await;
    assert_eq!(status, 200, "release {id}: {body}");
    assert_eq!(
        body,
        json!({"success": true, "message": "Session released successfully"})
    );
}

fn assert_ended(session: &Value, status: &str, reason: &str) {
    assert_eq!(
        (&session["status"], &session["releaseReason"]),
        (&json!(status), &json!(reason)),
        "{session}"
    );
}

/// Create-body validation: every wrong value of every field gets 400 `invalid_request`
/// naming the field (a nested one by its path), a body that is not a JSON object or is cut
/// short gets 400, one over 64 KiB gets 413; none of them starts a browser or shows a
/// session, a bystander session carries on, and the same fields at their defaults are
/// accepted together (the refusals are about values).
pub async fn bad_create_bodies_get_400_naming_the_field_and_create_nothing(gw: &impl Harness) {
    let bystander = Bystander::start(gw).await;
    let mut refused = 0;
    for (body, field) in named_mistakes()
        .into_iter()
        .chain(mistyped_fields())
        .chain(mistyped_dimensions())
        .chain(steel_options_ingot_does_not_implement())
    {
        let (status, err) = gw.post("/v1/sessions", body.clone()).await;
        let message = assert_error((status, &err), 400, "invalid_request");
        // A nested field is named by its path (quoted): "sessionContext.a": ...
        let named = message.trim_start_matches('"');
        assert!(
            named.starts_with(&format!("{field}:")) || named.starts_with(&format!("{field}.")),
            "the error for {body} names {field} first: {message}"
        );
        refused += 1;
    }
    eprintln!("{refused} mistaken create bodies refused with 400");
    bodies_cut_short_or_too_large_are_refused(gw).await;

    let (_, list) = gw.get("/v1/sessions").await;
    let listed: Vec<String> = list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(
        listed,
        std::slice::from_ref(&bystander.id),
        "no bad body made a session"
    );
    assert_eq!(
        gw.browsers_running(),
        1,
        "only the bystander's browser runs"
    );

    let defaults = gw
        .create(json!({
            "solveCaptcha": false, "useProxy": false, "blockAds": null, "region": null,
            "sessionContext": {}, "stealthConfig": {}, "isSelenium": false,
            "inactivityTimeout": null, "headless": true, "userAgent": null, "timeout": null,
        }))
        .await;
    release(gw, &id_of(&defaults)).await;
    bystander.finish(gw).await;
    gw.wait_clean().await;
}

/// Bodies with one mistake each, and the field the error must name.
fn named_mistakes() -> Vec<(Value, &'static str)> {
    vec![
        (json!({"timeout": 10}), "timeout"),
        (json!({"timeout": 86_400_001}), "timeout"),
        (json!({"timeout": "60000"}), "timeout"),
        (json!({"timeout": 1500.5}), "timeout"),
        (json!({"sessionId": "not-a-uuid"}), "sessionId"),
        (json!({"userAgent": ""}), "userAgent"),
        (
            json!({"proxyUrl": "socks5://user:pass@127.0.0.1:9"}),
            "proxyUrl",
        ),
        (json!({"headless": "false"}), "headless"),
        (
            json!({"sessionContext": {"cookies": [{"name": "a", "value": "b"}]}}),
            "sessionContext",
        ),
        (json!({"region": "us-east"}), "region"),
        (
            json!({"stealthConfig": {"humanizeInteractions": true}}),
            "stealthConfig",
        ),
        (
            json!({"dimensions": {"width": 10, "depth": 10}}),
            "dimensions.depth",
        ),
        (json!({"noSuchOption": 1}), "noSuchOption"),
        (json!({"sessionID": "x"}), "sessionID"),
        (json!([1, 2]), "body"),
    ]
}

/// Every honoured field with every JSON type it does not take.
fn mistyped_fields() -> Vec<(Value, &'static str)> {
    // (field, the junk values it accepts)
    let honoured: [(&str, &[Value]); 8] = [
        ("sessionId", &[]),
        ("timeout", &[]),
        ("inactivityTimeout", &[]),
        ("userAgent", &[json!("x")]),
        ("proxyUrl", &[]),
        ("headless", &[json!(true), json!(false)]),
        ("fullscreen", &[json!(true), json!(false)]),
        ("sessionContext", &[json!({})]),
    ];
    let mut bodies = Vec::new();
    for (field, accepted) in honoured {
        for value in junk().into_iter().filter(|v| !accepted.contains(v)) {
            bodies.push((json!({ field: value }), field));
        }
    }
    bodies
}

/// `dimensions` of every wrong type, each side of every wrong type, and an unknown side.
fn mistyped_dimensions() -> Vec<(Value, &'static str)> {
    let mut bodies = Vec::new();
    for value in junk() {
        if !value.is_object() {
            bodies.push((json!({ "dimensions": value }), "dimensions"));
        }
        if value == json!(7) {
            continue; // a valid size
        }
        for side in ["width", "height"] {
            let mut dims = json!({"width": 800, "height": 600});
            dims[side] = value.clone();
            let field = if side == "width" {
                "dimensions.width"
            } else {
                "dimensions.height"
            };
            bodies.push((json!({ "dimensions": dims }), field));
        }
    }
    bodies.push((
        json!({"dimensions": {"width": 800, "height": 600, "depth": 1}}),
        "dimensions.depth",
    ));
    bodies
}

/// Steel options ingot does not implement: anything but their default is refused.
fn steel_options_ingot_does_not_implement() -> Vec<(Value, &'static str)> {
    let steel = [
        "solveCaptcha",
        "useProxy",
        "blockAds",
        "region",
        "stealthConfig",
        "isSelenium",
    ];
    let mut bodies = Vec::new();
    for field in steel {
        for value in [
            json!(true),
            json!(1),
            json!("x"),
            json!([1]),
            json!({"a": 1}),
        ] {
            bodies.push((json!({ field: value }), field));
        }
    }
    bodies
}

async fn bodies_cut_short_or_too_large_are_refused(gw: &impl Harness) {
    let (status, err) = gw
        .post_bytes("/v1/sessions", b"{\"timeout\":".to_vec())
        .await;
    let message = assert_error((status, &err), 400, "invalid_request");
    assert!(message.contains("body"), "{message}");
    let (status, err) = gw.post_bytes("/v1/sessions", vec![b' '; 70 * 1024]).await;
    assert_eq!(status, 413, "{err}");
    assert!(err["message"].is_string(), "{err}");
}

/// Release: the session's clients are closed with 1000, it ends `released` /
/// `user_requested` with a billed minute, its browser is reaped before the answer, and an
/// upgrade to it is refused with 410. Again (with an empty body, as the SDKs send it) it
/// answers the same and changes nothing. Release-all answers Steel's message and ends
/// every live session, leaving no browser. Returns the two sessions' ids.
pub async fn release_closes_clients_with_1000_and_release_all_ends_every_session(
    gw: &impl Harness,
) -> (String, String) {
    let session = gw.create(json!({})).await;
    let a = id_of(&session);
    let b = id_of(&gw.create(json!({"timeout": 60_000})).await);
    let mut clients = [gw.connect(&session).await, gw.connect(&session).await];
    for cdp in &mut clients {
        cdp.call("Browser.getVersion", json!({}), None).await;
    }
    release(gw, &a).await;
    assert!(!gw.browser_running(&a), "reaped before the answer");
    for cdp in &mut clients {
        let (code, reason) = cdp.closed().await;
        assert_eq!(code, 1000, "close code on release ({reason})");
    }
    let ended = gw.session(&a).await;
    assert_ended(&ended, "released", "user_requested");
    assert_eq!(ended["creditsUsed"], 1);

    let (status, body) = gw
        .post_bytes(&format!("/v1/sessions/{a}/release"), Vec::new())
        .await;
    assert_eq!((status, &body["success"]), (200, &json!(true)), "{body}");
    let again = gw.session(&a).await;
    assert_eq!(
        (
            &again["status"],
            &again["releaseReason"],
            &again["duration"]
        ),
        (
            &ended["status"],
            &ended["releaseReason"],
            &ended["duration"]
        ),
        "an ended session's status, reason and duration are frozen"
    );
    assert_upgrade_refused(&gw.ws_url(&a), 410).await;

    let (status, body) = gw.post_bytes("/v1/sessions/release", Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"success": true, "message": "All sessions released successfully"})
    );
    assert_ended(&gw.session(&b).await, "released", "user_requested");
    assert_ended(&gw.session(&a).await, "released", "user_requested");
    let (_, live) = gw.get("/v1/sessions?status=live").await;
    assert_eq!(live["totalCount"], 0, "{live}");
    gw.wait_clean().await;
    (a, b)
}

/// A crash: the session fails (`browser_crashed`) within a second of its browser's death,
/// its client is closed with 1011, everything of the browser is reaped, an upgrade to it is
/// refused with 410, and its slot is free again. Returns the crashed session's id.
pub async fn a_crashed_browser_fails_the_session_and_closes_clients_with_1011(
    gw: &impl Harness,
) -> String {
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let mut cdp = gw.connect(&session).await;
    // The client is really attached and proxied before the crash.
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert!(reply["result"]["product"].is_string(), "{reply}");

    gw.kill_browser(&id);
    let killed = Instant::now();
    let ended = gw.wait_ended(&id).await;
    let noticed = killed.elapsed();
    assert_ended(&ended, "failed", "browser_crashed");
    assert!(
        noticed < Duration::from_secs(1),
        "noticed {noticed:?} after"
    );
    let (code, reason) = cdp.closed().await;
    assert_eq!(code, 1011, "close code on crash ({reason})");
    gw.wait_clean().await;
    assert_upgrade_refused(&gw.ws_url(&id), 410).await;
    // The slot is free again.
    let next = gw.create(json!({})).await;
    release(gw, &id_of(&next)).await;
    id
}

/// A timeout: the client is closed with 1001 (with a reason), the session ends `released`
/// / `timeout` having lived its timeout (and at most [`Harness::slack`] more), and its
/// browser is reaped. Returns the session's id.
pub async fn a_session_that_times_out_is_released_and_its_client_gets_1001(
    gw: &impl Harness,
) -> String {
    let timeout = gw.short_timeout_ms();
    let session = gw.create(json!({"timeout": timeout})).await;
    let id = id_of(&session);
    let mut cdp = gw.connect(&session).await;
    cdp.call("Browser.getVersion", json!({}), None).await;
    let (code, reason) = cdp.closed().await;
    assert_eq!(code, 1001, "close code on timeout ({reason})");
    assert!(!reason.is_empty(), "the close frame says why");
    let ended = gw.wait_ended(&id).await;
    assert_ended(&ended, "released", "timeout");
    let lived = ended["duration"].as_u64().expect("duration");
    let longest = timeout + gw.slack().as_millis() as u64;
    assert!(
        (timeout..longest).contains(&lived),
        "lived {lived} ms, not within [{timeout}, {longest})"
    );
    gw.wait_clean().await;
    id
}

/// Steel's Session JSON: every field a client reads, of the right type and default; the
/// viewer links carry the session's token; retrieve answers the same session; a create's
/// timeout and size are echoed; a released session shows `released` / `user_requested` and
/// a billed minute. Returns the ids of the default session and the sized one.
pub async fn create_answers_steels_session_json_and_retrieve_matches(
    gw: &impl Harness,
) -> (String, String) {
    let s = gw.create(json!({})).await;
    let id = id_of(&s);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "id is a UUID: {id}");
    assert_eq!(s["status"], "live");
    assert_eq!(s["websocketUrl"], gw.ws_url(&id));
    assert_eq!(s["timeout"], 300_000, "the default timeout");
    assert_eq!(s["dimensions"], json!({"width": 1920, "height": 1080}));
    let debug = s["debugUrl"].as_str().expect("debugUrl");
    let token = debug
        .strip_prefix(&gw.url(&format!("/v1/sessions/{id}/viewer?token=")))
        .unwrap_or_else(|| panic!("the live viewer with its token: {debug}"));
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    assert_eq!(
        s["sessionViewerUrl"],
        gw.url(&format!("/v1/sessions/{id}/view?token={token}"))
    );
    for (field, value) in [
        ("eventCount", json!(0)),
        ("proxyBytesUsed", json!(0)),
        ("proxySource", Value::Null),
        ("releaseReason", Value::Null),
        ("optimizeBandwidth", json!({})),
        ("headless", json!(true)),
        ("isSelenium", json!(false)),
        ("solveCaptcha", json!(false)),
    ] {
        let present = s.as_object().is_some_and(|o| o.contains_key(field));
        assert!(present && s[field] == value, "{field} is {value} in {s}");
    }
    assert!(s["duration"].is_u64() && s["creditsUsed"].is_u64(), "{s}");
    assert!(
        s["userAgent"].as_str().is_some_and(|ua| !ua.is_empty()),
        "{s}"
    );
    let created = s["createdAt"].as_str().expect("createdAt");
    time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("createdAt is RFC 3339 ({e}): {created}"));
    let fraction = created.rsplit_once('.').map_or("", |(_, f)| f);
    assert!(fraction.len() == 4 && fraction.ends_with('Z'), "{created}");

    let again = gw.session(&id).await;
    assert_eq!(
        (&again["id"], &again["createdAt"], &again["status"]),
        (&s["id"], &s["createdAt"], &json!("live"))
    );
    assert!(again["duration"].as_u64() >= s["duration"].as_u64());

    let sized = gw
        .create(json!({"timeout": 60_000, "dimensions": {"width": 800, "height": 600}}))
        .await;
    assert_eq!(sized["timeout"], 60_000);
    assert_eq!(sized["dimensions"], json!({"width": 800, "height": 600}));

    release(gw, &id).await;
    let ended = gw.session(&id).await;
    assert_ended(&ended, "released", "user_requested");
    assert_eq!(ended["creditsUsed"], 1);
    let sized = id_of(&sized);
    release(gw, &sized).await;
    gw.wait_clean().await;
    (id, sized)
}

/// The list: newest first; `limit` pages, a full page names the next cursor and paging runs
/// to an empty page, seeing every session once; `status` filters and only a filtered list
/// counts (`totalCount`); bad `limit`, `status` and `cursorId` get 400.
pub async fn list_is_newest_first_and_pages_with_limit_and_cursor(gw: &impl Harness) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(&gw.create(json!({})).await));
    }
    release(gw, &ids[0]).await;
    let listed = |page: &Value| -> Vec<String> {
        page["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(id_of)
            .collect()
    };
    let (status, first) = gw.get("/v1/sessions?limit=2").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(listed(&first), [ids[2].clone(), ids[1].clone()]);
    assert_eq!(
        first["nextCursor"], ids[1],
        "a full page names the next cursor"
    );
    assert!(
        first.get("totalCount").is_none(),
        "only filtered lists count"
    );
    let (_, second) = gw
        .get(&format!("/v1/sessions?limit=2&cursorId={}", ids[1]))
        .await;
    assert_eq!(listed(&second), [ids[0].clone()]);
    assert_eq!(second["sessions"][0]["status"], "released");
    assert_eq!(second["nextCursor"], Value::Null);
    let (_, empty) = gw.get(&format!("/v1/sessions?cursorId={}", ids[0])).await;
    assert_eq!(listed(&empty), Vec::<String>::new(), "then an empty page");

    let (_, live) = gw.get("/v1/sessions?status=live").await;
    assert_eq!(live["totalCount"], 2);
    assert_eq!(listed(&live), [ids[2].clone(), ids[1].clone()]);
    let (_, released) = gw.get("/v1/sessions?status=released").await;
    assert_eq!(
        (released["totalCount"].clone(), listed(&released)),
        (json!(1), vec![ids[0].clone()])
    );
    let (_, all) = gw.get("/v1/sessions").await;
    assert_eq!(listed(&all).len(), 3);
    let unknown = uuid::Uuid::new_v4();
    for query in [
        "status=sleeping".to_owned(),
        "limit=0".to_owned(),
        "limit=101".to_owned(),
        "cursorId=nope".to_owned(),
        format!("cursorId={unknown}"),
    ] {
        let (status, err) = gw.get(&format!("/v1/sessions?{query}")).await;
        assert_error((status, &err), 400, "invalid_request");
    }
    for id in &ids[1..] {
        release(gw, id).await;
    }
    gw.wait_clean().await;
}

/// `Browser.close` from a client: it gets its reply, then it and every other client of the
/// session are closed with 1000, the session ends `released` / `browser_closed`, and its
/// browser is reaped. Returns the session's id.
pub async fn browser_close_replies_then_closes_clients_with_1000_and_releases(
    gw: &impl Harness,
) -> String {
    let session = gw.create(json!({})).await;
    let id = id_of(&session);
    let mut a = gw.connect(&session).await;
    let mut b = gw.connect(&session).await;
    b.call("Browser.getVersion", json!({}), None).await;
    a.send_text(r#"{"id": 9, "method": "Browser.close"}"#).await;
    assert_eq!(a.next().await, json!({"id": 9, "result": {}}));
    for client in [&mut a, &mut b] {
        let (code, reason) = client.closed().await;
        assert_eq!(code, 1000, "close code after Browser.close ({reason})");
    }
    assert_ended(&gw.wait_ended(&id).await, "released", "browser_closed");
    gw.wait_clean().await;
    id
}

/// Tenants: another tenant (`other`) sees nothing of `owner`'s live `session`. Its id
/// answers exactly as an unknown one (404 `session_not_found`, the same body) to retrieve,
/// release, discovery and the WebSocket; it is not a cursor; `other`'s list is empty and
/// `other`'s release-all ends `other`'s sessions only; `owner`'s session goes on and
/// `owner` still drives it. `other` must have no session when this starts.
pub async fn another_tenants_session_answers_as_an_unknown_one(
    gw: &impl Harness,
    owner: &str,
    other: &str,
    session: &Value,
) {
    let id = id_of(session);
    let unknown = uuid::Uuid::new_v4().to_string();
    for (method, path) in [
        ("GET", "/v1/sessions/{}"),
        ("POST", "/v1/sessions/{}/release"),
        ("GET", "/json/version?sessionId={}"),
    ] {
        let (s1, b1) = gw
            .request_as(method, &path.replace("{}", &id), Some(other))
            .await;
        let (s2, b2) = gw
            .request_as(method, &path.replace("{}", &unknown), Some(other))
            .await;
        assert_error((s1, &b1), 404, "session_not_found");
        assert_eq!(s2, 404, "{b2}");
        assert_eq!(
            b1.to_string().replace(&id, "ID"),
            b2.to_string().replace(&unknown, "ID"),
            "{method} {path}: the same answer as an unknown id"
        );
    }
    let (_, list) = gw.request_as("GET", "/v1/sessions", Some(other)).await;
    assert_eq!(
        list["sessions"],
        json!([]),
        "{other} lists none of {owner}'s"
    );
    let cursor = format!("/v1/sessions?cursorId={id}");
    let (status, _) = gw.request_as("GET", &cursor, Some(other)).await;
    assert_eq!(status, 400, "someone else's id is not a cursor");
    let (status, _) = gw.request_as("GET", "/json/version", Some(other)).await;
    assert_eq!(status, 400, "{other} has no live session to stand for");
    let ws = session["websocketUrl"].as_str().expect("websocketUrl");
    assert_upgrade_refused(&format!("{ws}&apiKey={other}"), 404).await;

    let (status, own) = gw.request_as("POST", "/v1/sessions", Some(other)).await;
    assert_eq!(status, 200, "{own}");
    let (status, _) = gw
        .request_as("POST", "/v1/sessions/release", Some(other))
        .await;
    assert_eq!(
        status, 200,
        "{other}'s release-all answers, for its sessions only"
    );
    let own_path = format!("/v1/sessions/{}", id_of(&own));
    let (_, own_now) = gw.request_as("GET", &own_path, Some(other)).await;
    assert_ended(&own_now, "released", "user_requested");

    let path = format!("/v1/sessions/{id}");
    let (status, now) = gw.request_as("GET", &path, Some(owner)).await;
    assert_eq!((status, &now["status"]), (200, &json!("live")), "{now}");
    let mut cdp = CdpClient::connect(&format!("{ws}&apiKey={owner}")).await;
    let (_, reply) = cdp.call("Browser.getVersion", json!({}), None).await;
    assert!(reply["result"]["product"].is_string(), "{reply}");
    cdp.close().await;
}

// ---------------------------------------------------------------------------------------
// Each scenario once against a real gateway and real Chromium.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_bad_create_bodies_get_400_naming_the_field_and_create_nothing() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    bad_create_bodies_get_400_naming_the_field_and_create_nothing(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_release_closes_clients_with_1000_and_release_all_ends_every_session() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    release_closes_clients_with_1000_and_release_all_ends_every_session(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_a_crashed_browser_fails_the_session_and_closes_clients_with_1011() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    a_crashed_browser_fails_the_session_and_closes_clients_with_1011(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_a_session_that_times_out_is_released_and_its_client_gets_1001() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    a_session_that_times_out_is_released_and_its_client_gets_1001(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_create_answers_steels_session_json_and_retrieve_matches() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    create_answers_steels_session_json_and_retrieve_matches(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_list_is_newest_first_and_pages_with_limit_and_cursor() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    list_is_newest_first_and_pages_with_limit_and_cursor(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_browser_close_replies_then_closes_clients_with_1000_and_releases() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    browser_close_replies_then_closes_clients_with_1000_and_releases(&gw).await;
}
