//! Mutexes that survive a panicking holder: every lock in corepool goes
//! through [`lock`], so a user callback, `Wire` impl or iterator that panics
//! while a lock is held never makes the state behind it unreachable.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering from poisoning: the data behind corepool's locks is
/// kept consistent by the code that holds them, not by the poison flag.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
