//! The warm pool: pre-launched, never-used browsers with default settings, so that a create
//! only pays for handing one over.
//!
//! Each pooled browser holds a capacity permit, so pool browsers count toward the session
//! limit; the pool only grows into free capacity and gives way (see [`WarmPool::evict`]) when
//! a session needs the room. A pooled browser that dies is reaped and replaced, never handed
//! out. This module owns pooled browsers until they are taken; it must not know about
//! sessions' states or HTTP.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::browser::{BrowserExit, BrowserHost, LaunchError, LaunchSpec, Launched};
use crate::files::FileStore;
use crate::telemetry;

/// Pause after a failed pool launch before the next try, doubled up to the maximum.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The outcome of the latest browser launch (the pool's, a create's or a probe's), for
/// readiness: any successful launch shows that browsers start again.
#[derive(Default)]
pub(super) struct LaunchHealth(Mutex<Option<String>>);

impl LaunchHealth {
    /// Records a launch: `None` when it succeeded, else its error.
    pub(super) fn note(&self, failure: Option<String>) {
        *lock(&self.0) = failure;
    }

    /// The error of the latest launch, if it failed.
    pub(super) fn failure(&self) -> Option<String> {
        lock(&self.0).clone()
    }
}

/// Why the pool got no browser from one launch.
#[derive(Debug, thiserror::Error)]
enum PoolLaunchError {
    /// The launch failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// It started, then exited before it counted as ready.
    #[error("the browser exited ({0}) while it settled")]
    ExitedWhileSettling(BrowserExit),
}

/// A ready browser, taken from the pool with the capacity permit it holds.
pub(super) struct WarmBrowser {
    /// The id its profile directory is named after; a session without an id of its own
    /// takes this one.
    pub id: Uuid,
    pub launched: Launched,
    pub permit: OwnedSemaphorePermit,
}

/// A browser waiting in the pool.
struct Pooled {
    browser: WarmBrowser,
    /// Cancelled when it leaves the pool, which stops its death watch.
    left: CancellationToken,
}

/// Pre-launched browsers with default settings.
pub(super) struct WarmPool {
    target: usize,
    /// Quiet time after a hand-out before a replacement launches, and settling time of a
    /// new browser before it counts as ready.
    settle: Duration,
    /// When the pool last handed a browser out.
    handed_out: Mutex<Option<Instant>>,
    host: Arc<dyn BrowserHost>,
    capacity: Arc<Semaphore>,
    ready: Mutex<VecDeque<Pooled>>,
    launching: AtomicUsize,
    /// Set while creates wait in the admission queue: they get free capacity first.
    yield_to_waiters: AtomicBool,
    /// Wakes the refill loop (a browser was taken, died, or capacity was freed).
    wake: Notify,
    /// Tells waiting creates that a browser became ready.
    became_ready: Notify,
    closed: CancellationToken,
    /// The registry's tasks, so that shutdown waits for launches and reaps in flight.
    tasks: TaskTracker,
    health: Arc<LaunchHealth>,
    /// Where sessions' downloads go: a pooled browser saves them in the directory of the
    /// session that will take its id.
    files: Arc<FileStore>,
}

impl WarmPool {
    /// A pool of `target` browsers with `settle` as its quiet and settling time.
    pub(super) fn new(
        (target, settle): (usize, Duration),
        host: Arc<dyn BrowserHost>,
        capacity: Arc<Semaphore>,
        tasks: TaskTracker,
        health: Arc<LaunchHealth>,
        files: Arc<FileStore>,
    ) -> Arc<WarmPool> {
        Arc::new(WarmPool {
            target,
            settle,
            handed_out: Mutex::new(None),
            host,
            capacity,
            ready: Mutex::new(VecDeque::new()),
            launching: AtomicUsize::new(0),
            yield_to_waiters: AtomicBool::new(false),
            wake: Notify::new(),
            became_ready: Notify::new(),
            closed: CancellationToken::new(),
            tasks,
            health,
            files,
        })
    }

    /// Starts keeping the pool filled, as a task shutdown waits for.
    pub(super) fn start(self: &Arc<Self>) {
        self.tasks.spawn(self.clone().run());
    }

    /// Browsers ready to be handed out now.
    pub(super) fn ready_count(&self) -> usize {
        lock(&self.ready).len()
    }

    /// Takes a ready browser, if one is alive.
    pub(super) fn take(self: &Arc<Self>) -> Option<WarmBrowser> {
        let taken = loop {
            let pooled = lock(&self.ready).pop_front()?;
            pooled.left.cancel();
            let process = &pooled.browser.launched.process;
            if process.wait_exit().now_or_never().is_none() {
                break pooled.browser;
            }
            warn!(browser = %pooled.browser.launched.process.address(), "pooled browser died; not handing it out");
            self.reap(pooled.browser);
        };
        *lock(&self.handed_out) = Some(Instant::now());
        self.changed();
        telemetry::pool_handout();
        Some(taken)
    }

    /// Kills one pooled browser and returns its permit, to make room for a session the pool
    /// cannot serve (one that needs its own launch flags).
    pub(super) async fn evict(&self) -> Option<OwnedSemaphorePermit> {
        let pooled = lock(&self.ready).pop_back()?;
        pooled.left.cancel();
        self.changed();
        let WarmBrowser {
            launched, permit, ..
        } = pooled.browser;
        debug!(browser = %launched.process.address(), "evicting a pooled browser to make room");
        launched.process.kill().await;
        Some(permit)
    }

    /// A future that resolves when a browser becomes ready. Create it before checking the
    /// pool, so that no arrival is missed in between.
    pub(super) fn became_ready(&self) -> tokio::sync::futures::Notified<'_> {
        self.became_ready.notified()
    }

    /// Creates waiting in the admission queue take precedence over refilling.
    pub(super) fn set_waiters(&self, waiting: bool) {
        self.yield_to_waiters.store(waiting, Ordering::Release);
        if !waiting {
            self.wake.notify_one();
        }
    }

    /// Capacity was freed (a session ended): the pool may grow again.
    pub(super) fn capacity_freed(&self) {
        self.wake.notify_one();
    }

    /// Stops refilling and kills every pooled browser. Idempotent.
    pub(super) async fn close(&self) {
        self.closed.cancel();
        let drained: Vec<Pooled> = lock(&self.ready).drain(..).collect();
        self.changed();
        for pooled in drained {
            pooled.left.cancel();
            pooled.browser.launched.process.kill().await;
        }
    }

    /// Keeps the pool at its target size with free capacity, until [`WarmPool::close`].
    async fn run(self: Arc<Self>) {
        if self.target == 0 {
            return;
        }
        let mut retry = RETRY_FIRST;
        loop {
            while !self.closed.is_cancelled() && self.wants_more() {
                if self.quiet_after_handout().await {
                    continue;
                }
                let Ok(permit) = self.capacity.clone().try_acquire_owned() else {
                    break;
                };
                match self.launch_one(permit).await {
                    Ok(()) => retry = RETRY_FIRST,
                    Err(e) => {
                        warn!(error = %e, retry_in_ms = retry.as_millis() as u64,
                            "could not launch a pool browser");
                        tokio::select! {
                            _ = self.closed.cancelled() => {}
                            _ = tokio::time::sleep(retry) => {}
                        }
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
            tokio::select! {
                _ = self.closed.cancelled() => break,
                _ = self.wake.notified() => {}
            }
        }
        info!("warm pool stopped");
    }

    /// Waits until the quiet time after the latest hand-out is over; true when it waited
    /// (the pool's wants may have changed meanwhile).
    async fn quiet_after_handout(&self) -> bool {
        let Some(until) = lock(&self.handed_out).map(|at| at + self.settle) else {
            return false;
        };
        if Instant::now() >= until {
            return false;
        }
        tokio::select! {
            _ = self.closed.cancelled() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
        }
        true
    }

    fn wants_more(&self) -> bool {
        !self.yield_to_waiters.load(Ordering::Acquire)
            && self.ready_count() + self.launching.load(Ordering::Acquire) < self.target
    }

    async fn launch_one(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), PoolLaunchError> {
        self.launching.fetch_add(1, Ordering::AcqRel);
        let id = Uuid::new_v4();
        let started = Instant::now();
        let launched = self
            .host
            .launch(LaunchSpec {
                downloads: Some(self.files.dir(id)),
                ..LaunchSpec::plain(id)
            })
            .await;
        self.health
            .note(launched.as_ref().err().map(ToString::to_string));
        let settled = match launched {
            Ok(launched) => {
                telemetry::browser_launched(started.elapsed());
                self.settle(launched).await
            }
            Err(e) => Err(e.into()),
        };
        self.launching.fetch_sub(1, Ordering::AcqRel);
        let launched = settled?;
        if self.closed.is_cancelled() {
            launched.process.kill().await;
            return Ok(());
        }
        let left = CancellationToken::new();
        self.tasks.spawn(
            self.clone()
                .watch(id, launched.process.clone(), left.clone()),
        );
        lock(&self.ready).push_back(Pooled {
            browser: WarmBrowser {
                id,
                launched,
                permit,
            },
            left,
        });
        self.changed();
        self.became_ready.notify_waiters();
        debug!(browser_id = %id, "pool browser ready");
        Ok(())
    }

    /// Lets a browser that just started answering finish starting (Chromium goes on with its
    /// first page and helper processes for a while) before it counts as ready. A browser
    /// that exits meanwhile is reaped.
    async fn settle(&self, launched: Launched) -> Result<Launched, PoolLaunchError> {
        let exited = tokio::select! {
            _ = self.closed.cancelled() => None,
            _ = tokio::time::sleep(self.settle) => None,
            exit = launched.process.wait_exit() => Some(exit),
        };
        match exited {
            None => Ok(launched),
            Some(exit) => {
                launched.process.kill().await;
                Err(PoolLaunchError::ExitedWhileSettling(exit))
            }
        }
    }

    /// Removes a pooled browser that exits before anyone takes it.
    async fn watch(
        self: Arc<Self>,
        id: Uuid,
        process: Arc<dyn crate::browser::BrowserProcess>,
        left: CancellationToken,
    ) {
        tokio::select! {
            _ = left.cancelled() => {}
            exit = process.wait_exit() => {
                let dead = {
                    let mut ready = lock(&self.ready);
                    let at = ready.iter().position(|p| p.browser.id == id);
                    at.and_then(|i| ready.remove(i))
                };
                if let Some(dead) = dead {
                    warn!(browser = %process.address(), %exit, "pooled browser exited; replacing it");
                    self.changed();
                    self.reap(dead.browser);
                }
            }
        }
    }

    /// Kills a browser that may not be handed out; once its slot is back, the refill loop
    /// is woken to replace it.
    fn reap(self: &Arc<Self>, browser: WarmBrowser) {
        let pool = self.clone();
        self.tasks.spawn(async move {
            browser.launched.process.kill().await;
            drop(browser.permit);
            pool.wake.notify_one();
        });
    }

    fn changed(&self) {
        telemetry::pool_ready(self.ready_count());
        self.wake.notify_one();
    }
}
