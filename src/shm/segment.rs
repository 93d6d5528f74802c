//! Anonymous shared memory: a sealed `memfd` mapped `MAP_SHARED`.
//!
//! A [`Segment`] never has a name in `/dev/shm`, so nothing can leak there, even
//! when its owner is SIGKILLed: the memory lives exactly as long as some
//! process holds its descriptor or a mapping. Its space is reserved with
//! `fallocate` up front (a full tmpfs is an error at creation, not a SIGBUS on
//! first touch) and its size is sealed, so a worker cannot shrink it under the
//! parent's mapping.
//!
//! The mapping is a [`memmap2::MmapRaw`]: a base pointer and a length. Nothing
//! here ever forms a reference into the bytes.
//!
//! Under Miri, which runs neither `memfd_create` nor `mmap`, a segment is
//! zeroed heap memory of the same size and alignment instead, so that the
//! lock-free structures built on segments (the queue, shared values, the
//! layout checks) run under Miri's checker in one process. Such a segment
//! has no descriptor and cannot be handed to another process.

use crate::error::{Error, Result};
use crate::sys;
#[cfg(not(miri))]
use memmap2::MmapRaw;
use std::ffi::CStr;
#[cfg(not(miri))]
use std::fs::File;
#[cfg(not(miri))]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Reads (and caches) this process's owner tag before it can claim anything
/// in shared memory: a claim made later, when `/proc` may be out of reach
/// (no descriptor left), then still records it instead of `UNKNOWN`.
#[cfg(not(miri))]
fn read_start_tag_early() {
    let _ = super::owner::my_start_tag();
}

/// A mapped, sealed memfd.
#[derive(Debug)]
pub(crate) struct Segment {
    #[cfg(not(miri))]
    map: MmapRaw,
    #[cfg(not(miri))]
    file: File,
    #[cfg(miri)]
    map: miri::Heap,
    len: usize,
}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes.
    pub(crate) fn create(name: &CStr, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidConfig {
                what: "a shared segment needs at least one byte".into(),
            });
        }
        #[cfg(miri)]
        {
            let _ = name;
            return Ok(Self {
                map: miri::Heap::zeroed(len),
                len,
            });
        }
        #[cfg(not(miri))]
        Self::create_memfd(name, len)
    }

    #[cfg(not(miri))]
    fn create_memfd(name: &CStr, len: usize) -> Result<Self> {
        read_start_tag_early();
        let fd = sys::memfd_create(name).map_err(|e| Error::shm("memfd_create", e))?;
        let file = File::from(fd);
        sys::set_file_len(file.as_fd(), len as u64).map_err(|e| Error::shm("ftruncate", e))?;
        sys::fallocate(file.as_fd(), len as u64)
            .map_err(|e| reserving("fallocate (reserving the memory)", e))?;
        sys::seal_size(file.as_fd()).map_err(|e| Error::shm("sealing the size", e))?;
        let map = MmapRaw::map_raw(&file).map_err(|e| Error::shm("mmap", e))?;
        Ok(Self { map, file, len })
    }

    /// Maps a segment whose descriptor this process inherited or opened. Takes
    /// ownership of `fd`. The size is the file's own, read once.
    #[cfg(miri)]
    pub(crate) fn open(fd: OwnedFd) -> Result<Self> {
        drop(fd);
        Err(Error::shm(
            "mmap",
            std::io::Error::other("Miri cannot map a descriptor"),
        ))
    }

    /// Maps a segment whose descriptor this process inherited or opened. Takes
    /// ownership of `fd`. The size is the file's own, read once.
    #[cfg(not(miri))]
    pub(crate) fn open(fd: OwnedFd) -> Result<Self> {
        read_start_tag_early();
        let file = File::from(fd);
        let id = sys::fstat(file.as_fd()).map_err(|e| Error::shm("fstat", e))?;
        let len = usize::try_from(id.size)
            .map_err(|_| Error::shm("size", std::io::ErrorKind::InvalidData.into()))?;
        if len == 0 {
            return Err(Error::shm(
                "open",
                std::io::Error::other("segment is empty"),
            ));
        }
        let map = MmapRaw::map_raw(&file).map_err(|e| Error::shm("mmap", e))?;
        Ok(Self { map, file, len })
    }

    /// Takes ownership of an inherited raw descriptor and maps it.
    ///
    /// # Safety
    ///
    /// `fd` must be an open descriptor that nothing else in this process owns.
    pub(crate) unsafe fn open_raw(fd: RawFd) -> Result<Self> {
        // SAFETY: the caller guarantees exclusive ownership of an open fd.
        Self::open(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Base address of the mapping.
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The memfd, for handing to a child process.
    #[cfg(not(miri))]
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The raw descriptor number.
    #[cfg(not(miri))]
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `(device, inode)`: identifies the memfd across processes.
    #[cfg(not(miri))]
    pub(crate) fn identity(&self) -> Result<sys::FileId> {
        sys::fstat(self.fd()).map_err(|e| Error::shm("fstat", e))
    }

    /// Under Miri: no descriptor (see the module's comment).
    #[cfg(miri)]
    pub(crate) fn raw_fd(&self) -> RawFd {
        -1
    }

    /// Under Miri: an identity made up from the address, unique while the
    /// segment lives.
    #[cfg(miri)]
    pub(crate) fn identity(&self) -> Result<sys::FileId> {
        Ok(sys::FileId {
            dev: 0,
            ino: self.base() as u64,
            size: self.len as u64,
            mtime_ns: 0,
        })
    }

    /// Pointer to `offset`, checked against the length for `size` bytes.
    pub(crate) fn at(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + size <= len, so the result stays inside the mapping.
        Some(unsafe { self.base().add(offset) })
    }
}

// SAFETY: the mapping is plain memory; every access to it goes through atomics
// or explicit byte copies that are valid from any thread.
unsafe impl Send for Segment {}
// SAFETY: as above: no method hands out references into the bytes.
unsafe impl Sync for Segment {}

/// The heap stand-in for a mapping under Miri.
#[cfg(miri)]
mod miri {
    use std::sync::atomic::AtomicU64;

    /// Zeroed, page-aligned in spirit (8-aligned in fact, which is what the
    /// structures on top rely on), handed out only as a raw pointer.
    #[derive(Debug)]
    pub(super) struct Heap(*mut [AtomicU64]);

    impl Heap {
        pub(super) fn zeroed(len: usize) -> Self {
            let words: Box<[AtomicU64]> = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
            Self(Box::into_raw(words))
        }

        pub(super) fn as_mut_ptr(&self) -> *mut u8 {
            self.0.cast()
        }
    }

    impl Drop for Heap {
        fn drop(&mut self) {
            // SAFETY: `self.0` came from `Box::into_raw` in `zeroed` and is
            // freed only here.
            drop(unsafe { Box::from_raw(self.0) });
        }
    }
}

/// The error of a reservation (`sys::fallocate`, `sys::fallocate_range`)
/// that failed with `e`, named `op` if the kernel refused it, or as the
/// check it is if corepool's memory check did, before anything was
/// reserved (`sys::is_memory_refusal`).
pub(crate) fn reserving(op: &'static str, e: std::io::Error) -> Error {
    if sys::is_memory_refusal(&e) {
        Error::shm("checking the memory available before reserving it", e)
    } else {
        Error::shm(op, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(miri))] // no memfd under Miri
    fn a_segment_larger_than_the_memory_available_is_refused_before_it_is_reserved() {
        // Without a figure to check against, the reservation would go to the
        // kernel and the OOM killer: never try that here.
        let Some((available, _)) = sys::memory_available_for_tests() else {
            return;
        };
        let len = available
            .saturating_mul(2)
            .max(1 << 40)
            .min(i64::MAX as u64 / 2) as usize;
        let err = Segment::create(c"corepool-test", len).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::SharedMemory { .. }), "{err:?}");
        assert!(text.contains("available") && text.contains("OOM"), "{text}");
        assert!(
            text.contains("checking the memory available") && !text.contains("fallocate"),
            "nothing was fallocated: {text}"
        );
    }

    #[test]
    #[cfg(not(miri))] // the file and its seals do not exist under Miri
    fn segment_is_zeroed_sized_and_sealed() {
        let seg = Segment::create(c"corepool-test", 1 << 16).unwrap();
        assert_eq!(seg.len(), 1 << 16);
        let p = seg.at(100, 8).unwrap();
        // SAFETY: in bounds, and no one else maps this segment.
        assert_eq!(unsafe { p.cast::<u64>().read_unaligned() }, 0);
        assert!(seg.at(1 << 16, 1).is_none());
        // The size is sealed: growing must fail.
        let file = seg.file.try_clone().unwrap();
        assert!(file.set_len(1 << 20).is_err());
    }
}
