//! [`Value`] and [`AtomicValue`]: one value shared between processes, like
//! Python's `multiprocessing.Value`.
//!
//! An [`AtomicValue`] holds an integer that every process updates with
//! atomic instructions: nothing to lock, nothing to wedge. A [`Value`] holds
//! any plain-data `T` behind a lock word that records the holder's pid: a
//! process that dies holding it cannot wedge the others, because the next
//! one to want the lock sees the holder is dead and takes it over (the value
//! is then whatever the dead holder left, which for plain data is always a
//! valid `T`). Readers do not lock at all: a sequence word (odd while a
//! writer works) lets them copy the value and retry if it changed meanwhile.

use crate::error::Result;
use crate::handle::{process_is_dead, type_tag, SharedSegment};
use crate::park::Spinner;
use crate::sys;
use crate::wire::{decode_error, Wire};
use bytemuck::Pod;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LOCK_AT: usize = 0;
const SEQ_AT: usize = 4;
const DATA_AT: usize = 64;

/// A plain-data value shared between processes, behind a lock a dead holder
/// cannot wedge.
///
/// ```
/// use corepool::{Process, Value};
///
/// fn add_ten(total: Value<[u64; 2]>) {
///     for _ in 0..10 {
///         total.update(|t| { t[0] += 1; t[1] += 2; });
///     }
/// }
///
/// fn main() {
///     corepool::init();
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
        v.write_data(value);
        Ok(v)
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        let p = self.map.segment().at(at, 4).expect("control words fit");
        // SAFETY: in bounds, 4-aligned, lives as long as `map`; every process
        // accesses it only atomically.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    fn data(&self) -> *mut T {
        // SAFETY: DATA_AT + size_of::<T>() is inside the segment (sized in
        // `new`, checked in `decode`) and 64-aligned, enough for any Pod.
        unsafe { self.map.base().add(DATA_AT).cast() }
    }

    fn write_data(&self, value: T) {
        // SAFETY: in bounds; written only by the lock holder; T is Pod.
        unsafe { self.data().write_volatile(value) }
    }

    /// The current value. Never blocks on a writer for long: it copies and
    /// retries if a write overlapped, and takes the lock over from a writer
    /// that died mid-write.
    pub fn get(&self) -> T {
        let seq = self.word(SEQ_AT);
        let mut spinner = Spinner::new();
        loop {
            // Acquire pairs with the Release store that ends a write.
            let before = seq.load(Ordering::Acquire);
            if before % 2 == 0 {
                // SAFETY: in bounds; a racing writer can only tear the copy,
                // which the sequence check below detects; T is Pod.
                let value = unsafe { self.data().read_volatile() };
                // Acquire fence: orders the copy before the re-read of `seq`
                // (pairs with the writer's Release store of the odd value).
                fence(Ordering::Acquire);
                if seq.load(Ordering::Relaxed) == before {
                    return value;
                }
            } else if !spinner.spin() {
                // A write in progress for a while: is its writer alive?
                self.repair_if_dead();
                spinner.reset();
            }
        }
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        self.update(|v| *v = value);
    }

    /// Changes the value under the lock and returns what `f` returns: the way
    /// to do read-modify-write (`+= 1`) from several processes.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.lock();
        let seq = self.word(SEQ_AT);
        // Odd: writing. Release pairs with the readers' Acquire loads.
        seq.fetch_add(1, Ordering::Release);
        // SAFETY: in bounds; we hold the lock; T is Pod.
        let mut value = unsafe { self.data().read_volatile() };
        let out = f(&mut value);
        self.write_data(value);
        // Even again: Release pairs with the readers' Acquire loads.
        seq.fetch_add(1, Ordering::Release);
        self.unlock();
        out
    }

    fn lock(&self) {
        let lock = self.word(LOCK_AT);
        let me = crate::sys::current_pid();
        let mut spinner = Spinner::new();
        loop {
            // Acquire pairs with the Release store in `unlock`.
            match lock.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return,
                Err(holder) if process_is_dead(holder as i32) => {
                    // The holder died in its critical section: take over.
                    if lock
                        .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.restore_sequence();
                        return;
                    }
                }
                Err(holder) => {
                    if !spinner.spin() {
                        // Sleep a little on the lock word; a live holder
                        // wakes us when it unlocks.
                        sys::futex_wait(lock, holder, Some(Duration::from_millis(1)));
                    }
                }
            }
        }
    }

    fn unlock(&self) {
        let lock = self.word(LOCK_AT);
        // Release pairs with the Acquire CAS in `lock`.
        lock.store(0, Ordering::Release);
        sys::futex_wake_all(lock);
    }

    /// After taking the lock from a dead holder: an odd sequence (it died
    /// mid-write) is made even, so readers stop waiting.
    fn restore_sequence(&self) {
        let seq = self.word(SEQ_AT);
        if seq.load(Ordering::Acquire) % 2 == 1 {
            seq.fetch_add(1, Ordering::Release);
        }
    }

    fn repair_if_dead(&self) {
        let lock = self.word(LOCK_AT);
        let holder = lock.load(Ordering::Acquire);
        if holder != 0 && process_is_dead(holder as i32) {
            self.lock(); // takes it over and restores the sequence
            self.unlock();
        }
    }

    /// Test hook: takes the lock, starts a write and dies there.
    #[doc(hidden)]
    pub fn lock_and_abort(&self) -> ! {
        self.lock();
        self.word(SEQ_AT).fetch_add(1, Ordering::Release);
        std::process::abort()
    }
}

impl<T: Pod + Send> Wire for Value<T> {
    fn encode(&self, out: &mut Vec<u8>) {
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

mod sealed {
    /// The operations behind [`super::AtomicInt`]; a private trait, so they
    /// cannot be called (or implemented) outside this crate.
    pub trait Sealed: Copy {
        type Atomic;
        /// # Safety
        ///
        /// `p` must point to an aligned word of `Self`'s size inside a live
        /// mapping that outlives `'a`, accessed by everyone only atomically.
        unsafe fn atomic<'a>(p: *mut u8) -> &'a Self::Atomic;
        fn load(a: &Self::Atomic) -> Self;
        fn store(a: &Self::Atomic, v: Self);
        fn fetch_add(a: &Self::Atomic, v: Self) -> Self;
        fn swap(a: &Self::Atomic, v: Self) -> Self;
        fn compare_exchange(a: &Self::Atomic, current: Self, new: Self) -> Result<Self, Self>;
    }
}

/// The integer types an [`AtomicValue`] can hold: `u32`, `i32`, `u64`, `i64`.
pub trait AtomicInt: sealed::Sealed + Send + Sync + 'static {}

macro_rules! atomic_int {
    ($($t:ty => $a:ty),*) => {$(
        impl AtomicInt for $t {}
        impl sealed::Sealed for $t {
            type Atomic = $a;
            unsafe fn atomic<'a>(p: *mut u8) -> &'a $a {
                // SAFETY: the caller's contract (aligned, live, atomic-only).
                unsafe { <$a>::from_ptr(p.cast()) }
            }
            // SeqCst everywhere: a shared counter's users expect the simplest
            // model; each operation pairs with every other.
            fn load(a: &$a) -> $t { a.load(Ordering::SeqCst) }
            fn store(a: &$a, v: $t) { a.store(v, Ordering::SeqCst) }
            fn fetch_add(a: &$a, v: $t) -> $t { a.fetch_add(v, Ordering::SeqCst) }
            fn swap(a: &$a, v: $t) -> $t { a.swap(v, Ordering::SeqCst) }
            fn compare_exchange(a: &$a, c: $t, n: $t) -> std::result::Result<$t, $t> {
                a.compare_exchange(c, n, Ordering::SeqCst, Ordering::SeqCst)
            }
        }
    )*};
}

atomic_int!(u32 => AtomicU32, i32 => AtomicI32, u64 => AtomicU64, i64 => AtomicI64);

/// An integer shared between processes and changed with atomic instructions:
/// `Value('i')` without the lock.
///
/// ```
/// use corepool::{AtomicValue, Pool};
///
/// fn main() {
///     corepool::init();
///     let hits = AtomicValue::<u64>::new(0).unwrap();
///     let pool = Pool::new(2).unwrap();
///     pool.map(|h: AtomicValue<u64>| { h.fetch_add(1); }, vec![hits.clone(); 100], None).unwrap();
///     assert_eq!(hits.load(), 100);
/// }
/// ```
pub struct AtomicValue<T> {
    map: Arc<SharedSegment>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for AtomicValue<T> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: AtomicInt + fmt::Debug> fmt::Debug for AtomicValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AtomicValue").field(&self.load()).finish()
    }
}

impl<T: AtomicInt> AtomicValue<T> {
    /// A shared integer holding `value`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::SharedMemory`].
    pub fn new(value: T) -> Result<Self> {
        let map = SharedSegment::create(c"corepool-atomic", 64)?;
        let v = Self {
            map,
            _type: PhantomData,
        };
        v.store(value);
        Ok(v)
    }

    fn atomic(&self) -> &T::Atomic {
        // SAFETY: the mapping is at least 64 bytes (checked in `new` and
        // `decode`), page-aligned, and lives as long as `self`, to which the
        // returned reference is tied; every process uses it atomically.
        unsafe { T::atomic(self.map.base()) }
    }

    /// The current value.
    pub fn load(&self) -> T {
        T::load(self.atomic())
    }

    /// Replaces the value.
    pub fn store(&self, value: T) {
        T::store(self.atomic(), value)
    }

    /// Adds `delta` (wrapping) and returns the previous value.
    pub fn fetch_add(&self, delta: T) -> T {
        T::fetch_add(self.atomic(), delta)
    }

    /// Replaces the value and returns the previous one.
    pub fn swap(&self, value: T) -> T {
        T::swap(self.atomic(), value)
    }

    /// Sets `new` if the value is `current`; returns the previous value,
    /// `Err` with the actual value if it was not `current`.
    ///
    /// # Errors
    ///
    /// The value found, when it was not `current`.
    pub fn compare_exchange(&self, current: T, new: T) -> std::result::Result<T, T> {
        T::compare_exchange(self.atomic(), current, new)
    }
}

impl<T: AtomicInt> Wire for AtomicValue<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.map.encode(type_tag::<AtomicValue<T>>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (map, _) =
            SharedSegment::decode::<Self>(input, type_tag::<AtomicValue<T>>(), |_| Some(64))?;
        Ok(Self {
            map,
            _type: PhantomData,
        })
    }
}

/// Python's `multiprocessing.Array`: a [`crate::SharedArray`].
pub type Array<T> = crate::SharedArray<T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_in_process() {
        let v = Value::new([1.0f32, 2.5]).unwrap();
        assert_eq!(v.get(), [1.0, 2.5]);
        v.set([3.0, 4.5]);
        assert_eq!(
            v.update(|x| {
                x[0] += 1.0;
                x[0]
            }),
            4.0
        );
        assert_eq!(v.get(), [4.0, 4.5]);
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
        v.set(8);
        assert_eq!(v.get(), 8);
    }

    #[test]
    fn atomic_values_count() {
        let a = AtomicValue::<i64>::new(5).unwrap();
        assert_eq!(a.fetch_add(-2), 5);
        assert_eq!(a.swap(10), 3);
        assert_eq!(a.compare_exchange(10, 11), Ok(10));
        assert_eq!(a.compare_exchange(10, 12), Err(11));
        assert_eq!(a.load(), 11);
    }
}
