//! Names of session files: the one place that decides whether a path a client gave may name
//! a file inside a session's directory.
//!
//! A name is relative, `/`-separated, and can only ever point inside the session's
//! directory. Checked here, before anything touches the disk: no `.` or `..` component, no
//! absolute path, no NUL or other control character, no backslash, no empty component, and
//! bounded lengths. The one absolute form accepted is the session directory's own path (the
//! `path` a file is listed under, which `DOM.setFileInputFiles` takes), which is stripped.
//! A name for a new file (an upload) may also be at most [`MAX_DEPTH`] directories deep, so
//! that one upload cannot make hundreds of directories.

use std::path::{Path, PathBuf};

use super::FileError;

/// Longest name, in bytes.
pub(crate) const MAX_NAME: usize = 1024;
/// Most directories a new file's name may go down (`a/b/c.txt` goes down 2).
pub(crate) const MAX_DEPTH: usize = 8;
/// Longest component of a name, in bytes (most file systems' limit).
const MAX_COMPONENT: usize = 255;
/// Suffix of a download Chromium has not finished: such files are not listed.
pub(crate) const PARTIAL_DOWNLOAD: &str = ".crdownload";

/// A path that cannot name a session's file: the path as given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path {raw:?}: {why}")]
pub struct PathRefused {
    /// The path as the client gave it.
    pub raw: String,
    /// What is wrong with it.
    pub why: PathFault,
}

/// What is wrong with a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathFault {
    /// Empty.
    #[error("a file name is required")]
    Missing,
    /// Longer than [`MAX_NAME`].
    #[error("the name is too long")]
    TooLong,
    /// Starts with `/` (and is not under the session's directory).
    #[error("absolute paths are refused; give a path relative to the session's files")]
    Absolute,
    /// Holds a backslash.
    #[error("backslashes are refused; separate directories with /")]
    Backslash,
    /// Holds NUL or another control character.
    #[error("NUL and other control characters are refused")]
    Control,
    /// Has an empty component.
    #[error("empty path components (//, or a trailing /) are refused")]
    EmptyComponent,
    /// Has a `.` or `..` component.
    #[error(". and .. are refused")]
    Dots,
    /// A component is longer than the file systems take.
    #[error("a path component is too long")]
    ComponentTooLong,
    /// A new file this many directories deep, more than [`MAX_DEPTH`].
    #[error("{0} directory levels; a file may be at most {MAX_DEPTH} directories deep")]
    TooDeep(usize),
    /// A directory already has the name.
    #[error("a directory has this name")]
    Directory,
}

impl PathFault {
    /// This fault of path `raw`, as a [`FileError`].
    pub fn of(self, raw: &str) -> FileError {
        FileError::BadPath(PathRefused {
            raw: raw.to_owned(),
            why: self,
        })
    }
}

/// A checked, relative file name inside one session's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileName(String);

impl FileName {
    /// Checks `raw`, a name a client gave. `session_dir` is the directory it is relative
    /// to; `raw` may also be that directory's absolute path followed by a name.
    pub(crate) fn parse(raw: &str, session_dir: &Path) -> Result<FileName, FileError> {
        let prefix = format!("{}/", session_dir.display());
        let name = raw.strip_prefix(prefix.as_str()).unwrap_or(raw);
        check(name).map_err(|why| why.of(raw))?;
        Ok(FileName(name.to_owned()))
    }

    /// Checks `raw` as [`FileName::parse`] does, as the name of a file to create: it may
    /// also be at most [`MAX_DEPTH`] directories deep.
    pub(crate) fn parse_new(raw: &str, session_dir: &Path) -> Result<FileName, FileError> {
        let name = FileName::parse(raw, session_dir)?;
        let depth = name.0.matches('/').count();
        if depth > MAX_DEPTH {
            return Err(PathFault::TooDeep(depth).of(raw));
        }
        Ok(name)
    }

    /// The name, as clients see it (relative, `/`-separated).
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the file is, inside `session_dir`.
    pub(crate) fn under(&self, session_dir: &Path) -> PathBuf {
        session_dir.join(&self.0)
    }

    /// The name of a file found on disk at `relative` (inside a session's directory), if it
    /// is one clients may see.
    pub(crate) fn of_found(relative: &Path) -> Option<FileName> {
        let name = relative.to_str()?;
        (check(name).is_ok() && !name.ends_with(PARTIAL_DOWNLOAD))
            .then(|| FileName(name.to_owned()))
    }
}

fn check(name: &str) -> Result<(), PathFault> {
    if name.is_empty() {
        return Err(PathFault::Missing);
    }
    if name.len() > MAX_NAME {
        return Err(PathFault::TooLong);
    }
    if name.starts_with('/') {
        return Err(PathFault::Absolute);
    }
    if name.contains('\\') {
        return Err(PathFault::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(PathFault::Control);
    }
    for component in name.split('/') {
        match component {
            "" => return Err(PathFault::EmptyComponent),
            "." | ".." => return Err(PathFault::Dots),
            c if c.len() > MAX_COMPONENT => return Err(PathFault::ComponentTooLong),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<String, FileError> {
        FileName::parse(raw, Path::new("/data/files/abc")).map(|n| n.as_str().to_owned())
    }

    #[test]
    fn plain_and_nested_names_are_taken() {
        assert_eq!(parse("report.pdf").unwrap(), "report.pdf");
        assert_eq!(parse("a/b/c.txt").unwrap(), "a/b/c.txt");
        assert_eq!(parse(".env").unwrap(), ".env");
        assert_eq!(parse("name with spaces…").unwrap(), "name with spaces…");
    }

    #[test]
    fn the_session_directorys_own_absolute_path_is_stripped() {
        assert_eq!(parse("/data/files/abc/report.pdf").unwrap(), "report.pdf");
        assert!(parse("/data/files/abcd/report.pdf").is_err());
        assert!(parse("/data/files/abc/../x").is_err());
    }

    #[test]
    fn hostile_names_are_refused_with_the_reason() {
        let cases = [
            ("", "required"),
            ("../etc/passwd", ".."),
            ("a/../../b", ".."),
            ("./a", ". and .."),
            ("/etc/passwd", "absolute"),
            ("a\\..\\b", "backslash"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            ("a//b", "empty"),
            ("dir/", "empty"),
        ];
        for (raw, why) in cases {
            let err = parse(raw).unwrap_err();
            assert!(
                matches!(&err, FileError::BadPath(p) if p.raw == raw),
                "{err}"
            );
            assert!(err.to_string().contains(why), "{raw:?}: {err}");
        }
        assert!(parse(&"a".repeat(MAX_NAME + 1)).is_err());
        assert!(parse(&"a".repeat(MAX_COMPONENT + 1)).is_err());
    }

    #[test]
    fn new_files_are_at_most_eight_directories_deep() {
        let dir = Path::new("/data/files/abc");
        let deep = |levels: usize| format!("{}f.txt", "d/".repeat(levels));
        assert!(FileName::parse_new(&deep(MAX_DEPTH), dir).is_ok());
        let err = FileName::parse_new(&deep(MAX_DEPTH + 1), dir)
            .expect_err("too deep")
            .to_string();
        assert!(err.contains("at most 8 directories deep"), "{err}");
        assert!(
            FileName::parse(&deep(MAX_DEPTH + 1), dir).is_ok(),
            "an existing file's name is not bounded"
        );
        // The finding: a 1,022-byte path of one-letter directories.
        assert!(FileName::parse_new(&"a/".repeat(511)[..1021], dir).is_err());
    }

    #[test]
    fn unfinished_downloads_are_not_listed() {
        assert!(FileName::of_found(Path::new("x.pdf.crdownload")).is_none());
        assert!(FileName::of_found(Path::new("x.pdf")).is_some());
    }
}
