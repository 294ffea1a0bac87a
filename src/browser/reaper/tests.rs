//! The reaper with real child processes: `sh` process groups stand for browsers (a leader
//! that exits and leaves helpers behind, which this test process adopts as a subreaper),
//! and a plain child stands for anything else the gateway may run.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use super::*;

/// Every process of group `pgid` as `/proc` shows it, zombies included.
fn members(pgid: i32) -> Vec<Seen> {
    processes().into_iter().filter(|s| s.pgid == pgid).collect()
}

/// Polls `condition` every 5 ms for up to 5 s.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A stand-in browser: `sh` leading its own process group, which starts two helpers and
/// exits with 3 at once, so that the helpers are adopted by this (subreaper) process and
/// exit as its zombies a moment later. Returns the leader, whose status is its owner's.
fn browser(groups: &Groups) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let leader = std::process::Command::new("sh")
        .args(["-c", "sleep 0.05 & sleep 0.05 & exit 3"])
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    groups.launched(leader.id() as i32, None);
    leader
}

/// Waits until the helpers of `leader`'s group are this process's zombies.
fn helpers_adopted_and_dead(leader: &std::process::Child) {
    let (pgid, me) = (leader.id() as i32, std::process::id() as i32);
    wait_until("both helpers are adopted zombies", || {
        let helpers: Vec<Seen> = members(pgid)
            .into_iter()
            .filter(|s| s.pid != pgid)
            .collect();
        helpers.len() == 2 && helpers.iter().all(|s| s.zombie && s.ppid == me)
    });
}

#[test]
fn subreaper_flag_is_set() {
    become_subreaper();
    assert_eq!(nix::sys::prctl::get_child_subreaper().ok(), Some(true));
}

#[test]
fn the_stat_line_is_read_after_the_command_name() {
    let stat = "42 (a) b (c) Z 7 40 40 0 -1 4194560";
    let seen = parse_stat(42, stat).expect("parses");
    assert_eq!(
        seen,
        Seen {
            pid: 42,
            zombie: true,
            ppid: 7,
            pgid: 40,
            uid: None,
        }
    );
    assert!(parse_stat(1, "1 (init) S").is_none());
}

#[test]
fn adopted_helpers_of_a_browser_are_reaped_but_not_its_leader() {
    become_subreaper();
    let groups = Groups::default();
    let mut leader = browser(&groups);
    let pgid = leader.id() as i32;
    helpers_adopted_and_dead(&leader);
    wait_until("the leader is a zombie", || {
        read_stat(pgid).is_some_and(|s| s.zombie)
    });
    assert_eq!(reap_adopted(&groups), 2, "both helpers reaped");
    let left: Vec<i32> = members(pgid).iter().map(|s| s.pid).collect();
    assert_eq!(left, vec![pgid], "only the leader is left, for its owner");
    let status = leader.wait().expect("the leader's status is still there");
    assert_eq!(status.code(), Some(3));
    assert_eq!(groups.len(), 1, "a running leader's group stays known");
    groups.leader_exited(pgid);
    assert_eq!(reap_adopted(&groups), 0);
    assert_eq!(
        groups.len(),
        0,
        "an exited leader's empty group is forgotten"
    );
}

#[test]
fn the_user_is_read_from_the_status_text() {
    let status =
        "Name:\tsleep\nUmask:\t0022\nState:\tZ (zombie)\nUid:\t64123\t64123\t64123\t64123\n";
    assert_eq!(parse_uid(status), Some(64_123));
    assert_eq!(parse_uid("Name:\tx\n"), None);
}

/// A confined browser's helper that leaves the browser's group (`setsid`, as crash
/// handlers do) is still the browser's: it runs as the browser's own user, and is reaped
/// once it is this process's zombie. A rule by group alone left it a zombie for ever.
#[test]
fn a_helper_that_left_its_browsers_group_is_reaped_by_the_browsers_user() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: running a child as another user needs root");
        return;
    }
    const UID: u32 = 64_123;
    become_subreaper();
    let groups = Groups::default();
    let mut leader = std::process::Command::new("sh")
        .args(["-c", "setsid sleep 0.05 & exit 3"])
        .process_group(0)
        .uid(UID)
        .gid(UID)
        .spawn()
        .expect("spawn sh");
    let pgid = leader.id() as i32;
    groups.launched(pgid, Some(UID));
    let me = std::process::id() as i32;
    let mut helper = None;
    wait_until(
        "the helper left the group and died as this process's zombie",
        || {
            helper = processes()
                .into_iter()
                .find(|s| s.uid == Some(UID) && s.pgid != pgid && s.zombie && s.ppid == me)
                .map(|s| s.pid);
            helper.is_some()
        },
    );
    let helper = helper.expect("found");
    assert_eq!(reap_adopted(&groups), 1, "the helper, not the leader");
    assert!(read_stat(helper).is_none(), "the helper is gone");
    assert_eq!(leader.wait().expect("the leader's status").code(), Some(3));
}

/// Every process `/proc` shows, zombies included.
fn processes() -> Vec<Seen> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .map(with_uid)
        .collect()
}

#[test]
#[allow(clippy::zombie_processes)] // the point: the child is left for nobody but its owner
fn a_zombie_child_outside_the_browsers_groups_is_left_alone() {
    become_subreaper();
    let groups = Groups::default();
    let other = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = other.id() as i32;
    wait_until("the child is a zombie", || {
        read_stat(pid).is_some_and(|s| s.zombie)
    });
    // Even a child that leads its own group is not a browser's until recorded.
    assert_eq!(reap_adopted(&groups), 0);
    assert!(read_stat(pid).is_some_and(|s| s.zombie), "still there");
    let mut other = other;
    let status = other.wait().expect("its status is still there");
    assert_eq!(status.into_raw(), 0);
}

/// While the reaper runs and browsers come and go, a child that is not a browser keeps its
/// exit status for its owner. The old reaper (every zombie child but the leaders) took it,
/// and `wait` then failed with ECHILD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_browser_childs_exit_status_survives_the_running_reaper() {
    become_subreaper();
    let groups = Groups::default();
    let stop = CancellationToken::new();
    let reaper = tokio::spawn(run(groups.clone(), stop.clone()));
    let mut other = tokio::process::Command::new("sh")
        .args(["-c", "exit 7"])
        .spawn()
        .expect("spawn sh");
    let pid = other.id().expect("running") as i32;
    let checks = tokio::task::spawn_blocking(move || {
        wait_until("the other child is a zombie", || {
            read_stat(pid).is_some_and(|s| s.zombie)
        });
        // Browsers come and go after it died: each SIGCHLD makes a reaping pass, and each
        // browser's helpers are reaped only by a pass that saw the other zombie too.
        for _ in 0..3 {
            let mut leader = browser(&groups);
            let pgid = leader.id() as i32;
            // Once the leader is dead it has started both helpers, which are then this
            // process's children: only a reaping pass can take them once they exit.
            wait_until("the leader is a zombie", || {
                read_stat(pgid).is_some_and(|s| s.zombie)
            });
            wait_until("the running reaper took the helpers", || {
                members(pgid).iter().all(|s| s.pid == pgid)
            });
            assert_eq!(leader.wait().expect("leader").code(), Some(3));
            groups.leader_exited(pgid);
        }
        assert!(
            read_stat(pid).is_some_and(|s| s.zombie),
            "the other child is still waiting for its owner"
        );
    });
    checks.await.expect("checks passed");
    let status = other.wait().await.expect("the exit status survived");
    assert_eq!(status.code(), Some(7));
    stop.cancel();
    reaper.await.expect("the reaper stops");
}
