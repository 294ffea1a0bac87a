//! The live viewer is not a client: with real Chromium, a viewer's input restarts the
//! inactivity timer, yet a connected viewer never keeps a session past its timeout, and it
//! is told when the session ends.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The viewer's socket of `session`, opened as ingot's own page would.
async fn viewer_socket(gw: &Gateway, session: &Value) -> Socket {
    let debug = session["debugUrl"].as_str().expect("debugUrl");
    let url = debug
        .replace("http://", "ws://")
        .replace("/viewer?", "/viewer/ws?");
    let mut request = url.into_client_request().expect("request");
    let origin = format!("http://127.0.0.1:{}", gw.port);
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("origin"));
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the viewer's socket")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_input_counts_as_activity_but_the_timeout_still_ends_the_session() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    // Both timeouts count from the start of the create, which takes up to two seconds on a
    // loaded machine; the test's clock starts before it, so it never runs behind the
    // gateway's.
    let started = std::time::Instant::now();
    let session = gw
        .create(json!({"timeout": 10_000, "inactivityTimeout": 4_000}))
        .await;
    let id = session["id"].as_str().expect("id").to_owned();
    let mut ws = viewer_socket(&gw, &session).await;
    // Input every 500 ms until 8 s in: the inactivity timeout passes several times over, the
    // session lives. The last input comes at least 7.5 s in, so inactivity could end it no
    // sooner than 11.5 s: the 10 s timeout comes first.
    let moving = async {
        let mut i = 0;
        while started.elapsed() < std::time::Duration::from_secs(8) {
            let input = json!({"type": "mouse", "event": "mouseMoved", "x": 10 + i, "y": 10, "button": "none", "clickCount": 0, "modifiers": 0});
            ws.send(Message::text(input.to_string()))
                .await
                .expect("send");
            i += 1;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    };
    moving.await;
    assert_eq!(
        gw.session(&id).await["status"],
        "live",
        "viewer input is activity"
    );
    // The viewer stays connected; the session still ends at its timeout (10 s, before the
    // inactivity timeout could), and the viewer hears.
    let mut ended = None;
    for _ in 0..500 {
        match tokio::time::timeout(secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let message: Value = serde_json::from_str(&text).expect("JSON");
                if message["type"] == "ended" {
                    ended = Some(message);
                    break;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the viewer's socket ended without a word: {other:?}"),
        }
    }
    assert_eq!(ended.expect("told")["reason"], "timeout");
    let (view, _) = gw.wait_ended(&id, secs(5)).await;
    assert_eq!(view["releaseReason"], "timeout");
    gw.assert_clean(secs(10)).await;
}

/// The first binary message (a frame) on a viewer's socket; panics if none comes in time.
async fn first_frame(ws: &mut Socket) -> Vec<u8> {
    for _ in 0..100 {
        match tokio::time::timeout(secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(frame)))) => return frame.to_vec(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no frame: {other:?}"),
        }
    }
    panic!("no frame among the first 100 messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_a_still_page_gets_the_frame_at_once() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    let id = session["id"].as_str().expect("id").to_owned();
    let mut first = viewer_socket(&gw, &session).await;
    let frame = first_frame(&mut first).await;
    let header_len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    let header: Value = serde_json::from_slice(&frame[4..4 + header_len]).expect("header");
    assert!(
        header["width"].as_f64().is_some_and(|w| w > 0.0),
        "{header}"
    );
    assert_eq!(
        &frame[4 + header_len..4 + header_len + 2],
        &[0xff, 0xd8],
        "a JPEG"
    );
    // The page is still: Chromium sends no new frame, yet a second viewer gets the kept one.
    let mut second = viewer_socket(&gw, &session).await;
    first_frame(&mut second).await;
    gw.release(&id).await;
}
