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
//! *value words* (in its shared control memory, `mpmc`'s `value_words`),
//! rounded up to whole pages so that giving it back frees every page;
//! reserves the range's memory (`fallocate`: no memory is an error here,
//! never an OOM kill elsewhere) and writes the encoding there (`pwrite`);
//! then puts a small [record](RECORD_BYTES) `(offset, length)` in the slot.
//! A put that does not go in (full, closed, timed out, failed) punches its
//! range back. A get takes the record out of the slot, validates it, reads
//! the range (`pread`), punches it (`fallocate(PUNCH_HOLE)`: its memory is
//! given back) and decodes.
//!
//! **Regions, and starting over.** The file's offsets are cut into
//! [`REGIONS`] regions of [`Layout::region_bytes`] each, then the *tail*,
//! the rest of the offset space. The queue's creator picks the size: a
//! [`REGIONS`]th of its file-size limit (`ulimit -f`), or a size no value
//! reaches when it has none ([`Layout::for_limit`]). Each region (and the
//! tail) has a word of its own holding two counts: how many ranges in it
//! are *live* (taken by a put and not yet given back, [`LIVE_BITS`] high
//! bits) and its *cursor*, the page where its next range starts (the low
//! [`CURSOR_BITS`]). A put takes its range with one compare-exchange on a
//! region's word that adds one to its live count and: when no range in it
//! is live, starts at the region's start, else at its cursor (which moves
//! past the range). A range that does not end within its region *runs on*
//! into the next ones, each of which it claims only when no range is live
//! in it; it counts as live in every region it lies in. A put tries first
//! the region a *hint* word names (where the last put that moved on to
//! another region ended), then the others in turn, then the tail
//! ([`candidates`]); a region without room is passed over; none: `None`,
//! and the caller spills the value. Every range given back (a get's, after
//! its read; a put's that did not go in) is punched first and only then
//! takes one off the live count of each region it lies in (Release), so a
//! put whose compare-exchange sees a region's count at 0 (Acquire) knows
//! every range taken there before was punched: starting the region over
//! overwrites nothing.
//!
//! So each region starts over as soon as the values in it are gone, while
//! values still wait in the others: a queue that is never empty of large
//! values (a consumer that lags by one, a queue kept full by a slower
//! consumer) turns through its regions and reuses its file. Under a finite
//! file-size limit the creator's limit is what the regions fill, and values
//! received in order are spilled only when those waiting at once (being
//! put and read included) lie in every region: more than about three
//! quarters of the limit less one value (see [`ValueFile::store`]). (With
//! one count for the whole file, as before, the file started over only
//! when no large value at all was live, which a streaming queue never
//! reached: under a limit it spilled after the limit's worth had passed.)
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
//! The region words are copied once per attempt and checked before use
//! ([`fit`], arithmetic only), and the region size once per process, when
//! it opens the queue ([`Layout::new`]): the cursor counts pages, so no
//! range can start off a page boundary whatever a word says (which would
//! have had every later range straddle pages a punch cannot give back); a
//! cursor outside its region is a typed error if no other region takes
//! the range; the hint is taken modulo the words' number. A forged word
//! can do three things, all to this queue's large values only (the file is
//! only ever read and written through system calls, never mapped):
//! - a live count of 0 while values wait in the region, or a cursor moved
//!   back onto them: a put reuses a live range, which corrupts the values
//!   there (a decode error, or a wrong value of the right type); every
//!   allocation is still bounded by a checked record. A region size forged
//!   before a process opened the queue (one that passes the checks) has
//!   that process count ranges in other regions: the same;
//! - a count too high (or stuck: a consumer killed between taking a record
//!   and giving its range back, a producer between taking a range and
//!   putting its record): that region's count never reaches 0 again, so it
//!   no longer starts over (its room is used up once, then never); the
//!   other regions go on turning, one fewer (under a limit, values are
//!   spilled with about a [`REGIONS`]th of the limit fewer bytes waiting
//!   at once; with every region stuck, once the file reaches the limit, as
//!   before regions); a count at its [`MAX_LIVE`] has the region passed
//!   over;
//! - a cursor outside its region while its count is not 0: the region has
//!   no room (a typed error if no other region takes the range) until the
//!   count reaches 0 again.
//!
//! Taking one off a live count never goes below 0 (a forged count of 0
//! stays 0), and every loop on a word is bounded ([`CAS_TRIES`],
//! [`RELEASE_TRIES`]).
//!
//! **Leaks.** A producer that dies between taking its range and putting its
//! record, or a consumer that dies between taking a record and punching
//! its range (a window as long as the `pread` of the value), leaves that
//! range's memory in the file until the last process holding the queue
//! lets go of it (the file goes with its last descriptor), and the live
//! counts of its regions stuck (above).
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

/// High bits of a region's word that count its live ranges (see the
/// module docs): up to [`MAX_LIVE`] large values wait in one region at
/// once.
pub(crate) const LIVE_BITS: u32 = 24;

/// Low bits of a region's word: its cursor, in pages from the file's
/// start.
pub(crate) const CURSOR_BITS: u32 = 64 - LIVE_BITS;

/// The most ranges live in one region at once: a put that finds this many
/// looks for another region (and spills its value if none has room).
pub(crate) const MAX_LIVE: u64 = (1 << LIVE_BITS) - 1;

/// The cursor's field: the largest page a range may end at.
const CURSOR_MASK: u64 = (1 << CURSOR_BITS) - 1;

/// Regions of [`Layout::region_bytes`] each, from the file's start: each
/// starts over on its own once no range in it is live, so a queue that
/// always holds a large value still reuses the file (see the module docs).
pub(crate) const REGIONS: usize = 4;

/// Words of a queue's value file in its control memory: one per region,
/// then one for the *tail*, the rest of the offset space past the regions
/// (where a put goes that finds no region with room, if its own file-size
/// limit lets it: so no process spills more than it did with one word).
pub(crate) const REGION_WORDS: usize = REGIONS + 1;

/// The index of the tail's word.
const TAIL: usize = REGIONS;

/// A region's size when its creator has no file-size limit (64 TiB: more
/// than any value, [`MAX_VALUE_BYTES`], and far less than the offset space
/// the cursor counts, 4 PiB with 4 KiB pages).
pub(crate) const UNLIMITED_REGION_BYTES: u64 = 1 << 46;

/// Compare-exchanges on a region's word one put tries before it looks
/// elsewhere: each failure means another process changed the word (made
/// progress), so an honest queue never sees this many in a row; a hostile
/// process rewriting the word without end does not hold a caller for ever
/// (a put then tries the next region, and spills at worst).
pub(crate) const CAS_TRIES: u32 = 1 << 12;

/// Compare-exchanges one give-back tries on a region's word before it
/// stops, leaving the count one high (that region no longer starts over:
/// see the module docs). Larger than [`CAS_TRIES`] because giving up here
/// costs for the queue's life, where a put that gives up spills one value;
/// a strong compare-exchange, so that only another process's change, never
/// a spurious failure (LL/SC machines), counts against it.
pub(crate) const RELEASE_TRIES: u32 = 1 << 16;

/// A region's word holding `live` ranges and the cursor at page `cursor`.
pub(crate) const fn value_word(live: u64, cursor: u64) -> u64 {
    (live << CURSOR_BITS) | (cursor & CURSOR_MASK)
}

/// `(live ranges, cursor page)` of a region's word.
pub(crate) const fn split_word(word: u64) -> (u64, u64) {
    (word >> CURSOR_BITS, word & CURSOR_MASK)
}

/// How a queue's value file is cut into regions: [`REGIONS`] of
/// `region_bytes` each from offset 0, then the tail up to the end of the
/// offset space. Made only by [`Layout::new`], which checks it, so its
/// arithmetic never overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    region: u64,
    page: u64,
    /// The offset space's end: the cursor's field in bytes, or [`MAX_END`].
    space_end: u64,
}

impl Layout {
    /// The layout of regions of `region` bytes, in pages of `page` bytes;
    /// `None` unless `page` is a power of two, `region` a non-zero multiple
    /// of it, and the regions end within the offset space. A queue's
    /// region size is in memory every holder may write: each process checks
    /// it here once, when it opens the queue.
    pub(crate) fn new(region: u64, page: u64) -> Option<Self> {
        if !page.is_power_of_two() || region == 0 || region % page != 0 {
            return None;
        }
        let space_end = CURSOR_MASK
            .checked_mul(page)
            .map_or(MAX_END, |e| e.min(MAX_END));
        let regions_end = region.checked_mul(REGIONS as u64)?;
        (regions_end <= space_end && space_end % page == 0).then_some(Self {
            region,
            page,
            space_end,
        })
    }

    /// The layout a queue's creator picks: regions of a [`REGIONS`]th of
    /// its file-size limit each (`None`: no limit), rounded down to whole
    /// pages (at least one), at most [`UNLIMITED_REGION_BYTES`], the size
    /// without a limit.
    pub(crate) fn for_limit(limit: Option<u64>, page: u64) -> Option<Self> {
        let region = limit.map_or(UNLIMITED_REGION_BYTES, |limit| {
            let share = (limit / REGIONS as u64).min(UNLIMITED_REGION_BYTES);
            (share - share % page.max(1)).max(page)
        });
        Self::new(region, page)
    }

    /// Bytes of each region (what the queue's memory records).
    pub(crate) fn region_bytes(&self) -> u64 {
        self.region
    }

    /// `[start, end)` of region `q` in bytes (`q` from 0 to [`TAIL`], the
    /// tail; anything past it counts as the tail).
    fn bounds(&self, q: usize) -> (u64, u64) {
        // No overflow: REGIONS * region <= space_end (`new`).
        let q = q.min(TAIL) as u64;
        let start = q * self.region;
        if q < REGIONS as u64 {
            (start, start + self.region)
        } else {
            (start, self.space_end)
        }
    }

    /// The region byte `at` lies in; `None` past the offset space.
    fn region_of(&self, at: u64) -> Option<usize> {
        if at >= self.space_end {
            return None;
        }
        // At most TAIL, so the cast is exact.
        Some((at / self.region).min(TAIL as u64) as usize)
    }

    /// The regions a range of `span` bytes at `offset` lies in, from first
    /// to last: those whose live counts it is in. `None` for a range not
    /// wholly in the offset space (only a forged record names one).
    pub(crate) fn regions_of(&self, offset: u64, span: u64) -> Option<(usize, usize)> {
        let end = offset
            .checked_add(span)
            .filter(|&end| end <= self.space_end)?;
        let first = self.region_of(offset)?;
        let last = self.region_of(end.checked_sub(1)?)?;
        Some((first, last.max(first)))
    }
}

/// Where a put of `span` bytes can go in region `q`, by [`fit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Within the region, at byte `offset`: store `next` in its word.
    Within { next: u64, offset: u64 },
    /// From byte `offset` in the region past its end, up to `end`: store
    /// `next` (the region full) in its word, then claim each region after
    /// it that the range reaches ([`claim`]).
    RunsOn { next: u64, offset: u64, end: u64 },
    /// No room: the region is full, or the range would end past `limit`
    /// or the offset space, or [`MAX_LIVE`] ranges are live in it.
    NoRoom,
}

/// Where a put of `span` bytes (whole pages, at least one) goes in region
/// `q` of `layout`, given the word it read (a copy, checked here: no
/// system call, Miri runs its tests) and the putter's own file-size limit
/// (`None`: none). No range live: at the region's start; else at its
/// cursor, which moves past the range; one more live either way.
///
/// # Errors
///
/// [`Error::SharedMemory`] (advice about a process that wrote over the
/// queue) for a word with ranges live whose cursor lies outside the
/// region: only a forged word does that.
pub(crate) fn fit(
    word: u64,
    q: usize,
    span: u64,
    limit: Option<u64>,
    layout: &Layout,
) -> Result<Fit> {
    let (live, cursor) = split_word(word);
    if live >= MAX_LIVE {
        return Ok(Fit::NoRoom);
    }
    let (base, end_q) = layout.bounds(q);
    let start = if live == 0 {
        base
    } else {
        match cursor.checked_mul(layout.page) {
            Some(at) if (base..=end_q).contains(&at) => at,
            _ => {
                return Err(forged(&format!(
                    "the next value offset of region {q} of the queue's value file (page {cursor}, {live} values waiting) lies outside the region"
                )))
            }
        }
    };
    // A range starts inside its region, so that the region its offset
    // names (`Layout::regions_of`, at the give-back) is the one counted.
    if start >= end_q {
        return Ok(Fit::NoRoom);
    }
    let ceiling = limit.map_or(layout.space_end, |limit| limit.min(layout.space_end));
    let Some(end) = start.checked_add(span).filter(|&end| end <= ceiling) else {
        return Ok(Fit::NoRoom);
    };
    let live = live + 1;
    Ok(if end <= end_q {
        Fit::Within {
            next: value_word(live, end / layout.page),
            offset: start,
        }
    } else {
        Fit::RunsOn {
            next: value_word(live, end_q / layout.page),
            offset: start,
            end,
        }
    })
}

/// The word to store in region `r` of `layout`, read as `word`, for a
/// range that runs on into it and ends at byte `end`: `None` unless no
/// range is live in it (a range that runs on starts the region over).
pub(crate) fn claim(word: u64, r: usize, end: u64, layout: &Layout) -> Option<u64> {
    if split_word(word).0 != 0 {
        return None;
    }
    let (_, end_r) = layout.bounds(r);
    Some(value_word(1, end.min(end_r) / layout.page))
}

/// The region word `word` with one live range less; `None` when it counts
/// none (forged, or given back twice: the count stays at 0).
pub(crate) fn one_less(word: u64) -> Option<u64> {
    let (live, cursor) = split_word(word);
    Some(value_word(live.checked_sub(1)?, cursor))
}

/// The order in which a put tries the regions, starting at region `first`
/// (the hint): then the other regions, in order after it (the oldest
/// first, in a queue that streams), then the tail.
pub(crate) fn candidates(first: usize) -> impl Iterator<Item = usize> {
    let first = first.min(TAIL);
    let after = first.min(REGIONS - 1);
    let others = (1..=REGIONS)
        .map(move |k| (after + k) % REGIONS)
        .filter(move |&q| q != first);
    std::iter::once(first)
        .chain(others)
        .chain((first != TAIL).then_some(TAIL))
}

/// A queue's value words, in its control memory (`mpmc`'s
/// `value_words`), and its layout as this process checked it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Words<'a> {
    /// The region a put tries first ([`candidates`]): a hint only, never
    /// what makes a range free.
    pub hint: &'a AtomicU64,
    /// One word per region, then the tail's ([`REGION_WORDS`]).
    pub regions: [&'a AtomicU64; REGION_WORDS],
    pub layout: Layout,
}

/// Takes one range off the live count of a region's `word`, after its
/// punch returned (see the module docs); nothing if the count is 0
/// already, or if the word keeps changing for [`RELEASE_TRIES`] tries (the
/// count then stays one high: that region stops starting over, nothing
/// worse).
fn release(word: &AtomicU64) {
    let mut seen = word.load(Ordering::Relaxed);
    for _ in 0..RELEASE_TRIES {
        let Some(less) = one_less(seen) else {
            return;
        };
        // Release: pairs with the Acquire of a put's compare-exchange in
        // `take_in` or `claim_in` (through the release sequence of the
        // read-modify-writes on this word): a put that sees the count this
        // one brought to 0 sees this range's punch done, and starts the
        // region over only then. Relaxed on failure: the next try reads
        // again.
        match word.compare_exchange(seen, less, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => seen = now,
        }
    }
}

/// Takes a range of `span` bytes for a put (see [`fit`]), trying the
/// regions in the order of [`candidates`] from the hint: its byte offset,
/// counted live in every region it lies in; `None` to spill.
///
/// # Errors
///
/// As [`fit`], when no region had room and one of them was forged.
fn take(words: &Words<'_>, span: u64, limit: Option<u64>) -> Result<Option<u64>> {
    // Relaxed: a hint only; which region a put tries first, never whether
    // a range in it is free (the region words say that).
    let hint = words.hint.load(Ordering::Relaxed);
    // At most TAIL, so the cast is exact; any word names some region.
    let hinted = (hint % REGION_WORDS as u64) as usize;
    // The hinted region with nothing live in it: the newest values are
    // gone, and in a queue received in order every older one with them, so
    // start over at the file's start, below which the most room lies
    // under a limit. Relaxed: this only orders the tries (the compare-
    // exchanges in `take_in` decide).
    let idle = words
        .regions
        .get(hinted)
        .is_none_or(|word| split_word(word.load(Ordering::Relaxed)).0 == 0);
    let first = if idle { 0 } else { hinted };
    let mut refused = None;
    for q in candidates(first) {
        match take_in(words, q, span, limit) {
            Ok(Some((offset, last))) => {
                if last as u64 != hint {
                    // Relaxed: a hint (above). One try: a put that lost
                    // the race found the file as changed as this one did.
                    let _ = words.hint.compare_exchange(
                        hint,
                        last as u64,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return Ok(Some(offset));
            }
            Ok(None) => {}
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    refused.map_or(Ok(None), Err)
}

/// Takes a range of `span` bytes starting in region `q` (see [`fit`]):
/// its byte offset and the last region it lies in; `None` if it has no
/// room (or a region it runs on into has a live range).
fn take_in(
    words: &Words<'_>,
    q: usize,
    span: u64,
    limit: Option<u64>,
) -> Result<Option<(u64, usize)>> {
    let Some(word) = words.regions.get(q) else {
        return Ok(None);
    };
    let mut seen = word.load(Ordering::Relaxed);
    for _ in 0..CAS_TRIES {
        let (next, offset, end) = match fit(seen, q, span, limit, &words.layout)? {
            Fit::NoRoom => return Ok(None),
            Fit::Within { next, offset } => (next, offset, None),
            Fit::RunsOn { next, offset, end } => (next, offset, Some(end)),
        };
        // Acquire: pairs with the Release of `release`'s compare-exchange
        // (through the release sequence of the read-modify-writes on this
        // word): when `seen` counts no live range, every range given back
        // in this region before was punched, so starting it over
        // overwrites nothing. Relaxed on failure: the next try checks the
        // word it read.
        match word.compare_exchange_weak(seen, next, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => {
                let Some(end) = end else {
                    return Ok(Some((offset, q)));
                };
                return Ok(claim_after(words, q, end).map(|last| (offset, last)));
            }
            Err(now) => seen = now,
        }
    }
    Ok(None)
}

/// Claims every region after `q` that a range from region `q` to byte
/// `end` runs on into (each must have no live range): the last one. If
/// one cannot be claimed, gives back the count taken in `q` and in those
/// claimed so far (nothing was written yet: nothing to punch), and
/// answers `None`. Region `q` keeps its cursor at its end, so the rest of
/// it is unused until it starts over.
fn claim_after(words: &Words<'_>, q: usize, end: u64) -> Option<usize> {
    // Past `q` whenever `fit` says the range runs on (its end lies past
    // region `q`, within the offset space); else nothing more is claimed.
    let last = end
        .checked_sub(1)
        .and_then(|at| words.layout.region_of(at))
        .filter(|&last| last > q);
    let mut claimed = q + 1;
    if let Some(last) = last {
        while claimed <= last && claim_in(words, claimed, end) {
            claimed += 1;
        }
        if claimed > last {
            return Some(last);
        }
    }
    for word in words.regions.iter().take(claimed).skip(q) {
        release(word);
    }
    None
}

/// Claims region `r` for a range that runs on into it up to byte `end`
/// ([`claim`]): whether it did.
fn claim_in(words: &Words<'_>, r: usize, end: u64) -> bool {
    let Some(word) = words.regions.get(r) else {
        return false;
    };
    let mut seen = word.load(Ordering::Relaxed);
    for _ in 0..CAS_TRIES {
        let Some(next) = claim(seen, r, end, &words.layout) else {
            return false;
        };
        // Acquire: as in `take_in` (the count is 0: the region starts
        // over).
        match word.compare_exchange_weak(seen, next, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => seen = now,
        }
    }
    false
}

/// Takes a range of `span` bytes at `offset` off the live counts of the
/// regions it lies in, after its punch returned; nothing for a range
/// outside the offset space (only a forged record names one).
fn release_range(words: &Words<'_>, offset: u64, span: u64) {
    let Some((first, last)) = words.layout.regions_of(offset, span) else {
        return;
    };
    for word in words.regions.iter().take(last + 1).skip(first) {
        release(word);
    }
}

/// What a put left in the file: the range of one value, given back on drop
/// unless [`kept`](Self::keep) (its record went into the queue).
#[derive(Debug)]
pub(crate) struct Stored<'a> {
    file: &'a ValueFile,
    /// The queue's value words, in whose live counts this range is.
    words: Words<'a>,
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
            self.file.give_back(&self.words, self.offset, self.span);
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

/// A put refused for a region's word: its message advises
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
    /// the queue's value words `words` (see the module docs).
    ///
    /// `None` if no region has room for the range below this process's
    /// file-size limit (RLIMIT_FSIZE, `ulimit -f`), or the limit was
    /// lowered under the write (EFBIG): the caller puts the value another
    /// way then (`crate::queue`: a spill). Each region starts over as soon
    /// as no value in it is live, so under a finite limit (the queue's
    /// creator cut the file into [`REGIONS`] regions of a [`REGIONS`]th of
    /// its own limit) this happens only when values waiting at once lie in
    /// every region below the limit, or one value is larger than the room
    /// left; or when forged or stuck live counts keep regions from
    /// starting over (see the module docs).
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`]: no memory for the value, a value past
    /// [`MAX_VALUE_BYTES`], or no region with room and one whose word is
    /// forged (see the module docs). Nothing is left in the file then.
    pub(crate) fn store<'a>(
        &'a self,
        words: Words<'a>,
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
        let span = span_of(len, words.layout.page);
        // Read on every large put, never cached: a process may lower its
        // own limit at any time (the write below checks it again).
        let limit = crate::sys::file_size_limit();
        let Some(offset) = take(&words, span, limit)? else {
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
            words,
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
    /// takes it off the live counts of the regions it lies in (the queue's
    /// value words `words`).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for a record that does not name a value this file
    /// holds (see the module docs): nothing is allocated for it, nor given
    /// back. A record that passed its checks is given back even if its read
    /// fails (no memory, or the range punched since by a hostile holder).
    pub(crate) fn take_into(
        &self,
        words: &Words<'_>,
        record: &[u8; RECORD_BYTES],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let page = words.layout.page;
        let range = record_bounds(record, page)?;
        self.check_holds(range)?;
        let read = self.read_into(range, out);
        self.give_back(words, range.offset, span_of(range.len as u64, page));
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
    /// range off the live counts of the regions it lies in: in that order,
    /// so that a put that starts a region over on the range finds it
    /// punched (see the module docs). A failed punch only keeps the memory
    /// in use until the file goes (a put starting over on the range then
    /// writes over it).
    fn give_back(&self, words: &Words<'_>, offset: u64, len: u64) {
        self.punch(offset, len);
        release_range(words, offset, len);
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

/// Opens the value file a handle names: the checks every peer's memfd gets
/// and the shrink seal ([`peer::open_shrink_sealed`]).
#[cfg(not(miri))]
fn open_uncached(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
) -> std::result::Result<ValueFile, OpenError> {
    let (file, id) = peer::open_shrink_sealed(owner, fd, (dev, ino), "a queue's value file")?;
    Ok(ValueFile { file, id })
}

/// Under Miri: no process's descriptors to open.
#[cfg(miri)]
fn open_uncached(_: i32, _: i32, _: u64, _: u64) -> std::result::Result<ValueFile, OpenError> {
    let _ = peer::open_shrink_sealed;
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

    /// Regions of 8 pages.
    fn small() -> Layout {
        Layout::new(8 * PAGE, PAGE).unwrap()
    }

    /// Words in the heap: the regions', then the hint.
    fn cells() -> [AtomicU64; REGION_WORDS + 1] {
        std::array::from_fn(|_| AtomicU64::new(0))
    }

    fn words_in(cells: &[AtomicU64; REGION_WORDS + 1], layout: Layout) -> Words<'_> {
        Words {
            hint: &cells[REGION_WORDS],
            regions: std::array::from_fn(|r| &cells[r]),
            layout,
        }
    }

    fn lives(words: &Words<'_>) -> Vec<u64> {
        words
            .regions
            .iter()
            .map(|w| split_word(w.load(Ordering::Relaxed)).0)
            .collect()
    }

    #[test]
    fn a_layout_is_checked_and_follows_the_creators_limit() {
        let space = CURSOR_MASK * PAGE;
        for (region, page) in [
            (0, PAGE),                             // no region
            (PAGE + 1, PAGE),                      // off a page
            (3 * PAGE, 3 * PAGE / 2),              // a page no power of two
            (space / REGIONS as u64 + PAGE, PAGE), // regions past the space
            (u64::MAX - (PAGE - 1), PAGE),         // overflows
        ] {
            assert_eq!(Layout::new(region, page), None, "{region} {page}");
        }
        assert!(Layout::new(PAGE, PAGE).is_some());
        let largest = space / REGIONS as u64 / PAGE * PAGE;
        assert!(Layout::new(largest, PAGE).is_some());
        // A quarter of the limit, in whole pages; at least a page; at most
        // the size without a limit.
        let region = |limit| Layout::for_limit(limit, PAGE).unwrap().region_bytes();
        assert_eq!(region(Some(8 << 20)), 2 << 20);
        assert_eq!(region(Some((8 << 20) + 4 * PAGE - 1)), 2 << 20);
        assert_eq!(region(Some((8 << 20) + 4 * PAGE)), (2 << 20) + PAGE);
        assert_eq!(region(Some(10)), PAGE);
        assert_eq!(region(Some(0)), PAGE);
        assert_eq!(region(None), UNLIMITED_REGION_BYTES);
        assert_eq!(region(Some(u64::MAX)), UNLIMITED_REGION_BYTES);
        // The size without a limit fits every page size from 4 KiB to 4 MiB.
        for shift in 12..=22 {
            assert!(Layout::for_limit(None, 1 << shift).is_some(), "{shift}");
        }
    }

    #[test]
    fn a_range_counts_in_every_region_it_lies_in() {
        let l = small();
        let r = 8 * PAGE;
        assert_eq!(l.regions_of(0, PAGE), Some((0, 0)));
        assert_eq!(l.regions_of(0, r), Some((0, 0)));
        assert_eq!(l.regions_of(r - PAGE, 2 * PAGE), Some((0, 1)));
        assert_eq!(l.regions_of(PAGE, 3 * r), Some((0, 3)));
        assert_eq!(l.regions_of(3 * r, r + PAGE), Some((3, 4)));
        assert_eq!(l.regions_of(4 * r, PAGE), Some((4, 4)));
        assert_eq!(l.regions_of(l.space_end - PAGE, PAGE), Some((4, 4)));
        // Outside the offset space: no region's count.
        assert_eq!(l.regions_of(l.space_end - PAGE, 2 * PAGE), None);
        assert_eq!(l.regions_of(l.space_end, PAGE), None);
        assert_eq!(l.regions_of(u64::MAX - 1, PAGE), None);
        assert_eq!(l.bounds(2), (2 * r, 3 * r));
        assert_eq!(l.bounds(TAIL), (4 * r, l.space_end));
        assert_eq!(l.bounds(usize::MAX), (4 * r, l.space_end));
    }

    #[test]
    fn a_put_tries_the_hint_then_the_regions_after_it_then_the_tail() {
        let order = |first| candidates(first).collect::<Vec<_>>();
        assert_eq!(order(0), [0, 1, 2, 3, 4]);
        assert_eq!(order(2), [2, 3, 0, 1, 4]);
        assert_eq!(order(3), [3, 0, 1, 2, 4]);
        assert_eq!(order(4), [4, 0, 1, 2, 3]);
        assert_eq!(order(usize::MAX), [4, 0, 1, 2, 3]);
    }

    #[test]
    fn a_region_starts_over_when_no_range_in_it_is_live() {
        let l = small();
        let fit = |word, q, pages: u64, limit| fit(word, q, pages * PAGE, limit, &l).unwrap();
        // None live: at the region's start, whatever the cursor says.
        for cursor in [0, 3, 12345, CURSOR_MASK] {
            assert_eq!(
                fit(value_word(0, cursor), 1, 3, None),
                Fit::Within {
                    next: value_word(1, 11),
                    offset: 8 * PAGE
                },
                "cursor {cursor}"
            );
        }
        // Some live: at the cursor, which moves on.
        assert_eq!(
            fit(value_word(2, 10), 1, 3, None),
            Fit::Within {
                next: value_word(3, 13),
                offset: 10 * PAGE
            }
        );
        // Past the region's end: runs on (the region's cursor at its end).
        assert_eq!(
            fit(value_word(2, 14), 1, 3, None),
            Fit::RunsOn {
                next: value_word(3, 16),
                offset: 14 * PAGE,
                end: 17 * PAGE
            }
        );
        // Larger than a region: runs on from its start.
        assert_eq!(
            fit(value_word(0, 0), 0, 20, None),
            Fit::RunsOn {
                next: value_word(1, 8),
                offset: 0,
                end: 20 * PAGE
            }
        );
        // Full, a full count, past the putter's limit: no room.
        assert_eq!(fit(value_word(1, 16), 1, 1, None), Fit::NoRoom);
        assert_eq!(fit(value_word(MAX_LIVE, 9), 1, 1, None), Fit::NoRoom);
        assert_eq!(fit(value_word(0, 0), 1, 3, Some(10 * PAGE)), Fit::NoRoom);
        assert!(matches!(
            fit(value_word(0, 0), 1, 3, Some(11 * PAGE)),
            Fit::Within { .. }
        ));
        // The tail runs to the end of the space, never on.
        assert_eq!(
            fit(value_word(0, 0), TAIL, 100, None),
            Fit::Within {
                next: value_word(1, 132),
                offset: 32 * PAGE
            }
        );
        assert_eq!(fit(value_word(1, CURSOR_MASK), TAIL, 1, None), Fit::NoRoom);
        assert_eq!(
            fit(value_word(1, CURSOR_MASK - 1), TAIL, 2, None),
            Fit::NoRoom
        );
        // A word's two fields never spill into each other.
        assert_eq!(split_word(value_word(5, 9)), (5, 9));
        assert_eq!(split_word(u64::MAX), (MAX_LIVE, CURSOR_MASK));
    }

    #[test]
    fn a_cursor_outside_its_region_is_forged() {
        let l = small();
        for (q, cursor) in [(1, 7), (1, 17), (0, CURSOR_MASK), (3, 0), (TAIL, 31)] {
            let got = fit(value_word(1, cursor), q, PAGE, None, &l);
            assert!(is_forged_word(&got), "{q} {cursor}: {got:?}");
        }
        // Pages so large that a byte offset would overflow: forged, never
        // an overflow.
        let huge = Layout::new(1 << 30, 1 << 30).unwrap();
        let got = fit(value_word(1, CURSOR_MASK), 0, 1 << 30, None, &huge);
        assert!(is_forged_word(&got), "{got:?}");
    }

    #[test]
    fn no_word_puts_a_range_off_a_page_or_outside_its_regions() {
        let l = small();
        let words = [
            0,
            1,
            u64::MAX,
            u64::MAX - 1,
            1 << CURSOR_BITS,
            (1 << CURSOR_BITS) - 1,
            value_word(1, 9),
            value_word(1, 15),
            value_word(MAX_LIVE - 1, 24),
            0x5555_5555_5555_5555,
            0xaaaa_aaaa_aaaa_aaaa,
        ];
        for word in words {
            for q in 0..REGION_WORDS {
                for span in [PAGE, 2 * PAGE, 9 * PAGE, MAX_VALUE_BYTES] {
                    for limit in [None, Some(20 * PAGE), Some(0)] {
                        let ceiling = limit.unwrap_or(l.space_end);
                        let (base, end_q) = l.bounds(q);
                        let what = format!("{word:#x} region {q} span {span} limit {limit:?}");
                        match fit(word, q, span, limit, &l) {
                            Ok(Fit::Within { next, offset }) => {
                                assert_eq!(offset % PAGE, 0, "{what}");
                                assert!(base <= offset && offset + span <= end_q, "{what}");
                                assert!(offset + span <= ceiling, "{what}");
                                assert_eq!(split_word(next).0, split_word(word).0 + 1, "{what}");
                                assert_eq!(split_word(next).1 * PAGE, offset + span, "{what}");
                                assert_eq!(l.regions_of(offset, span), Some((q, q)), "{what}");
                            }
                            Ok(Fit::RunsOn { next, offset, end }) => {
                                assert_eq!(offset % PAGE, 0, "{what}");
                                assert!(base <= offset && offset < end_q && end > end_q, "{what}");
                                assert_eq!(end, offset + span, "{what}");
                                assert!(end <= ceiling, "{what}");
                                assert_eq!(split_word(next).1 * PAGE, end_q, "{what}");
                                let (first, last) = l.regions_of(offset, span).unwrap();
                                assert!(first == q && last > q, "{what}");
                            }
                            Ok(Fit::NoRoom) => {}
                            Err(e) => assert!(is_forged_word::<()>(&Err(e)), "{what}"),
                        }
                    }
                }
            }
        }
    }

    /// Puts and gets in first-in, first-out order over the words, with at
    /// most `waiting` values of `pages` pages waiting once a put is done:
    /// checks no two live ranges ever share a byte and every region counts
    /// exactly the live ranges in it. Returns how many puts spilled.
    fn stream(
        layout: Layout,
        limit: Option<u64>,
        pages: &[u64],
        waiting: usize,
        n: usize,
    ) -> usize {
        let cells = cells();
        let words = words_in(&cells, layout);
        let mut live: std::collections::VecDeque<(u64, u64)> = Default::default();
        let mut spilled = 0;
        for i in 0..n {
            let span = pages[i % pages.len()] * PAGE;
            match take(&words, span, limit).unwrap() {
                Some(offset) => {
                    for &(o, s) in &live {
                        assert!(offset + span <= o || o + s <= offset, "put {i} overlaps");
                    }
                    assert!(offset + span <= limit.unwrap_or(u64::MAX), "put {i}");
                    live.push_back((offset, span));
                }
                None => spilled += 1,
            }
            while live.len() > waiting {
                let (o, s) = live.pop_front().unwrap();
                release_range(&words, o, s);
            }
            let mut counted = [0u64; REGION_WORDS];
            for &(o, s) in &live {
                let (first, last) = layout.regions_of(o, s).unwrap();
                for c in &mut counted[first..=last] {
                    *c += 1;
                }
            }
            assert_eq!(lives(&words), counted, "after put {i}");
        }
        while let Some((o, s)) = live.pop_front() {
            release_range(&words, o, s);
        }
        assert_eq!(lives(&words), [0; REGION_WORDS]);
        spilled
    }

    #[test]
    fn a_stream_under_a_limit_reuses_the_file_without_spilling() {
        // A limit of 32 pages: regions of 8. Values of 3 pages, one or two
        // waiting (a consumer lagging by one), or a queue kept full (four
        // live at once): never a spill, though the stream never empties.
        let limit = 32 * PAGE;
        let l = Layout::for_limit(Some(limit), PAGE).unwrap();
        assert_eq!(l.region_bytes(), 8 * PAGE);
        let n = if cfg!(miri) { 150 } else { 2000 };
        for waiting in 1..=4 {
            assert_eq!(stream(l, Some(limit), &[3], waiting, n), 0, "{waiting}");
        }
        // Mixed sizes, a value larger than a region among them.
        assert_eq!(stream(l, Some(limit), &[1, 3, 2, 9, 1, 5], 2, n), 0);
        // As much waiting as three regions hold: still no spill.
        assert_eq!(stream(l, Some(limit), &[2], 11, n), 0);
        // More than the limit holds at once: spills, and the counts and
        // ranges stay right (checked in `stream`).
        assert!(stream(l, Some(limit), &[3], 12, n) > 0);
        // The sizes of the integration tests: 1 MiB values (and their
        // length, a page more) under an 8 MiB limit, up to three live
        // while one is put (a bounded(2) queue kept full: two in slots,
        // one being read).
        let mib = Layout::for_limit(Some(8 << 20), PAGE).unwrap();
        for waiting in 1..=3 {
            assert_eq!(
                stream(mib, Some(8 << 20), &[257], waiting, n),
                0,
                "{waiting}"
            );
        }
        // No limit: the regions, then the tail; never a spill.
        let unlimited = small();
        assert_eq!(stream(unlimited, None, &[3, 7, 1], 20, n), 0);
    }

    #[test]
    fn a_range_that_cannot_run_on_gives_its_count_back() {
        let l = small();
        let cells = cells();
        let words = words_in(&cells, l);
        // Region 1 holds a live range (forged here): a range from the end
        // of region 0 cannot run on into it; region 0 gives its count
        // back, and the put goes on from region 2.
        cells[0].store(value_word(1, 6), Ordering::Relaxed);
        cells[1].store(value_word(1, 9), Ordering::Relaxed);
        assert_eq!(take(&words, 3 * PAGE, None).unwrap(), Some(9 * PAGE));
        assert_eq!(lives(&words), [1, 2, 0, 0, 0]);
        cells[1].store(value_word(1, 16), Ordering::Relaxed);
        assert_eq!(take(&words, 3 * PAGE, None).unwrap(), Some(16 * PAGE));
        assert_eq!(lives(&words), [1, 1, 1, 0, 0]);
        assert_eq!(
            split_word(cells[0].load(Ordering::Relaxed)),
            (1, 8),
            "region 0 full now"
        );
        assert_eq!(
            cells[REGION_WORDS].load(Ordering::Relaxed),
            2,
            "the hint moved"
        );
        // Under a limit that ends in region 2, and every region below it
        // with a live range and no room: spill, nothing counted.
        cells[2].store(value_word(1, 24), Ordering::Relaxed);
        let before = lives(&words);
        assert_eq!(take(&words, 3 * PAGE, Some(24 * PAGE)).unwrap(), None);
        assert_eq!(lives(&words), before);
    }

    #[test]
    fn giving_back_counts_down_to_0_and_never_below() {
        let l = small();
        let cells = cells();
        let words = words_in(&cells, l);
        let a = take(&words, 6 * PAGE, None).unwrap().unwrap();
        let b = take(&words, 4 * PAGE, None).unwrap().unwrap();
        assert_eq!((a, b), (0, 6 * PAGE));
        assert_eq!(lives(&words), [2, 1, 0, 0, 0]);
        release_range(&words, a, 6 * PAGE);
        assert_eq!(lives(&words), [1, 1, 0, 0, 0]);
        release_range(&words, b, 4 * PAGE);
        assert_eq!(lives(&words), [0; REGION_WORDS]);
        // A give-back too many (a forged record, a forged count of 0)
        // leaves the counts at 0, the cursors as they were; one outside
        // the offset space takes nothing off.
        release_range(&words, b, 4 * PAGE);
        assert_eq!(split_word(cells[1].load(Ordering::Relaxed)), (0, 10));
        cells[4].store(value_word(3, 40), Ordering::Relaxed);
        release_range(&words, l.space_end, PAGE);
        release_range(&words, u64::MAX - PAGE, PAGE);
        assert_eq!(split_word(cells[4].load(Ordering::Relaxed)), (3, 40));
        assert_eq!(one_less(value_word(0, 9)), None);
        assert_eq!(
            one_less(u64::MAX),
            Some(value_word(MAX_LIVE - 1, CURSOR_MASK))
        );
        // Any hint names some region.
        for hint in [5, 6, u64::MAX] {
            cells[REGION_WORDS].store(hint, Ordering::Relaxed);
            let at = take(&words, PAGE, None).unwrap().unwrap();
            release_range(&words, at, PAGE);
        }
        // Full counts everywhere spill; a forged cursor everywhere fails
        // typed and takes nothing.
        for cell in &cells[..REGION_WORDS] {
            cell.store(value_word(MAX_LIVE, 0), Ordering::Relaxed);
        }
        assert_eq!(take(&words, PAGE, None).unwrap(), None);
        for cell in &cells[..REGION_WORDS] {
            cell.store(value_word(1, CURSOR_MASK - 1), Ordering::Relaxed);
        }
        cells[TAIL].store(value_word(1, 0), Ordering::Relaxed);
        assert!(is_forged_word(&take(&words, PAGE, None)));
        assert_eq!(lives(&words), [1; REGION_WORDS]);
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

    /// A queue's value words in the heap, cut as a queue made without a
    /// file-size limit cuts its file.
    struct Heap {
        cells: [AtomicU64; REGION_WORDS + 1],
        layout: Layout,
    }

    impl Heap {
        fn new() -> Self {
            let page = crate::sys::page_size();
            Self {
                cells: std::array::from_fn(|_| AtomicU64::new(0)),
                layout: Layout::for_limit(None, page).unwrap(),
            }
        }

        fn words(&self) -> Words<'_> {
            Words {
                hint: &self.cells[REGION_WORDS],
                regions: std::array::from_fn(|r| &self.cells[r]),
                layout: self.layout,
            }
        }
    }

    #[test]
    fn a_value_round_trips_and_gives_its_memory_back() {
        let file = ValueFile::create().unwrap();
        let heap = Heap::new();
        let word = &heap.cells[0];
        let value: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let stored = file
            .store(heap.words(), &value[..10], &value[10..])
            .unwrap()
            .unwrap();
        let rec = stored.record();
        stored.keep();
        assert!(file.allocated_bytes() >= value.len() as u64);
        assert_eq!(live(word), 1);
        let second = file
            .store(heap.words(), b"x", b"yz")
            .unwrap()
            .unwrap()
            .record();
        assert_eq!(live(word), 1, "the unkept one is given back");
        let mut out = Vec::new();
        file.take_into(&heap.words(), &rec, &mut out).unwrap();
        assert_eq!(out, value);
        assert_eq!(live(word), 0);
        file.take_into(&heap.words(), &second, &mut out)
            .unwrap_err();
        assert_eq!(file.allocated_bytes(), 0, "given back, the unkept too");
        assert!(
            file.take_into(&heap.words(), &rec, &mut out).is_err(),
            "a value is read once"
        );
        assert_eq!(live(word), 0, "a refused record takes nothing off");
    }

    #[test]
    fn the_file_starts_over_when_no_value_is_live() {
        let page = crate::sys::page_size();
        let file = ValueFile::create().unwrap();
        let heap = Heap::new();
        let word = &heap.cells[0];
        let put = |fill: u8, len: usize| {
            let stored = file
                .store(heap.words(), &vec![fill; len], &[])
                .unwrap()
                .unwrap();
            let rec = stored.record();
            stored.keep();
            rec
        };
        let a = put(1, 3 * page as usize);
        let b = put(2, page as usize + 1);
        let offset = |rec: &[u8; RECORD_BYTES]| u64::from_le_bytes(rec[..8].try_into().unwrap());
        assert_eq!((offset(&a), offset(&b)), (0, 3 * page));
        let mut out = Vec::new();
        file.take_into(&heap.words(), &a, &mut out).unwrap();
        // `b` still waits: the next goes past it, not onto `a`'s range.
        let c = put(3, 10);
        assert_eq!(offset(&c), 5 * page);
        file.take_into(&heap.words(), &b, &mut out).unwrap();
        assert_eq!(out, vec![2; page as usize + 1]);
        file.take_into(&heap.words(), &c, &mut out).unwrap();
        assert_eq!(out, vec![3; 10]);
        // None waits: the next starts over at 0, and the file grows no more.
        let size = crate::sys::size_and_allocated(std::os::fd::AsFd::as_fd(&file.file))
            .unwrap()
            .0;
        for round in 0..10 {
            let d = put(round, 2 * page as usize);
            assert_eq!(offset(&d), 0, "round {round}");
            file.take_into(&heap.words(), &d, &mut out).unwrap();
            assert_eq!(out, vec![round; 2 * page as usize]);
        }
        let (size_after, allocated) =
            crate::sys::size_and_allocated(std::os::fd::AsFd::as_fd(&file.file)).unwrap();
        assert_eq!((size_after, allocated), (size, 0));
        assert_eq!(live(word), 0);
    }

    #[test]
    fn forged_records_and_words_are_typed_errors() {
        let page = crate::sys::page_size();
        let file = ValueFile::create().unwrap();
        let heap = Heap::new();
        let word = &heap.cells[0];
        let a = file.store(heap.words(), &[7; 5000], &[]).unwrap().unwrap();
        let a_rec = a.record();
        a.keep();
        // Past a gap never written (`a` is live, so the cursor counts): the
        // file is 1 MiB + a page long.
        word.store(value_word(1, (1 << 20) / page), Ordering::Relaxed);
        file.store(heap.words(), &[8; 100], &[])
            .unwrap()
            .unwrap()
            .keep();
        assert_eq!(live(word), 2);
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
            let got = file.take_into(&heap.words(), &rec, &mut out);
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
        assert_eq!(live(word), 2, "refused records take nothing off");
        file.take_into(&heap.words(), &a_rec, &mut out).unwrap();
        assert_eq!(out, vec![7; 5000]);
        assert!(
            matches!(
                file.take_into(&heap.words(), &a_rec, &mut out),
                Err(Error::Decode { .. })
            ),
            "given back: a hole now"
        );
        assert_eq!(live(word), 1);
        // The cursor forged to the end of its space while values are live:
        // the put fails, typed, and leaves nothing in the file, nor in the
        // count.
        let before = file.allocated_bytes();
        let forge_all = |forged: u64| {
            for cell in &heap.cells[..REGION_WORDS] {
                cell.store(forged, Ordering::Relaxed);
            }
        };
        for forged in [
            value_word(1, CURSOR_MASK),
            value_word(MAX_LIVE - 1, CURSOR_MASK - 1),
        ] {
            // Only one region forged: the put goes into another.
            word.store(forged, Ordering::Relaxed);
            let went = file.store(heap.words(), &[1; 4097], &[]).unwrap().unwrap();
            assert_ne!(heap.layout.regions_of(went.offset, 2 * page), Some((0, 0)));
            drop(went);
            // Every region: no room anywhere, typed.
            forge_all(forged);
            let got = file.store(heap.words(), &[1; 4097], &[]);
            assert!(is_forged(&got), "{forged:#x}: {got:?}");
            assert_eq!(word.load(Ordering::Relaxed), forged);
            forge_all(0);
            word.store(value_word(1, 0), Ordering::Relaxed);
        }
        assert_eq!(file.allocated_bytes(), before);
        // Full live counts: spilled (None), nothing left in the file.
        forge_all(value_word(MAX_LIVE, 0));
        assert!(file.store(heap.words(), &[1; 4097], &[]).unwrap().is_none());
        assert_eq!(file.allocated_bytes(), before);
        // The same cursor with no value live is ignored: the put starts over.
        forge_all(value_word(0, CURSOR_MASK));
        heap.cells[REGION_WORDS].store(0, Ordering::Relaxed);
        let healed = file.store(heap.words(), &[9; 4097], &[]).unwrap().unwrap();
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
        let got = file.take_into(&Heap::new().words(), &record(0, 1 << 30), &mut out);
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
        let heap = Heap::new();
        let word = &heap.cells[0];
        let a = file
            .store(heap.words(), &[1; 10_000], &[])
            .unwrap()
            .unwrap();
        let a_rec = a.record();
        a.keep();
        // A hostile holder says nothing is live: the next put starts over
        // on `a`'s range.
        word.store(value_word(0, 3), Ordering::Relaxed);
        let b = file.store(heap.words(), &[2; 5000], &[]).unwrap().unwrap();
        let b_rec = b.record();
        b.keep();
        let mut out = Vec::new();
        // `a`'s record reads what is there now (a wrong value of the right
        // length, bounded by its record), and gives the range back ...
        file.take_into(&heap.words(), &a_rec, &mut out).unwrap();
        assert_eq!(out.len(), 10_000);
        assert_eq!(&out[..5000], &[2; 5000][..]);
        // ... so `b`'s finds a hole: a typed error, and no count below 0.
        let got = file.take_into(&heap.words(), &b_rec, &mut out);
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        assert_eq!(live(word), 0);
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
