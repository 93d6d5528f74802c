//! The process pool: Python's `multiprocessing.Pool`, on pinned worker
//! processes fed through shared-memory rings.
//!
//! Three kinds of parent threads touch the pool's state, always under one lock
//! ([`core::Core`]): the caller submitting work, a caller waiting for a result
//! (it helps collect while it spins), and the pool's driver thread, which
//! collects and dispatches when nobody else does. The driver sleeps on the
//! doorbell futex in the common segment (rung by workers) when idle, and on a private
//! `gate` futex while a caller helps, so that round trips make no wake-up
//! system call. A fourth, the supervisor thread, starts and reaps workers and
//! reports to the others through an event queue.
//!
//! The files, one job each:
//! - `facade.rs`: [`Pool`] itself (start, accessors, `apply`, `close`,
//!   `terminate`, `join`, drop); `map.rs` its `map` family, `imap.rs` its
//!   lazy maps and their iterators, `chunked.rs` the [`Chunked`] view that
//!   gives them a chunk size of the caller's;
//! - `builder.rs`, `config.rs`: configuring a pool;
//! - `driver.rs`: the state the parent threads share and the driver thread;
//!   `assist.rs` how a waiting caller helps it, and goes on helping while
//!   a slow decoder holds up whoever delivers; `callback_thread.rs` the
//!   thread the tasks' callbacks run on, never the driver nor a waiter;
//! - `core/`: the parent's state machine, run under the lock (its state and
//!   pass, the workers' lifecycle, the tasks' way through the rings);
//! - `supervisor.rs`: the thread that starts and reaps workers;
//! - `chunk.rs`, `collect.rs`, `prefault.rs`: a map's items cut into chunks,
//!   the chunks' results gathered, and the output's fresh memory faulted in
//!   ahead of them;
//! - `sink.rs`, `handle.rs`, `callbacks.rs`: where an outcome goes, the
//!   [`AsyncResult`] a caller waits on, the [`Callbacks`] run after arrival;
//!   `cell_chunks.rs` the chunks result cells are carved from;
//! - `stats.rs`: [`PoolStats`];
//! - `layout.rs`, `worker.rs`: the pool's shared segments (split by writer:
//!   a common one, one per worker slot, a sealed one workers start from)
//!   and their layout, and the worker process's side of them.

mod assist;
mod builder;
mod callback_thread;
mod callbacks;
mod cell_chunks;
mod chunk;
mod chunked;
mod collect;
mod config;
mod core;
mod driver;
mod facade;
mod handle;
mod imap;
pub(crate) mod layout;
mod map;
mod prefault;
mod remote;
mod sink;
mod stats;
mod supervisor;
pub(crate) mod worker;

pub use builder::{Pinning, PoolBuilder};
pub use callbacks::Callbacks;
pub use chunked::Chunked;
pub use facade::Pool;
pub use handle::AsyncResult;
pub use imap::{Imap, ImapUnordered};
pub use remote::{Collector, RawArgument, RawTask};
pub use stats::PoolStats;
