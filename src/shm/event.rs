//! An event count in shared memory: lets processes sleep until another one
//! announces a state change ("not empty", "not full"), without a lost
//! wake-up and without a system call when nobody sleeps.
//!
//! # Protocol
//!
//! Two 32-bit words: a *sequence* that every announced change bumps, and a
//! *sleeper count*.
//!
//! ```text
//! waiter                                  notifier
//! s = sequence (Acquire)                  change the state
//! sleepers += 1 (SeqCst)
//! fence(SeqCst)   ------ pairs with ----- fence(SeqCst)
//! re-check the state                      if sleepers > 0:
//! if unchanged: FUTEX_WAIT(sequence, s)       sequence += 1 (Release)
//! sleepers -= 1                               FUTEX_WAKE(sequence)
//! ```
//!
//! The fences order each side's store before its load, so either the
//! waiter's re-check sees the change or the notifier sees the waiter and
//! bumps the sequence; `FUTEX_WAIT` returns at once if the sequence moved
//! since the waiter read it, which closes the window between re-check and
//! wait. The same idea as [`park`](super::park)'s sleep flag, with a counter
//! so that several waiters can share one word.
//!
//! The words live in memory shared with processes that may die at any
//! instruction: a sleeper count left too high by a dead waiter costs a
//! spurious wake-up per notification, never a lost one.

use crate::error::{Error, Result};
use crate::sys;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The two words of one event count, borrowed from shared memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EventCount<'a> {
    sequence: &'a AtomicU32,
    sleepers: &'a AtomicU32,
}

impl<'a> EventCount<'a> {
    /// The event count made of these two words. Every process that shares
    /// them must use them only through an `EventCount`.
    pub(crate) fn new(sequence: &'a AtomicU32, sleepers: &'a AtomicU32) -> Self {
        Self { sequence, sleepers }
    }

    /// The waiter's side: read the sequence, announce, re-check with
    /// `ready`, sleep until notified, `deadline`, or `poll` elapsed (for
    /// states no notification announces, such as a peer's death). Returns
    /// whether `ready` succeeded at the re-check; the caller looks again
    /// either way.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when `deadline` has passed and `ready` failed.
    pub(crate) fn wait(
        &self,
        deadline: Option<Instant>,
        poll: Option<Duration>,
        mut ready: impl FnMut() -> bool,
    ) -> Result<bool> {
        // Acquire pairs with the Release increments in `notify` and
        // `notify_all`.
        let seq = self.sequence.load(Ordering::Acquire);
        // SeqCst, with the fence below: the announcement is ordered before
        // our re-check; pairs with the fence and sleeper load in `notify`.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        // SeqCst fence: pairs with the fence in `notify` (we see its state
        // change, or it sees our sleeper count).
        fence(Ordering::SeqCst);
        let done = ready();
        if !done {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                // SeqCst: as the decrement below.
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::Timeout);
            }
            let timeout = match (left, poll) {
                (Some(l), Some(p)) => Some(l.min(p)),
                (l, p) => l.or(p),
            };
            sys::futex_wait(self.sequence, seq, timeout);
        }
        // SeqCst for symmetry with the announcement; nothing pairs with it:
        // a waker that still counts us costs one spurious wake, never a lost one.
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        Ok(done)
    }

    /// The first half of [`wait`](Self::wait), for a waiter that sleeps on
    /// several event counts at once (`crate::connection::wait`, with one
    /// `futex_waitv`): reads the sequence and announces a sleeper. The
    /// caller then fences (SeqCst), re-checks its state, sleeps on the
    /// returned word while it holds the returned value, and calls
    /// [`withdraw`](Self::withdraw): the same protocol, split.
    pub(crate) fn announce(&self) -> (&'a AtomicU32, u32) {
        // Acquire pairs with the Release increments in `notify` and
        // `notify_all`, as in `wait`.
        let seq = self.sequence.load(Ordering::Acquire);
        // SeqCst: as in `wait`; the caller's fence pairs with the one in
        // `notify`.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        (self.sequence, seq)
    }

    /// The second half of a split wait: the sleeper
    /// [`announce`](Self::announce)d leaves.
    pub(crate) fn withdraw(&self) {
        // SeqCst for symmetry, as the decrement in `wait`.
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// The notifier's side, after a state change. Touches the shared
    /// sequence word only when someone sleeps: the state change this follows
    /// is ordered before our sleeper check by the fence, and a waiter
    /// announces itself before its re-check, so one of the two sees the other.
    pub(crate) fn notify(&self) {
        // SeqCst fence: pairs with the fence in `wait`.
        fence(Ordering::SeqCst);
        // Relaxed: the fence above orders it after our state change, and
        // pairs with the waiter's SeqCst announcement and fence.
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            // Release pairs with the Acquire load in `wait`; a waiter that read
            // the old value returns from FUTEX_WAIT at once.
            self.sequence.fetch_add(1, Ordering::Release);
            sys::futex_wake_all(self.sequence);
        }
    }

    /// Wakes every waiter, sleeping or not, after a rare change that must
    /// not be missed (a close): no sleeper check.
    pub(crate) fn notify_all(&self) {
        // Release pairs with the Acquire load of the sequence in `wait`: a
        // waiter that read the bumped sequence sees the change (with
        // whatever Release store announced it, such as the closed word in
        // `shm/mpmc/mod.rs`) at its re-check, and one that read the old value
        // returns from FUTEX_WAIT at once.
        self.sequence.fetch_add(1, Ordering::Release);
        sys::futex_wake_all(self.sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn no_notification_is_lost() {
        // Many rounds of "waiter waits for the flag, notifier sets it and
        // notifies": a lost wake-up hangs, and the harness watchdog fails
        // the run.
        let rounds = if cfg!(miri) { 10 } else { 2_000 };
        let (sequence, sleepers) = (AtomicU32::new(0), AtomicU32::new(0));
        let event = EventCount::new(&sequence, &sleepers);
        let flag = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..rounds {
                    while flag.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    flag.store(true, Ordering::Release);
                    event.notify();
                }
            });
            for _ in 0..rounds {
                while !flag.load(Ordering::Acquire) {
                    event
                        .wait(None, None, || flag.load(Ordering::Acquire))
                        .unwrap();
                }
                flag.store(false, Ordering::Release);
            }
        });
    }

    #[test]
    fn a_passed_deadline_times_out() {
        let (sequence, sleepers) = (AtomicU32::new(0), AtomicU32::new(0));
        let event = EventCount::new(&sequence, &sleepers);
        assert!(matches!(
            event.wait(Some(Instant::now()), None, || false),
            Err(Error::Timeout)
        ));
        assert!(event.wait(None, None, || true).unwrap());
        assert_eq!(sleepers.load(Ordering::Relaxed), 0, "waiters leave");
    }
}
