//! The first commands every browser gets, whoever hosts it: `Browser.getVersion`, whose
//! answer makes the browser count as ready, and, when the launch names one, the directory
//! its downloads go to (`Browser.setDownloadBehavior`, with download events on for the root
//! session, where the CDP guard cancels downloads over `--max-file-bytes`).
//!
//! They are written together the moment the browser starts, before it reads anything, so a
//! starting browser answers them in one go instead of one round trip after another while it
//! is busiest. Owns their ids and reading their replies; knows nothing of how they travel.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{LaunchSpec, StartupError};

/// `Browser.getVersion`'s id.
const VERSION: u64 = 0;
/// `Browser.setDownloadBehavior`'s id.
const DOWNLOADS: u64 = 1;
/// The first id left for whoever talks to the browser next over the same transport.
pub(super) const NEXT_ID: u64 = 2;

/// A reply to one of the first commands.
#[derive(serde::Deserialize)]
struct Reply {
    id: u64,
    result: Option<Value>,
    error: Option<Value>,
}

/// The replies a launch still waits for.
pub(crate) struct Startup {
    version: Option<Value>,
    downloads_pending: bool,
}

impl Startup {
    /// The commands to send, in order, and what to expect back.
    pub(crate) fn begin(spec: &LaunchSpec) -> (Vec<Bytes>, Startup) {
        let mut commands = vec![Bytes::from_static(
            br#"{"id":0,"method":"Browser.getVersion"}"#,
        )];
        if let Some(dir) = &spec.downloads {
            let params = json!({"behavior": "allow", "downloadPath": dir, "eventsEnabled": true});
            let command =
                json!({"id": DOWNLOADS, "method": "Browser.setDownloadBehavior", "params": params});
            commands.push(Bytes::from(command.to_string()));
        }
        let startup = Startup {
            version: None,
            downloads_pending: spec.downloads.is_some(),
        };
        (commands, startup)
    }

    /// Takes one message from the browser. Returns `Some` once every reply is in: the
    /// `result` of `Browser.getVersion`, or why the browser is not usable. Other messages
    /// (events, say) are skipped.
    pub(crate) fn take(&mut self, msg: &[u8]) -> Option<Result<Value, StartupError>> {
        if !msg.starts_with(br#"{"id":"#) {
            return None; // an event
        }
        let reply: Reply = match serde_json::from_slice(msg) {
            Ok(reply) => reply,
            Err(e) => return Some(Err(StartupError::NotJson(e))),
        };
        let id = reply.id;
        if id != VERSION && id != DOWNLOADS {
            return None;
        }
        let Some(result) = reply.result else {
            let error = reply.error.unwrap_or(Value::Null);
            return Some(Err(StartupError::Refused { id, error }));
        };
        if id == VERSION {
            self.version = Some(result);
        } else {
            self.downloads_pending = false;
        }
        match (&self.version, self.downloads_pending) {
            (Some(_), false) => self.version.take().map(Ok),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Dimensions;

    fn spec(downloads: Option<&str>) -> LaunchSpec {
        LaunchSpec {
            session_id: uuid::Uuid::nil(),
            dimensions: Dimensions::default(),
            user_agent: None,
            proxy_server: None,
            proxy_auth: None,
            headful: false,
            downloads: downloads.map(Into::into),
        }
    }

    #[test]
    fn ready_once_every_first_reply_is_in() {
        let (commands, mut startup) = Startup::begin(&spec(Some("/d")));
        assert_eq!(commands.len(), 2);
        assert!(std::str::from_utf8(&commands[1]).is_ok_and(|c| c.contains(r#""/d""#)));
        assert!(
            std::str::from_utf8(&commands[1]).is_ok_and(|c| c.contains(r#""eventsEnabled":true"#)),
            "the guard watches downloads on the root session"
        );
        assert!(
            startup
                .take(br#"{"method":"Target.targetCreated"}"#)
                .is_none()
        );
        assert!(
            startup
                .take(br#"{"id":0,"result":{"product":"x"}}"#)
                .is_none()
        );
        let ready = startup.take(br#"{"id":1,"result":{}}"#);
        assert!(matches!(ready, Some(Ok(v)) if v == json!({"product": "x"})));
    }

    #[test]
    fn without_downloads_the_version_is_enough() {
        let (commands, mut startup) = Startup::begin(&spec(None));
        assert_eq!(commands.len(), 1);
        let ready = startup.take(br#"{"id":0,"result":{"product":"x"}}"#);
        assert!(matches!(ready, Some(Ok(v)) if v == json!({"product": "x"})));
    }

    #[test]
    fn a_refusal_fails_the_launch() {
        let (_, mut startup) = Startup::begin(&spec(Some("/d")));
        let refused = startup.take(br#"{"id":1,"error":{"code":-32000,"message":"no"}}"#);
        assert!(matches!(
            refused,
            Some(Err(StartupError::Refused { id: 1, .. }))
        ));
    }
}
