//! The credentials of a session's upstream proxy (`proxyUrl` with a user and password), as
//! the session hands them to the browser host. Chromium's `--proxy-server` cannot carry a
//! user and password, so the browser's forwarder ([`super::egress`]) adds
//! `Proxy-Authorization` to each request on its way to the upstream proxy, and counts the
//! bytes carried (`proxyBytesUsed`).
//!
//! Owns the value only. The credentials never leave the forwarder except toward the
//! upstream proxy: they are not logged, and `Debug` hides them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_credentials() {
        let auth = ProxyAuth {
            upstream: "127.0.0.1:1".into(),
            authorization: "Basic c2VjcmV0".into(),
            bytes: Arc::default(),
        };
        assert!(!format!("{auth:?}").contains("c2VjcmV0"));
    }
}
