//! One CDP connection to a browser, shared by every client of a session.
//!
//! Chromium's pipe is a single CDP channel. Each attached client gets its own browser-level
//! CDP session (`Target.attachToBrowserTarget`), so it sees exactly what a separate
//! WebSocket to Chromium would show it: its own auto-attach, its own targets, its own ids.
//! Routing is by `sessionId` only, so no command id is ever rewritten:
//!
//! * client → browser: a command without `sessionId` gets the client's browser session
//!   injected; one with a `sessionId` must name a session that client owns.
//! * browser → client: the tail `sessionId` picks the owner; a client's own browser session
//!   id is stripped again, so the client receives what Chromium would have sent it.
//!
//! The gateway's own commands travel on the root session (no `sessionId`), which also
//! discovers targets and watches downloads for the session's [`Guard`]. Once told the
//! session's [`Identity`] ([`Mux::present_as`]), the root also auto-attaches to every target
//! (pages, workers, and through each page's own auto-attach its frames and workers), gives
//! each the user agent override and lets it run: those sessions are the gateway's, and no
//! message on them reaches a client. Every client
//! command whose method is on the guard's list is checked (and may be rewritten or refused)
//! before it is routed, and every client message waits for the session's in-flight byte
//! budget before it is copied toward the browser. This module
//! owns routing tables and the gateway's root commands; it must not know about HTTP,
//! WebSocket framing, session states or processes. When a client must go, it says why
//! ([`Disconnect`]); the module that owns client sockets picks the close frame.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::mpsc::error::{SendTimeoutError, TrySendError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::guard::{self, Action, Guard, Rule, TooManyClients, Verdict};
use super::identity::Identity;
use super::message::{self, TargetEvent};
use crate::browser::{CdpTransport, FromBrowser, ToBrowser, TrySendError as TrySendToBrowser};
use crate::sync::lock;
use crate::vocab::Disconnect;

/// Messages queued toward one client before the browser's reader waits for it.
const CLIENT_QUEUE: usize = 128;
/// How long a client may leave its queue full before it is disconnected.
const SLOW_CLIENT_GRACE: Duration = Duration::from_secs(2);
/// How long the gateway waits for the browser to answer one of its own commands.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway's own command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the browser connection is closed")]
    Closed,
    #[error("the browser did not answer {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the browser refused {0}: {1}")]
    Refused(&'static str, String),
    #[error(transparent)]
    TooManyClients(#[from] TooManyClients),
}

/// The routing state of one browser connection.
pub(crate) struct Mux {
    to_browser: ToBrowser,
    routes: Mutex<Routes>,
    next_command: AtomicU64,
    next_client: AtomicU64,
    lost: CancellationToken,
    /// CDP events delivered to clients (Steel's `eventCount`).
    events_delivered: AtomicU64,
    /// Set while a spare browser session is being attached.
    refilling: AtomicBool,
    /// What the session's clients may do and take.
    guard: Guard,
    /// `Emulation.setUserAgentOverride`'s params for every target, once [`Mux::present_as`]
    /// was told the session's identity.
    identity: OnceLock<Value>,
    /// The gateway's overrides sent and not yet answered.
    overrides_pending: watch::Sender<usize>,
    /// False from [`Mux::present_as`] until the targets open then (the first page) have
    /// their override: clients' commands to targets wait for it ([`ClientLink::forward`]).
    presented: Arc<watch::Sender<bool>>,
}

#[derive(Default)]
struct Routes {
    clients: HashMap<u64, ClientRoute>,
    /// Every CDP session a client owns (its browser session and the targets it attached).
    owners: HashMap<Box<str>, u64>,
    /// Sessions a client attached without `flatten`: Chromium serves them only through
    /// `Target.sendMessageToTarget`, never by `sessionId`.
    unflattened: HashSet<Box<str>>,
    /// The gateway's own commands waiting for a reply.
    pending: HashMap<u64, Waiter>,
    /// A browser session attached ahead of time, for the next client to take at once.
    spare: Option<Box<str>>,
    /// Target sessions the gateway's root auto-attached (and their children): never a
    /// client's, so nothing on them is routed to one.
    own_targets: HashSet<Box<str>>,
    /// The gateway's own session of each target it attached, by target id.
    own_by_target: HashMap<Box<str>, Box<str>>,
    /// URLs of clients' `Target.createTarget` commands, by client and command id, sent as
    /// `about:blank` until the answer names the target ([`ClientLink::defer_navigation`]).
    deferred: HashMap<(u64, i64), String>,
    /// URLs to load in targets created and not yet attached by the gateway, by target id.
    navigate_on_attach: HashMap<Box<str>, String>,
    closing: bool,
}

/// Who waits for the reply to one of the gateway's own commands.
enum Waiter {
    /// A caller of [`Mux::command`].
    Caller(oneshot::Sender<BytesMut>),
    /// The spare browser session being attached: the reply is handled where it arrives.
    Spare,
    /// A user agent override on one of the gateway's own target sessions.
    Override,
}

struct ClientRoute {
    browser_session: Box<str>,
    /// Ids of this client's `Target.attachToTarget` commands without `flatten`, until answered.
    unflattened_attaches: HashSet<i64>,
    /// This client's admitted `Target.createTarget` commands, by id, with the CDP session
    /// each was sent on, until answered: they count against the page cap meanwhile.
    pending_creates: HashMap<i64, Box<str>>,
    outbound: mpsc::Sender<Bytes>,
    close: watch::Sender<Option<Disconnect>>,
}

impl Mux {
    /// Takes over a browser connection and starts routing its messages within `guard`. The
    /// root session starts discovering targets, so that the guard counts pages.
    pub(crate) fn start(transport: CdpTransport, guard: Guard) -> Arc<Mux> {
        let mux = Arc::new(Mux {
            to_browser: transport.to_browser,
            routes: Mutex::new(Routes::default()),
            next_command: AtomicU64::new(1),
            next_client: AtomicU64::new(1),
            lost: CancellationToken::new(),
            events_delivered: AtomicU64::new(0),
            refilling: AtomicBool::new(false),
            guard,
            identity: OnceLock::new(),
            overrides_pending: watch::channel(0).0,
            presented: Arc::new(watch::channel(true).0),
        });
        tokio::spawn(route_from_browser(mux.clone(), transport.from_browser));
        mux.send_root(json!({"method": "Target.setDiscoverTargets", "params": {"discover": true}}));
        mux.refill_spare();
        mux
    }

    /// Sends a command of the gateway's on the root session without waiting for it; its
    /// reply, which nobody waits for, is dropped.
    fn send_root(&self, mut command: Value) {
        command["id"] = self.next_command.fetch_add(1, Ordering::Relaxed).into();
        self.to_browser.send_soon(Bytes::from(command.to_string()));
    }

    /// Acts on an event on the root session: a target it attached gets the session's
    /// identity; the rest is as the guard decides.
    fn root_event(&self, msg: &[u8]) {
        self.own_target_event(msg);
        match self.guard.root_event(msg) {
            Action::None => {}
            Action::Send(commands) => commands.into_iter().for_each(|c| self.send_root(c)),
            Action::Remove(paths) => {
                tokio::task::spawn_blocking(move || {
                    for path in paths {
                        if std::fs::remove_file(&path).is_ok() {
                            debug!(path = %path.display(), "removed an over-size download");
                        }
                    }
                });
            }
        }
    }

    /// From now on every target of the browser says it is `identity`: the root auto-attaches
    /// to every target (waiting for it to start), overrides its user agent and lets it run.
    /// Returns once the overrides of the targets open now (the first page) are sent; until
    /// they are answered (the page's renderer may still be starting), clients' commands to
    /// targets wait, so that no client sees a page without its identity while the create
    /// does not wait for a renderer. Called at most once per browser; a second call changes
    /// nothing.
    pub(crate) async fn present_as(&self, identity: &Identity) -> Result<(), CommandError> {
        if self.identity.set(identity.override_params()).is_err() {
            return Ok(());
        }
        self.presented.send_replace(false);
        // Chromium announces the targets open now before it answers, and each is given its
        // override as its announcement is routed, so they are counted by then.
        let attached = self.command("Target.setAutoAttach", auto_attach()).await;
        let mut pending = self.overrides_pending.subscribe();
        let (presented, lost) = (self.presented.clone(), self.lost.clone());
        tokio::spawn(async move {
            let settled = tokio::select! {
                _ = pending.wait_for(|n| *n == 0) => true,
                _ = lost.cancelled() => true,
                _ = tokio::time::sleep(COMMAND_TIMEOUT) => false,
            };
            if !settled {
                warn!(
                    "the first page did not answer its user agent override within {COMMAND_TIMEOUT:?}; letting clients through"
                );
            }
            presented.send_replace(true);
        });
        attached.map(drop)
    }

    /// Resolves once the targets open at [`Mux::present_as`] have their identity.
    async fn presented(&self) {
        let mut presented = self.presented.subscribe();
        let _ = presented.wait_for(|done| *done).await;
    }

    /// A target event on the root session or on one of the gateway's own target sessions:
    /// a target attached there becomes the gateway's and gets the identity; a detached one
    /// is forgotten.
    fn own_target_event(&self, msg: &[u8]) {
        match message::target_event(msg) {
            Some(TargetEvent::Attached(_)) => {
                if let Some(target) = parse_attached(msg) {
                    self.adopt_target(target);
                }
            }
            Some(TargetEvent::Detached(child)) => {
                let mut routes = self.lock();
                if routes.own_targets.remove(&*child) {
                    routes
                        .own_by_target
                        .retain(|_, session| **session != *child);
                }
            }
            None => {}
        }
    }

    /// Gives a target the gateway attached the session's identity and lets it run: the
    /// override first, then (pages and frames) the same auto-attach for its children, then
    /// `Runtime.runIfWaitingForDebugger`, then the load a client's `Target.createTarget`
    /// asked for, if any. Chromium runs a session's commands in order, so the target starts
    /// with the override in place; nobody waits for the replies but [`Mux::present_as`].
    /// Browser sessions (clients', the spare) are not targets of this kind.
    fn adopt_target(&self, target: AttachedTarget) {
        let Some(params) = self.identity.get() else {
            return;
        };
        let Some(method) = override_method(&target.kind) else {
            // Nothing to say to it (an extension's background page, a worklet...), but one
            // that waits for the gateway's auto-attach is let run. (Browser sessions,
            // clients' and the spare, are announced here too, and never wait.)
            if target.waiting {
                self.send_on(
                    target.session_id.as_str(),
                    vec![json!({"method": "Runtime.runIfWaitingForDebugger"})],
                );
            }
            return;
        };
        let session = target.session_id.as_str();
        let id = self.next_command.fetch_add(1, Ordering::Relaxed);
        let navigate = {
            let mut routes = self.lock();
            routes.own_targets.insert(session.into());
            routes
                .own_by_target
                .insert(target.target_id.as_str().into(), session.into());
            routes.pending.insert(id, Waiter::Override);
            routes.navigate_on_attach.remove(target.target_id.as_str())
        };
        self.overrides_pending.send_modify(|n| *n += 1);
        let mut commands = vec![json!({"id": id, "method": method, "params": params})];
        if method == "Emulation.setUserAgentOverride" {
            commands.push(json!({"method": "Target.setAutoAttach", "params": auto_attach()}));
        }
        commands.push(json!({"method": "Runtime.runIfWaitingForDebugger"}));
        if let Some(url) = navigate {
            commands.push(json!({"method": "Page.navigate", "params": {"url": url}}));
        }
        self.send_on(session, commands);
    }

    /// Sends the gateway's `commands` on CDP session `session`, in order, waiting for none.
    fn send_on(&self, session: &str, commands: Vec<Value>) {
        let mut messages = commands.into_iter().map(|mut command| {
            if command.get("id").is_none() {
                command["id"] = self.next_command.fetch_add(1, Ordering::Relaxed).into();
            }
            command["sessionId"] = session.into();
            Bytes::from(command.to_string())
        });
        // Sent now while the pipe takes them; the rest, in order, from one task.
        for msg in messages.by_ref() {
            match self.to_browser.try_send(msg) {
                Ok(()) => {}
                Err(TrySendToBrowser::Closed) => return,
                Err(TrySendToBrowser::Busy(msg)) => {
                    let rest: Vec<Bytes> = std::iter::once(msg).chain(messages).collect();
                    let to_browser = self.to_browser.clone();
                    tokio::spawn(async move {
                        for msg in rest {
                            if to_browser.send(msg).await.is_err() {
                                return;
                            }
                        }
                    });
                    return;
                }
            }
        }
    }

    /// A client's `Target.createTarget` that [`ClientLink::defer_navigation`] sent as
    /// `about:blank` was answered with `reply`: its target loads `url` once the gateway gave
    /// it the identity (now, if it already did).
    fn navigate_created(&self, routes: &mut Routes, reply: &[u8], url: String) {
        #[derive(serde::Deserialize)]
        struct Reply {
            result: Option<Created>,
        }
        #[derive(serde::Deserialize)]
        struct Created {
            #[serde(rename = "targetId")]
            target_id: String,
        }
        let Some(target) = serde_json::from_slice::<Reply>(reply)
            .ok()
            .and_then(|r| r.result)
            .map(|c| c.target_id)
        else {
            return;
        };
        match routes.own_by_target.get(target.as_str()) {
            Some(session) => {
                let navigate = json!({"method": "Page.navigate", "params": {"url": url}});
                self.send_on(session, vec![navigate]);
            }
            None => {
                routes.navigate_on_attach.insert(target.into(), url);
            }
        }
    }

    /// A message on one of the gateway's own target sessions: a reply to its override, or
    /// a child target attached or detached there. Nothing else is read.
    fn own_target_message(&self, msg: &[u8]) {
        let Some(id) = message::reply_id(msg) else {
            self.own_target_event(msg);
            return;
        };
        let waiter = self.lock().pending.remove(&id);
        if let Some(Waiter::Override) = waiter {
            self.override_answered();
        }
    }

    fn override_answered(&self) {
        self.overrides_pending
            .send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Resolves when the connection to the browser is gone.
    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Clients attached now.
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.lock().clients.len()
    }

    /// CDP events delivered to clients so far.
    pub(crate) fn events_delivered(&self) -> u64 {
        self.events_delivered.load(Ordering::Relaxed)
    }

    /// Sends a command on the gateway's root session and returns its `result`.
    pub(crate) async fn command(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<Value, CommandError> {
        let id = self.next_command.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(id, Waiter::Caller(tx));
        let body = serde_json::json!({ "id": id, "method": method, "params": params }).to_string();
        if self.to_browser.send(Bytes::from(body)).await.is_err() {
            self.lock().pending.remove(&id);
            return Err(CommandError::Closed);
        }
        let reply = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(CommandError::Closed),
            Err(_) => {
                self.lock().pending.remove(&id);
                return Err(CommandError::Timeout(method, COMMAND_TIMEOUT));
            }
        };
        let mut reply: Value = serde_json::from_slice(&reply)
            .map_err(|e| CommandError::Refused(method, e.to_string()))?;
        if let Some(error) = reply.get("error") {
            return Err(CommandError::Refused(method, error.to_string()));
        }
        Ok(reply
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    /// Attaches a CDP client of the session's (a WebSocket), counted against
    /// `--max-clients-per-session`: refused with [`CommandError::TooManyClients`] when the
    /// session has its most.
    pub(crate) async fn attach_client(self: &Arc<Self>) -> Result<ClientLink, CommandError> {
        self.guard.client_in()?;
        match self.attach().await {
            Ok(mut link) => {
                link.counted = true;
                Ok(link)
            }
            Err(e) => {
                self.guard.client_out();
                Err(e)
            }
        }
    }

    /// Attaches a new client: gives it its own browser-level CDP session. The spare one is
    /// taken when there is one, so the client waits for no round trip to the browser; a
    /// new spare is attached in the background once the client's first message is on its
    /// way (or the client has left), so that the browser answers that message first.
    pub(crate) async fn attach(self: &Arc<Self>) -> Result<ClientLink, CommandError> {
        let spare = {
            let mut routes = self.lock();
            if routes.closing {
                return Err(CommandError::Closed);
            }
            routes.spare.take()
        };
        let browser_session = match spare {
            Some(session) => session,
            None => self.attach_browser_session().await?,
        };
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (outbound_tx, outbound) = mpsc::channel(CLIENT_QUEUE);
        let (close_tx, close) = watch::channel(None);
        {
            let mut routes = self.lock();
            if routes.closing {
                drop(routes);
                self.detach_browser_session(&browser_session);
                return Err(CommandError::Closed);
            }
            routes.owners.insert(browser_session.clone(), id);
            routes.clients.insert(
                id,
                ClientRoute {
                    browser_session: browser_session.clone(),
                    unflattened_attaches: HashSet::new(),
                    pending_creates: HashMap::new(),
                    outbound: outbound_tx,
                    close: close_tx,
                },
            );
        }
        Ok(ClientLink {
            mux: self.clone(),
            id,
            browser_session,
            outbound,
            close,
            refill: AtomicBool::new(true),
            counted: false,
        })
    }

    /// A new browser-level CDP session (`Target.attachToBrowserTarget`).
    async fn attach_browser_session(&self) -> Result<Box<str>, CommandError> {
        let result = self
            .command(
                "Target.attachToBrowserTarget",
                Value::Object(Default::default()),
            )
            .await?;
        let session = result.get("sessionId").and_then(Value::as_str);
        let session = session.ok_or_else(|| {
            CommandError::Refused(
                "Target.attachToBrowserTarget",
                "no sessionId in reply".into(),
            )
        })?;
        Ok(session.into())
    }

    /// Attaches a spare browser session in the background, unless there is one or one is
    /// on its way. No task waits for it: the router takes the reply ([`Mux::spare_attached`]).
    fn refill_spare(&self) {
        let not_needed = {
            let routes = self.lock();
            routes.closing || routes.spare.is_some()
        };
        if not_needed || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = self.next_command.fetch_add(1, Ordering::Relaxed);
        self.lock().pending.insert(id, Waiter::Spare);
        let body =
            serde_json::json!({"id": id, "method": "Target.attachToBrowserTarget", "params": {}});
        self.to_browser.send_soon(Bytes::from(body.to_string()));
    }

    /// The reply to the spare's `Target.attachToBrowserTarget`.
    fn spare_attached(&self, reply: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Attached {
            result: Option<AttachResult>,
        }
        #[derive(serde::Deserialize)]
        struct AttachResult {
            #[serde(rename = "sessionId")]
            session_id: Box<str>,
        }
        let session = serde_json::from_slice::<Attached>(reply)
            .ok()
            .and_then(|a| a.result)
            .map(|r| r.session_id);
        let mut routes = self.lock();
        self.refilling.store(false, Ordering::Release);
        match session {
            Some(session) if !routes.closing && routes.spare.is_none() => {
                routes.spare = Some(session);
            }
            Some(session) => {
                drop(routes);
                self.detach_browser_session(&session);
            }
            None => debug!("the browser refused a spare browser session"),
        }
    }

    /// Tells every client to go, for `why`, and refuses new clients from now on.
    pub(crate) fn close_all(&self, why: Disconnect) {
        let mut routes = self.lock();
        routes.closing = true;
        for client in routes.clients.values() {
            let _ = client.close.send(Some(why));
        }
    }

    /// Disconnects one client for `why`; nothing more is routed to it.
    fn evict(&self, client: u64, why: Disconnect) {
        if let Some(route) = self.lock().clients.get(&client) {
            let _ = route.close.send(Some(why));
        }
        self.detach(client);
    }

    fn detach(&self, client: u64) {
        let browser_session = {
            let mut routes = self.lock();
            let Routes {
                owners,
                unflattened,
                ..
            } = &mut *routes;
            owners.retain(|session, owner| {
                let keep = *owner != client;
                if !keep {
                    unflattened.remove(session);
                }
                keep
            });
            routes.deferred.retain(|(owner, _), _| *owner != client);
            routes.clients.remove(&client).map(|c| {
                (0..c.pending_creates.len()).for_each(|_| self.guard.page_answered());
                c.browser_session
            })
        };
        if let Some(session) = browser_session {
            self.detach_browser_session(&session);
        }
    }

    /// Ends a client's browser session; Chromium detaches its child sessions with it.
    fn detach_browser_session(&self, session: &str) {
        let id = self.next_command.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({"id": id, "method": "Target.detachFromTarget", "params": {"sessionId": session}});
        self.to_browser.send_soon(Bytes::from(body.to_string()));
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        // Routing tables stay consistent under every early return, so a poisoned lock is usable.
        lock(&self.routes)
    }
}

/// Where one browser message goes.
enum Destination {
    /// A client; `strip` when the message is on that client's own browser session.
    Client {
        owner: u64,
        outbound: mpsc::Sender<Bytes>,
        strip: bool,
    },
    /// A session whose client has left (Chromium may still flush a reply or two). Dropped:
    /// the gateway's own commands travel only on the root session and its own target
    /// sessions, and a late reply's id, which the client chose, may equal the id of a
    /// command the gateway is waiting for.
    Nowhere,
    /// One of the gateway's own target sessions ([`Mux::present_as`]).
    Gateway,
}

/// Reads the browser's messages and delivers each to its owner.
async fn route_from_browser(mux: Arc<Mux>, mut from_browser: FromBrowser) {
    while let Some(mut msg) = from_browser.recv().await {
        let Some(tail) = message::tail_session(&msg) else {
            deliver_to_gateway(&mux, msg);
            continue;
        };
        match mux.destination(&msg, tail.id(&msg)) {
            Destination::Nowhere => {}
            Destination::Gateway => mux.own_target_message(&msg),
            Destination::Client {
                owner,
                outbound,
                strip,
            } => {
                if strip {
                    message::strip_tail_session(&mut msg, tail);
                }
                let is_event = message::is_event(&msg);
                if mux.deliver(owner, &outbound, msg.freeze()).await && is_event {
                    mux.events_delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    debug!("browser connection closed");
    mux.lock().pending.clear();
    mux.lost.cancel();
}

impl Mux {
    /// Finds the owner of a message on CDP session `session_id`, keeping the routing table
    /// up to date with the targets the message attaches or detaches.
    fn destination(&self, msg: &[u8], session_id: &str) -> Destination {
        let mut routes = self.lock();
        let Some(owner) = routes.owners.get(session_id).copied() else {
            if routes.own_targets.contains(session_id) {
                return Destination::Gateway;
            }
            return Destination::Nowhere;
        };
        match message::target_event(msg) {
            Some(TargetEvent::Attached(child)) => {
                routes.owners.insert(Box::from(&*child), owner);
            }
            Some(TargetEvent::Detached(child)) => {
                routes.unflattened.remove(&*child);
                routes.owners.remove(&*child);
            }
            None => {}
        }
        let Some(client) = routes.clients.get_mut(&owner) else {
            return Destination::Nowhere;
        };
        if !client.pending_creates.is_empty() {
            note_create_answered(&self.guard, client, msg, session_id);
        }
        let outbound = client.outbound.clone();
        let strip = *client.browser_session == *session_id;
        if !routes.deferred.is_empty()
            && let Some(id) = message::reply_id(msg).and_then(|id| i64::try_from(id).ok())
            && let Some(url) = routes.deferred.remove(&(owner, id))
        {
            self.navigate_created(&mut routes, msg, url);
        }
        if strip {
            note_unflattened_attach(&mut routes, owner, msg);
        }
        Destination::Client {
            owner,
            outbound,
            strip,
        }
    }

    /// Queues a message for a client. This task serves every client of the browser, so it
    /// waits a little for a slow reader, never indefinitely: a client that leaves its queue
    /// full for [`SLOW_CLIENT_GRACE`] is disconnected. Returns whether it was queued.
    async fn deliver(&self, owner: u64, outbound: &mpsc::Sender<Bytes>, msg: Bytes) -> bool {
        match outbound.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(msg)) => {
                match outbound.send_timeout(msg, SLOW_CLIENT_GRACE).await {
                    Ok(()) => true,
                    Err(SendTimeoutError::Closed(_)) => false,
                    Err(SendTimeoutError::Timeout(_)) => {
                        warn!(
                            client = owner,
                            "client has not read for {SLOW_CLIENT_GRACE:?}; disconnecting it"
                        );
                        self.evict(owner, Disconnect::NotReading);
                        false
                    }
                }
            }
        }
    }
}

/// If `msg` answers one of the client's `attachToTarget` commands without `flatten`,
/// remembers the session it created as unflattened.
fn note_unflattened_attach(routes: &mut Routes, owner: u64, msg: &[u8]) {
    let Some(client) = routes.clients.get_mut(&owner) else {
        return;
    };
    if client.unflattened_attaches.is_empty() {
        return;
    }
    let Some(id) = message::reply_id(msg) else {
        return;
    };
    if !client.unflattened_attaches.remove(&(id as i64)) {
        return;
    }
    #[derive(serde::Deserialize)]
    struct AttachReply {
        result: Option<AttachResult>,
    }
    #[derive(serde::Deserialize)]
    struct AttachResult {
        #[serde(rename = "sessionId")]
        session_id: Option<String>,
    }
    if let Ok(AttachReply {
        result: Some(AttachResult {
            session_id: Some(session),
        }),
    }) = serde_json::from_slice(msg)
    {
        routes.unflattened.insert(session.into());
    }
}

/// If `msg` answers one of the client's admitted `Target.createTarget` commands, that
/// command no longer counts as a page being created.
fn note_create_answered(guard: &Guard, client: &mut ClientRoute, msg: &[u8], session_id: &str) {
    let Some(id) = message::reply_id(msg).and_then(|id| i64::try_from(id).ok()) else {
        return;
    };
    if client
        .pending_creates
        .get(&id)
        .is_some_and(|on| **on == *session_id)
    {
        client.pending_creates.remove(&id);
        guard.page_answered();
    }
}

/// A message on the root session: a reply to one of the gateway's own commands, or an
/// event the gateway watches (targets, downloads) for the guard.
fn deliver_to_gateway(mux: &Mux, msg: BytesMut) {
    let Some(id) = message::reply_id(&msg) else {
        if message::is_event(&msg) {
            mux.root_event(&msg);
        }
        return;
    };
    let waiter = mux.lock().pending.remove(&id);
    match waiter {
        Some(Waiter::Caller(caller)) => {
            let _ = caller.send(msg);
        }
        Some(Waiter::Spare) => mux.spare_attached(&msg),
        Some(Waiter::Override) => mux.override_answered(),
        None => {}
    }
}

/// `Target.setAutoAttach`'s params for the gateway's own sessions: every target, paused
/// until the gateway has given it the identity.
fn auto_attach() -> Value {
    json!({"autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true})
}

/// The command that overrides the user agent of a target of `kind`: `Emulation`'s for
/// documents, `Network`'s for workers (which have no `Emulation`). `None` for what is not
/// a target of the session's pages (browser sessions, tabs).
fn override_method(kind: &str) -> Option<&'static str> {
    match kind {
        "page" | "iframe" => Some("Emulation.setUserAgentOverride"),
        "worker" | "shared_worker" | "service_worker" => Some("Network.setUserAgentOverride"),
        _ => None,
    }
}

/// What the gateway reads of a `Target.attachedToTarget` event.
struct AttachedTarget {
    session_id: String,
    target_id: String,
    kind: String,
    /// Whether it waits for a debugger to let it run (`waitForDebuggerOnStart`).
    waiting: bool,
}

fn parse_attached(msg: &[u8]) -> Option<AttachedTarget> {
    #[derive(serde::Deserialize)]
    struct Event {
        params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "sessionId")]
        session_id: String,
        #[serde(rename = "targetInfo")]
        target_info: Info,
        #[serde(rename = "waitingForDebugger", default)]
        waiting: bool,
    }
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "targetId")]
        target_id: String,
        #[serde(rename = "type")]
        kind: String,
    }
    let event: Event = serde_json::from_slice(msg).ok()?;
    Some(AttachedTarget {
        session_id: event.params.session_id,
        target_id: event.params.target_info.target_id,
        kind: event.params.target_info.kind,
        waiting: event.params.waiting,
    })
}

/// What became of a client's message.
#[derive(Debug)]
pub(crate) enum Forwarded {
    /// On its way to the browser.
    Sent,
    /// Not forwarded; send this reply to the client instead.
    Reply(String),
    /// The client asked for `Browser.close`; the command id and the session it came on are
    /// given so that it can be answered there.
    BrowserClose(i64, Option<String>),
    /// The browser connection is gone.
    Closed,
}

/// One client's attachment to a browser. Dropping it detaches the client.
pub(crate) struct ClientLink {
    mux: Arc<Mux>,
    id: u64,
    browser_session: Box<str>,
    /// Messages for this client, in order: whole CDP messages as the browser wrote them.
    pub outbound: mpsc::Receiver<Bytes>,
    /// Set once, when this client must be disconnected, to the reason why.
    pub close: watch::Receiver<Option<Disconnect>>,
    /// Whether the spare browser session is still to be replaced for this client.
    refill: AtomicBool,
    /// Whether it counts against `--max-clients-per-session` ([`Mux::attach_client`]).
    counted: bool,
}

impl ClientLink {
    /// Routes one client message toward the browser.
    pub(crate) async fn forward(&self, msg: Bytes) -> Forwarded {
        let Some(command) = message::parse_client_command(&msg) else {
            return Forwarded::Reply(message::error_reply(
                None,
                -32700,
                "Message must be a valid JSON object",
                None,
            ));
        };
        let session = match &command.session_id {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Forwarded::Reply(message::error_reply(
                    command.id,
                    -32600,
                    "sessionId must be a string",
                    None,
                ));
            }
        };
        // Closing the browser from any of the client's sessions ends the session cleanly.
        if command.method.as_deref() == Some("Browser.close") {
            return Forwarded::BrowserClose(command.id.unwrap_or(0), session.map(str::to_owned));
        }
        if let Some(session) = session
            && !self.may_use(session)
        {
            // What Chromium answers a direct client that addresses a session it cannot
            // serve by id: a root-level error.
            return Forwarded::Reply(message::error_reply(
                command.id,
                -32001,
                "Session with given id not found.",
                None,
            ));
        }
        let rule = command.method.as_deref().and_then(guard::rule);
        let rewritten = match (rule, command.method.as_deref()) {
            (Some(rule), Some(method)) => {
                match self.guarded(rule, method, &msg, command.id, session).await {
                    Ok(rewritten) => rewritten,
                    Err(reply) => return reply,
                }
            }
            _ => None,
        };
        let msg = rewritten.as_ref().unwrap_or(&msg);
        let deferred = match command.method.as_deref() {
            Some("Target.createTarget") => self.defer_navigation(msg, command.id),
            _ => None,
        };
        let msg = deferred.as_ref().unwrap_or(msg);
        // A command to a target waits until the first page has its identity.
        if session.is_some() && !*self.mux.presented.borrow() {
            self.mux.presented().await;
        }
        // Held until the message is written into the browser's pipe.
        let _budget = self.mux.guard.inflight(msg.len()).await;
        let bytes = match session {
            None => {
                if command.method.as_deref() == Some("Target.attachToTarget")
                    && !message::asks_flatten(msg)
                    && let Some(id) = command.id
                    && let Some(route) = self.mux.lock().clients.get_mut(&self.id)
                {
                    route.unflattened_attaches.insert(id);
                }
                message::inject_session(msg, &self.browser_session)
            }
            Some(_) => msg.clone(),
        };
        if self.mux.to_browser.send(bytes).await.is_err() {
            return Forwarded::Closed;
        }
        // A plain load on every message; the swap happens once per client.
        if self.refill.load(Ordering::Relaxed) && self.refill.swap(false, Ordering::Relaxed) {
            self.mux.refill_spare();
        }
        Forwarded::Sent
    }

    /// A `Target.createTarget` for a URL, once the session has an identity, is sent for
    /// `about:blank` in its place, and the gateway loads the URL once it has given the new
    /// page the identity ([`Mux::navigate_created`]): Chromium starts a created page's first
    /// request before any session can set an override, even one waiting for the debugger.
    /// Returns what to send instead, if anything.
    fn defer_navigation(&self, msg: &[u8], id: Option<i64>) -> Option<Bytes> {
        let id = id?;
        self.mux.identity.get()?;
        let mut command: Value = serde_json::from_slice(msg).ok()?;
        let url = command.pointer("/params/url")?.as_str()?;
        if url.is_empty() || url == "about:blank" {
            return None;
        }
        let url = url.to_owned();
        command["params"]["url"] = "about:blank".into();
        self.mux.lock().deferred.insert((self.id, id), url);
        Some(Bytes::from(command.to_string()))
    }

    /// Whether the client may address CDP session `session`: one it owns, served by id.
    fn may_use(&self, session: &str) -> bool {
        let routes = self.mux.lock();
        routes.owners.get(session) == Some(&self.id) && !routes.unflattened.contains(session)
    }

    /// Asks the guard about a command whose method has `rule`: `Ok` with what to forward in
    /// its place, if anything, or `Err` with the reply that refuses it. An admitted
    /// `Target.createTarget` is remembered until its answer.
    async fn guarded(
        &self,
        rule: Rule,
        method: &str,
        msg: &[u8],
        id: Option<i64>,
        session: Option<&str>,
    ) -> Result<Option<Bytes>, Forwarded> {
        let rewritten = match self.mux.guard.check(rule, method, msg).await {
            Verdict::Pass => None,
            Verdict::Rewrite(bytes) => Some(bytes),
            Verdict::Refuse(why) => {
                debug!(client = self.id, method, "the guard refused a command");
                return Err(Forwarded::Reply(message::error_reply(
                    id, -32000, &why, session,
                )));
            }
        };
        if rule == Rule::NewPage {
            let on: Box<str> = session.map_or_else(|| self.browser_session.clone(), Box::from);
            let remembered = id.is_some_and(|id| {
                self.mux
                    .lock()
                    .clients
                    .get_mut(&self.id)
                    .is_some_and(|route| route.pending_creates.insert(id, on).is_none())
            });
            if !remembered {
                self.mux.guard.page_answered();
            }
        }
        Ok(rewritten)
    }
}

impl Drop for ClientLink {
    fn drop(&mut self) {
        self.mux.detach(self.id);
        if self.counted {
            self.mux.guard.client_out();
        }
        if self.refill.swap(false, Ordering::Relaxed) {
            self.mux.refill_spare();
        }
    }
}
