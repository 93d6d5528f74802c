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

use super::handle::{Outcome, Sink};
use super::supervisor::Event;
use crate::error::{Error, ExitCause};
use crate::pool::layout::{fail, state, Slot};
use crate::shm::park;
use crate::shm::ring::{Claimed, Consumer, Producer, RecordHeader, RingError};
use crate::wire::task::{failure, kind};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Tasks pushed to one worker and not yet answered, at most.
const WINDOW: usize = 256;
/// Results collected from one worker per pass, at most.
const COLLECT_BATCH: usize = 256;
/// Consecutive failed starts of one slot before the pool gives up on it.
pub(crate) const MAX_START_FAILURES: u32 = 3;

/// A task waiting in the parent or travelling to a worker.
#[derive(Debug)]
pub(crate) struct Task {
    pub id: u64,
    pub trampoline: i64,
    pub payload: crate::wire::Payload,
    pub sink: Sink,
    /// Runs so far that ended with the worker's death (see `retries`).
    pub attempts: u32,
    /// What the arguments refer to and must outlive the task (shared by the
    /// tasks of one submission). Never read: holding it is the point.
    #[allow(dead_code)]
    pub keep: Option<std::sync::Arc<crate::wire::KeepAlive>>,
}

#[derive(Debug)]
struct InFlight {
    position: u32,
    task: Task,
}

/// Where a worker slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Asked the supervisor to start it.
    Spawning,
    /// Running, not yet attached.
    Starting,
    /// Serving.
    Ready,
    /// Killed or exiting; waiting for the supervisor to reap it.
    Dying,
    /// Gone and not coming back.
    Stopped,
}

#[derive(Debug)]
pub(crate) struct Worker {
    pub slot: Slot,
    pub cpu: Option<usize>,
    pub pid: i32,
    pub phase: Phase,
    tasks: Producer,
    results: Consumer,
    in_flight: VecDeque<InFlight>,
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
}

impl Worker {
    pub(crate) fn new(slot: Slot, cpu: Option<usize>, budget: u64) -> Self {
        slot.task_ring().reset();
        slot.result_ring().reset();
        Self {
            slot,
            cpu,
            pid: 0,
            phase: Phase::Spawning,
            tasks: Producer::new(slot.task_ring()),
            results: Consumer::new(slot.result_ring()),
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
        }
    }

    fn accepts_tasks(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready)
            && self.budget_left > 0
            && !self.violated
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
        self.results = Consumer::new(self.slot.result_ring());
        self.budget_left = budget;
        self.violated = false;
        self.pid = 0;
    }
}

/// What a drive pass asks the caller to do outside the lock.
#[derive(Debug, Default)]
pub(crate) struct Actions {
    /// Outcomes to deliver.
    pub completions: Vec<(Sink, Outcome)>,
    /// Slots to (re)start: index, CPU, not before.
    pub spawn: Vec<(usize, Option<usize>, Instant)>,
    /// Something changed that lifecycle waiters care about.
    pub lifecycle_changed: bool,
    /// Anything at all happened.
    pub progress: bool,
}

/// The parent's view of the whole pool.
#[derive(Debug)]
pub(crate) struct Core {
    pub pending: VecDeque<Task>,
    pub workers: Vec<Worker>,
    /// Accepting new tasks.
    pub open: bool,
    /// `terminate` was called: nothing is restarted, everything is cancelled.
    pub terminating: bool,
    /// Workers were told to exit once idle (after `close` and the last result).
    pub shutdown_sent: bool,
    /// Tasks submitted and not yet answered.
    pub outstanding: usize,
    /// Set when no worker can be started any more; new tasks fail with it.
    pub fatal: Option<Error>,
    pub max_tasks_per_child: u64,
    /// How many times a task whose worker died is run again.
    pub retries: u32,
    /// Kill a worker whose task runs longer than this.
    pub task_timeout: Option<Duration>,
    /// When the earliest running task overruns its timeout: the driver
    /// must look again by then.
    pub next_deadline: Option<Instant>,
    /// Counters for [`crate::Pool::stats`].
    pub stats: crate::pool::PoolStats,
    claimed: Vec<Claimed>,
    buf: Vec<u8>,
}

/// What a pool does when workers fail: see [`crate::PoolBuilder`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FaultPolicy {
    pub max_tasks_per_child: u64,
    pub retries: u32,
    pub task_timeout: Option<Duration>,
}

impl Core {
    pub(crate) fn new(workers: Vec<Worker>, policy: FaultPolicy) -> Self {
        Self {
            pending: VecDeque::new(),
            workers,
            open: true,
            terminating: false,
            shutdown_sent: false,
            outstanding: 0,
            fatal: None,
            max_tasks_per_child: policy.max_tasks_per_child,
            retries: policy.retries,
            task_timeout: policy.task_timeout,
            next_deadline: None,
            stats: Default::default(),
            claimed: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn budget(&self) -> u64 {
        if self.max_tasks_per_child == 0 {
            u64::MAX
        } else {
            self.max_tasks_per_child
        }
    }

    /// Queues a task; dispatching happens in [`drive`](Self::drive) or
    /// [`dispatch_pending`](Self::dispatch_pending).
    pub(crate) fn submit(&mut self, task: Task) {
        self.outstanding += 1;
        self.pending.push_back(task);
    }

    /// Moves queued tasks into rings: the cheap part of a pass, for the
    /// submission path (collecting is left to the driver and to waiters).
    pub(crate) fn dispatch_pending(&mut self, actions: &mut Actions) {
        self.dispatch(actions);
        if self.task_timeout.is_some() {
            // What was just pushed must be timed: a deadline (or a look
            // again soon), which `finish_pass` hands to the sleeping driver.
            self.check_timeouts(actions);
        }
    }

    /// All workers gone for good.
    pub(crate) fn all_stopped(&self) -> bool {
        self.workers.iter().all(|w| w.phase == Phase::Stopped)
    }

    /// One pass: apply supervisor events, notice started workers, collect
    /// results, dispatch, balance, and shut down when closed and done.
    pub(crate) fn drive(&mut self, events: Vec<Event>, actions: &mut Actions) {
        for event in events {
            self.on_event(event, actions);
        }
        for i in 0..self.workers.len() {
            self.check_started(i, actions);
        }
        for i in 0..self.workers.len() {
            if matches!(self.workers[i].phase, Phase::Ready | Phase::Dying) {
                self.collect(i, actions);
            }
        }
        self.dispatch(actions);
        if self.pending.is_empty() {
            self.balance(actions);
        }
        if self.task_timeout.is_some() {
            // After dispatching, so that the tasks this pass pushed get a
            // deadline (or a look again soon) too. Tasks pushed to a worker
            // killed here were never taken: they are requeued.
            self.check_timeouts(actions);
        }
        if !self.open && self.outstanding == 0 && !self.shutdown_sent {
            self.shutdown_sent = true;
            for w in &mut self.workers {
                // Release pairs with the Acquire loads in the worker's
                // serving loop (`Server::run` in worker.rs).
                w.slot.shutdown().store(1, Ordering::Release);
                park::wake(w.slot.sleeping());
                if w.phase == Phase::Spawning {
                    w.phase = Phase::Stopped;
                }
            }
            actions.lifecycle_changed = true;
        }
    }

    fn on_event(&mut self, event: Event, actions: &mut Actions) {
        actions.progress = true;
        actions.lifecycle_changed = true;
        match event {
            Event::Spawned { index, pid } => {
                let w = &mut self.workers[index];
                w.pid = pid;
                w.phase = if self.terminating {
                    crate::sys::kill_group(pid, crate::sys::Signal::KILL);
                    Phase::Dying
                } else {
                    Phase::Starting
                };
            }
            Event::SpawnFailed { index, error } => {
                let w = &mut self.workers[index];
                w.start_failures += 1;
                w.start_error = Some(error);
                self.after_exit(index, actions);
            }
            Event::Exited { index, pid, cause } => {
                if self.workers[index].pid != pid {
                    return;
                }
                self.on_exit(index, pid, cause, actions);
            }
        }
    }

    fn check_started(&mut self, index: usize, actions: &mut Actions) {
        let w = &mut self.workers[index];
        if w.phase != Phase::Starting {
            return;
        }
        // Acquire pairs with the worker's Release store of `state`.
        match w.slot.state().load(Ordering::Acquire) {
            // A worker may serve its whole quota and retire before we look.
            state::READY | state::RETIRING => {
                w.phase = Phase::Ready;
                w.start_failures = 0;
                w.start_error = None;
                if let Some(died) = w.replacing_since.take() {
                    self.stats.record_replacement(died.elapsed());
                }
                actions.progress = true;
                actions.lifecycle_changed = true;
            }
            state::FAILED => {
                // The worker exits by itself; its exit event does the rest.
                let code = w.slot.fail_code().load(Ordering::Relaxed);
                let reason = match code {
                    fail::BINARY_MISMATCH => {
                        w.start_error = Some(Error::BinaryMismatch {
                            parent: crate::child::fingerprint::fingerprint(),
                            worker: w.slot.fail_detail().load(Ordering::Relaxed),
                        });
                        w.phase = Phase::Dying;
                        actions.progress = true;
                        return;
                    }
                    fail::INITIALIZER_FAILED => {
                        let mut claimed = Vec::new();
                        let mut message = String::from("the initializer failed");
                        if let Ok(1) = w.results.claim(1, &mut claimed) {
                            // The worker's own sentence ("the initializer
                            // panicked: ..."), cut to a sane length.
                            w.results.read_payload(&claimed[0], &mut self.buf);
                            message =
                                String::from_utf8_lossy(&self.buf[..self.buf.len().min(4096)])
                                    .into_owned();
                        }
                        message
                    }
                    _ => "it could not attach to the shared segment".to_string(),
                };
                w.start_error = Some(Error::WorkerStart { index, reason });
                w.phase = Phase::Dying;
                actions.progress = true;
            }
            _ => {}
        }
    }

    fn on_exit(&mut self, index: usize, pid: i32, cause: ExitCause, actions: &mut Actions) {
        // It may have started, served and exited since the last pass.
        self.check_started(index, actions);
        let was = self.workers[index].phase;
        if was == Phase::Ready || was == Phase::Dying {
            // Results published before the death are good: take them first.
            self.collect(index, actions);
        }
        let w = &mut self.workers[index];
        let started = was == Phase::Ready || (was == Phase::Dying && w.start_error.is_none());
        // A worker SIGKILLed while starting was killed from outside (a chaos
        // test, the OOM killer), not broken: it restarts with back-off but
        // does not count towards giving the slot up. Anything else that ends
        // a start (a reported failure, an exit, a crash) does.
        let killed_from_outside =
            w.start_error.is_none() && cause == ExitCause::Signal(crate::sys::SIGKILL);
        if !started && !self.terminating && !self.shutdown_sent && !killed_from_outside {
            w.start_failures += 1;
            if w.start_error.is_none() {
                w.start_error = Some(Error::WorkerStart {
                    index,
                    reason: format!(
                        "process {pid} {cause} before attaching; is `corepool::init()` the first statement of `main`?"
                    ),
                });
            }
        }
        // Split the in-flight list by each record's ownership tag: a task the
        // dead worker had started (TAKEN) and not answered fails; the rest
        // never started and are requeued. Results are published after every
        // task, so after the collect above at most one task is TAKEN.
        let ring = w.tasks.memory();
        let violated = w.violated;
        let mut requeue = Vec::new();
        while let Some(f) = w.in_flight.pop_front() {
            let taken = violated || !is_waiting(&ring, f.position);
            let mut task = f.task;
            if !taken {
                requeue.push(task);
            } else if w.timed_out == Some(task.id) {
                self.outstanding -= 1;
                let after = self.task_timeout.unwrap_or_default();
                actions
                    .completions
                    .push((task.sink, Outcome::Err(Error::TaskTimedOut { after })));
            } else if task.attempts < self.retries && !violated {
                // For idempotent work: run it again, on whichever worker.
                task.attempts += 1;
                requeue.push(task);
            } else {
                self.outstanding -= 1;
                actions.completions.push((
                    task.sink,
                    Outcome::Err(Error::WorkerDied {
                        pid,
                        cause: cause.clone(),
                    }),
                ));
            }
        }
        for task in requeue.into_iter().rev() {
            self.pending.push_front(task);
        }
        // A planned exit (retirement, shutdown, or our kill for a task
        // timeout: the task's fault, not the worker's) resets the streak; any
        // other death lengthens it, and with it the wait before the next
        // respawn.
        let w = &mut self.workers[index];
        // Acquire pairs with the worker's Release store of RETIRING
        // (`Server::run` in worker.rs).
        let planned = w.timed_out.is_some()
            || (cause == ExitCause::Code(0)
                && (self.shutdown_sent
                    || w.slot.state().load(Ordering::Acquire) == state::RETIRING));
        w.crash_streak = if planned { 0 } else { w.crash_streak + 1 };
        w.replacing_since = Some(Instant::now());
        w.running = None;
        w.timed_out = None;
        self.after_exit(index, actions);
    }

    /// Decides whether a slot whose process is gone gets a new one.
    fn after_exit(&mut self, index: usize, actions: &mut Actions) {
        let budget = self.budget();
        let wanted = !self.terminating && !self.shutdown_sent;
        let w = &mut self.workers[index];
        w.reset(budget);
        if !wanted {
            w.phase = Phase::Stopped;
        } else if w.start_failures >= MAX_START_FAILURES {
            w.phase = Phase::Stopped;
            if self.workers.iter().all(|w| w.phase == Phase::Stopped) {
                let error = self.workers[index]
                    .start_error
                    .clone()
                    .unwrap_or(Error::WorkerStart {
                        index,
                        reason: "it failed to start repeatedly".into(),
                    });
                self.fail_everything(&error, actions);
                self.fatal = Some(error);
            }
        } else {
            w.phase = Phase::Spawning;
            self.stats.respawns += 1;
            actions
                .spawn
                .push((index, w.cpu, Instant::now() + backoff(w.crash_streak)));
        }
    }

    /// Fails every pending and in-flight task with `error`.
    pub(crate) fn fail_everything(&mut self, error: &Error, actions: &mut Actions) {
        for task in self.pending.drain(..) {
            actions
                .completions
                .push((task.sink, Outcome::Err(error.clone())));
            self.outstanding -= 1;
        }
        for w in &mut self.workers {
            for f in w.in_flight.drain(..) {
                actions
                    .completions
                    .push((f.task.sink, Outcome::Err(error.clone())));
                self.outstanding -= 1;
            }
        }
        actions.progress = true;
        actions.lifecycle_changed = true;
    }

    /// Kills a worker that broke the protocol and fails its tasks.
    fn violation(&mut self, index: usize, err: RingError, actions: &mut Actions) {
        let w = &mut self.workers[index];
        let what = match err {
            RingError::Violation(what) => what,
            RingError::TooLarge { .. } => "oversized record",
        };
        crate::sys::kill_group(w.pid, crate::sys::Signal::KILL);
        w.violated = true;
        w.phase = Phase::Dying;
        let pid = w.pid;
        for f in w.in_flight.drain(..) {
            self.outstanding -= 1;
            actions.completions.push((
                f.task.sink,
                Outcome::Err(Error::ProtocolViolation { pid, what }),
            ));
        }
        actions.progress = true;
    }

    fn collect(&mut self, index: usize, actions: &mut Actions) {
        if self.workers[index].violated {
            return;
        }
        loop {
            let mut claimed = std::mem::take(&mut self.claimed);
            claimed.clear();
            let w = &mut self.workers[index];
            let n = match w.results.claim(COLLECT_BATCH, &mut claimed) {
                Ok(n) => n,
                Err(e) => {
                    self.claimed = claimed;
                    return self.violation(index, e, actions);
                }
            };
            if n == 0 {
                self.claimed = claimed;
                w.results.release();
                return;
            }
            for record in &claimed {
                let w = &mut self.workers[index];
                let matches = w
                    .in_flight
                    .front()
                    .is_some_and(|f| f.task.id == record.header.id);
                if !matches {
                    self.claimed = claimed;
                    return self.violation(
                        index,
                        RingError::Violation("result for a task the worker was not given"),
                        actions,
                    );
                }
                let task = w.in_flight.pop_front().expect("front checked above").task;
                let outcome = match decode_result(&w.results, record, &mut self.buf) {
                    Ok(outcome) => outcome,
                    Err(what) => {
                        // Put it back so the violation handler fails it too.
                        w.in_flight.push_front(InFlight { position: 0, task });
                        self.claimed = claimed;
                        return self.violation(index, RingError::Violation(what), actions);
                    }
                };
                self.outstanding -= 1;
                actions.completions.push((task.sink, outcome));
            }
            let w = &mut self.workers[index];
            w.results.release();
            w.crash_streak = 0;
            // The worker may be waiting for room in its result ring.
            park::wake(w.slot.sleeping());
            actions.progress = true;
            self.claimed = claimed;
        }
    }

    fn dispatch(&mut self, actions: &mut Actions) {
        if self.pending.is_empty() {
            return;
        }
        for w in &mut self.workers {
            w.touched = false;
            w.full = false;
        }
        while let Some(task) = self.pending.pop_front() {
            let target = self
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.accepts_tasks() && !w.full && w.in_flight.len() < WINDOW)
                .min_by_key(|(_, w)| w.in_flight.len())
                .map(|(i, _)| i);
            let Some(i) = target else {
                self.pending.push_front(task);
                break;
            };
            let w = &mut self.workers[i];
            let header = RecordHeader {
                kind: kind::TASK,
                id: task.id,
                aux: task.trampoline as u64,
                ..Default::default()
            };
            match w.tasks.write(header, &task.payload) {
                Ok(Some(position)) => {
                    w.in_flight.push_back(InFlight { position, task });
                    w.budget_left -= 1;
                    w.touched = true;
                }
                Ok(None) => {
                    w.full = true;
                    self.pending.push_front(task);
                }
                Err(RingError::TooLarge { record, max }) => {
                    // Submission checks sizes, so this is only reachable if
                    // rings differ in size; fail the task, not the pool.
                    self.outstanding -= 1;
                    actions.completions.push((
                        task.sink,
                        Outcome::Err(Error::ArgumentTooLarge { size: record, max }),
                    ));
                }
                Err(e) => {
                    self.pending.push_front(task);
                    self.violation(i, e, actions);
                }
            }
        }
        for i in 0..self.workers.len() {
            if self.workers[i].touched {
                let w = &mut self.workers[i];
                if let Err(e) = w.tasks.publish() {
                    self.violation(i, e, actions);
                    continue;
                }
                park::wake(w.slot.sleeping());
                actions.progress = true;
            }
        }
    }

    /// Moves queued tasks from a worker that has a backlog to one that has none,
    /// so that a few long tasks never leave a core idle while tasks wait.
    ///
    /// A task pushed to a worker stays the parent's to take back until the
    /// worker starts it: both sides CAS the record's ownership tag (`TASK` to
    /// `CANCELLED` here, `TASK` to `TAKEN` in the worker) and one wins. Tasks
    /// a worker has claimed in a batch but not started can be moved too.
    fn balance(&mut self, actions: &mut Actions) {
        let someone_idle = self
            .workers
            .iter()
            .any(|w| w.accepts_tasks() && w.phase == Phase::Ready && w.in_flight.is_empty());
        if !someone_idle {
            return;
        }
        let mut best: Option<(usize, usize)> = None; // (worker, not started)
        for (i, w) in self.workers.iter().enumerate() {
            if w.phase != Phase::Ready || w.in_flight.is_empty() || w.violated {
                continue;
            }
            let ring = w.tasks.memory();
            // The worker starts tasks in order: the unstarted ones are a suffix.
            let waiting = w
                .in_flight
                .iter()
                .rev()
                .take_while(|f| is_waiting(&ring, f.position))
                .count();
            let busy = w.in_flight.len() > waiting;
            if (waiting >= 2 || (waiting >= 1 && busy)) && best.is_none_or(|(_, n)| waiting > n) {
                best = Some((i, waiting));
            }
        }
        let Some((donor, waiting)) = best else { return };
        let w = &mut self.workers[donor];
        let ring = w.tasks.memory();
        let mut moved = Vec::new();
        for _ in 0..waiting.div_ceil(2) {
            let Some(last) = w.in_flight.back() else {
                break;
            };
            // Not released (checked by `is_waiting` above, and only this thread
            // writes new records), so the tag is still this task's.
            let Some(tag) = ring.record_kind(last.position) else {
                break;
            };
            // AcqRel pairs with the worker's AcqRel CAS in `Server::run`:
            // exactly one of the two takes the task.
            if tag
                .compare_exchange(
                    kind::TASK,
                    kind::CANCELLED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                break; // the worker started it, and so every task before it
            }
            moved.push(w.in_flight.pop_back().expect("back checked above").task);
        }
        if moved.is_empty() {
            return;
        }
        w.budget_left = w.budget_left.saturating_add(moved.len() as u64);
        // `moved` is newest first: push_front keeps the original order.
        for task in moved {
            self.pending.push_front(task);
        }
        actions.progress = true;
        self.dispatch(actions);
    }

    /// Kills a worker whose task has run longer than the task timeout; its
    /// exit event fails that task with [`Error::TaskTimedOut`].
    fn check_timeouts(&mut self, actions: &mut Actions) {
        let Some(limit) = self.task_timeout else {
            return;
        };
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for w in &mut self.workers {
            if w.phase != Phase::Ready || w.timed_out.is_some() {
                continue;
            }
            let ring = w.tasks.memory();
            // Results come back in order, so the running task is the front.
            let running = w
                .in_flight
                .front()
                .filter(|f| !is_waiting(&ring, f.position));
            let Some(front) = running else {
                w.running = None;
                if !w.in_flight.is_empty() {
                    // The front still waits to be taken. The worker takes it
                    // without telling us, so no wake-up may come before it
                    // runs for ever: look again soon.
                    let soon = now + TIMEOUT_POLL.min(limit);
                    next = Some(next.map_or(soon, |n| n.min(soon)));
                }
                continue;
            };
            let since = match w.running {
                Some((id, since)) if id == front.task.id => since,
                _ => {
                    w.running = Some((front.task.id, now));
                    now
                }
            };
            // A limit past what an `Instant` holds never expires.
            let Some(deadline) = since.checked_add(limit) else {
                continue;
            };
            if now >= deadline {
                w.timed_out = Some(front.task.id);
                crate::sys::kill_group(w.pid, crate::sys::Signal::KILL);
                w.phase = Phase::Dying;
                actions.progress = true;
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        self.next_deadline = next;
    }

    /// Cancels everything and kills every worker (`terminate`).
    pub(crate) fn terminate(&mut self, actions: &mut Actions) {
        self.open = false;
        self.terminating = true;
        self.fail_everything(&Error::Cancelled, actions);
        for w in &mut self.workers {
            match w.phase {
                Phase::Starting | Phase::Ready | Phase::Dying => {
                    crate::sys::kill_group(w.pid, crate::sys::Signal::KILL);
                    w.phase = Phase::Dying;
                }
                Phase::Spawning => {} // killed when its Spawned event arrives
                Phase::Stopped => {}
            }
        }
    }
}

/// Whether the in-flight task record at `position` still waits to be started
/// (its tag is TASK). A record below the release position was decided (the
/// worker releases a batch only once every tag in it is), and since cancelled
/// records leave the in-flight list, it was taken; its bytes may already
/// hold a newer record, so its tag is not read.
fn is_waiting(ring: &crate::shm::ring::RingMemory, position: u32) -> bool {
    !ring.is_released(position)
        && ring
            .record_kind(position)
            // Acquire pairs with the worker's AcqRel tag CAS.
            .is_some_and(|tag| tag.load(Ordering::Acquire) == kind::TASK)
}

/// How long to wait before restarting a slot whose workers died `streak`
/// times in a row: at once for the first death, then 10 ms doubling to 1 s,
/// so that a task that kills every worker cannot make a fork loop.
/// How soon the driver looks again for a task that waited to be taken at its
/// last look, when tasks have a timeout: the timeout's resolution then.
const TIMEOUT_POLL: Duration = Duration::from_millis(1);

fn backoff(streak: u32) -> Duration {
    match streak {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(10u64 << (n - 2).min(7)).min(Duration::from_secs(1)),
    }
}

/// Turns one result record into an outcome; `Err` names a protocol violation.
fn decode_result(
    results: &Consumer,
    record: &Claimed,
    buf: &mut Vec<u8>,
) -> Result<Outcome, &'static str> {
    let h = record.header;
    match h.kind {
        kind::OK => Ok(Outcome::Ok(results.payload(record))),
        kind::PANICKED => {
            results.read_payload(record, buf);
            Ok(Outcome::Err(Error::Panicked {
                message: String::from_utf8_lossy(buf).into_owned(),
            }))
        }
        kind::FAILED => {
            results.read_payload(record, buf);
            let message = String::from_utf8_lossy(buf).into_owned();
            match h.flags {
                failure::RESULT_TOO_LARGE => Ok(Outcome::Err(Error::ResultTooLarge {
                    size: h.aux as usize,
                    max: results.memory().max_payload(),
                })),
                failure::TASK_ERROR => Ok(Outcome::Err(Error::Decode {
                    type_name: "task",
                    reason: message,
                })),
                failure::DECODE => Ok(Outcome::Err(Error::Decode {
                    type_name: "task arguments",
                    reason: message,
                })),
                _ => Err("unknown failure code in a result"),
            }
        }
        _ => Err("unknown record kind in the result ring"),
    }
}
