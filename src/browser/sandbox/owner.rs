//! Who owns a browser's directories: giving them to the browser's user (mode 0700), giving
//! them back to the gateway, removing trees the gateway no longer owns, and keeping the data
//! directory closed to browsers beyond the paths they must traverse.
//!
//! Owns ownership and modes only; never follows a symbolic link a browser could have
//! planted (every change is `lchown` or applies to a directory found without following
//! links). Blocking: call off the async runtime.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

/// A user and group id.
pub(crate) type Owner = (u32, u32);

/// The gateway's own effective user and group.
pub(crate) fn gateway_owner() -> Owner {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// Creates `dir` (and its parents), mode 0700, and gives it to `owner` when there is one.
pub(crate) fn own_dir(dir: &Path, owner: Option<Owner>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if let Some((uid, gid)) = owner {
        lchown(dir, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Gives every entry of the tree at `root` to `owner`, without following links; a directory
/// also gets its owner's read, write and search bits, so the gateway can then walk and
/// remove it without `CAP_DAC_OVERRIDE`. Nothing to do when `root` does not exist.
pub(crate) fn reclaim_tree(root: &Path, owner: Owner) -> io::Result<()> {
    let (uid, gid) = owner;
    let mut pending = vec![root.to_path_buf()];
    let mut first_error = None;
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if (meta.uid(), meta.gid()) != owner
            && let Err(e) = lchown(&path, Some(uid), Some(gid))
        {
            first_error.get_or_insert(e);
            continue;
        }
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o700 != 0o700 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o700))?;
        }
        match std::fs::read_dir(&path) {
            Ok(entries) => pending.extend(entries.flatten().map(|e| e.path())),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes the tree at `root`; when the gateway may not (its entries belong to a browser's
/// user and it lacks `CAP_DAC_OVERRIDE`), it takes the tree back first. A missing tree is
/// not an error.
pub(crate) fn remove_tree(root: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            reclaim_tree(root, gateway_owner())?;
            std::fs::remove_dir_all(root)
        }
        Err(e) => Err(e),
    }
}

/// Lets browsers of other users traverse `dirs` (mode 0711: search, but no listing) and
/// takes every permission but the owner's from the regular files directly in `data_dir`
/// (the usage database, its journal, the lock), which a browser could otherwise read by
/// name. `private` directories get 0700. Only what the gateway owns is changed.
pub(crate) fn harden(
    data_dir: &Path,
    traversed: &[PathBuf],
    private: &[PathBuf],
) -> io::Result<()> {
    let me = gateway_owner().0;
    let set_mode = |path: &Path, mode: u32| -> io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.uid() == me && meta.mode() & 0o7777 != mode => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    };
    for dir in std::iter::once(data_dir).chain(traversed.iter().map(PathBuf::as_path)) {
        set_mode(dir, 0o711)?;
    }
    for dir in private {
        set_mode(dir, 0o700)?;
    }
    for entry in std::fs::read_dir(data_dir)?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && meta.uid() == me && meta.mode() & 0o077 != 0 {
            let mode = meta.mode() & 0o700;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// The first directory above `path` (exclusive) that users other than its owner cannot
/// search (no `o+x`), if any: a browser running as another user could not reach `path`.
pub(crate) fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    path.ancestors().skip(1).find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        (meta.mode() & 0o001 == 0).then(|| dir.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_given_and_taken_back_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        let root = tmp.path().join("root");
        own_dir(&root.join("a/b"), None).unwrap();
        std::fs::write(root.join("a/b/f"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/link")).unwrap();
        std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        let me = gateway_owner();
        reclaim_tree(&root, me).unwrap();
        let mode = std::fs::metadata(root.join("a")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "a directory gets its owner's bits back");
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(outside.exists(), "a link's target is never touched");
        remove_tree(&root).unwrap();
    }

    #[test]
    fn hardening_closes_the_data_directory_to_listing_and_its_files_to_others() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let sessions = data.join("sessions");
        let partial = data.join("files/.partial");
        std::fs::create_dir_all(&sessions).unwrap();
        std::fs::create_dir_all(&partial).unwrap();
        let db = data.join("usage.sqlite3");
        std::fs::write(&db, b"").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        harden(
            &data,
            &[sessions.clone(), data.join("files")],
            std::slice::from_ref(&partial),
        )
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!((mode(&data), mode(&sessions)), (0o711, 0o711));
        assert_eq!((mode(&partial), mode(&db)), (0o700, 0o600));
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(closed_ancestor(&sessions), Some(tmp.path().to_path_buf()));
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
