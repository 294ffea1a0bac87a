//! One viewer's connection: frames and tabs out, input in, until the viewer leaves or its
//! session ends.
//!
//! Owns the viewer's socket loop, generic over any `Sink + Stream` of WebSocket messages
//! (a real socket, or channels in tests). It speaks [`super::protocol`], watches pages
//! through [`Screen`], and asks its [`Subject`] whether the session still lives. It never
//! builds a close frame: it returns why it stopped ([`Ending`]) and its caller closes the
//! socket with the code `crate::proxy` gives that reason.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::debug;

use super::protocol::{ClientMessage, Refused, Request, ServerMessage};
use super::screen::{Frame, Pick, Screen, Tabs, Watching};

/// How often a viewer's socket checks that its session still lives.
const LIFE_CHECK: Duration = Duration::from_millis(250);

/// What the socket loop needs of the session it shows (the API implements it for a live
/// session; tests for a stand-in).
pub(crate) trait Subject: Send + Sync {
    /// `None` while the session is live; once it is not, how it ended in Steel's words
    /// (`ended` when no reason is known).
    fn ended(&self) -> Option<&'static str>;
    /// The viewer's input reached the page: it counts as activity.
    fn note_activity(&self);
}

/// What a viewer's URL (bounded by its token) asks for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Whether the viewer's input reaches the page.
    pub interactive: bool,
    /// Which page it watches first.
    pub pick: Pick,
}

/// Why the socket loop stopped.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The viewer closed the socket, or it went away.
    Left,
    /// The session ended; the viewer was told (`ended`) and is to be closed with the reason.
    SessionEnded,
    /// The viewer broke the WebSocket protocol (a message over the size limit, bad UTF-8).
    Broke(tungstenite::Error),
    /// The live view ended (its browser went).
    ViewGone,
}

/// Serves one viewer on `socket` until it leaves or its session ends.
pub(crate) async fn serve<S, E>(
    socket: &mut S,
    screen: Arc<Screen>,
    subject: &dyn Subject,
    options: Options,
) -> Ending
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    E: std::fmt::Display,
{
    let mut viewer = Viewer {
        socket,
        screen,
        subject,
        interactive: options.interactive,
        follow: matches!(options.pick, Pick::Newest),
        pick: options.pick,
        watching: None,
        size: (0.0, 0.0),
    };
    viewer.run().await
}

/// One viewer's connection state.
struct Viewer<'a, S> {
    socket: &'a mut S,
    screen: Arc<Screen>,
    subject: &'a dyn Subject,
    interactive: bool,
    /// Whether the viewer follows the newest page (it named none).
    follow: bool,
    pick: Pick,
    watching: Option<Watching>,
    /// The size of the last frame sent, for input coordinates.
    size: (f64, f64),
}

/// A failed send: the viewer is gone.
struct Gone;

impl<S, E> Viewer<'_, S>
where
    S: Sink<Message, Error = E> + Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    E: std::fmt::Display,
{
    async fn run(&mut self) -> Ending {
        let mut tabs = self.screen.tabs();
        let mut life = tokio::time::interval(LIFE_CHECK);
        let first = tabs.borrow_and_update().clone();
        self.rewatch().await;
        if self.send_tabs(&first).await.is_err() {
            return Ending::Left;
        }
        loop {
            let step = tokio::select! {
                frame = next_frame(&mut self.watching) => match frame {
                    Some(frame) => self.send_frame(&frame).await.map_err(|Gone| Ending::Left),
                    None => {
                        self.watching = None;
                        self.pick = Pick::Newest;
                        self.rewatch().await;
                        Ok(())
                    }
                },
                changed = tabs.changed() => match changed {
                    Err(_) => Err(self.view_gone().await),
                    Ok(()) => {
                        let now = tabs.borrow_and_update().clone();
                        self.tabs_changed(&now).await;
                        self.send_tabs(&now).await.map_err(|Gone| Ending::Left)
                    }
                },
                message = self.socket.next() => match message {
                    Some(Ok(Message::Text(text))) => self.text(text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => self.refuse(Refused::Binary).await,
                    Some(Ok(Message::Close(_))) | None => Err(Ending::Left),
                    Some(Err(e)) => Err(Ending::Broke(e)),
                    Some(Ok(_)) => Ok(()),
                },
                _ = life.tick() => match self.subject.ended() {
                    Some(reason) => Err(self.session_ended(reason).await),
                    None => Ok(()),
                },
            };
            if let Err(ending) = step {
                debug!(?ending, "viewer socket stops");
                // The live view stops once its last viewer's subscription goes.
                self.watching = None;
                return ending;
            }
        }
    }

    /// The live view ended (its browser went): the viewer is told if that is because the
    /// session ended.
    async fn view_gone(&mut self) -> Ending {
        match self.subject.ended() {
            Some(reason) => self.session_ended(reason).await,
            None => Ending::ViewGone,
        }
    }

    async fn session_ended(&mut self, reason: &str) -> Ending {
        let ended = ServerMessage::Ended {
            reason: reason.to_owned(),
        };
        let _ = self.send(&ended).await;
        Ending::SessionEnded
    }

    async fn rewatch(&mut self) {
        self.watching = self.screen.watch(self.pick.clone()).await.ok();
    }

    async fn tabs_changed(&mut self, tabs: &Tabs) {
        let watched = self.watching.as_ref().map(|w| w.page.clone());
        let newest = tabs.newest.clone();
        if self.watching.is_none() || (self.follow && newest.is_some() && newest != watched) {
            self.rewatch().await;
        }
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), Gone> {
        let text = Message::text(message.to_text());
        self.socket.send(text).await.map_err(|e| {
            debug!(error = %e, "viewer write failed");
            Gone
        })
    }

    async fn send_tabs(&mut self, tabs: &Tabs) -> Result<(), Gone> {
        let active = self
            .watching
            .as_ref()
            .map(|w| w.page.clone())
            .or(tabs.newest.clone());
        let message = ServerMessage::Tabs {
            tabs: tabs.tabs.clone(),
            active,
        };
        self.send(&message).await
    }

    async fn send_frame(&mut self, frame: &Frame) -> Result<(), Gone> {
        self.size = (frame.width, frame.height);
        // Shared with the page's other viewers: no copy per viewer.
        let message = Message::Binary(frame.message.clone());
        self.socket.send(message).await.map_err(|_| Gone)
    }

    /// Answers a refused message with an `error` message; the socket stays open.
    async fn refuse(&mut self, why: Refused) -> Result<(), Ending> {
        let message = ServerMessage::Error {
            message: why.to_string(),
        };
        self.send(&message).await.map_err(|Gone| Ending::Left)
    }

    /// A text message from the viewer: input (only when interactive) or a tab switch.
    async fn text(&mut self, text: &str) -> Result<(), Ending> {
        let message = match ClientMessage::parse(text) {
            Ok(message) if message.is_input() && !self.interactive => Err(Refused::ReadOnly),
            Ok(message) => message.request(self.size),
            Err(refused) => Err(refused),
        };
        match message {
            Err(refused) => self.refuse(refused).await,
            Ok(Request::Nothing) => Ok(()),
            Ok(Request::Switch(page)) => {
                self.follow = false;
                self.pick = Pick::Id(page);
                self.rewatch().await;
                let tabs = self.screen.tabs().borrow().clone();
                self.send_tabs(&tabs).await.map_err(|Gone| Ending::Left)
            }
            Ok(Request::Command(method, params)) => {
                if let Some(page) = self.watching.as_ref().map(|w| w.page.clone()) {
                    self.subject.note_activity();
                    self.screen.page_command(&page, method, params);
                }
                Ok(())
            }
        }
    }
}

/// The next frame of the watched page; `None` when the page went. Pends while nothing is
/// watched.
async fn next_frame(watching: &mut Option<Watching>) -> Option<Arc<Frame>> {
    let Some(watching) = watching else {
        return std::future::pending().await;
    };
    loop {
        watching.frames.changed().await.ok()?;
        if let Some(frame) = watching.frames.borrow_and_update().clone() {
            return Some(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio::time::timeout;
    use tokio_util::sync::PollSender;

    use super::*;
    use crate::browser::{BrowserHost, LaunchSpec};
    use crate::cdp::guard::Guard;
    use crate::cdp::mux::Mux;
    use crate::testing::{FakeBrowser, FakeBrowserHost};

    const STEP: Duration = Duration::from_secs(5);

    /// A viewer's socket made of two channels.
    struct Pipe {
        out: PollSender<Message>,
        inbox: mpsc::Receiver<Result<Message, tungstenite::Error>>,
    }

    impl Sink<Message> for Pipe {
        type Error = tokio_util::sync::PollSendError<Message>;
        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.out).poll_ready(cx)
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            Pin::new(&mut self.out).start_send(item)
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.out).poll_flush(cx)
        }
        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.out).poll_close(cx)
        }
    }

    impl Stream for Pipe {
        type Item = Result<Message, tungstenite::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.inbox.poll_recv(cx)
        }
    }

    /// A session that lives until `end` is set.
    #[derive(Default)]
    struct Stub {
        end: AtomicBool,
        activity: AtomicUsize,
    }

    impl Subject for Stub {
        fn ended(&self) -> Option<&'static str> {
            self.end.load(Ordering::SeqCst).then_some("timeout")
        }
        fn note_activity(&self) {
            self.activity.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The test's side of a viewer served on channels.
    struct Viewed {
        to_viewer: mpsc::Receiver<Message>,
        from_viewer: mpsc::Sender<Result<Message, tungstenite::Error>>,
        browser: Arc<FakeBrowser>,
        stub: Arc<Stub>,
        served: tokio::task::JoinHandle<Ending>,
        _host: Arc<FakeBrowserHost>,
    }

    impl Viewed {
        async fn start(interactive: bool) -> Viewed {
            let host = FakeBrowserHost::new();
            let spec = LaunchSpec::plain(uuid::Uuid::new_v4());
            let launched = host.launch(spec).await.expect("launch");
            let browser = host.last().expect("a browser");
            let mux = Mux::start(launched.transport, Guard::new(Default::default(), None));
            let screen = Screen::start(&mux).await.expect("a live view");
            let (out, to_viewer) = mpsc::channel(16);
            let (from_viewer, inbox) = mpsc::channel(16);
            let stub = Arc::new(Stub::default());
            let subject = stub.clone();
            let served = tokio::spawn(async move {
                let mut pipe = Pipe {
                    out: PollSender::new(out),
                    inbox,
                };
                let options = Options {
                    interactive,
                    pick: Pick::Newest,
                };
                let ending = serve(&mut pipe, screen, &*subject, options).await;
                drop(mux);
                ending
            });
            Viewed {
                to_viewer,
                from_viewer,
                browser,
                stub,
                served,
                _host: host,
            }
        }

        async fn next(&mut self) -> Message {
            timeout(STEP, self.to_viewer.recv())
                .await
                .expect("a message in time")
                .expect("the socket is open")
        }

        /// The next text message, as JSON (frames skipped).
        async fn next_text(&mut self) -> Value {
            loop {
                if let Message::Text(text) = self.next().await {
                    return serde_json::from_str(&text).expect("JSON");
                }
            }
        }

        /// The next text message of type `kind` (others skipped: tabs are sent again as the
        /// live view learns of pages).
        async fn next_of(&mut self, kind: &str) -> Value {
            loop {
                let message = self.next_text().await;
                if message["type"] == kind {
                    return message;
                }
            }
        }

        async fn send(&self, message: Value) {
            let text = Message::text(message.to_string());
            self.from_viewer.send(Ok(text)).await.expect("send");
        }
    }

    #[tokio::test]
    async fn a_viewer_on_channels_gets_tabs_and_frames_and_steers_the_page() {
        let mut viewed = Viewed::start(true).await;
        let tabs = viewed.next_text().await;
        assert_eq!(tabs["type"], "tabs", "{tabs}");
        let frame = loop {
            if let Message::Binary(frame) = viewed.next().await {
                break frame;
            }
        };
        let header_len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let header: Value = serde_json::from_slice(&frame[4..4 + header_len]).expect("header");
        assert_eq!(
            (&header["width"], &header["height"]),
            (&json!(800.0), &json!(600.0))
        );
        assert_eq!(&frame[4 + header_len..4 + header_len + 2], &[0xff, 0xd8]);
        viewed
            .send(json!({"type": "mouse", "event": "mousePressed", "x": 5000, "y": 10, "button": "left", "clickCount": 1}))
            .await;
        viewed.send(json!({"type": "nonsense"})).await;
        let error = viewed.next_of("error").await;
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("not a viewer message")),
            "{error}"
        );
        let pressed = viewed
            .browser
            .received()
            .into_iter()
            .find(|c| c.method == "Input.dispatchMouseEvent")
            .expect("the press reached the page");
        assert_eq!(
            pressed.params["x"],
            json!(800.0),
            "clamped to the frame's width"
        );
        assert!(pressed.session_id.is_some(), "sent on the page's session");
        assert_eq!(viewed.stub.activity.load(Ordering::SeqCst), 1);
        viewed.stub.end.store(true, Ordering::SeqCst);
        let ended = viewed.next_of("ended").await;
        assert_eq!(ended, json!({"type": "ended", "reason": "timeout"}));
        let ending = timeout(STEP, viewed.served)
            .await
            .expect("stops")
            .expect("no panic");
        assert!(matches!(ending, Ending::SessionEnded), "{ending:?}");
    }

    #[tokio::test]
    async fn a_read_only_viewer_is_told_and_its_input_goes_nowhere() {
        let mut viewed = Viewed::start(false).await;
        assert_eq!(viewed.next_text().await["type"], "tabs");
        viewed.send(json!({"type": "reload"})).await;
        let error = viewed.next_of("error").await;
        assert_eq!(
            error,
            json!({"type": "error", "message": "this viewer is read-only"})
        );
        assert_eq!(viewed.browser.count("Page.reload"), 0);
        assert_eq!(viewed.stub.activity.load(Ordering::SeqCst), 0);
        drop(viewed.from_viewer);
        let ending = timeout(STEP, viewed.served)
            .await
            .expect("stops")
            .expect("no panic");
        assert!(matches!(ending, Ending::Left), "{ending:?}");
    }
}
