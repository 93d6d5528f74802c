//! [`Callbacks`]: Python's `callback` and `error_callback`, run in the
//! parent when a result arrives.

use crate::error::Error;
use std::fmt;

type OkCallback<T> = Box<dyn FnOnce(&T) + Send>;
type ErrCallback = Box<dyn FnOnce(&Error) + Send>;

/// Callbacks for [`crate::Pool::apply_async_with`], Python's `callback` and
/// `error_callback`. They run in the parent, on a thread of the pool's own
/// (`corepool-callbacks`, started at the pool's first callback), one at a
/// time, in the order the results were handed to it (the order they came
/// in, but for two threads collecting at the same moment, whose results
/// interleave), outside any async runtime; never on a thread that awaits a
/// result, `get`s one, or calls [`terminate`](crate::Pool::terminate) (only
/// if that thread cannot be started do they run where the result is
/// collected, as before there was one). The callback *not* called (the
/// `on_error` of a task that succeeded, or the reverse) is dropped where
/// the result is collected: keep its captures' `Drop` trivial. A task's
/// result becomes visible
/// (to `get`, `.await`, [`ready`](crate::AsyncResult::ready)) once its own
/// callback has returned, as in Python. A callback that runs long (or
/// blocks) holds back only the callbacks after it, and the results of their
/// tasks; every other result of the pool comes in meanwhile.
/// [`join`](crate::Pool::join) and the pool's drop wait until every callback
/// has returned; after [`terminate`](crate::Pool::terminate) (which waits
/// for none), the cancelled tasks' `on_error` still run, on that thread.
///
/// What a callback may do with its own pool:
/// - **Panic.** The panic is caught and reported by the panic hook (by
///   default, the usual `thread '…' panicked at …` line on stderr; install
///   your own with [`std::panic::set_hook`] to route it). It affects nothing
///   else: the task's own outcome is stored all the same, so `get` returns
///   the value (or the task's error) as if the callback had returned, and
///   the pool goes on delivering the other results.
/// - **Submit** ([`apply_async`](crate::Pool::apply_async), `map_async`,
///   ...), [`close`](crate::Pool::close), [`terminate`](crate::Pool::terminate):
///   these work, and a submission there is never held back by
///   [`max_queued`](crate::PoolBuilder::max_queued).
/// - **Wait**: [`apply`](crate::Pool::apply), [`map`](crate::Pool::map),
///   [`imap`](crate::Pool::imap)'s items, [`join`](crate::Pool::join),
///   [`AsyncResult::get`](crate::AsyncResult::get) on a result not yet in:
///   these fail at once with [`Error::WaitInCallback`], since the thread
///   they would wait for is the one running the callback. Collect results
///   outside the callback instead.
/// - **Drop the last handle on the pool**: this returns at once; the pool's
///   teardown (terminate, reap the workers, wait for the callbacks after
///   this one) finishes on a thread of its own.
///
/// A decoder ([`Wire::decode`](crate::Wire::decode)) of a result type does
/// not run on the callback thread: it runs on whichever thread collects the
/// result (the pool's driver, a caller waiting on the pool in `get`, a map
/// or a submission waiting for room, an `AsyncResult`'s poll, a
/// [`Collector`](crate::Collector)'s thread), before any callback of its
/// task. It should be quick and never wait for another thread of the
/// program; if it panics, that task fails with [`Error::Decode`].
///
/// ```
/// let cb = corepool::Callbacks::<u64>::new()
///     .on_success(|v| println!("value = {v}"))
///     .on_error(|e| println!("error-value = {e}"));
/// # drop(cb);
/// ```
pub struct Callbacks<T> {
    pub(super) ok: Option<OkCallback<T>>,
    pub(super) err: Option<ErrCallback>,
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
