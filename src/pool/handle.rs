//! Results on their way back: [`AsyncResult`] and the completion plumbing.

use super::Shared;
use crate::error::{Error, Result};
use crate::shm::park::Spinner;
use crate::wire::{decode_exact, Wire};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// What a worker sent back for one task, before decoding.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The encoded result.
    Ok(crate::wire::Payload),
    /// The task failed.
    Err(Error),
}

/// Something that receives task outcomes. `tag` tells apart the tasks of one
/// receiver (the chunks of a `map`).
pub(crate) trait Completion: Send + Sync {
    /// Delivers one outcome. Runs in the parent, outside the pool's lock.
    fn complete(&self, tag: u64, outcome: Outcome);
}

/// Where a task's outcome goes.
#[derive(Clone)]
pub(crate) struct Sink {
    pub target: Arc<dyn Completion>,
    pub tag: u64,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

type OkCallback<T> = Box<dyn FnOnce(&T) + Send>;
type ErrCallback = Box<dyn FnOnce(&Error) + Send>;

/// Callbacks for [`crate::Pool::apply_async_with`], Python's `callback` and
/// `error_callback`. They run in the parent, on the pool thread that received
/// the result, before the result becomes visible to `get`; keep them short.
///
/// ```
/// let cb = corepool::Callbacks::<u64>::new()
///     .on_success(|v| println!("value = {v}"))
///     .on_error(|e| println!("error-value = {e}"));
/// # drop(cb);
/// ```
pub struct Callbacks<T> {
    ok: Option<OkCallback<T>>,
    err: Option<ErrCallback>,
}

impl<T> Default for Callbacks<T> {
    fn default() -> Self {
        Self {
            ok: None,
            err: None,
        }
    }
}

impl<T> fmt::Debug for Callbacks<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callbacks")
            .field("on_success", &self.ok.is_some())
            .field("on_error", &self.err.is_some())
            .finish()
    }
}

impl<T> Callbacks<T> {
    /// No callbacks.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(1)?;
    ///     // No callbacks: the same as `apply_async`.
    ///     let h = pool.apply_async_with(|x: u64| x, 5, corepool::Callbacks::new())?;
    ///     assert_eq!(h.get()?, 5);
    ///     Ok(())
    /// }
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Called with the result when the task succeeds (Python's `callback`).
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(1)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new().on_success(move |v: &u64| tx.send(*v).unwrap());
    ///     pool.apply_async_with(|x: u64| x * 3, 7, cb)?;
    ///     assert_eq!(rx.recv().unwrap(), 21); // ran in this process, nobody called `get`
    ///     Ok(())
    /// }
    /// ```
    pub fn on_success(mut self, f: impl FnOnce(&T) + Send + 'static) -> Self {
        self.ok = Some(Box::new(f));
        self
    }

    /// Called with the error when the task fails (Python's `error_callback`).
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn fails(n: u64) -> u64 {
    ///     panic!("n = {n} is too big")
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(1)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new().on_error(move |e| tx.send(e.to_string()).unwrap());
    ///     pool.apply_async_with(fails, 9, cb)?;
    ///     assert!(rx.recv().unwrap().contains("n = 9 is too big"));
    ///     Ok(())
    /// }
    /// ```
    pub fn on_error(mut self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        self.err = Some(Box::new(f));
        self
    }
}

/// The slot a result lands in, and everyone waiting for it.
pub(crate) struct Cell<T> {
    ready: AtomicBool,
    value: Mutex<Option<Result<T>>>,
    callbacks: Mutex<Callbacks<T>>,
    has_callbacks: bool,
    changed: Condvar,
    /// Threads blocked on `changed`; only changed with `value` locked.
    blocked: AtomicUsize,
}

impl<T: Send + 'static> Cell<T> {
    pub(crate) fn new(callbacks: Callbacks<T>) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            value: Mutex::new(None),
            has_callbacks: callbacks.ok.is_some() || callbacks.err.is_some(),
            callbacks: Mutex::new(callbacks),
            changed: Condvar::new(),
            blocked: AtomicUsize::new(0),
        })
    }

    /// Stores the final result (the first one wins), runs the callbacks, wakes
    /// the waiters.
    pub(crate) fn finish(&self, result: Result<T>) {
        // Acquire pairs with the Release store below, in an earlier call.
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        if self.has_callbacks {
            let callbacks = std::mem::take(&mut *lock(&self.callbacks));
            match (&result, callbacks) {
                (Ok(v), Callbacks { ok: Some(f), .. }) => f(v),
                (Err(e), Callbacks { err: Some(f), .. }) => f(e),
                _ => {}
            }
        }
        let mut slot = lock(&self.value);
        if slot.is_none() {
            *slot = Some(result);
            // Release pairs with the Acquire loads in `is_ready`.
            self.ready.store(true, Ordering::Release);
        }
        // Waiters register under this lock before they check `ready`, so
        // none is missed; and the common case (nobody blocked) makes no
        // futex system call, which `notify_all` always would.
        let blocked = self.blocked.load(Ordering::Relaxed) > 0;
        drop(slot);
        if blocked {
            self.changed.notify_all();
        }
    }

    fn is_ready(&self) -> bool {
        // Acquire pairs with the Release store in `finish`: the value is in.
        self.ready.load(Ordering::Acquire)
    }

    fn take(&self) -> Result<T> {
        // Called only once the cell is ready, so `None` means an earlier
        // `get_timeout` took the result.
        lock(&self.value).take().unwrap_or(Err(Error::ResultTaken))
    }
}

impl<R: Wire> Completion for Cell<R> {
    fn complete(&self, _tag: u64, outcome: Outcome) {
        let result = match outcome {
            Outcome::Ok(bytes) => decode_exact::<R>(&bytes),
            Outcome::Err(e) => Err(e),
        };
        self.finish(result);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking callback must not make every later result unreachable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The result of a task that is running: Python's `AsyncResult`.
///
/// ```
/// fn main() {
///     corepool::init();
///     let pool = corepool::Pool::builder().workers(1).build().unwrap();
///     let handle = pool.apply_async(|x: u64| x + 1, 41).unwrap();
///     handle.wait();
///     assert!(handle.ready() && handle.successful() == Some(true));
///     assert_eq!(handle.get().unwrap(), 42);
/// }
/// ```
pub struct AsyncResult<T> {
    cell: Arc<Cell<T>>,
    pool: Weak<Shared>,
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.cell.ready.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Send + 'static> AsyncResult<T> {
    pub(crate) fn new(cell: Arc<Cell<T>>, pool: Weak<Shared>) -> Self {
        Self { cell, pool }
    }

    /// Whether the task has finished (successfully or not).
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
    ///     corepool::init();
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
        if !self.ready() {
            return None;
        }
        lock(&self.cell.value).as_ref().map(|r| r.is_ok())
    }

    /// Blocks until the task has finished.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
    /// it finished. The task goes on either way.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
    ///     corepool::init();
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
    pub fn get(self) -> Result<T> {
        self.wait();
        self.cell.take()
    }

    /// Waits at most `timeout` for the result (Python's `get(timeout)`). After
    /// a timeout the handle is still good: call again to wait longer.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
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
            Err(Error::Timeout)
        }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if self.cell.is_ready() {
            return true;
        }
        let Some(pool) = self.pool.upgrade() else {
            return self.block_until(deadline);
        };
        // Spin first, helping the pool collect results: a round trip is a few
        // microseconds, a futex sleep and wake-up tens of them.
        let helping = pool.helper();
        let mut spinner = Spinner::new();
        while !self.cell.is_ready() {
            pool.try_drive();
            if self.cell.is_ready() {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            if !spinner.spin() {
                // Hand over to the driver thread, then sleep.
                drop(helping);
                drop(pool);
                return self.block_until(deadline);
            }
        }
        true
    }

    fn block_until(&self, deadline: Option<Instant>) -> bool {
        let cell = &self.cell;
        let mut value = lock(&cell.value);
        // Registered under the lock, before the check: see `Cell::finish`.
        cell.blocked.fetch_add(1, Ordering::Relaxed);
        let mut ready = true;
        while !cell.is_ready() {
            match deadline {
                None => value = cell.changed.wait(value).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        ready = false;
                        break;
                    }
                    value = cell
                        .changed
                        .wait_timeout(value, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        cell.blocked.fetch_sub(1, Ordering::Relaxed);
        drop(value);
        ready
    }
}

/// Collects the chunks of a `map` into one `Vec`, in order.
///
/// Chunks usually come back in order: each is then decoded straight onto
/// the end of the output, with no `Vec` of its own and no final
/// concatenation (for plain data, one copy from the result bytes). A chunk
/// that arrives early waits as the bytes it came in until its turn.
pub(crate) struct MapCollector<R> {
    state: Mutex<Collected<R>>,
    /// Signalled when a chunk completes and somebody waits in
    /// [`wait_completed`](Self::wait_completed).
    progress: Condvar,
    cell: Arc<Cell<Vec<R>>>,
}

struct Collected<R> {
    /// The results of chunks `0..next`, in order.
    out: Vec<R>,
    next: usize,
    /// Every chunk added so far: how many results it owes, and its encoded
    /// results while they wait for the chunks before them.
    chunks: Vec<(usize, Option<crate::wire::Payload>)>,
    /// No chunk will be added any more.
    sealed: bool,
    /// Chunks answered, in any order (failed ones too).
    completed: usize,
    /// Threads blocked in `wait_completed`; only changed under this lock.
    waiters: usize,
    failed: bool,
}

impl<R: Wire> MapCollector<R> {
    /// A collector expecting about `items` results (a hint for the output's
    /// first allocation); chunks are added with [`add_chunk`](Self::add_chunk)
    /// and the collection closed with [`seal`](Self::seal).
    pub(crate) fn new(items: usize, cell: Arc<Cell<Vec<R>>>) -> Arc<Self> {
        // The hint may come from a faulty `size_hint`: the output grows
        // past this if need be.
        const PREALLOCATE_AT_MOST: usize = 1 << 24;
        Arc::new(Self {
            state: Mutex::new(Collected {
                out: Vec::with_capacity(items.min(PREALLOCATE_AT_MOST)),
                next: 0,
                chunks: Vec::new(),
                sealed: false,
                completed: 0,
                waiters: 0,
                failed: false,
            }),
            progress: Condvar::new(),
            cell,
        })
    }

    /// Registers the next chunk, which owes `due` results; returns its tag.
    /// Call before submitting it.
    pub(crate) fn add_chunk(&self, due: usize) -> u64 {
        let mut state = lock(&self.state);
        state.chunks.push((due, None));
        (state.chunks.len() - 1) as u64
    }

    /// No more chunks: the result is complete once those added are in.
    pub(crate) fn seal(&self) {
        let mut state = lock(&self.state);
        state.sealed = true;
        self.finish_if_done(state);
    }

    /// Whether the collection has ended (all in, or failed).
    pub(crate) fn ended(&self) -> bool {
        self.cell.is_ready()
    }

    /// Blocks until at least `n` chunks have been answered or the collection
    /// failed, helping `pool` collect results meanwhile (as
    /// [`AsyncResult::wait`] does).
    pub(crate) fn wait_completed(&self, n: usize, pool: &Shared) {
        let reached = |s: &Collected<R>| s.completed >= n || s.failed;
        {
            let helping = pool.helper();
            let mut spinner = Spinner::new();
            loop {
                if reached(&lock(&self.state)) {
                    return;
                }
                pool.try_drive();
                if !spinner.spin() {
                    break;
                }
            }
            // Hand over to the driver thread before sleeping.
            drop(helping);
        }
        let mut state = lock(&self.state);
        state.waiters += 1;
        while !reached(&state) {
            state = self.progress.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiters -= 1;
    }

    fn finish_if_done(&self, mut state: std::sync::MutexGuard<'_, Collected<R>>) {
        if state.failed || !state.sealed || state.next < state.chunks.len() {
            return;
        }
        let all = std::mem::take(&mut state.out);
        drop(state);
        self.cell.finish(Ok(all));
    }

    fn fail(&self, mut state: std::sync::MutexGuard<'_, Collected<R>>, e: Error) {
        state.failed = true;
        drop(state);
        self.cell.finish(Err(e));
    }

    /// Takes one chunk's outcome; decodes every chunk that is now in order.
    fn take(&self, mut state: std::sync::MutexGuard<'_, Collected<R>>, tag: u64, outcome: Outcome) {
        if state.failed {
            return;
        }
        let bytes = match outcome {
            Outcome::Ok(bytes) => bytes,
            Outcome::Err(e) => return self.fail(state, e),
        };
        let index = tag as usize;
        let next = state.next;
        match state.chunks.get_mut(index) {
            Some((_, slot)) if index > next => {
                *slot = Some(bytes);
                return;
            }
            Some(_) if index == next => {}
            _ => return, // not a chunk of ours, or one already taken
        }
        let mut bytes = Some(bytes);
        while let Some(b) = bytes.take() {
            let Collected {
                out, next, chunks, ..
            } = &mut *state;
            if let Err(e) = crate::wire::decode_vec_into(&b, chunks[*next].0, out) {
                return self.fail(state, e);
            }
            *next += 1;
            bytes = chunks.get_mut(*next).and_then(|(_, slot)| slot.take());
        }
        self.finish_if_done(state);
    }
}

impl<R: Wire> Completion for MapCollector<R> {
    fn complete(&self, tag: u64, outcome: Outcome) {
        let mut state = lock(&self.state);
        state.completed += 1;
        if state.waiters > 0 {
            // The waiter re-checks under the lock we hold, once we drop it.
            self.progress.notify_all();
        }
        self.take(state, tag, outcome);
    }
}

/// A chunk's results, if there are as many as it had items: a worker that
/// returns fewer or more is reported, never silently short.
pub(crate) fn check_chunk<R>(values: Vec<R>, due: usize) -> Result<Vec<R>> {
    if values.len() == due {
        Ok(values)
    } else {
        Err(crate::wire::decode_error::<Vec<R>>(format!(
            "{} results for a chunk of {due} items",
            values.len()
        )))
    }
}

/// Sends each chunk's results to an `imap_unordered` iterator as they come.
pub(crate) struct ChannelSink<R> {
    pub tx: crossbeam_channel::Sender<Result<Vec<R>>>,
}

impl<R: Wire> Completion for ChannelSink<R> {
    /// `tag` is the number of results the chunk owes.
    fn complete(&self, tag: u64, outcome: Outcome) {
        let chunk = match outcome {
            Outcome::Ok(bytes) => {
                decode_exact::<Vec<R>>(&bytes).and_then(|values| check_chunk(values, tag as usize))
            }
            Outcome::Err(e) => Err(e),
        };
        let _ = self.tx.send(chunk);
    }
}
