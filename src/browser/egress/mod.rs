//! Every browser's way out: a small forwarding proxy per browser, on loopback, that the
//! browser must use for all its traffic (`--proxy-server`, loopback included), and that
//! applies the egress [`Policy`] to the address it actually connects to.
//!
//! Owns the forwarder's listener, the check of who connects to it, and carrying each
//! request (`CONNECT host:port` tunnels, absolute-form `http://` / `ws://` requests,
//! WebSocket upgrades) either straight to its server, or through the session's upstream
//! proxy (`proxyUrl`: HTTP, with or without credentials, or SOCKS). Without an upstream it
//! resolves names itself and checks every resolved address, so DNS rebinding cannot move a
//! request past the policy; with one it checks the upstream's address. It counts the bytes
//! carried when asked to (`proxyBytesUsed`). It must not know about sessions' states.
//!
//! Who may connect: with `allowed_uid`, only sockets owned by that uid (the browser's own
//! user), read from `/proc/net/tcp` ([`peer`]); everyone else's connection is closed. With
//! `None` (the shared-user mode, every browser running as the gateway's user) any local
//! process may connect: the shared mode does not isolate tenants from each other's
//! forwarders, and only the policy's "internal forwarder port" rule stops another session's
//! browser from using this one.

mod head;
mod peer;
mod policy;
mod socks;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use uuid::Uuid;

pub use peer::{find_owner, owner_uid};
pub use policy::{BadRule, OwnPorts, Policy, PortHold, Refusal, Rule, RuleFault, parse_rules};
pub use socks::Version as SocksVersion;

use head::{Request, answer, read_head};

/// How long a browser has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one connection attempt to a resolved address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a forwarder sends what the browser asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight to each request's server.
    Direct,
    /// Through an HTTP proxy at `host:port`, adding `Proxy-Authorization` when it has one.
    Http {
        /// The proxy's host name or address.
        host: String,
        /// Its port.
        port: u16,
        /// `Basic <base64 of user:password>`; never logged.
        authorization: Option<String>,
    },
    /// Nowhere: every request is answered with this refusal (a `proxyUrl` the browser would
    /// reach itself, at an address the policy denies).
    Refuse(Refusal),
    /// Through a SOCKS proxy at `host:port`.
    Socks {
        /// The proxy's host name or address.
        host: String,
        /// Its port.
        port: u16,
        /// Its protocol version.
        version: SocksVersion,
    },
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct => f.write_str("Direct"),
            Route::Http { host, port, .. } => write!(f, "Http({host}:{port})"),
            Route::Socks { host, port, .. } => write!(f, "Socks({host}:{port})"),
            Route::Refuse(refusal) => write!(f, "Refuse({refusal})"),
        }
    }
}

impl Route {
    /// The route for a session's `--proxy-server` value (`scheme://host:port`) and the
    /// credentials it wants; `None` for a scheme the forwarder cannot speak (`https`).
    pub fn upstream(server: &str, authorization: Option<String>) -> Option<Route> {
        let url = url::Url::parse(server).ok()?;
        let host = match url.host()? {
            url::Host::Domain(d) => d.to_owned(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url.port_or_known_default()?;
        let socks = |version| Route::Socks {
            host: host.clone(),
            port,
            version,
        };
        match url.scheme() {
            "http" => Some(Route::Http {
                host: host.clone(),
                port,
                authorization,
            }),
            "socks5" => Some(socks(SocksVersion::Five)),
            "socks4" => Some(socks(SocksVersion::Four)),
            _ => None,
        }
    }
}

/// What one browser's forwarder does.
#[derive(Debug, Clone)]
pub struct ForwarderSpec {
    /// The browser's session (or pooled browser), for logs.
    pub session_id: Uuid,
    /// Where requests go.
    pub route: Route,
    /// Where to add the bytes carried (for `proxyBytesUsed`), if they are counted.
    pub bytes: Option<Arc<AtomicU64>>,
    /// The only uid whose sockets may connect; `None` accepts any local peer (shared mode).
    pub allowed_uid: Option<u32>,
}

/// Starts the forwarder a browser launched for `spec` goes through: straight out, or through
/// its session's `proxyUrl` (counting the bytes when the session has credentials, as
/// `proxyBytesUsed` always has). `None` for an allowed `https://` `proxyUrl`, which the
/// forwarder cannot speak: the browser then talks to that proxy itself. `allowed_uid` is the
/// uid the browser runs as, when it has its own.
pub async fn for_browser(
    policy: &Arc<Policy>,
    spec: &super::LaunchSpec,
    allowed_uid: Option<u32>,
) -> std::io::Result<Option<Forwarder>> {
    let (route, bytes) = match &spec.proxy_server {
        None => (Route::Direct, None),
        Some(server) => {
            let auth = spec.proxy_auth.as_ref();
            let authorization = auth.map(|a| a.authorization.clone());
            let route = match Route::upstream(server, authorization) {
                Some(route) => route,
                None => match check_upstream(policy, server).await {
                    Ok(()) => return Ok(None),
                    Err(refusal) => Route::Refuse(refusal),
                },
            };
            (route, auth.map(|a| a.bytes.clone()))
        }
    };
    let forwarding = ForwarderSpec {
        session_id: spec.session_id,
        route,
        bytes,
        allowed_uid,
    };
    start(policy.clone(), forwarding).await.map(Some)
}

/// The running forwarder; it stops, and its port leaves [`OwnPorts`], when this is dropped.
pub struct Forwarder {
    /// Where the browser reaches it: `http://127.0.0.1:<port>`.
    pub address: String,
    /// Its port.
    pub port: u16,
    stop: CancellationToken,
    _registered: PortHold,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Context {
    spec: ForwarderSpec,
    policy: Arc<Policy>,
    listener: SocketAddr,
}

/// Starts a forwarder for one browser on a loopback port, registered in the policy's own
/// ports so that no browser can reach it as a destination.
pub async fn start(policy: Arc<Policy>, spec: ForwarderSpec) -> std::io::Result<Forwarder> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let registered = policy
        .own_ports()
        .hold(local.port(), "an internal forwarder's port");
    let stop = CancellationToken::new();
    let serving = stop.clone();
    let context = Arc::new(Context {
        spec,
        policy,
        listener: local,
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = serving.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((browser, peer)) = accepted else {
                continue;
            };
            let (context, stop) = (context.clone(), serving.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = serve(browser, peer, &context) => {}
                }
            });
        }
    });
    Ok(Forwarder {
        address: format!("http://{local}"),
        port: local.port(),
        stop,
        _registered: registered,
    })
}

/// One accepted connection: the peer check, then the request.
async fn serve(browser: TcpStream, peer: SocketAddr, context: &Context) {
    let session_id = context.spec.session_id;
    if let Some(allowed) = context.spec.allowed_uid {
        match owner_uid(peer, context.listener).await {
            Ok(Some(uid)) if uid == allowed => {}
            found => {
                let found = format!("{found:?}");
                debug!(%session_id, %peer, allowed, found, "refused a connection to the forwarder from another user's socket");
                return;
            }
        }
    }
    if let Err(e) = carry(browser, context).await {
        debug!(%session_id, error = %e, "a proxied connection ended with an error");
    }
}

/// Why a request was not carried.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, std::io::Error),
}

/// Carries one connection: the browser's request head, then bytes both ways.
async fn carry(mut browser: TcpStream, context: &Context) -> std::io::Result<()> {
    let _ = browser.set_nodelay(true);
    let (head, rest) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut browser))
        .await
        .map_err(|_| std::io::Error::other("no request head in time"))??;
    let Some(request) = Request::parse(&head) else {
        let body =
            "ingot egress: not a proxy request (CONNECT host:port or an absolute http:// URL)";
        browser
            .write_all(answer("400 Bad Request", body).as_bytes())
            .await?;
        return Ok(());
    };
    let (mut upstream, first) = match open(&request, context).await {
        Ok(opened) => opened,
        Err(failure) => return refuse(&mut browser, &request, failure, context).await,
    };
    if request.tunnel && context.spec.route_is_not_http() {
        browser
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
    }
    let _ = upstream.set_nodelay(true);
    upstream.write_all(first.as_bytes()).await?;
    upstream.write_all(&rest).await?;
    let carried = tokio::io::copy_bidirectional(&mut browser, &mut upstream).await;
    if let Some(bytes) = &context.spec.bytes {
        let (up, down) = carried.as_ref().map_or((0, 0), |c| *c);
        bytes.fetch_add(
            up + down + (first.len() + rest.len()) as u64,
            Ordering::Relaxed,
        );
    }
    carried.map(|_| ())
}

impl ForwarderSpec {
    /// Whether the forwarder answers `CONNECT` itself (an HTTP upstream answers it).
    fn route_is_not_http(&self) -> bool {
        !matches!(self.route, Route::Http { .. })
    }
}

/// Opens the connection `request` goes on, and the head to send on it first.
async fn open(request: &Request, context: &Context) -> Result<(TcpStream, String), Failure> {
    let policy = &context.policy;
    match &context.spec.route {
        Route::Refuse(refusal) => Err(Failure::Refused(refusal.clone())),
        Route::Direct => {
            let stream = connect_checked(policy, &request.host, request.port).await?;
            let first = if request.tunnel {
                String::new()
            } else {
                request.for_origin()
            };
            Ok((stream, first))
        }
        Route::Http {
            host,
            port,
            authorization,
        } => {
            let stream = connect_checked(policy, host, *port).await?;
            Ok((stream, request.for_proxy(authorization.as_deref())))
        }
        Route::Socks {
            host,
            port,
            version,
        } => {
            let mut stream = connect_checked(policy, host, *port).await?;
            socks::open(&mut stream, *version, &request.host, request.port)
                .await
                .map_err(|e| {
                    Failure::Unreachable(format!("{}:{}", request.host, request.port), e)
                })?;
            let first = if request.tunnel {
                String::new()
            } else {
                request.for_origin()
            };
            Ok((stream, first))
        }
    }
}

/// Tells the browser why its request was not carried: 403 naming the rule, or 502.
async fn refuse(
    browser: &mut TcpStream,
    request: &Request,
    failure: Failure,
    context: &Context,
) -> std::io::Result<()> {
    let session_id = context.spec.session_id;
    let response = match &failure {
        Failure::Refused(refusal) => {
            debug!(%session_id, host = %request.host, port = request.port, rule = %refusal, "egress refused");
            answer("403 Forbidden", &refusal.to_string())
        }
        Failure::Unreachable(..) => {
            debug!(%session_id, error = %failure, "egress destination unreachable");
            answer("502 Bad Gateway", &format!("ingot egress: {failure}"))
        }
    };
    browser.write_all(response.as_bytes()).await
}

/// Resolves `host` (unless it is an address), checks every address against the policy, and
/// connects to an allowed one; the connected address is checked again, with the local
/// address it was reached from.
async fn connect_checked(policy: &Policy, host: &str, port: u16) -> Result<TcpStream, Failure> {
    let place = format!("{host}:{port}");
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Failure::Unreachable(place.clone(), e))?
            .collect(),
    };
    let (allowed, denied): (Vec<_>, Vec<_>) = addresses
        .into_iter()
        .map(|a| (a, policy.check(a)))
        .partition(|(_, checked)| checked.is_ok());
    let mut last_error = None;
    for (address, _) in allowed {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                last_error = Some(e);
                continue;
            }
            Err(_) => {
                last_error = Some(std::io::ErrorKind::TimedOut.into());
                continue;
            }
        };
        let ends = stream
            .local_addr()
            .and_then(|l| Ok((l, stream.peer_addr()?)));
        let (local, peer) = ends.map_err(|e| Failure::Unreachable(place.clone(), e))?;
        policy.check(peer)?;
        policy.check_connected(local, peer)?;
        return Ok(stream);
    }
    match (last_error, denied.into_iter().next()) {
        (Some(e), _) => Err(Failure::Unreachable(place, e)),
        (None, Some((_, Err(refusal)))) => Err(Failure::Refused(refusal)),
        _ => Err(Failure::Unreachable(
            place,
            std::io::Error::other("the name has no address"),
        )),
    }
}

/// For a `proxyUrl` the browser reaches itself (`https://`, which the forwarder cannot
/// speak): checks every address its host resolves to now, before the launch. The browser
/// resolves the name again later, so a name that changes its answer (DNS rebinding) is not
/// caught here; an address, or a name under the operator's control, is.
pub async fn check_upstream(policy: &Policy, server: &str) -> Result<(), Refusal> {
    let unusable = |why: String| Refusal(format!("the session's proxyUrl {server} {why}"));
    let url = url::Url::parse(server).map_err(|e| unusable(format!("is not a URL ({e})")))?;
    let (host, port) = match (url.host(), url.port_or_known_default()) {
        (Some(url::Host::Domain(d)), Some(port)) => (d.to_owned(), port),
        (Some(url::Host::Ipv4(ip)), Some(port)) => (ip.to_string(), port),
        (Some(url::Host::Ipv6(ip)), Some(port)) => (ip.to_string(), port),
        _ => return Err(unusable("names no host and port".into())),
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| unusable(format!("cannot be resolved ({e})")))?
        .collect();
    addresses.into_iter().try_for_each(|a| policy.check(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A loopback server that answers every request with `hello`; its port.
    async fn origin() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = read_head(&mut s).await;
                    let _ = s.write_all(answer("200 OK", "hello").as_bytes()).await;
                });
            }
        });
        port
    }

    /// Sends `head` to the forwarder and returns all it answers (empty if it closed).
    async fn ask(forwarder: &Forwarder, head: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", forwarder.port))
            .await
            .expect("connect");
        s.write_all(head.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn direct(allowed_uid: Option<u32>) -> ForwarderSpec {
        ForwarderSpec {
            session_id: Uuid::new_v4(),
            route: Route::Direct,
            bytes: None,
            allowed_uid,
        }
    }

    #[tokio::test]
    async fn carries_allowed_requests_and_refuses_denied_ones_naming_the_rule() {
        let policy = Arc::new(Policy::default());
        policy.own_ports().register(1, "the gateway's own port");
        let forwarder = start(policy.clone(), direct(None)).await.expect("start");
        let port = origin().await;
        let page = ask(
            &forwarder,
            &format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await;
        assert!(
            page.starts_with("HTTP/1.1 200") && page.ends_with("hello"),
            "{page}"
        );
        let tunnel = ask(
            &forwarder,
            &format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert!(
            tunnel.starts_with("HTTP/1.1 200 Connection Established") && tunnel.ends_with("hello"),
            "{tunnel}"
        );
        let metadata = ask(
            &forwarder,
            "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(metadata.starts_with("HTTP/1.1 403"), "{metadata}");
        assert!(metadata.ends_with("ingot egress policy: 169.254.169.254 is the cloud metadata address (link-local, denied by default)"), "{metadata}");
        // A name is resolved here and each of its addresses checked.
        let own = ask(
            &forwarder,
            &format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", forwarder.port),
        )
        .await;
        assert!(
            own.starts_with("HTTP/1.1 403") && own.contains("internal forwarder"),
            "{own}"
        );
        let gateway = ask(&forwarder, "GET http://0.0.0.0:1/ HTTP/1.1\r\n\r\n").await;
        assert!(gateway.contains("the gateway's own port"), "{gateway}");
        let port_of_dropped = forwarder.port;
        drop(forwarder);
        assert_eq!(
            policy.own_ports().get(port_of_dropped),
            None,
            "deregistered"
        );
    }

    #[tokio::test]
    async fn an_upstream_the_browser_reaches_itself_is_checked_before_the_launch() {
        let policy = Policy::default();
        policy.own_ports().register(3000, "the gateway's own port");
        for denied in ["https://169.254.169.254:443", "https://localhost:3000"] {
            let refusal = check_upstream(&policy, denied).await.expect_err(denied);
            assert!(
                refusal.to_string().starts_with("ingot egress policy"),
                "{refusal}"
            );
        }
        assert_eq!(
            check_upstream(&policy, "https://127.0.0.1:8443").await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn serves_only_sockets_of_the_allowed_uid() {
        let policy = Arc::new(Policy::default());
        let port = origin().await;
        let request = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n");
        // The owner of /proc/self is this process's effective uid.
        let me =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("proc"));
        let mine = start(policy.clone(), direct(Some(me)))
            .await
            .expect("start");
        assert!(
            ask(&mine, &request).await.ends_with("hello"),
            "own uid served"
        );
        let theirs = start(policy, direct(Some(me + 1))).await.expect("start");
        assert_eq!(
            ask(&theirs, &request).await,
            "",
            "another uid's socket is closed unanswered"
        );
    }

    #[tokio::test]
    async fn counts_bytes_through_an_upstream_only_when_asked() {
        let policy = Arc::new(Policy::default());
        let port = origin().await;
        let bytes = Arc::new(AtomicU64::new(0));
        let spec = ForwarderSpec {
            route: Route::Http {
                host: "127.0.0.1".into(),
                port,
                authorization: Some("Basic eA==".into()),
            },
            bytes: Some(bytes.clone()),
            ..direct(None)
        };
        let forwarder = start(policy.clone(), spec).await.expect("start");
        let answer = ask(&forwarder, "GET http://a.example/ HTTP/1.1\r\n\r\n").await;
        assert!(answer.ends_with("hello"), "{answer}");
        // Counted once both directions are done, after this side closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while bytes.load(Ordering::Relaxed) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "bytes counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let denied = ForwarderSpec {
            route: Route::Http {
                host: "169.254.169.254".into(),
                port: 80,
                authorization: None,
            },
            ..direct(None)
        };
        let forwarder = start(policy, denied).await.expect("start");
        let refused = ask(&forwarder, "GET http://a.example/ HTTP/1.1\r\n\r\n").await;
        assert!(
            refused.starts_with("HTTP/1.1 403"),
            "the upstream's address is checked: {refused}"
        );
    }

    #[test]
    fn routes_follow_the_proxy_scheme() {
        assert_eq!(
            Route::upstream("http://127.0.0.1:3128", Some("Basic x".into())),
            Some(Route::Http {
                host: "127.0.0.1".into(),
                port: 3128,
                authorization: Some("Basic x".into())
            })
        );
        assert_eq!(
            Route::upstream("socks5://[::1]:1080", None),
            Some(Route::Socks {
                host: "::1".into(),
                port: 1080,
                version: SocksVersion::Five
            })
        );
        assert!(matches!(
            Route::upstream("socks4://p.example:1080", None),
            Some(Route::Socks {
                version: SocksVersion::Four,
                ..
            })
        ));
        assert_eq!(Route::upstream("https://p.example:443", None), None);
        let shown = format!(
            "{:?}",
            Route::upstream("http://h:1", Some("Basic c2VjcmV0".into()))
        );
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }
}
