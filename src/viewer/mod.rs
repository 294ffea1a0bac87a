//! Seeing and steering a live session from outside CDP: the live viewer's screencast
//! ([`screen`]), its wire format ([`protocol`]) and socket loop ([`socket`]), its access
//! tokens, and Steel's computer API ([`computer`]), built on one input vocabulary
//! ([`input`]). The pages a person's browser loads are in `assets/`.
//!
//! Owns per-session view state (the pointer, the running live views), forgotten when the
//! session's browser connection goes, and the key viewer tokens are made with. Drives browsers only through private `cdp::driver::Driver`s, so it
//! never disturbs a client's CDP sessions; knows nothing of HTTP or of sessions' states
//! (callers check that a session is live).

pub(crate) mod computer;
pub(crate) mod input;
pub(crate) mod protocol;
pub(crate) mod screen;
pub(crate) mod socket;

use std::sync::{Arc, Mutex, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::cdp::mux::Mux;
use screen::{Screen, ScreenError};

/// The viewer's page, its frame around the session's facts, and the operator console.
pub(crate) const VIEWER_HTML: &str = include_str!("assets/viewer.html");
/// `sessionViewerUrl`: the viewer next to the session's facts.
pub(crate) const VIEW_HTML: &str = include_str!("assets/view.html");
/// The console at `/ui`.
pub(crate) const CONSOLE_HTML: &str = include_str!("assets/console.html");

/// What is kept of one session's view: where its pointer is, and its live view while one
/// runs.
#[derive(Default)]
struct ViewState {
    cursor: Arc<Mutex<computer::Point>>,
    screen: Weak<Screen>,
}

/// Each viewed session's state, by id.
type States = DashMap<Uuid, ViewState>;

/// View state of every session on this node. A session's state is forgotten when its
/// browser connection goes (which every end of a session brings about).
pub(crate) struct Viewers {
    states: Arc<States>,
    key: Vec<u8>,
}

impl Viewers {
    /// Viewers whose tokens are made with `key` (the cluster's secret, so that every node
    /// makes the same; else a key of this process).
    pub(crate) fn new(key: Vec<u8>) -> Viewers {
        Viewers {
            states: Arc::new(DashMap::new()),
            key,
        }
    }

    /// Where session `id`'s pointer is (the page's top left until it moves); its browser is
    /// behind `mux`.
    pub(crate) fn cursor(&self, id: Uuid, mux: &Arc<Mux>) -> Arc<Mutex<computer::Point>> {
        self.with_state(id, mux, |state| state.cursor.clone())
    }

    /// The live view of session `id`, whose browser is behind `mux`: the running one, or a
    /// new one.
    pub(crate) async fn screen(
        &self,
        id: Uuid,
        mux: &Arc<Mux>,
    ) -> Result<Arc<Screen>, ScreenError> {
        let running = self.with_state(id, mux, |state| state.screen.upgrade());
        if let Some(screen) = running
            && !screen.is_closed()
        {
            return Ok(screen);
        }
        let screen = Screen::start(mux).await?;
        self.with_state(id, mux, |state| state.screen = Arc::downgrade(&screen));
        Ok(screen)
    }

    /// Sessions whose view state is kept now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.states.len()
    }

    /// Runs `f` on session `id`'s state, made on first use; a new state is forgotten once
    /// the connection to the session's browser (`mux`) is lost.
    fn with_state<T>(&self, id: Uuid, mux: &Arc<Mux>, f: impl FnOnce(&mut ViewState) -> T) -> T {
        match self.states.entry(id) {
            Entry::Occupied(mut state) => f(state.get_mut()),
            Entry::Vacant(vacant) => {
                let mut state = ViewState::default();
                let made = f(&mut state);
                vacant.insert(state);
                let states = Arc::downgrade(&self.states);
                let mux = mux.clone();
                tokio::spawn(async move {
                    mux.lost().await;
                    if let Some(states) = states.upgrade() {
                        states.remove(&id);
                    }
                });
                made
            }
        }
    }

    /// Session `id`'s viewer token for `mode`: 128 bits of an HMAC of the id and the mode,
    /// so it cannot be guessed from the id, another session's token does not fit, and a
    /// read-only token cannot be turned into an interactive one. (An interactive token is
    /// the HMAC of the id alone, as every token was before tokens carried a mode, so links
    /// handed out by an older node of a cluster keep working.)
    pub(crate) fn token(&self, id: Uuid, mode: ViewerMode) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(b"ingot viewer token\0");
        mac.update(id.as_bytes());
        if mode == ViewerMode::ReadOnly {
            mac.update(b"\0read-only");
        }
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The mode `presented` grants on session `id`, if it is one of its tokens (compared in
    /// constant time).
    pub(crate) fn token_mode(&self, id: Uuid, presented: &str) -> Option<ViewerMode> {
        use subtle::ConstantTimeEq;
        let fits = |mode| {
            let expected = self.token(id, mode);
            !expected.is_empty()
                && presented.len() == expected.len()
                && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
        };
        [ViewerMode::Interactive, ViewerMode::ReadOnly]
            .into_iter()
            .find(|mode| fits(*mode))
    }
}

/// What a viewer token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ViewerMode {
    /// Watch and steer: the viewer's input reaches the page.
    Interactive,
    /// Watch only: input is ignored, whatever the URL asks.
    ReadOnly,
}

impl ViewerMode {
    /// The mode a viewer gets: its token's, lowered to read-only when its URL asks for that
    /// (`interactive=false`). A URL can never raise it.
    pub(crate) fn asked(self, interactive_in_url: bool) -> ViewerMode {
        match (self, interactive_in_url) {
            (ViewerMode::Interactive, true) => ViewerMode::Interactive,
            _ => ViewerMode::ReadOnly,
        }
    }
}

impl std::fmt::Debug for Viewers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewers")
            .field("tracked", &self.states.len())
            .finish_non_exhaustive()
    }
}

impl Default for Viewers {
    fn default() -> Self {
        Viewers::new(uuid::Uuid::new_v4().as_bytes().repeat(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_fit_one_session_one_mode_and_one_key() {
        use ViewerMode::{Interactive, ReadOnly};
        let viewers = Viewers::new(b"secret".to_vec());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let token = viewers.token(a, Interactive);
        let read_only = viewers.token(a, ReadOnly);
        assert_eq!((token.len(), read_only.len()), (32, 32));
        assert_ne!(token, read_only, "each mode has its own token");
        assert_eq!(viewers.token_mode(a, &token), Some(Interactive));
        assert_eq!(viewers.token_mode(a, &read_only), Some(ReadOnly));
        assert_eq!(
            viewers.token_mode(b, &token),
            None,
            "another session's token"
        );
        assert_eq!(viewers.token_mode(b, &read_only), None);
        assert_eq!(viewers.token_mode(a, &token[..31]), None);
        assert_eq!(viewers.token_mode(a, ""), None);
        assert_eq!(
            Viewers::new(b"other".to_vec()).token_mode(a, &token),
            None,
            "another key"
        );
        assert_eq!(
            Viewers::new(b"secret".to_vec()).token(a, ReadOnly),
            read_only,
            "the same on every node"
        );
    }

    #[test]
    fn a_url_can_lower_the_mode_but_never_raise_it() {
        use ViewerMode::{Interactive, ReadOnly};
        assert_eq!(Interactive.asked(true), Interactive);
        assert_eq!(Interactive.asked(false), ReadOnly);
        assert_eq!(ReadOnly.asked(true), ReadOnly);
        assert_eq!(ReadOnly.asked(false), ReadOnly);
    }
}

#[cfg(test)]
mod pruning {
    use std::time::Duration;

    use super::*;
    use crate::browser::{BrowserHost, LaunchSpec};
    use crate::cdp::guard::Guard;
    use crate::testing::FakeBrowserHost;

    async fn mux(host: &FakeBrowserHost) -> Arc<Mux> {
        let spec = LaunchSpec::plain(Uuid::new_v4());
        let launched = host.launch(spec).await.expect("launch");
        Mux::start(launched.transport, Guard::new(Default::default(), None))
    }

    #[tokio::test]
    async fn a_sessions_view_state_goes_with_its_browser_and_no_other() {
        let host = FakeBrowserHost::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (mux_a, mux_b) = (mux(&host).await, mux(&host).await);
        let viewers = Viewers::default();
        let cursor = viewers.cursor(a, &mux_a);
        *crate::sync::lock(&cursor) = (3.0, 4.0);
        let screen = viewers.screen(a, &mux_a).await.expect("a live view");
        viewers.cursor(b, &mux_b);
        assert_eq!(viewers.tracked(), 2);
        assert!(
            Arc::ptr_eq(&cursor, &viewers.cursor(a, &mux_a)),
            "one pointer per session"
        );
        let again = viewers.screen(a, &mux_a).await.expect("the running view");
        assert!(Arc::ptr_eq(&screen, &again), "one live view per session");
        host.browsers()[0].crash();
        let pruned = tokio::time::timeout(Duration::from_secs(5), async {
            while viewers.tracked() != 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            pruned.is_ok(),
            "session a's state is forgotten once its browser went"
        );
        assert_eq!(
            *crate::sync::lock(&viewers.cursor(b, &mux_b)),
            (0.0, 0.0),
            "session b's state stays"
        );
        assert_eq!(viewers.tracked(), 1);
    }
}
