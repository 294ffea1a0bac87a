//! The per-browser caps on this machine's real cgroups (as root; no Chromium needed): a
//! child moved into a group by writing `0` into its `cgroup.procs` between fork and exec
//! is OOM-killed at the group's memory limit and `watch` says so within 2 s; the pids cap
//! stops a (bounded) fork loop; `remove` and the start-up `sweep` leave nothing behind. And
//! the PSS watchdog on a process group, for machines without cgroups.
//!
//! Each test has its own data directory, so its own parent group, and removes every group
//! it made. Every child is bounded in time (`sleep 30` at most) and killed by the test.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ingot::browser::cgroup::{
    self, CgroupSupport, Limits, MemoryBreach, MemoryWatch, PssWatchdog, SessionCgroup,
};

const MIB: u64 = 1 << 20;

/// Whether the effective uid is 0 (`Uid:` in `/proc/self/status`: real, effective, ...).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let uids = s.lines().find_map(|l| l.strip_prefix("Uid:"))?.to_owned();
            uids.split_whitespace().nth(1).map(|e| e == "0")
        })
        .unwrap_or(false)
}

/// The cgroup support for a fresh data directory, or `None` (test skipped) when not root.
/// As root, cgroups must be available: this machine has them.
fn support_for(dir: &Path) -> Option<CgroupSupport> {
    if !running_as_root() {
        eprintln!("skipped: creating cgroups needs root");
        return None;
    }
    let support = cgroup::detect(dir);
    assert!(support.is_available(), "{support:?}");
    Some(support)
}

/// Runs `sh -c script`, moved into `group` before exec, in a process group of its own.
#[allow(unsafe_code)]
fn spawn_in(group: &SessionCgroup, script: &str) -> Child {
    let fds = group.procs_fds();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: the closure only calls `join_groups`, which only calls write(2).
    unsafe {
        cmd.pre_exec(move || cgroup::join_groups(&fds));
    }
    cmd.spawn().expect("spawn a child into the group")
}

/// Waits (bounded) for a child that must end soon.
fn wait_bounded(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {} still runs after {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_gone(dirs: &[std::path::PathBuf]) {
    for dir in dirs {
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}

/// Removes the test's group (if still there) and parents.
fn clean_up(group: Option<SessionCgroup>, support: &CgroupSupport) {
    if let Some(group) = group {
        let dirs = group.dirs().to_vec();
        group.remove().expect("remove the group");
        assert_gone(&dirs);
    }
    cgroup::remove_parents(support).expect("remove the parent groups");
    let parents: Vec<_> = support
        .parents()
        .into_iter()
        .map(Path::to_path_buf)
        .collect();
    assert_gone(&parents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_over_the_memory_limit_is_oom_killed_and_watch_says_so_within_2s() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(support) = support_for(tmp.path()) else {
        return;
    };
    let limits = Limits {
        memory_max: Some(64 * MIB),
        pids_max: Some(64),
    };
    let group = SessionCgroup::create(&support, "memory-hog", limits).expect("create the group");
    assert_eq!(group.oom_kills(), 0);
    let watch = group.watch();
    let started = Instant::now();
    // dd's 256 MiB buffer is filled from /dev/zero: every page is touched.
    let mut child = spawn_in(&group, "exec dd if=/dev/zero of=/dev/null bs=256M count=1");
    let breach = tokio::time::timeout(Duration::from_secs(2), watch)
        .await
        .expect("watch resolves within 2 s");
    assert!(
        matches!(breach, MemoryBreach::OomKilled { kills } if kills >= 1),
        "{breach:?}"
    );
    eprintln!("OOM kill seen after {:?}", started.elapsed());
    let status = wait_bounded(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(group.oom_kills() >= 1);
    clean_up(Some(group), &support);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_within_the_memory_limit_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(support) = support_for(tmp.path()) else {
        return;
    };
    let limits = Limits {
        memory_max: Some(256 * MIB),
        pids_max: None,
    };
    let group = SessionCgroup::create(&support, "modest", limits).expect("create the group");
    let mut child = spawn_in(&group, "exec dd if=/dev/zero of=/dev/null bs=32M count=4");
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let watched = tokio::time::timeout(Duration::from_millis(600), group.watch()).await;
    assert!(watched.is_err(), "no breach: {watched:?}");
    assert_eq!(group.oom_kills(), 0);
    clean_up(Some(group), &support);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pids_cap_stops_a_fork_loop_and_remove_kills_what_is_left() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(support) = support_for(tmp.path()) else {
        return;
    };
    let limits = Limits {
        memory_max: None,
        pids_max: Some(16),
    };
    let group = SessionCgroup::create(&support, "fork-loop", limits).expect("create the group");
    let pids_dir = group
        .dirs()
        .iter()
        .find(|d| d.join("pids.max").exists())
        .expect("a pids directory")
        .clone();
    // At most 100 forks, each a bounded sleep; the cap lets only 16 tasks live.
    let mut child = spawn_in(
        &group,
        "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; wait",
    );
    let read = |f: &str| std::fs::read_to_string(pids_dir.join(f)).unwrap_or_default();
    let refused = |events: &str| {
        events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(&read("pids.events")) == 0 {
        assert!(Instant::now() < deadline, "no fork was refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    let current: u64 = read("pids.current").trim().parse().expect("pids.current");
    assert!(current <= 16, "{current} tasks under a cap of 16");
    let dirs = group.dirs().to_vec();
    group
        .remove()
        .expect("remove kills what is left and removes the group");
    assert_gone(&dirs);
    wait_bounded(&mut child, Duration::from_secs(5));
    clean_up(None, &support);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_sweep_removes_a_predecessors_groups_and_their_tasks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(support) = support_for(tmp.path()) else {
        return;
    };
    let group = SessionCgroup::create(&support, "left-behind", Limits::default())
        .expect("create the group");
    let mut child = spawn_in(&group, "exec sleep 30");
    let dirs = group.dirs().to_vec();
    // A killed gateway removes nothing.
    std::mem::forget(group);
    // The next start, on the same data directory, finds the same parent.
    assert_eq!(cgroup::detect_quietly(tmp.path()), support);
    assert_eq!(cgroup::sweep(&support), 1);
    assert_gone(&dirs);
    let status = wait_bounded(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(cgroup::sweep(&support), 0, "nothing left");
    clean_up(None, &support);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pss_watchdog_sees_a_process_group_over_its_limit() {
    // dd holds a 192 MiB buffer it filled while it blocks writing to a pipe nobody reads.
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "dd if=/dev/zero bs=192M count=1 2>/dev/null | sleep 30",
        ])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn");
    let pgid = child.id() as i32;
    let limit = 128 * MIB;
    // The moment the group goes over (polled, bounded: the machine may be busy).
    let deadline = Instant::now() + Duration::from_secs(10);
    while cgroup::pss_of_group(pgid) <= limit && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let over_since = Instant::now();
    let breach = tokio::time::timeout(
        Duration::from_secs(2),
        PssWatchdog::new(pgid, limit).watch(),
    )
    .await;
    let seen_after = over_since.elapsed();
    let quiet = tokio::time::timeout(
        Duration::from_millis(1200),
        PssWatchdog::new(pgid, 1 << 30).watch(),
    )
    .await;
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_bounded(&mut child, Duration::from_secs(5));
    let breach = breach.expect("the watchdog resolves within 2 s of the group going over");
    eprintln!("PSS breach seen {seen_after:?} after the group went over: {breach}");
    assert!(
        matches!(breach, MemoryBreach::Pss { bytes, limit: l } if bytes > l && l == limit),
        "{breach:?}"
    );
    assert!(quiet.is_err(), "under 1 GiB: no breach ({quiet:?})");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cgroup::pss_of_group(pgid) > 0 {
        assert!(Instant::now() < deadline, "the killed group still counts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Command::uid` drops privileges before `pre_exec` runs: the descriptors opened by the
/// gateway still let the unprivileged child move itself in (the kernel checks the opener's
/// credentials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(unsafe_code)]
async fn a_child_that_already_runs_as_another_user_still_joins_its_group() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(support) = support_for(tmp.path()) else {
        return;
    };
    let limits = Limits {
        memory_max: Some(256 * MIB),
        pids_max: Some(64),
    };
    let group = SessionCgroup::create(&support, "unprivileged", limits).expect("create");
    let fds = group.procs_fds();
    let mut cmd = Command::new("/bin/cat");
    cmd.arg("/proc/self/cgroup")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    // SAFETY: the closure only calls `join_groups`, which only calls write(2).
    unsafe {
        cmd.pre_exec(move || cgroup::join_groups(&fds));
    }
    let out = cmd.output().expect("run cat as nobody");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let joined = text
        .lines()
        .filter(|l| l.ends_with("/unprivileged"))
        .count();
    assert_eq!(joined, group.dirs().len(), "{text}");
    clean_up(Some(group), &support);
}
