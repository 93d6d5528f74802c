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
//! **A value's life.** A put takes a range of the file from the queue's
//! *value word* (in its shared control memory, `mpmc`'s `value_word`), rounded up
//! to whole pages so that giving it back frees every page; reserves the
//! range's memory (`fallocate`: no memory is an error here, never an OOM
//! kill elsewhere) and writes the encoding there (`pwrite`); then puts a
//! small [record](RECORD_BYTES) `(offset, length)` in the slot. A put that
//! does not go in (full, closed, timed out, failed) punches its range back.
//! A get takes the record out of the slot, validates it, reads the range
//! (`pread`), punches it (`fallocate(PUNCH_HOLE)`: its memory is given
//! back) and decodes.
//!
//! **Starting over.** The value word holds two counts in one u64: how many
//! ranges are *live* (taken by a put and not yet given back, [`LIVE_BITS`]
//! high bits) and the *cursor*, the page where the next range starts (the
//! low [`CURSOR_BITS`]). A put takes its range with one compare-exchange
//! that adds one to the live count and: when no range is live, starts at
//! page 0 (the cursor becomes the range's end), else at the cursor (which
//! moves past the range). Every range given back (a get's, after its
//! read; a put's that did not go in) is punched first and only then takes
//! one off the live count (Release), so a put whose compare-exchange sees
//! the count at 0 (Acquire) knows every range taken before was punched:
//! starting over at 0 overwrites nothing. So the file's end marks the most
//! bytes of large values that waited *at once* since the queue was
//! emptied of them, not all it ever carried: under a finite file-size
//! limit (`ulimit -f`) only that has to fit (see [`ValueFile::store`]). A
//! queue that is never empty of large values does not start over, and
//! its file grows as they pass through (within [`CURSOR_BITS`] pages of
//! offsets: 4 PiB with 4 KiB pages, a typed error past them).
//!
//! **Trust.** The value word and the records are in memory every holder
//! of the queue may write, and the file is whatever the handle named,
//! checked to be a memfd on shmem ([`peer::open_memfd`]: not a hugetlbfs
//! memfd, whose holes read as data) sealed against shrinking. A record is
//! copied once, then checked ([`record_bounds`], then [`check_present`]):
//! length at most [`MAX_VALUE_BYTES`], offset on a page boundary, no
//! overflow, the range within the file's size and its length within the
//! memory the file holds in all (`fstat`: `st_blocks`), and the range
//! holding data from end to end (`SEEK_DATA` / `SEEK_HOLE`); any failure
//! is a typed decode error and nothing is allocated, nor given back (a
//! record that fails its checks takes nothing off the live count). So the
//! buffer a get reads into never exceeds the memory the file held *when
//! the record was checked*: a hostile holder may punch the range right
//! after the check, and the read then gets zeros (a decode error, or a
//! wrong value of the right type), still no more than the checked length.
//!
//! The value word is copied once per attempt and checked before use
//! ([`take_range`], arithmetic only): the cursor counts pages, so no range
//! can start off a page boundary whatever the word says (which would have
//! had every later range straddle pages a punch cannot give back); a range
//! that would end past the cursor's field or [`MAX_END`] is a typed error.
//! A forged word can do three things, all to this queue's large values
//! only (the file is only ever read and written through system calls,
//! never mapped):
//! - a live count of 0 while values wait, or a cursor moved back onto
//!   them: a put reuses a live range, which corrupts the values there (a
//!   decode error, or a wrong value of the right type); every allocation
//!   is still bounded by a checked record;
//! - a count too high (or stuck: a consumer killed between taking a record
//!   and giving its range back, a producer between taking a range and
//!   putting its record): the count never reaches 0 again, so the file no
//!   longer starts over: the file grows as it did before it could, and
//!   under a file-size limit later values are spilled past it (see
//!   [`ValueFile::store`]); a count at its [`MAX_LIVE`] spills every large
//!   value;
//! - a cursor at the end of its field while the count is not 0: large puts
//!   fail with a typed error until the count reaches 0 again.
//!
//! Taking one off the live count never goes below 0 (a forged count of 0
//! stays 0), and every loop on the word is bounded ([`CAS_TRIES`]).
//!
//! **Leaks.** A producer that dies between taking its range and putting its
//! record, or a consumer that dies between taking a record and punching
//! its range, leaves that range's memory in the file until the last
//! process holding the queue lets go of it (the file goes with its last
//! descriptor), and its live count stuck (above).
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

/// High bits of the value word that count live ranges (see the module
/// docs): up to [`MAX_LIVE`] large values wait in the file at once.
pub(crate) const LIVE_BITS: u32 = 24;

/// Low bits of the value word: the cursor, in pages.
pub(crate) const CURSOR_BITS: u32 = 64 - LIVE_BITS;

/// The most ranges live at once: a put that finds this many spills its
/// value instead (as past a file-size limit).
pub(crate) const MAX_LIVE: u64 = (1 << LIVE_BITS) - 1;

/// The cursor's field: the largest page a range may end at.
const CURSOR_MASK: u64 = (1 << CURSOR_BITS) - 1;

/// Compare-exchanges on the value word one put or give-back tries before
/// it stops: each failure means another process changed the word (made
/// progress), so an honest queue never sees this many in a row; a hostile
/// process rewriting the word without end does not hold a caller for ever
/// (a put then spills, a give-back leaves the count high: see the module
/// docs).
pub(crate) const CAS_TRIES: u32 = 1 << 12;

/// The value word holding `live` ranges and the cursor at page `cursor`.
pub(crate) const fn value_word(live: u64, cursor: u64) -> u64 {
    (live << CURSOR_BITS) | (cursor & CURSOR_MASK)
}

/// `(live ranges, cursor page)` of a value word.
pub(crate) const fn split_word(word: u64) -> (u64, u64) {
    (word >> CURSOR_BITS, word & CURSOR_MASK)
}

/// Where a put of `span` bytes (whole pages of `page` bytes, a power of
/// two) goes, given the value word it read (a copy, checked here: no
/// system call, Miri runs its tests): `Some((word to store, byte
/// offset))`, or `None` when [`MAX_LIVE`] ranges are live (the caller
/// spills the value). No range live: at 0, the cursor at its end; else at
/// the cursor, which moves past it; one more live either way.
///
/// # Errors
///
/// [`Error::SharedMemory`] (advice about a process that wrote over the
/// queue) when the range would end past the cursor's field or
/// [`MAX_END`]: only a forged word (or 4 PiB of values that never once
/// all left the queue) gets there.
pub(crate) fn take_range(word: u64, span: u64, page: u64) -> Result<Option<(u64, u64)>> {
    let (live, cursor) = split_word(word);
    if live >= MAX_LIVE {
        return Ok(None);
    }
    let start = if live == 0 { 0 } else { cursor };
    let pages = span / page;
    let end = start.checked_add(pages).filter(|&end| end <= CURSOR_MASK);
    let offset = start.checked_mul(page);
    let bytes_end = offset.and_then(|o| o.checked_add(span));
    match (end, offset, bytes_end) {
        (Some(end), Some(offset), Some(bytes_end)) if bytes_end <= MAX_END => {
            Ok(Some((value_word(live + 1, end), offset)))
        }
        _ => Err(forged(&format!(
            "the queue's next value offset (page {cursor}, {live} values waiting) lies past the end of its value space"
        ))),
    }
}

/// The value word with one live range less; `None` when it counts none
/// (forged, or given back twice: the count stays at 0).
pub(crate) fn one_less(word: u64) -> Option<u64> {
    let (live, cursor) = split_word(word);
    Some(value_word(live.checked_sub(1)?, cursor))
}

/// Takes one range off the live count of `word`, after its punch returned
/// (see the module docs); nothing if the count is 0 already, or if the
/// word keeps changing for [`CAS_TRIES`] tries (the count then stays one
/// high: the file stops starting over, nothing worse).
fn release(word: &AtomicU64) {
    let mut seen = word.load(Ordering::Relaxed);
    for _ in 0..CAS_TRIES {
        let Some(less) = one_less(seen) else {
            return;
        };
        // Release: pairs with the Acquire of a put's compare-exchange in
        // `ValueFile::store` (through the release sequence of the
        // read-modify-writes on this word): a put that sees the count this
        // one brought to 0 sees this range's punch done, and starts over on
        // it only then. Relaxed on failure: the next try reads again.
        match word.compare_exchange_weak(seen, less, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => seen = now,
        }
    }
}

/// Takes a range of `span` bytes from `word` for a put (see
/// [`take_range`]): its byte offset, counted live; `None` to spill.
fn take(word: &AtomicU64, span: u64, page: u64) -> Result<Option<u64>> {
    let mut seen = word.load(Ordering::Relaxed);
    for _ in 0..CAS_TRIES {
        let Some((next, offset)) = take_range(seen, span, page)? else {
            return Ok(None);
        };
        // Acquire: pairs with the Release of `release`'s compare-exchange
        // (through the release sequence of the read-modify-writes on this
        // word): when `seen` counts no live range, every range given back
        // before was punched, so starting over at 0 overwrites nothing.
        // Relaxed on failure: the next try checks the word it read.
        match word.compare_exchange_weak(seen, next, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Ok(Some(offset)),
            Err(now) => seen = now,
        }
    }
    Ok(None)
}

/// What a put left in the file: the range of one value, given back on drop
/// unless [`kept`](Self::keep) (its record went into the queue).
#[derive(Debug)]
pub(crate) struct Stored<'a> {
    file: &'a ValueFile,
    /// The queue's value word, whose live count this range is in.
    word: &'a AtomicU64,
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
            self.file.give_back(self.word, self.offset, self.span);
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
    /// the queue's value word `word` (see the module docs).
    ///
    /// `None` if the range would end past this process's file-size limit
    /// (RLIMIT_FSIZE, `ulimit -f`), or [`MAX_LIVE`] values wait in the
    /// file (or the word kept changing under a hostile writer for
    /// [`CAS_TRIES`] tries): the caller puts the value another way then
    /// (`crate::queue`: a spill). The file starts over at 0 whenever no
    /// large value waits in it, so under a finite limit this happens only
    /// when the large values waiting *at once* (since the queue last held
    /// none) reach the limit, however many passed through before; or when
    /// a forged or stuck live count keeps the file from starting over.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`]: no memory for the value, a value past
    /// [`MAX_VALUE_BYTES`], or a value word whose cursor is at the end of
    /// its space (forged: see the module docs). Nothing is left in the
    /// file then.
    pub(crate) fn store<'a>(
        &'a self,
        word: &'a AtomicU64,
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
        let Some(offset) = take(word, span, page)? else {
            return Ok(None);
        };
        // The value's bytes need no order from the word: they are in the
        // file (the `pwrite`s below have returned, the page cache holds
        // them) before the caller puts the record, and the record's slot is
        // published by the Release store of FULL in `mpmc::slot::put_once`,
        // which pairs with the consumer's Acquire load of the slot state in
        // `front` (and its claim CAS); that consumer's `pread` comes after
        // in program order, so it reads the bytes.
        let stored = Stored {
            file: self,
            word,
            offset,
            len,
            span,
            kept: false,
        };
        // A failure drops `stored`: whatever was written is punched back,
        // and the range leaves the live count.
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
    /// (replacing what it held), then gives its range's memory back and
    /// takes it off the live count of the queue's value word `word`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for a record that does not name a value this file
    /// holds (see the module docs): nothing is allocated for it, nor given
    /// back. A record that passed its checks is given back even if its read
    /// fails (no memory, or the range punched since by a hostile holder).
    pub(crate) fn take_into(
        &self,
        word: &AtomicU64,
        record: &[u8; RECORD_BYTES],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let page = crate::sys::page_size();
        let range = record_bounds(record, page)?;
        self.check_holds(range)?;
        let read = self.read_into(range, out);
        self.give_back(word, range.offset, span_of(range.len as u64, page));
        read
    }

    /// Checks the file holds the range a record names (see the module
    /// docs), without reading it.
    #[cfg(not(miri))]
    fn check_holds(&self, range: RecordRange) -> Result<()> {
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
        Ok(())
    }

    /// Under Miri: nothing to check against.
    #[cfg(miri)]
    fn check_holds(&self, _: RecordRange) -> Result<()> {
        Err(bad_record("Miri cannot read files"))
    }

    /// Reads the range [`check_holds`](Self::check_holds) passed into `out`.
    #[cfg(not(miri))]
    fn read_into(&self, range: RecordRange, out: &mut Vec<u8>) -> Result<()> {
        use std::os::fd::AsFd;
        let RecordRange { offset, len, .. } = range;
        // Memory the file held at the checks: the buffer never exceeds it.
        // A hostile process may punch or change the range meanwhile: that
        // reads zeros or wrong bytes (at most `len`), which the decoder
        // judges.
        out.clear();
        out.try_reserve_exact(len)
            .map_err(|_| Error::shm("reading a queue value", io::ErrorKind::OutOfMemory.into()))?;
        crate::sys::pread_exact_into(self.file.as_fd(), out, len, offset)
            .map_err(|_| bad_record("the value ends before its record says"))
    }

    /// Under Miri: nothing to read.
    #[cfg(miri)]
    fn read_into(&self, _: RecordRange, _: &mut Vec<u8>) -> Result<()> {
        Err(bad_record("Miri cannot read files"))
    }

    /// Gives the memory of `len` bytes at `offset` back, then takes the
    /// range off the live count of `word`: in that order, so that a put
    /// that starts over on the range finds it punched (see the module
    /// docs). A failed punch only keeps the memory in use until the file
    /// goes (a put starting over on the range then writes over it).
    fn give_back(&self, word: &AtomicU64, offset: u64, len: u64) {
        self.punch(offset, len);
        release(word);
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

    fn is_forged_word<T: std::fmt::Debug>(got: &Result<T>) -> bool {
        matches!(got, Err(e @ Error::SharedMemory { .. })
            if e.to_string().contains("wrote over") && !e.to_string().contains("free memory"))
    }

    #[test]
    fn a_put_starts_over_at_0_when_no_range_is_live() {
        // None live: at 0 whatever the cursor says; one live, the cursor
        // moves past the range.
        for cursor in [0, 1, 12345, CURSOR_MASK] {
            let got = take_range(value_word(0, cursor), 3 * PAGE, PAGE).unwrap();
            assert_eq!(got, Some((value_word(1, 3), 0)), "cursor {cursor}");
        }
        // Some live: at the cursor, which moves on.
        let got = take_range(value_word(2, 7), 2 * PAGE, PAGE).unwrap();
        assert_eq!(got, Some((value_word(3, 9), 7 * PAGE)));
        // A word's two fields never spill into each other.
        assert_eq!(split_word(value_word(5, 9)), (5, 9));
        assert_eq!(
            split_word(value_word(MAX_LIVE, CURSOR_MASK)),
            (MAX_LIVE, CURSOR_MASK)
        );
        assert_eq!(split_word(u64::MAX), (MAX_LIVE, CURSOR_MASK));
    }

    #[test]
    fn a_full_live_count_spills_and_a_cursor_past_the_space_is_forged() {
        // As many live as the count holds: spill (None), for any cursor.
        for cursor in [0, 7, CURSOR_MASK] {
            assert_eq!(
                take_range(value_word(MAX_LIVE, cursor), PAGE, PAGE).unwrap(),
                None
            );
        }
        // Live, with a cursor whose range would end past its field: forged.
        for (cursor, span) in [(CURSOR_MASK, PAGE), (CURSOR_MASK - 1, 2 * PAGE)] {
            let got = take_range(value_word(1, cursor), span, PAGE);
            assert!(is_forged_word(&got), "{cursor}: {got:?}");
        }
        // Up to the field's end: taken (no byte offset passes MAX_END with
        // pages of up to 2^22 bytes).
        let got = take_range(value_word(1, CURSOR_MASK - 1), PAGE, PAGE).unwrap();
        assert_eq!(
            got,
            Some((value_word(2, CURSOR_MASK), (CURSOR_MASK - 1) * PAGE))
        );
        // Pages so large that the byte offset passes MAX_END: forged, not
        // an overflow.
        let huge_page = 1 << 30;
        let got = take_range(value_word(1, CURSOR_MASK - 1), huge_page, huge_page);
        assert!(is_forged_word(&got), "{got:?}");
    }

    #[test]
    fn no_word_puts_a_range_off_a_page_or_past_the_space() {
        let words = [
            0,
            1,
            u64::MAX,
            u64::MAX - 1,
            1 << CURSOR_BITS,
            (1 << CURSOR_BITS) - 1,
            value_word(1, 1),
            value_word(MAX_LIVE - 1, CURSOR_MASK - 1),
            0x5555_5555_5555_5555,
            0xaaaa_aaaa_aaaa_aaaa,
        ];
        for word in words {
            for span in [PAGE, 2 * PAGE, MAX_VALUE_BYTES] {
                match take_range(word, span, PAGE) {
                    Ok(Some((next, offset))) => {
                        assert_eq!(offset % PAGE, 0, "{word:#x}");
                        assert!(offset + span <= MAX_END, "{word:#x}");
                        let (live, cursor) = split_word(next);
                        assert_eq!(live, split_word(word).0 + 1, "{word:#x}");
                        assert_eq!(cursor * PAGE, offset + span, "{word:#x}");
                    }
                    Ok(None) => assert_eq!(split_word(word).0, MAX_LIVE),
                    Err(e) => assert!(is_forged_word::<()>(&Err(e))),
                }
            }
        }
    }

    #[test]
    fn giving_back_counts_down_to_0_and_never_below() {
        let word = AtomicU64::new(0);
        let a = take(&word, PAGE, PAGE).unwrap().unwrap();
        let b = take(&word, 2 * PAGE, PAGE).unwrap().unwrap();
        assert_eq!((a, b), (0, PAGE));
        assert_eq!(split_word(word.load(Ordering::Relaxed)), (2, 3));
        release(&word);
        // One still live: the next goes past both.
        assert_eq!(take(&word, PAGE, PAGE).unwrap(), Some(3 * PAGE));
        release(&word);
        release(&word);
        assert_eq!(split_word(word.load(Ordering::Relaxed)), (0, 4));
        // None live: starts over.
        assert_eq!(take(&word, PAGE, PAGE).unwrap(), Some(0));
        release(&word);
        // A give-back too many (a forged record, a forged count of 0)
        // leaves the count at 0, the cursor as it was.
        release(&word);
        assert_eq!(split_word(word.load(Ordering::Relaxed)), (0, 1));
        assert_eq!(one_less(value_word(0, 9)), None);
        assert_eq!(
            one_less(u64::MAX),
            Some(value_word(MAX_LIVE - 1, CURSOR_MASK))
        );
        // A full count spills; a forged cursor fails typed and takes
        // nothing.
        word.store(value_word(MAX_LIVE, 0), Ordering::Relaxed);
        assert_eq!(take(&word, PAGE, PAGE).unwrap(), None);
        word.store(value_word(1, CURSOR_MASK), Ordering::Relaxed);
        assert!(is_forged_word(&take(&word, PAGE, PAGE)));
        assert_eq!(word.load(Ordering::Relaxed), value_word(1, CURSOR_MASK));
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

    fn live(word: &AtomicU64) -> u64 {
        split_word(word.load(Ordering::Relaxed)).0
    }

    #[test]
    fn a_value_round_trips_and_gives_its_memory_back() {
        let file = ValueFile::create().unwrap();
        let word = AtomicU64::new(0);
        let value: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let stored = file
            .store(&word, &value[..10], &value[10..])
            .unwrap()
            .unwrap();
        let rec = stored.record();
        stored.keep();
        assert!(file.allocated_bytes() >= value.len() as u64);
        assert_eq!(live(&word), 1);
        let second = file.store(&word, b"x", b"yz").unwrap().unwrap().record();
        assert_eq!(live(&word), 1, "the unkept one is given back");
        let mut out = Vec::new();
        file.take_into(&word, &rec, &mut out).unwrap();
        assert_eq!(out, value);
        assert_eq!(live(&word), 0);
        file.take_into(&word, &second, &mut out).unwrap_err();
        assert_eq!(file.allocated_bytes(), 0, "given back, the unkept too");
        assert!(
            file.take_into(&word, &rec, &mut out).is_err(),
            "a value is read once"
        );
        assert_eq!(live(&word), 0, "a refused record takes nothing off");
    }

    #[test]
    fn the_file_starts_over_when_no_value_is_live() {
        let page = crate::sys::page_size();
        let file = ValueFile::create().unwrap();
        let word = AtomicU64::new(0);
        let put = |fill: u8, len: usize| {
            let stored = file.store(&word, &vec![fill; len], &[]).unwrap().unwrap();
            let rec = stored.record();
            stored.keep();
            rec
        };
        let a = put(1, 3 * page as usize);
        let b = put(2, page as usize + 1);
        let offset = |rec: &[u8; RECORD_BYTES]| u64::from_le_bytes(rec[..8].try_into().unwrap());
        assert_eq!((offset(&a), offset(&b)), (0, 3 * page));
        let mut out = Vec::new();
        file.take_into(&word, &a, &mut out).unwrap();
        // `b` still waits: the next goes past it, not onto `a`'s range.
        let c = put(3, 10);
        assert_eq!(offset(&c), 5 * page);
        file.take_into(&word, &b, &mut out).unwrap();
        assert_eq!(out, vec![2; page as usize + 1]);
        file.take_into(&word, &c, &mut out).unwrap();
        assert_eq!(out, vec![3; 10]);
        // None waits: the next starts over at 0, and the file grows no more.
        let size = crate::sys::size_and_allocated(std::os::fd::AsFd::as_fd(&file.file))
            .unwrap()
            .0;
        for round in 0..10 {
            let d = put(round, 2 * page as usize);
            assert_eq!(offset(&d), 0, "round {round}");
            file.take_into(&word, &d, &mut out).unwrap();
            assert_eq!(out, vec![round; 2 * page as usize]);
        }
        let (size_after, allocated) =
            crate::sys::size_and_allocated(std::os::fd::AsFd::as_fd(&file.file)).unwrap();
        assert_eq!((size_after, allocated), (size, 0));
        assert_eq!(live(&word), 0);
    }

    #[test]
    fn forged_records_and_words_are_typed_errors() {
        let page = crate::sys::page_size();
        let file = ValueFile::create().unwrap();
        let word = AtomicU64::new(0);
        let a = file.store(&word, &[7; 5000], &[]).unwrap().unwrap();
        let a_rec = a.record();
        a.keep();
        // Past a gap never written (`a` is live, so the cursor counts): the
        // file is 1 MiB + a page long.
        word.store(value_word(1, (1 << 20) / page), Ordering::Relaxed);
        file.store(&word, &[8; 100], &[]).unwrap().unwrap().keep();
        assert_eq!(live(&word), 2);
        let mut out = Vec::new();
        for rec in [
            record(0, u64::MAX),        // huge
            record(u64::MAX, 16),       // overflows
            record(MAX_END, 1),         // past the value space
            record(0, MAX_VALUE_BYTES), // past the file, huge
            record(1 << 30, 4096),      // past the file
            record(16384, 100),         // a hole never written
            record(4096, 8192),         // runs into that hole
            record(1, 100),             // off a page boundary
        ] {
            let got = file.take_into(&word, &rec, &mut out);
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
        assert_eq!(live(&word), 2, "refused records take nothing off");
        file.take_into(&word, &a_rec, &mut out).unwrap();
        assert_eq!(out, vec![7; 5000]);
        assert!(
            matches!(
                file.take_into(&word, &a_rec, &mut out),
                Err(Error::Decode { .. })
            ),
            "given back: a hole now"
        );
        assert_eq!(live(&word), 1);
        // The cursor forged to the end of its space while values are live:
        // the put fails, typed, and leaves nothing in the file, nor in the
        // count.
        let before = file.allocated_bytes();
        for forged in [
            value_word(1, CURSOR_MASK),
            value_word(MAX_LIVE - 1, CURSOR_MASK - 1),
        ] {
            word.store(forged, Ordering::Relaxed);
            let got = file.store(&word, &[1; 4097], &[]);
            assert!(is_forged(&got), "{forged:#x}: {got:?}");
            assert_eq!(word.load(Ordering::Relaxed), forged);
        }
        assert_eq!(file.allocated_bytes(), before);
        // A full live count: spilled (None), nothing left in the file.
        word.store(value_word(MAX_LIVE, 0), Ordering::Relaxed);
        assert!(file.store(&word, &[1; 4097], &[]).unwrap().is_none());
        assert_eq!(file.allocated_bytes(), before);
        // The same cursor with no value live is ignored: the put starts over.
        word.store(value_word(0, CURSOR_MASK), Ordering::Relaxed);
        let healed = file.store(&word, &[9; 4097], &[]).unwrap().unwrap();
        assert_eq!(healed.offset, 0);
    }

    fn is_forged<T: std::fmt::Debug>(got: &Result<T>) -> bool {
        matches!(got, Err(e @ Error::SharedMemory { .. })
            if e.to_string().contains("wrote over its shared memory")
                && !e.to_string().contains("free memory"))
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
        let got = file.take_into(&AtomicU64::new(0), &record(0, 1 << 30), &mut out);
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        assert_eq!(
            out.capacity(),
            0,
            "nothing allocated for a file holding nothing"
        );
    }

    #[test]
    fn a_forged_count_of_0_reuses_a_live_range_and_spoils_only_its_values() {
        let file = ValueFile::create().unwrap();
        let word = AtomicU64::new(0);
        let a = file.store(&word, &[1; 10_000], &[]).unwrap().unwrap();
        let a_rec = a.record();
        a.keep();
        // A hostile holder says nothing is live: the next put starts over
        // on `a`'s range.
        word.store(value_word(0, 3), Ordering::Relaxed);
        let b = file.store(&word, &[2; 5000], &[]).unwrap().unwrap();
        let b_rec = b.record();
        b.keep();
        let mut out = Vec::new();
        // `a`'s record reads what is there now (a wrong value of the right
        // length, bounded by its record), and gives the range back ...
        file.take_into(&word, &a_rec, &mut out).unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(&out[..5000], &[2; 5000][..]);
        // ... so `b`'s finds a hole: a typed error, and no count below 0.
        let got = file.take_into(&word, &b_rec, &mut out);
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        assert_eq!(live(&word), 0);
        assert_eq!(file.allocated_bytes(), 0);
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
