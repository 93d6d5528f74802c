//! [`AtomicValue`]: an integer shared between processes and changed only
//! with atomic instructions, so there is nothing to lock and nothing a dead
//! process can wedge.

use crate::error::Result;
use crate::shm::handle::{type_tag, SharedSegment};
use crate::wire::{Encoder, Wire};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

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
        fn fetch_sub(a: &Self::Atomic, v: Self) -> Self;
        fn fetch_max(a: &Self::Atomic, v: Self) -> Self;
        fn fetch_min(a: &Self::Atomic, v: Self) -> Self;
        fn swap(a: &Self::Atomic, v: Self) -> Self;
        fn compare_exchange(a: &Self::Atomic, current: Self, new: Self) -> Result<Self, Self>;
    }
}

/// The integer types an [`AtomicValue`] can hold: `u32`, `i32`, `u64`, `i64`.
///
/// ```
/// fn shared_counter<T: corepool::AtomicInt>(start: T) -> corepool::AtomicValue<T> {
///     corepool::AtomicValue::new(start).unwrap()
/// }
/// assert_eq!(shared_counter(5i32).load(), 5);
/// assert_eq!(shared_counter(5u64).load(), 5);
/// ```
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
            fn fetch_sub(a: &$a, v: $t) -> $t { a.fetch_sub(v, Ordering::SeqCst) }
            fn fetch_max(a: &$a, v: $t) -> $t { a.fetch_max(v, Ordering::SeqCst) }
            fn fetch_min(a: &$a, v: $t) -> $t { a.fetch_min(v, Ordering::SeqCst) }
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
///     let hits = AtomicValue::<u64>::new(0).unwrap();
///     let pool = Pool::new(2).unwrap();
///     pool.map(|h: AtomicValue<u64>| { h.fetch_add(1); }, vec![hits.clone(); 100]).unwrap();
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
    /// ```
    /// let hits = corepool::AtomicValue::<u64>::new(10).unwrap();
    /// assert_eq!(hits.load(), 10);
    /// ```
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
    ///
    /// ```
    /// assert_eq!(corepool::AtomicValue::<i32>::new(-7).unwrap().load(), -7);
    /// ```
    pub fn load(&self) -> T {
        T::load(self.atomic())
    }

    /// Replaces the value.
    ///
    /// ```
    /// let v = corepool::AtomicValue::<u64>::new(0).unwrap();
    /// v.store(42);
    /// assert_eq!(v.load(), 42);
    /// ```
    pub fn store(&self, value: T) {
        T::store(self.atomic(), value)
    }

    /// Adds `delta` (wrapping) and returns the previous value.
    ///
    /// ```
    /// let n = corepool::AtomicValue::<u32>::new(u32::MAX).unwrap();
    /// assert_eq!(n.fetch_add(2), u32::MAX);
    /// assert_eq!(n.load(), 1, "wraps");
    /// ```
    pub fn fetch_add(&self, delta: T) -> T {
        T::fetch_add(self.atomic(), delta)
    }

    /// Subtracts `delta` (wrapping) and returns the previous value.
    ///
    /// ```
    /// let left = corepool::AtomicValue::<u32>::new(3).unwrap();
    /// assert_eq!(left.fetch_sub(1), 3);
    /// assert_eq!(left.fetch_sub(3), 2);
    /// assert_eq!(left.load(), u32::MAX, "wraps");
    /// ```
    pub fn fetch_sub(&self, delta: T) -> T {
        T::fetch_sub(self.atomic(), delta)
    }

    /// Sets the value to the larger of it and `value`; returns the previous
    /// value. Several processes can keep a shared maximum this way.
    ///
    /// ```
    /// let best = corepool::AtomicValue::<i64>::new(-5).unwrap();
    /// assert_eq!(best.fetch_max(7), -5);
    /// assert_eq!(best.fetch_max(3), 7);
    /// assert_eq!(best.load(), 7);
    /// ```
    pub fn fetch_max(&self, value: T) -> T {
        T::fetch_max(self.atomic(), value)
    }

    /// Sets the value to the smaller of it and `value`; returns the previous
    /// value.
    ///
    /// ```
    /// let low = corepool::AtomicValue::<u64>::new(10).unwrap();
    /// assert_eq!(low.fetch_min(4), 10);
    /// assert_eq!(low.fetch_min(9), 4);
    /// assert_eq!(low.load(), 4);
    /// ```
    pub fn fetch_min(&self, value: T) -> T {
        T::fetch_min(self.atomic(), value)
    }

    /// Replaces the value and returns the previous one.
    ///
    /// ```
    /// let v = corepool::AtomicValue::<i64>::new(1).unwrap();
    /// assert_eq!(v.swap(2), 1);
    /// assert_eq!(v.load(), 2);
    /// ```
    pub fn swap(&self, value: T) -> T {
        T::swap(self.atomic(), value)
    }

    /// Sets `new` if the value is `current`; returns the previous value,
    /// `Err` with the actual value if it was not `current`.
    ///
    /// # Errors
    ///
    /// The value found, when it was not `current`.
    ///
    /// ```
    /// let owner = corepool::AtomicValue::<u32>::new(0).unwrap();
    /// assert_eq!(owner.compare_exchange(0, 7), Ok(0)); // claimed
    /// assert_eq!(owner.compare_exchange(0, 9), Err(7)); // someone has it
    /// assert_eq!(owner.load(), 7);
    /// ```
    pub fn compare_exchange(&self, current: T, new: T) -> std::result::Result<T, T> {
        T::compare_exchange(self.atomic(), current, new)
    }
}

impl<T> Drop for AtomicValue<T> {
    fn drop(&mut self) {
        crate::shm::handle::dropping(&self.map);
    }
}

impl<T: AtomicInt> Wire for AtomicValue<T> {
    fn encode(&self, out: &mut Encoder) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_values_count() {
        let a = AtomicValue::<i64>::new(5).unwrap();
        assert_eq!(a.fetch_add(-2), 5);
        assert_eq!(a.swap(10), 3);
        assert_eq!(a.compare_exchange(10, 11), Ok(10));
        assert_eq!(a.compare_exchange(10, 12), Err(11));
        assert_eq!(a.load(), 11);
        assert_eq!(a.fetch_sub(4), 11);
        assert_eq!(a.fetch_max(20), 7);
        assert_eq!(a.fetch_min(-3), 20);
        assert_eq!(a.load(), -3);
    }
}
