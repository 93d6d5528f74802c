//! [`Value`]: any plain-data `T` shared between processes, written under a
//! lock word that records the holder's pid and read, as a rule, without
//! locking.
//!
//! Writers take the lock; a process that dies holding it cannot wedge the
//! others, because the next one to want the lock sees the holder is
//! definitely dead (by its pid and the [owner tag](crate::shm::owner) beside
//! the lock word; a holder that cannot be checked counts as alive) and
//! takes it over (the value is then whatever the dead holder left, which for
//! plain data is always a valid `T`). Readers follow a sequence lock: a
//! sequence word, odd while a writer works, lets them copy the value and
//! retry if it changed meanwhile. A reader that finds a write in progress
//! for longer than a short spin sleeps on the sequence word (the writer
//! wakes it when the write ends), checking now and then whether the writer
//! died; one whose copies writes keep overlapping copies under the lock.
//! So readers do write shared words: the readers mark, and the lock when
//! they take it (to copy, or to finish a write whose writer died or that
//! nobody holds); a concurrent `try_lock` can then find it briefly held. A
//! reader on the thread that holds the lock copies under that lock.

use crate::error::{Error, Result};
use crate::shm::handle::{type_tag, SharedSegment};
use crate::shm::owner::{holder_is_dead, my_start_tag, OwnerTag, UNKNOWN};
use crate::shm::park::{deadline_after, Spinner};
use crate::synchronize::my_thread_token;
use crate::sys;
use crate::wire::{decode_error, Encoder, Wire};
use bytemuck::Pod;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOCK_AT: usize = 0;
const SEQ_AT: usize = 4;
/// The lock holder's owner tag (its start time), beside its pid in `LOCK_AT`.
const OWNER_AT: usize = 8;
/// The lockers' sleep mark: nonzero when some locker may sleep on
/// [`UNLOCKS_AT`], waiting for an unlock. Each stores there (as a newest-wins
/// CAS) the unlock count it sleeps on, made odd (`| 1`) so that it is never
/// 0; an unlock that finds a mark wakes them all, and clears a mark that no
/// locker can still sleep on. A locker that dies asleep, or a forged word,
/// thus costs one wasted wake, not one per unlock for the value's life. See
/// `mark_sleeper` and `unlock` for why no wake is lost.
const SLEEPERS_AT: usize = 12;
/// The holding thread's token (`synchronize::my_thread_token`), beside its
/// pid: tells this process's threads whether they hold it themselves.
const THREAD_AT: usize = 16;
/// Nonzero when some reader may sleep on the sequence word, waiting for a
/// write to end: each stores there the odd sequence value it sleeps on, and
/// a write that finds it nonzero clears it and wakes them all (a reader
/// still waiting stores it again before its next nap). A reader that dies
/// asleep, or a forged word, costs one wasted wake, not one per write for
/// the value's life (review28 C-R1). See `wake_readers` for why it holds a
/// sequence value rather than a plain flag.
const READERS_AT: usize = 20;
/// The unlock count: every unlock adds 2 (so it stays even and its `| 1` is
/// a distinct mark). Lockers sleep on it, not on the lock word: the lock
/// word holds the holder's pid, which the next holder (another thread of
/// the same process) repeats, so a locker could not tell one hold from the
/// next by it; the count tells every unlock apart (until it wraps, after
/// 2^31 unlocks, which costs at most one nap).
const UNLOCKS_AT: usize = 24;
const DATA_AT: usize = 64;
/// How long a waiter sleeps on a live holder before it looks again whether
/// the holder died.
const DEATH_CHECK: Duration = Duration::from_millis(1);
/// The longest a reader sleeps on a writer stuck mid-write before it looks
/// again whether the writer died: its naps double from [`DEATH_CHECK`] up to
/// this, so that a writer stopped for long costs a reader about 60 checks a
/// second, and one killed after a long stop is taken over within this.
const STOPPED_WRITER_CHECK: Duration = Duration::from_millis(16);
/// Copies that a write overlapped, in one `get`, before it copies under the
/// lock instead: a writer writing back to back could otherwise starve it.
const TORN_COPIES_BEFORE_LOCKING: u32 = 4;

/// A plain-data value shared between processes, behind a lock a dead holder
/// cannot wedge.
///
/// ```
/// use corepool::{Process, Value};
///
/// fn add_ten(total: Value<[u64; 2]>) {
///     for _ in 0..10 {
///         total.update(|t| { t[0] += 1; t[1] += 2; }).unwrap();
///     }
/// }
///
/// fn main() {
///     let total = Value::new([0u64; 2]).unwrap();
///     let kids: Vec<_> = (0..2).map(|_| Process::start(add_ten, total.clone()).unwrap()).collect();
///     for k in kids {
///         k.join().unwrap();
///     }
///     assert_eq!(total.get(), [20, 40]);
/// }
/// ```
pub struct Value<T> {
    map: Arc<SharedSegment>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

impl<T: Pod> Value<T> {
    /// A shared value holding `value`.
    ///
    /// ```
    /// #[derive(Clone, Copy, Debug, PartialEq, corepool::bytemuck::Pod, corepool::bytemuck::Zeroable)]
    /// #[bytemuck(crate = "corepool::bytemuck")]
    /// #[repr(C)]
    /// struct Progress {
    ///     done: u64,
    ///     failed: u64,
    /// }
    ///
    /// let p = corepool::Value::new(Progress { done: 0, failed: 0 }).unwrap();
    /// p.update(|p| p.done += 1).unwrap();
    /// assert_eq!(p.get(), Progress { done: 1, failed: 0 });
    /// ```
    ///
    /// # Errors
    ///
    /// [`crate::Error::SharedMemory`].
    pub fn new(value: T) -> Result<Self> {
        let map =
            SharedSegment::create(c"corepool-value", DATA_AT + std::mem::size_of::<T>().max(1))?;
        let v = Self {
            map,
            _type: PhantomData,
        };
        // Nobody else sees the segment yet; the sequence starts even (0).
        v.store_data(&value);
        Ok(v)
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is one of the `*_AT` words below DATA_AT: in bounds, since every segment
        // behind a `Value` has at least DATA_AT bytes (sized in `new`, checked
        // in `decode`), and 4-aligned, since the mapping is page-aligned (8 in
        // Miri's stand-in). It lives as long as `map`, to which the reference
        // is tied, and every process accesses it only atomically.
        unsafe { AtomicU32::from_ptr(self.map.base().add(at).cast()) }
    }

    /// Where the value's bytes start: 64-aligned in a real mapping, 8-aligned
    /// in Miri's stand-in, which is all that `load_data`/`store_data` need (they
    /// never form a `&T` or a `*T` there, so `T`'s own alignment is no concern).
    fn data(&self) -> *mut u8 {
        // SAFETY: DATA_AT is inside the segment (see `word`).
        unsafe { self.map.base().add(DATA_AT) }
    }

    /// The word-sized atomic at byte `at` of the value.
    ///
    /// # Safety
    ///
    /// `at` must be a multiple of 8 with `at + 8 <= size_of::<T>()`.
    unsafe fn data_word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: the segment holds DATA_AT + size_of::<T>() bytes, so the
        // caller's bound keeps the word inside it; a multiple of 8 from an
        // 8-aligned start is aligned. It lives as long as `map`. Every process
        // accesses these bytes only atomically, and always with the same
        // split into words and bytes (see `load_data`).
        unsafe { AtomicU64::from_ptr(self.data().add(at).cast()) }
    }

    /// The byte-sized atomic at byte `at` of the value (the tail after the
    /// last whole word).
    ///
    /// # Safety
    ///
    /// `at < size_of::<T>()`.
    unsafe fn data_byte(&self, at: usize) -> &AtomicU8 {
        // SAFETY: in bounds by the caller's bound, as in `data_word`; bytes
        // need no alignment.
        unsafe { AtomicU8::from_ptr(self.data().add(at)) }
    }

    /// Copies the value out, a relaxed atomic load per word (and per byte of
    /// the tail). Atomic rather than volatile: a reader's copy races with a
    /// writer by design (the sequence check throws a torn copy away), and a
    /// race between plain or volatile accesses would be undefined behaviour
    /// even when the result is discarded. Relaxed atomics are also what the
    /// fences in `get` and `write_locked` order. Any bytes make a valid `T`
    /// (it is `Pod`), so a torn copy is wrong but never unsound.
    fn load_data(&self) -> T {
        let mut value = T::zeroed();
        let bytes = bytemuck::bytes_of_mut(&mut value);
        let mut words = bytes.chunks_exact_mut(8);
        let mut at = 0;
        for word in &mut words {
            // SAFETY: `at` counts whole 8-byte chunks of a `T`, so it is a
            // multiple of 8 and the chunk ends within `size_of::<T>()`.
            let atomic = unsafe { self.data_word(at) };
            // Relaxed: ordered by the caller's fences or lock (see above).
            word.copy_from_slice(&atomic.load(Ordering::Relaxed).to_ne_bytes());
            at += 8;
        }
        for byte in words.into_remainder() {
            // SAFETY: `at` indexes a byte of the tail, inside the `T`.
            let atomic = unsafe { self.data_byte(at) };
            // Relaxed: as above.
            *byte = atomic.load(Ordering::Relaxed);
            at += 1;
        }
        value
    }

    /// Copies `value` in, with the same split as `load_data`. Only the lock
    /// holder calls it, between making the sequence odd and even again
    /// (`write_locked`).
    fn store_data(&self, value: &T) {
        let bytes = bytemuck::bytes_of(value);
        let mut words = bytes.chunks_exact(8);
        let mut at = 0;
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            // SAFETY: as in `load_data`: a multiple of 8, the chunk inside
            // the `T`.
            let atomic = unsafe { self.data_word(at) };
            // Relaxed: ordered by the fence and the Release store in
            // `write_locked`.
            atomic.store(u64::from_ne_bytes(w), Ordering::Relaxed);
            at += 8;
        }
        for &byte in words.remainder() {
            // SAFETY: `at` indexes a byte of the tail, inside the `T`.
            let atomic = unsafe { self.data_byte(at) };
            // Relaxed: as above.
            atomic.store(byte, Ordering::Relaxed);
            at += 1;
        }
    }

    /// Publishes `value`: the writer's half of the seqlock. The caller holds
    /// the lock, which makes it the only writer of the sequence and the data.
    ///
    /// The sequence is odd while the data changes. Its odd store must be
    /// visible before any data store is: a reader that copied a new word must
    /// then see the sequence changed. A Release *store* of the odd value
    /// would not do that (Release keeps earlier accesses before it, not later
    /// ones); the Release *fence* after it does (Boehm, "Can seqlocks get
    /// along with programming language memory models?", 2012; crossbeam's
    /// `SeqLock::write`).
    fn write_locked(&self, value: &T) {
        let seq = self.word(SEQ_AT);
        // Relaxed: the lock's Acquire (in `lock`) already made the last
        // writer's sequence store visible, and nobody else writes it now.
        // `| 1` rather than `+ 1`: even if the word holds an odd value (a
        // writer died mid-write, or a process scribbled on it), it is odd
        // during our write and even after.
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        // Release fence: keeps the odd store above before the data stores
        // below. Pairs with the Acquire fence in `get`: a reader whose copy
        // saw any of our data stores then sees at least this odd value when
        // it re-reads the sequence, and throws the copy away.
        fence(Ordering::Release);
        self.store_data(value);
        // Release: publishes the data stores. Pairs with the Acquire load of
        // the sequence at the top of `get`: a reader that sees this even
        // value sees all of our data.
        seq.store(odd.wrapping_add(1), Ordering::Release);
        // SeqCst: the partner of the readers' SeqCst store in
        // `sleep_while_writing` (see there); without sleeping readers a
        // write makes no system call.
        fence(Ordering::SeqCst);
        self.wake_readers();
    }

    /// The current value. Copies it without locking and retries if a write
    /// overlapped the copy. While a write is in progress it waits (briefly
    /// spinning, then asleep, woken when the write ends) for the writer:
    /// a writer that died mid-write is taken over at once, but one that is
    /// alive and *stopped* mid-write (`SIGSTOP`, a debugger) is waited for
    /// until it continues or dies. Where that must not happen, use
    /// [`get_timeout`](Self::get_timeout). If writes keep overlapping its
    /// copies (a writer that writes back to back), it takes the lock to copy,
    /// so that it is not starved by them; it then waits for the lock as a
    /// writer would. On the thread that holds the lock (a [`ValueGuard`]
    /// alive, or inside [`update`](Self::update)'s `f`) it never waits: it
    /// copies under that lock.
    ///
    /// # Waiting for the lock
    ///
    /// Since `get` can wait for the lock, it can deadlock like a lock can:
    /// thread A holds `x`'s guard and reads `y` while thread B holds `y`'s
    /// guard and reads `x`, each writing its own value back to back; each
    /// `get` may end up waiting for the other's lock, for ever, and this is
    /// not detected as [`Error::Deadlock`]. The lock is not fair either: a
    /// writer that writes back to back can keep winning it, and the reader
    /// waits meanwhile. Where either can happen (a reader holding another
    /// value's lock, or writers that never pause), read with
    /// [`get_timeout`](Self::get_timeout), which gives up at its deadline
    /// and can be retried once the guards are dropped.
    ///
    /// ```
    /// let point = corepool::Value::new([1.5f64, -2.0]).unwrap();
    /// assert_eq!(point.get(), [1.5, -2.0]);
    /// ```
    pub fn get(&self) -> T {
        loop {
            // Without a deadline the only error is `Deadlock`, which
            // `get_until` never returns (see there); looping keeps library
            // code free of a panic should that ever change.
            if let Ok(value) = self.get_until(None) {
                return value;
            }
        }
    }

    /// As [`get`](Self::get), waiting at most `timeout` for a writer that
    /// stays in the middle of a write (a stopped process, which is alive and
    /// so never taken over), or for the lock once writes keep overlapping
    /// the copy.
    ///
    /// ```
    /// use std::time::Duration;
    /// let v = corepool::Value::new([7u32; 4]).unwrap();
    /// assert_eq!(v.get_timeout(Duration::from_millis(100)).unwrap(), [7; 4]);
    /// // A writer stopped mid-write (SIGSTOP) would give
    /// // `Err(corepool::Error::Timeout)` after 100 ms instead of a wait.
    /// match v.get_timeout(Duration::from_millis(100)) {
    ///     Ok(x) => assert_eq!(x, [7; 4]),
    ///     Err(e) => assert_eq!(e, corepool::Error::Timeout),
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when no whole value could be copied within
    /// `timeout`; nothing else.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(deadline_after(timeout))
    }

    /// The readers' half of the seqlock, waiting until `deadline` (forever
    /// if `None`). Returns only a whole value or `Error::Timeout`.
    fn get_until(&self, deadline: Option<Instant>) -> Result<T> {
        let seq = self.word(SEQ_AT);
        let mut spinner = Spinner::new();
        let mut torn = 0;
        // The odd sequence value last waited on, and the nap for it.
        let mut waited_on = None;
        let mut nap = DEATH_CHECK;
        // Whether this thread holds the lock, once asked.
        let mut mine = None;
        loop {
            // Acquire: pairs with the Release store that ends a write in
            // `write_locked`, so an even value comes with that write's data.
            let before = seq.load(Ordering::Acquire);
            if before % 2 == 0 {
                let value = self.load_data();
                // Acquire fence: keeps the copy above before the re-read of
                // the sequence below. Pairs with the Release fence after the
                // odd store in `write_locked`.
                fence(Ordering::Acquire);
                // Relaxed: ordered by the fence above.
                if seq.load(Ordering::Relaxed) == before {
                    return Ok(value);
                }
                torn += 1;
                if torn >= TORN_COPIES_BEFORE_LOCKING {
                    // Writes keep overlapping the copy (a writer that writes
                    // back to back leaves no gap as long as a copy): copy
                    // under the lock instead, which writers must take.
                    return self.copy_under_the_lock(deadline);
                }
                continue;
            }
            // A write "in progress" while this thread holds the lock (a guard
            // alive, or inside `update`'s `f`) is one only we could end, and
            // we are not writing: a scribbled word. Asked once per call:
            // whether we hold the lock cannot change while we read.
            if *mine.get_or_insert_with(|| self.held_by_me()) {
                return Ok(self.copy_under_my_lock());
            }
            if spinner.spin() {
                continue;
            }
            // A write in progress for a while: its writer is slow, stopped
            // or dead.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(Error::Timeout);
            }
            self.finish_abandoned_write();
            if waited_on != Some(before) {
                if waited_on.is_some() {
                    // Another write began since our last nap: writes keep
                    // coming (or a scribbler keeps changing the word, which
                    // would otherwise keep us from ever sleeping long).
                    // Counts as a spoiled copy.
                    torn += 1;
                    if torn >= TORN_COPIES_BEFORE_LOCKING {
                        return self.copy_under_the_lock(deadline);
                    }
                }
                waited_on = Some(before);
                nap = DEATH_CHECK;
            }
            self.sleep_while_writing(before, left.map_or(nap, |l| l.min(nap)));
            // A writer still mid-write after a nap is likely stopped: look
            // at it less and less often, so that a long stop costs the
            // reader next to no CPU (its end wakes us at once anyway).
            nap = (nap * 2).min(STOPPED_WRITER_CHECK);
            spinner.reset();
        }
    }

    /// Sleeps on the sequence word while it is `odd` (at most `nap`): the
    /// writer wakes us when its write ends; the timeout brings us back to
    /// check whether it died.
    fn sleep_while_writing(&self, odd: u32, nap: Duration) {
        // SeqCst, with the SeqCst fence in `write_locked`: either the writer
        // sees our mark and wakes us, or the kernel's re-read of the
        // sequence inside `futex_wait` (ordered after this store) sees the
        // write ended and we do not sleep. Never cleared by us (others may
        // sleep too): the write that ends `odd` clears it (`wake_readers`).
        // `odd` is never 0, so the mark is never "nobody".
        self.word(READERS_AT).store(odd, Ordering::SeqCst);
        sys::futex_wait(self.word(SEQ_AT), odd, Some(nap));
    }

    /// The end of a write (after its SeqCst fence, the partner of the
    /// readers' SeqCst store in `sleep_while_writing`): if some reader left
    /// its mark, clears it and wakes every reader asleep on the sequence.
    ///
    /// The mark is the odd value a reader sleeps on, not a plain 1, so that
    /// clearing it loses nobody. The clear is a CAS from the mark we read:
    /// it can only erase a mark equal to one that was there before our write
    /// ended, and a reader of *this* write, which marks it with our odd
    /// value, waits for exactly the wake that follows. A plain flag could
    /// instead be erased by an earlier write's late clear after a reader of
    /// a later write raised it: that reader would sleep and that write see
    /// no flag (a wake lost until the nap ends). Sequence values repeat only
    /// after 2^31 writes, or if scribbled; then the cost is one nap.
    fn wake_readers(&self) {
        let readers = self.word(READERS_AT);
        // Relaxed: ordered by the caller's SeqCst fence (see above).
        let mark = readers.load(Ordering::Relaxed);
        if mark != 0 {
            // Relaxed: the wake below, which follows in program order, is
            // what sleepers wait for; a reader that marks the word after
            // this CAS keeps its mark (one spare wake later, never a lost
            // one). Failure means a newer mark: leave it.
            let _ = readers.compare_exchange(mark, 0, Ordering::Relaxed, Ordering::Relaxed);
            sys::futex_wake_all(self.word(SEQ_AT));
        }
    }

    /// A reader's fallback once writes keep spoiling its copies: takes the
    /// lock (waiting until `deadline`, asleep, as `lock` does) and copies
    /// under it, so that back-to-back writes cannot starve it for ever.
    fn copy_under_the_lock(&self, deadline: Option<Instant>) -> Result<T> {
        match self.take_lock(deadline) {
            // Held: also ends a write left odd with the lock free.
            Ok(_held) => Ok(self.copy_under_my_lock()),
            // This thread holds it, so no write of ours is under way and
            // nobody else may write: the changes are a scribbler's, and
            // waiting for them to stop could be for ever (review28 C-R3).
            Err(Error::Deadlock) => Ok(self.copy_under_my_lock()),
            Err(e) => Err(e),
        }
    }

    /// The value, for a reader that holds the lock (on this thread): ends a
    /// write left odd (which only this thread could end, and it is not
    /// writing: the word was scribbled) as `restore` does, so that other
    /// readers stop waiting, then copies. Like [`ValueGuard::get`], the copy
    /// is whole unless another party scribbles on the value's bytes too.
    fn copy_under_my_lock(&self) -> T {
        // Relaxed: we hold the lock, so only we write the sequence.
        if self.word(SEQ_AT).load(Ordering::Relaxed) % 2 == 1 {
            self.restore();
        }
        self.load_data()
    }

    /// Replaces the value, waiting for the lock as long as it takes (a dead
    /// holder's lock is taken over as soon as its death is visible).
    ///
    /// ```
    /// let flags = corepool::Value::new(0u8).unwrap();
    /// let seen_by_others = flags.clone(); // a clone (or a copy sent to a process) shares it
    /// flags.set(0b101).unwrap();
    /// assert_eq!(seen_by_others.get(), 0b101);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] when this thread holds the value's lock (a
    /// [`ValueGuard`] from [`lock`](Self::lock) is alive): write through the
    /// guard ([`ValueGuard::set`]) instead. Nothing is written.
    pub fn set(&self, value: T) -> Result<()> {
        self.set_until(value, None)
    }

    /// As [`set`](Self::set), waiting at most `timeout` for the lock: for a
    /// holder that may be stopped (`SIGSTOP`, a debugger), which is alive
    /// and so is never taken over.
    ///
    /// ```
    /// use std::time::Duration;
    /// let v = corepool::Value::new(1u32).unwrap();
    /// v.set_timeout(2, Duration::from_secs(1)).unwrap();
    /// let held = v.lock().unwrap();
    /// # let other = std::thread::spawn({ let v = v.clone(); move || {
    /// // Another thread (or process) meanwhile:
    /// let err = v.set_timeout(3, Duration::from_millis(1)).unwrap_err();
    /// assert_eq!(err, corepool::Error::Timeout);
    /// # }});
    /// # other.join().unwrap();
    /// drop(held);
    /// assert_eq!(v.get(), 2);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the lock stayed held that long (nothing is
    /// written); [`Error::Deadlock`] as for `set`.
    pub fn set_timeout(&self, value: T, timeout: Duration) -> Result<()> {
        self.set_until(value, deadline_after(timeout))
    }

    fn set_until(&self, value: T, deadline: Option<Instant>) -> Result<()> {
        let _lock = self.take_lock(deadline)?;
        self.write_locked(&value);
        Ok(())
    }

    /// Changes the value under the lock and returns what `f` returns: the way
    /// to do read-modify-write (`+= 1`) from several processes.
    ///
    /// `f` works on a copy; the value changes only once it returns, so
    /// readers keep seeing the old value meanwhile, and if `f` panics the
    /// value stays as it was and the lock is released. `f` may call
    /// [`Value::get`] on this value; its `set`, `update` and `lock` fail with
    /// [`Error::Deadlock`] there, since the lock is not reentrant.
    ///
    /// ```
    /// let stats = corepool::Value::new([0u64; 2]).unwrap(); // [count, sum]
    /// for x in [3u64, 4, 5] {
    ///     stats.update(|s| {
    ///         s[0] += 1;
    ///         s[1] += x;
    ///     }).unwrap();
    /// }
    /// let mean = stats.update(|s| s[1] / s[0]).unwrap(); // returns what the closure returns
    /// assert_eq!((stats.get(), mean), ([3, 12], 4));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] when this thread holds the value's lock (inside
    /// another `update`'s `f`, or while a [`ValueGuard`] is alive): `f` is
    /// not called, nothing is written.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        self.update_until(None, f)
    }

    /// As [`update`](Self::update), waiting at most `timeout` for the lock.
    ///
    /// ```
    /// use std::time::Duration;
    /// let hits = corepool::Value::new(0u64).unwrap();
    /// let now = hits.update_timeout(Duration::from_secs(1), |h| { *h += 1; *h }).unwrap();
    /// assert_eq!(now, 1);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the lock stayed held that long (`f` is not
    /// called); [`Error::Deadlock`] as for `update`.
    pub fn update_timeout<R>(&self, timeout: Duration, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        self.update_until(deadline_after(timeout), f)
    }

    fn update_until<R>(&self, deadline: Option<Instant>, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let _lock = self.take_lock(deadline)?;
        // Under the lock, no write overlaps this copy.
        let mut value = self.load_data();
        let out = f(&mut value);
        self.write_locked(&value);
        Ok(out)
    }

    /// Takes the value's lock for a compound update (Python's
    /// `with v.get_lock(): ...`): while the guard lives, [`ValueGuard::get`]
    /// and [`ValueGuard::set`] read and write under it, and no other
    /// `set`, `update` or `lock` (in any process) runs. A holder that dies is
    /// taken over, as for `update`. Readers ([`Value::get`]) do not wait for
    /// it, unless writes under it keep overlapping their copies (see `get`,
    /// and its note on deadlocks when a reader holds another value's lock).
    ///
    /// A reader that meets a holder that died mid-write takes its lock over
    /// and lets go again at once, to end that write; the next `lock` then
    /// finds the lock free and [`ValueGuard::previous_holder_died`] is
    /// `false`, although a holder died. The report goes to whichever caller
    /// took the lock over, and a reader does not pass it on.
    ///
    /// The lock is held by a thread, and is not reentrant: while the guard
    /// lives, this thread's `set`, `update` and `lock` on the value fail
    /// with [`Error::Deadlock`] instead of waiting forever (as
    /// [`Lock`](crate::Lock) does).
    ///
    /// ```
    /// let balance = corepool::Value::new(100i64).unwrap();
    /// let mut held = balance.lock().unwrap();
    /// let now = held.get();
    /// if now >= 30 {
    ///     held.set(now - 30); // check-then-act, with nobody in between
    /// }
    /// assert_eq!(balance.set(0), Err(corepool::Error::Deadlock)); // the guard holds it
    /// drop(held);
    /// assert_eq!(balance.get(), 70);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] when this thread already holds it.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        self.take_lock(None)
    }

    /// As [`lock`](Self::lock), waiting at most `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let v = corepool::Value::new(5u8).unwrap();
    /// let held = v.lock_timeout(Duration::from_secs(1)).unwrap();
    /// assert!(!held.previous_holder_died());
    /// assert_eq!(v.lock_timeout(Duration::from_secs(1)).unwrap_err(), corepool::Error::Deadlock);
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when it stayed held that long;
    /// [`Error::Deadlock`] when this thread already holds it.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>> {
        self.take_lock(deadline_after(timeout))
    }

    /// Takes the lock if it is free or its holder is dead, without waiting:
    /// `Ok(None)` while another live holder (another thread or process, a
    /// stopped one included) has it.
    ///
    /// ```
    /// let v = corepool::Value::new(5u8).unwrap();
    /// let mut held = v.try_lock().unwrap().expect("free");
    /// // Held by this very thread: an error, as for `lock`, since waiting
    /// // for it (or retrying) would never succeed.
    /// assert_eq!(v.try_lock().unwrap_err(), corepool::Error::Deadlock);
    /// held.set(6);
    /// drop(held);
    /// assert_eq!(v.try_lock().unwrap().map(|g| g.get()), Some(6));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Deadlock`] when this thread already holds it (a
    /// [`ValueGuard`] is alive, or inside `update`'s `f`), as `lock`, `set`
    /// and `update` do: `None` there would read as "busy, try again", and a
    /// retry loop on the holding thread would never end.
    pub fn try_lock(&self) -> Result<Option<ValueGuard<'_, T>>> {
        if self.held_by_me() {
            return Err(Error::Deadlock);
        }
        Ok(self.try_once(true).ok())
    }

    /// Whether the calling thread holds the lock.
    fn held_by_me(&self) -> bool {
        // Acquire: pairs with the Release store in `unlock` (through the
        // release sequence our CAS continues), so a thread word left by an
        // earlier holder of this process was cleared before we read it.
        let holder = self.word(LOCK_AT).load(Ordering::Acquire);
        // Relaxed: only this thread ever writes its own token there, so
        // reading our token means we wrote it. The tag tells us from a dead
        // process whose pid we reused (whose token may equal ours): its
        // recorded tag is not ours.
        let tag = self.owner().read();
        holder == sys::current_pid()
            && self.word(THREAD_AT).load(Ordering::Relaxed) == my_thread_token()
            && (tag == UNKNOWN || tag == my_start_tag())
    }

    /// Takes the lock, from a dead holder if need be, waiting until
    /// `deadline` (forever if `None`); it is released when the returned
    /// guard drops.
    fn take_lock(&self, deadline: Option<Instant>) -> Result<ValueGuard<'_, T>> {
        if self.held_by_me() {
            return Err(Error::Deadlock);
        }
        let mut spinner = Spinner::new();
        loop {
            // A short spin first, without looking at /proc: most holders
            // release within it.
            let spinning = spinner.spin();
            // Read before the attempt, so that an unlock after it changes
            // the count we would sleep on. Acquire: pairs with the Release
            // add in `unlock`: if we see its count, our CAS below sees its
            // release of the lock (or a later holder), so we never sleep on
            // a count whose hold has already ended.
            let unlocks = self.word(UNLOCKS_AT).load(Ordering::Acquire);
            match self.try_once(!spinning) {
                Ok(guard) => return Ok(guard),
                Err(_) if spinning => {}
                Err(_) => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(Error::Timeout);
                    }
                    self.sleep_while_held(unlocks, left);
                }
            }
        }
    }

    /// One attempt: takes a free lock, or (with `check_death`) a dead
    /// holder's. `Err(holder)` when a live (or unknowable) holder has it.
    fn try_once(&self, check_death: bool) -> std::result::Result<ValueGuard<'_, T>, u32> {
        let lock = self.word(LOCK_AT);
        let me = sys::current_pid();
        // Acquire: pairs with the Release store in `unlock`, so the last
        // holder's writes (data and sequence) are visible to us. Acquire on
        // failure too: the holder we read was recorded after an `unlock`
        // that cleared the tag before its Release store, so the tag we then
        // read is that holder's or UNKNOWN, never the last holder's.
        let holder = match lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                self.taken();
                return Ok(ValueGuard::new(self, false));
            }
            Err(holder) => holder,
        };
        if !check_death {
            return Err(holder);
        }
        let Some(tag) = self.dead_holder_tag(holder) else {
            return Err(holder);
        };
        // The holder died in its critical section: take over, its tag
        // forgotten first so that ours replaces it.
        self.owner().forget(tag);
        // AcqRel. Acquire: the dead holder never released, but its CAS
        // continued the release sequence of the `unlock` before it, so this
        // pairs with that Release store in `unlock`. Release: orders
        // `forget` above before our pid, so a checker that reads our pid
        // (Acquire) never pairs it with the dead holder's tag and takes the
        // lock from us (as the queue's repair CAS, shm/mpmc/slot.rs).
        match lock.compare_exchange(holder, me, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => {
                self.taken();
                self.restore();
                Ok(ValueGuard::new(self, true))
            }
            Err(now) => Err(now),
        }
    }

    /// Records the new holder (this thread), just after winning the word.
    fn taken(&self) {
        self.owner().record_mine();
        // Relaxed: read only by this process's threads, each looking for its
        // own token (see `held_by_me`).
        self.word(THREAD_AT)
            .store(my_thread_token(), Ordering::Relaxed);
    }

    /// Sleeps a little while the unlock count stays `unlocks` (read before
    /// the attempt that found the lock held), at most `left`: the unlock
    /// wakes us; the timeout brings us back to check whether the holder
    /// died.
    fn sleep_while_held(&self, unlocks: u32, left: Option<Duration>) {
        let nap = left.map_or(DEATH_CHECK, |l| l.min(DEATH_CHECK));
        self.mark_sleeper(unlocks);
        sys::futex_wait(self.word(UNLOCKS_AT), unlocks, Some(nap));
        // The mark is not withdrawn (others may sleep on the same count):
        // the unlock that moves the count past it clears it.
    }

    /// Leaves the sleep mark for a locker about to sleep on unlock count
    /// `unlocks`, unless a mark for a later count is there already.
    ///
    /// Newest wins, so that a slow locker (one that read an older count)
    /// cannot replace the mark of one that sleeps on the current count: the
    /// next unlock would then find only the older mark, clear it, and the
    /// current sleeper would sleep through the unlock after (a lost wake
    /// until its nap ends). An older locker needs no mark of its own when a
    /// later one is there: a later count exists, so the count it would sleep
    /// on has passed and `FUTEX_WAIT` returns at once.
    ///
    /// A bounded number of CAS attempts: a word that keeps changing under
    /// them is being scribbled on (lockers change it at most once each per
    /// nap); then a plain store, whose worst case is that lost wake.
    fn mark_sleeper(&self, unlocks: u32) {
        let word = self.word(SLEEPERS_AT);
        let mine = unlocks | 1;
        // Relaxed: only a first guess for the CAS, which decides.
        let mut seen = word.load(Ordering::Relaxed);
        for _ in 0..8 {
            if seen != 0 && seen != mine && count_is_after(seen, mine) {
                return;
            }
            // SeqCst, with the SeqCst fence in `unlock`: either the unlocker
            // sees our mark (or a later value of the word) and wakes us, or
            // the kernel's re-read of the count inside `futex_wait` (ordered
            // after this CAS) sees its new count and we do not sleep. A CAS
            // even when the word already holds `mine`: our own write in that
            // order is what the argument needs.
            match word.compare_exchange(seen, mine, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => seen = now,
            }
        }
        // SeqCst: as the CAS above.
        word.store(mine, Ordering::SeqCst);
    }

    fn unlock(&self) {
        let lock = self.word(LOCK_AT);
        // Relaxed: ordered before the next holder by the Release store below.
        self.word(THREAD_AT).store(0, Ordering::Relaxed);
        self.owner().clear();
        // Release: pairs with the Acquire CASes in `take_lock`, so the next holder
        // sees our writes.
        lock.store(0, Ordering::Release);
        let unlocks = self.word(UNLOCKS_AT);
        // After the release of the lock word, and Release: pairs with the
        // Acquire load of the count in `take_lock`, so a locker that reads
        // this count finds the lock released (or held by a later holder).
        let now = unlocks.fetch_add(2, Ordering::Release).wrapping_add(2);
        // SeqCst: the partner of the CAS in `mark_sleeper` (see there);
        // without sleepers an unlock makes no system call.
        fence(Ordering::SeqCst);
        let marks = self.word(SLEEPERS_AT);
        // Acquire: pairs with the SeqCst (so Release) CAS in `mark_sleeper`,
        // so the count a marking locker read before its CAS is no later than
        // the count we read next (coherence): a true mark lies between our
        // count and that one.
        let mark = marks.load(Ordering::Acquire);
        if mark == 0 {
            return;
        }
        // Relaxed: ordered after the mark load above by its Acquire.
        let latest = unlocks.load(Ordering::Relaxed) | 1;
        // A mark for our count or a later one (up to the latest) belongs to
        // a locker that may still sleep on that count, and its unlock must
        // find it: left alone. Any other (an older count, whose lockers our
        // count change and the wake below release; a dead locker's; a
        // forged value) is cleared, so that it costs this one wake and no
        // more. A CAS from the value we read: a newer mark written since is
        // kept (Relaxed: the wake below, after it in program order, is what
        // sleepers wait for).
        let live = !count_is_after(now | 1, mark) && !count_is_after(mark, latest);
        if !live {
            let _ = marks.compare_exchange(mark, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        sys::futex_wake_all(unlocks);
    }

    /// After taking the lock from a dead holder, which may have died
    /// mid-write (sequence odd, data half-written): writes back what it left
    /// as a write of our own. The sequence ends even, so readers stop
    /// waiting, and the bytes they then copy are ours, ordered by our
    /// fence and Release store, not stores of a process that never
    /// published them. For plain data, what it left is a valid `T`.
    fn restore(&self) {
        // Relaxed loads (in `load_data`): we hold the lock; the dead holder's
        // stores reached memory before the kernel reaped it.
        let left = self.load_data();
        self.write_locked(&left);
    }

    /// The lock holder's owner tag.
    fn owner(&self) -> OwnerTag<'_> {
        OwnerTag::new(self.word(OWNER_AT))
    }

    /// `Some(its tag)` if `holder`, read from the lock word just before, is
    /// definitely dead; `None` if it lives or cannot be checked.
    fn dead_holder_tag(&self, holder: u32) -> Option<u32> {
        // Read after the lock word, so the tag is `holder`'s or UNKNOWN.
        let tag = self.owner().read();
        // A pid past i32::MAX is garbage, as is a negative one.
        let pid = i32::try_from(holder).unwrap_or(-1);
        holder_is_dead(pid, tag, self.owner()).then_some(tag)
    }

    /// A reader found the sequence odd for a while. If the lock's holder is
    /// dead, takes it over (which rewrites what it left, `restore`); if the
    /// lock is free, the odd sequence is a write nobody will end (a
    /// scribbled word): rewrites the value so that it ends. One attempt,
    /// never a wait: a live holder is left alone.
    fn finish_abandoned_write(&self) {
        let Ok(held) = self.try_once(true) else {
            return;
        };
        // Relaxed: we hold the lock (its Acquire CAS), so only we write the
        // sequence now.
        if self.word(SEQ_AT).load(Ordering::Relaxed) % 2 == 1 {
            self.restore();
        }
        drop(held);
    }

    /// Test hook: takes the lock, starts a write and dies there.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn lock_and_abort(&self) -> ! {
        let Ok(lock) = self.take_lock(None) else {
            std::process::abort()
        };
        std::mem::forget(lock);
        let seq = self.word(SEQ_AT);
        // Relaxed: a write that never ends; nobody is meant to see its data.
        seq.store(seq.load(Ordering::Relaxed) | 1, Ordering::Relaxed);
        std::process::abort()
    }
}

/// Whether unlock count (or mark) `a` comes after `b`, counting in the
/// wrapping order of a word that only grows: `a` is less than half the
/// range ahead of `b`.
fn count_is_after(a: u32, b: u32) -> bool {
    // Reinterpreting the wrapped difference as signed is the comparison.
    (a.wrapping_sub(b) as i32) > 0
}

/// The lock of a [`Value`], held (from [`Value::lock`]): reads and writes
/// the value under it, and unlocks when dropped, also when a panic unwinds.
/// Bound to the thread that took it (it is not `Send`).
///
/// ```
/// use corepool::{Process, Value};
///
/// fn deposit(account: Value<i64>) {
///     let mut held = account.lock().unwrap();
///     let balance = held.get();
///     held.set(balance + 10); // nobody else reads or writes in between
/// }
///
/// fn main() -> corepool::Result<()> {
///     let account = Value::new(0i64)?;
///     let children: Vec<_> = (0..3)
///         .map(|_| Process::start(deposit, account.clone()))
///         .collect::<corepool::Result<_>>()?;
///     for child in children {
///         child.join()?;
///     }
///     assert_eq!(account.get(), 30);
///     Ok(())
/// }
/// ```
#[must_use = "the lock is released as soon as the guard drops"]
pub struct ValueGuard<'a, T: Pod> {
    value: &'a Value<T>,
    owner_died: bool,
    _thread_bound: PhantomData<*const ()>,
}

impl<'a, T: Pod> ValueGuard<'a, T> {
    fn new(value: &'a Value<T>, owner_died: bool) -> Self {
        Self {
            value,
            owner_died,
            _thread_bound: PhantomData,
        }
    }

    /// The value (no write can overlap it while the lock is held).
    ///
    /// ```
    /// let v = corepool::Value::new(5u32).unwrap();
    /// assert_eq!(v.lock().unwrap().get(), 5);
    /// ```
    pub fn get(&self) -> T {
        // Under the lock, no write overlaps this copy.
        self.value.load_data()
    }

    /// Replaces the value; readers see the new one at once.
    ///
    /// ```
    /// let v = corepool::Value::new(5u32).unwrap();
    /// v.lock().unwrap().set(6);
    /// assert_eq!(v.get(), 6);
    /// ```
    pub fn set(&mut self, value: T) {
        self.value.write_locked(&value);
    }

    /// Whether this lock was taken over from a holder that died holding it
    /// (the value is then what it left, which for plain data is a valid
    /// `T`). A reader that met the dead writer first may have repaired the
    /// lock already, so `false` does not prove that nobody died.
    ///
    /// ```
    /// let v = corepool::Value::new(0u8).unwrap();
    /// assert!(!v.lock().unwrap().previous_holder_died());
    /// ```
    pub fn previous_holder_died(&self) -> bool {
        self.owner_died
    }
}

impl<T: Pod> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueGuard")
            .field("type", &std::any::type_name::<T>())
            .field("previous_holder_died", &self.owner_died)
            .finish_non_exhaustive()
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        self.value.unlock();
    }
}

impl<T> Drop for Value<T> {
    fn drop(&mut self) {
        crate::shm::handle::dropping(&self.map);
    }
}

impl<T: Pod + Send> Wire for Value<T> {
    fn encode(&self, out: &mut Encoder) {
        self.map.encode(type_tag::<Value<T>>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let size = (DATA_AT + std::mem::size_of::<T>().max(1)) as u64;
        let (map, _) =
            SharedSegment::decode::<Self>(input, type_tag::<Value<T>>(), |_| Some(size))?;
        if map.segment().len() < size as usize {
            return Err(decode_error::<Self>("too small"));
        }
        Ok(Self {
            map,
            _type: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_in_process() {
        let v = Value::new([1.0f32, 2.5]).unwrap();
        assert_eq!(v.get(), [1.0, 2.5]);
        v.set([3.0, 4.5]).unwrap();
        assert_eq!(
            v.update(|x| {
                x[0] += 1.0;
                x[0]
            })
            .unwrap(),
            4.0
        );
        assert_eq!(v.get(), [4.0, 4.5]);
    }

    #[test]
    fn a_guard_reads_and_writes_under_the_lock() {
        let v = Value::new(10u32).unwrap();
        let mut held = v.lock().unwrap();
        assert!(!held.previous_holder_died());
        let now = held.get();
        held.set(now + 5);
        assert_eq!(v.get(), 15, "readers see it at once");
        drop(held);
        v.update(|x| *x += 1).unwrap(); // the lock was released
        assert_eq!(v.lock().unwrap().get(), 16);
    }

    #[test]
    #[cfg_attr(miri, ignore = "judges a pid dead through the kernel")]
    fn a_guard_reports_a_dead_holder() {
        let v = Value::new(7u64).unwrap();
        v.word(LOCK_AT)
            .store(i32::MAX as u32 - 1, Ordering::Relaxed);
        let held = v.lock().unwrap();
        assert!(held.previous_holder_died());
        assert_eq!(held.get(), 7);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "needs another process (its descriptor table, or a pid that is dead)"
    )]
    fn a_lock_held_by_a_dead_pid_is_taken_over() {
        let v = Value::new(7u64).unwrap();
        // Pretend a dead process holds the lock mid-write.
        v.word(LOCK_AT)
            .store(i32::MAX as u32 - 1, Ordering::Relaxed);
        v.word(SEQ_AT).store(1, Ordering::Relaxed);
        assert_eq!(v.get(), 7, "a reader repairs it");
        v.set(8).unwrap();
        assert_eq!(v.get(), 8);
    }

    #[test]
    #[cfg_attr(miri, ignore = "starts a process and reads /proc")]
    fn a_lock_held_by_a_reused_pid_is_taken_over() {
        with_watchdog(|| {
            let v = Value::new(7u64).unwrap();
            // The lock names a live process, but not the one that took it:
            // the recorded start time differs, so the holder died and its
            // pid went to another process.
            let mut other = std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("start sleep");
            let pid = other.id();
            let real = crate::shm::owner::start_tag_of(pid as i32);
            v.word(LOCK_AT).store(pid, Ordering::Relaxed);
            v.word(OWNER_AT)
                .store(real.wrapping_add(1).max(1), Ordering::Relaxed);
            v.word(SEQ_AT).store(1, Ordering::Relaxed);
            assert_eq!(v.get(), 7, "a reader repairs it");
            v.update(|x| *x += 1).unwrap();
            assert_eq!(v.get(), 8, "a writer takes the lock");
            let _ = other.kill();
            let _ = other.wait();
        });
    }

    /// Runs `body` on a thread and fails the test if it has not finished
    /// within a generous bound: a lost unlock or a stuck sequence would
    /// otherwise hang the whole run. A hang detector, not a timing check.
    fn with_watchdog(body: impl FnOnce() + Send + 'static) {
        let limit = Duration::from_secs(if cfg!(miri) { 3_600 } else { 120 });
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            body();
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(limit) {
            Ok(()) => worker.join().unwrap(),
            // The body panicked: report its panic.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(worker.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("hung for {limit:?}: the watchdog fails the test")
            }
        }
    }

    #[test]
    fn readers_never_see_a_torn_value() {
        // Every write stores eight equal words; a reader that ever copies
        // unequal ones has accepted a copy that overlapped a write.
        let writes: u64 = if cfg!(miri) { 60 } else { 100_000 };
        with_watchdog(move || {
            let v = Value::new([0u64; 8]).unwrap();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (v, done) = (v.clone(), done.clone());
                    std::thread::spawn(move || {
                        let mut last = 0;
                        loop {
                            // Acquire: pairs with the writer's Release store
                            // of `done`; checked before the read so that the
                            // read after it sees the last write.
                            let finished = done.load(Ordering::Acquire);
                            let x = v.get();
                            assert!(x.iter().all(|&w| w == x[0]), "torn read: {x:?}");
                            assert!(x[0] >= last, "went back from {last} to {}", x[0]);
                            last = x[0];
                            if finished {
                                assert_eq!(last, writes);
                                return;
                            }
                        }
                    })
                })
                .collect();
            for i in 1..=writes {
                v.set([i; 8]).unwrap();
            }
            // Release: pairs with the readers' Acquire loads of `done`.
            done.store(true, Ordering::Release);
            for r in readers {
                r.join().unwrap();
            }
        });
    }

    #[test]
    fn updates_from_threads_are_not_lost_and_odd_sizes_round_trip() {
        let per: u32 = if cfg!(miri) { 20 } else { 10_000 };
        with_watchdog(move || {
            // 13 bytes: one word and a five-byte tail.
            let v = Value::new([0u8; 13]).unwrap();
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let v = v.clone();
                    std::thread::spawn(move || {
                        for _ in 0..per {
                            v.update(|x| {
                                let n = u32::from_le_bytes([x[9], x[10], x[11], x[12]]) + 1;
                                x[9..].copy_from_slice(&n.to_le_bytes());
                                x[0] = x[0].wrapping_add(1);
                            })
                            .unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let x = v.get();
            assert_eq!(u32::from_le_bytes([x[9], x[10], x[11], x[12]]), 2 * per);
            assert_eq!(x[0], (2 * per) as u8);
        });
    }

    #[test]
    fn re_entry_on_the_holding_thread_is_a_deadlock_error_not_a_hang() {
        with_watchdog(|| {
            let v = Value::new(1u64).unwrap();
            let mut held = v.lock().unwrap();
            assert_eq!(v.set(5), Err(Error::Deadlock));
            let mut called = false;
            assert_eq!(v.update(|_| called = true), Err(Error::Deadlock));
            assert!(!called, "f is not called");
            assert_eq!(v.lock().unwrap_err(), Error::Deadlock);
            let long = Duration::from_secs(3_600);
            assert_eq!(v.lock_timeout(long).unwrap_err(), Error::Deadlock);
            assert_eq!(v.set_timeout(5, long), Err(Error::Deadlock));
            assert_eq!(v.update_timeout(long, |_| ()), Err(Error::Deadlock));
            assert_eq!(v.try_lock().unwrap_err(), Error::Deadlock);
            held.set(2);
            drop(held);
            assert_eq!(v.get(), 2, "nothing written by the refused calls");
            // Inside `update`'s closure too.
            let inner = v.update(|x| {
                *x += 1;
                v.set(9)
            });
            assert_eq!(inner, Ok(Err(Error::Deadlock)));
            assert_eq!(v.get(), 3);
            v.set(4).unwrap();
            assert_eq!(v.try_lock().unwrap().map(|g| g.get()), Some(4), "released");
        });
    }

    #[test]
    fn a_live_holder_on_another_thread_times_out_the_timeout_forms() {
        with_watchdog(|| {
            let v = Value::new(1u64).unwrap();
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let holder = {
                let v = v.clone();
                std::thread::spawn(move || {
                    let guard = v.lock().unwrap();
                    held_tx.send(()).unwrap();
                    let _ = release_rx.recv();
                    drop(guard);
                })
            };
            held_rx.recv().unwrap();
            let short = Duration::from_millis(1);
            assert_eq!(v.lock_timeout(short).unwrap_err(), Error::Timeout);
            assert_eq!(v.set_timeout(7, short), Err(Error::Timeout));
            let mut called = false;
            assert_eq!(
                v.update_timeout(short, |_| called = true),
                Err(Error::Timeout)
            );
            assert!(!called);
            assert!(v.try_lock().unwrap().is_none(), "held by a live thread");
            release_tx.send(()).unwrap();
            holder.join().unwrap();
            assert_eq!(v.get(), 1);
            v.set_timeout(7, Duration::from_secs(3_600)).unwrap();
            assert_eq!(v.get(), 7);
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads this process's start time from /proc")]
    fn a_dead_process_that_had_our_pid_is_not_taken_for_this_thread() {
        let v = Value::new(7u64).unwrap();
        // The lock names our pid and this thread's token, with another
        // start time: a dead process whose pid we reused (its token may
        // equal ours). Not a deadlock: its lock is taken over.
        v.word(LOCK_AT).store(sys::current_pid(), Ordering::Relaxed);
        v.word(THREAD_AT)
            .store(my_thread_token(), Ordering::Relaxed);
        v.word(OWNER_AT)
            .store(my_start_tag().wrapping_add(1).max(1), Ordering::Relaxed);
        let held = v.lock().unwrap();
        assert!(held.previous_holder_died());
    }

    #[test]
    fn a_write_left_odd_with_the_lock_free_is_finished_by_a_reader() {
        with_watchdog(|| {
            let v = Value::new(7u64).unwrap();
            // A scribbled sequence: odd, and nobody holds the lock to end it.
            v.word(SEQ_AT).store(5, Ordering::Relaxed);
            assert_eq!(v.get(), 7, "a reader rewrites it");
            assert_eq!(v.word(SEQ_AT).load(Ordering::Relaxed) % 2, 0);
            assert_eq!(v.word(LOCK_AT).load(Ordering::Relaxed), 0, "released");
        });
    }

    /// review28 C-B1: the holding thread's `get` (a guard alive, or inside
    /// `update`'s closure) on a sequence left odd (a scribbled word): only
    /// this thread could end that write, so waiting for it would be for ever.
    #[test]
    #[cfg_attr(miri, ignore = "reads this process's start time from /proc")]
    fn get_on_the_holding_thread_with_an_odd_sequence_returns_the_value() {
        with_watchdog(|| {
            let v = Value::new(7u64).unwrap();
            let held = v.lock().unwrap();
            v.word(SEQ_AT).store(5, Ordering::Relaxed);
            let got = v.get_timeout(Duration::from_secs(10));
            assert_eq!(got, Ok(7), "the holder ends the write itself");
            assert_eq!(v.get(), 7);
            assert_eq!(v.word(SEQ_AT).load(Ordering::Relaxed) % 2, 0, "restored");
            drop(held);
            // Inside `update`'s closure, which the docs let call `get`.
            let seen = v
                .update(|x| {
                    v.word(SEQ_AT).store(9, Ordering::Relaxed);
                    *x += 1;
                    v.get()
                })
                .unwrap();
            assert_eq!(seen, 7, "f works on a copy: `get` sees the old value");
            assert_eq!(v.get(), 8);
        });
    }

    /// review28 C-R3: on the holding thread, a sequence word that another
    /// party keeps changing (between even values) spoils every lock-free
    /// copy; `get` copies under the lock this thread holds instead of
    /// looping for ever.
    #[test]
    #[cfg_attr(miri, ignore = "reads this process's start time from /proc")]
    fn get_on_the_holding_thread_ignores_a_sequence_that_keeps_changing() {
        with_watchdog(|| {
            // 32 KiB: a copy takes long enough to span many changes.
            let v = Value::new([3u64; 4096]).unwrap();
            let held = v.lock().unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scribbler = {
                let (v, stop) = (v.clone(), stop.clone());
                std::thread::spawn(move || {
                    // Relaxed: a stop flag; nothing else is published by it.
                    while !stop.load(Ordering::Relaxed) {
                        v.word(SEQ_AT).fetch_add(2, Ordering::Relaxed);
                    }
                })
            };
            // Under way (the watchdog bounds this wait).
            while v.word(SEQ_AT).load(Ordering::Relaxed) < 1_000 {
                std::hint::spin_loop();
            }
            let got = v.get_timeout(Duration::from_secs(10));
            let again = v.get();
            stop.store(true, Ordering::Relaxed);
            scribbler.join().unwrap();
            drop(held);
            assert_eq!(got, Ok([3; 4096]));
            assert_eq!(again, [3; 4096]);
        });
    }

    /// A sequence that keeps changing between odd values (a scribbler) while
    /// a live holder (here: another thread of ours, in name) has the lock:
    /// `get_timeout` goes to wait for the lock after a few changes, asleep,
    /// and gives up at its deadline.
    #[test]
    #[cfg_attr(miri, ignore = "reads this process's start time from /proc")]
    fn get_timeout_gives_up_on_a_sequence_that_keeps_changing_mid_write() {
        with_watchdog(|| {
            let v = Value::new(7u64).unwrap();
            v.word(LOCK_AT).store(sys::current_pid(), Ordering::Relaxed);
            v.word(OWNER_AT).store(my_start_tag(), Ordering::Relaxed);
            v.word(THREAD_AT)
                .store(my_thread_token().wrapping_add(1), Ordering::Relaxed);
            v.word(SEQ_AT).store(1, Ordering::Relaxed);
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scribbler = {
                let (v, stop) = (v.clone(), stop.clone());
                std::thread::spawn(move || {
                    // Relaxed: a stop flag; nothing else is published by it.
                    while !stop.load(Ordering::Relaxed) {
                        v.word(SEQ_AT).fetch_add(2, Ordering::Relaxed);
                    }
                })
            };
            let got = v.get_timeout(Duration::from_millis(20));
            stop.store(true, Ordering::Relaxed);
            scribbler.join().unwrap();
            assert_eq!(got, Err(Error::Timeout));
        });
    }

    /// review28 C-R1: the readers word is a mark that the next write clears,
    /// so a reader that died asleep (or a forged word) costs one futex wake,
    /// not one per write for ever.
    #[test]
    fn a_readers_mark_left_behind_is_cleared_by_the_next_write() {
        let v = Value::new(1u64).unwrap();
        v.word(READERS_AT).store(u32::MAX, Ordering::Relaxed);
        v.set(2).unwrap();
        assert_eq!(v.word(READERS_AT).load(Ordering::Relaxed), 0);
        v.word(READERS_AT).store(3, Ordering::Relaxed);
        v.update(|x| *x += 1).unwrap();
        assert_eq!(v.word(READERS_AT).load(Ordering::Relaxed), 0);
        assert_eq!(v.get(), 3);
    }

    /// A locker that dies asleep on the lock leaves its sleep mark behind
    /// (before, a sleeper count of 1 that no one would ever take back, and
    /// every later unlock made a futex wake for it). The next unlock clears
    /// it, whatever it holds: an old count's mark, a forged value far
    /// ahead, or one just behind the count.
    #[test]
    fn a_sleep_mark_left_behind_is_cleared_by_the_next_unlock() {
        let v = Value::new(1u64).unwrap();
        let count = |v: &Value<u64>| v.word(UNLOCKS_AT).load(Ordering::Relaxed);
        let left_behind = [
            1,                             // a dead locker's mark for count 0
            u32::MAX,                      // forged
            count(&v).wrapping_add(1_001), // forged, ahead of every count
        ];
        for mark in left_behind {
            v.word(SLEEPERS_AT).store(mark, Ordering::Relaxed);
            drop(v.lock().unwrap());
            assert_eq!(
                v.word(SLEEPERS_AT).load(Ordering::Relaxed),
                0,
                "mark {mark}"
            );
        }
        // Through `set` and `update` too (they unlock the same way).
        v.word(SLEEPERS_AT)
            .store(count(&v).wrapping_sub(1), Ordering::Relaxed);
        v.set(2).unwrap();
        assert_eq!(v.word(SLEEPERS_AT).load(Ordering::Relaxed), 0);
        v.word(SLEEPERS_AT).store(7, Ordering::Relaxed);
        v.update(|x| *x += 1).unwrap();
        assert_eq!(v.word(SLEEPERS_AT).load(Ordering::Relaxed), 0);
        assert_eq!(v.get(), 3);
    }

    /// A live locker's mark, for the count of the hold it waits on, is left
    /// for that hold's unlock; an older locker does not replace it.
    #[test]
    fn a_live_sleep_mark_is_kept_and_newest_wins() {
        let v = Value::new(1u64).unwrap();
        let now = v.word(UNLOCKS_AT).load(Ordering::Relaxed);
        v.mark_sleeper(now);
        assert_eq!(v.word(SLEEPERS_AT).load(Ordering::Relaxed), now | 1);
        v.mark_sleeper(now.wrapping_sub(2));
        assert_eq!(
            v.word(SLEEPERS_AT).load(Ordering::Relaxed),
            now | 1,
            "an older count's locker keeps the newer mark"
        );
        // The unlock that ends the hold it waits on (count `now`) wakes it,
        // and clears the mark, since nobody can sleep on `now` any more.
        drop(v.lock().unwrap());
        assert_eq!(v.word(SLEEPERS_AT).load(Ordering::Relaxed), 0);
        // A mark for the count after an unlock (a locker that read the new
        // count and found the lock held again) is kept by that unlock's
        // late clear: simulated by marking the count the next unlock makes.
        let next = v.word(UNLOCKS_AT).load(Ordering::Relaxed).wrapping_add(2);
        v.word(SLEEPERS_AT).store(next | 1, Ordering::Relaxed);
        drop(v.lock().unwrap());
        assert_eq!(
            v.word(SLEEPERS_AT).load(Ordering::Relaxed),
            next | 1,
            "a mark for the current count belongs to a locker that may sleep on it"
        );
        drop(v.lock().unwrap());
        assert_eq!(v.word(SLEEPERS_AT).load(Ordering::Relaxed), 0);
    }

    /// Lockers contending through the unlock count's wrap, from forged
    /// words: no update lost, no hang (the watchdog), and no mark left once
    /// they are done.
    #[test]
    fn lockers_contend_across_the_count_wrap_and_leave_no_mark() {
        let per: u32 = if cfg!(miri) { 20 } else { 5_000 };
        with_watchdog(move || {
            let v = Value::new(0u64).unwrap();
            v.word(UNLOCKS_AT)
                .store(u32::MAX - 2 * per, Ordering::Relaxed);
            v.word(SLEEPERS_AT).store(0x8000_0001, Ordering::Relaxed);
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let v = v.clone();
                    std::thread::spawn(move || {
                        for _ in 0..per {
                            let mut held = v.lock().unwrap();
                            let x = held.get();
                            held.set(x + 1);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(v.get(), 3 * u64::from(per));
            drop(v.lock().unwrap());
            assert_eq!(v.word(SLEEPERS_AT).load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads this process's start time from /proc")]
    fn get_timeout_gives_up_on_a_live_writer_stuck_mid_write() {
        with_watchdog(|| {
            let v = Value::new(7u64).unwrap();
            // Another thread of this process holds the lock mid-write (as a
            // stopped one would): alive, so never taken over.
            v.word(LOCK_AT).store(sys::current_pid(), Ordering::Relaxed);
            v.word(OWNER_AT).store(my_start_tag(), Ordering::Relaxed);
            v.word(THREAD_AT)
                .store(my_thread_token().wrapping_add(1), Ordering::Relaxed);
            v.word(SEQ_AT).store(3, Ordering::Relaxed);
            let short = Duration::from_millis(20);
            assert_eq!(v.get_timeout(short), Err(Error::Timeout));
            // Its mark stays (other readers may sleep on that write too),
            // for the write that ends it to clear.
            assert_eq!(v.word(READERS_AT).load(Ordering::Relaxed), 3);
            // The write ends.
            v.word(SEQ_AT).store(4, Ordering::Release);
            assert_eq!(v.get_timeout(short), Ok(7));
            assert_eq!(v.get(), 7);
            // The pretend holder lets go; the next write clears the mark.
            for at in [THREAD_AT, OWNER_AT, LOCK_AT] {
                v.word(at).store(0, Ordering::Release);
            }
            v.set(8).unwrap();
            assert_eq!(v.word(READERS_AT).load(Ordering::Relaxed), 0);
            assert_eq!(v.get(), 8);
        });
    }

    #[test]
    fn a_panic_in_update_leaves_the_value_and_releases_the_lock() {
        with_watchdog(|| {
            let v = Value::new(1u64).unwrap();
            let v2 = v.clone();
            let r = std::panic::catch_unwind(move || {
                v2.update(|x| {
                    *x = 99;
                    panic!("in the closure")
                })
            });
            assert!(r.is_err());
            assert_eq!(v.get(), 1, "the half-done change is dropped");
            v.update(|x| *x += v.get()).unwrap(); // a reader inside `update` is fine
            assert_eq!(v.get(), 2, "the lock was released");
        });
    }
}
