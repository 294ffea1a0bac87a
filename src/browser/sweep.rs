//! The start-up sweep: reap browsers and session directories that a previous run of the
//! gateway left behind (after a SIGKILL, an OOM kill or a power cut).
//!
//! Owns reading `/proc` to find processes. It must only ever touch processes whose command
//! line names this gateway's own sessions directory (browsers, and headful browsers' Xvfb),
//! and only before any session starts.
//! Those browsers may have run as users of their own: their directories are removed (taken
//! back first when the gateway may not remove them as they are), and the session files
//! directories they still own are given back to the gateway's user.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::display;
use super::paths::{FILES_SUBDIR, SESSIONS_SUBDIR, scratch_root};
use super::sandbox::owner;

/// What the sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Process groups killed (one per leftover browser).
    pub process_groups: usize,
    /// Session directories removed.
    pub directories: usize,
    /// Session files directories given back to the gateway's user.
    pub files_reclaimed: usize,
}

/// Kills every process whose command line points into `<data_dir>/sessions/` and removes
/// every session and scratch directory. Blocking: run it before serving, or in `spawn_blocking`.
pub(super) fn sweep(data_dir: &Path) -> SweepReport {
    let sessions_dir = data_dir.join(SESSIONS_SUBDIR);
    let markers = [
        format!("--user-data-dir={}/", sessions_dir.display()),
        // A headful browser's Xvfb, which leads a group of its own.
        display::sweep_marker(&sessions_dir),
        display::sweep_marker(&scratch_root(data_dir)),
    ];
    let mut report = SweepReport::default();

    let mut groups: Vec<i32> = processes()
        .filter(|p| p.state != 'Z' && markers.iter().any(|m| p.cmdline.contains(m)))
        .map(|p| p.pgid)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for &pgid in &groups {
        // A browser launched by ingot leads its own group; never signal the gateway's own group.
        if pgid <= 1 || pgid == nix::unistd::getpgrp().as_raw() {
            continue;
        }
        match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
            Ok(()) => report.process_groups += 1,
            Err(e) => warn!(pgid, error = %e, "cannot kill a leftover browser process group"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while groups.iter().any(|&g| group_has_running_member(g)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    for parent in [sessions_dir, scratch_root(data_dir)] {
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let path = entry.path();
            match owner::remove_tree(&path) {
                Ok(()) => report.directories += 1,
                Err(e) => {
                    warn!(dir = %path.display(), error = %e, "cannot remove a leftover session directory")
                }
            }
        }
    }
    // The scratch root holds nothing of its own; an idle gateway leaves none behind.
    let _ = std::fs::remove_dir(scratch_root(data_dir));
    report.files_reclaimed = reclaim_files(&data_dir.join(FILES_SUBDIR));
    if report != SweepReport::default() {
        info!(
            process_groups = report.process_groups,
            directories = report.directories,
            files_reclaimed = report.files_reclaimed,
            "start-up sweep cleaned up after a previous run"
        );
    }
    report
}

/// Gives back to the gateway's user every session files directory (under `files`) that
/// another user owns: a browser's, whose gateway was killed before it could. Returns how
/// many.
fn reclaim_files(files: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let me = owner::gateway_owner();
    let mut reclaimed = 0;
    for entry in std::fs::read_dir(files).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_dir() || meta.uid() == me.0 {
            continue;
        }
        match owner::reclaim_tree(&entry.path(), me) {
            Ok(()) => reclaimed += 1,
            Err(e) => {
                warn!(dir = %entry.path().display(), error = %e, "cannot take back a session's files from its browser's user")
            }
        }
    }
    reclaimed
}

/// Whether any non-zombie process belongs to the process group. Reads `/proc`: blocking.
pub(super) fn group_has_running_member(pgid: i32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                return false;
            };
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_state_and_pgid(&stat))
                .is_some_and(|(state, group)| group == pgid && state != 'Z')
        })
}

/// State and process group from `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are read after the last ')'.
fn stat_state_and_pgid(stat: &str) -> Option<(char, i32)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// The parts of `/proc/<pid>` the sweep needs.
struct ProcInfo {
    state: char,
    pgid: i32,
    cmdline: String,
}

fn processes() -> impl Iterator<Item = ProcInfo> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, pgid) = stat_state_and_pgid(&stat)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default();
            Some(ProcInfo {
                state,
                pgid,
                cmdline,
            })
        })
}
