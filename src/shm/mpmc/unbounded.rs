//! An unbounded queue: a chain of Vyukov rings ([`Ring`]), each twice as
//! large as the one before, in one file that grows as rings are added
//! ([`growable`](super::growable)). A put that finds the newest ring full
//! adds the next ring instead of waiting; consumers drain each ring, then
//! move to the next and give the drained ring's memory back.
//!
//! # Protocol
//!
//! The control memory holds, besides the queue's header, `closed` word and
//! event counts, two ring indices (`head ring`, where consumers take; `tail
//! ring`, where producers put) and, per ring, its `head`, `tail` and
//! `closed for puts` words. Ring `k` has `first << k` slots and lies at a
//! fixed offset of the data file; zeroed memory is a ready ring (slot words
//! are stored biased, see [`super::ring`]), so a new ring needs no
//! initialization that another process would have to wait for.
//!
//! * **Grow** (a producer that finds ring `k` full or closed): make sure the
//!   file holds ring `k + 1` (`fallocate`, which also extends it); close
//!   ring `k` to puts (SeqCst); CAS `tail ring` `k → k + 1`. Each step is
//!   idempotent, so a producer that dies between two of them leaves a state
//!   the next producer completes, and one that finds ring `k` closed while
//!   `tail ring` still says `k` does the rest itself.
//! * **Put into a ring that may close**: after its claim (a SeqCst CAS) a
//!   producer loads the ring's `closed` word (SeqCst); if closed, it gives
//!   the position up as a dead producer's would be (the slot reads
//!   consumed) and puts into the next ring.
//! * **Leave a ring** (a consumer that finds ring `k` empty): load its
//!   `closed` word (SeqCst); if closed, look at the head slot again
//!   (SeqCst); still empty means no value will ever arrive in ring `k` (any
//!   later claim sees the close and is given up), so CAS `head ring`
//!   `k → k + 1`. The winner gives the rings left behind back
//!   (`PUNCH_HOLE`), in order, up to one a live process is still copying a
//!   value out of; that process gives it back when its copy is done.
//!
//! A single producer's values therefore come out in order: it never puts
//! into ring `k` after ring `k + 1`, and consumers never take from ring
//! `k + 1` before ring `k` is empty for good.
//!
//! # Trust
//!
//! The ring indices and per-ring words are read from shared memory: a ring
//! index past the rings the file may hold, or a ring the file is too short
//! for (checked against `fstat` before a ring is mapped), is an
//! [`Error::SharedMemory`], never a touch of memory that is not there.

#[cfg(not(miri))]
use super::growable::DataFile;
#[cfg(test)]
use super::memory::HeapRings;
use super::memory::QueueMemory;
use super::ring::{stride_for, Ring};
use super::slot::{Front, Put};
use super::{HEAD_AT, TAIL_AT};
use crate::error::{Error, Result};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(miri))]
use std::sync::Arc;

/// The most rings a queue may have (its data file ends well before).
pub(super) const MAX_RINGS: usize = 32;
/// Where the per-ring words start in the control memory, and how far apart
/// each ring's lie: `head` at +0, `tail` at +64, `closed for puts` at +72.
const RINGS_AT: usize = 4096;
const RING_WORDS: usize = 128;
/// Bytes of control memory an unbounded queue needs.
pub(crate) const CONTROL_BYTES: usize = RINGS_AT + MAX_RINGS * RING_WORDS;
/// The data file never grows past this (1 TiB).
const MAX_DATA_BYTES: u64 = 1 << 40;
/// About how large the first ring is.
const FIRST_RING_BYTES: usize = 64 << 10;
/// Rings start on page boundaries (each is mapped on its own).
const PAGE: u64 = 4096;
/// Rings below the one this u64 names have been given back (their memory
/// punched out of the file).
const GIVEN_BACK_AT: usize = 384;
/// Where the data file's identity lies in the control memory (after the
/// header): two u32 words left zero (they once named the creator's
/// descriptor: a queue's handle names its sender's now, see
/// [`RingFile`](super::RingFile)), then device u64, inode u64, written by
/// the creator before the queue is shared and checked against the file a
/// handle names.
const DATA_FILE_AT: usize = 32;

/// The control words of ring `k`: `head`, `tail`, `closed for puts`.
fn ring_words(k: usize) -> (usize, usize, Option<usize>) {
    let at = RINGS_AT + k * RING_WORDS;
    (at, at + 64, Some(at + 72))
}

/// The first ring's capacity for values of up to `message_bytes`.
pub(super) fn first_capacity_for(message_bytes: usize) -> u64 {
    (FIRST_RING_BYTES / stride_for(message_bytes))
        .max(1)
        .next_power_of_two() as u64
}

/// Where each ring lies in the data file.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    first: u64,
    message_bytes: usize,
    /// How many rings fit below [`MAX_DATA_BYTES`].
    count: usize,
    /// Ring `k` spans `offsets[k]..offsets[k + 1]`.
    offsets: [u64; MAX_RINGS + 1],
}

impl Geometry {
    /// `None` if not even the first ring fits.
    fn new(first: u64, message_bytes: usize) -> Option<Self> {
        let stride = stride_for(message_bytes) as u64;
        let mut offsets = [0u64; MAX_RINGS + 1];
        let mut count = 0;
        for k in 0..MAX_RINGS {
            let end = first
                .checked_shl(k as u32)
                .filter(|c| c.leading_zeros() > 0)
                .and_then(|capacity| capacity.checked_mul(stride))
                .map(|bytes| bytes.next_multiple_of(PAGE))
                .and_then(|bytes| bytes.checked_add(offsets[k]))
                .filter(|&end| end <= MAX_DATA_BYTES);
            let Some(end) = end else { break };
            offsets[k + 1] = end;
            count = k + 1;
        }
        (count > 0).then_some(Self {
            first,
            message_bytes,
            count,
            offsets,
        })
    }

    fn capacity(&self, k: usize) -> u64 {
        self.first << k
    }

    /// Offset and length of ring `k` (`k < count`).
    fn range(&self, k: usize) -> (u64, u64) {
        (self.offsets[k], self.offsets[k + 1] - self.offsets[k])
    }
}

/// Where the rings' memory comes from.
#[derive(Debug)]
enum Source {
    /// The growable data file (production).
    #[cfg(not(miri))]
    File(Arc<DataFile>),
    /// Heap buffers (unit tests, Miri).
    #[cfg(test)]
    Heap(HeapRings),
}

impl Source {
    /// Ring `k`'s memory (`len` bytes at `offset`), if the file holds it.
    fn memory(&self, k: usize, offset: u64, len: u64) -> Result<QueueMemory> {
        let _ = (k, offset, len);
        match *self {
            #[cfg(not(miri))]
            Source::File(ref file) => file.map(k, offset, len),
            #[cfg(test)]
            Source::Heap(ref heap) => heap.memory(k, len as usize).ok_or_else(corrupt),
        }
    }

    /// Makes the file hold ring `k`, with its memory reserved.
    fn ensure(&self, k: usize, offset: u64, len: u64) -> Result<()> {
        let _ = (k, offset, len);
        match *self {
            #[cfg(not(miri))]
            Source::File(ref file) => file.ensure(offset, len),
            #[cfg(test)]
            Source::Heap(ref heap) => {
                heap.ensure(k, len as usize);
                Ok(())
            }
        }
    }

    /// Gives ring `k`'s memory back.
    fn punch(&self, k: usize, offset: u64, len: u64) {
        let _ = (k, offset, len);
        match *self {
            #[cfg(not(miri))]
            Source::File(ref file) => file.punch(offset, len),
            #[cfg(test)]
            Source::Heap(ref heap) => {
                // Relaxed: a statistic for the tests.
                heap.punched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The error for ring words that name memory the queue does not have.
fn corrupt() -> Error {
    Error::SharedMemory {
        op: "finding an unbounded queue's ring",
        source: crate::error::wrote_over(
            "the queue's words name a ring its memory does not hold (a process wrote over the queue)"
                .into(),
        ),
    }
}

/// One process's view of an unbounded queue's rings.
#[derive(Debug)]
pub(crate) struct Rings {
    control: QueueMemory,
    source: Source,
    geometry: Geometry,
}

impl Rings {
    /// The rings of a new queue whose control words are in `mem` (zeroed,
    /// [`CONTROL_BYTES`] long, not shared yet): creates the data file with
    /// the first ring and records its handle in `mem`.
    pub(super) fn create(mem: QueueMemory, message_bytes: usize) -> Result<Self> {
        let geometry =
            Geometry::new(first_capacity_for(message_bytes), message_bytes).ok_or_else(|| {
                Error::InvalidConfig {
                    what: format!("message size {message_bytes}: too large for an unbounded queue"),
                }
            })?;
        if mem.at(0, CONTROL_BYTES).is_none() {
            return Err(Error::InvalidConfig {
                what: "unbounded queue: control memory too small".into(),
            });
        }
        #[cfg(not(miri))]
        {
            let (_, len) = geometry.range(0);
            let file = DataFile::create(len)?;
            let (dev, ino) = file.identity();
            // Relaxed: the queue is not shared yet; handing its handle to
            // another process (a spawn, a queue, a pipe) orders these stores
            // before that process reads them in `open`.
            mem.word64(DATA_FILE_AT + 8).store(dev, Ordering::Relaxed);
            mem.word64(DATA_FILE_AT + 16).store(ino, Ordering::Relaxed);
            Ok(Self {
                control: mem,
                source: Source::File(file),
                geometry,
            })
        }
        #[cfg(miri)]
        {
            let _ = geometry;
            Err(Error::SharedMemory {
                op: "memfd_create",
                source: io::Error::other("Miri cannot create files"),
            })
        }
    }

    /// The rings of the queue another process laid out in `mem`, whose
    /// header (already checked) says the first ring has `first` slots of
    /// `message_bytes`, in `file` (opened through the queue's handle): it
    /// must be the file the queue's memory records.
    pub(super) fn open(
        mem: QueueMemory,
        first: u64,
        message_bytes: usize,
        file: &super::RingFile,
    ) -> std::result::Result<Self, String> {
        if mem.at(0, CONTROL_BYTES).is_none() || first > 1 << 24 {
            return Err("not an unbounded queue (too small)".into());
        }
        let geometry = Geometry::new(first, message_bytes).ok_or("ring sizes out of range")?;
        // Relaxed: written before the queue was shared (see `create`).
        let dev = mem.word64(DATA_FILE_AT + 8).load(Ordering::Relaxed);
        let ino = mem.word64(DATA_FILE_AT + 16).load(Ordering::Relaxed);
        #[cfg(not(miri))]
        {
            if file.file.identity() != (dev, ino) {
                return Err(
                    "the handle names another ring file than the queue's memory records".into(),
                );
            }
            Ok(Self {
                control: mem,
                source: Source::File(file.file.clone()),
                geometry,
            })
        }
        #[cfg(miri)]
        {
            let _ = (dev, ino, geometry, file);
            Err("Miri cannot open files".into())
        }
    }

    /// The file the rings live in, for the queue's handle (`None` for heap
    /// rings).
    pub(super) fn file(&self) -> Option<super::RingFile> {
        match self.source {
            #[cfg(not(miri))]
            Source::File(ref file) => Some(super::RingFile { file: file.clone() }),
            #[cfg(test)]
            Source::Heap(_) => None,
        }
    }

    /// The rings of a new queue in heap memory (unit tests).
    #[cfg(test)]
    pub(super) fn on_heap(mem: QueueMemory, first: u64, message_bytes: usize) -> Self {
        let geometry = Geometry::new(first, message_bytes).expect("a test queue's rings fit");
        let heap = HeapRings::default();
        heap.ensure(0, geometry.range(0).1 as usize);
        Self {
            control: mem,
            source: Source::Heap(heap),
            geometry,
        }
    }

    /// How many rings were given back so far (heap rings only).
    #[cfg(test)]
    pub(super) fn punched(&self) -> usize {
        match self.source {
            #[cfg(not(miri))]
            Source::File(_) => 0,
            Source::Heap(ref heap) => heap.punched.load(Ordering::Relaxed),
        }
    }

    /// The first ring's capacity.
    pub(super) fn first_capacity(&self) -> u64 {
        self.geometry.first
    }

    fn head_ring(&self) -> &AtomicU64 {
        self.control.word64(HEAD_AT)
    }

    fn tail_ring(&self) -> &AtomicU64 {
        self.control.word64(TAIL_AT)
    }

    /// Ring `k`, mapped.
    fn ring(&self, k: u64) -> Result<Ring> {
        let k = usize::try_from(k)
            .ok()
            .filter(|&k| k < self.geometry.count)
            .ok_or_else(corrupt)?;
        let (offset, len) = self.geometry.range(k);
        let slots = self.source.memory(k, offset, len)?;
        Ok(Ring::new(
            self.control,
            ring_words(k),
            slots,
            (self.geometry.capacity(k), self.geometry.message_bytes),
            k as u64,
        ))
    }

    /// The ring producers put into now (for the test hooks).
    #[cfg(feature = "fault-injection")]
    pub(super) fn tail_ring_now(&self) -> Result<Ring> {
        // Acquire pairs with the AcqRel CAS in `grow_past`.
        self.ring(self.tail_ring().load(Ordering::Acquire))
    }

    /// Values it holds (a snapshot), from the control words alone.
    pub(super) fn len(&self) -> u64 {
        // Acquire (both) pairs with the AcqRel CASes in `front` and
        // `grow_past`.
        let first = self.head_ring().load(Ordering::Acquire);
        let last = self.tail_ring().load(Ordering::Acquire);
        let mut total = 0u64;
        for k in first..=last.min(first.saturating_add(MAX_RINGS as u64)) {
            let Some(k) = usize::try_from(k).ok().filter(|&k| k < self.geometry.count) else {
                break;
            };
            let (head_at, tail_at, _) = ring_words(k);
            // Acquire (both) pairs with the AcqRel CASes in `help_head` and
            // `help_tail` (mpmc/slot.rs), as in `Ring::len`.
            let head = self.control.word64(head_at).load(Ordering::Acquire);
            let tail = self.control.word64(tail_at).load(Ordering::Acquire);
            total = total.saturating_add(tail.saturating_sub(head).min(self.geometry.capacity(k)));
        }
        total
    }

    /// Puts `bytes` (which fit a slot), adding a ring when the newest one is
    /// full: never waits.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the queue cannot grow (no memory left,
    /// or its 1 TiB range is used up) or its words are garbage.
    pub(super) fn put(&self, bytes: &[u8]) -> Result<()> {
        // Each round either puts or finds `tail ring` moved on (by us or
        // another producer): more rounds than rings means the words are
        // garbage.
        for _ in 0..2 * MAX_RINGS + 2 {
            // Acquire pairs with the AcqRel CAS in `grow_past`.
            let k = self.tail_ring().load(Ordering::Acquire);
            let ring = self.ring(k)?;
            if !ring.closed_for_puts() {
                match ring.put_once(bytes) {
                    Put::Done => return Ok(()),
                    // Full, a live reader still copying out of the slot we
                    // need, or closed under us: the next ring, not a wait.
                    Put::Full | Put::Busy | Put::Closed => {}
                }
            }
            self.grow_past(k, &ring)?;
        }
        Err(corrupt())
    }

    /// Makes ring `k + 1` the one producers put into (see the module's
    /// protocol). Idempotent; does nothing if `tail ring` already moved on.
    fn grow_past(&self, k: u64, ring: &Ring) -> Result<()> {
        // Acquire pairs with the AcqRel CAS below.
        if self.tail_ring().load(Ordering::Acquire) != k {
            return Ok(());
        }
        let next = usize::try_from(k)
            .ok()
            .and_then(|k| k.checked_add(1))
            .filter(|&next| next < self.geometry.count)
            .ok_or_else(|| Error::SharedMemory {
                op: "growing an unbounded queue",
                source: io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "it holds as many values as its 1 TiB range takes",
                ),
            })?;
        let (offset, len) = self.geometry.range(next);
        self.source.ensure(next, offset, len)?;
        ring.close_for_puts();
        // AcqRel: Release pairs with the Acquire loads of `tail ring` in
        // `put`, `grow_past` and `len` (whoever sees `next` finds the file
        // already grown: the growth came first); Acquire with the CAS
        // before ours.
        let _ = self
            .tail_ring()
            .compare_exchange(k, k + 1, Ordering::AcqRel, Ordering::Acquire);
        Ok(())
    }

    /// The ring consumers take from and what stands at its head, leaving
    /// (and giving back) rings that are closed and empty for good.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] for ring words that are garbage.
    pub(super) fn front(&self) -> Result<(Ring, Front)> {
        // Each round returns or finds `head ring` moved on.
        for _ in 0..2 * MAX_RINGS + 2 {
            // Acquire pairs with the AcqRel CAS below.
            let k = self.head_ring().load(Ordering::Acquire);
            let ring = self.ring(k)?;
            let front = ring.front();
            if !matches!(front, Front::Empty) || !ring.closed_for_puts() {
                return Ok((ring, front));
            }
            // Closed to puts: look again *after* the close (SeqCst loads,
            // in `closed_for_puts` and `front`). Still empty: no value will
            // ever land here (a later claim sees the close and gives up).
            let front = ring.front();
            if !matches!(front, Front::Empty) {
                return Ok((ring, front));
            }
            if k.saturating_add(1) >= self.geometry.count as u64 {
                return Ok((ring, Front::Empty));
            }
            // AcqRel: Release pairs with the Acquire loads of `head ring`
            // here and in `len`; Acquire with the CAS before ours.
            if self
                .head_ring()
                .compare_exchange(k, k + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.give_back();
            }
        }
        Err(corrupt())
    }

    /// Gives back the memory of the rings consumers have left, in order,
    /// up to the first one a live process is still copying a value out of
    /// (zeros would come out). Called by the consumer that leaves a ring and
    /// by one that finishes a read in a ring already left, so the last
    /// reader out gives its ring back. A caller that dies here leaves the
    /// rest to the next.
    fn give_back(&self) {
        let given = self.control.word64(GIVEN_BACK_AT);
        for _ in 0..MAX_RINGS {
            // Acquire (both): pairs with the AcqRel CASes below and of
            // `head ring` in `front`.
            let j = given.load(Ordering::Acquire);
            if j >= self.head_ring().load(Ordering::Acquire) {
                return;
            }
            // No new reader can come to a ring consumers left (it holds no
            // value any more): only those copying out now matter.
            let Ok(ring) = self.ring(j) else { return };
            if ring.has_live_reader() {
                return;
            }
            let (offset, len) = self.geometry.range(ring.index as usize);
            self.source.punch(ring.index as usize, offset, len);
            // AcqRel: Release pairs with the Acquire load above (the next
            // caller starts past this ring); Acquire with the CAS before.
            let _ = given.compare_exchange(j, j + 1, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// After this process read a value out of `ring`: if consumers have
    /// left that ring meanwhile, its memory may be waiting for this read.
    pub(super) fn after_read(&self, ring: &Ring) {
        // Acquire pairs with the AcqRel CAS of `head ring` in `front`.
        if ring.index < self.head_ring().load(Ordering::Acquire) {
            self.give_back();
        }
    }
}

#[cfg(test)]
#[path = "unbounded_tests.rs"]
mod tests;
