//! Who is on the other end of a loopback connection: the owner uid of the peer's socket,
//! read from `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! Owns the parsing of those tables. It must not accept or close connections; the
//! forwarder decides. Reading `/proc` blocks, so [`owner_uid`] runs on the blocking pool.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the socket at `peer` that is connected to `listener`, from this network
/// namespace's TCP tables; `None` when no such socket is listed (it closed already).
pub async fn owner_uid(peer: SocketAddr, listener: SocketAddr) -> std::io::Result<Option<u32>> {
    tokio::task::spawn_blocking(move || {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = match std::fs::read_to_string(table) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if let Some(uid) = find_owner(&text, peer, listener) {
                return Ok(Some(uid));
            }
        }
        Ok(None)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// In one table's text: the `uid` of the line whose local address is `peer` and whose
/// remote address is `listener`.
pub fn find_owner(table: &str, peer: SocketAddr, listener: SocketAddr) -> Option<u32> {
    let same = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
    };
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = parse_address(fields.get(1)?)?;
        let remote = parse_address(fields.get(2)?)?;
        if same(local, peer) && same(remote, listener) {
            fields.get(7)?.parse().ok()
        } else {
            None
        }
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address as a number in this machine's byte order, and the port in hex.
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex of an address as this machine's kernel prints it.
    fn v4(ip: [u8; 4], port: u16) -> String {
        format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip))
    }

    fn v6(ip: Ipv6Addr, port: u16) -> String {
        let words: String = ip
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect();
        format!("{words}:{port:04X}")
    }

    #[test]
    fn finds_the_uid_of_the_peer_socket() {
        let (browser, forwarder) = (v4([127, 0, 0, 1], 51000), v4([127, 0, 0, 1], 40000));
        let other = v4([127, 0, 0, 1], 51001);
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {forwarder} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n\
             \x20  1: {forwarder} {browser} 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n\
             \x20  2: {browser} {forwarder} 01 00000000:00000000 00:00000000 00000000 600007        0 3 1 0000000000000000 20 4 30 10 -1\n\
             \x20  3: {other} {forwarder} 01 00000000:00000000 00:00000000 00000000 600008        0 4 1 0000000000000000 20 4 30 10 -1\n"
        );
        let peer: SocketAddr = "127.0.0.1:51000".parse().expect("addr");
        let listener: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        assert_eq!(find_owner(&table, peer, listener), Some(600_007));
        let other_peer: SocketAddr = "127.0.0.1:51001".parse().expect("addr");
        assert_eq!(find_owner(&table, other_peer, listener), Some(600_008));
        let gone: SocketAddr = "127.0.0.1:51002".parse().expect("addr");
        assert_eq!(find_owner(&table, gone, listener), None);
        assert_eq!(
            find_owner("garbage\nnot a table line", peer, listener),
            None
        );
    }

    #[test]
    fn reads_ipv6_and_mapped_addresses() {
        let mapped: Ipv6Addr = "::ffff:127.0.0.1".parse().expect("ip");
        let table = format!(
            "header\n   0: {} {} 01 0:0 0:0 0 1234 0 5\n",
            v6(mapped, 51000),
            v6(mapped, 40000)
        );
        let peer: SocketAddr = "127.0.0.1:51000".parse().expect("addr");
        let listener: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        assert_eq!(find_owner(&table, peer, listener), Some(1234));
        let loopback: Ipv6Addr = "::1".parse().expect("ip");
        assert_eq!(
            parse_address(&v6(loopback, 80)),
            Some("[::1]:80".parse().expect("addr"))
        );
    }

    #[test]
    fn parses_the_kernels_own_text_for_loopback() {
        // What an x86 (little-endian) kernel prints for 127.0.0.1:8080.
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_address("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().expect("addr"))
            );
        }
    }
}
