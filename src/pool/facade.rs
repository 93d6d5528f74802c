//! [`Pool`] itself: starting it, its accessors, `apply` and its variants,
//! `close`, `terminate`, `join` and the teardown on drop. The `map` family
//! lives in `map.rs`, the lazy maps in `imap.rs`.

use super::callback_thread::CallbackThread;
use super::cell_chunks::ChunkRc;
use super::config::{mask_of, Config};
use super::core::{Actions, Core, Phase, Worker};
use super::driver::{driver_loop, is_delivering, Shared};
use super::handle::Cell;
use super::layout::{self, Header, Layout, PoolMemory, Slot};
use super::sink::Sink;
use super::supervisor::{Command_, Supervisor};
use super::{AsyncResult, Callbacks, PoolBuilder, PoolStats};
use crate::error::{Error, Result};
use crate::shm::park;
use crate::sync::lock;
use crate::wire::task;
use crate::wire::{Payload, Wire};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pool of worker processes, each pinned to its own CPU (or its own set of
/// CPUs), fed through lock-free rings in shared memory.
///
/// Python's `multiprocessing.Pool`, method for method: [`apply`](Pool::apply),
/// [`apply_async`](Pool::apply_async) (with callbacks through
/// [`apply_async_with`](Pool::apply_async_with)), [`map`](Pool::map),
/// [`map_async`](Pool::map_async), [`imap`](Pool::imap),
/// [`imap_unordered`](Pool::imap_unordered), [`starmap`](Pool::starmap),
/// [`close`](Pool::close), [`terminate`](Pool::terminate), [`join`](Pool::join).
/// Python's `chunksize=` argument is a view: `pool.chunked(n)?.map(f, items)`
/// (see [`chunked`](Pool::chunked)); without it every map picks a default.
///
/// Tasks are `fn` items or closures that capture nothing (a capturing closure
/// does not compile); arguments and results implement [`Wire`].
///
/// Dropping a pool terminates it (like leaving Python's `with Pool() as p:`):
/// unfinished tasks get [`Error::Cancelled`], every worker is killed and
/// reaped, and the drop returns once every callback has returned (the
/// cancelled tasks' `on_error` included; they run on the pool's callback
/// thread, not the dropping one). To finish the work first, `close()` then
/// `join()`. Dropping returns from any thread, a callback of the pool
/// included (the last steps are then handed to a thread of their own).
///
/// # Threads inside tasks
///
/// By default each worker is pinned to one CPU, and so is every thread it
/// starts: a task that spawns threads, or uses rayon, runs them all on that
/// one CPU, taking turns, and
/// [`std::thread::available_parallelism`] (which reads the affinity mask,
/// as rayon's default pool does) says 1 inside it. For such tasks give each
/// worker several CPUs with
/// [`PoolBuilder::cpus_per_worker`] (a task then sees, and rayon starts, that
/// many threads), or leave the workers unpinned with
/// [`Pinning::None`](crate::Pinning::None) (each then sees every CPU the
/// parent may use: with several workers their threads compete for them).
///
/// # `fork()`
///
/// A pool belongs to the process that built it. A child made with `fork()`
/// (without `exec`) gets a copy of the pool's memory but none of its
/// threads, and the workers are not its children: in the child every call
/// that would submit or wait ([`apply`](Pool::apply), [`map`](Pool::map),
/// [`AsyncResult::get`], [`join`](Pool::join), ...) fails with
/// [`Error::ForeignPool`], [`close`](Pool::close) and
/// [`terminate`](Pool::terminate) do nothing, [`pids`](Pool::pids) is empty
/// and [`stats`](Pool::stats) all zero,
/// and dropping the copy (as returning from `main` does) leaves the
/// parent's workers and tasks alone. Build a new pool in the child if it
/// needs one.
///
/// ```
/// use corepool::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() -> Result<(), corepool::Error> {
///     let pool = Pool::builder().workers(2).build()?;
///     assert_eq!(pool.apply(square, 7)?, 49);
///     assert_eq!(pool.map(square, 0..5u64)?, vec![0, 1, 4, 9, 16]);
///     pool.close();
///     pool.join()
/// }
/// ```
pub struct Pool {
    pub(super) shared: Arc<Shared>,
    /// Where the tasks' callbacks run (see `callback_thread.rs`).
    pub(super) callbacks: Arc<CallbackThread>,
    driver: Option<std::thread::JoinHandle<()>>,
    /// Each worker's CPUs, ascending (empty: unpinned).
    cpu_sets: Vec<Vec<usize>>,
    /// Each worker's CPU when it is pinned to exactly one.
    cpus: Vec<Option<usize>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.shared.workers)
            .field("cpu_sets", &self.cpu_sets)
            .finish()
    }
}

impl Pool {
    /// A builder with the defaults: one pinned worker per allowed CPU.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder().workers(1).build()?;
    ///     assert_eq!(pool.workers(), 1);
    ///     Ok(())
    /// }
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// `Pool(n)`: `n` workers with default settings.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     assert_eq!(pool.apply(|x: u64| x + 1, 1)?, 2);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new(workers: usize) -> Result<Self> {
        Self::builder().workers(workers).build()
    }

    pub(super) fn start(config: Config) -> Result<Self> {
        crate::entry::keep_linked(); // workers are recognised before main
        if crate::pool::worker::is_uninitialised_worker() {
            return Err(Error::NotInitialized);
        }
        crate::child::image::check_reexecutable()?;
        let n = config.cpu_sets.len();
        let layout = Layout::new(
            n,
            config.ring_bytes,
            config.ring_bytes,
            config.initializer_arg.len(),
        )?;
        let memory = PoolMemory::create(&layout)?;
        let parent_pid = std::process::id() as i32;
        let header = Header {
            magic: layout::MAGIC,
            version: layout::VERSION,
            header_bytes: std::mem::size_of::<Header>() as u32,
            segment_bytes: layout.total as u64,
            fingerprint: crate::child::fingerprint::fingerprint(),
            workers: n as u32,
            task_ring_bytes: layout.task_ring_bytes,
            result_ring_bytes: layout.result_ring_bytes,
            flags: if config.initializer.is_some() {
                layout::FLAG_INITIALIZER
            } else {
                0
            },
            initializer: config.initializer.unwrap_or(0),
            max_tasks_per_child: config.policy.max_tasks_per_child,
            parent_pid,
            init_arg_len: layout.init_arg_len as u32,
        };
        // The common segment's copy is for monitors: every worker maps that
        // segment writable and may change it.
        layout::write_header(memory.common(), &header);
        // What workers start from: a sealed copy no process can change,
        // naming the segments that are the pool's.
        let pristine =
            layout::write_pristine(&header, &memory.identities()?, &config.initializer_arg)?;
        // Each slot's base, computed once: the parent's paths use these.
        let slots: Vec<Slot> = (0..n)
            .map(|i| {
                memory.slot(i).ok_or_else(|| Error::InvalidConfig {
                    what: format!(
                        "worker slot {i} does not fit the pool's memory (a corepool bug: please report it with the pool's settings)"
                    ),
                })
            })
            .collect::<Result<_>>()?;
        let budget = if config.policy.max_tasks_per_child == 0 {
            u64::MAX
        } else {
            config.policy.max_tasks_per_child
        };
        let workers = slots
            .iter()
            .zip(&config.cpu_sets)
            .map(|(s, set)| Worker::new(*s, mask_of(set), budget))
            .collect();
        let max_payload = slots[0].task_ring().max_payload();
        let descriptors = memory.descriptors();
        let shared = Arc::new(Shared::new(
            memory,
            slots,
            Core::new(workers, config.policy),
            max_payload,
            config.initializer_keep,
            config.arg_arena_bytes,
        ));
        // Kept beside the pool's state, not in it: `Shared` holds the
        // atomics every round trip touches, and a field more there moves
        // them within its cache lines (suspected, not proven, of an
        // `apply_async` 3-5% slower in one noisy A/B; none after moving).
        let callbacks = CallbackThread::new();
        callbacks.attach(Arc::downgrade(&shared));
        let weak = Arc::downgrade(&shared);
        let supervisor = Supervisor::start(
            descriptors,
            pristine,
            parent_pid,
            config.start_method,
            move |event| {
                if let Some(shared) = weak.upgrade() {
                    shared.report(event);
                }
            },
        )?;
        for (index, set) in config.cpu_sets.iter().enumerate() {
            supervisor.send(Command_::Spawn {
                index,
                cpu: mask_of(set),
                not_before: Instant::now(),
            });
        }
        *lock(&shared.supervisor) = Some(supervisor);
        let driver_shared = shared.clone();
        let driver = std::thread::Builder::new()
            .name("corepool-driver".into())
            .spawn(move || driver_loop(driver_shared))
            .map_err(|e| Error::os("spawning the driver thread", e))?;
        let pool = Pool {
            shared,
            callbacks,
            driver: Some(driver),
            cpus: config
                .cpu_sets
                .iter()
                .map(|set| match set[..] {
                    [cpu] => Some(cpu),
                    _ => None,
                })
                .collect(),
            cpu_sets: config.cpu_sets,
        };
        pool.wait_ready(config.start_timeout)?;
        Ok(pool)
    }

    /// Waits until every worker is serving; on the first failure, tears down.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = crate::shm::park::deadline_after(timeout);
        let mut core = self.shared.lock();
        loop {
            if let Some(e) = core.workers.iter().find_map(|w| w.start_error.clone()) {
                drop(core);
                self.terminate();
                return Err(e);
            }
            if core.workers.iter().all(|w| w.phase == Phase::Ready) {
                return Ok(());
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                drop(core);
                self.terminate();
                return Err(Error::WorkerStart {
                    index: 0,
                    reason: format!(
                        "the workers did not attach within {timeout:?}; their stderr may say why (an initializer that hangs? a machine out of processes or memory?)"
                    ),
                });
            }
            core = self.shared.wait_lifecycle(core, left);
        }
    }

    /// Counters: respawns and replacement times.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     assert!(pool.stats().replacements.is_empty()); // no worker has died
    ///     Ok(())
    /// }
    /// ```
    pub fn stats(&self) -> PoolStats {
        if self.shared.check_owner().is_err() {
            return PoolStats::default(); // a `fork()`ed copy has no workers
        }
        self.shared.lock().stats.clone()
    }

    /// Number of worker processes.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     assert_eq!(corepool::Pool::new(2)?.workers(), 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// The CPU each worker is pinned to, when that is exactly one CPU (the
    /// default); `None` for an unpinned worker and for one pinned to several
    /// CPUs ([`PoolBuilder::cpus_per_worker`]): see [`cpu_sets`](Self::cpu_sets).
    ///
    /// ```
    /// use corepool::{Pinning, Pool};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pinned = Pool::builder().workers(1).build()?;
    ///     assert!(pinned.cpus()[0].is_some()); // pinned to a CPU of the allowed set
    ///     let free = Pool::builder().workers(1).pinning(Pinning::None).build()?;
    ///     assert_eq!(free.cpus(), &[None]);
    ///     Ok(())
    /// }
    /// ```
    pub fn cpus(&self) -> &[Option<usize>] {
        &self.cpus
    }

    /// The CPUs each worker is pinned to, ascending; empty for an unpinned
    /// worker ([`Pinning::None`](crate::Pinning::None)). A replacement
    /// worker gets its slot's set again.
    ///
    /// ```
    /// use corepool::{info, Pinning, Pool};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let allowed = info::allowed_cpus()?;
    ///     // One worker on every allowed CPU: its tasks' threads spread over them.
    ///     let wide = Pool::builder().workers(1).cpus_per_worker(allowed.len()).build()?;
    ///     assert_eq!(wide.cpu_sets(), &[allowed.clone()]);
    ///     let seen = wide.apply(|_: ()| std::thread::available_parallelism().unwrap().get(), ())?;
    ///     assert_eq!(seen, allowed.len());
    ///     let one = Pool::builder().workers(1).build()?;
    ///     assert_eq!(one.cpu_sets()[0].len(), 1); // the default: one CPU each
    ///     let free = Pool::builder().workers(1).pinning(Pinning::None).build()?;
    ///     assert!(free.cpu_sets()[0].is_empty());
    ///     Ok(())
    /// }
    /// ```
    pub fn cpu_sets(&self) -> &[Vec<usize>] {
        &self.cpu_sets
    }

    /// The pids of the workers running now (a slot being restarted is absent).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pids = pool.pids();
    ///     assert_eq!(pids.len(), 2);
    ///     assert!(!pids.contains(&(std::process::id() as i32)));
    ///     Ok(())
    /// }
    /// ```
    pub fn pids(&self) -> Vec<i32> {
        if self.shared.check_owner().is_err() {
            return Vec::new(); // a `fork()`ed copy has no workers
        }
        let core = self.shared.lock();
        core.workers
            .iter()
            .filter(|w| matches!(w.phase, Phase::Starting | Phase::Ready))
            .map(|w| w.pid)
            .collect()
    }

    /// Runs `f(arg)` on a worker and waits for the result (Python's `apply`).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let shout = pool.apply(|s: String| s.to_uppercase(), "hi".to_string())?;
    ///     assert_eq!(shout, "HI");
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Self::apply_async) and [`AsyncResult::get`].
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Result<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        // Refused before anything is submitted (see `AsyncResult::get`).
        self.shared.check_can_wait()?;
        // The caller is about to wait (and help): the submission need not
        // wake a gated driver, so a round trip makes no wake-up system call.
        let cell = self.submit_one(f, arg, Callbacks::new(), true)?;
        super::handle::wait_and_take(&cell, &self.shared)
    }

    /// Submits `f(arg)` and returns at once (Python's `apply_async`).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let handles: Vec<_> = (0..4u64)
    ///         .map(|i| pool.apply_async(|x: u64| x * x, i))
    ///         .collect::<corepool::Result<_>>()?;
    ///     let squares: Vec<u64> = handles.into_iter().map(|h| h.get()).collect::<corepool::Result<_>>()?;
    ///     assert_eq!(squares, [0, 1, 4, 9]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::PoolClosed`] after `close`/`terminate`;
    /// [`Error::Encode`] when `arg` cannot be encoded (an argument larger
    /// than a ring message is no error: it travels in a spill);
    /// [`Error::ForeignPool`] in a `fork()`ed copy of the pool. With
    /// [`PoolBuilder::max_queued`], blocks while the pool holds that many
    /// unanswered tasks.
    pub fn apply_async<F, A, R>(&self, f: F, arg: A) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.apply_async_with(f, arg, Callbacks::new())
    }

    /// [`apply_async`](Self::apply_async) with Python's `callback` and
    /// `error_callback`.
    ///
    /// ```
    /// use corepool::{Callbacks, Pool};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// static SUM: AtomicU64 = AtomicU64::new(0);
    ///
    /// fn main() {
    ///     let pool = Pool::new(1).unwrap();
    ///     let cb = Callbacks::new().on_success(|v: &u64| { SUM.fetch_add(*v, Ordering::Relaxed); });
    ///     pool.apply_async_with(|x: u64| x * 2, 21, cb).unwrap().wait();
    ///     assert_eq!(SUM.load(Ordering::Relaxed), 42);
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Self::apply_async).
    pub fn apply_async_with<F, A, R>(
        &self,
        f: F,
        arg: A,
        callbacks: Callbacks<R>,
    ) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let cell = self.submit_one(f, arg, callbacks, false)?;
        Ok(AsyncResult::new(cell, Arc::downgrade(&self.shared)))
    }

    fn submit_one<F, A, R>(
        &self,
        f: F,
        arg: A,
        callbacks: Callbacks<R>,
        caller_waits: bool,
    ) -> Result<ChunkRc<Cell<R>>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        // Before the cell: a cell with callbacks counts itself owed under the
        // callback thread's lock, which a forked child may have inherited
        // held (review26 B1: 1 child in 1000 hung instead of getting
        // `ForeignPool`). The pid is cached: no system call.
        self.shared.check_owner()?;
        let trampoline = task::offset_of(task::call_one::<F, A, R>);
        let cell = Cell::new(callbacks, Some(&self.callbacks));
        let sink = Sink::thin(cell.clone());
        match crate::wire::plain_of::<A>() {
            // Plain data is its own bytes, and carries nothing to keep
            // alive: no encoder to set up (most tiny tasks take a number).
            Some(plain) if plain.size() <= Payload::INLINE.min(self.shared.max_payload) => {
                // SAFETY: the proof says `A` has no padding, so all of its
                // `size_of::<A>()` bytes are initialised, and its encoding
                // is exactly those bytes. `arg` lives to the end of the call.
                let bytes = unsafe {
                    std::slice::from_raw_parts((&arg as *const A).cast::<u8>(), plain.size())
                };
                self.shared.submit_spilled(
                    smallvec::smallvec![(trampoline, Payload::from_slice(bytes), sink)],
                    None,
                    Vec::new(),
                    caller_waits,
                )?;
            }
            _ => {
                let (payload, carried, spill) = self.shared.encode_arg(&arg)?;
                self.shared.submit_spilled(
                    smallvec::smallvec![(trampoline, payload, sink)],
                    spill.map(|s| vec![Some(s)]),
                    carried.into_keep_alive(),
                    caller_waits,
                )?;
            }
        }
        Ok(cell)
    }

    /// Stops taking work; workers exit once every submitted task is done
    /// (Python's `close`).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let h = pool.apply_async(|x: u64| x + 1, 1)?;
    ///     pool.close();
    ///     assert!(matches!(pool.apply(|x: u64| x, 0), Err(corepool::Error::PoolClosed)));
    ///     pool.join()?; // waits for the work submitted before `close`
    ///     assert_eq!(h.get()?, 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn close(&self) {
        if self.shared.check_owner().is_err() {
            return; // the workers are the parent's
        }
        let mut core = self.shared.lock();
        core.open = false;
        let mut actions = Actions {
            // Lifecycle waiters look again; submitters waiting for room
            // under `max_queued` are woken by `closed` below.
            lifecycle_changed: true,
            ..Actions::default()
        };
        core.drive(Vec::new(), &mut actions);
        self.shared.finish_pass(core, actions);
        self.shared.closed();
    }

    /// Kills the workers now; unfinished tasks get [`Error::Cancelled`]
    /// (Python's `terminate`). Returns without waiting for a worker or a
    /// callback: in time that grows with the unfinished tasks it cancels
    /// (about a microsecond each: 0.1-0.3 s for 300,000). It runs no callback. The
    /// cancelled tasks' `on_error` callbacks (Python runs none) run after,
    /// on the pool's callback thread, so one that sends into a bounded
    /// channel this caller drains after `terminate` does not block it;
    /// [`join`](Self::join) and the drop wait for them.
    ///
    /// ```
    /// fn forever(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let stuck = pool.apply_async(forever, 0)?;
    ///     pool.terminate();
    ///     pool.join()?;
    ///     assert_eq!(stuck.get().unwrap_err(), corepool::Error::Cancelled);
    ///     assert!(pool.pids().is_empty());
    ///     Ok(())
    /// }
    /// ```
    pub fn terminate(&self) {
        if self.shared.check_owner().is_err() {
            return; // the workers are the parent's
        }
        terminate_now(&self.shared);
    }

    /// Waits until every worker has exited (Python's `join`), and until every
    /// callback of the pool's tasks has returned, those still queued on the
    /// callback thread included (the cancelled tasks' `on_error` after
    /// [`terminate`](Self::terminate) too). As with Python's, a callback
    /// that blocks until the caller goes on after `join` (one that sends
    /// into a full bounded channel drained only after it) makes `join` wait
    /// for ever: drain such a channel before. Dropping the pool waits for
    /// the callbacks the same way; [`terminate`](Self::terminate) itself
    /// returns at once.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     assert_eq!(pool.join(), Err(corepool::Error::JoinWhileOpen)); // as in Python
    ///     pool.close();
    ///     pool.join()?;
    ///     assert!(pool.pids().is_empty()); // every worker has exited and been reaped
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::JoinWhileOpen`] unless [`close`](Self::close) or
    /// [`terminate`](Self::terminate) came first; [`Error::WaitInCallback`]
    /// in a callback of this pool; [`Error::ForeignPool`] in a `fork()`ed
    /// copy of it.
    pub fn join(&self) -> Result<()> {
        self.join_until(None).map(drop)
    }

    /// [`join`](Self::join) that waits at most `timeout`: `Ok(true)` once
    /// joined (every worker exited, every callback returned), `Ok(false)`
    /// when the time is up. The pool is then as it was, closed, its tasks
    /// and callbacks going on: wait again, or
    /// [`terminate`](Self::terminate) it and `join`. A timeout too long to
    /// represent as an [`Instant`] (such as [`Duration::MAX`]) waits without
    /// limit. This is the graceful shutdown of a service: let the work in
    /// hand finish for a while, then cancel what is left.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn forever(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let quick = pool.apply_async(|x: u64| x + 1, 1)?;
    ///     let stuck = pool.apply_async(forever, 0)?;
    ///     // Shutting down: no new work, a grace period, then cancel the rest.
    ///     pool.close();
    ///     if !pool.join_timeout(Duration::from_millis(100))? {
    ///         pool.terminate();
    ///         pool.join()?;
    ///     }
    ///     assert_eq!(quick.get()?, 2);
    ///     assert_eq!(stuck.get().unwrap_err(), corepool::Error::Cancelled);
    ///     assert!(pool.pids().is_empty());
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join): [`Error::JoinWhileOpen`] unless
    /// [`close`](Self::close) or [`terminate`](Self::terminate) came first;
    /// [`Error::WaitInCallback`] in a callback of this pool;
    /// [`Error::ForeignPool`] in a `fork()`ed copy of it.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool> {
        self.join_until(crate::shm::park::deadline_after(timeout))
    }

    /// Waits until every worker exited and every callback returned, or
    /// `deadline` (`None`: never); returns whether it joined.
    fn join_until(&self, deadline: Option<Instant>) -> Result<bool> {
        self.shared.check_can_wait()?;
        let mut core = self.shared.lock();
        if core.open {
            return Err(Error::JoinWhileOpen);
        }
        while !(core.all_stopped() && core.outstanding == 0) {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(false);
            }
            core = self.shared.wait_lifecycle(core, left);
        }
        drop(core);
        // Every task is answered: what is left is their callbacks, queued
        // on the callback thread or running there.
        Ok(self.callbacks.wait_settled_until(deadline))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.shared.check_owner().is_err() {
            // A `fork()`ed copy: the driver and supervisor threads do not
            // exist here and the workers are the parent's. Touch nothing
            // (a lock held at the fork stays locked), join nothing.
            std::mem::forget(self.driver.take());
            return;
        }
        let driver = self.driver.take();
        let on_driver = driver
            .as_ref()
            .is_some_and(|d| d.thread().id() == std::thread::current().id());
        if on_driver || is_delivering(&*self.shared) {
            // Dropped in a callback: the passes the teardown waits for are
            // made by this very thread (the driver, or a caller helping in
            // `get`) once the callback returns. Hand the teardown over.
            let shared = self.shared.clone();
            let handed = std::thread::Builder::new()
                .name("corepool-teardown".into())
                .spawn({
                    let callbacks = self.callbacks.clone();
                    move || teardown(&shared, &callbacks, driver)
                });
            if handed.is_err() {
                // No thread to hand it to: do what needs no waiting; the
                // supervisor thread ends with the process, the callback
                // thread once it has run what is queued.
                terminate_now(&self.shared);
                stop_driver(&self.shared);
                self.callbacks.stop(false);
            }
            return;
        }
        teardown(&self.shared, &self.callbacks, driver);
    }
}

/// Cancels what is left and kills the workers; waits for nothing.
fn terminate_now(shared: &Shared) {
    let mut core = shared.lock();
    let mut actions = Actions::default();
    core.terminate(&mut actions);
    shared.finish_pass(core, actions);
    shared.closed();
}

/// Tells the driver to stop; it sees the flag at its next look.
fn stop_driver(shared: &Shared) {
    // Release pairs with the Acquire loads in `driver_loop` and `has_work`.
    shared.stop.store(true, Ordering::Release);
    // Whatever the doorbell's flag says (a worker may have written it):
    // the driver must see `stop`.
    park::wake_regardless(shared.doorbell());
    park::wake(&shared.gate);
}

/// A pool's teardown: terminates unless finished, waits until every worker
/// is reaped and every callback has returned (those of the cancelled tasks
/// run on the callback thread meanwhile), then stops the driver, the
/// callback thread and the supervisor.
fn teardown(
    shared: &Shared,
    callbacks: &CallbackThread,
    driver: Option<std::thread::JoinHandle<()>>,
) {
    let finished = |core: &Core| core.all_stopped() && core.outstanding == 0;
    if !finished(&shared.lock()) {
        terminate_now(shared);
        let mut core = shared.lock();
        while !finished(&core) {
            core = shared.wait_lifecycle(core, None);
        }
    }
    callbacks.wait_settled();
    stop_driver(shared);
    if let Some(driver) = driver {
        let _ = driver.join();
    }
    callbacks.stop(true);
    if let Some(mut sup) = lock(&shared.supervisor).take() {
        sup.stop();
    }
}
