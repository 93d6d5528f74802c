//! The process pool: Python's `multiprocessing.Pool`, on pinned worker
//! processes fed through shared-memory rings.
//!
//! Three kinds of parent threads touch the pool's state, always under one lock
//! ([`core::Core`]): the caller submitting work, a caller waiting for a result
//! (it helps collect while it spins), and the pool's driver thread, which
//! collects and dispatches when nobody else does. The driver sleeps on the
//! doorbell futex in the segment (rung by workers) when idle, and on a private
//! `gate` futex while a caller helps, so that round trips make no wake-up
//! system call. A fourth, the supervisor thread, starts and reaps workers and
//! reports to the others through an event queue.

mod builder;
mod core;
mod handle;
pub(crate) mod layout;
mod supervisor;
pub(crate) mod worker;

pub use builder::{Pinning, PoolBuilder};
pub use handle::{AsyncResult, Callbacks};

use self::core::{Actions, Core, FaultPolicy, Phase, Task, Worker};
use self::handle::{Cell, ChannelSink, Completion, MapCollector, Sink};
use self::supervisor::{Command_, Event, Supervisor};
use crate::error::{Error, Result};
use crate::shm::park::{self, Spinner};
use crate::shm::Segment;
use crate::wire::task::{self, StarFn};
use crate::wire::{Payload, Wire};
use layout::{Header, Layout, Slot};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) struct Config {
    cpus: Vec<Option<usize>>,
    ring_bytes: u32,
    initializer: Option<i64>,
    /// The initializer's encoded argument (empty for none).
    initializer_arg: Vec<u8>,
    /// What that argument names, kept open while the pool lives.
    initializer_keep: Arc<crate::wire::KeepAlive>,
    policy: FaultPolicy,
    start_timeout: Duration,
}

/// State shared by the pool handle, its threads and its result handles.
pub(crate) struct Shared {
    seg: Segment,
    /// Shared objects the initializer's argument names: every worker,
    /// replacements included, decodes it while the pool lives.
    _initializer_keep: Arc<crate::wire::KeepAlive>,
    slots: Vec<Slot>,
    core: Mutex<Core>,
    /// Signalled (with `core` held or just released) when workers start,
    /// stop, or the pool empties.
    lifecycle: Condvar,
    /// Threads waiting on `lifecycle`; only changed with `core` locked.
    lifecycle_waiters: AtomicUsize,
    events: Mutex<Vec<Event>>,
    events_pending: AtomicBool,
    /// Per slot: the driver should watch for it to finish starting.
    awaiting_start: Vec<AtomicBool>,
    next_id: AtomicU64,
    stop: AtomicBool,
    supervisor: Mutex<Option<Supervisor>>,
    max_payload: usize,
    workers: usize,
    /// Callers spinning in a wait, collecting results themselves.
    helpers: AtomicUsize,
    /// The driver's futex word while it leaves the work to helpers.
    gate: AtomicU32,
    /// Tasks submitted and not answered, as of the last pass (a hint read
    /// without the lock).
    outstanding: AtomicUsize,
    /// Nanoseconds after `epoch` when a running task overruns its timeout;
    /// `u64::MAX` when none can.
    next_deadline_ns: AtomicU64,
    epoch: Instant,
}

/// Marks the current thread as a helper while it lives.
pub(crate) struct HelperGuard<'a>(&'a Shared);

impl Drop for HelperGuard<'_> {
    fn drop(&mut self) {
        // SeqCst: pairs with the SeqCst store of `outstanding` and load of
        // `helpers` in `Shared::submit`, and with the SeqCst store of
        // `events_pending` in `Shared::report`.
        if self.0.helpers.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.driver_needed() {
            // Something remains and nobody spins for it: the driver, gated
            // while we helped, takes over. Not a wake-up per `apply`: an idle
            // pool with its workers up needs no driver.
            park::wake(&self.0.gate);
        }
    }
}

impl Shared {
    /// How long the driver may sleep before a running task's timeout needs
    /// checking (`None`: no deadline, sleep until woken).
    fn until_deadline(&self) -> Option<Duration> {
        // Acquire pairs with the Release store in `finish_pass`.
        let nanos = self.next_deadline_ns.load(Ordering::Acquire);
        (nanos != u64::MAX).then(|| {
            let deadline = self.epoch + Duration::from_nanos(nanos);
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(100))
        })
    }

    /// Registers the caller as a helper until the guard drops.
    pub(crate) fn helper(&self) -> HelperGuard<'_> {
        // SeqCst: pairs with the SeqCst load in `Shared::submit` (a submitter
        // that sees a helper leaves the doorbell alone) and the fetch_sub in
        // `HelperGuard::drop`.
        self.helpers.fetch_add(1, Ordering::SeqCst);
        HelperGuard(self)
    }

    /// Waits for a lifecycle change (workers started or stopped, tasks
    /// answered), at most `timeout`.
    fn wait_lifecycle<'a>(
        &self,
        core: MutexGuard<'a, Core>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Core> {
        // Registered with `core` locked: see `finish_pass`.
        self.lifecycle_waiters.fetch_add(1, Ordering::Relaxed);
        let core = match timeout {
            None => self.lifecycle.wait(core).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.lifecycle
                    .wait_timeout(core, t)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        self.lifecycle_waiters.fetch_sub(1, Ordering::Relaxed);
        core
    }

    fn doorbell(&self) -> &std::sync::atomic::AtomicU32 {
        layout::doorbell(&self.seg)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        handle::lock(&self.core)
    }

    /// Drives if the lock is free; never blocks.
    pub(crate) fn try_drive(&self) -> bool {
        match self.core.try_lock() {
            Ok(core) => self.drive_locked(core),
            Err(std::sync::TryLockError::Poisoned(p)) => self.drive_locked(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    fn drive(&self) -> bool {
        self.drive_locked(self.lock())
    }

    /// Runs one pass of the state machine, then (lock released) delivers
    /// outcomes and asks the supervisor for workers.
    fn drive_locked(&self, mut core: MutexGuard<'_, Core>) -> bool {
        // Acquire pairs with the SeqCst store in `report` (the events
        // themselves sit behind the `events` lock).
        let events = if self.events_pending.swap(false, Ordering::Acquire) {
            std::mem::take(&mut *handle::lock(&self.events))
        } else {
            Vec::new()
        };
        let mut actions = Actions::default();
        core.drive(events, &mut actions);
        self.finish_pass(core, actions)
    }

    fn finish_pass(&self, core: MutexGuard<'_, Core>, actions: Actions) -> bool {
        for (flag, w) in self.awaiting_start.iter().zip(core.workers.iter()) {
            flag.store(w.phase == Phase::Starting, Ordering::Relaxed);
        }
        // SeqCst: see `submit` and `HelperGuard::drop`.
        self.outstanding.store(core.outstanding, Ordering::SeqCst);
        let deadline = core.next_deadline.map_or(u64::MAX, |d| {
            d.saturating_duration_since(self.epoch)
                .as_nanos()
                .min(u64::MAX as u128 - 1) as u64
        });
        // AcqRel: the Release half pairs with the Acquire load in
        // `until_deadline`; the Acquire half reads the deadline it replaces.
        let before = self.next_deadline_ns.swap(deadline, Ordering::AcqRel);
        if deadline < before {
            // The driver may be asleep with the later deadline (or none) it
            // computed before, and a task that never ends sends no wake-up:
            // have it look again. Costs a fence and a load when it is awake.
            park::wake(self.doorbell());
        }
        // Lifecycle waiters register with `core` locked, as we are: none is
        // missed, and passes with nobody waiting make no futex system call.
        let notify_lifecycle = (actions.lifecycle_changed || !actions.completions.is_empty())
            && self.lifecycle_waiters.load(Ordering::Relaxed) > 0;
        drop(core);
        if !actions.spawn.is_empty() {
            if let Some(sup) = handle::lock(&self.supervisor).as_ref() {
                for &(index, cpu, not_before) in &actions.spawn {
                    sup.send(Command_::Spawn {
                        index,
                        cpu,
                        not_before,
                    });
                }
            }
        }
        if notify_lifecycle {
            self.lifecycle.notify_all();
        }
        for (sink, outcome) in actions.completions {
            sink.target.complete(sink.tag, outcome);
        }
        actions.progress
    }

    /// Whether the driver has anything to do (checked after announcing sleep).
    ///
    /// Acquire loads: `stop` pairs with the Release store in `Pool::drop`,
    /// `events_pending` with the SeqCst store in `report`, a slot's state with
    /// the worker's Release stores of READY and FAILED (`worker.rs`).
    fn has_work(&self) -> bool {
        self.stop.load(Ordering::Acquire)
            || self.events_pending.load(Ordering::Acquire)
            || self
                .slots
                .iter()
                .zip(&self.awaiting_start)
                .any(|(slot, awaiting)| {
                    slot.result_ring().has_unclaimed()
                        || (awaiting.load(Ordering::Relaxed)
                            && slot.state().load(Ordering::Acquire) != layout::state::STARTING)
                })
    }

    /// Whether the driver has anything to do beyond waiting for the next
    /// submission: tasks unanswered, supervisor events to apply, workers
    /// starting (their readiness is noticed by a pass), results to collect.
    /// A helper that leaves while this holds must ungate the driver, or a
    /// replacement worker's `Spawned` event could sit unapplied until the
    /// next submission.
    ///
    /// SeqCst loads: they pair with the SeqCst `fetch_sub` of `helpers` in
    /// `HelperGuard::drop`, the store of `outstanding` in `finish_pass` and
    /// of `events_pending` in `report`: either the leaving helper sees the
    /// work, or whoever made it sees no helper and wakes the driver itself.
    fn driver_needed(&self) -> bool {
        self.outstanding.load(Ordering::SeqCst) > 0
            || self.events_pending.load(Ordering::SeqCst)
            || self
                .awaiting_start
                .iter()
                .any(|a| a.load(Ordering::Relaxed))
            || self.has_work()
    }

    fn report(&self, event: Event) {
        handle::lock(&self.events).push(event);
        // SeqCst: Release pairs with the Acquire swap in `drive_locked`; the
        // total order pairs it with the load in `driver_needed` (a helper
        // leaving either sees the event or is gone before `wake(gate)` below
        // looks for a gated driver).
        self.events_pending.store(true, Ordering::SeqCst);
        park::wake(self.doorbell());
        park::wake(&self.gate);
    }

    /// Queues tasks and dispatches what fits into the rings. `caller_waits`:
    /// the caller waits for these results at once (and helps collect them).
    fn submit(
        &self,
        tasks: smallvec::SmallVec<[(i64, Payload, Sink); 1]>,
        caller_waits: bool,
    ) -> Result<()> {
        if let Some((_, payload, _)) = tasks.iter().find(|(_, p, _)| p.len() > self.max_payload) {
            return Err(Error::ArgumentTooLarge {
                size: payload.len(),
                max: self.max_payload,
            });
        }
        // Everything the encodes of this submission asked to keep alive.
        let keep = crate::wire::take_keep_alive();
        let keep = (!keep.is_empty()).then(|| Arc::new(keep));
        let mut core = self.lock();
        if let Some(e) = &core.fatal {
            return Err(e.clone());
        }
        if !core.open {
            return Err(Error::PoolClosed);
        }
        for (trampoline, payload, sink) in tasks {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            core.submit(Task {
                id,
                trampoline,
                payload,
                sink,
                attempts: 0,
                keep: keep.clone(),
            });
        }
        let mut actions = Actions::default();
        core.dispatch_pending(&mut actions);
        self.finish_pass(core, actions);
        // SeqCst, with the store of `outstanding` in `finish_pass`: pairs with
        // the SeqCst decrement and load in `HelperGuard::drop` (a Dekker
        // pair: either we see the helper, or it sees our task).
        if !caller_waits && self.helpers.load(Ordering::SeqCst) == 0 {
            // Nobody spins for results: make sure the driver is not gated.
            park::wake(&self.gate);
        }
        Ok(())
    }
}

fn driver_loop(shared: Arc<Shared>) {
    let mut spinner = Spinner::new();
    // Acquire loads: `stop` pairs with the Release store in `Pool::drop`;
    // `helpers` with the SeqCst `fetch_sub` in `HelperGuard::drop`, which
    // then wakes `gate` (the sleep-flag protocol of `park` closes the gap).
    while !shared.stop.load(Ordering::Acquire) {
        if shared.helpers.load(Ordering::Acquire) > 0 {
            // A caller is spinning for its result and collecting as it goes:
            // stay out of its way (and off the doorbell, so workers make no
            // wake-up system calls) until it leaves.
            park::sleep_unless(&shared.gate, shared.until_deadline(), || {
                shared.helpers.load(Ordering::Acquire) == 0 || shared.stop.load(Ordering::Acquire)
            });
            spinner.reset();
            continue;
        }
        if shared.drive() {
            spinner.reset();
            continue;
        }
        if spinner.spin() {
            continue;
        }
        park::sleep_unless(shared.doorbell(), shared.until_deadline(), || {
            shared.has_work()
        });
        spinner.reset();
    }
}

/// How many chunks a blocking `map` keeps submitted per worker: enough that
/// a worker finds the next chunk in its ring when it finishes one.
const MAP_CHUNKS_AHEAD_PER_WORKER: usize = 4;

/// A `map`'s items: the caller's iterator when it knows its length, else
/// what it yielded, collected.
enum Items<I, A> {
    Exact(I),
    Collected(std::vec::IntoIter<A>),
}

impl<A, I: Iterator<Item = A>> Iterator for Items<I, A> {
    type Item = A;

    fn next(&mut self) -> Option<A> {
        match self {
            Items::Exact(i) => i.next(),
            Items::Collected(i) => i.next(),
        }
    }
}

/// Cuts a `map`'s items into encoded chunks of `chunksize`, one at a time.
struct Chunker<A, I: Iterator<Item = A>> {
    iter: std::iter::Peekable<I>,
    chunksize: usize,
    /// The number of items, as the iterator said (it may be wrong).
    len_hint: usize,
    /// The items of the chunk being encoded (reused).
    chunk: Vec<A>,
}

impl<A: Wire, I: Iterator<Item = A>> Chunker<A, I> {
    /// The next chunk's payload (its length, then the items) and how many
    /// items it holds.
    fn next_chunk(&mut self) -> Option<(Payload, usize)> {
        // `len_hint` may be wrong: reserve no more than a sane amount.
        const PREALLOCATE_AT_MOST: usize = 1 << 16;
        self.chunk.clear();
        self.chunk
            .reserve(self.chunksize.min(self.len_hint).min(PREALLOCATE_AT_MOST));
        self.chunk.extend(self.iter.by_ref().take(self.chunksize));
        if self.chunk.is_empty() {
            return None;
        }
        let size = std::mem::size_of_val(self.chunk.as_slice());
        let mut out = crate::wire::take_buffer(8 + size);
        out.extend_from_slice(&(self.chunk.len() as u64).to_le_bytes());
        A::encode_slice(&self.chunk, &mut out);
        Some((Payload::from_vec(out), self.chunk.len()))
    }
}

/// What a pool has lived through: for monitoring, soak tests and benchmarks.
///
/// ```
/// fn main() {
///     corepool::init();
///     let pool = corepool::Pool::new(1).unwrap();
///     assert_eq!(pool.stats().respawns, 0);
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers started to replace one that exited (died, retired, timed out).
    pub respawns: u64,
    /// Time from the parent seeing a worker's death to its replacement being
    /// ready, for the last (up to 1024) replacements, oldest first.
    pub replacements: Vec<Duration>,
}

impl PoolStats {
    fn record_replacement(&mut self, took: Duration) {
        if self.replacements.len() == 1024 {
            self.replacements.remove(0);
        }
        self.replacements.push(took);
    }

    /// The median of [`replacements`](Self::replacements), if any.
    ///
    /// ```
    /// let stats = corepool::PoolStats::default();
    /// assert_eq!(stats.median_replacement(), None); // nothing replaced yet
    /// ```
    pub fn median_replacement(&self) -> Option<Duration> {
        let mut sorted = self.replacements.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    }
}

/// A pool of worker processes, each pinned to its own CPU, fed through
/// lock-free rings in shared memory.
///
/// Python's `multiprocessing.Pool`, method for method: [`apply`](Pool::apply),
/// [`apply_async`](Pool::apply_async) (with callbacks through
/// [`apply_async_with`](Pool::apply_async_with)), [`map`](Pool::map),
/// [`map_async`](Pool::map_async), [`imap`](Pool::imap),
/// [`imap_unordered`](Pool::imap_unordered), [`starmap`](Pool::starmap),
/// [`close`](Pool::close), [`terminate`](Pool::terminate), [`join`](Pool::join).
///
/// Tasks are `fn` items or closures that capture nothing (a capturing closure
/// does not compile); arguments and results implement [`Wire`].
///
/// Dropping a pool terminates it (like leaving Python's `with Pool() as p:`):
/// unfinished tasks get [`Error::Cancelled`], every worker is killed and
/// reaped. To finish the work first, `close()` then `join()`.
///
/// ```
/// use corepool::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() -> Result<(), corepool::Error> {
///     corepool::init();
///     let pool = Pool::builder().workers(2).build()?;
///     assert_eq!(pool.apply(square, 7)?, 49);
///     assert_eq!(pool.map(square, 0..5u64, None)?, vec![0, 1, 4, 9, 16]);
///     pool.close();
///     pool.join()
/// }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    driver: Option<std::thread::JoinHandle<()>>,
    cpus: Vec<Option<usize>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.shared.workers)
            .field("cpus", &self.cpus)
            .finish()
    }
}

impl Pool {
    /// A builder with the defaults: one pinned worker per allowed CPU.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
    ///     corepool::init();
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

    fn start(config: Config) -> Result<Self> {
        if crate::pool::worker::is_uninitialised_worker() {
            return Err(Error::NotInitialized);
        }
        let n = config.cpus.len();
        let layout = Layout::new(
            n,
            config.ring_bytes,
            config.ring_bytes,
            config.initializer_arg.len(),
        )?;
        let seg = Segment::create(c"corepool", layout.total)?;
        let parent_pid = std::process::id() as i32;
        layout::write_header(
            &seg,
            &Header {
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
            },
        );
        layout::write_init_arg(&seg, &layout, &config.initializer_arg)?;
        let slots: Vec<Slot> = (0..n)
            .map(|i| Slot::new(&seg, &layout, i).expect("slot in layout"))
            .collect();
        let budget = if config.policy.max_tasks_per_child == 0 {
            u64::MAX
        } else {
            config.policy.max_tasks_per_child
        };
        let workers = slots
            .iter()
            .zip(&config.cpus)
            .map(|(s, cpu)| Worker::new(*s, *cpu, budget))
            .collect();
        let max_payload = slots[0].task_ring().max_payload();
        let segment_fd = seg.raw_fd();
        let shared = Arc::new(Shared {
            seg,
            slots,
            core: Mutex::new(Core::new(workers, config.policy)),
            lifecycle: Condvar::new(),
            lifecycle_waiters: AtomicUsize::new(0),
            events: Mutex::new(Vec::new()),
            events_pending: AtomicBool::new(false),
            awaiting_start: (0..n).map(|_| AtomicBool::new(false)).collect(),
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            supervisor: Mutex::new(None),
            max_payload,
            workers: n,
            helpers: AtomicUsize::new(0),
            gate: AtomicU32::new(0),
            outstanding: AtomicUsize::new(0),
            next_deadline_ns: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            _initializer_keep: config.initializer_keep,
        });
        let weak = Arc::downgrade(&shared);
        let supervisor = Supervisor::start(segment_fd, parent_pid, move |event| {
            if let Some(shared) = weak.upgrade() {
                shared.report(event);
            }
        })?;
        for (index, cpu) in config.cpus.iter().enumerate() {
            supervisor.send(Command_::Spawn {
                index,
                cpu: *cpu,
                not_before: Instant::now(),
            });
        }
        *handle::lock(&shared.supervisor) = Some(supervisor);
        let driver_shared = shared.clone();
        let driver = std::thread::Builder::new()
            .name("corepool-driver".into())
            .spawn(move || driver_loop(driver_shared))
            .map_err(|e| Error::os("spawning the driver thread", e))?;
        let pool = Pool {
            shared,
            driver: Some(driver),
            cpus: config.cpus,
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
                        "the workers did not attach within {timeout:?}; is `corepool::init()` the first statement of `main`?"
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
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(1)?;
    ///     assert!(pool.stats().replacements.is_empty()); // no worker has died
    ///     Ok(())
    /// }
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.shared.lock().stats.clone()
    }

    /// Number of worker processes.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     assert_eq!(corepool::Pool::new(2)?.workers(), 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// The CPU each worker is pinned to (`None` when unpinned).
    ///
    /// ```
    /// use corepool::{Pinning, Pool};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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

    /// The pids of the workers running now (a slot being restarted is absent).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pids = pool.pids();
    ///     assert_eq!(pids.len(), 2);
    ///     assert!(!pids.contains(&(std::process::id() as i32)));
    ///     Ok(())
    /// }
    /// ```
    pub fn pids(&self) -> Vec<i32> {
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
    ///     corepool::init();
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
        // The caller is about to wait (and help): the submission need not
        // wake a gated driver, so a round trip makes no wake-up system call.
        self.submit_one(f, arg, Callbacks::new(), true)?.get()
    }

    /// Submits `f(arg)` and returns at once (Python's `apply_async`).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
    /// [`Error::ArgumentTooLarge`] when `arg` does not fit a ring message.
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
    ///     corepool::init();
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
        self.submit_one(f, arg, callbacks, false)
    }

    fn submit_one<F, A, R>(
        &self,
        f: F,
        arg: A,
        callbacks: Callbacks<R>,
        caller_waits: bool,
    ) -> Result<AsyncResult<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        let trampoline = task::offset_of(task::call_one::<F, A, R>);
        let cell = Cell::new(callbacks);
        let sink = Sink {
            target: cell.clone(),
            tag: 0,
        };
        crate::wire::take_keep_alive(); // nothing stale from a failed submission
        let payload = crate::wire::encode_payload(&arg);
        self.shared.submit(
            smallvec::smallvec![(trampoline, payload, sink)],
            caller_waits,
        )?;
        Ok(AsyncResult::new(cell, Arc::downgrade(&self.shared)))
    }

    /// Python's default chunk size (about four chunks per worker), capped so
    /// that a chunk stays cache-sized and fits one ring message.
    fn chunksize_for<A: Wire>(
        &self,
        len: usize,
        first: Option<&A>,
        chunksize: Option<usize>,
    ) -> Result<usize> {
        if let Some(c) = chunksize {
            if c == 0 {
                return Err(Error::InvalidConfig {
                    what: "chunksize must be at least 1".into(),
                });
            }
            return Ok(c);
        }
        let mut size = len.div_ceil(self.workers() * 4).max(1);
        if let Some(first) = first {
            let mut probe = Vec::new();
            first.encode(&mut probe);
            let budget = (self.shared.max_payload.saturating_sub(8) / 2).min(1 << 18);
            size = size.min((budget / probe.len().max(1)).max(1));
        }
        Ok(size)
    }

    /// Cuts `items` into encoded chunks, one at a time (see [`Chunker`]).
    /// An iterator that does not know its length exactly is collected
    /// first, so that the default chunk size can be computed.
    fn chunker<A: Wire, I: Iterator<Item = A>>(
        &self,
        items: impl IntoIterator<Item = A, IntoIter = I>,
        chunksize: Option<usize>,
    ) -> Result<Chunker<A, Items<I, A>>> {
        crate::wire::take_keep_alive(); // nothing stale from a failed submission
        let iter = items.into_iter();
        let (iter, len) = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => (Items::Exact(iter), lo),
            _ => {
                let all: Vec<A> = iter.collect();
                let len = all.len();
                (Items::Collected(all.into_iter()), len)
            }
        };
        let mut iter = iter.peekable();
        let chunksize = self.chunksize_for(len, iter.peek(), chunksize)?;
        Ok(Chunker {
            iter,
            chunksize,
            len_hint: len,
            chunk: Vec::new(),
        })
    }

    /// `map_async`'s path: every chunk encoded and submitted at once.
    fn submit_chunks<A: Wire, R: Wire>(
        &self,
        trampoline: i64,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>> {
        let mut chunker = self.chunker(items, chunksize)?;
        let cell = Cell::new(callbacks);
        let collector = MapCollector::<R>::new(chunker.len_hint, cell.clone());
        let target: Arc<dyn Completion> = collector.clone();
        let mut tasks = smallvec::SmallVec::new();
        while let Some((payload, due)) = chunker.next_chunk() {
            let sink = Sink {
                target: target.clone(),
                tag: collector.add_chunk(due),
            };
            tasks.push((trampoline, payload, sink));
        }
        collector.seal();
        self.shared.submit(tasks, false)?;
        Ok(AsyncResult::new(cell, Arc::downgrade(&self.shared)))
    }

    /// The blocking `map`'s path: chunks are encoded as the workers make
    /// room, a few per worker ahead, so their buffers are recycled (memory
    /// already faulted in) instead of all being allocated up front.
    fn map_chunks<A: Wire, R: Wire>(
        &self,
        trampoline: i64,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>> {
        let mut chunker = self.chunker(items, chunksize)?;
        let cell = Cell::new(Callbacks::new());
        let collector = MapCollector::<R>::new(chunker.len_hint, cell.clone());
        let target: Arc<dyn Completion> = collector.clone();
        let ahead = self.workers() * MAP_CHUNKS_AHEAD_PER_WORKER;
        let mut submitted = 0;
        while let Some((payload, due)) = chunker.next_chunk() {
            if submitted >= ahead {
                collector.wait_completed(submitted + 1 - ahead, &self.shared);
            }
            if collector.ended() {
                break; // a chunk failed: submit nothing more
            }
            let sink = Sink {
                target: target.clone(),
                tag: collector.add_chunk(due),
            };
            self.shared
                .submit(smallvec::smallvec![(trampoline, payload, sink)], true)?;
            submitted += 1;
        }
        collector.seal();
        AsyncResult::new(cell, Arc::downgrade(&self.shared)).get()
    }

    /// `f` over every item, in order (Python's `map`). Items are sent in
    /// chunks of `chunksize`; `None` picks Python's default (about four chunks
    /// per worker), capped so that a chunk fits one ring message.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let lengths = pool.map(|s: String| s.len() as u64, ["a", "bb", "ccc"].map(String::from), None)?;
    ///     assert_eq!(lengths, [1, 2, 3]);
    ///     // A panic in any item fails the whole map, as in Python.
    ///     let failed = pool.map(|x: u64| 10 / x, [1u64, 0, 2], Some(1));
    ///     assert!(matches!(failed, Err(corepool::Error::Panicked { .. })));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// The first failing chunk's error; [`Error::PoolClosed`],
    /// [`Error::ArgumentTooLarge`] at submission.
    pub fn map<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        self.map_chunks(
            task::offset_of(task::call_chunk::<F, A, R>),
            items,
            chunksize,
        )
    }

    /// [`map`](Self::map) without waiting.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pending = pool.map_async(|x: u64| x + 1, 0..1000u64, None)?;
    ///     // ... other work here ...
    ///     assert_eq!(pending.get()?.iter().sum::<u64>(), 500_500);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), at submission.
    pub fn map_async<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.map_async_with(f, items, chunksize, Callbacks::new())
    }

    /// [`map_async`](Self::map_async) with Python's `callback` (called once
    /// with the whole result) and `error_callback` (with the first error).
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new()
    ///         .on_success(move |squares: &Vec<u64>| tx.send(squares.iter().sum::<u64>()).unwrap());
    ///     pool.map_async_with(|x: u64| x * x, 0..4u64, None, cb)?;
    ///     assert_eq!(rx.recv().unwrap(), 14);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), at submission.
    pub fn map_async_with<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        self.submit_chunks(
            task::offset_of(task::call_chunk::<F, A, R>),
            items,
            chunksize,
            callbacks,
        )
    }

    /// `f(*args)` for every tuple, in order (Python's `starmap`).
    ///
    /// ```
    /// fn main() {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(1).unwrap();
    ///     let sums = pool.starmap(|a: u32, b: u32| a + b, vec![(1, 2), (3, 4)], None).unwrap();
    ///     assert_eq!(sums, vec![3, 7]);
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn starmap<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        let _ = f;
        self.map_chunks(
            task::offset_of(task::call_star_chunk::<F, T, R>),
            items,
            chunksize,
        )
    }

    /// [`starmap`](Self::starmap) without waiting.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pending = pool.starmap_async(|a: u64, b: u64| a * b, vec![(2, 3), (4, 5)], None)?;
    ///     assert_eq!(pending.get()?, [6, 20]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), at submission.
    pub fn starmap_async<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        self.starmap_async_with(f, items, chunksize, Callbacks::new())
    }

    /// [`starmap_async`](Self::starmap_async) with Python's `callback` and
    /// `error_callback`.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new().on_error(move |e| tx.send(e.clone()).unwrap());
    ///     pool.starmap_async_with(|a: u64, b: u64| a / b, vec![(4, 2), (1, 0)], None, cb)?;
    ///     assert!(matches!(rx.recv().unwrap(), corepool::Error::Panicked { .. }));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), at submission.
    pub fn starmap_async_with<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        let _ = f;
        self.submit_chunks(
            task::offset_of(task::call_star_chunk::<F, T, R>),
            items,
            chunksize,
            callbacks,
        )
    }

    /// A lazy, ordered `map` (Python's `imap`): items are pulled from `items`
    /// and sent `chunksize` at a time, a few chunks per worker ahead of the
    /// consumer, so an endless iterator works.
    ///
    /// ```
    /// fn main() {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2).unwrap();
    ///     let firsts: Vec<u64> = pool
    ///         .imap(|x: u64| x * 10, 0.., 4)
    ///         .take(3)
    ///         .map(Result::unwrap)
    ///         .collect();
    ///     assert_eq!(firsts, vec![0, 10, 20]);
    /// }
    /// ```
    pub fn imap<F, A, R, I>(&self, f: F, items: I, chunksize: usize) -> Imap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        Imap {
            pool: self,
            trampoline: task::offset_of(task::call_chunk::<F, A, R>),
            source: items.into_iter(),
            chunksize: chunksize.max(1),
            in_flight: VecDeque::new(),
            ready: VecDeque::new(),
            failed: false,
            _args: std::marker::PhantomData,
        }
    }

    /// Like [`imap`](Self::imap), but yields results as they complete (Python's
    /// `imap_unordered`). All items are submitted at once.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let mut seen: Vec<u64> = pool
    ///         .imap_unordered(|x: u64| x * 10, 0..6u64, 2)?
    ///         .collect::<corepool::Result<_>>()?;
    ///     seen.sort_unstable(); // they come as they finish
    ///     assert_eq!(seen, [0, 10, 20, 30, 40, 50]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), at submission; a failing chunk yields its error.
    pub fn imap_unordered<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<ImapUnordered<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        let trampoline = task::offset_of(task::call_chunk::<F, A, R>);
        let chunksize = chunksize.max(1);
        let mut chunker = self.chunker(items, Some(chunksize))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink: Arc<dyn Completion> = Arc::new(ChannelSink { tx });
        let mut tasks = smallvec::SmallVec::new();
        while let Some((payload, due)) = chunker.next_chunk() {
            // The tag is how many results are due, which `ChannelSink` checks.
            let sink = Sink {
                target: sink.clone(),
                tag: due as u64,
            };
            tasks.push((trampoline, payload, sink));
        }
        let chunks = tasks.len();
        self.shared.submit(tasks, false)?;
        Ok(ImapUnordered {
            rx,
            chunks_left: chunks,
            ready: VecDeque::new(),
            pool: Arc::downgrade(&self.shared),
        })
    }

    /// Stops taking work; workers exit once every submitted task is done
    /// (Python's `close`).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
        let mut core = self.shared.lock();
        core.open = false;
        let mut actions = Actions::default();
        core.drive(Vec::new(), &mut actions);
        self.shared.finish_pass(core, actions);
    }

    /// Kills the workers now; unfinished tasks get [`Error::Cancelled`]
    /// (Python's `terminate`).
    ///
    /// ```
    /// fn forever(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop();
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
        let mut core = self.shared.lock();
        let mut actions = Actions::default();
        core.terminate(&mut actions);
        self.shared.finish_pass(core, actions);
    }

    /// Waits until every worker has exited (Python's `join`).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
    /// [`terminate`](Self::terminate) came first.
    pub fn join(&self) -> Result<()> {
        let mut core = self.shared.lock();
        if core.open {
            return Err(Error::JoinWhileOpen);
        }
        while !(core.all_stopped() && core.outstanding == 0) {
            core = self.shared.wait_lifecycle(core, None);
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let finished = {
            let core = self.shared.lock();
            core.all_stopped() && core.outstanding == 0
        };
        if !finished {
            self.terminate();
            let _ = self.join();
        }
        // Release pairs with the Acquire loads in `driver_loop` and `has_work`.
        self.shared.stop.store(true, Ordering::Release);
        park::wake(self.shared.doorbell());
        park::wake(&self.shared.gate);
        // The doorbell may not be armed: make sure the driver sees `stop`.
        crate::sys::futex_wake_all(self.shared.doorbell());
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
        if let Some(mut sup) = handle::lock(&self.shared.supervisor).take() {
            sup.stop();
        }
    }
}

/// The iterator [`Pool::imap`] returns: results in input order.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     corepool::init();
///     let pool = corepool::Pool::new(2)?;
///     let mut results = pool.imap(|x: u64| x * x, 1..=1_000_000u64, 64);
///     // Lazy: only the chunks ahead of the reader are in flight.
///     let first: Vec<u64> = results.by_ref().take(3).collect::<corepool::Result<_>>()?;
///     assert_eq!(first, [1, 4, 9]);
///     Ok(())
/// }
/// ```
pub struct Imap<'p, A, R, I> {
    pool: &'p Pool,
    trampoline: i64,
    source: I,
    chunksize: usize,
    /// Each chunk submitted and not yet read, with how many results are due.
    in_flight: VecDeque<(AsyncResult<Vec<R>>, usize)>,
    ready: VecDeque<R>,
    failed: bool,
    _args: std::marker::PhantomData<fn(A)>,
}

impl<A, R, I> fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("chunks_in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Imap<'_, A, R, I> {
    fn refill(&mut self) -> Result<()> {
        let ahead = self.pool.workers() * 4;
        while self.in_flight.len() < ahead {
            let chunk: Vec<A> = self.source.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                break;
            }
            let cell = Cell::<Vec<R>>::new(Callbacks::new());
            crate::wire::take_keep_alive();
            let payload = crate::wire::encode_payload(&chunk);
            let due = chunk.len();
            self.pool.shared.submit(
                smallvec::smallvec![(
                    self.trampoline,
                    payload,
                    Sink {
                        target: cell.clone(),
                        tag: 0,
                    },
                )],
                false,
            )?;
            self.in_flight.push_back((
                AsyncResult::new(cell, Arc::downgrade(&self.pool.shared)),
                due,
            ));
        }
        Ok(())
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Iterator for Imap<'_, A, R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(Ok(r));
            }
            if self.failed {
                return None;
            }
            if let Err(e) = self.refill() {
                self.failed = true;
                return Some(Err(e));
            }
            let (next, due) = self.in_flight.pop_front()?;
            match next
                .get()
                .and_then(|values| handle::check_chunk(values, due))
            {
                Ok(values) => self.ready.extend(values),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The iterator [`Pool::imap_unordered`] returns: results as they complete.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     corepool::init();
///     let pool = corepool::Pool::new(2)?;
///     let total: u64 = pool
///         .imap_unordered(|x: u64| x * 2, 0..100u64, 10)?
///         .sum::<corepool::Result<u64>>()?;
///     assert_eq!(total, 9_900);
///     Ok(())
/// }
/// ```
pub struct ImapUnordered<R> {
    rx: crossbeam_channel::Receiver<Result<Vec<R>>>,
    chunks_left: usize,
    ready: VecDeque<R>,
    pool: std::sync::Weak<Shared>,
}

impl<R> fmt::Debug for ImapUnordered<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("chunks_left", &self.chunks_left)
            .finish_non_exhaustive()
    }
}

impl<R: Wire> Iterator for ImapUnordered<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(Ok(r));
            }
            if self.chunks_left == 0 {
                return None;
            }
            let mut spinner = Spinner::new();
            let chunk = loop {
                if let Ok(c) = self.rx.try_recv() {
                    break c;
                }
                if let Some(pool) = self.pool.upgrade() {
                    pool.try_drive();
                }
                if !spinner.spin() {
                    match self.rx.recv() {
                        Ok(c) => break c,
                        Err(_) => return Some(Err(Error::Cancelled)),
                    }
                }
            };
            self.chunks_left -= 1;
            match chunk {
                Ok(values) => self.ready.extend(values),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
