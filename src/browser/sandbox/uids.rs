//! The browsers' user ids: the configured range (`--browser-uids FIRST-LAST`) and the set
//! of ids free to hand out.
//!
//! Owns parsing the range, checking it against this user namespace's `uid_map`, and
//! allocation. An id goes back to the free set only through [`UidLease::release`], which the
//! launcher calls once the browser's processes are gone; a lease dropped without it keeps its
//! id out of use for the gateway's life. Gateways on one machine that share a range never
//! hand out the same id at once: a lease holds an exclusive `flock` on a file named after its
//! id in a directory every gateway of this user shares ([`lock_dir`]), and an id some process
//! still runs as is skipped. Starts nothing.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::sync::lock;

/// A range of user ids, both ends included; each browser runs as one of them, with the
/// group id of the same number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first id.
    pub first: u32,
    /// The last id (included).
    pub last: u32,
}

impl UidRange {
    /// How many ids the range holds.
    pub fn len(&self) -> usize {
        (self.last - self.first) as usize + 1
    }

    /// Always false: a range holds at least one id.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `uid` is in the range.
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }

    /// Whether every id of the range is mapped in the user namespace whose `uid_map` is
    /// `map` (lines of `inside outside count`).
    pub fn mapped_in(&self, map: &str) -> bool {
        let mut mapped: Vec<(u64, u64)> = map
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace().map(str::parse::<u64>);
                let inside = fields.next()?.ok()?;
                let _outside = fields.next()?.ok()?;
                let count = fields.next()?.ok()?;
                Some((inside, inside + count))
            })
            .collect();
        mapped.sort_unstable();
        // Walk the sorted extents from the range's first id, as far as they reach.
        let mut next = u64::from(self.first);
        for (start, end) in mapped {
            if start <= next && end > next {
                next = end;
            }
        }
        next > u64::from(self.last)
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A `--browser-uids` value that is not a usable range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUidRange {
    /// Not `FIRST-LAST`.
    #[error("{0:?} is not a range of user ids FIRST-LAST, such as 600000-600999")]
    Syntax(String),
    /// FIRST is above LAST.
    #[error("{0:?}: the first id is larger than the last")]
    Reversed(String),
    /// Reaches the kernel's "no id" values.
    #[error("{0:?}: ids must be below 4294967294")]
    TooHigh(String),
}

impl FromStr for UidRange {
    type Err = BadUidRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadUidRange::Syntax(s.to_owned());
        let (first, last) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(BadUidRange::Reversed(s.to_owned()));
        }
        // 65534 and up to 2^32-1 are the kernel's "no id" values.
        if last >= u32::MAX - 1 {
            return Err(BadUidRange::TooHigh(s.to_owned()));
        }
        Ok(UidRange { first, last })
    }
}

/// The ids of a range not in use by a browser, least recently used first, so that an id is
/// reused as late as possible.
#[derive(Debug)]
pub struct UidPool {
    range: UidRange,
    free: Mutex<VecDeque<u32>>,
    /// Where the ids' lock files are; `None` takes no lock (tests).
    locks: Option<PathBuf>,
}

/// The directory where gateways of this user lock the ids they hand out: `/run/ingot-uids`
/// (root's), else one in the temporary directory. Created mode 0700.
pub(super) fn lock_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let me = nix::unistd::geteuid().as_raw();
    let candidates = [
        PathBuf::from("/run/ingot-uids"),
        std::env::temp_dir().join(format!("ingot-uids-{me}")),
    ];
    let mut last = None;
    for dir in candidates {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = std::fs::symlink_metadata(&dir)?;
                if meta.is_dir() && meta.uid() == me && meta.mode() & 0o077 == 0 {
                    return Ok(dir);
                }
                last = Some(std::io::Error::other(format!(
                    "{} is not a private directory of uid {me}",
                    dir.display()
                )));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no directory for the uid locks")))
}

impl UidPool {
    /// Every id of `range` except those in `busy` (ids that processes on this machine already
    /// run as), locked in `locks` while handed out.
    pub fn new(range: UidRange, busy: &[u32], locks: Option<PathBuf>) -> Arc<UidPool> {
        let free = (range.first..=range.last)
            .filter(|uid| !busy.contains(uid))
            .collect();
        Arc::new(UidPool {
            range,
            free: Mutex::new(free),
            locks,
        })
    }

    /// The range the ids come from.
    pub fn range(&self) -> UidRange {
        self.range
    }

    /// How many ids are free now.
    pub fn free(&self) -> usize {
        lock(&self.free).len()
    }

    /// Takes the least recently used free id that no other gateway holds and `running`
    /// says no process runs as, or `None` when there is none. Blocking (a lock file, and
    /// whatever `running` reads).
    pub fn allocate(self: &Arc<Self>, running: impl Fn(u32) -> bool) -> Option<UidLease> {
        let tries = self.free();
        for _ in 0..tries {
            let uid = lock(&self.free).pop_front()?;
            let held = match &self.locks {
                Some(dir) => match try_lock(dir, uid) {
                    Some(file) => Some(file),
                    None => {
                        lock(&self.free).push_back(uid);
                        continue;
                    }
                },
                None => None,
            };
            if running(uid) {
                lock(&self.free).push_back(uid);
                continue;
            }
            return Some(UidLease {
                uid,
                pool: self.clone(),
                released: false,
                _held: held,
            });
        }
        None
    }
}

/// An exclusive, non-blocking `flock` on `<dir>/<uid>`, or `None` when another holds it (or
/// the file cannot be opened).
fn try_lock(dir: &Path, uid: u32) -> Option<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(uid.to_string()))
        .ok()?;
    // SAFETY: flock on a descriptor this function owns.
    #[allow(unsafe_code)]
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

/// One browser's user id, out of the free set until [`UidLease::release`].
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    pool: Arc<UidPool>,
    released: bool,
    /// The id's lock file, locked for as long as the lease lives.
    _held: Option<File>,
}

impl UidLease {
    /// The user id (and group id).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Gives the id back. Call only once no process runs as it any more.
    pub fn release(mut self) {
        self.released = true;
        lock(&self.pool.free).push_back(self.uid);
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        if !self.released {
            warn!(
                uid = self.uid,
                "a browser's user id is kept out of use: its processes were not seen to end"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        let r: UidRange = "600000-600999".parse().unwrap();
        assert_eq!((r.first, r.last, r.len()), (600_000, 600_999, 1000));
        assert_eq!(r.to_string(), "600000-600999");
        assert_eq!(" 5 - 5 ".parse::<UidRange>().unwrap().len(), 1);
        for bad in [
            "",
            "600000",
            "a-b",
            "10-5",
            "-5",
            "5-",
            "1-4294967295",
            "1-2-3",
        ] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_range_must_lie_inside_the_uid_map() {
        let r: UidRange = "600000-600999".parse().unwrap();
        assert!(r.mapped_in("         0          0 4294967295\n"));
        assert!(
            !r.mapped_in("0 1000 1\n"),
            "a rootless container maps one id"
        );
        assert!(!r.mapped_in("0 100000 600500\n"), "half the range");
        assert!(
            r.mapped_in("600500 1 500\n0 100000 600500\n"),
            "two extents"
        );
        assert!(!r.mapped_in(""));
    }

    #[test]
    fn ids_are_handed_out_once_and_come_back_only_when_released() {
        let pool = UidPool::new("10-12".parse().unwrap(), &[11], None);
        assert_eq!(pool.free(), 2, "a busy id is skipped");
        let a = pool.allocate(|_| false).unwrap();
        let b = pool.allocate(|_| false).unwrap();
        assert_eq!((a.uid(), b.uid()), (10, 12));
        assert!(pool.allocate(|_| false).is_none(), "all in use");
        drop(b);
        assert!(
            pool.allocate(|_| false).is_none(),
            "a dropped lease keeps its id out"
        );
        a.release();
        assert_eq!(pool.allocate(|_| false).map(|l| l.uid()), Some(10));
    }

    #[test]
    fn the_least_recently_used_id_goes_first() {
        let pool = UidPool::new("1-3".parse().unwrap(), &[], None);
        let first = pool.allocate(|_| false).unwrap();
        first.release();
        let order: Vec<u32> = (0..3)
            .map(|_| pool.allocate(|_| false).unwrap())
            .map(|l| {
                let uid = l.uid();
                std::mem::forget(l);
                uid
            })
            .collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn gateways_sharing_a_range_never_hold_the_same_id() {
        let locks = tempfile::tempdir().unwrap();
        let range: UidRange = "1-2".parse().unwrap();
        let one = UidPool::new(range, &[], Some(locks.path().to_path_buf()));
        let other = UidPool::new(range, &[], Some(locks.path().to_path_buf()));
        let a = one.allocate(|_| false).unwrap();
        let b = other.allocate(|_| false).unwrap();
        assert_ne!(a.uid(), b.uid(), "the other gateway skips a held id");
        assert!(other.allocate(|_| false).is_none());
        a.release();
        assert_eq!(other.allocate(|_| false).map(|l| l.uid()), Some(1));
    }

    #[test]
    fn an_id_a_process_still_runs_as_is_skipped() {
        let pool = UidPool::new("1-2".parse().unwrap(), &[], None);
        assert_eq!(pool.allocate(|uid| uid == 1).map(|l| l.uid()), Some(2));
        assert!(pool.allocate(|uid| uid == 1).is_none());
    }
}
