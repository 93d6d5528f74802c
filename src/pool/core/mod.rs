//! The parent's bookkeeping: which task is where, and what to do when results
//! arrive or workers die. Everything here runs under the pool's lock, in
//! whichever parent thread drives (the driver thread, a submitter, a waiter).
//!
//! Each worker has a private list of the tasks pushed into its ring, in ring
//! order (`in_flight`). Results come back in the same order, so each result
//! must match the front of that list; anything else is a protocol violation.
//! When a worker dies, each record's ownership tag splits the list exactly:
//! the task it had taken and not answered fails with `WorkerDied` (or runs
//! again, with `retries`), the tasks it never started are requeued.
//!
//! This file holds the state and the pass that drives it; `lifecycle.rs`
//! follows each worker slot through starts and deaths, `tasks.rs` moves
//! tasks into the rings and results out of them.

mod lifecycle;
mod tasks;
#[cfg(test)]
mod tests;

use super::sink::{Outcome, Sink};
use super::supervisor::Event;
use crate::error::Error;
use crate::pool::layout::{fail, state, Slot};
use crate::shm::park;
use crate::shm::ring::{Claimed, Consumer, Producer};
use crate::sys::CpuMask;
use crate::wire::task::kind;
use crate::wire::Payload;
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A task waiting in the parent or travelling to a worker.
///
/// Small on purpose: a submitter far ahead of the workers queues hundreds
/// of thousands of these (`pending`), each written by the submitting thread
/// and read back later, often by another; and every task in a ring has one
/// in its worker's `in_flight`, written by the thread that dispatched it and
/// read by the one that collects its result. 80 bytes (a tiny argument
/// inline, what is rare behind one pointer), where it took 120, and 128 in
/// flight.
#[derive(Debug)]
pub(super) struct Task {
    pub id: u64,
    pub trampoline: i64,
    pub arg: TaskArg,
    pub sink: Sink,
    /// What few tasks hold (see [`TaskExtras`]); `None` for most.
    extras: Option<Box<TaskExtras>>,
    /// Runs so far that ended with the worker's death (see `retries`).
    pub attempts: u32,
    /// Where its record is in its worker's task ring, while in flight.
    pub position: u32,
}

/// What a task holds only when its argument needs it.
#[derive(Debug)]
struct TaskExtras {
    /// What the arguments refer to and must outlive the task (shared by the
    /// tasks of one submission). Never read: holding it is the point.
    keep: Option<Arc<crate::wire::KeepAlive>>,
    /// The spill holding the argument when it is larger than a ring message
    /// (the argument is then its handle): held until the outcome.
    spill: Option<Arc<crate::shm::spill::Held>>,
}

/// A task's encoded argument while the parent holds it: a tiny one (a
/// number, a pair of them: what the tasks that are cheap enough for their
/// bookkeeping to matter take) in the task itself, anything longer in the
/// encoder's payload behind one pointer.
pub(super) enum TaskArg {
    /// The first `len` bytes of `bytes`.
    Inline {
        len: u8,
        bytes: [u8; TaskArg::INLINE],
    },
    /// Longer than [`TaskArg::INLINE`] bytes.
    Boxed(Box<Payload>),
}

impl TaskArg {
    /// Arguments up to this many bytes live in the task.
    pub(super) const INLINE: usize = 22;

    pub(super) fn new(payload: Payload) -> Self {
        if payload.len() <= Self::INLINE {
            let mut bytes = [0; Self::INLINE];
            bytes[..payload.len()].copy_from_slice(&payload);
            Self::Inline {
                len: payload.len() as u8,
                bytes,
            }
        } else {
            Self::Boxed(Box::new(payload))
        }
    }

    /// The encoded argument.
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Boxed(payload) => payload,
        }
    }
}

impl std::fmt::Debug for TaskArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskArg")
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl Task {
    /// A task not yet run, whose argument `payload` refers to what `keep`
    /// holds, and is the handle of `spill` when it spilled.
    pub(super) fn new(
        id: u64,
        trampoline: i64,
        payload: Payload,
        sink: Sink,
        keep: Option<Arc<crate::wire::KeepAlive>>,
        spill: Option<Arc<crate::shm::spill::Held>>,
    ) -> Self {
        let extras =
            (keep.is_some() || spill.is_some()).then(|| Box::new(TaskExtras { keep, spill }));
        Self {
            id,
            trampoline,
            arg: TaskArg::new(payload),
            sink,
            extras,
            attempts: 0,
            position: 0,
        }
    }

    /// Whether its argument travels in a spill (the ring carries the handle).
    pub(super) fn spilled(&self) -> bool {
        self.extras.as_ref().is_some_and(|e| e.spill.is_some())
    }

    /// The task leaves a worker that may still be reading its argument
    /// (given up, or killed and not yet reaped): its arena block, if it has
    /// one, is never given back.
    pub(super) fn keep_spill_for_ever(&self) {
        if let Some(spill) = self.extras.as_ref().and_then(|e| e.spill.as_ref()) {
            spill.keep_for_ever();
        }
    }

    /// A worker took this task: it decodes its arguments.
    pub(super) fn mark_delivered(&self) {
        if let Some(keep) = self.extras.as_ref().and_then(|e| e.keep.as_ref()) {
            crate::wire::mark_delivered(keep);
        }
    }
}

/// Where a worker slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Asked the supervisor to start it.
    Spawning,
    /// Running, not yet attached.
    Starting,
    /// Serving.
    Ready,
    /// Killed or exiting; waiting for the supervisor to reap it.
    Dying,
    /// No process: its last [`MAX_START_FAILURES`](lifecycle::MAX_START_FAILURES)
    /// starts in a row failed (a descriptor or process shortage, an
    /// initializer that fails). Tried again at `resting_until`.
    Resting,
    /// Gone and not coming back (the pool is closing or terminated).
    Stopped,
}

#[derive(Debug)]
pub(super) struct Worker {
    pub slot: Slot,
    /// The CPUs its processes are pinned to (`None`: unpinned).
    pub cpu: Option<CpuMask>,
    pub pid: i32,
    /// The current process's pidfd (from its `Spawned` event): the only way
    /// the parent signals it, since the pid may belong to another process
    /// once the supervisor has reaped this one.
    pidfd: Option<Arc<OwnedFd>>,
    pub phase: Phase,
    tasks: Producer,
    results: Consumer,
    in_flight: VecDeque<Task>,
    budget_left: u64,
    pub start_failures: u32,
    /// Why the last start failed.
    pub start_error: Option<Error>,
    /// The tasks of a worker that broke the protocol have been failed already.
    violated: bool,
    /// Scratch flags of one dispatch pass: records written / ring full.
    touched: bool,
    full: bool,
    /// Deaths in a row without a result in between: drives respawn back-off.
    crash_streak: u32,
    /// The task the worker runs (the front of `in_flight`, tagged TAKEN)
    /// and when the parent first saw it running: for task timeouts.
    running: Option<(u64, Instant)>,
    /// The task this worker was killed for overrunning its timeout.
    timed_out: Option<u64>,
    /// When the parent saw this slot's previous worker die: the replacement
    /// time is measured from here to the new worker's first ready check.
    replacing_since: Option<Instant>,
    /// When the parent learnt the current process runs (its `Spawned`
    /// event): for the start timeout.
    starting_since: Option<Instant>,
    /// When a `Resting` slot is tried again.
    resting_until: Option<Instant>,
    /// This worker's only task in flight, as balancing last saw it: given
    /// to an idle worker if this one does not start it in time.
    lone: Option<LoneTask>,
    /// The position of a lone task taken back from this worker because it
    /// did not start it (it is stopped, or starved of CPU): it gets no
    /// task until it has moved past that record, which proves it runs.
    stalled_at: Option<u32>,
    /// How many tasks it may have in flight: about a millisecond of its
    /// work, after its own measure of its tasks (`tasks::window_for`).
    window: usize,
}

/// A worker's only task in flight, when balancing first saw it alone, and
/// whether it was seen started since (then it is never looked at again).
#[derive(Clone, Copy, Debug)]
struct LoneTask {
    id: u64,
    /// `sys::coarse_now` at the first look.
    since: Duration,
    started: bool,
}

impl Worker {
    /// Whether its current process has exited (its pidfd is readable),
    /// giving one that is exiting 50 ms to finish: its descriptors close a
    /// moment before its pidfd turns readable, and on an overloaded machine
    /// (load 12) that moment outlasted the 10 ms given before (a flaky
    /// test: a worker dying after its spilled result was judged a protocol
    /// violation, not a death). Only asked when a spilled result does not
    /// open, at most once per worker's life (either answer ends it); the
    /// wait holds the pool's lock, so it stays short.
    fn has_exited(&self) -> bool {
        let Some(pidfd) = &self.pidfd else {
            return false;
        };
        let mut ready = Vec::with_capacity(1);
        let grace = Some(Duration::from_millis(50));
        crate::sys::poll_readable(&[pidfd.as_fd()], &mut ready, grace).is_ok()
            && ready.first() == Some(&true)
    }

    pub(super) fn new(slot: Slot, cpu: Option<CpuMask>, budget: u64) -> Self {
        slot.task_ring().reset();
        slot.result_ring().reset();
        Self {
            slot,
            cpu,
            pid: 0,
            pidfd: None,
            phase: Phase::Spawning,
            tasks: Producer::new(slot.task_ring()),
            results: Consumer::with_position_mirror(
                slot.result_ring(),
                Arc::new(std::sync::atomic::AtomicU32::new(0)),
            ),
            in_flight: VecDeque::new(),
            budget_left: budget,
            start_failures: 0,
            start_error: None,
            violated: false,
            touched: false,
            full: false,
            crash_streak: 0,
            running: None,
            timed_out: None,
            replacing_since: None,
            starting_since: None,
            resting_until: None,
            lone: None,
            stalled_at: None,
            window: tasks::DEFAULT_WINDOW,
        }
    }

    /// SIGKILLs the slot's current process, through its pidfd: a signal
    /// that can never reach a process that reused the pid, however late it
    /// comes (the supervisor may have reaped ours since the last event).
    /// What the worker started dies too: the supervisor kills the worker's
    /// process group when it sees the leader exit, before reaping it, while
    /// the group id is still the worker's own.
    ///
    /// Returns false if the kernel refused (the program dropped the
    /// privileges it needs to signal this process since it started it).
    fn kill(&self) -> bool {
        match &self.pidfd {
            Some(pidfd) => crate::sys::pidfd_send_signal(pidfd.as_fd(), crate::sys::Signal::KILL),
            None => true,
        }
    }

    /// Takes back every task queued behind the one the worker runs, before
    /// the worker is killed for that task's timeout, so that no other task
    /// can start in the moment between the decision and the kill landing
    /// (one that did would die with the worker, through no fault of its
    /// own). Back to front, as `balance` does: both sides CAS the record's
    /// tag and one wins. Returns the tasks taken back, oldest first, and
    /// whether that was all of them: false if the worker had started one,
    /// which means it answered the task judged overdue.
    fn take_back_queued(&mut self) -> (Vec<Task>, bool) {
        let ring = self.tasks.memory();
        let mut back = Vec::new();
        let mut all = true;
        while self.in_flight.len() > 1 {
            let Some(last) = self.in_flight.back() else {
                break;
            };
            // A released record was decided, and cancelled ones leave
            // `in_flight`: it was taken (its bytes may hold a newer record,
            // so its tag is not read). Only this thread writes records.
            let tag = if ring.is_released(last.position) {
                None
            } else {
                ring.record_kind(last.position)
            };
            // AcqRel pairs with the worker's AcqRel CAS in `Server::run`:
            // exactly one of the two takes the task.
            let cancelled = tag.is_some_and(|tag| {
                tag.compare_exchange(
                    kind::TASK,
                    kind::CANCELLED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            });
            if !cancelled {
                all = false; // started, and so was every task before it
                break;
            }
            back.extend(self.in_flight.pop_back());
        }
        self.budget_left = self.budget_left.saturating_add(back.len() as u64);
        back.reverse();
        (back, all)
    }

    /// Gives up a process we may not kill, when the pool is ending: the slot
    /// counts as stopped at once, so that `terminate`, `join` and drop do not
    /// wait for a death that only the process itself can choose (its task
    /// may never end). Its tasks have been failed already; it is told to
    /// leave once the tasks in its ring are done, instead of waiting for
    /// more; its exit, if it ever comes, no longer matches the slot (`pid`
    /// 0) and is ignored; the supervisor reaps it whenever it ends.
    fn abandon(&mut self) {
        // Release pairs with the Acquire loads of `shutdown` in the worker's
        // serving loop (`Server::run` in worker.rs).
        self.slot.shutdown().store(1, Ordering::Release);
        park::wake(self.slot.sleeping());
        self.phase = Phase::Stopped;
        self.pid = 0;
        self.pidfd = None;
        self.running = None;
        self.timed_out = None;
        self.starting_since = None;
    }

    /// Whether tasks may be pushed into this worker's ring. Only once it is
    /// serving: a worker still starting (an initializer that hangs) would
    /// hold them where balancing and timeouts do not look.
    fn accepts_tasks(&self) -> bool {
        self.phase == Phase::Ready
            && self.budget_left > 0
            && !self.violated
            && self.stalled_at.is_none()
    }

    /// Resets the slot for a new process. Only once the old one is reaped.
    fn reset(&mut self, budget: u64) {
        self.slot.task_ring().reset();
        self.slot.result_ring().reset();
        self.slot.state().store(state::STARTING, Ordering::Relaxed);
        self.slot.fail_code().store(fail::NONE, Ordering::Relaxed);
        self.slot.fail_detail().store(0, Ordering::Relaxed);
        self.slot.shutdown().store(0, Ordering::Relaxed);
        self.slot.pid().store(0, Ordering::Relaxed);
        self.tasks = Producer::new(self.slot.task_ring());
        self.results = match self.results.position_mirror() {
            Some(mirror) => Consumer::with_position_mirror(self.slot.result_ring(), mirror),
            None => Consumer::new(self.slot.result_ring()),
        };
        self.budget_left = budget;
        self.violated = false;
        self.pid = 0;
        self.pidfd = None;
        self.lone = None;
        self.stalled_at = None;
        // A replacement starts with the default window, not its
        // predecessor's: that one may have been killed in a long task
        // (a timeout, a crash) after a flood of tiny ones had set its
        // window to 1024, and the killed task never updated the measure
        // (review 28). Relaxed: the process that writes the word next is
        // started after this, through the supervisor.
        self.window = tasks::DEFAULT_WINDOW;
        self.slot.task_ns().store(0, Ordering::Relaxed);
    }
}

/// What a drive pass asks the caller to do outside the lock.
#[derive(Debug, Default)]
pub(super) struct Actions {
    /// Outcomes to deliver. One inline: a pass that collects an `apply`'s
    /// result allocates nothing for it (a heap buffer per pass cost an
    /// allocation and a free between the result's arrival and the caller's
    /// next task).
    pub completions: smallvec::SmallVec<[(Sink, Outcome); 1]>,
    /// Slots to (re)start: index, CPUs, not before.
    pub spawn: Vec<(usize, Option<CpuMask>, Instant)>,
    /// Something changed that lifecycle waiters care about.
    pub lifecycle_changed: bool,
    /// Anything at all happened.
    pub progress: bool,
}

/// The parent's view of the whole pool.
#[derive(Debug)]
pub(super) struct Core {
    pub pending: VecDeque<Task>,
    /// The id the next submitted task gets: counted under the pool's lock,
    /// which the submitter holds anyway (an atomic beside the driver's
    /// flags cost a contended line per task).
    next_id: u64,
    pub workers: Vec<Worker>,
    /// Accepting new tasks.
    pub open: bool,
    /// `terminate` was called: nothing is restarted, everything is cancelled.
    pub terminating: bool,
    /// Workers were told to exit once idle (after `close` and the last result).
    pub shutdown_sent: bool,
    /// Tasks submitted and not yet answered.
    pub outstanding: usize,
    /// Set while every slot rests after failed starts (no worker can run a
    /// task): new tasks fail with it. Cleared when a worker is ready again.
    pub fatal: Option<Error>,
    pub max_tasks_per_child: u64,
    /// How many times a task whose worker died is run again.
    pub retries: u32,
    /// Kill a worker whose task runs longer than this.
    pub task_timeout: Option<Duration>,
    /// When the earliest running task overruns its timeout: the driver
    /// must look again by then.
    task_deadline: Option<Instant>,
    /// Kill a worker that has not attached this long after it was started.
    pub start_timeout: Option<Duration>,
    /// When the earliest starting worker overruns the start timeout.
    start_deadline: Option<Instant>,
    /// When the earliest resting slot is to be tried again.
    rest_deadline: Option<Instant>,
    /// When balancing must look again at a worker's lone task that has not
    /// started (see `Core::stuck_lone_task`).
    lone_deadline: Option<Instant>,
    /// The same moment read from both clocks when the core was made:
    /// converts a `sys::coarse_now` reading into an `Instant` with no
    /// precise clock read.
    epoch: (Instant, Duration),
    /// Tasks submitted and not answered, at most (`usize::MAX`: no bound);
    /// see [`crate::PoolBuilder::max_queued`].
    pub max_queued: usize,
    /// Counters for [`crate::Pool::stats`].
    pub stats: crate::pool::PoolStats,
    claimed: Vec<Claimed>,
    buf: Vec<u8>,
}

/// What a pool does when workers fail: see [`crate::PoolBuilder`].
#[derive(Clone, Copy, Debug)]
pub(super) struct FaultPolicy {
    pub max_tasks_per_child: u64,
    pub retries: u32,
    pub task_timeout: Option<Duration>,
    pub start_timeout: Option<Duration>,
    pub max_queued: usize,
}

impl Core {
    /// Per worker, where the parent's claim position in its result ring is
    /// mirrored: for `Shared::has_work`, which asks without the lock whether
    /// results wait (`ring::RingMemory::has_record_at`). Parent memory, so
    /// that no worker can make the answer "yes" for ever.
    pub(super) fn result_position_mirrors(&self) -> Vec<Option<Arc<std::sync::atomic::AtomicU32>>> {
        self.workers
            .iter()
            .map(|w| w.results.position_mirror())
            .collect()
    }

    pub(super) fn new(workers: Vec<Worker>, policy: FaultPolicy) -> Self {
        Self {
            pending: VecDeque::new(),
            next_id: 1,
            workers,
            open: true,
            terminating: false,
            shutdown_sent: false,
            outstanding: 0,
            fatal: None,
            max_tasks_per_child: policy.max_tasks_per_child,
            retries: policy.retries,
            task_timeout: policy.task_timeout,
            task_deadline: None,
            start_timeout: policy.start_timeout,
            start_deadline: None,
            rest_deadline: None,
            lone_deadline: None,
            epoch: (Instant::now(), crate::sys::coarse_now()),
            max_queued: policy.max_queued,
            stats: Default::default(),
            claimed: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// When the driver must look again even if nothing wakes it: the
    /// earliest task, start or rest deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [
            self.task_deadline,
            self.start_deadline,
            self.rest_deadline,
            self.lone_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn budget(&self) -> u64 {
        if self.max_tasks_per_child == 0 {
            u64::MAX
        } else {
            self.max_tasks_per_child
        }
    }

    /// Queues a task (see [`Task::new`]) under a fresh id; dispatching
    /// happens in [`drive`](Self::drive) or
    /// [`dispatch_pending`](Self::dispatch_pending).
    pub(super) fn submit(
        &mut self,
        trampoline: i64,
        payload: Payload,
        sink: Sink,
        keep: Option<Arc<crate::wire::KeepAlive>>,
        spill: Option<Arc<crate::shm::spill::Held>>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.outstanding += 1;
        self.pending
            .push_back(Task::new(id, trampoline, payload, sink, keep, spill));
    }

    /// Moves queued tasks into rings: the cheap part of a pass, for the
    /// submission path. It collects nothing and kills nothing (collecting
    /// and timeout kills are left to the driver and to waiters): the
    /// submitting thread may be the callback thread, where nothing may
    /// collect (design.md, "Callbacks run on a thread of their own").
    pub(super) fn dispatch_pending(&mut self, actions: &mut Actions) {
        self.dispatch(actions);
        if self.task_timeout.is_some() {
            // What was just pushed must be timed: a deadline (or a look
            // again soon; for a task overdue already, its deadline, past),
            // which `finish_pass` hands to the sleeping driver.
            self.time_tasks(actions);
        }
    }

    /// All workers gone for good.
    pub(super) fn all_stopped(&self) -> bool {
        self.workers.iter().all(|w| w.phase == Phase::Stopped)
    }

    /// One pass: apply supervisor events, notice started workers, collect
    /// results, dispatch, balance, and shut down when closed and done.
    pub(super) fn drive(&mut self, events: Vec<Event>, actions: &mut Actions) {
        if !self.terminating && crate::child::exit_hook::exit_began() {
            // The program is exiting and its exit hook kills every worker:
            // what was unfinished is cancelled, as by `terminate`, rather
            // than failed with a death (whose message would blame the OOM
            // killer) or retried on a replacement the exit refuses (user
            // trial 30).
            self.terminate(actions);
        }
        for event in events {
            self.on_event(event, actions);
        }
        for i in 0..self.workers.len() {
            self.check_started(i, actions);
        }
        self.check_start_timeouts(actions);
        self.wake_rested(actions);
        for i in 0..self.workers.len() {
            if matches!(self.workers[i].phase, Phase::Ready | Phase::Dying) {
                self.collect_results(i, actions);
            }
        }
        self.dispatch(actions);
        if self.pending.is_empty() {
            self.balance(actions);
        }
        if self.task_timeout.is_some() {
            // After dispatching, so that the tasks this pass pushed get a
            // deadline (or a look again soon) too. Tasks pushed to a worker
            // killed here were never taken: they are requeued. The tasks it
            // takes back before a kill wait in the queue for the next pass,
            // at once: this one reports progress, and only drive passes
            // (the driver's, a waiting `get`'s) run it.
            self.check_timeouts(actions);
        }
        if !self.open && self.outstanding == 0 && !self.shutdown_sent {
            self.shutdown_sent = true;
            for w in &mut self.workers {
                // Release pairs with the Acquire loads in the worker's
                // serving loop (`Server::run` in worker.rs).
                w.slot.shutdown().store(1, Ordering::Release);
                park::wake(w.slot.sleeping());
                if matches!(w.phase, Phase::Spawning | Phase::Resting) {
                    w.phase = Phase::Stopped;
                }
            }
            actions.lifecycle_changed = true;
        }
    }

    /// Fails every pending and in-flight task with `error`.
    pub(super) fn fail_everything(&mut self, error: &Error, actions: &mut Actions) {
        for task in self.pending.drain(..) {
            actions
                .completions
                .push((task.sink, Outcome::Err(error.clone())));
            self.outstanding -= 1;
        }
        for w in &mut self.workers {
            for f in w.in_flight.drain(..) {
                // Its worker is killed or given up after this, not dead yet.
                f.keep_spill_for_ever();
                actions
                    .completions
                    .push((f.sink, Outcome::Err(error.clone())));
                self.outstanding -= 1;
            }
        }
        actions.progress = true;
        actions.lifecycle_changed = true;
    }

    /// Cancels everything and kills every worker (`terminate`).
    pub(super) fn terminate(&mut self, actions: &mut Actions) {
        self.open = false;
        self.terminating = true;
        self.fail_everything(&Error::Cancelled, actions);
        for w in &mut self.workers {
            match w.phase {
                Phase::Starting | Phase::Ready | Phase::Dying => {
                    if w.kill() {
                        w.phase = Phase::Dying;
                    } else {
                        w.abandon();
                        self.stats.abandoned += 1;
                    }
                }
                Phase::Spawning => {} // killed when its Spawned event arrives
                Phase::Resting => w.phase = Phase::Stopped, // no process
                Phase::Stopped => {}
            }
        }
    }
}
