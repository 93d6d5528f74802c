//! Lazy maps: [`Pool::imap`] and [`Pool::imap_unordered`] (and their
//! [`Chunked`](super::Chunked) twins, through one implementation), and the
//! iterators they return, [`Imap`] and [`ImapUnordered`]. Both pull their
//! source a chunk at a time on the consumer's thread ([`Feed`]), a bounded
//! window ahead, and hand back a result that is in before they ask the
//! source for more.

use super::assist::wait_helping;
use super::collect::{self, ChannelSink, LazyChunk};
use super::handle::Cell;
use super::sink::{Completion, Sink};
use super::{AsyncResult, Callbacks, Pool};
use crate::error::{Error, Result};
use crate::wire::task;
use crate::wire::{KeepAlive, Payload, PlainLayout, Wire};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The chunk size of a lazy map unless the caller picks one (Python's
/// `imap` default). A lazy map's source may be endless, so there is no
/// length to divide among the workers as `map` does, and nothing says how
/// long an item takes: one item per task gives the first result soonest and
/// never holds a finished result back behind its chunk's slower items. Cheap
/// items are better sent in chunks, through [`Pool::chunked`].
const LAZY_DEFAULT_CHUNKSIZE: usize = 1;

/// How many chunks a lazy map keeps submitted and unread per worker, at
/// least: enough that a worker finds its next task waiting, few enough that
/// an endless (or huge) source is pulled only a little ahead of the consumer
/// and that little work is left to finish in vain when the consumer stops
/// early.
const LAZY_MIN_CHUNKS_AHEAD_PER_WORKER: usize = 4;

/// How many at most: while chunks come back fast, a window of 4 per worker
/// leaves the workers waiting on round trips (an `imap` of 200,000 no-op
/// tasks on two busy vCPUs made about 90,000 items/s with 4, 300,000 to
/// 550,000 with up to 64), so the window grows to hold about
/// [`LAZY_WORK_AHEAD`] of the pool's work, up to this bound.
const LAZY_MAX_CHUNKS_AHEAD_PER_WORKER: usize = 64;

/// The pool's work a lazy map keeps in flight ahead of its consumer, judged
/// by how fast chunks have come back: tiny tasks fill the window to its
/// most, tasks of a millisecond or more keep it at its least.
const LAZY_WORK_AHEAD: Duration = Duration::from_millis(1);

/// A lazy map's source, pulled a chunk at a time on the consumer's thread,
/// and the submission of each chunk.
struct Feed<'p, A, I> {
    pool: &'p Pool,
    trampoline: i64,
    source: I,
    /// Checked by [`Pool::chunked`], or the default.
    chunksize: usize,
    /// Chunks submitted and not yet handed back, at most: between
    /// `window_bounds`, after how fast chunks come back (`took_chunk`).
    window: usize,
    window_bounds: (usize, usize),
    /// When the consumer last took a chunk's outcome.
    last_taken: Option<Instant>,
    /// The time between two chunks taken, a moving average (nanoseconds).
    chunk_interval_ns: f64,
    /// The source returned `None`: it is not asked again.
    exhausted: bool,
    /// Whether the consumer asked for an item yet: the first call checks
    /// that the pool is open, so that a source of no items on a closed pool
    /// is refused too, as `map` is.
    asked: bool,
    /// A small plain chunk's bytes are gathered here (and copied into an
    /// inline payload): no allocation per chunk of one item.
    scratch: Vec<u8>,
    _args: std::marker::PhantomData<fn(A)>,
}

/// A chunk pulled from a lazy map's source and encoded: its payload, how
/// many items it holds and what its encoding must keep alive.
type PulledChunk = (Payload, usize, KeepAlive);

impl<'p, A: Wire, I: Iterator<Item = A>> Feed<'p, A, I> {
    fn new<F, R>(pool: &'p Pool, source: I, chunksize: Option<usize>) -> Self
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        R: Wire,
    {
        Self {
            pool,
            trampoline: task::offset_of(task::call_chunk::<F, A, R>),
            source,
            chunksize: chunksize.unwrap_or(LAZY_DEFAULT_CHUNKSIZE),
            window: pool.workers() * LAZY_MIN_CHUNKS_AHEAD_PER_WORKER,
            window_bounds: (
                pool.workers() * LAZY_MIN_CHUNKS_AHEAD_PER_WORKER,
                pool.workers() * LAZY_MAX_CHUNKS_AHEAD_PER_WORKER,
            ),
            last_taken: None,
            chunk_interval_ns: 0.0,
            exhausted: false,
            asked: false,
            scratch: Vec::new(),
            _args: std::marker::PhantomData,
        }
    }

    /// What each call to `next` checks first: that this thread may wait on
    /// the pool (not in one of its callbacks, not in a `fork()`ed copy),
    /// and on the first call that the pool takes work.
    fn check(&mut self) -> Result<()> {
        self.pool.shared.check_can_wait()?;
        if !std::mem::replace(&mut self.asked, true) {
            self.pool.shared.check_open()?;
        }
        Ok(())
    }

    /// The consumer took a chunk's outcome: the window follows how fast
    /// they come (chunks per [`LAZY_WORK_AHEAD`], within its bounds). The
    /// interval includes the consumer's own time: a slow consumer needs no
    /// more work ahead.
    fn took_chunk(&mut self) {
        let now = Instant::now();
        let Some(last) = self.last_taken.replace(now) else {
            return;
        };
        let ns = now.saturating_duration_since(last).as_nanos() as f64;
        self.chunk_interval_ns = if self.chunk_interval_ns == 0.0 {
            ns
        } else {
            0.8 * self.chunk_interval_ns + 0.2 * ns
        };
        let wanted = LAZY_WORK_AHEAD.as_nanos() as f64 / self.chunk_interval_ns.max(1.0);
        let (least, most) = self.window_bounds;
        self.window = (wanted as usize).clamp(least, most);
    }

    /// Whether another chunk may be pulled with `in_flight` unread.
    fn may_pull(&self, in_flight: usize) -> bool {
        !self.exhausted && in_flight < self.window
    }

    /// The next chunk of the source, encoded (`None`, for good, once it
    /// ends; an item that cannot be encoded is the error). This is where the
    /// consumer's thread waits on the source.
    fn pull(&mut self) -> Option<Result<PulledChunk>> {
        if let Some(plain) = crate::wire::plain_of::<A>() {
            return self.pull_plain(plain).map(Ok);
        }
        // Pushed one by one: `collect` would reserve what an endless
        // source's size hint claims, the whole chunk size at once.
        let mut chunk: Vec<A> = Vec::with_capacity(self.chunksize.min(PULL_RESERVE_AT_MOST));
        for item in self.source.by_ref().take(self.chunksize) {
            chunk.push(item);
        }
        self.exhausted = chunk.is_empty();
        if chunk.is_empty() {
            return None;
        }
        Some(
            crate::wire::encode_payload(&chunk)
                .map(|(payload, carried)| (payload, chunk.len(), carried.into_keep_alive())),
        )
    }

    /// [`pull`](Self::pull) for plain data: the items are gathered straight
    /// into the chunk's encoding (the count, then their bytes), as `map`'s
    /// chunker does, instead of into a `Vec` that is then encoded. Room is
    /// reserved a bounded step at a time, never for a whole chunk on the
    /// source's word.
    fn pull_plain(&mut self, plain: PlainLayout<A>) -> Option<PulledChunk> {
        let mut out = std::mem::take(&mut self.scratch);
        if out.capacity() == 0 {
            out = crate::wire::take_buffer(
                8 + self.chunksize.min(PULL_RESERVE_AT_MOST) * plain.size(),
            );
        }
        out.clear();
        out.extend_from_slice(&0u64.to_le_bytes()); // the count, once known
        let mut n = 0;
        while n < self.chunksize {
            let step = (self.chunksize - n).min(n.max(PULL_RESERVE_AT_MOST));
            let got = plain.extend_bytes(&mut out, self.source.by_ref(), step);
            n += got;
            if got < step {
                break; // the source returned `None`: the chunk ends here
            }
        }
        self.exhausted = n == 0;
        if n == 0 {
            self.scratch = out;
            return None;
        }
        out[..8].copy_from_slice(&(n as u64).to_le_bytes());
        let payload = if out.len() <= Payload::INLINE {
            let payload = Payload::from_slice(&out);
            self.scratch = out;
            payload
        } else {
            Payload::from_vec(out)
        };
        Some((payload, n, KeepAlive::default()))
    }

    /// Submits one chunk, its outcome going to `sink`.
    fn submit(&self, payload: Payload, keep: KeepAlive, sink: Sink) -> Result<()> {
        self.pool.shared.submit(
            smallvec::smallvec![(self.trampoline, payload, sink)],
            keep,
            false,
        )
    }
}

/// The most items a lazy map reserves room for at once while it pulls a
/// chunk: an endless source's size hint claims the whole chunk size.
const PULL_RESERVE_AT_MOST: usize = 1 << 10;

impl Pool {
    /// The one implementation of `imap`, for [`Pool`] (`chunksize` `None`:
    /// the default) and [`Chunked`](super::Chunked) (a size it checked).
    pub(super) fn imap_in_chunks<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
    ) -> Imap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        Imap {
            feed: Feed::new::<F, R>(self, items.into_iter(), chunksize),
            in_flight: VecDeque::new(),
            ready: Vec::new().into_iter(),
            refused: None,
            ended: false,
        }
    }

    /// The one implementation of `imap_unordered` (see
    /// [`imap_in_chunks`](Self::imap_in_chunks)).
    pub(super) fn imap_unordered_in_chunks<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
    ) -> ImapUnordered<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        let (tx, rx) = crossbeam_channel::unbounded();
        ImapUnordered {
            feed: Feed::new::<F, R>(self, items.into_iter(), chunksize),
            sink: ChannelSink::new(tx),
            rx,
            in_flight: 0,
            ready: Vec::new().into_iter(),
            refused: None,
            ended: false,
        }
    }

    /// A lazy, ordered `map` (Python's `imap`): items are pulled from `items`
    /// one per task (Python's default; [`chunked`](Self::chunked) sends
    /// more), so an endless iterator works.
    ///
    /// Like [`imap_unordered`](Self::imap_unordered) it returns the iterator
    /// itself, of `Result<R>`: what would fail the call (the pool closed,
    /// an argument that cannot be encoded, waiting in a callback of this
    /// pool) is an item instead, taken in turn (after the results of the
    /// items before it), and the iterator ends after it. A task that fails
    /// (panics, times out, its worker dies) is its error in its place, and
    /// the results after it still come, as with Python's `imap`:
    ///
    /// ```
    /// fn main() {
    ///     let pool = corepool::Pool::new(2).unwrap();
    ///     let results: Vec<corepool::Result<u64>> = pool
    ///         .imap(|x: u64| if x == 2 { panic!("two") } else { x }, 0..5u64)
    ///         .collect();
    ///     assert_eq!(results.len(), 5);
    ///     assert!(matches!(results[2], Err(corepool::Error::Panicked { .. })));
    ///     assert_eq!(results[4], Ok(4));
    /// }
    /// ```
    ///
    /// # Where the source is pulled
    ///
    /// There is no feeder thread (the source need not be `Send`): `items`
    /// is pulled on the consumer's thread, inside `next`, a bounded window
    /// ahead of the results handed back: 4 chunks per worker while results
    /// take a millisecond or more to come, growing to 64 per worker (about
    /// a millisecond of the pool's work) while they come faster. `next` returns
    /// the result it owes as soon as it is in; only while it is not does
    /// `next` pull more (and wait in the source's own `next` if that
    /// blocks). So a slow source delays a result that is ready by at most
    /// one of its own waits, and never holds back one that was in before.
    ///
    /// A source that waits for the map's own results (a work list fed by
    /// the consumer, a crawler) deadlocks: `next` may be waiting in the
    /// source for an item that the consumer would only send after `next`
    /// returned. Feed such a loop another way, for instance one task per
    /// item with [`apply_async`](Self::apply_async):
    ///
    /// ```
    /// use std::collections::VecDeque;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let square = |x: u64| x * x;
    ///     let mut pending = VecDeque::from([pool.apply_async(square, 1)?]);
    ///     let mut seen = Vec::new();
    ///     while let Some(handle) = pending.pop_front() {
    ///         let v = handle.get()?;
    ///         seen.push(v);
    ///         if v < 1000 {
    ///             // Each result decides the next input.
    ///             pending.push_back(pool.apply_async(square, v + 1)?);
    ///         }
    ///     }
    ///     assert_eq!(seen, [1, 4, 25, 676, 458_329]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// ```
    /// fn main() {
    ///     let pool = corepool::Pool::new(2).unwrap();
    ///     let firsts: Vec<u64> = pool
    ///         .imap(|x: u64| x * 10, 0..)
    ///         .take(3)
    ///         .map(Result::unwrap)
    ///         .collect();
    ///     assert_eq!(firsts, vec![0, 10, 20]);
    ///     pool.close();
    ///     let mut refused = pool.imap(|x: u64| x, 0..3u64);
    ///     assert_eq!(refused.next(), Some(Err(corepool::Error::PoolClosed)));
    ///     assert_eq!(refused.next(), None);
    /// }
    /// ```
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> Imap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        self.imap_in_chunks(f, items, None)
    }

    /// Like [`imap`](Self::imap), but yields results as they complete
    /// (Python's `imap_unordered`): just as lazy, one item per task
    /// (Python's default; [`chunked`](Self::chunked) sends more), the same
    /// bounded window in flight, so an endless iterator works. The
    /// source is pulled on the consumer's thread as `imap`'s is, with the
    /// same caveat for a source that waits for the map's own results (see
    /// "Where the source is pulled" under [`imap`](Self::imap)): `next` hands back
    /// whatever result is in before it asks the source for more.
    ///
    /// Every item's result comes exactly once. A failing task's error is
    /// yielded in its place among the others' results, and the iteration
    /// goes on. What refuses a submission (the pool closed, an argument
    /// that cannot be encoded) stops the pulling: the results of the chunks
    /// already in flight come first, then that error, last. On a closed
    /// pool it is the one item. Dropping the iterator early pulls nothing
    /// more; the tasks in flight finish and their results are dropped.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let mut seen: Vec<u64> = pool
    ///         .imap_unordered(|x: u64| x * 10, 0..6u64)
    ///         .collect::<corepool::Result<_>>()?;
    ///     seen.sort_unstable(); // they come as they finish
    ///     assert_eq!(seen, [0, 10, 20, 30, 40, 50]);
    ///     // Lazy: an endless source works.
    ///     let three = pool.imap_unordered(|x: u64| x, 0u64..).take(3).count();
    ///     assert_eq!(three, 3);
    ///     pool.close();
    ///     let refused: Vec<_> = pool.imap_unordered(|x: u64| x, 0..3u64).collect();
    ///     assert_eq!(refused, [Err(corepool::Error::PoolClosed)]);
    ///     Ok(())
    /// }
    /// ```
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> ImapUnordered<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        self.imap_unordered_in_chunks(f, items, None)
    }
}

/// The iterator [`Pool::imap`] returns: results in input order, each a
/// `Result<R>`. A failing task's error comes in its place and the results
/// after it still come, as with Python's `imap` (with `chunked(n)`, a
/// failing chunk is one error in place of its items); an error of the
/// pool's own (terminated, closed, no worker can start) is the last item.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     let pool = corepool::Pool::new(2)?;
///     let mut results = pool.imap(|x: u64| x * x, 1..=1_000_000u64);
///     // Lazy: only the chunks ahead of the reader are in flight.
///     let first: Vec<u64> = results.by_ref().take(3).collect::<corepool::Result<_>>()?;
///     assert_eq!(first, [1, 4, 9]);
///     Ok(())
/// }
/// ```
pub struct Imap<'p, A, R, I> {
    feed: Feed<'p, A, I>,
    /// Each chunk submitted and not yet read, with how many results are due.
    in_flight: VecDeque<(AsyncResult<Vec<R>>, usize)>,
    /// The results of the chunk being handed out (taken as they are, not
    /// copied into a queue).
    ready: std::vec::IntoIter<R>,
    /// Why a submission was refused: nothing more is pulled, and it is the
    /// last item, in turn after the results of the chunks in flight.
    refused: Option<Error>,
    /// After an error or the last result: `next` returns `None` for good.
    ended: bool,
}

impl<A, R, I> fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("chunksize", &self.feed.chunksize)
            .field("chunks_in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Imap<'_, A, R, I> {
    /// Pulls one chunk from the source and submits it (a refusal is kept
    /// for its turn); `false` when the source has ended.
    fn pull_one(&mut self) -> bool {
        let (payload, due, keep) = match self.feed.pull() {
            None => return false,
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                self.refused = Some(e);
                return true;
            }
        };
        let cell = Cell::<Vec<R>>::new(Callbacks::new(), None);
        let sink = Sink::shared(LazyChunk::new(cell.clone(), due), 0);
        match self.feed.submit(payload, keep, sink) {
            Ok(()) => {
                let handle = AsyncResult::new(cell, Arc::downgrade(&self.feed.pool.shared));
                self.in_flight.push_back((handle, due));
            }
            Err(e) => self.refused = Some(e),
        }
        true
    }

    /// Ends the iteration with `e` as its last item.
    fn end_with(&mut self, e: Error) -> Option<Result<R>> {
        self.ended = true;
        Some(Err(e))
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Iterator for Imap<'_, A, R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if let Some(r) = self.ready.next() {
            return Some(Ok(r));
        }
        if self.ended {
            return None;
        }
        if let Err(e) = self.feed.check() {
            return self.end_with(e);
        }
        loop {
            // The chunk owed next is handed back as soon as it is in: the
            // source is pulled only while it is not.
            let owed_is_in = self.in_flight.front().is_some_and(|(h, _)| h.ready());
            if !owed_is_in
                && self.refused.is_none()
                && self.feed.may_pull(self.in_flight.len())
                && self.pull_one()
            {
                continue;
            }
            let Some((owed, due)) = self.in_flight.pop_front() else {
                // All is read: the source has ended, or a submission was
                // refused, its error coming now.
                self.ended = true;
                return self.refused.take().map(Err);
            };
            // Helping the pool collect, and going on helping while a slow
            // decoder of another task holds up whoever delivers.
            wait_helping(&self.feed.pool.shared, || owed.ready());
            self.feed.took_chunk();
            match owed
                .get()
                .and_then(|values| collect::check_chunk(values, due))
            {
                Ok(values) => self.ready = values.into_iter(),
                // One task's failure is its item, as Python's `imap` raises
                // at that item and lets the loop go on (and as
                // `corepool_mpi::Cluster::imap` does): ending here dropped
                // every later result of a loop that records errors.
                Err(e) if fails_one_task(&e) => return Some(Err(e)),
                Err(e) => return self.end_with(e),
            }
            if let Some(r) = self.ready.next() {
                return Some(Ok(r));
            }
        }
    }
}

/// Whether `e` is one task's (or chunk's) failure, after which the other
/// tasks' results still come: the task panicked, returned or received
/// something that does not encode, decode or fit, timed out, or its worker
/// died or broke the protocol. Anything else (the pool terminated or
/// closed, no worker can start) is the pool's, and ends the iteration.
fn fails_one_task(e: &Error) -> bool {
    matches!(
        e,
        Error::Panicked { .. }
            | Error::Decode { .. }
            | Error::Encode { .. }
            | Error::ResultTooLarge { .. }
            | Error::WorkerDied { .. }
            | Error::ProtocolViolation { .. }
            | Error::TaskTimedOut { .. }
    )
}

/// The iterator [`Pool::imap_unordered`] returns: results as they
/// complete, each a `Result<R>`. A failing task's error comes among the
/// other tasks' results; a refused submission stops the pulling and comes
/// last (on a closed pool, it is the one item).
///
/// ```
/// fn main() -> corepool::Result<()> {
///     let pool = corepool::Pool::new(2)?;
///     let total: u64 = pool
///         .imap_unordered(|x: u64| x * 2, 0..100u64)
///         .sum::<corepool::Result<u64>>()?;
///     assert_eq!(total, 9_900);
///     Ok(())
/// }
/// ```
pub struct ImapUnordered<'p, A, R, I> {
    feed: Feed<'p, A, I>,
    /// Where every chunk's outcome goes: decoded, then sent to `rx`.
    sink: Arc<dyn Completion>,
    rx: crossbeam_channel::Receiver<Result<Vec<R>>>,
    /// Chunks submitted whose outcome has not been received.
    in_flight: usize,
    /// The results of the chunk being handed out.
    ready: std::vec::IntoIter<R>,
    /// Why a submission was refused: nothing more is pulled, and it is the
    /// last item, after the results of the chunks in flight.
    refused: Option<Error>,
    /// After the last item: `next` returns `None` for good.
    ended: bool,
}

impl<A, R, I> fmt::Debug for ImapUnordered<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("chunksize", &self.feed.chunksize)
            .field("chunks_in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> ImapUnordered<'_, A, R, I> {
    /// Pulls one chunk from the source and submits it (a refusal is kept
    /// for the end); `false` when the source has ended.
    fn pull_one(&mut self) -> bool {
        let (payload, due, keep) = match self.feed.pull() {
            None => return false,
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                self.refused = Some(e);
                return true;
            }
        };
        // The tag is how many results are due, which `ChannelSink` checks.
        let sink = Sink::shared(self.sink.clone(), due as u64);
        match self.feed.submit(payload, keep, sink) {
            Ok(()) => self.in_flight += 1,
            Err(e) => self.refused = Some(e),
        }
        true
    }

    /// Takes one chunk's outcome: its results to hand out, or its error.
    fn take(&mut self, chunk: Result<Vec<R>>) -> Option<Result<R>> {
        self.in_flight -= 1;
        self.feed.took_chunk();
        match chunk {
            Ok(values) => {
                self.ready = values.into_iter();
                self.ready.next().map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Iterator for ImapUnordered<'_, A, R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if let Some(r) = self.ready.next() {
            return Some(Ok(r));
        }
        if self.ended {
            return None;
        }
        if let Err(e) = self.feed.check() {
            // Refused before anything (a closed pool) or now (in a callback
            // of this pool, where no result can come): the last item.
            self.ended = true;
            return Some(Err(e));
        }
        loop {
            // Whatever is in is handed back before the source is pulled.
            if let Ok(chunk) = self.rx.try_recv() {
                match self.take(chunk) {
                    Some(item) => return Some(item),
                    None => continue, // a chunk of no results
                }
            }
            if self.refused.is_none() && self.feed.may_pull(self.in_flight) && self.pull_one() {
                continue;
            }
            if self.in_flight == 0 {
                self.ended = true;
                return self.refused.take().map(Err);
            }
            wait_helping(&self.feed.pool.shared, || !self.rx.is_empty());
        }
    }
}

// Both end for good: `None` once, `None` ever after.
impl<A: Wire, R: Wire, I: Iterator<Item = A>> std::iter::FusedIterator for Imap<'_, A, R, I> {}
impl<A: Wire, R: Wire, I: Iterator<Item = A>> std::iter::FusedIterator
    for ImapUnordered<'_, A, R, I>
{
}
