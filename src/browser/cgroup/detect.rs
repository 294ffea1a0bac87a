//! Finding where this gateway may make cgroups for its browsers, and making its parent group.
//!
//! Reads `/proc/self/mountinfo` and `/proc/self/cgroup`, and creates one directory per
//! hierarchy: `ingot-<hash of the data directory>` under this process's own group. On cgroup
//! v2 it also enables the `memory` and `pids` controllers for that group's children, which
//! may move the gateway into a leaf of its own group (`ingot-gateway`): v2 does not delegate
//! controllers from a group that holds processes. It must not touch any other group.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// What this machine offers for capping a browser's memory and tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// cgroup v2 (unified): each browser gets a child of `parent`, which has the `memory`
    /// and `pids` controllers enabled for its children.
    V2 {
        /// The gateway's parent group (a directory in the cgroup file system).
        parent: PathBuf,
    },
    /// cgroup v1: separate `memory` and `pids` hierarchies; each browser gets a child of
    /// both parents.
    V1 {
        /// The gateway's parent group in the `memory` hierarchy.
        memory: PathBuf,
        /// The gateway's parent group in the `pids` hierarchy.
        pids: PathBuf,
        /// Whether swap is accounted (`memory.memsw.limit_in_bytes`), so that it can be
        /// capped too.
        memsw: bool,
    },
    /// No cgroups for browsers: why, naming what is missing. Memory is then watched by
    /// the PSS watchdog and tasks are not capped.
    Unavailable {
        /// Why, for the start-up log.
        reason: String,
    },
}

impl CgroupSupport {
    /// Whether browsers can be put in cgroups.
    pub fn is_available(&self) -> bool {
        !matches!(self, CgroupSupport::Unavailable { .. })
    }

    /// The parent groups, one per hierarchy (none when unavailable).
    pub fn parents(&self) -> Vec<&Path> {
        match self {
            CgroupSupport::V2 { parent } => vec![parent],
            CgroupSupport::V1 { memory, pids, .. } => vec![memory, pids],
            CgroupSupport::Unavailable { .. } => vec![],
        }
    }

    /// Says at start-up what was found; loudly when browsers cannot be capped.
    pub fn log(&self) {
        match self {
            CgroupSupport::V2 { parent } => info!(
                parent = %parent.display(),
                "cgroup v2: each browser gets its own group with memory.max and pids.max"
            ),
            CgroupSupport::V1 {
                memory,
                pids,
                memsw,
            } => info!(
                memory = %memory.display(),
                pids = %pids.display(),
                swap_capped = memsw,
                "cgroup v1: each browser gets its own memory and pids groups"
            ),
            CgroupSupport::Unavailable { reason } => warn!(
                %reason,
                "CGROUPS UNAVAILABLE: browsers' tasks are not capped (no --session-pids-max), and \
                 --session-memory-max is enforced by a PSS watchdog that polls every 500 ms"
            ),
        }
    }
}

/// Finds the cgroup hierarchies this process may use and makes the gateway's parent group
/// in them, named after `data_dir`. Blocking (file system). Logs what it found.
pub fn detect(data_dir: &Path) -> CgroupSupport {
    let support = detect_quietly(data_dir);
    support.log();
    support
}

/// [`detect`] without the log line.
pub fn detect_quietly(data_dir: &Path) -> CgroupSupport {
    let read = |p: &str| std::fs::read_to_string(p);
    let (mountinfo, own) = match (read("/proc/self/mountinfo"), read("/proc/self/cgroup")) {
        (Ok(m), Ok(c)) => (m, c),
        (Err(e), _) | (_, Err(e)) => {
            return unavailable(format!("cannot read /proc/self/mountinfo or cgroup: {e}"));
        }
    };
    let name = parent_name(data_dir);
    let mounts = parse_mountinfo(&mountinfo);
    let groups = parse_own_groups(&own);
    let v1_memory = own_dir_v1(&mounts, &groups, "memory");
    let v1_pids = own_dir_v1(&mounts, &groups, "pids");
    match (v1_memory, v1_pids) {
        (Some(memory), Some(pids)) => {
            return match (memory, pids) {
                (Ok(memory), Ok(pids)) => setup_v1(&memory, &pids, &name),
                (Err(reason), _) | (_, Err(reason)) => unavailable(reason.to_string()),
            };
        }
        (Some(_), None) | (None, Some(_)) => {
            return unavailable(
                "cgroup v1 mounts only one of the memory and pids controllers; both are needed"
                    .into(),
            );
        }
        (None, None) => {}
    }
    match own_dir_v2(&mounts, &groups) {
        Some(Ok(own)) => setup_v2(&own, &name),
        Some(Err(reason)) => unavailable(reason.to_string()),
        None => unavailable("no cgroup file system is mounted".into()),
    }
}

fn unavailable(reason: String) -> CgroupSupport {
    CgroupSupport::Unavailable { reason }
}

/// `ingot-` and the first 12 hex digits of the SHA-256 of the (absolute) data directory:
/// the same across restarts, so that the start-up sweep finds a predecessor's groups, and
/// distinct for gateways on different data directories.
pub fn parent_name(data_dir: &Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("ingot-{hex}")
}

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// The group of the hierarchy mounted there (`/` unless a subtree is bind-mounted).
    root: String,
    /// Where it is mounted.
    point: PathBuf,
    /// `None` for cgroup2; the controllers of a v1 hierarchy.
    controllers: Option<Vec<String>>,
    read_only: bool,
}

/// The cgroup mounts listed in `/proc/self/mountinfo`.
pub(super) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut tail = right.split(' ');
            let fstype = tail.next()?;
            let _source = tail.next()?;
            let super_options = tail.next().unwrap_or("");
            let mount_options = fields.get(5).copied().unwrap_or("");
            let read_only = mount_options.split(',').any(|o| o == "ro")
                || super_options.split(',').any(|o| o == "ro");
            let controllers = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(super_options.split(',').map(str::to_owned).collect()),
                _ => return None,
            };
            Some(Mount {
                root: unescape(fields.get(3)?),
                point: PathBuf::from(unescape(fields.get(4)?)),
                controllers,
                read_only,
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's groups from `/proc/self/cgroup`: (controllers, path), the controllers
/// empty for v2's `0::` line.
pub(super) fn parse_own_groups(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            Some((controllers, path.to_owned()))
        })
        .collect()
}

/// Where this process's own group is in the mount: the mount point plus the group's path
/// below the mount's root. `None` when the group is outside what is mounted.
fn below_mount(mount: &Mount, own: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rest = own.strip_prefix(root)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = rest.trim_start_matches('/');
    Some(if rest.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rest)
    })
}

/// This process's own group in the v1 hierarchy of `controller`: `None` when no v1
/// hierarchy has it, `Some(Err)` when it has but cannot be used.
fn own_dir_v1(
    mounts: &[Mount],
    groups: &[(Vec<String>, String)],
    controller: &'static str,
) -> Option<Result<PathBuf, Unusable>> {
    let has = |list: &[String]| list.iter().any(|c| c == controller);
    let mount = mounts
        .iter()
        .find(|m| m.controllers.as_deref().is_some_and(has))?;
    Some(own_dir_in(
        mount,
        groups.iter().find(|(c, _)| has(c)),
        controller,
    ))
}

/// This process's own group in the cgroup2 mount, if there is one.
fn own_dir_v2(
    mounts: &[Mount],
    groups: &[(Vec<String>, String)],
) -> Option<Result<PathBuf, Unusable>> {
    let mount = mounts.iter().find(|m| m.controllers.is_none())?;
    let own = groups.iter().find(|(c, _)| c.is_empty());
    Some(own_dir_in(mount, own, "cgroup2"))
}

/// Why a mounted hierarchy cannot hold the browsers' groups.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Unusable {
    /// It is mounted read-only.
    #[error("the {what} cgroup file system at {} is mounted read-only (a container without a writable cgroupfs?)", point.display())]
    ReadOnly { what: &'static str, point: PathBuf },
    /// This process has no group in it.
    #[error("/proc/self/cgroup names no {what} group for this process")]
    NoGroup { what: &'static str },
    /// This process's group is not in the mounted part.
    #[error("this process's {what} group {group} is outside the mounted part of the hierarchy ({root} at {})", point.display())]
    Outside {
        what: &'static str,
        group: String,
        root: String,
        point: PathBuf,
    },
}

fn own_dir_in(
    mount: &Mount,
    own: Option<&(Vec<String>, String)>,
    what: &'static str,
) -> Result<PathBuf, Unusable> {
    if mount.read_only {
        let point = mount.point.clone();
        return Err(Unusable::ReadOnly { what, point });
    }
    let Some((_, path)) = own else {
        return Err(Unusable::NoGroup { what });
    };
    below_mount(mount, path).ok_or_else(|| Unusable::Outside {
        what,
        group: path.clone(),
        root: mount.root.clone(),
        point: mount.point.clone(),
    })
}

/// Makes `dir` (and nothing above it) unless it exists.
fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn setup_v1(memory_own: &Path, pids_own: &Path, name: &str) -> CgroupSupport {
    let memory = memory_own.join(name);
    let pids = pids_own.join(name);
    for dir in [&memory, &pids] {
        if let Err(e) = make_dir(dir) {
            return unavailable(format!(
                "cannot create the cgroup {}: {e} (no delegation to this user?)",
                dir.display()
            ));
        }
    }
    if !memory.join("memory.limit_in_bytes").exists() || !pids.join("pids.max").exists() {
        return unavailable(format!(
            "{} or {} lacks memory.limit_in_bytes or pids.max",
            memory.display(),
            pids.display()
        ));
    }
    let memsw = memory.join("memory.memsw.limit_in_bytes").exists();
    CgroupSupport::V1 {
        memory,
        pids,
        memsw,
    }
}

fn setup_v2(own: &Path, name: &str) -> CgroupSupport {
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    let offered: Vec<&str> = controllers.split_whitespace().collect();
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !offered.contains(c))
        .collect();
    if !missing.is_empty() {
        return unavailable(format!(
            "cgroup v2: the {} controller(s) are not delegated to {} (cgroup.controllers: {:?}); \
             with systemd, set Delegate=yes",
            missing.join(" and "),
            own.display(),
            controllers.trim()
        ));
    }
    if let Err(e) = enable_for_children(own) {
        return unavailable(format!(
            "cgroup v2: cannot enable memory and pids for the children of {}: {e}",
            own.display()
        ));
    }
    let parent = own.join(name);
    if let Err(e) = make_dir(&parent).and_then(|()| enable_controllers(&parent)) {
        return unavailable(format!(
            "cgroup v2: cannot create {} with memory and pids for its children: {e}",
            parent.display()
        ));
    }
    CgroupSupport::V2 { parent }
}

/// Enables `memory` and `pids` in `own`'s `cgroup.subtree_control`. A group that holds
/// processes cannot (v2's "no internal processes" rule, `EBUSY`): then this process moves
/// into a leaf of its own group, `ingot-gateway`, and tries again. Another process left in
/// `own` still makes it fail.
fn enable_for_children(own: &Path) -> io::Result<()> {
    match enable_controllers(own) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let leaf = own.join("ingot-gateway");
            make_dir(&leaf)?;
            std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())?;
            info!(leaf = %leaf.display(), "moved the gateway into a leaf of its own cgroup, so that the group can hold its browsers' groups");
            enable_controllers(own)
        }
        other => other,
    }
}

fn enable_controllers(group: &Path) -> io::Result<()> {
    let control = group.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control)?;
    let has = |c: &str| enabled.split_whitespace().any(|e| e == c);
    if has("memory") && has("pids") {
        return Ok(());
    }
    std::fs::write(control, "+memory +pids")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - ext4 /dev/sda1 rw";

    const OWN: &str = "\
8:pids:/
4:memory:/process_api/4fbab9
2:cpu,cpuacct:/
0::/user.slice/session-1.scope";

    #[test]
    fn reads_cgroup_mounts_and_own_groups() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 4, "{mounts:?}");
        assert_eq!(
            mounts[0].controllers.as_deref(),
            Some(&["rw".to_owned(), "memory".to_owned()][..])
        );
        assert_eq!(mounts[3].controllers, None, "cgroup2");
        let groups = parse_own_groups(OWN);
        assert_eq!(groups[2].0, vec!["cpu".to_owned(), "cpuacct".to_owned()]);
        assert_eq!(
            own_dir_v1(&mounts, &groups, "memory"),
            Some(Ok(PathBuf::from(
                "/sys/fs/cgroup/memory/process_api/4fbab9"
            )))
        );
        assert_eq!(
            own_dir_v1(&mounts, &groups, "pids"),
            Some(Ok(PathBuf::from("/sys/fs/cgroup/pids")))
        );
        assert_eq!(own_dir_v1(&mounts, &groups, "blkio"), None);
        assert_eq!(
            own_dir_v2(&mounts, &groups),
            Some(Ok(PathBuf::from(
                "/sys/fs/cgroup/unified/user.slice/session-1.scope"
            )))
        );
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
    }

    #[test]
    fn a_read_only_or_foreign_hierarchy_is_refused_with_a_reason() {
        let ro = "41 31 0:38 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw";
        let groups = parse_own_groups("0::/");
        let err = own_dir_v2(&parse_mountinfo(ro), &groups)
            .expect("a cgroup2 mount")
            .expect_err("read-only");
        assert!(matches!(err, Unusable::ReadOnly { .. }), "{err}");
        assert!(err.to_string().contains("read-only"), "{err}");
        // A container that sees only its own subtree, bind-mounted.
        let bound = "41 31 0:38 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let mounts = parse_mountinfo(bound);
        assert_eq!(
            own_dir_v2(&mounts, &parse_own_groups("0::/docker/abc/inner")),
            Some(Ok(PathBuf::from("/sys/fs/cgroup/inner")))
        );
        let err = own_dir_v2(&mounts, &parse_own_groups("0::/docker/abcdef"))
            .expect("a cgroup2 mount")
            .expect_err("outside");
        assert!(matches!(err, Unusable::Outside { .. }), "{err}");
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn the_parent_is_named_after_the_data_directory() {
        let a = parent_name(Path::new("/nonexistent/a"));
        assert_eq!(a, parent_name(Path::new("/nonexistent/a")));
        assert_ne!(a, parent_name(Path::new("/nonexistent/b")));
        assert!(
            a.starts_with("ingot-") && a.len() == "ingot-".len() + 12,
            "{a}"
        );
    }
}
