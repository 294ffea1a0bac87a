//! The viewer section: the live viewer's WebSocket (`debugUrl`'s `/viewer/ws`) against
//! direct Chromium's own screencast, on one 1280×720 page per target.
//!
//! Owns the section's plan and results and its measurements, with their progress lines:
//! frame latency (a colour change on the page to the frame showing it decoded at the
//! client, and painted by ingot's own viewer page in a headless Chromium, [`PersonViewer`]),
//! frames per second on an animated page with one and with many viewers, the gateway's CPU
//! time and memory per viewer, the time a new viewer waits for its first frame, and input
//! latency (a viewer's click, and the same click as CDP `Input.dispatchMouseEvent`, to the
//! page's `mousedown` handler). The page is driven over CDP by [`Driven`]: direct Chromium's
//! DevTools WebSocket, and the session's `websocketUrl`. Frames arrive through [`Frames`]: a
//! task per client that reads its socket and reports each frame's arrival. Every process it
//! starts is owned by a guard ([`Gateway`], [`DirectChromium`]); reader tasks are aborted
//! when their [`Frames`] is dropped, which closes their sockets.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cdp::{self, Cdp};
use crate::chromium::{DirectChromium, TempRoot};
use crate::gateway::{Gateway, GatewayOptions, Session};
use crate::procfs;
use crate::stats::{self, ms};

/// The page size on both targets, in CSS pixels (the session is created with it).
pub(crate) const WIDTH: u32 = 1280;
pub(crate) const HEIGHT: u32 = 720;
/// Where the bench clicks, and the pixel it reads: the middle of the coloured box.
const CENTRE: (f64, f64) = (WIDTH as f64 / 2.0, HEIGHT as f64 / 2.0);
/// The screencast ingot's viewer starts (`src/viewer/screen.rs`); direct Chromium gets the same.
const SCREENCAST: (u32, u32) = (70, 1920);
/// How long any one CDP step may take.
const CDP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a colour change, a click or a first frame may take before it counts as lost.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// How long a viewer joining a still page waits for a frame before it is recorded as none.
pub(crate) const LATE_WAIT: Duration = Duration::from_secs(3);
/// The name of the binding the page's input handlers call (`Runtime.addBinding`).
const BINDING: &str = "benchInput";
/// Colour changes that may be lost before the section gives up.
const MAX_MISSES: usize = 10;
/// How far (sum over channels) a decoded colour may be from the palette's and still count.
const MATCH_DISTANCE: u32 = 90;

/// The box's colours, in turn: any two are far apart in at least one channel, so a frame's
/// colour is never mistaken for its neighbour's after JPEG at quality 70.
const PALETTE: [[u8; 3]; 6] = [
    [220, 20, 20],
    [20, 200, 20],
    [20, 20, 220],
    [240, 220, 0],
    [220, 0, 220],
    [0, 220, 220],
];

/// The page both targets show: a gradient and text (so that frames are JPEGs of a real size)
/// under a 320×240 box in the middle, whose colour the bench sets (`benchColour`) or animates
/// every frame (`benchAnimate`), and input handlers that call the binding.
fn page_script() -> String {
    let [r, g, b] = PALETTE[PALETTE.len() - 1];
    format!(
        r#"(() => {{
  document.body.style.margin = '0';
  document.body.style.background = 'linear-gradient(135deg, #0b486b, #f56217)';
  document.body.innerHTML =
    '<h1 style="font: bold 64px sans-serif; color: white; padding: 40px; margin: 0">ingot-bench viewer</h1>' +
    '<p style="font: 20px serif; color: white; padding: 0 40px">' +
    'The quick brown fox jumps over the lazy dog. '.repeat(120) + '</p>' +
    '<div id="bench-box" style="position: fixed; left: {left}px; top: {top}px; width: 320px; height: 240px; background: rgb({r}, {g}, {b})"></div>';
  const box = document.getElementById('bench-box');
  window.benchColour = (c) => {{ box.style.background = c; }};
  let running = false;
  let n = 0;
  const step = () => {{
    if (!running) return;
    n += 1;
    box.style.transform = 'translateX(' + ((n * 8) % 240 - 120) + 'px)';
    box.style.background = 'hsl(' + ((n * 17) % 360) + ', 80%, 50%)';
    requestAnimationFrame(step);
  }};
  window.benchAnimate = (on) => {{
    if (on && !running) {{ running = true; requestAnimationFrame(step); }}
    if (!on) {{ running = false; box.style.transform = ''; }}
  }};
  const report = (what) => {{ if (typeof window.{BINDING} === 'function') window.{BINDING}(what); }};
  window.addEventListener('mousedown', () => report('down'), true);
  window.addEventListener('mouseup', () => report('up'), true);
  return new Promise((r) => requestAnimationFrame(() => r(innerWidth + 'x' + innerHeight)));
}})()"#,
        left = WIDTH / 2 - 160,
        top = HEIGHT / 2 - 120,
    )
}

/// How many samples of what the section takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ViewerPlan {
    pub rounds: usize,
    /// Colour changes per target per round, in blocks of `block` alternating between them.
    pub changes: usize,
    pub block: usize,
    /// Clicks per path per round, the three paths taking turns.
    pub clicks: usize,
    /// How long frames are counted on the animated page, per target and series, in
    /// [`SLICES`] slices.
    pub window: Duration,
    /// Viewers at once for the many-viewers figures.
    pub viewers: usize,
}

/// The section's outcome.
#[derive(Debug)]
pub(crate) enum Viewer {
    Measured(Box<ViewerResults>),
    /// Why it was not measured (an ingot without a live viewer).
    Skipped(String),
}

/// A latency series: each round's p50 and p99, and every sample, in ms.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    pub p50: Vec<f64>,
    pub p99: Vec<f64>,
    pub all: Vec<f64>,
}

impl Latency {
    fn add_round(&mut self, samples: &[f64]) -> Result<()> {
        let p = |q| stats::percentile(samples, q).context("no samples this round");
        self.p50.push(p(50.0)?);
        self.p99.push(p(99.0)?);
        self.all.extend_from_slice(samples);
        Ok(())
    }

    fn last_p50(&self) -> f64 {
        self.p50.last().copied().unwrap_or(f64::NAN)
    }
}

/// One target's frames: latency, what they weigh, and what its client waited for.
#[derive(Debug, Default)]
pub(crate) struct FrameFigures {
    /// Colour change to the frame showing it, decoded at the client.
    pub latency: Latency,
    /// Colour change to that frame's arrival, before decoding, in ms.
    pub arrival_ms: Vec<f64>,
    /// Changes whose frame did not come within [`WAIT`].
    pub misses: usize,
    /// JPEG sizes, in bytes, on the still page and on the animated page.
    pub still_bytes: Vec<f64>,
    pub animated_bytes: Vec<f64>,
    /// A new client to its first frame showing the page, in ms, per round.
    pub first_frame_ms: Vec<f64>,
    /// Frames a new client got before one showing the page (blank ones), over all rounds.
    pub blank_first_frames: usize,
    /// A second client joining while the first watches a still page: its first frame, in ms,
    /// or `None` when none came within [`LATE_WAIT`].
    pub late_frame_ms: Vec<Option<f64>>,
}

/// Every figure of the section.
#[derive(Debug)]
pub(crate) struct ViewerResults {
    pub plan: ViewerPlan,
    /// The pages' `innerWidth`x`innerHeight`: direct, ingot.
    pub viewport: (String, String),
    pub direct: FrameFigures,
    pub ingot: FrameFigures,
    /// Frames per second on the animated page, per round: direct's one screencast client
    /// and ingot's one viewer, taking turns; then direct's client again and each of ingot's
    /// `plan.viewers` viewers at once, taking turns.
    pub fps_direct: Vec<f64>,
    pub fps_one: Vec<f64>,
    pub fps_direct_many: Vec<f64>,
    pub fps_many: Vec<Vec<f64>>,
    /// ingot's CPU time, % of one core, on the animated page with 0, 1 and `plan.viewers`
    /// viewers, per round.
    pub cpu_pct: [Vec<f64>; 3],
    /// ingot's RSS in KiB before the round's first viewer, with 1, and with `plan.viewers`.
    pub rss_kib: [Vec<u64>; 3],
    /// ingot only: a colour change to the frame painted on the canvas of ingot's own viewer
    /// page, opened in a headless Chromium, in ms; and the changes whose paint never came.
    pub painted: Latency,
    pub painted_misses: usize,
    /// Click to the page's `mousedown` handler: direct Chromium over CDP, ingot over CDP
    /// (`websocketUrl`), ingot through the viewer.
    pub input_direct: Latency,
    pub input_cdp: Latency,
    pub input_viewer: Latency,
}

/// The whole section; skipped, with the reason, when this ingot has no live viewer.
pub(crate) async fn measure(
    chromium: &Path,
    ingot: &Path,
    root: &TempRoot,
    pool: bool,
    plan: ViewerPlan,
) -> Result<Viewer> {
    let gw = Gateway::start(
        ingot,
        root,
        GatewayOptions {
            pool_size: pool.then_some(0),
            max_sessions: Some(2),
        },
    )
    .await?;
    let body = json!({"dimensions": {"width": WIDTH, "height": HEIGHT}}).to_string();
    let session = gw.create(&body).await?;
    let Some(viewer_url) = session.debug_url.as_deref().and_then(viewer_socket_url) else {
        gw.release(&session.id).await?;
        let why = "this ingot answers no `debugUrl` with a live viewer";
        progress!("viewer: skipped: {why}");
        return Ok(Viewer::Skipped(why.to_owned()));
    };
    progress!(
        "viewer: ingot pid {}, a {WIDTH}×{HEIGHT} session; direct Chromium, and a headless Chromium for the viewer's page",
        gw.pid()
    );
    let dir = root.fresh_dir("direct")?;
    let mut browser = DirectChromium::spawn(chromium, dir)?;
    let viewer_dir = root.fresh_dir("viewer-browser")?;
    let mut person = DirectChromium::spawn(chromium, viewer_dir)?;
    let outcome = async {
        let direct_url = browser.devtools_url(Duration::from_secs(60)).await?;
        let person_url = person.devtools_url(Duration::from_secs(60)).await?;
        let targets = Targets {
            direct_url,
            viewer_url,
            debug_url: session.debug_url.clone().unwrap_or_default(),
            person_url,
            session: session.clone(),
        };
        measure_with(&gw, &targets, plan).await
    }
    .await;
    drop(person);
    gw.release(&session.id).await?;
    drop(browser);
    drop(gw);
    outcome.map(|r| Viewer::Measured(Box::new(r)))
}

/// Where each client connects.
struct Targets {
    /// Direct Chromium's browser WebSocket.
    direct_url: String,
    /// The viewer's WebSocket (`ws://…/viewer/ws?token=…`).
    viewer_url: String,
    /// The viewer's page (`debugUrl`), and the browser WebSocket of the headless Chromium
    /// that opens it as a person's browser would.
    debug_url: String,
    person_url: String,
    session: Session,
}

/// The viewer's WebSocket URL for a `debugUrl` (`http://HOST/v1/sessions/{id}/viewer?token=T`).
fn viewer_socket_url(debug_url: &str) -> Option<String> {
    let rest = debug_url.strip_prefix("http://")?;
    let (path, query) = rest.split_once("/viewer?")?;
    Some(format!("ws://{path}/viewer/ws?{query}"))
}

/// The rounds, each: new clients (their first frames, and a second client's), frame latency
/// at the clients, then painted by the viewer page, input latency, then frames per second and
/// the gateway's cost per viewer; which target goes first alternates.
async fn measure_with(gw: &Gateway, t: &Targets, plan: ViewerPlan) -> Result<ViewerResults> {
    let mut direct_page = Driven::open(&t.direct_url, true)
        .await
        .context("direct Chromium's page")?;
    let mut ingot_page = Driven::open(&t.session.websocket_url, false)
        .await
        .context("the session's page")?;
    let mut person = PersonViewer::open(&t.person_url)
        .await
        .context("the headless Chromium that opens the viewer's page")?;
    let mut r = ViewerResults {
        plan,
        viewport: (direct_page.viewport.clone(), ingot_page.viewport.clone()),
        direct: FrameFigures::default(),
        ingot: FrameFigures::default(),
        fps_direct: Vec::new(),
        fps_one: Vec::new(),
        fps_direct_many: Vec::new(),
        fps_many: Vec::new(),
        cpu_pct: Default::default(),
        rss_kib: Default::default(),
        painted: Latency::default(),
        painted_misses: 0,
        input_direct: Latency::default(),
        input_cdp: Latency::default(),
        input_viewer: Latency::default(),
    };
    progress!(
        "viewer: pages {} (direct) and {} (ingot)",
        r.viewport.0,
        r.viewport.1
    );
    let mut jitter = Jitter::new();
    for round in 0..plan.rounds {
        let ingot_first = round % 2 == 1;
        let rss_before = gw.rss_kib()?;
        let colours = (direct_page.colour, ingot_page.colour);
        let (mut cast, mut viewer) = if ingot_first {
            let v = open_viewer(&t.viewer_url, colours.1, &mut r.ingot).await?;
            (open_cast(&t.direct_url, colours.0, &mut r.direct).await?, v)
        } else {
            let c = open_cast(&t.direct_url, colours.0, &mut r.direct).await?;
            (
                c,
                open_viewer(&t.viewer_url, colours.1, &mut r.ingot).await?,
            )
        };
        late_joiners(t, colours, &mut r).await?;
        let mut pairs = [
            (&mut direct_page, &mut cast.frames, &mut r.direct),
            (&mut ingot_page, &mut viewer.frames, &mut r.ingot),
        ];
        frame_latency(&mut pairs, ingot_first, &plan, &mut jitter).await?;
        progress!(
            "viewer round {}/{}: change → frame decoded p50 direct {:.1} ms, ingot {:.1} ms (p99 {:.1} / {:.1} ms)",
            round + 1,
            plan.rounds,
            r.direct.latency.last_p50(),
            r.ingot.latency.last_p50(),
            r.direct.latency.p99.last().copied().unwrap_or(f64::NAN),
            r.ingot.latency.p99.last().copied().unwrap_or(f64::NAN),
        );
        painted_latency(
            &mut ingot_page,
            &mut person,
            &t.debug_url,
            &plan,
            &mut r,
            &mut jitter,
        )
        .await?;
        progress!(
            "viewer round {}/{}: change → painted on the canvas of ingot's viewer page in Chromium p50 {:.1} ms (p99 {:.1} ms)",
            round + 1,
            plan.rounds,
            r.painted.last_p50(),
            r.painted.p99.last().copied().unwrap_or(f64::NAN),
        );
        input_latency(
            &mut direct_page,
            &mut ingot_page,
            &mut viewer,
            round,
            &plan,
            &mut r,
            &mut jitter,
        )
        .await?;
        progress!(
            "viewer round {}/{}: click → handler p50 direct CDP {:.2} ms, ingot CDP {:.2} ms, ingot viewer {:.2} ms",
            round + 1,
            plan.rounds,
            r.input_direct.last_p50(),
            r.input_cdp.last_p50(),
            r.input_viewer.last_p50(),
        );
        frame_rates(
            gw,
            t,
            (&mut direct_page, &mut ingot_page),
            cast,
            viewer,
            rss_before,
            ingot_first,
            &plan,
            &mut r,
        )
        .await?;
        let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        let many = r.fps_many.last().cloned().unwrap_or_default();
        progress!(
            "viewer round {}/{}: fps direct {:.1}, 1 viewer {:.1}; direct {:.1}, {} viewers median {:.1} (min {:.1}); ingot CPU {:.1} / {:.1} / {:.1} % with 0 / 1 / {} viewers; RSS {:.1} → {:.1} → {:.1} MiB",
            round + 1,
            plan.rounds,
            last(&r.fps_direct),
            last(&r.fps_one),
            last(&r.fps_direct_many),
            plan.viewers,
            stats::median(&many).unwrap_or(f64::NAN),
            stats::percentile(&many, 0.0).unwrap_or(f64::NAN),
            last(&r.cpu_pct[0]),
            last(&r.cpu_pct[1]),
            last(&r.cpu_pct[2]),
            plan.viewers,
            r.rss_kib[0].last().copied().unwrap_or(0) as f64 / 1024.0,
            r.rss_kib[1].last().copied().unwrap_or(0) as f64 / 1024.0,
            r.rss_kib[2].last().copied().unwrap_or(0) as f64 / 1024.0,
        );
    }
    direct_page.close().await;
    ingot_page.close().await;
    person.cdp.close().await;
    Ok(r)
}

/// A page driven over CDP: a browser-level connection with the page's flattened session.
struct Driven {
    cdp: Cdp,
    session: String,
    target: String,
    /// The page's `innerWidth`x`innerHeight` once prepared.
    viewport: String,
    /// The palette index the box shows.
    colour: usize,
}

impl Driven {
    /// Attaches to the browser's first page and prepares it; with `fit`, first resizes the
    /// window so that the page is [`WIDTH`]×[`HEIGHT`] (direct Chromium is launched larger).
    async fn open(url: &str, fit: bool) -> Result<Driven> {
        let mut cdp = Cdp::connect(url, CDP_TIMEOUT).await?;
        let (target, session) = attach_first_page(&mut cdp).await?;
        let mut page = Driven {
            cdp,
            session,
            target,
            viewport: String::new(),
            colour: PALETTE.len() - 1,
        };
        if fit {
            page.fit_window().await?;
        }
        page.call("Runtime.enable", json!({})).await?;
        page.call("Runtime.addBinding", json!({ "name": BINDING }))
            .await?;
        let ready = page.evaluate(&page_script()).await?;
        page.viewport = ready.as_str().unwrap_or("?").to_owned();
        Ok(page)
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.cdp
            .call_result(method, params, Some(&self.session))
            .await
    }

    /// Evaluates `expression` in the page, awaiting a promise, and returns its value.
    async fn evaluate(&mut self, expression: &str) -> Result<Value> {
        let params =
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let mut reply = self.call("Runtime.evaluate", params).await?;
        if let Some(e) = reply.get("exceptionDetails") {
            bail!("the page threw: {e}");
        }
        Ok(reply["result"]["value"].take())
    }

    async fn inner_size(&mut self) -> Result<(i64, i64)> {
        let v = self.evaluate("[innerWidth, innerHeight]").await?;
        match (v[0].as_i64(), v[1].as_i64()) {
            (Some(w), Some(h)) => Ok((w, h)),
            _ => bail!("the page's size reads {v}"),
        }
    }

    /// Resizes the page's window until the page is [`WIDTH`]×[`HEIGHT`], as ingot does for a
    /// session with those dimensions.
    async fn fit_window(&mut self) -> Result<()> {
        let want = (i64::from(WIDTH), i64::from(HEIGHT));
        for _ in 0..5 {
            let (w, h) = self.inner_size().await?;
            if (w, h) == want {
                return Ok(());
            }
            let window = self
                .cdp
                .call_result(
                    "Browser.getWindowForTarget",
                    json!({ "targetId": self.target }),
                    None,
                )
                .await?;
            let bounds = &window["bounds"];
            let (Some(id), Some(bw), Some(bh)) = (
                window["windowId"].as_i64(),
                bounds["width"].as_i64(),
                bounds["height"].as_i64(),
            ) else {
                bail!("Browser.getWindowForTarget answered {window}");
            };
            let size = json!({ "width": bw - w + want.0, "height": bh - h + want.1 });
            self.cdp
                .call_result(
                    "Browser.setWindowBounds",
                    json!({ "windowId": id, "bounds": size }),
                    None,
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (w, h) = self.inner_size().await?;
        bail!(
            "direct Chromium's page stays {w}×{h} after resizing its window, not {WIDTH}×{HEIGHT}"
        )
    }

    /// Sends the next palette colour to the box without waiting; returns the colour's index
    /// and the command's id.
    async fn next_colour(&mut self) -> Result<(usize, u64)> {
        self.colour = (self.colour + 1) % PALETTE.len();
        let [r, g, b] = PALETTE[self.colour];
        let params = json!({ "expression": format!("benchColour('rgb({r}, {g}, {b})')"), "returnByValue": true });
        let id = self
            .cdp
            .send("Runtime.evaluate", &params, Some(&self.session))
            .await?;
        Ok((self.colour, id))
    }

    /// Starts or stops the animation; stopped, the box shows its palette colour again.
    async fn animate(&mut self, on: bool) -> Result<()> {
        let [r, g, b] = PALETTE[self.colour];
        let expression = if on {
            "benchAnimate(true)".to_owned()
        } else {
            format!("benchAnimate(false); benchColour('rgb({r}, {g}, {b})')")
        };
        self.evaluate(&expression).await?;
        Ok(())
    }

    /// Reads until the page's input handler has called the binding with `payload` (and, with
    /// `reply`, that command has been answered); returns when the binding's event arrived.
    async fn await_binding(&mut self, payload: &str, reply: Option<u64>) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut called = None;
        let mut answered = reply.is_none();
        while called.is_none() || !answered {
            let text = tokio::time::timeout_at(deadline, self.cdp.next_message())
                .await
                .map_err(|_| anyhow!("the page's input handler did not run within {WAIT:?}"))??;
            let at = Instant::now();
            if reply.is_some() && cdp::reply_id(text.as_str()) == reply {
                let v: Value = serde_json::from_str(text.as_str()).context("reply is not JSON")?;
                if let Some(e) = v.get("error") {
                    bail!("Input.dispatchMouseEvent failed: {e}");
                }
                answered = true;
            } else if text.as_str().contains("\"Runtime.bindingCalled\"") {
                let v: Value = serde_json::from_str(text.as_str()).context("event is not JSON")?;
                if v["params"]["name"] == BINDING && v["params"]["payload"] == payload {
                    called = Some(at);
                }
            }
        }
        called.ok_or_else(|| anyhow!("no binding call"))
    }

    async fn close(self) {
        self.cdp.close().await;
    }
}

/// Attaches (flattened) to the browser's first page; returns its target and session ids.
async fn attach_first_page(cdp: &mut Cdp) -> Result<(String, String)> {
    let targets = cdp
        .call_result("Target.getTargets", json!({}), None)
        .await?;
    let target = targets["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["targetId"].as_str())
        .ok_or_else(|| anyhow!("the browser has no page: {targets}"))?
        .to_owned();
    let attached = cdp
        .call_result(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
            None,
        )
        .await?;
    let session = attached["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow!("attachToTarget gave no sessionId: {attached}"))?
        .to_owned();
    Ok((target, session))
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One frame as a client saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When its message was read.
    at: Instant,
    /// When its centre pixel had been decoded (`at` when not decoding).
    decoded: Instant,
    /// The JPEG's size in bytes.
    bytes: usize,
    /// The colour in the middle of the frame, when decoding was on.
    colour: Option<[u8; 3]>,
}

/// The frames one client receives, reported by a task that reads its socket. Dropping it
/// aborts the task, which closes the socket.
struct Frames {
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Whether the task decodes each frame's middle pixel (only while latency is measured).
    decode: Arc<AtomicBool>,
    /// `None` once its outcome has been taken.
    task: Option<JoinHandle<Result<()>>>,
}

impl Frames {
    fn spawn<F, Fut>(read: F) -> Frames
    where
        F: FnOnce(mpsc::UnboundedSender<Seen>, Arc<AtomicBool>) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let (tx, seen) = mpsc::unbounded_channel();
        let decode = Arc::new(AtomicBool::new(false));
        let task = Some(tokio::spawn(read(tx, decode.clone())));
        Frames { seen, decode, task }
    }

    fn decoding(&self, on: bool) {
        self.decode.store(on, Ordering::Relaxed);
    }

    /// Everything reported so far.
    fn drain(&mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Ok(s) = self.seen.try_recv() {
            out.push(s);
        }
        out
    }

    /// The next frame, or `None` at `deadline`; an error when the reader stopped.
    async fn next_before(&mut self, deadline: tokio::time::Instant) -> Result<Option<Seen>> {
        match tokio::time::timeout_at(deadline, self.seen.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(seen)) => Ok(Some(seen)),
            Ok(None) => match self.task.take() {
                Some(task) => match task.await {
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) => bail!("the frame reader stopped"),
                    Err(e) => bail!("the frame reader failed: {e}"),
                },
                None => bail!("the frame reader stopped"),
            },
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Reports one frame: when it came and, if asked, the colour in its middle.
fn report_frame(
    tx: &mpsc::UnboundedSender<Seen>,
    at: Instant,
    jpeg: &[u8],
    decode: &AtomicBool,
) -> bool {
    let colour = if decode.load(Ordering::Relaxed) {
        centre_colour(jpeg)
    } else {
        None
    };
    tx.send(Seen {
        at,
        decoded: Instant::now(),
        bytes: jpeg.len(),
        colour,
    })
    .is_ok()
}

/// The colour in the middle of a JPEG, decoded at 1/8 scale (the DCT's DC terms: cheap, and
/// exact enough inside a 320×240 box of one colour).
pub(crate) fn centre_colour(jpeg: &[u8]) -> Option<[u8; 3]> {
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (w, h) = decoder
        .scale((info.width / 8).max(1), (info.height / 8).max(1))
        .ok()?;
    let pixels = decoder.decode().ok()?;
    let (w, h) = (usize::from(w), usize::from(h));
    let at = (h / 2) * w + w / 2;
    match decoder.info()?.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            let p = pixels.get(at * 3..at * 3 + 3)?;
            Some([p[0], p[1], p[2]])
        }
        jpeg_decoder::PixelFormat::L8 => pixels.get(at).map(|&l| [l, l, l]),
        _ => None,
    }
}

/// The sum of the channels' differences.
fn distance(a: [u8; 3], b: [u8; 3]) -> u32 {
    a.iter().zip(b).map(|(a, b)| u32::from(a.abs_diff(b))).sum()
}

/// The palette index nearest to `colour`.
fn nearest(colour: [u8; 3]) -> usize {
    (0..PALETTE.len())
        .min_by_key(|&i| distance(PALETTE[i], colour))
        .unwrap_or(0)
}

/// Whether a frame's `colour` is palette colour `index`: nearest to it, and near enough
/// that a blank (white) page does not pass for yellow.
fn shows(colour: Option<[u8; 3]>, index: usize) -> bool {
    colour.is_some_and(|c| nearest(c) == index && distance(c, PALETTE[index]) <= MATCH_DISTANCE)
}

/// The JPEG of one viewer frame: `u32 BE n`, `n` bytes of JSON header, the JPEG.
fn viewer_jpeg(message: &[u8]) -> Result<&[u8]> {
    let n: [u8; 4] = message
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("a viewer frame of {} bytes", message.len()))?;
    let start = 4 + u32::from_be_bytes(n) as usize;
    let header = message
        .get(4..start)
        .ok_or_else(|| anyhow!("a viewer frame's header runs past its end"))?;
    let header: Value = serde_json::from_slice(header).context("a viewer frame's header")?;
    if header["width"].as_f64().is_none() {
        bail!("a viewer frame's header has no width: {header}");
    }
    Ok(&message[start..])
}

/// A viewer's WebSocket: its sending half, and its frames.
struct ViewerSocket {
    sink: SplitSink<Socket, Message>,
    frames: Frames,
}

impl ViewerSocket {
    /// Connects to the viewer's WebSocket with the `Origin` a viewer page would send.
    async fn connect(url: &str) -> Result<ViewerSocket> {
        let mut request = url.into_client_request().context("the viewer's URL")?;
        let host = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .ok_or_else(|| anyhow!("not a ws:// URL: {url}"))?;
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(&format!("http://{host}"))?);
        let (ws, _) = tokio::time::timeout(
            CDP_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(
                request,
                Some(cdp::websocket_config()),
                true,
            ),
        )
        .await
        .map_err(|_| anyhow!("the viewer's WebSocket did not open within {CDP_TIMEOUT:?}"))?
        .context("the viewer's WebSocket")?;
        let (sink, stream) = ws.split();
        let frames = Frames::spawn(|tx, decode| read_viewer(stream, tx, decode));
        Ok(ViewerSocket { sink, frames })
    }

    async fn send(&mut self, message: Value) -> Result<()> {
        self.sink
            .send(Message::text(message.to_string()))
            .await
            .context("viewer WebSocket send")
    }

    /// Closes the socket politely; its reader stops with it.
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }
}

async fn read_viewer(
    mut stream: SplitStream<Socket>,
    tx: mpsc::UnboundedSender<Seen>,
    decode: Arc<AtomicBool>,
) -> Result<()> {
    while let Some(message) = stream.next().await {
        let at = Instant::now();
        let listened = match message.context("viewer WebSocket read")? {
            Message::Binary(b) => report_frame(&tx, at, viewer_jpeg(&b)?, &decode),
            Message::Text(t) if t.as_str().contains("\"ended\"") => {
                bail!("the viewer was told the session ended: {t}")
            }
            Message::Close(frame) => bail!("the viewer's WebSocket was closed: {frame:?}"),
            _ => true,
        };
        if !listened {
            // The bench dropped the receiving end: nobody counts frames any more.
            return Ok(());
        }
    }
    bail!("the viewer's WebSocket ended")
}

/// Direct Chromium's own screencast, as ingot's viewer starts it, read by a client of its own
/// that acknowledges each frame the moment it arrives, as ingot does.
struct Cast {
    frames: Frames,
}

impl Cast {
    async fn start(browser_url: &str) -> Result<Cast> {
        let mut cdp = Cdp::connect(browser_url, CDP_TIMEOUT).await?;
        let (_, session) = attach_first_page(&mut cdp).await?;
        let (quality, side) = SCREENCAST;
        let params = json!({
            "format": "jpeg",
            "quality": quality,
            "maxWidth": side,
            "maxHeight": side,
            "everyNthFrame": 1,
        });
        cdp.send("Page.startScreencast", &params, Some(&session))
            .await?;
        let frames = Frames::spawn(|tx, decode| read_cast(cdp, session, tx, decode));
        Ok(Cast { frames })
    }
}

async fn read_cast(
    mut cdp: Cdp,
    session: String,
    tx: mpsc::UnboundedSender<Seen>,
    decode: Arc<AtomicBool>,
) -> Result<()> {
    loop {
        let text = cdp.next_message().await?;
        let at = Instant::now();
        if !text.as_str().contains("\"Page.screencastFrame\"") {
            continue;
        }
        let v: Value = serde_json::from_str(text.as_str()).context("a screencast frame")?;
        if v["method"] != "Page.screencastFrame" {
            continue;
        }
        let params = &v["params"];
        cdp.send(
            "Page.screencastFrameAck",
            &json!({ "sessionId": params["sessionId"] }),
            Some(&session),
        )
        .await?;
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(params["data"].as_str().unwrap_or_default())
            .context("a screencast frame's data")?;
        if !report_frame(&tx, at, &jpeg, &decode) {
            return Ok(());
        }
    }
}

/// Waits until a frame shows the box in palette colour `colour`, up to `wait`; returns it
/// and how many frames came before it, or `None` when it did not come.
async fn frame_showing(
    frames: &mut Frames,
    colour: usize,
    wait: Duration,
) -> Result<Option<(Seen, usize)>> {
    frames.decoding(true);
    let deadline = tokio::time::Instant::now() + wait;
    let mut before = 0;
    let found = loop {
        match frames.next_before(deadline).await? {
            Some(seen) if shows(seen.colour, colour) => break Some((seen, before)),
            Some(_) => before += 1,
            None => break None,
        }
    };
    frames.decoding(false);
    Ok(found)
}

/// Waits for a new client's first frame showing the page (box colour `colour`); records the
/// time since `since`, its size and the frames before it.
async fn first_frame(
    frames: &mut Frames,
    since: Instant,
    colour: usize,
    out: &mut FrameFigures,
) -> Result<()> {
    let (seen, before) = frame_showing(frames, colour, WAIT)
        .await?
        .ok_or_else(|| anyhow!("no frame showing the page within {WAIT:?}"))?;
    out.first_frame_ms.push(ms(seen.at - since));
    out.still_bytes.push(seen.bytes as f64);
    out.blank_first_frames += before;
    Ok(())
}

async fn open_cast(url: &str, colour: usize, out: &mut FrameFigures) -> Result<Cast> {
    let since = Instant::now();
    let mut cast = Cast::start(url).await?;
    first_frame(&mut cast.frames, since, colour, out)
        .await
        .context("direct Chromium's screencast")?;
    Ok(cast)
}

async fn open_viewer(url: &str, colour: usize, out: &mut FrameFigures) -> Result<ViewerSocket> {
    let since = Instant::now();
    let mut viewer = ViewerSocket::connect(url).await?;
    first_frame(&mut viewer.frames, since, colour, out)
        .await
        .context("the viewer")?;
    Ok(viewer)
}

/// A second client of each target joining while the first watches a still page: the time to
/// its first frame, or `None` when no frame comes within [`LATE_WAIT`].
async fn late_joiners(t: &Targets, colours: (usize, usize), r: &mut ViewerResults) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = Instant::now();
    let mut cast = Cast::start(&t.direct_url).await?;
    let seen = frame_showing(&mut cast.frames, colours.0, LATE_WAIT).await?;
    r.direct
        .late_frame_ms
        .push(seen.map(|(s, _)| ms(s.at - since)));
    drop(cast);
    let since = Instant::now();
    let mut viewer = ViewerSocket::connect(&t.viewer_url).await?;
    let seen = frame_showing(&mut viewer.frames, colours.1, LATE_WAIT).await?;
    r.ingot
        .late_frame_ms
        .push(seen.map(|(s, _)| ms(s.at - since)));
    viewer.close().await;
    let show = |v: Option<&Option<f64>>| match v {
        Some(Some(v)) => format!("{v:.0} ms"),
        _ => format!("none within {LATE_WAIT:?}"),
    };
    progress!(
        "viewer: a second client joining a still page got its first frame: direct {}, ingot {}",
        show(r.direct.late_frame_ms.last()),
        show(r.ingot.late_frame_ms.last())
    );
    Ok(())
}

/// One target's page, its client's frames and its figures.
type Pair<'a> = (&'a mut Driven, &'a mut Frames, &'a mut FrameFigures);

/// `plan.changes` colour changes per target, in blocks of `plan.block` alternating between
/// the targets; records each round's p50 and p99 of change → frame decoded.
async fn frame_latency(
    pairs: &mut [Pair<'_>; 2],
    ingot_first: bool,
    plan: &ViewerPlan,
    jitter: &mut Jitter,
) -> Result<()> {
    let order = if ingot_first { [1, 0] } else { [0, 1] };
    let mut samples = [Vec::new(), Vec::new()];
    for (page, frames, figures) in pairs.iter_mut() {
        frames.decoding(true);
        // Unmeasured: the box shows a palette colour and this client has seen it.
        change(page, frames, figures).await?;
    }
    let blocks = plan.changes.div_ceil(plan.block);
    for _ in 0..blocks {
        for t in order {
            let (page, frames, figures) = &mut pairs[t];
            for _ in 0..plan.block {
                tokio::time::sleep(jitter.pause(20, 70)).await;
                match change(page, frames, figures).await? {
                    Some(took) => samples[t].push(took),
                    None => {
                        figures.misses += 1;
                        if figures.misses > MAX_MISSES {
                            bail!(
                                "{} colour changes never reached the client within {WAIT:?}",
                                figures.misses
                            );
                        }
                    }
                }
            }
        }
    }
    for ((_, frames, figures), samples) in pairs.iter_mut().zip(&samples) {
        frames.decoding(false);
        figures.latency.add_round(samples)?;
    }
    Ok(())
}

/// Changes the box's colour and waits for a frame showing it; returns the time from just
/// before the command was sent to that frame decoded, in ms, or `None` when none came.
async fn change(
    page: &mut Driven,
    frames: &mut Frames,
    out: &mut FrameFigures,
) -> Result<Option<f64>> {
    frames.drain();
    let sent = Instant::now();
    let (want, id) = page.next_colour().await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut took = None;
    while let Some(seen) = frames.next_before(deadline).await? {
        if shows(seen.colour, want) {
            out.arrival_ms.push(ms(seen.at - sent));
            took = Some(ms(seen.decoded - sent));
            break;
        }
    }
    page.cdp.reply(id).await?.result()?;
    Ok(took)
}

/// Runs before the viewer page's own script in the person's browser: after each
/// `drawImage` on the viewer's canvas (`#screen`), reads the pixel in its middle and reports
/// it through the binding, so the bench learns the moment a frame is painted and what it
/// shows.
const PAINT_HOOK: &str = r#"(() => {
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const out = draw.apply(this, args);
    const c = this.canvas;
    if (c && c.id === 'screen' && typeof window.benchPainted === 'function') {
      const p = this.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
      window.benchPainted(p[0] + ',' + p[1] + ',' + p[2]);
    }
    return out;
  };
})()"#;

/// A headless Chromium standing in for a person's browser: one tab, which opens ingot's
/// viewer page (`debugUrl`) only while painted frames are measured.
struct PersonViewer {
    cdp: Cdp,
    session: String,
}

impl PersonViewer {
    async fn open(browser_url: &str) -> Result<PersonViewer> {
        let mut cdp = Cdp::connect(browser_url, CDP_TIMEOUT).await?;
        let (_, session) = attach_first_page(&mut cdp).await?;
        let s = Some(session.as_str());
        cdp.call_result("Page.enable", json!({}), s).await?;
        cdp.call_result("Runtime.enable", json!({}), s).await?;
        cdp.call_result("Runtime.addBinding", json!({ "name": "benchPainted" }), s)
            .await?;
        cdp.call_result(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": PAINT_HOOK }),
            s,
        )
        .await?;
        Ok(PersonViewer { cdp, session })
    }

    /// Opens `url` in the tab and, for the viewer's page, waits until its WebSocket is open.
    /// (Not for a first frame: joining a still page that another viewer watches, it gets
    /// none until the page changes.)
    async fn show(&mut self, url: &str, viewer: bool) -> Result<()> {
        let s = Some(self.session.as_str());
        self.cdp
            .call_result("Page.navigate", json!({ "url": url }), s)
            .await?;
        if !viewer {
            return Ok(());
        }
        let started = Instant::now();
        loop {
            let params = json!({
                "expression": "window.ingotViewer ? window.ingotViewer.socketState : 'loading'",
                "returnByValue": true,
            });
            let v = self.cdp.call_result("Runtime.evaluate", params, s).await?;
            match v["result"]["value"].as_str() {
                Some("open") => return Ok(()),
                Some("ended" | "failed") => bail!("the viewer page's socket reads {v}"),
                _ => {}
            }
            if started.elapsed() > WAIT {
                bail!("the viewer page's WebSocket did not open within {WAIT:?}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads until the viewer page reports a paint showing palette colour `want`; returns
    /// when that report arrived, or `None` at `deadline`.
    async fn painted(
        &mut self,
        want: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Instant>> {
        loop {
            let Ok(text) = tokio::time::timeout_at(deadline, self.cdp.next_message()).await else {
                return Ok(None);
            };
            let text = text?;
            let at = Instant::now();
            if !text.as_str().contains("\"Runtime.bindingCalled\"") {
                continue;
            }
            let v: Value = serde_json::from_str(text.as_str()).context("event is not JSON")?;
            let rgb: Vec<u8> = v["params"]["payload"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .filter_map(|c| c.parse().ok())
                .collect();
            if let [r, g, b] = rgb[..]
                && shows(Some([r, g, b]), want)
            {
                return Ok(Some(at));
            }
        }
    }
}

/// Half as many colour changes on the session's page as for the clients, with ingot's
/// viewer page open in the person's browser: each timed from just before the command is sent
/// to the page's report that a frame showing the new colour was painted on its canvas.
async fn painted_latency(
    page: &mut Driven,
    person: &mut PersonViewer,
    debug_url: &str,
    plan: &ViewerPlan,
    r: &mut ViewerResults,
    jitter: &mut Jitter,
) -> Result<()> {
    person.show(debug_url, true).await?;
    let outcome = async {
        let mut samples = Vec::new();
        // Unmeasured changes until the page has painted one: it then shows a palette colour.
        let mut first = true;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (want, id) = page.next_colour().await?;
            let deadline = tokio::time::Instant::now() + WAIT;
            let painted = person.painted(want, deadline).await?;
            page.cdp.reply(id).await?.result()?;
            if painted.is_some() {
                first = false;
                break;
            }
        }
        if first {
            bail!("the viewer page painted none of 5 colour changes");
        }
        for _ in 0..plan.changes.div_ceil(2) {
            tokio::time::sleep(jitter.pause(20, 70)).await;
            let sent = Instant::now();
            let (want, id) = page.next_colour().await?;
            let deadline = tokio::time::Instant::now() + WAIT;
            match person.painted(want, deadline).await? {
                Some(at) => samples.push(ms(at - sent)),
                None => {
                    r.painted_misses += 1;
                    if r.painted_misses > MAX_MISSES {
                        bail!(
                            "{} colour changes were never painted by the viewer page",
                            r.painted_misses
                        );
                    }
                }
            }
            page.cdp.reply(id).await?.result()?;
        }
        r.painted.add_round(&samples)
    }
    .await;
    // Closes the page's WebSocket: the person's browser is no viewer in the other figures.
    person.show("about:blank", false).await?;
    outcome
}

/// `plan.clicks` clicks per path at the middle of the page, the three paths taking turns
/// (the first changes every round): direct Chromium's `Input.dispatchMouseEvent`, the same
/// through the session's `websocketUrl`, and the viewer's `mousePressed`. Each is timed from
/// just before it is sent to the page's `mousedown` handler calling the binding.
async fn input_latency(
    direct: &mut Driven,
    ingot: &mut Driven,
    viewer: &mut ViewerSocket,
    round: usize,
    plan: &ViewerPlan,
    r: &mut ViewerResults,
    jitter: &mut Jitter,
) -> Result<()> {
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    // Two unmeasured clicks per path first.
    for i in 0..plan.clicks + 2 {
        for k in 0..3 {
            let path = (round + k) % 3;
            tokio::time::sleep(jitter.pause(20, 60)).await;
            let took = match path {
                0 => click_cdp(direct).await?,
                1 => click_cdp(ingot).await?,
                _ => click_viewer(ingot, viewer).await?,
            };
            if i >= 2 {
                samples[path].push(took);
            }
        }
    }
    r.input_direct.add_round(&samples[0])?;
    r.input_cdp.add_round(&samples[1])?;
    r.input_viewer.add_round(&samples[2])?;
    Ok(())
}

fn mouse_event(kind: &str) -> Value {
    json!({ "type": kind, "x": CENTRE.0, "y": CENTRE.1, "button": "left", "clickCount": 1 })
}

async fn click_cdp(page: &mut Driven) -> Result<f64> {
    let session = page.session.clone();
    let sent = Instant::now();
    let id = page
        .cdp
        .send(
            "Input.dispatchMouseEvent",
            &mouse_event("mousePressed"),
            Some(&session),
        )
        .await?;
    let ran = page.await_binding("down", Some(id)).await?;
    let id = page
        .cdp
        .send(
            "Input.dispatchMouseEvent",
            &mouse_event("mouseReleased"),
            Some(&session),
        )
        .await?;
    page.await_binding("up", Some(id)).await?;
    Ok(ms(ran - sent))
}

async fn click_viewer(page: &mut Driven, viewer: &mut ViewerSocket) -> Result<f64> {
    let message = |event: &str| {
        json!({
            "type": "mouse", "event": event, "x": CENTRE.0, "y": CENTRE.1,
            "button": "left", "clickCount": 1, "modifiers": 0,
        })
    };
    let sent = Instant::now();
    viewer.send(message("mousePressed")).await?;
    let ran = page.await_binding("down", None).await?;
    viewer.send(message("mouseReleased")).await?;
    page.await_binding("up", None).await?;
    Ok(ms(ran - sent))
}

/// Counting slices per target per series: the figures of a round are the frames of all its
/// slices over their time, so that slow spells of the shared machine hit both targets.
pub(crate) const SLICES: u32 = 5;
/// Animation before a slice's frames are counted.
pub(crate) const SLICE_WARM_UP: Duration = Duration::from_millis(300);

/// What one slice of animation counted: frames per client, their JPEG sizes, how long, and
/// ingot's CPU time meanwhile.
#[derive(Debug, Default)]
struct Tally {
    frames: Vec<usize>,
    bytes: Vec<f64>,
    secs: f64,
    cpu_ns: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        if self.frames.len() < other.frames.len() {
            self.frames.resize(other.frames.len(), 0);
        }
        for (a, b) in self.frames.iter_mut().zip(&other.frames) {
            *a += b;
        }
        self.bytes.extend(other.bytes);
        self.secs += other.secs;
        self.cpu_ns += other.cpu_ns;
    }

    /// Frames per second, per client.
    fn fps(&self) -> Vec<f64> {
        let secs = self.secs.max(1e-9);
        self.frames.iter().map(|&n| n as f64 / secs).collect()
    }

    /// ingot's CPU time as % of one core.
    fn cpu_pct(&self) -> f64 {
        self.cpu_ns as f64 / (self.secs.max(1e-9) * 1e9) * 100.0
    }
}

/// Animates `page` for [`SLICE_WARM_UP`] plus `length` and counts the frames each client
/// receives during `length`, with `gateway`'s CPU time meanwhile; the page is still after.
async fn slice(
    page: &mut Driven,
    clients: &mut [&mut Frames],
    length: Duration,
    gateway: i32,
) -> Result<Tally> {
    page.animate(true).await?;
    tokio::time::sleep(SLICE_WARM_UP).await;
    for f in clients.iter_mut() {
        f.drain();
    }
    let cpu_before = procfs::cpu_ns(gateway);
    let start = Instant::now();
    tokio::time::sleep(length).await;
    let end = Instant::now();
    let cpu_after = procfs::cpu_ns(gateway);
    page.animate(false).await?;
    let (Some(cpu_before), Some(cpu_after)) = (cpu_before, cpu_after) else {
        bail!("cannot read ingot's CPU time");
    };
    let mut tally = Tally {
        secs: (end - start).as_secs_f64(),
        cpu_ns: cpu_after.saturating_sub(cpu_before),
        ..Tally::default()
    };
    for f in clients.iter_mut() {
        let counted: Vec<Seen> = f
            .drain()
            .into_iter()
            .filter(|s| s.at >= start && s.at <= end)
            .collect();
        tally.frames.push(counted.len());
        tally.bytes.extend(counted.iter().map(|s| s.bytes as f64));
    }
    Ok(tally)
}

/// One series: [`SLICES`] slices of direct's client and as many of these ingot viewers,
/// taking turns (which goes first alternates); returns (direct, ingot).
async fn series(
    direct: (&mut Driven, &mut Frames),
    ingot: (&mut Driven, &mut [ViewerSocket]),
    ingot_first: bool,
    plan: &ViewerPlan,
    gateway: i32,
) -> Result<(Tally, Tally)> {
    let length = plan.window / SLICES;
    let (direct_page, cast) = direct;
    let (ingot_page, viewers) = ingot;
    let (mut d, mut i) = (Tally::default(), Tally::default());
    for k in 0..SLICES {
        for ingot_turn in if (k % 2 == 0) == ingot_first {
            [true, false]
        } else {
            [false, true]
        } {
            if ingot_turn {
                let mut clients: Vec<&mut Frames> =
                    viewers.iter_mut().map(|v| &mut v.frames).collect();
                i.add(slice(ingot_page, &mut clients, length, gateway).await?);
            } else {
                d.add(slice(direct_page, &mut [&mut *cast], length, gateway).await?);
            }
        }
    }
    Ok((d, i))
}

/// Frames per second on the animated page and ingot's cost per viewer: a series of direct's
/// one client against ingot's one viewer, then (with `plan.viewers − 1` more viewers) against
/// every viewer at once, then ingot with no viewer; its RSS after each series. Closes every
/// client.
#[allow(clippy::too_many_arguments)]
async fn frame_rates(
    gw: &Gateway,
    t: &Targets,
    pages: (&mut Driven, &mut Driven),
    mut cast: Cast,
    viewer: ViewerSocket,
    rss_before: u64,
    ingot_first: bool,
    plan: &ViewerPlan,
    r: &mut ViewerResults,
) -> Result<()> {
    let (direct_page, ingot_page) = pages;
    let mut viewers = vec![viewer];
    let outcome = async {
        let (direct_one, one) = series(
            (&mut *direct_page, &mut cast.frames),
            (&mut *ingot_page, &mut viewers),
            ingot_first,
            plan,
            gw.pid(),
        )
        .await?;
        let rss_one = gw.rss_kib()?;
        // They join an animated page: on a still one, ingot sends a joining viewer no frame.
        ingot_page.animate(true).await?;
        for _ in 1..plan.viewers {
            let mut v = ViewerSocket::connect(&t.viewer_url).await?;
            let deadline = tokio::time::Instant::now() + WAIT;
            v.frames.next_before(deadline).await?.ok_or_else(|| {
                anyhow!("a viewer joining the animated page got no frame within {WAIT:?}")
            })?;
            viewers.push(v);
        }
        ingot_page.animate(false).await?;
        let (direct_many, many) = series(
            (&mut *direct_page, &mut cast.frames),
            (&mut *ingot_page, &mut viewers),
            ingot_first,
            plan,
            gw.pid(),
        )
        .await?;
        let rss_many = gw.rss_kib()?;
        for v in viewers.drain(..) {
            v.close().await;
        }
        tokio::time::sleep(SLICE_WARM_UP).await;
        let none = slice(ingot_page, &mut [], plan.window, gw.pid()).await?;
        r.fps_direct.push(direct_one.fps()[0]);
        r.fps_direct_many.push(direct_many.fps()[0]);
        r.fps_one.push(one.fps()[0]);
        r.fps_many.push(many.fps());
        for (series, v) in r
            .cpu_pct
            .iter_mut()
            .zip([none.cpu_pct(), one.cpu_pct(), many.cpu_pct()])
        {
            series.push(v);
        }
        r.direct.animated_bytes.extend(direct_one.bytes);
        r.ingot.animated_bytes.extend(one.bytes);
        for (series, v) in r.rss_kib.iter_mut().zip([rss_before, rss_one, rss_many]) {
            series.push(v);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    for v in viewers {
        v.close().await;
    }
    drop(cast);
    outcome
}

/// Random pauses between samples, so that changes and clicks do not keep one phase
/// against the page's frame clock (xorshift; no need for a better generator).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Jitter(seed | 1)
    }

    /// A pause between `lo` and `hi` ms.
    fn pause(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_viewer_socket_is_next_to_the_viewer_page() {
        assert_eq!(
            viewer_socket_url("http://127.0.0.1:4001/v1/sessions/7a6b/viewer?token=ab12")
                .as_deref(),
            Some("ws://127.0.0.1:4001/v1/sessions/7a6b/viewer/ws?token=ab12")
        );
        assert_eq!(
            viewer_socket_url("https://h/v1/sessions/x/viewer?token=t"),
            None
        );
        assert_eq!(viewer_socket_url("http://h/v1/sessions/x"), None);
    }

    #[test]
    fn a_viewer_frame_is_length_header_jpeg() {
        let header = br#"{"pageId":"p","width":1280,"height":720}"#;
        let mut message = (header.len() as u32).to_be_bytes().to_vec();
        message.extend_from_slice(header);
        message.extend_from_slice(&[0xff, 0xd8, 0xff]);
        assert_eq!(viewer_jpeg(&message).expect("a frame"), &[0xff, 0xd8, 0xff]);
        assert!(viewer_jpeg(&message[..10]).is_err(), "header cut short");
        assert!(viewer_jpeg(&[0, 0]).is_err());
    }

    #[test]
    fn colours_are_told_apart_after_jpeg() {
        for (i, c) in PALETTE.iter().enumerate() {
            assert_eq!(nearest(*c), i);
            assert!(shows(Some(*c), i));
            let shifted = c.map(|v| v.saturating_add(25));
            assert_eq!(nearest(shifted), i, "{c:?} shifted");
            assert!(shows(Some(shifted), i), "{c:?} shifted");
            for j in (0..PALETTE.len()).filter(|&j| j != i) {
                assert!(!shows(Some(*c), j), "{c:?} passes for {:?}", PALETTE[j]);
            }
        }
        for blank in [[255, 255, 255], [0, 0, 0], [128, 128, 128]] {
            assert!(
                (0..PALETTE.len()).all(|i| !shows(Some(blank), i)),
                "{blank:?}"
            );
        }
        assert!(!shows(None, 0));
    }

    #[test]
    fn pauses_stay_in_their_range() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let p = j.pause(20, 70).as_millis();
            assert!((20..=70).contains(&p), "{p}");
        }
    }
}
