//! The one error type of corepool.

use std::fmt;
use std::io;

/// Why a worker process ended.
///
/// ```
/// use corepool::{ExitCause, Process};
///
/// fn forever(_: u64) -> u64 {
///     loop {
///         std::hint::spin_loop();
///     }
/// }
///
/// fn main() -> corepool::Result<()> {
///     let p = Process::start(forever, 0)?;
///     p.kill()?;
///     assert!(p.join_timeout(std::time::Duration::from_secs(30)));
///     assert_eq!(p.exit_code(), Some(ExitCause::Signal(9)));
///     assert!(ExitCause::Signal(9).to_string().contains("SIGKILL"));
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCause {
    /// Killed by a signal (its number).
    Signal(i32),
    /// Exited with this status code.
    Code(i32),
    /// It ended, but how is unknown: something else in the program reaped
    /// it first. The usual reason is SIGCHLD set to `SIG_IGN` (or a handler
    /// with `SA_NOCLDWAIT`), with which the kernel discards every child's
    /// exit status; a `waitpid(-1)` elsewhere in the program does the same.
    Unknown,
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Signal(sig) => {
                write!(f, "killed by {}", crate::sys::signal_name(sig))?;
                if sig == crate::sys::SIGKILL {
                    write!(f, "; if nobody sent it, the kernel's OOM killer may have: check `dmesg` and the task's memory use")?;
                }
                if sig == crate::sys::SIGSEGV {
                    write!(f, "; in a task, a stack overflow (deep recursion) ends a worker so, without Rust's \"has overflowed its stack\" message: recurse less, or run the deep part on a thread of the task's own with a larger stack (`std::thread::Builder::stack_size`)")?;
                }
                if sig == crate::sys::SIGABRT && cfg!(panic = "abort") {
                    write!(f, "; this program is built with `panic = \"abort\"`, so a panic ends the process it happens in: one outside the task itself (in a `Wire` impl, an initializer) has its message on the program's stderr")?;
                }
                Ok(())
            }
            ExitCause::Code(code) => write!(f, "exited with status {code}"),
            ExitCause::Unknown => write!(f, "ended, its exit status unknown: something else in this program reaped it (SIGCHLD set to SIG_IGN or SA_NOCLDWAIT makes the kernel discard children's statuses; so does a `waitpid(-1)`): leave SIGCHLD at its default to see how children end"),
        }
    }
}

/// Everything that can go wrong in corepool: building a pool, submitting work,
/// running a task, moving data.
///
/// Every message says what happened and what to do about it. The enum is
/// `#[non_exhaustive]`: match the variants you handle and keep a `_` arm.
///
/// ```
/// let err = corepool::Error::Panicked { message: "n > 5".into() };
/// assert!(err.to_string().contains("n > 5"));
/// ```
///
/// A failed system call keeps the kernel's [`std::io::Error`] as the error's
/// [`source`](std::error::Error::source) ([`Error::Os`],
/// [`Error::SharedMemory`], [`Error::PinFailed`], [`Error::Spawn`]), so its
/// `raw_os_error()` and `kind()` stay at hand. `Clone` copies that error by
/// its kind, OS error number and message (an `io::Error` itself cannot be
/// cloned); `==` compares the same three.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value or argument is out of range, or a call does not
    /// fit the object (receiving on the sending end of a one-way pipe).
    #[error("invalid configuration or argument: {what}")]
    InvalidConfig {
        /// What is wrong and what to use instead.
        what: String,
    },
    /// A CPU was asked for (`Pinning::Cpus`, `ProcessBuilder::cpu`,
    /// `info::pin_current_thread`) that this process may not run on.
    #[error("CPU {cpu} is not in this process's allowed set {allowed:?}: pick CPUs from that set (see `corepool info`), or widen it with taskset/cgroups")]
    CpuNotAllowed {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs `sched_getaffinity` allows.
        allowed: Vec<usize>,
    },
    /// The kernel refused to pin a worker.
    #[error("pinning a worker to CPU {cpu} failed: {source}; use `Pinning::None` or another CPU")]
    PinFailed {
        /// The CPU the worker was to run on.
        cpu: usize,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Shared memory could not be created, sized or mapped.
    #[error("shared memory: {op} failed: {source}; {}", shm_advice(.source))]
    SharedMemory {
        /// The step that failed.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A child process (a pool worker or a [`Process`](crate::Process)) could
    /// not be started.
    #[error("starting a child process failed: {reason}")]
    Spawn {
        /// What failed and what to do.
        reason: String,
        /// The kernel's answer, when a system call failed (the message in
        /// `reason` already quotes it).
        #[source]
        source: Option<io::Error>,
    },
    /// A worker started but did not come up.
    #[error("worker {index} failed to start: {reason}")]
    WorkerStart {
        /// The worker's slot.
        index: usize,
        /// Why, and what to do.
        reason: String,
    },
    /// A process started as a corepool worker ran the program's own code
    /// instead of serving tasks: corepool's start-up hook (an `.init_array`
    /// constructor, which needs no call from `main`) did not run in it.
    #[error("this process was started as a corepool worker but is running the program instead of serving tasks: corepool's start-up hook did not run (was the binary linked without `.init_array` support?); please report it with how the program was built")]
    NotInitialized,
    /// The worker binary is not the parent's.
    #[error("the worker runs a different build than the parent (build fingerprint {parent:#x} in the parent, {worker:#x} in the worker): the executable was rebuilt or replaced in place since the parent started; restart the program")]
    BinaryMismatch {
        /// The parent's fingerprint.
        parent: u64,
        /// The worker's fingerprint.
        worker: u64,
    },
    /// The pool no longer takes work.
    #[error("the pool is closed or terminated: submit work before `close()`/`terminate()`, or build a new pool")]
    PoolClosed,
    /// `join` was called on a pool that is still open.
    #[error("`join` needs `close()` or `terminate()` first, as in Python")]
    JoinWhileOpen,
    /// An encoded argument exceeds a hard limit: a `Process` argument over
    /// 4 GiB (its length is a u32 in the process's segment). Values larger
    /// than a ring message, a queue slot or a pipe message no longer are
    /// errors: they travel in a one-off shared segment (a spill).
    #[error("an encoded value of {size} bytes exceeds the {max}-byte limit; pass data this large in a `SharedArray`")]
    ArgumentTooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An encoded result could not be sent: it was larger than a message
    /// and its spill (a one-off shared segment) could not get its memory.
    #[error("an encoded result of {size} bytes did not fit the {max}-byte message and could not get the memory for a spill of its own: free memory, or return large data in a `SharedArray`")]
    ResultTooLarge {
        /// The encoded size.
        size: usize,
        /// The largest payload a message could carry in place.
        max: usize,
    },
    /// Bytes did not decode as the expected type.
    #[error("could not decode {type_name}: {reason}{}", decode_advice(.reason))]
    Decode {
        /// The type being decoded.
        type_name: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The task panicked. A pool's worker survives it and goes on serving;
    /// a [`Process`](crate::Process) ends with status 1, as in Python. In
    /// a program built with `panic = "abort"` the worker sends this, then
    /// aborts, and the pool replaces it.
    #[error(
        "the task panicked: {message}; fix the task, or handle this error per task ({})",
        after_panic()
    )]
    Panicked {
        /// The panic message and location.
        message: String,
    },
    /// The process running the task (a pool worker or a [`crate::Process`])
    /// died before returning its result.
    #[error("process {pid}{} died before returning the task's result: {cause}; if it was a Pool's worker, the pool replaces it, and `retries(n)` on the pool's builder reruns idempotent tasks", on_rank(*.rank))]
    WorkerDied {
        /// The dead worker's pid (on its rank's node when `rank` is set).
        pid: i32,
        /// How it ended.
        cause: ExitCause,
        /// The MPI rank whose worker it was, for a task that `corepool-mpi`
        /// ran on another rank (or on rank 0's own pool); `None` for this
        /// program's own pools and `Process`es.
        rank: Option<u32>,
    },
    /// A worker broke the shared-memory protocol and was killed.
    #[error("worker pid {pid} broke the shared-memory protocol ({what}) and was killed; its tasks failed: a task wrote over memory it does not own, or corepool has a bug (please report it)")]
    ProtocolViolation {
        /// The worker's pid.
        pid: i32,
        /// The check that failed.
        what: &'static str,
    },
    /// The pool (or, in `corepool-mpi`, the cluster) that ran the task was
    /// terminated or dropped before the task finished, or the program began
    /// to exit (its exit ends every pool's workers).
    #[error("the task was cancelled: its pool or cluster was terminated or dropped, or the program began to exit, before it finished; keep the pool until the results are in (a pool's `close()` then `join()` waits for them)")]
    Cancelled,
    /// The task ran longer than the pool's `task_timeout`; its worker was
    /// killed and replaced.
    #[error("the task did not finish within the pool's task timeout of {after:?}{} (it ran long, or its worker was stopped or starved of CPU); its worker was killed and replaced: raise `task_timeout` or split the work, or find what stopped the worker", on_rank(*.rank))]
    TaskTimedOut {
        /// The limit it overran.
        after: std::time::Duration,
        /// The MPI rank whose pool timed it out, for a task that
        /// `corepool-mpi` ran on another rank (or on rank 0's own pool), as
        /// in [`Error::WorkerDied`]; `None` for this program's own pools.
        rank: Option<u32>,
    },
    /// A `*_timeout` call ran out before it could complete. The timeout
    /// itself loses nothing: a pool's task goes on running, a value not put
    /// is still the caller's.
    #[error("timed out; the timeout itself lost nothing (what was waited for goes on: a task keeps running, a value not put is still yours, a queue's unfinished items stay counted): call again to wait longer, or raise the timeout")]
    Timeout,
    /// The result was already taken by an earlier successful
    /// [`AsyncResult::get_timeout`](crate::AsyncResult::get_timeout).
    #[error("the result was already taken by an earlier `get_timeout`: use the value that call returned")]
    ResultTaken,
    /// An index range outside a [`crate::SharedArray`].
    #[error(
        "range {start}..{end} is outside the array of length {len}: check the bounds you compute"
    )]
    OutOfBounds {
        /// First index asked for.
        start: usize,
        /// One past the last index asked for.
        end: usize,
        /// The array's length.
        len: usize,
    },
    /// The other end of a pipe was closed, or its process died, and nothing
    /// is left to receive.
    #[error("end of stream: the other end of the pipe was closed or its process died: stop receiving, or (if more was expected) check how the peer ended, e.g. with `Process::join`")]
    EndOfStream,
    /// The queue was closed.
    #[error("the queue is closed: no more values will come (or go): stop here, or use a queue that is still open")]
    QueueClosed,
    /// A daemon already holds the pid file.
    #[error("a daemon is already running (pid file {pid_file}, pid {}): stop it first, or use another pid file", .pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    AlreadyRunning {
        /// The pid file.
        pid_file: String,
        /// The pid written in it, if readable.
        pid: Option<i32>,
    },
    /// An operating-system call failed.
    ///
    /// The kernel's answer is the error's [`source`](std::error::Error::source),
    /// an [`std::io::Error`]:
    ///
    /// ```
    /// use std::error::Error as _;
    ///
    /// // No process has pid i32::MAX: the kernel's pid limit is far below it.
    /// let err = corepool::info::affinity_of(i32::MAX).unwrap_err();
    /// assert!(matches!(err, corepool::Error::Os { op: "sched_getaffinity", .. }));
    /// let io = err.source().and_then(|s| s.downcast_ref::<std::io::Error>()).unwrap();
    /// assert_eq!(io.raw_os_error(), Some(3)); // ESRCH: no such process
    /// ```
    #[error("{op} failed: {source}{}", os_advice_after(op, .source))]
    Os {
        /// The call.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A pool's callback (or a value's decoder run while delivering a
    /// result) waited on that same pool: `get`, `apply`, `map`, `imap`,
    /// `join`. Callbacks run on the thread that delivers results, so such a
    /// wait could never end; the call fails at once instead.
    #[error("a callback of this pool waited on the pool (`get`, `apply`, `map`, `imap`, `join`); callbacks run on the thread that delivers results, so the wait could never end: submit with `apply_async` from the callback and collect the results outside it")]
    WaitInCallback,
    /// The pool was created by another process: this is a `fork()`ed copy,
    /// which cannot reach the pool's workers.
    #[error("this pool belongs to process {owner}, not to this one (a `fork()`ed copy cannot reach its workers): build a new pool in this process")]
    ForeignPool {
        /// The pid of the process that created the pool.
        owner: u32,
    },
    /// A value could not be encoded (its `Serialize` impl failed, a
    /// hand-written [`Wire`](crate::Wire) impl called
    /// [`Encoder::fail`](crate::Encoder::fail) or panicked, or the value
    /// nests deeper than a receiver decodes). Nothing was sent or stored.
    #[error("encoding a {type_name} failed: {reason}; nothing was sent")]
    Encode {
        /// The type being encoded.
        type_name: &'static str,
        /// What was wrong, in the encoder's own words.
        reason: String,
    },
    /// A thread tried to take a [`Lock`](crate::Lock) (or a
    /// [`Condition`](crate::Condition)'s lock, or a [`Value`](crate::Value)'s
    /// with `lock`, `set` or `update`) it already holds: waiting would never
    /// end.
    #[error("this thread already holds the lock, so waiting for it would never end: drop the guard first (or, for a `Value`, write through its guard), or use an `RLock` to take it again")]
    Deadlock,
    /// A [`Barrier`](crate::Barrier) is broken: a wait timed out, `abort` was
    /// called, or a party died while waiting.
    #[error("the barrier is broken (a wait timed out, `abort` was called, or a party died while waiting): the parties cannot all meet at it any more; make a new barrier to start over")]
    BrokenBarrier,
    /// A `release` would take a semaphore past the most permits it holds (a
    /// [`BoundedSemaphore`](crate::BoundedSemaphore)'s bound, `u32::MAX` for
    /// a [`Semaphore`](crate::Semaphore)). Nothing was released.
    #[error("releasing would take the semaphore past its bound of {limit}: release only permits that were acquired (a guard gives its own back when it drops)")]
    SemaphoreOverflow {
        /// The most permits the semaphore holds.
        limit: u32,
    },
}

impl Error {
    pub(crate) fn os(op: &'static str, err: io::Error) -> Self {
        Error::Os { op, source: err }
    }

    pub(crate) fn shm(op: &'static str, err: io::Error) -> Self {
        Error::SharedMemory { op, source: err }
    }
}

/// What became of the worker after a task's panic.
fn after_panic() -> &'static str {
    if cfg!(panic = "abort") {
        "this program is built with `panic = \"abort\"`: the worker ended with the panic and the pool replaces it"
    } else {
        "a pool's worker survives the panic and goes on serving"
    }
}

/// What to do about a failed shared-memory step: each segment is a
/// descriptor as well as memory, so a full descriptor table needs other
/// advice than a memory limit does.
fn shm_advice(err: &io::Error) -> &'static str {
    if err.get_ref().is_some_and(|inner| inner.is::<WroteOver>()) {
        // corepool's own finding, not the kernel's: a word in shared memory
        // that no honest process writes (a queue's next value offset, an
        // unbounded queue's ring words). More memory would not help.
        return FORGED_ADVICE;
    }
    match err.raw_os_error() {
        Some(libc::EMFILE) => "this process has too many descriptors open (each shared segment or spill holds one while in use): close some, or raise its limit (`ulimit -n`, RLIMIT_NOFILE)",
        Some(libc::ENFILE) => "the system's file table is full: close descriptors elsewhere, or raise `fs.file-max`",
        Some(libc::EFBIG) => "shared memory is a file, and this process's file-size limit (`ulimit -f`, RLIMIT_FSIZE) is below the size asked for: raise it (`ulimit -f unlimited`), or ask for less (`ring_bytes` for a Pool; a smaller capacity, message size or array)",
        Some(libc::ENOMEM) => "corepool's shared memory is anonymous and counts against RAM and the cgroup's memory limit, and its mapping against the address-space limit (`ulimit -v`, RLIMIT_AS): free memory, raise the limit, or ask for less (`ring_bytes` for a Pool; a smaller capacity, message size or array)",
        _ => "corepool's shared memory is anonymous and counts against RAM and the cgroup's memory limit: free memory, raise the limit, or ask for less (`ring_bytes` for a Pool; a smaller capacity, message size or array)",
    }
}

/// The reason a shared-memory step refused a word no honest process
/// writes, as the source of an [`Error::SharedMemory`]
/// ([`wrote_over`]): its message then advises about a writer, not memory.
#[derive(Debug)]
struct WroteOver(String);

impl fmt::Display for WroteOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WroteOver {}

/// An `InvalidData` error saying `what` is wrong with shared memory a
/// process wrote over (a forged word), for [`Error::SharedMemory`].
pub(crate) fn wrote_over(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, WroteOver(what))
}

const FORGED_ADVICE: &str = "a process holding this object wrote over its shared memory (a bug or a hostile process): it cannot take such values any more; make a new one, and find the writer";

/// The advice after a decode failure's reason, once: a reason that is itself
/// a nested decode failure carries it already (a user trial read it twice).
fn decode_advice(reason: &str) -> &'static str {
    if reason.contains(DECODE_ADVICE) {
        ""
    } else {
        DECODE_ADVICE
    }
}

const DECODE_ADVICE: &str = "; if the value's own `Wire::decode` refused it, see why above; otherwise the two sides disagree about the type (a bug), or a worker misbehaved";

/// What to do about a failed system call, by the kernel's answer: a limit
/// needs other advice than a missing file or a refused permission does (a
/// user trial was told to check `ulimit` about a file that did not exist).
/// " on rank N" for an error that happened on an MPI rank.
fn on_rank(rank: Option<u32>) -> String {
    rank.map(|r| format!(" on rank {r}")).unwrap_or_default()
}

/// What follows an [`Error::Os`]'s message: `; ` and the advice, or nothing
/// for the daemon's own findings (no kernel answer), whose message says what
/// to do itself (a user trial was sent to "the message above" by one).
fn os_advice_after(op: &str, err: &io::Error) -> String {
    if err.raw_os_error().is_none() && op.ends_with(" the daemon") {
        String::new()
    } else {
        format!("; {}", os_advice(op, err))
    }
}

fn os_advice(op: &str, err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EAGAIN) if op.starts_with("spawning") => "the limit on processes is reached (`ulimit -u`, RLIMIT_NPROC, counts every thread of the user's processes too; or the cgroup's `pids.max`), or, for a thread, the address-space limit (`ulimit -v`, RLIMIT_AS) leaves no room for its stack: raise it, or run fewer processes and threads",
        Some(libc::EPERM) if op.starts_with("kill") => "the process runs with credentials this program no longer has (it dropped them since starting it, or the process changed its own): signal it from a process with those privileges",
        Some(libc::EMFILE) => "this process has too many descriptors open: close some, or raise its limit (`ulimit -n`, RLIMIT_NOFILE)",
        Some(libc::ENFILE) => "the system's file table is full: close descriptors elsewhere, or raise `fs.file-max`",
        Some(libc::EAGAIN) => "a resource limit is reached (processes: `ulimit -u`, the cgroup's `pids.max`; or memory): retry later, or raise it",
        Some(libc::ENOMEM) => "the kernel is out of memory for it: free memory, or ask for less",
        Some(libc::ENOENT | libc::ENOTDIR) => "a file or directory it needs does not exist: check the path",
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => "permission denied: check the file's owner and mode, or the process's privileges",
        Some(libc::ESRCH) => "no such process: it has already ended",
        Some(libc::ENOSPC) => "no space left: free some on the file system (or raise the limit) it writes to",
        _ => "check what the message above names",
    }
}

/// What to do about a child process that could not be started, by the
/// kernel's answer: a full descriptor table (the spawn needs a few: a
/// socket, a pidfd) needs other advice than a process limit does.
pub(crate) fn spawn_advice(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EMFILE) => "this process has too many descriptors open (starting a child takes a few): close some, or raise its limit (`ulimit -n`, RLIMIT_NOFILE)",
        Some(libc::ENFILE) => "the system's file table is full: close descriptors elsewhere, or raise `fs.file-max`",
        Some(libc::EAGAIN) => "the process limit is reached: raise `ulimit -u` (RLIMIT_NPROC) or the cgroup's `pids.max`, or start fewer processes",
        _ => "check that the executable is still there and the process limit (`ulimit -u`) is not reached",
    }
}

/// A copy of `err` with the same kind, OS error number and message: what an
/// error's clone keeps of the `io::Error` inside it.
fn copy_io(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

/// Whether two `io::Error`s agree on what [`copy_io`] keeps.
fn same_io(a: &io::Error, b: &io::Error) -> bool {
    a.kind() == b.kind() && a.raw_os_error() == b.raw_os_error() && a.to_string() == b.to_string()
}

impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::InvalidConfig { what } => Error::InvalidConfig { what: what.clone() },
            Error::CpuNotAllowed { cpu, allowed } => Error::CpuNotAllowed {
                cpu: *cpu,
                allowed: allowed.clone(),
            },
            Error::PinFailed { cpu, source } => Error::PinFailed {
                cpu: *cpu,
                source: copy_io(source),
            },
            Error::SharedMemory { op, source } => Error::SharedMemory {
                op,
                source: copy_io(source),
            },
            Error::Spawn { reason, source } => Error::Spawn {
                reason: reason.clone(),
                source: source.as_ref().map(copy_io),
            },
            Error::WorkerStart { index, reason } => Error::WorkerStart {
                index: *index,
                reason: reason.clone(),
            },
            Error::NotInitialized => Error::NotInitialized,
            Error::BinaryMismatch { parent, worker } => Error::BinaryMismatch {
                parent: *parent,
                worker: *worker,
            },
            Error::PoolClosed => Error::PoolClosed,
            Error::JoinWhileOpen => Error::JoinWhileOpen,
            Error::ArgumentTooLarge { size, max } => Error::ArgumentTooLarge {
                size: *size,
                max: *max,
            },
            Error::ResultTooLarge { size, max } => Error::ResultTooLarge {
                size: *size,
                max: *max,
            },
            Error::Decode { type_name, reason } => Error::Decode {
                type_name,
                reason: reason.clone(),
            },
            Error::Panicked { message } => Error::Panicked {
                message: message.clone(),
            },
            Error::WorkerDied { pid, cause, rank } => Error::WorkerDied {
                pid: *pid,
                cause: cause.clone(),
                rank: *rank,
            },
            Error::ProtocolViolation { pid, what } => Error::ProtocolViolation { pid: *pid, what },
            Error::Cancelled => Error::Cancelled,
            Error::TaskTimedOut { after, rank } => Error::TaskTimedOut {
                after: *after,
                rank: *rank,
            },
            Error::Timeout => Error::Timeout,
            Error::ResultTaken => Error::ResultTaken,
            Error::OutOfBounds { start, end, len } => Error::OutOfBounds {
                start: *start,
                end: *end,
                len: *len,
            },
            Error::EndOfStream => Error::EndOfStream,
            Error::QueueClosed => Error::QueueClosed,
            Error::AlreadyRunning { pid_file, pid } => Error::AlreadyRunning {
                pid_file: pid_file.clone(),
                pid: *pid,
            },
            Error::Os { op, source } => Error::Os {
                op,
                source: copy_io(source),
            },
            Error::WaitInCallback => Error::WaitInCallback,
            Error::ForeignPool { owner } => Error::ForeignPool { owner: *owner },
            Error::Encode { type_name, reason } => Error::Encode {
                type_name,
                reason: reason.clone(),
            },
            Error::Deadlock => Error::Deadlock,
            Error::BrokenBarrier => Error::BrokenBarrier,
            Error::SemaphoreOverflow { limit } => Error::SemaphoreOverflow { limit: *limit },
        }
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        // Exhaustive over `self`, so that a new variant cannot be forgotten.
        match self {
            Error::InvalidConfig { what } => {
                matches!(other, Error::InvalidConfig { what: w } if w == what)
            }
            Error::CpuNotAllowed { cpu, allowed } => {
                matches!(other, Error::CpuNotAllowed { cpu: c, allowed: a } if c == cpu && a == allowed)
            }
            Error::PinFailed { cpu, source } => {
                matches!(other, Error::PinFailed { cpu: c, source: s } if c == cpu && same_io(s, source))
            }
            Error::SharedMemory { op, source } => {
                matches!(other, Error::SharedMemory { op: o, source: s } if o == op && same_io(s, source))
            }
            Error::Spawn { reason, source } => {
                matches!(other, Error::Spawn { reason: r, source: s } if r == reason
                && match (s, source) {
                    (Some(a), Some(b)) => same_io(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                })
            }
            Error::WorkerStart { index, reason } => {
                matches!(other, Error::WorkerStart { index: i, reason: r } if i == index && r == reason)
            }
            Error::NotInitialized => matches!(other, Error::NotInitialized),
            Error::BinaryMismatch { parent, worker } => {
                matches!(other, Error::BinaryMismatch { parent: p, worker: w } if p == parent && w == worker)
            }
            Error::PoolClosed => matches!(other, Error::PoolClosed),
            Error::JoinWhileOpen => matches!(other, Error::JoinWhileOpen),
            Error::ArgumentTooLarge { size, max } => {
                matches!(other, Error::ArgumentTooLarge { size: s, max: m } if s == size && m == max)
            }
            Error::ResultTooLarge { size, max } => {
                matches!(other, Error::ResultTooLarge { size: s, max: m } if s == size && m == max)
            }
            Error::Decode { type_name, reason } => {
                matches!(other, Error::Decode { type_name: t, reason: r } if t == type_name && r == reason)
            }
            Error::Panicked { message } => {
                matches!(other, Error::Panicked { message: m } if m == message)
            }
            Error::WorkerDied { pid, cause, rank } => {
                matches!(other, Error::WorkerDied { pid: p, cause: c, rank: r } if p == pid && c == cause && r == rank)
            }
            Error::ProtocolViolation { pid, what } => {
                matches!(other, Error::ProtocolViolation { pid: p, what: w } if p == pid && w == what)
            }
            Error::Cancelled => matches!(other, Error::Cancelled),
            Error::TaskTimedOut { after, rank } => {
                matches!(other, Error::TaskTimedOut { after: a, rank: r } if a == after && r == rank)
            }
            Error::Timeout => matches!(other, Error::Timeout),
            Error::ResultTaken => matches!(other, Error::ResultTaken),
            Error::OutOfBounds { start, end, len } => {
                matches!(other, Error::OutOfBounds { start: s, end: e, len: l } if s == start && e == end && l == len)
            }
            Error::EndOfStream => matches!(other, Error::EndOfStream),
            Error::QueueClosed => matches!(other, Error::QueueClosed),
            Error::AlreadyRunning { pid_file, pid } => {
                matches!(other, Error::AlreadyRunning { pid_file: f, pid: p } if f == pid_file && p == pid)
            }
            Error::Os { op, source } => {
                matches!(other, Error::Os { op: o, source: s } if o == op && same_io(s, source))
            }
            Error::WaitInCallback => matches!(other, Error::WaitInCallback),
            Error::ForeignPool { owner } => {
                matches!(other, Error::ForeignPool { owner: o } if o == owner)
            }
            Error::Encode { type_name, reason } => {
                matches!(other, Error::Encode { type_name: t, reason: r } if t == type_name && r == reason)
            }
            Error::Deadlock => matches!(other, Error::Deadlock),
            Error::BrokenBarrier => matches!(other, Error::BrokenBarrier),
            Error::SemaphoreOverflow { limit } => {
                matches!(other, Error::SemaphoreOverflow { limit: l } if l == limit)
            }
        }
    }
}

impl Eq for Error {}

/// `Result<T, corepool::Error>`.
///
/// ```
/// fn parse(workers: &str) -> corepool::Result<usize> {
///     workers.parse().map_err(|e| corepool::Error::InvalidConfig {
///         what: format!("workers = {workers:?}: {e}; give a positive number"),
///     })
/// }
/// assert_eq!(parse("4").unwrap(), 4);
/// assert!(parse("four").is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn io_source(err: &Error) -> Option<&io::Error> {
        err.source()?.downcast_ref::<io::Error>()
    }

    #[test]
    fn os_advice_follows_the_call_where_the_errno_alone_misleads() {
        let eagain = || io::Error::from_raw_os_error(libc::EAGAIN);
        let thread = Error::os("spawning the supervisor thread", eagain()).to_string();
        assert!(thread.contains("counts every thread"), "{thread}");
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let kill = Error::os("kill (SIGKILL)", eperm).to_string();
        assert!(kill.contains("credentials"), "{kill}");
        assert!(!kill.contains("file's owner"), "{kill}");
    }

    #[test]
    fn os_errors_keep_the_kernels_answer_as_source() {
        let err = Error::os(
            "pidfd_open",
            io::Error::from_raw_os_error(crate::sys::EINVAL),
        );
        assert_eq!(
            io_source(&err).and_then(io::Error::raw_os_error),
            Some(crate::sys::EINVAL)
        );
        // The message still says what failed, what the kernel said, and what to do.
        let text = err.to_string();
        assert!(text.starts_with("pidfd_open failed: "), "{text}");
        assert!(
            text.contains(&io::Error::from_raw_os_error(crate::sys::EINVAL).to_string()),
            "{text}"
        );
        assert!(text.contains("check what"), "{text}");
    }

    #[test]
    fn os_errors_advise_by_the_kernels_answer() {
        let advice = |errno| Error::os("open", io::Error::from_raw_os_error(errno)).to_string();
        assert!(advice(libc::ENOENT).contains("does not exist"));
        assert!(
            !advice(libc::ENOENT).contains("ulimit"),
            "a missing file is no limit"
        );
        assert!(advice(libc::EMFILE).contains("ulimit -n"));
        assert!(advice(libc::EACCES).contains("permission"));
    }

    #[test]
    fn a_nested_decode_failure_gives_its_advice_once() {
        let inner = Error::Decode {
            type_name: "Fussy",
            reason: "seven refused".into(),
        };
        let outer = Error::Decode {
            type_name: "task arguments",
            reason: inner.to_string(),
        };
        let text = outer.to_string();
        assert_eq!(text.matches("disagree").count(), 1, "{text}");
    }

    #[test]
    fn shared_memory_errors_keep_their_source() {
        let err = Error::shm(
            "memfd_create",
            io::Error::from_raw_os_error(crate::sys::EINVAL),
        );
        assert_eq!(
            io_source(&err).and_then(io::Error::raw_os_error),
            Some(crate::sys::EINVAL)
        );
    }

    #[test]
    fn a_full_descriptor_table_is_told_apart_from_a_memory_limit() {
        let says =
            |code| Error::shm("memfd_create", io::Error::from_raw_os_error(code)).to_string();
        assert!(
            says(libc::EMFILE).contains("ulimit -n"),
            "{}",
            says(libc::EMFILE)
        );
        assert!(
            says(libc::ENFILE).contains("fs.file-max"),
            "{}",
            says(libc::ENFILE)
        );
        assert!(
            says(libc::ENOMEM).contains("free memory"),
            "{}",
            says(libc::ENOMEM)
        );
    }

    #[test]
    fn a_spawn_failure_is_advised_by_its_cause() {
        let says = |code| spawn_advice(&io::Error::from_raw_os_error(code));
        assert!(says(libc::EMFILE).contains("ulimit -n"));
        assert!(says(libc::ENFILE).contains("fs.file-max"));
        assert!(says(libc::EAGAIN).contains("ulimit -u"));
        assert!(says(libc::ENOENT).contains("executable"));
    }

    #[test]
    fn a_clone_keeps_kind_number_and_message() {
        let by_number = Error::os("fork", io::Error::from_raw_os_error(crate::sys::EINVAL));
        let copy = by_number.clone();
        assert_eq!(copy, by_number);
        assert_eq!(
            io_source(&copy).and_then(io::Error::raw_os_error),
            Some(crate::sys::EINVAL)
        );

        let by_text = Error::Spawn {
            reason: "no thread".into(),
            source: Some(io::Error::new(io::ErrorKind::WouldBlock, "try later")),
        };
        let copy = by_text.clone();
        assert_eq!(copy, by_text);
        let source = io_source(&copy).unwrap();
        assert_eq!(source.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(source.to_string(), "try later");
    }

    #[test]
    fn different_answers_are_different_errors() {
        let a = Error::os("fork", io::Error::from_raw_os_error(crate::sys::EINVAL));
        let b = Error::os("fork", io::Error::other("elsewhere"));
        assert_ne!(a, b);
        assert_ne!(
            a,
            Error::os("setsid", io::Error::from_raw_os_error(crate::sys::EINVAL))
        );
        assert_eq!(Error::Timeout, Error::Timeout);
        assert_ne!(Error::Timeout, Error::QueueClosed);
    }

    #[test]
    fn errors_cross_threads() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        send_sync_static::<Error>();
    }
}
