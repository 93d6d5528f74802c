//! The file an unbounded queue's rings live in ([`DataFile`]): a memfd
//! sealed against shrinking but not growing, which any producer extends by
//! a ring (`fallocate`) and every process maps one ring at a time.
//!
//! The file belongs to no process in particular: a producer that grows it
//! and then dies takes nothing with it, since the growth is the file's, and
//! every process that uses the queue holds its own descriptor. (A process
//! that *opens* the queue for the first time names the file through the
//! descriptor table of the process that sent it the queue's handle,
//! `/proc/<sender>/fd/<n>`, as it names the queue's value file, so that the
//! queue opens after its creator is gone; with the same checks as
//! [`SharedSegment`](crate::shm::handle::SharedSegment)'s handles, except
//! that the file must be sealed against shrinking rather than against any
//! resize, and its identity must be the one the queue's memory records.)
//!
//! Nothing in shared memory is trusted to say how long the file is: before
//! a ring is mapped, `fstat` must show the file holds it, and since the file
//! cannot shrink, a mapping checked once stays backed. A lie about the
//! rings is an error, never a SIGBUS.

use super::memory::QueueMemory;
use super::unbounded::MAX_RINGS;
use crate::error::{Error, Result};
use crate::shm::peer::{self, OpenError};
use crate::sys::{self, FileId};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, OnceLock};

/// One process's descriptor of a queue's data file and its mappings of the
/// rings it has touched.
#[derive(Debug)]
pub(super) struct DataFile {
    file: File,
    id: FileId,
    /// Ring `k`'s mapping, once made.
    maps: [OnceLock<MmapRaw>; MAX_RINGS],
}

/// Data files this process has open, so that every handle of one queue
/// decoded here shares one descriptor and one set of mappings.
static OPENED: peer::OpenedFiles<DataFile> = peer::OpenedFiles::new(|f| (f.id.dev, f.id.ino));

impl DataFile {
    /// A new file of `first_ring_bytes`, reserved, sealed against shrinking.
    pub(super) fn create(first_ring_bytes: u64) -> Result<Arc<Self>> {
        let fd = sys::memfd_create(c"corepool-queue-rings")
            .map_err(|e| Error::shm("memfd_create", e))?;
        let file = File::from(fd);
        sys::fallocate_range(file.as_fd(), 0, first_ring_bytes)
            .map_err(|e| crate::shm::segment::reserving("fallocate (reserving the memory)", e))?;
        sys::seal_shrink_only(file.as_fd())
            .map_err(|e| Error::shm("sealing against shrinking", e))?;
        let id = sys::fstat(file.as_fd()).map_err(|e| Error::shm("fstat", e))?;
        let made = Arc::new(Self {
            file,
            id,
            maps: std::array::from_fn(|_| OnceLock::new()),
        });
        OPENED.remember(&made);
        Ok(made)
    }

    /// `(this process, its descriptor, device, inode)`: what another
    /// process needs to open the file through this one.
    pub(super) fn handle(&self) -> (i32, i32, u64, u64) {
        let me = std::process::id() as i32;
        (me, self.file.as_raw_fd(), self.id.dev, self.id.ino)
    }

    /// `(device, inode)`: what the queue's memory records of it.
    pub(super) fn identity(&self) -> (u64, u64) {
        (self.id.dev, self.id.ino)
    }

    /// The file the handle `(owner, fd, dev, ino)` names, already open in
    /// this process or opened now.
    ///
    /// # Errors
    ///
    /// Why it cannot be opened: the handle's doing (its sender is gone, it
    /// is not a queue's data file), or this process's own want of
    /// descriptors ([`OpenError::OwnLimit`]).
    pub(super) fn open(
        owner: i32,
        fd: i32,
        dev: u64,
        ino: u64,
    ) -> std::result::Result<Arc<Self>, OpenError> {
        OPENED.get_or_open((dev, ino), || open_uncached(owner, fd, dev, ino))
    }

    /// Ring `k`'s memory: `len` bytes at `offset`, mapped on first use after
    /// checking that the file holds them.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] if the file is shorter (the queue's words
    /// lie) or the mapping fails.
    pub(super) fn map(&self, k: usize, offset: u64, len: u64) -> Result<QueueMemory> {
        let slot = self.maps.get(k).ok_or_else(|| too_short(offset, len, 0))?;
        if slot.get().is_none() {
            let size = sys::fstat(self.file.as_fd())
                .map_err(|e| Error::shm("fstat", e))?
                .size;
            let fits = offset.checked_add(len).is_some_and(|end| end <= size);
            let bytes = usize::try_from(len).ok().filter(|_| fits);
            let bytes = bytes.ok_or_else(|| too_short(offset, len, size))?;
            let map = MmapOptions::new()
                .offset(offset)
                .len(bytes)
                .map_raw(&self.file)
                .map_err(|e| Error::shm("mmap (a ring of an unbounded queue)", e))?;
            // Another thread may have mapped it meanwhile: its mapping
            // stays, ours is unmapped here.
            let _ = slot.set(map);
        }
        let map = slot.get().ok_or_else(|| too_short(offset, len, 0))?;
        // SAFETY: the mapping is page-aligned, `map.len()` bytes long and
        // lives as long as `self`, which the queue holding this memory
        // holds; the file cannot shrink (sealed), so every byte stays backed.
        Ok(unsafe { QueueMemory::new(map.as_mut_ptr(), map.len()) })
    }

    /// Makes the file hold `len` bytes at `offset`, with their memory
    /// reserved (`fallocate` extends the file; it never shrinks it).
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the memory cannot be had.
    pub(super) fn ensure(&self, offset: u64, len: u64) -> Result<()> {
        sys::fallocate_range(self.file.as_fd(), offset, len).map_err(|e| {
            crate::shm::segment::reserving("fallocate (growing an unbounded queue)", e)
        })
    }

    /// Gives the memory of `len` bytes at `offset` back; the range reads as
    /// zeros from now on. A failure only keeps the memory in use.
    pub(super) fn punch(&self, offset: u64, len: u64) {
        let _ = sys::punch_hole(self.file.as_fd(), offset, len);
    }
}

fn too_short(offset: u64, len: u64, size: u64) -> Error {
    Error::SharedMemory {
        op: "mapping a ring of an unbounded queue",
        source: crate::error::wrote_over(format!(
            "the ring at {offset}+{len} lies past the file's {size} bytes (a process wrote over the queue)"
        )),
    }
}

/// Opens the queue's file a handle names: the checks every peer's memfd
/// gets and the shrink seal, since a ring is never mapped from a file that
/// could shrink under the mapping ([`peer::open_shrink_sealed`]).
fn open_uncached(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
) -> std::result::Result<DataFile, OpenError> {
    let (file, id) = peer::open_shrink_sealed(owner, fd, (dev, ino), "a queue's memory")?;
    Ok(DataFile {
        file,
        id,
        maps: std::array::from_fn(|_| OnceLock::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_past_the_end_is_an_error_and_growth_makes_it_fit() {
        let file = DataFile::create(8192).unwrap();
        assert!(file.map(0, 0, 8192).is_ok());
        assert!(matches!(
            file.map(1, 8192, 4096),
            Err(Error::SharedMemory { .. })
        ));
        file.ensure(8192, 4096).unwrap();
        let ring = file.map(1, 8192, 4096).unwrap();
        ring.word64(0)
            .store(7, std::sync::atomic::Ordering::Relaxed);
        file.punch(8192, 4096);
        assert_eq!(
            ring.word64(0).load(std::sync::atomic::Ordering::Relaxed),
            0,
            "given back: reads as zeros"
        );
        // It cannot shrink, and another handle of it opens the same file.
        assert!(file.file.set_len(4096).is_err());
        let (owner, fd, dev, ino) = file.handle();
        assert_eq!(owner, std::process::id() as i32, "named by its sender");
        let again = DataFile::open(owner, fd, dev, ino).unwrap();
        assert!(Arc::ptr_eq(&file, &again), "one descriptor per process");
        assert!(open_uncached(owner, fd, dev, ino + 1).is_err());
    }
}
