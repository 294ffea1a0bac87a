//! The live viewer's WebSocket protocol: the messages a viewer page sends
//! ([`ClientMessage`]), the text messages it is sent ([`ServerMessage`]; frames are binary,
//! built by [`super::screen::Frame`]), and how a client message becomes a CDP command.
//!
//! Owns the wire format that `assets/viewer.html` speaks (documented in `assets/README.md`)
//! and the checks on a person's input (coordinates clamped to the page, pastes bounded, only
//! web URLs opened). Pure translation: sends nothing, knows no socket and no session.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::input::{self, Button, MouseKind};
use super::screen::Tab;

/// Largest text a viewer may paste at once, in characters.
pub(crate) const MAX_PASTE: usize = 10_000;
/// Largest wheel delta, in CSS pixels, either way.
const MAX_DELTA: f64 = 10_000.0;
/// The modifier bits CDP knows (Alt, Ctrl, Meta, Shift).
const MODIFIER_BITS: u64 = 0xf;

/// A message from the viewer page (text JSON, tagged by `type`). Members the page sends
/// that the server does not read (a key's `code` and `text`) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum ClientMessage {
    /// Mouse on the canvas, at page CSS pixels.
    #[serde(rename_all = "camelCase")]
    Mouse {
        event: MouseEvent,
        x: f64,
        y: f64,
        #[serde(default = "no_button")]
        button: String,
        #[serde(default)]
        click_count: u64,
        #[serde(default)]
        modifiers: u64,
    },
    /// A wheel turn on the canvas.
    #[serde(rename_all = "camelCase")]
    Wheel {
        x: f64,
        y: f64,
        #[serde(default)]
        delta_x: f64,
        #[serde(default)]
        delta_y: f64,
        #[serde(default)]
        modifiers: u64,
    },
    /// A key pressed or released while the canvas has focus.
    Key {
        event: KeyEvent,
        key: String,
        #[serde(default)]
        modifiers: u64,
    },
    /// A paste.
    Text {
        text: String,
    },
    /// Watch another page (allowed to read-only viewers too).
    #[serde(rename_all = "camelCase")]
    Switch {
        page_id: String,
    },
    /// Open a URL in the watched page.
    Navigate {
        url: String,
    },
    /// The toolbar's buttons.
    Back,
    Forward,
    Reload,
}

fn no_button() -> String {
    "none".to_owned()
}

/// A mouse message's `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum MouseEvent {
    #[serde(rename = "mousePressed")]
    Pressed,
    #[serde(rename = "mouseReleased")]
    Released,
    #[serde(rename = "mouseMoved")]
    Moved,
}

/// A key message's `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum KeyEvent {
    KeyDown,
    KeyUp,
}

/// A text message to the viewer page (tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub(crate) enum ServerMessage {
    /// The session's pages and the one this viewer watches.
    Tabs {
        tabs: Vec<Tab>,
        active: Option<String>,
    },
    /// The session ended (Steel's release reason, or `ended`); the socket closes next.
    Ended { reason: String },
    /// A message of the viewer's was refused; the socket stays open.
    Error { message: String },
}

impl ServerMessage {
    /// The message as the text of a WebSocket message.
    pub(crate) fn to_text(&self) -> String {
        // Serializing these plain shapes cannot fail; an empty object would be ignored.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Why a viewer's message was refused: the `message` of the `error` answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Not JSON, not an object, an unknown `type`, or a member missing or of the wrong type.
    #[error("not a viewer message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A binary message: the viewer sends text.
    #[error("not a viewer message: the viewer sends text JSON")]
    Binary,
    /// Input from a viewer whose token (or URL) is read-only.
    #[error("this viewer is read-only")]
    ReadOnly,
    /// A mouse button the viewer does not know.
    #[error("button: {0:?} is not one of none, left, middle, right, back, forward")]
    Button(String),
    /// A URL that is not http, https or about.
    #[error("url: only http, https and about URLs can be opened")]
    Url,
}

/// What a viewer's message asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    /// Watch the page with this target id.
    Switch(String),
    /// Send this CDP command to the watched page.
    Command(&'static str, Value),
    /// Nothing (a key the viewer does not know: the page forwards every key the browser
    /// reports, such as `Unidentified`).
    Nothing,
}

impl ClientMessage {
    /// Reads one text message of the viewer's.
    pub(crate) fn parse(text: &str) -> Result<ClientMessage, Refused> {
        Ok(serde_json::from_str(text)?)
    }

    /// Whether the message is input (which only an interactive viewer may send).
    pub(crate) fn is_input(&self) -> bool {
        !matches!(self, ClientMessage::Switch { .. })
    }

    /// What the message asks for, on a page of `size` (CSS pixels): coordinates are clamped
    /// to the page.
    pub(crate) fn request(&self, size: (f64, f64)) -> Result<Request, Refused> {
        let clamp = |v: f64, max: f64| v.clamp(0.0, max.max(0.0));
        let modifiers = |m: &u64| (m & MODIFIER_BITS) as u32;
        let command = |method, params| Ok(Request::Command(method, params));
        match self {
            ClientMessage::Mouse {
                event,
                x,
                y,
                button,
                click_count,
                modifiers: m,
            } => {
                let kind = match event {
                    MouseEvent::Pressed => MouseKind::Pressed,
                    MouseEvent::Released => MouseKind::Released,
                    MouseEvent::Moved => MouseKind::Moved,
                };
                let button =
                    Button::parse(button).ok_or_else(|| Refused::Button(button.clone()))?;
                let clicks = (*click_count).min(3) as u32;
                let (x, y) = (clamp(*x, size.0), clamp(*y, size.1));
                let params = input::mouse(kind, x, y, button, clicks, modifiers(m));
                command("Input.dispatchMouseEvent", params)
            }
            ClientMessage::Wheel {
                x,
                y,
                delta_x,
                delta_y,
                modifiers: m,
            } => {
                let delta = |d: f64| d.clamp(-MAX_DELTA, MAX_DELTA);
                let (x, y) = (clamp(*x, size.0), clamp(*y, size.1));
                let params = input::wheel(x, y, delta(*delta_x), delta(*delta_y), modifiers(m));
                command("Input.dispatchMouseEvent", params)
            }
            ClientMessage::Key {
                event,
                key,
                modifiers: m,
            } => match input::key(key) {
                Some(key) => {
                    let params = key.event(*event == KeyEvent::KeyDown, modifiers(m));
                    command("Input.dispatchKeyEvent", params)
                }
                None => Ok(Request::Nothing),
            },
            ClientMessage::Text { text } => {
                let text: String = text.chars().take(MAX_PASTE).collect();
                command("Input.insertText", json!({"text": text}))
            }
            ClientMessage::Switch { page_id } => Ok(Request::Switch(page_id.clone())),
            ClientMessage::Navigate { url } => {
                let web = url::Url::parse(url)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https" | "about"));
                if !web {
                    return Err(Refused::Url);
                }
                command("Page.navigate", json!({"url": url}))
            }
            ClientMessage::Back => {
                command("Runtime.evaluate", json!({"expression": "history.back()"}))
            }
            ClientMessage::Forward => command(
                "Runtime.evaluate",
                json!({"expression": "history.forward()"}),
            ),
            ClientMessage::Reload => command("Page.reload", json!({})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(message: Value) -> Result<Request, Refused> {
        ClientMessage::parse(&message.to_string())?.request((800.0, 600.0))
    }

    #[test]
    fn viewer_input_becomes_cdp_and_stays_on_the_page() {
        let Ok(Request::Command(method, params)) = request(
            json!({"type": "mouse", "event": "mousePressed", "x": 900, "y": -5, "button": "left", "clickCount": 1, "modifiers": 0}),
        ) else {
            panic!("a command");
        };
        assert_eq!(method, "Input.dispatchMouseEvent");
        assert_eq!(
            (&params["x"], &params["y"]),
            (&json!(800.0), &json!(0.0)),
            "clamped to the page"
        );
        let Ok(Request::Command(_, key)) =
            request(json!({"type": "key", "event": "keyDown", "key": "Enter", "code": "Enter"}))
        else {
            panic!("key");
        };
        assert_eq!((&key["key"], &key["text"]), (&json!("Enter"), &json!("\r")));
        let Ok(Request::Command(_, wheel)) =
            request(json!({"type": "wheel", "x": 1, "y": 2, "deltaY": 1e9}))
        else {
            panic!("wheel");
        };
        assert_eq!(
            (&wheel["deltaX"], &wheel["deltaY"]),
            (&json!(0.0), &json!(10_000.0))
        );
        let Ok(Request::Command(_, text)) =
            request(json!({"type": "text", "text": "x".repeat(MAX_PASTE + 5)}))
        else {
            panic!("text");
        };
        assert_eq!(text["text"].as_str().map(str::len), Some(MAX_PASTE));
        assert_eq!(
            request(json!({"type": "reload"})).ok(),
            Some(Request::Command("Page.reload", json!({})))
        );
        assert_eq!(
            request(json!({"type": "switch", "pageId": "T1"})).ok(),
            Some(Request::Switch("T1".into()))
        );
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        for (refused, why) in [
            (
                json!({"type": "navigate", "url": "javascript:alert(1)"}),
                "url",
            ),
            (
                json!({"type": "navigate", "url": "file:///etc/passwd"}),
                "url",
            ),
            (
                json!({"type": "mouse", "event": "mousePressed", "x": "a", "y": 1}),
                "not a viewer message",
            ),
            (
                json!({"type": "mouse", "event": "mousePressed", "x": 1, "y": 1, "button": "thumb"}),
                "button",
            ),
            (
                json!({"type": "eval", "expression": "1"}),
                "not a viewer message",
            ),
            (json!({"type": "switch"}), "not a viewer message"),
            (json!(["mouse"]), "not a viewer message"),
        ] {
            let error = request(refused.clone()).expect_err("refused").to_string();
            assert!(error.starts_with(why), "{refused}: {error}");
        }
        assert!(matches!(
            ClientMessage::parse("not json"),
            Err(Refused::Malformed(_))
        ));
        assert_eq!(
            request(json!({"type": "key", "event": "keyDown", "key": "NoSuchKey"})).ok(),
            Some(Request::Nothing),
            "a key the viewer does not know is ignored"
        );
    }

    #[test]
    fn server_messages_keep_the_pages_shapes() {
        let tabs = ServerMessage::Tabs {
            tabs: vec![Tab {
                id: "T1".into(),
                url: "about:blank".into(),
                title: String::new(),
            }],
            active: Some("T1".into()),
        };
        let as_json =
            |m: &ServerMessage| -> Value { serde_json::from_str(&m.to_text()).expect("JSON") };
        assert_eq!(
            as_json(&tabs),
            json!({"type": "tabs", "tabs": [{"id": "T1", "url": "about:blank", "title": ""}], "active": "T1"})
        );
        let ended = ServerMessage::Ended {
            reason: "timeout".into(),
        };
        assert_eq!(
            as_json(&ended),
            json!({"type": "ended", "reason": "timeout"})
        );
        let error = ServerMessage::Error {
            message: Refused::ReadOnly.to_string(),
        };
        assert_eq!(
            as_json(&error),
            json!({"type": "error", "message": "this viewer is read-only"})
        );
    }
}
