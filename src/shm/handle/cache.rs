//! The cache of mappings this process received ([`OPENED`]): a mapping is
//! reused by the next handle to the same object and kept after its last
//! user drops, until its creator lets the object go, the cache's bounds
//! evict it, or the process idles (see the lifetime rules in the parent
//! module's docs).

use super::{in_flight, lingering_now, open_uncached, released_by_creator, SharedSegment};
use crate::shm::peer::OpenError;
use crate::sys;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a pool worker that sleeps for want of tasks keeps mappings it
/// received and no longer uses ([`idle_recheck`]). Mapping 32 MiB again
/// and faulting its pages in costs a few milliseconds, so keeping them
/// for a second bounds what an idle pause costs a kernel that resumes to
/// well under 1%; and a worker that sleeps pins freed memory for at most
/// this long.
pub(crate) const IDLE_KEEP: Duration = Duration::from_secs(1);

/// Segments this process has mapped from another one, least recently used
/// first; [`CACHED`] mirrors its length for a lock-free "nothing cached"
/// (Relaxed, stored under the lock: a stale value delays a look or costs a
/// lock, as for [`LINGERING`]).
pub(super) static OPENED: Mutex<Vec<Arc<SharedSegment>>> = Mutex::new(Vec::new());

pub(super) static CACHED: AtomicUsize = AtomicUsize::new(0);

pub(super) const MAX_OPENED: usize = 64;

/// Whether the cache may hold mappings nothing here uses (kept ones): set
/// by [`dropping`] as it keeps one, cleared by [`tidy_cache`] when it found
/// none, so that [`sweep`](super::sweep) on a queue's or a task's hot path costs one load
/// while nothing is kept. Relaxed: a hint. A set that races with a clear is
/// lost until the next drop, miss or idle check, which let such a mapping
/// go as well.
pub(super) static MAY_KEEP: AtomicBool = AtomicBool::new(false);

/// The most bytes of received mappings that nothing here uses that this
/// process keeps ([`tidy_cache`]): an eighth of the machine's memory, at
/// most 4 GiB (1 GiB if the memory cannot be read). While their creator
/// holds them, kept mappings cost no memory (the pages are the creator's
/// anyway), only address space and page tables; once it lets go, a kept
/// one pins the object's memory until the next sweep, cache miss or idle
/// check sees the mark, and this bounds that. An eighth leaves room for an
/// iterative kernel's arrays in all but the largest problems.
fn keep_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let eighth = sys::physical_memory().map_or(1 << 30, |m| m / 8);
        usize::try_from(eighth.min(4 << 30)).unwrap_or(1 << 30)
    })
}

/// Lets go of the kept mappings (held by the cache alone) that are done
/// with: those their creator marked let go, those past [`keep_bytes`] (the
/// least recently used first) and, when `idle`, those unused for
/// [`IDLE_KEEP`]. Returns how long until the next kept one would reach
/// [`IDLE_KEEP`] (`None`: none is kept). One lock and a look at each of at
/// most [`MAX_OPENED`] entries (two atomic loads each).
pub(super) fn tidy_cache(idle: bool) -> Option<Duration> {
    let now = sys::coarse_now();
    let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    let keep_ns = u64::try_from(IDLE_KEEP.as_nanos()).unwrap_or(u64::MAX);
    let mut next_expiry: Option<u64> = None;
    let gone: Vec<Arc<SharedSegment>> = {
        let mut opened = crate::sync::lock(&OPENED);
        // Only this lock hands out copies of the cache's `Arc`s, so a count
        // of 1 seen under it stays 1 until we let go of the lock.
        let kept = |m: &Arc<SharedSegment>| Arc::strong_count(m) == 1;
        let kept_bytes: usize = opened.iter().filter(|m| kept(m)).map(|m| m.seg.len()).sum();
        let mut over = kept_bytes.saturating_sub(keep_bytes());
        let mut gone = Vec::new();
        let mut still_kept = false;
        opened.retain(|m| {
            if !kept(m) {
                return true;
            }
            let used_ns = m.last_used.load(Ordering::Relaxed);
            let stale = idle && now_ns.saturating_sub(used_ns) >= keep_ns;
            if over > 0 || stale || released_by_creator(&m.seg) {
                over = over.saturating_sub(m.seg.len());
                gone.push(m.clone());
                return false;
            }
            let expiry = used_ns.saturating_add(keep_ns);
            next_expiry = Some(next_expiry.map_or(expiry, |e| e.min(expiry)));
            still_kept = true;
            true
        });
        CACHED.store(opened.len(), Ordering::Relaxed);
        MAY_KEEP.store(still_kept, Ordering::Relaxed);
        gone
    };
    // Unmapped (or kept for their receivers) outside the lock.
    drop(gone);
    next_expiry.map(|e| Duration::from_nanos(e.saturating_sub(now_ns)))
}

/// Before a pool worker sleeps for want of tasks: lets go of what it no
/// longer needs, and says how long it may sleep before it should look
/// again (`None`: until woken). While a result's spill (or an object it
/// names) waits for the parent to open it, every 10 ms: its memory goes as
/// soon as it can. While it keeps received mappings nothing uses, until the
/// oldest has been unused for [`IDLE_KEEP`]: then it goes, so that an idle
/// worker does not pin freed arrays' memory for ever. Cheap beside the
/// futex wait it precedes: an atomic load when nothing is kept, else one
/// lock and at most [`MAX_OPENED`] entries to look at.
pub(crate) fn idle_recheck() -> Option<Duration> {
    let lingering = lingering_now().then_some(Duration::from_millis(10));
    let kept = if CACHED.load(Ordering::Relaxed) != 0 {
        // At least a coarse tick: the clock may not have moved yet.
        tidy_cache(true).map(|d| d.max(Duration::from_millis(10)))
    } else {
        None
    };
    match (lingering, kept) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Forgets every cached mapping of another process's object that nothing
/// here uses any more: when their address space is wanted, and in tests
/// (a forged in-flight count or mark keeps one cached, bounded by
/// [`MAX_OPENED`], until its owner closes it and a later miss looks).
pub(crate) fn forget_unused_mappings() {
    let unused: Vec<Arc<SharedSegment>> = {
        let mut opened = crate::sync::lock(&OPENED);
        let (unused, used) = std::mem::take(&mut *opened)
            .into_iter()
            .partition(|m| Arc::strong_count(m) == 1);
        *opened = used;
        CACHED.store(opened.len(), Ordering::Relaxed);
        unused
    };
    // Unmapped (or kept for their receivers) outside the lock.
    drop(unused);
}

/// Called as a shared object's handle drops its copy of `map`: if only the
/// cache of opened mappings would hold it after this copy goes, the mapping
/// is kept there for the next handle to it (see the module docs), unless
/// its creator has let go of it and no handle to it is in flight: then
/// nothing more of it is coming, and it is forgotten, so that its memory
/// can be freed. One atomic load or two when it is kept.
pub(crate) fn dropping(map: &Arc<SharedSegment>) {
    // This copy and the cache's: 2. Anything more is still in use here.
    if map.created || Arc::strong_count(map) != 2 {
        return;
    }
    map.touch();
    if in_flight(&map.seg) || !released_by_creator(&map.seg) {
        MAY_KEEP.store(true, Ordering::Relaxed);
        return;
    }
    let forgotten = {
        let mut opened = crate::sync::lock(&OPENED);
        let at = opened.iter().position(|m| Arc::ptr_eq(m, map));
        let forgotten = at.map(|at| opened.remove(at));
        CACHED.store(opened.len(), Ordering::Relaxed);
        forgotten
    };
    // Unmapped (or kept for its receivers) as the caller's copy goes.
    drop(forgotten);
}

/// Maps the segment another process described, or reuses an earlier mapping.
///
/// The cache lock is held only to look up and to insert, never across a
/// system call on a file the handle names: a hostile handle could otherwise
/// stall every thread that decodes (often the driver).
pub(super) fn open(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    bytes: usize,
) -> std::result::Result<Arc<SharedSegment>, OpenError> {
    let cached = {
        let mut opened = crate::sync::lock(&OPENED);
        let at = opened
            .iter()
            .position(|m| m.id.dev == dev && m.id.ino == ino);
        // Used now: to the back, the most recently used end.
        at.map(|at| {
            let m = opened.remove(at);
            opened.push(m.clone());
            m
        })
    };
    if let Some(m) = cached {
        return Ok(fits(m, bytes)?);
    }
    let fresh = Arc::new(open_uncached(owner, fd, dev, ino, bytes)?);
    let closed = closed_by_their_owners();
    let mut opened = crate::sync::lock(&OPENED);
    // Another thread may have mapped the same memory meanwhile: keep one.
    if let Some(m) = opened.iter().find(|m| m.id.dev == dev && m.id.ino == ino) {
        return Ok(fits(m.clone(), bytes)?);
    }
    // Kept ones whose sender closed them, or whose creator let them go.
    let mut gone: Vec<Arc<SharedSegment>> = Vec::new();
    opened.retain(|m| {
        let done = Arc::strong_count(m) == 1
            && (released_by_creator(&m.seg)
                || closed.iter().any(|&(d, i)| m.id.dev == d && m.id.ino == i));
        if done {
            gone.push(m.clone());
        }
        !done
    });
    if opened.len() >= MAX_OPENED {
        // The least recently used that nothing here uses, else the least
        // recently used (its users keep their mapping; only the cache
        // forgets it).
        let at = opened
            .iter()
            .position(|m| Arc::strong_count(m) == 1)
            .unwrap_or(0);
        gone.push(opened.remove(at));
    }
    opened.push(fresh.clone());
    CACHED.store(opened.len(), Ordering::Relaxed);
    drop(opened);
    // Unmapped (or kept for their receivers) outside the lock.
    drop(gone);
    Ok(fresh)
}

/// `m`, if its memory holds `bytes`: the handle may come from an untrusted
/// worker, so its length is checked on the cached path as on the first.
fn fits(m: Arc<SharedSegment>, bytes: usize) -> std::result::Result<Arc<SharedSegment>, String> {
    if m.usable_len() < bytes {
        return Err(format!(
            "the shared memory holds {} bytes, the handle says {bytes}",
            m.usable_len()
        ));
    }
    Ok(m)
}

/// The (device, inode) of cached mappings that nothing here uses and whose
/// owner no longer holds the descriptor, so that their memory can be freed
/// (one in use stays cached anyway: not worth a look). Looks at `/proc`
/// without the cache lock.
fn closed_by_their_owners() -> Vec<(u64, u64)> {
    let entries: Vec<(i32, i32, u64, u64)> = crate::sync::lock(&OPENED)
        .iter()
        .filter(|m| Arc::strong_count(m) == 1)
        .map(|m| (m.owner, m.fd, m.id.dev, m.id.ino))
        .collect();
    entries
        .into_iter()
        .filter(|&(owner, fd, dev, ino)| {
            !sys::path_identity(&format!("/proc/{owner}/fd/{fd}")).is_ok_and(|id| id == (dev, ino))
        })
        .map(|(_, _, dev, ino)| (dev, ino))
        .collect()
}
