//! A worker slot's life as the parent sees it: the supervisor's events, a
//! start noticed (or its failure), a death and what becomes of the tasks the
//! worker held, then a restart with back-off, or a rest after repeated
//! failed starts and a try again later.
//!
//! Failed starts are counted per slot, in a row. The first
//! [`MAX_START_FAILURES`] are retried after 10 ms, doubling; then the slot
//! rests (2 s, doubling to a minute between tries) so that a persistent
//! failure costs one attempt now and then, not a fork loop, while a
//! transient one (a descriptor shortage) costs the slot only until its next
//! try. While every slot rests, no worker can run a task: pending tasks fail
//! with the last start error and new ones are refused with it, until a
//! worker is ready again.

use super::tasks::is_waiting;
use super::{Actions, Core, Phase};
use crate::error::{Error, ExitCause};
use crate::pool::layout::{fail, state};
use crate::pool::sink::Outcome;
use crate::pool::supervisor::Event;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Consecutive failed starts of one slot before it rests.
pub(crate) const MAX_START_FAILURES: u32 = 3;

/// The first rest of a slot whose starts keep failing, and the longest.
const FIRST_REST: Duration = Duration::from_secs(2);
const LONGEST_REST: Duration = Duration::from_secs(60);

impl Core {
    pub(super) fn on_event(&mut self, event: Event, actions: &mut Actions) {
        actions.progress = true;
        actions.lifecycle_changed = true;
        match event {
            Event::Spawned { index, pid, pidfd } => {
                let w = &mut self.workers[index];
                w.pid = pid;
                w.pidfd = Some(pidfd);
                w.starting_since = Some(Instant::now());
                w.phase = Phase::Starting;
                if self.terminating {
                    if w.kill() {
                        w.phase = Phase::Dying;
                    } else {
                        w.abandon();
                        self.stats.abandoned += 1;
                    }
                }
            }
            Event::SpawnFailed { index, error } => {
                let w = &mut self.workers[index];
                w.start_failures += 1;
                w.start_error = Some(error);
                self.stats.start_failures += 1;
                self.after_exit(index, actions);
            }
            Event::WatchFailed { error } => {
                self.stats.supervisor_errors += 1;
                self.stats.last_supervisor_error = Some(error);
            }
            Event::Exited { index, pid, cause } => {
                if self.workers[index].pid != pid {
                    return;
                }
                self.on_exit(index, pid, cause, actions);
            }
        }
    }

    pub(super) fn check_started(&mut self, index: usize, actions: &mut Actions) {
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
                // A worker can run tasks again: the pool takes them again.
                self.fatal = None;
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

    /// Kills a worker that has not attached within the start timeout (an
    /// initializer that hangs): its exit counts as a failed start, so the
    /// slot is tried again with back-off, and rests after
    /// [`MAX_START_FAILURES`] in a row.
    pub(super) fn check_start_timeouts(&mut self, actions: &mut Actions) {
        self.start_deadline = None;
        let Some(limit) = self.start_timeout else {
            return;
        };
        // The clock is read only if a worker is starting: this runs on every
        // pass, a waiting caller's helping passes included, where a read
        // costs a visible share of a round trip on a VM.
        let mut now: Option<Instant> = None;
        let mut next: Option<Instant> = None;
        for (index, w) in self.workers.iter_mut().enumerate() {
            if w.phase != Phase::Starting {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            // A limit past what an `Instant` holds never expires.
            let Some(deadline) = w.starting_since.and_then(|t| t.checked_add(limit)) else {
                continue;
            };
            if now < deadline {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            w.kill();
            w.start_error = Some(Error::WorkerStart {
                index,
                reason: format!(
                    "process {} did not attach within the start timeout of {limit:?} (does its initializer hang? its stderr may say why)",
                    w.pid
                ),
            });
            w.phase = Phase::Dying;
            actions.progress = true;
            actions.lifecycle_changed = true;
        }
        self.start_deadline = next;
    }

    /// Collects a worker's results. For one killed for a task's timeout,
    /// that task's answer, if it came in the moment between the decision and
    /// the kill landing, is turned into [`Error::TaskTimedOut`]: it came
    /// after the deadline and after the pool had decided, and each kill for
    /// a timeout then fails exactly the task it was made for, never retried
    /// (`stats().respawns` counts it), whichever side of the kill the answer
    /// fell on.
    pub(super) fn collect_results(&mut self, index: usize, actions: &mut Actions) {
        let w = &self.workers[index];
        // `check_timeouts` took back what was queued behind it: it is the
        // only task in flight, and so the first answered.
        let overdue = w
            .timed_out
            .filter(|&id| w.in_flight.front().is_some_and(|f| f.id == id));
        let before = actions.completions.len();
        self.collect(index, actions);
        let Some(id) = overdue else {
            return;
        };
        if self.workers[index].in_flight.iter().any(|f| f.id == id) {
            return; // not answered: its worker's exit fails it (`on_exit`)
        }
        if let Some((_, outcome)) = actions.completions.get_mut(before) {
            // A protocol violation stays what it is. The answer was not
            // absorbed into its receiver (`collect` leaves an overdue task's
            // record to the general path), so the error drops a payload
            // nobody holds: `map` fails with it as a whole, `imap` and
            // `imap_unordered` hand out the error in the chunk's place.
            if !matches!(outcome, Outcome::Err(Error::ProtocolViolation { .. })) {
                let after = self.task_timeout.unwrap_or_default();
                *outcome = Outcome::Err(Error::TaskTimedOut { after, rank: None });
            }
        }
    }

    fn on_exit(&mut self, index: usize, pid: i32, cause: ExitCause, actions: &mut Actions) {
        // It may have started, served and exited since the last pass.
        self.check_started(index, actions);
        let was = self.workers[index].phase;
        if was == Phase::Ready || was == Phase::Dying {
            // Results published before the death are good: take them first.
            self.collect_results(index, actions);
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
            self.stats.start_failures += 1;
            if w.start_error.is_none() {
                w.start_error = Some(Error::WorkerStart {
                    index,
                    reason: format!(
                        "process {pid} {cause} before it was ready to serve (its initializer, if the pool has one, or code that runs before `main` ended it); its stderr may say why"
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
            let mut task = f;
            if taken {
                // It may have decoded its argument: never take its transits
                // back (at worst they linger, see `wire::TaskTransits`).
                task.mark_delivered();
            }
            if !taken {
                requeue.push(task);
            } else if w.timed_out == Some(task.id) {
                self.outstanding -= 1;
                let after = self.task_timeout.unwrap_or_default();
                actions.completions.push((
                    task.sink,
                    Outcome::Err(Error::TaskTimedOut { after, rank: None }),
                ));
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
                        rank: None,
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
            || (matches!(cause, ExitCause::Code(0) | ExitCause::Unknown)
                && (self.shutdown_sent
                    || w.slot.state().load(Ordering::Acquire) == state::RETIRING));
        w.crash_streak = if planned { 0 } else { w.crash_streak + 1 };
        w.replacing_since = Some(Instant::now());
        w.running = None;
        w.timed_out = None;
        self.after_exit(index, actions);
    }

    /// Decides whether a slot whose process is gone gets a new one: at once
    /// or after a back-off, or after a rest if its starts keep failing.
    fn after_exit(&mut self, index: usize, actions: &mut Actions) {
        let budget = self.budget();
        let wanted = !self.terminating && !self.shutdown_sent;
        let now = Instant::now();
        let w = &mut self.workers[index];
        w.reset(budget);
        if !wanted {
            w.phase = Phase::Stopped;
        } else if w.start_failures >= MAX_START_FAILURES {
            w.phase = Phase::Resting;
            let until = now.checked_add(rest(w.start_failures)).unwrap_or(now);
            w.resting_until = Some(until);
            self.rest_deadline = Some(self.rest_deadline.map_or(until, |d| d.min(until)));
            let no_worker_left = self
                .workers
                .iter()
                .all(|w| matches!(w.phase, Phase::Resting | Phase::Stopped));
            if no_worker_left {
                // Nothing can run the pending tasks before the next try,
                // which may fail again: they fail now, with the reason.
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
            // A failed start is not retried at once: what made it fail (a
            // descriptor or process shortage) needs a moment to pass.
            let delay = backoff(w.crash_streak).max(start_backoff(w.start_failures));
            actions.spawn.push((index, w.cpu, now + delay));
        }
    }

    /// Starts again every resting slot whose rest is over, and notes when
    /// the next one is (for the driver's sleep).
    pub(super) fn wake_rested(&mut self, actions: &mut Actions) {
        self.rest_deadline = None;
        if self.terminating || self.shutdown_sent {
            return;
        }
        // Read only if a slot rests (see `check_start_timeouts`).
        let mut now: Option<Instant> = None;
        for (index, w) in self.workers.iter_mut().enumerate() {
            if w.phase != Phase::Resting {
                continue;
            }
            let now = *now.get_or_insert_with(Instant::now);
            match w.resting_until {
                Some(until) if until > now => {
                    self.rest_deadline = Some(self.rest_deadline.map_or(until, |d| d.min(until)));
                }
                _ => {
                    w.phase = Phase::Spawning;
                    w.resting_until = None;
                    self.stats.respawns += 1;
                    actions.spawn.push((index, w.cpu, now));
                    actions.progress = true;
                    actions.lifecycle_changed = true;
                }
            }
        }
    }
}

/// How long to wait before restarting a slot whose workers died `streak`
/// times in a row: at once for the first death, then 10 ms doubling to 1 s,
/// so that a task that kills every worker cannot make a fork loop.
fn backoff(streak: u32) -> Duration {
    match streak {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(10u64 << (n - 2).min(7)).min(Duration::from_secs(1)),
    }
}

/// How long to wait before starting a slot again after `failures` failed
/// starts in a row: 10 ms doubling (to 1 s), none after a success.
fn start_backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_millis(10u64 << (n - 1).min(7)).min(Duration::from_secs(1)),
    }
}

/// How long a slot rests after `failures` failed starts in a row (at least
/// [`MAX_START_FAILURES`]): [`FIRST_REST`], doubling to [`LONGEST_REST`].
fn rest(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(MAX_START_FAILURES).min(6);
    (FIRST_REST * (1 << doublings)).min(LONGEST_REST)
}
