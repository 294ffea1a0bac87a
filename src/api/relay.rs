//! Cluster mode at the API: how a request is relayed to another node, and how a request
//! another node relayed is recognised and answered.
//!
//! A client's request is relayed at most once: the receiving node sees the cluster's secret
//! ([`peer_hop`]) and answers itself. The node that owns a session authenticates the relayed
//! request with the client's own key, exactly as a direct one, so relaying gives a client
//! nothing its key does not. *Whether* a request about a session is relayed is decided in
//! [`super::locate`], never here and never in a handler; this module places creates, passes
//! requests and upgrades to an [`Owner`], and fans release-all out.
//!
//! Nodes speak to each other in typed internal marks, never by reading each other's public
//! JSON: a node answering a relayed request marks a refusal with [`PeerRefusal`] and a
//! created session with its id (`x-ingot-refusal`, `x-ingot-session-id`); the relaying node
//! decides on those and takes them off before the answer reaches the client, whose answer is
//! the same as from a single node.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tracing::{info, warn};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::wire::PublicUrls;
use crate::cluster::Cluster;
use crate::cluster::forward::{
    INTERNAL_PREFIX, Internal, Outgoing, QUICK_ANSWER, REFUSAL_HEADER, SECRET_HEADER,
    SESSION_HEADER, Unreachable, VIA_HEADER,
};
use crate::telemetry::{self, ForwardKind};

/// Marks a request that another node of the cluster relayed.
#[derive(Debug, Clone)]
pub(crate) struct Hop {
    /// The public URL of the node the client talks to: links in the answer point there.
    via: Option<Arc<PublicUrls>>,
}

/// Why a node refused a request another node relayed to it: the typed code between nodes
/// (the `x-ingot-refusal` header of the answer). [`ApiError`] carries it, [`peer_hop`] puts
/// it on the answer to a relayed request, and the relaying node decides on it and takes it
/// off; a client never sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRefusal {
    /// No room there now: every slot taken, the queue full or timed out, or a relayed
    /// create that found no free slot.
    AtCapacity,
    /// The tenant is at its quota, which holds on every node together.
    TenantQuota,
    /// The session id asked for is taken; ids are unique in the whole cluster.
    SessionExists,
    /// That node takes no new sessions (it is draining or stopping).
    ShuttingDown,
    /// That node may not serve now: it is fenced, or its database does not answer.
    Unavailable,
    /// The session did not start there (its browser, its record, or the create's deadline).
    StartFailed,
}

impl PeerRefusal {
    /// Every refusal.
    pub const ALL: [PeerRefusal; 6] = [
        PeerRefusal::AtCapacity,
        PeerRefusal::TenantQuota,
        PeerRefusal::SessionExists,
        PeerRefusal::ShuttingDown,
        PeerRefusal::Unavailable,
        PeerRefusal::StartFailed,
    ];

    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRefusal::AtCapacity => "at_capacity",
            PeerRefusal::TenantQuota => "tenant_quota",
            PeerRefusal::SessionExists => "session_exists",
            PeerRefusal::ShuttingDown => "shutting_down",
            PeerRefusal::Unavailable => "unavailable",
            PeerRefusal::StartFailed => "start_failed",
        }
    }

    /// The refusal a header's value names; `None` for anything else.
    pub fn parse(value: &str) -> Option<PeerRefusal> {
        PeerRefusal::ALL.into_iter().find(|r| r.as_str() == value)
    }

    /// Whether a create refused this way may be offered to the next node: yes for what is
    /// particular to the node that refused; no for what holds on every node (the tenant's
    /// quota, a taken id), whose answer is the client's.
    pub fn next_node_may_take(self) -> bool {
        !matches!(self, PeerRefusal::TenantQuota | PeerRefusal::SessionExists)
    }

    /// The refusal another node marked its answer with.
    fn of(answer: &Response) -> Option<PeerRefusal> {
        answer
            .extensions()
            .get::<Internal>()?
            .0
            .get(REFUSAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(PeerRefusal::parse)
    }
}

/// The session a create made, as an extension of its answer: [`peer_hop`] tells the node
/// that relayed the create, which then knows where the session runs without reading the
/// answer's JSON.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Created(pub Uuid);

/// Refuses `x-ingot-*` headers without the cluster's secret (403); with it, marks the
/// request as relayed by another node, and marks the answer for that node (a refusal's
/// [`PeerRefusal`], a created session's id).
pub(crate) async fn peer_hop(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if !headers
        .keys()
        .any(|name| name.as_str().starts_with(INTERNAL_PREFIX))
    {
        return next.run(request).await;
    }
    let from_peer = state
        .cluster
        .as_ref()
        .zip(headers.get(SECRET_HEADER))
        .is_some_and(|(cluster, secret)| cluster.secret_matches(secret.as_bytes()));
    if !from_peer {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cluster_only",
            "x-ingot-* headers are for the nodes of an ingot cluster",
        )
        .into_response();
    }
    let via = headers
        .get(VIA_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("http://") || v.starts_with("https://"))
        .map(|v| Arc::new(PublicUrls::new(v)));
    request.extensions_mut().insert(Hop { via });
    let mut answer = next.run(request).await;
    mark_for_peer(&mut answer);
    answer
}

/// Puts what the answer carries for the relaying node into its internal headers.
fn mark_for_peer(answer: &mut Response) {
    let refusal = answer.extensions().get::<PeerRefusal>().copied();
    let created = answer.extensions().get::<Created>().copied();
    let headers = answer.headers_mut();
    if let Some(refusal) = refusal {
        headers.insert(REFUSAL_HEADER, HeaderValue::from_static(refusal.as_str()));
    }
    if let Some(Created(id)) = created
        && let Ok(value) = HeaderValue::from_str(&id.to_string())
    {
        headers.insert(SESSION_HEADER, value);
    }
}

/// The cluster, when `request` may be relayed: cluster mode, and not relayed already.
pub(super) fn may_relay<'a>(state: &'a AppState, request: &Request) -> Option<&'a Arc<Cluster>> {
    match request.extensions().get::<Hop>() {
        Some(_) => None,
        None => state.cluster.as_ref(),
    }
}

/// What a handler needs to relay its request: the request line and headers, and whether
/// it came from another node (then it is never relayed again).
pub(crate) struct Relay {
    out: Outgoing,
    hop: Option<Hop>,
}

impl FromRequestParts<AppState> for Relay {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let hop = parts.extensions.get::<Hop>().cloned();
        // The request line and headers are copied only when this request may be relayed: a
        // single node, or a request another node relayed, never reads them.
        let out = match (&state.cluster, &hop) {
            (Some(_), None) => Outgoing {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
            },
            _ => Outgoing {
                method: parts.method.clone(),
                uri: Uri::default(),
                headers: HeaderMap::new(),
            },
        };
        Ok(Relay { out, hop })
    }
}

impl Relay {
    /// A client's request to a single node (tests call handlers' steps without a request).
    #[cfg(test)]
    pub(super) fn direct() -> Relay {
        Relay {
            out: Outgoing {
                method: axum::http::Method::GET,
                uri: Uri::default(),
                headers: HeaderMap::new(),
            },
            hop: None,
        }
    }

    /// The base URLs links in the answer use: the relaying node's, else this node's.
    pub(crate) fn links(&self, state: &AppState) -> Arc<PublicUrls> {
        match self.hop.as_ref().and_then(|h| h.via.as_deref()) {
            Some(via) => Arc::new(via.clone().with_viewers(state.viewers.clone())),
            None => state.urls.clone(),
        }
    }

    /// The cluster, when this request may be relayed: cluster mode, from a client.
    pub(super) fn cluster<'a>(&self, state: &'a AppState) -> Option<&'a Arc<Cluster>> {
        match self.hop {
            Some(_) => None,
            None => state.cluster.as_ref(),
        }
    }

    /// Whether another node relayed this request (it is then never relayed again).
    pub(crate) fn relayed(&self) -> bool {
        self.hop.is_some()
    }

    /// Passes this request, with `body`, to `owner` (see [`Owner::pass`]).
    pub(super) async fn pass(
        &self,
        state: &AppState,
        owner: &Owner,
        (id, kind): (Uuid, ForwardKind),
        body: Body,
        within: Duration,
    ) -> Result<Response, Unreachable> {
        owner.pass(state, &self.out, (id, kind), body, within).await
    }

    /// Places a create on another node when this one has no room (or takes no sessions)
    /// and another has; `None` to create here. Nodes are tried best first, up to
    /// [`PLACE_TRIES`]: one that refuses for a reason of its own (no room, stopping, fenced)
    /// is noted as full and the next is tried; one that cannot be connected to is skipped.
    /// A refusal that holds on every node (the tenant's quota, a taken id) is the answer. A
    /// node that took the request and did not answer may be starting the session, so the
    /// create is not repeated anywhere: the client gets 502.
    pub(crate) async fn create_elsewhere(
        &self,
        state: &AppState,
        body: &Bytes,
    ) -> Option<Response> {
        let cluster = self.cluster(state)?;
        if state.registry.takes_sessions_now() {
            return None;
        }
        for _ in 0..PLACE_TRIES {
            let node = cluster.place()?;
            match self.place_on(state, cluster, &node, body).await {
                Placed::Done(answer) => return Some(answer),
                Placed::Full => cluster.full(&node),
            }
        }
        None
    }

    /// Passes a create to `node`.
    async fn place_on(
        &self,
        state: &AppState,
        cluster: &Cluster,
        node: &str,
        body: &Bytes,
    ) -> Placed {
        let within = cluster.create_timeout();
        match cluster
            .send(node, &self.out, body.clone(), &state.urls.http, within)
            .await
        {
            Ok(answer) => {
                telemetry::forwarded(ForwardKind::Create, true);
                let (placed, created) = placed(answer).await;
                if let Some(id) = created {
                    // Its first WebSocket then needs no lookup.
                    cluster.remember(id, node);
                    info!(session_id = %id, node = %node, "no room here: the session was placed on another node");
                }
                placed
            }
            Err(e) => {
                telemetry::forwarded(ForwardKind::Create, false);
                warn!(error = %e, "cannot place a session on another node");
                if !e.sent {
                    return Placed::Full;
                }
                Placed::Done(
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "node_unreachable",
                        "the session was passed to another node, which did not answer; it may \
                         still start there: list your sessions before creating another",
                    )
                    .into_response(),
                )
            }
        }
    }

    /// Passes a release-all to every other live node, which ends the caller's sessions
    /// there; waits for all of them.
    pub(crate) async fn release_everywhere(&self, state: &AppState) {
        let Some(cluster) = self.cluster(state) else {
            return;
        };
        let sends = cluster.peer_urls().into_iter().map(|node| async move {
            let sent = cluster
                .send(
                    &node,
                    &self.out,
                    Bytes::new(),
                    &state.urls.http,
                    QUICK_ANSWER,
                )
                .await;
            let failure = match sent {
                Ok(answer) if answer.status().is_success() => None,
                Ok(answer) => Some(format!("it answered {}", answer.status())),
                Err(e) => Some(e.to_string()),
            };
            telemetry::forwarded(ForwardKind::ReleaseAll, failure.is_none());
            if let Some(why) = failure {
                warn!(node = %node, why, "a release-all passed to another node failed");
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// Another live node that answers for a session: the one that runs it, or the one that
/// holds its files. Found by [`super::locate`].
pub(crate) struct Owner {
    cluster: Arc<Cluster>,
    url: Arc<str>,
}

impl Owner {
    pub(super) fn new(cluster: &Arc<Cluster>, url: Arc<str>) -> Owner {
        Owner {
            cluster: cluster.clone(),
            url,
        }
    }

    /// Passes `out` with `body` (streamed) about session `id` to this node and returns its
    /// answer, whose head may take `within`. The cached owner is forgotten when it answers
    /// that the session is not there (404, 410) or cannot be reached.
    async fn pass(
        &self,
        state: &AppState,
        out: &Outgoing,
        (id, kind): (Uuid, ForwardKind),
        body: Body,
        within: Duration,
    ) -> Result<Response, Unreachable> {
        let sent = self
            .cluster
            .send(&self.url, out, body, &state.urls.http, within)
            .await;
        telemetry::forwarded(kind, sent.is_ok());
        match &sent {
            Ok(answer) if matches!(answer.status(), StatusCode::NOT_FOUND | StatusCode::GONE) => {
                self.cluster.forget(id);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(session_id = %id, error = %e, "cannot reach the node that answers for the session");
                self.cluster.forget(id);
            }
        }
        sent
    }

    /// Passes the WebSocket upgrade `request` about session `id` to this node: its 101 (the
    /// sockets are then joined) or its refusal. The cached owner is forgotten unless it
    /// accepted.
    pub(super) async fn upgrade(
        &self,
        state: &AppState,
        id: Uuid,
        request: Request,
    ) -> Result<Response, Unreachable> {
        let sent = self
            .cluster
            .upgrade(&self.url, request, &state.clients)
            .await;
        telemetry::forwarded(ForwardKind::Upgrade, sent.is_ok());
        match &sent {
            Ok(answer) if answer.status() == StatusCode::SWITCHING_PROTOCOLS => {}
            Ok(_) => self.cluster.forget(id),
            Err(e) => {
                warn!(session_id = %id, error = %e, "cannot reach the node that runs the session");
                self.cluster.forget(id);
            }
        }
        sent
    }
}

/// The 502 for a session whose node does not answer.
pub(super) fn node_unreachable(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_unreachable",
        format!("the node that runs session {id} does not answer; retry, or create a new session"),
    )
}

/// Most nodes a create is offered to before this node queues it itself.
const PLACE_TRIES: usize = 3;

/// What another node answered a create passed to it.
#[derive(Debug)]
enum Placed {
    /// Its answer (a session, or an error to pass on).
    Done(Response),
    /// It has no room after all (it filled up, began draining, or may not serve).
    Full,
}

/// What to do with another node's answer to a create, from its status and its mark: a
/// marked refusal decides by its kind; an unmarked 429 or 503 (the connection cap answers
/// before any route can mark it) means no room there.
fn verdict(status: StatusCode, refusal: Option<PeerRefusal>) -> bool {
    match refusal {
        Some(refusal) => refusal.next_node_may_take(),
        None => matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ),
    }
}

/// Reads another node's answer to a create whole (it is small JSON), and decides on its
/// marks: whether to try the next node, and the id of the session it made.
async fn placed(answer: Response) -> (Placed, Option<Uuid>) {
    if verdict(answer.status(), PeerRefusal::of(&answer)) {
        return (Placed::Full, None);
    }
    let created = answer
        .extensions()
        .get::<Internal>()
        .and_then(|internal| internal.0.get(SESSION_HEADER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .filter(|_| answer.status().is_success());
    let (parts, body) = answer.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        let broken = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "node_unreachable",
            "the node the session was passed to broke off its answer; list your sessions before creating another",
        );
        return (Placed::Done(broken.into_response()), None);
    };
    let whole = Response::from_parts(parts, Body::from(bytes));
    (Placed::Done(whole), created)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another node's answer as the relaying node receives it: internal headers taken off
    /// into [`Internal`].
    fn from_peer(status: StatusCode, marks: &[(&'static str, &str)], body: Body) -> Response {
        let mut answer = Response::new(body);
        *answer.status_mut() = status;
        let mut internal = HeaderMap::new();
        for (name, value) in marks {
            internal.insert(*name, HeaderValue::from_str(value).expect("value"));
        }
        answer.extensions_mut().insert(Internal(internal));
        answer
    }

    #[test]
    fn refusals_name_themselves_and_unknown_names_are_no_refusal() {
        for refusal in PeerRefusal::ALL {
            assert_eq!(PeerRefusal::parse(refusal.as_str()), Some(refusal));
        }
        assert_eq!(PeerRefusal::parse("Tenant_Quota"), None);
        assert_eq!(PeerRefusal::parse(""), None);
    }

    #[test]
    fn only_what_holds_on_every_node_ends_a_placement() {
        use PeerRefusal::*;
        let next =
            |status: u16, refusal| verdict(StatusCode::from_u16(status).expect("status"), refusal);
        // A marked refusal decides by its kind, whatever the status.
        assert!(!next(429, Some(TenantQuota)));
        assert!(!next(409, Some(SessionExists)));
        for particular in [AtCapacity, ShuttingDown, Unavailable, StartFailed] {
            assert!(next(429, Some(particular)), "{particular:?}");
            assert!(next(503, Some(particular)), "{particular:?}");
        }
        // Unmarked: no room there only for 429 and 503 (the connection cap, say).
        assert!(next(429, None) && next(503, None));
        for other in [200, 400, 404, 409, 500, 502] {
            assert!(!next(other, None), "{other}");
        }
    }

    #[tokio::test]
    async fn a_placed_create_is_judged_by_its_marks_never_by_its_json() {
        // The public code says tenant_quota, the mark says no room: the mark decides.
        let body = r#"{"error":{"code":"tenant_quota"}}"#;
        let answer = from_peer(
            StatusCode::TOO_MANY_REQUESTS,
            &[(REFUSAL_HEADER, "at_capacity")],
            Body::from(body),
        );
        assert!(matches!(placed(answer).await, (Placed::Full, None)));
        // The mark says the tenant's quota: the answer is passed on whole.
        let answer = from_peer(
            StatusCode::TOO_MANY_REQUESTS,
            &[(REFUSAL_HEADER, "tenant_quota")],
            Body::from("quota"),
        );
        let (Placed::Done(answer), None) = placed(answer).await else {
            panic!("passed on");
        };
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        let bytes = axum::body::to_bytes(answer.into_body(), 1 << 10).await;
        assert_eq!(bytes.expect("body"), "quota");
        // A created session is known by its mark; an id only in the JSON is not read.
        let id = Uuid::new_v4();
        let answer = from_peer(
            StatusCode::OK,
            &[(SESSION_HEADER, &id.to_string())],
            Body::from("{}"),
        );
        assert!(matches!(placed(answer).await, (Placed::Done(_), Some(got)) if got == id));
        let json = format!(r#"{{"id":"{id}"}}"#);
        let answer = from_peer(StatusCode::OK, &[], Body::from(json));
        assert!(matches!(placed(answer).await, (Placed::Done(_), None)));
    }

    /// Every create refusal is marked, and the marks decide a placement exactly as the old
    /// reading of the public answer did (a 429 or 503 but `tenant_quota` meant "no room").
    #[test]
    fn create_refusals_place_as_the_public_codes_did() {
        use crate::session::admission::{OverQuota, Refusal};
        use crate::session::create::CreateError;
        let errors = [
            CreateError::Duplicate(Uuid::nil()),
            Refusal::QueueFull(1).into(),
            Refusal::QueueTimeout(Duration::ZERO).into(),
            Refusal::ShuttingDown.into(),
            CreateError::Refused(
                OverQuota {
                    tenant: "t".into(),
                    limit: 1,
                }
                .into(),
            ),
            CreateError::Launch("no".into()),
            CreateError::Usage("no".into()),
            CreateError::Context("no".into()),
            CreateError::DatabaseUnavailable("no".into()),
            CreateError::TimedOut(Duration::ZERO),
        ];
        for error in errors {
            let error = ApiError::from(error);
            let no_room = matches!(
                error.status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            let before = no_room && error.code != "tenant_quota";
            assert_eq!(
                verdict(error.status, error.refusal()),
                before,
                "{}",
                error.code
            );
            assert_eq!(
                error.refusal().is_some(),
                error.code != "invalid_request",
                "{}",
                error.code
            );
        }
        let fenced = ApiError::from(crate::cluster::lease::Unavailable::Fenced);
        assert_eq!(fenced.refusal(), Some(PeerRefusal::Unavailable));
    }

    #[tokio::test]
    async fn a_create_answer_broken_off_is_a_502() {
        let broken = futures_util::stream::iter([Err::<Bytes, _>(std::io::Error::other("cut"))]);
        let answer = from_peer(StatusCode::OK, &[], Body::from_stream(broken));
        let (Placed::Done(answer), None) = placed(answer).await else {
            panic!("answered");
        };
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn the_answer_to_a_peer_carries_its_marks_as_headers() {
        let id = Uuid::new_v4();
        let mut refused = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "tenant_quota", "full")
            .refusing(PeerRefusal::TenantQuota)
            .into_response();
        mark_for_peer(&mut refused);
        assert_eq!(refused.headers()[REFUSAL_HEADER], "tenant_quota");
        let mut created = Response::new(Body::empty());
        created.extensions_mut().insert(Created(id));
        mark_for_peer(&mut created);
        assert_eq!(created.headers()[SESSION_HEADER], id.to_string().as_str());
        // An error without a refusal carries no mark.
        let mut plain = ApiError::bad_request("no").into_response();
        mark_for_peer(&mut plain);
        assert!(!plain.headers().contains_key(REFUSAL_HEADER));
    }
}
