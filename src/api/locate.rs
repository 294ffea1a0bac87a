//! Where a session is, for one request about it, and what each route does about that: the
//! one place the API decides "here, on another node, or only in the records".
//!
//! [`locate`] finds a session: [`Located::Here`] when this node runs it (or ran it and
//! still remembers it), [`Located::Elsewhere`] when another live node answers for it,
//! [`Located::Ended`] when only the records know it, [`Located::Unknown`] otherwise. Each
//! route has one declared [`Policy`] ([`Route::policy`]): which node it asks (the one that
//! runs the session, or the one that holds its files), what an owner that does not answer
//! gives, and what a session that runs nowhere gives. Handlers call [`resolve`] (or
//! [`upgrade`] for a WebSocket) with their route and act on the [`Step`]; none decides by
//! itself. The policies are pinned by this module's tests and listed in the README's
//! cluster failure table.
//!
//! It must not change a session, and must not read another node's answer: a relayed answer
//! passes on unchanged ([`super::relay`] carries it).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::relay::{self, Owner, Relay};
use crate::auth::Caller;
use crate::cluster::Cluster;
use crate::cluster::forward::{QUICK_ANSWER, Unreachable};
use crate::session::Session;
use crate::session::view::SessionView;
use crate::telemetry::ForwardKind;
use crate::vocab::Status;

/// Longest an upload may take in all, here or passed to the node that holds the session's
/// files (a stalled one is cut off sooner: see `files::next_chunk`).
pub(super) const UPLOAD_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Where a session is.
pub(crate) enum Located {
    /// This node runs it, or ran it and still remembers it.
    Here(Arc<Session>),
    /// Another live node answers for it.
    Elsewhere(Owner),
    /// It runs on no node that answers for it: what the records say (it ended; or, when
    /// its node does not answer, its last record).
    Ended(SessionView),
    /// The caller may see no session with this id.
    Unknown,
}

/// A request about a session, by what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /v1/sessions/{id}`.
    Retrieve,
    /// `POST /v1/sessions/{id}/release`.
    Release,
    /// `POST /v1/sessions/{id}/timeout`.
    Timeout,
    /// `GET /v1/sessions/{id}/context`.
    Context,
    /// `GET /v1/sessions/{id}/live-details`.
    LiveDetails,
    /// `POST /v1/sessions/{id}/computer`.
    Computer,
    /// CDP discovery: `/json/version`.
    Version,
    /// The CDP WebSocket.
    Connect,
    /// The live viewer's pages, facts and thumbnail.
    Viewer,
    /// The live viewer's WebSocket.
    ViewerSocket,
    /// Reading or deleting a session's files (list, download, archive, delete).
    Files,
    /// Uploading a file to a session.
    Upload,
}

/// Which node a route asks when this node does not have the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seek {
    /// The live node that runs the session.
    Runner,
    /// The live node that ran it, live or ended: its files are there.
    Holder,
}

/// What a route gives when the node it asks does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfUnreachable {
    /// What the records say, as for a session that runs nowhere.
    Records,
    /// 502 `node_unreachable`: only that node can do it.
    BadGateway,
}

/// What a route gives for a session that runs nowhere (ended, or on a node that is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotRunning {
    /// The handler answers from the record ([`Step::Recorded`]).
    Records,
    /// 409 `session_ended`.
    Conflict,
    /// 410 `session_ended`, saying how it ended.
    Gone,
    /// 410 `session_ended` without looking at the records: the viewer token no longer works
    /// (an unknown session too, since the token stands for the key).
    TokenExpired,
}

/// One route's declared policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The node asked when this one does not have the session.
    pub seek: Seek,
    /// When that node does not answer.
    pub unreachable: IfUnreachable,
    /// When the session runs nowhere.
    pub not_running: NotRunning,
    /// The metric label of a request passed on.
    pub kind: ForwardKind,
    /// Longest wait for the head of that node's answer.
    pub within: Duration,
}

impl Route {
    /// Every route.
    #[cfg(test)]
    const ALL: [Route; 12] = [
        Route::Retrieve,
        Route::Release,
        Route::Timeout,
        Route::Context,
        Route::LiveDetails,
        Route::Computer,
        Route::Version,
        Route::Connect,
        Route::Viewer,
        Route::ViewerSocket,
        Route::Files,
        Route::Upload,
    ];

    /// The route's policy: the one table of "here or elsewhere" (the README's cluster
    /// failure table states it). One row per route, so it is kept as a table.
    #[rustfmt::skip]
    pub(crate) const fn policy(self) -> Policy {
        use IfUnreachable::{BadGateway, Records};
        use NotRunning::{Conflict, Gone, TokenExpired};
        use Seek::{Holder, Runner};
        let (seek, unreachable, not_running, kind) = match self {
            // A read the records can answer: an owner that does not answer is not an error.
            Route::Retrieve => (Runner, Records, NotRunning::Records, ForwardKind::Retrieve),
            // Only the owner can end it; an ended session is released already (200).
            Route::Release => (Runner, BadGateway, NotRunning::Records, ForwardKind::Release),
            Route::Timeout => (Runner, BadGateway, Conflict, ForwardKind::Timeout),
            Route::Context => (Runner, BadGateway, Conflict, ForwardKind::Context),
            Route::LiveDetails => (Runner, BadGateway, Conflict, ForwardKind::LiveDetails),
            Route::Computer => (Runner, BadGateway, Conflict, ForwardKind::Computer),
            Route::Version => (Runner, BadGateway, Gone, ForwardKind::Version),
            Route::Connect => (Runner, BadGateway, Gone, ForwardKind::Upgrade),
            Route::Viewer => (Runner, BadGateway, TokenExpired, ForwardKind::Viewer),
            Route::ViewerSocket => (Runner, BadGateway, TokenExpired, ForwardKind::Upgrade),
            // An ended session's files stay on the node that ran it.
            Route::Files => (Holder, BadGateway, NotRunning::Records, ForwardKind::Files),
            Route::Upload => (Holder, BadGateway, Conflict, ForwardKind::Files),
        };
        let within = match self {
            Route::Upload => UPLOAD_DEADLINE,
            _ => QUICK_ANSWER,
        };
        Policy { seek, unreachable, not_running, kind, within }
    }
}

/// What a handler does with a request about a session, by its route's policy.
pub(crate) enum Step<B> {
    /// This node runs (or ran) the session: the handler answers, with what it passed in.
    Here(Arc<Session>, B),
    /// The session runs nowhere and the route answers from its record (retrieve, release,
    /// reading files).
    Recorded(SessionView),
    /// The node that answers for the session answered: pass its answer on.
    Answered(Response),
}

impl<B> Step<B> {
    /// The session here, or the answer to give, for a route whose policy never answers
    /// from the records (a record then is answered like an unknown session).
    pub(crate) fn here(self, id: Uuid) -> Result<(Arc<Session>, B), Box<Response>> {
        use axum::response::IntoResponse;
        match self {
            Step::Here(session, carried) => Ok((session, carried)),
            Step::Answered(answer) => Err(Box::new(answer)),
            Step::Recorded(_) => Err(Box::new(ApiError::session_not_found(id).into_response())),
        }
    }
}

/// Where session `id` of `caller` is, for `route`. `cluster` is `None` when this request
/// may not be relayed (a single node, or a request another node relayed).
pub(crate) async fn locate(
    state: &AppState,
    cluster: Option<&Arc<Cluster>>,
    caller: &Caller,
    id: Uuid,
    route: Route,
) -> Result<Located, ApiError> {
    if let Some(session) = state.registry.get_for(&id, caller) {
        return Ok(Located::Here(session));
    }
    if let Some(cluster) = cluster {
        let tenant = caller.tenant_name();
        let tenant = tenant.as_deref();
        let owner = match route.policy().seek {
            Seek::Runner => cluster.owner_of(id, tenant).await?,
            Seek::Holder => cluster.holder_of(id, tenant).await?,
        };
        if let Some(url) = owner {
            return Ok(Located::Elsewhere(Owner::new(cluster, url)));
        }
    }
    recorded(state, caller, id, route).await
}

/// The caller's only live session in the cluster, when it has exactly one and another node
/// runs it (CDP discovery without a session id), and this request may be relayed.
pub(crate) async fn sole_live_elsewhere(
    state: &AppState,
    relay: &Relay,
    caller: &Caller,
) -> Result<Option<Uuid>, ApiError> {
    let Some(cluster) = relay.cluster(state) else {
        return Ok(None);
    };
    let tenant = caller.tenant_name();
    Ok(cluster.sole_live_session(tenant.as_deref()).await?)
}

/// What the records know of session `id`, when `route` looks at them.
async fn recorded(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    route: Route,
) -> Result<Located, ApiError> {
    if route.policy().not_running == NotRunning::TokenExpired {
        return Ok(Located::Unknown);
    }
    Ok(match state.registry.retrieve(&id, caller).await? {
        Some(view) => Located::Ended(view),
        None => Located::Unknown,
    })
}

/// Locates session `id` for `route` and follows the route's policy: the session here (with
/// `body` back), the answer of the node that answers for it (`body` passed to it), or what
/// the records give.
pub(crate) async fn resolve<B: Into<Body>>(
    state: &AppState,
    relay: &Relay,
    caller: &Caller,
    (id, route): (Uuid, Route),
    body: B,
) -> Result<Step<B>, ApiError> {
    let owner = match locate(state, relay.cluster(state), caller, id, route).await? {
        Located::Elsewhere(owner) => owner,
        Located::Here(session) => return Ok(Step::Here(session, body)),
        Located::Ended(view) => return not_running(id, route, Some(view)),
        Located::Unknown => return not_running(id, route, None),
    };
    let policy = route.policy();
    let passed = relay
        .pass(state, &owner, (id, policy.kind), body.into(), policy.within)
        .await;
    answered(state, caller, (id, route), passed).await
}

/// [`resolve`] for a WebSocket upgrade: the session here (with the request back, to
/// upgrade here), or the answer of the node that runs it (its 101, the sockets joined).
pub(crate) async fn upgrade(
    state: &AppState,
    caller: &Caller,
    (id, route): (Uuid, Route),
    request: Request,
) -> Result<Step<Request>, ApiError> {
    let cluster = relay::may_relay(state, &request);
    let owner = match locate(state, cluster, caller, id, route).await? {
        Located::Elsewhere(owner) => owner,
        Located::Here(session) => return Ok(Step::Here(session, request)),
        Located::Ended(view) => return not_running(id, route, Some(view)),
        Located::Unknown => return not_running(id, route, None),
    };
    let passed = owner.upgrade(state, id, request).await;
    answered(state, caller, (id, route), passed).await
}

/// The owner's answer, or what the route gives when it did not answer.
async fn answered<B>(
    state: &AppState,
    caller: &Caller,
    (id, route): (Uuid, Route),
    passed: Result<Response, Unreachable>,
) -> Result<Step<B>, ApiError> {
    match (passed, route.policy().unreachable) {
        (Ok(answer), _) => Ok(Step::Answered(answer)),
        (Err(_), IfUnreachable::BadGateway) => Err(relay::node_unreachable(id)),
        (Err(_), IfUnreachable::Records) => match recorded(state, caller, id, route).await? {
            Located::Ended(view) => not_running(id, route, Some(view)),
            _ => not_running(id, route, None),
        },
    }
}

/// What `route` gives for session `id`, which runs nowhere: `known` is its record.
fn not_running<B>(id: Uuid, route: Route, known: Option<SessionView>) -> Result<Step<B>, ApiError> {
    match (route.policy().not_running, known) {
        (NotRunning::TokenExpired, _) => Err(viewer_gone(id)),
        (_, None) => Err(ApiError::session_not_found(id)),
        (NotRunning::Records, Some(view)) => Ok(Step::Recorded(view)),
        (NotRunning::Conflict, Some(_)) => Err(ended_conflict(id)),
        (NotRunning::Gone, Some(view)) => Err(gone(
            id,
            view.status,
            view.release_reason.map(|r| r.as_str()),
        )),
    }
}

/// 409 for a request that needs a live session.
pub(super) fn ended_conflict(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "session_ended",
        format!("session {id} has ended"),
    )
}

/// 410 for a session that has ended: `session <id> has ended: <status> (<reason>)`. A
/// record that still says live belongs to a node that left the cluster (the survivors fail
/// it as `node_lost`), and says so.
pub(super) fn gone(id: Uuid, status: Status, reason: Option<&str>) -> ApiError {
    let how = match (status, reason) {
        (Status::Live, _) => "its node left the cluster".to_owned(),
        (_, Some(reason)) => format!("{} ({reason})", status.as_str()),
        (_, None) => status.as_str().to_owned(),
    };
    ApiError::new(
        StatusCode::GONE,
        "session_ended",
        format!("session {id} has ended: {how}"),
    )
}

/// 410 for a viewer route of a session that is not live: its token no longer works.
pub(super) fn viewer_gone(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "session_ended",
        format!("session {id} is not live: its viewer token no longer works"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 410 says how the session ended, and never that it "ended: live".
    #[test]
    fn gone_says_how_a_session_ended() {
        let id = Uuid::nil();
        let said = |status, reason| gone(id, status, reason).message;
        assert!(said(Status::Failed, Some("node_lost")).ends_with("has ended: failed (node_lost)"));
        assert!(said(Status::Released, None).ends_with("has ended: released"));
        let live = said(Status::Live, None);
        assert!(
            live.ends_with("has ended: its node left the cluster"),
            "{live}"
        );
    }
    use crate::api::cdp::tests::state;
    use crate::session::params::parse_create_body;

    /// What a step comes to, in a word: `here`, `recorded`, `answered`, or the error's
    /// status and code.
    fn outcome(step: Result<Step<()>, ApiError>) -> String {
        match step {
            Ok(Step::Here(..)) => "here".into(),
            Ok(Step::Recorded(_)) => "recorded".into(),
            Ok(Step::Answered(_)) => "answered".into(),
            Err(e) => format!("{} {}", e.status.as_u16(), e.code),
        }
    }

    #[test]
    fn each_route_declares_one_policy() {
        use IfUnreachable::{BadGateway, Records as FromRecords};
        use NotRunning::{Conflict, Gone, Records, TokenExpired};
        use Seek::{Holder, Runner};
        let table = [
            (Route::Retrieve, Runner, FromRecords, Records, "retrieve"),
            (Route::Release, Runner, BadGateway, Records, "release"),
            (Route::Timeout, Runner, BadGateway, Conflict, "timeout"),
            (Route::Context, Runner, BadGateway, Conflict, "context"),
            (
                Route::LiveDetails,
                Runner,
                BadGateway,
                Conflict,
                "live_details",
            ),
            (Route::Computer, Runner, BadGateway, Conflict, "computer"),
            (Route::Version, Runner, BadGateway, Gone, "version"),
            (Route::Connect, Runner, BadGateway, Gone, "upgrade"),
            (Route::Viewer, Runner, BadGateway, TokenExpired, "viewer"),
            (
                Route::ViewerSocket,
                Runner,
                BadGateway,
                TokenExpired,
                "upgrade",
            ),
            (Route::Files, Holder, BadGateway, Records, "files"),
            (Route::Upload, Holder, BadGateway, Conflict, "files"),
        ];
        assert_eq!(table.len(), Route::ALL.len());
        for (route, seek, unreachable, not_running, kind) in table {
            let policy = route.policy();
            assert_eq!(
                (policy.seek, policy.unreachable, policy.not_running),
                (seek, unreachable, not_running),
                "{route:?}"
            );
            assert_eq!(policy.kind.as_str(), kind, "{route:?}");
            let within = if route == Route::Upload {
                UPLOAD_DEADLINE
            } else {
                QUICK_ANSWER
            };
            assert_eq!(policy.within, within, "{route:?}");
            // Only a route the records can answer falls back to them.
            if unreachable == FromRecords {
                assert_eq!(not_running, Records, "{route:?}");
            }
        }
    }

    /// What a single node answers for each route: the session here, the records, or the
    /// route's refusal; the same as each handler answered before it asked this module.
    #[tokio::test]
    async fn a_single_node_answers_each_route_here_or_from_the_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = || {
            parse_create_body(
                b"{}",
                crate::session::params::TimeoutLimits {
                    default_ms: 60_000,
                    min_ms: 1_000,
                    max_ms: 86_400_000,
                },
            )
        };
        // A session of an earlier run: only the records know it.
        let earlier = {
            let state = state(dir.path()).await;
            let session = state
                .registry
                .create(body().expect("body"), &Caller::Open)
                .await;
            let id = session.expect("create").id;
            state
                .registry
                .release(&id, &Caller::Open)
                .await
                .expect("released");
            state.registry.shutdown(Duration::from_secs(5)).await;
            id
        };
        let state = state(dir.path()).await;
        let live = state
            .registry
            .create(body().expect("body"), &Caller::Open)
            .await;
        let live = live.expect("create").id;
        let relay = Relay::direct();
        let ask = |id, route| resolve(&state, &relay, &Caller::Open, (id, route), ());
        for route in Route::ALL {
            let (unknown, ended) = match route {
                Route::Retrieve | Route::Release | Route::Files => {
                    ("404 session_not_found", "recorded")
                }
                Route::Timeout
                | Route::Context
                | Route::LiveDetails
                | Route::Computer
                | Route::Upload => ("404 session_not_found", "409 session_ended"),
                Route::Version | Route::Connect => ("404 session_not_found", "410 session_ended"),
                Route::Viewer | Route::ViewerSocket => ("410 session_ended", "410 session_ended"),
            };
            assert_eq!(outcome(ask(live, route).await), "here", "{route:?}");
            assert_eq!(
                outcome(ask(Uuid::new_v4(), route).await),
                unknown,
                "{route:?}"
            );
            assert_eq!(outcome(ask(earlier, route).await), ended, "{route:?}");
        }
        state.registry.shutdown(Duration::from_secs(5)).await;
    }

    /// An owner that does not answer: 502 for every route but retrieve, which answers from
    /// the records (404 when they do not know the session either).
    #[tokio::test]
    async fn an_owner_that_does_not_answer_gives_what_the_route_declares() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(dir.path()).await;
        let created = state.registry.create(
            parse_create_body(b"{}", state.limits).expect("body"),
            &Caller::Open,
        );
        let id = created.await.expect("create").id;
        let cut = || {
            Err(Unreachable {
                url: "http://10.0.0.2:1".into(),
                why: "cut off".into(),
                sent: true,
            })
        };
        for route in Route::ALL {
            let known = outcome(answered(&state, &Caller::Open, (id, route), cut()).await);
            let unknown = Uuid::new_v4();
            let unknown = outcome(answered(&state, &Caller::Open, (unknown, route), cut()).await);
            if route == Route::Retrieve {
                assert_eq!(
                    (known.as_str(), unknown.as_str()),
                    ("recorded", "404 session_not_found")
                );
            } else {
                assert_eq!(known, "502 node_unreachable", "{route:?}");
                assert_eq!(unknown, "502 node_unreachable", "{route:?}");
            }
            let owner_answered = Ok(Response::new(Body::empty()));
            let step = answered(&state, &Caller::Open, (id, route), owner_answered).await;
            assert_eq!(outcome(step), "answered", "{route:?}");
        }
        state.registry.shutdown(Duration::from_secs(5)).await;
    }
}
