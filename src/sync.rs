//! Locking shared by the modules that guard plain data with a `std::sync::Mutex`.
//!
//! Owns one policy only: a poisoned lock is still used, because every critical section in
//! ingot leaves its data consistent, and a gateway that stops serving after one panic would
//! strand every live session.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking over the guard of a poisoned lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
