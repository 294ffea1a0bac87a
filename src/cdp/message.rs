//! Cheap, allocation-free looks into CDP JSON messages.
//!
//! The multiplexer needs three facts per message: the top-level `sessionId` of a browser
//! message, whether it is a target attach/detach event, and a client command's `id`,
//! `method` and `sessionId`. Chromium appends a session's id as the last member of every
//! session-scoped message (`…,"sessionId":"<id>"}`), so finding it costs O(1) even for a
//! 60 MiB screenshot. This module only reads and rewrites bytes; it owns no state.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

const SESSION_KEY: &[u8] = br#","sessionId":""#;
/// Longest session id we look for at a message's tail (Chromium's are 32 hex digits).
const MAX_SESSION_ID: usize = 64;

/// Where a browser message's top-level `sessionId` sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TailSession {
    /// Offset of the `,` that starts `,"sessionId":"…"`.
    pub member_start: usize,
    /// Byte range of the id itself.
    pub id_start: usize,
    pub id_end: usize,
}

impl TailSession {
    pub(crate) fn id<'a>(&self, msg: &'a [u8]) -> &'a str {
        // The id bytes were checked to be ASCII when the tail was found.
        std::str::from_utf8(&msg[self.id_start..self.id_end]).unwrap_or_default()
    }
}

/// Finds a top-level `"sessionId"` that ends the message. A string that ends a nested
/// object would be followed by another `}`; inside a JSON string the quotes would be escaped.
pub(crate) fn tail_session(msg: &[u8]) -> Option<TailSession> {
    let n = msg.len();
    if n < SESSION_KEY.len() + 3 || msg[n - 1] != b'}' || msg[n - 2] != b'"' {
        return None;
    }
    let id_end = n - 2;
    let window_start = id_end.saturating_sub(MAX_SESSION_ID);
    let id_start = msg[window_start..id_end]
        .iter()
        .rposition(|&b| b == b'"')
        .map(|p| window_start + p + 1)?;
    let member_start = id_start.checked_sub(SESSION_KEY.len())?;
    if &msg[member_start..id_start] != SESSION_KEY {
        return None;
    }
    if !msg[id_start..id_end]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return None;
    }
    Some(TailSession {
        member_start,
        id_start,
        id_end,
    })
}

/// Removes the tail `sessionId` in place: `{…,"sessionId":"X"}` becomes `{…}`.
pub(crate) fn strip_tail_session(msg: &mut BytesMut, tail: TailSession) {
    msg[tail.member_start] = b'}';
    msg.truncate(tail.member_start + 1);
}

/// Whether a browser message is an event (has `method`, no `id`). Chromium writes `method`
/// first in events and `id` first in replies.
pub(crate) fn is_event(msg: &[u8]) -> bool {
    msg.starts_with(br#"{"method":""#)
}

/// The `id` of a reply, read from its start: Chromium writes `id` first in replies. `None`
/// for events and anything else. Costs the same for a 60 MiB reply as for a small one.
pub(crate) fn reply_id(msg: &[u8]) -> Option<u64> {
    let rest = msg.strip_prefix(br#"{"id":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || !matches!(rest.get(digits), Some(b',' | b'}')) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Target attach or detach events, which tell which client owns a new CDP session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TargetEvent<'a> {
    Attached(Cow<'a, str>),
    Detached(Cow<'a, str>),
}

#[derive(Deserialize)]
struct EventWithSession<'a> {
    #[serde(borrow)]
    params: SessionParam<'a>,
}

#[derive(Deserialize)]
struct SessionParam<'a> {
    #[serde(borrow, rename = "sessionId")]
    session_id: Cow<'a, str>,
}

/// Recognises `Target.attachedToTarget` and `Target.detachedFromTarget` and returns the
/// child session they name.
pub(crate) fn target_event(msg: &[u8]) -> Option<TargetEvent<'_>> {
    const ATTACHED: &[u8] = br#"{"method":"Target.attachedToTarget","#;
    const DETACHED: &[u8] = br#"{"method":"Target.detachedFromTarget","#;
    let attached = msg.starts_with(ATTACHED);
    if !attached && !msg.starts_with(DETACHED) {
        return None;
    }
    let parsed: EventWithSession<'_> = serde_json::from_slice(msg).ok()?;
    let id = parsed.params.session_id;
    Some(if attached {
        TargetEvent::Attached(id)
    } else {
        TargetEvent::Detached(id)
    })
}

/// The parts of a client's command the gateway acts on.
#[derive(Debug, Deserialize)]
pub(crate) struct ClientCommand<'a> {
    pub id: Option<i64>,
    #[serde(borrow)]
    pub method: Option<Cow<'a, str>>,
    /// Present (even as `null`) or absent: a `null` must not pass for "no session".
    #[serde(default, rename = "sessionId", deserialize_with = "present")]
    pub session_id: Option<serde_json::Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Parses a client command; `None` when it is not a JSON object.
pub(crate) fn parse_client_command(msg: &[u8]) -> Option<ClientCommand<'_>> {
    if msg.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(msg).ok()
}

/// Whether a `Target.attachToTarget` command asks for a flat session (`"flatten": true`).
pub(crate) fn asks_flatten(msg: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Command {
        params: Option<Params>,
    }
    #[derive(Deserialize)]
    struct Params {
        flatten: Option<bool>,
    }
    serde_json::from_slice::<Command>(msg)
        .ok()
        .and_then(|c| c.params)
        .and_then(|p| p.flatten)
        .unwrap_or(false)
}

/// Adds `"sessionId":"<id>"` as the first member of a command object.
pub(crate) fn inject_session(msg: &[u8], session_id: &str) -> Bytes {
    let open = msg.iter().position(|&b| b == b'{').unwrap_or(0);
    let rest = &msg[open + 1..];
    let empty_object = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = BytesMut::with_capacity(msg.len() + session_id.len() + 16);
    out.extend_from_slice(br#"{"sessionId":""#);
    out.extend_from_slice(session_id.as_bytes());
    out.extend_from_slice(if empty_object { b"\"" } else { b"\"," });
    out.extend_from_slice(rest);
    out.freeze()
}

/// A CDP error reply, as Chromium would send it.
pub(crate) fn error_reply(
    id: Option<i64>,
    code: i64,
    message: &str,
    session_id: Option<&str>,
) -> String {
    let mut reply = serde_json::json!({ "error": { "code": code, "message": message } });
    if let Some(id) = id {
        reply["id"] = id.into();
    }
    if let Some(s) = session_id {
        reply["sessionId"] = s.into();
    }
    reply.to_string()
}

/// An empty success reply, on session `session_id` when the command came on one (as
/// Chromium answers: a client's CDP library matches replies by session).
pub(crate) fn ok_reply(id: i64, session_id: Option<&str>) -> String {
    let mut reply = serde_json::json!({"id": id, "result": {}});
    if let Some(s) = session_id {
        reply["sessionId"] = s.into();
    }
    reply.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ok_reply_is_answered_on_the_session_its_command_came_on() {
        assert_eq!(ok_reply(3, None), r#"{"id":3,"result":{}}"#);
        let on: serde_json::Value = serde_json::from_str(&ok_reply(3, Some("S1"))).expect("JSON");
        assert_eq!(
            on,
            serde_json::json!({"id": 3, "result": {}, "sessionId": "S1"})
        );
    }

    #[test]
    fn finds_and_strips_tail_session() {
        let raw = br#"{"id":100,"result":{},"sessionId":"CB353CB62FA67C4AD2209B150336F278"}"#;
        let tail = tail_session(raw).unwrap();
        assert_eq!(tail.id(raw), "CB353CB62FA67C4AD2209B150336F278");
        let mut m = BytesMut::from(&raw[..]);
        strip_tail_session(&mut m, tail);
        assert_eq!(&m[..], br#"{"id":100,"result":{}}"#);
    }

    #[test]
    fn nested_session_ids_are_not_top_level() {
        for raw in [
            &br#"{"id":3,"result":{"sessionId":"CBFC2D9EC4EA8A57FD08A474F80E870E"}}"#[..],
            br#"{"method":"Target.attachedToTarget","params":{"sessionId":"A","waitingForDebugger":false}}"#,
            br#"{"id":1,"result":{"value":"x\",\"sessionId\":\"EVIL\"}"}}"#,
            br#"{"id":1,"result":{"a":"b"}}"#,
            br#"{"id":1,"result":{},"sessionId":"has space"}"#,
            b"",
            b"}",
        ] {
            assert_eq!(tail_session(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn reads_reply_ids_from_the_prefix() {
        assert_eq!(reply_id(br#"{"id":42,"result":{}}"#), Some(42));
        assert_eq!(reply_id(br#"{"id":7,"error":{"code":-32001}}"#), Some(7));
        assert_eq!(reply_id(br#"{"id":7}"#), Some(7));
        assert_eq!(
            reply_id(br#"{"method":"Page.loadEventFired","params":{}}"#),
            None
        );
        assert_eq!(reply_id(br#"{"id":"7","result":{}}"#), None);
        assert_eq!(reply_id(br#"{"id":7x,"result":{}}"#), None);
        assert_eq!(
            reply_id(br#"{"id":99999999999999999999,"result":{}}"#),
            None
        );
    }

    #[test]
    fn recognises_target_events() {
        let raw = br#"{"method":"Target.attachedToTarget","params":{"sessionId":"DC9D","targetInfo":{"targetId":"9E1C","type":"page"},"waitingForDebugger":false},"sessionId":"CB35"}"#;
        assert_eq!(
            target_event(raw),
            Some(TargetEvent::Attached("DC9D".into()))
        );
        let raw = br#"{"method":"Target.detachedFromTarget","params":{"sessionId":"DC9D","targetId":"9E1C"},"sessionId":"CB35"}"#;
        assert_eq!(
            target_event(raw),
            Some(TargetEvent::Detached("DC9D".into()))
        );
        assert_eq!(
            target_event(br#"{"method":"Page.loadEventFired","params":{}}"#),
            None
        );
    }

    #[test]
    fn injects_session() {
        assert_eq!(
            &inject_session(br#"{"id":1,"method":"Browser.getVersion"}"#, "S1")[..],
            br#"{"sessionId":"S1","id":1,"method":"Browser.getVersion"}"#
        );
        assert_eq!(
            &inject_session(b" { } ", "S1")[..],
            br#"{"sessionId":"S1" } "#
        );
        let injected = inject_session(br#"{"id":2,"method":"X","params":{"a":[1,2]}}"#, "S");
        let v: serde_json::Value = serde_json::from_slice(&injected).unwrap();
        assert_eq!(v["sessionId"], "S");
        assert_eq!(v["params"]["a"][1], 2);
    }

    #[test]
    fn reads_flatten() {
        assert!(asks_flatten(br#"{"id":1,"method":"Target.attachToTarget","params":{"targetId":"T","flatten":true}}"#));
        assert!(!asks_flatten(
            br#"{"id":1,"method":"Target.attachToTarget","params":{"targetId":"T"}}"#
        ));
        assert!(!asks_flatten(
            br#"{"id":1,"method":"Target.attachToTarget"}"#
        ));
    }

    #[test]
    fn parses_client_commands() {
        let c = parse_client_command(br#"{"id":7,"method":"Browser.close"}"#).unwrap();
        assert_eq!(
            (c.id, c.method.as_deref(), c.session_id),
            (Some(7), Some("Browser.close"), None)
        );
        let c = parse_client_command(br#"{"id":8,"method":"Runtime.evaluate","params":{"expression":"\"q\""},"sessionId":"AB"}"#).unwrap();
        assert_eq!(c.session_id, Some(serde_json::Value::from("AB")));
        let c = parse_client_command(br#"{"id":9,"method":"X","sessionId":null}"#).unwrap();
        assert_eq!(c.session_id, Some(serde_json::Value::Null));
        assert!(parse_client_command(b"[1,2]").is_none());
        assert!(parse_client_command(b"not json").is_none());
    }
}
