//! Shared segments that travel between processes as handles, and how long
//! they live.
//!
//! A [`SharedSegment`] is a sealed memfd created by one process. Its handle
//! on the wire is `(sender pid, fd number, device, inode, length, type tag)`,
//! naming the *sending* process's own descriptor; a receiving process first
//! names `/proc/<sender>/fd/<fd>` without opening it (`O_PATH`) and checks
//! that it is a memfd and the same file (device and inode), only then opens
//! it (without waiting) and checks that it is sealed against resizing and
//! large enough for the length the handle claims. Handles may come from
//! untrusted workers, so every check runs on every decode.
//!
//! **Lifetime.** The last 64 bytes of every such segment are a trailer
//! holding an *in-flight count*: writing a handle ([`SharedSegment::encode`])
//! adds one, decoding one subtracts one (saturating at 0), and an encoding
//! that is never sent takes its one back ([`crate::wire::Transit`]). A
//! process that sent the object and drops its last copy while the count is
//! above 0 does not close it: the descriptor and mapping *linger* in a
//! per-process list, swept on later activity ([`sweep`]), until the count
//! reads 0. So a receiver can open what it was sent even if the sender
//! dropped its copy first, and nothing is kept once nothing is in flight.
//! The count lives in shared memory and is untrusted: a forged value can
//! only make an object be let go early (its receiver then gets a typed
//! decode error) or linger until the list's bound ([`MAX_LINGERING`]
//! objects, the oldest let go first) or the process's exit.
//!
//! **Received mappings are kept** ([`cache`]). A receiver keeps what it
//! mapped in a cache ([`MAX_OPENED`](cache::MAX_OPENED) entries, least
//! recently used first) after its last handle drops, so that an iterative
//! kernel that sends the same arrays call after call maps them once:
//! unmapping and mapping again re-faults every page (a user trial's Jacobi
//! stencil spent 20-30% of its time in page faults). A kept mapping holds
//! the object's memory alive, so it is let go as soon as it is likely
//! useless:
//! - when its creator has let go of it: the creator marks the trailer as it
//!   drops its last copy ([`RELEASED_WORD`]), and a receiver looks at the
//!   mark as its own last handle drops ([`dropping`]) and on each
//!   [`sweep`]; a cache miss also forgets mappings whose sender no longer
//!   holds the descriptor (`/proc`);
//! - when evicted: past [`MAX_OPENED`](cache::MAX_OPENED) entries or
//!   [`keep_bytes`](cache::keep_bytes) bytes of mappings nothing here uses,
//!   the least recently used go first;
//! - when its process goes idle: a pool worker asks [`idle_recheck`] before
//!   it sleeps for want of tasks, and what it has not used for
//!   [`IDLE_KEEP`](cache::IDLE_KEEP) goes.
//!
//! The mark is untrusted like the count: a forged mark only makes a
//! receiver map the object again; a cleared one only keeps a freed object
//! until one of the other rules lets it go. A kept mapping is always of the
//! very file the handle names (same device and inode, and the open
//! descriptor keeps the inode from being reused), so it never reads
//! another object's memory.

mod cache;

pub(crate) use cache::{dropping, forget_unused_mappings, idle_recheck};
use cache::{open, tidy_cache, CACHED, MAY_KEEP, OPENED};

use crate::error::Result;
use crate::shm::peer::{self, Access, OpenError};
use crate::shm::Segment;
use crate::sys::{self, FileId};
use crate::wire::{decode_error, Encoder, Transit, Wire};
use std::ffi::CStr;
use std::mem::ManuallyDrop;
use std::os::fd::AsFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes of the trailer at the end of every shared object's segment.
pub(crate) const TRAILER: usize = 64;

/// The most objects one process keeps lingering for receivers; past it the
/// oldest is let go (its receiver, if one ever comes, gets a decode error).
pub(crate) const MAX_LINGERING: usize = 1024;

/// How long a child (a `Process`, a pool worker) that is done waits at its
/// exit for receivers of what it sent ([`linger_at_exit`]).
pub(crate) const EXIT_LINGER: Duration = Duration::from_secs(5);

/// The trailer's word that the creator sets as it lets go of its last copy
/// (an index in 4-byte words: after the in-flight count and its waiters).
const RELEASED_WORD: usize = 2;

/// One mapping of a shared memfd in this process.
#[derive(Debug)]
pub(crate) struct SharedSegment {
    seg: ManuallyDrop<Segment>,
    id: FileId,
    /// The process whose descriptor this mapping was opened through, and
    /// that descriptor (ourselves, for a segment we created).
    owner: i32,
    fd: i32,
    /// Whether this process wrote a handle to it (naming its descriptor):
    /// then it lingers on its last drop while handles are in flight.
    sent: AtomicBool,
    /// Whether this process created it (rather than opened a handle).
    created: bool,
    /// When it was last decoded or dropped by a user here
    /// ([`sys::coarse_now`], in nanoseconds): for [`idle_recheck`].
    last_used: AtomicU64,
    /// What this process keeps open for exactly as long as this mapping,
    /// lingering included ([`keep_with`](Self::keep_with)).
    companion: OnceLock<Companion>,
}

/// Something a process keeps open along with its mapping of a segment,
/// because receivers of the segment's handle open it through this
/// process's descriptor too: a queue's value file
/// ([`crate::shm::values`]), named in the queue's handle beside the
/// queue's own memory. Unwind-safe, so that the public types holding
/// segments stay so.
pub(crate) type Companion =
    Arc<dyn std::fmt::Debug + Send + Sync + std::panic::RefUnwindSafe + std::panic::UnwindSafe>;

/// A segment kept for its receivers ([`LINGER`]), with its companion.
#[derive(Debug)]
struct Lingering {
    seg: Segment,
    /// Kept open as long as `seg`: never read, holding it is the point.
    _companion: Option<Companion>,
}

/// Segments this process sent and dropped while handles to them were in
/// flight, oldest first; [`LINGERING`] mirrors its length for a lock-free
/// "nothing to sweep" (Relaxed everywhere: a hint, stored under the lock; a
/// stale 0 only delays a sweep to the next call, a stale non-zero costs one
/// lock).
static LINGER: Mutex<Vec<Lingering>> = Mutex::new(Vec::new());
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Handles this process received but could not open for want of its own
/// descriptors or memory (`is_own_limit`): their transit is not ended yet,
/// so their senders keep the objects. Ended by a later [`sweep`] once the
/// open succeeds (or the object is gone); at most [`MAX_UNCOUNTED`], the
/// oldest given up first (its sender then keeps it until its own bound or
/// exit). [`UNCOUNTING`] mirrors the length as [`LINGERING`] does.
static UNCOUNTED: Mutex<Vec<(i32, i32, u64, u64)>> = Mutex::new(Vec::new());
static UNCOUNTING: AtomicUsize = AtomicUsize::new(0);
const MAX_UNCOUNTED: usize = 64;

/// The in-flight count and its waiter count, in `seg`'s trailer; `None` if
/// the segment is too small or its size not a multiple of 64 (only a hostile
/// file: every segment corepool creates has one).
fn trailer(seg: &Segment) -> Option<(&AtomicU32, &AtomicU32)> {
    let len = seg.len();
    if len < TRAILER || len % TRAILER != 0 {
        return None;
    }
    let p = seg.at(len - TRAILER, 8)?;
    // SAFETY: in bounds (checked by `at`); 64-aligned (the mapping is
    // page-aligned, `len - 64` a multiple of 64); the words live as long as
    // `seg`, to which the references are tied; every process touches them
    // only atomically.
    Some(unsafe {
        (
            AtomicU32::from_ptr(p.cast()),
            AtomicU32::from_ptr(p.add(4).cast()),
        )
    })
}

/// The trailer's creator-released mark in `seg` (see the module docs);
/// `None` as for [`trailer`].
fn released_mark(seg: &Segment) -> Option<&AtomicU32> {
    let len = seg.len();
    if len < TRAILER || len % TRAILER != 0 {
        return None;
    }
    let p = seg.at(len - TRAILER + 4 * RELEASED_WORD, 4)?;
    // SAFETY: in bounds (checked by `at`); 4-aligned (a 64-aligned trailer
    // plus a multiple of 4); the word lives as long as `seg`, to which the
    // reference is tied; every process touches it only atomically.
    Some(unsafe { AtomicU32::from_ptr(p.cast()) })
}

/// Whether the creator of `seg` has marked it let go (a hint: untrusted).
fn released_by_creator(seg: &Segment) -> bool {
    // Acquire: pairs with the creator's Release store in `Drop`.
    released_mark(seg).is_some_and(|w| w.load(Ordering::Acquire) != 0)
}

/// Subtracts one from an in-flight count, never below 0; wakes a process
/// waiting for it at exit once it reaches 0.
fn count_down(seg: &Segment) {
    let Some((count, waiters)) = trailer(seg) else {
        return;
    };
    // AcqRel: pairs with the sender's increment (`count_up`) and with the
    // lingering owner's Acquire load in `sweep`.
    let before = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    if before == Ok(1) {
        // SeqCst fence: pairs with the one in `wait_for_zero` (a waiter
        // either sees 0 or is counted here before we look).
        fence(Ordering::SeqCst);
        if waiters.load(Ordering::Relaxed) != 0 {
            sys::futex_wake_all(count);
        }
    }
}

/// Adds one to an in-flight count (saturating).
fn count_up(seg: &Segment) {
    if let Some((count, _)) = trailer(seg) {
        // AcqRel: pairs with the receiver's decrement in `count_down`.
        let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_add(1));
    }
}

/// Whether handles to `seg` are in flight.
fn in_flight(seg: &Segment) -> bool {
    // Acquire: pairs with the receivers' AcqRel decrements: once 0 is read,
    // every receiver has opened its own mapping.
    trailer(seg).is_some_and(|(count, _)| count.load(Ordering::Acquire) != 0)
}

/// Lets go of lingering objects that nothing is in flight to any more, and
/// of kept mappings their creator let go or past the cache's byte bound
/// ([`tidy_cache`]). Three atomic loads when nothing lingers and nothing is
/// kept: callers run it on every send, receive and task.
#[inline]
pub(crate) fn sweep() {
    if LINGERING.load(Ordering::Relaxed) != 0 {
        sweep_lingering();
    }
    if MAY_KEEP.load(Ordering::Relaxed) {
        tidy_cache(false);
    }
    if UNCOUNTING.load(Ordering::Relaxed) != 0 {
        count_down_later_ones();
    }
}

/// Remembers a handle this process could not open for its own reasons, to
/// end its transit later ([`UNCOUNTED`]).
fn count_down_later(handle: (i32, i32, u64, u64)) {
    let mut later = crate::sync::lock(&UNCOUNTED);
    if later.len() >= MAX_UNCOUNTED {
        later.remove(0);
    }
    later.push(handle);
    UNCOUNTING.store(later.len(), Ordering::Relaxed);
}

/// Ends the transit of the handles [`count_down_later`] kept, as far as
/// they open now; keeps those this process still cannot open. No lock is
/// held across the opens.
#[cold]
fn count_down_later_ones() {
    let handles = {
        let mut later = crate::sync::lock(&UNCOUNTED);
        UNCOUNTING.store(0, Ordering::Relaxed);
        std::mem::take(&mut *later)
    };
    let mut still = Vec::new();
    for (owner, fd, dev, ino) in handles {
        match open_uncached(owner, fd, dev, ino, 0) {
            Ok(seg) => count_down(&seg.seg),
            Err(OpenError::OwnLimit { .. }) => still.push((owner, fd, dev, ino)),
            // Gone, or not the same file any more: nothing to end.
            Err(OpenError::Refused(_)) => {}
        }
    }
    if !still.is_empty() {
        let mut later = crate::sync::lock(&UNCOUNTED);
        still.append(&mut later);
        let excess = still.len().saturating_sub(MAX_UNCOUNTED);
        still.drain(..excess);
        *later = still;
        UNCOUNTING.store(later.len(), Ordering::Relaxed);
    }
}

#[cold]
fn sweep_lingering() {
    let freed: Vec<Lingering> = {
        let mut linger = crate::sync::lock(&LINGER);
        let (gone, kept): (Vec<Lingering>, Vec<Lingering>) = std::mem::take(&mut *linger)
            .into_iter()
            .partition(|s| !in_flight(&s.seg));
        *linger = kept;
        LINGERING.store(linger.len(), Ordering::Relaxed);
        gone
    };
    // Unmapped and closed outside the lock.
    drop(freed);
}

/// How many objects this process keeps for receivers, after a sweep.
pub(crate) fn lingering() -> usize {
    sweep();
    LINGERING.load(Ordering::Relaxed)
}

/// Lets go of every lingering object at once, as a process that dies does
/// (tests).
#[cfg(feature = "fault-injection")]
pub(crate) fn forget_lingering() {
    let gone = std::mem::take(&mut *crate::sync::lock(&LINGER));
    LINGERING.store(0, Ordering::Relaxed);
    drop(gone);
}

/// Whether this process keeps objects for receivers, after a sweep.
pub(crate) fn lingering_now() -> bool {
    lingering() != 0
}

/// At a child's exit: waits until no object this process lingers for is in
/// flight any more, or `bound` has passed (then they go with the process:
/// a receiver that comes later gets a decode error). Returns at once when
/// nothing lingers.
pub(crate) fn linger_at_exit(bound: Duration) {
    // Mappings this process received and sent on stay in the cache while a
    // handle to them is in flight (`dropping`): let the cache go, so that
    // those whose last user is gone move to the lingering list (their
    // `Drop`) and are waited for below like the objects this process made.
    // Without this, a child that handed back what it was given (a pipe end,
    // an array) exited at once, and its receiver could no longer open it.
    let cached = {
        let mut opened = crate::sync::lock(&OPENED);
        CACHED.store(0, Ordering::Relaxed);
        std::mem::take(&mut *opened)
    };
    drop(cached);
    let deadline = Instant::now().checked_add(bound);
    loop {
        sweep();
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return;
        }
        // Taken out of the list while we wait on it, so that no lock is
        // held across the wait; put back if still in flight.
        let Some(kept) = ({
            let mut linger = crate::sync::lock(&LINGER);
            (!linger.is_empty()).then(|| linger.remove(0))
        }) else {
            return;
        };
        if let Some((count, waiters)) = trailer(&kept.seg) {
            // Relaxed: ordered by the SeqCst fence that follows.
            waiters.fetch_add(1, Ordering::Relaxed);
            // SeqCst fence: pairs with the one in `count_down`.
            fence(Ordering::SeqCst);
            let now = count.load(Ordering::Acquire);
            if now != 0 {
                // A bounded slice: a forged waiter word may never wake us.
                let slice = left.map_or(Duration::from_millis(100), |l| {
                    l.min(Duration::from_millis(100))
                });
                sys::futex_wait(count, now, Some(slice));
            }
            waiters.fetch_sub(1, Ordering::Relaxed);
        }
        if in_flight(&kept.seg) {
            let mut linger = crate::sync::lock(&LINGER);
            linger.push(kept);
            LINGERING.store(linger.len(), Ordering::Relaxed);
        } else {
            drop(kept);
            let linger = crate::sync::lock(&LINGER);
            LINGERING.store(linger.len(), Ordering::Relaxed);
        }
    }
}

/// Keeps `seg`, and what is kept open with it, for its receivers (see the
/// module docs).
fn linger(seg: Segment, companion: Option<Companion>) {
    let evicted = {
        let mut linger = crate::sync::lock(&LINGER);
        linger.push(Lingering {
            seg,
            _companion: companion,
        });
        let evicted = if linger.len() > MAX_LINGERING {
            Some(linger.remove(0))
        } else {
            None
        };
        LINGERING.store(linger.len(), Ordering::Relaxed);
        evicted
    };
    drop(evicted);
}

impl Drop for SharedSegment {
    fn drop(&mut self) {
        // SAFETY: `seg` is taken once, here, and never touched again.
        let seg = unsafe { ManuallyDrop::take(&mut self.seg) };
        let companion = self.companion.take();
        // Relaxed: the last `Arc` drop (Acquire) orders every `encode`'s
        // store of `sent` before this load.
        let sent = self.sent.load(Ordering::Relaxed);
        if self.created && sent {
            // Receivers that keep a mapping of it may let it go now.
            // Release pairs with the Acquire load in `released_by_creator`.
            if let Some(mark) = released_mark(&seg) {
                mark.store(1, Ordering::Release);
            }
        }
        if sent && in_flight(&seg) {
            linger(seg, companion);
        } else {
            drop((seg, companion));
        }
        sweep();
    }
}

/// An in-flight count taken back when the bytes holding the handle are not
/// sent after all.
struct Counted(Arc<SharedSegment>);

impl Transit for Counted {
    fn abandon(&self) {
        count_down(&self.0.seg);
    }
}

impl SharedSegment {
    /// A new zero-filled segment with room for `bytes`, created by this
    /// process (the in-flight trailer comes after them).
    pub(crate) fn create(name: &CStr, bytes: usize) -> Result<Arc<Self>> {
        sweep();
        let len = bytes
            .checked_next_multiple_of(TRAILER)
            .and_then(|b| b.checked_add(TRAILER))
            .ok_or_else(|| crate::Error::InvalidConfig {
                what: format!("a shared object of {bytes} bytes is too large"),
            })?;
        check_address_space_for(len)?;
        let seg = Segment::create(name, len)?;
        let id = seg.identity()?;
        let fd = seg.raw_fd();
        Ok(Arc::new(Self {
            seg: ManuallyDrop::new(seg),
            id,
            owner: std::process::id() as i32,
            fd,
            sent: AtomicBool::new(false),
            created: true,
            last_used: AtomicU64::new(0),
            companion: OnceLock::new(),
        }))
    }

    /// Notes that a user here decoded or dropped it now (for
    /// [`idle_recheck`]; Relaxed: a hint read under the cache lock).
    fn touch(&self) {
        let now = u64::try_from(sys::coarse_now().as_nanos()).unwrap_or(u64::MAX);
        self.last_used.store(now, Ordering::Relaxed);
    }

    /// The mapping's base address.
    pub(crate) fn base(&self) -> *mut u8 {
        self.seg.base()
    }

    /// The underlying segment (bounds-checked pointers; its length includes
    /// the trailer, see [`usable_len`](Self::usable_len)).
    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    /// The bytes before the trailer: the object's own.
    pub(crate) fn usable_len(&self) -> usize {
        self.seg.len() - TRAILER
    }

    /// Whether no other process can have it: created here and no handle to
    /// it ever written (a forked copy of this process aside).
    pub(crate) fn is_private(&self) -> bool {
        self.created && !self.sent.load(Ordering::Relaxed)
    }

    /// The process whose descriptor this mapping came through.
    pub(crate) fn owner(&self) -> i32 {
        self.owner
    }

    /// Keeps `companion` open in this process for exactly as long as this
    /// mapping, including while it lingers for receivers after its last
    /// user here dropped it: a handle of the segment sent from here may
    /// name `companion`'s descriptor too (a queue's value file), and a
    /// receiver opens both. The first companion given stays; a later one
    /// is dropped here (it can only be the same file, or a forged one).
    pub(crate) fn keep_with(&self, companion: Companion) {
        let _ = self.companion.set(companion);
    }

    /// Overwrites the in-flight count, as a hostile process could (tests).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn forge_in_flight(&self, count: u32) {
        if let Some((word, _)) = trailer(&self.seg) {
            // Release pairs with the Acquire load in `in_flight`, as the
            // real increments (`count_up`) do.
            word.store(count, Ordering::Release);
        }
    }

    /// Handles to it in flight now (tests).
    #[cfg(all(test, not(miri)))]
    pub(crate) fn in_flight_count(&self) -> u32 {
        // Acquire pairs with the AcqRel updates in `count_up` and
        // `count_down`.
        trailer(&self.seg).map_or(0, |(c, _)| c.load(Ordering::Acquire))
    }

    /// Writes the handle, naming this process's own descriptor, and counts
    /// it in flight until a receiver decodes it (or `out`'s sender takes it
    /// back, see [`crate::wire::Transit`]). The encoder also keeps the
    /// object alive with the carrier, for carriers that hold it (pool tasks).
    pub(crate) fn encode(self: &Arc<Self>, tag: u64, len: u64, out: &mut Encoder) {
        sweep();
        self.sent.store(true, Ordering::Relaxed);
        count_up(&self.seg);
        out.started_transit(Arc::new(Counted(self.clone())));
        out.keep_alive(self.clone());
        let me = std::process::id() as i32;
        (me, self.seg.raw_fd(), self.id.dev, self.id.ino, len, tag).encode(out);
    }

    /// Reads a handle written by [`encode`](Self::encode) for a value of type
    /// `T` with type tag `tag`; `bytes_for(len)` is the size the object
    /// must have for that length (`None`: overflow). Returns the mapping and
    /// the length, and ends the handle's transit.
    pub(crate) fn decode<T>(
        input: &mut &[u8],
        tag: u64,
        bytes_for: impl Fn(u64) -> Option<u64>,
    ) -> Result<(Arc<Self>, u64)> {
        let (owner, fd, dev, ino, len, got) = <(i32, i32, u64, u64, u64, u64)>::decode(input)?;
        if got != tag {
            return Err(decode_error::<T>("the handle is for another element type"));
        }
        let bytes = bytes_for(len)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| decode_error::<T>("length overflows"))?;
        let map = open(owner, fd, dev, ino, bytes).map_err(|e| {
            if matches!(e, OpenError::OwnLimit { .. }) {
                count_down_later((owner, fd, dev, ino));
            }
            e.into_error::<T>(OPEN_STEP)
        })?;
        map.touch();
        count_down(&map.seg);
        sweep();
        Ok((map, len))
    }

    /// As [`decode`](Self::decode), for a segment read once (a spill): its
    /// mapping is not cached, so it goes as soon as the caller drops it.
    pub(crate) fn decode_one_off<T>(
        input: &mut &[u8],
        tag: u64,
        bytes_for: impl Fn(u64) -> Option<u64>,
    ) -> Result<(Self, u64)> {
        let (owner, fd, dev, ino, len, got) = <(i32, i32, u64, u64, u64, u64)>::decode(input)?;
        if got != tag {
            return Err(decode_error::<T>(
                "the handle is for another kind of object",
            ));
        }
        let bytes = bytes_for(len)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| decode_error::<T>("length overflows"))?;
        let map = open_uncached(owner, fd, dev, ino, bytes).map_err(|e| {
            if matches!(e, OpenError::OwnLimit { .. }) {
                count_down_later((owner, fd, dev, ino));
            }
            e.into_error::<T>(OPEN_STEP)
        })?;
        count_down(&map.seg);
        sweep();
        Ok((map, len))
    }
}

/// Segments from this size up are checked against the address-space
/// limit's room before their memory is reserved ([`check_address_space_for`]);
/// smaller ones are not worth reading `/proc` for (spills are made
/// thousands of times a second), and a refused mmap of them wastes little.
const CHECKED_MAPPING: usize = 64 << 20;

/// Refuses at once a segment that this process's address-space limit
/// (`ulimit -v`, RLIMIT_AS) leaves no room to map. Creation reserves the
/// memory (`fallocate`, so that a full tmpfs is an error there) before it
/// maps it: under the limit, a user trial's 8 GiB array committed 8 GiB of
/// RAM for 1.6-2.6 s before the mmap failed. The error is the one the mmap
/// would give (ENOMEM, whose advice names `ulimit -v`); the step's name says
/// it was checked first. Costs one `getrlimit` without a limit; with one,
/// a read of `/proc/self/status` for segments from [`CHECKED_MAPPING`] up.
fn check_address_space_for(len: usize) -> Result<()> {
    // Under Miri segments are heap memory, and it cannot make the calls.
    if cfg!(miri) || !sys::has_address_space_limit() {
        return Ok(());
    }
    let too_large = |left: Option<u64>| left.is_some_and(|left| len as u64 > left);
    if len < CHECKED_MAPPING || !too_large(sys::address_space_left()) {
        return Ok(());
    }
    // Mappings this process keeps (see the module docs) take address
    // space too: let go of those nothing uses, and look again.
    if CACHED.load(Ordering::Relaxed) != 0 {
        forget_unused_mappings();
        if !too_large(sys::address_space_left()) {
            return Ok(());
        }
    }
    Err(crate::Error::shm(
        "mmap (the address-space limit, checked before reserving the memory)",
        std::io::Error::from_raw_os_error(libc::ENOMEM),
    ))
}

/// The step named in the error when this process cannot open or map what a
/// handle names for want of its own descriptors or memory.
pub(crate) const OPEN_STEP: &str = "opening a shared object a handle names";

/// Whether `err` is this process's own want of descriptors or memory as it
/// opened what a handle names (EMFILE, ENFILE, ENOMEM), rather than a
/// handle that does not open: the sender is not to blame.
pub(crate) fn is_own_limit(err: &crate::Error) -> bool {
    match err {
        crate::Error::SharedMemory { op, source } => *op == OPEN_STEP && peer::is_own_limit(source),
        _ => false,
    }
}

/// Maps the segment a handle names (the checks every peer's memfd gets:
/// [`peer::open_memfd`]), sealed against resizing and holding at least
/// `bytes` before its trailer.
fn open_uncached(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    bytes: usize,
) -> std::result::Result<SharedSegment, OpenError> {
    let path = format!("/proc/{owner}/fd/{fd}");
    let (file, _) = peer::open_memfd(
        owner,
        fd,
        (dev, ino),
        Access::ReadWrite,
        // Read in "is the process holding ... alive?" when the sender is
        // gone: an object named inside a queued value, which the process
        // that put it keeps 5 s past its exit, is the common case.
        "a corepool shared object (an array, a queue, a pipe end, or a spilled result, which a process that exits keeps for at most 5 s)",
    )?;
    // Only a memfd sealed against resizing: never map an arbitrary file a
    // worker names, nor one that could shrink under us.
    if !sys::is_size_sealed(file.as_fd()) {
        return Err(OpenError::Refused(format!(
            "{path} is not a corepool shared object (not a size-sealed memfd)"
        )));
    }
    let seg = Segment::open(file).map_err(|e| match e {
        crate::Error::SharedMemory { op, source } => OpenError::from_call(op.into(), source),
        other => OpenError::Refused(other.to_string()),
    })?;
    let id = seg
        .identity()
        .map_err(|e| OpenError::Refused(e.to_string()))?;
    if id.dev != dev || id.ino != ino {
        return Err(OpenError::Refused(format!(
            "{path} is no longer the same memory (closed, and the number reused)"
        )));
    }
    if trailer(&seg).is_none() || seg.len() - TRAILER < bytes {
        return Err(OpenError::Refused(format!(
            "the shared memory holds {} bytes, the handle says {bytes} (and a 64-byte trailer)",
            seg.len()
        )));
    }
    Ok(SharedSegment {
        seg: ManuallyDrop::new(seg),
        id,
        owner,
        fd,
        sent: AtomicBool::new(false),
        created: false,
        last_used: AtomicU64::new(0),
        companion: OnceLock::new(),
    })
}

/// A tag for type `T` (its name and size), so that a handle for one type is
/// never decoded as another.
pub(crate) fn type_tag<T>() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::any::type_name::<T>().hash(&mut h);
    std::mem::size_of::<T>().hash(&mut h);
    h.finish()
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::cache::IDLE_KEEP;
    use super::*;

    fn handle_of(seg: &Arc<SharedSegment>) -> (Vec<u8>, crate::wire::Carried) {
        let mut out = Encoder::new();
        seg.encode(7, 0, &mut out);
        out.check().unwrap();
        let carried = out.take_carried();
        (out.take_bytes(), carried)
    }

    #[test]
    fn a_handle_counts_in_flight_until_decoded_or_taken_back() {
        let seg = SharedSegment::create(c"corepool-test", 100).unwrap();
        assert_eq!(seg.usable_len(), 128);
        let (bytes, mut carried) = handle_of(&seg);
        assert_eq!(seg.in_flight_count(), 1);
        carried.sent();
        drop(carried);
        let (opened, _) = SharedSegment::decode::<u8>(&mut bytes.as_slice(), 7, Some).unwrap();
        assert_eq!(seg.in_flight_count(), 0, "the decode ended it");
        drop(opened);
        // Not sent: dropping what the encoding carries takes it back.
        let (_, carried) = handle_of(&seg);
        assert_eq!(seg.in_flight_count(), 1);
        drop(carried);
        assert_eq!(seg.in_flight_count(), 0);
    }

    #[test]
    fn a_dropped_sender_lingers_until_its_receiver_opened_it() {
        let seg = SharedSegment::create(c"corepool-test", 64).unwrap();
        let id = (seg.id.dev, seg.id.ino);
        let (bytes, mut carried) = handle_of(&seg);
        carried.sent();
        drop(carried);
        drop(seg); // the sender's last copy, while in flight
        let lingers = || {
            crate::sync::lock(&LINGER)
                .iter()
                .any(|s| s.seg.identity().is_ok_and(|i| (i.dev, i.ino) == id))
        };
        assert!(lingers(), "kept for the receiver");
        let opened = SharedSegment::decode_one_off::<u8>(&mut bytes.as_slice(), 7, Some);
        assert!(opened.is_ok(), "the receiver opens what its sender dropped");
        sweep();
        assert!(!lingers(), "let go once received");
    }

    #[test]
    fn a_forged_count_only_lets_the_object_go_early() {
        let seg = SharedSegment::create(c"corepool-test", 64).unwrap();
        let (bytes, mut carried) = handle_of(&seg);
        carried.sent();
        drop(carried);
        // A hostile process zeroes the count: the sender lets go at once.
        trailer(&seg.seg).unwrap().0.store(0, Ordering::Release);
        drop(seg);
        let opened = SharedSegment::decode_one_off::<u8>(&mut bytes.as_slice(), 7, Some);
        assert!(matches!(opened, Err(crate::Error::Decode { .. })));
    }

    fn cached(id: (u64, u64)) -> bool {
        crate::sync::lock(&OPENED)
            .iter()
            .any(|m| (m.id.dev, m.id.ino) == id)
    }

    /// Sends `seg` to this process, decodes it and drops the received copy
    /// as a `SharedArray` does; returns the received mapping's base.
    fn receive_and_drop(seg: &Arc<SharedSegment>) -> usize {
        let (bytes, mut carried) = handle_of(seg);
        carried.sent();
        drop(carried);
        let (opened, _) = SharedSegment::decode::<u8>(&mut bytes.as_slice(), 7, Some).unwrap();
        let base = opened.base() as usize;
        dropping(&opened);
        drop(opened);
        base
    }

    #[test]
    fn a_received_mapping_is_kept_until_its_creator_lets_go() {
        let seg = SharedSegment::create(c"corepool-test", 4096).unwrap();
        let id = (seg.id.dev, seg.id.ino);
        let first = receive_and_drop(&seg);
        let _ = tidy_cache(false);
        assert!(cached(id), "kept after its last handle dropped");
        assert_eq!(receive_and_drop(&seg), first, "the next handle reuses it");
        drop(seg); // the creator lets go: it marks the trailer
        let _ = tidy_cache(false);
        assert!(!cached(id), "let go once its creator did");
    }

    #[test]
    fn a_forged_mark_only_costs_a_new_mapping() {
        let seg = SharedSegment::create(c"corepool-test", 4096).unwrap();
        let id = (seg.id.dev, seg.id.ino);
        receive_and_drop(&seg);
        assert!(cached(id));
        // A hostile holder marks it let go while its creator holds it.
        released_mark(&seg.seg).unwrap().store(1, Ordering::Release);
        let _ = tidy_cache(false);
        assert!(!cached(id), "let go early");
        // Mapped again, the same memory.
        // SAFETY: in bounds of the 4096 usable bytes; this test's memory.
        unsafe { seg.base().add(100).write_volatile(42) };
        let (bytes, mut carried) = handle_of(&seg);
        carried.sent();
        drop(carried);
        let (again, _) = SharedSegment::decode::<u8>(&mut bytes.as_slice(), 7, Some).unwrap();
        // SAFETY: as above, in the receiver's mapping of the same file.
        assert_eq!(unsafe { again.base().add(100).read_volatile() }, 42);
    }

    #[test]
    fn an_idle_process_lets_go_of_what_it_kept() {
        let seg = SharedSegment::create(c"corepool-test", 4096).unwrap();
        let id = (seg.id.dev, seg.id.ino);
        receive_and_drop(&seg);
        assert!(cached(id));
        // Busy: kept, however long ago it was used.
        let stale = |at: u64| {
            let opened = crate::sync::lock(&OPENED);
            let m = opened.iter().find(|m| (m.id.dev, m.id.ino) == id).unwrap();
            m.last_used.store(at, Ordering::Relaxed);
        };
        stale(0);
        let _ = tidy_cache(false);
        assert!(cached(id), "a sweep keeps what is merely old");
        // Used just now: kept, and the idle check says when to look again.
        stale(u64::try_from(sys::coarse_now().as_nanos()).unwrap());
        let again = idle_recheck();
        assert!(cached(id));
        assert!(again.is_some_and(|d| d <= IDLE_KEEP), "{again:?}");
        // Unused for IDLE_KEEP: an idle process lets go of it.
        stale(0);
        let _ = idle_recheck();
        assert!(!cached(id), "let go when idle");
    }

    #[test]
    fn a_hostile_trailer_never_underflows() {
        let seg = SharedSegment::create(c"corepool-test", 64).unwrap();
        for _ in 0..3 {
            count_down(&seg.seg);
        }
        assert_eq!(seg.in_flight_count(), 0, "saturates at 0");
        trailer(&seg.seg)
            .unwrap()
            .0
            .store(u32::MAX, Ordering::Release);
        count_up(&seg.seg);
        assert_eq!(seg.in_flight_count(), u32::MAX, "saturates at the top");
    }
}
