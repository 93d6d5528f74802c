//! A bounded byte ring of variable-length records, shared between exactly one
//! producer and one consumer that may live in different processes.
//!
//! # Algorithm
//!
//! The ring is a power-of-two byte array of records plus three control words.
//! Positions are byte counters that wrap at 2^32; `pos % cap` is the byte
//! offset.
//!
//! **Records publish themselves.** The first word of each record's header,
//! its *stamp*, holds the record's position ([`stamp_for`]), and the producer
//! stores it after the rest of the record, with Release. The consumer polls
//! the stamp at its own claim position and takes the record once the stamp
//! names that position (Acquire). A round trip so moves one cache line per
//! direction, the record's own. (Up to protocol version 4 the consumer polled
//! a `tail` word and fetched the record's line only once that said it was
//! there: two lines in turn, about 50–100 ns more per direction.)
//!
//! A stamp must not be confused with what an earlier lap left at the same
//! offset: an earlier record's stamp (its position differs by a multiple of
//! `cap`: "not yet"), or payload bytes of an earlier record that covered the
//! offset, which could hold anything, the awaited position included. For
//! those the producer *zeroes ahead*: before a record is published, the stamp
//! word right after it is set to 0, so the word the consumer polls next reads
//! 0 until its own record is stamped. That word must be free to write: the
//! producer keeps [`GUARD_BYTES`] of room beyond every record, so the ring
//! never fills completely. The parent zeroes the first stamp word when it
//! resets a ring for a new worker ([`RingMemory::reset`]).
//!
//! Records start at whole cache lines ([`RECORD_ALIGN`]), so a small record
//! is one line, and the zero-ahead word of the next one starts the next
//! line. x86 makes stores visible in order, so a zero-ahead store into a
//! line the producer does not own yet would hold up the stamp behind it by
//! that line's ownership request; the producer therefore zeroes the word a
//! line further on right *after* each stamp (`Producer::prezero`), and the
//! next record, if it is one line long, finds its zero-ahead done.
//!
//! `write` stamps a record at once unless it is the first since the last
//! `publish`: that one's stamp is withheld until `publish`. The consumer
//! cannot get past an unstamped record, so a batch of writes still becomes
//! visible at once, when `publish` stamps its first record.
//!
//! The control words, each written by exactly one side with plain stores (no
//! read-modify-write):
//!
//! * `released`, the position up to which the consumer has finished *reading*
//!   claimed records (the producer may overwrite them), on the consumer's
//!   cache line;
//! * `head`, the consumer's claim position, beside it, and `tail`, the
//!   producer's publish position, alone on the producer's line: written for
//!   monitors (`RingMemory::positions`), read by neither side.
//!
//! Invariant: `released <= head <= tail` and `tail - released <= cap - 8`
//! (wrapping arithmetic). Each side keeps its own positions privately (they
//! are authoritative) and never reads its own words back: the producer reads
//! only `released`, and only when the release position it last saw shows too
//! little room; the consumer reads only stamps and records. What one side
//! scribbles into the other's `head` or `tail` misleads nobody. Whether
//! records wait is asked at the asker's own claim position
//! ([`Consumer::has_record`], [`RingMemory::has_record_at`]); the parent's
//! driver, which asks without the pool's lock, reads the parent's claim
//! position from a mirror in the parent's own memory
//! ([`Consumer::with_position_mirror`]). (Up to version 4 it asked `head !=
//! tail`, and a worker that wrote its result ring's `head` kept the driver
//! passing for ever.)
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
//! producer writes a padding record (a stamp and the kind [`KIND_PAD`], nothing
//! else: it runs to the end of the array) and starts again at offset 0. No
//! record is larger than `cap / 2`, so an empty ring always accepts one.
//!
//! # Trust
//!
//! The two sides share this memory with another process that may be buggy or
//! hostile, which may write anything into any word. Every stamp, position and
//! header read from the ring is copied once, then validated; a broken
//! invariant is reported as [`RingError::Violation`] and the caller kills the
//! other side. No reference is ever formed into the data array: bytes are
//! copied in and out through raw pointers, and the stamp and kind words are
//! only accessed as atomics.
//!
//! The ring does not know where its memory lives: [`RingMemory`] is heap-backed
//! in unit tests and points into the pool's shared segment in production.

use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Size of a record header in bytes.
pub(crate) const HEADER_BYTES: usize = std::mem::size_of::<RecordHeader>();
/// The record kind reserved for padding at the end of the array.
pub(crate) const KIND_PAD: u32 = 0;
/// Records start at multiples of this, a cache line: a header and a payload
/// of up to 32 bytes (a small task or result) lie in one line, the one the
/// consumer polls, so a round trip moves one line per direction. (Records
/// at multiples of 8 straddled two lines more often than not, and the
/// consumer fetched the second only after the stamp in the first.)
pub(crate) const RECORD_ALIGN: usize = 64;
/// Room the producer keeps free beyond every record: the stamp word it zeroes
/// there before the record is published (one record boundary's worth).
pub(crate) const GUARD_BYTES: usize = 8;
/// Where the stamp and kind words lie in a header.
const STAMP_AT: u32 = 0;
const KIND_AT: u32 = 4;
/// A claim position mirror's value when there is nothing to look at (the
/// consumer found a violation): no record starts there, as it is not a
/// multiple of 8.
const NO_POSITION: u32 = u32::MAX;

/// The fixed header in front of every record. All fields are little-endian
/// native integers; the record (header + payload) is padded to whole cache
/// lines ([`record_size`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RecordHeader {
    /// The record's publication word: [`stamp_for`] its position, stored
    /// last by the producer. Filled in by `write`.
    pub stamp: u32,
    /// What the record is; [`KIND_PAD`] is padding, the rest is the protocol's.
    pub kind: u32,
    /// Length of the payload that follows the header; the record's length
    /// is [`record_size`] of it (a pad runs to the end of the array).
    pub payload_len: u32,
    /// Protocol-defined.
    pub flags: u32,
    /// Protocol-defined: a task id.
    pub id: u64,
    /// Protocol-defined: a function offset, an error code.
    pub aux: u64,
}

/// The stamp of the record at `position`: the position with its low bit set.
/// Positions are multiples of 8, so no stamp is 0, the value of a stamp word
/// zeroed ahead.
pub(crate) const fn stamp_for(position: u32) -> u32 {
    position | 1
}

/// What a stamp word says about the record awaited at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    /// The record is there.
    Published,
    /// Not yet: a word zeroed ahead, or the stamp of another lap's record at
    /// the same offset (a correct producer leaves none, as it zeroes ahead;
    /// one that does only withholds records, which it can do anyway).
    NotYet,
    /// No stamp of a record at this offset: the producer broke the protocol.
    Broken,
}

fn judge(stamp: u32, position: u32, cap: u32) -> Stamp {
    if stamp == stamp_for(position) {
        Stamp::Published
    } else if stamp == 0 || (stamp & 7 == 1 && position.wrapping_sub(stamp & !7) % cap == 0) {
        Stamp::NotYet
    } else {
        Stamp::Broken
    }
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
    /// The ring whose producer writes its monitor word `tail`, whose consumer
    /// writes `released` and its monitor word `head`, over the `cap` bytes at
    /// `data`. For speed, `released` should not share a cache line with
    /// anything the producer writes (see the module doc).
    ///
    /// # Safety
    ///
    /// `tail`, `head` and `released` must point to 4-byte aligned words, and
    /// `data` (8-byte aligned) to `cap` bytes, all valid for reads and writes
    /// for as long as this value or any copy of it is used. `cap` must be a
    /// power of two between 128 and 2^30. Other processes may access the same
    /// memory concurrently, but only through atomics (control words, stamps
    /// and kinds) or byte copies (the rest of the data).
    pub(crate) unsafe fn new(
        tail: *mut u32,
        head: *mut u32,
        released: *mut u32,
        data: *mut u8,
        cap: u32,
    ) -> Self {
        debug_assert!(cap.is_power_of_two() && (128..=1 << 30).contains(&cap));
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

    fn released(&self) -> &AtomicU32 {
        // SAFETY: as in `tail`.
        unsafe { &*self.released }
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

    /// Capacity in bytes.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u32 {
        self.cap
    }

    /// Largest payload one record can carry in this ring.
    pub(crate) fn max_payload(&self) -> usize {
        self.cap as usize / 2 - HEADER_BYTES
    }

    /// Resets the ring to empty: the control words, and the stamp word at
    /// offset 0, where both sides start. The rest of the array keeps what the
    /// last process left (stamps and payloads of its laps); the producer
    /// zeroes each stamp word ahead before the consumer can look at it. Only
    /// while neither side runs.
    pub(crate) fn reset(&self) {
        self.tail().store(0, Ordering::Relaxed);
        self.head().store(0, Ordering::Relaxed);
        self.released().store(0, Ordering::Relaxed);
        self.header_word(0, STAMP_AT).store(0, Ordering::Relaxed);
    }

    /// `(head, tail)`, the monitor words, as they are now, from two loads (not
    /// one consistent snapshot). Validates nothing, and nothing is read through
    /// them: a hostile side may have written anything there. Nothing in the
    /// library needs them; tests and the fault-injection hooks do.
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn positions(&self) -> (u32, u32) {
        // Relaxed: informational (see `Consumer::claim`, `Producer::publish`).
        let head = self.head().load(Ordering::Relaxed);
        (head, self.tail().load(Ordering::Relaxed))
    }

    /// Whether a record is stamped for a consumer whose claim position is
    /// `position`, or a stamp there is broken (the consumer's next claim then
    /// reports the violation). False for a position no record can start at.
    ///
    /// The caller's claim position must come from the consumer's own memory:
    /// a position the other side could write would let it answer "yes" for
    /// ever.
    pub(crate) fn has_record_at(&self, position: u32) -> bool {
        if position % 8 != 0 {
            return false;
        }
        // Acquire pairs with the Release store in `Producer::stamp`, as in
        // `Consumer::claim`; a sleeper's re-check also relies on the SeqCst
        // fences of `park` (the waker stamps, then fences and looks).
        let stamp = self
            .header_word(position % self.cap, STAMP_AT)
            .load(Ordering::Acquire);
        judge(stamp, position, self.cap) != Stamp::NotYet
    }

    /// The `kind` word of the record at `position`, as an atomic: the
    /// ownership tag. `None` if `position` cannot hold a record header (not
    /// 8-aligned or too close to the end): the worker treats that as a
    /// violation, the parent as "not waiting".
    ///
    /// Only meaningful while the record is published and not yet released
    /// (see [`is_released`](Self::is_released)).
    pub(crate) fn record_kind(&self, position: u32) -> Option<&AtomicU32> {
        let offset = position % self.cap;
        if offset % 8 != 0 || offset as usize + HEADER_BYTES > self.cap as usize {
            return None;
        }
        Some(self.header_word(offset, KIND_AT))
    }

    /// The word `field` ([`STAMP_AT`] or [`KIND_AT`]) bytes into the header
    /// at `offset`, an 8-aligned offset in the array (rounded down to one,
    /// should it not be, so that the word always lies inside the array).
    fn header_word(&self, offset: u32, field: u32) -> &AtomicU32 {
        debug_assert!(offset % 8 == 0 && offset < self.cap && field <= KIND_AT);
        let at = (offset % self.cap) & !7;
        // SAFETY: `at + field + 4 <= cap`: `at` is a multiple of 8 below
        // `cap` (itself a multiple of 8) and `field` at most 4. 4-aligned
        // (the data array is 8-aligned), valid for the life of this
        // RingMemory. Stamp and kind words are only accessed as atomics while
        // a record lives there; bytes of other records' payloads that lay
        // there before were written before the stamp that made this position
        // the one to look at (see the module doc).
        unsafe { AtomicU32::from_ptr(self.data.add((at + field) as usize).cast()) }
    }

    /// Overwrites the producer's monitor word: a misbehaving consumer (or
    /// producer), for tests.
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn force_tail(&self, tail: u32) {
        self.tail().store(tail, Ordering::Relaxed);
    }

    /// Overwrites the consumer's monitor word `head`: a misbehaving producer,
    /// for tests.
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn force_head(&self, head: u32) {
        self.head().store(head, Ordering::Relaxed);
    }

    /// Overwrites the consumer's positions: a misbehaving consumer, for tests.
    #[cfg(test)]
    pub(crate) fn force_consumer(&self, head: u32, released: u32) {
        self.head().store(head, Ordering::Relaxed);
        // Release, as `Consumer::release`.
        self.released().store(released, Ordering::Release);
    }

    /// Writes a header at `position` (rounded down to a multiple of 8)
    /// without any check but bounds, its stamp last and as given: a
    /// misbehaving peer, for tests. Near the end of the array only what fits
    /// is written (the stamp and kind always do).
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn force_record(&self, position: u32, header: &RecordHeader) {
        let offset = (position % self.cap) & !7;
        let room = (self.cap - offset) as usize;
        let bytes = bytemuck::bytes_of(header);
        if room > 8 {
            self.copy_in(offset + 8, &bytes[8..HEADER_BYTES.min(room)]);
        }
        self.header_word(offset, KIND_AT)
            .store(header.kind, Ordering::Relaxed);
        // Release, as `Producer::stamp`.
        self.header_word(offset, STAMP_AT)
            .store(header.stamp, Ordering::Release);
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

    /// Copies the header of the (non-pad) record at `offset`, whose stamp
    /// and kind the caller has loaded already. The caller checked that a
    /// whole header fits before the end of the array.
    ///
    /// `stamp` and `kind` are atomic words (the other side may CAS `kind`
    /// while we read), so they are never copied as plain bytes: a plain read
    /// racing an atomic write would be a data race.
    fn read_header(&self, offset: u32, stamp: u32, kind: u32) -> RecordHeader {
        let mut header = RecordHeader::default();
        let bytes = bytemuck::bytes_of_mut(&mut header);
        self.copy_out(offset + 8, &mut bytes[8..]); // payload_len onwards
        header.stamp = stamp;
        header.kind = kind;
        header
    }
}

/// Total record size for a payload of `payload_len` bytes: header and
/// payload rounded up to whole cache lines ([`RECORD_ALIGN`]).
pub(crate) fn record_size(payload_len: usize) -> usize {
    (HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN)
}

/// The writing side of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    mem: RingMemory,
    /// Where the first record written since the last publish starts: its
    /// stamp is withheld until `publish` (everything below is published).
    /// Only this side moves it, so it is authoritative.
    tail: u32,
    /// Where the next record goes; `pending - tail` bytes are written but
    /// unpublished.
    pending: u32,
    /// The consumer's release position as last loaded and validated: everything
    /// below it may be overwritten. It only grows, so room it shows is real;
    /// the shared word is loaded again only when it shows too little.
    released: u32,
    /// A position whose stamp word we zeroed after the last stamp, a line
    /// past the end of the records: if the next record ends there, its
    /// zero-ahead store is done already and does not hold up its stamp.
    prezeroed: Option<u32>,
}

impl Producer {
    /// A producer for an empty, freshly reset ring.
    pub(crate) fn new(mem: RingMemory) -> Self {
        Self {
            mem,
            tail: 0,
            pending: 0,
            released: 0,
            prezeroed: None,
        }
    }

    /// The memory this producer writes.
    pub(crate) fn memory(&self) -> RingMemory {
        self.mem
    }

    /// Writes one record unless it does not fit right now (`Ok(None)`); on
    /// success returns the position of its header. Not visible to the consumer
    /// until [`publish`](Self::publish). The header's `stamp` and
    /// `payload_len` are filled in here.
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
        if !self.room_for(pad + total + GUARD_BYTES)? {
            return Ok(None);
        }
        if pad > 0 {
            // A pad is a stamp and a kind (whole lines, fewer than cap/2): it
            // runs to the end of the array.
            self.mem
                .header_word(offset as u32, KIND_AT)
                .store(KIND_PAD, Ordering::Relaxed);
            self.seal(pad as u32);
        }
        let at = self.pending;
        let offset = at % self.mem.cap;
        header.stamp = 0;
        header.payload_len = payload.len() as u32;
        // Everything but the stamp and kind words as bytes; those two as
        // atomics (the consumer may poll the stamp word, and both sides CAS
        // the kind once the record is published).
        self.mem
            .copy_in(offset + 8, &bytemuck::bytes_of(&header)[8..]);
        self.mem.copy_in(offset + HEADER_BYTES as u32, payload);
        // Up to the next multiple of 8 too, so that every 4-byte word where
        // an earlier lap's record could have had its stamp or kind is written
        // whole or not at all: a plain write over part of one trips Miri's
        // weak-memory emulation (an interpreter error, not undefined
        // behaviour).
        let ragged = payload.len().next_multiple_of(8) - payload.len();
        if ragged > 0 {
            let end = offset + (HEADER_BYTES + payload.len()) as u32;
            self.mem.copy_in(end, &[0u8; 8][..ragged]);
        }
        // Relaxed: published by the stamp's Release store (`seal`, `publish`).
        self.mem
            .header_word(offset, KIND_AT)
            .store(header.kind, Ordering::Relaxed);
        self.seal(total as u32);
        Ok(Some(at))
    }

    /// Ends the record at `pending`, `total` bytes long, whose bytes are
    /// written: zeroes the stamp word after it (room for it was checked),
    /// stamps it unless it is the first since the last publish, and moves
    /// `pending` past it.
    fn seal(&mut self, total: u32) {
        let at = self.pending;
        let next = at.wrapping_add(total);
        if self.prezeroed != Some(next) {
            self.zero(next);
        }
        self.pending = next;
        if at != self.tail {
            // The consumer cannot get past the unstamped first record of the
            // batch: stamping the rest now shows nothing early.
            self.stamp(at);
            self.prezero();
        }
    }

    /// Zeroes the stamp word at `position`, which lies in room we own.
    fn zero(&self, position: u32) {
        // Relaxed: ordered before the consumer's first look at `position` by
        // the stamp of the record that ends there (Release, in `seal` or
        // `publish`, after this), which the consumer loads (Acquire) before
        // it moves on to `position`.
        self.mem
            .header_word(position % self.mem.cap, STAMP_AT)
            .store(0, Ordering::Relaxed);
    }

    /// After a stamp: zeroes the stamp word a line past `pending`, if the
    /// room last seen covers it, so that a next record of one line finds its
    /// zero-ahead store done. Done after the stamp, it never holds the stamp
    /// up (x86 makes stores visible in order, so a zero-ahead store into
    /// another line just before a stamp delays the stamp by that line's
    /// ownership request).
    fn prezero(&mut self) {
        let target = self.pending.wrapping_add(RECORD_ALIGN as u32);
        let end = target.wrapping_add(GUARD_BYTES as u32);
        self.prezeroed = None;
        if end.wrapping_sub(self.released) as usize <= self.mem.cap as usize {
            self.zero(target);
            self.prezeroed = Some(target);
        }
    }

    /// Publishes the record at `at`, whose bytes are written.
    fn stamp(&self, at: u32) {
        // Release pairs with the Acquire loads of the stamp in
        // `Consumer::claim` and `RingMemory::has_record_at`: the record's
        // bytes (its `TASK` tag included), the stamp word zeroed after it
        // and, for the first record of a batch, the later records of the
        // batch are visible before the stamp.
        self.mem
            .header_word(at % self.mem.cap, STAMP_AT)
            .store(stamp_for(at), Ordering::Release);
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
    /// and not yet released. At most `cap - GUARD_BYTES`: `write` keeps it
    /// so, and `released` only moves towards `tail`.
    fn used(&self) -> usize {
        let used = self.pending.wrapping_sub(self.released) as usize;
        debug_assert!(used + GUARD_BYTES <= self.mem.cap as usize);
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
        cap - self.pending.wrapping_sub(released) as usize >= pad + total + GUARD_BYTES
    }

    /// Makes every written record visible to the consumer: stamps the first
    /// one written since the last publish (the others are stamped already,
    /// and hidden behind it). Returns whether anything was published.
    ///
    /// Only this side writes records and `tail`, and it never reads either
    /// back (its own copies are authoritative), so there is nothing to
    /// validate and no consumer write to race with. The `Result` stays for
    /// callers written against protocols that had one.
    pub(crate) fn publish(&mut self) -> Result<bool, RingError> {
        if self.pending == self.tail {
            return Ok(false);
        }
        self.stamp(self.tail);
        self.prezero();
        // Relaxed: `tail` is for monitors only; the consumer learns what is
        // published from the stamps.
        self.mem.tail().store(self.pending, Ordering::Relaxed);
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
    /// Where `head` is mirrored for other threads of the consumer's process
    /// (the parent's driver asks [`RingMemory::has_record_at`] there without
    /// the pool's lock): memory the other side cannot write.
    mirror: Option<Arc<AtomicU32>>,
}

impl Consumer {
    /// A consumer for an empty, freshly reset ring.
    pub(crate) fn new(mem: RingMemory) -> Self {
        Self {
            mem,
            head: 0,
            released: 0,
            mirror: None,
        }
    }

    /// A consumer for an empty, freshly reset ring that keeps its claim
    /// position in `mirror` too (set to 0 here), for threads that ask
    /// whether records wait without holding the consumer; after a violation
    /// the mirror names no position (nothing to look at until the ring is
    /// reset).
    pub(crate) fn with_position_mirror(mem: RingMemory, mirror: Arc<AtomicU32>) -> Self {
        // Relaxed: a hint for `has_record_at`, which validates what it reads.
        mirror.store(0, Ordering::Relaxed);
        Self {
            mirror: Some(mirror),
            ..Self::new(mem)
        }
    }

    /// The mirror of the claim position, if this consumer keeps one.
    pub(crate) fn position_mirror(&self) -> Option<Arc<AtomicU32>> {
        self.mirror.clone()
    }

    /// The memory this consumer reads.
    pub(crate) fn memory(&self) -> RingMemory {
        self.mem
    }

    /// Whether a record waits at our claim position (or a broken stamp,
    /// which the next `claim` reports): one load of the stamp word there. A
    /// consumer about to sleep re-checks this after announcing it.
    pub(crate) fn has_record(&self) -> bool {
        self.mem.has_record_at(self.head)
    }

    /// Claims up to `max` records (padding does not count), appending them to
    /// `out`. The claimed records stay readable until [`release`](Self::release).
    /// Returns the number claimed; 0 when none is published.
    ///
    /// Only this side moves `head`: claiming is a load of the stamp at `head`
    /// per record, a parse, and plain stores of the new `head` (the monitor
    /// word and the mirror), never a read-modify-write. Nothing is claimed
    /// from a batch with a broken record in it.
    pub(crate) fn claim(&mut self, max: usize, out: &mut Vec<Claimed>) -> Result<usize, RingError> {
        let start = out.len();
        let mut pos = self.head;
        while out.len() - start < max {
            match self.record_at(pos) {
                Ok(None) => break,
                Ok(Some((total, claimed))) => {
                    out.extend(claimed);
                    pos = pos.wrapping_add(total);
                }
                Err(e) => {
                    out.truncate(start);
                    if let Some(mirror) = &self.mirror {
                        // Relaxed: a hint, as in `with_position_mirror`.
                        mirror.store(NO_POSITION, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
        if pos != self.head {
            self.head = pos;
            // Relaxed: `head` is for monitors only; the producer learns what
            // it may overwrite from `released`, and nothing is read through
            // the mirror but stamps, loaded with Acquire.
            self.mem.head().store(pos, Ordering::Relaxed);
            if let Some(mirror) = &self.mirror {
                mirror.store(pos, Ordering::Relaxed);
            }
        }
        Ok(out.len() - start)
    }

    /// The record at `pos` if it is published: its length, and its claim
    /// unless it is padding. Validates its stamp and sizes.
    fn record_at(&self, pos: u32) -> Result<Option<(u32, Option<Claimed>)>, RingError> {
        let cap = self.mem.cap;
        let offset = pos % cap;
        if offset % 8 != 0 {
            // Our own position: only a test can make it so.
            return Err(RingError::Violation("claim position off the record grid"));
        }
        // Acquire pairs with the Release store in `Producer::stamp`: the
        // record's bytes, and the stamp word zeroed after it, are written.
        let stamp = self
            .mem
            .header_word(offset, STAMP_AT)
            .load(Ordering::Acquire);
        match judge(stamp, pos, cap) {
            Stamp::Published => {}
            Stamp::NotYet => return Ok(None),
            Stamp::Broken => {
                return Err(RingError::Violation(
                    "record stamp holds no position of this record",
                ))
            }
        }
        // Relaxed: ordered by the stamp's Acquire above; a racing tag CAS
        // can only make the copy stale, and ownership is decided by CAS,
        // never by the copy.
        let kind = self
            .mem
            .header_word(offset, KIND_AT)
            .load(Ordering::Relaxed);
        let (total, claimed) = if kind == KIND_PAD {
            // A pad runs to the end of the array, and only follows a record
            // too long to fit there, so it is shorter than `cap / 2`.
            let total = cap - offset;
            if total >= cap / 2 {
                return Err(RingError::Violation(
                    "padding where a record would have fit",
                ));
            }
            (total, None)
        } else {
            if offset as usize + HEADER_BYTES > cap as usize {
                return Err(RingError::Violation("record length out of range"));
            }
            let header = self.mem.read_header(offset, stamp, kind);
            let total = record_size(header.payload_len as usize);
            if total > cap as usize / 2 || offset as usize + total > cap as usize {
                return Err(RingError::Violation("record length out of range"));
            }
            let claimed = Claimed {
                header,
                position: pos,
                payload_offset: offset + HEADER_BYTES as u32,
            };
            (total as u32, Some(claimed))
        };
        // Everything claimed and not released must fit the ring (at most
        // `cap - GUARD_BYTES` from a correct producer): a producer that
        // stamps past that could make us claim bytes twice.
        if pos.wrapping_add(total).wrapping_sub(self.released) > cap {
            return Err(RingError::Violation("records claimed past a full ring"));
        }
        Ok(Some((total, claimed)))
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
    /// A zeroed ring of `cap` data bytes (a power of two, 128..=2^30).
    pub(crate) fn new(cap: u32) -> Self {
        assert!(cap.is_power_of_two() && (128..=1 << 30).contains(&cap));
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
                record: 128,
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

    /// Writes records with 8-byte payloads until the ring is full; returns
    /// how many.
    fn fill(p: &mut Producer) -> Result<u64, RingError> {
        let mut n = 0;
        while p.write(header(n), &[7; 8])?.is_some() {
            n += 1;
        }
        p.publish()?;
        Ok(n)
    }

    #[test]
    fn consumer_reads_stamps_and_never_tail() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        p.write(header(1), &[0; 8]).unwrap();
        p.publish().unwrap();
        let mut out = Vec::new();
        assert_eq!(c.claim(8, &mut out), Ok(1));
        let r = record_size(8) as u32;
        assert_eq!(mem.positions(), (r, r));
        // A hostile producer publishes a tail beyond capacity, or behind our
        // head: the consumer never reads it.
        for garbage in [r + 4096, 32, r + 256, r + 1] {
            mem.force_tail(garbage);
            out.clear();
            assert_eq!(c.claim(8, &mut out), Ok(0));
            assert!(!c.has_record());
        }
        // The stamp of another lap's record at our offset: not yet.
        let mut forged = RecordHeader {
            stamp: stamp_for(r + 256),
            kind: 1,
            payload_len: 8,
            ..Default::default()
        };
        mem.force_record(r, &forged);
        assert_eq!(c.claim(8, &mut out), Ok(0));
        assert!(!c.has_record());
        forged.stamp = stamp_for(r.wrapping_sub(3 * 256));
        mem.force_record(r, &forged);
        assert_eq!(c.claim(8, &mut out), Ok(0));
        // A stamp of no record at this offset: a violation, which
        // `has_record` shows so that the consumer claims and finds it.
        for broken in [stamp_for(r + 8), r, stamp_for(r) + 2, u32::MAX] {
            forged.stamp = broken;
            mem.force_record(r, &forged);
            assert!(c.has_record(), "stamp {broken}");
            assert_eq!(
                violation(c.claim(8, &mut out)),
                "record stamp holds no position of this record"
            );
            assert!(out.is_empty());
        }
        // Stamped right: claimed.
        forged.stamp = stamp_for(r);
        mem.force_record(r, &forged);
        assert!(c.has_record());
        assert_eq!(c.claim(8, &mut out), Ok(1));
        assert_eq!(out[0].position, r);
    }

    #[test]
    fn consumer_refuses_corrupt_headers_under_a_valid_stamp() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let mut out = Vec::new();
        let stamped = |at: u32, kind: u32, payload_len: u32| {
            mem.force_record(
                at,
                &RecordHeader {
                    stamp: stamp_for(at),
                    kind,
                    payload_len,
                    ..Default::default()
                },
            )
        };
        let consumer_at = |at: u32| Consumer {
            head: at,
            released: at,
            ..Consumer::new(mem)
        };
        for (at, kind, payload_len) in [
            (0, 1, 4000),         // longer than the ring
            (0, 1, 128 - 32 + 8), // longer than half the ring
            (0, 1, u32::MAX),     // a length that overflows a u32 sum
            (200, 1, 40),         // runs past the end of the array
            (240, 1, 0),          // no room for its header before the end
        ] {
            stamped(at, kind, payload_len);
            assert_eq!(
                violation(consumer_at(at).claim(8, &mut out)),
                "record length out of range",
                "record at {at}, {payload_len} bytes"
            );
        }
        // Padding only ever fills less than half the ring at its end.
        stamped(64, KIND_PAD, 0);
        assert_eq!(
            violation(consumer_at(64).claim(8, &mut out)),
            "padding where a record would have fit"
        );
        stamped(248, KIND_PAD, 0);
        stamped(256, 1, 0);
        assert_eq!(consumer_at(248).claim(8, &mut out), Ok(1));
        assert_eq!(out[0].position, 256);
        out.clear();
        // A consumer cannot be made to claim its own claimed, unreleased
        // bytes again: stamps that run on past a full ring are refused.
        let mut c = consumer_at(0);
        for at in [0, 64, 128, 192] {
            stamped(at, 1, 32);
        }
        assert_eq!(c.claim(2, &mut out), Ok(2));
        stamped(256, 1, 32); // overwrites the unreleased record at 0
        assert_eq!(
            violation(c.claim(8, &mut out)),
            "records claimed past a full ring"
        );
        assert_eq!(out.len(), 2, "nothing claimed from a broken batch");
    }

    #[test]
    fn a_batch_shows_when_published_and_not_before() {
        let mut ring = HeapRing::new(512);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        let mut out = Vec::new();
        for round in 0..20u64 {
            // Three records, the last of which pads to the next lap now and then.
            for i in 0..3 {
                let payload = vec![i as u8; (round as usize * 13 + i * 7) % 60];
                assert!(p
                    .write(header(round * 3 + i as u64), &payload)
                    .unwrap()
                    .is_some());
                assert!(!c.has_record(), "nothing before publish");
                assert_eq!(c.claim(usize::MAX, &mut out), Ok(0));
            }
            assert!(p.publish().unwrap());
            assert!(c.has_record());
            assert_eq!(c.claim(usize::MAX, &mut out), Ok(3));
            let ids: Vec<u64> = out.drain(..).map(|r| r.header.id).collect();
            assert_eq!(ids, [round * 3, round * 3 + 1, round * 3 + 2]);
            assert!(!c.has_record());
            c.release();
            assert!(!p.publish().unwrap(), "nothing new");
        }
    }

    /// Every 4-byte word of the payload of a record at `at`, as the stamp a
    /// record starting at that word's offset would carry one lap later: what
    /// a stale payload could show a consumer polling there.
    fn next_laps_stamps(at: u32, len: usize, cap: u32) -> Vec<u8> {
        let start = at + HEADER_BYTES as u32;
        (0..len as u32 / 4)
            .flat_map(|i| stamp_for(((start + 4 * i) & !7).wrapping_add(cap)).to_le_bytes())
            .chain(std::iter::repeat(0xab))
            .take(len)
            .collect()
    }

    /// Where `p` will put a record with a payload of `len` bytes: after the
    /// pad, if one is needed.
    fn next_position(p: &Producer, len: usize) -> u32 {
        let offset = p.pending % p.mem.cap;
        if offset as usize + record_size(len) > p.mem.cap as usize {
            p.pending + (p.mem.cap - offset)
        } else {
            p.pending
        }
    }

    #[test]
    fn a_stale_payload_never_passes_for_a_stamp() {
        // A lap of records whose payloads hold, at every offset, the stamp
        // the next lap would write there; the next lap's records start at
        // other offsets. The consumer must see each record only once
        // published: the producer zeroes each stamp word ahead.
        let cap = 512u32;
        let mut ring = HeapRing::new(cap);
        let mem = ring.memory();
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        let mut out = Vec::new();
        let mut lengths = [40usize, 24, 72, 8, 56].iter().cycle();
        for id in 0..200u64 {
            let len = *lengths.next().unwrap() + (id as usize / 37) * 8;
            let at = next_position(&p, len);
            let payload = next_laps_stamps(at, len, cap);
            assert_eq!(p.write(header(id), &payload).unwrap(), Some(at));
            assert_eq!(c.claim(usize::MAX, &mut out), Ok(0), "record {id} early");
            p.publish().unwrap();
            assert_eq!(c.claim(usize::MAX, &mut out), Ok(1));
            assert_eq!(out.pop().unwrap().header.id, id);
            assert_eq!(c.claim(usize::MAX, &mut out), Ok(0), "after record {id}");
            c.release();
        }
    }

    #[test]
    fn a_reset_ring_forgets_the_last_process_records() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let mut p = Producer::new(mem);
        assert_eq!(fill(&mut p), Ok(3));
        mem.reset();
        // A new pair of sides: the first stamp word is zeroed, the next
        // ones are zeroed ahead as records are written.
        let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
        let mut out = Vec::new();
        assert!(!c.has_record());
        assert_eq!(c.claim(usize::MAX, &mut out), Ok(0));
        p.write(header(77), &[1; 8]).unwrap();
        assert_eq!(c.claim(usize::MAX, &mut out), Ok(0));
        p.publish().unwrap();
        assert_eq!(c.claim(usize::MAX, &mut out), Ok(1));
        assert_eq!(out[0].header.id, 77);
        assert_eq!(
            c.claim(usize::MAX, &mut out),
            Ok(0),
            "the old record after it"
        );
    }

    #[test]
    fn a_mirror_follows_the_claim_position_and_drops_it_on_a_violation() {
        let mut ring = HeapRing::new(256);
        let mem = ring.memory();
        let mirror = Arc::new(AtomicU32::new(12345));
        let mut p = Producer::new(mem);
        let mut c = Consumer::with_position_mirror(mem, mirror.clone());
        let at = || mirror.load(Ordering::Relaxed);
        assert_eq!(at(), 0);
        assert!(!mem.has_record_at(at()));
        p.write(header(1), &[0; 8]).unwrap();
        p.publish().unwrap();
        assert!(mem.has_record_at(at()));
        let mut out = Vec::new();
        assert_eq!(c.claim(8, &mut out), Ok(1));
        assert_eq!(at(), record_size(8) as u32);
        assert!(!mem.has_record_at(at()));
        // The other side scribbles in `head`: the mirror is ours.
        mem.force_head(0);
        assert!(!mem.has_record_at(at()));
        mem.force_record(
            record_size(8) as u32,
            &RecordHeader {
                stamp: 7,
                ..Default::default()
            },
        );
        assert!(mem.has_record_at(at()), "broken: claim to find out");
        assert!(c.claim(8, &mut out).is_err());
        assert!(!mem.has_record_at(at()), "nothing to look at any more");
        assert!(Arc::ptr_eq(&c.position_mirror().unwrap(), &mirror));
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
        // A 256-byte ring holds three records of a line (and the guard).
        let r = record_size(8) as u32;
        for (bad, what) in [
            (1u32 << 31, "released position is ahead of the producer"),
            (3 * r + 8, "released position is ahead of the producer"),
            (u32::MAX - 7, "released position moved backwards"),
        ] {
            let mut ring = HeapRing::new(256);
            let mem = ring.memory();
            let mut p = Producer::new(mem);
            assert_eq!(fill(&mut p), Ok(3));
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
        assert_eq!(fill(&mut p), Ok(3));
        let mut out = Vec::new();
        assert_eq!(c.claim(usize::MAX, &mut out), Ok(3));
        c.release();
        let at = p.write(header(7), &[0; 8]).unwrap().unwrap();
        mem.force_consumer(at, at + r);
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
            mem.force_head(12345);
            assert!(c.has_record());
            out.clear();
            assert_eq!(c.claim(usize::MAX, &mut out), Ok(1));
            assert!(!c.has_record());
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
            headers in proptest::collection::vec((0u32..4, 0u32..6, 0u32..300, 0u64..4), 0..8),
        ) {
            let mut ring = HeapRing::new(256);
            let mem = ring.memory();
            mem.copy_in(0, &data);
            // Sprinkle plausible-looking headers, mostly stamped right, so
            // that parsing goes deep.
            let mut at = head;
            for (stamp, kind, payload_len, id) in headers {
                let stamp = match stamp {
                    0 => at.wrapping_add(256) | 1,
                    1 => payload_len,
                    _ => stamp_for(at),
                };
                let h = RecordHeader { stamp, kind, payload_len, id, ..Default::default() };
                mem.force_record(at, &h);
                at = at.wrapping_add(if kind == KIND_PAD {
                    256 - at % 256
                } else {
                    record_size(payload_len as usize) as u32
                });
            }
            let mut c = Consumer { head, released: head, ..Consumer::new(mem) };
            let mut out = Vec::new();
            let mut buf = Vec::new();
            let _ = c.has_record();
            if let Ok(n) = c.claim(usize::MAX, &mut out) {
                proptest::prop_assert_eq!(n, out.len());
                let bytes: usize = out.iter().map(|r| record_size(r.header.payload_len as usize)).sum();
                proptest::prop_assert!(bytes <= 256);
                for r in &out {
                    proptest::prop_assert!(r.payload_offset as usize + r.header.payload_len as usize <= 256);
                    c.read_payload(r, &mut buf);
                }
            }
        }

        /// A correct producer and consumer in one thread, records of any
        /// length whose payloads hold the next lap's stamps, published in
        /// batches: the consumer sees every record exactly once, in order,
        /// and none before it is published.
        #[test]
        fn consumer_sees_exactly_what_is_published(
            ops in proptest::collection::vec((0usize..90, 0u8..4), 1..80),
        ) {
            let cap = 256u32;
            let mut ring = HeapRing::new(cap);
            let mem = ring.memory();
            let (mut p, mut c) = (Producer::new(mem), Consumer::new(mem));
            let (mut written, mut published, mut seen) = (0u64, 0u64, 0u64);
            let mut out = Vec::new();
            let mut buf = Vec::new();
            for (len, op) in ops {
                let payload = next_laps_stamps(next_position(&p, len), len, cap);
                if p.write(header(written), &payload).unwrap().is_some() {
                    written += 1;
                }
                if op & 1 == 0 {
                    p.publish().unwrap();
                    published = written;
                }
                if op & 2 == 0 {
                    out.clear();
                    let n = c.claim(usize::MAX, &mut out).unwrap() as u64;
                    proptest::prop_assert_eq!(seen + n, published);
                    for r in &out {
                        proptest::prop_assert_eq!(r.header.id, seen);
                        c.read_payload(r, &mut buf);
                        proptest::prop_assert_eq!(buf.len(), r.header.payload_len as usize);
                        seen += 1;
                    }
                    c.release();
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

    /// Both ends of one heap ring of `cap` bytes (a power of two, 128..=2^30).
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
        /// A ring of `cap` bytes (a power of two, 128..=2^30).
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
