//! [`Process`]: one function run in a process of its own, Python's
//! `multiprocessing.Process`, with the lifecycle owned by the parent.
//!
//! Like pool workers, a process is this binary re-executed (never a bare
//! fork of a multithreaded parent), recognised by [`crate::init`]. Its
//! function and argument travel in a small sealed memfd, and so does its
//! result. Every process is started by one long-lived thread
//! (`corepool-processes`), which arms `PR_SET_PDEATHSIG` (so no process
//! outlives a SIGKILLed parent: no orphans) and reaps each one through its
//! pidfd the moment it exits, whether or not anyone joins it (no zombies).
//! Signals go through the pidfd, so they can never hit a recycled pid.

use crate::child::spawn::{exit_cause, Reexec};
use crate::error::{Error, ExitCause, Result};
use crate::shm::Segment;
use crate::sys;
use crate::wire::task;
use crate::wire::{decode_exact, Wire};

pub(crate) mod child;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable that marks a `Process` child: `v1:<fd>:<parent>`.
pub(crate) const PROCESS_ENV: &str = "COREPOOL_PROCESS";

const MAGIC: [u8; 8] = *b"COREPROC";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 4096;

/// Child outcome codes in the segment's `status` word.
mod status {
    pub(super) const RUNNING: u32 = 0;
    pub(super) const RETURNED: u32 = 1;
    pub(super) const PANICKED: u32 = 2;
    pub(super) const FAILED: u32 = 3;
    pub(super) const TOO_LARGE: u32 = 4;
}

/// The header of a process segment, written by the parent before the child
/// starts; `status` and `result_len` (atomics at fixed offsets after it) are
/// the child's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    arg_len: u32,
    fingerprint: u64,
    trampoline: i64,
    result_cap: u32,
    _reserved: u32,
}

const STATUS_OFFSET: usize = 256;
const RESULT_LEN_OFFSET: usize = 260;

fn status_word(seg: &Segment) -> &AtomicU32 {
    let p = seg
        .at(STATUS_OFFSET, 4)
        .expect("segment holds its header page");
    // SAFETY: in bounds, 4-aligned (page-aligned base + 256), lives as long as
    // `seg`, and both processes access it only atomically.
    unsafe { AtomicU32::from_ptr(p.cast()) }
}

fn result_len_word(seg: &Segment) -> &AtomicU32 {
    let p = seg
        .at(RESULT_LEN_OFFSET, 4)
        .expect("segment holds its header page");
    // SAFETY: as in `status_word`.
    unsafe { AtomicU32::from_ptr(p.cast()) }
}

/// What the reaper knows of one process.
#[derive(Debug)]
struct State {
    exit: Mutex<Option<ExitCause>>,
    exited: Condvar,
    pidfd: OwnedFd,
}

impl State {
    fn record(&self, cause: ExitCause) {
        *crate::pool_lock(&self.exit) = Some(cause);
        self.exited.notify_all();
    }
}

/// Requests to the process thread.
enum Request {
    Spawn {
        fd: RawFd,
        cpu: Option<usize>,
        reply: crossbeam_channel::Sender<std::io::Result<(i32, Arc<State>)>>,
    },
}

/// The one thread that starts and reaps every `Process` of this program.
struct Reaper {
    tx: crossbeam_channel::Sender<Request>,
    wake: Arc<OwnedFd>,
}

fn reaper() -> Result<&'static Reaper> {
    static REAPER: OnceLock<Result<Reaper>> = OnceLock::new();
    let failed = |e: std::io::Error| Error::Spawn {
        reason: format!("starting the process thread failed: {e}"),
        source: Some(e),
    };
    REAPER
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded();
            let wake = Arc::new(sys::eventfd().map_err(failed)?);
            let thread_wake = wake.clone();
            std::thread::Builder::new()
                .name("corepool-processes".into())
                .spawn(move || reap_loop(&rx, thread_wake.as_fd()))
                .map_err(failed)?;
            Ok(Reaper { tx, wake })
        })
        .as_ref()
        // The failure is kept for every later call: each gets a copy.
        .map_err(Error::clone)
}

fn reap_loop(rx: &crossbeam_channel::Receiver<Request>, wake: BorrowedFd<'_>) {
    let mut running: HashMap<i32, (Child, Arc<State>)> = HashMap::new();
    let mut ready = Vec::new();
    loop {
        let pids: Vec<i32> = running.keys().copied().collect();
        let mut fds: Vec<BorrowedFd<'_>> = vec![wake];
        fds.extend(pids.iter().map(|p| running[p].1.pidfd.as_fd()));
        if sys::poll_readable(&fds, &mut ready, None).is_err() {
            ready = vec![true; fds.len()];
        }
        let exited: Vec<i32> = pids
            .iter()
            .zip(ready.iter().skip(1))
            .filter(|(_, r)| **r)
            .map(|(p, _)| *p)
            .collect();
        drop(fds);
        for pid in exited {
            if let Some((child, _)) = running.get_mut(&pid) {
                // waitpid on this pid only: other children are not ours to reap.
                let cause = match child.try_wait() {
                    Ok(Some(status)) => exit_cause(status),
                    Ok(None) => continue,
                    Err(_) => ExitCause::Signal(sys::SIGKILL),
                };
                if let Some((_, state)) = running.remove(&pid) {
                    state.record(cause);
                }
            }
        }
        if ready.first().copied().unwrap_or(false) {
            sys::eventfd_drain(wake);
        }
        while let Ok(Request::Spawn { fd, cpu, reply }) = rx.try_recv() {
            let started = spawn_child(fd, cpu).and_then(|child| {
                let pid = child.id() as i32;
                let pidfd = sys::pidfd_open(pid)?;
                let state = Arc::new(State {
                    exit: Mutex::new(None),
                    exited: Condvar::new(),
                    pidfd,
                });
                running.insert(pid, (child, state.clone()));
                Ok((pid, state))
            });
            let _ = reply.send(started);
        }
    }
}

fn spawn_child(fd: RawFd, cpu: Option<usize>) -> std::io::Result<Child> {
    Reexec {
        env: (PROCESS_ENV, format!("v1:{fd}:{}", std::process::id())),
        keep_fd: fd,
        cpu,
        own_group: false,
    }
    .spawn()
}

/// Configures a [`Process`]: `Process::builder().name("x").daemon(true).start(f, arg)`.
///
/// ```
/// fn main() {
///     corepool::init();
///     let p = corepool::Process::builder().name("adder").start(|x: u64| x + 1, 41).unwrap();
///     assert_eq!(p.name(), "adder");
///     assert_eq!(p.join().unwrap(), 42);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    cpu: Option<usize>,
    max_result_bytes: u32,
}

impl Default for ProcessBuilder {
    fn default() -> Self {
        Self {
            name: None,
            daemon: false,
            cpu: None,
            max_result_bytes: 64 * 1024,
        }
    }
}

impl ProcessBuilder {
    /// A name, for messages and `ps`-style listings (Python's `name`).
    /// Default `Process-<pid>`.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::builder().name("doubler").start(|x: u32| x * 2, 4)?;
    ///     assert_eq!(p.name(), "doubler");
    ///     assert_eq!(p.join()?, 8);
    ///     Ok(())
    /// }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Python's `daemon`: a daemon process is killed when its handle is
    /// dropped (it ends with the scope that owns it); a non-daemon one keeps
    /// running, and is still reaped when it ends. Either way, none outlives
    /// the parent.
    ///
    /// ```
    /// use corepool::Process;
    ///
    /// fn spin(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = Process::builder().daemon(true).start(spin, 0)?;
    ///     assert!(p.is_daemon() && p.is_alive());
    ///     drop(p); // SIGKILLed here, then reaped by the process thread
    ///     Ok(())
    /// }
    /// ```
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Pin the process to this CPU before it starts.
    ///
    /// ```
    /// use corepool::{info, Error, Process};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let cpu = info::allowed_cpus()?[0];
    ///     let p = Process::builder().cpu(cpu).start(|_: ()| info::allowed_cpus().unwrap(), ())?;
    ///     assert_eq!(p.join()?, vec![cpu]);
    ///     // A CPU outside the allowed set is refused before anything starts.
    ///     let refused = Process::builder().cpu(usize::MAX).start(|x: u8| x, 0);
    ///     assert!(matches!(refused, Err(Error::CpuNotAllowed { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn cpu(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Room for the encoded result (default 64 KiB); a larger result is an
    /// [`Error::ResultTooLarge`] from [`Process::join`].
    ///
    /// ```
    /// use corepool::{Error, Process};
    ///
    /// fn zeros(n: u32) -> Vec<u8> {
    ///     vec![0; n as usize]
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let small = Process::builder().max_result_bytes(64).start(zeros, 10)?;
    ///     assert_eq!(small.join()?.len(), 10);
    ///     let big = Process::builder().max_result_bytes(64).start(zeros, 1_000)?;
    ///     assert!(matches!(big.join(), Err(Error::ResultTooLarge { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn max_result_bytes(mut self, bytes: u32) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    /// Starts `f(arg)` in a new process.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::builder().start(|(a, b): (u64, u64)| a * b, (6, 7))?;
    ///     assert_eq!(p.join()?, 42);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotInitialized`] inside a process whose `main` did not call
    /// [`crate::init`] first; [`Error::CpuNotAllowed`]; [`Error::SharedMemory`];
    /// [`Error::Spawn`].
    pub fn start<F, A, R>(self, f: F, arg: A) -> Result<Process<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        if crate::pool::worker::is_uninitialised_worker() || std::env::var_os(PROCESS_ENV).is_some()
        {
            return Err(Error::NotInitialized);
        }
        if let Some(cpu) = self.cpu {
            let allowed = crate::info::allowed_cpus()?;
            if !allowed.contains(&cpu) {
                return Err(Error::CpuNotAllowed { cpu, allowed });
            }
        }
        crate::wire::take_keep_alive();
        crate::pipe::take_transfers();
        let payload = crate::wire::encode_to_vec(&arg);
        let keep = crate::wire::take_keep_alive();
        let transfers = crate::pipe::take_transfers();
        let arg_len = u32::try_from(payload.len()).map_err(|_| Error::ArgumentTooLarge {
            size: payload.len(),
            max: u32::MAX as usize,
        })?;
        let args_at = HEADER_BYTES;
        let result_at = args_at + payload.len().next_multiple_of(8);
        let len = result_at + self.max_result_bytes as usize;
        let seg = Segment::create(c"corepool-process", len)?;
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            arg_len,
            fingerprint: crate::child::fingerprint::fingerprint(),
            trampoline: task::offset_of(task::call_one::<F, A, R>),
            result_cap: self.max_result_bytes,
            _reserved: 0,
        };
        let dst = seg
            .at(0, std::mem::size_of::<Header>())
            .expect("header fits");
        // SAFETY: in bounds; no other process maps the segment yet.
        unsafe { dst.cast::<Header>().write_unaligned(header) };
        let dst = seg.at(args_at, payload.len()).expect("arguments fit");
        // SAFETY: in bounds (the segment was sized for them); not shared yet.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), dst, payload.len()) };
        let r = reaper()?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        r.tx.send(Request::Spawn {
            fd: seg.raw_fd(),
            cpu: self.cpu,
            reply,
        })
        .map_err(|_| Error::Spawn {
            reason: "the process thread is gone".into(),
            source: None,
        })?;
        sys::eventfd_signal(r.wake.as_fd());
        let (pid, state) = answer
            .recv()
            .map_err(|_| Error::Spawn {
                reason: "the process thread is gone".into(),
                source: None,
            })?
            .map_err(|e| Error::Spawn {
                reason: format!(
                    "re-executing /proc/self/exe failed: {e}; check the process limit (ulimit -u)"
                ),
                source: Some(e),
            })?;
        // Pipe ends passed in belong to the child from now on, even if it
        // dies before it first touches them.
        crate::pipe::assign_transfers(&transfers, pid);
        Ok(Process {
            name: self.name.unwrap_or_else(|| format!("Process-{pid}")),
            pid,
            daemon: self.daemon,
            state,
            seg,
            _keep: keep,
            _result: PhantomData,
        })
    }
}

/// A function running in a process of its own: Python's
/// `multiprocessing.Process`, with a typed result.
///
/// ```
/// use corepool::{Error, ExitCause, Process};
///
/// fn count(n: u64) -> u64 {
///     (0..n).fold(0, |x, _| std::hint::black_box(x + 1))
/// }
///
/// fn main() {
///     corepool::init();
///     let p = Process::start(count, 1_000).unwrap();
///     assert_eq!(p.join().unwrap(), 1_000);
///
///     let stuck = Process::start(|_: u64| -> u64 { loop { std::hint::spin_loop() } }, 0).unwrap();
///     assert!(stuck.is_alive());
///     stuck.kill();
///     assert!(stuck.join_timeout(std::time::Duration::from_secs(10)));
///     assert_eq!(stuck.exit_code(), Some(ExitCause::Signal(9)));
///     assert!(matches!(stuck.join(), Err(Error::WorkerDied { .. })));
/// }
/// ```
pub struct Process<R> {
    name: String,
    pid: i32,
    daemon: bool,
    state: Arc<State>,
    seg: Segment,
    _keep: crate::wire::KeepAlive,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("daemon", &self.daemon)
            .field("exit", &*crate::pool_lock(&self.state.exit))
            .finish()
    }
}

impl Process<()> {
    /// A builder: name, daemon flag, CPU, room for the result.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::builder().name("square").start(|x: i64| x * x, -3)?;
    ///     assert_eq!(p.name(), "square");
    ///     assert_eq!(p.join()?, 9);
    ///     Ok(())
    /// }
    /// ```
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }
}

impl<R: Wire> Process<R> {
    /// Starts `f(arg)` in a new process with default settings
    /// (`Process(target=f, args=(arg,)).start()`).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::start(|s: String| s.len(), "hello".to_string())?;
    ///     assert!(!p.is_daemon());
    ///     assert_eq!(p.join()?, 5);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ProcessBuilder::start`].
    pub fn start<F, A>(f: F, arg: A) -> Result<Self>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
    {
        ProcessBuilder::default().start(f, arg)
    }

    /// The process's name.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::start(|x: u8| x, 1)?;
    ///     assert_eq!(p.name(), format!("Process-{}", p.pid())); // the default
    ///     p.join()?;
    ///     Ok(())
    /// }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid (valid until it is reaped; signals go through a pidfd anyway).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn spin(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::start(spin, 0)?;
    ///     assert_ne!(p.pid(), std::process::id() as i32);
    ///     assert!(std::path::Path::new(&format!("/proc/{}", p.pid())).exists());
    ///     p.kill();
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     Ok(())
    /// }
    /// ```
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it was started as a daemon.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let d = corepool::Process::builder().daemon(true).start(|x: u8| x, 1)?;
    ///     assert!(d.is_daemon());
    ///     assert_eq!(d.join()?, 1);
    ///     let p = corepool::Process::start(|x: u8| x, 2)?;
    ///     assert!(!p.is_daemon()); // the default
    ///     assert_eq!(p.join()?, 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// Whether it is still running.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn spin(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::start(spin, 0)?;
    ///     assert!(p.is_alive());
    ///     p.kill();
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     assert!(!p.is_alive());
    ///     Ok(())
    /// }
    /// ```
    pub fn is_alive(&self) -> bool {
        crate::pool_lock(&self.state.exit).is_none()
    }

    /// How it ended: `None` while it runs; `Code(0)` after it returned,
    /// `Code(1)` after a panic (like Python's exit code 1 on an exception),
    /// `Signal(n)` when a signal ended it.
    ///
    /// ```
    /// use corepool::{Error, ExitCause, Process};
    /// use std::time::Duration;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let ok = Process::start(|x: u32| x + 1, 1)?;
    ///     assert!(ok.join_timeout(Duration::from_secs(10)));
    ///     assert_eq!(ok.exit_code(), Some(ExitCause::Code(0)));
    ///     assert_eq!(ok.join()?, 2);
    ///
    ///     let bad = Process::start(|_: u32| -> u32 { panic!("no") }, 0)?;
    ///     assert!(bad.join_timeout(Duration::from_secs(10)));
    ///     assert_eq!(bad.exit_code(), Some(ExitCause::Code(1)));
    ///     assert!(matches!(bad.join(), Err(Error::Panicked { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn exit_code(&self) -> Option<ExitCause> {
        crate::pool_lock(&self.state.exit).clone()
    }

    /// Sends SIGTERM (Python's `terminate`).
    ///
    /// ```
    /// use corepool::{ExitCause, Process};
    /// use std::time::Duration;
    ///
    /// fn spin(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = Process::start(spin, 0)?;
    ///     p.terminate();
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     assert_eq!(p.exit_code(), Some(ExitCause::Signal(15)));
    ///     Ok(())
    /// }
    /// ```
    pub fn terminate(&self) {
        sys::pidfd_send_signal(self.state.pidfd.as_fd(), sys::Signal::TERM);
    }

    /// Sends SIGKILL (Python's `kill`).
    ///
    /// ```
    /// use corepool::{Error, ExitCause, Process};
    /// use std::time::Duration;
    ///
    /// fn spin(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = Process::start(spin, 0)?;
    ///     p.kill();
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     assert_eq!(p.exit_code(), Some(ExitCause::Signal(9)));
    ///     assert!(matches!(p.join(), Err(Error::WorkerDied { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn kill(&self) {
        sys::pidfd_send_signal(self.state.pidfd.as_fd(), sys::Signal::KILL);
    }

    /// Waits at most `timeout` for it to end; returns whether it has
    /// (Python's `join(timeout)`).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn spin(_: u64) -> u64 {
    ///     loop {
    ///         std::hint::spin_loop()
    ///     }
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = corepool::Process::start(spin, 0)?;
    ///     assert!(!p.join_timeout(Duration::from_millis(10))); // still spinning
    ///     p.kill();
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     Ok(())
    /// }
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        let deadline = crate::shm::park::deadline_after(timeout);
        let mut exit = crate::pool_lock(&self.state.exit);
        while exit.is_none() {
            let Some(deadline) = deadline else {
                exit = self
                    .state
                    .exited
                    .wait(exit)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            exit = self
                .state
                .exited
                .wait_timeout(exit, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Waits for it to end and returns what `f` returned (Python's `join`,
    /// with the result the target produced).
    ///
    /// ```
    /// use corepool::{Error, Process};
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let p = Process::start(|v: Vec<u32>| v.iter().sum::<u32>(), vec![1, 2, 3])?;
    ///     assert_eq!(p.join()?, 6);
    ///
    ///     let p = Process::start(|_: ()| -> u32 { panic!("boom") }, ())?;
    ///     match p.join() {
    ///         Err(Error::Panicked { message }) => assert!(message.contains("boom")),
    ///         other => panic!("expected a panic, got {other:?}"),
    ///     }
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Panicked`] if `f` panicked; [`Error::WorkerDied`] if the
    /// process ended without a result (a signal, `exit`); [`Error::Decode`],
    /// [`Error::ResultTooLarge`] for a result that cannot be read.
    pub fn join(self) -> Result<R> {
        let cause = {
            let mut exit = crate::pool_lock(&self.state.exit);
            while exit.is_none() {
                exit = self
                    .state
                    .exited
                    .wait(exit)
                    .unwrap_or_else(|p| p.into_inner());
            }
            exit.clone().expect("checked above")
        };
        self.read_result(cause)
    }

    fn read_result(&self, cause: ExitCause) -> Result<R> {
        let died = || Error::WorkerDied {
            pid: self.pid,
            cause: cause.clone(),
        };
        // Acquire pairs with the child's Release store of `status`; the child
        // is reaped, so nothing changes under us. Untrusted: validate.
        let code = status_word(&self.seg).load(Ordering::Acquire);
        let len = result_len_word(&self.seg).load(Ordering::Acquire) as usize;
        let header = read_header(&self.seg).ok_or_else(died)?;
        let at = HEADER_BYTES + (header.arg_len as usize).next_multiple_of(8);
        let bytes = |len: usize| -> Option<Vec<u8>> {
            let src = self.seg.at(at, len.min(header.result_cap as usize))?;
            let mut out = vec![0u8; len.min(header.result_cap as usize)];
            // SAFETY: in bounds (checked by `at`); copied once, then validated.
            unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
            Some(out)
        };
        match code {
            status::RETURNED if cause == ExitCause::Code(0) => {
                decode_exact::<R>(&bytes(len).ok_or_else(died)?)
            }
            status::PANICKED => Err(Error::Panicked {
                message: String::from_utf8_lossy(&bytes(len).ok_or_else(died)?).into_owned(),
            }),
            status::FAILED => Err(Error::Decode {
                type_name: "process arguments",
                reason: String::from_utf8_lossy(&bytes(len).ok_or_else(died)?).into_owned(),
            }),
            status::TOO_LARGE => Err(Error::ResultTooLarge {
                size: len,
                max: header.result_cap as usize,
            }),
            // Still RUNNING (it died mid-task), or returned but then exited
            // abnormally, or garbage.
            status::RUNNING | status::RETURNED => Err(died()),
            _ => Err(died()),
        }
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if self.daemon && crate::pool_lock(&self.state.exit).is_none() {
            sys::pidfd_send_signal(self.state.pidfd.as_fd(), sys::Signal::KILL);
        }
        // Either way the process thread reaps it when it ends: no zombie.
    }
}

fn read_header(seg: &Segment) -> Option<Header> {
    let src = seg.at(0, std::mem::size_of::<Header>())?;
    // SAFETY: in bounds; plain data, copied once, validated by the caller.
    let header: Header = unsafe { src.cast::<Header>().read_unaligned() };
    (header.magic == MAGIC && header.version == VERSION).then_some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_validation_rejects_garbage() {
        let seg = Segment::create(c"corepool-test", HEADER_BYTES).unwrap();
        assert!(read_header(&seg).is_none());
        assert_eq!(status_word(&seg).load(Ordering::Relaxed), status::RUNNING);
    }
}
