//! Steel's computer API (`POST /v1/sessions/{id}/computer`): an agent acts on the session's
//! active page (its first page, as the browser lists them) with mouse, wheel and keys, and
//! sees it through screenshots.
//!
//! Owns parsing and checking the actions (every refusal names the field) and running them
//! as `Input.*` commands through a private [`Driver`]; key names and events come from
//! [`super::input`]. An action the browser refuses is answered in Steel's `error` field.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::input::{self, Button, Key, MouseKind};
use crate::cdp::driver::Driver;
use crate::cdp::mux::{CommandError, Mux};

/// Longest `wait`, in seconds.
const MAX_WAIT_S: f64 = 30.0;
/// Longest a `press_key` holds its keys, in seconds.
const MAX_HOLD_S: f64 = 10.0;
/// Longest `type_text`, in characters.
const MAX_TEXT: usize = 10_000;
/// Most points of a `drag_mouse` path.
const MAX_PATH: usize = 1_000;
/// Most clicks of one `click_mouse`.
const MAX_CLICKS: u32 = 3;
/// Largest wheel delta either way.
const MAX_DELTA: f64 = 100_000.0;

/// One action, as the SDK sends it (and as the OpenAPI document describes it).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = ComputerAction)]
pub(crate) enum Wire {
    MoveMouse {
        coordinates: Vec<f64>,
        #[serde(default)]
        hold_keys: Vec<String>,
        #[serde(default)]
        screenshot: bool,
    },
    ClickMouse {
        button: String,
        click_type: Option<String>,
        coordinates: Option<Vec<f64>>,
        #[serde(default)]
        hold_keys: Vec<String>,
        num_clicks: Option<u32>,
        #[serde(default)]
        screenshot: bool,
    },
    DragMouse {
        path: Vec<Vec<f64>>,
        #[serde(default)]
        hold_keys: Vec<String>,
        #[serde(default)]
        screenshot: bool,
    },
    Scroll {
        coordinates: Option<Vec<f64>>,
        delta_x: Option<f64>,
        delta_y: Option<f64>,
        #[serde(default)]
        hold_keys: Vec<String>,
        #[serde(default)]
        screenshot: bool,
    },
    PressKey {
        keys: Vec<String>,
        duration: Option<f64>,
        #[serde(default)]
        screenshot: bool,
    },
    TypeText {
        text: String,
        #[serde(default)]
        hold_keys: Vec<String>,
        #[serde(default)]
        screenshot: bool,
    },
    Wait {
        duration: f64,
        #[serde(default)]
        screenshot: bool,
    },
    TakeScreenshot {},
    GetCursorPosition {},
}

/// A point on the page, in CSS pixels.
pub(crate) type Point = (f64, f64);

/// A checked action.
#[derive(Debug)]
enum Act {
    Move(Point),
    Click {
        at: Option<Point>,
        button: Button,
        down: bool,
        up: bool,
        clicks: u32,
    },
    Drag(Vec<Point>),
    Scroll {
        at: Option<Point>,
        delta: Point,
    },
    Press {
        keys: Vec<Key>,
        hold: Duration,
    },
    Type(String),
    Wait(Duration),
    Screenshot,
    Cursor,
}

/// A checked request: the action, the keys held during it, and whether a screenshot
/// follows.
#[derive(Debug)]
pub(crate) struct Request {
    act: Act,
    hold: Vec<Key>,
    screenshot: bool,
}

/// Why a request is refused (400), naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Steel's `SessionComputerResponse`.
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
#[schema(as = ComputerResponse)]
pub(crate) struct Outcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Request {
    /// Parses and checks a request body.
    pub(crate) fn parse(body: &[u8]) -> Result<Request, Invalid> {
        let wire: Wire = serde_json::from_slice(body).map_err(|e| Invalid(wire_error(&e, body)))?;
        let (act, hold, screenshot) = match wire {
            Wire::MoveMouse {
                coordinates,
                hold_keys,
                screenshot,
            } => (
                Act::Move(point(&coordinates, "coordinates")?),
                hold_keys,
                screenshot,
            ),
            Wire::ClickMouse {
                button,
                click_type,
                coordinates,
                hold_keys,
                num_clicks,
                screenshot,
            } => (
                click(&button, click_type.as_deref(), coordinates, num_clicks)?,
                hold_keys,
                screenshot,
            ),
            Wire::DragMouse {
                path,
                hold_keys,
                screenshot,
            } => (Act::Drag(drag_path(&path)?), hold_keys, screenshot),
            Wire::Scroll {
                coordinates,
                delta_x,
                delta_y,
                hold_keys,
                screenshot,
            } => (
                scroll(coordinates, delta_x, delta_y)?,
                hold_keys,
                screenshot,
            ),
            Wire::PressKey {
                keys,
                duration,
                screenshot,
            } => (press(&keys, duration)?, Vec::new(), screenshot),
            Wire::TypeText {
                text,
                hold_keys,
                screenshot,
            } => (typed(text)?, hold_keys, screenshot),
            Wire::Wait {
                duration,
                screenshot,
            } => (
                Act::Wait(seconds(duration, MAX_WAIT_S, "duration")?),
                Vec::new(),
                screenshot,
            ),
            Wire::TakeScreenshot {} => (Act::Screenshot, Vec::new(), false),
            Wire::GetCursorPosition {} => (Act::Cursor, Vec::new(), false),
        };
        Ok(Request {
            act,
            hold: held(&hold)?,
            screenshot,
        })
    }

    /// The points the action touches, to check against the page's size.
    fn points(&self) -> Vec<Point> {
        match &self.act {
            Act::Move(p) => vec![*p],
            Act::Click { at, .. } | Act::Scroll { at, .. } => at.iter().copied().collect(),
            Act::Drag(path) => path.clone(),
            _ => Vec::new(),
        }
    }
}

/// Every `action` the API knows, as the SDK names them.
const ACTIONS: [&str; 9] = [
    "move_mouse",
    "click_mouse",
    "drag_mouse",
    "scroll",
    "press_key",
    "type_text",
    "wait",
    "take_screenshot",
    "get_cursor_position",
];

/// serde's message without its position, and the list of actions when the body's `action`
/// is missing or unknown (decided from the body, not from the message's words).
fn wire_error(e: &serde_json::Error, body: &[u8]) -> String {
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = message.strip_suffix(&position).unwrap_or(&message);
    let value = serde_json::from_slice::<serde_json::Value>(body).ok();
    let action = value
        .as_ref()
        .map(|v| v.get("action").and_then(|a| a.as_str()));
    if action.is_some_and(|a| !a.is_some_and(|a| ACTIONS.contains(&a))) {
        return format!("action: {message}; one of {}", ACTIONS.join(", "));
    }
    message.to_owned()
}

fn point(coordinates: &[f64], field: &str) -> Result<Point, Invalid> {
    match coordinates {
        [x, y] if x.is_finite() && y.is_finite() && *x >= 0.0 && *y >= 0.0 => Ok((*x, *y)),
        _ => Err(Invalid(format!(
            "{field}: must be [x, y], two numbers at least 0, got {coordinates:?}"
        ))),
    }
}

fn click(
    button: &str,
    click_type: Option<&str>,
    coordinates: Option<Vec<f64>>,
    num_clicks: Option<u32>,
) -> Result<Act, Invalid> {
    let button = Button::parse(button)
        .filter(|b| *b != Button::None)
        .ok_or_else(|| {
            Invalid(format!(
                "button: must be left, right, middle, back or forward, got {button:?}"
            ))
        })?;
    let (down, up) = match click_type.unwrap_or("click") {
        "click" => (true, true),
        "down" => (true, false),
        "up" => (false, true),
        other => {
            return Err(Invalid(format!(
                "click_type: must be down, up or click, got {other:?}"
            )));
        }
    };
    let clicks = num_clicks.unwrap_or(1);
    if !(1..=MAX_CLICKS).contains(&clicks) {
        return Err(Invalid(format!(
            "num_clicks: must be 1 to {MAX_CLICKS}, got {clicks}"
        )));
    }
    let at = coordinates.map(|c| point(&c, "coordinates")).transpose()?;
    Ok(Act::Click {
        at,
        button,
        down,
        up,
        clicks,
    })
}

fn drag_path(path: &[Vec<f64>]) -> Result<Vec<Point>, Invalid> {
    if path.len() < 2 || path.len() > MAX_PATH {
        return Err(Invalid(format!(
            "path: must have 2 to {MAX_PATH} points, got {}",
            path.len()
        )));
    }
    path.iter()
        .enumerate()
        .map(|(i, p)| point(p, &format!("path[{i}]")))
        .collect()
}

fn scroll(
    coordinates: Option<Vec<f64>>,
    delta_x: Option<f64>,
    delta_y: Option<f64>,
) -> Result<Act, Invalid> {
    let delta = |value: Option<f64>, field: &str| {
        let v = value.unwrap_or(0.0);
        if v.is_finite() && v.abs() <= MAX_DELTA {
            Ok(v)
        } else {
            Err(Invalid(format!(
                "{field}: must be a number from -{MAX_DELTA} to {MAX_DELTA}"
            )))
        }
    };
    Ok(Act::Scroll {
        at: coordinates.map(|c| point(&c, "coordinates")).transpose()?,
        delta: (delta(delta_x, "delta_x")?, delta(delta_y, "delta_y")?),
    })
}

fn press(keys: &[String], duration: Option<f64>) -> Result<Act, Invalid> {
    if keys.is_empty() {
        return Err(Invalid("keys: at least one key is required".into()));
    }
    let mut pressed = Vec::new();
    for (i, spec) in keys.iter().enumerate() {
        let keys = input::combination(spec)
            .map_err(|input::NotAKey(part)| Invalid(format!("keys[{i}]: {part:?} is not a key")))?;
        pressed.extend(keys);
    }
    let hold = match duration {
        Some(d) => seconds(d, MAX_HOLD_S, "duration")?,
        None => Duration::ZERO,
    };
    Ok(Act::Press {
        keys: pressed,
        hold,
    })
}

fn typed(text: String) -> Result<Act, Invalid> {
    match text.chars().count() {
        0 => Err(Invalid("text: must not be empty".into())),
        n if n > MAX_TEXT => Err(Invalid(format!(
            "text: at most {MAX_TEXT} characters, got {n}"
        ))),
        _ => Ok(Act::Type(text)),
    }
}

fn seconds(value: f64, max: f64, field: &str) -> Result<Duration, Invalid> {
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Invalid(format!(
            "{field}: must be 0 to {max} seconds, got {value}"
        )))
    }
}

fn held(names: &[String]) -> Result<Vec<Key>, Invalid> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            input::key(name)
                .ok_or_else(|| Invalid(format!("hold_keys[{i}]: {name:?} is not a key")))
        })
        .collect()
}

/// Why an action could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A point is outside the page (400).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The browser could not be reached or has no page.
    #[error(transparent)]
    Browser(#[from] CommandError),
}

/// Runs `request` on the active page of the browser behind `mux`. `cursor` is where the
/// pointer is (and is moved).
pub(crate) async fn run(
    mux: &Arc<Mux>,
    request: &Request,
    cursor: &std::sync::Mutex<Point>,
) -> Result<Outcome, RunError> {
    let mut page = Page::open(mux).await?;
    let (width, height) = page.viewport().await?;
    for (x, y) in request.points() {
        if x >= width || y >= height {
            return Err(Invalid(format!(
                "coordinates: ({x}, {y}) is outside the page, which is {width}×{height}"
            ))
            .into());
        }
    }
    let start = *crate::sync::lock(cursor);
    let acted = page.act(request, start).await;
    let mut outcome = Outcome::default();
    match acted {
        Ok((end, output)) => {
            *crate::sync::lock(cursor) = end;
            outcome.output = output;
        }
        Err(e) => outcome.error = Some(e.to_string()),
    }
    if request.screenshot || matches!(request.act, Act::Screenshot) {
        match page.screenshot().await {
            Ok(png) => outcome.base64_image = Some(png),
            Err(e) => outcome.error = Some(e.to_string()),
        }
    }
    page.close().await;
    Ok(outcome)
}

/// A small JPEG (a quarter of the page's size) of the active page, for thumbnails.
pub(crate) async fn thumbnail(mux: &Arc<Mux>) -> Result<Vec<u8>, CommandError> {
    let mut page = Page::open(mux).await?;
    let (width, height) = page.viewport().await?;
    let clip = json!({"x": 0, "y": 0, "width": width.min(4096.0), "height": height.min(4096.0), "scale": 0.25});
    let shot = page
        .call(
            "Page.captureScreenshot",
            json!({"format": "jpeg", "quality": 60, "clip": clip}),
        )
        .await;
    page.close().await;
    let data = shot?["data"].as_str().unwrap_or_default().to_owned();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data)
        .map_err(|e| CommandError::Refused("Page.captureScreenshot", e.to_string()))
}

/// The active page, through a private client.
struct Page {
    driver: Driver,
    session: String,
}

impl Page {
    async fn open(mux: &Arc<Mux>) -> Result<Page, CommandError> {
        let mut driver = Driver::attach(mux).await?;
        let target = driver.first_page().await?;
        let session = driver.attach_page(&target).await?;
        Ok(Page { driver, session })
    }

    async fn call(&mut self, method: &'static str, params: Value) -> Result<Value, CommandError> {
        self.driver.call(method, params, Some(&self.session)).await
    }

    /// The page's size in CSS pixels.
    async fn viewport(&mut self) -> Result<Point, CommandError> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let view = &metrics["cssLayoutViewport"];
        Ok((
            view["clientWidth"].as_f64().unwrap_or(f64::MAX),
            view["clientHeight"].as_f64().unwrap_or(f64::MAX),
        ))
    }

    async fn screenshot(&mut self) -> Result<String, CommandError> {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        Ok(shot["data"].as_str().unwrap_or_default().to_owned())
    }

    async fn close(mut self) {
        let detach = json!({"sessionId": self.session});
        let _ = self
            .driver
            .call("Target.detachFromTarget", detach, None)
            .await;
    }

    async fn mouse(&mut self, params: Value) -> Result<(), CommandError> {
        self.call("Input.dispatchMouseEvent", params)
            .await
            .map(drop)
    }

    async fn key(&mut self, key: &Key, down: bool, modifiers: u32) -> Result<(), CommandError> {
        self.call("Input.dispatchKeyEvent", key.event(down, modifiers))
            .await
            .map(drop)
    }

    /// Presses `keys` in order; returns the modifiers they hold.
    async fn hold(&mut self, keys: &[Key]) -> Result<u32, CommandError> {
        let mut modifiers = 0;
        for key in keys {
            modifiers |= key.modifier();
            self.key(key, true, modifiers).await?;
        }
        Ok(modifiers)
    }

    /// Releases `keys` in reverse order.
    async fn release(&mut self, keys: &[Key], mut modifiers: u32) -> Result<(), CommandError> {
        for key in keys.iter().rev() {
            modifiers &= !key.modifier();
            self.key(key, false, modifiers).await?;
        }
        Ok(())
    }

    /// Runs the action from pointer position `at`; returns where the pointer ends and the
    /// action's output.
    async fn act(
        &mut self,
        request: &Request,
        at: Point,
    ) -> Result<(Point, Option<String>), CommandError> {
        let modifiers = self.hold(&request.hold).await?;
        let result = self.act_holding(&request.act, at, modifiers).await;
        self.release(&request.hold, modifiers).await?;
        result
    }

    async fn act_holding(
        &mut self,
        act: &Act,
        at: Point,
        mods: u32,
    ) -> Result<(Point, Option<String>), CommandError> {
        let moved = |p: Point| input::mouse(MouseKind::Moved, p.0, p.1, Button::None, 0, mods);
        match act {
            Act::Move(p) => {
                self.mouse(moved(*p)).await?;
                Ok((*p, None))
            }
            Act::Click {
                at: target,
                button,
                down,
                up,
                clicks,
            } => {
                let p = target.unwrap_or(at);
                self.mouse(moved(p)).await?;
                for n in 1..=*clicks {
                    if *down {
                        let e = input::mouse(MouseKind::Pressed, p.0, p.1, *button, n, mods);
                        self.mouse(e).await?;
                    }
                    if *up {
                        let e = input::mouse(MouseKind::Released, p.0, p.1, *button, n, mods);
                        self.mouse(e).await?;
                    }
                }
                Ok((p, None))
            }
            Act::Drag(path) => self.drag(path, mods).await,
            Act::Scroll { at: target, delta } => {
                let p = target.unwrap_or(at);
                self.mouse(input::wheel(p.0, p.1, delta.0, delta.1, mods))
                    .await?;
                Ok((p, None))
            }
            Act::Press { keys, hold } => {
                let held = self.hold(keys).await?;
                tokio::time::sleep(*hold).await;
                self.release(keys, held).await?;
                Ok((at, None))
            }
            Act::Type(text) => {
                for c in text.chars() {
                    let key = input::character(c);
                    self.key(&key, true, mods).await?;
                    self.key(&key, false, mods).await?;
                }
                Ok((at, None))
            }
            Act::Wait(d) => {
                tokio::time::sleep(*d).await;
                Ok((at, None))
            }
            Act::Screenshot => Ok((at, None)),
            Act::Cursor => Ok((at, Some(format!("X={},Y={}", at.0, at.1)))),
        }
    }

    async fn drag(
        &mut self,
        path: &[Point],
        mods: u32,
    ) -> Result<(Point, Option<String>), CommandError> {
        let (first, last) = match (path.first(), path.last()) {
            (Some(first), Some(last)) => (*first, *last),
            _ => return Ok(((0.0, 0.0), None)),
        };
        let left = Button::Left;
        self.mouse(input::mouse(
            MouseKind::Moved,
            first.0,
            first.1,
            Button::None,
            0,
            mods,
        ))
        .await?;
        self.mouse(input::mouse(
            MouseKind::Pressed,
            first.0,
            first.1,
            left,
            1,
            mods,
        ))
        .await?;
        for p in &path[1..] {
            self.mouse(input::mouse(MouseKind::Moved, p.0, p.1, left, 0, mods))
                .await?;
        }
        self.mouse(input::mouse(
            MouseKind::Released,
            last.0,
            last.1,
            left,
            1,
            mods,
        ))
        .await?;
        Ok((last, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<Request, Invalid> {
        Request::parse(body.to_string().as_bytes())
    }

    #[test]
    fn every_action_of_the_sdk_parses() {
        for body in [
            json!({"action": "move_mouse", "coordinates": [10, 20], "hold_keys": ["shift"]}),
            json!({"action": "click_mouse", "button": "left", "coordinates": [1, 2], "num_clicks": 2}),
            json!({"action": "click_mouse", "button": "right", "click_type": "down"}),
            json!({"action": "drag_mouse", "path": [[0, 0], [5, 5], [9, 9]]}),
            json!({"action": "scroll", "coordinates": [5, 5], "delta_y": 300}),
            json!({"action": "press_key", "keys": ["ctrl+a", "Return"], "duration": 0.1}),
            json!({"action": "type_text", "text": "hello\n", "screenshot": true}),
            json!({"action": "wait", "duration": 0.5}),
            json!({"action": "take_screenshot"}),
            json!({"action": "get_cursor_position"}),
        ] {
            assert!(
                parse(body.clone()).is_ok(),
                "{body}: {:?}",
                parse(body.clone()).err()
            );
        }
    }

    #[test]
    fn a_missing_or_unknown_action_is_answered_with_every_action() {
        let listed = |body: Value| {
            let bytes = serde_json::to_vec(&body).expect("json");
            let Err(refused) = Request::parse(&bytes) else {
                panic!("{body} was accepted");
            };
            refused.0.contains("one of move_mouse, click_mouse")
        };
        assert!(listed(json!({"action": "fly"})));
        assert!(listed(json!({"coordinates": [1, 2]})));
        assert!(listed(json!({"action": 7})));
        assert!(!listed(json!({"action": "move_mouse"})), "a known action");
        // Every listed action is one the API parses (each fails on a field, not the action).
        for action in ACTIONS {
            assert!(!listed(json!({"action": action, "bogus": 1})), "{action}");
        }
    }

    #[test]
    fn refusals_name_the_field() {
        for (body, field) in [
            (json!({"action": "fly"}), "action"),
            (json!({"coordinates": [1, 2]}), "action"),
            (json!({"action": "move_mouse"}), "coordinates"),
            (
                json!({"action": "move_mouse", "coordinates": [1]}),
                "coordinates",
            ),
            (
                json!({"action": "move_mouse", "coordinates": [-1, 2]}),
                "coordinates",
            ),
            (
                json!({"action": "click_mouse", "button": "thumb"}),
                "button",
            ),
            (
                json!({"action": "click_mouse", "button": "left", "click_type": "tap"}),
                "click_type",
            ),
            (
                json!({"action": "click_mouse", "button": "left", "num_clicks": 9}),
                "num_clicks",
            ),
            (json!({"action": "drag_mouse", "path": [[1, 1]]}), "path"),
            (
                json!({"action": "drag_mouse", "path": [[1, 1], [1]]}),
                "path[1]",
            ),
            (json!({"action": "scroll", "delta_y": 1e9}), "delta_y"),
            (json!({"action": "press_key", "keys": []}), "keys"),
            (json!({"action": "press_key", "keys": ["nokey"]}), "keys[0]"),
            (
                json!({"action": "press_key", "keys": ["a"], "duration": 60}),
                "duration",
            ),
            (json!({"action": "type_text", "text": ""}), "text"),
            (json!({"action": "wait", "duration": -1}), "duration"),
            (
                json!({"action": "move_mouse", "coordinates": [1, 1], "hold_keys": ["x1"]}),
                "hold_keys[0]",
            ),
            (json!({"action": "take_screenshot", "extra": 1}), "extra"),
        ] {
            let err = parse(body.clone()).expect_err("refused").to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
    }
}
