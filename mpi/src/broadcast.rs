//! [`Broadcast`]: a large read-only array given to every rank once (one
//! `MPI_Bcast` into a shared array on each node), that tasks then refer to
//! by handle instead of carrying it in every message.

use corepool::bytemuck::{self, Pod};
use corepool::{Encoder, Error, Result, SharedArray, Wire};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

thread_local! {
    /// The rank a task is being encoded for, while the MPI thread encodes
    /// it (`None` elsewhere: this process's own pool).
    static DESTINATION: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `encode` with [`Broadcast`]s encoding the handles of rank `rank`.
/// The encoder is the user's code run on the MPI thread: its panic is
/// caught here (and the destination reset), so that it fails one task
/// instead of unwinding the MPI thread, which would end the whole job.
pub(crate) fn encoding_for<R>(rank: usize, encode: impl FnOnce() -> R) -> std::thread::Result<R> {
    let before = DESTINATION.with(|d| d.replace(Some(rank)));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode));
    DESTINATION.with(|d| d.set(before));
    result
}

/// What every copy of one broadcast shares: this process's array, and on
/// rank 0 each rank's handle to its own copy.
pub(crate) struct Copies {
    pub(crate) local: SharedArray<u8>,
    /// Indexed by rank; empty in a worker, and rank 0's own entry is empty.
    pub(crate) handles: Vec<Vec<u8>>,
}

/// An array of plain numbers on every rank, made by
/// [`Cluster::broadcast`](crate::Cluster::broadcast): each node holds one
/// copy in shared memory, which every worker of every rank on it maps.
///
/// Pass it (or a clone: a clone shares the copy) in a task's argument: on
/// its way to a rank it becomes that rank's handle, a few dozen bytes,
/// whatever the array's size. A task reads it with [`get`](Self::get),
/// [`read`](Self::read), [`read_into`](Self::read_into) or
/// [`fold_chunks`](Self::fold_chunks). It is read-only, and it lives until
/// the [`Cluster`](crate::Cluster) ends.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
/// let squares: Vec<u64> = (0..1000).map(|i| i * i).collect();
/// let b = cluster.broadcast(&squares)?;
/// let at = cluster.apply(|(b, i): (corepool_mpi::Broadcast<u64>, usize)| b.get(i), (b.clone(), 12))?;
/// assert_eq!(at, Some(144));
/// # Ok(()) }
/// ```
pub struct Broadcast<T> {
    copies: Arc<Copies>,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Broadcast<T> {
    fn clone(&self) -> Self {
        Self {
            copies: self.copies.clone(),
            len: self.len,
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Broadcast<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("len", &self.len)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// Elements copied per block by [`Broadcast::fold_chunks`].
const BLOCK_BYTES: usize = 32 * 1024;

impl<T: Pod> Broadcast<T> {
    pub(crate) fn new(copies: Arc<Copies>, len: usize) -> Self {
        Self {
            copies,
            len,
            _type: PhantomData,
        }
    }

    /// Number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let b = cluster.broadcast(&[1.0f64, 2.0, 3.0])?;
    /// assert_eq!(b.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let b = cluster.broadcast::<f32>(&[])?;
    /// assert!(b.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `index`, or `None` past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let b = cluster.broadcast(&[10u16, 20, 30])?;
    /// assert_eq!((b.get(1), b.get(3)), (Some(20), None));
    /// # Ok(()) }
    /// ```
    pub fn get(&self, index: usize) -> Option<T> {
        let mut one = [T::zeroed()];
        self.read_into(index, &mut one).ok()?;
        Some(one[0])
    }

    /// Copies the elements from `start` into `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when `start..start + dst.len()` is not inside.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let b = cluster.broadcast(&[1u8, 2, 3, 4])?;
    /// let mut two = [0u8; 2];
    /// b.read_into(2, &mut two)?;
    /// assert_eq!(two, [3, 4]);
    /// assert!(b.read_into(3, &mut two).is_err()); // past the end
    /// # Ok(()) }
    /// ```
    pub fn read_into(&self, start: usize, dst: &mut [T]) -> Result<()> {
        let end = start.checked_add(dst.len()).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(Error::OutOfBounds {
                start,
                end: start.saturating_add(dst.len()),
                len: self.len,
            });
        }
        let size = std::mem::size_of::<T>();
        self.copies
            .local
            .read_into(start * size, bytemuck::cast_slice_mut(dst))
    }

    /// The elements of `range`, copied out.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when `range` is not inside.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let b = cluster.broadcast(&[5i32, 6, 7])?;
    /// assert_eq!(b.read(1..3)?, vec![6, 7]);
    /// # Ok(()) }
    /// ```
    pub fn read(&self, range: Range<usize>) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); range.end.saturating_sub(range.start)];
        self.read_into(range.start, &mut out)?;
        Ok(out)
    }

    /// Folds `f` over the elements of `range` in cache-sized blocks, in
    /// order.
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when `range` is not inside.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::init()?; // alone: a one-rank job; under `mpirun -n N`: N ranks
    /// let b = cluster.broadcast(&vec![1u32; 100_000])?;
    /// let total = b.fold_chunks(0..100_000, 0u64, |acc, xs| acc + xs.len() as u64)?;
    /// assert_eq!(total, 100_000);
    /// # Ok(()) }
    /// ```
    pub fn fold_chunks<Acc>(
        &self,
        range: Range<usize>,
        init: Acc,
        mut f: impl FnMut(Acc, &[T]) -> Acc,
    ) -> Result<Acc> {
        let block = (BLOCK_BYTES / std::mem::size_of::<T>().max(1)).max(1);
        let mut buf = vec![T::zeroed(); block.min(range.end.saturating_sub(range.start))];
        let mut acc = init;
        let mut at = range.start;
        while at < range.end {
            let n = block.min(range.end - at);
            self.read_into(at, &mut buf[..n])?;
            acc = f(acc, &buf[..n]);
            at += n;
        }
        Ok(acc)
    }
}

impl<T: Pod> Wire for Broadcast<T> {
    fn encode(&self, out: &mut Encoder) {
        (std::mem::size_of::<T>() as u64, self.len as u64).encode(out);
        match DESTINATION.with(Cell::get) {
            Some(rank) if rank > 0 => match self.copies.handles.get(rank) {
                Some(handle) if !handle.is_empty() => out.extend_from_slice(handle),
                _ => out.fail::<Self>(format!(
                    "rank {rank} holds no copy of this array: it was broadcast by another cluster, or decoded in a worker"
                )),
            },
            _ => self.copies.local.encode(out),
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (size, len) = <(u64, u64)>::decode(input)?;
        let bad = |reason: String| Error::Decode {
            type_name: std::any::type_name::<Self>(),
            reason,
        };
        if size != std::mem::size_of::<T>() as u64 {
            return Err(bad(format!(
                "elements of {size} bytes, not {}",
                std::mem::size_of::<T>()
            )));
        }
        let local = SharedArray::<u8>::decode(input)?;
        let len = usize::try_from(len).map_err(|_| bad("length out of range".into()))?;
        if len.checked_mul(std::mem::size_of::<T>()) != Some(local.len()) {
            return Err(bad(format!(
                "{len} elements do not fill the {} bytes shared",
                local.len()
            )));
        }
        Ok(Self::new(
            Arc::new(Copies {
                local,
                handles: Vec::new(),
            }),
            len,
        ))
    }
}
