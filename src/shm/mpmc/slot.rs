//! The slot protocol of one ring: claiming a slot by CAS on its state
//! word, helping `head` and `tail` past claimed slots, and repairing slots
//! whose owner died mid-operation. The parent module's docs describe the
//! algorithm (Vyukov's bounded MPMC queue with an owner in every slot).
//!
//! A slot's state word packs `seq` (40 bits, the position the slot is ready
//! for), its phase (2 bits) and the owner's pid (22 bits); beside it, the
//! owner's tag ([`OwnerTag`], its start time) tells that process from a
//! later one with the same pid. The slot's length word and bytes are written
//! and read only by the process whose pid the state word names.

use super::ring::{Ring, SEQ_MASK, SLOT_HEADER};
use super::{INLINE_COPY, NOT_EMPTY_AT, NOT_FULL_AT};
use crate::shm::owner::holder_is_dead;
use crate::sys;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

const PID_MASK: u64 = (1 << 22) - 1;

/// Slot phases.
pub(super) const EMPTY: u64 = 0;
pub(super) const WRITING: u64 = 1;
pub(super) const FULL: u64 = 2;
pub(super) const READING: u64 = 3;

pub(super) fn pack(seq: u64, phase: u64, pid: u32) -> u64 {
    ((seq & SEQ_MASK) << 24) | (phase << 22) | (u64::from(pid) & PID_MASK)
}

pub(super) fn unpack(word: u64) -> (u64, u64, i32) {
    (word >> 24, (word >> 22) & 3, (word & PID_MASK) as i32)
}

fn my_pid() -> u32 {
    sys::current_pid()
}

/// What a put found.
pub(super) enum Put {
    Done,
    Full,
    /// The slot the put needs is still being read out by a live consumer:
    /// it will be free soon (or its consumer dies, and it is repaired).
    Busy,
    /// The ring is closed to puts (an unbounded queue grew past it): put
    /// into the next one. Nothing was stored.
    Closed,
}

/// Test hook: the next claim this process makes (put or get) stops the
/// process (SIGSTOP) right after it, holding the slot, until SIGCONT.
#[cfg(feature = "fault-injection")]
static STOP_AFTER_NEXT_CLAIM: AtomicBool = AtomicBool::new(false);

/// Test hook: see [`STOP_AFTER_NEXT_CLAIM`].
#[cfg(feature = "fault-injection")]
pub(crate) fn stop_after_next_claim() {
    // Relaxed: read by this process's own next claim, on this thread.
    STOP_AFTER_NEXT_CLAIM.store(true, Ordering::Relaxed);
}

/// Stops here if [`stop_after_next_claim`] asked to.
fn stop_if_asked() {
    #[cfg(feature = "fault-injection")]
    // Relaxed: a flag of this process, set by the test before its call. The
    // load first, so that builds with the feature (benchmarks) do not pay
    // an atomic swap on every claim.
    if STOP_AFTER_NEXT_CLAIM.load(Ordering::Relaxed)
        && STOP_AFTER_NEXT_CLAIM.swap(false, Ordering::Relaxed)
    {
        sys::stop_self();
    }
}

/// What stands at `head`.
pub(super) enum Front {
    /// A value, in slot position `h`, whose state word reads `word`.
    Full {
        h: u64,
        word: u64,
    },
    Empty,
    /// A live producer is writing the next value: it will be there soon.
    Busy,
}

/// What an attempt to get found.
pub(super) enum Got<R> {
    Value(R),
    Empty,
    /// A live producer is writing the next value: it will be there soon.
    Busy,
}

impl Ring {
    /// Claims the slot at `tail` if it is free for this lap, copies `bytes`
    /// in and publishes them; frees a slot whose owner died on the way, and
    /// helps `tail` past slots others claimed. `bytes` fit a slot (checked
    /// by the caller).
    ///
    /// In a ring that can be closed to puts (an unbounded queue's), a claim
    /// is followed by a look at the `closed` word: a producer that finds the
    /// ring closed after its claim gives its position up as a dead
    /// producer's would be ([`Put::Closed`]), so that no value lands in a
    /// ring its consumers have left.
    pub(super) fn put_once(&self, bytes: &[u8]) -> Put {
        let me = my_pid();
        loop {
            // Acquire pairs with the AcqRel CASes that move `tail` (`help_tail`).
            let t = self.tail().load(Ordering::Acquire);
            let state = self.slot_state(t);
            // Acquire pairs with the Release store of EMPTY in `read_claimed` and
            // the AcqRel repair CASes (in `front` and below): a slot we see
            // free was read out before we write it.
            let word = state.load(Ordering::Acquire);
            let (seq, phase, pid) = unpack(word);
            if seq == t & SEQ_MASK {
                if phase != EMPTY {
                    // Someone claimed t and has not moved `tail`: help.
                    self.help_tail(t);
                    continue;
                }
                // SeqCst (an AcqRel that also takes part in the single
                // order of SeqCst operations): Acquire pairs with the
                // consumer's Release store of EMPTY (its read is done before
                // our write); Release pairs with the state loads here and in
                // `front` (others see the slot claimed); SeqCst pairs with the
                // SeqCst load of the ring's `closed` word by a consumer that
                // then loads this slot (`closed_for_puts`, then `front`):
                // either we see the ring closed below, or it sees our claim.
                if state
                    .compare_exchange(
                        word,
                        pack(t, WRITING, me),
                        Ordering::SeqCst,
                        Ordering::Acquire,
                    )
                    .is_err()
                {
                    continue;
                }
                self.slot_owner(t).record_mine();
                self.help_tail(t);
                if self.closed_for_puts() {
                    // Too late for this ring: give the position up as if we
                    // had died here. The slot is ours (WRITING): a store.
                    self.slot_owner(t).clear();
                    // Release pairs with the Acquire state loads in `front`
                    // and `put_once` (the skipped slot is seen free).
                    state.store(
                        pack(t.wrapping_add(self.capacity), EMPTY, 0),
                        Ordering::Release,
                    );
                    // A consumer may be waiting on this slot (Busy).
                    self.control.event(NOT_EMPTY_AT).notify();
                    return Put::Closed;
                }
                stop_if_asked();
                let dst = self.slot_base(t) + SLOT_HEADER;
                if let Some(p) = self.slots.at(dst, bytes.len()) {
                    // SAFETY: in bounds (checked); the slot is ours (WRITING)
                    // until we publish it below.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
                }
                // Relaxed: published by the Release store of FULL below.
                self.slot_len(t)
                    .store(bytes.len() as u32, Ordering::Relaxed);
                self.slot_owner(t).clear();
                // Release pairs with the Acquire state load in `front` and
                // the consumer's AcqRel claim CAS in `claim`: the value
                // and its length are written before the slot reads FULL.
                state.store(pack(t, FULL, 0), Ordering::Release);
                self.control.event(NOT_EMPTY_AT).notify();
                return Put::Done;
            }
            if seq == t.wrapping_sub(self.capacity) & SEQ_MASK {
                // The slot still holds (or is handing over) the previous lap.
                match phase {
                    READING | WRITING if self.owner_is_dead(t, pid) => {
                        // Its owner died mid-operation: free the slot for us.
                        // AcqRel: Release pairs with the Acquire state loads
                        // here and in `front`; Acquire with the dead owner's
                        // AcqRel claim CAS.
                        let _ = state.compare_exchange(
                            word,
                            pack(t, EMPTY, 0),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        continue;
                    }
                    // A live reader is copying out (or is stopped there): the
                    // caller waits, minding its deadline.
                    READING => return Put::Busy,
                    _ => return Put::Full,
                }
            }
            // `t` was stale (another producer moved on): look again. A slot
            // that fits no lap while `tail` stands still is corrupt: report
            // full rather than spin on it.
            // Acquire pairs with the AcqRel CASes that move `tail`.
            if self.tail().load(Ordering::Acquire) == t {
                return Put::Full;
            }
        }
    }

    /// Finds the value at `head` without claiming it, helping `head` past
    /// slots already claimed and skipping a slot whose producer died mid-put
    /// (neither changes any value's place in line). A [`Front::Full`] may be
    /// claimed by another consumer the next instant.
    pub(super) fn front(&self) -> Front {
        loop {
            // Acquire pairs with the AcqRel CASes that move `head` (`help_head`).
            let h = self.head().load(Ordering::Acquire);
            let state = self.slot_state(h);
            // Acquire pairs with the Release stores of FULL (`put_once`) and
            // EMPTY (`read_claimed`) and the AcqRel repair CASes. SeqCst: a
            // consumer that saw the ring closed (`closed_for_puts`, SeqCst)
            // and then finds the slot empty here knows that any later claim
            // of it sees the close (the SeqCst claim CAS in `put_once`).
            let word = state.load(Ordering::SeqCst);
            let (seq, phase, pid) = unpack(word);
            if seq == h & SEQ_MASK {
                match phase {
                    FULL => return Front::Full { h, word },
                    EMPTY => return Front::Empty,
                    WRITING if self.owner_is_dead(h, pid) => {
                        // The producer died mid-put: its value is lost; skip it.
                        // AcqRel: Release pairs with the Acquire loads of the
                        // state in `put_once` (the producer one lap later sees
                        // the slot free); Acquire with the dead producer's
                        // AcqRel claim CAS.
                        if state
                            .compare_exchange(
                                word,
                                pack(h.wrapping_add(self.capacity), EMPTY, 0),
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                        {
                            self.help_head(h);
                            self.control.event(NOT_FULL_AT).notify();
                        }
                        continue;
                    }
                    WRITING => return Front::Busy,
                    _ => {
                        // READING: another consumer took h; help `head` on.
                        self.help_head(h);
                        continue;
                    }
                }
            }
            if seq == h.wrapping_add(self.capacity) & SEQ_MASK {
                // Already consumed; `head` lags: help it on.
                self.help_head(h);
                continue;
            }
            // `h` was stale, or the slot is from an older lap still being
            // handed over: look again.
            // Acquire pairs with the AcqRel CASes that move `head`.
            if self.head().load(Ordering::Acquire) == h {
                return Front::Empty;
            }
        }
    }

    /// Whether the owner `pid` of slot `pos` (read from its state word just
    /// before) is definitely dead ([`holder_is_dead`], by its owner tag). If
    /// so, the tag is forgotten, so that the caller's repair CAS on the state
    /// word hands the next owner a slot without it.
    fn owner_is_dead(&self, pos: u64, pid: i32) -> bool {
        let owner = self.slot_owner(pos);
        let tag = owner.read();
        let dead = holder_is_dead(pid, tag, owner);
        if dead {
            owner.forget(tag);
        }
        dead
    }

    /// Moves `head` on from `h`, unless someone already did.
    fn help_head(&self, h: u64) {
        // AcqRel: Release pairs with the Acquire loads of `head` in `front`,
        // `len` (mpmc/mod.rs) and `claim_value_and_abort` (whoever sees the
        // new `head` sees
        // the claim of slot `h` before it); Acquire pairs with the Release of
        // whichever CAS moved it before us.
        let _ =
            self.head()
                .compare_exchange(h, h.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Moves `tail` on from `t`, unless someone already did.
    fn help_tail(&self, t: u64) {
        // AcqRel: Release pairs with the Acquire loads of `tail` in
        // `put_once`, `len` (mpmc/mod.rs) and `claim_slot_and_abort`
        // (whoever sees the new `tail` sees the claim of slot `t` before it);
        // Acquire pairs with
        // the Release of whichever CAS moved it before us.
        let _ =
            self.tail()
                .compare_exchange(t, t.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Claims the value [`front`](Self::front) found at `h` (its state word
    /// read `word`) for this process, and helps `head` past it. `false` if
    /// another consumer, or a repair, changed the slot first.
    pub(super) fn claim(&self, h: u64, word: u64) -> bool {
        let state = self.slot_state(h);
        // AcqRel: Acquire pairs with the producer's Release store of FULL
        // (we see the value); Release pairs with the Acquire loads of the
        // state in `front` (others see the slot claimed).
        if state
            .compare_exchange(
                word,
                pack(h, READING, my_pid()),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        self.slot_owner(h).record_mine();
        self.help_head(h);
        stop_if_asked();
        true
    }

    /// Copies the value out of slot `h`, which this process
    /// [`claim`](Self::claim)ed, frees the slot, and hands a private copy of
    /// the bytes to `take` (never a reference into the memory).
    pub(super) fn read_claimed<R>(&self, h: u64, take: impl FnOnce(&[u8]) -> R) -> R {
        // Relaxed: ordered after the producer's store by our AcqRel claim,
        // which read its Release store of FULL. Garbage is clamped.
        let len = (self.slot_len(h).load(Ordering::Relaxed) as usize).min(self.message_bytes);
        let src = self.slot_base(h) + SLOT_HEADER;
        // Copy out before freeing the slot; decode after, so that
        // producers are not kept waiting on it.
        let mut inline = [0u8; INLINE_COPY];
        let spilled: Vec<u8>;
        let copy: &[u8] = match self.slots.at(src, len) {
            Some(p) if len <= INLINE_COPY => {
                // SAFETY: in bounds (checked); the slot is ours (READING)
                // until we free it below.
                unsafe { std::ptr::copy_nonoverlapping(p, inline.as_mut_ptr(), len) };
                &inline[..len]
            }
            Some(p) => {
                let mut v = vec![0u8; len];
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len) };
                spilled = v;
                &spilled
            }
            None => &[],
        };
        self.slot_owner(h).clear();
        // Release pairs with the Acquire load of the state in `put_once`
        // one lap later (and its claim CAS): our read is done before it
        // writes.
        self.slot_state(h).store(
            pack(h.wrapping_add(self.capacity), EMPTY, 0),
            Ordering::Release,
        );
        self.control.event(NOT_FULL_AT).notify();
        take(copy)
    }

    /// Whether a live process is in the middle of reading a value out of
    /// this ring (an unbounded queue frees a ring's memory only when none
    /// is: it would read zeros).
    pub(super) fn has_live_reader(&self) -> bool {
        (0..self.capacity).any(|pos| {
            // Acquire pairs with the AcqRel claim CAS in `claim`.
            let (_, phase, pid) = unpack(self.slot_state(pos).load(Ordering::Acquire));
            let owner = self.slot_owner(pos);
            phase == READING && !holder_is_dead(pid, owner.read(), owner)
        })
    }

    /// Test hook: claims the next value as a consumer and dies there, leaving
    /// its slot READING with this process's pid.
    #[cfg(feature = "fault-injection")]
    pub(super) fn claim_value_and_abort(&self) -> ! {
        // Acquire pairs with the AcqRel CASes that move `head`.
        let h = self.head().load(Ordering::Acquire);
        // AcqRel: as the claim CAS in `claim`.
        let _ = self.slot_state(h).compare_exchange(
            pack(h, FULL, 0),
            pack(h, READING, my_pid()),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.slot_owner(h).record_mine();
        self.help_head(h);
        std::process::abort()
    }

    /// Test hook: claims the next slot as a producer and dies there, leaving
    /// it WRITING with this process's pid.
    #[cfg(feature = "fault-injection")]
    pub(super) fn claim_slot_and_abort(&self) -> ! {
        // Acquire pairs with the AcqRel CASes that move `tail`.
        let t = self.tail().load(Ordering::Acquire);
        // AcqRel: as the claim CAS in `put_once`.
        let _ = self.slot_state(t).compare_exchange(
            pack(t, EMPTY, 0),
            pack(t, WRITING, my_pid()),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.slot_owner(t).record_mine();
        self.help_tail(t);
        std::process::abort()
    }

    /// Test hook: claims the next slot as a producer named `pid` and leaves
    /// it WRITING with no tag (`UNKNOWN`), as a producer that died between
    /// its claim and its tag would, or as a forger could write it.
    #[cfg(feature = "fault-injection")]
    pub(super) fn forge_untagged_claim(&self, pid: u32) {
        // Acquire pairs with the AcqRel CASes that move `tail`.
        let t = self.tail().load(Ordering::Acquire);
        // AcqRel: as the claim CAS in `put_once`.
        let _ = self.slot_state(t).compare_exchange(
            pack(t, EMPTY, 0),
            pack(t, WRITING, pid),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.help_tail(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::mpmc::tests::{get_u64, heap_queue, put_u64, ring_of};

    #[test]
    fn states_pack_and_unpack() {
        let w = pack(123_456_789, READING, 4_194_303);
        assert_eq!(unpack(w), (123_456_789, READING, 4_194_303));
        assert_eq!(
            unpack(pack(SEQ_MASK + 5, FULL, 7)).0,
            4,
            "seq wraps at 40 bits"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "starts a process and reads /proc")]
    fn a_slot_whose_owner_pid_was_reused_is_skipped() {
        let (_heap, bq) = heap_queue(4, 8);
        let q = ring_of(&bq);
        // Slot 0 is being written by a live process, but not the one whose
        // start time the slot recorded: the writer died and its pid was
        // reused. The slot is skipped, not waited on for ever.
        let mut other = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep");
        let pid = other.id();
        let real = crate::shm::owner::start_tag_of(pid as i32);
        q.slot_state(0)
            .store(pack(0, WRITING, pid), Ordering::Relaxed);
        q.slots
            .word32(q.slot_base(0) + 12)
            .store(real.wrapping_add(1).max(1), Ordering::Relaxed);
        q.tail().store(1, Ordering::Relaxed);
        assert!(put_u64(&bq, 5));
        assert_eq!(get_u64(&bq), Some(5));
        // Under its own start time the same writer is alive: waited for.
        q.slot_state(2)
            .store(pack(2, WRITING, pid), Ordering::Relaxed);
        q.slots
            .word32(q.slot_base(2) + 12)
            .store(real, Ordering::Relaxed);
        q.tail().store(3, Ordering::Relaxed);
        assert_eq!(get_u64(&bq), None);
        let _ = other.kill();
        let _ = other.wait();
        // Dead and reaped: skipped, once this thread asks again (a holder
        // found alive is taken as alive for `ALIVE_FOR` without a look).
        assert!(put_u64(&bq, 6));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match get_u64(&bq) {
                Some(v) => break assert_eq!(v, 6),
                None => assert!(
                    std::time::Instant::now() < deadline,
                    "the dead writer's slot was never skipped"
                ),
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn positions_wrap_at_the_top_of_u64() {
        // Positions come from shared memory: one at u64::MAX must wrap to 0
        // (debug builds would panic on `+ 1`), and the queue go on working.
        let (_heap, bq) = heap_queue(4, 8);
        let q = ring_of(&bq);
        let top = u64::MAX;
        q.head().store(top, Ordering::Relaxed);
        q.tail().store(top, Ordering::Relaxed);
        q.slot_state(top)
            .store(pack(top, EMPTY, 0), Ordering::Relaxed);
        assert!(put_u64(&bq, 1));
        assert_eq!(q.tail().load(Ordering::Relaxed), 0, "tail wrapped");
        assert!(put_u64(&bq, 2));
        assert_eq!(get_u64(&bq), Some(1));
        assert_eq!(q.head().load(Ordering::Relaxed), 0, "head wrapped");
        assert_eq!(get_u64(&bq), Some(2));
        assert_eq!(get_u64(&bq), None);
        // Garbage positions (head past tail): no panic, no value made up.
        q.head().store(top - 1, Ordering::Relaxed);
        q.tail().store(3, Ordering::Relaxed);
        assert_eq!(get_u64(&bq), None);
        assert!(bq.try_put(&3u64.to_le_bytes()).is_ok());
        assert!(bq.len() <= bq.capacity() as usize);
    }
}
