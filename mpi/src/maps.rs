//! The `map` family of a [`Cluster`]: items cut into chunks, every chunk
//! submitted, results in order ([`Chunked`], [`ClusterImap`]) or as they
//! arrive ([`ClusterImapUnordered`]).

use crate::cluster::{decode_result, encode_named};
use crate::comm::{DoneFn, Unit};
use crate::result::Slot;
use crate::{Cluster, ClusterResult};
use corepool::{Encoder, Error, RawTask, Result, StarFn, Wire};
use crossbeam_channel::Sender;
use std::fmt;

/// A [`Cluster`] whose `map` family uses a chunk size of its own: see
/// [`Cluster::chunked`].
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
/// let chunked = cluster.chunked(64)?;
/// assert_eq!(chunked.map(|x: u32| x % 7, 0..640u32)?.len(), 640);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Chunked<'a> {
    pub(crate) cluster: &'a Cluster,
    pub(crate) chunksize: Option<usize>,
}

impl Chunked<'_> {
    /// The chunk size for `items`. The first item is encoded to size the
    /// chunks (on the caller's thread): if that fails (its `Wire::encode`
    /// panicked, or called `Encoder::fail`), so would its chunk, and the
    /// map is refused at once with that [`Error::Encode`], before anything
    /// is submitted.
    fn chunksize_for<A: Wire>(&self, items: &[A]) -> Result<usize> {
        let first = match (self.chunksize, items.first()) {
            (Some(c), _) => return Ok(c),
            (None, first) => first,
        };
        let total: usize = self.cluster.workers().iter().sum();
        let mut size = items.len().div_ceil(total.max(1) * 4).max(1);
        if let Some(first) = first {
            let mut probe = Encoder::new();
            crate::guard::encode_caught::<A>(&mut probe, |out| first.encode(out));
            if let Some(e) = probe.failure() {
                return Err(e.clone());
            }
            let budget = (self.cluster.max_task_bytes().saturating_sub(8) / 2).min(1 << 18);
            size = size.min((budget / probe.len().max(1)).max(1));
        }
        Ok(size)
    }

    /// Submits every chunk; one slot per chunk, in order.
    fn submit_chunks<A: Wire, R: Wire>(
        &self,
        task: RawTask,
        items: impl IntoIterator<Item = A>,
        on_chunk: impl Fn(usize) -> Option<Sender<(usize, Result<Vec<R>>)>>,
    ) -> Result<Vec<ClusterResult<Vec<R>>>> {
        let items: Vec<A> = items.into_iter().collect();
        let chunksize = self.chunksize_for(&items)?;
        let mut chunks = Vec::with_capacity(items.len().div_ceil(chunksize));
        let mut items = items.into_iter();
        loop {
            let chunk: Vec<A> = items.by_ref().take(chunksize).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let mut slots = Vec::with_capacity(chunks.len());
        for (index, chunk) in chunks.into_iter().enumerate() {
            let notify = on_chunk(index);
            let slot = Slot::new();
            let landing = slot.clone();
            let done: DoneFn = Box::new(move |bytes| {
                let result = decode_result::<Vec<R>>(bytes);
                match notify {
                    Some(tx) => {
                        let _ = tx.send((index, result));
                        landing.finish(Err(Error::ResultTaken));
                    }
                    None => landing.finish(result),
                }
            });
            self.cluster.submit(Unit {
                task,
                encode: Box::new(move || encode_named::<A, _>(&chunk)),
                done,
                target: None,
            })?;
            slots.push(ClusterResult { slot });
        }
        Ok(slots)
    }

    /// As [`Cluster::map`], in chunks of this size.
    ///
    /// # Errors
    ///
    /// As [`Cluster::map`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let out = cluster.chunked(100)?.map(|x: u64| x + 1, 0..1000u64)?;
    /// assert_eq!(out[0], 1);
    /// # Ok(()) }
    /// ```
    pub fn map<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        crate::result::check_can_wait()?;
        collect_in_order(self.submit_chunks(RawTask::chunk(f), items, |_| None)?)
    }

    /// As [`Cluster::starmap`], in chunks of this size.
    ///
    /// # Errors
    ///
    /// As [`Cluster::map`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let out = cluster.chunked(2)?.starmap(|a: u8, b: u8| a * b, vec![(2, 3), (4, 5), (6, 7)])?;
    /// assert_eq!(out, vec![6, 20, 42]);
    /// # Ok(()) }
    /// ```
    pub fn starmap<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        F: StarFn<T, R>,
        T: Wire,
        R: Wire,
    {
        crate::result::check_can_wait()?;
        collect_in_order(self.submit_chunks(RawTask::star_chunk(f), items, |_| None)?)
    }

    /// As [`Cluster::imap`], in chunks of this size.
    ///
    /// # Errors
    ///
    /// As [`Cluster::imap`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let firsts: Vec<u64> = cluster.chunked(10)?.imap(|x: u64| x * 10, 0..100u64)?.take(3).collect::<corepool::Result<_>>()?;
    /// assert_eq!(firsts, vec![0, 10, 20]);
    /// # Ok(()) }
    /// ```
    pub fn imap<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<ClusterImap<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let chunks = self.submit_chunks(RawTask::chunk(f), items, |_| None)?;
        Ok(ClusterImap {
            chunks: chunks.into_iter(),
            current: Vec::new().into_iter(),
        })
    }

    /// As [`Cluster::imap_unordered`], in chunks of this size.
    ///
    /// # Errors
    ///
    /// As [`Cluster::imap`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let n = cluster.chunked(10)?.imap_unordered(|x: u64| x, 0..100u64)?.count();
    /// assert_eq!(n, 100);
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
    ) -> Result<ClusterImapUnordered<R>>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Wire,
        R: Wire,
    {
        let (tx, rx) = crossbeam_channel::unbounded();
        let chunks = self.submit_chunks(RawTask::chunk(f), items, |_| Some(tx.clone()))?;
        Ok(ClusterImapUnordered {
            arrivals: rx,
            left: chunks.len(),
            current: Vec::new().into_iter(),
        })
    }
}

fn collect_in_order<R>(chunks: Vec<ClusterResult<Vec<R>>>) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(chunk.get()?);
    }
    Ok(out)
}

/// The iterator of [`Cluster::imap`]: results in order, each as it arrives.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
/// let it: corepool_mpi::ClusterImap<u64> = cluster.imap(|x: u64| x, 0..5u64)?;
/// assert_eq!(it.collect::<corepool::Result<Vec<_>>>()?, vec![0, 1, 2, 3, 4]);
/// # Ok(()) }
/// ```
pub struct ClusterImap<R> {
    chunks: std::vec::IntoIter<ClusterResult<Vec<R>>>,
    current: std::vec::IntoIter<R>,
}

impl<R> fmt::Debug for ClusterImap<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterImap")
            .field("chunks_left", &self.chunks.len())
            .finish()
    }
}

impl<R> Iterator for ClusterImap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(Ok(item));
            }
            match self.chunks.next()?.get() {
                Ok(items) => self.current = items.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The iterator of [`Cluster::imap_unordered`]: results as they arrive.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
/// let it: corepool_mpi::ClusterImapUnordered<u64> = cluster.imap_unordered(|x: u64| x, 0..5u64)?;
/// let sum: u64 = it.map(|r| r.unwrap_or(0)).sum();
/// assert_eq!(sum, 10);
/// # Ok(()) }
/// ```
pub struct ClusterImapUnordered<R> {
    arrivals: crossbeam_channel::Receiver<(usize, Result<Vec<R>>)>,
    left: usize,
    current: std::vec::IntoIter<R>,
}

impl<R> fmt::Debug for ClusterImapUnordered<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterImapUnordered")
            .field("chunks_left", &self.left)
            .finish()
    }
}

impl<R> Iterator for ClusterImapUnordered<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(Ok(item));
            }
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            match self.arrivals.recv() {
                Ok((_, Ok(items))) => self.current = items.into_iter(),
                Ok((_, Err(e))) => return Some(Err(e)),
                Err(_) => return Some(Err(Error::Cancelled)),
            }
        }
    }
}
