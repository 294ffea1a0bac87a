//! The live view of one session: its pages (tabs) and one JPEG screencast per viewed page,
//! shared by all of that page's viewers.
//!
//! One task per viewed session owns a private [`Driver`] and sees every message it gets: a
//! frame is acknowledged the moment it arrives (Chromium sends the next one only then), and
//! only the newest frame is kept, in a `watch` channel, so a slow viewer skips stale frames
//! and never queues them. A screencast stops when its last viewer leaves; the task ends when
//! the last handle to its [`Screen`] is dropped or the browser goes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::cdp::driver::Driver;
use crate::cdp::mux::{CommandError, Mux};

/// Why a live view could not be started or a page watched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScreenError {
    /// The browser did not take the view's private client.
    #[error("cannot attach to the browser: {0}")]
    Attach(#[from] CommandError),
    /// The browser (and with it the view) is gone.
    #[error("the browser is gone")]
    Gone,
    /// No page fits the pick.
    #[error("no such page ({0:?})")]
    NoSuchPage(Pick),
}

/// JPEG quality of the screencast.
const QUALITY: u32 = 70;
/// Largest frame side, in pixels.
const MAX_SIDE: u32 = 1920;

/// One frame of a page.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The page's viewport in CSS pixels: the space input coordinates are in.
    pub width: f64,
    /// See `width`.
    pub height: f64,
    /// The viewer's binary message for this frame, built once for all its viewers: a
    /// big-endian `u32` length, that many bytes of JSON header (`pageId`, `width`,
    /// `height`), then the JPEG.
    pub message: Bytes,
}

impl Frame {
    /// Builds the frame of `page` (named in the header) from a screencast frame's base64 JPEG and its viewport.
    fn new(page: &str, (width, height): (f64, f64), base64_jpeg: &str) -> Option<Frame> {
        use base64::Engine;
        let header = json!({"pageId": page, "width": width, "height": height}).to_string();
        let mut message = Vec::with_capacity(4 + header.len() + base64_jpeg.len() * 3 / 4);
        message.extend_from_slice(&u32::try_from(header.len()).ok()?.to_be_bytes());
        message.extend_from_slice(header.as_bytes());
        base64::engine::general_purpose::STANDARD
            .decode_vec(base64_jpeg, &mut message)
            .ok()?;
        Some(Frame {
            width,
            height,
            message: Bytes::from(message),
        })
    }
}

/// A page of the session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Tab {
    pub id: String,
    pub url: String,
    pub title: String,
}

/// The session's pages, oldest first, and the newest one (a viewer that follows switches
/// to it).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tabs {
    pub tabs: Vec<Tab>,
    pub newest: Option<String>,
}

/// Which page a viewer wants.
#[derive(Debug, Clone)]
pub(crate) enum Pick {
    /// This target id.
    Id(String),
    /// The n-th page, oldest first.
    Index(usize),
    /// The newest page.
    Newest,
}

/// A viewer's subscription to a page's frames; dropping it unsubscribes.
pub(crate) struct Watching {
    /// The page watched.
    pub page: String,
    /// Its newest frame; closed when the page goes.
    pub frames: watch::Receiver<Option<Arc<Frame>>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unwatch(self.page.clone()));
    }
}

enum Command {
    Watch(Pick, oneshot::Sender<Result<Watching, ScreenError>>),
    Unwatch(String),
    /// A command for a watched page (input, navigation).
    Page(String, &'static str, Value),
}

/// A handle to the live view of one session.
pub(crate) struct Screen {
    commands: mpsc::UnboundedSender<Command>,
    tabs: watch::Receiver<Tabs>,
}

impl Screen {
    /// Starts viewing the browser behind `mux`.
    pub(crate) async fn start(mux: &Arc<Mux>) -> Result<Arc<Screen>, ScreenError> {
        let driver = Driver::attach(mux).await?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let (tabs_tx, tabs) = watch::channel(Tabs::default());
        let hub = Hub {
            driver,
            tabs_tx,
            tabs: Tabs::default(),
            casts: HashMap::new(),
            sessions: HashMap::new(),
            pending: HashMap::new(),
            commands: commands.downgrade(),
        };
        tokio::spawn(hub.run(inbox));
        Ok(Arc::new(Screen { commands, tabs }))
    }

    /// Whether the view ended (the browser went).
    pub(crate) fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// The session's pages, as they change.
    pub(crate) fn tabs(&self) -> watch::Receiver<Tabs> {
        self.tabs.clone()
    }

    /// Subscribes to the frames of the page `pick` names.
    pub(crate) async fn watch(&self, pick: Pick) -> Result<Watching, ScreenError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Watch(pick, tx))
            .map_err(|_| ScreenError::Gone)?;
        rx.await.map_err(|_| ScreenError::Gone)?
    }

    /// Sends `method` to watched page `page`, without waiting for its reply.
    pub(crate) fn page_command(&self, page: &str, method: &'static str, params: Value) {
        let _ = self
            .commands
            .send(Command::Page(page.to_owned(), method, params));
    }
}

/// A page being screencast.
struct Cast {
    /// Its CDP session, once attached.
    session: Option<String>,
    frames: watch::Sender<Option<Arc<Frame>>>,
    viewers: usize,
}

/// What a reply is for.
enum Pending {
    Attached(String),
}

struct Hub {
    driver: Driver,
    tabs_tx: watch::Sender<Tabs>,
    tabs: Tabs,
    casts: HashMap<String, Cast>,
    /// Page session → target id.
    sessions: HashMap<String, String>,
    pending: HashMap<i64, Pending>,
    /// For the `Watching`s it hands out. Weak, so that the task ends (its inbox closes) once
    /// the `Screen` and every `Watching` are gone.
    commands: mpsc::WeakUnboundedSender<Command>,
}

impl Hub {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Command>) {
        let discover = json!({"discover": true});
        if self
            .driver
            .send_command("Target.setDiscoverTargets", discover, None)
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                command = inbox.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
                message = self.driver.next_message() => match message {
                    Some(message) => self.message(message).await,
                    None => break,
                },
            }
        }
        debug!("live view stopped");
    }

    async fn send(
        &mut self,
        method: &'static str,
        params: Value,
        session: Option<&str>,
    ) -> Option<i64> {
        self.driver.send_command(method, params, session).await.ok()
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Watch(pick, reply) => {
                let watching = self.watch(pick).await;
                let _ = reply.send(watching);
            }
            Command::Unwatch(page) => self.unwatch(&page).await,
            Command::Page(page, method, params) => {
                let session = self.casts.get(&page).and_then(|c| c.session.clone());
                if let Some(session) = session {
                    self.send(method, params, Some(&session)).await;
                }
            }
        }
    }

    fn pick(&self, pick: &Pick) -> Option<String> {
        let tabs = &self.tabs.tabs;
        match pick {
            Pick::Id(id) => tabs.iter().find(|t| &t.id == id).map(|t| t.id.clone()),
            Pick::Index(i) => tabs.get(*i).map(|t| t.id.clone()),
            Pick::Newest => self
                .tabs
                .newest
                .clone()
                .filter(|id| tabs.iter().any(|t| &t.id == id))
                .or_else(|| tabs.last().map(|t| t.id.clone())),
        }
    }

    async fn watch(&mut self, pick: Pick) -> Result<Watching, ScreenError> {
        let page = self.pick(&pick).ok_or(ScreenError::NoSuchPage(pick))?;
        if !self.casts.contains_key(&page) {
            let params = json!({"targetId": page, "flatten": true});
            let id = self
                .send("Target.attachToTarget", params, None)
                .await
                .ok_or(ScreenError::Gone)?;
            self.pending.insert(id, Pending::Attached(page.clone()));
            let (frames, _) = watch::channel(None);
            self.casts.insert(
                page.clone(),
                Cast {
                    session: None,
                    frames,
                    viewers: 0,
                },
            );
        }
        let commands = self.commands.upgrade().ok_or(ScreenError::Gone)?;
        let cast = self
            .casts
            .get_mut(&page)
            .ok_or(ScreenError::NoSuchPage(Pick::Id(page.clone())))?;
        cast.viewers += 1;
        let mut frames = cast.frames.subscribe();
        // A viewer that joins a page others watch gets the frame kept at once: a still page
        // sends no new one.
        frames.mark_changed();
        Ok(Watching {
            page,
            frames,
            commands,
        })
    }

    async fn unwatch(&mut self, page: &str) {
        let Some(cast) = self.casts.get_mut(page) else {
            return;
        };
        cast.viewers = cast.viewers.saturating_sub(1);
        if cast.viewers > 0 {
            return;
        }
        if let Some(cast) = self.casts.remove(page)
            && let Some(session) = cast.session
        {
            self.sessions.remove(&session);
            self.send("Page.stopScreencast", json!({}), Some(&session))
                .await;
            self.send(
                "Target.detachFromTarget",
                json!({"sessionId": session}),
                None,
            )
            .await;
        }
    }

    async fn message(&mut self, message: Value) {
        if let Some(id) = message["id"].as_i64() {
            if let Some(Pending::Attached(page)) = self.pending.remove(&id) {
                self.attached(page, message["result"]["sessionId"].as_str())
                    .await;
            }
            return;
        }
        let params = &message["params"];
        match message["method"].as_str().unwrap_or_default() {
            "Page.screencastFrame" => {
                let session = message["sessionId"].as_str().unwrap_or_default().to_owned();
                self.frame(&session, params).await;
            }
            "Target.targetCreated" | "Target.targetInfoChanged" => {
                self.target_changed(&params["targetInfo"]);
            }
            "Target.targetDestroyed" => {
                let id = params["targetId"].as_str().unwrap_or_default().to_owned();
                self.target_gone(&id);
            }
            _ => {}
        }
    }

    async fn attached(&mut self, page: String, session: Option<&str>) {
        let Some(session) = session else {
            return;
        };
        let Some(cast) = self.casts.get_mut(&page) else {
            // Its last viewer left while it was being attached.
            let detach = json!({"sessionId": session});
            self.send("Target.detachFromTarget", detach, None).await;
            return;
        };
        cast.session = Some(session.to_owned());
        self.sessions.insert(session.to_owned(), page);
        let start = json!({
            "format": "jpeg",
            "quality": QUALITY,
            "maxWidth": MAX_SIDE,
            "maxHeight": MAX_SIDE,
            "everyNthFrame": 1,
        });
        self.send("Page.startScreencast", start, Some(session))
            .await;
    }

    /// Acknowledges a frame at once, then keeps it as the page's newest.
    async fn frame(&mut self, session: &str, params: &Value) {
        let ack = json!({"sessionId": params["sessionId"]});
        self.send("Page.screencastFrameAck", ack, Some(session))
            .await;
        let Some(page) = self.sessions.get(session) else {
            return;
        };
        let Some(cast) = self.casts.get(page) else {
            return;
        };
        let meta = &params["metadata"];
        let size = (
            meta["deviceWidth"].as_f64().unwrap_or(0.0),
            meta["deviceHeight"].as_f64().unwrap_or(0.0),
        );
        if let Some(frame) = Frame::new(page, size, params["data"].as_str().unwrap_or_default()) {
            cast.frames.send_replace(Some(Arc::new(frame)));
        }
    }

    fn target_changed(&mut self, info: &Value) {
        if info["type"] != "page" {
            return;
        }
        let tab = Tab {
            id: info["targetId"].as_str().unwrap_or_default().to_owned(),
            url: info["url"].as_str().unwrap_or_default().to_owned(),
            title: info["title"].as_str().unwrap_or_default().to_owned(),
        };
        match self.tabs.tabs.iter_mut().find(|t| t.id == tab.id) {
            Some(known) => *known = tab,
            None => {
                self.tabs.newest = Some(tab.id.clone());
                self.tabs.tabs.push(tab);
            }
        }
        self.tabs_tx.send_replace(self.tabs.clone());
    }

    fn target_gone(&mut self, id: &str) {
        self.tabs.tabs.retain(|t| t.id != id);
        if self.tabs.newest.as_deref() == Some(id) {
            self.tabs.newest = self.tabs.tabs.last().map(|t| t.id.clone());
        }
        // Its viewers see the frames channel close and pick another page.
        if let Some(cast) = self.casts.remove(id)
            && let Some(session) = cast.session
        {
            self.sessions.remove(&session);
        }
        self.tabs_tx.send_replace(self.tabs.clone());
    }
}
