//! Waiting without burning a core: spin briefly, then sleep on a futex.
//!
//! # The sleep-flag protocol
//!
//! A sleeper and a waker share a futex word (0 = awake, 1 = asleep or about to).
//!
//! ```text
//! sleeper                              waker
//! word = 1                             publish the data (Release)
//! fence(SeqCst)   ---- pairs with ---- fence(SeqCst)
//! re-check the condition               if word == 1: word = 0, FUTEX_WAKE
//! if still false: FUTEX_WAIT(word, 1)
//! word = 0
//! ```
//!
//! The two fences order each side's store before its load, so at least one of
//! them sees the other: either the sleeper's re-check sees the data, or the
//! waker sees the flag and wakes it. Skip either fence and a wake-up can be lost.
//! `FUTEX_WAIT` returns at once if the word is no longer 1, which closes the
//! window between the re-check and the wait.

use crate::sys;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a waiter spins before it sleeps. Futex wake-ups cost tens of
/// microseconds on virtual machines, so a short spin keeps round trips fast;
/// a long one would steal the core from the process it is waiting for.
pub(crate) const SPIN_FOR: Duration = Duration::from_micros(50);

/// The instant `timeout` from now, or `None` when that lies beyond what an
/// `Instant` can represent (`Duration::MAX` and its like): such a wait has no
/// deadline. `Instant::now() + timeout` would panic instead.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Sleeper side: announce, fence, re-check, wait. Returns when `ready()` held
/// at the re-check, or after a wake-up (possibly spurious) or `timeout`.
pub(crate) fn sleep_unless(
    word: &AtomicU32,
    timeout: Option<Duration>,
    mut ready: impl FnMut() -> bool,
) {
    word.store(1, Ordering::Relaxed);
    // SeqCst fence: pairs with the fence in `wake`.
    fence(Ordering::SeqCst);
    if !ready() {
        sys::futex_wait(word, 1, timeout);
    }
    word.store(0, Ordering::Relaxed);
}

/// Waker side: call after publishing. Costs a fence and a load when nobody
/// sleeps; a system call only when somebody does.
pub(crate) fn wake(word: &AtomicU32) {
    // SeqCst fence: pairs with the fence in `sleep_unless`.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != 0 && word.swap(0, Ordering::Relaxed) != 0 {
        sys::futex_wake_all(word);
    }
}

/// A bounded spin: `spin()` returns `false` once the budget is spent, and the
/// caller should sleep. Escalates from `spin_loop` to `yield_now` so that on an
/// oversubscribed machine the process we wait for gets the core.
#[derive(Debug)]
pub(crate) struct Spinner {
    step: u32,
    started: Option<Instant>,
    budget: Duration,
}

impl Spinner {
    /// A spinner with the default budget.
    pub(crate) fn new() -> Self {
        Self::with_budget(SPIN_FOR)
    }

    /// A spinner that gives up after `budget`.
    pub(crate) fn with_budget(budget: Duration) -> Self {
        Self {
            step: 0,
            started: None,
            budget,
        }
    }

    /// Starts over, after progress.
    pub(crate) fn reset(&mut self) {
        self.step = 0;
        self.started = None;
    }

    /// Waits a little. `false` means: stop spinning, go to sleep.
    pub(crate) fn spin(&mut self) -> bool {
        self.step += 1;
        if self.step <= 64 {
            for _ in 0..(1 << (self.step / 16).min(4)) {
                std::hint::spin_loop();
            }
            return true;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        if started.elapsed() >= self.budget {
            return false;
        }
        std::thread::yield_now();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn no_wake_up_is_lost() {
        // Many rounds of "sleeper waits for flag, waker sets it and wakes": a
        // lost wake-up hangs, and the harness watchdog fails the run.
        let rounds = if cfg!(miri) { 10 } else { 2_000 };
        let word = Arc::new(AtomicU32::new(0));
        let flag = Arc::new(AtomicBool::new(false));
        let (w2, f2) = (word.clone(), flag.clone());
        let waker = std::thread::spawn(move || {
            for _ in 0..rounds {
                while f2.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                f2.store(true, Ordering::Release); // publish
                wake(&w2);
            }
        });
        for _ in 0..rounds {
            while !flag.load(Ordering::Acquire) {
                sleep_unless(&word, None, || flag.load(Ordering::Acquire));
            }
            flag.store(false, Ordering::Release);
        }
        waker.join().unwrap();
    }

    #[test]
    fn spinner_gives_up() {
        let mut s = Spinner::with_budget(Duration::ZERO);
        let mut n = 0;
        while s.spin() {
            n += 1;
            assert!(n < 1_000_000);
        }
    }

    #[test]
    fn an_endless_timeout_is_no_deadline() {
        assert!(deadline_after(Duration::MAX).is_none());
        assert!(deadline_after(Duration::from_secs(1)).is_some());
    }
}
