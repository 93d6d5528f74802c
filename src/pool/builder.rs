//! Configuring a pool: [`PoolBuilder`] and [`Pinning`].

use super::config::Config;
use super::core::FaultPolicy;
use super::Pool;
use crate::child::forkserver::StartMethod;
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::task;
use crate::wire::Wire;
use std::time::Duration;

/// Where workers run.
///
/// Every thread a worker starts (a task's own threads, rayon's) inherits its
/// pinning: with one CPU per worker, the default, they all share that CPU.
/// Give tasks that use threads more with
/// [`PoolBuilder::cpus_per_worker`], or use `Pinning::None`.
///
/// ```
/// use corepool::Pinning;
/// let p = Pinning::Cpus(vec![0]);
/// assert_ne!(p, Pinning::None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pinning {
    /// One worker per CPU of the process's allowed set (`sched_getaffinity`,
    /// so `taskset` and cgroup cpusets are respected), each pinned to its own
    /// CPU before it starts. With more workers than CPUs they wrap around.
    /// With [`cpus_per_worker(n)`](PoolBuilder::cpus_per_worker), one worker
    /// per `n` allowed CPUs, each pinned to `n` of them (SMT siblings
    /// together, when the kernel says which they are).
    #[default]
    PerCpu,
    /// No pinning: the scheduler places workers, and a worker's threads may
    /// run on any CPU the parent may use.
    None,
    /// Worker `i` is pinned to `cpus[i % cpus.len()]`. Every CPU must be in
    /// the allowed set. With [`cpus_per_worker(n)`](PoolBuilder::cpus_per_worker),
    /// worker `i` is pinned to the `n` CPUs from `cpus[i * n]` on (wrapping
    /// around the list).
    Cpus(Vec<usize>),
}

/// Shared objects an encoded value names, kept open (see `wire::Encoder`).
#[derive(Clone, Default)]
struct KeptAlive(std::sync::Arc<crate::wire::KeepAlive>);

impl std::fmt::Debug for KeptAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} shared object(s)", self.0.len())
    }
}

/// Builds a [`Pool`]: `Pool::builder().workers(4).pinning(Pinning::None).build()?`.
///
/// ```
/// fn main() {
///     let pool = corepool::Pool::builder()
///         .workers(2)
///         .pinning(corepool::Pinning::None)
///         .max_tasks_per_child(1000)
///         .build()
///         .unwrap();
///     assert_eq!(pool.workers(), 2);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    workers: Option<usize>,
    pinning: Pinning,
    cpus_per_worker: usize,
    ring_bytes: u32,
    initializer: Option<i64>,
    initializer_arg: Vec<u8>,
    /// Shared objects the argument names (a `SharedArray`, a `Queue`): kept
    /// open while the pool lives, for workers started later.
    initializer_keep: KeptAlive,
    /// Why the argument could not be encoded, for `build` to return.
    initializer_error: Option<crate::Error>,
    max_tasks_per_child: u64,
    retries: u32,
    task_timeout: Option<Duration>,
    start_timeout: Duration,
    max_queued: Option<usize>,
    start_method: StartMethod,
    arg_arena_bytes: usize,
}

/// The default [`PoolBuilder::arg_arena_bytes`]: eight 8 MiB arguments.
const DEFAULT_ARG_ARENA_BYTES: usize = 64 << 20;

impl Default for PoolBuilder {
    fn default() -> Self {
        Self {
            workers: None,
            pinning: Pinning::PerCpu,
            cpus_per_worker: 1,
            ring_bytes: 1 << 20,
            initializer: None,
            initializer_arg: Vec::new(),
            initializer_keep: KeptAlive::default(),
            initializer_error: None,
            max_tasks_per_child: 0,
            retries: 0,
            task_timeout: None,
            start_timeout: Duration::from_secs(30),
            max_queued: None,
            start_method: StartMethod::default(),
            arg_arena_bytes: DEFAULT_ARG_ARENA_BYTES,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes. Default: one per allowed CPU (or per CPU
    /// listed in [`Pinning::Cpus`]), or per
    /// [`cpus_per_worker`](Self::cpus_per_worker) of them; at least one.
    /// Each worker costs the program two descriptors (its slot's memory and
    /// its pidfd; the pool two more): under the usual `ulimit -n` of 1024,
    /// a pool of about 500 workers fails to build with an error that says
    /// so.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder().workers(2).build()?;
    ///     assert_eq!(pool.workers(), 2);
    ///     assert_eq!(pool.pids().len(), 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Where workers run. Default [`Pinning::PerCpu`]: each worker on its own
    /// CPU.
    ///
    /// Pinning holds for the whole worker process, every thread it starts
    /// included: by default a task that starts threads (or uses rayon) runs
    /// them all on its worker's one CPU, and
    /// [`std::thread::available_parallelism`] says 1 inside it. For such
    /// tasks use [`cpus_per_worker`](Self::cpus_per_worker), or
    /// [`Pinning::None`].
    ///
    /// ```
    /// use corepool::{info, Pinning, Pool};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let cpu = info::allowed_cpus()?[0];
    ///     let pool = Pool::builder().workers(2).pinning(Pinning::Cpus(vec![cpu])).build()?;
    ///     assert_eq!(pool.cpus(), &[Some(cpu), Some(cpu)]); // the list wraps around
    ///     let free = Pool::builder().workers(1).pinning(Pinning::None).build()?;
    ///     assert_eq!(free.cpus(), &[None]);
    ///     Ok(())
    /// }
    /// ```
    pub fn pinning(mut self, pinning: Pinning) -> Self {
        self.pinning = pinning;
        self
    }

    /// Pin each worker to `n` CPUs instead of one, for tasks that run
    /// threads of their own (rayon, `std::thread::scope`): inside a task
    /// [`std::thread::available_parallelism`] then says `n`, so rayon's
    /// default pool starts `n` threads, and they run side by side. Default 1.
    ///
    /// The CPUs come from the [`pinning`](Self::pinning) list (the allowed
    /// set for [`Pinning::PerCpu`], ordered so that SMT siblings stay
    /// together), `n` consecutive ones per worker, and the default worker
    /// count becomes that list's length divided by `n` (at least one;
    /// CPUs left over are not used). Given more workers than that, with
    /// [`workers`](Self::workers), the sets wrap around the list as
    /// single CPUs do, so workers share CPUs. A worker's set is smaller
    /// than `n` only when the list is. With [`Pinning::None`] nobody is
    /// pinned, and only the default worker count changes.
    /// A replacement worker gets its slot's set again.
    ///
    /// ```
    /// use corepool::{info, Pool};
    ///
    /// fn threads_seen(_: ()) -> usize {
    ///     std::thread::available_parallelism().map_or(1, |n| n.get())
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let allowed = info::allowed_cpus()?;
    ///     let pool = Pool::builder().cpus_per_worker(2).build()?;
    ///     assert_eq!(pool.workers(), (allowed.len() / 2).max(1));
    ///     let each = allowed.len().min(2);
    ///     assert!(pool.cpu_sets().iter().all(|set| set.len() == each));
    ///     assert_eq!(pool.apply(threads_seen, ())?, each);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// `n` is at least 1: `cpus_per_worker(0)` makes `build` fail with
    /// [`Error::InvalidConfig`].
    pub fn cpus_per_worker(mut self, n: usize) -> Self {
        self.cpus_per_worker = n;
        self
    }

    /// Bytes of each worker's task ring and of its result ring: a power of two
    /// from 4 KiB to 1 GiB. One message (a task's encoded arguments, a
    /// result) takes up to half of it in place; a larger one travels in a
    /// one-off shared segment (a spill), so this is a speed knob, never a
    /// limit. Default 1 MiB.
    ///
    /// ```
    /// use corepool::Pool;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::builder().workers(1).ring_bytes(4096).build()?;
    ///     assert_eq!(pool.apply(|v: Vec<u8>| v.len(), vec![1u8; 100])?, 100);
    ///     // An argument larger than half the ring spills: slower, but it goes.
    ///     assert_eq!(pool.apply(|v: Vec<u8>| v.len(), vec![1u8; 4096])?, 4096);
    ///     assert!(Pool::builder().ring_bytes(5000).build().is_err()); // not a power of two
    ///     Ok(())
    /// }
    /// ```
    pub fn ring_bytes(mut self, bytes: u32) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// A function each worker runs once before its first task (Python's
    /// `initializer`). If it panics the worker fails to start and `build`
    /// returns [`Error::WorkerStart`] with the panic message.
    ///
    /// ```
    /// use corepool::{Error, Pool};
    /// use std::sync::atomic::{AtomicBool, Ordering};
    ///
    /// static READY: AtomicBool = AtomicBool::new(false);
    ///
    /// fn main() -> corepool::Result<()> {
    ///     // Runs in each worker: the flag is set there, not here.
    ///     let pool = Pool::builder()
    ///         .workers(1)
    ///         .initializer(|| READY.store(true, Ordering::Relaxed))
    ///         .build()?;
    ///     assert!(pool.apply(|_: ()| READY.load(Ordering::Relaxed), ())?);
    ///     assert!(!READY.load(Ordering::Relaxed));
    ///
    ///     let failed = Pool::builder().workers(1).initializer(|| panic!("no config")).build();
    ///     assert!(matches!(failed, Err(Error::WorkerStart { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn initializer<F>(mut self, f: F) -> Self
    where
        F: Fn() + Copy + Send + Sync + 'static,
    {
        let _ = f;
        self.initializer = Some(task::offset_of(task::call_init::<F>));
        self.initializer_arg.clear();
        self.initializer_keep = KeptAlive::default();
        self.initializer_error = None;
        self
    }

    /// [`initializer`](Self::initializer) with an argument, which every
    /// worker (and every replacement) receives a copy of: Python's
    /// `initializer(*initargs)`. Tasks cannot capture, so this is how workers
    /// get their configuration. Replaces any earlier initializer. Shared
    /// objects in the argument (a [`SharedArray`](crate::SharedArray), a
    /// [`Queue`](crate::Queue)) stay open while the pool lives.
    ///
    /// ```
    /// use std::sync::OnceLock;
    ///
    /// static GREETING: OnceLock<String> = OnceLock::new();
    ///
    /// fn setup(greeting: String) {
    ///     GREETING.set(greeting).unwrap();
    /// }
    ///
    /// fn greet(name: String) -> String {
    ///     format!("{}, {name}", GREETING.get().unwrap())
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder()
    ///         .workers(2)
    ///         .initializer_with(setup, "hello".to_string())
    ///         .build()?;
    ///     assert_eq!(pool.apply(greet, "world".to_string())?, "hello, world");
    ///     Ok(())
    /// }
    /// ```
    ///
    /// An argument whose encoding exceeds 16 MiB makes `build` fail with
    /// [`Error::InvalidConfig`]: pass large data in a
    /// [`SharedArray`](crate::SharedArray). One that cannot be encoded makes
    /// it fail with [`Error::Encode`](crate::Error::Encode).
    pub fn initializer_with<F, A>(mut self, f: F, arg: A) -> Self
    where
        F: Fn(A) + Copy + Send + Sync + 'static,
        A: Wire,
    {
        let _ = f;
        self.initializer = Some(task::offset_of(task::call_init_with::<F, A>));
        match crate::wire::encode_carried(&arg) {
            Ok((bytes, carried)) => {
                self.initializer_arg = bytes;
                self.initializer_keep = KeptAlive(std::sync::Arc::new(carried.keep));
                self.initializer_error = None;
            }
            // Reported by `build`.
            Err(e) => self.initializer_error = Some(e),
        }
        self
    }

    /// Replace each worker after it has run this many tasks (Python's
    /// `maxtasksperchild`); 0, the default, means never.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder().workers(1).max_tasks_per_child(1).build()?;
    ///     let first = pool.apply(|_: ()| std::process::id(), ())?;
    ///     let second = pool.apply(|_: ()| std::process::id(), ())?;
    ///     assert_ne!(first, second); // a fresh worker ran the second task
    ///     Ok(())
    /// }
    /// ```
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = n;
        self
    }

    /// Run a task again, up to `n` more times, when the worker running it
    /// dies (for idempotent work only: the first run may have had effects).
    /// A task that kills every worker it meets fails with
    /// [`Error::WorkerDied`] once its attempts are spent. Default 0; no
    /// upper bound (`u32::MAX` retries a task that always kills its worker
    /// for ever).
    ///
    /// Each retry waits for a replacement, and a slot whose workers keep
    /// dying is restarted with back-off so that a poisonous task cannot make
    /// a fork loop: the first replacement at once, then 10 ms doubling to
    /// 1 s per death in a row, across tasks, until a task completes. So
    /// `retries(6)` on a task that always dies takes about 0.6 s on one
    /// worker, `retries(20)` about 14 s; with several workers the attempts
    /// spread over their slots.
    ///
    /// ```
    /// use corepool::{Error, Pool};
    ///
    /// fn die(_: ()) -> u32 {
    ///     std::process::exit(3) // the worker ends without a result
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::builder().workers(1).retries(1).build()?;
    ///     // Run twice (on two workers), then given up.
    ///     assert!(matches!(pool.apply(die, ()), Err(Error::WorkerDied { .. })));
    ///     assert!(pool.stats().respawns >= 1); // the retry ran on a replacement
    ///     assert_eq!(pool.apply(|x: u32| x + 1, 1)?, 2); // the pool goes on
    ///     Ok(())
    /// }
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Kill a worker whose task has run longer than `timeout`: the task fails
    /// with [`Error::TaskTimedOut`], is never retried (whatever
    /// [`retries`](Self::retries) says), and a new worker takes the CPU; no
    /// other task dies with the worker (those queued behind it are taken
    /// back first). Being killed for a timeout does not count as a crash, so
    /// the replacement starts at once. Default: no limit. A zero timeout
    /// makes `build` fail with [`Error::InvalidConfig`].
    ///
    /// The measure is wall-clock time from when the parent first sees the
    /// task running, so it is loose by scheduling delays: on an idle machine
    /// within about a millisecond, under load by as much as a thread waits
    /// for a CPU, both ways. A task a little over the limit may finish with
    /// its result (it answered before the parent looked); one a little
    /// under may time out (its worker was descheduled). Leave a margin.
    ///
    /// The clock starts when the task runs: a task waiting in the ring of a
    /// worker that is stopped (SIGSTOP) is not timed; while another worker
    /// is idle it goes to that one after at most 50 ms.
    ///
    /// ```
    /// use corepool::{Error, Pool};
    /// use std::time::Duration;
    ///
    /// fn spin(_: ()) -> u32 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::builder()
    ///         .workers(1)
    ///         .task_timeout(Duration::from_millis(200))
    ///         .build()?;
    ///     assert!(matches!(pool.apply(spin, ()), Err(Error::TaskTimedOut { .. })));
    ///     assert_eq!(pool.apply(|x: u32| x * 2, 21)?, 42); // on a new worker
    ///     Ok(())
    /// }
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long `build` waits for the workers to attach, and how long any
    /// worker, a replacement too, may take to attach (its initializer
    /// included) before it is killed: a start that overruns counts as a
    /// failed start, so the slot is tried again with back-off, and after
    /// three in a row rests before each further try (see
    /// [`PoolStats::start_failures`](crate::PoolStats::start_failures)).
    /// No task is given to a worker before it has
    /// attached. Default 30 s; zero is refused by
    /// [`build`](Self::build) (no worker could ever attach).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder()
    ///         .workers(1)
    ///         .start_timeout(std::time::Duration::from_secs(60))
    ///         .build()?;
    ///     assert_eq!(pool.pids().len(), 1); // built: every worker attached in time
    ///     Ok(())
    /// }
    /// ```
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// At most `n` tasks submitted and not yet answered: a submission that
    /// would pass the bound blocks until enough tasks finish (or the pool is
    /// closed, and then fails with [`Error::PoolClosed`]). Each queued task
    /// costs some memory in the parent, so this bounds a producer that
    /// submits faster than the workers go. A `map`'s chunks count one each;
    /// `map_async` makes all its chunks (and any spill of one) before it
    /// waits, so it is bounded by this only in how many it queues, not in
    /// the memory or descriptors its chunks take (see
    /// [`arg_arena_bytes`](Self::arg_arena_bytes)).
    /// Submissions made from a callback are never held back (a callback
    /// must not block). Default: no bound.
    ///
    /// It also bounds how long other submitters wait: tasks from every
    /// thread share one queue, served in the order they were submitted,
    /// with no priority, so a blocking [`apply`](crate::Pool::apply) or a
    /// `map` from another thread runs after every task queued before it
    /// (seconds, behind a flood of a million short tasks; a few
    /// milliseconds with `max_queued(1000)`). Python's pool behaves the
    /// same. For work that must not wait behind a batch, use a pool of its
    /// own.
    ///
    /// A task stops counting once its answer is collected, not once its
    /// callback has returned: callbacks queued on the pool's callback
    /// thread behind a slow one hold no room (nor are they bounded by `n`).
    /// A blocked submitter helps collect answers meanwhile, as a waiting
    /// [`get`](crate::AsyncResult::get) does, so room frees even while the
    /// thread delivering results is held up in a slow decoder or a
    /// [`submit_raw`](crate::Pool::submit_raw) `done` function of another
    /// task. It may then run such a decoder or `done` function itself: one
    /// that waits for the blocked submitter to go on deadlocks it.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder().workers(2).max_queued(16).build()?;
    ///     // Many submissions, never more than 16 of them queued at once:
    ///     // `apply_async` waits for room when the workers fall behind.
    ///     let mut sum = 0;
    ///     let mut handles = std::collections::VecDeque::new();
    ///     for i in 0..30_000u64 {
    ///         handles.push_back(pool.apply_async(|x: u64| x % 3, i)?);
    ///         if handles.len() > 64 {
    ///             sum += handles.pop_front().unwrap().get()?;
    ///         }
    ///     }
    ///     for h in handles {
    ///         sum += h.get()?;
    ///     }
    ///     assert_eq!(sum, 30_000);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// `n` is at least 1: `max_queued(0)` makes `build` fail with
    /// [`Error::InvalidConfig`].
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = Some(n);
        self
    }

    /// How workers, replacements included, are started:
    /// [`StartMethod::ForkServer`] (the default) forks each from the
    /// program's fork server, one more process started with the first pool
    /// and living until the program exits (or
    /// [`stop_fork_server`](crate::stop_fork_server)): a worker starts
    /// several times faster than by exec, with what an exec'd worker would
    /// inherit from the program of the moment; [`StartMethod::Spawn`] starts
    /// this executable anew for each. See [`StartMethod`].
    ///
    /// ```
    /// use corepool::{Pool, StartMethod};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     // Every worker exec'd: no fork server process in this program.
    ///     let pool = Pool::builder()
    ///         .workers(2)
    ///         .start_method(StartMethod::Spawn)
    ///         .build()?;
    ///     assert_eq!(pool.apply(|x: u64| x + 1, 41)?, 42);
    ///     assert_eq!(corepool::fork_server_pid(), None);
    ///     Ok(())
    /// }
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// Bytes of the pool's argument arena: one shared memory file, made at
    /// the first argument larger than a ring message (see
    /// [`ring_bytes`](Self::ring_bytes)), that such arguments are copied
    /// into and the workers decode from in place; the chunks of a `map` (and
    /// `starmap`, `map_async`) over plain data (numbers, arrays of them,
    /// [`Plain`](crate::Plain)) of 16 KiB and more are gathered into it
    /// straight from the caller's items, so they cross to the workers with
    /// no copy into a ring. A copy into memory written
    /// before costs about half of one into new memory (a one-off segment
    /// per argument), so this is a speed knob: an argument that finds no
    /// room (the arena full of arguments still queued or running, or one
    /// larger than the arena) travels in a segment of its own, as with
    /// `0`, which turns the arena off; so does a size the machine cannot
    /// map (a `map` chunk that finds no room goes by a buffer and the ring,
    /// or, when it is larger than a ring message, which `chunked(n)` with a
    /// large `n` allows, in a segment of its own). Memory is
    /// committed as it is first written, and stays so while the pool lives:
    /// a blocking `map` keeps a few chunks per worker in it (about 2 MiB
    /// with two workers), a `map_async` all of its chunks at once, up to
    /// the arena's size. Default 64 MiB. A segment of its own holds a
    /// descriptor while its task is queued or running: a program that
    /// queues hundreds of large arguments at once with the arena full (or
    /// off) may meet its descriptor limit (`Error::SharedMemory` with
    /// EMFILE); bound the queue with [`max_queued`](Self::max_queued).
    ///
    /// ```
    /// use corepool::Pool;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::builder().workers(1).arg_arena_bytes(16 << 20).build()?;
    ///     // 8 MiB: larger than a ring message, copied into the arena.
    ///     assert_eq!(pool.apply(|v: Vec<u8>| v.len(), vec![1u8; 8 << 20])?, 8 << 20);
    ///     // Larger than the arena: a segment of its own, just as well.
    ///     assert_eq!(pool.apply(|v: Vec<u8>| v.len(), vec![1u8; 20 << 20])?, 20 << 20);
    ///     Ok(())
    /// }
    /// ```
    pub fn arg_arena_bytes(mut self, bytes: usize) -> Self {
        self.arg_arena_bytes = bytes;
        self
    }

    /// Starts the workers and waits until every one is ready.
    ///
    /// ```
    /// use corepool::{Error, Pinning, Pool};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = Pool::builder().workers(2).build()?;
    ///     assert_eq!(pool.map(|x: u64| x + 1, vec![1, 2, 3])?, vec![2, 3, 4]);
    ///     // Bad settings fail before any worker starts.
    ///     let bad = Pool::builder().pinning(Pinning::Cpus(vec![usize::MAX])).build();
    ///     assert!(matches!(bad, Err(Error::CpuNotAllowed { .. })));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`], [`Error::CpuNotAllowed`] for bad settings;
    /// [`Error::SharedMemory`] when the segment cannot be reserved;
    /// [`Error::PinFailed`], [`Error::Spawn`], [`Error::WorkerStart`] when a
    /// worker cannot start; [`Error::NotInitialized`] when called inside a
    /// worker process whose `main` did not call [`crate::init`] first.
    pub fn build(self) -> Result<Pool> {
        if self.max_queued == Some(0) {
            return Err(Error::InvalidConfig {
                what: "max_queued must be at least 1 (or not set, for no bound)".into(),
            });
        }
        // A zero timeout would fail every task, each on a killed worker: a
        // mistake, refused like `max_queued(0)` (found by a user trial).
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::InvalidConfig {
                what: "task_timeout must be longer than zero (or not set, for no limit)".into(),
            });
        }
        if self.start_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                what: "start_timeout must be longer than zero: a worker takes about a millisecond to start, longer with an initializer (the default is 30 s)".into(),
            });
        }
        if let Some(e) = self.initializer_error {
            return Err(e);
        }
        let cpu_sets = self.resolve_cpu_sets()?;
        Pool::start(Config {
            cpu_sets,
            ring_bytes: self.ring_bytes,
            initializer: self.initializer,
            initializer_arg: self.initializer_arg,
            initializer_keep: self.initializer_keep.0,
            policy: FaultPolicy {
                max_tasks_per_child: self.max_tasks_per_child,
                retries: self.retries,
                task_timeout: self.task_timeout,
                start_timeout: Some(self.start_timeout),
                max_queued: self.max_queued.unwrap_or(usize::MAX),
            },
            start_timeout: self.start_timeout,
            start_method: self.start_method,
            arg_arena_bytes: self.arg_arena_bytes,
        })
    }

    /// The CPUs of each worker, ascending (empty: unpinned).
    fn resolve_cpu_sets(&self) -> Result<Vec<Vec<usize>>> {
        // Before anything is sized by it: `workers(usize::MAX)` must be an
        // error, not an allocation failure.
        if let Some(n) = self.workers {
            crate::pool::layout::check_workers(n)?;
        }
        let per_worker = self.cpus_per_worker;
        if per_worker == 0 {
            return Err(Error::InvalidConfig {
                what: "cpus_per_worker must be at least 1: it is how many CPUs each worker is pinned to (1, the default, gives each its own CPU; for tasks that use threads give more, or use `Pinning::None`)".into(),
            });
        }
        let allowed = sys::affinity_of(0).map_err(|e| Error::os("sched_getaffinity", e))?;
        let list = match &self.pinning {
            Pinning::None => {
                let n = self.workers.unwrap_or((allowed.len() / per_worker).max(1));
                return Ok(vec![Vec::new(); n]);
            }
            Pinning::PerCpu if per_worker > 1 => siblings_together(&allowed),
            Pinning::PerCpu => allowed.clone(),
            Pinning::Cpus(cpus) => {
                if cpus.is_empty() {
                    return Err(Error::InvalidConfig {
                        what: "`Pinning::Cpus` needs at least one CPU".into(),
                    });
                }
                if let Some(&cpu) = cpus.iter().find(|c| !allowed.contains(c)) {
                    return Err(Error::CpuNotAllowed { cpu, allowed });
                }
                cpus.clone()
            }
        };
        if list.is_empty() {
            return Err(Error::InvalidConfig {
                what: "this process may run on no CPU at all".into(),
            });
        }
        let n = self.workers.unwrap_or((list.len() / per_worker).max(1));
        Ok(sets_over(&list, per_worker, n))
    }
}

/// `workers` sets of `per_worker` consecutive CPUs of `list` (not empty),
/// worker `i`'s from `list[i * per_worker]` on, wrapping around it;
/// ascending, each CPU once (so fewer than `per_worker` when the list is
/// shorter).
fn sets_over(list: &[usize], per_worker: usize, workers: usize) -> Vec<Vec<usize>> {
    let len = list.len();
    (0..workers)
        .map(|worker| {
            // Reduced before multiplying: no overflow for any `per_worker`.
            let start = (worker % len) * (per_worker % len) % len;
            let mut set: Vec<usize> = (0..per_worker.min(len))
                .map(|k| list[(start + k) % len])
                .collect();
            set.sort_unstable();
            set.dedup();
            set
        })
        .collect()
}

/// `cpus` reordered so that each CPU's SMT siblings come right after it (in
/// the order of their lowest member): consecutive CPUs of the result then
/// fill whole cores. Unchanged when the kernel does not say.
fn siblings_together(cpus: &[usize]) -> Vec<usize> {
    let mut ordered: Vec<usize> = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        if ordered.contains(&cpu) {
            continue;
        }
        ordered.push(cpu);
        for sibling in crate::info::siblings_of(cpu) {
            if sibling != cpu && cpus.contains(&sibling) && !ordered.contains(&sibling) {
                ordered.push(sibling);
            }
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::sets_over;

    #[test]
    fn sets_take_consecutive_cpus_and_wrap_around() {
        assert_eq!(sets_over(&[0, 1, 2, 3], 1, 5), [[0], [1], [2], [3], [0]]);
        assert_eq!(sets_over(&[0, 1, 2, 3], 2, 3), [[0, 1], [2, 3], [0, 1]]);
        assert_eq!(sets_over(&[0, 1, 2], 2, 3), [[0, 1], [0, 2], [1, 2]]);
        // The list's order decides (SMT siblings put together), sets ascend.
        assert_eq!(sets_over(&[0, 4, 1, 5], 2, 2), [[0, 4], [1, 5]]);
        assert_eq!(sets_over(&[3, 1], 2, 1), [[1, 3]]);
    }

    #[test]
    fn sets_larger_than_the_list_are_the_whole_list() {
        assert_eq!(sets_over(&[2, 7], 4, 2), [[2, 7], [2, 7]]);
        assert_eq!(sets_over(&[2, 7], usize::MAX, 3), [[2, 7], [2, 7], [2, 7]]);
    }
}
