//! The data directory's lock: one gateway per data directory, so that the start-up sweep
//! can never kill the browsers of another running gateway.
//!
//! Owns creating the directory and holding `<data_dir>/ingot.lock`; it reads and writes
//! nothing else there.

use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::GatewayError;

/// Holds the exclusive lock until dropped.
pub(super) struct DataDirLock {
    _lock: Flock<std::fs::File>,
}

/// Creates the data directory if needed and locks it for this process.
pub(super) fn claim(data_dir: &Path) -> Result<DataDirLock, GatewayError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        GatewayError::DataDir(format!(
            "cannot create data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join("ingot.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| GatewayError::DataDir(format!("cannot open {}: {e}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(DataDirLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(GatewayError::DataDir(format!(
            "another ingot is using data directory {}; give each gateway its own --data-dir",
            data_dir.display()
        ))),
        Err((_, e)) => Err(GatewayError::DataDir(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}
