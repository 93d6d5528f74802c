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
//! fn main() -> Result<(), corepool::Error> {
//!     corepool::init(); // first statement of main: workers start here
//!     let pool = Pool::builder().build()?; // one pinned worker per CPU
//!     let counts = pool.map(count, vec![1_000u64; 8], None)?;
//!     assert!(counts.iter().all(|&c| c == 1_000));
//!     Ok(())
//! }
//! ```
//!
//! ## How it works
//!
//! A pool creates one sealed `memfd` segment holding, per worker, a task ring
//! and a result ring (`docs/protocol.md` in the repository describes every
//! word of it). Workers are this same executable re-executed
//! (`/proc/self/exe`), recognised by [`init`], pinned before exec, and handed
//! the segment as an inherited descriptor: nothing is ever left in
//! `/dev/shm`. Tasks name their function by its offset in the binary, so they
//! must be `fn` items or closures that capture nothing.
//!
//! Linux only.

// Doc examples that build a pool need their own `main` starting with
// `corepool::init()`: workers re-execute the doctest binary.
#![allow(clippy::needless_doctest_main)]
#![cfg(target_os = "linux")]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    unreachable_pub
)]

pub mod daemon;
mod error;
mod handle;
mod layout;
mod park;
mod pipe;
mod pool;
mod process;
mod queue;
mod ring;
mod shared_array;
mod shm;
mod spawn;
mod sys;
mod task;
mod value;
mod wire;
mod worker;

pub mod info;

pub use daemon::{Daemon, DaemonGuard};
pub use error::{Error, ExitCause, Result};
pub use pipe::{Pipe, PipeEnd};
pub use pool::{
    AsyncResult, Callbacks, Imap, ImapUnordered, Pinning, Pool, PoolBuilder, PoolStats,
};
pub use process::{Process, ProcessBuilder};
pub use queue::Queue;
pub use shared_array::SharedArray;
pub use task::StarFn;
pub use value::{Array, AtomicInt, AtomicValue, Value};
pub use wire::{Plain, Serde, Wire};

/// The `bytemuck` this corepool is built with, so that your `Pod` types use
/// the same version without a dependency of your own:
///
/// ```
/// use corepool::bytemuck::{Pod, Zeroable};
/// use corepool::{Plain, Wire};
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "corepool::bytemuck")]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
///
/// let mut bytes = Vec::new();
/// Plain(Point { x: 1.0, y: 2.0 }).encode(&mut bytes);
/// assert_eq!(bytes.len(), 16); // one copy, no serialization
/// ```
pub use bytemuck;
pub use worker::init;

/// Locks a mutex, recovering from poisoning (a panicking callback must not
/// wedge the pool).
pub(crate) fn pool_lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[doc(hidden)]
pub mod __private {
    //! Internals exposed for corepool's own benchmarks; not a stable API.
    pub use crate::ring::bench_support::*;
    pub use crate::worker::{sabotage, Sabotage};
}
