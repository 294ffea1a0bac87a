//! A proxy with credentials for one browser: Chromium's `--proxy-server` cannot carry a user
//! and password, so the browser talks to a small forwarding proxy on loopback that adds
//! `Proxy-Authorization` to each request on its way to the upstream proxy.
//!
//! Owns the listener, the rewriting of each request head, and the count of bytes carried
//! (`proxyBytesUsed`). Each connection carries one request (or one `CONNECT` tunnel), so
//! every request passes here and gets the header. The credentials never leave this module
//! except toward the upstream proxy: they are not logged, and `Debug` hides them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Largest request head accepted from the browser.
const MAX_HEAD: usize = 64 << 10;

/// An upstream HTTP proxy and the `Proxy-Authorization` value it wants.
#[derive(Clone)]
pub struct ProxyAuth {
    /// `host:port` of the upstream proxy.
    pub upstream: String,
    /// `Basic <base64 of user:password>`.
    pub authorization: String,
    /// Bytes carried both ways, for `proxyBytesUsed`.
    pub bytes: Arc<AtomicU64>,
}

impl fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("upstream", &self.upstream)
            .field("authorization", &"<hidden>")
            .finish()
    }
}

/// The running forwarder; it stops when this is dropped.
pub struct Forwarder {
    /// Where the browser reaches it: `http://127.0.0.1:<port>`.
    pub address: String,
    stop: CancellationToken,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a forwarder toward `auth.upstream` on a loopback port.
pub async fn start(auth: ProxyAuth) -> std::io::Result<Forwarder> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let serving = stop.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = serving.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((browser, _)) = accepted else { continue };
            let (auth, stop) = (auth.clone(), serving.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    result = carry(browser, &auth) => {
                        if let Err(e) = result {
                            debug!(error = %e, "a proxied connection ended with an error");
                        }
                    }
                }
            });
        }
    });
    Ok(Forwarder { address, stop })
}

/// Carries one connection: the browser's request head, rewritten, then bytes both ways.
async fn carry(mut browser: TcpStream, auth: &ProxyAuth) -> std::io::Result<()> {
    let (head, rest) = read_head(&mut browser).await?;
    let Some(head) = rewrite(&head, &auth.authorization) else {
        browser
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            )
            .await?;
        return Ok(());
    };
    let mut upstream = TcpStream::connect(&auth.upstream).await?;
    let _ = upstream.set_nodelay(true);
    upstream.write_all(head.as_bytes()).await?;
    upstream.write_all(&rest).await?;
    let (up, down) = tokio::io::copy_bidirectional(&mut browser, &mut upstream).await?;
    let carried = up + down + (head.len() + rest.len()) as u64;
    auth.bytes.fetch_add(carried, Ordering::Relaxed);
    Ok(())
}

/// Reads until the end of the request head; returns the head and what followed it.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
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

/// The head with `Proxy-Authorization` set and, for a plain request, `Connection: close`,
/// so that the next request comes on a new connection and gets the header too. `None`
/// for a head without a request line.
fn rewrite(head: &str, authorization: &str) -> Option<String> {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next()?;
    let tunnel = request_line.starts_with("CONNECT ");
    let mut out = format!("{request_line}\r\nProxy-Authorization: {authorization}\r\n");
    for line in lines {
        let name = line.split(':').next().unwrap_or_default().trim();
        let dropped = [
            "proxy-authorization",
            "proxy-connection",
            "connection",
            "keep-alive",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h));
        if !dropped {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if !tunnel {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_gets_the_credentials_and_its_own_connection() {
        let head = "GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic forged\r\n\r\n";
        let out = rewrite(head, "Basic dTpw").expect("request");
        assert_eq!(
            out,
            "GET http://a.example/ HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\nHost: a.example\r\nConnection: close\r\n\r\n"
        );
        let tunnel = rewrite(
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            "Basic x",
        )
        .expect("tunnel");
        assert!(tunnel.contains("Proxy-Authorization: Basic x\r\n"));
        assert!(!tunnel.contains("Connection: close"), "a tunnel stays open");
        assert_eq!(rewrite("\r\n\r\n", "Basic x"), None);
        let auth = ProxyAuth {
            upstream: "127.0.0.1:1".into(),
            authorization: "Basic c2VjcmV0".into(),
            bytes: Arc::default(),
        };
        assert!(!format!("{auth:?}").contains("c2VjcmV0"));
    }
}
