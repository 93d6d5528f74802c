//! [`JoinableQueue`]: a [`Queue`] that counts the values put and not yet
//! marked done, so that a producer can wait until consumers have finished
//! with all of them (Python's `multiprocessing.JoinableQueue`).
//!
//! The count lives in a small shared segment of its own beside the queue:
//! an unfinished count (u64) and an event count that [`JoinableQueue::join`]
//! sleeps on and the [`task_done`](JoinableQueue::task_done) that brings the
//! count to zero announces.

use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::shm::event::EventCount;
use crate::shm::handle::{type_tag, SharedSegment};
use crate::shm::park::{deadline_after, Spinner};
use crate::wire::{Encoder, Wire};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The count segment: unfinished count u64 at 0, event count (sequence u32,
/// sleepers u32) at 8.
const COUNT_BYTES: usize = 64;
const UNFINISHED_AT: usize = 0;
const SEQUENCE_AT: usize = 8;
const SLEEPERS_AT: usize = 12;

/// The type tag of a count segment's handle.
struct UnfinishedCount;

/// Python's `multiprocessing.JoinableQueue`: a [`Queue`] whose consumers
/// mark each value they took as done ([`task_done`](Self::task_done)), so
/// that [`join`](Self::join) can wait until every value put has been taken
/// *and* marked done.
///
/// Clone it, or pass it to a task or a [`crate::Process`]: every copy talks
/// to the same queue and the same count.
///
/// ```
/// use corepool::{JoinableQueue, Process};
///
/// fn worker(q: JoinableQueue<u64>) {
///     while let Ok(n) = q.get() {
///         let _ = n * n; // the work
///         q.task_done().unwrap();
///     }
/// }
///
/// fn main() {
///     let q = JoinableQueue::<u64>::unbounded().unwrap();
///     let w = Process::start(worker, q.clone()).unwrap();
///     for i in 0..100 {
///         q.put(&i).unwrap();
///     }
///     q.join().unwrap(); // every value taken and done
///     assert_eq!(q.unfinished(), 0);
///     q.close(); // the worker's get fails: it returns
///     w.join().unwrap();
/// }
/// ```
///
/// # When a process dies
///
/// As in Python, a consumer that dies after taking a value and before
/// marking it done (or a producer that dies in the middle of a put) leaves
/// the count above zero for good: no process can tell that value from one
/// still being worked on. [`join`](Self::join) then waits forever; use
/// [`join_timeout`](Self::join_timeout) wherever a consumer may die, and
/// [`unfinished`](Self::unfinished) to see how many values are
/// outstanding. The queue itself is not wedged: the dead consumer's value is
/// lost with it, every other value still comes out.
pub struct JoinableQueue<T> {
    queue: Queue<T>,
    count: Arc<SharedSegment>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            count: self.count.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field("unfinished", &self.unfinished())
            .finish()
    }
}

impl<T> JoinableQueue<T> {
    /// A joinable queue of at least `capacity` values of at most 240
    /// encoded bytes each, as [`Queue::new`]: `put` waits while it is full.
    ///
    /// # Errors
    ///
    /// As [`Queue::with_message_bytes`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// assert_eq!(q.capacity(), 4);
    /// ```
    pub fn new(capacity: usize) -> Result<Self> {
        Self::around(Queue::new(capacity)?)
    }

    /// A joinable queue of at least `capacity` values of at most
    /// `message_bytes` encoded bytes each, as [`Queue::with_message_bytes`].
    ///
    /// # Errors
    ///
    /// As [`Queue::with_message_bytes`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<Vec<u8>>::with_message_bytes(3, 1024).unwrap();
    /// assert_eq!((q.capacity(), q.message_bytes()), (4, 1024));
    /// ```
    pub fn with_message_bytes(capacity: usize, message_bytes: usize) -> Result<Self> {
        Self::around(Queue::with_message_bytes(capacity, message_bytes)?)
    }

    /// A joinable queue that is never full, as [`Queue::unbounded`]:
    /// Python's `JoinableQueue()` with no `maxsize`.
    ///
    /// # Errors
    ///
    /// As [`Queue::unbounded`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::unbounded().unwrap();
    /// for i in 0..1000 {
    ///     q.put(&i).unwrap();
    /// }
    /// assert_eq!(q.unfinished(), 1000);
    /// ```
    pub fn unbounded() -> Result<Self> {
        Self::around(Queue::unbounded()?)
    }

    /// A joinable queue that is never full, of values of at most
    /// `message_bytes` encoded bytes each, as
    /// [`Queue::unbounded_with_message_bytes`].
    ///
    /// # Errors
    ///
    /// As [`Queue::unbounded_with_message_bytes`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<String>::unbounded_with_message_bytes(64).unwrap();
    /// assert_eq!(q.message_bytes(), 64);
    /// ```
    pub fn unbounded_with_message_bytes(message_bytes: usize) -> Result<Self> {
        Self::around(Queue::unbounded_with_message_bytes(message_bytes)?)
    }

    /// `queue`, new and empty, with a new count.
    fn around(queue: Queue<T>) -> Result<Self> {
        let count = SharedSegment::create(c"corepool-joinable", COUNT_BYTES)?;
        Ok(Self { queue, count })
    }

    fn unfinished_word(&self) -> &AtomicU64 {
        let p = self.count.base().wrapping_add(UNFINISHED_AT);
        // SAFETY: the segment is page-aligned (8-aligned) and at least
        // COUNT_BYTES long (checked on decode, made so on create), lives as
        // long as `self`, and every process touches the word only
        // atomically.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    fn word32(&self, at: usize) -> &AtomicU32 {
        let p = self.count.base().wrapping_add(at);
        // SAFETY: as in `unfinished_word`; `at` is 4-aligned and inside.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    fn all_done(&self) -> EventCount<'_> {
        EventCount::new(self.word32(SEQUENCE_AT), self.word32(SLEEPERS_AT))
    }

    /// Values put and not yet marked done (a snapshot): those still in the
    /// queue and those taken but not yet followed by
    /// [`task_done`](Self::task_done).
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.put(&1).unwrap();
    /// assert_eq!(q.get().unwrap(), 1);
    /// assert_eq!(q.unfinished(), 1, "taken, not yet done");
    /// q.task_done().unwrap();
    /// assert_eq!(q.unfinished(), 0);
    /// ```
    pub fn unfinished(&self) -> u64 {
        // Acquire pairs with the Release decrements in `task_done`.
        self.unfinished_word().load(Ordering::Acquire)
    }

    /// Marks one value taken from the queue as done (Python's
    /// `task_done()`). Any process may call it, not only the one that took
    /// the value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when called more times than values were put
    /// (Python's `ValueError`); the count stays at zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, JoinableQueue};
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.put(&1).unwrap();
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// assert!(matches!(q.task_done(), Err(Error::InvalidConfig { .. })));
    /// ```
    pub fn task_done(&self) -> Result<()> {
        // AcqRel: Release pairs with the Acquire loads in `unfinished` and
        // `join_until` (what consumers did before marking a value done is
        // visible to whoever sees the count reach zero); Acquire chains the
        // decrements before ours. Relaxed on failure: nothing is published.
        let before = self
            .unfinished_word()
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1))
            .map_err(|_| Error::InvalidConfig {
                what: "task_done() called more times than values were put".into(),
            })?;
        if before == 1 {
            self.all_done().notify();
        }
        Ok(())
    }

    /// Waits until every value put has been taken and marked done (Python's
    /// `join()`); at once if none is outstanding.
    ///
    /// # Errors
    ///
    /// None today: see [`join_timeout`](Self::join_timeout) for a wait that
    /// ends. It waits forever if a consumer died holding a value (see the
    /// type's docs).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.join().unwrap(); // nothing put: returns at once
    /// ```
    pub fn join(&self) -> Result<()> {
        self.join_until(None)
    }

    /// Waits as [`join`](Self::join) does, at most `timeout`. A timeout too
    /// long to represent as an [`Instant`] (such as [`Duration::MAX`]) waits
    /// without limit.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if values were still unfinished at the deadline
    /// ([`unfinished`](Self::unfinished) says how many).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, JoinableQueue};
    /// use std::time::Duration;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.put(&1).unwrap();
    /// assert!(matches!(
    ///     q.join_timeout(Duration::from_millis(1)),
    ///     Err(Error::Timeout)
    /// ));
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// q.join_timeout(Duration::MAX).unwrap();
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_until(deadline_after(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<()> {
        let mut spinner = Spinner::new();
        loop {
            if self.unfinished() == 0 {
                return Ok(());
            }
            if spinner.spin() {
                continue;
            }
            // The `task_done` that reaches zero notifies; nothing else can
            // end the wait, so no poll. The deadline ends it either way.
            if self
                .all_done()
                .wait(deadline, None, || self.unfinished() == 0)?
            {
                return Ok(());
            }
        }
    }

    /// Counts one more value before it is put (so that a consumer's
    /// `task_done` can never come first).
    fn count_one(&self) {
        // Relaxed: the value is published after this by the queue's Release
        // store, which the consumer's claim reads before its `task_done`.
        self.unfinished_word().fetch_add(1, Ordering::Relaxed);
    }

    /// Takes back a count for a value that was not put after all.
    fn uncount_one(&self) {
        // The count includes ours: this cannot fail.
        let _ = self.task_done();
    }

    /// Runs `put` with one value counted first (so that a consumer's
    /// `task_done` can never find the count at zero), and takes the count
    /// back unless the value went in: on an error, a refusal, or a panic of
    /// the value's `Wire::encode`, which would otherwise leave `join`
    /// waiting for a value that was never put.
    fn counted(&self, put: impl FnOnce() -> Result<bool>) -> Result<bool> {
        struct Uncount<'a, T>(&'a JoinableQueue<T>, bool);
        impl<T> Drop for Uncount<'_, T> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.uncount_one();
                }
            }
        }
        self.count_one();
        let mut guard = Uncount(self, false);
        let put = put();
        guard.1 = matches!(put, Ok(true));
        put
    }

    /// Values in the queue (a snapshot), as [`Queue::len`]: not the
    /// [`unfinished`](Self::unfinished) count.
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.put(&1).unwrap();
    /// assert_eq!(q.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue holds no value (a snapshot), as [`Queue::is_empty`].
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// assert!(JoinableQueue::<u64>::new(4).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the queue is full (a snapshot), as [`Queue::is_full`].
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(1).unwrap();
    /// q.put(&1).unwrap();
    /// assert!(q.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// How many values it can hold, as [`Queue::capacity`] (`usize::MAX`
    /// when unbounded).
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// assert_eq!(JoinableQueue::<u64>::unbounded().unwrap().capacity(), usize::MAX);
    /// ```
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Largest encoded value it takes, as [`Queue::message_bytes`].
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// assert_eq!(JoinableQueue::<u64>::new(4).unwrap().message_bytes(), 240);
    /// ```
    pub fn message_bytes(&self) -> usize {
        self.queue.message_bytes()
    }

    /// Closes the queue for everyone, as [`Queue::close`]. The count is
    /// untouched: values left in the queue still count as unfinished until
    /// someone takes them and marks them done.
    ///
    /// ```
    /// use corepool::{Error, JoinableQueue};
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.close();
    /// assert!(matches!(q.put(&1), Err(Error::QueueClosed)));
    /// assert_eq!(q.unfinished(), 0, "a refused put is not counted");
    /// ```
    pub fn close(&self) {
        self.queue.close();
    }

    /// Whether [`close`](Self::close) was called (by any process).
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.clone().close();
    /// assert!(q.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }
}

#[cfg(feature = "fault-injection")]
impl<T> JoinableQueue<T> {
    /// The segments its holders share: the count's and the queue's
    /// (`testing::joinable_queue_memory`).
    pub(crate) fn shared_segments(&self) -> Vec<&crate::shm::Segment> {
        vec![self.count.segment(), self.queue.shared_segment()]
    }
}

impl<T: Wire> JoinableQueue<T> {
    /// Puts `value` if there is room now, counting it as unfinished; as
    /// [`Queue::try_put`].
    ///
    /// # Errors
    ///
    /// As [`Queue::try_put`]; nothing is counted then.
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(1).unwrap();
    /// assert!(q.try_put(&1).unwrap());
    /// assert!(!q.try_put(&2).unwrap(), "full");
    /// assert_eq!(q.unfinished(), 1);
    /// ```
    pub fn try_put(&self, value: &T) -> Result<bool> {
        self.counted(|| self.queue.try_put(value))
    }

    /// Puts `value`, counting it as unfinished; waits for room as
    /// [`Queue::put`] (never, when unbounded).
    ///
    /// # Errors
    ///
    /// As [`Queue::put`]; nothing is counted then.
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<String>::new(4).unwrap();
    /// q.put(&"job".to_string()).unwrap();
    /// assert_eq!(q.get().unwrap(), "job");
    /// q.task_done().unwrap();
    /// q.join().unwrap();
    /// ```
    pub fn put(&self, value: &T) -> Result<()> {
        self.counted(|| self.queue.put(value).map(|()| true))
            .map(|_| ())
    }

    /// Puts `value` as [`put`](Self::put), waiting at most `timeout` for
    /// room, as [`Queue::put_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Queue::put_timeout`]; nothing is counted then.
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, JoinableQueue};
    /// use std::time::Duration;
    ///
    /// let q = JoinableQueue::<u64>::new(1).unwrap();
    /// q.put_timeout(&1, Duration::MAX).unwrap();
    /// assert!(matches!(
    ///     q.put_timeout(&2, Duration::from_millis(1)),
    ///     Err(Error::Timeout)
    /// ));
    /// assert_eq!(q.unfinished(), 1);
    /// ```
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<()> {
        self.counted(|| self.queue.put_timeout(value, timeout).map(|()| true))
            .map(|_| ())
    }

    /// Takes a value if one is there now, as [`Queue::try_get`]. Mark it
    /// done with [`task_done`](Self::task_done) once finished with it.
    ///
    /// # Errors
    ///
    /// As [`Queue::try_get`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// assert_eq!(q.try_get().unwrap(), None);
    /// ```
    pub fn try_get(&self) -> Result<Option<T>> {
        self.queue.try_get()
    }

    /// Takes a value, waiting for one, as [`Queue::get`]. Mark it done with
    /// [`task_done`](Self::task_done) once finished with it.
    ///
    /// # Errors
    ///
    /// As [`Queue::get`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::JoinableQueue;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// q.put(&3).unwrap();
    /// assert_eq!(q.get().unwrap(), 3);
    /// ```
    pub fn get(&self) -> Result<T> {
        self.queue.get()
    }

    /// Takes a value, waiting at most `timeout`, as [`Queue::get_timeout`].
    ///
    /// # Errors
    ///
    /// As [`Queue::get_timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, JoinableQueue};
    /// use std::time::Duration;
    ///
    /// let q = JoinableQueue::<u64>::new(4).unwrap();
    /// assert!(matches!(
    ///     q.get_timeout(Duration::from_millis(1)),
    ///     Err(Error::Timeout)
    /// ));
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.queue.get_timeout(timeout)
    }
}

impl<T: Wire> Wire for JoinableQueue<T> {
    fn encode(&self, out: &mut Encoder) {
        self.queue.encode(out);
        self.count.encode(type_tag::<UnfinishedCount>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        // The queue's handle has a fixed length: the count's handle after it
        // is decoded whether or not the queue's decodes, so that its transit
        // ends here, not with its sender's exit bound.
        let (mut queue_part, rest) = input.split_at(crate::queue::WIRE_BYTES.min(input.len()));
        let queue = Queue::decode(&mut queue_part);
        *input = rest;
        let count = SharedSegment::decode::<Self>(input, type_tag::<UnfinishedCount>(), |_| {
            Some(COUNT_BYTES as u64)
        });
        let queue = queue?;
        let (count, _) = count?;
        Ok(Self { queue, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_waits_for_every_task_done() {
        let q = JoinableQueue::<u64>::unbounded().unwrap_or_else(|_| {
            // Miri has no files for an unbounded queue's rings.
            JoinableQueue::new(64).unwrap()
        });
        let n = if cfg!(miri) { 10 } else { 1_000 };
        std::thread::scope(|s| {
            let consumer = q.clone();
            s.spawn(move || {
                for _ in 0..n {
                    consumer.get().unwrap();
                    consumer.task_done().unwrap();
                }
            });
            for i in 0..n {
                q.put(&i).unwrap();
            }
            q.join().unwrap();
        });
        assert_eq!(q.unfinished(), 0);
        assert!(q.task_done().is_err(), "one too many");
        assert_eq!(q.unfinished(), 0, "and the count stays at zero");
    }

    #[test]
    fn a_put_whose_encoder_panics_is_not_counted() {
        struct Panicky;
        impl Wire for Panicky {
            fn encode(&self, _: &mut crate::Encoder) {
                panic!("encode panics");
            }
            fn decode(_: &mut &[u8]) -> Result<Self> {
                Ok(Panicky)
            }
        }
        let q = JoinableQueue::<Panicky>::new(2).unwrap();
        for put in [
            (|q: &JoinableQueue<Panicky>| q.put(&Panicky).map(drop))
                as fn(&JoinableQueue<Panicky>) -> Result<()>,
            |q| q.try_put(&Panicky).map(drop),
            |q| q.put_timeout(&Panicky, Duration::ZERO),
        ] {
            // The encoder's panic is the put's `Error::Encode`: it never
            // unwinds into the caller.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| put(&q)));
            assert!(
                matches!(outcome, Ok(Err(Error::Encode { .. }))),
                "{outcome:?}"
            );
            assert_eq!(q.unfinished(), 0, "join would wait for a value never put");
        }
        q.join_timeout(Duration::ZERO).unwrap();
    }

    #[test]
    fn a_refused_put_is_not_counted() {
        let q = JoinableQueue::<Vec<u8>>::with_message_bytes(1, 16).unwrap();
        assert!(q.try_put(&vec![1]).unwrap());
        // Full: refused, timed out; then closed: an error. None is counted.
        assert!(!q.try_put(&vec![2]).unwrap());
        assert!(matches!(
            q.put_timeout(&vec![3], Duration::ZERO),
            Err(Error::Timeout)
        ));
        q.close();
        assert!(q.put(&vec![4]).is_err());
        assert_eq!(q.unfinished(), 1);
        assert!(matches!(
            q.join_timeout(Duration::ZERO),
            Err(Error::Timeout)
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "needs another process's descriptor table")]
    fn a_handle_decodes_to_the_same_queue_and_count() {
        let q = JoinableQueue::<u64>::new(4).unwrap();
        let bytes = crate::wire::encode_to_vec(&q);
        let other = JoinableQueue::<u64>::decode(&mut bytes.as_slice()).unwrap();
        other.put(&5).unwrap();
        assert_eq!(q.unfinished(), 1);
        assert_eq!(q.get().unwrap(), 5);
        other.task_done().unwrap();
        q.join().unwrap();
    }
}
