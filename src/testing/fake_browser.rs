//! A fake [`BrowserHost`]: each "browser" is a tokio task that speaks enough CDP over a
//! [`CdpTransport`] for the gateway's API, admission, warm pool, supervisor, multiplexer and
//! WebSocket proxy to run in-process, in milliseconds.
//!
//! Owns the fake browsers' CDP state (one page target, the sessions attached to it and to
//! the browser target, the pages' screencasts: a frame on `Page.startScreencast` and after
//! each change of the page, never two unacknowledged), their simulated process lifecycle (exit, crash, hang, kill) and the
//! counters tests read. It writes replies and events the way Chromium does (`id` or `method`
//! first, `sessionId` last), because the gateway's router relies on that. It must not touch
//! processes, pipes, the file system or the network, and it must not know about sessions'
//! states, HTTP or clients: it only sees CDP messages, like a browser.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::browser::cgroup::Limits;
use crate::browser::{
    BrowserExit, BrowserHost, BrowserProcess, CdpTransport, Engines, FromBrowser, LaunchError,
    LaunchSpec, Launched, MemorySample, NotReady, Startup, ToBrowser,
};
use crate::sync::lock;

/// Capacity of each direction of a fake browser's transport (the real host uses the same).
const CHANNEL: usize = 256;
/// Resident memory each live fake browser reports through [`BrowserHost::sample_memory`].
const FAKE_RESIDENT_BYTES: u64 = 64 << 20;
/// The exit a killed or crashed browser reports, as a `SIGKILL`ed Chromium would.
const SIGKILL: i32 = 9;
/// `Browser.getVersion`'s reply, the same for every fake browser.
const PRODUCT: &str = "FakeChrome/1.0";
/// Every screencast frame and JPEG screenshot: a valid 8×8 grey baseline JPEG, base64.
pub const FAKE_JPEG: &str = "/9j/2wBDAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQH/wAALCAAIAAgBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAAAP/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AP//Z";
/// Every PNG screenshot: a valid 1×1 grey PNG, base64.
const FAKE_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNoAAAAggCBd81ytgAAAABJRU5ErkJggg==";
/// The page's viewport in CSS pixels: screencast frames' metadata and layout metrics.
pub const FAKE_VIEWPORT: (u32, u32) = (800, 600);

/// The `result` of `Browser.getVersion`, which launch also returns as [`Launched::version`].
fn version() -> Value {
    json!({
        "protocolVersion": "1.3",
        "product": PRODUCT,
        "revision": "@fake",
        "userAgent": "Mozilla/5.0 (fake) FakeChrome/1.0",
        "jsVersion": "1.0",
    })
}

/// A new id, unique across every fake browser of the process: 32 upper-case hex digits like
/// Chromium's, with `kind` in the high half so that ids of different kinds never collide.
fn fake_id(kind: u64) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{kind:016X}{n:016X}")
}

/// One command a fake browser received, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedCommand {
    /// The command's `id`, when it was an integer.
    pub id: Option<i64>,
    /// The command's `method`.
    pub method: String,
    /// The command's `sessionId`, when it had one (`None` for the root session).
    pub session_id: Option<String>,
    /// The command's `params` (`{}` when absent).
    pub params: Value,
}

/// Launch behaviour the tests set on the host.
#[derive(Debug, Default)]
struct LaunchConfig {
    failure: Option<String>,
    delay: Duration,
    hang: bool,
}

/// A [`BrowserHost`] whose browsers are in-process fakes. Keeps a [`FakeBrowser`] handle for
/// every browser it launched, so that tests can look at them and break them.
pub struct FakeBrowserHost {
    config: Mutex<LaunchConfig>,
    browsers: Mutex<Vec<Arc<FakeBrowser>>>,
    launches: AtomicUsize,
    failed_launches: AtomicUsize,
    /// What the gateway told [`BrowserHost::set_limits`], if it did.
    limits: Mutex<Option<Limits>>,
    /// Bumped on every change a test may wait for (see [`FakeBrowserHost::wait_until`]).
    changes: Arc<watch::Sender<u64>>,
    /// The engines it says it runs, once a test set them ([`FakeBrowserHost::set_engines`]).
    engines: std::sync::OnceLock<Engines>,
}

impl FakeBrowserHost {
    /// A host whose launches succeed at once. Use it as an `Arc<dyn BrowserHost>`.
    pub fn new() -> Arc<FakeBrowserHost> {
        Arc::new(FakeBrowserHost {
            config: Mutex::new(LaunchConfig::default()),
            browsers: Mutex::new(Vec::new()),
            launches: AtomicUsize::new(0),
            failed_launches: AtomicUsize::new(0),
            limits: Mutex::new(None),
            changes: Arc::new(watch::channel(0).0),
            engines: std::sync::OnceLock::new(),
        })
    }

    /// Makes the host say it runs `engines` (as a local host would, with what it found
    /// installed) from now on; the first call wins.
    pub fn set_engines(&self, engines: Engines) {
        let _ = self.engines.set(engines);
    }

    /// The caps the gateway told the host its browsers run under, once it has.
    pub fn limits(&self) -> Option<Limits> {
        *lock(&self.limits)
    }

    /// Makes every launch from now on fail with `reason` (after the launch delay), or
    /// succeed again with `None`. A failed launch leaves no browser behind.
    pub fn fail_launches(&self, reason: Option<&str>) {
        lock(&self.config).failure = reason.map(str::to_owned);
    }

    /// Makes every launch from now on take `delay` before it succeeds or fails.
    pub fn set_launch_delay(&self, delay: Duration) {
        lock(&self.config).delay = delay;
    }

    /// Makes every browser launched from now on start hung: its launch does not return
    /// until the browser is resumed ([`FakeBrowser::resume`]), and fails if the browser is
    /// crashed or killed first. Dropping the launch's future kills the browser, as the real
    /// host does.
    pub fn hang_launches(&self, hang: bool) {
        lock(&self.config).hang = hang;
    }

    /// Launches started so far, failed ones included.
    pub fn launches(&self) -> usize {
        self.launches.load(Ordering::SeqCst)
    }

    /// Launches that returned a [`LaunchError`] so far.
    pub fn failed_launches(&self) -> usize {
        self.failed_launches.load(Ordering::SeqCst)
    }

    /// Every browser this host started, in launch order, including one whose launch is
    /// still waiting for its first reply.
    pub fn browsers(&self) -> Vec<Arc<FakeBrowser>> {
        lock(&self.browsers).clone()
    }

    /// The browser started most recently.
    pub fn last(&self) -> Option<Arc<FakeBrowser>> {
        lock(&self.browsers).last().cloned()
    }

    /// Browsers started and not yet exited (a kill counts as an exit).
    pub fn alive(&self) -> usize {
        lock(&self.browsers).iter().filter(|b| b.is_alive()).count()
    }

    /// Browsers nobody called [`BrowserProcess::kill`] on yet. The gateway reaps every browser,
    /// even one that exited by itself, so a quiescent gateway should have none: a leak check.
    pub fn unreaped(&self) -> usize {
        lock(&self.browsers)
            .iter()
            .filter(|b| !b.was_killed())
            .count()
    }

    /// Commands with this `method` received by all browsers together.
    pub fn commands(&self, method: &str) -> usize {
        lock(&self.browsers).iter().map(|b| b.count(method)).sum()
    }

    /// Waits until `condition` holds, re-checking it after every launch, exit, kill and
    /// command. Returns whether it held within `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&FakeBrowserHost) -> bool,
    ) -> bool {
        let mut changes = self.changes.subscribe();
        let held = async {
            while !condition(self) {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, held).await.is_ok()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    async fn launch_fake(&self, spec: LaunchSpec) -> Result<Launched, LaunchError> {
        let index = self.launches.fetch_add(1, Ordering::SeqCst);
        self.changed();
        let delay = lock(&self.config).delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (failure, hang) = {
            let config = lock(&self.config);
            (config.failure.clone(), config.hang)
        };
        if let Some(reason) = failure {
            debug!(index, %reason, "fake browser launch fails on demand");
            return Err(self.launch_failed(LaunchError::Refused(reason)));
        }
        let (browser, mut transport) = FakeBrowser::start(index, spec, hang, &self.changes);
        lock(&self.browsers).push(browser.clone());
        self.changed();
        let mut reap_if_dropped = KillOnDrop(Some(browser.clone()));
        let ready = wait_until_ready(&browser, &mut transport).await;
        reap_if_dropped.0 = None;
        match ready {
            Ok(version) => {
                debug!(browser = %browser.address(), "fake browser ready");
                Ok(Launched {
                    downloads: browser.spec().downloads.clone(),
                    transport,
                    process: browser,
                    version,
                })
            }
            Err(reason) => {
                browser.kill().await;
                let last_output = String::new();
                Err(self.launch_failed(LaunchError::NotReady {
                    reason,
                    last_output,
                }))
            }
        }
    }

    fn launch_failed(&self, error: LaunchError) -> LaunchError {
        self.failed_launches.fetch_add(1, Ordering::SeqCst);
        self.changed();
        error
    }
}

impl BrowserHost for FakeBrowserHost {
    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<Launched, LaunchError>> {
        self.launch_fake(spec).boxed()
    }

    fn describe(&self) -> String {
        format!("fake in-process browsers ({PRODUCT})")
    }

    fn engines(&self) -> Option<&Engines> {
        self.engines.get()
    }

    fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = Some(limits);
    }

    fn sample_memory(&self) -> BoxFuture<'_, MemorySample> {
        let processes = self.alive();
        async move {
            MemorySample {
                processes,
                resident_bytes: processes as u64 * FAKE_RESIDENT_BYTES,
            }
        }
        .boxed()
    }
}

/// Kills a starting browser whose launch was abandoned (its future dropped).
struct KillOnDrop(Option<Arc<FakeBrowser>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(browser) = self.0.take() {
            debug!(browser = %browser.address(), "fake browser launch abandoned; killing it");
            browser.kill_now();
        }
    }
}

/// Sends the first commands as the real host does and waits for their replies.
async fn wait_until_ready(
    browser: &FakeBrowser,
    transport: &mut CdpTransport,
) -> Result<Value, NotReady> {
    let exited = |browser: &FakeBrowser| {
        let exit = browser
            .exit()
            .unwrap_or_else(|| BrowserExit::Unknown("no exit status".into()));
        NotReady::Exited(exit)
    };
    let (commands, mut startup) = Startup::begin(browser.spec());
    for command in commands {
        if transport.to_browser.send(command).await.is_err() {
            return Err(exited(browser));
        }
    }
    while let Some(msg) = transport.from_browser.recv().await {
        if let Some(ready) = startup.take(&msg) {
            return ready.map_err(NotReady::from);
        }
    }
    Err(exited(browser))
}

/// One fake browser: its simulated process (the [`BrowserProcess`] its launch returned) and
/// the handle tests use to look at it and break it.
pub struct FakeBrowser {
    index: usize,
    spec: LaunchSpec,
    exit: watch::Sender<Option<BrowserExit>>,
    /// Cancelled when the browser must stop at once (crash or kill): its channels close.
    dead: CancellationToken,
    /// Cancelled once the browser's task has ended and dropped its ends of the channels.
    gone: CancellationToken,
    hung: watch::Sender<bool>,
    kills: AtomicUsize,
    cdp: Mutex<Cdp>,
    received: Mutex<Vec<ReceivedCommand>>,
    injected: mpsc::UnboundedSender<String>,
    changes: Arc<watch::Sender<u64>>,
}

impl FakeBrowser {
    /// Creates a browser and starts its task; returns the gateway's end of its transport.
    fn start(
        index: usize,
        spec: LaunchSpec,
        hung: bool,
        changes: &Arc<watch::Sender<u64>>,
    ) -> (Arc<FakeBrowser>, CdpTransport) {
        let (to_browser, commands) = mpsc::channel::<Bytes>(CHANNEL);
        let (replies, from_browser) = mpsc::channel::<BytesMut>(CHANNEL);
        let (injected, events) = mpsc::unbounded_channel();
        let browser = Arc::new(FakeBrowser {
            index,
            spec,
            exit: watch::channel(None).0,
            dead: CancellationToken::new(),
            gone: CancellationToken::new(),
            hung: watch::channel(hung).0,
            kills: AtomicUsize::new(0),
            cdp: Mutex::new(Cdp::new()),
            received: Mutex::new(Vec::new()),
            injected,
            changes: changes.clone(),
        });
        tokio::spawn(serve(browser.clone(), commands, replies, events));
        let transport = CdpTransport {
            to_browser: ToBrowser::channel(to_browser),
            from_browser: FromBrowser::channel(from_browser),
        };
        (browser, transport)
    }

    /// This browser's place in the host's launch order (0 for the first launch, failed
    /// launches included).
    pub fn index(&self) -> usize {
        self.index
    }

    /// What the gateway asked for when it launched this browser.
    pub fn spec(&self) -> &LaunchSpec {
        &self.spec
    }

    /// The id of the browser's only page target.
    pub fn page_target_id(&self) -> String {
        lock(&self.cdp).page.clone()
    }

    /// The pages open now: the first one and those `Target.createTarget` opened (and
    /// `Target.closeTarget` did not close).
    pub fn pages(&self) -> usize {
        lock(&self.cdp).pages()
    }

    /// The browser dies, as if `SIGKILL`ed from outside: both channels close and
    /// [`BrowserProcess::wait_exit`] resolves with `BrowserExit::Signal(9)`. Does not count as
    /// a kill by the gateway ([`FakeBrowser::was_killed`]).
    pub fn crash(&self) {
        if self.exit_with(BrowserExit::Signal(SIGKILL), "crashed on demand") {
            self.dead.cancel();
        }
    }

    /// The browser goes over its session memory limit and its host ends it: both channels
    /// close and [`BrowserProcess::wait_exit`] resolves with `BrowserExit::MemoryLimit`.
    /// Does not count as a kill by the gateway.
    pub fn exceed_memory(&self) {
        if self.exit_with(BrowserExit::MemoryLimit, "over its memory limit") {
            self.dead.cancel();
        }
    }

    /// [`FakeBrowser::exceed_memory`], but the channels close `delay` before the exit is
    /// reported, as a real browser's pipe closes before its host has reaped it.
    pub fn exceed_memory_pipe_first(self: &Arc<Self>, delay: Duration) {
        if !self.is_alive() {
            return;
        }
        self.dead.cancel();
        let browser = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            browser.exit_with(BrowserExit::MemoryLimit, "over its memory limit");
        });
    }

    /// The browser stops reading commands and sending anything, but keeps "running" (a hung
    /// or stopped process) until it is killed, crashed or resumed. Commands sent meanwhile
    /// wait in the channel, which fills up like a pipe.
    pub fn hang(&self) {
        self.hung.send_replace(true);
        debug!(browser = %self.address(), "fake browser hangs");
    }

    /// Ends a [`FakeBrowser::hang`]: the browser goes on with the commands that waited.
    pub fn resume(&self) {
        self.hung.send_replace(false);
        debug!(browser = %self.address(), "fake browser resumes");
    }

    /// Whether the browser is hung.
    pub fn is_hung(&self) -> bool {
        *self.hung.borrow()
    }

    /// How the browser ended, or `None` while it runs.
    pub fn exit(&self) -> Option<BrowserExit> {
        self.exit.borrow().clone()
    }

    /// Whether the browser still runs (not exited, crashed or killed).
    pub fn is_alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Whether [`BrowserProcess::kill`] was called on it (by the gateway, a test or an
    /// abandoned launch).
    pub fn was_killed(&self) -> bool {
        self.kill_count() > 0
    }

    /// How many times [`BrowserProcess::kill`] was called on it.
    pub fn kill_count(&self) -> usize {
        self.kills.load(Ordering::SeqCst)
    }

    /// Every command received so far, in order (the launch's own `Browser.getVersion`, id 0,
    /// first). Malformed messages are not listed.
    pub fn received(&self) -> Vec<ReceivedCommand> {
        lock(&self.received).clone()
    }

    /// The methods of every command received so far, in order.
    pub fn methods(&self) -> Vec<String> {
        lock(&self.received)
            .iter()
            .map(|c| c.method.clone())
            .collect()
    }

    /// How many commands with this `method` were received.
    pub fn count(&self, method: &str) -> usize {
        lock(&self.received)
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// The ids of every CDP session attached now (browser-level and page sessions), but
    /// the pages' sessions the root session's auto-attach made (the gateway's own: see
    /// [`FakeBrowser::root_page_sessions`]).
    pub fn sessions(&self) -> Vec<String> {
        let cdp = lock(&self.cdp);
        let own = |a: &Attached| a.parent.is_none() && a.page;
        cdp.sessions
            .iter()
            .filter(|(_, a)| !own(a))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The sessions the root session attached to pages, by page target id.
    pub fn root_page_sessions(&self) -> Vec<(String, String)> {
        let cdp = lock(&self.cdp);
        cdp.sessions
            .iter()
            .filter(|(_, a)| a.parent.is_none() && a.page)
            .map(|(id, a)| (a.target.clone(), id.clone()))
            .collect()
    }

    /// Sends an event, as Chromium would: on the root session, or on `session_id` (which
    /// need not exist: a browser may still flush events for a session being detached).
    /// Sent after the commands already waiting are answered; held while the browser is
    /// hung; lost once it exited.
    pub fn emit(&self, method: &str, params: Value, session_id: Option<&str>) {
        let _ = self
            .injected
            .send(event_message(method, &params, session_id));
    }

    /// The page changes, as if it drew something: every screencast gets a new
    /// `Page.screencastFrame` at once if its last frame was acknowledged, else as soon as
    /// it is (Chromium sends a screencast's next frame only after the ack).
    pub fn repaint(&self) {
        let mut out = Handled::default();
        lock(&self.cdp).repaint(&mut out);
        for message in out.messages {
            let _ = self.injected.send(message);
        }
    }

    /// The page sessions screencasting now.
    pub fn screencasts(&self) -> usize {
        lock(&self.cdp).casts.len()
    }

    /// Records how the browser ended, unless it already had; notifies waiting tests.
    fn exit_with(&self, exit: BrowserExit, why: &str) -> bool {
        let first = self.exit.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(exit.clone());
            true
        });
        if first {
            debug!(browser = %self.address(), %exit, why, "fake browser exited");
            self.changed();
        }
        first
    }

    /// The synchronous part of a kill: the browser is marked killed, exits and closes its
    /// channels. Its task ends soon after.
    fn kill_now(&self) {
        self.kills.fetch_add(1, Ordering::SeqCst);
        self.exit_with(BrowserExit::Signal(SIGKILL), "killed");
        self.dead.cancel();
        self.changed();
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Waits until the browser is not hung. `false` if it died meanwhile.
    async fn wait_running(&self) -> bool {
        let mut hung = self.hung.subscribe();
        tokio::select! {
            _ = self.dead.cancelled() => false,
            running = hung.wait_for(|hung| !*hung) => running.is_ok(),
        }
    }

    /// Sends one message to the gateway once the browser is not hung. `false` if the
    /// browser died or the gateway dropped its receiver.
    async fn deliver(&self, replies: &mpsc::Sender<BytesMut>, msg: String) -> bool {
        if !self.wait_running().await {
            return false;
        }
        tokio::select! {
            _ = self.dead.cancelled() => false,
            sent = replies.send(BytesMut::from(msg.as_bytes())) => sent.is_ok(),
        }
    }

    /// Answers one raw command: the messages to send, and whether the browser then exits.
    fn handle(&self, raw: &[u8]) -> Handled {
        let mut out = Handled::default();
        match parse_command(raw) {
            Err(error) => out.messages.push(error),
            Ok(command) => {
                lock(&self.received).push(ReceivedCommand {
                    id: command.id.as_i64(),
                    method: command.method.clone(),
                    session_id: command.session.clone(),
                    params: command.params.clone(),
                });
                lock(&self.cdp).dispatch(&command, &mut out);
            }
        }
        self.changed();
        out
    }
}

impl BrowserProcess for FakeBrowser {
    fn address(&self) -> String {
        format!(
            "fake browser #{} (session {})",
            self.index, self.spec.session_id
        )
    }

    fn wait_exit(&self) -> BoxFuture<'_, BrowserExit> {
        let mut exit = self.exit.subscribe();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(state) => state
                    .clone()
                    .unwrap_or_else(|| BrowserExit::Unknown("no status".into())),
                Err(_) => BrowserExit::Unknown("exit watcher ended".into()),
            }
        }
        .boxed()
    }

    fn kill(&self) -> BoxFuture<'_, ()> {
        self.kill_now();
        async move { self.gone.cancelled().await }.boxed()
    }

    fn freeze(&self, frozen: bool) {
        self.hung.send_replace(frozen);
    }
}

/// A fake browser's task: reads commands, writes replies and events, until it exits.
/// Returning drops its ends of both channels, which is what closes them.
async fn serve(
    browser: Arc<FakeBrowser>,
    mut commands: mpsc::Receiver<Bytes>,
    replies: mpsc::Sender<BytesMut>,
    mut events: mpsc::UnboundedReceiver<String>,
) {
    let _gone = browser.gone.clone().drop_guard();
    loop {
        if !browser.wait_running().await {
            return;
        }
        let mut hung = browser.hung.subscribe();
        // Biased: a crash or hang wins, and commands already sent are answered before
        // events emitted after them, so that tests see a deterministic order.
        let handled = tokio::select! {
            biased;
            _ = browser.dead.cancelled() => return,
            _ = hung.wait_for(|hung| *hung) => continue,
            command = commands.recv() => match command {
                Some(command) => browser.handle(&command),
                None => {
                    // Chromium exits when its CDP pipe closes.
                    browser.exit_with(BrowserExit::Code(0), "its CDP channel closed");
                    return;
                }
            },
            Some(event) = events.recv() => Handled { messages: vec![event], exit: false },
        };
        for msg in handled.messages {
            if !browser.deliver(&replies, msg).await {
                browser.exit_with(BrowserExit::Code(0), "the gateway stopped reading");
                return;
            }
        }
        if handled.exit {
            browser.exit_with(BrowserExit::Code(0), "Browser.close");
            return;
        }
    }
}

/// A parsed command.
struct Command {
    id: Value,
    method: String,
    session: Option<String>,
    params: Value,
}

/// Reads a command, or returns the error Chromium would answer a malformed one with.
fn parse_command(raw: &[u8]) -> Result<Command, String> {
    let root_error = |code: i64, message: &str| {
        json!({ "error": { "code": code, "message": message } }).to_string()
    };
    let Ok(Value::Object(mut command)) = serde_json::from_slice::<Value>(raw) else {
        return Err(root_error(-32700, "Message must be a valid JSON"));
    };
    let id = match command.remove("id") {
        Some(id) if id.is_i64() || id.is_u64() => id,
        _ => {
            return Err(root_error(
                -32600,
                "Message must have integer 'id' property",
            ));
        }
    };
    let Some(Value::String(method)) = command.remove("method") else {
        return Err(error_message(
            &id,
            -32600,
            "Message must have string 'method' property",
            None,
        ));
    };
    let session = match command.remove("sessionId") {
        None => None,
        Some(Value::String(session)) => Some(session),
        Some(_) => return Err(session_not_found(&id)),
    };
    let params = command.remove("params").unwrap_or_else(|| json!({}));
    Ok(Command {
        id,
        method,
        session,
        params,
    })
}

fn session_not_found(id: &Value) -> String {
    error_message(id, -32001, "Session with given id not found.", None)
}

/// What a command produced.
#[derive(Default)]
struct Handled {
    /// Replies and events, in the order Chromium sends them.
    messages: Vec<String>,
    /// Whether the browser exits (code 0) once they are sent.
    exit: bool,
}

impl Handled {
    fn reply(&mut self, command: &Command, result: Value) {
        let session = session_member(command.session.as_deref());
        self.messages.push(format!(
            r#"{{"id":{},"result":{result}{session}}}"#,
            command.id
        ));
    }

    fn error(&mut self, command: &Command, code: i64, message: &str) {
        let reply = error_message(&command.id, code, message, command.session.as_deref());
        self.messages.push(reply);
    }

    fn event(&mut self, method: &str, params: Value, session: Option<&str>) {
        self.messages.push(event_message(method, &params, session));
    }
}

/// `,"sessionId":"…"`, the member Chromium ends every session-scoped message with.
fn session_member(session: Option<&str>) -> String {
    session.map_or_else(String::new, |s| {
        format!(r#","sessionId":{}"#, Value::from(s))
    })
}

fn error_message(id: &Value, code: i64, message: &str, session: Option<&str>) -> String {
    let error = json!({ "code": code, "message": message });
    let session = session_member(session);
    format!(r#"{{"id":{id},"error":{error}{session}}}"#)
}

fn event_message(method: &str, params: &Value, session: Option<&str>) -> String {
    let session = session_member(session);
    format!(
        r#"{{"method":{},"params":{params}{session}}}"#,
        Value::from(method)
    )
}

/// One attached CDP session.
struct Attached {
    /// The session it was attached from (`None`: the root session).
    parent: Option<String>,
    /// The target it is attached to.
    target: String,
    /// Whether that target is the page (otherwise: the browser target).
    page: bool,
    /// Whether its parent's `Target.setAutoAttach` attached it.
    auto_attached: bool,
}

/// A fake browser's targets and sessions.
struct Cdp {
    browser_target: String,
    page: String,
    context: String,
    sessions: HashMap<String, Attached>,
    /// Pages `Target.createTarget` opened, besides the first one.
    extra_pages: Vec<String>,
    /// Whether the root session auto-attaches (waiting for the debugger): it is then
    /// attached to each page `Target.createTarget` opens, as Chromium does.
    root_auto_attach: bool,
    /// Sessions (`None`: the root session) that asked `Target.setDiscoverTargets`.
    discovering: Vec<Option<String>>,
    /// Page sessions screencasting, by session id.
    casts: HashMap<String, Cast>,
    /// The last screencast frame's number (its `sessionId` parameter), across casts.
    frames: u64,
}

/// One page session's screencast.
#[derive(Debug, Default)]
struct Cast {
    /// The frame sent last and not yet acknowledged, if any.
    unacked: Option<u64>,
    /// The page changed while a frame was unacknowledged: the next frame goes with the ack.
    dirty: bool,
}

impl Cdp {
    fn new() -> Cdp {
        Cdp {
            browser_target: fake_id(0xB),
            page: fake_id(0x7A),
            context: fake_id(0xC0),
            sessions: HashMap::new(),
            extra_pages: Vec::new(),
            root_auto_attach: false,
            discovering: Vec::new(),
            casts: HashMap::new(),
            frames: 0,
        }
    }

    fn dispatch(&mut self, command: &Command, out: &mut Handled) {
        if let Some(session) = &command.session
            && !self.sessions.contains_key(session)
        {
            out.messages.push(session_not_found(&command.id));
            return;
        }
        match command.method.as_str() {
            "Browser.getVersion" => out.reply(command, version()),
            "Browser.close" => {
                out.reply(command, json!({}));
                out.exit = true;
            }
            "Target.attachToBrowserTarget" => {
                let session = self.attach(command.session.clone(), false, false, out);
                out.reply(command, json!({ "sessionId": session }));
            }
            "Target.attachToTarget" => self.attach_to_target(command, out),
            "Target.setAutoAttach" => self.set_auto_attach(command, out),
            "Target.getTargets" => {
                let info = self.target_info(true, self.page_attached());
                out.reply(command, json!({ "targetInfos": [info] }));
            }
            "Target.detachFromTarget" => self.detach_from_target(command, out),
            "Runtime.evaluate" => out.reply(command, evaluate(&command.params)),
            "Target.setDiscoverTargets" => self.set_discover(command, out),
            "Target.createTarget" => self.create_target(command, out),
            "Target.closeTarget" => self.close_target(command, out),
            "Page.startScreencast"
            | "Page.screencastFrameAck"
            | "Page.stopScreencast"
            | "Page.getLayoutMetrics"
            | "Page.captureScreenshot" => self.page_command(command, out),
            method if is_page_change(method) => {
                out.reply(command, json!({}));
                self.repaint(out);
            }
            _ => out.reply(command, json!({})),
        }
    }

    /// The page commands the live viewer and the computer API use: screencasts, layout
    /// metrics and screenshots.
    fn page_command(&mut self, command: &Command, out: &mut Handled) {
        let session = command.session.clone().unwrap_or_default();
        let (width, height) = FAKE_VIEWPORT;
        match command.method.as_str() {
            "Page.startScreencast" => {
                out.reply(command, json!({}));
                self.casts.insert(session.clone(), Cast::default());
                self.frame(&session, out);
            }
            "Page.screencastFrameAck" => {
                out.reply(command, json!({}));
                let acked = command.params["sessionId"].as_u64();
                let dirty = match self.casts.get_mut(&session) {
                    Some(cast) if cast.unacked.is_some() && cast.unacked == acked => {
                        cast.unacked = None;
                        std::mem::take(&mut cast.dirty)
                    }
                    _ => false,
                };
                if dirty {
                    self.frame(&session, out);
                }
            }
            "Page.stopScreencast" => {
                self.casts.remove(&session);
                out.reply(command, json!({}));
            }
            "Page.getLayoutMetrics" => {
                let view =
                    json!({"clientWidth": width, "clientHeight": height, "pageX": 0, "pageY": 0});
                out.reply(
                    command,
                    json!({"cssLayoutViewport": view, "layoutViewport": view}),
                );
            }
            _ => {
                let png = command.params["format"].as_str() == Some("png");
                let data = if png { FAKE_PNG } else { FAKE_JPEG };
                out.reply(command, json!({ "data": data }));
            }
        }
    }

    /// Sends the page session's screencast a frame.
    fn frame(&mut self, session: &str, out: &mut Handled) {
        let Some(cast) = self.casts.get_mut(session) else {
            return;
        };
        self.frames += 1;
        cast.unacked = Some(self.frames);
        let (width, height) = FAKE_VIEWPORT;
        let params = json!({
            "data": FAKE_JPEG,
            "metadata": {"offsetTop": 0, "pageScaleFactor": 1, "deviceWidth": width,
                "deviceHeight": height, "scrollOffsetX": 0, "scrollOffsetY": 0},
            "sessionId": self.frames,
        });
        out.event("Page.screencastFrame", params, Some(session));
    }

    /// The page changed: a frame to every screencast whose last frame was acknowledged.
    fn repaint(&mut self, out: &mut Handled) {
        let mut ready: Vec<String> = Vec::new();
        for (session, cast) in &mut self.casts {
            if cast.unacked.is_some() {
                cast.dirty = true;
            } else {
                ready.push(session.clone());
            }
        }
        ready.sort();
        for session in ready {
            self.frame(&session, out);
        }
    }

    /// Attaches a session to the page (or the browser target) under `parent` and announces
    /// it there with `Target.attachedToTarget`, as Chromium does for every attach: explicit,
    /// automatic and `Target.attachToBrowserTarget` alike. The gateway's router learns who
    /// owns a new session from that event.
    fn attach(
        &mut self,
        parent: Option<String>,
        page: bool,
        auto: bool,
        out: &mut Handled,
    ) -> String {
        let target = if page {
            self.page.clone()
        } else {
            self.browser_target.clone()
        };
        self.attach_to(parent, (target, page), (auto, false), out)
    }

    /// [`Cdp::attach`] to target `target` (a page when `page`), `waiting` for the debugger.
    fn attach_to(
        &mut self,
        parent: Option<String>,
        (target, page): (String, bool),
        (auto, waiting): (bool, bool),
        out: &mut Handled,
    ) -> String {
        let session = fake_id(0x5E55);
        let mut info = self.target_info(page, true);
        info["targetId"] = target.as_str().into();
        let attached = Attached {
            parent: parent.clone(),
            target,
            page,
            auto_attached: auto,
        };
        self.sessions.insert(session.clone(), attached);
        let params = json!({
            "sessionId": session,
            "targetInfo": info,
            "waitingForDebugger": waiting,
        });
        out.event("Target.attachedToTarget", params, parent.as_deref());
        session
    }

    /// `Target.setDiscoverTargets`: announces every page to the session, and each page
    /// created or closed from now on.
    fn set_discover(&mut self, command: &Command, out: &mut Handled) {
        let on = command.params["discover"].as_bool().unwrap_or(false);
        self.discovering.retain(|s| *s != command.session);
        if on {
            self.discovering.push(command.session.clone());
            let pages = std::iter::once(&self.page).chain(&self.extra_pages);
            for page in pages {
                let info = self.page_info(page);
                let params = json!({ "targetInfo": info });
                out.event("Target.targetCreated", params, command.session.as_deref());
            }
        }
        out.reply(command, json!({}));
    }

    /// `Target.createTarget`: a new page. Only the root session's auto-attach attaches to
    /// it in this fake (waiting for the debugger, as it asked).
    fn create_target(&mut self, command: &Command, out: &mut Handled) {
        let page = fake_id(0x7A);
        self.extra_pages.push(page.clone());
        self.announce(
            "Target.targetCreated",
            json!({ "targetInfo": self.page_info(&page) }),
            out,
        );
        if self.root_auto_attach {
            self.attach_to(None, (page.clone(), true), (true, true), out);
        }
        out.reply(command, json!({ "targetId": page }));
    }

    /// `Target.closeTarget` of a page `Target.createTarget` opened.
    fn close_target(&mut self, command: &Command, out: &mut Handled) {
        let target = command.params["targetId"].as_str().unwrap_or_default();
        let Some(at) = self.extra_pages.iter().position(|p| p == target) else {
            out.error(command, -32602, "No target with given id found");
            return;
        };
        let page = self.extra_pages.remove(at);
        let attached: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, a)| a.target == page)
            .map(|(id, _)| id.clone())
            .collect();
        for session in attached {
            self.detach(&session, out);
        }
        self.announce("Target.targetDestroyed", json!({ "targetId": page }), out);
        out.reply(command, json!({ "success": true }));
    }

    /// Sends a target event to every discovering session.
    fn announce(&self, method: &str, params: Value, out: &mut Handled) {
        for session in &self.discovering {
            out.event(method, params.clone(), session.as_deref());
        }
    }

    /// The `TargetInfo` of page `id`.
    fn page_info(&self, id: &str) -> Value {
        let mut info = self.target_info(true, false);
        info["targetId"] = id.into();
        info
    }

    /// The pages open now: the first one and those `Target.createTarget` opened.
    fn pages(&self) -> usize {
        1 + self.extra_pages.len()
    }

    fn page_attached(&self) -> bool {
        self.sessions.values().any(|s| s.page)
    }

    fn target_info(&self, page: bool, attached: bool) -> Value {
        if !page {
            return json!({
                "targetId": self.browser_target,
                "type": "browser",
                "title": "",
                "url": "",
                "attached": attached,
                "canAccessOpener": false,
            });
        }
        json!({
            "targetId": self.page,
            "type": "page",
            "title": "",
            "url": "about:blank",
            "attached": attached,
            "canAccessOpener": false,
            "browserContextId": self.context,
        })
    }

    fn attach_to_target(&mut self, command: &Command, out: &mut Handled) {
        if command.params["targetId"].as_str() != Some(self.page.as_str()) {
            out.error(command, -32602, "No target with given id found");
            return;
        }
        let session = self.attach(command.session.clone(), true, false, out);
        out.reply(command, json!({ "sessionId": session }));
    }

    fn is_browser_level(&self, session: Option<&String>) -> bool {
        session.is_none_or(|s| self.sessions.get(s).is_some_and(|a| !a.page))
    }

    fn set_auto_attach(&mut self, command: &Command, out: &mut Handled) {
        let on = command.params["autoAttach"].as_bool().unwrap_or(false);
        let parent = command.session.clone();
        if !self.is_browser_level(parent.as_ref()) {
            // A page has no child targets in this fake.
            out.reply(command, json!({}));
            return;
        }
        if on && command.params["flatten"].as_bool() != Some(true) {
            let message = "Only flatten protocol is supported with browser level auto-attach";
            out.error(command, -32000, message);
            return;
        }
        if parent.is_none() {
            self.root_auto_attach = on;
        }
        let auto_children: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, a)| a.parent == parent && a.auto_attached)
            .map(|(id, _)| id.clone())
            .collect();
        if on {
            // Already auto-attached targets are not announced again.
            if auto_children.is_empty() {
                self.attach(parent, true, true, out);
            }
        } else {
            for child in auto_children {
                self.detach(&child, out);
            }
        }
        out.reply(command, json!({}));
    }

    fn detach_from_target(&mut self, command: &Command, out: &mut Handled) {
        let params = &command.params;
        let child = self.sessions.iter().find(|(id, a)| {
            a.parent == command.session
                && match (params["sessionId"].as_str(), params["targetId"].as_str()) {
                    (Some(session), _) => session == id.as_str(),
                    (None, Some(target)) => target == a.target,
                    (None, None) => false,
                }
        });
        let Some((child, _)) = child else {
            out.error(command, -32602, "No session with given id");
            return;
        };
        let child = child.clone();
        self.detach(&child, out);
        out.reply(command, json!({}));
    }

    /// Ends `session` and every session attached under it, and tells its parent.
    fn detach(&mut self, session: &str, out: &mut Handled) {
        let Some(attached) = self.sessions.remove(session) else {
            return;
        };
        self.casts.remove(session);
        let mut orphans = vec![session.to_owned()];
        while let Some(parent) = orphans.pop() {
            let parent = Some(parent);
            let children: Vec<String> = self
                .sessions
                .iter()
                .filter(|(_, a)| a.parent == parent)
                .map(|(id, _)| id.clone())
                .collect();
            for child in children {
                self.sessions.remove(&child);
                self.casts.remove(&child);
                orphans.push(child);
            }
        }
        let params = json!({ "sessionId": session, "targetId": attached.target });
        out.event(
            "Target.detachedFromTarget",
            params,
            attached.parent.as_deref(),
        );
    }
}

/// Whether a command changes what the page shows (input, navigation), so that a
/// screencast gets a new frame.
fn is_page_change(method: &str) -> bool {
    method.starts_with("Input.") || matches!(method, "Page.navigate" | "Page.reload")
}

/// `Runtime.evaluate`: `1+1` is 2; any other expression comes back as a string, so that
/// tests can tell replies apart.
fn evaluate(params: &Value) -> Value {
    match params["expression"].as_str() {
        Some("1+1") => json!({ "result": { "type": "number", "value": 2, "description": "2" } }),
        Some(expression) => json!({ "result": { "type": "string", "value": expression } }),
        None => json!({ "result": { "type": "undefined" } }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdp::message::{self, TargetEvent};
    use tokio::time::timeout;

    /// Longest any single step may take before the test fails instead of hanging.
    const STEP: Duration = Duration::from_secs(2);

    fn spec() -> LaunchSpec {
        LaunchSpec {
            session_id: uuid::Uuid::new_v4(),
            dimensions: Default::default(),
            user_agent: Some("agent/1".into()),
            proxy_server: None,
            proxy_auth: None,
            headful: false,
            downloads: None,
        }
    }

    async fn launch(host: &FakeBrowserHost) -> Launched {
        timeout(STEP, host.launch(spec()))
            .await
            .expect("launch in time")
            .expect("launch")
    }

    async fn send(transport: &CdpTransport, command: Value) {
        transport
            .to_browser
            .send(Bytes::from(command.to_string()))
            .await
            .expect("browser reads");
    }

    async fn next_raw(transport: &mut CdpTransport) -> BytesMut {
        timeout(STEP, transport.from_browser.recv())
            .await
            .expect("a message in time")
            .expect("channel open")
    }

    async fn next(transport: &mut CdpTransport) -> Value {
        serde_json::from_slice(&next_raw(transport).await).expect("JSON")
    }

    async fn closed(transport: &mut CdpTransport) -> bool {
        matches!(timeout(STEP, transport.from_browser.recv()).await, Ok(None))
    }

    fn tail(raw: &[u8]) -> Option<&str> {
        message::tail_session(raw).map(|t| t.id(raw))
    }

    #[tokio::test]
    async fn answers_get_version_like_chromium() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        assert_eq!(launched.version, version());
        assert_eq!(launched.version["product"], "FakeChrome/1.0");
        send(
            &launched.transport,
            json!({"id": 1, "method": "Browser.getVersion"}),
        )
        .await;
        let raw = next_raw(&mut launched.transport).await;
        assert!(raw.starts_with(br#"{"id":1,"result":"#));
        assert_eq!(message::reply_id(&raw), Some(1));
        assert_eq!(tail(&raw), None, "a root reply has no sessionId");
        let browser = host.last().expect("a browser");
        assert_eq!(
            browser.count("Browser.getVersion"),
            2,
            "launch's probe and ours"
        );
        assert_eq!(browser.spec().user_agent.as_deref(), Some("agent/1"));
        assert_eq!((host.launches(), host.alive(), host.unreaped()), (1, 1, 1));
        launched.process.kill().await;
        assert_eq!((host.alive(), host.unreaped()), (0, 0));
    }

    /// Attaches a browser session as the gateway does for a client, turns auto-attach on
    /// there as Playwright and Puppeteer do, and checks the page's announcement. Returns the
    /// browser session and the page session.
    async fn attach_client(t: &mut CdpTransport, browser: &FakeBrowser) -> (String, String) {
        send(
            t,
            json!({"id": 1, "method": "Target.attachToBrowserTarget"}),
        )
        .await;
        let raw = next_raw(t).await;
        assert_eq!(tail(&raw), None, "announced on the root session");
        let Some(TargetEvent::Attached(announced)) = message::target_event(&raw) else {
            panic!("not an attach: {}", String::from_utf8_lossy(&raw));
        };
        let event: Value = serde_json::from_slice(&raw).expect("JSON");
        assert_eq!(event["params"]["targetInfo"]["type"], "browser");
        let reply = next(t).await;
        assert_eq!(reply["result"]["sessionId"], *announced);
        let browser_session = reply["result"]["sessionId"]
            .as_str()
            .expect("id")
            .to_owned();
        send(
            t,
            json!({"id": 2, "method": "Target.setAutoAttach", "sessionId": browser_session,
            "params": {"autoAttach": true, "waitForDebuggerOnStart": false, "flatten": true}}),
        )
        .await;
        let raw = next_raw(t).await;
        assert!(message::is_event(&raw));
        assert_eq!(tail(&raw), Some(browser_session.as_str()));
        let Some(TargetEvent::Attached(page_session)) = message::target_event(&raw) else {
            panic!("not an attach: {}", String::from_utf8_lossy(&raw));
        };
        let page_session = page_session.into_owned();
        let event: Value = serde_json::from_slice(&raw).expect("JSON");
        let info = &event["params"]["targetInfo"];
        assert_eq!(info["targetId"], browser.page_target_id());
        assert_eq!(
            (&info["type"], &info["url"], &info["attached"]),
            (&json!("page"), &json!("about:blank"), &json!(true))
        );
        assert_eq!(event["params"]["waitingForDebugger"], false);
        let raw = next_raw(t).await;
        assert_eq!(message::reply_id(&raw), Some(2));
        assert_eq!(tail(&raw), Some(browser_session.as_str()));
        (browser_session, page_session)
    }

    #[tokio::test]
    async fn a_screencast_sends_a_frame_per_change_and_waits_for_each_ack() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        let browser = host.last().expect("a browser");
        let t = &mut launched.transport;
        let (_, page) = attach_client(t, &browser).await;
        let on_page = |id: i64, method: &str, params: Value| json!({"id": id, "method": method, "params": params, "sessionId": page});
        send(
            t,
            on_page(3, "Page.startScreencast", json!({"format": "jpeg"})),
        )
        .await;
        assert_eq!(next(t).await["id"], 3);
        let frame = next(t).await;
        assert_eq!(frame["method"], "Page.screencastFrame", "{frame}");
        assert_eq!(frame["sessionId"], page.as_str());
        assert_eq!(frame["params"]["data"], FAKE_JPEG);
        assert_eq!(frame["params"]["metadata"]["deviceWidth"], FAKE_VIEWPORT.0);
        assert_eq!(browser.screencasts(), 1);
        // The page changes before the frame is acknowledged: the next frame waits for the ack.
        browser.repaint();
        send(t, on_page(4, "Input.insertText", json!({"text": "a"}))).await;
        assert_eq!(next(t).await["id"], 4, "no frame before the ack");
        let ack = json!({"sessionId": frame["params"]["sessionId"]});
        send(t, on_page(5, "Page.screencastFrameAck", ack)).await;
        assert_eq!(next(t).await["id"], 5);
        let second = next(t).await;
        assert_eq!(second["method"], "Page.screencastFrame", "{second}");
        assert_ne!(second["params"]["sessionId"], frame["params"]["sessionId"]);
        // Stopped: no more frames.
        send(t, on_page(6, "Page.stopScreencast", json!({}))).await;
        assert_eq!(next(t).await["id"], 6);
        browser.repaint();
        send(t, on_page(7, "Page.reload", json!({}))).await;
        assert_eq!(next(t).await["id"], 7, "no frame once stopped");
        assert_eq!(browser.screencasts(), 0);
        // The computer API's page commands.
        send(
            t,
            on_page(8, "Page.captureScreenshot", json!({"format": "png"})),
        )
        .await;
        let shot = next(t).await;
        assert!(
            shot["result"]["data"]
                .as_str()
                .is_some_and(|d| d.starts_with("iVBOR"))
        );
        send(t, on_page(9, "Page.getLayoutMetrics", json!({}))).await;
        let metrics = next(t).await;
        assert_eq!(
            metrics["result"]["cssLayoutViewport"]["clientWidth"],
            FAKE_VIEWPORT.0
        );
    }

    #[tokio::test]
    async fn browser_session_auto_attaches_the_page() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        let browser = host.last().expect("a browser");
        let t = &mut launched.transport;
        let (_, page_session) = attach_client(t, &browser).await;
        for (id, expression, value) in [
            (3, "1+1", json!(2)),
            (4, "document.title", json!("document.title")),
        ] {
            send(
                t,
                json!({"id": id, "method": "Runtime.evaluate", "sessionId": page_session,
                "params": {"expression": expression}}),
            )
            .await;
            let raw = next_raw(t).await;
            assert_eq!(tail(&raw), Some(page_session.as_str()));
            let reply: Value = serde_json::from_slice(&raw).expect("JSON");
            assert_eq!(
                (&reply["id"], &reply["result"]["result"]["value"]),
                (&json!(id), &value)
            );
        }
        send(t, json!({"id": 5, "method": "Target.getTargets"})).await;
        let targets = next(t).await;
        assert_eq!(
            targets["result"]["targetInfos"][0]["targetId"],
            browser.page_target_id()
        );
        assert_eq!(browser.sessions().len(), 2);
        launched.process.kill().await;
    }

    #[tokio::test]
    async fn detaching_a_browser_session_ends_its_pages() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        let browser = host.last().expect("a browser");
        let t = &mut launched.transport;
        let (browser_session, page_session) = attach_client(t, &browser).await;
        // The gateway detaches a client's browser session on the root session.
        send(t, json!({"id": 6, "method": "Target.detachFromTarget", "params": {"sessionId": browser_session}})).await;
        let raw = next_raw(t).await;
        assert_eq!(
            message::target_event(&raw),
            Some(TargetEvent::Detached(browser_session.as_str().into()))
        );
        assert_eq!(tail(&raw), None, "announced on the root session");
        assert_eq!(next(t).await, json!({"id": 6, "result": {}}));
        assert!(
            browser.sessions().is_empty(),
            "the page session went with it"
        );
        send(
            t,
            json!({"id": 7, "method": "Runtime.evaluate", "sessionId": page_session}),
        )
        .await;
        assert_eq!(next(t).await["error"]["code"], -32001);
        send(t, json!({"id": 8, "method": "Target.detachFromTarget", "params": {"sessionId": browser_session}})).await;
        assert_eq!(next(t).await["error"]["code"], -32602);
        launched.process.kill().await;
    }

    #[tokio::test]
    async fn unknown_sessions_get_chromiums_error() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        let t = &mut launched.transport;
        send(
            t,
            json!({"id": 5, "method": "Runtime.evaluate", "sessionId": "0123ABCD"}),
        )
        .await;
        let raw = next_raw(t).await;
        assert_eq!(
            &raw[..],
            br#"{"id":5,"error":{"code":-32001,"message":"Session with given id not found."}}"#
        );
        send(
            t,
            json!({"id": 6, "method": "Page.enable", "sessionId": "0123ABCD"}),
        )
        .await;
        assert_eq!(message::reply_id(&next_raw(t).await), Some(6));
        send(
            t,
            json!({"id": 7, "method": "Page.navigate", "params": {"url": "about:blank"}}),
        )
        .await;
        assert_eq!(next(t).await, json!({"id": 7, "result": {}}));
        let browser = host.last().expect("a browser");
        let last = browser.received().pop().expect("a command");
        assert_eq!((last.id, last.method.as_str()), (Some(7), "Page.navigate"));
        assert_eq!(last.params["url"], "about:blank");
        launched.process.kill().await;
    }

    #[tokio::test]
    async fn browser_close_exits_with_code_zero() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        send(
            &launched.transport,
            json!({"id": 9, "method": "Browser.close"}),
        )
        .await;
        assert_eq!(
            next(&mut launched.transport).await,
            json!({"id": 9, "result": {}})
        );
        assert!(closed(&mut launched.transport).await);
        let exit = timeout(STEP, launched.process.wait_exit()).await;
        assert_eq!(exit.expect("exit in time"), BrowserExit::Code(0));
        assert!(
            launched
                .transport
                .to_browser
                .send(Bytes::from_static(b"{}"))
                .await
                .is_err()
        );
        assert_eq!((host.alive(), host.unreaped()), (0, 1));
        timeout(STEP, launched.process.kill())
            .await
            .expect("kill in time");
        assert_eq!(
            launched.process.wait_exit().await,
            BrowserExit::Code(0),
            "a kill after exit keeps the exit"
        );
        assert_eq!(host.unreaped(), 0);
    }

    #[tokio::test]
    async fn crash_closes_the_channels_and_exits_by_signal() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        let browser = host.last().expect("a browser");
        browser.crash();
        assert!(closed(&mut launched.transport).await);
        let exit = timeout(STEP, launched.process.wait_exit()).await;
        assert_eq!(exit.expect("exit in time"), BrowserExit::Signal(9));
        assert_eq!(browser.exit(), Some(BrowserExit::Signal(9)));
        assert!(!browser.was_killed());
        assert_eq!((host.alive(), host.unreaped()), (0, 1));
    }

    #[tokio::test]
    async fn a_hung_browser_answers_nothing_until_killed_or_resumed() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        let browser = host.last().expect("a browser");
        browser.hang();
        send(
            &launched.transport,
            json!({"id": 1, "method": "Browser.getVersion"}),
        )
        .await;
        browser.emit("Page.loadEventFired", json!({}), None);
        let silent = timeout(
            Duration::from_millis(200),
            launched.transport.from_browser.recv(),
        )
        .await;
        assert!(silent.is_err(), "a hung browser sent {silent:?}");
        assert!(browser.is_alive() && browser.is_hung());
        assert!(
            launched.process.wait_exit().now_or_never().is_none(),
            "still running"
        );
        browser.resume();
        assert_eq!(
            message::reply_id(&next_raw(&mut launched.transport).await),
            Some(1)
        );
        assert!(message::is_event(&next_raw(&mut launched.transport).await));

        browser.hang();
        timeout(STEP, launched.process.kill())
            .await
            .expect("kill in time");
        assert!(closed(&mut launched.transport).await);
        assert_eq!(launched.process.wait_exit().await, BrowserExit::Signal(9));
    }

    #[tokio::test]
    async fn kill_is_idempotent() {
        let host = FakeBrowserHost::new();
        let mut launched = launch(&host).await;
        let process = launched.process.clone();
        timeout(STEP, process.kill())
            .await
            .expect("first kill in time");
        timeout(STEP, process.kill())
            .await
            .expect("second kill in time");
        assert!(closed(&mut launched.transport).await);
        assert_eq!(process.wait_exit().await, BrowserExit::Signal(9));
        assert_eq!(process.wait_exit().await, BrowserExit::Signal(9));
        let browser = host.last().expect("a browser");
        assert_eq!(browser.kill_count(), 2);
        assert_eq!((host.alive(), host.unreaped()), (0, 0));
    }

    #[tokio::test]
    async fn counts_live_browsers() {
        let host = FakeBrowserHost::new();
        let as_dyn: Arc<dyn BrowserHost> = host.clone();
        let mut first = timeout(STEP, as_dyn.launch(spec()))
            .await
            .expect("in time")
            .expect("launch");
        let second = launch(&host).await;
        let third = launch(&host).await;
        assert_eq!((host.launches(), host.alive(), host.unreaped()), (3, 3, 3));
        assert_eq!(as_dyn.sample_memory().await.processes, 3);
        host.browsers()[0].crash();
        second.process.kill().await;
        assert!(host.wait_until(STEP, |h| h.alive() == 1).await);
        drop(third.transport);
        assert!(
            host.wait_until(STEP, |h| h.alive() == 0).await,
            "a closed pipe ends Chromium"
        );
        assert_eq!(third.process.wait_exit().await, BrowserExit::Code(0));
        assert!(closed(&mut first.transport).await);
        assert_eq!(host.unreaped(), 2);
    }

    #[tokio::test]
    async fn launches_fail_and_wait_on_demand() {
        let host = FakeBrowserHost::new();
        host.fail_launches(Some("no Chromium today"));
        let failed = timeout(STEP, host.launch(spec())).await.expect("in time");
        assert!(
            matches!(&failed, Err(LaunchError::Refused(why)) if why == "no Chromium today"),
            "{:?}",
            failed.err()
        );
        assert_eq!(
            (
                host.launches(),
                host.failed_launches(),
                host.browsers().len()
            ),
            (1, 1, 0)
        );
        host.fail_launches(None);
        host.set_launch_delay(Duration::from_millis(50));
        let started = tokio::time::Instant::now();
        let launched = launch(&host).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        launched.process.kill().await;
    }

    #[tokio::test]
    async fn hung_launches_wait_for_the_browser() {
        let host = FakeBrowserHost::new();
        host.hang_launches(true);
        let launching = tokio::spawn({
            let host = host.clone();
            async move { host.launch(spec()).await.map(|l| l.version) }
        });
        assert!(host.wait_until(STEP, |h| h.browsers().len() == 1).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!launching.is_finished());
        host.last().expect("a browser").resume();
        let ready = timeout(STEP, launching)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!(ready.expect("launched"), version());

        // A hung launch fails when its browser dies, and is reaped.
        let launching = tokio::spawn({
            let host = host.clone();
            async move { host.launch(spec()).await.map(|l| l.version) }
        });
        assert!(host.wait_until(STEP, |h| h.browsers().len() == 2).await);
        host.last().expect("a browser").crash();
        let failed = timeout(STEP, launching)
            .await
            .expect("in time")
            .expect("task");
        let failed = failed.expect_err("failed");
        assert!(
            matches!(
                failed,
                LaunchError::NotReady {
                    reason: NotReady::Exited(BrowserExit::Signal(9)),
                    ..
                }
            ),
            "{failed}"
        );
        assert_eq!(host.failed_launches(), 1);
        assert!(
            host.last().expect("a browser").was_killed(),
            "the launch reaped it"
        );

        // An abandoned launch kills its browser.
        let abandoned = timeout(Duration::from_millis(50), host.launch(spec())).await;
        assert!(abandoned.is_err());
        let browser = host.last().expect("a browser");
        assert!(browser.was_killed() && !browser.is_alive());
    }
}
