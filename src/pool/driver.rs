//! The engine that drives [`Core`]: [`Shared`], the state every parent
//! thread of a pool reaches, the helper gate that lets a waiting caller
//! collect results itself, and [`driver_loop`], the thread that collects and
//! dispatches when nobody else does.
//!
//! The driver sleeps on the doorbell futex in the segment (rung by workers)
//! when idle, and on a private `gate` futex while a caller helps, so that
//! round trips make no wake-up system call.

use super::assist::Assist;
use super::core::{Actions, Core, Phase};
use super::layout::{self, Slot};
use super::sink::Sink;
use super::supervisor::{Command_, Event, Supervisor};
use crate::error::{Error, Result};
use crate::shm::arena::Arena;
use crate::shm::park::{self, Spinner};
use crate::shm::spill::Held;
use crate::sync::lock;
use crate::wire::Payload;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

thread_local! {
    /// The pools whose outcomes this thread is delivering right now (so
    /// whose decoders run on it), or whose callbacks it runs (a pool's
    /// callback thread, for its whole life), as `Shared` addresses,
    /// innermost last. A wait on one of them from here could never end.
    static DELIVERING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks the current thread as delivering `shared`'s outcomes while it lives.
pub(super) struct Delivering;

impl Delivering {
    pub(super) fn enter(shared: &Shared) -> Self {
        // `try_with`: a pool may be used after this thread's locals were
        // destroyed (from an `atexit` handler or a C++ static destructor:
        // glibc's `exit` destroys them first); it is then simply unmarked.
        let _ = DELIVERING.try_with(|d| d.borrow_mut().push(shared as *const Shared as usize));
        Delivering
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        let _ = DELIVERING.try_with(|d| d.borrow_mut().pop());
    }
}

/// Whether the current thread is delivering the outcomes of the pool whose
/// state is at `shared` (it runs one of its decoders, or is its callback
/// thread).
pub(super) fn is_delivering(shared: *const Shared) -> bool {
    DELIVERING
        .try_with(|d| d.borrow().contains(&(shared as usize)))
        .unwrap_or(false)
}

/// State shared by the pool handle, its threads and its result handles.
pub(super) struct Shared {
    /// First, so that it is dropped first (fields drop in order): its
    /// thread may still start a worker with the raw descriptors of `seg`,
    /// which must not be closed (or their numbers reused) before it ends.
    pub(super) supervisor: Mutex<Option<Supervisor>>,
    /// The segments `slots` point into, and the doorbell's.
    seg: layout::PoolMemory,
    /// Shared objects the initializer's argument names: every worker,
    /// replacements included, decodes it while the pool lives.
    _initializer_keep: Arc<crate::wire::KeepAlive>,
    slots: Vec<Slot>,
    core: Mutex<Core>,
    /// Signalled (with `core` held or just released) when workers start,
    /// stop, or the pool empties.
    lifecycle: Condvar,
    /// Threads waiting on `lifecycle`; only changed with `core` locked.
    lifecycle_waiters: AtomicUsize,
    events: Mutex<Vec<Event>>,
    events_pending: AtomicBool,
    /// Per slot: the driver should watch for it to finish starting.
    awaiting_start: Vec<AtomicBool>,
    /// Per slot: the parent's claim position in the result ring, mirrored
    /// by the core's consumer (`has_work` asks there without the lock).
    result_positions: Vec<Option<Arc<AtomicU32>>>,
    pub(super) stop: AtomicBool,
    pub(super) max_payload: usize,
    pub(super) workers: usize,
    /// Callers spinning in a wait, collecting results themselves.
    helpers: AtomicUsize,
    /// The driver's futex word while it leaves the work to helpers.
    pub(super) gate: AtomicU32,
    /// Tasks submitted and not answered, as of the last pass (a hint read
    /// without the lock).
    outstanding: AtomicUsize,
    /// Nanoseconds after `epoch` when a running task overruns its timeout;
    /// `u64::MAX` when none can.
    next_deadline_ns: AtomicU64,
    /// Set (never cleared) once `close` or `terminate` took the pool's
    /// `open` away: a submitter waiting for room under `max_queued` looks
    /// here without the lock (`wait_for_room`).
    closed: AtomicBool,
    epoch: Instant,
    /// The process that created the pool: in a `fork()`ed copy, nothing may
    /// touch the workers, the rings or a lock another thread held at the fork.
    owner: u32,
    /// Deliveries in progress, for callers waiting in `assist::wait_helping`.
    pub(super) assist: Assist,
    /// Bytes of the argument arena (0: none).
    arena_bytes: usize,
    /// The argument arena, made at the first argument that spills (`None`
    /// inside: none, or it could not be made, and arguments spill into
    /// memfds of their own). Blocks hold it too: it outlives the pool while
    /// a task's block is out.
    arena: OnceLock<Option<Arc<Arena>>>,
}

/// Marks the current thread as a helper while it lives.
pub(super) struct HelperGuard<'a>(&'a Shared);

impl Drop for HelperGuard<'_> {
    fn drop(&mut self) {
        // SeqCst: pairs with the SeqCst store of `outstanding` and load of
        // `helpers` in `Shared::submit`, and with the SeqCst store of
        // `events_pending` in `Shared::report`.
        if self.0.helpers.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.driver_needed() {
            // Something remains and nobody spins for it: the driver, gated
            // while we helped, takes over. Not a wake-up per `apply`: an idle
            // pool with its workers up needs no driver.
            park::wake(&self.0.gate);
        }
    }
}

impl Shared {
    /// The state of a pool whose segment is `seg`, with one worker per slot
    /// and `core` as its bookkeeping; the supervisor is set once started.
    pub(super) fn new(
        seg: layout::PoolMemory,
        slots: Vec<Slot>,
        core: Core,
        max_payload: usize,
        initializer_keep: Arc<crate::wire::KeepAlive>,
        arena_bytes: usize,
    ) -> Self {
        let workers = slots.len();
        let result_positions = core.result_position_mirrors();
        Self {
            seg,
            slots,
            core: Mutex::new(core),
            lifecycle: Condvar::new(),
            lifecycle_waiters: AtomicUsize::new(0),
            events: Mutex::new(Vec::new()),
            events_pending: AtomicBool::new(false),
            awaiting_start: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            result_positions,
            stop: AtomicBool::new(false),
            supervisor: Mutex::new(None),
            max_payload,
            workers,
            helpers: AtomicUsize::new(0),
            gate: AtomicU32::new(0),
            outstanding: AtomicUsize::new(0),
            next_deadline_ns: AtomicU64::new(u64::MAX),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            owner: crate::sys::current_pid(),
            assist: Assist::new(),
            _initializer_keep: initializer_keep,
            arena_bytes,
            arena: OnceLock::new(),
        }
    }

    /// The argument arena, made now if this is the first argument to spill;
    /// `None` without one. Only in the process that owns the pool (callers
    /// check first).
    pub(super) fn arena(&self) -> Option<&Arc<Arena>> {
        self.arena
            .get_or_init(|| {
                // Under Miri (no files), and with a zero size: none. Should
                // it fail (no memory, no descriptor), arguments spill one by
                // one, as without it.
                (self.arena_bytes > 0 && !cfg!(miri))
                    .then(|| Arena::create(self.arena_bytes).ok())
                    .flatten()
            })
            .as_ref()
    }

    /// `Ok` in the process that created the pool; in a `fork()`ed copy,
    /// [`Error::ForeignPool`]. Checked before any lock is taken: a lock held
    /// by another thread at the fork stays locked in the copy for ever.
    pub(super) fn check_owner(&self) -> Result<()> {
        if crate::sys::current_pid() == self.owner {
            Ok(())
        } else {
            Err(Error::ForeignPool { owner: self.owner })
        }
    }

    /// `Ok` if the current thread may block until this pool makes progress:
    /// not in a `fork()`ed copy, and not inside one of its callbacks (which
    /// run on the thread that makes the progress).
    pub(super) fn check_can_wait(&self) -> Result<()> {
        self.check_owner()?;
        if is_delivering(self) {
            return Err(Error::WaitInCallback);
        }
        Ok(())
    }

    /// `Ok` while the pool takes work: [`Error::PoolClosed`] after `close`
    /// or `terminate`, the pool's fatal error if it has one. A map of no
    /// items submits nothing, so it asks here first: Python's `map` on a
    /// closed pool fails whatever its input (a user trial got `Ok([])`).
    pub(super) fn check_open(&self) -> Result<()> {
        self.check_owner()?;
        let core = self.lock();
        if let Some(e) = &core.fatal {
            return Err(e.clone());
        }
        if !core.open {
            return Err(Error::PoolClosed);
        }
        Ok(())
    }

    /// How long the driver may sleep before a running task's timeout needs
    /// checking (`None`: no deadline, sleep until woken).
    fn until_deadline(&self) -> Option<Duration> {
        // Acquire pairs with the Release store in `finish_pass`.
        self.until_deadline_ns(self.next_deadline_ns.load(Ordering::Acquire))
    }

    /// [`until_deadline`](Self::until_deadline) for a deadline already read.
    fn until_deadline_ns(&self, nanos: u64) -> Option<Duration> {
        (nanos != u64::MAX).then(|| {
            let deadline = self.epoch + Duration::from_nanos(nanos);
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(100))
        })
    }

    /// Registers the caller as a helper until the guard drops.
    pub(super) fn helper(&self) -> HelperGuard<'_> {
        // SeqCst: pairs with the SeqCst load in `Shared::submit` (a submitter
        // that sees a helper leaves the doorbell alone) and the fetch_sub in
        // `HelperGuard::drop`.
        self.helpers.fetch_add(1, Ordering::SeqCst);
        HelperGuard(self)
    }

    /// Waits for a lifecycle change (workers started or stopped, tasks
    /// answered), at most `timeout`.
    pub(super) fn wait_lifecycle<'a>(
        &self,
        core: MutexGuard<'a, Core>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Core> {
        // Registered with `core` locked: see `finish_pass`.
        self.lifecycle_waiters.fetch_add(1, Ordering::Relaxed);
        let core = match timeout {
            None => self.lifecycle.wait(core).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.lifecycle
                    .wait_timeout(core, t)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        self.lifecycle_waiters.fetch_sub(1, Ordering::Relaxed);
        core
    }

    pub(super) fn doorbell(&self) -> &std::sync::atomic::AtomicU32 {
        self.seg.doorbell()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Drives if the lock is free; never blocks. Does nothing in a
    /// `fork()`ed copy of the pool.
    pub(super) fn try_drive(&self) -> bool {
        if self.check_owner().is_err() {
            return false;
        }
        match self.core.try_lock() {
            Ok(core) => self.drive_locked(core),
            Err(std::sync::TryLockError::Poisoned(p)) => self.drive_locked(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    fn drive(&self) -> bool {
        self.drive_locked(self.lock())
    }

    /// Runs one pass of the state machine, then (lock released) delivers
    /// outcomes and asks the supervisor for workers.
    fn drive_locked(&self, mut core: MutexGuard<'_, Core>) -> bool {
        // Acquire pairs with the SeqCst store in `report` (the events
        // themselves sit behind the `events` lock). Loaded before it is
        // swapped: nearly every pass finds no event, and a swap is a locked
        // read-modify-write on the critical path of every round trip.
        let events = if self.events_pending.load(Ordering::Acquire)
            && self.events_pending.swap(false, Ordering::Acquire)
        {
            std::mem::take(&mut *lock(&self.events))
        } else {
            Vec::new()
        };
        let mut actions = Actions::default();
        core.drive(events, &mut actions);
        self.finish_pass(core, actions)
    }

    pub(super) fn finish_pass(&self, core: MutexGuard<'_, Core>, actions: Actions) -> bool {
        for (flag, w) in self.awaiting_start.iter().zip(core.workers.iter()) {
            flag.store(w.phase == Phase::Starting, Ordering::Relaxed);
        }
        // Both words below are written only here, with `core` locked as now:
        // a Relaxed load returns the last value stored, and a store that
        // would not change it is skipped (most helping passes change
        // neither). Neither is written with a read-modify-write, nor with a
        // SeqCst store unless the Dekker pair below needs it: each is a
        // locked instruction, and the pass that collects an `apply`'s result
        // changes both, on the round trip's way back.
        let outstanding = self.outstanding.load(Ordering::Relaxed);
        if core.outstanding > outstanding {
            // SeqCst: see `submit` and `HelperGuard::drop`. New work is
            // what a leaving helper must not miss (it ungates the driver
            // for it), so only a rise needs the total order.
            self.outstanding.store(core.outstanding, Ordering::SeqCst);
        } else if core.outstanding < outstanding {
            // Release: a fall only lets a leaving helper leave the driver
            // gated; one that reads the higher value before it ungates the
            // driver needlessly (a spare pass, no lost work). Skipped when
            // unchanged: the value those SeqCst loads see is then this one
            // already, stored under the lock we hold, before our later
            // SeqCst loads in the single total order.
            self.outstanding.store(core.outstanding, Ordering::Release);
        }
        let deadline = core.next_deadline().map_or(u64::MAX, |d| {
            d.saturating_duration_since(self.epoch)
                .as_nanos()
                .min(u64::MAX as u128 - 1) as u64
        });
        let before = self.next_deadline_ns.load(Ordering::Relaxed);
        if deadline != before {
            // Release pairs with the Acquire load in `until_deadline`. A
            // store, not a swap: only this code writes the word, under the
            // lock, so the load above read the value it replaces.
            self.next_deadline_ns.store(deadline, Ordering::Release);
        }
        if deadline < before {
            // The driver may be asleep with the later deadline (or none) it
            // computed before, and a task that never ends sends no wake-up:
            // have it look again. Costs a fence and a load when it is awake.
            park::wake(self.doorbell());
        }
        // Lifecycle waiters register with `core` locked, as we are: none is
        // missed, and passes with nobody waiting make no futex system call.
        let notify_lifecycle = (actions.lifecycle_changed || !actions.completions.is_empty())
            && self.lifecycle_waiters.load(Ordering::Relaxed) > 0;
        drop(core);
        if !actions.spawn.is_empty() {
            if let Some(sup) = lock(&self.supervisor).as_ref() {
                for &(index, cpu, not_before) in &actions.spawn {
                    sup.send(Command_::Spawn {
                        index,
                        cpu,
                        not_before,
                    });
                }
            }
        }
        if notify_lifecycle {
            self.lifecycle.notify_all();
        }
        let delivers = !actions.completions.is_empty();
        // A delivery that cannot take long (an `apply`'s plain result, no
        // decoder, no waker) is not counted as in progress, only announced when over
        // (`Assist::delivered`): three read-modify-writes and a fence fewer
        // between a result's arrival and its caller's next task.
        let at_once = delivers
            && actions
                .completions
                .iter()
                .all(|(sink, _)| sink.delivers_at_once());
        // Nothing of the user's runs in a delivery at once (no decoder, no
        // waker): no thread-local mark to make and take down for it. No
        // delivery runs a callback: those go to the callback thread.
        let _delivering = (delivers && !at_once).then(|| Delivering::enter(self));
        let delivery = (delivers && !at_once).then(|| self.assist.delivering());
        for (sink, outcome) in actions.completions {
            // Decoders guard themselves (`wire::decode_exact`), callbacks
            // run elsewhere (`CallbackThread`); this catches what they cannot, such as
            // a result's `Drop` that panics: the thread (often the driver)
            // must live on to deliver the other outcomes. `move`: the sink
            // may hold the last reference to a result nobody took, which
            // is then dropped in here, not after.
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    sink.complete(outcome)
                }))
            {
                // Dropped under a guard of its own: a payload's `Drop` could
                // panic too (that second payload alone is forgotten).
                if let Err(again) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
                {
                    std::mem::forget(again);
                }
            }
        }
        drop(delivery);
        if at_once {
            self.assist.delivered();
        }
        actions.progress
    }

    /// Whether the driver has anything to do (checked after announcing sleep).
    ///
    /// Acquire loads: `stop` pairs with the Release store in `Pool::drop`,
    /// `events_pending` with the SeqCst store in `report`, a slot's state with
    /// the worker's Release stores of READY and FAILED (`worker.rs`), a
    /// result stamp (in `has_record_at`) with the worker's Release store of
    /// it (`Producer::stamp`).
    ///
    /// Results wait when a record is stamped at the parent's own claim
    /// position, read from its mirror in parent memory (Relaxed: a stale
    /// position only shows an older record, so at worst one pass too many;
    /// the pass then sees the core's own position under the lock). A worker
    /// cannot keep this true: a stamp it forges there is claimed, and a
    /// broken one ends in a violation, after which the mirror names no
    /// position until the slot is reset.
    fn has_work(&self) -> bool {
        self.has_work_but_results()
            || self
                .slots
                .iter()
                .zip(&self.result_positions)
                .any(|(slot, position)| {
                    position.as_ref().is_some_and(|at| {
                        slot.result_ring().has_record_at(at.load(Ordering::Relaxed))
                    })
                })
    }

    /// [`has_work`](Self::has_work) without its look at the result rings:
    /// the pool stops, supervisor events wait, a starting worker is ready.
    fn has_work_but_results(&self) -> bool {
        self.stop.load(Ordering::Acquire)
            || self.events_pending.load(Ordering::Acquire)
            || self
                .slots
                .iter()
                .zip(&self.awaiting_start)
                .any(|(slot, awaiting)| {
                    awaiting.load(Ordering::Relaxed)
                        && slot.state().load(Ordering::Acquire) != layout::state::STARTING
                })
    }

    /// Whether the driver has anything to do beyond waiting for the next
    /// submission: tasks unanswered, supervisor events to apply, workers
    /// starting (their readiness is noticed by a pass). A helper that leaves
    /// while this holds must ungate the driver, or a replacement worker's
    /// `Spawned` event could sit unapplied until the next submission.
    ///
    /// Results in the rings are not looked for: with no task unanswered
    /// there is none to collect, and a record there anyway answers no task
    /// (a violation the next pass finds). Looking would read the line after
    /// the last result, which the worker wrote last (a cache miss between a
    /// blocking `apply`'s result and its return).
    ///
    /// SeqCst loads: they pair with the SeqCst `fetch_sub` of `helpers` in
    /// `HelperGuard::drop`, the store of `outstanding` in `finish_pass` and
    /// of `events_pending` in `report`: either the leaving helper sees the
    /// work, or whoever made it sees no helper and wakes the driver itself.
    fn driver_needed(&self) -> bool {
        self.outstanding.load(Ordering::SeqCst) > 0
            || self.events_pending.load(Ordering::SeqCst)
            || self
                .awaiting_start
                .iter()
                .any(|a| a.load(Ordering::Relaxed))
            || self.has_work_but_results()
    }

    pub(super) fn report(&self, event: Event) {
        lock(&self.events).push(event);
        // SeqCst: Release pairs with the Acquire swap in `drive_locked`; the
        // total order pairs it with the load in `driver_needed` (a helper
        // leaving either sees the event or is gone before `wake(gate)` below
        // looks for a gated driver).
        self.events_pending.store(true, Ordering::SeqCst);
        // Without looking at the flag: the doorbell is in memory every
        // worker writes, and one may have cleared the flag of the sleeping
        // driver (a worker rings with `wake_leaving_flag`, so only a lying
        // one does). Events are rare (a worker started or ended), and one
        // of them is that liar's death.
        park::wake_regardless(self.doorbell());
        park::wake(&self.gate);
    }

    /// Queues tasks and dispatches what fits into the rings. `caller_waits`:
    /// the caller waits for these results at once (and helps collect them).
    ///
    /// With a bound on queued tasks (`max_queued`), blocks while the pool
    /// holds that many unanswered tasks, except in one of this pool's
    /// callbacks, which must never block.
    pub(super) fn submit(
        &self,
        tasks: smallvec::SmallVec<[(i64, Payload, Sink); 1]>,
        keep: crate::wire::KeepAlive,
        caller_waits: bool,
    ) -> Result<()> {
        self.submit_held(tasks, Vec::new(), keep, caller_waits)
    }

    /// As [`submit`](Self::submit), for tasks some of whose arguments are in
    /// arena blocks already, their payloads the blocks' handles: `held` has
    /// one entry per task, in order (`None`: not held), or none at all.
    pub(super) fn submit_held(
        &self,
        tasks: smallvec::SmallVec<[(i64, Payload, Sink); 1]>,
        held: Vec<Option<Arc<Held>>>,
        keep: crate::wire::KeepAlive,
        caller_waits: bool,
    ) -> Result<()> {
        self.check_owner()?;
        // An argument larger than a ring message travels in a block of the
        // arena or a spill of its own, held by its task until the outcome:
        // the ring carries the handle. Spilled before anything is queued,
        // so that a failure (no memory) submits nothing.
        let mut tasks = tasks;
        // Nothing is allocated here unless something spills.
        let oversized = tasks.iter().any(|(_, p, _)| p.len() > self.max_payload);
        let spills = if oversized || held.iter().any(Option::is_some) {
            let mut held = held.into_iter();
            let mut spills = Vec::with_capacity(tasks.len());
            for (_, payload, _) in tasks.iter_mut() {
                let already = held.next().flatten();
                spills.push(if already.is_some() {
                    already
                } else if payload.len() > self.max_payload {
                    let (handle, spill) =
                        crate::shm::spill::write_held(self.arena(), payload, &[])?;
                    *payload = Payload::from_slice(&handle);
                    Some(spill)
                } else {
                    None
                });
            }
            Some(spills)
        } else {
            None
        };
        self.submit_spilled(tasks, spills, keep, caller_waits)
    }

    /// Encodes one task's argument: into its payload, or, when larger than
    /// a ring message, straight into a block of the arena or a spill
    /// (copied once, see `Wire::encode_split`), the payload then the
    /// handle. Pass the spill to [`submit_spilled`](Self::submit_spilled)
    /// with the task.
    pub(super) fn encode_arg<A: crate::Wire>(
        &self,
        arg: &A,
    ) -> Result<(Payload, crate::wire::Carried, Option<Arc<Held>>)> {
        crate::wire::encode_payload_or_spill(arg, self.max_payload, |head, rest| {
            // As `submit`: a forked copy of the owner spills nothing.
            self.check_owner()?;
            crate::shm::spill::write_held(self.arena(), head, rest)
        })
    }

    /// As [`submit`](Self::submit), for tasks whose arguments larger than a
    /// ring message are in spills already: `spills` holds one entry per task,
    /// in order (`None` when nothing spilled).
    pub(super) fn submit_spilled(
        &self,
        tasks: smallvec::SmallVec<[(i64, Payload, Sink); 1]>,
        spills: Option<Vec<Option<Arc<Held>>>>,
        keep: crate::wire::KeepAlive,
        caller_waits: bool,
    ) -> Result<()> {
        self.check_owner()?;
        let mut spills = spills.map(Vec::into_iter);
        // Everything the encodes of this submission asked to keep alive.
        let keep = (!keep.is_empty()).then(|| Arc::new(keep));
        let may_block = !is_delivering(self);
        let mut tasks = tasks.into_iter().peekable();
        let mut core = self.lock();
        loop {
            if let Some(e) = &core.fatal {
                return Err(e.clone());
            }
            if !core.open {
                return Err(Error::PoolClosed);
            }
            let room = if may_block {
                core.max_queued.saturating_sub(core.outstanding)
            } else {
                usize::MAX
            };
            if room == 0 {
                let max_queued = core.max_queued;
                drop(core);
                self.wait_for_room(max_queued);
                core = self.lock();
                continue;
            }
            for (trampoline, payload, sink) in tasks.by_ref().take(room) {
                let spill = spills.as_mut().and_then(|s| s.next()).flatten();
                core.submit(trampoline, payload, sink, keep.clone(), spill);
            }
            let mut actions = Actions::default();
            core.dispatch_pending(&mut actions);
            self.finish_pass(core, actions);
            // SeqCst, with the store of `outstanding` in `finish_pass`: pairs
            // with the SeqCst decrement and load in `HelperGuard::drop` (a
            // Dekker pair: either we see the helper, or it sees our task).
            if !caller_waits && self.helpers.load(Ordering::SeqCst) == 0 {
                // Nobody spins for results: make sure the driver is not gated.
                park::wake(&self.gate);
            }
            if tasks.peek().is_none() {
                return Ok(());
            }
            core = self.lock();
        }
    }
}

impl Shared {
    /// Blocks a submitter while `max_queued` tasks are unanswered, helping
    /// collect as a waiting `get` does (`assist::wait_helping`): it spins
    /// collecting, then sleeps until a delivery starts or ends, and collects
    /// itself while one is held up (a slow decoder, a `submit_raw` `done`
    /// function). Room is freed when an answer is collected, not when its
    /// callback has run (callbacks run on the callback thread), so neither
    /// a blocked callback nor a delivery held up in user code keeps a
    /// submitter waiting while workers answer. Returns when room may have
    /// freed, or the pool is closed (`close` nudges the sleepers) or
    /// broken (its tasks are failed: room frees); the caller checks again
    /// under the lock.
    fn wait_for_room(&self, max_queued: usize) {
        // SeqCst loads: `outstanding` is stored under the lock by every pass
        // that changes it (`finish_pass`) before the pass's delivery nudges
        // the sleepers, and `closed` is stored before `close` nudges them;
        // the fences of `Assist::nudge` and `Assist::sleep` pair them with
        // these loads, so a sleeper either sees the change or is woken.
        super::assist::wait_helping(self, || {
            self.outstanding.load(Ordering::SeqCst) < max_queued
                || self.closed.load(Ordering::SeqCst)
        });
    }

    /// Marks the pool closed for submitters waiting for room, and wakes
    /// those asleep. Called after the pass that took `open` away.
    pub(super) fn closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.assist.delivered();
    }
}

pub(super) fn driver_loop(shared: Arc<Shared>) {
    let mut spinner = Spinner::new();
    // Acquire loads: `stop` pairs with the Release store in `Pool::drop`;
    // `helpers` with the SeqCst `fetch_sub` in `HelperGuard::drop`, which
    // then wakes `gate` (the sleep-flag protocol of `park` closes the gap).
    while !shared.stop.load(Ordering::Acquire) {
        if shared.helpers.load(Ordering::Acquire) > 0 {
            // A caller is spinning for its result and collecting as it goes:
            // stay out of its way (and off the doorbell, so workers make no
            // wake-up system calls) until it leaves.
            park::sleep_unless(&shared.gate, shared.until_deadline(), || {
                shared.helpers.load(Ordering::Acquire) == 0 || shared.stop.load(Ordering::Acquire)
            });
            spinner.reset();
            continue;
        }
        if shared.drive() {
            spinner.reset();
            continue;
        }
        if spinner.spin() {
            continue;
        }
        // The deadline is read before the sleep announces itself, so a pass
        // that moves it earlier in between wakes nobody (its `wake` sees no
        // sleeper): the re-check looks at it again. SeqCst fences of `park`
        // order our announcement before that load and the pass's store
        // before its look at the word; Acquire pairs with the Release store
        // in `finish_pass`.
        let deadline_ns = shared.next_deadline_ns.load(Ordering::Acquire);
        park::sleep_unless(
            shared.doorbell(),
            shared.until_deadline_ns(deadline_ns),
            || shared.has_work() || shared.next_deadline_ns.load(Ordering::Acquire) < deadline_ns,
        );
        spinner.reset();
    }
}

#[cfg(feature = "fault-injection")]
impl crate::pool::Pool {
    /// Test hook ([`crate::testing::driver_has_work`]): what the driver
    /// re-checks before it sleeps.
    pub(crate) fn driver_has_work(&self) -> bool {
        self.shared.has_work()
    }

    /// Test hook ([`crate::testing::arg_arena_usage`]): bytes of the
    /// argument arena kept for ever and free, `None` before it is made.
    pub(crate) fn arg_arena_usage(&self) -> Option<(usize, usize)> {
        self.shared.arena.get()?.as_ref().map(|a| a.usage())
    }
}
