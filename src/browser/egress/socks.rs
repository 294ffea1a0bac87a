//! The client side of SOCKS5 and SOCKS4a, for a session whose `proxyUrl` is a SOCKS proxy:
//! the forwarder opens each tunnel through it by host name, so the proxy resolves it.
//!
//! Owns the handshakes only; the connection to the proxy was opened (and checked against
//! the egress policy) by the caller.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which SOCKS version the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// SOCKS4a (host names sent to the proxy).
    Four,
    /// SOCKS5, without authentication.
    Five,
}

/// Asks the proxy on `stream` for a tunnel to `host:port`.
pub(super) async fn open(
    stream: &mut TcpStream,
    version: Version,
    host: &str,
    port: u16,
) -> std::io::Result<()> {
    let refused = |what: String| std::io::Error::other(format!("the SOCKS proxy {what}"));
    if host.len() > 255 || host.contains('\0') {
        return Err(refused("cannot take a host name this long".into()));
    }
    match version {
        Version::Five => {
            stream.write_all(&[5, 1, 0]).await?;
            let mut choice = [0u8; 2];
            stream.read_exact(&mut choice).await?;
            if choice != [5, 0] {
                return Err(refused("wants authentication ingot cannot give".into()));
            }
            stream.write_all(&socks5_request(host, port)).await?;
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).await?;
            if reply[1] != 0 {
                return Err(refused(format!("refused the tunnel (code {})", reply[1])));
            }
            let skip = match reply[3] {
                1 => 4 + 2,
                4 => 16 + 2,
                3 => usize::from(stream.read_u8().await?) + 2,
                other => return Err(refused(format!("sent address type {other}"))),
            };
            let mut bound = vec![0u8; skip];
            stream.read_exact(&mut bound).await?;
        }
        Version::Four => {
            stream.write_all(&socks4a_request(host, port)).await?;
            let mut reply = [0u8; 8];
            stream.read_exact(&mut reply).await?;
            if reply[1] != 0x5a {
                return Err(refused(format!("refused the tunnel (code {})", reply[1])));
            }
        }
    }
    Ok(())
}

fn socks5_request(host: &str, port: u16) -> Vec<u8> {
    let mut out = vec![5, 1, 0];
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            out.push(3);
            // The caller checked that the name fits in a byte.
            out.push(u8::try_from(host.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(host.as_bytes());
        }
    }
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// SOCKS4a: the address 0.0.0.1 says "the host name follows".
fn socks4a_request(host: &str, port: u16) -> Vec<u8> {
    let mut out = vec![4, 1];
    out.extend_from_slice(&port.to_be_bytes());
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            out.extend_from_slice(&ip.octets());
            out.push(0);
        }
        Err(_) => {
            out.extend_from_slice(&[0, 0, 0, 1, 0]);
            out.extend_from_slice(host.as_bytes());
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_host_name_to_the_proxy() {
        assert_eq!(
            socks5_request("a.example", 443),
            [&[5, 1, 0, 3, 9][..], b"a.example", &[1, 187]].concat()
        );
        assert_eq!(
            socks5_request("10.0.0.1", 80),
            vec![5, 1, 0, 1, 10, 0, 0, 1, 0, 80]
        );
        assert_eq!(
            socks4a_request("a.example", 80),
            [&[4, 1, 0, 80, 0, 0, 0, 1, 0][..], b"a.example", &[0]].concat()
        );
        assert_eq!(
            socks4a_request("10.0.0.1", 80),
            vec![4, 1, 0, 80, 10, 0, 0, 1, 0]
        );
    }

    #[tokio::test]
    async fn a_socks5_tunnel_opens_through_a_proxy_that_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("addr");
        let proxy = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut hello = [0u8; 3];
            s.read_exact(&mut hello).await.expect("hello");
            s.write_all(&[5, 0]).await.expect("choice");
            let mut request = vec![0u8; 5 + 9 + 2];
            s.read_exact(&mut request).await.expect("request");
            s.write_all(&[5, 0, 0, 3, 1, b'x', 0, 1])
                .await
                .expect("reply");
            request
        });
        let mut stream = TcpStream::connect(at).await.expect("connect");
        open(&mut stream, Version::Five, "a.example", 443)
            .await
            .expect("tunnel");
        assert_eq!(
            proxy.await.expect("proxy"),
            socks5_request("a.example", 443)
        );
    }
}
