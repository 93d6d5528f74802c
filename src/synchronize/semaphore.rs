//! [`Semaphore`] and [`BoundedSemaphore`]: a count of permits shared between
//! processes, with an event count to sleep on until one is released.
//!
//! A semaphore is a count without owners, as in POSIX and Python: a permit
//! taken by a process that dies stays taken. A [`SemaphoreGuard`] gives its
//! permit back when it drops, also when a panic unwinds.

use super::{passed, Words};
use crate::error::{Error, Result};
use crate::shm::event::EventCount;
use crate::shm::handle::type_tag;
use crate::shm::park::{deadline_after, Spinner};
use crate::wire::{Encoder, Wire};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const COUNT_AT: usize = 0;
const SEQUENCE_AT: usize = 4;
const SLEEPERS_AT: usize = 8;
const BYTES: usize = 64;

/// The count and its event count; `limit` is the most permits it may hold.
#[derive(Clone, Debug)]
struct Permits {
    words: Words,
    limit: u32,
}

impl Permits {
    fn new(name: &std::ffi::CStr, value: u32, limit: u32) -> Result<Self> {
        let words = Words::create(name, BYTES)?;
        // Relaxed: nobody else sees the segment yet; handing it over (the
        // encoder, or a clone across threads) publishes it.
        words.word(COUNT_AT).store(value, Ordering::Relaxed);
        Ok(Self { words, limit })
    }

    fn count(&self) -> &AtomicU32 {
        self.words.word(COUNT_AT)
    }

    fn event(&self) -> EventCount<'_> {
        EventCount::new(self.words.word(SEQUENCE_AT), self.words.word(SLEEPERS_AT))
    }

    fn try_take(&self) -> bool {
        // Acquire pairs with the Release update in `give`: what the releaser
        // did before giving the permit back is visible to its taker.
        self.count()
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |c| c.checked_sub(1))
            .is_ok()
    }

    fn take(&self, deadline: Option<Instant>) -> Result<()> {
        let mut spinner = Spinner::new();
        loop {
            if self.try_take() {
                return Ok(());
            }
            if spinner.spin() {
                continue;
            }
            if passed(deadline) {
                return Err(Error::Timeout);
            }
            // Relaxed: a hint; `try_take` decides.
            let _ = self
                .event()
                .wait(deadline, None, || self.count().load(Ordering::Relaxed) > 0);
        }
    }

    fn give(&self) -> Result<()> {
        let limit = self.limit;
        // Release pairs with the Acquire update in `try_take`.
        self.count()
            .fetch_update(Ordering::Release, Ordering::Relaxed, |c| {
                (c < limit).then(|| c + 1)
            })
            .map_err(|_| Error::SemaphoreOverflow { limit })?;
        self.event().notify();
        Ok(())
    }

    fn value(&self) -> u32 {
        // Relaxed: a snapshot, stale as soon as it is read.
        self.count().load(Ordering::Relaxed)
    }
}

/// A taken permit of a [`Semaphore`] or [`BoundedSemaphore`]: given back when
/// dropped, also when a panic unwinds.
///
/// ```
/// let s = corepool::Semaphore::new(1).unwrap();
/// let permit = s.acquire();
/// assert!(s.try_acquire().is_none());
/// drop(permit);
/// assert_eq!(s.value(), 1);
/// ```
#[derive(Debug)]
#[must_use = "the permit is given back as soon as the guard drops"]
pub struct SemaphoreGuard<'a> {
    permits: &'a Permits,
}

impl SemaphoreGuard<'_> {
    /// Keeps the permit taken: nothing is given back when the guard goes
    /// (give it back later with `release`).
    ///
    /// ```
    /// let s = corepool::Semaphore::new(1).unwrap();
    /// s.acquire().forget();
    /// assert_eq!(s.value(), 0);
    /// s.release().unwrap();
    /// assert_eq!(s.value(), 1);
    /// ```
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // The permit came from this count, so it fits back unless someone
        // released more than they took; then the count stays at its limit.
        let _ = self.permits.give();
    }
}

macro_rules! semaphore_api {
    ($ty:ident, $name:literal) => {
        impl $ty {
            /// Takes a permit, waiting as long as it takes.
            ///
            /// ```
            #[doc = concat!("let s = corepool::", stringify!($ty), "::new(1).unwrap();")]
            /// let permit = s.acquire();
            /// assert!(s.try_acquire().is_none());
            /// drop(permit);
            /// ```
            pub fn acquire(&self) -> SemaphoreGuard<'_> {
                // Without a deadline, `take` only returns Ok.
                let _ = self.permits.take(None);
                SemaphoreGuard {
                    permits: &self.permits,
                }
            }

            /// Takes a permit, waiting at most `timeout`.
            ///
            /// ```
            #[doc = concat!("let s = corepool::", stringify!($ty), "::new(0).unwrap();")]
            /// let err = s.acquire_timeout(std::time::Duration::from_millis(1)).unwrap_err();
            /// assert_eq!(err, corepool::Error::Timeout);
            /// ```
            ///
            /// # Errors
            ///
            /// [`Error::Timeout`] when no permit came in time.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>> {
                self.permits.take(deadline_after(timeout))?;
                Ok(SemaphoreGuard {
                    permits: &self.permits,
                })
            }

            /// Takes a permit if one is free, without waiting.
            ///
            /// ```
            #[doc = concat!("let s = corepool::", stringify!($ty), "::new(1).unwrap();")]
            /// let permit = s.try_acquire().unwrap();
            /// assert!(s.try_acquire().is_none());
            /// # drop(permit);
            /// ```
            pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
                // `then`, not `then_some`: a guard built for nothing would
                // give back a permit it never took when dropped.
                self.permits.try_take().then(|| SemaphoreGuard {
                    permits: &self.permits,
                })
            }

            /// The number of free permits right now (a snapshot).
            ///
            /// ```
            #[doc = concat!("let s = corepool::", stringify!($ty), "::new(3).unwrap();")]
            /// let _p = s.acquire();
            /// assert_eq!(s.value(), 2);
            /// ```
            pub fn value(&self) -> u32 {
                self.permits.value()
            }
        }

        impl Wire for $ty {
            fn encode(&self, out: &mut Encoder) {
                self.words_encode(out);
            }

            fn decode(input: &mut &[u8]) -> Result<Self> {
                let (words, len) = Words::decode::<Self>(input, type_tag::<$ty>(), |len| {
                    (len <= u64::from(u32::MAX)).then_some(BYTES as u64)
                })?;
                Ok(Self::from_parts(words, len as u32))
            }
        }
    };
}

/// Python's `multiprocessing.Semaphore`: a count of permits shared between
/// processes. `acquire` takes one (waiting while there is none), a
/// [`SemaphoreGuard`] gives it back when dropped, and `release` adds one,
/// from any process.
///
/// A permit held by a process that dies is not given back: like POSIX and
/// Python semaphores, it is a count without owners.
///
/// ```
/// use corepool::{Pool, Semaphore};
///
/// fn guarded(s: Semaphore) -> u32 {
///     let _permit = s.acquire(); // at most two tasks in here at once
///     s.value()
/// }
///
/// fn main() {
///     let slots = Semaphore::new(2).unwrap();
///     let pool = Pool::builder().workers(2).build().unwrap();
///     let left = pool.map(guarded, vec![slots.clone(); 4]).unwrap();
///     assert!(left.iter().all(|&n| n <= 1));
///     assert_eq!(slots.value(), 2);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    permits: Permits,
}

impl Semaphore {
    /// A semaphore holding `value` permits.
    ///
    /// ```
    /// let s = corepool::Semaphore::new(2).unwrap();
    /// assert_eq!(s.value(), 2);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the segment cannot be created.
    pub fn new(value: u32) -> Result<Self> {
        Ok(Self {
            permits: Permits::new(c"corepool-semaphore", value, u32::MAX)?,
        })
    }

    /// Adds a permit, waking a waiter.
    ///
    /// ```
    /// let s = corepool::Semaphore::new(0).unwrap();
    /// s.release().unwrap();
    /// drop(s.acquire());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::SemaphoreOverflow`] when it already holds `u32::MAX`.
    pub fn release(&self) -> Result<()> {
        self.permits.give()
    }

    fn words_encode(&self, out: &mut Encoder) {
        self.permits
            .words
            .encode(type_tag::<Semaphore>(), u64::from(u32::MAX), out);
    }

    fn from_parts(words: Words, _limit: u32) -> Self {
        Self {
            permits: Permits {
                words,
                limit: u32::MAX,
            },
        }
    }
}

semaphore_api!(Semaphore, "Semaphore");

/// Python's `multiprocessing.BoundedSemaphore`: a [`Semaphore`] that refuses
/// to hold more permits than it started with, so that an extra `release`
/// (a bug) is an error instead of a silent widening.
///
/// ```
/// let s = corepool::BoundedSemaphore::new(1).unwrap();
/// let permit = s.acquire();
/// drop(permit); // back to 1
/// assert_eq!(
///     s.release().unwrap_err(),
///     corepool::Error::SemaphoreOverflow { limit: 1 }
/// );
/// ```
#[derive(Clone, Debug)]
pub struct BoundedSemaphore {
    permits: Permits,
}

impl BoundedSemaphore {
    /// A semaphore holding `value` permits, and never more.
    ///
    /// ```
    /// let s = corepool::BoundedSemaphore::new(4).unwrap();
    /// assert_eq!(s.bound(), 4);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the segment cannot be created.
    pub fn new(value: u32) -> Result<Self> {
        Ok(Self {
            permits: Permits::new(c"corepool-semaphore", value, value)?,
        })
    }

    /// The most permits it holds (its starting value).
    ///
    /// ```
    /// let s = corepool::BoundedSemaphore::new(2).unwrap();
    /// let _taken = s.acquire();
    /// assert_eq!((s.value(), s.bound()), (1, 2));
    /// ```
    pub fn bound(&self) -> u32 {
        self.permits.limit
    }

    /// Gives a permit back, waking a waiter.
    ///
    /// ```
    /// let s = corepool::BoundedSemaphore::new(1).unwrap();
    /// s.acquire().forget();
    /// s.release().unwrap();
    /// assert!(s.release().is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::SemaphoreOverflow`] when it already holds its bound.
    pub fn release(&self) -> Result<()> {
        self.permits.give()
    }

    fn words_encode(&self, out: &mut Encoder) {
        self.permits.words.encode(
            type_tag::<BoundedSemaphore>(),
            u64::from(self.permits.limit),
            out,
        );
    }

    fn from_parts(words: Words, limit: u32) -> Self {
        Self {
            permits: Permits { words, limit },
        }
    }
}

semaphore_api!(BoundedSemaphore, "BoundedSemaphore");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_and_given_back() {
        let s = Semaphore::new(2).unwrap();
        let a = s.acquire();
        let b = s.try_acquire().unwrap();
        assert!(s.try_acquire().is_none());
        assert_eq!(
            s.acquire_timeout(Duration::ZERO).unwrap_err(),
            Error::Timeout
        );
        drop(a);
        assert_eq!(s.value(), 1);
        drop(b);
        assert_eq!(s.value(), 2);
    }

    #[test]
    fn a_bounded_semaphore_refuses_an_extra_release() {
        let s = BoundedSemaphore::new(1).unwrap();
        assert_eq!(
            s.release().unwrap_err(),
            Error::SemaphoreOverflow { limit: 1 }
        );
        s.acquire().forget();
        s.release().unwrap();
        assert_eq!(s.value(), 1);
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens the segment through /proc")]
    fn a_handle_keeps_the_bound() {
        let s = BoundedSemaphore::new(2).unwrap();
        let bytes = crate::wire::encode_to_vec(&s);
        let copy = BoundedSemaphore::decode(&mut bytes.as_slice()).unwrap();
        assert_eq!(copy.bound(), 2);
        assert!(copy.release().is_err());
        copy.acquire().forget();
        assert_eq!(s.value(), 1, "the same count");
    }

    #[test]
    fn a_release_wakes_a_waiting_thread() {
        let s = Semaphore::new(0).unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| s.acquire().forget());
            s.release().unwrap();
        });
        assert_eq!(s.value(), 0);
    }
}
