//! [`Lock`] and [`RLock`]: mutual exclusion between processes, which a
//! holder that dies cannot wedge; the next owner is told.
//!
//! Both are built on [`RawLock`], six words of a segment: the holder's pid
//! (0: free), its owner tag, the holding thread's token, the re-entry depth
//! and an event count (sequence, sleepers) that waiters sleep on.

use super::{next_death_check, passed, Words, DEATH_CHECK_FIRST};
use crate::error::{Error, Result};
use crate::shm::event::EventCount;
use crate::shm::handle::type_tag;
use crate::shm::owner::{holder_is_dead, OwnerTag};
use crate::shm::park::{deadline_after, Spinner};
use crate::sys;
use crate::wire::{Encoder, Wire};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The bytes one [`RawLock`] takes (its words, rounded up to a cache line).
pub(super) const RAW_LOCK_BYTES: usize = 64;
const HOLDER_AT: usize = 0;
const TAG_AT: usize = 4;
const THREAD_AT: usize = 8;
const DEPTH_AT: usize = 12;
const SEQUENCE_AT: usize = 16;
const SLEEPERS_AT: usize = 20;

/// This thread's token: a number no other thread of this process has had,
/// never 0. Together with the pid it names the owner of an [`RLock`].
pub(crate) fn my_thread_token() -> u32 {
    use std::sync::atomic::AtomicU32 as Counter;
    static NEXT: Counter = Counter::new(1);
    thread_local! {
        // Relaxed: only uniqueness matters. Wraps after four billion
        // threads, skipping 0.
        static TOKEN: u32 = match NEXT.fetch_add(1, Ordering::Relaxed) {
            0 => NEXT.fetch_add(1, Ordering::Relaxed),
            t => t,
        };
    }
    TOKEN.with(|t| *t)
}

/// How a lock came to its new holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Acquired {
    /// From a holder that released it.
    Clean,
    /// From a holder that died holding it.
    OwnerDied,
}

/// A robust lock in the words of a segment, from byte `base` on.
#[derive(Clone, Copy, Debug)]
pub(super) struct RawLock<'a> {
    words: &'a Words,
    base: usize,
}

impl<'a> RawLock<'a> {
    pub(super) fn new(words: &'a Words, base: usize) -> Self {
        Self { words, base }
    }

    fn word(&self, at: usize) -> &'a AtomicU32 {
        self.words.word(self.base + at)
    }

    fn owner(&self) -> OwnerTag<'a> {
        OwnerTag::new(self.word(TAG_AT))
    }

    fn event(&self) -> EventCount<'a> {
        EventCount::new(self.word(SEQUENCE_AT), self.word(SLEEPERS_AT))
    }

    /// Whether the calling thread holds the lock.
    pub(super) fn held_by_me(&self) -> bool {
        // Acquire: pairs with the Release store in `release` (through the
        // release sequence our CAS continues), so a thread word left by an
        // earlier holder of this process was cleared before we read it.
        let holder = self.word(HOLDER_AT).load(Ordering::Acquire);
        // Relaxed: only this thread ever writes its own token there, so
        // reading our token means we wrote it and hold the lock.
        holder == sys::current_pid()
            && self.word(THREAD_AT).load(Ordering::Relaxed) == my_thread_token()
    }

    /// One attempt: takes a free lock, or a dead holder's. `Err(holder)`
    /// when a live (or unknowable) holder has it.
    fn try_once(&self, check_death: bool) -> std::result::Result<Acquired, u32> {
        let lock = self.word(HOLDER_AT);
        let me = sys::current_pid();
        // Acquire: pairs with the Release store in `release`, so the last
        // holder's writes are visible to us. Acquire on failure too: the
        // holder we read recorded its tag after winning, and the last one
        // cleared its tag before its Release store, so the tag we read next
        // is this holder's or UNKNOWN.
        let holder = match lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                self.taken(Acquired::Clean);
                return Ok(Acquired::Clean);
            }
            Err(holder) => holder,
        };
        if !check_death {
            return Err(holder);
        }
        // Read after the lock word, so the tag is `holder`'s or UNKNOWN.
        let tag = self.owner().read();
        // A pid past i32::MAX is garbage, which `holder_is_dead` judges dead.
        let pid = i32::try_from(holder).unwrap_or(-1);
        if !holder_is_dead(pid, tag, self.owner()) {
            return Err(holder);
        }
        // The holder died holding it: take over, its tag forgotten first so
        // that ours replaces it.
        self.owner().forget(tag);
        // AcqRel. Acquire: the dead holder's CAS continued the release
        // sequence of the `release` before it, so this pairs with that
        // Release store. Release: orders `forget` before our pid, so a
        // checker that reads our pid never pairs it with the dead tag.
        match lock.compare_exchange(holder, me, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                self.taken(Acquired::OwnerDied);
                Ok(Acquired::OwnerDied)
            }
            Err(now) => Err(now),
        }
    }

    /// Records the new holder (this thread), just after winning the word.
    fn taken(&self, _how: Acquired) {
        self.owner().record_mine();
        // Relaxed: read only by this process's threads, each looking for its
        // own token (see `held_by_me`).
        self.word(THREAD_AT)
            .store(my_thread_token(), Ordering::Relaxed);
        // Relaxed: only the holder reads or writes the depth; the lock's
        // Acquire/Release order it between holders.
        self.word(DEPTH_AT).store(1, Ordering::Relaxed);
    }

    /// Takes the lock, waiting until `deadline` (forever if `None`).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] once `deadline` has passed.
    pub(super) fn acquire(&self, deadline: Option<Instant>) -> Result<Acquired> {
        let mut spinner = Spinner::new();
        let mut death_check = DEATH_CHECK_FIRST;
        loop {
            // A short spin first, without looking at /proc: most holders
            // release within it.
            let spinning = spinner.spin();
            match self.try_once(!spinning) {
                Ok(how) => return Ok(how),
                Err(_) if spinning => continue,
                Err(_) => {}
            }
            if passed(deadline) {
                return Err(Error::Timeout);
            }
            let lock = self.word(HOLDER_AT);
            // Sleep until released, the deadline, or the next death check.
            // Relaxed: only a hint; the CAS in `try_once` decides.
            let _ = self.event().wait(deadline, Some(death_check), || {
                lock.load(Ordering::Relaxed) == 0
            });
            death_check = next_death_check(death_check);
        }
    }

    /// Takes the lock if it is free or its holder is dead, without waiting.
    pub(super) fn try_acquire(&self) -> Option<Acquired> {
        self.try_once(true).ok()
    }

    /// The re-entry depth (only meaningful to the holder).
    pub(super) fn depth(&self) -> u32 {
        // Relaxed: see `taken`.
        self.word(DEPTH_AT).load(Ordering::Relaxed)
    }

    /// Sets the re-entry depth (only the holder calls it).
    pub(super) fn set_depth(&self, depth: u32) {
        // Relaxed: see `taken`.
        self.word(DEPTH_AT).store(depth, Ordering::Relaxed);
    }

    /// Gives the lock up (only the holder calls it) and wakes sleepers.
    pub(super) fn release(&self) {
        // Relaxed: ordered before the next holder by the Release store below.
        self.word(THREAD_AT).store(0, Ordering::Relaxed);
        self.word(DEPTH_AT).store(0, Ordering::Relaxed);
        self.owner().clear();
        // Release: pairs with the Acquire CASes in `try_once`, so the next
        // holder sees our writes.
        self.word(HOLDER_AT).store(0, Ordering::Release);
        self.event().notify();
    }
}

/// Python's `multiprocessing.Lock`: a lock shared between processes. A
/// holder that dies releases it, and the next owner learns so from
/// [`LockGuard::previous_holder_died`].
///
/// The lock is held by a thread of a process; taking it again on the same
/// thread fails with [`Error::Deadlock`] instead of hanging (use an
/// [`RLock`] to re-enter). It is not fair: a releaser may take it back
/// before a sleeping waiter wakes.
///
/// ```
/// use corepool::{Lock, Process, Value};
///
/// fn add_ten(arg: (Lock, Value<u64>)) {
///     let (lock, total) = arg;
///     for _ in 0..10 {
///         let _held = lock.acquire().unwrap();
///         total.set(total.get() + 1).unwrap(); // a compound update, under the lock
///     }
/// }
///
/// fn main() {
///     let lock = Lock::new().unwrap();
///     let total = Value::new(0u64).unwrap();
///     let kids: Vec<_> = (0..2)
///         .map(|_| Process::start(add_ten, (lock.clone(), total.clone())).unwrap())
///         .collect();
///     for k in kids {
///         k.join().unwrap();
///     }
///     assert_eq!(total.get(), 20);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Lock {
    words: Words,
}

/// A held [`Lock`]: released when dropped, also when a panic unwinds.
/// Bound to the thread that took it (it is not `Send`).
///
/// ```
/// let lock = corepool::Lock::new().unwrap();
/// let held = lock.acquire().unwrap();
/// // Not reentrant: on the holding thread, `Deadlock` rather than "busy".
/// assert_eq!(lock.try_acquire().unwrap_err(), corepool::Error::Deadlock);
/// drop(held);
/// assert!(lock.try_acquire().unwrap().is_some());
/// ```
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard drops"]
pub struct LockGuard<'a> {
    lock: RawLock<'a>,
    how: Acquired,
    _thread_bound: PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    /// Whether the lock was taken over from a holder that died holding it:
    /// whatever it guards may be half-updated, so check or repair it.
    ///
    /// ```
    /// let lock = corepool::Lock::new().unwrap();
    /// assert!(!lock.acquire().unwrap().previous_holder_died());
    /// ```
    pub fn previous_holder_died(&self) -> bool {
        self.how == Acquired::OwnerDied
    }

    pub(super) fn raw(&self) -> RawLock<'a> {
        self.lock
    }

    pub(super) fn set_acquired(&mut self, how: Acquired) {
        self.how = how;
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

impl Lock {
    /// A new, free lock.
    ///
    /// ```
    /// let lock = corepool::Lock::new().unwrap();
    /// let held = lock.acquire().unwrap();
    /// assert!(lock.try_acquire().is_err()); // held by this thread
    /// drop(held);
    /// assert!(lock.try_acquire().unwrap().is_some());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the segment cannot be created.
    pub fn new() -> Result<Self> {
        Ok(Self {
            words: Words::create(c"corepool-lock", RAW_LOCK_BYTES)?,
        })
    }

    fn raw(&self) -> RawLock<'_> {
        RawLock::new(&self.words, 0)
    }

    fn guard(&self, how: Acquired) -> LockGuard<'_> {
        LockGuard {
            lock: self.raw(),
            how,
            _thread_bound: PhantomData,
        }
    }

    /// Takes the lock, waiting as long as it takes (a dead holder's lock is
    /// taken over within 50 ms of its death being visible).
    ///
    /// ```
    /// let lock = corepool::Lock::new().unwrap();
    /// let held = lock.acquire().unwrap();
    /// assert!(matches!(lock.acquire(), Err(corepool::Error::Deadlock)));
    /// drop(held);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] when this thread already holds it.
    pub fn acquire(&self) -> Result<LockGuard<'_>> {
        self.acquire_until(None)
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let lock = corepool::Lock::new().unwrap();
    /// let held = lock.acquire_timeout(Duration::from_secs(1)).unwrap();
    /// assert!(held.previous_holder_died() == false);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when it stayed held that long; [`Error::Deadlock`]
    /// when this thread already holds it.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.acquire_until(deadline_after(timeout))
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> Result<LockGuard<'_>> {
        if self.raw().held_by_me() {
            return Err(Error::Deadlock);
        }
        let how = self.raw().acquire(deadline)?;
        Ok(self.guard(how))
    }

    /// Takes the lock if it is free (or its holder is dead), without waiting:
    /// `Ok(None)` while another live holder (another thread or process, a
    /// stopped one included) has it.
    ///
    /// ```
    /// use corepool::{Error, Lock};
    ///
    /// let lock = Lock::new().unwrap();
    /// let first = lock.try_acquire().unwrap().expect("free");
    /// // Held by this very thread: an error, as for `acquire`, since
    /// // retrying would never succeed.
    /// assert_eq!(lock.try_acquire().unwrap_err(), Error::Deadlock);
    /// std::thread::scope(|s| {
    ///     // Held by another thread: `None`, worth trying again later.
    ///     s.spawn(|| assert!(lock.try_acquire().unwrap().is_none()));
    /// });
    /// drop(first);
    /// assert!(lock.try_acquire().unwrap().is_some());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] when this thread already holds it, as
    /// [`acquire`](Self::acquire) does and as [`Value::try_lock`](crate::Value::try_lock)
    /// does: `None` there would read as "busy, try again", and a retry loop
    /// on the holding thread would never end. (Python's `acquire(False)`
    /// returns `False` in both cases; the README's table says so.)
    pub fn try_acquire(&self) -> Result<Option<LockGuard<'_>>> {
        if self.raw().held_by_me() {
            return Err(Error::Deadlock);
        }
        Ok(self.raw().try_acquire().map(|how| self.guard(how)))
    }
}

impl Wire for Lock {
    fn encode(&self, out: &mut Encoder) {
        self.words.encode(type_tag::<Lock>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (words, _) =
            Words::decode::<Self>(input, type_tag::<Lock>(), |_| Some(RAW_LOCK_BYTES as u64))?;
        Ok(Self { words })
    }
}

/// Python's `multiprocessing.RLock`: a [`Lock`] that the thread holding it
/// may take again; it is released when every guard has dropped.
///
/// Its owner is a thread of a process: the pid, and a token this process
/// gives each of its threads. Only a dead *process* releases it: a thread
/// cannot die holding a guard without its process (a panic drops the
/// guard; `std::mem::forget` keeps the lock held).
///
/// ```
/// let lock = corepool::RLock::new().unwrap();
/// let outer = lock.acquire().unwrap();
/// let inner = lock.acquire().unwrap(); // the same thread re-enters
/// drop(inner);
/// drop(outer); // now released
/// assert!(lock.try_acquire().is_some());
/// ```
#[derive(Clone, Debug)]
pub struct RLock {
    words: Words,
}

/// A held [`RLock`] (one level of it): released when the last guard of the
/// holding thread drops. Bound to that thread (not `Send`).
///
/// ```
/// let lock = corepool::RLock::new().unwrap();
/// let outer = lock.acquire().unwrap();
/// let inner = lock.acquire().unwrap(); // the same thread may take it again
/// drop(inner);
/// std::thread::scope(|s| {
///     // Still held by this thread: another one cannot take it.
///     s.spawn(|| assert!(lock.try_acquire().is_none()));
/// });
/// drop(outer);
/// std::thread::scope(|s| {
///     s.spawn(|| assert!(lock.try_acquire().is_some()));
/// });
/// ```
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard drops"]
pub struct RLockGuard<'a> {
    lock: RawLock<'a>,
    how: Acquired,
    _thread_bound: PhantomData<*const ()>,
}

impl RLockGuard<'_> {
    /// Whether this acquisition took the lock over from a holder that died
    /// holding it (never for a re-entry).
    ///
    /// ```
    /// let lock = corepool::RLock::new().unwrap();
    /// assert!(!lock.acquire().unwrap().previous_holder_died());
    /// ```
    pub fn previous_holder_died(&self) -> bool {
        self.how == Acquired::OwnerDied
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let depth = self.lock.depth();
        if depth > 1 {
            self.lock.set_depth(depth - 1);
        } else {
            self.lock.release();
        }
    }
}

impl RLock {
    /// A new, free re-entrant lock.
    ///
    /// ```
    /// let lock = corepool::RLock::new().unwrap();
    /// # let _ = lock;
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the segment cannot be created.
    pub fn new() -> Result<Self> {
        Ok(Self {
            words: Words::create(c"corepool-rlock", RAW_LOCK_BYTES)?,
        })
    }

    fn raw(&self) -> RawLock<'_> {
        RawLock::new(&self.words, 0)
    }

    fn guard(&self, how: Acquired) -> RLockGuard<'_> {
        RLockGuard {
            lock: self.raw(),
            how,
            _thread_bound: PhantomData,
        }
    }

    /// One more level for the thread that holds it.
    fn reenter(&self) -> Result<RLockGuard<'_>> {
        let depth = self
            .raw()
            .depth()
            .checked_add(1)
            .ok_or(Error::InvalidConfig {
                what: "an RLock re-entered 2^32 times: release some levels first".into(),
            })?;
        self.raw().set_depth(depth);
        Ok(self.guard(Acquired::Clean))
    }

    /// Takes the lock (again, if this thread holds it), waiting as long as
    /// it takes.
    ///
    /// ```
    /// let lock = corepool::RLock::new().unwrap();
    /// let _a = lock.acquire().unwrap();
    /// let _b = lock.acquire().unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] after 2^32 nested acquisitions.
    pub fn acquire(&self) -> Result<RLockGuard<'_>> {
        self.acquire_until(None)
    }

    /// Takes the lock (again, if this thread holds it), waiting at most
    /// `timeout`.
    ///
    /// ```
    /// let lock = corepool::RLock::new().unwrap();
    /// let _a = lock.acquire_timeout(std::time::Duration::from_secs(1)).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when another holder kept it that long.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>> {
        self.acquire_until(deadline_after(timeout))
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> Result<RLockGuard<'_>> {
        if self.raw().held_by_me() {
            return self.reenter();
        }
        let how = self.raw().acquire(deadline)?;
        Ok(self.guard(how))
    }

    /// Takes the lock (again, if this thread holds it) without waiting:
    /// `None` only while another thread or process holds it (or after 2^32
    /// nested levels, where [`acquire`](Self::acquire) says
    /// [`Error::InvalidConfig`]). Unlike [`Lock::try_acquire`] it has no
    /// `Deadlock` case: the holding thread re-enters.
    ///
    /// ```
    /// let lock = corepool::RLock::new().unwrap();
    /// let a = lock.try_acquire().unwrap();
    /// let b = lock.try_acquire().unwrap();
    /// # drop((b, a));
    /// ```
    pub fn try_acquire(&self) -> Option<RLockGuard<'_>> {
        if self.raw().held_by_me() {
            return self.reenter().ok();
        }
        self.raw().try_acquire().map(|how| self.guard(how))
    }
}

impl Wire for RLock {
    fn encode(&self, out: &mut Encoder) {
        self.words.encode(type_tag::<RLock>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (words, _) =
            Words::decode::<Self>(input, type_tag::<RLock>(), |_| Some(RAW_LOCK_BYTES as u64))?;
        Ok(Self { words })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_excludes_and_reports_a_clean_handover() {
        let lock = Lock::new().unwrap();
        let held = lock.acquire().unwrap();
        assert!(!held.previous_holder_died());
        assert_eq!(lock.try_acquire().unwrap_err(), Error::Deadlock);
        assert_eq!(lock.acquire().unwrap_err(), Error::Deadlock);
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().unwrap().is_none(), "busy elsewhere"));
        });
        drop(held);
        let again = lock.try_acquire().unwrap().expect("released");
        assert!(!again.previous_holder_died());
    }

    #[test]
    fn a_lock_times_out_while_another_thread_holds_it() {
        let lock = Lock::new().unwrap();
        let held = lock.acquire().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    lock.acquire_timeout(Duration::from_millis(1)).unwrap_err(),
                    Error::Timeout
                );
            });
        });
        drop(held);
    }

    #[test]
    fn threads_exclude_each_other() {
        let per = if cfg!(miri) { 20 } else { 5_000 };
        let lock = Lock::new().unwrap();
        let counter = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..per {
                        let _held = lock.acquire().unwrap();
                        // A non-atomic read-modify-write, made exclusive by
                        // the lock (Relaxed on purpose).
                        let n = counter.load(Ordering::Relaxed);
                        counter.store(n + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 2 * per);
    }

    #[test]
    #[cfg_attr(miri, ignore = "judges a pid dead through the kernel")]
    fn a_dead_holders_lock_is_taken_over_and_reported() {
        let lock = Lock::new().unwrap();
        // Above any pid_max: no such process holds it.
        lock.words
            .word(HOLDER_AT)
            .store(i32::MAX as u32 - 1, Ordering::Relaxed);
        assert!(lock.try_acquire().unwrap().unwrap().previous_holder_died());
        lock.words
            .word(HOLDER_AT)
            .store(i32::MAX as u32 - 1, Ordering::Relaxed);
        let held = lock.acquire().unwrap();
        assert!(held.previous_holder_died());
        drop(held);
        assert!(!lock.acquire().unwrap().previous_holder_died());
    }

    #[test]
    fn an_rlock_counts_reentries_and_excludes_other_threads() {
        let lock = RLock::new().unwrap();
        let a = lock.acquire().unwrap();
        let b = lock.try_acquire().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().is_none()));
        });
        drop(b);
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().is_none(), "one level still held"));
        });
        drop(a);
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().is_some()));
        });
    }
}
