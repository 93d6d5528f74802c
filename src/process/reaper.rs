//! The program-wide thread that starts and reaps every [`Process`](super::Process):
//! the child supervisor ([`crate::child::supervisor`]), named
//! `corepool-processes`, started with the first process and living as long
//! as the program.
//!
//! Living that long is what makes `PR_SET_PDEATHSIG` (armed for every child
//! by [`Reexec`]) fire only when the program itself dies. The supervisor
//! reaps each process the moment it exits and records how it ended here,
//! whether or not anyone joins it.

use crate::child::spawn::Reexec;
use crate::child::supervisor::{Event, Spawn, SpawnError, Supervisor};
use crate::error::{Error, ExitCause, Result};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

/// How a process ended, once it has: recorded by the supervisor thread the
/// moment it reaps it.
#[derive(Debug, Default)]
pub(super) struct Exit {
    cause: Mutex<Option<ExitCause>>,
    reaped: Condvar,
    /// 0 while it runs, 1 once `cause` is recorded: a futex word, so that
    /// `crate::connection::wait` can sleep on several processes (and queues)
    /// at once.
    ended: AtomicU32,
    /// Run once, on the supervisor thread, when the process is reaped and
    /// before its exit is published.
    on_exit: Mutex<OnExit>,
}

/// What to do once a process is reaped; `reaped` once it ran.
#[derive(Default)]
struct OnExit {
    actions: Vec<Box<dyn FnOnce() + Send>>,
    reaped: bool,
}

impl std::fmt::Debug for OnExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnExit")
            .field("actions", &self.actions.len())
            .field("reaped", &self.reaped)
            .finish()
    }
}

impl Exit {
    fn record(&self, cause: ExitCause) {
        // First what had to wait for a certain death (pipe ends the process
        // still held), so that whoever sees it ended (`join`, `is_alive`)
        // also sees those done.
        let actions = {
            let mut on_exit = crate::sync::lock(&self.on_exit);
            on_exit.reaped = true;
            std::mem::take(&mut on_exit.actions)
        };
        for action in actions {
            // No user code runs here (pipe ends closed on a dead child's
            // behalf), but a panic must not take the supervisor thread down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(action));
        }
        let mut recorded = crate::sync::lock(&self.cause);
        *recorded = Some(cause);
        // Under the lock, so that whoever sees the cause also sees the word
        // (`join_timeout`, then `active_children`). Release pairs with the
        // Acquire load in `ended`: whoever sees 1 finds the cause recorded.
        self.ended.store(1, Ordering::Release);
        drop(recorded);
        self.reaped.notify_all();
        crate::sys::futex_wake_all(&self.ended);
    }

    /// Runs `action` once the process is reaped (now, if it already is).
    pub(super) fn on_exit(&self, action: impl FnOnce() + Send + 'static) {
        let mut pending = crate::sync::lock(&self.on_exit);
        if !pending.reaped {
            pending.actions.push(Box::new(action));
            return;
        }
        drop(pending);
        action();
    }

    /// The futex word that turns 1 once it has ended (and never back).
    pub(super) fn ended_word(&self) -> &AtomicU32 {
        &self.ended
    }

    /// Whether it has ended, in one load.
    pub(super) fn ended(&self) -> bool {
        // Acquire pairs with the Release store in `record`.
        self.ended.load(Ordering::Acquire) == 1
    }

    /// How it ended; `None` while it runs.
    pub(super) fn cause(&self) -> Option<ExitCause> {
        crate::sync::lock(&self.cause).clone()
    }

    /// Waits until it has ended; returns how.
    pub(super) fn join(&self) -> ExitCause {
        let mut cause = crate::sync::lock(&self.cause);
        loop {
            if let Some(cause) = cause.as_ref() {
                return cause.clone();
            }
            cause = self.reaped.wait(cause).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until it has ended, or until `deadline` if there is one;
    /// returns how it ended, `None` once the deadline passed first.
    pub(super) fn wait(&self, deadline: Option<Instant>) -> Option<ExitCause> {
        let mut cause = crate::sync::lock(&self.cause);
        loop {
            if let Some(cause) = cause.as_ref() {
                return Some(cause.clone());
            }
            cause = match deadline {
                None => self.reaped.wait(cause).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.reaped
                        .wait_timeout(cause, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// A process the supervisor has started.
pub(super) struct Started {
    pub(super) pid: i32,
    /// Refers to it for good: signals go through it.
    pub(super) pidfd: Arc<OwnedFd>,
    pub(super) exit: Arc<Exit>,
}

type Reply = std::result::Result<(i32, Arc<OwnedFd>), SpawnError>;

/// What the supervisor keeps with each process: where to answer the
/// request that started it, and where to record its end.
#[derive(Clone, Debug)]
struct Child {
    reply: crossbeam_channel::Sender<Reply>,
    exit: Arc<Exit>,
}

fn supervisor() -> Result<&'static Supervisor<Child>> {
    static SUPERVISOR: OnceLock<Result<Supervisor<Child>>> = OnceLock::new();
    SUPERVISOR
        .get_or_init(|| {
            Supervisor::start("corepool-processes", |event: Event<Child>| match event {
                // The reply channel has room for its one answer: never blocks.
                Event::Spawned { key, pid, pidfd } => {
                    let _ = key.reply.send(Ok((pid, pidfd)));
                }
                Event::SpawnFailed { key, error } => {
                    let _ = key.reply.send(Err(error));
                }
                Event::Exited { key, cause, .. } => key.exit.record(cause),
                // No `Process` API surfaces it (yet); nobody was harmed by it.
                Event::WatchFailed { .. } => {}
            })
        })
        .as_ref()
        // The failure is kept for every later call: each gets a copy, with
        // the system call's error as its source.
        .map_err(Error::clone)
}

/// Starts this binary again as a `Process` child, handing it `fd` (its
/// segment) and pinning it to `cpu`, on the supervisor thread; returns once
/// it runs.
pub(super) fn spawn(fd: RawFd, cpu: Option<usize>) -> Result<Started> {
    let supervisor = supervisor()?;
    let gone = || Error::Spawn {
        reason: "the process thread is gone".into(),
        source: None,
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    let exit = Arc::new(Exit::default());
    let queued = supervisor.spawn(Spawn {
        key: Child {
            reply,
            exit: exit.clone(),
        },
        reexec: Reexec {
            env: (
                super::PROCESS_ENV,
                format!("v1:{fd}:{}", std::process::id()),
            ),
            keep_fds: vec![fd],
            cpus: cpu.map(|cpu| crate::sys::CpuMask::of(&[cpu])),
            own_group: false,
        },
        not_before: Instant::now(),
    });
    if !queued {
        return Err(gone());
    }
    let (pid, pidfd) = answer.recv().map_err(|_| gone())?.map_err(|e| {
        let (reason, source) = match e {
            SpawnError::Exec(e) => (
                format!(
                    "re-executing /proc/self/exe failed: {e}; {}",
                    crate::error::spawn_advice(&e)
                ),
                e,
            ),
            SpawnError::Pidfd(e) => (
                format!(
                    "the new process could not be watched (pidfd_open failed: {e}), so it was stopped; {}",
                    pidfd_advice(&e)
                ),
                e,
            ),
        };
        Error::Spawn {
            reason,
            source: Some(source),
        }
    })?;
    Ok(Started { pid, pidfd, exit })
}

/// What to do when the new child's pidfd could not be opened: a full
/// descriptor table is the usual cause (each running `Process` holds two
/// descriptors: its segment and its pidfd).
fn pidfd_advice(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EMFILE) => "this process has too many descriptors open (each running Process holds two, its segment and its pidfd): join some, or raise its limit (`ulimit -n`, RLIMIT_NOFILE)",
        Some(libc::ENOSYS) => "this kernel has no pidfd_open: corepool needs Linux 5.3 or later",
        _ => crate::error::spawn_advice(err),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pidfd_failure_for_want_of_descriptors_says_what_to_do() {
        let advice = super::pidfd_advice(&std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(advice.contains("ulimit -n"), "{advice}");
        let advice = super::pidfd_advice(&std::io::Error::from_raw_os_error(libc::ENFILE));
        assert!(advice.contains("fs.file-max"), "{advice}");
    }
}
