//! # corepool
//!
//! Python's `multiprocessing` done right, in Rust, for Linux: worker
//! processes pinned one per core, fed through lock-free rings in shared
//! memory, supervised by a parent that reaps every child and never hangs on a
//! dead one.
//!
//! ```
//! use corepool::Pool;
//!
//! fn count(n: u64) -> u64 {
//!     (0..n).fold(0, |x, _| std::hint::black_box(x + 1))
//! }
//!
//! let pool = Pool::builder().build()?; // one pinned worker per CPU
//! let counts = pool.map(count, vec![1_000u64; 8])?;
//! assert!(counts.iter().all(|&c| c == 1_000));
//! # Ok::<(), corepool::Error>(())
//! ```
//!
//! That is the whole set-up, in a program, a test (with the standard
//! harness), a doc test or a benchmark: nothing to call first in `main`.
//!
//! ## How it works
//!
//! A pool creates one sealed `memfd` segment holding, per worker, a task ring
//! and a result ring (`docs/protocol.md` in the repository describes every
//! word of it). Workers are this same executable re-executed
//! (`/proc/self/exe`), pinned before exec, and handed the segment as an
//! inherited descriptor: nothing is ever left in `/dev/shm`. A worker is
//! recognised before `main` runs, by a constructor corepool links into every
//! program that builds a pool or starts a process, so no `main` (yours, or
//! the test harness's) ever runs in a worker; [`init`] is a no-op kept for
//! older code. Tasks name their function by its offset in the binary, so they
//! must be `fn` items or closures that capture nothing.
//!
//! Children run the program's *executable*, so corepool must be linked into
//! it: in a library loaded by another program (a Python extension, a
//! plugin), or in a program started through the dynamic loader (`ld.so
//! ./program`), pools and processes refuse to start with
//! [`Error::Spawn`] saying so.
//!
//! ## A pool inside a library
//!
//! A library that computes with a pool of its own keeps one per process:
//! built on first use, shared by every caller, rebuilt in a child the
//! program forks (a pool belongs to the process that built it; in a forked
//! copy it answers [`Error::ForeignPool`]). Nothing needs dropping: when the
//! program exits, its workers are killed and reaped by the program itself.
//!
//! ```
//! use corepool::Pool;
//! use std::sync::{Arc, Mutex};
//!
//! /// This process's pool, built on first use.
//! fn pool() -> corepool::Result<Arc<Pool>> {
//!     static POOL: Mutex<Option<(u32, Arc<Pool>)>> = Mutex::new(None);
//!     let mut slot = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
//!     match &*slot {
//!         Some((pid, pool)) if *pid == std::process::id() => Ok(pool.clone()),
//!         // None yet, or the parent's (this process is a fork of it): a
//!         // forked copy of a pool drops without touching its workers.
//!         _ => {
//!             let pool = Arc::new(Pool::builder().build()?);
//!             *slot = Some((std::process::id(), pool.clone()));
//!             Ok(pool)
//!         }
//!     }
//! }
//!
//! /// The library's API: callers never see the pool.
//! pub fn mean(values: &[f64]) -> corepool::Result<f64> {
//!     let chunks: Vec<Vec<f64>> = values.chunks(4096).map(<[f64]>::to_vec).collect();
//!     let sums = pool()?.map(|c: Vec<f64>| c.iter().sum::<f64>(), chunks)?;
//!     Ok(sums.iter().sum::<f64>() / values.len() as f64)
//! }
//!
//! assert_eq!(mean(&[1.0, 2.0, 3.0, 6.0])?, 3.0);
//! # Ok::<(), corepool::Error>(())
//! ```
//!
//! With `panic = "abort"` in the program's profile, a panic ends the
//! process it happens in: a task's panic still reaches the caller as
//! [`Error::Panicked`] (the worker sends it before it aborts, and the pool
//! replaces the worker), but a panic in a callback or a `Wire` impl run by
//! the parent ends the program. Build with the default `panic = "unwind"`
//! for those to be caught ([`Error::Encode`], [`Error::Decode`]).
//!
//! Linux only.

// Some doc examples show a whole program, `main` included.
#![allow(clippy::needless_doctest_main)]
#![cfg(target_os = "linux")]
#![warn(missing_debug_implementations, unsafe_op_in_unsafe_fn, unreachable_pub)]
#![deny(missing_docs)]

// Layers, bottom up: every module imports only from the ones before it in
// this list (docs/design.md draws them).
mod sys; // the only module that makes system calls
mod sync; // mutexes that survive a panicking holder
mod error;
pub mod info; // the machine: CPUs, the allowed set, pinning
mod wire; // how values and functions cross processes
mod shm; // shared-memory building blocks: segment, ring, parking, queue, handles
mod child; // starting, supervising and identifying child processes
mod identity; // who this process is, and its parent
mod pool; // the process pool: facade, driver, state machine, worker
mod process; // Python's Process
mod queue;
mod joinable_queue; // a Queue whose values are marked done: Python's JoinableQueue
mod pipe;
pub mod connection; // waiting on several processes, pipes and queues
mod shared_array;
mod value;
mod synchronize; // Python's multiprocessing.synchronize: locks, semaphores, events, barriers
pub mod daemon;
mod entry; // the first stop of every child, before main

/// `#[derive(Wire)]`: the derive macro shares the trait's name, as serde's do.
#[cfg(feature = "derive")]
pub use corepool_derive::Wire;
pub use daemon::{Daemon, DaemonGuard};
pub use error::{Error, ExitCause, Result};
pub use identity::{current_process, parent_process, ProcessInfo, ProcessKind};
pub use joinable_queue::JoinableQueue;
pub use pipe::{Pipe, PipeEnd};
pub use pool::{
    AsyncResult, Callbacks, Chunked, Collector, Imap, ImapUnordered, Pinning, Pool, PoolBuilder,
    PoolStats, RawArgument, RawTask,
};
pub use process::{active_children, Process, ProcessBuilder};
pub use queue::Queue;
pub use shared_array::SharedArray;
pub use synchronize::{
    Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock, LockGuard, RLock,
    RLockGuard, Semaphore, SemaphoreGuard,
};
pub use value::{Array, AtomicInt, AtomicValue, Value, ValueGuard};
pub use wire::task::StarFn;
#[cfg(feature = "serde")]
pub use wire::Serde;
pub use wire::{Encoder, Plain, Wire};

/// The `bytemuck` this corepool is built with, so that your `Pod` types use
/// the same version without a dependency of your own:
///
/// ```
/// use corepool::bytemuck::{Pod, Zeroable};
/// use corepool::{Encoder, Plain, Wire};
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "corepool::bytemuck")]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
///
/// let mut out = Encoder::new();
/// Plain(Point { x: 1.0, y: 2.0 }).encode(&mut out);
/// assert_eq!(out.len(), 16); // one copy, no serialization
/// ```
pub use bytemuck;
pub use child::forkserver::{fork_server_pid, stop_fork_server, StartMethod};
pub use entry::init;

#[doc(hidden)]
pub mod __private {
    //! Internals exposed for corepool's own benchmarks; not a stable API.
    pub use crate::shm::ring::bench_support::*;
}

#[cfg(feature = "fault-injection")]
pub mod testing;
