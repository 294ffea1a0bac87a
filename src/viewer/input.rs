//! Input for a page, as CDP `Input.*` command parameters: mouse buttons, wheel, keys and
//! text. Shared by the live viewer (a person's events) and Steel's computer API (an agent's
//! actions), so that key names are mapped once, here.
//!
//! Pure translation: builds parameters, sends nothing, knows no session.

use serde_json::{Value, json};

/// CDP modifier bits.
pub(crate) const ALT: u32 = 1;
/// Control.
pub(crate) const CTRL: u32 = 2;
/// Meta (Command, Windows key).
pub(crate) const META: u32 = 4;
/// Shift.
pub(crate) const SHIFT: u32 = 8;

/// A key as CDP's `Input.dispatchKeyEvent` describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    /// DOM `key` (`"a"`, `"Enter"`, `"ArrowLeft"`).
    pub key: String,
    /// DOM `code` (`"KeyA"`, `"Enter"`); empty for characters off the US layout.
    pub code: String,
    /// Windows virtual key code (what `keyCode` reads in the page).
    pub key_code: u32,
    /// The text the key types, if any.
    pub text: Option<String>,
}

impl Key {
    /// The modifier bit this key sets while held, if it is a modifier.
    pub(crate) fn modifier(&self) -> u32 {
        match self.key.as_str() {
            "Alt" => ALT,
            "Control" => CTRL,
            "Meta" => META,
            "Shift" => SHIFT,
            _ => 0,
        }
    }

    /// `Input.dispatchKeyEvent` parameters for pressing (`down`) or releasing this key with
    /// `modifiers` held. A key that types text is typed only without Control or Meta.
    pub(crate) fn event(&self, down: bool, modifiers: u32) -> Value {
        let text = self
            .text
            .as_deref()
            .filter(|_| down && modifiers & (CTRL | META) == 0);
        let kind = match (down, text) {
            (false, _) => "keyUp",
            (true, Some(_)) => "keyDown",
            (true, None) => "rawKeyDown",
        };
        let mut params = json!({
            "type": kind,
            "modifiers": modifiers,
            "key": self.key,
            "code": self.code,
            "windowsVirtualKeyCode": self.key_code,
            "nativeVirtualKeyCode": self.key_code,
        });
        if let Some(text) = text {
            params["text"] = json!(text);
            params["unmodifiedText"] = json!(text);
        }
        params
    }
}

/// A named key: DOM name, code, key code, text, and the other names people and agents use
/// for it (lower case).
type Named = (
    &'static str,
    &'static str,
    u32,
    Option<&'static str>,
    &'static [&'static str],
);

/// Named keys, with their other names (xdotool's, as computer-use tools send them, and
/// common short ones).
const NAMED: &[Named] = &[
    ("Enter", "Enter", 13, Some("\r"), &["return", "kp_enter"]),
    ("Tab", "Tab", 9, Some("\t"), &[]),
    ("Backspace", "Backspace", 8, None, &["back_space"]),
    ("Escape", "Escape", 27, None, &["esc"]),
    ("Delete", "Delete", 46, None, &["del"]),
    ("Insert", "Insert", 45, None, &[]),
    ("Home", "Home", 36, None, &[]),
    ("End", "End", 35, None, &[]),
    ("PageUp", "PageUp", 33, None, &["page_up", "prior"]),
    ("PageDown", "PageDown", 34, None, &["page_down", "next"]),
    ("ArrowLeft", "ArrowLeft", 37, None, &["left"]),
    ("ArrowUp", "ArrowUp", 38, None, &["up"]),
    ("ArrowRight", "ArrowRight", 39, None, &["right"]),
    ("ArrowDown", "ArrowDown", 40, None, &["down"]),
    ("Shift", "ShiftLeft", 16, None, &["shift_l", "shift_r"]),
    (
        "Control",
        "ControlLeft",
        17,
        None,
        &["ctrl", "control_l", "control_r", "ctrl_l", "ctrl_r"],
    ),
    ("Alt", "AltLeft", 18, None, &["alt_l", "alt_r", "option"]),
    (
        "Meta",
        "MetaLeft",
        91,
        None,
        &[
            "super", "super_l", "super_r", "cmd", "command", "meta_l", "meta_r", "win",
        ],
    ),
    ("CapsLock", "CapsLock", 20, None, &["caps_lock"]),
    (" ", "Space", 32, Some(" "), &["space"]),
];

/// Printable characters of the US layout: the unshifted and shifted character of each code.
const US_LAYOUT: &[(char, char, &str, u32)] = &[
    ('`', '~', "Backquote", 192),
    ('-', '_', "Minus", 189),
    ('=', '+', "Equal", 187),
    ('[', '{', "BracketLeft", 219),
    (']', '}', "BracketRight", 221),
    ('\\', '|', "Backslash", 220),
    (';', ':', "Semicolon", 186),
    ('\'', '"', "Quote", 222),
    (',', '<', "Comma", 188),
    ('.', '>', "Period", 190),
    ('/', '?', "Slash", 191),
    ('1', '!', "Digit1", 49),
    ('2', '@', "Digit2", 50),
    ('3', '#', "Digit3", 51),
    ('4', '$', "Digit4", 52),
    ('5', '%', "Digit5", 53),
    ('6', '^', "Digit6", 54),
    ('7', '&', "Digit7", 55),
    ('8', '*', "Digit8", 56),
    ('9', '(', "Digit9", 57),
    ('0', ')', "Digit0", 48),
];

/// The key called `name`: a DOM key name (`Enter`, `ArrowLeft`, `F5`), another common name
/// for it (`Return`, `ctrl`, `Page_Down`), or one character. Names are case-insensitive;
/// single characters are not.
pub(crate) fn key(name: &str) -> Option<Key> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return Some(character(c));
    }
    let lower = name.to_ascii_lowercase();
    let named = NAMED.iter().find(|(dom, _, _, _, aliases)| {
        dom.to_ascii_lowercase() == lower || aliases.contains(&lower.as_str())
    });
    if let Some((dom, code, key_code, text, _)) = named {
        return Some(Key {
            key: (*dom).to_owned(),
            code: (*code).to_owned(),
            key_code: *key_code,
            text: text.map(str::to_owned),
        });
    }
    let n: u32 = lower.strip_prefix('f')?.parse().ok()?;
    (1..=12).contains(&n).then(|| Key {
        key: format!("F{n}"),
        code: format!("F{n}"),
        key_code: 111 + n,
        text: None,
    })
}

/// The key that types `c`.
pub(crate) fn character(c: char) -> Key {
    let text = Some(c.to_string());
    if c.is_ascii_alphabetic() {
        let upper = c.to_ascii_uppercase();
        return Key {
            key: c.to_string(),
            code: format!("Key{upper}"),
            key_code: upper as u32,
            text,
        };
    }
    if c == '\n' || c == '\r' {
        return key("Enter").unwrap_or_else(|| unmapped(c));
    }
    if c == '\t' || c == ' ' {
        return key(if c == ' ' { "space" } else { "Tab" }).unwrap_or_else(|| unmapped(c));
    }
    match US_LAYOUT
        .iter()
        .find(|(plain, shifted, _, _)| *plain == c || *shifted == c)
    {
        Some((_, _, code, key_code)) => Key {
            key: c.to_string(),
            code: (*code).to_owned(),
            key_code: *key_code,
            text,
        },
        None => unmapped(c),
    }
}

fn unmapped(c: char) -> Key {
    Key {
        key: c.to_string(),
        code: String::new(),
        key_code: 0,
        text: Some(c.to_string()),
    }
}

/// A part of a key combination that names no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a key")]
pub(crate) struct NotAKey(pub(crate) String);

/// The keys of a combination such as `ctrl+shift+t` (or one key name); the error names
/// the part that is no key.
pub(crate) fn combination(spec: &str) -> Result<Vec<Key>, NotAKey> {
    if spec.chars().count() == 1 {
        return Ok(vec![character(spec.chars().next().unwrap_or(' '))]);
    }
    spec.split('+')
        .map(|part| {
            let part = if part.is_empty() { "+" } else { part };
            key(part).ok_or_else(|| NotAKey(part.to_owned()))
        })
        .collect()
}

/// A mouse button, as CDP names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Button {
    /// No button (a move).
    None,
    /// The primary button.
    Left,
    /// The wheel button.
    Middle,
    /// The secondary button.
    Right,
    /// The "back" side button.
    Back,
    /// The "forward" side button.
    Forward,
}

impl Button {
    /// The button called `name` (`left`, `middle`, `right`, `back`, `forward`, `none`).
    pub(crate) fn parse(name: &str) -> Option<Button> {
        Some(match name {
            "none" => Button::None,
            "left" => Button::Left,
            "middle" => Button::Middle,
            "right" => Button::Right,
            "back" => Button::Back,
            "forward" => Button::Forward,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Button::None => "none",
            Button::Left => "left",
            Button::Middle => "middle",
            Button::Right => "right",
            Button::Back => "back",
            Button::Forward => "forward",
        }
    }

    /// The `buttons` bit of this button while it is held.
    fn bit(self) -> u32 {
        match self {
            Button::None => 0,
            Button::Left => 1,
            Button::Right => 2,
            Button::Middle => 4,
            Button::Back => 8,
            Button::Forward => 16,
        }
    }
}

/// What a mouse event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MouseKind {
    /// A button goes down.
    Pressed,
    /// A button comes up.
    Released,
    /// The pointer moves (with `button` held, if any).
    Moved,
}

/// `Input.dispatchMouseEvent` parameters at page point (`x`, `y`).
pub(crate) fn mouse(
    kind: MouseKind,
    x: f64,
    y: f64,
    button: Button,
    clicks: u32,
    modifiers: u32,
) -> Value {
    let (kind, buttons) = match kind {
        MouseKind::Pressed => ("mousePressed", button.bit()),
        MouseKind::Released => ("mouseReleased", 0),
        MouseKind::Moved => ("mouseMoved", button.bit()),
    };
    json!({
        "type": kind,
        "x": x,
        "y": y,
        "button": button.name(),
        "buttons": buttons,
        "clickCount": clicks,
        "modifiers": modifiers,
    })
}

/// `Input.dispatchMouseEvent` parameters for a wheel turn at page point (`x`, `y`).
pub(crate) fn wheel(x: f64, y: f64, delta_x: f64, delta_y: f64, modifiers: u32) -> Value {
    json!({
        "type": "mouseWheel",
        "x": x,
        "y": y,
        "deltaX": delta_x,
        "deltaY": delta_y,
        "modifiers": modifiers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_one_key_whatever_they_are_called() {
        for (name, dom, code, key_code) in [
            ("Enter", "Enter", "Enter", 13),
            ("Return", "Enter", "Enter", 13),
            ("ctrl", "Control", "ControlLeft", 17),
            ("Control_L", "Control", "ControlLeft", 17),
            ("Page_Down", "PageDown", "PageDown", 34),
            ("Left", "ArrowLeft", "ArrowLeft", 37),
            ("super", "Meta", "MetaLeft", 91),
            ("F5", "F5", "F5", 116),
            ("space", " ", "Space", 32),
            ("a", "a", "KeyA", 65),
            ("A", "A", "KeyA", 65),
            ("?", "?", "Slash", 191),
            ("7", "7", "Digit7", 55),
        ] {
            let key = key(name).unwrap_or_else(|| panic!("{name} is a key"));
            assert_eq!(
                (key.key.as_str(), key.code.as_str(), key.key_code),
                (dom, code, key_code),
                "{name}"
            );
        }
        assert_eq!(key("é").map(|k| k.text), Some(Some("é".to_owned())));
        assert!(key("F13").is_none() && key("nokey").is_none() && key("").is_none());
    }

    #[test]
    fn combinations_split_on_plus_and_name_what_is_no_key() {
        let keys = combination("ctrl+shift+t").expect("keys");
        let names: Vec<_> = keys.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names, ["Control", "Shift", "t"]);
        assert_eq!(keys[0].modifier() | keys[1].modifier(), CTRL | SHIFT);
        assert_eq!(combination("+").expect("plus")[0].key, "+");
        assert_eq!(combination("ctrl+nokey"), Err(NotAKey("nokey".to_owned())));
    }

    #[test]
    fn keys_type_text_only_without_control_or_meta() {
        let a = key("a").expect("a");
        assert_eq!(a.event(true, 0)["type"], "keyDown");
        assert_eq!(a.event(true, 0)["text"], "a");
        let with_ctrl = a.event(true, CTRL);
        assert_eq!(with_ctrl["type"], "rawKeyDown");
        assert!(with_ctrl.get("text").is_none());
        assert_eq!(a.event(false, 0)["type"], "keyUp");
        assert_eq!(
            key("Escape").expect("esc").event(true, 0)["type"],
            "rawKeyDown"
        );
    }

    #[test]
    fn mouse_events_carry_buttons_and_clicks() {
        let down = mouse(MouseKind::Pressed, 10.0, 20.0, Button::Left, 2, SHIFT);
        assert_eq!(
            (
                &down["type"],
                &down["buttons"],
                &down["clickCount"],
                &down["modifiers"]
            ),
            (&json!("mousePressed"), &json!(1), &json!(2), &json!(SHIFT))
        );
        let up = mouse(MouseKind::Released, 10.0, 20.0, Button::Right, 1, 0);
        assert_eq!(
            (&up["button"], &up["buttons"]),
            (&json!("right"), &json!(0))
        );
        assert_eq!(wheel(1.0, 2.0, 0.0, 120.0, 0)["deltaY"], 120.0);
    }
}
