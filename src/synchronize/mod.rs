//! Python's `multiprocessing.synchronize`, crash-proof: [`Lock`], [`RLock`],
//! [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and
//! [`Barrier`], each a few words in its own sealed memfd segment, passed to
//! pool tasks and [`Process`](crate::Process) children like the other shared
//! objects (a clone, or a copy sent to a process, is the same object).
//!
//! What a dead process leaves behind:
//!
//! * a [`Lock`] or [`RLock`] it held is taken over by the next process that
//!   wants it, and that process learns it from
//!   [`LockGuard::previous_holder_died`]: the data the lock guards may be
//!   half-updated, just as after a robust mutex's `EOWNERDEAD`;
//! * a [`Barrier`] it was waiting at breaks: the other parties get
//!   [`Error::BrokenBarrier`](crate::Error::BrokenBarrier) instead of hanging;
//! * a [`Semaphore`] permit it held stays taken: a semaphore is a count
//!   without owners, as in POSIX and Python. A [`SemaphoreGuard`] gives its
//!   permit back when it drops, also when a panic unwinds.
//!
//! A holder is judged dead by its pid and the [owner tag](crate::shm::owner)
//! beside it (its start time, so that a reused pid is told apart); a holder
//! whose death cannot be established counts as alive. Waiters sleep on
//! futexes; those that must notice a death nobody announces (a lock's holder,
//! a barrier's parties) wake now and then to look, at most every
//! [`DEATH_CHECK_MAX`] and sooner at first.
//!
//! Each object holds one descriptor (its segment's memfd) and one mapping in
//! every process that has it (a [`Condition`], two: its own and its
//! lock's); so do a [`Value`](crate::Value) and an
//! [`AtomicValue`](crate::AtomicValue). Under `ulimit -n` 1024 that is
//! room for hundreds; past it, `new` is a typed
//! [`Error::SharedMemory`](crate::Error::SharedMemory) that says so.
//!
//! Every wait has a `_timeout` form (a [`Value`](crate::Value)'s `lock`,
//! `set` and `update` too), and every structure reads the shared
//! words as untrusted input: any value in them is handled without undefined
//! behaviour, panics or unbounded loops. One file per concept: `lock.rs`,
//! `semaphore.rs`, `event.rs`, `condition.rs`, `barrier.rs`; the layouts are
//! described in `docs/protocol.md`.

mod barrier;
mod condition;
mod event;
mod lock;
mod semaphore;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub(crate) use lock::my_thread_token;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};

use crate::error::Result;
use crate::shm::handle::SharedSegment;
use crate::wire::{decode_error, Encoder};
use std::ffi::CStr;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first interval at which a waiter looks whether a holder died.
const DEATH_CHECK_FIRST: Duration = Duration::from_millis(1);
/// The longest interval between two such looks: how long, at worst, a
/// process waits after the holder it waits for died.
pub(crate) const DEATH_CHECK_MAX: Duration = Duration::from_millis(50);

/// The next interval between death checks: doubles up to [`DEATH_CHECK_MAX`].
fn next_death_check(now: Duration) -> Duration {
    now.saturating_mul(2).min(DEATH_CHECK_MAX)
}

/// A shared segment seen as 32-bit words: what every synchronization object
/// is made of.
#[derive(Clone, Debug)]
struct Words {
    map: Arc<SharedSegment>,
}

impl Words {
    /// A new zeroed segment of `bytes` (a multiple of 4).
    fn create(name: &CStr, bytes: usize) -> Result<Self> {
        Ok(Self {
            map: SharedSegment::create(name, bytes)?,
        })
    }

    /// The word at byte `at`.
    ///
    /// Callers pass constant offsets, or slot offsets bounded by the
    /// object's size as checked at creation and decoding; an offset outside
    /// the segment is a bug, and is pulled back onto the last word (wrong,
    /// but never out of bounds) rather than panicking in library code.
    fn word(&self, at: usize) -> &AtomicU32 {
        let len = self.map.segment().len();
        debug_assert!(at % 4 == 0 && at + 4 <= len, "word {at} of {len} bytes");
        let at = at.min(len.saturating_sub(4)) & !3;
        // SAFETY: `at` is a multiple of 4 with `at + 4 <= len` (clamped just
        // above; every segment has at least 4 bytes, see `create` and
        // `decode`), so the word is inside the mapping and aligned (the
        // mapping is page-aligned, 8-aligned in Miri's stand-in). It lives as
        // long as `map`, to which the reference is tied, and every process
        // accesses it only atomically.
        unsafe { AtomicU32::from_ptr(self.map.base().add(at).cast()) }
    }

    /// Writes the handle: type `tag`, and `len` (the object's size parameter,
    /// such as a barrier's parties).
    fn encode(&self, tag: u64, len: u64, out: &mut Encoder) {
        self.map.encode(tag, len, out);
    }

    /// Reads a handle for a `T` with type `tag`, whose segment needs
    /// `bytes_for(len)` bytes (`None`: `len` is out of range).
    fn decode<T>(
        input: &mut &[u8],
        tag: u64,
        bytes_for: impl Fn(u64) -> Option<u64>,
    ) -> Result<(Self, u64)> {
        let (map, len) = SharedSegment::decode::<T>(input, tag, &bytes_for)?;
        let needed = bytes_for(len).ok_or_else(|| decode_error::<T>("length out of range"))?;
        if (map.segment().len() as u64) < needed.max(4) {
            return Err(decode_error::<T>("too small"));
        }
        Ok((Self { map }, len))
    }
}

/// What is left of `deadline`: `None` without a deadline, zero once passed.
fn left_until(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Whether `deadline` has passed.
fn passed(deadline: Option<Instant>) -> bool {
    left_until(deadline).is_some_and(|l| l.is_zero())
}
