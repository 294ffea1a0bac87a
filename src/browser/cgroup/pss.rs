//! The PSS watchdog: where no cgroup can cap a browser's memory, its process group's
//! proportional set size is summed every [`PSS_POLL`] and compared with the limit.
//!
//! Owns reading `/proc/<pid>/stat` and `/proc/<pid>/smaps_rollup`; kills nothing itself
//! (the launcher ends the browser when [`PssWatchdog`]'s watch resolves). PSS counts each
//! shared page once across the processes that share it, so a session is not charged for
//! the Chromium code every browser maps. Reading another user's `smaps_rollup` needs
//! `CAP_SYS_PTRACE` (root has it); processes that cannot be read count as 0.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::debug;

use super::{MemoryBreach, MemoryWatch};

/// How often the watchdog sums a browser's PSS.
pub const PSS_POLL: Duration = Duration::from_millis(500);

/// Sums `Pss:` of `/proc/<pid>/smaps_rollup` over every live process whose process group
/// is `pgid`, in bytes. Blocking: reads `/proc`.
pub fn pss_of_group(pgid: i32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| state_and_group(&stat))
                .is_some_and(|(state, group)| group == pgid && state != 'Z')
        })
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|rollup| pss_bytes(&rollup))
        .sum()
}

/// State and process group from `/proc/<pid>/stat`, read after the last `)` because the
/// command name may contain spaces and parentheses.
fn state_and_group(stat: &str) -> Option<(char, i32)> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    fields.next()?.parse().ok().map(|group| (state, group))
}

/// The `Pss:` line of an `smaps_rollup`, in bytes.
fn pss_bytes(rollup: &str) -> Option<u64> {
    let kib: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Watches one browser's process group against a memory limit, for machines without
/// cgroups for browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PssWatchdog {
    pgid: i32,
    limit: u64,
}

impl PssWatchdog {
    /// A watchdog for the process group `pgid` (the browser leads it) and `limit` bytes.
    pub fn new(pgid: i32, limit: u64) -> PssWatchdog {
        PssWatchdog { pgid, limit }
    }
}

impl MemoryWatch for PssWatchdog {
    /// Sums the group's PSS every [`PSS_POLL`] on the blocking pool and resolves once it
    /// is over the limit.
    fn watch(&self) -> BoxFuture<'static, MemoryBreach> {
        let PssWatchdog { pgid, limit } = *self;
        async move {
            loop {
                tokio::time::sleep(PSS_POLL).await;
                let Ok(bytes) = tokio::task::spawn_blocking(move || pss_of_group(pgid)).await
                else {
                    // The runtime is shutting down; nothing is left to watch for.
                    return std::future::pending().await;
                };
                if bytes > limit {
                    return MemoryBreach::Pss { bytes, limit };
                }
                debug!(pgid, pss_mib = bytes >> 20, "browser PSS within its limit");
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stat_and_smaps_rollup() {
        let stat = "1234 (chrome (renderer) x) S 1 1200 1200 0 -1 4194560 0";
        assert_eq!(state_and_group(stat), Some(('S', 1200)));
        let rollup = "00400000-7ffd [rollup]\nRss:  2048 kB\nPss:  1536 kB\nPss_Anon: 1000 kB\n";
        assert_eq!(pss_bytes(rollup), Some(1536 * 1024));
        assert_eq!(pss_bytes("Rss: 1 kB\n"), None);
    }

    #[test]
    fn this_process_group_has_a_pss() {
        let own = nix::unistd::getpgrp().as_raw();
        assert!(pss_of_group(own) > 0, "the test process itself counts");
        assert_eq!(pss_of_group(i32::MAX), 0, "no such group");
    }
}
