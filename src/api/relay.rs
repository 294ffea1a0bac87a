//! Cluster mode at the API: a request for a session another node owns, or a create this
//! node has no room for, is relayed to that node; requests from other nodes are recognised.
//!
//! A client's request is relayed at most once: the receiving node sees the cluster's secret
//! ([`peer_hop`]) and answers itself. The node that owns a session authenticates the relayed
//! request with the client's own key, exactly as a direct one, so relaying gives a client
//! nothing its key does not. Handlers ask [`Relay`] first and answer locally when it
//! declines.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tracing::{info, warn};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::wire::PublicUrls;
use crate::auth::Caller;
use crate::cluster::Cluster;
use crate::cluster::forward::{INTERNAL_PREFIX, Outgoing, QUICK_ANSWER, SECRET_HEADER, VIA_HEADER};
use crate::telemetry;

/// Marks a request that another node of the cluster relayed.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The public URL of the node the client talks to: links in the answer point there.
    via: Option<Arc<PublicUrls>>,
}

/// Refuses `x-ingot-*` headers without the cluster's secret (403); with it, marks the
/// request as relayed by another node.
pub async fn peer_hop(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
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
    next.run(request).await
}

/// What a handler needs to relay its request: the request line and headers, and whether
/// it came from another node (then it is never relayed again).
pub struct Relay {
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
    /// The base URLs links in the answer use: the relaying node's, else this node's.
    pub fn links(&self, state: &AppState) -> Arc<PublicUrls> {
        match self.hop.as_ref().and_then(|h| h.via.as_deref()) {
            Some(via) => Arc::new(via.clone().with_viewers(state.viewers.clone())),
            None => state.urls.clone(),
        }
    }

    /// The cluster, when this request may be relayed: cluster mode, from a client.
    fn cluster<'a>(&self, state: &'a AppState) -> Option<&'a Arc<Cluster>> {
        match self.hop {
            Some(_) => None,
            None => state.cluster.as_ref(),
        }
    }

    /// Places a create on another node when this one has no room (or takes no sessions)
    /// and another has; `None` to create here. Nodes are tried best first, up to
    /// [`PLACE_TRIES`]: one that has filled up since it last said so answers at once and
    /// the next is tried; one that cannot be connected to is skipped. A node that took the
    /// request and did not answer may be starting the session, so the create is not
    /// repeated anywhere: the client gets 502.
    pub async fn create_elsewhere(&self, state: &AppState, body: &Bytes) -> Option<Response> {
        let cluster = self.cluster(state)?;
        if state.registry.takes_sessions_now() {
            return None;
        }
        for _ in 0..PLACE_TRIES {
            let node = cluster.place()?;
            match self.place_on(state, cluster, &node, body).await {
                Placed::Done(answer, _) => return Some(answer),
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
                telemetry::forwarded("create", true);
                let placed = placed(answer).await;
                if let Placed::Done(_, Some(id)) = &placed {
                    // Its first WebSocket then needs no lookup.
                    cluster.remember(*id, node);
                    info!(session_id = %id, node = %node, "no room here: the session was placed on another node");
                }
                placed
            }
            Err(e) => {
                telemetry::forwarded("create", false);
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
                    None,
                )
            }
        }
    }

    /// Whether another node relayed this request (it is then never relayed again).
    pub fn relayed(&self) -> bool {
        self.hop.is_some()
    }

    /// Relays a request about session `id` of `caller` to the node that runs it, when that
    /// is another live node.
    pub async fn to_owner(
        &self,
        state: &AppState,
        id: Uuid,
        caller: &Caller,
        kind: &'static str,
        body: Bytes,
    ) -> Result<Relayed, ApiError> {
        let Some(cluster) = self.cluster(state) else {
            return Ok(Relayed::Here);
        };
        let tenant = caller.tenant_name();
        let Some(owner) = cluster.owner_of(id, tenant.as_deref()).await? else {
            return Ok(Relayed::Here);
        };
        match cluster
            .send(&owner, &self.out, body, &state.urls.http, QUICK_ANSWER)
            .await
        {
            Ok(answer) => {
                telemetry::forwarded(kind, true);
                if matches!(answer.status(), StatusCode::NOT_FOUND | StatusCode::GONE) {
                    cluster.forget(id);
                }
                Ok(Relayed::Answered(answer))
            }
            Err(e) => {
                telemetry::forwarded(kind, false);
                warn!(session_id = %id, error = %e, "cannot reach the node that runs the session");
                cluster.forget(id);
                Ok(Relayed::Unreachable(node_unreachable(id)))
            }
        }
    }

    /// The node that ran session `id` of `caller` (live or ended), when this request may
    /// be relayed and that is another live node: where the session's files are.
    pub async fn files_holder(
        &self,
        state: &AppState,
        id: Uuid,
        caller: &Caller,
    ) -> Result<Option<Arc<str>>, ApiError> {
        let Some(cluster) = self.cluster(state) else {
            return Ok(None);
        };
        let tenant = caller.tenant_name();
        Ok(cluster.holder_of(id, tenant.as_deref()).await?)
    }

    /// Passes a request about the files of session `id` to `holder` (from
    /// [`Relay::files_holder`]), streaming `body`; that node's answer may take `within` to
    /// begin.
    pub async fn pass_files(
        &self,
        state: &AppState,
        holder: &str,
        id: Uuid,
        body: axum::body::Body,
        within: std::time::Duration,
    ) -> Result<Response, ApiError> {
        let Some(cluster) = self.cluster(state) else {
            return Err(node_unreachable(id));
        };
        let sent = cluster
            .send(holder, &self.out, body, &state.urls.http, within)
            .await;
        telemetry::forwarded("files", sent.is_ok());
        sent.map_err(|e| {
            warn!(session_id = %id, error = %e, "cannot reach the node that has the session's files");
            node_unreachable(id)
        })
    }

    /// The caller's only live session in the cluster, when it has exactly one and another
    /// node runs it.
    pub async fn sole_live_elsewhere(
        &self,
        state: &AppState,
        caller: &Caller,
    ) -> Result<Option<Uuid>, ApiError> {
        let Some(cluster) = self.cluster(state) else {
            return Ok(None);
        };
        let tenant = caller.tenant_name();
        Ok(cluster.sole_live_session(tenant.as_deref()).await?)
    }

    /// Passes a release-all to every other live node, which ends the caller's sessions
    /// there; waits for all of them.
    pub async fn release_everywhere(&self, state: &AppState) {
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
            telemetry::forwarded("release_all", failure.is_none());
            if let Some(why) = failure {
                warn!(node = %node, why, "a release-all passed to another node failed");
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

/// Most nodes a create is offered to before this node queues it itself.
const PLACE_TRIES: usize = 3;

/// What became of a request about a session, when this node may pass it on.
pub enum Relayed {
    /// The node that runs the session answered; this is its answer.
    Answered(Response),
    /// No other live node runs it: answer here (from this node or the directory).
    Here,
    /// Another node runs it and does not answer (502).
    Unreachable(ApiError),
}

fn node_unreachable(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_unreachable",
        format!("the node that runs session {id} does not answer; retry, or create a new session"),
    )
}

/// Passes a CDP WebSocket upgrade for session `id` of `caller` to the node that runs it;
/// gives the request back when no other live node does (or this request came from one).
pub async fn upgrade_to_owner(
    state: &AppState,
    id: Uuid,
    caller: &Caller,
    request: Request,
) -> Result<Result<Response, Request>, ApiError> {
    let cluster = match (&state.cluster, request.extensions().get::<Hop>()) {
        (Some(cluster), None) => cluster,
        _ => return Ok(Err(request)),
    };
    let tenant = caller.tenant_name();
    let Some(owner) = cluster.owner_of(id, tenant.as_deref()).await? else {
        return Ok(Err(request));
    };
    match cluster.upgrade(&owner, request, &state.clients).await {
        Ok(answer) => {
            telemetry::forwarded("upgrade", true);
            if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
                cluster.forget(id);
            }
            Ok(Ok(answer))
        }
        Err(e) => {
            telemetry::forwarded("upgrade", false);
            warn!(session_id = %id, error = %e, "cannot reach the node that runs the session");
            cluster.forget(id);
            Err(node_unreachable(id))
        }
    }
}

/// What another node answered a create passed to it.
enum Placed {
    /// Its answer (a session, or an error to pass on), with the new session's id.
    Done(Response, Option<Uuid>),
    /// It has no room after all (it filled up or began draining meanwhile).
    Full,
}

/// Reads another node's answer to a create whole (it is small JSON). "No room there" means
/// this node queues the create itself; a tenant's quota holds on every node, so that
/// refusal is the answer.
async fn placed(answer: Response) -> Placed {
    let status = answer.status();
    let (parts, body) = answer.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Placed::Done(
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "node_unreachable",
                "the node the session was passed to broke off its answer; list your sessions before creating another",
            )
            .into_response(),
            None,
        );
    };
    let json = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default();
    let no_room =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    if no_room && json["error"]["code"] != "tenant_quota" {
        return Placed::Full;
    }
    let id = status
        .is_success()
        .then(|| json["id"].as_str().and_then(|id| Uuid::parse_str(id).ok()))
        .flatten();
    Placed::Done(
        Response::from_parts(parts, axum::body::Body::from(bytes)),
        id,
    )
}
