//! The supervisor thread: starts worker processes and reaps them.
//!
//! It is the only thread that forks, and it lives as long as the pool, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits. It
//! waits in `poll` on one pidfd per worker (readable when that worker exits)
//! plus an eventfd for commands, and reaps each worker with `waitpid` on its
//! own pid: never `waitpid(-1)`, so other children of the program are left
//! alone.

use crate::child::spawn::{exit_cause, Reexec};
use crate::error::{Error, ExitCause};
use crate::pool::worker::{make_token, WORKER_ENV};
use crate::sys;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Child;
use std::sync::Arc;
use std::time::Instant;

/// What the supervisor reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// Worker `index` was started as `pid`.
    Spawned { index: usize, pid: i32 },
    /// Worker `index` could not be started.
    SpawnFailed { index: usize, error: Error },
    /// Worker `index`, process `pid`, ended and was reaped.
    Exited {
        index: usize,
        pid: i32,
        cause: ExitCause,
    },
}

/// What the supervisor is asked to do.
#[derive(Debug)]
pub(crate) enum Command_ {
    Spawn {
        index: usize,
        cpu: Option<usize>,
        /// Back-off: do not start it before this instant.
        not_before: Instant,
    },
    /// Kill every worker still running, reap them all, and end the thread.
    Exit,
}

/// The pool's handle on its supervisor thread.
#[derive(Debug)]
pub(crate) struct Supervisor {
    tx: crossbeam_channel::Sender<Command_>,
    wake: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervisor {
    /// Starts the thread. `report` is called for every event, from the
    /// supervisor thread.
    pub(crate) fn start(
        segment_fd: RawFd,
        parent_pid: i32,
        report: impl Fn(Event) + Send + 'static,
    ) -> Result<Self, Error> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(sys::eventfd().map_err(|e| Error::os("eventfd", e))?);
        let wake2 = wake.clone();
        let thread = std::thread::Builder::new()
            .name("corepool-supervisor".into())
            .spawn(move || run(segment_fd, parent_pid, &rx, wake2.as_fd(), &report))
            .map_err(|e| Error::os("spawning the supervisor thread", e))?;
        Ok(Self {
            tx,
            wake,
            thread: Some(thread),
        })
    }

    /// Queues a command.
    pub(crate) fn send(&self, command: Command_) {
        let _ = self.tx.send(command);
        sys::eventfd_signal(self.wake.as_fd());
    }

    /// Kills and reaps every worker, then ends the thread.
    pub(crate) fn stop(&mut self) {
        self.send(Command_::Exit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Running {
    child: Child,
    pidfd: OwnedFd,
}

fn run(
    segment_fd: RawFd,
    parent_pid: i32,
    rx: &crossbeam_channel::Receiver<Command_>,
    wake: BorrowedFd<'_>,
    report: &dyn Fn(Event),
) {
    let mut running: HashMap<usize, Running> = HashMap::new();
    let mut delayed: Vec<(Instant, usize, Option<usize>)> = Vec::new();
    let mut ready = Vec::new();
    loop {
        // Start the workers whose back-off has passed.
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|(t, _, _)| *t <= now);
        delayed = later;
        for (_, index, cpu) in due {
            start(segment_fd, parent_pid, index, cpu, &mut running, report);
        }
        let timeout = delayed
            .iter()
            .map(|(t, _, _)| t.saturating_duration_since(now))
            .min();
        let indices: Vec<usize> = running.keys().copied().collect();
        let mut fds: Vec<BorrowedFd<'_>> = vec![wake];
        fds.extend(indices.iter().map(|i| running[i].pidfd.as_fd()));
        if sys::poll_readable(&fds, &mut ready, timeout).is_err() {
            ready = vec![true; fds.len()]; // check everything rather than spin
        }
        let exited: Vec<usize> = indices
            .iter()
            .zip(ready.iter().skip(1))
            .filter(|(_, r)| **r)
            .map(|(i, _)| *i)
            .collect();
        drop(fds);
        for index in exited {
            reap(&mut running, index, report);
        }
        if ready.first().copied().unwrap_or(false) {
            sys::eventfd_drain(wake);
        }
        while let Ok(command) = rx.try_recv() {
            match command {
                Command_::Spawn {
                    index,
                    cpu,
                    not_before,
                } => {
                    if not_before > Instant::now() {
                        delayed.push((not_before, index, cpu));
                    } else {
                        start(segment_fd, parent_pid, index, cpu, &mut running, report);
                    }
                }
                Command_::Exit => {
                    for r in running.values() {
                        sys::kill_group(r.child.id() as i32, sys::Signal::KILL);
                    }
                    for (index, mut r) in running.drain() {
                        let pid = r.child.id() as i32;
                        let cause = r
                            .child
                            .wait()
                            .map(exit_cause)
                            .unwrap_or(ExitCause::Signal(sys::SIGKILL));
                        report(Event::Exited { index, pid, cause });
                    }
                    return;
                }
            }
        }
    }
}

fn start(
    segment_fd: RawFd,
    parent_pid: i32,
    index: usize,
    cpu: Option<usize>,
    running: &mut HashMap<usize, Running>,
    report: &dyn Fn(Event),
) {
    match spawn(segment_fd, parent_pid, index, cpu) {
        Ok(child) => {
            let pid = child.id() as i32;
            match sys::pidfd_open(pid) {
                Ok(pidfd) => {
                    running.insert(index, Running { child, pidfd });
                    report(Event::Spawned { index, pid });
                }
                Err(e) => {
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    report(Event::SpawnFailed {
                        index,
                        error: Error::os("pidfd_open", e),
                    });
                }
            }
        }
        Err(error) => report(Event::SpawnFailed { index, error }),
    }
}

fn reap(running: &mut HashMap<usize, Running>, index: usize, report: &dyn Fn(Event)) {
    let Some(r) = running.get_mut(&index) else {
        return;
    };
    // The worker has exited but is not reaped yet, so its pid (and process
    // group id) cannot have been reused: kill whatever its tasks started.
    sys::kill_group(r.child.id() as i32, sys::Signal::KILL);
    // waitpid on this pid only; the pidfd said it exited, so this does not block.
    let pid = r.child.id() as i32;
    let cause = match r.child.try_wait() {
        Ok(Some(status)) => exit_cause(status),
        Ok(None) => return,
        Err(_) => ExitCause::Signal(sys::SIGKILL),
    };
    running.remove(&index);
    report(Event::Exited { index, pid, cause });
}

/// Re-executes this binary as worker `index`, pinned, in its own process
/// group, with the segment descriptor.
fn spawn(
    segment_fd: RawFd,
    parent_pid: i32,
    index: usize,
    cpu: Option<usize>,
) -> Result<Child, Error> {
    let reexec = Reexec {
        env: (WORKER_ENV, make_token(segment_fd, index, parent_pid)),
        keep_fd: segment_fd,
        cpu,
        own_group: true,
    };
    reexec.spawn().map_err(|e| match cpu {
        Some(cpu) if e.raw_os_error() == Some(sys::EINVAL) => {
            Error::PinFailed { cpu, source: e }
        }
        _ => Error::Spawn {
            reason: format!("re-executing /proc/self/exe failed: {e}; check that the executable is still there and the process limit (ulimit -u) is not reached"),
            source: Some(e),
        },
    })
}
