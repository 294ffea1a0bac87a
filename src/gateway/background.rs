//! The gateway's background tasks: the usage clock, the metrics sampler, the re-prober, the
//! browser host's upkeep, the drain that follows the first shutdown signal, and in a
//! cluster the node's lease and the exchange of capacity with the other nodes.
//!
//! Every one runs on one [`TaskTracker`] that [`Background::stop`] waits for, so no task
//! outlives the gateway. They observe and schedule; none of them serves a request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::Gateway;
use crate::browser::BrowserHost;
use crate::cluster::Cluster;
use crate::cluster::lease::{self, NodeSessions};
use crate::metering::Meter;
use crate::session::registry::{Readiness, Registry};
use crate::telemetry;
use futures_util::future::BoxFuture;

/// While the latest browser launch failed, a probe launch is tried this often.
const REPROBE_EVERY: Duration = Duration::from_secs(10);
/// How often a drain reports the sessions it is still waiting for.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(10);
/// How often the sampler refreshes gauges and the exporter's histogram windows.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often a node of a cluster tells the others what it can take.
pub(super) const OFFER_EVERY: Duration = Duration::from_secs(1);
/// How long stopping waits for the background tasks.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The running background tasks.
pub(super) struct Background {
    tasks: TaskTracker,
    /// Cancelled to stop every background task.
    stop: CancellationToken,
    /// Cancelled when the gateway must stop serving (after the drain).
    stopping: CancellationToken,
}

impl Background {
    /// Starts every background task of `gateway`. `shutdown` starts the drain; `urgent` cuts
    /// it short.
    pub(super) fn start<F, U>(gateway: &Gateway, shutdown: F, urgent: U) -> Background
    where
        F: Future<Output = ()> + Send + 'static,
        U: Future<Output = ()> + Send + 'static,
    {
        let background = Background {
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            stopping: CancellationToken::new(),
        };
        let stop = &background.stop;
        gateway.registry.start_pool();
        background
            .tasks
            .spawn(gateway.meter.clone().run(stop.clone()));
        background.tasks.spawn(sample(
            gateway.metrics.clone(),
            gateway.host.clone(),
            stop.clone(),
        ));
        background.tasks.spawn(reprobe_while_unavailable(
            gateway.registry.clone(),
            stop.clone(),
        ));
        let host = gateway.host.clone();
        let upkeep_stop = stop.clone();
        background
            .tasks
            .spawn(async move { host.upkeep(upkeep_stop).await });
        background
            .tasks
            .spawn(sweep_files(gateway.registry.clone(), stop.clone()));
        background.start_cluster_tasks(gateway);
        background.tasks.spawn(drain_then_stop(
            gateway.registry.clone(),
            Duration::from_millis(gateway.settings.shutdown_drain_ms),
            Signals {
                shutdown: Box::pin(shutdown),
                urgent: Box::pin(urgent),
            },
            background.stopping.clone(),
            stop.clone(),
        ));
        background
    }

    /// In a cluster: the lease, and telling the other nodes what this one can take.
    fn start_cluster_tasks(&self, gateway: &Gateway) {
        let Some(mode) = &gateway.cluster else {
            return;
        };
        let membership = mode.membership.clone();
        let local = LocalSessions {
            registry: gateway.registry.clone(),
            meter: gateway.meter.clone(),
        };
        let (fence, times, joined) = (gateway.fence.clone(), mode.times, mode.joined);
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            lease::keep(membership.as_ref(), &local, &fence, times, joined, stop).await
        });
        self.tasks.spawn(share_offer(
            mode.cluster.clone(),
            gateway.registry.clone(),
            mode.refresh_every,
            self.stop.clone(),
        ));
    }

    /// A token cancelled when the gateway must stop serving.
    pub(super) fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Stops every background task and waits for them.
    pub(super) async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(STOP_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = self.tasks.len(),
                "background tasks still running after {STOP_GRACE:?}"
            );
        }
    }
}

type Signal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The two shutdown signals: the first starts the drain, the second ends it.
struct Signals {
    shutdown: Signal,
    urgent: Signal,
}

/// After `shutdown`: refuse new sessions, let live ones go on for up to `drain` (or until
/// `urgent`), then cancel `stopping`, which ends them.
async fn drain_then_stop(
    registry: Arc<Registry>,
    drain: Duration,
    signals: Signals,
    stopping: CancellationToken,
    stop: CancellationToken,
) {
    let Signals { shutdown, urgent } = signals;
    tokio::select! {
        _ = shutdown => {}
        _ = stop.cancelled() => return,
    }
    registry.stop_accepting().await;
    if !drain.is_zero() && registry.live_count() > 0 {
        info!(
            live_sessions = registry.live_count(),
            drain_ms = drain.as_millis() as u64,
            "draining: new sessions are refused; live sessions may go on until they end or the drain time is up (signal again to end them now)"
        );
        wait_for_sessions(&registry, drain, urgent).await;
    }
    stopping.cancel();
}

/// Waits until no session is live, the drain time is up, or `urgent` resolves.
async fn wait_for_sessions(registry: &Registry, drain: Duration, urgent: Signal) {
    let deadline = tokio::time::Instant::now() + drain;
    let mut report = tokio::time::Instant::now() + DRAIN_REPORT_EVERY;
    tokio::pin!(urgent);
    while registry.live_count() > 0 {
        tokio::select! {
            _ = &mut urgent => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if tokio::time::Instant::now() >= report {
            info!(live_sessions = registry.live_count(), "still draining");
            report += DRAIN_REPORT_EVERY;
        }
    }
}

/// While the latest launch failed, probes Chromium now and then, so that readiness comes
/// back by itself once browsers can start again (nobody sends sessions to an unready pod).
/// Deletes sessions' files once their retention is over, and publishes what they take.
async fn sweep_files(registry: Arc<Registry>, stop: CancellationToken) {
    registry.files().clear_partial().await;
    loop {
        let runs = registry.clone();
        let kept = registry.files().sweep(move |id| runs.runs_here(&id)).await;
        telemetry::session_files_bytes(kept);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(registry.files().sweep_every()) => {}
        }
    }
}

async fn reprobe_while_unavailable(registry: Arc<Registry>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REPROBE_EVERY) => {}
        }
        if let Readiness::ChromiumUnavailable(_) = registry.readiness() {
            match registry.probe_browser().await {
                Ok(_) => info!("Chromium starts again; ready for sessions"),
                Err(e) => warn!(error = %e, "Chromium still cannot start"),
            }
        }
    }
}

/// This node's sessions, as the lease protocol sees them.
struct LocalSessions {
    registry: Arc<Registry>,
    meter: Arc<Meter>,
}

impl NodeSessions for LocalSessions {
    fn live_records(&self) -> Vec<i64> {
        self.meter.live_records()
    }

    fn freeze(&self, frozen: bool) {
        self.registry.freeze_all(frozen);
    }

    fn end_lost(&self, records: Vec<i64>, at: tokio::time::Instant) -> BoxFuture<'_, usize> {
        let ended = self.registry.end_lost(&records, at.into_std());
        Box::pin(async move { ended })
    }
}

/// Every `every` ([`OFFER_EVERY`] but in tests): tells the other nodes how many sessions
/// this node could start and whether it takes any, and learns the same of them (for placing
/// creates).
async fn share_offer(
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let (free, ready) = registry.offer();
        match cluster.refresh(free, ready).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                warn!(error = %e, "cannot exchange capacity with the other nodes; creates stay here");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Refreshes sampled gauges (the browsers' memory, the gateway's own process metrics) and
/// the exporter's histogram windows until `stop`.
async fn sample(handle: PrometheusHandle, host: Arc<dyn BrowserHost>, stop: CancellationToken) {
    let process = Arc::new(telemetry::process_collector());
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let collector = process.clone();
        // Both read /proc: blocking file reads, kept off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || collector.collect()).await {
            warn!(error = %e, "process metrics sampling failed");
        }
        let memory = host.sample_memory().await;
        telemetry::chromium_memory(memory.processes, memory.resident_bytes);
        handle.run_upkeep();
    }
}
