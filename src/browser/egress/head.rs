//! The request heads a browser sends its proxy: reading one, finding where it goes, and
//! rewriting it for the next hop.
//!
//! Owns HTTP/1 head parsing for the forwarder only (`CONNECT host:port` and absolute-form
//! `http://` / `ws://` requests). It must not open connections or decide policy.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest request head accepted from the browser.
const MAX_HEAD: usize = 64 << 10;

/// Headers meant for the proxy itself, never passed on.
const HOP_BY_HOP: [&str; 4] = [
    "proxy-authorization",
    "proxy-connection",
    "connection",
    "keep-alive",
];

/// One request head from the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    /// The request line as sent.
    pub line: String,
    /// `CONNECT` tunnels; everything else is one plain request.
    pub tunnel: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// The request line in origin form (`GET /path?q HTTP/1.1`), for a plain request sent
    /// straight to its server.
    origin_line: String,
    /// The header lines after the request line.
    headers: Vec<String>,
}

impl Request {
    /// Parses a head; `None` if it is not a proxy request this forwarder carries.
    pub(super) fn parse(head: &str) -> Option<Request> {
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let line = lines.next()?;
        let mut parts = line.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !version.starts_with("HTTP/") {
            return None;
        }
        let headers: Vec<String> = lines.map(str::to_owned).collect();
        if method.eq_ignore_ascii_case("CONNECT") {
            let (host, port) = target.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            return Some(Request {
                origin_line: line.to_owned(),
                line: line.to_owned(),
                tunnel: true,
                host: host.to_owned(),
                port: port.parse().ok()?,
                headers,
            });
        }
        let url = url::Url::parse(target).ok()?;
        if !matches!(url.scheme(), "http" | "ws") {
            return None;
        }
        let host = match url.host()? {
            url::Host::Domain(d) => d.to_owned(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let path = if path.is_empty() { "/" } else { path };
        Some(Request {
            origin_line: format!("{method} {path} {version}"),
            line: line.to_owned(),
            tunnel: false,
            host,
            port: url.port_or_known_default()?,
            headers,
        })
    }

    /// Whether the request asks to switch protocols (a WebSocket sent as a plain `GET`).
    fn upgrade(&self) -> bool {
        self.headers.iter().any(|h| header_is(h, "upgrade"))
    }

    /// The head for an upstream HTTP proxy: the request line unchanged, `authorization` as
    /// `Proxy-Authorization` (any the browser sent is dropped), and for a plain request
    /// `Connection: close`, so that the next request comes on a new connection and is
    /// checked (and given the credentials) too.
    pub(super) fn for_proxy(&self, authorization: Option<&str>) -> String {
        let mut out = format!("{}\r\n", self.line);
        if let Some(authorization) = authorization {
            out.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
        }
        self.finish(out)
    }

    /// The head of a plain request sent straight to its server, in origin form.
    pub(super) fn for_origin(&self) -> String {
        self.finish(format!("{}\r\n", self.origin_line))
    }

    fn finish(&self, mut out: String) -> String {
        let upgrade = self.upgrade();
        for line in &self.headers {
            let hop = HOP_BY_HOP.iter().any(|h| header_is(line, h));
            // An upgrade needs its `Connection: Upgrade`.
            let keep = upgrade && header_is(line, "connection");
            if !hop || keep {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        if !self.tunnel && !upgrade {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        out
    }
}

fn header_is(line: &str, name: &str) -> bool {
    line.split(':')
        .next()
        .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
}

/// Reads until the end of the request head; returns the head and what followed it.
pub(super) async fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "connection closed before the request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A complete response with a short text body.
pub(super) fn answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_gets_the_credentials_and_its_own_connection() {
        let head = "GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic forged\r\n\r\n";
        let request = Request::parse(head).expect("request");
        assert_eq!(
            request.for_proxy(Some("Basic dTpw")),
            "GET http://a.example/ HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\nHost: a.example\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            request.for_proxy(None),
            "GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
        );
        let tunnel =
            Request::parse("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
                .expect("tunnel");
        assert!((tunnel.tunnel, tunnel.port) == (true, 443));
        let out = tunnel.for_proxy(Some("Basic x"));
        assert!(out.contains("Proxy-Authorization: Basic x\r\n"));
        assert!(!out.contains("Connection: close"), "a tunnel stays open");
        assert_eq!(Request::parse("\r\n\r\n"), None);
    }

    #[test]
    fn finds_the_destination_and_the_origin_form() {
        let r = Request::parse(
            "GET http://127.0.0.1:8080/a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: keep-alive\r\n\r\n",
        )
        .expect("plain");
        assert_eq!(
            (r.host.as_str(), r.port, r.tunnel),
            ("127.0.0.1", 8080, false)
        );
        assert_eq!(
            r.for_origin(),
            "GET /a/b?c=d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"
        );
        let r = Request::parse("GET http://metadata/ HTTP/1.1\r\n\r\n").expect("default port");
        assert_eq!((r.host.as_str(), r.port), ("metadata", 80));
        let r = Request::parse("CONNECT [::1]:443 HTTP/1.1\r\n\r\n").expect("v6");
        assert_eq!((r.host.as_str(), r.port), ("::1", 443));
        let r = Request::parse("GET http://[fe80::1]:81/ HTTP/1.1\r\n\r\n").expect("v6 plain");
        assert_eq!((r.host.as_str(), r.port), ("fe80::1", 81));
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET ftp://x/ HTTP/1.1\r\n\r\n",
            "CONNECT nohost HTTP/1.1\r\n\r\n",
            "CONNECT a:99999 HTTP/1.1\r\n\r\n",
            "GET http://a/ junk\r\n\r\n",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_websocket_upgrade_keeps_its_connection_header() {
        let r = Request::parse(
            "GET ws://127.0.0.1:9000/socket HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .expect("upgrade");
        assert_eq!(r.port, 9000);
        assert_eq!(
            r.for_origin(),
            "GET /socket HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
    }
}
