//! The egress policy: which addresses a browser's traffic may reach, decided on the address
//! actually connected to (never on a host name).
//!
//! Owns the rule syntax of `--egress-deny` / `--egress-allow`, the defaults, and the set of
//! this gateway's own ports ([`OwnPorts`]). It must not open sockets or resolve names: the
//! forwarder does that and asks [`Policy::check`] about every address.
//!
//! The order, first match wins:
//! 1. the gateway's listening ports and its internal forwarders' ports, on a local address
//!    (loopback, unspecified, the gateway's bind address, or any address of this machine):
//!    always denied, `--egress-allow` cannot reopen them;
//! 2. `--egress-allow`: allowed (so allow beats deny for the same address);
//! 3. `--egress-deny`: denied;
//! 4. the defaults: link-local (169.254.0.0/16, which holds the cloud metadata address
//!    169.254.169.254, and fe80::/10), the IPv6 metadata address fd00:ec2::254, and the
//!    unspecified addresses 0.0.0.0 and :: (connecting there reaches this machine): denied;
//! 5. everything else, 127.0.0.1 included: allowed.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

/// A bad `--egress-deny` / `--egress-allow` entry.
#[derive(Debug, thiserror::Error)]
#[error(
    "{flag} entry {entry:?} is not valid: {why} (expected CIDR, CIDR:PORT, CIDR:LO-HI, or [IPv6-CIDR]:PORT)"
)]
pub struct BadRule {
    /// The flag it came from.
    pub flag: &'static str,
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub why: RuleFault,
}

/// What is wrong with an egress rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleFault {
    /// `[` opens an IPv6 network that is never closed.
    #[error("a '[' without its ']'")]
    UnclosedBracket,
    /// Something other than `:PORT` follows `]`.
    #[error("only :PORT may follow ']'")]
    AfterBracket,
    /// The network is not an IP address.
    #[error("not an IP address")]
    NotAnAddress,
    /// The prefix length is out of range for the address family.
    #[error("the prefix length must be 0 to {0}")]
    Prefix(u8),
    /// A port is not a number from 0 to 65535.
    #[error("{0:?} is not a port (0 to 65535)")]
    NotAPort(String),
    /// The port range is empty.
    #[error("the port range {0}-{1} is empty")]
    EmptyRange(u16, u16),
}

/// One entry: a network and, optionally, a port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    network: IpAddr,
    prefix: u8,
    ports: Option<(u16, u16)>,
    written: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl Rule {
    /// Parses one entry of `flag`.
    pub fn parse(flag: &'static str, entry: &str) -> Result<Rule, BadRule> {
        let bad = |why: RuleFault| BadRule {
            flag,
            entry: entry.to_owned(),
            why,
        };
        let entry = entry.trim();
        let (cidr, ports) = split_ports(entry).map_err(bad)?;
        let (ip, prefix) = match cidr.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (cidr, None),
        };
        let network: IpAddr = ip.parse().map_err(|_| bad(RuleFault::NotAnAddress))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(RuleFault::Prefix(max)))?,
            None => max,
        };
        // Addresses are compared as IPv4 when they are IPv4-mapped, so such rules are too.
        let (network, prefix) = match network.to_canonical() {
            IpAddr::V4(v4) if network.is_ipv6() && prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            _ => (network, prefix),
        };
        let ports = ports.map(parse_ports).transpose().map_err(bad)?;
        Ok(Rule {
            network,
            prefix,
            ports,
            written: entry.to_owned(),
        })
    }

    /// Whether `addr` is in this rule's network and port range.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        let ports_match = self
            .ports
            .is_none_or(|(lo, hi)| (lo..=hi).contains(&addr.port()));
        ports_match && in_network(addr.ip().to_canonical(), self.network, self.prefix)
    }
}

/// Splits `CIDR[:PORTS]` / `[CIDR][:PORTS]`; an unbracketed IPv6 network has no ports.
fn split_ports(entry: &str) -> Result<(&str, Option<&str>), RuleFault> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (cidr, after) = rest.split_once(']').ok_or(RuleFault::UnclosedBracket)?;
        return match after {
            "" => Ok((cidr, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (cidr, Some(p)))
                .ok_or(RuleFault::AfterBracket),
        };
    }
    match entry.matches(':').count() {
        0 => Ok((entry, None)),
        1 => Ok(entry
            .split_once(':')
            .map_or((entry, None), |(c, p)| (c, Some(p)))),
        _ => Ok((entry, None)),
    }
}

fn parse_ports(ports: &str) -> Result<(u16, u16), RuleFault> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| RuleFault::NotAPort(p.to_owned()))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => (port(ports)?, port(ports)?),
    };
    if lo > hi {
        return Err(RuleFault::EmptyRange(lo, hi));
    }
    Ok((lo, hi))
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Parses a comma-separated list of entries for `flag`; empty entries are skipped.
pub fn parse_rules(flag: &'static str, list: &str) -> Result<Vec<Rule>, BadRule> {
    list.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|e| Rule::parse(flag, e))
        .collect()
}

/// The ports this gateway listens on (its HTTP port, each browser's forwarder), shared by
/// the gateway and every forwarder: a browser may not reach any of them on a local address.
#[derive(Clone, Default)]
pub struct OwnPorts(Arc<RwLock<HashMap<u16, &'static str>>>);

impl fmt::Debug for OwnPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.read().keys()).finish()
    }
}

impl OwnPorts {
    /// Records `port` as this gateway's, described as `what` in refusals (for example "the
    /// gateway's own port"). For as long as the process runs.
    pub fn register(&self, port: u16, what: &'static str) {
        self.write().insert(port, what);
    }

    /// Records `port` until the returned guard is dropped.
    pub fn hold(&self, port: u16, what: &'static str) -> PortHold {
        self.register(port, what);
        PortHold {
            ports: self.clone(),
            port,
        }
    }

    /// What `port` is, if it is one of this gateway's.
    pub fn get(&self, port: u16) -> Option<&'static str> {
        self.read().get(&port).copied()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u16, &'static str>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u16, &'static str>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A port in [`OwnPorts`] for as long as this lives.
pub struct PortHold {
    ports: OwnPorts,
    port: u16,
}

impl Drop for PortHold {
    fn drop(&mut self) {
        self.ports.write().remove(&self.port);
    }
}

/// Why a connection was refused: the text of the 403 the browser gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ingot egress policy: {0}")]
pub struct Refusal(pub String);

/// The whole policy: the operator's rules, the gateway's address and its own ports.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// The gateway's bind address, a local address besides loopback and unspecified.
    gateway_ip: Option<IpAddr>,
    own: OwnPorts,
}

/// The IPv6 cloud metadata address (AWS).
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

impl Policy {
    /// A policy from the flags' values (comma-separated lists), for a gateway bound to
    /// `gateway_ip`.
    pub fn new(deny: &str, allow: &str, gateway_ip: Option<IpAddr>) -> Result<Policy, BadRule> {
        Ok(Policy {
            allow: parse_rules("--egress-allow", allow)?,
            deny: parse_rules("--egress-deny", deny)?,
            gateway_ip: gateway_ip.map(|ip| ip.to_canonical()),
            own: OwnPorts::default(),
        })
    }

    /// The shared set of this gateway's ports.
    pub fn own_ports(&self) -> &OwnPorts {
        &self.own
    }

    /// Whether a browser may connect to `addr`, before connecting.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        if self.is_local(ip) {
            self.check_own_port(addr)?;
        }
        if self.allow.iter().any(|r| r.matches(addr)) {
            return Ok(());
        }
        if let Some(rule) = self.deny.iter().find(|r| r.matches(addr)) {
            return Err(Refusal(format!("{addr} matches --egress-deny {rule}")));
        }
        default_denial(ip).map_or(Ok(()), Err)
    }

    /// Once connected: a connection whose two ends have the same address went to this
    /// machine (any of its interfaces), where this gateway's own ports are denied.
    pub fn check_connected(&self, local: SocketAddr, peer: SocketAddr) -> Result<(), Refusal> {
        if local.ip().to_canonical() == peer.ip().to_canonical() {
            self.check_own_port(SocketAddr::new(peer.ip().to_canonical(), peer.port()))?;
        }
        Ok(())
    }

    fn check_own_port(&self, addr: SocketAddr) -> Result<(), Refusal> {
        match self.own.get(addr.port()) {
            Some(what) => Err(Refusal(format!("{addr} is {what} (always denied)"))),
            None => Ok(()),
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.gateway_ip == Some(ip)
    }
}

/// The default denial for `ip`, if any.
fn default_denial(ip: IpAddr) -> Option<Refusal> {
    let why = match ip {
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(169, 254, 169, 254) => {
            "is the cloud metadata address (link-local, denied by default)"
        }
        IpAddr::V4(v4) if v4.is_link_local() => "is link-local (denied by default)",
        IpAddr::V6(v6) if v6 == METADATA_V6 => {
            "is the IPv6 cloud metadata address (denied by default)"
        }
        IpAddr::V6(v6) if v6.is_unicast_link_local() => "is link-local (denied by default)",
        // Connecting to it reaches this machine, past a rule that denies 127.0.0.0/8.
        ip if ip.is_unspecified() => "is the unspecified address (denied by default)",
        _ => return None,
    };
    Some(Refusal(format!("{ip} {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn parses_cidrs_ports_and_ranges() {
        let r = Rule::parse("--egress-deny", "10.0.0.0/8").expect("cidr");
        assert!(r.matches(addr("10.1.2.3:80")));
        assert!(!r.matches(addr("11.0.0.1:80")));
        let r = Rule::parse("--egress-deny", "127.0.0.1:8000-8010").expect("range");
        assert!(r.matches(addr("127.0.0.1:8005")));
        assert!(!r.matches(addr("127.0.0.1:8011")));
        let r = Rule::parse("--egress-deny", "[fd00::/8]:443").expect("v6 port");
        assert!(r.matches(addr("[fd12::1]:443")));
        assert!(!r.matches(addr("[fd12::1]:80")));
        let r = Rule::parse("--egress-deny", "fe80::/10").expect("bare v6");
        assert!(r.matches(addr("[fe80::1]:1")));
        let r = Rule::parse("--egress-deny", "0.0.0.0/0:22").expect("all");
        assert!(r.matches(addr("8.8.8.8:22")));
        assert!(
            r.matches(addr("[::ffff:8.8.8.8]:22")),
            "mapped IPv4 is IPv4"
        );
        let r = Rule::parse("--egress-deny", "::ffff:10.0.0.0/104").expect("mapped rule");
        assert!(r.matches(addr("10.0.0.1:1")));
    }

    #[test]
    fn bad_entries_name_the_flag_and_the_entry() {
        for entry in [
            "10.0.0.0/33",
            "nope",
            "10.0.0.1:99999",
            "10.0.0.1:9-1",
            "[fd00::/8",
            "[fd00::/8]443",
            "fd00::/129",
            "10.0.0.0/8:",
        ] {
            let err = parse_rules("--egress-allow", &format!("1.2.3.4,{entry}"))
                .expect_err(entry)
                .to_string();
            assert!(
                err.contains("--egress-allow") && err.contains(entry),
                "{err}"
            );
        }
        assert!(
            parse_rules("--egress-deny", " , ")
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn denies_link_local_and_metadata_by_default() {
        let p = Policy::default();
        for denied in [
            "169.254.169.254:80",
            "169.254.1.1:443",
            "[fe80::1]:80",
            "[fd00:ec2::254]:80",
            "[::ffff:169.254.169.254]:80",
            "0.0.0.0:8080",
            "[::]:8080",
        ] {
            let refusal = p.check(addr(denied)).expect_err(denied);
            assert!(refusal.to_string().starts_with("ingot egress policy: "));
        }
        assert!(
            p.check(addr("169.254.169.254:80"))
                .expect_err("metadata")
                .0
                .contains("metadata")
        );
        for allowed in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "93.184.216.34:443",
            "10.0.0.1:80",
        ] {
            assert_eq!(p.check(addr(allowed)), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn own_ports_are_denied_on_local_addresses_only_and_allow_cannot_reopen_them() {
        let p =
            Policy::new("", "127.0.0.0/8", Some("10.9.9.9".parse().expect("ip"))).expect("policy");
        p.own_ports().register(3000, "the gateway's own port");
        let hold = p.own_ports().hold(4000, "an internal forwarder's port");
        for denied in [
            "127.0.0.1:3000",
            "127.1.2.3:4000",
            "0.0.0.0:3000",
            "[::]:3000",
            "[::1]:4000",
            "10.9.9.9:3000",
        ] {
            assert!(p.check(addr(denied)).is_err(), "{denied}");
        }
        assert_eq!(p.check(addr("10.0.0.1:3000")), Ok(()), "not this machine");
        assert!(
            p.check_connected(addr("172.17.0.2:5555"), addr("172.17.0.2:3000"))
                .is_err(),
            "another interface of this machine"
        );
        assert_eq!(
            p.check_connected(addr("172.17.0.2:5555"), addr("172.17.0.9:3000")),
            Ok(())
        );
        drop(hold);
        assert_eq!(p.check(addr("127.0.0.1:4000")), Ok(()), "released");
    }

    #[test]
    fn allow_beats_deny_for_the_same_address() {
        let p = Policy::new(
            "127.0.0.0/8,169.254.0.0/16",
            "127.0.0.1:8000,169.254.169.254:80",
            None,
        )
        .expect("policy");
        assert_eq!(p.check(addr("127.0.0.1:8000")), Ok(()));
        let refusal = p.check(addr("127.0.0.1:8001")).expect_err("denied");
        assert!(refusal.0.contains("--egress-deny 127.0.0.0/8"), "{refusal}");
        assert_eq!(
            p.check(addr("169.254.169.254:80")),
            Ok(()),
            "operator's choice"
        );
    }
}
