//! [`Chunked`]: a view of a [`Pool`] whose maps send their items in chunks
//! of a size the caller chose (Python's `chunksize=` argument), checked once
//! when the view is made.

use super::{AsyncResult, Callbacks, Imap, ImapUnordered, Pool};
use crate::error::Result;
use crate::wire::task::StarFn;
use crate::wire::Wire;
use std::fmt;

/// A [`Pool`] whose maps send `chunksize` items per task: Python's
/// `pool.map(f, items, chunksize=n)`, spelled `pool.chunked(n)?.map(f, items)`.
///
/// Made by [`Pool::chunked`], which checks the size once; the view borrows
/// the pool, costs nothing to make or copy, and has the pool's whole `map`
/// family. Each method is the pool's method of the same name with the chunk
/// size given instead of the default.
///
/// ```
/// fn main() -> corepool::Result<()> {
///     let pool = corepool::Pool::new(2)?;
///     let by_eight = pool.chunked(8)?;
///     assert_eq!(by_eight.map(|x: u64| x + 1, 0..4u64)?, [1, 2, 3, 4]);
///     assert_eq!(by_eight.starmap(|a: u64, b: u64| a * b, vec![(2, 3)])?, [6]);
///     Ok(())
/// }
/// ```
#[derive(Clone, Copy)]
pub struct Chunked<'p> {
    pool: &'p Pool,
    /// Checked by [`Pool::check_chunksize`].
    chunksize: usize,
}

impl fmt::Debug for Chunked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunked")
            .field("chunksize", &self.chunksize)
            .field("workers", &self.pool.workers())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// This pool with its maps sending `chunksize` items per task (Python's
    /// `chunksize=` argument); the methods of the pool itself pick a default
    /// (see [`map`](Self::map) and [`imap`](Self::imap)).
    ///
    /// The one rule for a chunk size, whatever the method: at least 1 item,
    /// and at most as many items as one ring message has bytes (a message
    /// is about half of [`ring_bytes`](crate::PoolBuilder::ring_bytes); the
    /// bound keeps a lazy map from collecting without end). It is checked
    /// here, before anything is allocated or any item taken. A chunk whose
    /// items take more bytes than a message travels out of line, as a large
    /// argument does: in the pool's argument arena, or in a segment of its
    /// own (one descriptor while it is queued) when the arena has no room.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let squares = pool.chunked(100)?.map(|x: u64| x * x, 0..1000u64)?;
    ///     assert_eq!(squares[999], 998_001);
    ///     assert!(matches!(pool.chunked(0), Err(corepool::Error::InvalidConfig { .. })));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a chunk size
    /// out of range.
    pub fn chunked(&self, chunksize: usize) -> Result<Chunked<'_>> {
        Ok(Chunked {
            pool: self,
            chunksize: self.check_chunksize(chunksize)?,
        })
    }
}

impl<'p> Chunked<'p> {
    /// The chunk size this view sends.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     assert_eq!(pool.chunked(16)?.chunksize(), 16);
    ///     Ok(())
    /// }
    /// ```
    pub fn chunksize(&self) -> usize {
        self.chunksize
    }

    /// [`Pool::map`] in chunks of this view's size.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let lengths = pool.chunked(2)?.map(|s: String| s.len() as u64, ["a", "bb", "ccc"].map(String::from))?;
    ///     assert_eq!(lengths, [1, 2, 3]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::map`].
    pub fn map<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        self.pool.map_in_chunks(f, items, Some(self.chunksize))
    }

    /// [`Pool::map_async`] in chunks of this view's size.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pending = pool.chunked(50)?.map_async(|x: u64| x + 1, 0..1000u64)?;
    ///     assert_eq!(pending.get()?.iter().sum::<u64>(), 500_500);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::map_async`].
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

    /// [`Pool::map_async_with`] in chunks of this view's size.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new()
    ///         .on_success(move |squares: &Vec<u64>| tx.send(squares.iter().sum::<u64>()).unwrap());
    ///     pool.chunked(1)?.map_async_with(|x: u64| x * x, 0..4u64, cb)?;
    ///     assert_eq!(rx.recv().unwrap(), 14);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::map_async_with`].
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
        self.pool
            .map_async_in_chunks(f, items, Some(self.chunksize), callbacks)
    }

    /// [`Pool::starmap`] in chunks of this view's size.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(1)?;
    ///     let sums = pool.chunked(1)?.starmap(|a: u32, b: u32| a + b, vec![(1, 2), (3, 4)])?;
    ///     assert_eq!(sums, [3, 7]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::starmap`].
    pub fn starmap<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        self.pool.starmap_in_chunks(f, items, Some(self.chunksize))
    }

    /// [`Pool::starmap_async`] in chunks of this view's size.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let pending = pool.chunked(1)?.starmap_async(|a: u64, b: u64| a * b, vec![(2, 3), (4, 5)])?;
    ///     assert_eq!(pending.get()?, [6, 20]);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::starmap_async`].
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

    /// [`Pool::starmap_async_with`] in chunks of this view's size.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let (tx, rx) = mpsc::channel();
    ///     let cb = corepool::Callbacks::new().on_error(move |e| tx.send(e.clone()).unwrap());
    ///     pool.chunked(1)?.starmap_async_with(|a: u64, b: u64| a / b, vec![(4, 2), (1, 0)], cb)?;
    ///     assert!(matches!(rx.recv().unwrap(), corepool::Error::Panicked { .. }));
    ///     Ok(())
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Pool::starmap_async_with`].
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
        self.pool
            .starmap_async_in_chunks(f, items, Some(self.chunksize), callbacks)
    }

    /// [`Pool::imap`] in chunks of this view's size: fewer, larger tasks
    /// for cheap items, at the price of results arriving a chunk at a time.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let mut results = pool.chunked(64)?.imap(|x: u64| x * x, 1..=1_000_000u64);
    ///     // Lazy: only the chunks ahead of the reader are in flight.
    ///     let first: Vec<u64> = results.by_ref().take(3).collect::<corepool::Result<_>>()?;
    ///     assert_eq!(first, [1, 4, 9]);
    ///     Ok(())
    /// }
    /// ```
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> Imap<'p, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        self.pool.imap_in_chunks(f, items, Some(self.chunksize))
    }

    /// [`Pool::imap_unordered`] in chunks of this view's size: as lazy,
    /// with fewer, larger tasks.
    ///
    /// ```
    /// fn main() -> corepool::Result<()> {
    ///     let pool = corepool::Pool::new(2)?;
    ///     let total: u64 = pool
    ///         .chunked(10)?
    ///         .imap_unordered(|x: u64| x * 2, 0..100u64)
    ///         .sum::<corepool::Result<u64>>()?;
    ///     assert_eq!(total, 9_900);
    ///     Ok(())
    /// }
    /// ```
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> ImapUnordered<'p, A, R, I::IntoIter>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
        I: IntoIterator<Item = A>,
    {
        self.pool
            .imap_unordered_in_chunks(f, items, Some(self.chunksize))
    }
}
