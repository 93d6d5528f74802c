//! Where a task's outcome goes: the [`Outcome`] a worker sent back, the
//! [`Completion`] that receives it, and the [`Sink`] a task carries to name
//! its receiver.

use super::cell_chunks::ChunkRc;
use crate::error::Error;
use crate::shm::ring::{Claimed, Consumer};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

/// What a worker sent back for one task, before decoding.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The encoded result.
    Ok(crate::wire::Payload),
    /// The task failed.
    Err(Error),
}

/// Something that receives task outcomes. `tag` tells apart the tasks of one
/// receiver (the chunks of a `map`).
pub(super) trait Completion: Send + Sync {
    /// Delivers one outcome. Runs in the parent, outside the pool's lock.
    fn complete(&self, tag: u64, outcome: Outcome);

    /// Copies a successful result straight out of the result ring it
    /// arrived in, if this receiver can (a `map` of plain results taking
    /// its next chunk): no copy of it into a buffer first. Runs under the
    /// pool's lock, before the record is released: copy and validate, call
    /// nothing. When it returns true the result is delivered as
    /// `Outcome::Ok` of an empty payload, which the receiver knows to skip.
    fn absorb(&self, tag: u64, ring: &Consumer, record: &Claimed) -> bool {
        let _ = (tag, ring, record);
        false
    }

    /// Whether delivering an outcome here is over in moments, whatever it
    /// is: no callback, no decoder of the user's, nothing that may block.
    /// Waiters need not be told when such a delivery starts (they would
    /// only help collect while it lasts), only when it ends; nor is the
    /// delivering thread marked as running the pool's code (nothing of the
    /// user's runs that could wait on the pool).
    fn delivers_at_once(&self) -> bool {
        false
    }
}

/// Where a task's outcome goes: a receiver shared by many tasks (a map's
/// collector, an `imap`'s chunk or channel, a remote task's callback), or
/// the result cell of one task (`apply_async`, `apply`), held by a thin
/// pointer into its [`ChunkRc`] slot: no `Arc` to allocate per task.
///
/// The thin variant is two words and the shared one three (its tag), so a
/// `Sink` is as large as the `Arc<dyn Completion>` and tag it replaced.
pub(super) enum Sink {
    /// A receiver of several tasks, told apart by `tag`.
    Shared {
        target: Arc<dyn Completion>,
        tag: u64,
    },
    /// One task's own receiver (its tag is 0).
    Thin(ThinSink),
}

impl Sink {
    /// A sink to a shared receiver.
    pub(super) fn shared(target: Arc<dyn Completion>, tag: u64) -> Self {
        Self::Shared { target, tag }
    }

    /// A sink to one task's receiver in a chunk slot, holding one of its
    /// references.
    pub(super) fn thin<C: Completion + 'static>(target: ChunkRc<C>) -> Self {
        Self::Thin(ThinSink {
            target: target.into_raw(),
            vtable: &ThinVtable {
                complete: complete_raw::<C>,
                absorb: absorb_raw::<C>,
                delivers_at_once: delivers_at_once_raw::<C>,
                drop: drop_raw::<C>,
            },
        })
    }

    /// [`Completion::complete`]: delivers the outcome, then lets go of the
    /// receiver (the last reference to a result nobody took drops it here).
    pub(super) fn complete(self, outcome: Outcome) {
        match &self {
            Sink::Shared { target, tag } => target.complete(*tag, outcome),
            // SAFETY: `target` is the reference `thin` gave up, to a
            // `ChunkRc` of the type `vtable` was made for, alive as long as
            // `self`.
            Sink::Thin(thin) => unsafe { (thin.vtable.complete)(thin.target, outcome) },
        }
    }

    /// [`Completion::absorb`].
    pub(super) fn absorb(&self, ring: &Consumer, record: &Claimed) -> bool {
        match self {
            Sink::Shared { target, tag } => target.absorb(*tag, ring, record),
            // SAFETY: as in `complete`.
            Sink::Thin(thin) => unsafe { (thin.vtable.absorb)(thin.target, ring, record) },
        }
    }

    /// [`Completion::delivers_at_once`].
    pub(super) fn delivers_at_once(&self) -> bool {
        match self {
            Sink::Shared { target, .. } => target.delivers_at_once(),
            // SAFETY: as in `complete`.
            Sink::Thin(thin) => unsafe { (thin.vtable.delivers_at_once)(thin.target) },
        }
    }
}

/// One task's receiver, type-erased: a reference to a `ChunkRc<C>` given
/// up by `into_raw`, and the functions of its `C`.
pub(super) struct ThinSink {
    target: NonNull<()>,
    vtable: &'static ThinVtable,
}

/// A [`ThinSink`]'s functions, for one type of receiver. Each takes the
/// sink's `target` and must be called with the `ChunkRc` type it was made
/// for, while the sink holds its reference.
struct ThinVtable {
    complete: unsafe fn(NonNull<()>, Outcome),
    absorb: unsafe fn(NonNull<()>, &Consumer, &Claimed) -> bool,
    delivers_at_once: unsafe fn(NonNull<()>) -> bool,
    drop: unsafe fn(NonNull<()>),
}

// SAFETY: made only from a `ChunkRc<C>` with `C: Completion`, which is
// `Send + Sync`: the sink is that reference, type-erased.
unsafe impl Send for ThinSink {}
// SAFETY: as `Send`; `&ThinSink` only reaches `&C`.
unsafe impl Sync for ThinSink {}

impl Drop for ThinSink {
    fn drop(&mut self) {
        // SAFETY: the reference `Sink::thin` gave up, taken back once here.
        unsafe { (self.vtable.drop)(self.target) }
    }
}

/// # Safety
///
/// `raw` is a live reference given up by `ChunkRc::<C>::into_raw`.
unsafe fn complete_raw<C: Completion>(raw: NonNull<()>, outcome: Outcome) {
    // SAFETY: the caller's promise; the sink keeps it alive during the call.
    unsafe { ChunkRc::<C>::borrow_raw(raw) }.complete(0, outcome)
}

/// # Safety
///
/// As [`complete_raw`].
unsafe fn absorb_raw<C: Completion>(raw: NonNull<()>, ring: &Consumer, record: &Claimed) -> bool {
    // SAFETY: as in `complete_raw`.
    unsafe { ChunkRc::<C>::borrow_raw(raw) }.absorb(0, ring, record)
}

/// # Safety
///
/// As [`complete_raw`].
unsafe fn delivers_at_once_raw<C: Completion>(raw: NonNull<()>) -> bool {
    // SAFETY: as in `complete_raw`.
    unsafe { ChunkRc::<C>::borrow_raw(raw) }.delivers_at_once()
}

/// # Safety
///
/// As [`complete_raw`], and the reference is not used again.
unsafe fn drop_raw<C: Completion>(raw: NonNull<()>) {
    // SAFETY: the caller's promise: taken back once.
    drop(unsafe { ChunkRc::<C>::from_raw(raw) })
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Shared { tag, .. } => f
                .debug_struct("Sink::Shared")
                .field("tag", tag)
                .finish_non_exhaustive(),
            Sink::Thin(_) => f.debug_struct("Sink::Thin").finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_is_three_words() {
        assert_eq!(
            std::mem::size_of::<Sink>(),
            3 * std::mem::size_of::<usize>()
        );
    }

    /// Counts what it is told.
    #[derive(Default)]
    struct Tally {
        completed: std::sync::atomic::AtomicU64,
    }

    impl Completion for Tally {
        fn complete(&self, tag: u64, outcome: Outcome) {
            assert!(matches!(outcome, Outcome::Err(Error::Cancelled)));
            self.completed
                .fetch_add(tag + 1, std::sync::atomic::Ordering::Relaxed);
        }
        fn delivers_at_once(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_thin_sink_delivers_to_its_cell_and_lets_go_of_it() {
        let cell = ChunkRc::new(Tally::default());
        let sink = Sink::thin(cell.clone());
        assert!(sink.delivers_at_once());
        sink.complete(Outcome::Err(Error::Cancelled));
        let dropped = Sink::thin(cell.clone());
        drop(dropped);
        let shared = Sink::shared(Arc::new(Tally::default()), 4);
        assert!(shared.delivers_at_once());
        shared.complete(Outcome::Err(Error::Cancelled));
        assert_eq!(
            cell.completed.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "tag 0"
        );
    }
}
