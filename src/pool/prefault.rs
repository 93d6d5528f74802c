//! Faulting a `map`'s fresh output memory in on a helper thread, ahead of
//! the results decoded into it, so that the parent's critical path (the
//! thread decoding results) does not stop to have pages zeroed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Outputs smaller than this are faulted in by their decoder: a thread's
/// start costs more than what it would save.
const PREFAULT_FROM_BYTES: usize = 4 << 20;

/// Faulted in per step: one huge page where the kernel gave one, and the
/// longest a stop request waits.
const STEP_BYTES: usize = 2 << 20;

/// A thread faulting in a range of the parent's memory, front to back;
/// stopped and joined on drop.
pub(super) struct Prefault {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The process that started the thread: a `fork()`ed copy has no such
    /// thread to join.
    owner: u32,
}

impl Prefault {
    /// Starts faulting in the `len` bytes at `addr` (the unwritten capacity
    /// of a buffer that the caller owns until this is dropped). `None` for a
    /// small range, or if no thread could be started: the decoder then
    /// faults the pages in itself, as it always could.
    ///
    /// Faulting in changes no byte (see [`crate::sys::populate_write`]), so
    /// this is harmless even to memory written at the same time.
    pub(super) fn start(addr: usize, len: usize) -> Option<Self> {
        if len < PREFAULT_FROM_BYTES {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corepool-prefault".into())
            .spawn(move || {
                let end = addr.saturating_add(len);
                let mut at = addr;
                // Relaxed: the flag carries no data; it only ends the loop.
                while at < end && !stop_seen.load(Ordering::Relaxed) {
                    let step = STEP_BYTES.min(end - at);
                    if crate::sys::populate_write(at, step).is_err() {
                        return; // not supported here: the decoder faults
                    }
                    at += step;
                }
            })
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
            owner: crate::sys::current_pid(),
        })
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return;
        };
        if crate::sys::current_pid() == self.owner {
            let _ = thread.join();
        } else {
            std::mem::forget(thread); // a `fork()`ed copy: nothing to join
        }
    }
}

impl std::fmt::Debug for Prefault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefault").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Prefault;

    #[test]
    #[cfg_attr(miri, ignore = "Miri makes no madvise calls")]
    fn faulting_in_changes_nothing_written_before_or_during() {
        let mut out: Vec<u64> = Vec::with_capacity(2 << 20); // 16 MiB
        out.extend(0..1000);
        let addr = out.as_ptr() as usize;
        let bytes = out.capacity() * 8;
        let prefault = Prefault::start(addr, bytes).expect("a thread starts");
        out.extend(1000..(2 << 20));
        drop(prefault);
        assert!(out.iter().copied().eq(0..(2 << 20)));
        assert!(Prefault::start(addr, 4096).is_none(), "too small to bother");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri starts no processes")]
    fn large_maps_come_back_whole_and_in_order() {
        // 8 MiB of output: advised huge pages, faulted in ahead.
        let pool = crate::Pool::new(2).unwrap();
        let n = 1u64 << 20;
        let expect: Vec<u64> = (0..n).map(|x| x ^ 0x5a5a).collect();
        assert_eq!(pool.map(|x: u64| x ^ 0x5a5a, 0..n).unwrap(), expect);
        let pairs: Vec<(u64, u64)> = (0..n).map(|x| (x, 0x5a5a)).collect();
        assert_eq!(pool.starmap(|a: u64, b: u64| a ^ b, pairs).unwrap(), expect);
        let pending = pool.map_async(|x: u64| x ^ 0x5a5a, 0..n).unwrap();
        assert_eq!(pending.get().unwrap(), expect);
    }
}
