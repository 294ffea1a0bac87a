//! A network of Linux network namespaces for one test, and the faults the partition tests
//! put on it.
//!
//! One bridge in the root namespace (where the test process runs) carries a private /24;
//! its root end is `.1`, and each member (`pg`, `a`, `b`, …) is a namespace of its own,
//! joined to the bridge by a veth pair, with the next address. The test reaches every
//! member through the bridge and the members reach each other. Faults cut paths between
//! members (never the test's own path to a member, except [`Net::link_down`]); each has a
//! heal, and [`Net::heal_all`] heals them all.
//!
//! Dropping a [`Net`] kills every process still running in its namespaces, then removes the
//! namespaces, the veth pairs and the bridge, whether the test passed or panicked. Creating
//! one first removes what a killed earlier run left (namespaces and bridges tagged with the
//! pid of a process that is gone). Owns nothing outside the namespaces and links it made.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace made here: `ingot-<pid>-<n>-<member>`.
const NS_PREFIX: &str = "ingot-";
/// Prefix of every bridge made here: `ingb<pid % 1000><n>`, its alias `ingot-<pid>`.
const BRIDGE_PREFIX: &str = "ingb";
/// The MAC address of nobody: a permanent neighbour entry with it drops packets silently.
const NOBODY_MAC: &str = "02:00:00:00:00:99";
/// The interface's name inside every member's namespace.
const NS_IF: &str = "eth0";

/// Networks made by this process so far: part of every name, so tests in parallel differ.
static NETS: AtomicU32 = AtomicU32::new(0);

/// One namespace of a [`Net`].
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name in the test (`pg`, `a`, …).
    pub name: String,
    /// Its namespace, for `ip netns exec`.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its veth's end on the bridge, in the root namespace.
    host_if: String,
}

/// A fault in force, as [`Net`]'s fault methods return it; [`Net::heal`] lifts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The member's veth is down: it is cut from everything, the test included.
    LinkDown(String),
    /// Each of the two has an `unreachable` route to the other: connects and sends fail at
    /// once.
    Cut(String, String),
    /// Each of the two sends the other's packets to a MAC address nobody has: they vanish.
    DropSilently(String, String),
    /// TCP to this port is dropped in and out of the member's namespace (nftables).
    DropPort(String, u16),
}

/// What a TCP connect attempt from inside a namespace saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Connected.
    Connected,
    /// Failed at once, with the shell's message (refused, no route to host, …).
    Failed(String),
    /// Nothing came back within the time given.
    TimedOut,
}

/// A network of namespaces for one test; see the module's doc.
pub struct Net {
    /// `<pid>-<n>`: part of every name made here.
    pub tag: String,
    bridge: String,
    /// The `N` of `10.200.N.0/24`.
    pub subnet: u8,
    members: Vec<Member>,
    faults: Mutex<Vec<Fault>>,
}

/// Runs `ip` with `args`; its stderr when it fails.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip` with `args` and panics when it fails.
fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Why this machine cannot run namespace tests, if it cannot.
fn unsupported() -> Option<String> {
    if !is_root() {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    let probe = format!("{NS_PREFIX}{}-probe", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("`ip netns add` fails: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    if run("nft", &["--version"]).is_err() {
        return Some("nftables (`nft`) is not installed: deploy/install-deps.sh --tests".into());
    }
    None
}

impl Net {
    /// Makes a network with one namespace per name in `members`, in that order (`.2`,
    /// `.3`, …). `None`, after saying why, when this machine cannot (not root, no `ip
    /// netns`); under CI (`CI` set) that is a failure instead, since CI runs as root.
    pub fn create(members: &[&str]) -> Option<Net> {
        if let Some(why) = unsupported() {
            assert!(
                std::env::var_os("CI").is_none(),
                "partition tests cannot run under CI: {why}"
            );
            eprintln!("skipped: {why}");
            return None;
        }
        remove_stale();
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{pid}-{n}");
        let subnet = free_subnet(pid, n);
        let mut net = Net {
            bridge: format!("{BRIDGE_PREFIX}{}{}", pid % 1000, n % 100),
            tag,
            subnet,
            members: Vec::new(),
            faults: Mutex::new(Vec::new()),
        };
        net.make_bridge(pid);
        for (i, name) in members.iter().enumerate() {
            net.add_member(name, 2 + i as u8, pid % 1000, n % 100);
        }
        Some(net)
    }

    fn make_bridge(&self, pid: u32) {
        must(&["link", "add", &self.bridge, "type", "bridge"]);
        must(&[
            "link",
            "set",
            &self.bridge,
            "alias",
            &format!("ingot-{pid}"),
        ]);
        let root = format!("10.200.{}.1/24", self.subnet);
        must(&["addr", "add", &root, "dev", &self.bridge]);
        must(&["link", "set", &self.bridge, "up"]);
    }

    fn add_member(&mut self, name: &str, host: u8, pid: u32, n: u32) {
        let ns = format!("{NS_PREFIX}{}-{name}", self.tag);
        let host_if = format!("ingv{pid}_{n}{name}");
        assert!(host_if.len() <= 15, "interface name too long: {host_if}");
        let ip = Ipv4Addr::new(10, 200, self.subnet, host);
        // Pushed first, so that a failure below still removes what was made.
        self.members.push(Member {
            name: name.to_owned(),
            ns: ns.clone(),
            ip,
            host_if: host_if.clone(),
        });
        must(&["netns", "add", &ns]);
        must(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", NS_IF, "netns", &ns,
        ]);
        must(&["link", "set", &host_if, "master", &self.bridge, "up"]);
        let addr = format!("{ip}/24");
        must(&["-n", &ns, "addr", "add", &addr, "dev", NS_IF]);
        must(&["-n", &ns, "link", "set", NS_IF, "up"]);
        must(&["-n", &ns, "link", "set", "lo", "up"]);
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name} in this network"))
    }

    /// The address of member `name`.
    pub fn ip(&self, name: &str) -> Ipv4Addr {
        self.member(name).ip
    }

    /// The namespace of member `name`.
    pub fn ns(&self, name: &str) -> String {
        self.member(name).ns.clone()
    }

    /// The root namespace's address on the bridge (`.1`).
    pub fn root_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, self.subnet, 1)
    }

    /// A command that runs `program` inside member `name`'s namespace.
    pub fn command(&self, name: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(name), program]);
        cmd
    }

    fn note(&self, fault: &Fault) {
        self.faults.lock().unwrap().push(fault.clone());
    }

    /// Cuts member `name` from everything: its veth's end on the bridge goes down.
    pub fn link_down(&self, name: &str) -> Fault {
        must(&["link", "set", &self.member(name).host_if, "down"]);
        let fault = Fault::LinkDown(name.to_owned());
        self.note(&fault);
        fault
    }

    /// Cuts `a` and `b` apart with immediate errors: an `unreachable` route to the other
    /// in each namespace.
    pub fn cut(&self, a: &str, b: &str) -> Fault {
        for (from, to) in [(a, b), (b, a)] {
            let dest = format!("{}/32", self.ip(to));
            must(&["-n", &self.ns(from), "route", "add", "unreachable", &dest]);
        }
        let fault = Fault::Cut(a.to_owned(), b.to_owned());
        self.note(&fault);
        fault
    }

    /// Cuts `a` and `b` apart silently: in each namespace, the other's address resolves
    /// to a MAC address nobody has, so packets leave and are never answered.
    pub fn drop_silently(&self, a: &str, b: &str) -> Fault {
        for (from, to) in [(a, b), (b, a)] {
            let dest = self.ip(to).to_string();
            let ns = self.ns(from);
            must(&[
                "-n",
                &ns,
                "neigh",
                "replace",
                &dest,
                "lladdr",
                NOBODY_MAC,
                "nud",
                "permanent",
                "dev",
                NS_IF,
            ]);
        }
        let fault = Fault::DropSilently(a.to_owned(), b.to_owned());
        self.note(&fault);
        fault
    }

    /// Drops TCP to `port`, coming in and going out, inside member `name`'s namespace.
    pub fn drop_port(&self, name: &str, port: u16) -> Fault {
        let table = format!("ingot_port_{port}");
        let rules = format!(
            "table inet {table} {{
                chain input {{ type filter hook input priority 0; tcp dport {port} drop; }}
                chain output {{ type filter hook output priority 0; tcp dport {port} drop; }}
            }}"
        );
        let out = self
            .command(name, "nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(rules.as_bytes())?;
                child.wait_with_output()
            })
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fault = Fault::DropPort(name.to_owned(), port);
        self.note(&fault);
        fault
    }

    /// Lifts `fault`.
    pub fn heal(&self, fault: &Fault) {
        let _ = self.undo(fault);
        self.faults.lock().unwrap().retain(|f| f != fault);
    }

    fn undo(&self, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::LinkDown(name) => {
                ip(&["link", "set", &self.member(name).host_if, "up"]).map(drop)
            }
            Fault::Cut(a, b) => {
                for (from, to) in [(a, b), (b, a)] {
                    let dest = format!("{}/32", self.ip(to));
                    ip(&["-n", &self.ns(from), "route", "del", "unreachable", &dest])?;
                }
                Ok(())
            }
            Fault::DropSilently(a, b) => {
                for (from, to) in [(a, b), (b, a)] {
                    let dest = self.ip(to).to_string();
                    ip(&["-n", &self.ns(from), "neigh", "del", &dest, "dev", NS_IF])?;
                }
                Ok(())
            }
            Fault::DropPort(name, port) => {
                let table = format!("ingot_port_{port}");
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &self.ns(name),
                        "nft",
                        "delete",
                        "table",
                        "inet",
                        &table,
                    ],
                )
                .map(drop)
            }
        }
    }

    /// Lifts every fault in force.
    pub fn heal_all(&self) {
        let faults = std::mem::take(&mut *self.faults.lock().unwrap());
        for fault in faults.iter().rev() {
            let _ = self.undo(fault);
        }
    }

    /// The faults in force.
    pub fn faults(&self) -> Vec<Fault> {
        self.faults.lock().unwrap().clone()
    }

    /// Tries a TCP connect to `to:port` from inside member `from`'s namespace, giving up
    /// after `within`; returns what it saw and how long it took.
    pub fn reach(
        &self,
        from: &str,
        to: Ipv4Addr,
        port: u16,
        within: Duration,
    ) -> (Reach, Duration) {
        let start = Instant::now();
        let script = format!("exec 3<>/dev/tcp/{to}/{port}");
        let secs = format!("{:.1}", within.as_secs_f64());
        let out = Command::new("timeout")
            .args([&secs, "ip", "netns", "exec", &self.ns(from), "bash", "-c"])
            .arg(&script)
            .output()
            .expect("run timeout");
        let took = start.elapsed();
        let reach = match out.status.code() {
            Some(0) => Reach::Connected,
            Some(124) => Reach::TimedOut,
            _ => Reach::Failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        };
        (reach, took)
    }

    /// Tries a TCP connect to member `to`'s `port` from the root namespace (the test's).
    pub fn reach_from_root(&self, to: &str, port: u16, within: Duration) -> (Reach, Duration) {
        let start = Instant::now();
        let addr = SocketAddr::from((self.ip(to), port));
        let reach = match TcpStream::connect_timeout(&addr, within) {
            Ok(_) => Reach::Connected,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Reach::TimedOut,
            Err(e) => Reach::Failed(e.to_string()),
        };
        (reach, start.elapsed())
    }

    /// Pids of the processes running in member `name`'s namespace.
    pub fn pids(&self, name: &str) -> Vec<i32> {
        ns_pids(&self.ns(name))
    }
}

/// Pids of the processes in namespace `ns`.
fn ns_pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills every process in namespace `ns` (stopped ones too) and waits until they are gone.
fn kill_all_in(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = ns_pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            super::signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `10.200.N.0/24` no address of the root namespace is in, starting from one derived
/// from `pid` and `n`.
fn free_subnet(pid: u32, n: u32) -> u8 {
    let used = ip(&["-o", "-4", "addr", "show"]).unwrap_or_default();
    let start = (pid.wrapping_mul(31).wrapping_add(n.wrapping_mul(7))) % 250;
    (0..250)
        .map(|i| ((start + i) % 250 + 2) as u8)
        .find(|subnet| !used.contains(&format!(" 10.200.{subnet}.")))
        .expect("a free 10.200.N.0/24")
}

/// Whether process `pid` runs.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces and bridges of earlier runs whose process is gone.
fn remove_stale() {
    for line in ip(&["netns", "list"]).unwrap_or_default().lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let owner = ns
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !alive(pid)) {
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
    for entry in std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(BRIDGE_PREFIX) {
            continue;
        }
        let alias = std::fs::read_to_string(entry.path().join("ifalias")).unwrap_or_default();
        let owner = alias
            .trim()
            .strip_prefix("ingot-")
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !alive(pid)) {
            let _ = ip(&["link", "del", &name]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for member in &self.members {
            kill_all_in(&member.ns);
        }
        for member in &self.members {
            let _ = ip(&["link", "del", &member.host_if]);
            let _ = ip(&["netns", "del", &member.ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
