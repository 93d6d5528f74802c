//! [`Condition`]: Python's condition variable between processes, over a
//! [`Lock`].
//!
//! Its own segment holds an event count (sequence, sleepers); the lock is a
//! [`Lock`] of its own or one given to it. A waiter reads the sequence while
//! holding the lock, releases the lock, and sleeps until the sequence moves;
//! a notifier (holding the lock) bumps the sequence and wakes sleepers. A
//! notification after the waiter released the lock therefore bumps the
//! sequence the waiter read, and is never lost.

use super::lock::{Acquired, RawLock};
use super::{Lock, LockGuard, Words};
use crate::error::Result;
use crate::shm::event::EventCount;
use crate::shm::handle::type_tag;
use crate::shm::park::deadline_after;
use crate::wire::{Encoder, Wire};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SEQUENCE_AT: usize = 0;
const SLEEPERS_AT: usize = 4;
const BYTES: usize = 64;

/// Python's `multiprocessing.Condition`: processes wait, holding a [`Lock`],
/// until another one changes shared state and notifies them.
///
/// [`ConditionGuard::notify`] may wake more than one waiter, so a wait may
/// end with the state still not what the waiter needs: wait in a loop on
/// that state, or use [`ConditionGuard::wait_for`].
///
/// ```
/// use corepool::{Condition, Process, Value};
///
/// fn produce(arg: (Condition, Value<u64>)) {
///     let (ready, items) = arg;
///     let mut held = ready.acquire().unwrap();
///     items.set(3).unwrap();
///     held.notify_all();
/// }
///
/// fn main() {
///     let ready = Condition::new().unwrap();
///     let items = Value::new(0u64).unwrap();
///     let child = Process::start(produce, (ready.clone(), items.clone())).unwrap();
///     let mut held = ready.acquire().unwrap();
///     assert!(held.wait_for(|| items.get() == 3, None));
///     drop(held);
///     child.join().unwrap();
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Condition {
    lock: Lock,
    words: Words,
}

/// The [`Lock`] of a [`Condition`], held: wait and notify through it.
/// Released when dropped.
///
/// ```
/// use corepool::{Condition, Value};
///
/// let ready = Value::new(0u32).unwrap();
/// let c = Condition::new().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let mut held = c.acquire().unwrap();
///         ready.set(1).unwrap();
///         held.notify_all();
///     });
///     let mut held = c.acquire().unwrap();
///     while ready.get() == 0 {
///         held.wait();
///     }
/// });
/// ```
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard drops"]
pub struct ConditionGuard<'a> {
    held: LockGuard<'a>,
    condition: &'a Condition,
}

impl Condition {
    /// A condition over a lock of its own.
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// let mut held = c.acquire().unwrap();
    /// held.notify(); // nobody waits: nothing happens
    /// ```
    ///
    /// # Errors
    ///
    /// [`crate::Error::SharedMemory`] when a segment cannot be created.
    pub fn new() -> Result<Self> {
        Self::with_lock(Lock::new()?)
    }

    /// A condition over `lock`, which other code may also take directly.
    ///
    /// ```
    /// let lock = corepool::Lock::new().unwrap();
    /// let c = corepool::Condition::with_lock(lock.clone()).unwrap();
    /// let held = c.acquire().unwrap();
    /// assert!(lock.try_acquire().is_err(), "the same lock, held by this thread");
    /// # drop(held);
    /// ```
    ///
    /// # Errors
    ///
    /// [`crate::Error::SharedMemory`] when the segment cannot be created.
    pub fn with_lock(lock: Lock) -> Result<Self> {
        Ok(Self {
            lock,
            words: Words::create(c"corepool-condition", BYTES)?,
        })
    }

    /// The lock this condition waits with.
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// let held = c.acquire().unwrap();
    /// assert!(c.lock().try_acquire().is_err()); // taking the condition took its lock
    /// drop(held);
    /// ```
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    fn event(&self) -> EventCount<'_> {
        EventCount::new(self.words.word(SEQUENCE_AT), self.words.word(SLEEPERS_AT))
    }

    fn guard<'a>(&'a self, held: LockGuard<'a>) -> ConditionGuard<'a> {
        ConditionGuard {
            held,
            condition: self,
        }
    }

    /// Takes the lock, as [`Lock::acquire`].
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// let mut held = c.acquire().unwrap();
    /// held.notify(); // nobody waits: nothing happens
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Lock::acquire`].
    pub fn acquire(&self) -> Result<ConditionGuard<'_>> {
        Ok(self.guard(self.lock.acquire()?))
    }

    /// Takes the lock, as [`Lock::acquire_timeout`].
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// let _held = c.acquire_timeout(std::time::Duration::from_secs(1)).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Lock::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<ConditionGuard<'_>> {
        Ok(self.guard(self.lock.acquire_timeout(timeout)?))
    }
}

impl ConditionGuard<'_> {
    /// Whether the lock was last taken (by `acquire`, or on waking from a
    /// wait) from a holder that died holding it.
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// assert!(!c.acquire().unwrap().previous_holder_died());
    /// ```
    pub fn previous_holder_died(&self) -> bool {
        self.held.previous_holder_died()
    }

    /// Releases the lock, sleeps until notified, and takes
    /// the lock back.
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// let mut held = c.acquire().unwrap();
    /// std::thread::scope(|s| {
    ///     s.spawn(|| c.acquire().unwrap().notify_all());
    ///     held.wait(); // gives the lock to the notifier meanwhile
    /// });
    /// ```
    pub fn wait(&mut self) {
        self.wait_until(None);
    }

    /// As [`wait`](Self::wait), for at most `timeout`; returns `false` if
    /// it timed out. The lock is held again either way.
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// let mut held = c.acquire().unwrap();
    /// assert!(!held.wait_timeout(std::time::Duration::from_millis(1)));
    /// ```
    pub fn wait_timeout(&mut self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    /// Waits until `predicate` holds, re-checking it (with the lock held)
    /// after every wake-up, for at most `timeout` (`None`: no limit).
    /// Returns the predicate's last answer.
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// let mut held = c.acquire().unwrap();
    /// assert!(held.wait_for(|| true, None));
    /// assert!(!held.wait_for(|| false, Some(std::time::Duration::from_millis(1))));
    /// ```
    pub fn wait_for(
        &mut self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> bool {
        let deadline = timeout.and_then(deadline_after);
        loop {
            if predicate() {
                return true;
            }
            if !self.wait_until(deadline) {
                return predicate();
            }
        }
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> bool {
        let sequence = self.condition.words.word(SEQUENCE_AT);
        // Read while holding the lock: every later notify (made holding it)
        // bumps past this. Acquire pairs with the Release bump in `notify`.
        let start = sequence.load(Ordering::Acquire);
        let raw: RawLock<'_> = self.held.raw();
        raw.release();
        let notified = || sequence.load(Ordering::Acquire) != start;
        // Sleep until notified or past the deadline; the event count
        // answers a timed-out sleep with `Ok` and only a passed deadline
        // with `Err`.
        let in_time = loop {
            if notified() {
                break true;
            }
            if self
                .condition
                .event()
                .wait(deadline, None, notified)
                .is_err()
            {
                break notified();
            }
        };
        // Take the lock back whatever happened, waiting as long as it takes.
        let how = raw.acquire(None).unwrap_or(Acquired::Clean);
        self.held.set_acquired(how);
        in_time
    }

    /// Wakes a waiter (possibly more than one: waiters re-check their
    /// state).
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// c.acquire().unwrap().notify();
    /// ```
    pub fn notify(&mut self) {
        self.notify_all();
    }

    /// Wakes every waiter.
    ///
    /// ```
    /// let c = corepool::Condition::new().unwrap();
    /// c.acquire().unwrap().notify_all();
    /// ```
    pub fn notify_all(&mut self) {
        // A Release bump of the sequence and a wake-up (see `wait_until`).
        self.condition.event().notify_all();
    }
}

impl Wire for Condition {
    fn encode(&self, out: &mut Encoder) {
        self.lock.encode(out);
        self.words.encode(type_tag::<Condition>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let lock = Lock::decode(input)?;
        let (words, _) =
            Words::decode::<Self>(input, type_tag::<Condition>(), |_| Some(BYTES as u64))?;
        Ok(Self { lock, words })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a_waiter_sees_the_state_its_notifier_set() {
        let c = Condition::new().unwrap();
        let state = AtomicU32::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut held = c.acquire().unwrap();
                // Relaxed: the lock orders it.
                state.store(1, Ordering::Relaxed);
                held.notify();
            });
            let mut held = c.acquire().unwrap();
            assert!(held.wait_for(|| state.load(Ordering::Relaxed) == 1, None));
        });
    }

    #[test]
    fn a_timed_out_wait_holds_the_lock_again() {
        let c = Condition::new().unwrap();
        let mut held = c.acquire().unwrap();
        assert!(!held.wait_timeout(Duration::ZERO));
        assert_eq!(c.lock().try_acquire().unwrap_err(), crate::Error::Deadlock);
        drop(held);
        assert!(c.lock().try_acquire().unwrap().is_some());
    }
}
