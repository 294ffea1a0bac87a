//! Finding the executables: full Chromium, the headless shell and `Xvfb`.
//!
//! Owns the search order only; it starts nothing.

use std::path::{Path, PathBuf};

use super::ChromiumNotFound;

/// Absolute paths tried first, best first. Debian's `/usr/bin/chromium` is a shell wrapper
/// that adds flags and stderr noise, so the real binary behind it wins.
const KNOWN_PATHS: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
/// Names looked up on `PATH` after that.
const PATH_NAMES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];
/// Debian's `chromium-headless-shell`: its real binary first, as for full Chromium.
const SHELL_PATHS: &[&str] = &[
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/bin/chromium-headless-shell",
];
/// The shell's names on `PATH` (Chrome for Testing calls it `chrome-headless-shell`).
const SHELL_NAMES: &[&str] = &["chromium-headless-shell", "chrome-headless-shell"];
/// Debian's `xvfb`.
const XVFB_PATHS: &[&str] = &["/usr/bin/Xvfb"];
const XVFB_NAMES: &[&str] = &["Xvfb"];

/// Returns the full Chromium to run, or a message that says how to install one.
pub fn find_chromium(explicit: Option<&Path>) -> Result<PathBuf, ChromiumNotFound> {
    find(explicit, KNOWN_PATHS, PATH_NAMES)
}

/// Returns the headless shell: `explicit` when given, else the first one found.
pub(super) fn find_shell(explicit: Option<&Path>) -> Result<PathBuf, ChromiumNotFound> {
    find(explicit, SHELL_PATHS, SHELL_NAMES)
}

/// Returns `Xvfb`: `explicit` when given, else the first one found.
pub(super) fn find_xvfb(explicit: Option<&Path>) -> Result<PathBuf, ChromiumNotFound> {
    find(explicit, XVFB_PATHS, XVFB_NAMES)
}

fn find(
    explicit: Option<&Path>,
    known: &[&str],
    names: &[&str],
) -> Result<PathBuf, ChromiumNotFound> {
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    find_in(explicit, known, names, &search_path)
}

fn find_in(
    explicit: Option<&Path>,
    known: &[&str],
    names: &[&str],
    search_path: &std::ffi::OsStr,
) -> Result<PathBuf, ChromiumNotFound> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(ChromiumNotFound::NotExecutable(path.to_path_buf()))
        };
    }
    for candidate in known {
        let path = Path::new(candidate);
        if is_executable(path) {
            return Ok(path.to_path_buf());
        }
    }
    for dir in std::env::split_paths(search_path) {
        for name in names {
            let path = dir.join(name);
            if is_executable(&path) {
                return Ok(path);
            }
        }
    }
    Err(ChromiumNotFound::Nowhere)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_must_be_executable() {
        let err = find_chromium(Some(Path::new("/nonexistent/chromium"))).unwrap_err();
        assert!(matches!(err, ChromiumNotFound::NotExecutable(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/chromium"), "{err}");
        assert_eq!(
            find_chromium(Some(Path::new("/bin/sh"))).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn nothing_found_names_the_package() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_in(None, &[], PATH_NAMES, empty.path().as_os_str()).unwrap_err();
        assert!(matches!(err, ChromiumNotFound::Nowhere), "{err}");
        assert!(
            err.to_string().contains("apt-get install -y chromium"),
            "{err}"
        );
    }

    #[test]
    fn path_lookup_finds_chromium_browser() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("chromium-browser");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(
            find_in(None, &[], PATH_NAMES, dir.path().as_os_str()).unwrap(),
            exe
        );
        // The shell is never taken for full Chromium, nor the other way round.
        let shell = dir.path().join("chromium-headless-shell");
        std::fs::write(&shell, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&shell, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(
            find_in(None, &[], SHELL_NAMES, dir.path().as_os_str()).unwrap(),
            shell
        );
        assert_eq!(
            find_in(None, &[], PATH_NAMES, dir.path().as_os_str()).unwrap(),
            exe
        );
    }
}
