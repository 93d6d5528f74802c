//! Lazy maps: [`Pool::imap`] and [`Pool::imap_unordered`], and the
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

impl Pool {
    /// A lazy, ordered `map` (Python's `imap`): items are pulled from `items`
    /// and sent `chunksize` at a time, a few chunks per worker ahead of the
    /// consumer, so an endless iterator works. A chunk size out of range (see
    /// [`map`](Self::map)) makes the first item an
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig), taken before
    /// any item; after an error the iterator ends.
    ///
    /// ```
    /// fn main() {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2).unwrap();
    ///     let firsts: Vec<u64> = pool
    ///         .imap(|x: u64| x * 10, 0.., 4)
    ///         .take(3)
    ///         .map(Result::unwrap)
    ///         .collect();
    ///     assert_eq!(firsts, vec![0, 10, 20]);
    /// }
    /// ```
    pub fn imap<F, A, R, I>(&self, f: F, items: I, chunksize: usize) -> Imap<'_, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        let (chunksize, invalid) = match self.check_chunksize(chunksize) {
            Ok(c) => (c, None),
            Err(e) => (1, Some(e)),
        };
        Imap {
            pool: self,
            trampoline: task::offset_of(task::call_chunk::<F, A, R>),
            source: items.into_iter(),
            chunksize,
            invalid,
            in_flight: VecDeque::new(),
            ready: VecDeque::new(),
            failed: false,
            _args: std::marker::PhantomData,
        }
    }

    /// Like [`imap`](Self::imap), but yields results as they complete (Python's
    /// `imap_unordered`). All items are submitted at once.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     corepool::init();
    ///     let pool = corepool::Pool::new(2)?;
    ///     let mut seen: Vec<u64> = pool
    ///         .imap_unordered(|x: u64| x * 10, 0..6u64, 2)?
    ///         .collect::<corepool::Result<_>>()?;
    ///     seen.sort_unstable(); // they come as they finish
    ///     assert_eq!(seen, [0, 10, 20, 30, 40, 50]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), at submission; a failing chunk yields its error.
    pub fn imap_unordered<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<ImapUnordered<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        let trampoline = task::offset_of(task::call_chunk::<F, A, R>);
        let mut chunker = self.chunker(items, Some(chunksize))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink: Arc<dyn Completion> = Arc::new(ChannelSink { tx });
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
        Ok(ImapUnordered {
            rx,
            chunks_left: chunks,
            ready: VecDeque::new(),
            pool: Arc::downgrade(&self.shared),
        })
    }
}

/// The iterator [`Pool::imap`] returns: results in input order.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     corepool::init();
///     let pool = corepool::Pool::new(2)?;
///     let mut results = pool.imap(|x: u64| x * x, 1..=1_000_000u64, 64);
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
    chunksize: usize,
    /// A chunk size out of range: the first item.
    invalid: Option<Error>,
    /// Each chunk submitted and not yet read, with how many results are due.
    in_flight: VecDeque<(AsyncResult<Vec<R>>, usize)>,
    ready: VecDeque<R>,
    failed: bool,
    _args: std::marker::PhantomData<fn(A)>,
}

impl<A, R, I> fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
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
            if self.failed {
                return None;
            }
            let refused = self
                .invalid
                .take()
                .or_else(|| self.pool.shared.check_can_wait().err());
            if let Some(e) = refused {
                self.failed = true;
                return Some(Err(e));
            }
            if let Err(e) = self.refill() {
                self.failed = true;
                return Some(Err(e));
            }
            let (next, due) = self.in_flight.pop_front()?;
            match next
                .get()
                .and_then(|values| collect::check_chunk(values, due))
            {
                Ok(values) => self.ready.extend(values),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The iterator [`Pool::imap_unordered`] returns: results as they complete.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     corepool::init();
///     let pool = corepool::Pool::new(2)?;
///     let total: u64 = pool
///         .imap_unordered(|x: u64| x * 2, 0..100u64, 10)?
///         .sum::<corepool::Result<u64>>()?;
///     assert_eq!(total, 9_900);
///     Ok(())
/// }
/// ```
pub struct ImapUnordered<R> {
    rx: crossbeam_channel::Receiver<Result<Vec<R>>>,
    chunks_left: usize,
    ready: VecDeque<R>,
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
                        Err(_) => return Some(Err(Error::Cancelled)),
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
