//! The child supervisor: one long-lived thread that starts children (this
//! binary re-executed), watches them through their pidfds, reaps each one
//! the moment it exits, and reports what happened. Pool workers and
//! `Process` children both live under one.
//!
//! It is a thread of its own, and the only one that forks for its children,
//! because `PR_SET_PDEATHSIG` fires when the *thread* that forked a child
//! exits: it must live as long as they do. It waits in `poll` on one pidfd
//! per child (readable when that child exits) plus an eventfd for requests,
//! and reaps each child with `waitpid` on its own pid: never `waitpid(-1)`,
//! so other children of the program are left alone.
//!
//! A child counts as exited only on a definite answer from the kernel
//! (`waitid` says so); nothing is killed on a guess. A failed `poll` makes
//! it look at every child that way, then retry after a growing pause rather
//! than spin, and it reports the failure ([`Event::WatchFailed`]) so that
//! the owner can make it visible.

use crate::child::exit_hook;
use crate::child::forkserver::StartMethod;
use crate::child::spawn::{exit_cause, Reexec};
use crate::error::{Error, ExitCause};
use crate::sys;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the supervisor reports, from its own thread, for the child it
/// started under `key`.
#[derive(Debug)]
pub(crate) enum Event<K> {
    /// Started as `pid`; `pidfd` refers to it for good (signals sent
    /// through it can never reach a process that reused the pid).
    Spawned {
        key: K,
        pid: i32,
        pidfd: Arc<OwnedFd>,
    },
    /// Could not be started; nothing of it is left running.
    SpawnFailed { key: K, error: SpawnError },
    /// Process `pid` ended and was reaped.
    Exited { key: K, pid: i32, cause: ExitCause },
    /// One round of watching the children failed (`poll`, or the `waitid`
    /// that asks whether a child exited: EMFILE, ENOMEM, ...). Nobody was
    /// killed or reaped for it; the supervisor looks again after a pause
    /// that grows while failures repeat. Reported once per failed round.
    WatchFailed { error: std::io::Error },
}

/// Why a child could not be started.
#[derive(Debug)]
pub(crate) enum SpawnError {
    /// Re-executing failed: fork, exec, or a step between them (pinning,
    /// the parent-death signal, the process group).
    Exec(std::io::Error),
    /// It started, but no pidfd could be opened for it, so it was killed
    /// and reaped at once (a child we cannot watch is one we cannot reap).
    Pidfd(std::io::Error),
}

/// A request to start a child.
#[derive(Debug)]
pub(crate) struct Spawn<K> {
    /// What events about this child carry.
    pub key: K,
    /// How to start it.
    pub reexec: Reexec,
    /// Do not start it before this instant (a restart's back-off).
    pub not_before: Instant,
}

enum Command<K> {
    /// Boxed: a request is far larger than the other commands.
    Spawn(Box<Spawn<K>>),
    /// Kill every child, reap them all, end the thread.
    Stop,
    /// The program is exiting: kill every child, reap them all, say so on
    /// the channel, and from then on refuse every spawn at once (reported
    /// as failed, so that an owner still waiting for a child, a pool being
    /// dropped after the exit hook ran, gets an answer instead of waiting
    /// for ever). The thread runs on.
    StopForExit(crossbeam_channel::Sender<()>),
    /// Test hook: make the next this many `poll`s fail.
    #[cfg(feature = "fault-injection")]
    FailPolls(u32),
}

/// The handle on a supervisor thread. Dropping it stops the thread, which
/// kills and reaps every child first.
#[derive(Debug)]
pub(crate) struct Supervisor<K> {
    tx: crossbeam_channel::Sender<Command<K>>,
    wake: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Stops it at the program's exit if it still runs then (a pool in a
    /// `static`, `std::process::exit` with pools alive): its children are
    /// reaped by us, not left to `init` (see [`exit_hook`]). Dropped after
    /// the thread ended.
    _at_exit: exit_hook::Registration,
}

impl<K> std::fmt::Debug for Command<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Spawn(_) => "Spawn",
            Command::Stop => "Stop",
            Command::StopForExit(_) => "StopForExit",
            #[cfg(feature = "fault-injection")]
            Command::FailPolls(_) => "FailPolls",
        })
    }
}

impl<K: Clone + Send + 'static> Supervisor<K> {
    /// Starts the thread, named `thread_name`. `report` is called for every
    /// event, on that thread, in order: a child's `Spawned` always comes
    /// before its `Exited`.
    pub(crate) fn start(
        thread_name: &str,
        report: impl FnMut(Event<K>) + Send + 'static,
    ) -> Result<Self, Error> {
        Self::start_using(thread_name, StartMethod::Spawn, report)
    }

    /// [`Supervisor::start`], starting every child as `method` says.
    pub(crate) fn start_using(
        thread_name: &str,
        method: StartMethod,
        report: impl FnMut(Event<K>) + Send + 'static,
    ) -> Result<Self, Error> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(sys::eventfd().map_err(|e| Error::os("eventfd", e))?);
        let thread_wake = wake.clone();
        // Disconnected when the thread ends: what a stop at exit waits for.
        let (ended_tx, ended) = crossbeam_channel::bounded::<()>(0);
        let mut report = report;
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                let _ended = ended_tx;
                run(&rx, thread_wake.as_fd(), method, &mut report);
            })
            .map_err(|e| Error::os("spawning the supervisor thread", e))?;
        let (stop_tx, stop_wake) = (tx.clone(), wake.clone());
        let at_exit = exit_hook::register(Arc::new(move || {
            let (reaped_tx, reaped) = crossbeam_channel::bounded(1);
            // Refused: the thread has ended, nothing of it is left to stop.
            let asked = stop_tx.send(Command::StopForExit(reaped_tx)).is_ok();
            sys::eventfd_signal(stop_wake.as_fd());
            let ended = ended.clone();
            Box::new(move |deadline: Instant| {
                if asked {
                    // Every child reaped, or the thread ended meanwhile
                    // (the reply's sender dropped with it).
                    crossbeam_channel::select! {
                        recv(reaped) -> _ => {},
                        recv(ended) -> _ => {},
                        default(deadline.saturating_duration_since(Instant::now())) => {},
                    }
                }
            }) as exit_hook::Wait
        }));
        Ok(Self {
            tx,
            wake,
            thread: Some(thread),
            _at_exit: at_exit,
        })
    }

    /// Queues a request to start a child; its outcome arrives as an event.
    /// Returns false if the thread has stopped (nothing will be started).
    pub(crate) fn spawn(&self, request: Spawn<K>) -> bool {
        let queued = self.tx.send(Command::Spawn(Box::new(request))).is_ok();
        sys::eventfd_signal(self.wake.as_fd());
        queued
    }
}

impl<K> Supervisor<K> {
    /// Kills every child (its whole process group if it leads one), reaps
    /// them all, reporting each exit, then ends the thread. Idempotent.
    pub(crate) fn stop(&mut self) {
        self.request_stop();
        self.join();
    }

    /// Asks the thread to stop (as [`Supervisor::stop`]) without waiting.
    pub(crate) fn request_stop(&self) {
        let _ = self.tx.send(Command::Stop);
        sys::eventfd_signal(self.wake.as_fd());
    }

    /// Test hook: the thread's next `n` `poll`s fail as if the kernel had
    /// refused them (each is reported as [`Event::WatchFailed`]).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn fail_next_polls(&self, n: u32) {
        let _ = self.tx.send(Command::FailPolls(n));
        sys::eventfd_signal(self.wake.as_fd());
    }

    /// Waits for the thread to end (after a stop was requested).
    pub(crate) fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<K> Drop for Supervisor<K> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One child that has started and is not reaped yet.
struct Running<K> {
    key: K,
    pid: i32,
    pidfd: Arc<OwnedFd>,
    /// It leads a process group: kill the group (whatever its tasks started)
    /// when it exits or is stopped.
    own_group: bool,
}

/// What a look at one child found.
enum Look {
    Running,
    Exited(ExitCause),
    /// The kernel gave no answer (this error); look again later.
    NoAnswer(std::io::Error),
}

/// The pause after a failed `poll` (or a look that got no answer): short at
/// first, growing while failures repeat, so that a persistent failure costs
/// a wake-up every 100 ms rather than a spinning core.
struct Backoff {
    pause: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(100);

    fn new() -> Self {
        Self { pause: Self::FIRST }
    }

    fn succeeded(&mut self) {
        self.pause = Self::FIRST;
    }

    fn failed(&mut self) {
        std::thread::sleep(self.pause);
        self.pause = (self.pause * 2).min(Self::MAX);
    }
}

fn run<K: Clone>(
    rx: &crossbeam_channel::Receiver<Command<K>>,
    wake: BorrowedFd<'_>,
    method: StartMethod,
    report: &mut dyn FnMut(Event<K>),
) {
    let mut children: Vec<Running<K>> = Vec::new();
    let mut delayed: Vec<Spawn<K>> = Vec::new();
    let mut ready = Vec::new();
    let mut backoff = Backoff::new();
    // Polls the test hook asked to fail (always 0 without `fault-injection`).
    let mut polls_to_fail: u32 = 0;
    // The program's exit began (`Command::StopForExit`): no more children.
    let mut exiting = false;
    loop {
        // Start the children whose back-off has passed.
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = delayed.drain(..).partition(|s| s.not_before <= now);
        delayed = later;
        for request in due {
            start(request, method, &mut children, report);
        }
        let timeout = delayed
            .iter()
            .map(|s| s.not_before.saturating_duration_since(now))
            .min();

        let mut fds: Vec<BorrowedFd<'_>> = vec![wake];
        fds.extend(children.iter().map(|c| c.pidfd.as_fd()));
        let polled = if polls_to_fail > 0 {
            polls_to_fail -= 1;
            Err(std::io::Error::other(
                "poll failed on purpose (a fault-injection test hook)",
            ))
        } else {
            sys::poll_readable(&fds, &mut ready, timeout)
        };
        drop(fds);
        // Which children to look at: those whose pidfd is readable, or, when
        // poll failed, all of them (a look is a definite answer either way,
        // so a live child is never taken for dead).
        let to_look: Vec<bool> = match &polled {
            Ok(()) => ready.iter().skip(1).copied().collect(),
            Err(_) => vec![true; children.len()],
        };
        // The first failure of this round, reported once the round is over.
        let mut failure = polled.as_ref().err().map(copy_error);
        let mut at = 0;
        let mut looks = to_look.into_iter();
        while at < children.len() {
            if !looks.next().unwrap_or(false) {
                at += 1;
                continue;
            }
            match look(&mut children[at]) {
                Look::Running => at += 1,
                Look::NoAnswer(error) => {
                    failure.get_or_insert(error);
                    at += 1;
                }
                Look::Exited(cause) => {
                    // `remove`, not `swap_remove`: the remaining children keep
                    // the order `looks` follows.
                    let gone = children.remove(at);
                    report(Event::Exited {
                        key: gone.key,
                        pid: gone.pid,
                        cause,
                    });
                }
            }
        }
        match failure {
            None => backoff.succeeded(),
            Some(error) => {
                // Said before the pause, so the owner learns of it at once.
                report(Event::WatchFailed { error });
                backoff.failed();
            }
        }

        // Drain before reading commands: a command sent after the drain
        // signals the eventfd again, so none waits for another wake-up.
        if polled.is_err() || ready.first().copied().unwrap_or(false) {
            sys::eventfd_drain(wake);
        }
        while let Ok(command) = rx.try_recv() {
            match command {
                Command::Spawn(request) if exiting => refuse_for_exit(*request, report),
                Command::Spawn(request) if request.not_before > Instant::now() => {
                    delayed.push(*request);
                }
                Command::Spawn(request) => start(*request, method, &mut children, report),
                Command::Stop => {
                    stop_all(children, report);
                    return;
                }
                Command::StopForExit(reaped) => {
                    exiting = true;
                    stop_all(std::mem::take(&mut children), report);
                    for request in delayed.drain(..) {
                        refuse_for_exit(request, report);
                    }
                    let _ = reaped.send(());
                }
                #[cfg(feature = "fault-injection")]
                Command::FailPolls(n) => polls_to_fail = n,
            }
        }
    }
}

/// Answers a spawn asked for after the program's exit began: refused, at
/// once, so that its owner does not wait for a child that will never come.
fn refuse_for_exit<K>(request: Spawn<K>, report: &mut dyn FnMut(Event<K>)) {
    report(Event::SpawnFailed {
        key: request.key,
        error: SpawnError::Exec(std::io::Error::other(
            "the program is exiting: no child is started once its exit began",
        )),
    });
}

/// A copy of `error` for the report (an `io::Error` is not `Clone`): the
/// OS error number when there is one, else the kind and the message.
fn copy_error(error: &std::io::Error) -> std::io::Error {
    match error.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(error.kind(), error.to_string()),
    }
}

/// Starts one child and reports how that went.
fn start<K: Clone>(
    request: Spawn<K>,
    method: StartMethod,
    children: &mut Vec<Running<K>>,
    report: &mut dyn FnMut(Event<K>),
) {
    let Spawn { key, reexec, .. } = request;
    let own_group = reexec.own_group;
    let pid = match reexec.spawn_using(method) {
        Ok(pid) => pid,
        Err(e) => {
            report(Event::SpawnFailed {
                key,
                error: SpawnError::Exec(e),
            });
            return;
        }
    };
    match sys::pidfd_open(pid) {
        Ok(pidfd) => {
            let pidfd = Arc::new(pidfd);
            children.push(Running {
                key: key.clone(),
                pid,
                pidfd: pidfd.clone(),
                own_group,
            });
            report(Event::Spawned { key, pid, pidfd });
        }
        Err(e) => {
            // Not reaped yet, so its pid and group are still its own.
            if own_group {
                sys::kill_group(pid, crate::sys::Signal::KILL);
            }
            sys::signal_child(pid, crate::sys::Signal::KILL);
            let _ = sys::wait_exit(pid);
            report(Event::SpawnFailed {
                key,
                error: SpawnError::Pidfd(e),
            });
        }
    }
}

/// Whether `running` has exited, and if so reaps it. Kills nothing that has
/// not exited: its process group is killed (what its tasks started) only
/// once the kernel says the leader exited, and before it is reaped, while
/// its pid, and so its group id, cannot have been reused.
fn look<K>(running: &mut Running<K>) -> Look {
    match sys::has_exited(running.pid) {
        Ok(false) => return Look::Running,
        Ok(true) => {
            if running.own_group {
                sys::kill_group(running.pid, crate::sys::Signal::KILL);
            }
        }
        // Not our child to wait for any more: something else in the program
        // reaped it (a `waitpid(-1)`, SIGCHLD ignored). It is gone, with no
        // cause to report; its pid may be reused, so no group kill.
        Err(e) if e.raw_os_error() == Some(crate::sys::ECHILD) => {
            return Look::Exited(ExitCause::Unknown);
        }
        Err(e) => return Look::NoAnswer(e),
    }
    // waitpid on this pid only; it has exited, so this does not block.
    match sys::try_wait(running.pid) {
        Ok(Some(status)) => Look::Exited(exit_cause(status)),
        Ok(None) => Look::NoAnswer(std::io::Error::other(
            "waitpid found no exit for a child waitid said had exited",
        )),
        Err(e) if e.raw_os_error() == Some(crate::sys::ECHILD) => Look::Exited(ExitCause::Unknown),
        Err(e) => Look::NoAnswer(e),
    }
}

/// Kills every child (and its group) and reaps each, reporting its exit.
///
/// A child the kernel will not let us kill (EPERM: the program dropped
/// its privileges after starting it) is not waited for here, since that
/// wait could last for ever; it is handed to [`reap_when_it_ends`] and
/// reported by nobody (its owner gave it up when its own kill was refused).
fn stop_all<K>(children: Vec<Running<K>>, report: &mut dyn FnMut(Event<K>)) {
    let mut killable = Vec::with_capacity(children.len());
    let mut unkillable = Vec::new();
    for c in children {
        // The group first (what its tasks started), then the leader itself
        // through its pidfd: refused only if both are.
        let group = c.own_group && sys::kill_group(c.pid, crate::sys::Signal::KILL);
        let leader = sys::pidfd_send_signal(c.pidfd.as_fd(), crate::sys::Signal::KILL);
        if group || leader {
            killable.push(c);
        } else {
            unkillable.push(c.pid);
        }
    }
    reap_when_it_ends(unkillable);
    for c in killable {
        let cause = match sys::wait_exit(c.pid) {
            Ok(status) => exit_cause(status),
            // Reaped by something else in the program (SIGCHLD ignored).
            Err(e) if e.raw_os_error() == Some(crate::sys::ECHILD) => ExitCause::Unknown,
            // We sent it SIGKILL above, and it may not be waited for.
            Err(_) => ExitCause::Signal(crate::sys::SIGKILL),
        };
        report(Event::Exited {
            key: c.key,
            pid: c.pid,
            cause,
        });
    }
}

/// Reaps `pids`, children we may no longer signal, whenever they end, on a
/// detached thread of their own that waits in `waitpid` (no CPU, one
/// thread for all of them): no zombie is left even so. They outlive the
/// program if it ends first (the parent-death signal is refused across
/// the credentials too); `docs/fault-model.md` says so. Without a thread
/// (none could be started) each stays a zombie from its end until the
/// program's.
fn reap_when_it_ends(pids: Vec<i32>) {
    if pids.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("corepool-reap-unkillable".into())
        .spawn(move || {
            for pid in pids {
                let _ = sys::wait_exit(pid);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// A child in a process group of its own that runs until its stdin
    /// closes, then exits with code 3.
    // The child is reaped through its pid by `look` or `sys::wait_for`, as
    // the supervisor reaps its own, not through `std`'s handle.
    #[allow(clippy::zombie_processes)]
    fn waiting_child() -> (Running<()>, std::process::ChildStdin) {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read line; exit 3"])
            .stdin(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let stdin = child.stdin.take().unwrap();
        let running = Running {
            key: (),
            pid,
            pidfd: Arc::new(sys::pidfd_open(pid).unwrap()),
            own_group: true,
        };
        (running, stdin)
    }

    fn wait_until_exited(running: &Running<()>) {
        let mut ready = Vec::new();
        while !ready.first().copied().unwrap_or(false) {
            sys::poll_readable(&[running.pidfd.as_fd()], &mut ready, None).unwrap();
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri starts no processes")]
    fn a_look_at_a_running_child_kills_nothing_and_reaps_nothing() {
        let (mut running, mut stdin) = waiting_child();
        assert!(matches!(look(&mut running), Look::Running));
        assert!(matches!(look(&mut running), Look::Running));
        // Still alive: it answers by exiting with its own code, not a signal.
        stdin.write_all(b"go\n").unwrap();
        wait_until_exited(&running);
        assert!(matches!(
            look(&mut running),
            Look::Exited(ExitCause::Code(3))
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri starts no processes")]
    fn a_child_reaped_behind_our_back_counts_as_gone() {
        let (mut running, stdin) = waiting_child();
        drop(stdin);
        wait_until_exited(&running);
        sys::wait_for(running.pid);
        // Gone for sure, and how is unknown: no made-up cause.
        assert!(matches!(
            look(&mut running),
            Look::Exited(ExitCause::Unknown)
        ));
    }
}
