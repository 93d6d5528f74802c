//! One task's result on its way back: the [`Cell`] it lands in and the
//! [`AsyncResult`] a caller waits on, blocking or as a [`Future`].

use super::callback_thread::CallbackThread;
use super::cell_chunks::{ChunkRc, Unowned};
use super::driver::Shared;
use super::sink::{Completion, Outcome};
use super::Callbacks;
use crate::error::{Error, Result};
use crate::shm::park::Spinner;
use crate::sync::lock;
use crate::wire::{decode_exact, Wire};
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Bits of a [`Cell`]'s `state` word.
mod bit {
    /// A [`finish`](super::Cell::finish) claimed the cell: the first one wins.
    pub(super) const CLAIMED: u32 = 1;
    /// The result is stored in `value`.
    pub(super) const READY: u32 = 1 << 1;
    /// The stored result is `Ok` (for `successful`, without reading it).
    pub(super) const OK: u32 = 1 << 2;
    /// A caller took the result out of `value`.
    pub(super) const TAKEN: u32 = 1 << 3;
    /// A thread sleeps (futex) on the word until `READY`.
    pub(super) const SLEEPING: u32 = 1 << 4;
    /// A waker may sit in the cell's extras.
    pub(super) const AWAITED: u32 = 1 << 5;
}

/// The slot a result lands in, and everyone waiting for it.
///
/// A handle lives from submission to `get`, and a caller that submits many
/// tasks before collecting holds them all: its size is memory touched (and
/// page-faulted in) per task, and its lines cross cores twice (written by
/// the submitter, completed by whichever thread collects, read back by
/// `get`). So it is one state word, the result (its error boxed: errors are
/// rare, and an `Error` is six words) and one pointer to what few handles
/// need (callbacks, a waker): 32 bytes for a `u64` result, 40 with its
/// reference count in a [`ChunkRc`] slot (48 in an `Arc`, plus 16 of
/// glibc's, before cells were carved from chunks), against 120 with a
/// lock, a condition variable and a waker slot inline.
/// Sleepers wait on the state word itself (a futex), and every hand-over is
/// one read-modify-write of it.
pub(super) struct Cell<T> {
    /// [`bit`]s. `CLAIMED`, `READY`, `OK`, `TAKEN` are set once each and
    /// never cleared; `SLEEPING` and `AWAITED` only announce waiters.
    state: AtomicU32,
    /// Written once by the claiming `finish`, before `READY`; read (moved
    /// out) once, by whoever sets `TAKEN` on a `READY` cell.
    value: UnsafeCell<MaybeUninit<std::result::Result<T, Box<Error>>>>,
    /// Null, or an [`Extras`] from `Box::into_raw` that the cell owns: made
    /// at once for a task with callbacks, by the first `poll` otherwise.
    extras: AtomicPtr<Extras<T>>,
}

/// What few handles need: the task's callbacks, a waker to wake.
struct Extras<T> {
    callbacks: Mutex<Callbacks<T>>,
    waker: Mutex<Option<Waker>>,
    /// Where the callbacks run, for a cell made with some in a pool.
    later: Option<Later<T>>,
}

/// What a cell with callbacks needs to hand them to its pool's callback
/// thread: the thread, and the cell itself (a job holds it until the
/// outcome is stored, after the callback). The pointer holds no reference
/// (that would be a cycle): it is upgraded by a finisher, which runs while
/// a reference lives (`store_claimed`).
struct Later<T> {
    thread: Arc<CallbackThread>,
    cell: Unowned<Cell<T>>,
}

impl<T> Drop for Extras<T> {
    fn drop(&mut self) {
        // Owed since the cell was made (see `Cell::new`): a cell dropped
        // with its callbacks never to run (its submission failed) no longer
        // holds `join` back. Those that ran or were handed over were taken.
        let callbacks = self.callbacks.get_mut().unwrap_or_else(|p| p.into_inner());
        if callbacks.ok.is_some() || callbacks.err.is_some() {
            if let Some(later) = &self.later {
                later.thread.settle();
            }
        }
    }
}

// SAFETY: the cell hands a `T` from the thread that finishes it to the one
// that takes it (so `T: Send`), and shares no `&T` between threads except
// through `successful`, which reads the state word only. `value` is written
// by one thread (the `CLAIMED` winner) before `READY` is published with
// Release, and read by one thread (the `TAKEN` winner) after an Acquire of
// `READY`: the state word's RMWs order every access. The extras are behind
// locks; callbacks are `Send`.
unsafe impl<T: Send> Sync for Cell<T> {}

impl<T> Cell<T> {
    /// A cell for a task's result. Its `callbacks`, if any, run on `thread`
    /// (the pool's callback thread; `None`: on the thread that finishes the
    /// cell, for cells made without a pool), and are owed there from now.
    ///
    /// Cells live only in a [`ChunkRc`]: a `&Cell` is always borrowed from a
    /// live reference, which `store_claimed` relies on.
    pub(super) fn new(
        callbacks: Callbacks<T>,
        thread: Option<&Arc<CallbackThread>>,
    ) -> ChunkRc<Self> {
        if callbacks.ok.is_none() && callbacks.err.is_none() {
            // The common case: no extras.
            return ChunkRc::new(Self {
                state: AtomicU32::new(0),
                value: UnsafeCell::new(MaybeUninit::uninit()),
                extras: AtomicPtr::new(std::ptr::null_mut()),
            });
        }
        ChunkRc::new_cyclic(|me| {
            let later = thread.map(|thread| {
                thread.owe();
                Later {
                    thread: thread.clone(),
                    cell: me,
                }
            });
            Self {
                state: AtomicU32::new(0),
                value: UnsafeCell::new(MaybeUninit::uninit()),
                extras: AtomicPtr::new(Box::into_raw(Box::new(Extras {
                    callbacks: Mutex::new(callbacks),
                    waker: Mutex::new(None),
                    later,
                }))),
            }
        })
    }

    /// The extras, if made.
    fn extras(&self) -> Option<&Extras<T>> {
        // Acquire pairs with the Release half of the CAS in `extras_or_make`
        // (or with the publication of the cell's `ChunkRc`, for extras made
        // with it): the box's contents are visible.
        let extras = self.extras.load(Ordering::Acquire);
        // SAFETY: non-null, it came from `Box::into_raw` and is freed only by
        // the cell's `Drop`, which cannot run while `&self` lives.
        unsafe { extras.as_ref() }
    }

    /// The extras, made now if they were not.
    fn extras_or_make(&self) -> &Extras<T> {
        if let Some(extras) = self.extras() {
            return extras;
        }
        let made = Box::into_raw(Box::new(Extras {
            callbacks: Mutex::new(Callbacks::default()),
            waker: Mutex::new(None),
            later: None,
        }));
        // AcqRel: the Release half publishes the box's contents to the
        // Acquire load in `extras`; the Acquire half (on failure) sees the
        // other maker's.
        match self.extras.compare_exchange(
            std::ptr::null_mut(),
            made,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: `made` is ours and now the cell's (freed in `Drop`).
            Ok(_) => unsafe { &*made },
            Err(theirs) => {
                // SAFETY: `made` was never shared: ours to free.
                drop(unsafe { Box::from_raw(made) });
                // SAFETY: as in `extras`: the cell owns it until `Drop`.
                unsafe { &*theirs }
            }
        }
    }
}

impl<T: Send + 'static> Cell<T> {
    /// Stores the final result (the first one wins) and wakes the waiters;
    /// for a task with a callback for it, hands both to the pool's callback
    /// thread, which runs the callback first.
    pub(super) fn finish(&self, result: Result<T>) {
        // Relaxed: the claim orders nothing by itself; only the one thread
        // that sets `CLAIMED` goes on to write `value`.
        if self.state.fetch_or(bit::CLAIMED, Ordering::Relaxed) & bit::CLAIMED != 0 {
            return;
        }
        self.store_claimed(result, 0);
    }

    /// [`finish`](Self::finish) with one read-modify-write instead of two:
    /// the claim is published with the result. For a cell that is the sink
    /// of one task: its outcome is delivered once, so the claim has no
    /// rival to beat (a finish that came before, in this thread or one
    /// ordered before it, is still seen, and this one then does nothing).
    ///
    /// # Safety
    ///
    /// No other `finish` or `finish_sole` of this cell may run at the same
    /// time: both would write `value`.
    unsafe fn finish_sole(&self, result: Result<T>) {
        // Relaxed: only an earlier finish, ordered before us by whatever
        // ordered the two calls, can have set it.
        if self.state.load(Ordering::Relaxed) & bit::CLAIMED != 0 {
            return;
        }
        self.store_claimed(result, bit::CLAIMED);
    }

    /// The claiming finisher's part (`claim`: the bits still to set): runs
    /// the task's callback for `result` (on the pool's callback thread,
    /// later, when the cell belongs to a pool), then publishes the result.
    /// Only the thread that claimed the cell (or, through `finish_sole`,
    /// the only one finishing it) calls this.
    fn store_claimed(&self, result: Result<T>, claim: u32) {
        let Some(extras) = self.extras() else {
            // No callbacks (a cell made with none has no extras, a poll
            // made them without): the common path, nothing more to look at.
            return self.publish(result, claim);
        };
        let callbacks = std::mem::take(&mut *lock(&extras.callbacks));
        let callback: Option<OutcomeCallback<T>> = match (&result, callbacks) {
            (Ok(_), Callbacks { ok: Some(f), .. }) => Some(Box::new(move |r: &Result<T>| {
                if let Ok(v) = r {
                    f(v)
                }
            })),
            (Err(_), Callbacks { err: Some(f), .. }) => Some(Box::new(move |r: &Result<T>| {
                if let Err(e) = r {
                    f(e)
                }
            })),
            _ => None,
        };
        let later = extras.later.as_ref();
        let Some(callback) = callback else {
            // None of its kind (an `on_success` only, and the task failed):
            // published here, and no longer owed.
            self.publish(result, claim);
            if let Some(later) = later {
                later.thread.settle();
            }
            return;
        };
        // SAFETY: `&self` is borrowed from a live `ChunkRc` (cells live in
        // nothing else, see `new`), so a reference lives during the call.
        match later.map(|l| (&l.thread, unsafe { l.cell.upgrade_live() })) {
            Some((thread, cell)) => {
                if claim != 0 {
                    // Claimed now, published by the callback thread later:
                    // a late `finish` (none is expected) must find it taken.
                    // Relaxed: as in `finish`.
                    self.state.fetch_or(claim, Ordering::Relaxed);
                }
                thread.run_later(Box::new(move || {
                    run_callback(callback, &result);
                    cell.publish(result, 0);
                }));
            }
            None => {
                // Made without a pool (unit tests): run here, as before.
                run_callback(callback, &result);
                self.publish(result, claim);
                if let Some(later) = later {
                    later.thread.settle();
                }
            }
        }
    }
}

/// The one callback of a task that its outcome calls for.
type OutcomeCallback<T> = Box<dyn FnOnce(&Result<T>) + Send>;

/// Runs a task's callback on its outcome. A callback that panics must not
/// take the thread running it with it: the panic hook has reported it, and
/// the task's own outcome is stored all the same.
fn run_callback<T>(callback: OutcomeCallback<T>, result: &Result<T>) {
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| callback(result))) {
        // Dropped under a guard of its own: a payload's `Drop` could panic
        // too (that second payload alone is forgotten).
        if let Err(again) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
        {
            std::mem::forget(again);
        }
    }
}

impl<T> Cell<T> {
    /// Writes the result, publishes it (with `claim`, the bits still to
    /// set), wakes the waiters. Only the thread that claimed the cell (or
    /// the job it handed the result to) calls this, once. Inlined: on the
    /// common path (no callbacks) it is all `store_claimed` does, and it
    /// was inline there before callbacks moved to their own thread.
    #[inline(always)]
    fn publish(&self, result: Result<T>, claim: u32) {
        let ok = if result.is_ok() { bit::OK } else { 0 };
        // SAFETY: this thread set `CLAIMED` (or is the only finisher, see
        // `finish_sole`, or runs the job the claimer handed the result to),
        // so it is the only writer, and nobody reads `value` before
        // `READY`, published below.
        unsafe { (*self.value.get()).write(result.map_err(Box::new)) };
        // SeqCst RMW: its Release half pairs with the Acquire loads of
        // `READY` (`is_ready`, `take`); being one RMW of the word, it is
        // ordered with a sleeper's `SLEEPING` CAS and a poller's `AWAITED`
        // fetch_or: either we see their bit here and wake them, or they see
        // `READY` in what their RMW returns.
        let before = self
            .state
            .fetch_or(claim | bit::READY | ok, Ordering::SeqCst);
        if before & bit::SLEEPING != 0 {
            crate::sys::futex_wake_all(&self.state);
        }
        if before & bit::AWAITED != 0 {
            if let Some(waker) = self.extras().and_then(|e| lock(&e.waker).take()) {
                waker.wake();
            }
        }
    }

    /// Keeps `waker` to be woken by [`finish`](Self::finish); returns whether
    /// the result is in already (then nobody will wake it: poll again now).
    fn register_waker(&self, waker: &Waker) -> bool {
        let extras = self.extras_or_make();
        {
            let mut slot = lock(&extras.waker);
            match &mut *slot {
                Some(old) if old.will_wake(waker) => {}
                other => *other = Some(waker.clone()),
            }
        }
        // SeqCst RMW, after the waker is stored: see `finish`.
        self.state.fetch_or(bit::AWAITED, Ordering::SeqCst) & bit::READY != 0
    }

    pub(super) fn is_ready(&self) -> bool {
        // Acquire pairs with the Release half of `finish`'s RMW.
        self.state.load(Ordering::Acquire) & bit::READY != 0
    }

    /// Whether the stored result is `Ok`; `None` before it is in and once
    /// it was taken.
    fn successful(&self) -> Option<bool> {
        // Acquire pairs with the Release half of `finish`'s RMW (only its
        // bits are read here, no `value`).
        let state = self.state.load(Ordering::Acquire);
        (state & bit::READY != 0 && state & bit::TAKEN == 0).then_some(state & bit::OK != 0)
    }

    fn take(&self) -> Result<T> {
        // Acquire pairs with the Release half of `finish`'s RMW: `value` is
        // written. Called only once the cell is ready, so `TAKEN` (or, were
        // it ever called early, no `READY`) means an earlier `get_timeout`
        // took the result.
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & bit::READY == 0 || state & bit::TAKEN != 0 {
                return Err(Error::ResultTaken);
            }
            match self.state.compare_exchange_weak(
                state,
                state | bit::TAKEN,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        // SAFETY: `READY` is set (and its write seen, Acquire above) and
        // this thread set `TAKEN`: it is the only reader, and `Drop` will
        // not drop the value again.
        let value = unsafe { (*self.value.get()).assume_init_read() };
        value.map_err(|e| *e)
    }

    /// Sleeps on the state word until the result is in or `deadline`
    /// passed; returns whether it is in.
    fn sleep_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            // Acquire: as `is_ready`.
            let state = self.state.load(Ordering::Acquire);
            if state & bit::READY != 0 {
                return true;
            }
            let left = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    Some(left)
                }
            };
            if state & bit::SLEEPING == 0 {
                // SeqCst RMW: announced before the sleep, ordered with
                // `finish`'s RMW (see there).
                if let Err(_changed) = self.state.compare_exchange(
                    state,
                    state | bit::SLEEPING,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    continue;
                }
            }
            // Returns at once if the word moved on (`READY` stored) since.
            crate::sys::futex_wait(&self.state, state | bit::SLEEPING, left);
        }
    }
}

impl<T> Drop for Cell<T> {
    fn drop(&mut self) {
        let state = *self.state.get_mut();
        if state & bit::READY != 0 && state & bit::TAKEN == 0 {
            // SAFETY: `READY`: written; not `TAKEN`: not moved out. `&mut
            // self`: nobody else can reach it.
            unsafe { self.value.get_mut().assume_init_drop() };
        }
        let extras = *self.extras.get_mut();
        if !extras.is_null() {
            // SAFETY: from `Box::into_raw`, owned by the cell, freed once.
            drop(unsafe { Box::from_raw(extras) });
        }
    }
}

impl<R: Wire> Completion for Cell<R> {
    fn complete(&self, _tag: u64, outcome: Outcome) {
        let result = match outcome {
            Outcome::Ok(bytes) => match crate::wire::plain_of::<R>() {
                // Plain data is its own bytes: one unaligned read, no
                // decoder (and no decoding budget) to set up.
                Some(plain) if bytes.len() == plain.size() => match plain.values(&bytes).next() {
                    Some(value) => Ok(value),
                    None => decode_exact::<R>(&bytes),
                },
                _ => decode_exact::<R>(&bytes),
            },
            Outcome::Err(e) => Err(e),
        };
        // SAFETY: a cell is the sink of one task (`Pool::submit_one`,
        // `Imap::pull_one`; a map's cell is finished by its collector, not
        // here), and a task's outcome is delivered once, by the one thread
        // that took its `Sink` out of the task: nothing else finishes it.
        unsafe { self.finish_sole(result) };
    }

    /// Plain data decodes with one read; a cell without extras has no
    /// callback to run and no waker to wake (one registered later, by a
    /// `poll` racing with the delivery, is woken all the same: waking is
    /// the executor's to keep short).
    fn delivers_at_once(&self) -> bool {
        crate::wire::plain_of::<R>().is_some() && self.extras().is_none()
    }
}

/// Why this thread may not wait on `pool`, if it may not: it runs one of the
/// pool's callbacks ([`Error::WaitInCallback`]), or the pool belongs to
/// another process ([`Error::ForeignPool`]).
pub(super) fn refusal(pool: &Weak<Shared>) -> Option<Error> {
    // Checked first, and also when the pool is gone: its `Shared` stays
    // allocated while this `Weak` lives, so the address is still its own.
    if super::driver::is_delivering(pool.as_ptr()) {
        return Some(Error::WaitInCallback);
    }
    pool.upgrade()?.check_can_wait().err()
}

/// Waits for `cell`'s result, helping `pool` collect meanwhile, and takes
/// it: the blocking [`Pool::apply`](crate::Pool::apply), whose caller holds
/// the pool and has checked that it may wait on it (`Shared::check_can_wait`).
/// Without an [`AsyncResult`] in between, a round trip takes no weak
/// reference to the pool and upgrades none: four read-modify-writes of the
/// pool's reference counts fewer, two of them between the result's arrival
/// and the caller's next task.
pub(super) fn wait_and_take<T: Send + 'static>(cell: &Cell<T>, pool: &Shared) -> Result<T> {
    if !cell.is_ready() {
        // Without a deadline the wait ends only with the result.
        spin_helping(cell, pool, None);
    }
    cell.take()
}

/// Pauses (`spin_loop`) a waiting caller adds after a helping pass that did
/// not bring its result, beside its spinner's own (see `spin_helping`).
const EXTRA_PAUSES_AFTER_EMPTY_PASS: u32 = 2;

/// Waits until `cell`'s result is in or `deadline` passed, returns whether
/// it is in: spins first, helping the pool collect results (a round trip is
/// a few microseconds, a futex sleep and wake-up tens of them), then sleeps
/// helping (`sleep_helping`). The caller may wait on `pool`.
fn spin_helping<T: Send + 'static>(
    cell: &Cell<T>,
    pool: &Shared,
    deadline: Option<Instant>,
) -> bool {
    let helping = pool.helper();
    let mut spinner = Spinner::new();
    while !cell.is_ready() {
        pool.try_drive();
        if cell.is_ready() {
            break;
        }
        // A few pauses more after a pass that found nothing, beside the
        // spinner's: measured, they moved the median round trip of a
        // blocking `apply` from about 0.57 to 0.53-0.54 µs (0.55 µs before
        // this branch), where none, or five, left it at 0.56-0.59 µs. The
        // passes poll the line the worker writes its result into; the
        // spacing of those polls decides how long a result waits to be
        // seen and how often a poll takes the line from the worker writing
        // it (see docs/performance.md, "latency5").
        for _ in 0..EXTRA_PAUSES_AFTER_EMPTY_PASS {
            std::hint::spin_loop();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if !spinner.spin() {
            // Hand over to the driver thread, then sleep until our result
            // is delivered, or a delivery starts: one held up in another
            // task's slow decoder would hold ours back, so we then collect
            // from the rings ourselves (`assist`).
            drop(helping);
            return sleep_helping(cell, pool, deadline);
        }
    }
    true
}

/// The slow path of [`spin_helping`], out of line so that the spin's code
/// stays as small as it was (`latency` measured about 5% slower with it
/// inlined).
#[cold]
#[inline(never)]
fn sleep_helping<T: Send + 'static>(
    cell: &Cell<T>,
    pool: &Shared,
    deadline: Option<Instant>,
) -> bool {
    super::assist::wait_helping_until(pool, deadline, false, || cell.is_ready())
}

/// The result of a task that is running: Python's `AsyncResult`.
///
/// Dropping it (or a future awaiting it: `tokio::time::timeout`, `select!`,
/// an aborted task) detaches from the task without cancelling it, as in
/// Python: the task still runs and holds its worker, its callbacks still
/// run, and [`Pool::join`](crate::Pool::join) waits for it. Bound tasks with
/// [`task_timeout`](crate::PoolBuilder::task_timeout), or end them all with
/// [`Pool::terminate`](crate::Pool::terminate).
///
/// Memory: the result's slot (40 bytes for a small result) is carved, with
/// those of the tasks submitted around it on the same thread, from a 4 KiB
/// block that goes back to the allocator when the last of them is dropped.
/// So a handle kept for long keeps its whole block: keeping one handle in a
/// hundred for the program's life keeps about 4 KiB for each.
///
/// ```
/// fn main() {
///     let pool = corepool::Pool::builder().workers(1).build().unwrap();
///     let handle = pool.apply_async(|x: u64| x + 1, 41).unwrap();
///     handle.wait();
///     assert!(handle.ready() && handle.successful() == Some(true));
///     assert_eq!(handle.get().unwrap(), 42);
/// }
/// ```
pub struct AsyncResult<T> {
    cell: ChunkRc<Cell<T>>,
    pool: Weak<Shared>,
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.cell.is_ready())
            .finish()
    }
}

impl<T: Send + 'static> AsyncResult<T> {
    pub(super) fn new(cell: ChunkRc<Cell<T>>, pool: Weak<Shared>) -> Self {
        Self { cell, pool }
    }

    /// Whether the task has finished (successfully or not).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let h = pool.apply_async(|x: u64| x, 1)?;
    ///     h.wait();
    ///     assert!(h.ready());
    ///     Ok(())
    /// }
    /// ```
    pub fn ready(&self) -> bool {
        self.cell.is_ready()
    }

    /// `Some(true)` if it finished successfully, `Some(false)` if it failed,
    /// `None` while it runs (Python raises `ValueError` there).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let good = pool.apply_async(|x: u64| x, 1)?;
    ///     let bad = pool.apply_async(|x: u64| -> u64 { panic!("bad {x}") }, 2)?;
    ///     good.wait();
    ///     bad.wait();
    ///     assert_eq!(good.successful(), Some(true));
    ///     assert_eq!(bad.successful(), Some(false));
    ///     Ok(())
    /// }
    /// ```
    pub fn successful(&self) -> Option<bool> {
        self.cell.successful()
    }

    /// Blocks until the task has finished. In a callback of the task's pool,
    /// or in a `fork()`ed copy of it, returns at once (see [`get`](Self::get)).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let h = pool.apply_async(|x: u64| x + 1, 1)?;
    ///     h.wait(); // the result stays in the handle
    ///     assert_eq!(h.get()?, 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Blocks until the task has finished or `timeout` passed; returns whether
    /// it finished. The task goes on either way. Returns `false` at once
    /// where [`wait`](Self::wait) returns at once.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let h = pool.apply_async(|x: u64| x + 1, 1)?;
    ///     while !h.wait_timeout(Duration::from_millis(10)) {
    ///         // not yet: do something else meanwhile
    ///     }
    ///     assert_eq!(h.get()?, 2);
    ///     Ok(())
    /// }
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(crate::shm::park::deadline_after(timeout))
    }

    /// Waits for the result and returns it.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     assert_eq!(pool.apply_async(|s: String| s.len() as u64, "four".into())?.get()?, 4);
    ///     let err = pool.apply_async(|x: u64| -> u64 { panic!("no {x}") }, 1)?.get().unwrap_err();
    ///     assert!(matches!(err, corepool::Error::Panicked { message } if message.contains("no 1")));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// The task's error: [`Error::Panicked`], [`Error::WorkerDied`],
    /// [`Error::Cancelled`], [`Error::Decode`], [`Error::ResultTooLarge`].
    /// Without waiting: [`Error::WaitInCallback`] in a callback of the same
    /// pool while the result is not in (the wait could never end),
    /// [`Error::ForeignPool`] in a `fork()`ed copy of the pool.
    pub fn get(self) -> Result<T> {
        if !self.wait_until(None) {
            return Err(self.refusal().unwrap_or(Error::Timeout));
        }
        self.cell.take()
    }

    /// Waits at most `timeout` for the result (Python's `get(timeout)`). After
    /// a timeout the handle is still good: call again to wait longer.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::builder().workers(1).build()?;
    ///     let h = pool.apply_async(|x: u64| x + 1, 41)?;
    ///     let answer = loop {
    ///         match h.get_timeout(Duration::from_millis(100)) {
    ///             Err(corepool::Error::Timeout) => continue, // still running
    ///             other => break other?,
    ///         }
    ///     };
    ///     assert_eq!(answer, 42);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if it did not come in time; [`Error::ResultTaken`] if
    /// an earlier call already returned it; otherwise as [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        if self.wait_timeout(timeout) {
            self.cell.take()
        } else {
            Err(self.refusal().unwrap_or(Error::Timeout))
        }
    }

    /// Why this thread may not wait for the result, if it may not: it runs
    /// a callback of the task's pool ([`Error::WaitInCallback`]), or the pool
    /// belongs to another process ([`Error::ForeignPool`]).
    fn refusal(&self) -> Option<Error> {
        refusal(&self.pool)
    }

    /// Waits until the result is in or `deadline` passed; returns at once
    /// (with `false`) when [`refusal`](Self::refusal) forbids waiting.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if self.cell.is_ready() {
            return true;
        }
        // `refusal` spelt out, so that the pool is upgraded once (an atomic
        // read-modify-write on its count) rather than twice per wait.
        if super::driver::is_delivering(self.pool.as_ptr()) {
            return false;
        }
        let Some(pool) = self.pool.upgrade() else {
            return self.block_until(deadline);
        };
        if pool.check_owner().is_err() {
            return false;
        }
        spin_helping(&self.cell, &pool, deadline)
    }

    fn block_until(&self, deadline: Option<Instant>) -> bool {
        self.cell.sleep_until(deadline)
    }
}

/// An [`AsyncResult`] is a [`Future`] of the task's result, for async
/// programs on any executor (corepool depends on none): awaiting it never
/// blocks a thread, and whichever thread collects the result (the pool's
/// driver, a waiting `get`, another future's poll) wakes the awaiting task
/// when it comes in (for a task with callbacks, the callback thread
/// does, after the task's callback ran, as for [`get`](AsyncResult::get)).
/// A poll may collect other results of the pool on the way, never runs a
/// callback: those run on the pool's callback thread (see
/// [`Callbacks`](crate::Callbacks)), outside the async runtime, and one that
/// blocks there holds back no other task's `.await`. The handles of
/// [`map_async`](crate::Pool::map_async) and
/// [`starmap_async`](crate::Pool::starmap_async) are `AsyncResult`s too.
///
/// ```
/// use std::future::Future;
/// use std::pin::pin;
/// use std::sync::Arc;
/// use std::task::{Context, Poll, Wake};
///
/// /// The smallest executor there is: poll, park until woken, repeat.
/// fn block_on<F: Future>(future: F) -> F::Output {
///     struct Unpark(std::thread::Thread);
///     impl Wake for Unpark {
///         fn wake(self: Arc<Self>) {
///             self.0.unpark();
///         }
///     }
///     let waker = Arc::new(Unpark(std::thread::current())).into();
///     let mut cx = Context::from_waker(&waker);
///     let mut future = pin!(future);
///     loop {
///         match future.as_mut().poll(&mut cx) {
///             Poll::Ready(out) => return out,
///             Poll::Pending => std::thread::park(),
///         }
///     }
/// }
///
/// fn main() -> corepool::Result<()> {
///     let pool = corepool::Pool::new(2)?;
///     let one = pool.apply_async(|x: u64| x * 2, 21)?;
///     let many = pool.map_async(|x: u64| x + 1, 0..100u64)?;
///     let (one, many) = block_on(async { (one.await, many.await) });
///     assert_eq!(one?, 42);
///     assert_eq!(many?.len(), 100);
///     Ok(())
/// }
/// ```
///
/// With tokio, `handle.await?` inside `#[tokio::main]` (see
/// `examples/async_tokio.rs` in the repository). Polling after the result
/// was returned gives [`Error::ResultTaken`]; in a `fork()`ed copy of the
/// pool the future is ready at once with [`Error::ForeignPool`]; polled in
/// a callback of its pool (a `block_on` there) before the result is in, it
/// is ready at once with [`Error::WaitInCallback`], as `get` is. The same
/// holds on any thread while it delivers the pool's results (the pool's
/// [`Wire::decode`](crate::Wire::decode) of a result, a waker's `wake` run
/// by the collecting thread), since a wait there may be for a result only
/// that thread would collect: an executor whose `wake` polls futures
/// inline gets the result of the future it was woken for (it is in
/// already), and `WaitInCallback` for another of the same pool that is
/// not; `ready()` is the check that never refuses.
impl<T: Send + 'static> Future for AsyncResult<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if self.cell.is_ready() {
            return Poll::Ready(self.cell.take());
        }
        // In a callback of the pool (polled by a `block_on` there), as
        // `get`: the result may be one only this thread would deliver (its
        // own callback queued behind the one running), so the wait is
        // refused rather than left to hang.
        if super::driver::is_delivering(self.pool.as_ptr()) {
            return Poll::Ready(Err(Error::WaitInCallback));
        }
        // One upgrade of the pool for both (an atomic read-modify-write on
        // its count each): a `fork()`ed copy refuses, and otherwise helps
        // once without blocking: on a busy pool the result may be sitting
        // in a ring that nobody is collecting this instant.
        if let Some(pool) = self.pool.upgrade() {
            if let Err(foreign) = pool.check_owner() {
                return Poll::Ready(Err(foreign));
            }
            pool.try_drive();
        }
        if self.cell.register_waker(cx.waker()) {
            return Poll::Ready(self.cell.take());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    //! The cell alone, without a pool: what Miri checks (no system call is
    //! made on these paths, except where a test says so).

    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    #[test]
    fn a_handle_is_unpin_whatever_its_result_type() {
        // As with its old `Arc` cell: `Pin::new(&mut handle)`, `poll_unpin`
        // and `select!` on `&mut handle` work for every `T` (compile-time).
        fn assert_unpin<T: Unpin>() {}
        assert_unpin::<AsyncResult<std::marker::PhantomPinned>>();
        assert_unpin::<ChunkRc<Cell<std::marker::PhantomPinned>>>();
    }

    #[test]
    fn a_handle_is_small() {
        // The slot's count and the cell: 40 bytes for a small result, 100
        // to a chunk, where an `Arc` took 48 (64 with glibc's header) and a
        // lock, a condition variable and a waker slot 120.
        assert!(std::mem::size_of::<Cell<u64>>() <= 32);
        assert!(super::super::cell_chunks::slot_bytes::<Cell<u64>>() <= 40);
    }

    #[test]
    fn the_first_finish_wins_and_the_result_is_taken_once() {
        let cell = Cell::<String>::new(Callbacks::new(), None);
        assert!(!cell.is_ready());
        assert_eq!(cell.successful(), None);
        cell.finish(Ok("first".into()));
        cell.finish(Ok("second".into())); // dropped, not stored
        cell.finish(Err(Error::Cancelled));
        assert!(cell.is_ready());
        assert_eq!(cell.successful(), Some(true));
        assert_eq!(cell.take(), Ok("first".to_string()));
        assert_eq!(cell.take(), Err(Error::ResultTaken));
        assert_eq!(cell.successful(), None);
    }

    #[test]
    fn an_error_is_stored_and_an_untaken_result_is_dropped_with_the_cell() {
        let failed = Cell::<Vec<u8>>::new(Callbacks::new(), None);
        failed.finish(Err(Error::Cancelled));
        assert_eq!(failed.successful(), Some(false));
        assert_eq!(failed.take(), Err(Error::Cancelled));
        // Miri reports a leak if the value (a heap `Vec`) is not dropped.
        let untaken = Cell::<Vec<u8>>::new(Callbacks::new(), None);
        untaken.finish(Ok(vec![1, 2, 3]));
        drop(untaken);
        // Nor is anything dropped that was never stored.
        drop(Cell::<Vec<u8>>::new(Callbacks::new(), None));
    }

    #[test]
    fn callbacks_run_once_before_the_result_is_visible_and_may_panic() {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let cell = Cell::new(
            Callbacks::new().on_success(|v: &u64| {
                SEEN.fetch_add(*v as usize, Ordering::Relaxed);
            }),
            None,
        );
        let probe = cell.clone();
        let cell2 = Cell::new(
            Callbacks::<u64>::new().on_error(move |_| {
                // The result is not visible while its callback runs.
                assert!(!probe.is_ready());
                panic!("an error callback that panics, on purpose");
            }),
            None,
        );
        cell.finish(Ok(5));
        cell.finish(Ok(7));
        assert_eq!(SEEN.load(Ordering::Relaxed), 5);
        assert_eq!(cell.take(), Ok(5));
        cell2.finish(Err(Error::Cancelled));
        assert_eq!(cell2.take(), Err(Error::Cancelled));
    }

    #[test]
    fn a_cell_with_callbacks_and_a_callback_thread_hands_itself_to_its_job() {
        // No pool attached: the job runs where it is handed over, but the
        // cell still upgrades its own pointer for it (`Later`), which is
        // what Miri checks here; the job's reference is the last but one.
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let thread = CallbackThread::new();
        let cell = Cell::new(
            Callbacks::new().on_success(|v: &u64| {
                SEEN.fetch_add(*v as usize, Ordering::Relaxed);
            }),
            Some(&thread),
        );
        let other = Cell::new(
            Callbacks::<u64>::new().on_error(|_| {
                SEEN.fetch_add(100, Ordering::Relaxed);
            }),
            Some(&thread),
        );
        // Owed from the making: one each, and one more cell dropped
        // unsubmitted settles its own.
        drop(Cell::new(
            Callbacks::<u64>::new().on_success(|_| {}),
            Some(&thread),
        ));
        // Through the sink, as a pool delivers (`finish_sole`).
        let sink = super::super::sink::Sink::thin(cell.clone());
        sink.complete(Outcome::Ok(crate::wire::Payload::from_slice(
            &9u64.to_ne_bytes(),
        )));
        other.finish(Err(Error::Cancelled));
        assert_eq!(SEEN.load(Ordering::Relaxed), 109);
        assert_eq!(cell.take(), Ok(9));
        assert_eq!(other.take(), Err(Error::Cancelled));
        assert!(thread.wait_settled_until(Some(Instant::now())));
    }

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_registered_waker_is_woken_once_by_the_result() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let cell = Cell::<u64>::new(Callbacks::new(), None);
        assert!(!cell.register_waker(&waker));
        assert!(!cell.register_waker(&waker)); // the same waker: kept
        cell.finish(Ok(1));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // Registered after the result came: told to poll again now.
        assert!(cell.register_waker(&waker));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(cell.take(), Ok(1));
    }

    #[test]
    fn a_result_finished_on_another_thread_is_seen_whole() {
        for _ in 0..if cfg!(miri) { 4 } else { 100 } {
            let cell = Cell::<Vec<u64>>::new(Callbacks::new(), None);
            let count = Arc::new(Count(AtomicUsize::new(0)));
            let waker = Waker::from(count.clone());
            let finisher = {
                let cell = cell.clone();
                std::thread::spawn(move || cell.finish(Ok(vec![1, 2, 3])))
            };
            let registered_late = cell.register_waker(&waker);
            while !cell.is_ready() {
                std::hint::spin_loop();
            }
            finisher.join().unwrap();
            assert_eq!(cell.take(), Ok(vec![1, 2, 3]));
            // Either the finisher saw the waker, or the registration saw
            // the result: never neither.
            assert_eq!(
                count.0.load(Ordering::Relaxed) + usize::from(registered_late),
                1
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "sleeps on a futex (a system call)")]
    fn a_sleeper_is_woken_by_the_result_and_a_deadline_ends_a_sleep() {
        let cell = Cell::<u64>::new(Callbacks::new(), None);
        let soon = Some(Instant::now() + Duration::from_millis(1));
        assert!(!cell.sleep_until(soon));
        let sleeper = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.sleep_until(None))
        };
        cell.finish(Ok(3));
        assert!(sleeper.join().unwrap());
        assert_eq!(cell.take(), Ok(3));
    }

    #[test]
    fn a_cell_with_callbacks_finished_on_another_thread_and_dropped_in_either_order() {
        // The `upgrade_live` path (`Later`) across threads, under Miri too:
        // a `CallbackThread` without a pool runs the job inline, on the
        // finishing thread. Even rounds drop our reference first (the
        // sink's and the job's outlive it), odd rounds take the result.
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        let thread = CallbackThread::new();
        let rounds = if cfg!(miri) { 6 } else { 200 };
        for round in 0..rounds {
            let cell = Cell::new(
                Callbacks::new().on_success(|v: &Vec<u64>| {
                    SEEN.fetch_add(v.len(), Ordering::Relaxed);
                }),
                Some(&thread),
            );
            let sink = super::super::sink::Sink::thin(cell.clone());
            let finisher =
                std::thread::spawn(move || sink.complete(Outcome::Err(Error::Cancelled)));
            if round % 2 == 0 {
                drop(cell);
            } else {
                // Bounded: the finisher is joined below only after this,
                // and a hang here is caught by the harness's timeout.
                let deadline = Instant::now() + Duration::from_secs(60);
                while !cell.is_ready() {
                    assert!(Instant::now() < deadline, "the finisher never finished");
                    std::thread::yield_now();
                }
                assert_eq!(cell.take(), Err(Error::Cancelled));
            }
            finisher.join().unwrap();
            let ok = Cell::new(
                Callbacks::new().on_success(|v: &Vec<u64>| {
                    SEEN.fetch_add(v.len(), Ordering::Relaxed);
                }),
                Some(&thread),
            );
            let other = ok.clone();
            std::thread::spawn(move || other.finish(Ok(vec![1, 2])))
                .join()
                .unwrap();
            assert_eq!(ok.take(), Ok(vec![1, 2]));
        }
        assert!(thread.wait_settled_until(Some(Instant::now() + Duration::from_secs(60))));
        assert_eq!(SEEN.load(Ordering::Relaxed), 2 * rounds);
    }
}
