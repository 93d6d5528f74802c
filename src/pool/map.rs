//! The `map` family of [`Pool`]: `map`, `map_async`, `starmap` and their
//! callback variants, all sending their items in chunks: of the default
//! size here, of the caller's through [`Chunked`](super::Chunked), both by
//! the one implementation (`*_in_chunks`).

use super::collect::MapCollector;
use super::handle::Cell;
use super::sink::{Completion, Sink};
use super::{AsyncResult, Callbacks, Pool};
use crate::error::Result;
use crate::wire::task::{self, StarFn};
use crate::wire::Wire;
use std::sync::Arc;

/// How many chunks a blocking `map` keeps submitted per worker: enough that
/// a worker finds the next chunk in its ring when it finishes one.
const MAP_CHUNKS_AHEAD_PER_WORKER: usize = 4;

impl Pool {
    /// `map_async`'s path: every chunk encoded and submitted at once.
    fn submit_chunks<A: Wire, R: Wire>(
        &self,
        trampoline: i64,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>> {
        self.shared.check_open()?;
        let mut chunker = self.chunker(items, chunksize)?;
        let cell = Cell::new(callbacks, Some(&self.callbacks));
        let collector = MapCollector::<R>::new(chunker.len_hint, cell.clone());
        let target: Arc<dyn Completion> = collector.clone();
        let mut tasks = smallvec::SmallVec::new();
        let mut held = Vec::new();
        let mut keep = Vec::new();
        while let Some(chunk) = chunker.next_chunk()? {
            keep.extend(chunk.keep);
            let sink = Sink::shared(target.clone(), collector.add_chunk(chunk.items));
            tasks.push((trampoline, chunk.payload, sink));
            held.push(chunk.held);
        }
        collector.seal();
        self.shared.submit_held(tasks, held, keep, false)?;
        Ok(AsyncResult::new(cell, Arc::downgrade(&self.shared)))
    }

    /// The blocking `map`'s path: chunks are encoded as the workers make
    /// room, a few per worker ahead, so their buffers are recycled (memory
    /// already faulted in) instead of all being allocated up front.
    fn map_chunks<A: Wire, R: Wire>(
        &self,
        trampoline: i64,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>> {
        // Refused before anything is submitted (see `AsyncResult::get`).
        self.shared.check_can_wait()?;
        self.shared.check_open()?;
        let mut chunker = self.chunker(items, chunksize)?;
        let cell = Cell::new(Callbacks::new(), None);
        let collector = MapCollector::<R>::new(chunker.len_hint, cell.clone());
        let target: Arc<dyn Completion> = collector.clone();
        let ahead = self.workers() * MAP_CHUNKS_AHEAD_PER_WORKER;
        let mut submitted = 0;
        while let Some(chunk) = chunker.next_chunk()? {
            if submitted >= ahead {
                collector.wait_completed(submitted + 1 - ahead, &self.shared);
            }
            if collector.ended() {
                break; // a chunk failed: submit nothing more
            }
            let sink = Sink::shared(target.clone(), collector.add_chunk(chunk.items));
            self.shared.submit_held(
                smallvec::smallvec![(trampoline, chunk.payload, sink)],
                vec![chunk.held],
                chunk.keep,
                true,
            )?;
            submitted += 1;
        }
        collector.seal();
        let result = AsyncResult::new(cell, Arc::downgrade(&self.shared));
        // Helping the pool collect, and going on helping while a slow
        // decoder of another task holds up whoever delivers.
        super::assist::wait_helping(&self.shared, || result.ready());
        result.get()
    }

    /// The one implementation of `map`, for [`Pool`] (`chunksize` `None`:
    /// the default) and [`Chunked`](super::Chunked) (a size it checked).
    pub(super) fn map_in_chunks<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        self.map_chunks(
            task::offset_of(task::call_chunk::<F, A, R>),
            items,
            chunksize,
        )
    }

    /// The one implementation of `map_async_with` (see
    /// [`map_in_chunks`](Self::map_in_chunks)).
    pub(super) fn map_async_in_chunks<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let _ = f;
        self.submit_chunks(
            task::offset_of(task::call_chunk::<F, A, R>),
            items,
            chunksize,
            callbacks,
        )
    }

    /// The one implementation of `starmap` (see
    /// [`map_in_chunks`](Self::map_in_chunks)).
    pub(super) fn starmap_in_chunks<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        let _ = f;
        self.map_chunks(
            task::offset_of(task::call_star_chunk::<F, T, R>),
            items,
            chunksize,
        )
    }

    /// The one implementation of `starmap_async_with` (see
    /// [`map_in_chunks`](Self::map_in_chunks)).
    pub(super) fn starmap_async_in_chunks<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        let _ = f;
        self.submit_chunks(
            task::offset_of(task::call_star_chunk::<F, T, R>),
            items,
            chunksize,
            callbacks,
        )
    }

    /// `f` over every item, in order (Python's `map`). Items are sent in
    /// chunks of Python's default size (about four chunks per worker),
    /// capped so that a chunk fits one ring message and stays cache-sized;
    /// to choose the size, use [`chunked`](Self::chunked):
    /// `pool.chunked(n)?.map(f, items)`.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let lengths = pool.map(|s: String| s.len() as u64, ["a", "bb", "ccc"].map(String::from))?;
    ///     assert_eq!(lengths, [1, 2, 3]);
    ///     // A panic in any item fails the whole map, as in Python.
    ///     let failed = pool.map(|x: u64| 10 / x, [1u64, 0, 2]);
    ///     assert!(matches!(failed, Err(corepool::Error::Panicked { .. })));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// The first failing chunk's error, returned as soon as it comes (as
    /// Python's `map` raises): the map's chunks already handed to the
    /// workers (up to about four per worker; no more are submitted) go on
    /// running, and hold their workers until they end, so the calls after
    /// it wait for them. Their results are dropped; only
    /// [`terminate`](Self::terminate) or a
    /// [`task_timeout`](crate::PoolBuilder::task_timeout) cuts them short.
    /// [`Error::PoolClosed`](crate::Error::PoolClosed),
    /// [`Error::Encode`](crate::Error::Encode) for an item that cannot be encoded;
    /// [`Error::WaitInCallback`](crate::Error::WaitInCallback)
    /// in a callback of this pool.
    pub fn map<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.map_in_chunks(f, items, None)
    }

    /// [`map`](Self::map) without waiting.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pending = pool.map_async(|x: u64| x + 1, 0..1000u64)?;
    ///     // ... other work here ...
    ///     assert_eq!(pending.get()?.iter().sum::<u64>(), 500_500);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), at submission. The handle's result is the
    /// first failing chunk's error, in as soon as it comes; every other
    /// chunk of the map (all are submitted at once) still runs and holds
    /// its worker until it ends (only [`terminate`](Self::terminate) or a
    /// [`task_timeout`](crate::PoolBuilder::task_timeout) cuts them short).
    pub fn map_async<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.map_async_with(f, items, Callbacks::new())
    }

    /// [`map_async`](Self::map_async) with Python's `callback` (called once
    /// with the whole result) and `error_callback` (with the first error).
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new()
    ///         .on_success(move |squares: &Vec<u64>| tx.send(squares.iter().sum::<u64>()).unwrap());
    ///     pool.map_async_with(|x: u64| x * x, 0..4u64, cb)?;
    ///     assert_eq!(rx.recv().unwrap(), 14);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async).
    pub fn map_async_with<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.map_async_in_chunks(f, items, None, callbacks)
    }

    /// `f(*args)` for every tuple, in order (Python's `starmap`), in chunks
    /// of [`map`](Self::map)'s default size.
    ///
    /// ```
    /// fn main() {
    ///     let pool = corepool::Pool::new(1).unwrap();
    ///     let sums = pool.starmap(|a: u32, b: u32| a + b, vec![(1, 2), (3, 4)]).unwrap();
    ///     assert_eq!(sums, vec![3, 7]);
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map): the first failing chunk's error, returned
    /// while the chunks already handed to the workers go on running.
    pub fn starmap<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        self.starmap_in_chunks(f, items, None)
    }

    /// [`starmap`](Self::starmap) without waiting.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pending = pool.starmap_async(|a: u64, b: u64| a * b, vec![(2, 3), (4, 5)])?;
    ///     assert_eq!(pending.get()?, [6, 20]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async): the handle's result is the first
    /// failing chunk's error, while the other chunks go on running.
    pub fn starmap_async<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        self.starmap_async_with(f, items, Callbacks::new())
    }

    /// [`starmap_async`](Self::starmap_async) with Python's `callback` and
    /// `error_callback`.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new().on_error(move |e| tx.send(e.clone()).unwrap());
    ///     pool.starmap_async_with(|a: u64, b: u64| a / b, vec![(4, 2), (1, 0)], cb)?;
    ///     assert!(matches!(rx.recv().unwrap(), corepool::Error::Panicked { .. }));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async).
    pub fn starmap_async_with<F, T, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = T>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        self.starmap_async_in_chunks(f, items, None, callbacks)
    }
}
