//! Tasks through the rings: dispatching queued tasks to the least loaded
//! worker, collecting and decoding results, moving tasks from a backlogged
//! worker to an idle one, killing a worker whose task overran its timeout,
//! and failing the tasks of a worker that broke the protocol.

use super::{Actions, Core, LoneTask, Phase, Worker};
use crate::error::Error;
use crate::pool::layout::RECORD_SPILLED;
use crate::pool::sink::Outcome;
use crate::shm::park;
use crate::shm::ring::{Claimed, Consumer, RecordHeader, RingError};
use crate::wire::task::{failure, kind};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How far ahead a worker is fed: tasks pushed to it and not yet answered
/// come to about this much of its work, after its own smoothed measure of
/// its tasks (`layout::Slot::task_ns`, published by the worker after each
/// timed batch).
///
/// Enough that a worker fed a flood of tiny tasks does not run dry while
/// the thread that refills its ring waits for a CPU: on two vCPUs shared by
/// the submitter, the driver and two pinned workers, a fixed window of 256
/// tiny tasks lasted a worker about 25 µs, less than the driver's wait for
/// its turn, and the worker then slept (a futex wait and a wake each time);
/// 1024 made `apply_async` 19-28% faster, with 65% fewer context switches
/// (docs/performance.md, "A deeper window"). Measured in time rather than
/// tasks, so that a worker stopped (SIGSTOP) or busy with a long task holds
/// few tasks back from the others: unstarted tasks move to another worker
/// only once that one is idle (`balance`), and a fixed 1024 held up to 1024
/// tasks of any length behind it.
const WINDOW_AHEAD_NS: u64 = 1_000_000;
/// The window's bounds: a few tasks even when they are long (one queued
/// behind the running one keeps the worker busy between the driver's
/// passes), and 1024 for the tiniest (2048 made `apply_async` no faster).
const MIN_WINDOW: usize = 4;
const MAX_WINDOW: usize = 1024;
/// Until the worker has measured its tasks: few, so that a first task that
/// runs long holds few others behind it (the window grows within a few
/// batches of tiny tasks).
pub(super) const DEFAULT_WINDOW: usize = 32;

/// Room `pending` keeps once it drains: a burst of a million queued tasks
/// (80 bytes each) kept its buffer for the pool's life (user trial 29: a
/// pool held 48 MB after a flood whose handles were all dropped).
const PENDING_KEEP: usize = 1024;

/// A worker's window for its published nanoseconds per task (0: not
/// measured yet). The word is the worker's to write, so any value is
/// possible: the result stays within the bounds.
pub(super) fn window_for(task_ns: u64) -> usize {
    if task_ns == 0 {
        return DEFAULT_WINDOW;
    }
    let ahead = WINDOW_AHEAD_NS / task_ns;
    usize::try_from(ahead).map_or(MAX_WINDOW, |n| n.clamp(MIN_WINDOW, MAX_WINDOW))
}
/// Results collected from one worker per pass, at most.
const COLLECT_BATCH: usize = 256;

impl Core {
    /// Kills a worker that broke the protocol and fails its tasks.
    fn violation(&mut self, index: usize, err: RingError, actions: &mut Actions) {
        let w = &mut self.workers[index];
        let what = match err {
            RingError::Violation(what) => what,
            RingError::TooLarge { .. } => "oversized record",
        };
        let pid = w.pid;
        for f in w.in_flight.drain(..) {
            // Its worker is killed or given up below, not dead yet.
            f.keep_spill_for_ever();
            self.outstanding -= 1;
            actions
                .completions
                .push((f.sink, Outcome::Err(Error::ProtocolViolation { pid, what })));
        }
        if w.kill() {
            w.violated = true;
            w.phase = Phase::Dying;
        } else {
            // Not ours to kill any more (EPERM: the program dropped its
            // privileges): given up, as `terminate` gives such a worker up
            // (fault-model row 20), rather than Dying for ever.
            w.abandon();
            self.stats.abandoned += 1;
        }
        actions.progress = true;
    }

    pub(super) fn collect(&mut self, index: usize, actions: &mut Actions) {
        if self.workers[index].violated {
            return;
        }
        let mut first = true;
        loop {
            let w = &mut self.workers[index];
            if !first && w.in_flight.is_empty() {
                // Every task answered: no look at the next record's line
                // now. The worker wrote it last (its zero-ahead), so the
                // look is a cache miss, and it would come between an
                // `apply`'s result and its delivery. A record there now
                // answers no task: the next pass claims it and finds the
                // violation (`Shared::has_work` sees it and asks for one).
                return;
            }
            first = false;
            // No more records than tasks in flight (at least one, so that
            // an unsolicited record is claimed and found out): the claim
            // then stops at the last answer without reading the stamp
            // beyond it (the same cache miss).
            let batch = w.in_flight.len().clamp(1, COLLECT_BATCH);
            let mut claimed = std::mem::take(&mut self.claimed);
            claimed.clear();
            let n = match w.results.claim(batch, &mut claimed) {
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
                    .is_some_and(|f| f.id == record.header.id);
                if !matches {
                    self.claimed = claimed;
                    return self.violation(
                        index,
                        RingError::Violation("result for a task the worker was not given"),
                        actions,
                    );
                }
                let entry = w.in_flight.pop_front().expect("front checked above");
                // The worker took it: its decode ended the argument's
                // transits. Unless its decode failed: then what it did not
                // reach is never decoded, and is taken back (what it had
                // decoded before the failure may then be counted down twice:
                // at worst let go early, see `shm::handle`).
                let decode_failed =
                    record.header.kind == kind::FAILED && record.header.flags == failure::DECODE;
                if !decode_failed {
                    entry.mark_delivered();
                }
                if record.header.kind == kind::OK && record.header.flags & RECORD_SPILLED != 0 {
                    // The result is in a spill the worker holds until we
                    // open it here, before the record is released.
                    w.results.read_payload(record, &mut self.buf);
                    let read = crate::shm::spill::read(&self.buf);
                    // Out of descriptors or memory here (`ulimit -n`): not
                    // the worker's doing, and no wait to see it exit.
                    let ours = read.as_ref().is_err_and(crate::shm::handle::is_own_limit);
                    let died = read.is_err() && !ours && w.has_exited();
                    match read {
                        Ok(bytes) => {
                            self.outstanding -= 1;
                            let outcome = Outcome::Ok(crate::wire::Payload::from_vec(bytes));
                            actions.completions.push((entry.sink, outcome));
                            continue;
                        }
                        Err(_) if died => {
                            // It died before we opened its result: the task
                            // is handled as any task its worker died in
                            // (`on_exit`: retried or `WorkerDied`, its tag
                            // is TAKEN), and so is what followed it.
                            self.workers[index].in_flight.push_front(entry);
                            self.claimed = claimed;
                            return;
                        }
                        Err(err) if ours => {
                            // This process is out of descriptors or memory
                            // (`ulimit -n`): the worker did nothing wrong.
                            // The task fails with the error and its advice;
                            // the worker goes on.
                            self.outstanding -= 1;
                            actions.completions.push((entry.sink, Outcome::Err(err)));
                            continue;
                        }
                        Err(_) => {
                            self.workers[index].in_flight.push_front(entry);
                            self.claimed = claimed;
                            return self.violation(
                                index,
                                RingError::Violation("a spilled result's handle does not open"),
                                actions,
                            );
                        }
                    }
                }
                let task = entry;
                // Not the answer of a task killed for its timeout: its
                // outcome becomes `TaskTimedOut` (`collect_results`), and
                // values copied into a receiver that queues them
                // (`imap_unordered`'s channel) would be handed out as the
                // next absorbed chunk's, whose own would be lost.
                let overdue = w.timed_out == Some(task.id);
                if record.header.kind == kind::OK
                    && !overdue
                    && task.sink.absorb(&w.results, record)
                {
                    // Copied into its receiver's output already.
                    self.outstanding -= 1;
                    let outcome = Outcome::Ok(crate::wire::Payload::default());
                    actions.completions.push((task.sink, outcome));
                    continue;
                }
                let outcome = match decode_result(&w.results, record, &mut self.buf) {
                    Ok(outcome) => outcome,
                    Err(what) => {
                        // Put it back so the violation handler fails it too.
                        w.in_flight.push_front(task);
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
            if !w.in_flight.is_empty() {
                // Tasks queue at this worker: size its window after its own
                // measure of them. Not on a lone `apply`'s way back (nothing
                // left in flight), where the word's line would be one more
                // cache miss.
                w.window = window_for(w.slot.task_ns().load(Ordering::Relaxed));
            }
            // The worker may be waiting for room in its result ring.
            park::wake(w.slot.sleeping());
            actions.progress = true;
            self.claimed = claimed;
        }
    }

    pub(super) fn dispatch(&mut self, actions: &mut Actions) {
        if self.pending.is_empty() {
            return;
        }
        self.unstall();
        for w in &mut self.workers {
            w.touched = false;
            w.full = false;
        }
        // Of the workers with the fewest tasks, one not pinned to the CPU
        // this thread runs on. A blocking `apply`'s caller spins for its
        // result; sent to the worker that shares its CPU, every round trip
        // became two context switches (24 µs on an AMD EPYC VM, where the
        // first worker, the tie's old winner, shared the caller's CPU in
        // most runs) instead of two cache-line transfers (0.35-0.5 µs).
        // One look per dispatch (a vDSO call), none with a single worker.
        let here = if self.workers.len() > 1 {
            crate::sys::current_cpu()
        } else {
            None
        };
        let shares_my_cpu = |w: &Worker| {
            here.is_some_and(|cpu| w.cpu.as_ref().is_some_and(|mask| mask.contains(cpu)))
        };
        while !self.pending.is_empty() {
            // The worker is chosen before the task is taken out: when every
            // window is full (a submitter far ahead of the workers), the
            // queue's front, cold memory, is left alone instead of being
            // read and written back on every submission.
            let target = self
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.accepts_tasks() && !w.full && w.in_flight.len() < w.window)
                .min_by_key(|(_, w)| (w.in_flight.len(), shares_my_cpu(w)))
                .map(|(i, _)| i);
            let Some(i) = target else {
                break;
            };
            let Some(task) = self.pending.pop_front() else {
                break;
            };
            let w = &mut self.workers[i];
            let header = RecordHeader {
                kind: kind::TASK,
                id: task.id,
                aux: task.trampoline as u64,
                flags: if task.spilled() { RECORD_SPILLED } else { 0 },
                ..Default::default()
            };
            match w.tasks.write(header, task.arg.bytes()) {
                Ok(Some(position)) => {
                    let mut task = task;
                    task.position = position;
                    w.in_flight.push_back(task);
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
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEEP {
            self.pending.shrink_to(PENDING_KEEP);
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
    pub(super) fn balance(&mut self, actions: &mut Actions) {
        let someone_idle = self
            .workers
            .iter()
            .any(|w| w.accepts_tasks() && w.phase == Phase::Ready && w.in_flight.is_empty());
        if !someone_idle {
            self.lone_deadline = None;
            return;
        }
        let mut best: Option<(usize, usize)> = None; // (worker, not started)
        for (i, w) in self.workers.iter().enumerate() {
            // A single task is never moved (see the condition below), so skip its
            // ring: reading its record would pull the line from the worker's
            // core on every helping pass of an `apply`.
            if w.phase != Phase::Ready || w.in_flight.len() < 2 || w.violated {
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
        let (donor, waiting) = match best {
            Some(found) => found,
            None => match self.stuck_lone_task() {
                Some(donor) => (donor, 1),
                None => return,
            },
        };
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
            moved.push(w.in_flight.pop_back().expect("back checked above"));
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

    /// A worker holding one task it has not started for
    /// [`LONE_TASK_PATIENCE`] while another is idle: the worker is stopped
    /// (SIGSTOP) or starved of CPU, since a serving one starts a task within
    /// microseconds, and the task goes to the idle one instead of waiting
    /// for it (a user trial's task waited 15 s beside an idle worker, until
    /// the stopped one was continued). The donor takes no task until it has
    /// moved past the one taken back.
    ///
    /// Timed with the coarse clock and looked at only once per patience
    /// period: a blocking `apply` (one busy worker, one idle) pays a few
    /// nanoseconds a pass, and the record's line is not pulled from the
    /// worker's core on every pass. Sets `lone_deadline` so that the driver
    /// looks again even if nothing else wakes it.
    fn stuck_lone_task(&mut self) -> Option<usize> {
        // Read only once a worker holds a lone task: the pass that collects
        // an `apply`'s result finds none, and it is on the round trip.
        let mut now: Option<Duration> = None;
        let mut next: Option<Duration> = None;
        let mut stuck = None;
        for (i, w) in self.workers.iter_mut().enumerate() {
            let lone = match w.in_flight.front() {
                Some(f) if w.in_flight.len() == 1 && w.phase == Phase::Ready && !w.violated => f,
                _ => {
                    w.lone = None;
                    continue;
                }
            };
            let now = *now.get_or_insert_with(crate::sys::coarse_now);
            let seen = match w.lone {
                Some(seen) if seen.id == lone.id => seen,
                _ => {
                    w.lone = Some(LoneTask {
                        id: lone.id,
                        since: now,
                        started: false,
                    });
                    let due = now + LONE_TASK_PATIENCE;
                    next = Some(next.map_or(due, |n| n.min(due)));
                    continue;
                }
            };
            if seen.started {
                continue;
            }
            let due = seen.since + LONE_TASK_PATIENCE;
            if now < due {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            if stuck.is_none() && is_waiting(&w.tasks.memory(), lone.position) {
                stuck = Some(i);
                w.stalled_at = Some(lone.position);
                w.lone = None;
            } else {
                w.lone = Some(LoneTask {
                    started: true,
                    ..seen
                });
            }
        }
        let (epoch, coarse_epoch) = self.epoch;
        self.lone_deadline = next.map(|n| epoch + n.saturating_sub(coarse_epoch));
        stuck
    }

    /// Lets a worker whose lone task was taken back have tasks again once
    /// it has moved past that record: it runs again (continued, or given
    /// the CPU back).
    fn unstall(&mut self) {
        for w in &mut self.workers {
            if let Some(position) = w.stalled_at {
                if w.tasks.memory().is_released(position) {
                    w.stalled_at = None;
                }
            }
        }
    }

    /// Kills a worker whose task has run longer than the task timeout; its
    /// exit event fails that task with [`Error::TaskTimedOut`]. Only on the
    /// passes that collect (the driver's, a waiting `get`'s, `close`'s):
    /// the submission path only times its tasks ([`Core::time_tasks`]).
    ///
    /// The parent's view of what a worker runs lags: the task at the front
    /// of `in_flight` may have answered since the last collect, and it may
    /// answer between the decision and the kill landing, the worker then
    /// starting the next task. Either way the kill used to land on a task
    /// that had not overrun, which got `WorkerDied` (and a retry) while the
    /// one that overran got its result (user trial 29: one timeout kill in 7
    /// to 240). So an overdue front is judged again after a collect, and
    /// before the kill the tasks queued behind it are taken back: the
    /// killed worker holds the overdue task alone.
    ///
    /// If the worker had started one of them, it must have answered the
    /// overdue task first (it publishes each result before it takes the
    /// next task), and that answer is visible now: collected at once, and
    /// the new front is timed. An answer still missing means the worker
    /// broke the protocol (shared memory is the worker's to scribble on):
    /// it is killed as a violation, rather than escaping its timeout with
    /// the driver looking again at once, for ever (review 28).
    pub(super) fn check_timeouts(&mut self, actions: &mut Actions) {
        self.timeouts(true, actions);
    }

    /// Times the tasks at the front of the workers' rings, for the
    /// submission path, which neither collects nor kills: a submitting
    /// thread may be the callback thread (a callback that submits), a tokio
    /// worker or a transport's thread, and collecting there would run
    /// decoders and `submit_raw` `done` functions on it (design.md,
    /// "Callbacks run on a thread of their own"). A task overdue here keeps
    /// its deadline, now past: `finish_pass` hands it to the driver (and
    /// rings the doorbell if it was asleep with a later one), and the
    /// driver's pass, or a waiting `get`'s, does the collect and the kill.
    pub(super) fn time_tasks(&mut self, actions: &mut Actions) {
        self.timeouts(false, actions);
    }

    /// [`check_timeouts`](Self::check_timeouts) if `act`, else
    /// [`time_tasks`](Self::time_tasks).
    fn timeouts(&mut self, act: bool, actions: &mut Actions) {
        let Some(limit) = self.task_timeout else {
            return;
        };
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut unkillable = Vec::new();
        for index in 0..self.workers.len() {
            let mut collected = false;
            // The overdue task whose queue was taken back, once the worker
            // turned out to have started a task behind it.
            let mut passed: Option<u64> = None;
            loop {
                let w = &mut self.workers[index];
                if w.phase != Phase::Ready || w.timed_out.is_some() {
                    break;
                }
                let ring = w.tasks.memory();
                // Results come back in order, so the running task is the front.
                let running = w
                    .in_flight
                    .front()
                    .filter(|f| !is_waiting(&ring, f.position))
                    .map(|f| f.id);
                let Some(id) = running else {
                    w.running = None;
                    if !w.in_flight.is_empty() {
                        // The front still waits to be taken. The worker takes
                        // it without telling us, so no wake-up may come before
                        // it runs for ever: look again soon.
                        let soon = now + TIMEOUT_POLL.min(limit);
                        next = Some(next.map_or(soon, |n| n.min(soon)));
                    }
                    break;
                };
                let since = match w.running {
                    Some((running, since)) if running == id => since,
                    _ => {
                        w.running = Some((id, now));
                        now
                    }
                };
                // A limit past what an `Instant` holds never expires.
                let Some(deadline) = since.checked_add(limit) else {
                    break;
                };
                // Overdue and not ours to judge (`time_tasks`): the deadline,
                // now past, has the driver look at once.
                if now < deadline || !act {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    break;
                }
                if !collected {
                    // Its answer may be waiting: judge what is left after
                    // taking it (a new front is timed from now).
                    collected = true;
                    self.collect(index, actions);
                    continue;
                }
                if passed == Some(id) {
                    // The worker started a task behind this one, and the
                    // collect that followed found no answer for it. An
                    // honest worker publishes each result (a Release
                    // stamp) before its AcqRel CAS of the next tag, and the
                    // take-back's failed CAS read that tag with Acquire (as
                    // `is_released` reads the release position): the answer
                    // would be visible. The worker may have died since with
                    // its answer unreadable (a spill it took with it): then
                    // its exit fails the task, as any death does.
                    if !self.workers[index].has_exited() {
                        self.violation(
                            index,
                            RingError::Violation(
                                "started a task before answering the one before it",
                            ),
                            actions,
                        );
                    }
                    break;
                }
                let (back, all) = self.workers[index].take_back_queued();
                if !back.is_empty() {
                    // The pass that follows (a drive pass is the only one
                    // that acts) dispatches them again.
                    actions.progress = true;
                }
                for task in back.into_iter().rev() {
                    self.pending.push_front(task);
                }
                if !all {
                    // It started one of them, so it answered the overdue
                    // task: collect that answer now and time the new front
                    // (no kill, and no pass again at once to do it).
                    passed = Some(id);
                    self.collect(index, actions);
                    continue;
                }
                let w = &mut self.workers[index];
                w.timed_out = Some(id);
                if w.kill() {
                    w.phase = Phase::Dying;
                } else {
                    unkillable.push(index);
                }
                actions.progress = true;
                break;
            }
        }
        self.task_deadline = next;
        for index in unkillable {
            self.give_up_timed_out(index, limit, actions);
        }
    }

    /// A worker whose task timed out but that this program may no longer
    /// kill (EPERM: it dropped its privileges since, fault-model row 20):
    /// no exit event will come to fail the task. It fails now with
    /// [`Error::TaskTimedOut`], the worker's other tasks are cancelled, and
    /// the worker is given up, as `terminate` gives such a worker up.
    fn give_up_timed_out(&mut self, index: usize, after: Duration, actions: &mut Actions) {
        let w = &mut self.workers[index];
        let timed_out = w.timed_out;
        for task in w.in_flight.drain(..) {
            // It may have decoded its argument: never take its transits back.
            // Its worker lives on: its argument's block is never reused.
            task.mark_delivered();
            task.keep_spill_for_ever();
            self.outstanding -= 1;
            let error = if Some(task.id) == timed_out {
                Error::TaskTimedOut { after, rank: None }
            } else {
                Error::Cancelled
            };
            actions.completions.push((task.sink, Outcome::Err(error)));
        }
        w.abandon();
        self.stats.abandoned += 1;
    }
}

/// Whether the in-flight task record at `position` still waits to be started
/// (its tag is TASK). A record below the release position was decided (the
/// worker releases a batch only once every tag in it is), and since cancelled
/// records leave the in-flight list, it was taken; its bytes may already
/// hold a newer record, so its tag is not read.
pub(super) fn is_waiting(ring: &crate::shm::ring::RingMemory, position: u32) -> bool {
    !ring.is_released(position)
        && ring
            .record_kind(position)
            // Acquire pairs with the worker's AcqRel tag CAS.
            .is_some_and(|tag| tag.load(Ordering::Acquire) == kind::TASK)
}

/// How long a worker's only task may wait unstarted while another worker
/// is idle before it is given to the idle one (`Core::stuck_lone_task`).
const LONE_TASK_PATIENCE: Duration = Duration::from_millis(50);

/// How soon the driver looks again for a task that waited to be taken at its
/// last look, when tasks have a timeout: the timeout's resolution then.
const TIMEOUT_POLL: Duration = Duration::from_millis(1);

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
                failure::ENCODE => Ok(Outcome::Err(Error::Encode {
                    type_name: "task result",
                    reason: message,
                })),
                _ => Err("unknown failure code in a result"),
            }
        }
        _ => Err("unknown record kind in the result ring"),
    }
}
