//! [`Value`] and [`AtomicValue`]: one value shared between processes, like
//! Python's `multiprocessing.Value`.
//!
//! An [`AtomicValue`] holds an integer that every process updates with
//! atomic instructions: nothing to lock, nothing to wedge. A [`Value`] holds
//! any plain-data `T` behind a lock word that records the holder's pid: a
//! process that dies holding it cannot wedge the others, because the next
//! one to want the lock sees the holder is dead and takes it over (the value
//! is then whatever the dead holder left, which for plain data is always a
//! valid `T`). Readers usually do not lock: a sequence word (odd while a
//! writer works) lets them copy the value and retry if it changed meanwhile;
//! while a write is in progress they sleep until it ends, so a writer
//! stopped mid-write (`SIGSTOP`) makes [`Value::get`] wait (asleep) until it
//! continues, and [`Value::get_timeout`] give up. A reader whose copies
//! writes keep spoiling takes the lock to copy (so `get` can wait for a lock:
//! see its docs on deadlocks), and one that finds a write nobody will end (a
//! dead writer's) takes the lock to end it.
//!
//! A thread that holds a [`Value`]'s lock (a [`ValueGuard`]) and asks for it
//! again (`lock`, `try_lock`, `set`, `update`) gets
//! [`Error::Deadlock`](crate::Error::Deadlock), not a hang; each of these
//! but `try_lock` (which does not wait) has a `_timeout` form. Each value
//! holds one descriptor (its segment) in every process that has it.
//!
//! The two live in their own files: [`Value`] and its lock in `locked.rs`,
//! [`AtomicValue`] in `atomic.rs`.

mod atomic;
mod locked;

pub use atomic::{AtomicInt, AtomicValue};
pub use locked::{Value, ValueGuard};

/// Python's `multiprocessing.Array`: a [`crate::SharedArray`].
///
/// ```
/// let a = corepool::Array::<f64>::from_slice(&[1.0, 2.0]).unwrap();
/// assert_eq!(a.to_vec(), [1.0, 2.0]);
/// ```
pub type Array<T> = crate::SharedArray<T>;
