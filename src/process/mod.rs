//! [`Process`]: one function run in a process of its own, Python's
//! `multiprocessing.Process`, with the lifecycle owned by the parent.
//!
//! Like pool workers, a process is this binary re-executed (never a bare
//! fork of a multithreaded parent), recognised by [`crate::init`]. Its
//! function and argument travel in a small sealed memfd, and so does its
//! result ([`segment`]). Every process is started by one long-lived thread
//! (`corepool-processes`, [`reaper`]), which arms `PR_SET_PDEATHSIG` (so no
//! process outlives a SIGKILLed parent: no orphans) and reaps each one
//! through its pidfd the moment it exits, whether or not anyone joins it (no
//! zombies). Signals go through the pidfd, so they can never hit a recycled
//! pid.
//!
//! This file is the handle; [`builder`] starts processes, [`child`] is the
//! child's side.

mod builder;
pub(crate) mod child;
mod introspect;
mod reaper;
mod segment;

pub use builder::ProcessBuilder;
pub use introspect::active_children;

use self::reaper::Exit;
use self::segment::Outcome;
use crate::error::{Error, ExitCause, Result};
use crate::shm::Segment;
use crate::sys;
use crate::wire::{decode_exact, Wire};
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable that marks a `Process` child: `v1:<fd>:<parent>`.
pub(crate) const PROCESS_ENV: &str = "COREPOOL_PROCESS";

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
///     let p = Process::start(count, 1_000).unwrap();
///     assert_eq!(p.join().unwrap(), 1_000);
///
///     let stuck = Process::start(|_: u64| -> u64 { loop { std::hint::spin_loop() } }, 0).unwrap();
///     assert!(stuck.is_alive());
///     stuck.kill().unwrap();
///     assert!(stuck.join_timeout(std::time::Duration::from_secs(10)));
///     assert_eq!(stuck.exit_code(), Some(ExitCause::Signal(9)));
///     assert!(matches!(stuck.join(), Err(Error::WorkerDied { .. })));
/// }
/// ```
pub struct Process<R> {
    name: String,
    pid: i32,
    daemon: bool,
    /// How it ended, recorded by the process thread when it reaps it.
    exit: Arc<Exit>,
    /// Signals go through this, never through the pid.
    pidfd: Arc<OwnedFd>,
    /// Its argument going in, its outcome coming back.
    seg: Segment,
    /// A spilled result read early (by `join_timeout` or `drop`), so that
    /// the process, lingering for it, could exit.
    taken: Mutex<Option<Outcome>>,
    /// The in-flight counts of the shared objects in the argument: ended by
    /// the child's decode, or taken back on drop if it died before it.
    transits: crate::wire::Transits,
    _keep: crate::wire::KeepAlive,
    /// Decodes a result and drops it (`discard_result::<R>`), for a result
    /// nobody joins: pipe ends in it become ours and close, shared objects
    /// in it are received, so that their peers and senders go on.
    discard: fn(&[u8]),
    _result: PhantomData<fn() -> R>,
}

/// Decodes a result of type `R` and drops it; a decoder that panics or
/// fails is ignored (the result was unwanted anyway).
pub(crate) fn discard_result<R: Wire>(bytes: &[u8]) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(decode_exact::<R>(bytes));
    }));
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("daemon", &self.daemon)
            .field("exit", &self.exit.cause())
            .finish()
    }
}

impl Process<()> {
    /// A builder: name, daemon flag, CPU, room for the result.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
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
    ///     let p = corepool::Process::start(spin, 0)?;
    ///     assert_ne!(p.pid(), std::process::id() as i32);
    ///     assert!(std::path::Path::new(&format!("/proc/{}", p.pid())).exists());
    ///     p.kill()?;
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
    ///     let p = corepool::Process::start(spin, 0)?;
    ///     assert!(p.is_alive());
    ///     p.kill()?;
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     assert!(!p.is_alive());
    ///     Ok(())
    /// }
    /// ```
    pub fn is_alive(&self) -> bool {
        self.exit.cause().is_none()
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
        self.exit.cause()
    }

    /// Sends SIGTERM (Python's `terminate`).
    ///
    /// A process that has already ended counts as signalled. The error
    /// [`Error::Os`] means the kernel refused (EPERM): this program changed
    /// its credentials since it started the process (it dropped root, say),
    /// or the process changed its own; nothing else can stop it then, so do
    /// not [`join`](Self::join) it without a timeout.
    ///
    /// A program that ignores SIGTERM (`SIG_IGN`) passes that on to its
    /// children, since an ignored signal stays ignored across exec (as in
    /// Python): `terminate` cannot stop them then, [`kill`](Self::kill) can.
    /// Likewise a stopped process (SIGSTOP, a debugger) gets SIGTERM only
    /// once it continues: `terminate` returns `Ok` and the process runs on
    /// stopped; `kill` ends it at once. After either, `join` returns
    /// [`Error::WorkerDied`] with the signal as its `cause`.
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
    ///     let p = Process::start(spin, 0)?;
    ///     p.terminate()?;
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     assert_eq!(p.exit_code(), Some(ExitCause::Signal(15)));
    ///     Ok(())
    /// }
    /// ```
    pub fn terminate(&self) -> Result<()> {
        self.signal(crate::sys::Signal::TERM, "kill (SIGTERM)")
    }

    /// Sends SIGKILL (Python's `kill`). Errors as for
    /// [`terminate`](Self::terminate).
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
    ///     let p = Process::start(spin, 0)?;
    ///     p.kill()?;
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     assert_eq!(p.exit_code(), Some(ExitCause::Signal(9)));
    ///     assert!(matches!(p.join(), Err(Error::WorkerDied { .. })));
    ///     Ok(())
    /// }
    /// ```
    pub fn kill(&self) -> Result<()> {
        self.signal(crate::sys::Signal::KILL, "kill (SIGKILL)")
    }

    /// Sends `signal` (`op` names it in an error). A process that has
    /// already ended counts as signalled, as for `std`'s `Child::kill`.
    fn signal(&self, signal: crate::sys::Signal, op: &'static str) -> Result<()> {
        sys::pidfd_signal(self.pidfd.as_fd(), signal).map_err(|source| Error::Os { op, source })
    }

    /// Waits at most `timeout` for it to end; returns whether it has
    /// (Python's `join(timeout)`). A result that spilled (larger than
    /// [`max_result_bytes`](crate::ProcessBuilder::max_result_bytes)) is
    /// read meanwhile and kept for [`join`](Self::join), so that the process,
    /// which waits for that read, can exit.
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
    ///     let p = corepool::Process::start(spin, 0)?;
    ///     assert!(!p.join_timeout(Duration::from_millis(10))); // still spinning
    ///     p.kill()?;
    ///     assert!(p.join_timeout(Duration::from_secs(10)));
    ///     Ok(())
    /// }
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        let deadline = crate::shm::park::deadline_after(timeout);
        // A process whose result spilled waits for it to be read before it
        // exits: read it now, so that it can.
        self.wait_for_outcome(deadline);
        self.take_spill_early();
        self.exit.wait(deadline).is_some()
    }

    /// A descriptor that becomes readable once the process has exited
    /// (Python's `sentinel`): its pidfd, for your own `poll` or `epoll`
    /// loop. It stays valid as long as this handle; do not close it. To wait
    /// for several processes, pipes and queues at once, see
    /// [`connection::wait`](crate::connection::wait).
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// use std::time::Duration;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let p = corepool::Process::start(|x: u8| x, 1)?;
    ///     let mut fds = [libc::pollfd { fd: p.sentinel().as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    ///     // SAFETY: one valid pollfd; -1 waits until it is readable.
    ///     assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) }, 1);
    ///     assert!(p.join_timeout(Duration::from_secs(60)), "it exited");
    ///     Ok(())
    /// }
    /// ```
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Waits for it to end and returns what `f` returned (Python's `join`,
    /// with the result the target produced).
    ///
    /// The result is read as soon as the process writes it, before it
    /// exits: a result larger than
    /// [`max_result_bytes`](crate::ProcessBuilder::max_result_bytes) (it
    /// travels in a one-off shared segment), or one naming shared objects
    /// the process created (a [`crate::SharedArray`] it returns), stays
    /// readable although the process ends right after: it waits for this
    /// read before it exits (at most 5 seconds, then it exits anyway and
    /// such a result is lost, as [`Error::Decode`] or
    /// [`Error::WorkerDied`]).
    ///
    /// ```
    /// use corepool::{Process, SharedArray};
    ///
    /// fn squares(n: u64) -> SharedArray<u64> {
    ///     let v: Vec<u64> = (0..n).map(|i| i * i).collect();
    ///     SharedArray::from_slice(&v).unwrap() // created here, read by the parent
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let a = Process::start(squares, 4)?.join()?;
    ///     assert_eq!(a.to_vec(), vec![0, 1, 4, 9]);
    ///     let big = Process::start(|n: usize| vec![1u8; n], 1 << 20)?.join()?;
    ///     assert_eq!(big.len(), 1 << 20);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// ```
    /// use corepool::{Error, Process};
    ///
    /// fn main() -> corepool::Result<()> {
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
    /// process ended without a result (a signal, `exit`); [`Error::Decode`]
    /// for a result that cannot be read; [`Error::ResultTooLarge`] for one
    /// larger than `max_result_bytes` that got no memory for its spill;
    /// [`Error::Encode`] for one that could not be encoded (with the
    /// encoder's message).
    pub fn join(self) -> Result<R> {
        // The result is read and decoded as soon as it is written: a process
        // whose result spilled, or names shared objects it created, waits
        // for that before it exits.
        self.wait_for_outcome(None);
        let outcome = self.outcome();
        // Read: the drop that follows must not decode it again.
        *crate::sync::lock(&self.taken) = Some(Outcome::Unfinished);
        let decoded = match &outcome {
            Some(Outcome::Returned(bytes)) => Some(decode_exact::<R>(bytes)),
            _ => None,
        };
        let cause = self.exit.join();
        crate::shm::handle::sweep();
        self.read_result(cause, outcome, decoded)
    }

    /// Whether the process thread has recorded its end: then
    /// [`is_alive`](Self::is_alive) is false and `join` does not wait.
    pub(crate) fn has_ended(&self) -> bool {
        self.exit.ended()
    }

    /// The futex word that turns from 0 to 1 when it has ended (see
    /// [`has_ended`](Self::has_ended)).
    pub(crate) fn ended_word(&self) -> &AtomicU32 {
        self.exit.ended_word()
    }

    /// [`wait_for_outcome`](Self::wait_for_outcome) without a deadline,
    /// for `crate::testing`.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn wait_for_outcome_for_tests(&self) {
        self.wait_for_outcome(None);
    }

    /// Waits until the process has written its outcome or ended, or until
    /// `deadline`.
    fn wait_for_outcome(&self, deadline: Option<Instant>) {
        loop {
            if self.exit.ended() {
                return;
            }
            let Some((status, code)) = segment::status_of(&self.seg) else {
                return;
            };
            if code != segment::status::RUNNING {
                return;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return;
            }
            // The child wakes the status word once written; the process
            // thread wakes the ended word once reaped.
            let words = [(self.exit.ended_word(), 0), (status, code)];
            if sys::futex_wait_any(&words, left).is_err() {
                // Before Linux 5.16: one word at a time, looking at the
                // other every 10 ms.
                let slice = left.map_or(Duration::from_millis(10), |l| {
                    l.min(Duration::from_millis(10))
                });
                sys::futex_wait(status, code, Some(slice));
            }
        }
    }

    /// What the process left, its spill (if its result spilled) read.
    fn outcome(&self) -> Option<Outcome> {
        let taken = crate::sync::lock(&self.taken).take();
        taken.or_else(|| self.outcome_unlocked())
    }

    /// If the result spilled and was not read yet, reads it into `taken`.
    fn take_spill_early(&self) {
        let spilled =
            segment::status_of(&self.seg).is_some_and(|(_, code)| code == segment::status::SPILLED);
        if !spilled {
            return;
        }
        let mut taken = crate::sync::lock(&self.taken);
        if taken.is_none() {
            *taken = self.outcome_unlocked();
        }
    }

    /// [`outcome`](Self::outcome) without looking at `taken`.
    fn outcome_unlocked(&self) -> Option<Outcome> {
        Some(match segment::read_outcome(&self.seg)? {
            Outcome::Spilled(handle) => match crate::shm::spill::read(&handle) {
                Ok(bytes) => Outcome::Returned(bytes),
                Err(e) => Outcome::SpillLost(e.to_string()),
            },
            other => other,
        })
    }

    fn read_result(
        &self,
        cause: ExitCause,
        outcome: Option<Outcome>,
        decoded: Option<Result<R>>,
    ) -> Result<R> {
        let died = || Error::WorkerDied {
            pid: self.pid,
            cause: cause.clone(),
            rank: None,
        };
        match outcome.ok_or_else(died)? {
            // A child that wrote its result and then ended in a way nobody
            // could learn (SIGCHLD ignored) is taken at its word.
            Outcome::Returned(_) if matches!(cause, ExitCause::Code(0) | ExitCause::Unknown) => {
                decoded.unwrap_or_else(|| Err(died()))
            }
            Outcome::SpillLost(reason)
                if matches!(cause, ExitCause::Code(0) | ExitCause::Unknown) =>
            {
                Err(Error::Decode {
                    type_name: "process result",
                    reason,
                })
            }
            Outcome::Panicked(message) => Err(Error::Panicked { message }),
            Outcome::Failed(reason) => Err(Error::Decode {
                type_name: "process arguments",
                reason,
            }),
            Outcome::NotEncoded(reason) => Err(Error::Encode {
                type_name: "process result",
                reason,
            }),
            Outcome::TooLarge { size, max } => Err(Error::ResultTooLarge { size, max }),
            // Died mid-task, or returned but then exited abnormally.
            Outcome::Returned(_)
            | Outcome::Spilled(_)
            | Outcome::SpillLost(_)
            | Outcome::Unfinished => Err(died()),
        }
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        // A child that ended without decoding its argument never will: its
        // objects' counts come back (dropping `transits` unsent does that).
        // Otherwise the child ended, or will end, their transits itself.
        let decode_failed =
            segment::status_of(&self.seg).is_some_and(|(_, code)| code == segment::status::FAILED);
        if !self.exit.ended() || (segment::argument_decoded(&self.seg) && !decode_failed) {
            self.transits.sent();
        }
        // A result nobody joined is decoded and dropped here, spilled or
        // held in place, so that pipe ends in it close (their peers see the
        // end of the stream) and shared objects in it are received; reading
        // a spill also lets the process, waiting for it, exit now.
        let taken = crate::sync::lock(&self.taken).take();
        let code = segment::status_of(&self.seg).map(|(_, code)| code);
        match taken {
            Some(Outcome::Returned(bytes)) => (self.discard)(&bytes),
            Some(_) => {}
            None if code == Some(segment::status::SPILLED) => {
                if let Some(Outcome::Spilled(handle)) = segment::read_outcome(&self.seg) {
                    match crate::shm::spill::read(&handle) {
                        Ok(bytes) => (self.discard)(&bytes),
                        // Unreadable: at least end its transit.
                        Err(_) => crate::shm::spill::discard(&handle),
                    }
                }
            }
            None if code == Some(segment::status::RETURNED) => {
                if let Some(Outcome::Returned(bytes)) = segment::read_outcome(&self.seg) {
                    (self.discard)(&bytes);
                }
            }
            None => {}
        }
        if self.daemon && self.exit.cause().is_none() {
            sys::pidfd_send_signal(self.pidfd.as_fd(), crate::sys::Signal::KILL);
            introspect::forget(&self.exit);
        }
        // Either way the process thread reaps it when it ends: no zombie.
    }
}
