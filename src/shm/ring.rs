//! A bounded byte ring of variable-length records, shared between exactly one
//! producer and one consumer that may live in different processes.
//!
//! # Algorithm
//!
//! The ring is a power-of-two byte array plus three control words, each
//! written by exactly one side with plain stores (no read-modify-write):
//!
//! * `tail`, the producer's publish position, alone on the producer's cache
//!   line;
//! * `head`, the consumer's claim position, and `released`, the position up
//!   to which the consumer has finished *reading* claimed records (so the
//!   producer may overwrite them), together on the consumer's cache line.
//!
//! Positions are byte counters that wrap at 2^32; `pos % cap` is the byte
//! offset. Invariant: `released <= head <= tail` and `tail - released <= cap`
//! (wrapping arithmetic).
//!
//! Each side keeps its own positions privately (they are authoritative) and
//! never reads its own words back: the producer reads only `released`, the
//! consumer only `tail`. A round trip so moves each control line once, from
//! its writer to its reader; the consumer's line moves only when the producer
//! runs out of room, as the producer remembers the last `released` it saw and
//! loads it again only then. (With `head` and `tail` packed in one word that
//! both sides CASed, the side polling the word lost its line on every claim
//! and every publish.) `head` is written for monitors only
//! ([`RingMemory::has_unclaimed`]): the parent's driver asks it whether a
//! worker's results wait before it sleeps. A hostile worker can write
//! its result ring's `head` to make that answer "yes" for ever, which keeps
//! the driver passing (CPU spent, nothing taken or lost: the passes claim
//! through the parent's private position and find nothing).
//!
//! Each record's `kind` is also an atomic word, an *ownership tag*: the
//! protocol above the ring lets the producer take back a record the consumer
//! has claimed but not started (`kind` CAS from "task" to "cancelled") and the
//! consumer start it (CAS from "task" to "taken"); exactly one CAS wins. The
//! record's bytes are not reused until the consumer releases them, so the tag
//! can never be confused with a later record's (no ABA). See
//! [`RingMemory::record_kind`].
//!
//! A record never wraps: when one does not fit before the end of the array the
//! producer writes a padding record to the end and starts again at offset 0. No
//! record is larger than `cap / 2`, so an empty ring always accepts one.
//!
//! # Trust
//!
//! The two sides share this memory with another process that may be buggy or
//! hostile, which may write anything into any word. Every position and header
//! read from the ring is copied once, then validated; a broken invariant is reported as [`RingError::Violation`] and the
//! caller kills the other side. No reference is ever formed into the data array:
//! bytes are copied in and out through raw pointers.
//!
//! The ring does not know where its memory lives: [`RingMemory`] is heap-backed
//! in unit tests and points into the pool's shared segment in production.

use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of a record header in bytes.
pub(crate) const HEADER_BYTES: usize = std::mem::size_of::<RecordHeader>();
/// The record kind reserved for padding at the end of the array.
pub(crate) const KIND_PAD: u32 = 0;

/// The fixed header in front of every record. All fields are little-endian
/// native integers; the record (header + payload) is padded to 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RecordHeader {
    /// Bytes from the start of this header to the start of the next record.
    pub total: u32,
    /// What the record is; [`KIND_PAD`] is padding, the rest is the protocol's.
    pub kind: u32,
    /// Length of the payload that follows the header.
    pub payload_len: u32,
    /// Protocol-defined.
    pub flags: u32,
    /// Protocol-defined: a task id.
    pub id: u64,
    /// Protocol-defined: a function offset, an error code.
    pub aux: u64,
}

/// A broken ring invariant or an impossible request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RingError {
    /// The other side wrote something that cannot be: a position out of range, a
    /// malformed header. The message says which check failed.
    Violation(&'static str),
    /// The record can never fit: its size exceeds `cap / 2`.
    TooLarge { record: usize, max: usize },
}

/// Where a ring's control words and bytes live.
///
/// Copyable raw pointers: the owner of the memory (a [`crate::shm::Segment`] or
/// the heap buffer of a test) must outlive every `RingMemory` made from it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingMemory {
    tail: *const AtomicU32,
    head: *const AtomicU32,
    released: *const AtomicU32,
    data: *mut u8,
    cap: u32,
}

// SAFETY: RingMemory is a set of pointers into memory designed for concurrent
// use from several processes; all accesses go through atomics or explicit
// copies, never through references to the bytes.
unsafe impl Send for RingMemory {}
// SAFETY: as above.
unsafe impl Sync for RingMemory {}

impl RingMemory {
    /// The ring whose producer publishes into `tail`, whose consumer claims
    /// into `head` and releases into `released`, over the `cap` bytes at
    /// `data`. For speed, `tail` should have a cache line of its own and
    /// `head` and `released` share another (see the module doc).
    ///
    /// # Safety
    ///
    /// `tail`, `head` and `released` must point to 4-byte aligned words, and
    /// `data` (8-byte aligned) to `cap` bytes, all valid for reads and writes
    /// for as long as this value or any copy of it is used. `cap` must be a
    /// power of two between 64 and 2^30. Other processes may access the same
    /// memory concurrently, but only through atomics (control words) or byte
    /// copies (data).
    pub(crate) unsafe fn new(
        tail: *mut u32,
        head: *mut u32,
        released: *mut u32,
        data: *mut u8,
        cap: u32,
    ) -> Self {
        debug_assert!(cap.is_power_of_two() && (64..=1 << 30).contains(&cap));
        Self {
            tail: tail.cast(),
            head: head.cast(),
            released: released.cast(),
            data,
            cap,
        }
    }

    fn tail(&self) -> &AtomicU32 {
        // SAFETY: `new`'s contract: aligned, valid for the life of this value,
        // and only accessed atomically by everyone.
        unsafe { &*self.tail }
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: as in `tail`.
        unsafe { &*self.head }
    }

    /// Whether the record at `position` lies below the consumer's release
    /// position: its bytes may already hold a newer record, so its tag must
    /// not be read. The word is the consumer's: a lie only misleads the caller
    /// about the liar's own records.
    pub(crate) fn is_released(&self, position: u32) -> bool {
        // Acquire pairs with the Release store in `Consumer::release`.
        let released = self.released().load(Ordering::Acquire);
        let distance = released.wrapping_sub(position);
        distance != 0 && distance <= self.cap
    }

    fn released(&self) -> &AtomicU32 {
        // SAFETY: as in `tail`.
        unsafe { &*self.released }
    }

    /// Capacity in bytes.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u32 {
        self.cap
    }

    /// Largest payload one record can carry in this ring.
    pub(crate) fn max_payload(&self) -> usize {
        self.cap as usize / 2 - HEADER_BYTES
    }

    /// Resets the control words to an empty ring. Only while neither side runs.
    pub(crate) fn reset(&self) {
        self.tail().store(0, Ordering::Relaxed);
        self.head().store(0, Ordering::Relaxed);
        self.released().store(0, Ordering::Relaxed);
    }

    /// `(head, tail)` as they are now, from two loads (not one consistent
    /// snapshot). For monitoring; validates nothing.
    pub(crate) fn positions(&self) -> (u32, u32) {
        // Relaxed: `head` is informational (see `Consumer::claim`); nothing
        // is read through it.
        let head = self.head().load(Ordering::Relaxed);
        // Acquire pairs with the Release store in `Producer::publish`, so a
        // caller that sees a tail also sees the records below it.
        (head, self.tail().load(Ordering::Acquire))
    }

    /// True when records wait to be claimed.
    pub(crate) fn has_unclaimed(&self) -> bool {
        let (head, tail) = self.positions();
        head != tail
    }

    /// The `kind` word of the record at `position`, as an atomic: the
    /// ownership tag. `None` if `position` cannot hold a record header (not
    /// 8-aligned or too close to the end): the worker treats that as a
    /// violation, the parent as "not waiting".
    ///
    /// Only meaningful while the record is published and not yet released
    /// (see [`is_released`](Self::is_released)).
    pub(crate) fn record_kind(&self, position: u32) -> Option<&AtomicU32> {
        self.kind_at(position % self.cap, HEADER_BYTES)
    }

    /// The `kind` word of the record at byte `offset` of the array, if the
    /// record is 8-aligned and `room` bytes from it lie inside the array.
    fn kind_at(&self, offset: u32, room: usize) -> Option<&AtomicU32> {
        if offset % 8 != 0 || offset as usize + room.max(8) > self.cap as usize {
            return None;
        }
        // SAFETY: `offset + 8 <= cap` (checked), 4-aligned (the
        // data array is 8-aligned, offset a multiple of 8, `kind` at +4), valid
        // for the life of this RingMemory. Once published the word is written
        // only by these atomics, and `read_header` reads it through one too.
        Some(unsafe { AtomicU32::from_ptr(self.data.add(offset as usize + 4).cast()) })
    }

    /// Overwrites the publish position: a misbehaving producer, for tests.
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn force_tail(&self, tail: u32) {
        // Release, as `Producer::publish`: the forced records are visible.
        self.tail().store(tail, Ordering::Release);
    }

    /// Overwrites the consumer's positions: a misbehaving consumer, for tests.
    #[cfg(test)]
    pub(crate) fn force_consumer(&self, head: u32, released: u32) {
        self.head().store(head, Ordering::Relaxed);
        // Release, as `Consumer::release`.
        self.released().store(released, Ordering::Release);
    }

    /// Writes a header at `position` without any check but bounds: a
    /// misbehaving peer, for tests.
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn force_record(&self, position: u32, header: &RecordHeader) {
        let offset = position % self.cap;
        let room = (self.cap - offset) as usize;
        let bytes = bytemuck::bytes_of(header);
        self.copy_in(offset, &bytes[..bytes.len().min(room)]);
    }

    fn copy_in(&self, offset: u32, src: &[u8]) {
        debug_assert!(offset as usize + src.len() <= self.cap as usize);
        // SAFETY: callers check `offset + len <= cap`; the destination is in
        // the data array, which only the producer writes while unpublished.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(offset as usize), src.len()) }
    }

    fn copy_out(&self, offset: u32, dst: &mut [u8]) {
        debug_assert!(offset as usize + dst.len() <= self.cap as usize);
        // SAFETY: callers check `offset + len <= cap`. The source may be written
        // concurrently by a misbehaving peer; we copy bytes and validate the copy.
        unsafe {
            ptr::copy_nonoverlapping(self.data.add(offset as usize), dst.as_mut_ptr(), dst.len())
        }
    }

    /// Copies the header at `offset`. Near the end of the array only a short
    /// padding record fits (8..32 bytes): copy only what lies inside the array
    /// and leave the rest zero; `total` and `kind` are always in the first 8.
    ///
    /// `kind` is an ownership tag that the other side may CAS while we read,
    /// so it is loaded atomically, never copied as plain bytes (a plain read
    /// racing an atomic write is a data race).
    fn read_header(&self, offset: u32) -> RecordHeader {
        let mut header = RecordHeader::default();
        let room = (self.cap - offset) as usize;
        let n = HEADER_BYTES.min(room);
        let bytes = bytemuck::bytes_of_mut(&mut header);
        self.copy_out(offset, &mut bytes[..n.min(4)]); // total
        if n > 8 {
            self.copy_out(offset + 8, &mut bytes[8..n]); // payload_len onwards
        }
        // Relaxed: the Acquire load of `tail` in `Consumer::claim` (partner:
        // the Release store in `Producer::publish`) already orders
        // the producer's header writes before this; a racing cancel CAS can
        // only make the copy stale, and ownership is decided by CAS, never by
        // the copy. `claim` only reads at 8-aligned offsets, 8 bytes or more
        // from the end; should one not be, it reads as padding of length
        // `total`, which `claim` then checks like any other.
        header.kind = self
            .kind_at(offset, 8)
            .map_or(KIND_PAD, |k| k.load(Ordering::Relaxed));
        header
    }
}

fn round8(n: usize) -> usize {
    (n + 7) & !7
}

/// Total record size for a payload of `payload_len` bytes.
pub(crate) fn record_size(payload_len: usize) -> usize {
    round8(HEADER_BYTES + payload_len)
}

/// The writing side of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    mem: RingMemory,
    /// The last published tail: only this side moves it, so it is authoritative.
    tail: u32,
    /// Where the next record goes; `pending - tail` bytes are written but unpublished.
    pending: u32,
    /// The consumer's release position as last loaded and validated: everything
    /// below it may be overwritten. It only grows, so room it shows is real;
    /// the shared word is loaded again only when it shows too little.
    released: u32,
}

impl Producer {
    /// A producer for an empty, freshly reset ring.
    pub(crate) fn new(mem: RingMemory) -> Self {
        Self {
            mem,
            tail: 0,
            pending: 0,
            released: 0,
        }
    }

    /// The memory this producer writes.
    pub(crate) fn memory(&self) -> RingMemory {
        self.mem
    }

    /// Writes one record unless it does not fit right now (`Ok(None)`); on
    /// success returns the position of its header. Not visible to the consumer
    /// until [`publish`](Self::publish). The header's `total` and `payload_len`
    /// are filled in here.
    pub(crate) fn write(
        &mut self,
        mut header: RecordHeader,
        payload: &[u8],
    ) -> Result<Option<u32>, RingError> {
        let total = record_size(payload.len());
        let cap = self.mem.cap as usize;
        if total > cap / 2 {
            return Err(RingError::TooLarge {
                record: total,
                max: cap / 2,
            });
        }
        let offset = (self.pending % self.mem.cap) as usize;
        let pad = if offset + total > cap {
            cap - offset
        } else {
            0
        };
        if !self.room_for(pad + total)? {
            return Ok(None);
        }
        if pad > 0 {
            let pad_header = RecordHeader {
                total: pad as u32,
                kind: KIND_PAD,
                ..Default::default()
            };
            // A pad of 8..31 bytes only has room for `total` and `kind`.
            let bytes = bytemuck::bytes_of(&pad_header);
            self.mem
                .copy_in(offset as u32, &bytes[..pad.min(HEADER_BYTES)]);
            self.pending = self.pending.wrapping_add(pad as u32);
        }
        let at = self.pending;
        let offset = at % self.mem.cap;
        header.total = total as u32;
        header.payload_len = payload.len() as u32;
        self.mem.copy_in(offset, bytemuck::bytes_of(&header));
        self.mem.copy_in(offset + HEADER_BYTES as u32, payload);
        self.pending = self.pending.wrapping_add(total as u32);
        Ok(Some(at))
    }

    /// Whether `need` more bytes fit after `pending`: first by the release
    /// position last seen, then, only if that shows too little, by the
    /// shared word loaded again (which takes its cache line from the
    /// consumer).
    fn room_for(&mut self, need: usize) -> Result<bool, RingError> {
        let cap = self.mem.cap as usize;
        if cap - self.used() >= need {
            return Ok(true);
        }
        self.released = self.load_released()?;
        Ok(cap - self.used() >= need)
    }

    /// Bytes between the release position last seen and `pending`: written
    /// and not yet released. At most `cap`: `write` keeps it so, and
    /// `released` only moves towards `tail`.
    fn used(&self) -> usize {
        let used = self.pending.wrapping_sub(self.released) as usize;
        debug_assert!(used <= self.mem.cap as usize);
        used
    }

    /// The consumer's release position, validated: it may only have moved
    /// forwards from the one last seen, and not past what we published.
    fn load_released(&self) -> Result<u32, RingError> {
        // Acquire pairs with the Release store in `Consumer::release`: the
        // consumer has finished reading everything below `released`.
        let released = self.mem.released().load(Ordering::Acquire);
        let moved = released.wrapping_sub(self.released);
        if moved <= self.tail.wrapping_sub(self.released) {
            return Ok(released);
        }
        if self.released.wrapping_sub(released) <= self.mem.cap {
            return Err(RingError::Violation("released position moved backwards"));
        }
        Err(RingError::Violation(
            "released position is ahead of the producer",
        ))
    }

    /// Whether a record with `payload_len` bytes would fit right now. A
    /// producer waiting for room re-checks this after announcing its sleep.
    pub(crate) fn has_room(&self, payload_len: usize) -> bool {
        let total = record_size(payload_len);
        let cap = self.mem.cap as usize;
        let offset = (self.pending % self.mem.cap) as usize;
        let pad = if offset + total > cap {
            cap - offset
        } else {
            0
        };
        // A garbage `released` reads as "room", and the write that follows
        // reports the violation.
        let Ok(released) = self.load_released() else {
            return true;
        };
        cap - self.pending.wrapping_sub(released) as usize >= pad + total
    }

    /// Makes every written record visible to the consumer. Returns whether
    /// anything was published.
    ///
    /// A plain store: only this side writes `tail`, and it never reads the
    /// word back (its own copy is authoritative), so there is nothing to
    /// validate and no consumer write to race with. The `Result` stays for
    /// callers written against protocols that had one.
    pub(crate) fn publish(&mut self) -> Result<bool, RingError> {
        if self.pending == self.tail {
            return Ok(false);
        }
        // Release pairs with the Acquire loads of `tail` in `Consumer::claim`
        // and `RingMemory::positions`: the record bytes written above (the
        // `TASK` tag included) are visible before the new tail.
        self.mem.tail().store(self.pending, Ordering::Release);
        self.tail = self.pending;
        Ok(true)
    }

    /// The consumer's claim position, checked to lie within what we published.
    #[cfg(test)]
    pub(crate) fn head(&self) -> Result<u32, RingError> {
        // Relaxed: `head` is informational (see `Consumer::claim`); tests
        // use it to check positions.
        let head = self.mem.head().load(Ordering::Relaxed);
        if self.tail.wrapping_sub(head) > self.mem.cap {
            return Err(RingError::Violation("claim position outside the ring"));
        }
        Ok(head)
    }
}

/// One claimed record: its header and where its payload lies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claimed {
    /// The validated header copy.
    pub header: RecordHeader,
    /// Ring position of the header.
    pub position: u32,
    payload_offset: u32,
}

/// The reading side of a ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    mem: RingMemory,
    /// Our claim position: only this side moves it, so it is authoritative.
    head: u32,
    /// The position we last stored into `released` (only this side writes
    /// it): `release` skips a store that would not change it.
    released: u32,
}

impl Consumer {
    /// A consumer for an empty, freshly reset ring.
    pub(crate) fn new(mem: RingMemory) -> Self {
        Self {
            mem,
            head: 0,
            released: 0,
        }
    }

    /// The memory this consumer reads.
    pub(crate) fn memory(&self) -> RingMemory {
        self.mem
    }

    /// Claims up to `max` records (padding does not count), appending them to
    /// `out`. The claimed records stay readable until [`release`](Self::release).
    /// Returns the number claimed; 0 when the ring is empty.
    ///
    /// Only this side moves `head`: claiming is a load of `tail`, a parse, and
    /// a plain store of the new `head`, never a read-modify-write.
    pub(crate) fn claim(&mut self, max: usize, out: &mut Vec<Claimed>) -> Result<usize, RingError> {
        let cap = self.mem.cap;
        let start = out.len();
        // Acquire pairs with the Release store in `Producer::publish`: the
        // records below `tail` are fully written.
        let tail = self.mem.tail().load(Ordering::Acquire);
        let head = self.head;
        let available = tail.wrapping_sub(head);
        if available > cap {
            return Err(RingError::Violation("publish position outside the ring"));
        }
        if available == 0 {
            return Ok(0);
        }
        let mut pos = head;
        while pos != tail && out.len() - start < max {
            let offset = pos % cap;
            let left = tail.wrapping_sub(pos);
            let header = self.mem.read_header(offset);
            let total = header.total;
            if total < 8 || total % 8 != 0 || total > left || offset + total > cap {
                out.truncate(start);
                return Err(RingError::Violation("record length out of range"));
            }
            if header.kind != KIND_PAD {
                if (total as usize) < HEADER_BYTES
                    || record_size(header.payload_len as usize) != total as usize
                {
                    out.truncate(start);
                    return Err(RingError::Violation("payload length does not match record"));
                }
                out.push(Claimed {
                    header,
                    position: pos,
                    payload_offset: offset + HEADER_BYTES as u32,
                });
            }
            pos = pos.wrapping_add(total);
        }
        self.head = pos;
        // Relaxed: `head` is for monitors only (`RingMemory::has_unclaimed`);
        // the producer learns what it may overwrite from `released`, never
        // from `head`, and nothing is read through it.
        self.mem.head().store(pos, Ordering::Relaxed);
        Ok(out.len() - start)
    }

    /// Copies a claimed record's payload into `dst` (replacing its contents).
    pub(crate) fn read_payload(&self, record: &Claimed, dst: &mut Vec<u8>) {
        let len = record.header.payload_len as usize;
        dst.clear();
        dst.reserve(len);
        debug_assert!(record.payload_offset as usize + len <= self.mem.cap as usize);
        // SAFETY: `claim` validated that the payload lies inside the data
        // array; `dst` has capacity for `len` bytes, which the copy fully
        // initialises before `set_len` (no zero-fill pass first).
        unsafe {
            ptr::copy_nonoverlapping(
                self.mem.data.add(record.payload_offset as usize),
                dst.as_mut_ptr(),
                len,
            );
            dst.set_len(len);
        }
    }

    /// A claimed record's payload as a [`crate::wire::Payload`]: inline
    /// (no allocation) when small.
    pub(crate) fn payload(&self, record: &Claimed) -> crate::wire::Payload {
        let len = record.header.payload_len as usize;
        if len <= 48 {
            let mut inline = [0u8; 48];
            self.mem.copy_out(record.payload_offset, &mut inline[..len]);
            crate::wire::Payload::from_slice(&inline[..len])
        } else {
            let mut bytes = crate::wire::take_buffer(len);
            self.read_payload(record, &mut bytes);
            crate::wire::Payload::from_vec(bytes)
        }
    }

    /// Lets the producer reuse everything claimed so far.
    ///
    /// Stores only when something new was claimed: callers release after
    /// every claim, an empty one included (a waiting worker, a parent
    /// helping an `apply`), and a store of the same value would still take
    /// the line back from a producer that has just read it.
    pub(crate) fn release(&mut self) {
        if self.released == self.head {
            return;
        }
        // Release pairs with the Acquire loads in `Producer::load_released`
        // (for `write` and `has_room`) and `RingMemory::is_released`: our
        // reads of the claimed bytes, and our tag CASes, happen before the
        // producer overwrites them.
        self.mem.released().store(self.head, Ordering::Release);
        self.released = self.head;
    }
}

// ---------------------------------------------------------------------------
// Partial payload reads: a claimed payload copied piece by piece straight to
// where it is wanted (a `map`'s results into its output), with no copy into
// a buffer first. Built on the same raw copies as `read_payload`.
// ---------------------------------------------------------------------------

impl Consumer {
    /// Copies `dst.len()` bytes of a claimed record's payload, starting
    /// `skip` bytes into it, into `dst`. Returns false, copying nothing,
    /// unless they all lie inside the payload; on true every byte of `dst`
    /// is written. The bytes are whatever the producer wrote (it may even
    /// be writing them still): the caller validates what it copied.
    pub(crate) fn copy_payload_into(
        &self,
        record: &Claimed,
        skip: usize,
        dst: &mut [std::mem::MaybeUninit<u8>],
    ) -> bool {
        let len = record.header.payload_len as usize;
        if skip.checked_add(dst.len()).is_none_or(|end| end > len) {
            return false;
        }
        debug_assert!(record.payload_offset as usize + len <= self.mem.cap as usize);
        // SAFETY: `claim` validated that the whole payload lies inside the
        // data array, and `skip + dst.len()` is within the payload (checked
        // above); `dst` is valid for `dst.len()` bytes of writes. The source
        // may be written concurrently by a misbehaving peer: bytes are
        // copied, never referenced.
        unsafe {
            ptr::copy_nonoverlapping(
                self.mem.data.add(record.payload_offset as usize + skip),
                dst.as_mut_ptr().cast::<u8>(),
                dst.len(),
            );
        }
        true
    }
}

/// A ring whose memory is a heap allocation: for unit tests, benchmarks and
/// in-process use.
#[derive(Debug)]
pub(crate) struct HeapRing {
    buf: Box<[u64]>,
    cap: u32,
}

impl HeapRing {
    /// A zeroed ring of `cap` data bytes (a power of two, 64..=2^30).
    pub(crate) fn new(cap: u32) -> Self {
        assert!(cap.is_power_of_two() && (64..=1 << 30).contains(&cap));
        // The producer's line, the consumer's line (128 bytes apart, as in
        // the pool's slots), then the data.
        let words = 32 + cap as usize / 8;
        Self {
            buf: vec![0u64; words].into_boxed_slice(),
            cap,
        }
    }

    /// The ring's memory. Valid while `self` lives.
    pub(crate) fn memory(&mut self) -> RingMemory {
        let base = self.buf.as_mut_ptr();
        let consumer = base.wrapping_add(16).cast::<u32>();
        // SAFETY: the buffer holds 32 control words then `cap` bytes; it is
        // 8-byte aligned, and lives as long as `self` (callers keep it alive).
        unsafe {
            RingMemory::new(
                base.cast(),
                consumer,
                consumer.add(1),
                base.add(32).cast(),
                self.cap,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u64) -> RecordHeader {
        RecordHeader {
            kind: 1,
            id,
            ..Default::default()
        }
    }

    #[test]
    fn records_round_trip_in_order_across_wraps() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        let mut claimed = Vec::new();
        let mut buf = Vec::new();
        let mut next_read = 0u64;
        let rounds = if cfg!(miri) { 50 } else { 5_000 };
        for id in 0..rounds {
            let payload = vec![id as u8; (id % 70) as usize];
            while p.write(header(id), &payload).unwrap().is_none() {
                p.publish().unwrap();
                claimed.clear();
                c.claim(usize::MAX, &mut claimed).unwrap();
                for r in &claimed {
                    c.read_payload(r, &mut buf);
                    assert_eq!(r.header.id, next_read);
                    assert_eq!(buf, vec![next_read as u8; (next_read % 70) as usize]);
                    next_read += 1;
                }
                c.release();
            }
        }
        p.publish().unwrap();
        claimed.clear();
        c.claim(usize::MAX, &mut claimed).unwrap();
        next_read += claimed.len() as u64;
        assert_eq!(next_read, rounds);
    }

    #[test]
    fn oversized_record_is_refused_not_truncated() {
        let mut ring = HeapRing::new(128);
        let mut p = Producer::new(ring.memory());
        let err = p.write(header(1), &[0u8; 64]).unwrap_err();
        assert_eq!(
            err,
            RingError::TooLarge {
                record: 96,
                max: 64
            }
        );
        assert!(p.write(header(1), &[0u8; 32]).unwrap().is_some());
    }

    #[test]
    fn ownership_tags_let_exactly_one_side_win() {
        let mut ring = HeapRing::new(1024);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        let positions: Vec<u32> = (0..4)
            .map(|i| p.write(header(i), &[1, 2, 3]).unwrap().unwrap())
            .collect();
        p.publish().unwrap();
        let mut claimed = Vec::new();
        assert_eq!(c.claim(usize::MAX, &mut claimed).unwrap(), 4);
        assert_eq!(claimed[3].position, positions[3]);
        // Producer cancels record 3; consumer starts record 0 and then fails to
        // start record 3.
        let tag = |pos| mem.record_kind(pos).unwrap();
        assert!(tag(positions[3])
            .compare_exchange(1, 9, Ordering::AcqRel, Ordering::Acquire)
            .is_ok());
        assert!(tag(positions[0])
            .compare_exchange(1, 8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok());
        assert!(tag(positions[3])
            .compare_exchange(1, 8, Ordering::AcqRel, Ordering::Acquire)
            .is_err());
        assert!(tag(positions[0])
            .compare_exchange(1, 9, Ordering::AcqRel, Ordering::Acquire)
            .is_err());
        assert!(mem.record_kind(4).is_none(), "unaligned");
        assert!(mem.record_kind(1024 - 8).is_none(), "no room for a header");
        let (head, tail) = mem.positions();
        assert_eq!((p.head().unwrap(), head), (tail, tail));
    }

    fn violation(result: Result<impl std::fmt::Debug, RingError>) -> &'static str {
        match result {
            Err(RingError::Violation(what)) => what,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    /// Writes records of 40 bytes until the ring is full; returns how many.
    fn fill(p: &mut Producer) -> Result<u64, RingError> {
        let mut n = 0;
        while p.write(header(n), &[7; 8])?.is_some() {
            n += 1;
        }
        p.publish()?;
        Ok(n)
    }

    #[test]
    fn consumer_refuses_a_tail_beyond_capacity_or_behind_its_head() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        p.write(header(1), &[0; 8]).unwrap();
        p.publish().unwrap();
        let mut out = Vec::new();
        assert_eq!(c.claim(8, &mut out), Ok(1));
        // A hostile producer publishes a tail beyond capacity...
        mem.force_tail(40 + 4096);
        out.clear();
        assert_eq!(
            violation(c.claim(8, &mut out)),
            "publish position outside the ring"
        );
        // ... or moves it back below what we claimed.
        mem.force_tail(32);
        assert_eq!(
            violation(c.claim(8, &mut out)),
            "publish position outside the ring"
        );
        assert!(out.is_empty());
        // Exactly `cap` ahead is a full ring, not a violation (the records
        // there are then checked like any other).
        mem.force_tail(40 + 256);
        assert_eq!(
            violation(c.claim(8, &mut out)),
            "record length out of range"
        );
        assert!(out.is_empty(), "nothing claimed from a broken batch");
    }

    #[test]
    fn consumer_refuses_corrupt_headers_under_a_valid_tail() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let mut c = Consumer::new(mem);
        let mut out = Vec::new();
        mem.force_tail(40);
        mem.force_record(
            0,
            &RecordHeader {
                total: 4000,
                kind: 1,
                ..Default::default()
            },
        );
        assert_eq!(
            violation(c.claim(8, &mut out)),
            "record length out of range"
        );
        mem.force_record(
            0,
            &RecordHeader {
                total: 40,
                kind: 1,
                payload_len: 9,
                ..Default::default()
            },
        );
        assert_eq!(
            violation(c.claim(8, &mut out)),
            "payload length does not match record"
        );
    }

    #[test]
    fn producer_refuses_a_release_position_that_moved_backwards() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        let mut out = Vec::new();
        let n = fill(&mut p).unwrap();
        assert_eq!(c.claim(usize::MAX, &mut out), Ok(n as usize));
        c.release();
        // The producer sees the release when it needs the room.
        assert!(fill(&mut p).unwrap() > 0);
        let (head, _) = mem.positions();
        mem.force_consumer(head, head.wrapping_sub(8));
        assert_eq!(violation(fill(&mut p)), "released position moved backwards");
    }

    #[test]
    fn producer_refuses_a_release_position_past_what_it_published() {
        for (bad, what) in [
            (1u32 << 31, "released position is ahead of the producer"),
            (6 * 40 + 8, "released position is ahead of the producer"),
            (u32::MAX - 7, "released position moved backwards"),
        ] {
            let mut ring = HeapRing::new(256);
            let mem = ring.memory();
            let mut p = Producer::new(mem);
            assert_eq!(fill(&mut p), Ok(6));
            mem.force_consumer(0, bad);
            assert!(p.has_room(8), "garbage reads as room...");
            assert_eq!(
                violation(p.write(header(9), &[0; 8])),
                what,
                "... and the write reports it (released = {bad})"
            );
        }
        // A record written but not yet published is not the consumer's to
        // release either.
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        assert_eq!(fill(&mut p), Ok(6));
        let mut out = Vec::new();
        assert_eq!(c.claim(usize::MAX, &mut out), Ok(6));
        c.release();
        let at = p.write(header(7), &[0; 8]).unwrap().unwrap();
        mem.force_consumer(at, at + 40);
        assert_eq!(
            violation(fill(&mut p)),
            "released position is ahead of the producer"
        );
    }

    #[test]
    fn garbage_in_a_sides_own_words_misleads_nobody() {
        // Each side keeps its positions privately and never reads its own
        // word back: what the other side scribbles there changes nothing.
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        let mut out = Vec::new();
        for round in 0..20u64 {
            p.write(header(round), &round.to_le_bytes())
                .unwrap()
                .unwrap();
            // A hostile consumer writes into `tail`: the next publish
            // replaces it.
            mem.force_tail(9999);
            p.publish().unwrap();
            // A hostile producer writes into `head`: the consumer never reads it.
            mem.head().store(12345, Ordering::Relaxed);
            out.clear();
            assert_eq!(c.claim(usize::MAX, &mut out), Ok(1));
            assert_eq!(out[0].header.id, round);
            c.release();
        }
    }

    #[test]
    fn threads_exchange_every_record_exactly_once() {
        let mut ring = HeapRing::new(4096);
        let mem = ring.memory();
        let n: u64 = if cfg!(miri) { 200 } else { 200_000 };
        let producer = std::thread::spawn(move || {
            let mut p = Producer::new(mem);
            for id in 0..n {
                while p.write(header(id), &id.to_le_bytes()).unwrap().is_none() {
                    p.publish().unwrap();
                    std::hint::spin_loop();
                }
                if id % 16 == 0 {
                    p.publish().unwrap();
                }
            }
            p.publish().unwrap();
        });
        let mut c = Consumer::new(mem);
        let (mut next, mut claimed, mut buf) = (0u64, Vec::new(), Vec::new());
        while next < n {
            claimed.clear();
            if c.claim(64, &mut claimed).unwrap() == 0 {
                std::thread::yield_now();
            }
            for r in &claimed {
                c.read_payload(r, &mut buf);
                assert_eq!(r.header.id, next);
                assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), next);
                next += 1;
            }
            c.release();
        }
        producer.join().unwrap();
    }

    proptest::proptest! {
        // Miri runs each case about 1000x slower: fewer cases there.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(if cfg!(miri) { 16 } else { 256 }))]
        /// The parent's reader on arbitrary ring contents: never panics,
        /// never yields a record outside the ring, and reads payloads in bounds.
        #[test]
        fn consumer_survives_arbitrary_memory(
            data in proptest::collection::vec(0u8..=255, 256),
            head in 0u32..512,
            span in 0u32..600,
            headers in proptest::collection::vec((0u32..300, 0u32..6, 0u32..300, 0u64..4), 0..8),
        ) {
            let mut ring = HeapRing::new(256);
            let mem = ring.memory();
            mem.copy_in(0, &data);
            // Sprinkle plausible-looking headers so that parsing goes deep.
            let mut at = head;
            for (total, kind, payload_len, id) in headers {
                let h = RecordHeader { total: total & !7, kind, payload_len, id, ..Default::default() };
                mem.force_record(at, &h);
                at = at.wrapping_add((total & !7).max(8));
            }
            mem.force_tail(head.wrapping_add(span));
            let mut c = Consumer { mem, head, released: head };
            let mut out = Vec::new();
            let mut buf = Vec::new();
            if let Ok(n) = c.claim(usize::MAX, &mut out) {
                proptest::prop_assert_eq!(n, out.len());
                for r in &out {
                    proptest::prop_assert!(r.payload_offset as usize + r.header.payload_len as usize <= 256);
                    c.read_payload(r, &mut buf);
                }
            }
        }

        /// The producer against a consumer that stores arbitrary release
        /// positions between its writes: never panics, never loses track
        /// of its room (`Producer::used` asserts it in debug builds), and
        /// once it reports a violation it is in a state the caller kills.
        #[test]
        fn producer_survives_arbitrary_release_positions(
            ops in proptest::collection::vec((0usize..100, proptest::option::of(0u32..600)), 1..60),
        ) {
            let mut ring = HeapRing::new(256);
            let mem = ring.memory();
            let mut p = Producer::new(mem);
            for (len, release) in ops {
                if let Some(offset) = release {
                    // Somewhere around what was published, often legitimate.
                    let (_, tail) = mem.positions();
                    mem.force_consumer(0, tail.wrapping_sub(offset).wrapping_add(300));
                }
                let written = p.write(header(1), &vec![1u8; len]);
                let published = p.publish();
                if written.is_err() || published.is_err() {
                    break;
                }
            }
        }
    }
}

/// A heap-backed ring with both ends, for corepool's own benchmarks.
#[doc(hidden)]
#[allow(unreachable_pub)]
pub mod bench_support {
    use super::*;
    use std::sync::Arc;

    /// The producing end of a heap ring shared by two threads: for
    /// cross-core round-trip benchmarks of the ring alone.
    #[derive(Debug)]
    pub struct RingSender {
        _ring: Arc<HeapRing>,
        producer: Producer,
    }

    /// The consuming end of a ring made by [`ring_channel`].
    #[derive(Debug)]
    pub struct RingReceiver {
        _ring: Arc<HeapRing>,
        consumer: Consumer,
        claimed: Vec<Claimed>,
        buf: Vec<u8>,
    }

    /// Both ends of one heap ring of `cap` bytes (a power of two, 64..=2^30).
    pub fn ring_channel(cap: u32) -> (RingSender, RingReceiver) {
        let mut ring = HeapRing::new(cap);
        let mem = ring.memory();
        let ring = Arc::new(ring);
        (
            RingSender {
                _ring: ring.clone(),
                producer: Producer::new(mem),
            },
            RingReceiver {
                _ring: ring,
                consumer: Consumer::new(mem),
                claimed: Vec::new(),
                buf: Vec::new(),
            },
        )
    }

    impl RingSender {
        /// Writes and publishes one record of kind 1 (a task); false when full.
        pub fn send(&mut self, id: u64, payload: &[u8]) -> bool {
            let header = RecordHeader {
                kind: 1,
                id,
                ..Default::default()
            };
            let sent = matches!(self.producer.write(header, payload), Ok(Some(_)));
            let _ = self.producer.publish();
            sent
        }
    }

    impl RingReceiver {
        /// Claims at most one record and, as a pool worker does, takes it
        /// with a CAS of its tag (`take`), copies its payload, releases it
        /// and calls `f` on it. Returns whether there was one.
        pub fn recv(&mut self, take: bool, mut f: impl FnMut(u64, &[u8])) -> bool {
            self.claimed.clear();
            if !matches!(self.consumer.claim(1, &mut self.claimed), Ok(1)) {
                self.consumer.release();
                return false;
            }
            let record = self.claimed[0];
            if take {
                let mem = self.consumer.memory();
                let _ = mem
                    .record_kind(record.position)
                    .map(|t| t.compare_exchange(1, 5, Ordering::AcqRel, Ordering::Acquire));
            }
            self.consumer.read_payload(&record, &mut self.buf);
            self.consumer.release();
            f(record.header.id, &self.buf);
            true
        }
    }

    /// Producer and consumer of one heap ring, used from one thread.
    #[derive(Debug)]
    pub struct LocalRing {
        _ring: HeapRing,
        producer: Producer,
        consumer: Consumer,
        claimed: Vec<Claimed>,
        buf: Vec<u8>,
    }

    impl LocalRing {
        /// A ring of `cap` bytes (a power of two, 64..=2^30).
        pub fn new(cap: u32) -> Self {
            let mut ring = HeapRing::new(cap);
            let mem = ring.memory();
            Self {
                _ring: ring,
                producer: Producer::new(mem),
                consumer: Consumer::new(mem),
                claimed: Vec::new(),
                buf: Vec::new(),
            }
        }

        /// Writes one record; false when full.
        pub fn push(&mut self, id: u64, payload: &[u8]) -> bool {
            matches!(
                self.producer.write(
                    RecordHeader {
                        kind: 1,
                        id,
                        ..Default::default()
                    },
                    payload
                ),
                Ok(Some(_))
            )
        }

        /// Publishes what was pushed.
        pub fn publish(&mut self) {
            let _ = self.producer.publish();
        }

        /// Claims up to `max` records, calls `f` on each payload, releases them.
        pub fn pop_batch(&mut self, max: usize, mut f: impl FnMut(u64, &[u8])) -> usize {
            self.claimed.clear();
            let n = self.consumer.claim(max, &mut self.claimed).unwrap_or(0);
            for r in &self.claimed {
                self.consumer.read_payload(r, &mut self.buf);
                f(r.header.id, &self.buf);
            }
            self.consumer.release();
            n
        }
    }
}
