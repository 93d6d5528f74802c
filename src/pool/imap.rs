//! Lazy maps: [`Pool::imap`] and [`Pool::imap_unordered`] (and their
//! [`Chunked`](super::Chunked) twins, through one implementation), and the
//! iterators they return, [`Imap`] and [`ImapUnordered`].

use super::collect::{self, ChannelSink};
use super::driver::Shared;
use super::handle::{self, Cell};
use super::sink::{Completion, Sink};
use super::{AsyncResult, Callbacks, Pool};
use crate::error::{Error, Result};
use crate::shm::park::Spinner;
use crate::wire::task;
use crate::wire::Wire;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// The chunk size of a lazy map unless the caller picks one (Python's
/// `imap` default). A lazy map's source may be endless, so there is no
/// length to divide among the workers as `map` does, and nothing says how
/// long an item takes: one item per task gives the first result soonest and
/// never holds a finished result back behind its chunk's slower items. Cheap
/// items are better sent in chunks, through [`Pool::chunked`].
const LAZY_DEFAULT_CHUNKSIZE: usize = 1;

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
            pool: self,
            trampoline: task::offset_of(task::call_chunk::<F, A, R>),
            source: items.into_iter(),
            chunksize: chunksize.unwrap_or(LAZY_DEFAULT_CHUNKSIZE),
            in_flight: VecDeque::new(),
            ready: VecDeque::new(),
            ended: false,
            asked: false,
            _args: std::marker::PhantomData,
        }
    }

    /// The one implementation of `imap_unordered` (see
    /// [`imap_in_chunks`](Self::imap_in_chunks)).
    pub(super) fn imap_unordered_in_chunks<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> ImapUnordered<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        let trampoline = task::offset_of(task::call_chunk::<F, A, R>);
        let chunksize = chunksize.unwrap_or(LAZY_DEFAULT_CHUNKSIZE);
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut iter = ImapUnordered {
            rx,
            chunks_left: 0,
            ready: VecDeque::new(),
            refused: None,
            pool: Arc::downgrade(&self.shared),
        };
        let sink: Arc<dyn Completion> = Arc::new(ChannelSink { tx });
        match self.submit_unordered(trampoline, items, chunksize, &sink) {
            Ok(chunks) => iter.chunks_left = chunks,
            Err(e) => iter.refused = Some(e),
        }
        iter
    }

    /// Submits every chunk of `items` at once, each answering to `sink`;
    /// returns how many chunks that made.
    fn submit_unordered<A: Wire>(
        &self,
        trampoline: i64,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
        sink: &Arc<dyn Completion>,
    ) -> Result<usize> {
        self.shared.check_open()?; // refused even with no items, as `map` is
        let mut chunker = self.chunker(items, Some(chunksize))?;
        let mut tasks = smallvec::SmallVec::new();
        let mut keep = Vec::new();
        while let Some((payload, due, chunk_keep)) = chunker.next_chunk()? {
            keep.extend(chunk_keep);
            // The tag is how many results are due, which `ChannelSink` checks.
            let sink = Sink {
                target: sink.clone(),
                tag: due as u64,
            };
            tasks.push((trampoline, payload, sink));
        }
        let chunks = tasks.len();
        self.shared.submit(tasks, keep, false)?;
        Ok(chunks)
    }

    /// A lazy, ordered `map` (Python's `imap`): items are pulled from `items`
    /// one per task (Python's default; [`chunked`](Self::chunked) sends
    /// more), a few tasks per worker ahead of the consumer, so an endless
    /// iterator works.
    ///
    /// Like [`imap_unordered`](Self::imap_unordered) it returns the iterator
    /// itself, of `Result<R>`: what would fail the call (the pool closed,
    /// an argument too large, waiting in a callback of this pool) is an
    /// item instead, taken in turn, and the iterator ends after an error.
    ///
    /// ```
    /// fn main() {
    ///     corepool::init();
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

    /// Like [`imap`](Self::imap), but yields results as they complete (Python's
    /// `imap_unordered`). All items are submitted at once, one per task
    /// (Python's default; [`chunked`](Self::chunked) sends more).
    ///
    /// What would fail the submission (the pool closed, an argument too
    /// large, ...) is the iterator's one item; a failing task's error is
    /// yielded in its place among the others' results.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let mut seen: Vec<u64> = pool
    ///         .imap_unordered(|x: u64| x * 10, 0..6u64)
    ///         .collect::<corepool::Result<_>>()?;
    ///     seen.sort_unstable(); // they come as they finish
    ///     assert_eq!(seen, [0, 10, 20, 30, 40, 50]);
    ///     pool.close();
    ///     let refused: Vec<_> = pool.imap_unordered(|x: u64| x, 0..3u64).collect();
    ///     assert_eq!(refused, [Err(corepool::Error::PoolClosed)]);
    ///     Ok(())
    /// }
    /// ```
    pub fn imap_unordered<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> ImapUnordered<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.imap_unordered_in_chunks(f, items, None)
    }
}

/// The iterator [`Pool::imap`] returns: results in input order, each a
/// `Result<R>`; it ends after the first error.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     corepool::init();
///     let pool = corepool::Pool::new(2)?;
///     let mut results = pool.imap(|x: u64| x * x, 1..=1_000_000u64);
///     // Lazy: only the chunks ahead of the reader are in flight.
///     let first: Vec<u64> = results.by_ref().take(3).collect::<corepool::Result<_>>()?;
///     assert_eq!(first, [1, 4, 9]);
///     Ok(())
/// }
/// ```
pub struct Imap<'p, A, R, I> {
    pool: &'p Pool,
    trampoline: i64,
    source: I,
    /// Checked by [`Pool::chunked`] or the default.
    chunksize: usize,
    /// Each chunk submitted and not yet read, with how many results are due.
    in_flight: VecDeque<(AsyncResult<Vec<R>>, usize)>,
    ready: VecDeque<R>,
    /// After an error or the last result: `next` returns `None` for good.
    ended: bool,
    /// Whether `next` has asked the pool yet: the first call checks that
    /// it is open, so that a source of no items on a closed pool is
    /// refused too, as `map` is.
    asked: bool,
    _args: std::marker::PhantomData<fn(A)>,
}

impl<A, R, I> fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("chunksize", &self.chunksize)
            .field("chunks_in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Imap<'_, A, R, I> {
    fn refill(&mut self) -> Result<()> {
        let ahead = self.pool.workers() * 4;
        while self.in_flight.len() < ahead {
            // Pushed one by one: `collect` would reserve what an endless
            // source's size hint claims, the whole chunk size at once.
            let mut chunk: Vec<A> = Vec::with_capacity(self.chunksize.min(1 << 10));
            for item in self.source.by_ref().take(self.chunksize) {
                chunk.push(item);
            }
            if chunk.is_empty() {
                break;
            }
            let cell = Cell::<Vec<R>>::new(Callbacks::new());
            let (payload, carried) = crate::wire::encode_payload(&chunk)?;
            let due = chunk.len();
            self.pool.shared.submit(
                smallvec::smallvec![(
                    self.trampoline,
                    payload,
                    Sink {
                        target: cell.clone(),
                        tag: 0,
                    },
                )],
                carried.into_keep_alive(),
                false,
            )?;
            self.in_flight.push_back((
                AsyncResult::new(cell, Arc::downgrade(&self.pool.shared)),
                due,
            ));
        }
        Ok(())
    }
}

impl<A: Wire, R: Wire, I: Iterator<Item = A>> Iterator for Imap<'_, A, R, I> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(Ok(r));
            }
            if self.ended {
                return None;
            }
            let first = !std::mem::replace(&mut self.asked, true);
            let step = self
                .pool
                .shared
                .check_can_wait()
                .and_then(|()| {
                    if first {
                        self.pool.shared.check_open()
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| self.refill());
            if let Err(e) = step {
                self.ended = true;
                return Some(Err(e));
            }
            let Some((next, due)) = self.in_flight.pop_front() else {
                self.ended = true; // the source is exhausted
                return None;
            };
            match next
                .get()
                .and_then(|values| collect::check_chunk(values, due))
            {
                Ok(values) => self.ready.extend(values),
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The iterator [`Pool::imap_unordered`] returns: results as they
/// complete, each a `Result<R>`. A refused submission is its one item; a
/// failing task's error comes among the other tasks' results.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     corepool::init();
///     let pool = corepool::Pool::new(2)?;
///     let total: u64 = pool
///         .imap_unordered(|x: u64| x * 2, 0..100u64)
///         .sum::<corepool::Result<u64>>()?;
///     assert_eq!(total, 9_900);
///     Ok(())
/// }
/// ```
pub struct ImapUnordered<R> {
    rx: crossbeam_channel::Receiver<Result<Vec<R>>>,
    chunks_left: usize,
    ready: VecDeque<R>,
    /// Why nothing was submitted: the one item.
    refused: Option<Error>,
    pool: std::sync::Weak<Shared>,
}

impl<R> fmt::Debug for ImapUnordered<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("chunks_left", &self.chunks_left)
            .finish_non_exhaustive()
    }
}

impl<R: Wire> Iterator for ImapUnordered<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(Ok(r));
            }
            if let Some(e) = self.refused.take() {
                return Some(Err(e)); // with no chunk left, the last item
            }
            if self.chunks_left == 0 {
                return None;
            }
            if let Some(e) = handle::refusal(&self.pool) {
                self.chunks_left = 0; // the iterator ends after the error
                return Some(Err(e));
            }
            let mut spinner = Spinner::new();
            let chunk = loop {
                if let Ok(c) = self.rx.try_recv() {
                    break c;
                }
                if let Some(pool) = self.pool.upgrade() {
                    pool.try_drive();
                }
                if !spinner.spin() {
                    match self.rx.recv() {
                        Ok(c) => break c,
                        Err(_) => {
                            self.chunks_left = 0; // no result can come now
                            return Some(Err(Error::Cancelled));
                        }
                    }
                }
            };
            self.chunks_left -= 1;
            match chunk {
                Ok(values) => self.ready.extend(values),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

// Both end for good: `None` once, `None` ever after.
impl<A: Wire, R: Wire, I: Iterator<Item = A>> std::iter::FusedIterator for Imap<'_, A, R, I> {}
impl<R: Wire> std::iter::FusedIterator for ImapUnordered<R> {}
