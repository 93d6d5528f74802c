//! [`SharedArray`]: numbers in shared memory that every worker reads and
//! writes in place, the zero-copy path for numeric work.

use crate::error::{Error, Result};
use crate::shm::handle::{type_tag, SharedSegment};
use crate::wire::{decode_error, Encoder, Wire};
use bytemuck::Pod;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

/// Elements copied per block by [`SharedArray::fold_chunks`] and
/// [`SharedArray::update_chunks`]: 32 KiB of `f64`, small enough for L1/L2.
const BLOCK_BYTES: usize = 32 * 1024;

/// A fixed-length array of plain numbers in shared memory.
///
/// Create it in the parent, pass it to tasks as an argument (it crosses as a
/// small handle, never as data), and have each task work on its own index
/// range. Workers map the same pages, so writes are visible to everyone.
///
/// Access is by copy: no reference into the shared pages is ever handed out,
/// because another process may write them at any moment. The bulk methods
/// ([`fold_chunks`](Self::fold_chunks), [`update_chunks`](Self::update_chunks))
/// copy cache-sized blocks, which costs about as much memory traffic as
/// touching the data in place. Processes that write the same elements at the
/// same time get one of the values (or a torn mix of them), never undefined
/// behaviour in this process: `T: Pod` makes every bit pattern valid.
///
/// Any process may create one and send it on (a task may return one it
/// made): it stays alive while some process holds it or a handle to it is
/// in flight, and is freed once neither is true. Large data also crosses by
/// value (a `Vec` larger than a message travels in a one-off shared segment
/// of its own), but a `SharedArray` is the faster way for data a task reads
/// more than once, that several tasks share or write back, or of several
/// MiB per call: several times faster, see `docs/performance.md`.
///
/// **Iterative kernels** (a stencil, a solver sweeping the same arrays call
/// after call) map each array once per worker: a worker keeps the mapping
/// of an array it received after the task's copies drop, and reuses it for
/// the next task that names the array, so its pages are not faulted in
/// again. It lets the mapping go when the array's creator drops its last
/// copy, when newer arrays push it out of the worker's cache (64 arrays,
/// and at most an eighth of the machine's memory, up to 4 GiB, of arrays
/// no task there uses), or after the worker has been idle for a second.
/// In such kernels, copy bands out with [`read_into`](Self::read_into) into
/// a buffer the task keeps between calls (a `thread_local!`) rather than
/// with [`read`](Self::read), which allocates and faults a fresh `Vec` each
/// time: a user trial's stencil ran about 30% faster so.
///
/// Each array holds one file descriptor (and one mapping) in the process
/// that made it while it lives, and in each process that maps it: a
/// program that keeps thousands of arrays at once may need a higher
/// `ulimit -n`.
///
/// ```
/// use corepool::{Pool, SharedArray};
///
/// fn scale(arg: (SharedArray<f64>, u64, u64)) {
///     let (array, start, end) = arg;
///     array.update_chunks(start as usize..end as usize, |xs| xs.iter_mut().for_each(|x| *x *= 2.0)).unwrap();
/// }
///
/// fn main() {
///     let array = SharedArray::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).unwrap();
///     let pool = Pool::new(2).unwrap();
///     pool.chunked(1).unwrap().map(scale, vec![(array.clone(), 0, 2), (array.clone(), 2, 4)]).unwrap();
///     assert_eq!(array.to_vec(), vec![2.0, 4.0, 6.0, 8.0]);
/// }
/// ```
pub struct SharedArray<T> {
    map: Arc<SharedSegment>,
    len: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for SharedArray<T> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            len: self.len,
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArray")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len)
            .field("owner", &self.map.owner())
            .finish()
    }
}

impl<T: Pod> SharedArray<T> {
    /// A zero-filled array of `len` elements.
    ///
    /// Its memory is reserved (committed) at creation, so that a full
    /// tmpfs or a memory limit is an error here rather than a crash at the
    /// first touch; creating a large array takes as long as the kernel
    /// needs to find that memory. An array that this process's address-space
    /// limit (`ulimit -v`) leaves no room to map is refused at once, before
    /// any memory is reserved.
    ///
    /// ```
    /// let a = corepool::SharedArray::<u32>::new(3)?;
    /// assert_eq!(a.to_vec(), vec![0, 0, 0]);
    /// assert!(corepool::SharedArray::<()>::new(1).is_err()); // zero-sized elements
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the memory cannot be reserved or mapped
    /// (its advice names the limit: RAM, the cgroup, `ulimit -v`, `ulimit -n`);
    /// [`Error::InvalidConfig`] for a zero-sized `T` or a size that overflows.
    pub fn new(len: usize) -> Result<Self> {
        let size = std::mem::size_of::<T>();
        if size == 0 {
            return Err(Error::InvalidConfig {
                what: "SharedArray elements must not be zero-sized".into(),
            });
        }
        let bytes = len.checked_mul(size).ok_or_else(|| Error::InvalidConfig {
            what: format!("{len} elements of {size} bytes overflow"),
        })?;
        let map = SharedSegment::create(c"corepool-array", bytes.max(1))?;
        Ok(Self {
            map,
            len,
            _type: PhantomData,
        })
    }

    /// An array holding a copy of `data`.
    ///
    /// ```
    /// let a = corepool::SharedArray::from_slice(&[1.5f64, 2.5])?;
    /// assert_eq!(a.to_vec(), vec![1.5, 2.5]);
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_slice(data: &[T]) -> Result<Self> {
        let array = Self::new(data.len())?;
        array.write(0, data)?;
        Ok(array)
    }

    /// Number of elements.
    ///
    /// ```
    /// assert_eq!(corepool::SharedArray::<u8>::new(5)?.len(), 5);
    /// # Ok::<(), corepool::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    ///
    /// ```
    /// assert!(corepool::SharedArray::<u8>::new(0)?.is_empty());
    /// assert!(!corepool::SharedArray::from_slice(&[1u8])?.is_empty());
    /// # Ok::<(), corepool::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, range: &Range<usize>) -> Result<()> {
        if range.start > range.end || range.end > self.len {
            return Err(Error::OutOfBounds {
                start: range.start,
                end: range.end,
                len: self.len,
            });
        }
        Ok(())
    }

    fn ptr(&self, index: usize) -> *mut T {
        // SAFETY: callers check `index <= len`; the mapping holds `len`
        // elements and is page-aligned, so the pointer is in bounds (or one
        // past the end) and aligned for T.
        unsafe { self.map.base().cast::<T>().add(index) }
    }

    /// The element at `index`, or `None` past the end.
    ///
    /// ```
    /// let a = corepool::SharedArray::from_slice(&[10i64, 20])?;
    /// assert_eq!(a.get(1), Some(20));
    /// assert_eq!(a.get(2), None);
    /// # Ok::<(), corepool::Error>(())
    /// ```
    pub fn get(&self, index: usize) -> Option<T> {
        if index >= self.len {
            return None;
        }
        // SAFETY: in bounds and aligned (checked above); T is Pod, so any
        // bytes, even torn by a concurrent writer, are a valid T.
        Some(unsafe { self.ptr(index).read_volatile() })
    }

    /// Sets the element at `index`.
    ///
    /// ```
    /// let a = corepool::SharedArray::<i32>::new(2)?;
    /// a.set(1, -7)?;
    /// assert_eq!(a.to_vec(), vec![0, -7]);
    /// assert!(matches!(a.set(2, 1), Err(corepool::Error::OutOfBounds { .. })));
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] past the end.
    pub fn set(&self, index: usize, value: T) -> Result<()> {
        self.check(&(index..index.saturating_add(1)))?;
        // SAFETY: in bounds and aligned; writing plain bytes into shared memory.
        unsafe { self.ptr(index).write_volatile(value) };
        Ok(())
    }

    /// Copies `dst.len()` elements starting at `start` into `dst`.
    ///
    /// The way to read in a loop: reuse `dst` from call to call (see
    /// iterative kernels in [`SharedArray`]'s docs).
    ///
    /// ```
    /// let a = corepool::SharedArray::from_slice(&[1u16, 2, 3, 4])?;
    /// let mut buf = [0u16; 2];
    /// a.read_into(1, &mut buf)?;
    /// assert_eq!(buf, [2, 3]);
    /// assert!(a.read_into(3, &mut buf).is_err());
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when the range does not fit.
    pub fn read_into(&self, start: usize, dst: &mut [T]) -> Result<()> {
        self.check(&(start..start.saturating_add(dst.len())))?;
        // SAFETY: the source range is in bounds (checked) and cannot overlap
        // `dst`, which is private memory of this process.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(start), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies the elements in `range` out.
    ///
    /// ```
    /// let a = corepool::SharedArray::from_slice(&[1u8, 2, 3, 4])?;
    /// assert_eq!(a.read(1..3)?, vec![2, 3]);
    /// assert!(a.read(2..5).is_err());
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when the range does not fit.
    pub fn read(&self, range: Range<usize>) -> Result<Vec<T>> {
        self.check(&range)?;
        let mut out = vec![T::zeroed(); range.len()];
        self.read_into(range.start, &mut out)?;
        Ok(out)
    }

    /// Copies `src` into the array starting at `start`.
    ///
    /// ```
    /// let a = corepool::SharedArray::<u32>::new(4)?;
    /// a.write(1, &[7, 8])?;
    /// assert_eq!(a.to_vec(), vec![0, 7, 8, 0]);
    /// assert!(a.write(3, &[1, 2]).is_err());
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when the range does not fit.
    pub fn write(&self, start: usize, src: &[T]) -> Result<()> {
        self.check(&(start..start.saturating_add(src.len())))?;
        // SAFETY: the destination range is in bounds (checked); `src` is
        // private memory of this process, so they cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr(start), src.len()) };
        Ok(())
    }

    /// A copy of the whole array.
    ///
    /// ```
    /// let a = corepool::SharedArray::from_slice(&[3u64, 1, 2])?;
    /// assert_eq!(a.to_vec(), vec![3, 1, 2]);
    /// # Ok::<(), corepool::Error>(())
    /// ```
    pub fn to_vec(&self) -> Vec<T> {
        self.read(0..self.len).unwrap_or_default()
    }

    fn block_len() -> usize {
        (BLOCK_BYTES / std::mem::size_of::<T>()).max(1)
    }

    /// Folds over `range` block by block: each block is copied into a private
    /// buffer and passed to `f`. The way to reduce (sum, min, histogram).
    ///
    /// ```
    /// let a = corepool::SharedArray::from_slice(&(1..=100u64).collect::<Vec<_>>())?;
    /// let sum = a.fold_chunks(0..a.len(), 0, |acc, xs| acc + xs.iter().sum::<u64>())?;
    /// assert_eq!(sum, 5050);
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when the range does not fit.
    pub fn fold_chunks<Acc>(
        &self,
        range: Range<usize>,
        init: Acc,
        mut f: impl FnMut(Acc, &[T]) -> Acc,
    ) -> Result<Acc> {
        self.check(&range)?;
        let mut buf = vec![T::zeroed(); Self::block_len().min(range.len())];
        let mut acc = init;
        let mut at = range.start;
        while at < range.end {
            let n = buf.len().min(range.end - at);
            self.read_into(at, &mut buf[..n])?;
            acc = f(acc, &buf[..n]);
            at += n;
        }
        Ok(acc)
    }

    /// Updates `range` in place, block by block: each block is copied out,
    /// changed by `f`, and copied back.
    ///
    /// ```
    /// let a = corepool::SharedArray::from_slice(&[1.0f32, 2.0, 3.0])?;
    /// a.update_chunks(1..3, |xs| xs.iter_mut().for_each(|x| *x *= 10.0))?;
    /// assert_eq!(a.to_vec(), vec![1.0, 20.0, 30.0]);
    /// # Ok::<(), corepool::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::OutOfBounds`] when the range does not fit.
    pub fn update_chunks(&self, range: Range<usize>, mut f: impl FnMut(&mut [T])) -> Result<()> {
        self.check(&range)?;
        let mut buf = vec![T::zeroed(); Self::block_len().min(range.len())];
        let mut at = range.start;
        while at < range.end {
            let n = buf.len().min(range.end - at);
            self.read_into(at, &mut buf[..n])?;
            f(&mut buf[..n]);
            self.write(at, &buf[..n])?;
            at += n;
        }
        Ok(())
    }
}

impl<T> Drop for SharedArray<T> {
    fn drop(&mut self) {
        crate::shm::handle::dropping(&self.map);
    }
}

impl<T> SharedArray<T> {
    /// Test hook: see `crate::testing::forge_in_flight`.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn forge_in_flight(&self, count: u32) {
        self.map.forge_in_flight(count);
    }
}

impl<T: Pod> Wire for SharedArray<T> {
    fn encode(&self, out: &mut Encoder) {
        self.map.encode(type_tag::<T>(), self.len as u64, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let size = std::mem::size_of::<T>() as u64;
        let (map, len) =
            SharedSegment::decode::<Self>(input, type_tag::<T>(), |len| len.checked_mul(size))?;
        let len = usize::try_from(len).map_err(|_| decode_error::<Self>("length out of range"))?;
        Ok(Self {
            map,
            len,
            _type: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_bounds() {
        let a = SharedArray::<u32>::from_slice(&[1, 2, 3]).unwrap();
        assert_eq!(a.get(2), Some(3));
        assert_eq!(a.get(3), None);
        a.set(0, 9).unwrap();
        assert!(a.set(3, 0).is_err());
        assert_eq!(a.to_vec(), vec![9, 2, 3]);
        assert!(matches!(a.read(2..5), Err(Error::OutOfBounds { .. })));
        let sum = a
            .fold_chunks(0..3, 0u64, |s, xs| {
                s + xs.iter().map(|&x| x as u64).sum::<u64>()
            })
            .unwrap();
        assert_eq!(sum, 14);
        a.update_chunks(1..3, |xs| xs.iter_mut().for_each(|x| *x += 1))
            .unwrap();
        assert_eq!(a.to_vec(), vec![9, 3, 4]);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "needs another process (its descriptor table, or a pid that is dead)"
    )]
    fn a_handle_decodes_to_the_same_memory() {
        let a = SharedArray::<f64>::new(10_000).unwrap();
        let bytes = crate::wire::encode_to_vec(&a);
        let b = SharedArray::<f64>::decode(&mut bytes.as_slice()).unwrap();
        b.set(9_999, 2.5).unwrap();
        assert_eq!(a.get(9_999), Some(2.5));
        assert!(
            SharedArray::<u64>::decode(&mut bytes.as_slice()).is_err(),
            "type mismatch"
        );
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "needs another process (its descriptor table, or a pid that is dead)"
    )]
    fn hostile_handles_are_refused() {
        let a = SharedArray::<u8>::new(4096).unwrap();
        let bytes = crate::wire::encode_to_vec(&a);
        // Decode once so the mapping is cached, then lie about the length.
        SharedArray::<u8>::decode(&mut bytes.as_slice()).unwrap();
        let (owner, fd, dev, ino, _, tag) =
            <(i32, i32, u64, u64, u64, u64)>::decode(&mut bytes.as_slice()).unwrap();
        let lying = crate::wire::encode_to_vec(&(owner, fd, dev, ino, 1u64 << 40, tag));
        assert!(
            SharedArray::<u8>::decode(&mut lying.as_slice()).is_err(),
            "cached path"
        );
        // A handle naming an ordinary file is refused.
        let path = std::env::temp_dir().join(format!("corepool-test-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(4096).unwrap();
        std::fs::remove_file(&path).unwrap();
        let file_fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let id = crate::sys::fstat(std::os::fd::AsFd::as_fd(&file)).unwrap();
        let forged = crate::wire::encode_to_vec(&(owner, file_fd, id.dev, id.ino, 1u64, tag));
        let err = SharedArray::<u8>::decode(&mut forged.as_slice()).unwrap_err();
        assert!(
            err.to_string().contains("is not a corepool shared object"),
            "{err}"
        );
    }
}
