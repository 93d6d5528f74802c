//! Who holds a claim on shared memory, and whether that holder is
//! definitely dead: the one liveness rule every structure that repairs a
//! dead process's claim (queue slots, `Value`'s lock, a pipe's holders)
//! decides by.
//!
//! # Owner tags
//!
//! A claim names its holder by pid, packed into whatever word the structure
//! claims with (a queue slot's state word, a lock word, a pipe's holder
//! word). A pid alone cannot tell a live holder from a process that reused
//! the pid of a dead one, so beside each such word lies a 32-bit *owner tag*
//! word: the holder's start time (clock ticks since boot, from
//! `/proc/<pid>/stat`) folded to a nonzero `u32`, or [`UNKNOWN`] (0).
//!
//! * A claimant wins the claim word first, then records its tag
//!   ([`OwnerTag::record`]): until it does, the tag reads `UNKNOWN`.
//! * A holder clears the tag ([`OwnerTag::clear`]) before its Release store
//!   or CAS that gives the claim up, so the next claim never inherits it.
//! * A process that repairs a dead holder's claim first clears the tag it
//!   judged by ([`OwnerTag::forget`]), then CASes the claim word.
//!
//! So a tag that is not `UNKNOWN` belongs to the claim the checker read
//! before it (the checker reads the claim word, then the tag, each with
//! Acquire), and every repair is decided by a CAS on that claim word.
//!
//! # Dead
//!
//! [`holder_is_dead`] answers true only on a definite answer: the pid names
//! no process (not positive, or `kill(pid, 0)` fails with ESRCH), the
//! process is a zombie, its start time differs from the recorded tag, or
//! (tag `UNKNOWN`) it does not map the object the claim lies in. Anything it
//! cannot find out (EPERM, no descriptor left for `/proc`, `/proc` mounted
//! `hidepid` or absent, a `maps` it may not read) counts as alive: a live
//! holder's claim is never taken from it.
//!
//! # An unknown tag
//!
//! A claim whose tag reads `UNKNOWN` belongs to a holder in the instant
//! between winning the claim and recording its tag, one that died there, or
//! one that could not read its own start time (every process reads it when
//! it first creates or maps a segment, so that a claim rarely has to). Its
//! pid alone cannot tell the holder from a later process with that pid, but
//! a holder wrote its claim through its mapping of the shared object and
//! keeps it while it holds the claim: so a live process at that pid that
//! maps no part of the object's file (its `/proc/<pid>/maps` names no
//! mapping with the device and inode that our own mapping of the claim word
//! has) is not the holder, and the holder is dead (a holder that unmapped
//! the object could never give its claim up either). Only a tag still
//! `UNKNOWN` when read again after the look at the process's `stat` leads
//! to the two `maps` reads: a live holder in its instant has almost always
//! recorded its tag by then, and one that has not maps the object anyway. A
//! listing that cannot be read counts as "maps it". Claims recorded on behalf of another
//! process, which may not map the object yet (a pipe end delivered to a
//! starting child), are judged by pid alone ([`recorded_holder_is_dead`]).
//!
//! What remains: a holder that died in its instant (or could not read its
//! start time), whose pid, before anyone looked at the claim, went to
//! another live process that maps the same object, looks alive until that
//! process ends or unmaps it. The kernel hands pids out in turn, so the pid
//! must come round the whole pid space (`pid_max`: 32768 on some systems,
//! 4194304 by default on 64-bit ones) while nobody looked at a claim whose
//! holder is gone, and land on one of the few processes that map that very
//! object. A claim recorded on another's behalf and left untagged
//! (the recorder could not read the other's start time, or died between
//! the two stores) looks alive under any later process with its pid.
//!
//! # Cost
//!
//! A look at `/proc` costs several microseconds, far more than the
//! operation a waiter is waiting for: a reader that meets a slot its live
//! writer is filling would otherwise pay that on every spin. So an answer
//! "alive" is remembered per thread for [`ALIVE_FOR`] (the same holder, by
//! pid and tag, is not looked at again before then); an answer "dead" is
//! never remembered. A holder that dies is therefore found at most
//! `ALIVE_FOR` after the last look that saw it alive. An untagged claim's
//! answer is remembered with the claim word's address, as it holds for that
//! object only; its `maps` reads (longer, with the lines of two processes'
//! memory maps) happen only for an untagged claim under a live pid.

use crate::sys;
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a holder found alive is taken to be alive without looking
/// again (per thread).
pub(crate) const ALIVE_FOR: Duration = Duration::from_millis(1);

thread_local! {
    /// The last holder this thread found alive, and when: (pid, tag, where
    /// its claim lies if its tag is `UNKNOWN` (else 0), at).
    static LAST_ALIVE: Cell<Option<(i32, u32, usize, Instant)>> = const { Cell::new(None) };
}

/// The tag of a claim whose holder's start time is not recorded.
pub(crate) const UNKNOWN: u32 = 0;

/// A start time folded to a tag: its low 32 bits (497 days of 10 ms ticks
/// before it wraps), never [`UNKNOWN`].
fn tag_from_start_time(ticks: u64) -> u32 {
    match ticks as u32 {
        UNKNOWN => 1,
        tag => tag,
    }
}

/// Process `pid`'s tag, or [`UNKNOWN`] if its start time cannot be read.
pub(crate) fn start_tag_of(pid: i32) -> u32 {
    sys::process_state_and_start_time(pid).map_or(UNKNOWN, |(_, start)| tag_from_start_time(start))
}

/// This process's tag, read once per process (a forked child has another
/// pid, so it reads its own); [`UNKNOWN`] while it cannot be read.
pub(crate) fn my_start_tag() -> u32 {
    // pid in the high half, tag in the low half: one atomic word, so that a
    // fork's child (new pid) never takes its parent's tag.
    static CACHE: AtomicU64 = AtomicU64::new(0);
    let me = sys::current_pid();
    // Relaxed: the value is the same whichever thread stored it.
    let cached = CACHE.load(Ordering::Relaxed);
    if (cached >> 32) as u32 == me && cached as u32 != UNKNOWN {
        return cached as u32;
    }
    let tag = start_tag_of(me as i32);
    if tag != UNKNOWN {
        // Relaxed: as above.
        CACHE.store(u64::from(me) << 32 | u64::from(tag), Ordering::Relaxed);
    }
    tag
}

/// Whether the process that holds a claim as `pid`, with owner tag `tag`
/// read after the claim from `word` (the claim's tag word, in this
/// process's mapping of the shared object the claim lies in), is definitely
/// dead, so that its claim may be repaired. A holder maps the object while
/// it holds the claim. Both numbers come from shared memory: any value is
/// handled.
pub(crate) fn holder_is_dead(pid: i32, tag: u32, word: OwnerTag<'_>) -> bool {
    judge(pid, tag, Some(word))
}

/// As [`holder_is_dead`], for a claim that may name a process that does not
/// map the object yet (recorded on its behalf by the process that started
/// it): an `UNKNOWN` tag is judged by pid alone.
pub(crate) fn recorded_holder_is_dead(pid: i32, tag: u32) -> bool {
    judge(pid, tag, None)
}

/// [`holder_is_dead`]; `word` is `None` where the holder may not map the
/// object.
fn judge(pid: i32, tag: u32, word: Option<OwnerTag<'_>>) -> bool {
    if pid <= 0 {
        // No single process has that pid: a torn or scribbled word, whose
        // claim nobody can ever give up.
        return true;
    }
    if pid as u32 == sys::current_pid() {
        // Us (another thread), or a dead process whose pid we reused: only a
        // recorded tag that is not ours says the latter (we map the object).
        // No `/proc` read on the contended path between our own threads.
        let mine = my_start_tag();
        return tag != UNKNOWN && mine != UNKNOWN && tag != mine;
    }
    // An answer found through the object's mapping holds for that object
    // only: remembered with where the claim lies.
    let site = match word {
        Some(word) if tag == UNKNOWN => word.address(),
        _ => 0,
    };
    let now = Instant::now();
    let seen_alive = LAST_ALIVE.with(|last| {
        matches!(last.get(), Some((p, t, s, at)) if p == pid && t == tag && s == site && now.duration_since(at) < ALIVE_FOR)
    });
    if seen_alive {
        return false;
    }
    let dead = sys::process_is_gone(pid)
        || match sys::process_state_and_start_time(pid) {
            // A zombie never touches memory again; a different start time
            // means the holder died and another process has its pid.
            Ok((state, start)) => {
                state == 'Z'
                    || state == 'X'
                    || if tag == UNKNOWN {
                        word.is_some_and(|word| cannot_hold(pid, word))
                    } else {
                        tag_from_start_time(start) != tag
                    }
            }
            // Could not tell (no descriptor left, `/proc` hidden): alive.
            Err(_) => false,
        };
    if !dead {
        LAST_ALIVE.with(|last| last.set(Some((pid, tag, site, now))));
    }
    dead
}

/// Whether live process `pid` definitely maps no part of the shared object
/// whose claim has tag word `word` (read `UNKNOWN`), so that it cannot be
/// the claim's holder.
fn cannot_hold(pid: i32, word: OwnerTag<'_>) -> bool {
    // A live holder in the instant between its claim and its tag has
    // recorded the tag by now (after a look at `/proc`): a tag that reads
    // otherwise is that holder's or a later claim's, not dead by this look.
    if word.read() != UNKNOWN {
        return false;
    }
    match sys::mapped_file_at(word.address()) {
        // "Maps it", or could not tell: alive.
        Ok(Some(object)) => sys::process_maps(pid, object).is_ok_and(|maps_it| !maps_it),
        // Not in a file's mapping (a test's heap memory), or could not tell.
        _ => false,
    }
}

/// The owner-tag word beside a claim word in shared memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnerTag<'a>(&'a AtomicU32);

impl<'a> OwnerTag<'a> {
    pub(crate) fn new(word: &'a AtomicU32) -> Self {
        Self(word)
    }

    /// Where the word lies in this process: inside its mapping of the
    /// shared object.
    fn address(self) -> usize {
        std::ptr::from_ref(self.0) as usize
    }

    /// Records `tag` as the holder's, right after the claim was won (by the
    /// holder, or by whoever handed it the claim).
    pub(crate) fn record(self, tag: u32) {
        // Release pairs with the Acquire load in `read`: a checker that sees
        // this tag sees the claim it belongs to, so its repair CAS on the
        // claim word fails if that claim has moved on.
        self.0.store(tag, Ordering::Release);
    }

    /// Records this process as the holder.
    pub(crate) fn record_mine(self) {
        self.record(my_start_tag());
    }

    /// Clears the tag before the holder gives its claim up. The caller's
    /// Release store or CAS on the claim word, right after, orders this
    /// before the next claim.
    pub(crate) fn clear(self) {
        // Relaxed: ordered by the caller's Release on the claim word (see
        // above), which pairs with the next checker's Acquire load of it.
        self.0.store(UNKNOWN, Ordering::Relaxed);
    }

    /// The recorded tag; read after the claim word (Acquire), so that it
    /// belongs to that claim or reads [`UNKNOWN`].
    pub(crate) fn read(self) -> u32 {
        // Acquire pairs with the Release store in `record`.
        self.0.load(Ordering::Acquire)
    }

    /// Before repairing a claim judged dead by tag `seen`: clears that tag,
    /// unless a newer claim already recorded its own.
    pub(crate) fn forget(self, seen: u32) {
        // Relaxed: the repair CAS on the claim word that follows (Release)
        // orders it before the next claim, as in `clear`.
        let _ = self
            .0
            .compare_exchange(seen, UNKNOWN, Ordering::Relaxed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc and signals processes")]
    fn only_a_definite_answer_is_dead() {
        // A tag word on the heap: in no file's mapping, so an `UNKNOWN` tag
        // is judged by pid alone here.
        let heap_word = AtomicU32::new(UNKNOWN);
        let word = OwnerTag::new(&heap_word);
        let holder_is_dead = |pid, tag| holder_is_dead(pid, tag, word);
        let me = sys::current_pid() as i32;
        let mine = my_start_tag();
        assert_ne!(mine, UNKNOWN, "our own start time is readable here");
        assert!(!holder_is_dead(me, mine));
        assert!(!holder_is_dead(me, UNKNOWN));
        assert!(
            holder_is_dead(me, mine.wrapping_add(1).max(1)),
            "a dead process with our pid"
        );
        assert!(holder_is_dead(0, UNKNOWN));
        assert!(holder_is_dead(-5, UNKNOWN));
        // Above any pid_max: no such process.
        assert!(holder_is_dead(i32::MAX - 1, UNKNOWN));

        // Another live process: alive under its own tag or none, dead under
        // another's (its pid was "reused").
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep");
        let pid = child.id() as i32;
        let tag = start_tag_of(pid);
        assert_ne!(tag, UNKNOWN);
        assert!(!holder_is_dead(pid, tag));
        assert!(!holder_is_dead(pid, UNKNOWN));
        assert!(holder_is_dead(pid, tag.wrapping_add(1).max(1)));
        child.kill().expect("kill sleep");
        // Until it is reaped it is a zombie: dead, whatever its tag. The
        // exit takes a moment after SIGKILL: wait for it (a bounded check).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !sys::process_state_and_start_time(pid).is_ok_and(|(state, _)| state == 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep never became a zombie"
            );
            std::thread::yield_now();
        }
        assert!(holder_is_dead(pid, tag));
        child.wait().expect("reap sleep");
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps a memfd, forks and reads /proc")]
    fn an_untagged_claim_is_dead_for_a_live_process_that_does_not_map_its_object() {
        let seg = crate::shm::Segment::create(c"owner-test", 4096).expect("a segment");
        let p = seg.at(0, 4).expect("in bounds");
        // SAFETY: in bounds, page-aligned, lives as long as `seg`; touched
        // only atomically.
        let word = OwnerTag::new(unsafe { AtomicU32::from_ptr(p.cast()) });
        assert_eq!(word.read(), UNKNOWN);

        // `sleep` maps nothing of ours: not the holder of a claim in `seg`.
        let mut sleep = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep");
        let stranger = sleep.id() as i32;
        assert!(holder_is_dead(stranger, UNKNOWN, word));
        // With its own tag it is alive, maps or not (a claim with a tag is
        // judged by it); with a claim on the heap, it cannot be told.
        assert!(!holder_is_dead(stranger, start_tag_of(stranger), word));
        let heap_word = AtomicU32::new(UNKNOWN);
        assert!(!holder_is_dead(
            stranger,
            UNKNOWN,
            OwnerTag::new(&heap_word)
        ));
        // Nor by pid alone.
        assert!(!recorded_holder_is_dead(stranger, UNKNOWN));

        // A forked child keeps our mapping of `seg`: it may be the holder.
        // SAFETY: the child only calls `pause` (async-signal-safe) until it
        // is killed below.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: waits for a signal; nothing else runs here.
                unsafe { libc::pause() };
            }
        }
        assert!(child > 0, "fork failed");
        assert!(!holder_is_dead(child, UNKNOWN, word));
        // A tag recorded after all (a live holder in its instant between
        // claim and tag): alive, whoever maps what.
        word.record(1);
        assert!(!holder_is_dead(stranger, UNKNOWN, word));
        word.clear();

        // SAFETY: plain integers; `child` is our child, killed and reaped
        // here only.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let _ = sleep.kill();
        let _ = sleep.wait();
    }
}
