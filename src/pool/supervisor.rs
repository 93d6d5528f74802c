//! The pool's supervisor: the generic child supervisor
//! ([`crate::child::supervisor`]) set up for one pool's workers, and its
//! events translated into the pool's terms.
//!
//! Each pool has its own supervisor thread (`corepool-supervisor`), which
//! starts every worker (re-executed, or forked by the fork server with
//! [`StartMethod::ForkServer`]; pinned, in a process group of its own, with
//! its slot segment's, the common segment's and the sealed header's
//! descriptors, never another slot's) and reaps it through its pidfd; when a worker
//! exits, whatever its tasks started dies with its process group.

use crate::child::forkserver::StartMethod;
use crate::child::spawn::Reexec;
use crate::child::supervisor::{self as generic, SpawnError};
use crate::error::{Error, ExitCause};
use crate::pool::worker::{make_token, WORKER_ENV};
use crate::sys::CpuMask;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

/// What the supervisor reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// Worker `index` was started as `pid`; `pidfd` refers to that process
    /// for good: a signal sent through it never reaches a process that
    /// reused the pid after the supervisor reaped this one.
    Spawned {
        index: usize,
        pid: i32,
        pidfd: Arc<OwnedFd>,
    },
    /// Worker `index` could not be started.
    SpawnFailed { index: usize, error: Error },
    /// Worker `index`, process `pid`, ended and was reaped.
    Exited {
        index: usize,
        pid: i32,
        cause: ExitCause,
    },
    /// A round of watching the workers failed (a `poll` or `waitid` error,
    /// said in `error`); nobody was killed, the supervisor tries again
    /// after a pause.
    WatchFailed { error: String },
}

/// What the supervisor is asked to do.
#[derive(Debug)]
pub(crate) enum Command_ {
    Spawn {
        index: usize,
        /// The CPUs the worker is pinned to (`None`: unpinned). Named `cpu`
        /// for the driver, which passes the slot's placement through.
        cpu: Option<CpuMask>,
        /// Back-off: do not start it before this instant.
        not_before: Instant,
    },
    /// Kill every worker still running, reap them all, and end the thread.
    Exit,
}

/// Which worker a child is, and what it was pinned to (to explain a failed
/// start).
#[derive(Clone, Copy, Debug)]
struct Worker {
    index: usize,
    cpus: Option<CpuMask>,
}

/// The pool's handle on its supervisor thread.
#[derive(Debug)]
pub(crate) struct Supervisor {
    inner: generic::Supervisor<Worker>,
    /// The common segment's descriptor, and each slot segment's.
    segments: (RawFd, Vec<RawFd>),
    /// The sealed header and initializer argument every worker starts from
    /// (`layout::write_pristine`), passed to each beside the segment;
    /// closed with the pool.
    pristine: OwnedFd,
    parent_pid: i32,
}

impl Supervisor {
    /// Starts the thread. `report` is called for every event, from the
    /// supervisor thread.
    pub(crate) fn start(
        segments: (RawFd, Vec<RawFd>),
        pristine: OwnedFd,
        parent_pid: i32,
        start_method: StartMethod,
        report: impl Fn(Event) + Send + 'static,
    ) -> Result<Self, Error> {
        let inner =
            generic::Supervisor::start_using("corepool-supervisor", start_method, move |event| {
                report(translate(event));
            })?;
        Ok(Self {
            inner,
            segments,
            pristine,
            parent_pid,
        })
    }

    /// Queues a command.
    pub(crate) fn send(&self, command: Command_) {
        match command {
            Command_::Spawn {
                index,
                cpu,
                not_before,
            } => {
                // Its own slot's segment only: it cannot reach another's.
                let (common, ref slots) = self.segments;
                let Some(&slot) = slots.get(index) else {
                    // Indices come from the pool itself, below its worker
                    // count, which is the number of slot segments: a bug
                    // here, never input. Start nothing rather than a worker
                    // without memory (tests catch it).
                    debug_assert!(false, "worker index {index} has no slot segment");
                    return;
                };
                let header = self.pristine.as_raw_fd();
                self.inner.spawn(generic::Spawn {
                    key: Worker { index, cpus: cpu },
                    reexec: Reexec {
                        env: (
                            WORKER_ENV,
                            make_token(slot, index, self.parent_pid, header, common),
                        ),
                        keep_fds: vec![slot, common, header],
                        cpus: cpu,
                        own_group: true,
                    },
                    not_before,
                });
            }
            Command_::Exit => self.inner.request_stop(),
        }
    }

    /// Test hook: the supervisor thread's next `n` `poll`s fail.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn fail_next_polls(&self, n: u32) {
        self.inner.fail_next_polls(n);
    }

    /// Kills and reaps every worker, then ends the thread.
    pub(crate) fn stop(&mut self) {
        self.send(Command_::Exit);
        self.inner.join();
    }
}

fn translate(event: generic::Event<Worker>) -> Event {
    match event {
        generic::Event::Spawned { key, pid, pidfd } => Event::Spawned {
            index: key.index,
            pid,
            pidfd,
        },
        generic::Event::SpawnFailed { key, error } => Event::SpawnFailed {
            index: key.index,
            error: spawn_error(key.cpus, error),
        },
        generic::Event::Exited { key, pid, cause } => Event::Exited {
            index: key.index,
            pid,
            cause,
        },
        generic::Event::WatchFailed { error } => Event::WatchFailed {
            error: format!("watching the workers failed: {error}; nobody was killed, the supervisor looks again after a pause"),
        },
    }
}

/// Says why a worker could not start: EINVAL from pinning means the CPUs
/// (named by the first of its set). Only the fork-and-exec spawn pins before
/// exec; after `posix_spawn` the worker pins itself, and a failure there is
/// a failed start (status 101, the reason on its stderr).
fn spawn_error(cpus: Option<CpuMask>, error: SpawnError) -> Error {
    match error {
        SpawnError::Pidfd(e) => Error::os("pidfd_open", e),
        SpawnError::Exec(e) => match cpus.and_then(|set| set.first()) {
            Some(cpu) if e.raw_os_error() == Some(crate::sys::EINVAL) => {
                Error::PinFailed { cpu, source: e }
            }
            _ => Error::Spawn {
                reason: format!(
                    "the kernel refused a new process: {e}; {}",
                    crate::error::spawn_advice(&e)
                ),
                source: Some(e),
            },
        },
    }
}

#[cfg(feature = "fault-injection")]
impl crate::pool::Pool {
    /// Test hook ([`crate::testing::fail_next_supervisor_polls`]): the next
    /// `n` `poll`s of this pool's supervisor thread fail.
    pub(crate) fn fail_next_supervisor_polls(&self, n: u32) {
        if let Some(supervisor) = crate::sync::lock(&self.shared.supervisor).as_ref() {
            supervisor.fail_next_polls(n);
        }
    }
}
