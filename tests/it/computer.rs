//! Steel's computer API with real Chromium: every action, checked against the page's own
//! event log; screenshots decode as PNGs of the page's size; bad actions and points get a
//! 400 naming the field; an ended session 409.

use base64::Engine;
use serde_json::{Value, json};

use crate::common::*;

/// A 800×600 page that logs the input it receives in `window.log`.
fn site() -> Vec<(&'static str, String)> {
    vec![(
        "/",
        "<html><body style='margin:0;height:3000px'>\
         <button id=b style='position:absolute;left:100px;top:100px;width:100px;height:50px'>b</button>\
         <input id=t style='position:absolute;left:100px;top:300px;width:200px'>\
         <script>window.log = []; const add = (e) => log.push(e);\
         for (const type of ['mousedown', 'mouseup', 'click', 'dblclick', 'contextmenu']) \
           addEventListener(type, (e) => add({type, x: e.clientX, y: e.clientY, button: e.button, detail: e.detail, shift: e.shiftKey}));\
         addEventListener('mousemove', (e) => add({type: 'mousemove', x: e.clientX, y: e.clientY, buttons: e.buttons}));\
         addEventListener('wheel', (e) => add({type: 'wheel', dy: e.deltaY}));\
         addEventListener('keydown', (e) => add({type: 'keydown', key: e.key, ctrl: e.ctrlKey}));\
         </script></body></html>"
            .into(),
    )]
}

async fn act(gw: &Gateway, id: &str, body: Value) -> (u16, Value) {
    gw.post(&format!("/v1/sessions/{id}/computer"), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_computer_action_reaches_the_page() {
    let _shared = shared().await;
    let site = PageServer::start(site()).await;
    let gw = Gateway::start(&[]).await;
    let session = gw
        .create(json!({"dimensions": {"width": 800, "height": 600}}))
        .await;
    let id = session["id"].as_str().expect("id").to_owned();
    let mut cdp = Cdp::connect(session["websocketUrl"].as_str().expect("url")).await;
    let page = cdp.attach_first_page().await;
    cdp.navigate(&page, &site.url("/")).await;
    let log = |entries: Value, kind: &str| -> Vec<Value> {
        entries
            .as_array()
            .expect("log")
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    };

    let (status, moved) = act(
        &gw,
        &id,
        json!({"action": "move_mouse", "coordinates": [150, 120]}),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    let (_, cursor) = act(&gw, &id, json!({"action": "get_cursor_position"})).await;
    assert_eq!(cursor["output"], "X=150,Y=120");
    let (_, clicked) = act(
        &gw,
        &id,
        json!({"action": "click_mouse", "button": "left", "num_clicks": 2, "hold_keys": ["shift"]}),
    )
    .await;
    assert!(clicked.get("error").is_none(), "{clicked}");
    act(
        &gw,
        &id,
        json!({"action": "click_mouse", "button": "right", "coordinates": [10, 10]}),
    )
    .await;
    act(
        &gw,
        &id,
        json!({"action": "drag_mouse", "path": [[20, 20], [40, 40], [60, 60]]}),
    )
    .await;
    let seen = cdp.eval(&page, "log").await;
    let clicks: Vec<Value> = log(seen.clone(), "click")
        .into_iter()
        .filter(|c| c["x"] == 150)
        .collect();
    assert_eq!(clicks.len(), 2, "{seen}");
    assert_eq!(
        (&clicks[0]["x"], &clicks[0]["y"], &clicks[0]["shift"]),
        (&json!(150), &json!(120), &json!(true))
    );
    assert_eq!(
        log(seen.clone(), "dblclick").len(),
        1,
        "two clicks make a double click"
    );
    let menu = log(seen.clone(), "contextmenu");
    assert_eq!((menu.len(), &menu[0]["x"]), (1, &json!(10)), "{seen}");
    assert!(
        log(seen.clone(), "mousemove")
            .iter()
            .any(|m| m["x"] == 40 && m["buttons"] == 1),
        "the drag moves with the button held: {seen}"
    );

    act(
        &gw,
        &id,
        json!({"action": "click_mouse", "button": "left", "coordinates": [150, 310]}),
    )
    .await;
    let (_, typed) = act(
        &gw,
        &id,
        json!({"action": "type_text", "text": "Hi there!"}),
    )
    .await;
    assert!(typed.get("error").is_none(), "{typed}");
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#t').value").await,
        "Hi there!"
    );
    act(&gw, &id, json!({"action": "press_key", "keys": ["ctrl+a"]})).await;
    act(
        &gw,
        &id,
        json!({"action": "press_key", "keys": ["BackSpace"]}),
    )
    .await;
    assert_eq!(
        cdp.eval(&page, "document.querySelector('#t').value").await,
        ""
    );
    let keys = log(cdp.eval(&page, "log").await, "keydown");
    assert!(
        keys.iter().any(|k| k["key"] == "a" && k["ctrl"] == true),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k["key"] == "Backspace"), "{keys:?}");

    let (_, scrolled) = act(
        &gw,
        &id,
        json!({"action": "scroll", "coordinates": [400, 300], "delta_y": 500, "screenshot": true}),
    )
    .await;
    let wheel = log(cdp.eval(&page, "log").await, "wheel");
    assert_eq!(
        wheel.first().map(|w| &w["dy"]),
        Some(&json!(500)),
        "{wheel:?}"
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(scrolled["base64_image"].as_str().expect("a screenshot"))
        .expect("base64");
    assert_eq!(&png[1..4], b"PNG");
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((size(16), size(20)), (800, 600), "the page's size");
    let (_, waited) = act(&gw, &id, json!({"action": "wait", "duration": 0.05})).await;
    assert_eq!(waited, json!({}));
    let (_, shot) = act(&gw, &id, json!({"action": "take_screenshot"})).await;
    assert!(shot["base64_image"].as_str().is_some_and(|s| s.len() > 100));

    for (body, field) in [
        (json!({"action": "teleport"}), "action"),
        (
            json!({"action": "move_mouse", "coordinates": [800, 10]}),
            "coordinates",
        ),
        (
            json!({"action": "click_mouse", "button": "left", "coordinates": [5, 9000]}),
            "coordinates",
        ),
        (json!({"action": "press_key", "keys": ["Hyper"]}), "keys[0]"),
    ] {
        let (status, error) = act(&gw, &id, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error["message"].as_str().expect("message").contains(field),
            "{body}: {error}"
        );
    }
    cdp.close().await;
    gw.release(&id).await;
    let (status, ended) = act(&gw, &id, json!({"action": "take_screenshot"})).await;
    assert_eq!(
        (status, &ended["error"]["code"]),
        (409, &json!("session_ended"))
    );
    let (status, _) = act(
        &gw,
        &uuid::Uuid::new_v4().to_string(),
        json!({"action": "take_screenshot"}),
    )
    .await;
    assert_eq!(status, 404);
}
