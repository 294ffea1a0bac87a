//! Session files: what a session's pages downloaded and what its clients uploaded, one
//! directory per session under `<data_dir>/files`, kept for a retention period after the
//! session ends and then deleted.
//!
//! Owns that directory tree: naming files safely ([`name`]), listing, writing (uploads go to
//! `<data_dir>/files/.partial` and are renamed into place only once whole), the caps on
//! what one session's files may take ([`SessionCaps`]: bytes and entries, counting what
//! is on disk, uploads and the page's downloads alike), reading, deleting, the zip archive
//! ([`archive`]), and the retention sweep. Knows nothing of HTTP, tenants or sessions'
//! states: callers decide who may touch which session's files, and say when a session ends
//! ([`FileStore::session_ended`]).

pub(crate) mod archive;
pub(crate) mod name;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};
use uuid::Uuid;

pub(crate) use name::FileName;

/// Free space an upload must leave on the disk, so that browsers can still start.
pub(crate) const MIN_FREE_AFTER_UPLOAD: u64 = 64 << 20;
/// Where uploads are written until they are whole.
const PARTIAL_DIR: &str = ".partial";
/// Suffix of the marker whose modification time says when a session ended.
const ENDED_SUFFIX: &str = ".ended";
/// Most files a listing or an archive walks, so that a huge tree cannot stall the gateway.
const MAX_FILES: usize = 10_000;

/// What one session's files may take on disk, unless configured otherwise: 1 GiB.
pub(crate) const DEFAULT_SESSION_BYTES: u64 = 1 << 30;
/// How many entries (files and directories) one session's files may hold, unless
/// configured otherwise.
pub(crate) const DEFAULT_SESSION_ENTRIES: u64 = 1000;

/// What one session's files may take: bytes and entries (files and directories), counting
/// everything in its directory, the page's downloads included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionCaps {
    /// Most bytes (`--max-session-files-bytes`).
    pub bytes: u64,
    /// Most entries (`--max-session-files`).
    pub entries: u64,
}

impl Default for SessionCaps {
    fn default() -> Self {
        SessionCaps {
            bytes: DEFAULT_SESSION_BYTES,
            entries: DEFAULT_SESSION_ENTRIES,
        }
    }
}

/// What a session's directory holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DirUsage {
    bytes: u64,
    entries: u64,
}

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The name is not acceptable (see [`name`]).
    #[error(transparent)]
    BadPath(name::PathRefused),
    /// No such file.
    #[error("no file {0:?} in this session")]
    NotFound(String),
    /// The upload is larger than the limit (`--max-file-bytes`).
    #[error("the file is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The session's files would take more than their cap (`--max-session-files-bytes`).
    #[error(
        "the session's files would take more than {limit} bytes (--max-session-files-bytes); \
         {used} are in use: delete some of its files first"
    )]
    SessionBytes {
        /// The cap.
        limit: u64,
        /// What the session's files took before this upload.
        used: u64,
    },
    /// The session's files would hold more than their cap of entries (`--max-session-files`).
    #[error(
        "the session's files would hold more than {limit} entries, files and directories \
         together (--max-session-files); {used} are there: delete some of its files first"
    )]
    SessionEntries {
        /// The cap.
        limit: u64,
        /// What the session's directory held before this upload.
        used: u64,
    },
    /// The disk would keep less than [`MIN_FREE_AFTER_UPLOAD`] free.
    #[error("not enough free disk space for this file")]
    NoSpace,
    /// The file system failed.
    #[error("{0}")]
    Io(String),
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        FileError::Io(e.to_string())
    }
}

/// A file as clients see it.
#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    /// Its name inside the session's files.
    pub name: FileName,
    /// Its absolute path on the machine that runs the browser (what `DOM.setFileInputFiles`
    /// takes).
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// Every session's files on this node.
#[derive(Debug)]
pub(crate) struct FileStore {
    root: PathBuf,
    retention: Duration,
    max_file: u64,
    caps: SessionCaps,
    /// Held while an upload is checked against the caps and moved into place, so that two
    /// uploads finishing together cannot both take the last room.
    placing: Arc<tokio::sync::Mutex<()>>,
}

impl FileStore {
    /// A store under `root` (`<data_dir>/files`) that keeps an ended session's files for
    /// `retention` and takes uploads up to `max_file` bytes. Creates `root`.
    pub(crate) fn new(
        root: PathBuf,
        retention: Duration,
        max_file: u64,
    ) -> std::io::Result<FileStore> {
        std::fs::create_dir_all(root.join(PARTIAL_DIR))?;
        Ok(FileStore {
            root,
            retention,
            max_file,
            caps: SessionCaps::default(),
            placing: Arc::default(),
        })
    }

    /// The same store with `caps` on each session's files.
    pub(crate) fn with_caps(mut self, caps: SessionCaps) -> FileStore {
        self.caps = caps;
        self
    }

    /// How often expired files are looked for: often enough that files outlive their
    /// retention by at most a quarter of it (and at most 30 s).
    pub(crate) fn sweep_every(&self) -> Duration {
        (self.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Session `id`'s directory (which may not exist).
    pub(crate) fn dir(&self, id: Uuid) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Creates session `id`'s directory, where its browser saves downloads, empty: whatever
    /// a directory of that name held (a start that failed under the same id, or anything
    /// else) is removed first, so a new session never sees another's files. Returns it.
    pub(crate) async fn prepare(&self, id: Uuid) -> Result<PathBuf, FileError> {
        let dir = self.dir(id);
        let marker = self.ended_marker(id);
        let created = dir.clone();
        tokio::task::spawn_blocking(move || {
            // Not a directory (a symbolic link, say): removed, never followed.
            if std::fs::symlink_metadata(&created).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(&created)?;
            }
            std::fs::create_dir_all(&created)?;
            empty_dir(&created)?;
            match std::fs::remove_file(marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(dir)
    }

    /// Checks a name a client gave for session `id`.
    pub(crate) fn name(&self, id: Uuid, raw: &str) -> Result<FileName, FileError> {
        FileName::parse(raw, &self.dir(id))
    }

    /// Checks a name a client gave for a new file of session `id`: as [`FileStore::name`],
    /// and at most [`name::MAX_DEPTH`] directories deep.
    pub(crate) fn new_name(&self, id: Uuid, raw: &str) -> Result<FileName, FileError> {
        FileName::parse_new(raw, &self.dir(id))
    }

    /// Session `id`'s files, newest first (none when it has no directory).
    pub(crate) async fn list(&self, id: Uuid) -> Result<Vec<FileInfo>, FileError> {
        let dir = self.dir(id);
        let mut files = tokio::task::spawn_blocking(move || walk(&dir))
            .await
            .map_err(|e| FileError::Io(e.to_string()))??;
        files.sort_by(|a, b| {
            b.modified
                .cmp(&a.modified)
                .then_with(|| a.name.as_str().cmp(b.name.as_str()))
        });
        Ok(files)
    }

    /// Opens file `name` of session `id` for reading.
    pub(crate) async fn open(
        &self,
        id: Uuid,
        name: &FileName,
    ) -> Result<(tokio::fs::File, FileInfo), FileError> {
        let path = name.under(&self.dir(id));
        let not_found = || FileError::NotFound(name.as_str().to_owned());
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|_| not_found())?;
        if !meta.is_file() || name.as_str().ends_with(name::PARTIAL_DOWNLOAD) {
            return Err(not_found());
        }
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| not_found())?;
        let info = FileInfo {
            name: name.clone(),
            path,
            size: meta.len(),
            modified: meta.modified()?,
        };
        Ok((file, info))
    }

    /// Deletes file `name` of session `id`.
    pub(crate) async fn delete(&self, id: Uuid, name: &FileName) -> Result<(), FileError> {
        let path = name.under(&self.dir(id));
        match tokio::fs::symlink_metadata(&path).await {
            Ok(meta) if meta.is_file() || meta.is_symlink() => {
                tokio::fs::remove_file(&path).await?;
                Ok(())
            }
            _ => Err(FileError::NotFound(name.as_str().to_owned())),
        }
    }

    /// Deletes every file of session `id` (the directory stays, for later downloads).
    pub(crate) async fn delete_all(&self, id: Uuid) -> Result<(), FileError> {
        let dir = self.dir(id);
        tokio::task::spawn_blocking(move || empty_dir(&dir))
            .await
            .map_err(|e| FileError::Io(e.to_string()))??;
        Ok(())
    }

    /// Starts an upload to session `id`: the bytes go to a file of their own until
    /// [`Upload::finish`] moves it into place. An upload dropped unfinished leaves nothing.
    /// Refused at once when the session's files are already at a cap.
    pub(crate) async fn begin_upload(&self, id: Uuid) -> Result<Upload, FileError> {
        let room = free_bytes(&self.root)
            .await?
            .saturating_sub(MIN_FREE_AFTER_UPLOAD);
        if room == 0 {
            return Err(FileError::NoSpace);
        }
        let used = self.usage(id).await?;
        self.caps.check(used, 0, 1)?;
        let temp = self.root.join(PARTIAL_DIR).join(Uuid::new_v4().to_string());
        let file = tokio::fs::File::create(&temp).await?;
        Ok(Upload {
            file: Some(file),
            temp: Some(temp),
            dir: self.dir(id),
            written: 0,
            limit: self.max_file,
            room,
            caps: self.caps,
            used_before: used,
            placing: self.placing.clone(),
        })
    }

    /// What session `id`'s directory holds now (counting stops just past the entry cap).
    async fn usage(&self, id: Uuid) -> Result<DirUsage, FileError> {
        let dir = self.dir(id);
        let stop_after = self.caps.entries.saturating_add(1);
        tokio::task::spawn_blocking(move || dir_usage(&dir, stop_after))
            .await
            .map_err(|e| FileError::Io(e.to_string()))?
            .map_err(FileError::from)
    }

    /// Says that session `id` ended: its files are deleted once the retention is over.
    pub(crate) async fn session_ended(&self, id: Uuid) {
        if tokio::fs::metadata(self.dir(id)).await.is_err() {
            return;
        }
        if let Err(e) = tokio::fs::write(self.ended_marker(id), b"").await {
            warn!(session_id = %id, error = %e, "cannot note when the session's files expire");
        }
    }

    fn ended_marker(&self, id: Uuid) -> PathBuf {
        self.root.join(format!("{id}{ENDED_SUFFIX}"))
    }

    /// Deletes the files of sessions that ended more than the retention ago. A directory of
    /// a session that `running` does not know (its node stopped while it ran) counts as
    /// ended now. Returns the bytes the remaining files take.
    pub(crate) async fn sweep(&self, running: impl Fn(Uuid) -> bool + Send + 'static) -> u64 {
        let root = self.root.clone();
        let retention = self.retention;
        tokio::task::spawn_blocking(move || sweep_root(&root, retention, running))
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "the session files sweep failed");
                0
            })
    }

    /// Removes uploads a stopped predecessor left unfinished.
    pub(crate) async fn clear_partial(&self) {
        let partial = self.root.join(PARTIAL_DIR);
        if let Err(e) = tokio::task::spawn_blocking(move || empty_dir(&partial)).await {
            warn!(error = %e, "cannot clear unfinished uploads");
        }
    }
}

impl SessionCaps {
    /// Refuses adding `bytes` and `entries` to a session's files that hold `used`.
    fn check(&self, used: DirUsage, bytes: u64, entries: u64) -> Result<(), FileError> {
        if used.entries.saturating_add(entries) > self.entries {
            return Err(FileError::SessionEntries {
                limit: self.entries,
                used: used.entries,
            });
        }
        if used.bytes.saturating_add(bytes) > self.bytes {
            return Err(FileError::SessionBytes {
                limit: self.bytes,
                used: used.bytes,
            });
        }
        Ok(())
    }
}

/// An upload being written.
#[derive(Debug)]
pub(crate) struct Upload {
    file: Option<tokio::fs::File>,
    temp: Option<PathBuf>,
    dir: PathBuf,
    written: u64,
    limit: u64,
    room: u64,
    caps: SessionCaps,
    /// What the session's files held when the upload began.
    used_before: DirUsage,
    placing: Arc<tokio::sync::Mutex<()>>,
}

impl Upload {
    /// Appends `chunk`; fails once the file is over the limit, the session's files over
    /// their cap, or the disk is full.
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(FileError::TooLarge(self.limit));
        }
        // Larger than the whole cap, it can never fit. Whether it fits beside the others (it
        // may replace one, whose name may come after the bytes) is checked once it is whole.
        if self.written > self.caps.bytes {
            return Err(FileError::SessionBytes {
                limit: self.caps.bytes,
                used: self.used_before.bytes,
            });
        }
        if self.written > self.room {
            return Err(FileError::NoSpace);
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| FileError::Io("the upload is closed".into()))?;
        file.write_all(chunk).await?;
        Ok(())
    }

    /// Moves the whole upload into place as `name`, replacing a file of that name.
    pub(crate) async fn finish(mut self, name: &FileName) -> Result<FileInfo, FileError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| FileError::Io("the upload is closed".into()))?;
        file.flush().await?;
        drop(file);
        let path = name.under(&self.dir);
        // Checked and placed under one lock: what is on disk now (downloads included), less
        // the file this one replaces, plus this one and the directories it needs.
        let placing = self.placing.clone();
        let _placing = placing.lock().await;
        self.check_caps(name).await?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
            return Err(name::PathFault::Directory.of(name.as_str()));
        }
        let temp = self.temp.take().unwrap_or_default();
        if let Err(e) = tokio::fs::rename(&temp, &path).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e.into());
        }
        give_to_dir_owner(&self.dir, &path).await?;
        let meta = tokio::fs::metadata(&path).await?;
        Ok(FileInfo {
            name: name.clone(),
            path,
            size: meta.len(),
            modified: meta.modified()?,
        })
    }
}

impl Upload {
    /// Refuses the upload when, in place as `name`, it would take the session's files past
    /// a cap.
    async fn check_caps(&self, name: &FileName) -> Result<(), FileError> {
        let (dir, relative) = (self.dir.clone(), PathBuf::from(name.as_str()));
        let stop_after = self.caps.entries.saturating_add(1);
        let (used, placing) = tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((dir_usage(&dir, stop_after)?, placement(&dir, &relative)))
        })
        .await
        .map_err(|e| FileError::Io(e.to_string()))??;
        let kept = DirUsage {
            bytes: used.bytes.saturating_sub(placing.replaced_bytes),
            entries: used.entries,
        };
        self.caps.check(kept, self.written, placing.new_entries)
    }
}

/// What moving a file into place as one name changes in a session's directory.
struct Placement {
    /// Entries it adds: the directories it needs that do not exist, and the file itself
    /// unless it replaces one.
    new_entries: u64,
    /// Bytes of the file it replaces.
    replaced_bytes: u64,
}

/// What placing a file at `relative` inside `dir` adds. Blocking.
fn placement(dir: &Path, relative: &Path) -> Placement {
    let mut new_entries = 0;
    let mut current = dir.to_path_buf();
    let mut components = relative.components().peekable();
    let mut replaced_bytes = 0;
    while let Some(component) = components.next() {
        current.push(component);
        let meta = std::fs::symlink_metadata(&current);
        match (&meta, components.peek().is_none()) {
            (Ok(m), true) if m.is_file() => replaced_bytes = m.len(),
            (Ok(_), _) => {}
            (Err(_), _) => new_entries += 1,
        }
    }
    Placement {
        new_entries,
        replaced_bytes,
    }
}

/// The bytes of the regular files and the count of all entries under `dir`, without
/// following symbolic links; counting stops once `stop_after` entries are seen. Blocking.
fn dir_usage(dir: &Path, stop_after: u64) -> std::io::Result<DirUsage> {
    let mut usage = DirUsage::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            usage.entries += 1;
            if usage.entries >= stop_after {
                return Ok(usage);
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                usage.bytes = usage.bytes.saturating_add(meta.len());
            }
        }
    }
    Ok(usage)
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            debug!(path = %temp.display(), "an unfinished upload is removed");
            self.file.take();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn_blocking(move || std::fs::remove_file(temp))),
                Err(_) => drop(std::fs::remove_file(temp)),
            }
        }
    }
}

/// Gives `path` (and the directories between it and `dir`) to `dir`'s owner when that is
/// not the gateway: a session's browser may run as a user of its own, which owns the
/// session's directory and must be able to read what is uploaded for it.
async fn give_to_dir_owner(dir: &Path, path: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::{MetadataExt, lchown};
    let (dir, path) = (dir.to_path_buf(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let owner = std::fs::metadata(&dir)?;
        let mut current = path.as_path();
        while current != dir && current.starts_with(&dir) {
            if std::fs::symlink_metadata(current)?.uid() != owner.uid() {
                lchown(current, Some(owner.uid()), Some(owner.gid()))?;
            }
            current = current.parent().unwrap_or(&dir);
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|e| FileError::Io(e.to_string()))??;
    Ok(())
}

/// Free bytes for unprivileged writers on `dir`'s file system.
async fn free_bytes(dir: &Path) -> Result<u64, FileError> {
    let dir = dir.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&dir))
        .await
        .map_err(|e| FileError::Io(e.to_string()))?
        .map_err(|e| FileError::Io(e.to_string()))?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Every visible regular file under `dir`, without following symbolic links.
fn walk(dir: &Path) -> Result<Vec<FileInfo>, FileError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let found = path.strip_prefix(dir).ok().and_then(FileName::of_found);
            let (Some(name), true) = (found, kind.is_file()) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            files.push(FileInfo {
                name,
                path,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
            if files.len() >= MAX_FILES {
                return Ok(files);
            }
        }
    }
    Ok(files)
}

/// Removes everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn sweep_root(root: &Path, retention: Duration, running: impl Fn(Uuid) -> bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut kept = 0;
    for entry in entries.flatten() {
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| Uuid::parse_str(n).ok())
        else {
            continue;
        };
        let dir = entry.path();
        let marker = root.join(format!("{id}{ENDED_SUFFIX}"));
        let ended = std::fs::metadata(&marker).and_then(|m| m.modified());
        match ended {
            Ok(at) if at.elapsed().unwrap_or_default() >= retention => {
                let removed =
                    std::fs::remove_dir_all(&dir).and_then(|()| std::fs::remove_file(&marker));
                match removed {
                    Ok(()) => {
                        info!(session_id = %id, "the session's files are past their retention and were deleted")
                    }
                    Err(e) => {
                        warn!(session_id = %id, error = %e, "cannot delete the session's expired files")
                    }
                }
                continue;
            }
            Err(_) if !running(id) => {
                let _ = std::fs::write(&marker, b"");
            }
            _ => {}
        }
        kept += walk(&dir)
            .map(|files| files.iter().map(|f| f.size).sum::<u64>())
            .unwrap_or(0);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(retention: Duration, max_file: u64) -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("files"), retention, max_file).unwrap();
        (dir, store)
    }

    async fn upload(store: &FileStore, id: Uuid, name: &str, bytes: &[u8]) -> FileInfo {
        let mut upload = store.begin_upload(id).await.unwrap();
        upload.write(bytes).await.unwrap();
        upload.finish(&store.name(id, name).unwrap()).await.unwrap()
    }

    #[tokio::test]
    async fn uploads_list_read_and_delete() {
        let (_dir, store) = store(Duration::from_secs(3600), 1 << 20);
        let id = Uuid::new_v4();
        store.prepare(id).await.unwrap();
        let info = upload(&store, id, "a/b.txt", b"hello").await;
        assert_eq!(info.size, 5);
        assert_eq!(info.path, store.dir(id).join("a/b.txt"));
        upload(&store, id, "c.txt", b"x").await;
        std::fs::write(store.dir(id).join("d.crdownload"), b"partial").unwrap();
        let names: Vec<_> = store
            .list(id)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name.as_str().to_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"a/b.txt".to_owned()));
        let name = store.name(id, "a/b.txt").unwrap();
        let (_, opened) = store.open(id, &name).await.unwrap();
        assert_eq!(opened.size, 5);
        store.delete(id, &name).await.unwrap();
        assert!(matches!(
            store.delete(id, &name).await,
            Err(FileError::NotFound(_))
        ));
        store.delete_all(id).await.unwrap();
        assert!(store.list(id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_upload_over_the_limit_fails_and_leaves_nothing() {
        let (_dir, store) = store(Duration::from_secs(3600), 4);
        let id = Uuid::new_v4();
        let mut upload = store.begin_upload(id).await.unwrap();
        assert!(matches!(
            upload.write(b"12345").await,
            Err(FileError::TooLarge(4))
        ));
        drop(upload);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let partial = std::fs::read_dir(store.root.join(PARTIAL_DIR)).unwrap();
        assert_eq!(partial.count(), 0);
    }

    #[tokio::test]
    async fn files_are_kept_for_the_retention_after_the_session_ends() {
        let (_dir, store) = store(Duration::from_millis(200), 1 << 20);
        let (ended, running, orphan) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for id in [ended, running, orphan] {
            store.prepare(id).await.unwrap();
            upload(&store, id, "f", b"abc").await;
        }
        store.session_ended(ended).await;
        let is_running = move |id| id == running;
        assert_eq!(store.sweep(is_running).await, 9, "nothing expired yet");
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The orphan's clock started at the first sweep; the ended one's at its end.
        assert_eq!(store.sweep(is_running).await, 3);
        assert!(!store.dir(ended).exists() && !store.dir(orphan).exists());
        assert!(store.dir(running).exists());
    }
}
