//! Where a queue lives: [`QueueMemory`], a bounds-checked view of the bytes
//! that hold a queue's header, control words and slots, in a shared segment
//! in production and on the heap (`HeapQueue`, and `HeapRings` for an
//! unbounded queue's rings) in unit tests.

#[cfg(test)]
use super::bytes_for;
use crate::shm::event::EventCount;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Where a queue's header, control words and slots live.
///
/// Copyable raw pointers: the owner of the memory (a
/// [`SharedSegment`](crate::shm::handle::SharedSegment) or the heap buffer of
/// a test) must outlive every `QueueMemory` made from it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueMemory {
    base: *mut u8,
    len: usize,
}

// SAFETY: QueueMemory is a pointer into memory designed for concurrent use
// from several processes; all accesses go through atomics or explicit copies
// into slots their copier owns, never through references to the bytes.
unsafe impl Send for QueueMemory {}
// SAFETY: as above.
unsafe impl Sync for QueueMemory {}

impl QueueMemory {
    /// # Safety
    ///
    /// `base` must be 8-byte aligned and point to `len` bytes valid for reads
    /// and writes for as long as this value or any copy of it is used. Other
    /// processes and threads may access the same memory concurrently, but
    /// only through a [`ByteQueue`](super::ByteQueue) on it.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Self {
        debug_assert!(base.cast::<u64>().is_aligned());
        Self { base, len }
    }

    /// Pointer to `offset`, checked against the length for `size` bytes.
    pub(super) fn at(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + size <= len, so the result stays inside the memory.
        Some(unsafe { self.base.add(offset) })
    }

    /// The memory from `offset` on (empty if `offset` lies past the end).
    pub(super) fn after(&self, offset: usize) -> Self {
        let offset = offset.min(self.len);
        // SAFETY: offset <= len: the result stays inside the memory, and
        // lives as long as it.
        let base = unsafe { self.base.add(offset) };
        Self {
            base,
            len: self.len - offset,
        }
    }

    pub(super) fn word64(&self, offset: usize) -> &AtomicU64 {
        let p = self
            .at(offset, 8)
            .expect("word offsets are checked against the memory's size");
        // SAFETY: in bounds, 8-aligned (8-aligned base, offsets multiples of
        // 8), valid as long as `self` (`new`'s contract); every process
        // accesses it only atomically.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    pub(super) fn word32(&self, offset: usize) -> &AtomicU32 {
        let p = self
            .at(offset, 4)
            .expect("word offsets are checked against the memory's size");
        // SAFETY: as in `word64`, 4-aligned.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    pub(super) fn event(&self, at: usize) -> EventCount<'_> {
        EventCount::new(self.word32(at), self.word32(at + 4))
    }
}

/// Queue memory on the heap: for unit tests, under Miri as natively.
///
/// Held as a raw pointer, not a `Box`: moving a `Box` would reassert
/// unique ownership of the bytes and, under Miri's aliasing model, void the
/// pointers that [`QueueMemory`]s made from it hold.
#[cfg(test)]
#[derive(Debug)]
pub(super) struct HeapQueue {
    words: *mut [AtomicU64],
}

#[cfg(test)]
impl HeapQueue {
    /// Zeroed memory for a queue of `capacity` values of `message_bytes`.
    pub(super) fn new(capacity: usize, message_bytes: usize) -> Self {
        let bytes = bytes_for(capacity, message_bytes).expect("a test queue's size fits");
        let words: Box<[AtomicU64]> = (0..bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
        Self {
            words: Box::into_raw(words),
        }
    }

    /// The memory. Valid while `self` lives.
    pub(super) fn memory(&self) -> QueueMemory {
        // SAFETY: the words are 8-byte aligned, `8 * len` bytes long, and
        // live as long as `self` (callers keep it alive); atomics allow the
        // shared mutation.
        unsafe { QueueMemory::new(self.words.cast(), self.words.len() * 8) }
    }
}

#[cfg(test)]
impl Drop for HeapQueue {
    fn drop(&mut self) {
        // SAFETY: `self.words` came from `Box::into_raw` in `new` and is
        // freed only here.
        drop(unsafe { Box::from_raw(self.words) });
    }
}

/// An unbounded queue's rings on the heap, for unit tests (under Miri too):
/// ring `k` exists once [`ensure`](Self::ensure)d, as a file's range exists
/// once the file has grown over it.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct HeapRings {
    rings: std::sync::Mutex<Vec<Option<HeapBytes>>>,
    /// How many rings were given back (`punch`).
    pub(super) punched: std::sync::atomic::AtomicUsize,
}

/// One heap allocation, freed on drop (see [`HeapQueue`] for why raw).
#[cfg(test)]
#[derive(Debug)]
struct HeapBytes(*mut [AtomicU64]);

// SAFETY: a pointer to atomics, used as `HeapQueue`'s is.
#[cfg(test)]
unsafe impl Send for HeapBytes {}
// SAFETY: as above.
#[cfg(test)]
unsafe impl Sync for HeapBytes {}

#[cfg(test)]
impl Drop for HeapBytes {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `HeapRings::ensure`, freed only here.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

#[cfg(test)]
impl HeapRings {
    /// Makes ring `k` of `len` bytes exist (zeroed), if it does not yet.
    pub(super) fn ensure(&self, k: usize, len: usize) {
        let mut rings = crate::sync::lock(&self.rings);
        if rings.len() <= k {
            rings.resize_with(k + 1, || None);
        }
        if rings[k].is_none() {
            let words: Box<[AtomicU64]> = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
            rings[k] = Some(HeapBytes(Box::into_raw(words)));
        }
    }

    /// Ring `k`'s memory, if it exists and holds `len` bytes.
    pub(super) fn memory(&self, k: usize, len: usize) -> Option<QueueMemory> {
        let rings = crate::sync::lock(&self.rings);
        let bytes = rings.get(k)?.as_ref()?;
        (bytes.0.len() * 8 >= len).then(|| {
            // SAFETY: 8-aligned, `8 * len` bytes, alive until `self` drops
            // (rings are never freed before: `punch` only counts).
            unsafe { QueueMemory::new(bytes.0.cast(), len) }
        })
    }
}
