//! The create pipeline: admit, find a browser (pooled or launched), go live, meter, and
//! hand the session to its supervisor.
//!
//! Every step that fails undoes what the steps before it did: the browser is reaped, the
//! slot and quota place are given back (by dropping them), and the session is forgotten, so
//! its id can be used again (it never went live, so it has no record).
//!
//! A session id that exists or existed is never used again: a create naming one (live here
//! or on another node, or in the usage records however old) gets the same refusal whoever
//! asks, naming no tenant, before any browser is spent on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::Session;
use super::admission::{Refusal, Slot};
use super::params::SessionOptions;
use super::quota::{OverQuota, QuotaHold};
use super::registry::Registry;
use super::supervisor;
use crate::auth::Caller;
use crate::browser::{BrowserProcess, LaunchSpec, Launched};
use crate::cdp::guard::Guard;
use crate::cdp::identity::Identity;
use crate::cdp::mux::Mux;
use crate::metering::MeterError;
use crate::telemetry;
use crate::vocab::{CreateFailure, EndReason};

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The requested id is taken: a session with it exists or existed. The message is the
    /// same for every tenant and names none.
    #[error(
        "sessionId {0} is taken: a session with this id exists or existed, and session ids are never reused"
    )]
    Duplicate(Uuid),
    /// Admission refused (capacity, queue, quota, shutdown).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The browser did not start, or started too late.
    #[error("the browser could not be started: {0}")]
    Launch(String),
    /// The usage record could not be written.
    #[error("the session could not be metered, so it was not started: {0}")]
    Usage(String),
    /// The browser refused the `sessionContext` to load.
    #[error("sessionContext: the browser did not take it: {0}")]
    Context(String),
    /// The shared database (`--database-url`) does not answer, so the session could not
    /// be recorded; retry once it is back.
    #[error("the database does not answer, so the session was not started: {0}")]
    DatabaseUnavailable(String),
    /// `headless: false` on a node without full Chromium or `Xvfb`; says what to install.
    #[error("{0}")]
    HeadfulUnavailable(String),
    /// The create took longer than `--create-timeout-ms`; whatever it started is released.
    #[error("the session did not start within {0:?}; whatever it started is released, retry later")]
    TimedOut(Duration),
}

impl CreateError {
    /// The metrics label of a create that got no session; `None` for the client's own error
    /// and for admission's refusals, which admission counts itself.
    fn failure(&self) -> Option<CreateFailure> {
        match self {
            CreateError::Duplicate(_)
            | CreateError::Context(_)
            | CreateError::HeadfulUnavailable(_) => None,
            CreateError::Refused(Refusal::ShuttingDown) => Some(CreateFailure::ShuttingDown),
            CreateError::Refused(_) => None,
            CreateError::Launch(_) => Some(CreateFailure::BrowserStartFailed),
            CreateError::Usage(_) | CreateError::DatabaseUnavailable(_) => {
                Some(CreateFailure::UsageUnavailable)
            }
            CreateError::TimedOut(_) => Some(CreateFailure::TimedOut),
        }
    }
}

/// A new live session on its way to the create's caller. Dropped untaken (the caller hung
/// up, or its create timed out, even at the moment it was handed over), it ends the session
/// at once: no session is left live with nobody holding it.
struct Handover(Option<Arc<Session>>);

impl Handover {
    fn new(session: Arc<Session>) -> Handover {
        Handover(Some(session))
    }

    /// The session, now held by the caller (`None` only if it was taken already).
    fn take(mut self) -> Option<Arc<Session>> {
        self.0.take()
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let Some(orphan) = self.0.take() {
            warn!(session_id = %orphan.id,
                "the create's caller gave up (it hung up or timed out) before the session went live; releasing it");
            let _ = orphan.request_end(EndReason::CreationAbandoned);
        }
    }
}

/// A pooled browser a create took, with the id its directories are named after.
struct Pooled {
    id: Uuid,
    launched: Launched,
}

impl Registry {
    /// Creates a session and returns once its browser answers CDP, within the create
    /// timeout. The work runs in its own task, so a client that hangs up mid-create cannot
    /// strand a half-started browser; and a session that goes live after its caller gave up
    /// (it hung up, or the timeout passed) is released at once, never left live unheld.
    pub(crate) async fn create(
        self: &Arc<Self>,
        options: SessionOptions,
        caller: &Caller,
    ) -> Result<Arc<Session>, CreateError> {
        let this = self.clone();
        let tenant = caller.tenant_name();
        let (deliver, delivered) = oneshot::channel();
        self.tasks.spawn(async move {
            let result = this.create_now(options, tenant).await.map(Handover::new);
            // Whoever drops an untaken handover (the caller hung up or timed out, even as
            // it was sent) ends its session.
            let _ = deliver.send(result);
        });
        let within = self.admitter.limits().create_timeout;
        let result = match tokio::time::timeout(within, delivered).await {
            Ok(Ok(result)) => result.and_then(|handover| {
                handover
                    .take()
                    .ok_or_else(|| CreateError::Launch("the session was handed over twice".into()))
            }),
            Ok(Err(_)) => Err(CreateError::Launch("session start-up task failed".into())),
            Err(_) => Err(CreateError::TimedOut(within)),
        };
        if let Some(failure) = result.as_ref().err().and_then(CreateError::failure) {
            telemetry::create_failed(failure);
        }
        result
    }

    /// Runs the whole pipeline for one create. A create that fails may have given a slot
    /// back (or evicted a pooled browser): the warm pool is told, so it can refill.
    async fn create_now(
        self: Arc<Self>,
        options: SessionOptions,
        tenant: Option<Arc<str>>,
    ) -> Result<Arc<Session>, CreateError> {
        let result = self.clone().create_admitted(options, tenant).await;
        if result.is_err() {
            self.slot_freed();
        }
        result
    }

    async fn create_admitted(
        self: Arc<Self>,
        options: SessionOptions,
        tenant: Option<Arc<str>>,
    ) -> Result<Arc<Session>, CreateError> {
        let requested = Instant::now();
        if self.is_closed() {
            return Err(Refusal::ShuttingDown.into());
        }
        if options.headful
            && let Some(missing) = self.host.engines().and_then(|e| e.headful_missing())
        {
            return Err(CreateError::HeadfulUnavailable(missing));
        }
        let quota = self
            .admit_entry(options.session_id, tenant.as_ref())
            .await?;
        let (permit, pooled) = match self.admitter.admit(options.poolable()).await? {
            Slot::Warm(warm) => (
                warm.permit,
                Some(Pooled {
                    id: warm.id,
                    launched: warm.launched,
                }),
            ),
            Slot::Cold(permit) => (permit, None),
        };
        let session = self.register(options, tenant, pooled.as_ref()).await;
        let session = match session {
            Ok(session) => session,
            Err(e) => {
                if let Some(pooled) = pooled {
                    pooled.launched.process.kill().await;
                }
                return Err(e);
            }
        };
        let warm = pooled.is_some();
        // The session's files directory is made while the browser starts.
        let (launched, files) = tokio::join!(
            self.browser_for(&session, pooled),
            self.files().prepare(session.id)
        );
        let launched = match launched {
            Ok(launched) => launched,
            // The files directory is marked ended before the id is free for another create.
            Err(e) => {
                self.files().session_ended(session.id).await;
                self.directory.forget(&session);
                session.abandon_start();
                return Err(e);
            }
        };
        let files = files.map_err(|e| {
            CreateError::Launch(format!("cannot create the session's files directory: {e}"))
        });
        self.start_live(session, launched, files, (permit, quota), requested, warm)
            .await
    }

    /// Adds the starting session to the directory under its id: the one asked for, else the
    /// pooled browser's, else a new one.
    async fn register(
        &self,
        options: SessionOptions,
        tenant: Option<Arc<str>>,
        pooled: Option<&Pooled>,
    ) -> Result<Arc<Session>, CreateError> {
        let id = options
            .session_id
            .or(pooled.map(|p| p.id))
            .unwrap_or_else(Uuid::new_v4);
        let session = Arc::new(Session::new(id, options, tenant));
        self.directory
            .insert(&session)
            .map_err(CreateError::Duplicate)?;
        Ok(session)
    }

    /// The pooled browser, or a newly launched one. On failure the caller forgets the
    /// session, once its files directory is marked ended.
    async fn browser_for(
        &self,
        session: &Session,
        pooled: Option<Pooled>,
    ) -> Result<Launched, CreateError> {
        if let Some(pooled) = pooled {
            debug!(session_id = %session.id, browser = %pooled.launched.process.address(), "session takes a pooled browser");
            return Ok(pooled.launched);
        }
        let spec = LaunchSpec {
            session_id: session.id,
            dimensions: session.options.dimensions,
            user_agent: session.options.user_agent.clone(),
            proxy_server: session.options.proxy_server.clone(),
            proxy_auth: session.proxy_auth(),
            downloads: Some(self.files().dir(session.id)),
            headful: session.options.headful,
        };
        let launch_started = Instant::now();
        let launched = self.host.launch(spec).await;
        telemetry::browser_launched(launch_started.elapsed());
        self.note_launch(launched.as_ref().err().map(ToString::to_string));
        launched.map_err(|e| CreateError::Launch(e.to_string()))
    }

    /// Connects the session to its browser, makes it live and metered, and starts its
    /// supervisor; or undoes it all.
    async fn start_live(
        self: Arc<Self>,
        session: Arc<Session>,
        launched: Launched,
        files: Result<PathBuf, CreateError>,
        slot: (OwnedSemaphorePermit, QuotaHold),
        requested: Instant,
        warm: bool,
    ) -> Result<Arc<Session>, CreateError> {
        let Launched {
            transport,
            process,
            version,
            downloads,
        } = launched;
        let files_dir = files.as_ref().ok().cloned();
        let identity = Identity::for_session(session.options.user_agent.as_deref(), &version);
        let mux = Mux::start(
            transport,
            Guard::new(self.cdp_limits(), files_dir).for_session(session.id),
        );
        session.attach_browser(mux.clone(), &process, version);
        let prepared = match (files, present_as(&mux, identity.as_ref()).await) {
            (Ok(dir), Ok(())) => {
                self.prepare(&session, (&mux, &process), downloads, dir)
                    .await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        if let Err(e) = prepared {
            process.kill().await;
            self.files().session_ended(session.id).await;
            self.directory.forget(&session);
            session.abandon_start();
            return Err(e);
        }
        let live = self.live.fetch_add(1, Ordering::AcqRel) + 1;
        telemetry::sessions_live(live);
        telemetry::session_created(requested.elapsed());
        info!(
            session_id = %session.id,
            timeout_ms = session.options.timeout_ms,
            warm,
            create_ms = requested.elapsed().as_secs_f64() * 1e3,
            "session live"
        );
        let registry = self.clone();
        let supervised = session.clone();
        self.tasks.spawn(async move {
            let probe = registry.probe;
            let shutdown = registry.shutdown.clone();
            let reason =
                supervisor::supervise(&supervised, process, mux, slot, probe, shutdown).await;
            registry.slot_freed();
            // Usage record and history first: whoever waits for the reap (a release call)
            // then sees them complete.
            registry.note_ended(&supervised, reason).await;
            supervised.mark_reaped();
        });
        Ok(session)
    }

    /// Readies the browser for its client, then makes the session live: downloads go to
    /// the session's files (the browser was told at launch, unless it is a pooled browser
    /// that a session took under an id of its own), the `sessionContext` is loaded.
    async fn prepare(
        &self,
        session: &Arc<Session>,
        (mux, process): (&Arc<Mux>, &Arc<dyn BrowserProcess>),
        downloads: Option<PathBuf>,
        dir: PathBuf,
    ) -> Result<(), CreateError> {
        if downloads.as_deref() != Some(dir.as_path()) {
            // A confined browser writes only where it was launched to: that directory
            // becomes the session's.
            process
                .adopt_downloads(&dir)
                .await
                .map_err(|e| CreateError::Launch(e.to_string()))?;
            // Events on: the guard watches downloads on the root session.
            let downloads =
                json!({"behavior": "allow", "downloadPath": dir, "eventsEnabled": true});
            mux.command("Browser.setDownloadBehavior", downloads)
                .await
                .map_err(|e| CreateError::Launch(e.to_string()))?;
        }
        if let Some(context) = &session.options.context {
            super::context::load(mux, context)
                .await
                .map_err(|e| CreateError::Context(e.to_string()))?;
        }
        self.go_live(session).await
    }

    /// `starting → live`, then the usage record: a session without one is never served.
    async fn go_live(&self, session: &Arc<Session>) -> Result<(), CreateError> {
        if self.is_closed() {
            return Err(Refusal::ShuttingDown.into());
        }
        session
            .go_live()
            .map_err(|e| CreateError::Launch(e.to_string()))?;
        let limit = self.admitter.limits().per_tenant.map(|n| n as u64);
        self.meter
            .start(
                session.clone(),
                session.tenant.as_deref().map(str::to_owned),
                limit,
            )
            .await
            .map_err(|e| match e {
                MeterError::Database(e) => CreateError::DatabaseUnavailable(e),
                e @ MeterError::DeadlineExceeded { .. } => {
                    CreateError::DatabaseUnavailable(e.to_string())
                }
                MeterError::Duplicate => CreateError::Duplicate(session.id),
                MeterError::OverQuota(limit) => {
                    let tenant = session.tenant.clone().unwrap_or_else(|| "".into());
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                    CreateError::Refused(OverQuota { tenant, limit }.into())
                }
                e => CreateError::Usage(e.to_string()),
            })
    }
}

/// Every page of the browser says it is `identity` (the session's `userAgent`, or the
/// browser's own without its headless mark) before a client sees one.
async fn present_as(mux: &Mux, identity: Option<&Identity>) -> Result<(), CreateError> {
    match identity {
        Some(identity) => mux
            .present_as(identity)
            .await
            .map_err(|e| CreateError::Launch(e.to_string())),
        None => Ok(()),
    }
}
