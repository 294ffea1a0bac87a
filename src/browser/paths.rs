//! Where a local host keeps each browser's files: profiles under `<data_dir>/sessions`, and
//! scratch directories (`TMPDIR`) under a short root in `/tmp`.
//!
//! A leaf of the browser module: the launcher and the start-up sweep both name these
//! places, and neither owns the other.

use std::path::{Path, PathBuf};

/// Prefix of every per-session directory under `<data-dir>/sessions`, so that the start-up
/// sweep recognises what a previous run left.
pub(super) const SESSIONS_SUBDIR: &str = "sessions";

/// The sessions' files (`crate::files`), under the data directory. A confined browser's
/// downloads directory is one of its entries; the start-up sweep gives back those a killed
/// predecessor's browsers still own.
pub(super) const FILES_SUBDIR: &str = "files";

/// Where sessions' `TMPDIR`s live: `/tmp/ingot-<hash of the data directory>`. Chromium puts
/// a Unix socket there, and socket paths are limited to 107 bytes, so this must stay short
/// however deep the data directory is. The hash keeps gateways with different data
/// directories apart, and lets the start-up sweep find what its predecessor left.
pub fn scratch_root(data_dir: &Path) -> PathBuf {
    // FNV-1a: stable across Rust releases, unlike the standard library's hasher.
    let hash = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    PathBuf::from(format!("/tmp/ingot-{:08x}", hash as u32))
}
