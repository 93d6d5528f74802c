//! [`Barrier`]: Python's `multiprocessing.Barrier`, which a party that dies
//! while waiting breaks instead of hanging the others.
//!
//! The segment holds an internal [`RawLock`] guarding the state (arrived
//! count, generation, broken flag, one slot per arrived party with its pid
//! and owner tag) and an event count the waiters sleep on. The last party of
//! a generation bumps the generation; breaking sets the flag without
//! touching the generation, so a waiter that sees its generation passed has
//! passed, whatever happened afterwards.

use super::lock::{RawLock, RAW_LOCK_BYTES};
use super::{next_death_check, Words, DEATH_CHECK_FIRST};
use crate::error::{Error, Result};
use crate::shm::event::EventCount;
use crate::shm::handle::type_tag;
use crate::shm::owner::{holder_is_dead, my_start_tag, OwnerTag};
use crate::shm::park::deadline_after;
use crate::sys;
use crate::wire::{Encoder, Wire};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const LOCK_AT: usize = 0;
const ARRIVED_AT: usize = RAW_LOCK_BYTES;
const GENERATION_AT: usize = RAW_LOCK_BYTES + 4;
const BROKEN_AT: usize = RAW_LOCK_BYTES + 8;
const SEQUENCE_AT: usize = RAW_LOCK_BYTES + 12;
const SLEEPERS_AT: usize = RAW_LOCK_BYTES + 16;
const SLOTS_AT: usize = 2 * RAW_LOCK_BYTES;
/// Bytes per party slot: its pid, then its owner tag.
const SLOT_BYTES: usize = 8;

/// The most parties a barrier can have.
const MAX_PARTIES: u32 = 4096;

fn bytes_for(parties: u64) -> Option<u64> {
    (1..=u64::from(MAX_PARTIES))
        .contains(&parties)
        .then(|| (SLOTS_AT + SLOT_BYTES * parties as usize) as u64)
}

/// Python's `multiprocessing.Barrier`: `parties` processes (or threads) wait
/// until all of them have arrived, then all go on.
///
/// It *breaks*, and every waiter (and later arrival) gets
/// [`Error::BrokenBarrier`], when a wait times out, when [`abort`] is
/// called, or when a party dies while waiting at it. A broken barrier stays
/// broken; make a new one to start over.
///
/// A party's death counts once it is definite: its process is gone or a
/// zombie, or its pid now names another process (a party whose death
/// cannot be established, such as one whose `/proc` entry cannot be read,
/// counts as alive). Two looks find it:
///
/// * every waiting party looks now and then, within 50 ms of the death;
/// * the party whose arrival would trip the barrier first looks at every
///   party that arrived before it, and breaks the barrier instead of
///   tripping it if one of them is dead (that look costs a few
///   microseconds per other process, nothing for threads of its own).
///
/// So a party that died while waiting breaks the barrier however soon the
/// last party comes after the death. A party that dies *after* that look
/// (once the barrier tripped, or in the instant between the look and the
/// trip) has passed, as if it had returned from its `wait`: the others get
/// their index. A party that dies *before* it arrives cannot be told from a
/// slow one: use [`wait_timeout`] when that may happen. A thread is a party
/// of its process, which it cannot die without.
///
/// [`abort`]: Barrier::abort
/// [`wait_timeout`]: Barrier::wait_timeout
///
/// ```
/// use corepool::{Barrier, Process};
///
/// fn party(b: Barrier) -> u32 {
///     b.wait().unwrap() // returns once all three have arrived
/// }
///
/// fn main() {
///     let b = Barrier::new(3).unwrap();
///     let kids: Vec<_> = (0..2).map(|_| Process::start(party, b.clone()).unwrap()).collect();
///     let mut indices = vec![b.wait().unwrap()];
///     for k in kids {
///         indices.push(k.join().unwrap());
///     }
///     indices.sort();
///     assert_eq!(indices, [0, 1, 2]); // each party gets its own index
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Barrier {
    words: Words,
    parties: u32,
}

impl Barrier {
    /// A barrier for `parties` parties.
    ///
    /// ```
    /// let b = corepool::Barrier::new(1).unwrap();
    /// assert_eq!(b.wait().unwrap(), 0); // one party: never waits
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] unless `1 <= parties <= 4096`;
    /// [`Error::SharedMemory`] when the segment cannot be created.
    pub fn new(parties: u32) -> Result<Self> {
        let bytes = bytes_for(u64::from(parties)).ok_or_else(|| Error::InvalidConfig {
            what: format!("a barrier for {parties} parties: give 1 to {MAX_PARTIES}"),
        })?;
        Ok(Self {
            words: Words::create(c"corepool-barrier", bytes as usize)?,
            parties,
        })
    }

    /// The number of parties it waits for.
    ///
    /// ```
    /// assert_eq!(corepool::Barrier::new(3).unwrap().parties(), 3);
    /// ```
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// How many parties wait at it now (a snapshot; 0 once broken).
    ///
    /// ```
    /// let b = corepool::Barrier::new(2).unwrap();
    /// assert_eq!(b.n_waiting(), 0);
    /// ```
    pub fn n_waiting(&self) -> u32 {
        if self.broken() {
            return 0;
        }
        // Relaxed: a snapshot. Bounded: the word is shared memory.
        self.word(ARRIVED_AT)
            .load(Ordering::Relaxed)
            .min(self.parties)
    }

    /// Whether it is broken.
    ///
    /// ```
    /// let b = corepool::Barrier::new(2).unwrap();
    /// b.abort();
    /// assert!(b.broken());
    /// ```
    pub fn broken(&self) -> bool {
        // Acquire pairs with the Release store in `break_generation`.
        self.word(BROKEN_AT).load(Ordering::Acquire) != 0
    }

    /// Breaks it: every waiter, and every later `wait`, gets
    /// [`Error::BrokenBarrier`].
    ///
    /// ```
    /// let b = corepool::Barrier::new(2).unwrap();
    /// b.abort();
    /// assert_eq!(b.wait().unwrap_err(), corepool::Error::BrokenBarrier);
    /// ```
    pub fn abort(&self) {
        let lock = self.lock();
        let _ = lock.acquire(None);
        self.break_locked();
        lock.release();
        self.event().notify_all();
    }

    /// Waits until every party has arrived; returns this party's index
    /// (`0..parties`, each party another one).
    ///
    /// # Errors
    ///
    /// [`Error::BrokenBarrier`] when it is (or becomes) broken, also when
    /// this is the last party and one that arrived before it has died (see
    /// [`Barrier`]).
    ///
    /// ```
    /// use corepool::{Barrier, Process};
    ///
    /// fn meet(barrier: Barrier) -> u32 {
    ///     barrier.wait().unwrap()
    /// }
    ///
    /// fn main() -> corepool::Result<()> {
    ///     let barrier = Barrier::new(2)?;
    ///     let other = Process::start(meet, barrier.clone())?;
    ///     let mine = barrier.wait()?;
    ///     let mut indices = [mine, other.join()?];
    ///     indices.sort();
    ///     assert_eq!(indices, [0, 1]); // each party another index
    ///     Ok(())
    /// }
    /// ```
    pub fn wait(&self) -> Result<u32> {
        self.wait_until(None)
    }

    /// As [`wait`](Self::wait), for at most `timeout`; a timeout breaks the
    /// barrier (as in Python), for every party.
    ///
    /// ```
    /// let b = corepool::Barrier::new(2).unwrap();
    /// let err = b.wait_timeout(std::time::Duration::from_millis(1)).unwrap_err();
    /// assert_eq!(err, corepool::Error::BrokenBarrier);
    /// assert!(b.broken());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::BrokenBarrier`] when it is (or becomes) broken, the
    /// timeout included.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(deadline_after(timeout))
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        self.words.word(at)
    }

    fn lock(&self) -> RawLock<'_> {
        RawLock::new(&self.words, LOCK_AT)
    }

    fn event(&self) -> EventCount<'_> {
        EventCount::new(self.word(SEQUENCE_AT), self.word(SLEEPERS_AT))
    }

    /// The pid and tag words of slot `index` (`index < parties`).
    fn slot(&self, index: u32) -> (&AtomicU32, &AtomicU32) {
        let at = SLOTS_AT + SLOT_BYTES * index.min(self.parties - 1) as usize;
        (self.word(at), self.word(at + 4))
    }

    /// Sets the broken flag (the caller holds the lock).
    fn break_locked(&self) {
        // Release pairs with the Acquire loads in `broken`.
        self.word(BROKEN_AT).store(1, Ordering::Release);
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        let lock = self.lock();
        loop {
            // The internal lock is held only for a few stores: no deadline.
            let _ = lock.acquire(None);
            if self.broken() {
                lock.release();
                return Err(Error::BrokenBarrier);
            }
            // Relaxed, here and for the state below: the internal lock orders
            // every access to it.
            let generation = self.word(GENERATION_AT).load(Ordering::Relaxed);
            let arrived = self.word(ARRIVED_AT).load(Ordering::Relaxed);
            if arrived >= self.parties {
                // Every party of this generation is in, and the last one is
                // looking at the others: a caller beyond `parties` belongs
                // to the next generation, and arrives once this one passed.
                lock.release();
                self.wait_for_generation(generation, deadline)?;
                continue;
            }
            let index = arrived;
            let (pid, tag) = self.slot(index);
            pid.store(sys::current_pid(), Ordering::Relaxed);
            tag.store(my_start_tag(), Ordering::Relaxed);
            if index + 1 < self.parties {
                self.word(ARRIVED_AT).store(index + 1, Ordering::Relaxed);
                lock.release();
                self.wait_for_generation(generation, deadline)?;
                return Ok(index);
            }
            // The last to arrive: everybody passes, unless a party that
            // arrived has died meanwhile (a waiter polling might not have
            // noticed yet). The count says "all in", so that nobody takes
            // this index while we look; our slot is recorded, so that if we
            // die looking, the waiters' own checks break the barrier.
            self.word(ARRIVED_AT).store(self.parties, Ordering::Relaxed);
            let others = self.slots(index);
            lock.release();
            // Judged without the lock: judging reads `/proc`.
            let died = self.any_dead(others);
            let _ = lock.acquire(None);
            // Still ours unless a waiter's timeout, a waiter's death check
            // or `abort` broke it meanwhile (nothing else moves the
            // generation: only we may trip it).
            let ours =
                !self.broken() && self.word(GENERATION_AT).load(Ordering::Relaxed) == generation;
            if ours && !died {
                self.word(ARRIVED_AT).store(0, Ordering::Relaxed);
                // Release pairs with the waiters' Acquire loads of the
                // generation (in `wait_for_generation`).
                self.word(GENERATION_AT)
                    .store(generation.wrapping_add(1), Ordering::Release);
                lock.release();
                self.event().notify_all();
                return Ok(index);
            }
            if ours {
                self.break_locked();
            }
            lock.release();
            self.event().notify_all();
            return Err(Error::BrokenBarrier);
        }
    }

    /// Waits until `generation` has passed (`Ok`) or the barrier broke;
    /// breaks it on the deadline, or when a party that arrived died.
    fn wait_for_generation(&self, generation: u32, deadline: Option<Instant>) -> Result<()> {
        let passed = || self.word(GENERATION_AT).load(Ordering::Acquire) != generation;
        let mut death_check = DEATH_CHECK_FIRST;
        loop {
            // The generation first: a waiter whose generation passed has
            // passed, even if the barrier broke afterwards.
            if passed() {
                return Ok(());
            }
            if self.broken() {
                return Err(Error::BrokenBarrier);
            }
            let timed_out = self
                .event()
                .wait(deadline, Some(death_check), || passed() || self.broken())
                .is_err();
            if timed_out || self.a_party_died() {
                self.break_generation(generation);
            }
            death_check = next_death_check(death_check);
        }
    }

    /// The index, pid and tag of the first `count` slots (the caller holds
    /// the internal lock; `count <= parties`).
    fn slots(&self, count: u32) -> Vec<(u32, u32, u32)> {
        (0..count.min(self.parties))
            .map(|i| {
                let (pid, tag) = self.slot(i);
                (i, pid.load(Ordering::Relaxed), tag.load(Ordering::Relaxed))
            })
            .collect()
    }

    /// Whether one of `slots` (from [`slots`](Self::slots)) names a process
    /// that is definitely dead. Each process is judged once, however many
    /// of its threads wait; threads of this process cost no `/proc` read.
    fn any_dead(&self, mut slots: Vec<(u32, u32, u32)>) -> bool {
        slots.sort_unstable_by_key(|&(_, pid, tag)| (pid, tag));
        slots.dedup_by_key(|&mut (_, pid, tag)| (pid, tag));
        // A waiting party maps the barrier: its slot's tag word, in our
        // mapping, names the object.
        slots.into_iter().any(|(i, pid, tag)| {
            let word = OwnerTag::new(self.slot(i).1);
            holder_is_dead(i32::try_from(pid).unwrap_or(-1), tag, word)
        })
    }

    /// Whether a party that arrived in this generation is dead. Reads the
    /// slots under the lock and judges them after releasing it (judging
    /// reads `/proc`).
    fn a_party_died(&self) -> bool {
        let lock = self.lock();
        let _ = lock.acquire(None);
        // Bounded by `slots`: the word is shared memory.
        let arrived = self.word(ARRIVED_AT).load(Ordering::Relaxed);
        let parties = self.slots(arrived);
        lock.release();
        self.any_dead(parties)
    }

    /// Breaks the barrier if `generation` is still waiting, and wakes
    /// everybody.
    fn break_generation(&self, generation: u32) {
        let lock = self.lock();
        let _ = lock.acquire(None);
        if self.word(GENERATION_AT).load(Ordering::Relaxed) == generation {
            self.break_locked();
        }
        lock.release();
        self.event().notify_all();
    }
}

impl Wire for Barrier {
    fn encode(&self, out: &mut Encoder) {
        self.words
            .encode(type_tag::<Barrier>(), u64::from(self.parties), out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (words, parties) = Words::decode::<Self>(input, type_tag::<Barrier>(), bytes_for)?;
        Ok(Self {
            words,
            // In range: `bytes_for` accepted it.
            parties: parties as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_pass_together_with_distinct_indices() {
        let b = Barrier::new(3).unwrap();
        let mut indices: Vec<u32> = std::thread::scope(|s| {
            let others: Vec<_> = (0..2).map(|_| s.spawn(|| b.wait().unwrap())).collect();
            let mine = b.wait().unwrap();
            let mut all: Vec<u32> = others.into_iter().map(|t| t.join().unwrap()).collect();
            all.push(mine);
            all
        });
        indices.sort();
        assert_eq!(indices, [0, 1, 2]);
        assert_eq!(b.n_waiting(), 0);
        // Reusable: a second generation.
        std::thread::scope(|s| {
            let a = s.spawn(|| b.wait());
            let c = s.spawn(|| b.wait());
            b.wait().unwrap();
            a.join().unwrap().unwrap();
            c.join().unwrap().unwrap();
        });
    }

    #[test]
    fn an_abort_breaks_a_waiter() {
        let b = Barrier::new(2).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| b.wait());
            // Abort only once the waiter has arrived (bounded by the
            // harness watchdog, not timed).
            while b.n_waiting() == 0 {
                std::thread::yield_now();
            }
            b.abort();
            assert_eq!(waiter.join().unwrap().unwrap_err(), Error::BrokenBarrier);
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "judges a pid dead through the kernel")]
    fn a_dead_party_breaks_the_barrier_for_a_waiter() {
        let b = Barrier::new(3).unwrap();
        // A party that arrived and died: above any pid_max, no such process.
        let (pid, _) = b.slot(0);
        pid.store(i32::MAX as u32 - 1, Ordering::Relaxed);
        b.word(ARRIVED_AT).store(1, Ordering::Relaxed);
        assert_eq!(
            b.wait_timeout(Duration::from_secs(3_600)).unwrap_err(),
            Error::BrokenBarrier,
            "broken by the dead party, not by the timeout"
        );
        assert!(b.broken());
    }

    #[test]
    #[cfg_attr(miri, ignore = "judges a pid dead through the kernel")]
    fn the_last_arrival_breaks_it_for_a_dead_party_instead_of_tripping() {
        let b = Barrier::new(2).unwrap();
        // The only other party arrived and died: above any pid_max.
        let (pid, _) = b.slot(0);
        pid.store(i32::MAX as u32 - 1, Ordering::Relaxed);
        b.word(ARRIVED_AT).store(1, Ordering::Relaxed);
        assert_eq!(
            b.wait_timeout(Duration::from_secs(3_600)).unwrap_err(),
            Error::BrokenBarrier,
            "not tripped with a dead party"
        );
        assert!(b.broken());
        assert_eq!(b.n_waiting(), 0);
    }

    #[test]
    fn callers_beyond_the_parties_pass_with_the_next_generation() {
        let b = Barrier::new(2).unwrap();
        let mut indices: Vec<u32> = std::thread::scope(|s| {
            // Bounded: a hang here fails the test instead of the run.
            let wait = || b.wait_timeout(std::time::Duration::from_secs(60)).unwrap();
            let all: Vec<_> = (0..6).map(|_| s.spawn(wait)).collect();
            all.into_iter().map(|t| t.join().unwrap()).collect()
        });
        indices.sort();
        assert_eq!(indices, [0, 0, 0, 1, 1, 1], "three generations of two");
        assert!(!b.broken());
    }

    #[test]
    #[cfg_attr(miri, ignore = "opens the segment through /proc")]
    fn a_handle_keeps_the_parties() {
        let b = Barrier::new(5).unwrap();
        let bytes = crate::wire::encode_to_vec(&b);
        let copy = Barrier::decode(&mut bytes.as_slice()).unwrap();
        assert_eq!(copy.parties(), 5);
        copy.abort();
        assert!(b.broken(), "the same barrier");
    }

    #[test]
    fn out_of_range_parties_are_refused() {
        assert!(matches!(Barrier::new(0), Err(Error::InvalidConfig { .. })));
        assert!(matches!(
            Barrier::new(MAX_PARTIES + 1),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
