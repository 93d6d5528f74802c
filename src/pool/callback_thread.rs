//! The pool's callback thread: where the tasks' [`Callbacks`](super::Callbacks)
//! run, one at a time, in the order their outcomes were collected.
//!
//! Any parent thread may collect a result (the driver, a caller helping in
//! `get`, a future's `poll`, `terminate`); none of them runs a user's
//! callback. The collector stores the outcome of a task without callbacks
//! and wakes its waiters itself; the outcome of a task with a callback to
//! run is handed here instead, as a job that runs the callback and then
//! stores the outcome (so that `get` returns after the task's own callback,
//! as in Python). A callback that blocks therefore holds back the callbacks
//! after it (as Python's result-handler thread does), and the results of
//! tasks that have callbacks, never the driver, nor any other task's `get`,
//! `.await` or map.
//!
//! Why a thread of its own rather than the driver: an awaited result has no
//! thread of its own that could collect it while the driver is held up (a
//! blocking `get` helps collect; a future only polls when woken, and only
//! the driver wakes it). The driver must therefore never run user code
//! that may block. The thread is started at the first callback, so a pool
//! that has none costs no thread.

use super::driver::{Delivering, Shared};
use crate::sync::lock;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

/// Jobs' room the queue keeps once it drains.
const QUEUE_KEEP: usize = 1024;

/// A callback to run and the outcome to store after it.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// The queue of callbacks waiting to run, and the thread that runs them.
pub(super) struct CallbackThread {
    state: Mutex<State>,
    /// Signalled when a job is queued or the thread is told to stop.
    work: Condvar,
    /// Signalled when `owed` falls to zero.
    settled: Condvar,
    /// The pool, for the thread (its mark as delivering the pool's
    /// outcomes, the nudge of its waiters): set once the pool's state
    /// exists. Unset (a cell made without a pool, in unit tests), jobs run
    /// where they are queued.
    pool: OnceLock<Weak<Shared>>,
}

struct State {
    queue: VecDeque<Job>,
    /// Callbacks that have not returned yet, counted from the moment the
    /// task that carries them is made (`owe`), so that `join` cannot look
    /// between a task's answer and its callback's queueing and see none.
    owed: usize,
    thread: Option<JoinHandle<()>>,
    /// Told to stop: jobs queued after this run where they are queued.
    stop: bool,
}

impl CallbackThread {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                owed: 0,
                thread: None,
                stop: false,
            }),
            work: Condvar::new(),
            settled: Condvar::new(),
            pool: OnceLock::new(),
        })
    }

    /// Names the pool whose callbacks this thread runs.
    pub(super) fn attach(&self, pool: Weak<Shared>) {
        let _ = self.pool.set(pool);
    }

    /// A task with a callback was made: its callback is owed until it has
    /// run ([`run_later`](Self::run_later)) or the task is dropped without
    /// it ([`settle`](Self::settle)).
    pub(super) fn owe(&self) {
        lock(&self.state).owed += 1;
    }

    /// An owed callback will not run (its task is gone, or its outcome has
    /// no callback of its kind) or has run: one fewer to wait for.
    pub(super) fn settle(&self) {
        let mut state = lock(&self.state);
        // Each owed callback settles once; tests catch a second settle,
        // which would let `join` return before a callback ran.
        debug_assert!(state.owed > 0, "a callback settled twice");
        state.owed = state.owed.saturating_sub(1);
        if state.owed == 0 {
            self.settled.notify_all();
        }
    }

    /// Runs `job` (an owed callback, then its outcome's storing) on the
    /// callback thread, after the jobs queued before it; settles it after.
    /// Where no thread can run it (no pool, the pool is being torn down, no
    /// thread could be started) it runs here, as it did before there was a
    /// callback thread.
    pub(super) fn run_later(self: &Arc<Self>, job: Job) {
        let mut state = lock(&self.state);
        if !state.stop {
            if state.thread.is_none() {
                state.thread = self.start();
            }
            if state.thread.is_some() {
                state.queue.push_back(job);
                drop(state);
                self.work.notify_one();
                return;
            }
        }
        drop(state);
        run_guarded(job);
        self.settle();
    }

    /// Starts the thread; `None` without a pool or when the system refuses.
    fn start(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let shared = self.pool.get()?.upgrade()?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("corepool-callbacks".into())
            .spawn(move || me.serve(&shared))
            .ok()
    }

    /// The thread's loop: runs the jobs in order until told to stop and
    /// nothing is left.
    fn serve(&self, shared: &Shared) {
        // Everything run here is the pool's callbacks: a wait on the pool
        // from one of them is refused (`Error::WaitInCallback`), a drop of
        // the pool hands its teardown to a thread of its own.
        let _delivering = Delivering::enter(shared);
        loop {
            let job = {
                let mut state = lock(&self.state);
                loop {
                    if let Some(job) = state.queue.pop_front() {
                        break job;
                    }
                    // Drained: a burst of callbacks does not keep its
                    // queue's buffer for the pool's life (user trial 29).
                    if state.queue.capacity() > QUEUE_KEEP {
                        state.queue.shrink_to(QUEUE_KEEP);
                    }
                    if state.stop {
                        return;
                    }
                    state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            };
            run_guarded(job);
            // The job stored an outcome: waiters asleep in `assist` look.
            shared.assist.delivered();
            self.settle();
        }
    }

    /// Blocks until every owed callback has returned.
    pub(super) fn wait_settled(&self) {
        self.wait_settled_until(None);
    }

    /// [`wait_settled`](Self::wait_settled), giving up at `deadline`
    /// (`None`: never); returns whether every owed callback has returned.
    pub(super) fn wait_settled_until(&self, deadline: Option<Instant>) -> bool {
        let mut state = lock(&self.state);
        while state.owed > 0 {
            state = match deadline {
                None => self.settled.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.settled
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// Tells the thread to stop once its queue is empty; joins it when
    /// `join` (never from the thread itself).
    pub(super) fn stop(&self, join: bool) {
        let thread = {
            let mut state = lock(&self.state);
            state.stop = true;
            state.thread.take()
        };
        self.work.notify_all();
        if let Some(thread) = thread {
            if join && thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Runs a job; a panic that escapes it (a callback's own is caught inside:
/// this catches a result's `Drop` that panics) is dropped under a guard of
/// its own, and the thread lives on.
fn run_guarded(job: Job) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        if let Err(again) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
        {
            std::mem::forget(again);
        }
    }
}
