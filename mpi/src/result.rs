//! [`ClusterResult`]: a task's result on its way back to rank 0, and the
//! slot it lands in.

use corepool::{Error, Result};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

thread_local! {
    /// Whether this thread is a rank's MPI thread, which delivers results
    /// and runs callbacks: it must never wait for a result itself.
    static ON_MPI_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as the MPI thread.
pub(crate) fn mark_mpi_thread() {
    ON_MPI_THREAD.with(|on| on.set(true));
}

/// [`Error::WaitInCallback`] on the MPI thread (in a callback), where a
/// wait could never end: that thread is the one that would deliver.
pub(crate) fn check_can_wait() -> Result<()> {
    if ON_MPI_THREAD.with(std::cell::Cell::get) {
        Err(Error::WaitInCallback)
    } else {
        Ok(())
    }
}

/// How long a waiter looks at a slot before it sleeps: a round trip to
/// another rank on one node takes tens of µs, and a wake-up costs as much.
const SPIN: Duration = Duration::from_micros(100);

/// Where one result lands, and whoever waits for it.
pub(crate) struct Slot<T> {
    value: Mutex<(bool, Option<Result<T>>)>,
    /// Set (Release) once `value` holds the result: lets a waiter spin
    /// without the lock.
    ready: AtomicBool,
    changed: Condvar,
    /// Waiters asleep on `changed`. Only changed and read with `value`
    /// locked (the mutex orders it: Relaxed), so that `finish` makes the
    /// wake-up system call only when somebody sleeps; a spinning waiter,
    /// the common case of a short round trip, needs none.
    sleepers: AtomicUsize,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            value: Mutex::new((false, None)),
            ready: AtomicBool::new(false),
            changed: Condvar::new(),
            sleepers: AtomicUsize::new(0),
        })
    }

    /// Stores the result (the first one wins) and wakes the waiters.
    pub(crate) fn finish(&self, result: Result<T>) {
        let mut value = lock(&self.value);
        if !value.0 {
            *value = (true, Some(result));
            // Release pairs with the Acquire load in `wait_until`'s spin.
            self.ready.store(true, Ordering::Release);
            if self.sleepers.load(Ordering::Relaxed) > 0 {
                self.changed.notify_all();
            }
        }
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let spin_until = Instant::now() + SPIN;
        // Acquire pairs with the Release store in `finish`.
        while !self.ready.load(Ordering::Acquire) && Instant::now() < spin_until {
            std::thread::yield_now();
        }
        let mut value = lock(&self.value);
        while !value.0 {
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            match deadline {
                None => {
                    value = self
                        .changed
                        .wait(value)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.sleepers.fetch_sub(1, Ordering::Relaxed);
                        return false;
                    }
                    value = self
                        .changed
                        .wait_timeout(value, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    fn take(&self) -> Result<T> {
        lock(&self.value)
            .1
            .take()
            .unwrap_or(Err(Error::ResultTaken))
    }

    pub(crate) fn is_ready(&self) -> bool {
        lock(&self.value).0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The result of [`Cluster::apply_async`](crate::Cluster::apply_async): like
/// corepool's `AsyncResult`, for a task that may run on any rank.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
/// let result = cluster.apply_async(|x: u64| x * 2, 21)?;
/// result.wait();
/// assert!(result.ready());
/// assert_eq!(result.get()?, 42);
/// # Ok(()) }
/// ```
pub struct ClusterResult<T> {
    pub(crate) slot: Arc<Slot<T>>,
}

impl<T> fmt::Debug for ClusterResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterResult")
            .field("ready", &self.slot.is_ready())
            .finish()
    }
}

impl<T> ClusterResult<T> {
    /// Waits for the result.
    ///
    /// # Errors
    ///
    /// The task's error ([`Error::Panicked`], [`Error::WorkerDied`], ...),
    /// [`Error::Cancelled`] when the cluster was dropped first;
    /// [`Error::WaitInCallback`] in a callback of the cluster.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// assert_eq!(cluster.apply_async(|x: i64| -x, 5)?.get()?, -5);
    /// # Ok(()) }
    /// ```
    pub fn get(self) -> Result<T> {
        check_can_wait()?;
        self.slot.wait_until(None);
        self.slot.take()
    }

    /// Waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the result is not in by then (call again); as
    /// [`get`](Self::get) otherwise; [`Error::ResultTaken`] after an earlier
    /// successful call.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// use std::time::Duration;
    /// let result = cluster.apply_async(|x: u8| x, 9)?;
    /// assert_eq!(result.get_timeout(Duration::from_secs(60))?, 9);
    /// assert!(result.get_timeout(Duration::from_secs(1)).is_err()); // already taken
    /// # Ok(()) }
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        check_can_wait()?;
        if !self.slot.wait_until(Instant::now().checked_add(timeout)) {
            return Err(Error::Timeout);
        }
        self.slot.take()
    }

    /// Waits until the result is in, without taking it. In a callback of
    /// the cluster (on its MPI thread) it returns at once: that thread is
    /// the one that delivers results.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let result = cluster.apply_async(|x: u8| x, 1)?;
    /// result.wait();
    /// assert!(result.ready());
    /// # Ok(()) }
    /// ```
    pub fn wait(&self) {
        if check_can_wait().is_err() {
            return;
        }
        self.slot.wait_until(None);
    }

    /// Whether the result is in.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let result = cluster.apply_async(|x: u8| x, 1)?;
    /// let _ = result.ready(); // true once the result is in; never blocks
    /// assert_eq!(result.get()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn ready(&self) -> bool {
        self.slot.is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mpi_thread_may_not_wait() {
        let slot = Slot::<u64>::new();
        let pending = ClusterResult { slot: slot.clone() };
        let refused = std::thread::spawn(move || {
            mark_mpi_thread();
            pending.get_timeout(Duration::from_secs(60))
        })
        .join()
        .unwrap();
        assert_eq!(refused, Err(Error::WaitInCallback));
        slot.finish(Ok(5));
        assert_eq!(ClusterResult { slot }.get(), Ok(5));
    }
}
