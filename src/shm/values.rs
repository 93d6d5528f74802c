//! A queue's value file: where a value too large for a queue slot waits to
//! be received ([`ValueFile`]). It belongs to the queue, not to the process
//! that put the value: a producer may exit or be killed right after its put
//! and the value stays receivable for as long as any process holds the
//! queue.
//!
//! The file is a memfd made with the queue by its creator, sealed against
//! shrinking only, so that it grows as values are written at offsets past
//! its end (like an unbounded queue's data file, `mpmc::growable`). Every
//! process that decodes the queue's handle opens it at decode time, through
//! the sender's descriptor (`/proc/<sender>/fd/<n>`, with the checks of
//! [`peer::open_memfd`] and a check that it is sealed against shrinking),
//! and holds its own descriptor from then on: one per queue per process,
//! shared by every copy of the queue there.
//!
//! **A value's life.** A put takes a range of the file by `fetch_add` on
//! the queue's *next offset* word (in its shared control memory), rounded up
//! to whole pages so that giving it back frees every page; reserves the
//! range's memory (`fallocate`: no memory is an error here, never an OOM
//! kill elsewhere) and writes the encoding there (`pwrite`); then puts a
//! small [record](RECORD_BYTES) `(offset, length)` in the slot. A put that
//! does not go in (full, closed, timed out, failed) punches its range back.
//! A get takes the record out of the slot, validates it, reads the range
//! (`pread`), punches it (`fallocate(PUNCH_HOLE)`: its memory is given
//! back) and decodes. Offsets are never reused: the file is a sparse space
//! of [`MAX_END`] bytes, which no queue uses up (a page per value, 2^50
//! values).
//!
//! **Trust.** The next-offset word and the records are in memory every
//! holder of the queue may write, and the file is whatever the handle
//! named, checked to be a memfd on shmem ([`peer::open_memfd`]: not a
//! hugetlbfs memfd, whose holes read as data) sealed against shrinking. A
//! record is copied once, then checked ([`record_bounds`], then
//! [`check_present`]): length at most [`MAX_VALUE_BYTES`], offset on a page
//! boundary, no overflow, the range within the file's size and its length
//! within the memory the file holds in all (`fstat`: `st_blocks`), and the
//! range holding data from end to end (`SEEK_DATA` / `SEEK_HOLE`); any
//! failure is a typed decode error and nothing is allocated. So the buffer
//! a get reads into never exceeds the memory the file held *when the record
//! was checked*: a hostile holder may punch the range right after the
//! check, and the read then gets zeros (a decode error, or a wrong value of
//! the right type), still no more than the checked length.
//!
//! A forged next-offset word past [`MAX_END`], or off a page boundary
//! (every later range would straddle pages whose memory a punch cannot
//! give back: a page leaked per value for the queue's life), makes large
//! puts into that queue fail with a typed error from then on; a forged one
//! inside the space can only make ranges overlap, which corrupts values of
//! that queue (a decode error, or a wrong value of the right type), never
//! memory outside it: the file is only ever read and written through
//! system calls, never mapped.
//!
//! **Leaks.** A producer that dies between taking its range and putting its
//! record, or a consumer that dies between taking a record and punching
//! its range, leaves that range's memory in the file until the last
//! process holding the queue lets go of it (the file goes with its last
//! descriptor).
//!
//! Under Miri, which makes no files, a queue gets a file that holds
//! nothing: a value too large for a slot fails to go in.

use crate::error::{Error, Result};
use crate::shm::peer::{self, OpenError};
use crate::sys::FileId;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of a value's record in its slot: offset and length, u64 each,
/// little-endian.
pub(crate) const RECORD_BYTES: usize = 16;

/// The end of the file's offset space: no range reaches past it (the
/// kernel's own limit for a memfd is 2^63 - 1).
pub(crate) const MAX_END: u64 = 1 << 62;

/// The largest value a queue stores (1 TiB): a bound on any record's
/// length before the file is even asked.
pub(crate) const MAX_VALUE_BYTES: u64 = 1 << 40;

/// What a put left in the file: the range of one value, given back on drop
/// unless [`kept`](Self::keep) (its record went into the queue).
#[derive(Debug)]
pub(crate) struct Stored<'a> {
    file: &'a ValueFile,
    offset: u64,
    len: u64,
    /// `len` in whole pages: what is given back.
    span: u64,
    kept: bool,
}

impl Stored<'_> {
    /// The record that names the value, for its slot.
    pub(crate) fn record(&self) -> [u8; RECORD_BYTES] {
        let mut record = [0u8; RECORD_BYTES];
        record[..8].copy_from_slice(&self.offset.to_le_bytes());
        record[8..].copy_from_slice(&self.len.to_le_bytes());
        record
    }

    /// The record went into the queue: the range is its receiver's to give
    /// back now.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Stored<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.file.punch(self.offset, self.span);
        }
    }
}

/// One process's descriptor of a queue's value file (see the module docs).
#[derive(Debug)]
pub(crate) struct ValueFile {
    #[cfg(not(miri))]
    file: std::fs::File,
    id: FileId,
}

/// Value files this process has open, so that every handle of one queue
/// decoded here shares one descriptor.
static OPENED: peer::OpenedFiles<ValueFile> = peer::OpenedFiles::new(|f| (f.id.dev, f.id.ino));

/// The range that holds `len` bytes (at most [`MAX_VALUE_BYTES`], so this
/// cannot overflow), in whole pages of `page` bytes, a power of two: at
/// least one page, so that every value has a range of its own.
fn span_of(len: u64, page: u64) -> u64 {
    debug_assert!(len <= MAX_VALUE_BYTES);
    len.max(1).next_multiple_of(page)
}

/// A put refused for the queue's next-offset word: its message advises
/// about a process that wrote over the queue (`error::wrote_over`), not
/// about memory.
fn forged(what: &str) -> Error {
    Error::SharedMemory {
        op: "storing a value too large for a queue slot",
        source: crate::error::wrote_over(format!(
            "{what} (a process wrote over the queue's memory)"
        )),
    }
}

/// The range a record names, as [`record_bounds`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordRange {
    /// The value's first byte in the file, on a page boundary.
    pub offset: u64,
    /// Past its last byte: `offset + len`, at most [`MAX_END`].
    pub end: u64,
    /// Its length, at most [`MAX_VALUE_BYTES`].
    pub len: usize,
}

/// The range a record copied out of a slot names, checked by arithmetic
/// alone (no system call: Miri runs its tests): a length of at most
/// [`MAX_VALUE_BYTES`], an offset on a page boundary (`page`, a power of
/// two: every honest put's is), an end that neither overflows nor passes
/// [`MAX_END`].
///
/// # Errors
///
/// [`Error::Decode`] naming what is wrong with the record.
pub(crate) fn record_bounds(record: &[u8; RECORD_BYTES], page: u64) -> Result<RecordRange> {
    let mut offset = [0u8; 8];
    let mut len = [0u8; 8];
    offset.copy_from_slice(&record[..8]);
    len.copy_from_slice(&record[8..]);
    let (offset, len) = (u64::from_le_bytes(offset), u64::from_le_bytes(len));
    if len > MAX_VALUE_BYTES {
        return Err(bad_record(format!(
            "a record says {len} bytes, more than any value"
        )));
    }
    if offset % page != 0 {
        return Err(bad_record(format!(
            "a record's offset {offset} is not on a page boundary, as every value's is"
        )));
    }
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= MAX_END)
        .ok_or_else(|| bad_record("a record's range lies past the value space"))?;
    let len = usize::try_from(len).map_err(|_| bad_record("a record's length overflows"))?;
    Ok(RecordRange { offset, end, len })
}

/// Whether the file, `size` bytes long with `allocated` bytes of memory
/// (`st_blocks` * 512), can hold the range: it ends within the file and is
/// no longer than all the memory the file holds. A bound on the buffer
/// that needs nothing of the filesystem's `lseek`; the caller then checks
/// the range itself holds data (`SEEK_DATA` / `SEEK_HOLE`).
///
/// # Errors
///
/// [`Error::Decode`] saying which bound the record passes.
pub(crate) fn check_present(range: RecordRange, size: u64, allocated: u64) -> Result<()> {
    let RecordRange { offset, end, len } = range;
    if end > size {
        return Err(bad_record(format!(
            "a record names bytes {offset}..{end}, the file holds {size}"
        )));
    }
    if len as u64 > allocated {
        return Err(bad_record(format!(
            "a record names {len} bytes, the file has memory for {allocated} in all"
        )));
    }
    Ok(())
}

/// Whether a write into the file failed for the file-size limit (EFBIG:
/// `sys` checks the limit before every call that grows a file; the
/// kernel's own ceiling for a memfd lies past [`MAX_END`]).
fn is_past_file_size_limit(e: &Error) -> bool {
    matches!(e, Error::SharedMemory { source, .. } if source.raw_os_error() == Some(libc::EFBIG))
}

fn bad_record(reason: impl Into<String>) -> Error {
    crate::shm::decode_failed(VALUE, reason)
}

/// What a user knows a bad record as, in its error message.
pub(crate) const VALUE: &str = "queue value";

impl ValueFile {
    /// A new, empty value file, sealed against shrinking.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the file cannot be made.
    #[cfg(not(miri))]
    pub(crate) fn create() -> Result<Arc<Self>> {
        use std::os::fd::AsFd;
        let fd = crate::sys::memfd_create(c"corepool-queue-values")
            .map_err(|e| Error::shm("memfd_create", e))?;
        crate::sys::seal_shrink_only(fd.as_fd())
            .map_err(|e| Error::shm("sealing against shrinking", e))?;
        let id = crate::sys::fstat(fd.as_fd()).map_err(|e| Error::shm("fstat", e))?;
        let made = Arc::new(Self {
            file: std::fs::File::from(fd),
            id,
        });
        OPENED.remember(&made);
        Ok(made)
    }

    /// Under Miri: a file that holds nothing (see the module docs).
    #[cfg(miri)]
    pub(crate) fn create() -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            id: FileId {
                dev: 0,
                ino: 0,
                size: 0,
                mtime_ns: 0,
            },
        }))
    }

    /// `(device, inode)`: what the queue's memory records of it.
    pub(crate) fn identity(&self) -> (u64, u64) {
        (self.id.dev, self.id.ino)
    }

    /// `(this process, its descriptor, device, inode)`: what another
    /// process needs to open the file through this one.
    pub(crate) fn handle(&self) -> (i32, i32, u64, u64) {
        #[cfg(not(miri))]
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        #[cfg(miri)]
        let fd = -1;
        (std::process::id() as i32, fd, self.id.dev, self.id.ino)
    }

    /// The file the handle `(owner, fd, dev, ino)` names, already open in
    /// this process or opened now.
    ///
    /// # Errors
    ///
    /// Why it cannot be opened: the handle's doing (gone, not a memfd,
    /// another file, not sealed against shrinking), or this process's own
    /// want of descriptors ([`OpenError::OwnLimit`]).
    pub(crate) fn open(
        owner: i32,
        fd: i32,
        dev: u64,
        ino: u64,
    ) -> std::result::Result<Arc<Self>, OpenError> {
        OPENED.get_or_open((dev, ino), || open_uncached(owner, fd, dev, ino))
    }

    /// Writes `head` then `rest` (a value's encoding, see
    /// [`crate::Wire::encode_split`]) into a range of the file taken from
    /// the queue's next-offset word `next`.
    ///
    /// `None` if the range would end past this process's file-size limit
    /// (RLIMIT_FSIZE, `ulimit -f`): offsets are never reused, so under a
    /// finite limit a queue's file reaches it after that many bytes of
    /// large values in all, however few wait at a time. The caller puts
    /// the value another way then (`crate::queue`: a spill).
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`]: no memory for the value, a value past
    /// [`MAX_VALUE_BYTES`], or a next-offset word past [`MAX_END`] or off a
    /// page boundary (forged: see the module docs). Nothing is left in the
    /// file then.
    pub(crate) fn store<'a>(
        &'a self,
        next: &AtomicU64,
        head: &[u8],
        rest: &[u8],
    ) -> Result<Option<Stored<'a>>> {
        let len = head.len() as u64 + rest.len() as u64;
        if len > MAX_VALUE_BYTES {
            return Err(Error::SharedMemory {
                op: "storing a value too large for a queue slot",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{len} bytes: a queue takes values of up to 1 TiB (use a SharedArray for bulk data)"),
                ),
            });
        }
        let page = crate::sys::page_size();
        let span = span_of(len, page);
        // Relaxed: the offset only has to be unique. The value's bytes need
        // no order from this word: they are in the file (the `pwrite`s below
        // have returned, the page cache holds them) before the caller puts
        // the record, and the record's slot is published by the Release
        // store of FULL in `mpmc::slot::put_once`, which pairs with the
        // consumer's Acquire load of the slot state in `front` (and its
        // claim CAS); that consumer's `pread` comes after in program order,
        // so it reads the bytes.
        let offset = next.fetch_add(span, Ordering::Relaxed);
        if offset % page != 0 {
            // Every honest put adds whole pages to a word that starts at 0.
            return Err(forged(&format!(
                "the queue's next value offset {offset} is not on a page boundary"
            )));
        }
        let fits = offset.checked_add(span).is_some_and(|end| end <= MAX_END);
        if !fits {
            return Err(forged(&format!(
                "the queue's next value offset {offset} lies past the end of its value space"
            )));
        }
        let stored = Stored {
            file: self,
            offset,
            len,
            span,
            kept: false,
        };
        // A failure drops `stored`: whatever was written is punched back.
        match self.write(offset, span, head, rest) {
            Ok(()) => Ok(Some(stored)),
            Err(e) if is_past_file_size_limit(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reserves `span` bytes at `offset` and writes `head` then `rest`
    /// there.
    #[cfg(not(miri))]
    fn write(&self, offset: u64, span: u64, head: &[u8], rest: &[u8]) -> Result<()> {
        use std::os::fd::AsFd;
        let fd = self.file.as_fd();
        let shm = |op| move |e| Error::shm(op, e);
        // Reserved first, as every segment is: a machine or cgroup without
        // the memory is an error here (see `sys::fallocate_range`), and the
        // writes below then copy into pages that are there.
        // The file-size limit is read on every such call (`sys`: one
        // getrlimit, next to the fallocate and pwrites of a large value),
        // never cached: a process may lower its own limit at any time, and
        // asking the kernel past it would raise SIGXFSZ.
        crate::sys::fallocate_range(fd, offset, span).map_err(|e| {
            crate::shm::segment::reserving("fallocate (reserving a queue value's memory)", e)
        })?;
        crate::sys::pwrite_all(fd, head, offset).map_err(shm("writing a queue value"))?;
        crate::sys::pwrite_all(fd, rest, offset + head.len() as u64)
            .map_err(shm("writing a queue value"))?;
        Ok(())
    }

    /// Under Miri: no file to write into.
    #[cfg(miri)]
    fn write(&self, _: u64, _: u64, _: &[u8], _: &[u8]) -> Result<()> {
        Err(Error::shm(
            "writing a queue value",
            io::Error::other("Miri cannot make files"),
        ))
    }

    /// Reads the value a record taken out of a slot names into `out`
    /// (replacing what it held), then gives its range's memory back.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for a record that does not name a value this file
    /// holds (see the module docs): nothing is allocated for it.
    pub(crate) fn take_into(&self, record: &[u8; RECORD_BYTES], out: &mut Vec<u8>) -> Result<()> {
        let page = crate::sys::page_size();
        let range = record_bounds(record, page)?;
        self.read_checked(range, out)?;
        self.punch(range.offset, span_of(range.len as u64, page));
        Ok(())
    }

    /// Reads the range into `out`, once the file shows it holds it.
    #[cfg(not(miri))]
    fn read_checked(&self, range: RecordRange, out: &mut Vec<u8>) -> Result<()> {
        use std::os::fd::AsFd;
        let RecordRange { offset, end, len } = range;
        let fd = self.file.as_fd();
        let (size, allocated) = crate::sys::size_and_allocated(fd)
            .map_err(|e| Error::shm("fstat (a queue's value file)", e))?;
        check_present(range, size, allocated)?;
        let backed = crate::sys::is_range_backed(fd, offset, len as u64)
            .map_err(|e| Error::shm("lseek (a queue's value file)", e))?;
        if !backed {
            return Err(bad_record(format!(
                "a record names bytes {offset}..{end}, which hold no value (given back, or never written)"
            )));
        }
        // Memory the file held at the checks: the buffer never exceeds it.
        // A hostile process may punch or change the range meanwhile: that
        // reads zeros or wrong bytes (at most `len`), which the decoder
        // judges.
        out.clear();
        out.try_reserve_exact(len)
            .map_err(|_| Error::shm("reading a queue value", io::ErrorKind::OutOfMemory.into()))?;
        crate::sys::pread_exact_into(fd, out, len, offset)
            .map_err(|_| bad_record("the value ends before its record says"))
    }

    /// Under Miri: nothing to read.
    #[cfg(miri)]
    fn read_checked(&self, _: RecordRange, _: &mut Vec<u8>) -> Result<()> {
        Err(bad_record("Miri cannot read files"))
    }

    /// Gives the memory of `len` bytes at `offset` back. A failure only
    /// keeps the memory in use until the file goes.
    fn punch(&self, offset: u64, len: u64) {
        #[cfg(not(miri))]
        {
            use std::os::fd::AsFd;
            let _ = crate::sys::punch_hole(self.file.as_fd(), offset, len);
        }
        #[cfg(miri)]
        let _ = (offset, len);
    }

    /// Bytes of memory the file holds (tests).
    #[cfg(all(test, not(miri)))]
    pub(crate) fn allocated_bytes(&self) -> u64 {
        use std::os::fd::AsFd;
        crate::sys::allocated_bytes(self.file.as_fd()).unwrap_or(u64::MAX)
    }
}

/// Opens the value file a handle names (the checks every peer's memfd gets:
/// [`peer::open_memfd`]), and checks it is sealed against shrinking.
#[cfg(not(miri))]
fn open_uncached(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
) -> std::result::Result<ValueFile, OpenError> {
    use std::os::fd::AsFd;
    let what = "a queue's value file";
    let (file, id) = peer::open_memfd(owner, fd, (dev, ino), peer::Access::ReadWrite, what)?;
    if !crate::sys::is_shrink_sealed(file.as_fd()) {
        return Err(OpenError::Refused(format!(
            "/proc/{owner}/fd/{fd} is not {what} (not sealed against shrinking)"
        )));
    }
    Ok(ValueFile {
        file: std::fs::File::from(file),
        id,
    })
}

/// Under Miri: no process's descriptors to open.
#[cfg(miri)]
fn open_uncached(_: i32, _: i32, _: u64, _: u64) -> std::result::Result<ValueFile, OpenError> {
    let _ = peer::open_memfd;
    Err(OpenError::Refused("Miri cannot open files".into()))
}

/// The record checks that need no system call: these run under Miri too.
#[cfg(test)]
mod bounds_tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn record(offset: u64, len: u64) -> [u8; RECORD_BYTES] {
        let mut r = [0u8; RECORD_BYTES];
        r[..8].copy_from_slice(&offset.to_le_bytes());
        r[8..].copy_from_slice(&len.to_le_bytes());
        r
    }

    fn is_bad_record<T: std::fmt::Debug>(got: &Result<T>) -> bool {
        matches!(
            got,
            Err(Error::Decode {
                type_name: "queue value",
                ..
            })
        )
    }

    #[test]
    fn forged_records_fail_the_arithmetic() {
        for (offset, len) in [
            (0, u64::MAX),               // huge
            (0, MAX_VALUE_BYTES + 1),    // just past the largest value
            (u64::MAX - (PAGE - 1), 16), // overflows (on a page boundary)
            (u64::MAX, 16),              // off a page boundary
            (1, 100),                    // off a page boundary
            (PAGE + 512, 100),           // off a page boundary
            (MAX_END, 1),                // past the value space
            (MAX_END - PAGE, PAGE + 1),  // runs past it
        ] {
            let got = record_bounds(&record(offset, len), PAGE);
            assert!(is_bad_record(&got), "({offset}, {len}): {got:?}");
        }
        for (offset, len) in [
            (0, 1),
            (PAGE, MAX_VALUE_BYTES),
            (MAX_END - PAGE, PAGE),
            (MAX_END - MAX_VALUE_BYTES, MAX_VALUE_BYTES),
        ] {
            let got = record_bounds(&record(offset, len), PAGE).unwrap();
            assert_eq!(
                got,
                RecordRange {
                    offset,
                    end: offset + len,
                    len: len as usize
                }
            );
        }
    }

    #[test]
    fn a_range_is_bounded_by_the_files_size_and_memory() {
        let range = record_bounds(&record(PAGE, 1 << 20), PAGE).unwrap();
        check_present(range, PAGE + (1 << 20), 1 << 20).unwrap();
        // Ends past the file.
        assert!(is_bad_record(&check_present(
            range,
            PAGE + (1 << 20) - 1,
            1 << 30
        )));
        // Longer than all the memory the file holds, whatever its size
        // and whatever its `lseek` says (a hugetlbfs file holds none).
        assert!(is_bad_record(&check_present(range, 4 << 30, 0)));
        assert!(is_bad_record(&check_present(range, 4 << 30, (1 << 20) - 1)));
    }

    #[test]
    fn a_span_is_whole_pages_and_never_empty() {
        assert_eq!(span_of(0, PAGE), PAGE);
        assert_eq!(span_of(1, PAGE), PAGE);
        assert_eq!(span_of(PAGE, PAGE), PAGE);
        assert_eq!(span_of(PAGE + 1, PAGE), 2 * PAGE);
        assert_eq!(span_of(MAX_VALUE_BYTES, 1 << 21), MAX_VALUE_BYTES);
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    fn record(offset: u64, len: u64) -> [u8; RECORD_BYTES] {
        let mut r = [0u8; RECORD_BYTES];
        r[..8].copy_from_slice(&offset.to_le_bytes());
        r[8..].copy_from_slice(&len.to_le_bytes());
        r
    }

    #[test]
    fn a_value_round_trips_and_gives_its_memory_back() {
        let file = ValueFile::create().unwrap();
        let next = AtomicU64::new(0);
        let value: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let stored = file
            .store(&next, &value[..10], &value[10..])
            .unwrap()
            .unwrap();
        let rec = stored.record();
        stored.keep();
        assert!(file.allocated_bytes() >= value.len() as u64);
        let second = file.store(&next, b"x", b"yz").unwrap().unwrap().record();
        let mut out = Vec::new();
        file.take_into(&rec, &mut out).unwrap();
        assert_eq!(out, value);
        file.take_into(&second, &mut out).unwrap_err();
        assert_eq!(file.allocated_bytes(), 0, "given back, the unkept too");
        assert!(
            file.take_into(&rec, &mut out).is_err(),
            "a value is read once"
        );
    }

    #[test]
    fn forged_records_and_offsets_are_typed_errors() {
        let file = ValueFile::create().unwrap();
        let next = AtomicU64::new(0);
        let a = file.store(&next, &[7; 5000], &[]).unwrap().unwrap();
        let a_rec = a.record();
        a.keep();
        // Past a gap never written: the file is 1 MiB + a page long.
        next.store(1 << 20, Ordering::Relaxed);
        file.store(&next, &[8; 100], &[]).unwrap().unwrap().keep();
        let mut out = Vec::new();
        for rec in [
            record(0, u64::MAX),        // huge
            record(u64::MAX, 16),       // overflows
            record(MAX_END, 1),         // past the value space
            record(0, MAX_VALUE_BYTES), // past the file, huge
            record(1 << 30, 4096),      // past the file
            record(16384, 100),         // a hole never written
            record(4096, 8192),         // runs into that hole
        ] {
            let got = file.take_into(&rec, &mut out);
            assert!(
                matches!(
                    got,
                    Err(Error::Decode {
                        type_name: "queue value",
                        ..
                    })
                ),
                "{rec:?}: {got:?}"
            );
            assert_eq!(out.capacity(), 0, "nothing allocated for a lie");
        }
        file.take_into(&a_rec, &mut out).unwrap();
        assert_eq!(out, vec![7; 5000]);
        assert!(
            matches!(file.take_into(&a_rec, &mut out), Err(Error::Decode { .. })),
            "given back: a hole now"
        );
        // Next offset forged near the end: the put fails, typed, and
        // leaves nothing in the file.
        let before = file.allocated_bytes();
        for forged in [u64::MAX - 10, MAX_END - 4096] {
            next.store(forged, Ordering::Relaxed);
            assert!(matches!(
                file.store(&next, &[1; 4097], &[]),
                Err(Error::SharedMemory { .. })
            ));
        }
        assert_eq!(file.allocated_bytes(), before);
    }

    #[test]
    fn a_hugetlbfs_file_is_no_value_file_and_its_records_allocate_nothing() {
        // A hostile holder's hugetlbfs memfd, 4 GiB long, holding nothing:
        // its `lseek` calls every byte data.
        let Some(huge) = crate::sys::hugetlb_memfd(4 << 30) else {
            eprintln!("no hugetlbfs here: skipped");
            return;
        };
        use std::os::fd::{AsFd, AsRawFd};
        let id = crate::sys::fstat(huge.as_fd()).unwrap();
        let me = std::process::id() as i32;
        let refused = open_uncached(me, huge.as_raw_fd(), id.dev, id.ino);
        assert!(
            matches!(&refused, Err(OpenError::Refused(r)) if r.contains("shmem")),
            "{refused:?}"
        );
        // Were it taken all the same, a record naming 1 GiB of it is
        // refused before any allocation: the file has memory for none.
        let file = ValueFile {
            file: std::fs::File::from(huge),
            id,
        };
        let mut out = Vec::new();
        let got = file.take_into(&record(0, 1 << 30), &mut out);
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        assert_eq!(
            out.capacity(),
            0,
            "nothing allocated for a file holding nothing"
        );
    }

    #[test]
    fn an_unaligned_next_offset_is_refused_as_forged() {
        let file = ValueFile::create().unwrap();
        let next = AtomicU64::new(1);
        let got = file.store(&next, &[5; 60_000], &[]);
        let message = match got {
            Err(e @ Error::SharedMemory { .. }) => e.to_string(),
            other => panic!("an unaligned offset was taken: {other:?}"),
        };
        assert!(message.contains("page boundary"), "{message}");
        assert!(
            message.contains("wrote over its shared memory") && !message.contains("free memory"),
            "the advice is about the writer, not memory: {message}"
        );
        assert_eq!(file.allocated_bytes(), 0, "nothing left in the file");
    }

    #[test]
    fn another_handle_opens_the_same_file_once() {
        let file = ValueFile::create().unwrap();
        let (owner, fd, dev, ino) = file.handle();
        let again = ValueFile::open(owner, fd, dev, ino).unwrap();
        assert!(Arc::ptr_eq(&file, &again), "one descriptor per process");
        assert!(open_uncached(owner, fd, dev, ino + 1).is_err());
        let uncached = open_uncached(owner, fd, dev, ino).unwrap();
        assert_eq!(uncached.identity(), file.identity());
    }
}
