//! Partition tests (issue 20): PostgreSQL and two or three `ingot` nodes, each in a network
//! namespace of its own ([`crate::common::netns`]), lease 3 s, real Chromium; the network
//! between them is cut (immediate errors, silent drops, a link down, one port) and healed,
//! and each test measures what clients, nodes and the database saw and asserts issue 20's
//! properties:
//!
//! - a node cut from the database fences itself before the others fail its sessions: no
//!   CDP answer more than 1 s after a session reads `failed`, fresh connections refused
//!   (503 `node_fenced` on the fenced node, 410 once a session reads failed), no browser
//!   launched for a create, clients of a failed session closed with 1011 after the heal;
//! - a database outage of every node fails no session, and clients answer within 5 s of
//!   the heal;
//! - a node ↔ node cut fails no session, closes forwarded clients with a close frame and
//!   answers relayed requests 502 `node_unreachable` within 2 s;
//! - a release during a cut is refused (503) or recorded everywhere;
//! - after every heal, all nodes and the database agree within a lease; usage and lists
//!   answer the same from every node; every minute a client got answers in is billed;
//! - a soak of 500 create/connect/release cycles while nodes are cut from the database in
//!   turn ends with only documented refusals, no browser left and equal usage everywhere.
//!
//! Each test prints a one-line summary with its numbers (run with `--nocapture`). They run
//! alone, one at a time ([`crate::common::exclusive`]): they measure timings on two cores.
//! The harness's own checks (each fault really cuts, cleanup after a panic) come first.

mod net_cluster;
mod probe;
mod scenarios;
mod soak;

use std::time::{Duration, Instant};

use crate::common::exclusive;
use crate::common::netns::{Net, Reach};
use crate::common::postgres::Postgres;

/// A connect that should not get through gives up after this.
const SILENT: Duration = Duration::from_secs(2);

/// Whether `reach` got through.
fn connected(reach: &(Reach, Duration)) -> bool {
    reach.0 == Reach::Connected
}

/// Every fault cuts what it says and nothing else, and its heal restores the path: checked
/// with TCP connects from inside the namespaces to PostgreSQL and to a closed port of
/// another member (refused means reachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_cuts_what_it_says_and_heals() {
    let _alone = exclusive().await;
    let Some(net) = Net::create(&["pg", "a", "b"]) else {
        return;
    };
    let pg = Postgres::start_in(&net.ns("pg"), net.ip("pg"));
    let pg_ip = net.ip("pg");
    let reach_pg = |from: &str| net.reach(from, pg_ip, 5432, SILENT);
    let a_closed_port = |from: &str| net.reach(from, net.ip("a"), 9, SILENT);
    assert!(connected(&reach_pg("a")) && connected(&reach_pg("b")));
    assert!(connected(&net.reach_from_root("pg", 5432, SILENT)));
    let refused = a_closed_port("b");
    assert!(
        matches!(&refused.0, Reach::Failed(m) if m.contains("refused")),
        "{refused:?}"
    );

    let cut = net.cut("b", "pg");
    let (seen, took) = reach_pg("b");
    assert!(
        matches!(&seen, Reach::Failed(m) if m.contains("No route")) && took < SILENT / 2,
        "a cut fails at once: {seen:?} after {took:?}"
    );
    assert!(connected(&reach_pg("a")), "a still reaches pg");
    net.heal(&cut);
    assert!(connected(&reach_pg("b")), "healed");

    let silent = net.drop_silently("b", "pg");
    let (seen, took) = reach_pg("b");
    assert_eq!(
        seen,
        Reach::TimedOut,
        "a silent drop answers nothing ({took:?})"
    );
    assert!(connected(&reach_pg("a")) && connected(&net.reach_from_root("pg", 5432, SILENT)));
    assert!(
        !matches!(a_closed_port("b").0, Reach::TimedOut),
        "b still reaches a"
    );
    net.heal(&silent);
    assert!(connected(&reach_pg("b")), "healed");

    let port = net.drop_port("b", 5432);
    assert_eq!(
        reach_pg("b").0,
        Reach::TimedOut,
        "b's packets to 5432 dropped"
    );
    assert!(
        matches!(a_closed_port("b").0, Reach::Failed(_)),
        "other ports pass"
    );
    net.heal(&port);
    let pg_port = net.drop_port("pg", 5432);
    assert_eq!(
        reach_pg("a").0,
        Reach::TimedOut,
        "pg drops what comes to 5432"
    );
    net.heal(&pg_port);
    assert!(connected(&reach_pg("a")) && connected(&reach_pg("b")));

    link_down_cuts_everything(&net);
    drop(pg);
    eprintln!("netns faults: cut, silent drop, port drop and link down cut and heal as they say");
}

/// A member whose link is down reaches nobody and nobody reaches it, the test included.
fn link_down_cuts_everything(net: &Net) {
    let pg_ip = net.ip("pg");
    let _down = net.link_down("b");
    assert!(!connected(&net.reach("b", pg_ip, 5432, SILENT)));
    assert!(!connected(&net.reach_from_root("b", 9, SILENT)));
    assert!(!matches!(
        net.reach("a", net.ip("b"), 9, SILENT).0,
        Reach::Failed(ref m) if m.contains("refused")
    ));
    assert!(connected(&net.reach("a", pg_ip, 5432, SILENT)));
    net.heal_all();
    assert!(net.faults().is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !connected(&net.reach("b", pg_ip, 5432, SILENT)) {
        assert!(
            Instant::now() < deadline,
            "b never came back after its link went up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A test that panics with a process running in its namespaces leaves no namespace, no
/// link, no bridge and no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_nothing_behind() {
    let _alone = exclusive().await;
    if Net::create(&["x"]).is_none() {
        return;
    }
    let made = std::thread::spawn(|| {
        let net = Net::create(&["pg", "a"]).expect("a network");
        let sleeper = net
            .command("a", "sleep")
            .arg("1000")
            .spawn()
            .expect("sleep in a");
        std::panic::panic_any((net.tag.clone(), sleeper, net.subnet));
    })
    .join();
    let payload = made.expect_err("the thread panicked");
    let (tag, mut sleeper, subnet) = *payload
        .downcast::<(String, std::process::Child, u8)>()
        .expect("the panic's payload");
    let status = sleeper.try_wait().expect("try_wait");
    assert!(
        status.is_some_and(|s| !s.success()),
        "the process in the namespace was killed: {status:?}"
    );
    let namespaces = crate::common::netns::ip(&["netns", "list"]).expect("ip netns list");
    assert!(!namespaces.contains(&tag), "namespaces left: {namespaces}");
    let links = crate::common::netns::ip(&["-o", "addr", "show"]).expect("ip addr");
    assert!(
        !links.contains(&format!(" 10.200.{subnet}.")),
        "the bridge is left: {links}"
    );
}
