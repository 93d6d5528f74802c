//! One task's result on its way back: the [`Cell`] it lands in and the
//! [`AsyncResult`] a caller waits on, blocking or as a [`Future`].

use super::driver::Shared;
use super::sink::{Completion, Outcome};
use super::Callbacks;
use crate::error::{Error, Result};
use crate::shm::park::Spinner;
use crate::sync::lock;
use crate::wire::{decode_exact, Wire};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The slot a result lands in, and everyone waiting for it.
pub(super) struct Cell<T> {
    ready: AtomicBool,
    value: Mutex<Option<Result<T>>>,
    /// The task's callbacks, if it has any: boxed, so that the common
    /// handle without them is a word here instead of two boxes and a lock.
    /// A handle lives from submission to `get`, and a caller that submits
    /// many tasks before collecting holds them all: its size is memory
    /// touched (and page-faulted in) per task.
    callbacks: Option<Box<Mutex<Callbacks<T>>>>,
    changed: Condvar,
    /// Threads blocked on `changed`; only changed with `value` locked.
    blocked: AtomicU32,
    /// The task awaiting the result as a [`Future`], if any.
    waker: Mutex<Option<Waker>>,
    /// Whether `waker` may hold a waker: lets `finish` skip its lock in the
    /// common case where nobody awaits.
    awaited: AtomicBool,
}

impl<T: Send + 'static> Cell<T> {
    pub(super) fn new(callbacks: Callbacks<T>) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            value: Mutex::new(None),
            callbacks: (callbacks.ok.is_some() || callbacks.err.is_some())
                .then(|| Box::new(Mutex::new(callbacks))),
            changed: Condvar::new(),
            blocked: AtomicU32::new(0),
            waker: Mutex::new(None),
            awaited: AtomicBool::new(false),
        })
    }

    /// Stores the final result (the first one wins), runs the callbacks, wakes
    /// the waiters.
    pub(super) fn finish(&self, result: Result<T>) {
        // Acquire pairs with the Release store below, in an earlier call.
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        if let Some(callbacks) = &self.callbacks {
            let callbacks = std::mem::take(&mut *lock(callbacks));
            // A callback that panics must not take the delivering thread
            // (often the driver) with it: the panic hook has reported it,
            // and the task's own outcome is stored below all the same.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| match (&result, callbacks) {
                (Ok(v), Callbacks { ok: Some(f), .. }) => f(v),
                (Err(e), Callbacks { err: Some(f), .. }) => f(e),
                _ => {}
            }));
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
        // SeqCst fence pairs with the one in `register_waker`: either this
        // load sees `awaited`, or the poller's re-check after its fence sees
        // `ready` (stored above); so no awaiting task sleeps through it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.awaited.load(Ordering::Relaxed) {
            if let Some(waker) = lock(&self.waker).take() {
                waker.wake();
            }
        }
    }

    /// Keeps `waker` to be woken by [`finish`](Self::finish); returns whether
    /// the result is in already (then nobody will wake it: poll again now).
    fn register_waker(&self, waker: &Waker) -> bool {
        {
            let mut slot = lock(&self.waker);
            match &mut *slot {
                Some(old) if old.will_wake(waker) => {}
                other => *other = Some(waker.clone()),
            }
        }
        self.awaited.store(true, Ordering::Relaxed);
        // SeqCst fence pairs with the one in `finish`.
        std::sync::atomic::fence(Ordering::SeqCst);
        self.is_ready()
    }

    pub(super) fn is_ready(&self) -> bool {
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
            Outcome::Ok(bytes) => guarded_decode::<R, _>(|| decode_exact::<R>(&bytes)),
            Outcome::Err(e) => Err(e),
        };
        self.finish(result);
    }
}

/// Runs a decoder of the user's types in the parent: one that panics fails
/// its own task with [`Error::Decode`] instead of unwinding the delivering
/// thread (the panic hook has reported the panic itself).
/// `Named` is the type the error names.
pub(super) fn guarded_decode<Named, T>(decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Err(crate::wire::decode_error::<Named>(format!(
            "the decoder panicked: {message}"
        )))
    })
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
    pub(super) fn new(cell: Arc<Cell<T>>, pool: Weak<Shared>) -> Self {
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

    /// Blocks until the task has finished. In a callback of the task's pool,
    /// or in a `fork()`ed copy of it, returns at once (see [`get`](Self::get)).
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
    /// it finished. The task goes on either way. Returns `false` at once
    /// where [`wait`](Self::wait) returns at once.
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

/// An [`AsyncResult`] is a [`Future`] of the task's result, for async
/// programs on any executor (corepool depends on none): awaiting it never
/// blocks a thread, and the pool's own driver thread wakes the awaiting task
/// when the result comes in (after the task's callbacks ran, as for
/// [`get`](AsyncResult::get)). The handles of
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
///     corepool::init();
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
/// pool the future is ready at once with [`Error::ForeignPool`].
impl<T: Send + 'static> Future for AsyncResult<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if self.cell.is_ready() {
            return Poll::Ready(self.cell.take());
        }
        if let Some(Error::ForeignPool { owner }) = self.refusal() {
            return Poll::Ready(Err(Error::ForeignPool { owner }));
        }
        // Help once without blocking: on a busy pool the result may be
        // sitting in a ring that nobody is collecting this instant.
        if let Some(pool) = self.pool.upgrade() {
            pool.try_drive();
        }
        if self.cell.register_waker(cx.waker()) {
            return Poll::Ready(self.cell.take());
        }
        Poll::Pending
    }
}
