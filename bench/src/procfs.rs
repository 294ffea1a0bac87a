//! Reading processes and their memory from `/proc`.
//!
//! Owns finding the processes that belong to a browser (by process group, and by a path in
//! their command line for the crash handlers that leave the group) and summing their memory.
//! It never signals anything except in [`kill_mentioning`], the last-resort sweep.

use std::collections::HashSet;
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One line of `/proc/<pid>/stat`, the fields we use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub zombie: bool,
}

/// Parses `/proc/<pid>/stat`; `None` when the process is gone.
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may itself hold spaces and parentheses: split after the last ')'.
    let mut fields = text.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        pgrp,
        zombie: state == "Z" || state == "X",
    })
}

/// Every live (non-zombie) process on the machine.
pub(crate) fn all() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|s| !s.zombie)
        .collect()
}

/// Whether a process's command line mentions `needle`.
pub(crate) fn cmdline_mentions(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(needle))
        })
        .unwrap_or(false)
}

/// One `key:   N kB` figure from a `/proc` file, in KiB.
fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident set size of one process (`VmRSS`), in KiB.
pub(crate) fn rss_kib(pid: i32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size of one process (shared pages divided among their users), in KiB.
pub(crate) fn pss_kib(pid: i32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// Private memory of one process (`Private_Clean` + `Private_Dirty` of `smaps_rollup`), in
/// KiB: what ending it would free.
pub(crate) fn private_kib(pid: i32) -> Option<u64> {
    private_of_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// `Private_Clean` + `Private_Dirty` in the text of a `smaps_rollup` file, in KiB.
fn private_of_rollup(text: &str) -> Option<u64> {
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(field("Private_Clean:")? + field("Private_Dirty:")?)
}

/// The real uid a process runs as (the first figure of `Uid:` in its `status`).
pub(crate) fn uid(pid: i32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU time a process has used so far, all its threads together, in ns (the first field of
/// each `/proc/<pid>/task/<tid>/schedstat`, which is exact, unlike tick-based `stat`).
pub(crate) fn cpu_ns(pid: i32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// What a process has used so far, all its threads together (threads that already exited
/// are not counted: their counts go with them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    /// CPU time, in ns, as [`cpu_ns`] reads it.
    pub cpu_ns: u64,
    /// Context switches: `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of each
    /// `/proc/<pid>/task/<tid>/status` (`/proc/<pid>/status` has the main thread's only).
    pub switches: u64,
}

impl Usage {
    /// What was used between `before` and `self`.
    pub(crate) fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            switches: self.switches.saturating_sub(before.switches),
        }
    }

    /// `self` and `other` together.
    pub(crate) fn plus(self, other: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns + other.cpu_ns,
            switches: self.switches + other.switches,
        }
    }
}

/// CPU time and context switches of a process so far, all its threads; `None` when it is gone.
pub(crate) fn usage(pid: i32) -> Option<Usage> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = Usage::default();
    for task in tasks.flatten() {
        let path = task.path();
        if let Ok(s) = std::fs::read_to_string(path.join("schedstat"))
            && let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        {
            total.cpu_ns += ns;
        }
        if let Ok(status) = std::fs::read_to_string(path.join("status")) {
            total.switches += context_switches(&status);
        }
    }
    Some(total)
}

/// Voluntary plus involuntary context switches in the text of a `status` file.
fn context_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|line| {
            line.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
        })
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// The browser processes that `parent` (a gateway) started: its children whose command line
/// has `--remote-debugging-pipe` (how ingot talks to its browsers).
pub(crate) fn pipe_browsers_of(parent: i32) -> Vec<i32> {
    all()
        .into_iter()
        .filter(|p| p.ppid == parent && cmdline_mentions(p.pid, "--remote-debugging-pipe"))
        .map(|p| p.pid)
        .collect()
}

/// The memory of a set of processes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Footprint {
    pub processes: usize,
    pub pss_kib: u64,
    pub rss_kib: u64,
    /// `Private_Clean` + `Private_Dirty`, summed.
    pub private_kib: u64,
}

/// Browser processes: every member of `groups`, plus any process (other than `exclude`)
/// whose command line mentions `dir` (Chromium's crash handlers start their own session but
/// name the profile directory).
pub(crate) fn browser_processes(groups: &HashSet<i32>, dir: &Path, exclude: i32) -> Vec<i32> {
    let dir = dir.to_string_lossy();
    all()
        .into_iter()
        .filter(|p| p.pid != exclude)
        .filter(|p| groups.contains(&p.pgrp) || cmdline_mentions(p.pid, &dir))
        .map(|p| p.pid)
        .collect()
}

/// Process groups led by children of `parent`: how ingot starts each browser.
pub(crate) fn groups_led_by_children_of(parent: i32) -> HashSet<i32> {
    all()
        .into_iter()
        .filter(|p| p.ppid == parent && p.pgrp == p.pid)
        .map(|p| p.pid)
        .collect()
}

/// Sums PSS and RSS over `pids` (processes that vanished meanwhile count as nothing).
pub(crate) fn footprint(pids: &[i32]) -> Footprint {
    pids.iter().fold(Footprint::default(), |f, &pid| {
        match (pss_kib(pid), rss_kib(pid)) {
            (Some(pss), Some(rss)) => Footprint {
                processes: f.processes + 1,
                pss_kib: f.pss_kib + pss,
                rss_kib: f.rss_kib + rss,
                private_kib: f.private_kib + private_kib(pid).unwrap_or(0),
            },
            _ => f,
        }
    })
}

/// How many live processes have `name` as their command name (`/proc/<pid>/comm`).
pub(crate) fn count_named(name: &str) -> usize {
    all()
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .count()
}

/// Every live descendant of `ancestor` (children, their children, …), not `ancestor` itself.
pub(crate) fn descendants_of(ancestor: i32) -> Vec<i32> {
    descendants_among(&all(), ancestor)
}

/// [`descendants_of`] within a list of processes.
fn descendants_among(procs: &[ProcStat], ancestor: i32) -> Vec<i32> {
    let mut found = vec![ancestor];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(procs.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// A process's command name (`/proc/<pid>/comm`).
pub(crate) fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// A figure of `/proc/meminfo` (`MemTotal:`, `MemAvailable:`), in KiB.
pub(crate) fn meminfo_kib(key: &str) -> Option<u64> {
    kib_field("/proc/meminfo", key)
}

/// Whether any member of process group `pgrp` is still running (zombies do not count).
pub(crate) fn group_alive(pgrp: i32) -> bool {
    all().iter().any(|p| p.pgrp == pgrp)
}

/// Last-resort sweep: SIGKILLs every process except this one whose command line mentions
/// `needle`, and returns how many there were.
pub(crate) fn kill_mentioning(needle: &str) -> usize {
    let me = std::process::id() as i32;
    let victims: Vec<i32> = all()
        .into_iter()
        .map(|p| p.pid)
        .filter(|&pid| pid != me && cmdline_mentions(pid, needle))
        .collect();
    for &pid in &victims {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    victims.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_memory_is_clean_plus_dirty() {
        let rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss: 900 kB\nPss: 500 kB\nPrivate_Clean: 40 kB\nPrivate_Dirty: 300 kB\n";
        assert_eq!(private_of_rollup(rollup), Some(340));
        assert_eq!(private_of_rollup("Rss: 900 kB\n"), None);
        let me = std::process::id() as i32;
        assert!(private_kib(me).is_some_and(|k| k > 0));
        assert_eq!(uid(me), Some(nix::unistd::getuid().as_raw()));
    }

    #[test]
    fn descendants_are_found_through_every_generation() {
        let p = |pid, ppid| ProcStat {
            pid,
            ppid,
            pgrp: pid,
            zombie: false,
        };
        let procs = [
            p(10, 1),
            p(11, 10),
            p(12, 11),
            p(13, 10),
            p(20, 1),
            p(21, 20),
        ];
        let mut found = descendants_among(&procs, 10);
        found.sort_unstable();
        assert_eq!(found, [11, 12, 13]);
        assert!(descendants_among(&procs, 12).is_empty());
        assert!(meminfo_kib("MemTotal:").is_some_and(|k| k > 0));
    }

    #[test]
    fn context_switches_add_both_kinds() {
        let status = "Name:\tingot\nThreads:\t4\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(context_switches(status), 127);
        assert_eq!(context_switches("Name:\tx\n"), 0);
    }

    #[test]
    fn this_process_has_used_something() {
        let me = usage(std::process::id() as i32).expect("our own /proc entry");
        assert!(me.cpu_ns > 0);
        assert!(me.switches > 0);
        let later = Usage {
            cpu_ns: me.cpu_ns + 5,
            switches: me.switches + 2,
        };
        assert_eq!(
            later.since(me),
            Usage {
                cpu_ns: 5,
                switches: 2
            }
        );
        assert_eq!(me.since(later), Usage::default());
    }
}
