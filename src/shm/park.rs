//! Waiting without burning a core: spin briefly, then sleep on a futex.
//!
//! # The sleep-flag protocol
//!
//! A sleeper and its wakers share a futex word: bit 0 is the sleep flag (1 =
//! asleep or about to be), the bits above it a wake-up count. One thread
//! sleeps on a word; only it sets the flag.
//!
//! ```text
//! sleeper                              waker
//! s = word | 1; word = s               publish the data (Release)
//! fence(SeqCst)   ---- pairs with ---- fence(SeqCst)
//! re-check the condition               if word & 1: change the word, FUTEX_WAKE
//! if still false: FUTEX_WAIT(word, s)
//! word &= !1; if the count moved: += 2
//! fence(SeqCst)
//! ```
//!
//! The two fences order each side's store before its load, so at least one of
//! them sees the other: either the sleeper's re-check sees the data, or the
//! waker sees the flag, changes the word and wakes it. `FUTEX_WAIT` returns at
//! once if the word is no longer `s`, which closes the window between the
//! re-check and the wait. Skip either fence and a wake-up can be lost.
//!
//! A waker changes the word in one of two ways:
//! - [`wake`] clears the flag, so that the wakers after it make no system
//!   call until the sleeper sleeps again. For a waker that cannot die
//!   without the sleeper: a thread of the sleeper's process, or a parent
//!   waking its worker.
//! - [`wake_leaving_flag`] adds to the count and leaves the flag set. For a
//!   waker that may die at any instruction while the sleeper lives on (a
//!   worker waking its parent): had it cleared the flag and died before its
//!   `FUTEX_WAKE`, every later waker would see no sleeper and the sleeper
//!   would sleep on with work waiting (`corepool soak`, which kills a worker
//!   every 10 ms, stalled so for up to two minutes). Left set, the flag
//!   makes the next waker wake it. The cost: a system call per such wake-up
//!   until the sleeper has run and cleared the flag, which
//!   [`LeavingFlagWaker`] spares a waker that rings again before then. A
//!   waker *stopped* (SIGSTOP) at that point is neither: what it published
//!   waits for the next waker, or for it to continue and make its
//!   `FUTEX_WAKE`.

use crate::sys;
use std::cell::Cell;
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

/// The sleep flag (bit 0 of a futex word); the bits above it count
/// [`wake_leaving_flag`]'s wake-ups.
const ASLEEP: u32 = 1;

/// Sleeper side: announce, fence, re-check, wait. Returns when `ready()` held
/// at the re-check, or after a wake-up (possibly spurious) or `timeout`.
pub(crate) fn sleep_unless(
    word: &AtomicU32,
    timeout: Option<Duration>,
    mut ready: impl FnMut() -> bool,
) {
    let announced = announce(word);
    if !ready() {
        sys::futex_wait(word, announced, timeout);
    }
    end_sleep(word, announced);
}

/// The sleeper's announcement: sets the flag, then the fence. Returns the
/// word as announced, for `FUTEX_WAIT` to compare.
fn announce(word: &AtomicU32) -> u32 {
    // Plain load and store. Only this thread sets the flag, and a waker
    // writes the word only after seeing it set, so the one write that can
    // land between our load and store is a stale waker's (it saw the flag
    // of our previous sleep). Our store may undo it, harmlessly: that
    // waker loaded the word before our store, so its fence precedes ours
    // in the SeqCst order and our re-check sees what it published. Its
    // `fetch_add` found the flag clear, so no `LeavingFlagWaker` remembers
    // the value it left, and the value our store brings back is one that
    // `end_sleep` made, later than any value a waker remembers.
    let announced = word.load(Ordering::Relaxed) | ASLEEP;
    word.store(announced, Ordering::Relaxed);
    // SeqCst fence: pairs with the fences in `wake`, `wake_leaving_flag`
    // and `LeavingFlagWaker::wake`.
    fence(Ordering::SeqCst);
    announced
}

/// The sleeper's way out of a sleep it `announce`d as `announced`: clears
/// the flag and, if a waker leaving the flag added to the count meanwhile,
/// adds one more, so that the word never again holds a value such a waker
/// read after its own wake-up (what lets a [`LeavingFlagWaker`] skip its
/// system call); then a fence.
fn end_sleep(word: &AtomicU32, announced: u32) {
    // It must be a read-modify-write. A waker leaving the flag may add to
    // the count meanwhile, and a `LeavingFlagWaker` skips its system call
    // while the word holds the value its own `fetch_add` left: sound only
    // because the word never goes back to an earlier value. A plain store
    // could drop that `fetch_add` and take the count back, so that a later
    // announcement (or another waker's `fetch_add`) brings the word to a
    // value that waker remembers; it would then skip the wake-up of a
    // sleep nobody woke, a lost wake-up.
    let before = word.fetch_and(!ASLEEP, Ordering::Relaxed);
    if before >> 1 != announced >> 1 {
        // Two RMWs rather than a CAS loop: between them the flag is clear,
        // which tells a waker that this thread is awake, as it is.
        word.fetch_add(ASLEEP << 1, Ordering::Relaxed);
    }
    // SeqCst fence: pairs with the fence in `LeavingFlagWaker::wake`. A
    // waker that still reads the value its own wake-up left did not see
    // the stores above, so its fence comes first in the SeqCst order and
    // what this thread reads next (the caller looks again) sees what that
    // waker published before its look.
    fence(Ordering::SeqCst);
}

/// Waker side, for a waker that cannot die without the sleeper (see the
/// module's doc): call after publishing. Clears the flag, so that other
/// wakers make no system call until the sleeper sleeps again. Costs a fence
/// and a load when nobody sleeps; a system call only when somebody does.
pub(crate) fn wake(word: &AtomicU32) {
    // SeqCst fence: pairs with the fence in `announce`.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) & ASLEEP != 0
        && word.fetch_and(!ASLEEP, Ordering::Relaxed) & ASLEEP != 0
    {
        sys::futex_wake_all(word);
    }
}

/// Waker side, for a waker that cannot trust the flag (the word is in
/// memory that other processes may write wrongly): clears it and makes the
/// `FUTEX_WAKE` whatever it said. One system call always: for rare
/// wake-ups that must not be lost (a supervisor event, a stop).
pub(crate) fn wake_regardless(word: &AtomicU32) {
    // SeqCst fence: pairs with the fence in `announce`.
    fence(Ordering::SeqCst);
    word.fetch_and(!ASLEEP, Ordering::Relaxed);
    sys::futex_wake_all(word);
}

/// Waker side, for a waker that may die at any instruction while the
/// sleeper lives on (see the module's doc): call after publishing. Leaves
/// the flag set for the sleeper to clear, so that a waker killed before its
/// `FUTEX_WAKE` loses no wake-up: the next waker makes it. Costs a fence and
/// a load when nobody sleeps; a system call for every wake-up while
/// somebody does.
pub(crate) fn wake_leaving_flag(word: &AtomicU32) {
    // SeqCst fence: pairs with the fence in `announce`.
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) & ASLEEP != 0 {
        // The sleeper's `FUTEX_WAIT` compares with the value it announced:
        // changed, it returns at once if it had not slept yet.
        word.fetch_add(ASLEEP << 1, Ordering::Relaxed);
        sys::futex_wake_all(word);
    }
}

/// How long a [`LeavingFlagWaker`] trusts its last wake-up: far less than
/// the 2^31 changes of the word it takes for the count to come round to
/// the same value (each a read-modify-write on a shared line, and most of
/// them a system call).
const LEAVING_FLAG_WAKE_FRESH: Duration = Duration::from_millis(10);

/// [`wake_leaving_flag`] for one waker that wakes the same sleeper again and
/// again (a worker ringing its parent's doorbell after every batch of
/// results): it skips the system call while the word still holds the value
/// its own last wake-up left, made within [`LEAVING_FLAG_WAKE_FRESH`].
///
/// Why: the flag stays set from a wake-up until the sleeper runs and clears
/// it. On a machine with fewer CPUs than busy threads that can take a
/// scheduler slice, and a worker finishing a batch every few microseconds
/// made a `FUTEX_WAKE` after each of them: up to 50,000 a run of the
/// `apply_async` harness (docs/performance.md, "The workers' doorbell"), four times the
/// workers' yields.
///
/// Why it is safe: the waker made that value with its `fetch_add` on a word
/// whose flag was set, so after the sleeper's announcement, then made its
/// `FUTEX_WAKE`, completely (this process is alive, and did it). The
/// sleeper's `FUTEX_WAIT` then either was woken by it or returns at once,
/// and [`end_sleep`] changes the word for good (it adds to the count when a
/// waker did). A waker that still reads its value therefore precedes the
/// sleeper's closing fence, and the sleeper's next look sees what the waker
/// published. A waker that died halfway left another value: the next waker
/// makes the call, as with [`wake_leaving_flag`].
#[derive(Debug, Default)]
pub(crate) struct LeavingFlagWaker {
    /// The word's value after this waker's last `fetch_add` that found the
    /// flag set, and a time before that `fetch_add`.
    last: Option<(u32, Instant)>,
}

impl LeavingFlagWaker {
    /// [`wake_leaving_flag`], skipping the system call as the type's doc
    /// says. `now` is a recent clock reading (before this call).
    pub(crate) fn wake(&mut self, word: &AtomicU32, now: Instant) {
        // SeqCst fence: pairs with the fences in `announce` and `end_sleep`.
        fence(Ordering::SeqCst);
        let seen = word.load(Ordering::Relaxed);
        if seen & ASLEEP == 0 {
            return;
        }
        if let Some((value, at)) = self.last {
            if seen == value && now.saturating_duration_since(at) < LEAVING_FLAG_WAKE_FRESH {
                return;
            }
        }
        let before = word.fetch_add(ASLEEP << 1, Ordering::Relaxed);
        sys::futex_wake_all(word);
        // Remembered only when the flag was still set at the `fetch_add`:
        // only then did it land within the sleep that was announced.
        self.last = (before & ASLEEP != 0).then(|| (before.wrapping_add(ASLEEP << 1), now));
    }
}

/// A yield that returns later than this handed the CPU to another thread
/// for a good part of a time slice (the scheduler's base slice is 0.75-3 ms).
/// On this VM 99.9% of yields return within 10 µs, even at a load of 10.
const SLOW_YIELD: Duration = Duration::from_micros(500);

/// Slow yields in a row, on one thread, that make it stop yielding for a
/// while. One is what a busy machine gives now and then; two in a row is
/// what a CPU hog on the thread's CPU gives (half of all yields there are
/// slow, 1-5 ms each).
const SLOW_YIELDS_IN_A_ROW: u32 = 2;

/// How long a thread that met [`SLOW_YIELDS_IN_A_ROW`] sleeps on its futex
/// instead of yielding. `sched_yield` puts the caller behind the other
/// runnable threads of its CPU, so beside a CPU hog every yield costs the
/// hog's whole slice; a futex wake-up, in contrast, lets the woken waiter
/// preempt the hog at once. A user trial's `map` of 2000 items went from
/// 0.1 ms to 4-6 ms beside one `yes`, 73% of the pool's context switches in
/// `sched_yield`. After the window, yields are tried again: two slow
/// yields per window (a few ms in 200) is what a lasting hog still costs.
const SLEEP_INSTEAD_OF_YIELDING_FOR: Duration = Duration::from_millis(200);

/// Whether this thread's yields have lately been slow: a thread's own
/// record, since one thread may share its CPU with a hog while another
/// (pinned elsewhere) does not.
#[derive(Debug, Clone, Copy)]
struct YieldRecord {
    slow_in_a_row: u32,
    /// No yield before this instant (`None`: yields are fine).
    sleep_until: Option<Instant>,
}

impl YieldRecord {
    const FINE: Self = Self {
        slow_in_a_row: 0,
        sleep_until: None,
    };

    /// Whether a waiter may yield at `now`, rather than go to sleep.
    fn may_yield(&self, now: Instant) -> bool {
        self.sleep_until.is_none_or(|until| now >= until)
    }

    /// Records a yield that took `took`, ending at `now`. Returns whether
    /// the waiter should stop yielding now (and sleep).
    fn after_yield(&mut self, took: Duration, now: Instant) -> bool {
        if took <= SLOW_YIELD {
            *self = Self::FINE;
            return false;
        }
        self.slow_in_a_row += 1;
        if self.slow_in_a_row < SLOW_YIELDS_IN_A_ROW {
            return false;
        }
        self.slow_in_a_row = 0;
        self.sleep_until = now.checked_add(SLEEP_INSTEAD_OF_YIELDING_FOR);
        true
    }
}

thread_local! {
    static YIELDS: Cell<YieldRecord> = const { Cell::new(YieldRecord::FINE) };
}

/// Whether this thread may yield at `now` (see [`YieldRecord`]). A thread
/// whose thread-locals are gone (at its exit) yields as before.
fn may_yield_at(now: Instant) -> bool {
    YIELDS.try_with(|r| r.get().may_yield(now)).unwrap_or(true)
}

/// Yields this thread's CPU (it is `before` now); returns whether the
/// waiter should stop yielding and sleep instead (see
/// [`YieldRecord::after_yield`]).
fn yield_and_judge(before: Instant) -> bool {
    std::thread::yield_now();
    let now = Instant::now();
    YIELDS
        .try_with(|r| {
            let mut record = r.get();
            let stop = record.after_yield(now - before, now);
            r.set(record);
            stop
        })
        .unwrap_or(false)
}

/// A bounded spin: `spin()` returns `false` once the budget is spent, and the
/// caller should sleep. Escalates from `spin_loop` to `yield_now` so that on an
/// oversubscribed machine the process we wait for gets the core; a thread
/// whose yields were slow twice in a row (a CPU hog beside it) skips them,
/// and sleeps sooner, for a while (see [`SLEEP_INSTEAD_OF_YIELDING_FOR`]).
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
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        if now - started >= self.budget || !may_yield_at(now) {
            return false;
        }
        !yield_and_judge(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// Many rounds of "sleeper waits for flag, waker sets it and wakes it
    /// with `wake`": a lost wake-up hangs, and the harness watchdog fails
    /// the run. The sleeper's flag is clear at the end.
    fn no_wake_up_is_lost_with(wake: fn(&AtomicU32)) {
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
        assert_eq!(
            word.load(Ordering::Relaxed) & ASLEEP,
            0,
            "the sleeper clears its flag"
        );
    }

    #[test]
    fn no_wake_up_is_lost() {
        no_wake_up_is_lost_with(wake);
    }

    #[test]
    fn no_wake_up_is_lost_with_wakers_leaving_the_flag() {
        no_wake_up_is_lost_with(wake_leaving_flag);
    }

    /// Rings `word` with `waker`; returns whether it skipped its wake-up.
    /// Seen from outside: the flag was set before the call and the word is
    /// the same after it. A waker that did not skip changed the word (its
    /// `fetch_add`), or found it changed (the flag clear: the load before
    /// the call saw it set, and only the sleeper clears it), and the word
    /// never comes back to an earlier value (`end_sleep`).
    fn ring_counting_skips(waker: &mut LeavingFlagWaker, word: &AtomicU32) -> bool {
        let before = word.load(Ordering::Relaxed);
        waker.wake(word, Instant::now());
        before & ASLEEP != 0 && word.load(Ordering::Relaxed) == before
    }

    #[test]
    fn no_wake_up_is_lost_when_wakers_skip() {
        // Two workers ring one doorbell with `LeavingFlagWaker`s after each
        // item they publish, without waiting for the sleeper to run: a ring
        // while the sleeper has yet to clear the flag after the same
        // waker's last one skips its FUTEX_WAKE. The sleeper counts every
        // item (it sleeps with no timeout, so a lost wake-up hangs it and
        // the watchdog fails the test), and the skips must have happened.
        const WAKERS: u64 = 2;
        const PER_WAKER: u64 = if cfg!(miri) { 200 } else { 100_000 };
        // Now and then a waker lets the sleeper catch up and go to sleep,
        // so that the rings after it find the flag set (flooded, the
        // sleeper rarely sleeps and no ring can skip).
        const PAUSE_EVERY: u64 = if cfg!(miri) { 8 } else { 64 };
        let word = Arc::new(AtomicU32::new(0));
        let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Set by the watchdog: the wakers' pauses end, so that a failed
        // run leaves no thread spinning behind it.
        let give_up = Arc::new(AtomicBool::new(false));
        let wakers: Vec<_> = (0..WAKERS)
            .map(|_| {
                let (word, published, give_up) = (word.clone(), published.clone(), give_up.clone());
                std::thread::spawn(move || {
                    let mut waker = LeavingFlagWaker::default();
                    let mut skips = 0u64;
                    for i in 0..PER_WAKER {
                        if i % PAUSE_EVERY == 0 {
                            while word.load(Ordering::Relaxed) & ASLEEP == 0
                                && !give_up.load(Ordering::Relaxed)
                            {
                                std::thread::yield_now();
                            }
                        }
                        // Release: pairs with the sleeper's Acquire loads.
                        published.fetch_add(1, Ordering::Release);
                        skips += u64::from(ring_counting_skips(&mut waker, &word));
                    }
                    skips
                })
            })
            .collect();
        let (done_tx, done) = std::sync::mpsc::channel();
        let (w2, p2) = (word.clone(), published.clone());
        let sleeper = std::thread::spawn(move || {
            let mut seen = 0;
            while seen < WAKERS * PER_WAKER {
                // Acquire: pairs with the wakers' Release `fetch_add`s.
                let now = p2.load(Ordering::Acquire);
                if now != seen {
                    seen = now;
                    continue;
                }
                sleep_unless(&w2, None, || p2.load(Ordering::Acquire) != seen);
            }
            let _ = done_tx.send(());
        });
        if done.recv_timeout(Duration::from_secs(120)).is_err() {
            give_up.store(true, Ordering::Relaxed);
            panic!("the sleeper was left asleep with items published: a lost wake-up");
        }
        sleeper.join().unwrap();
        let skips: u64 = wakers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(skips > 0, "no ring skipped: the test missed its point");
        assert_eq!(
            word.load(Ordering::Relaxed) & ASLEEP,
            0,
            "the sleeper clears its flag"
        );
    }

    #[test]
    fn a_waker_skips_only_its_own_fresh_wake_up() {
        let word = AtomicU32::new(0);
        let now = Instant::now();
        let mut waker = LeavingFlagWaker::default();
        // Nobody asleep: nothing to do.
        waker.wake(&word, now);
        assert_eq!(word.load(Ordering::Relaxed), 0);
        let announced = announce(&word);
        waker.wake(&word, now);
        let woken = word.load(Ordering::Relaxed);
        assert_eq!(woken, announced + 2, "a wake-up adds to the count");
        // The sleeper has not run yet: the repeat makes no change (and no
        // system call).
        waker.wake(&word, now);
        assert_eq!(word.load(Ordering::Relaxed), woken);
        // Unless the wake-up is old.
        waker.wake(&word, now + LEAVING_FLAG_WAKE_FRESH);
        let woken = word.load(Ordering::Relaxed);
        assert_eq!(woken, announced + 4);
        // Another waker (or one that died before its FUTEX_WAKE) changed
        // the word: no skip.
        word.fetch_add(2, Ordering::Relaxed);
        let later = now + LEAVING_FLAG_WAKE_FRESH;
        waker.wake(&word, later);
        assert_eq!(word.load(Ordering::Relaxed), announced + 8);
        // The sleeper wakes: its flag is clear and the word moved on, so the
        // next sleep reads as new to the waker even with the same count of
        // wake-ups.
        end_sleep(&word, announced);
        let after = word.load(Ordering::Relaxed);
        assert_eq!(after & ASLEEP, 0);
        waker.wake(&word, later);
        assert_eq!(word.load(Ordering::Relaxed), after, "nobody asleep");
        let again = announce(&word);
        assert_ne!(again, announced + 8, "the word never comes back");
        waker.wake(&word, later);
        assert_eq!(word.load(Ordering::Relaxed), again + 2);
    }

    #[test]
    fn a_sleep_nobody_woke_with_the_flag_leaves_the_word_as_it_was() {
        // `wake` clears the flag itself; the word then reads 0 and 1, as
        // docs/protocol.md says of a worker's `sleeping` word.
        let word = AtomicU32::new(0);
        let announced = announce(&word);
        assert_eq!(announced, 1);
        wake(&word);
        end_sleep(&word, announced);
        assert_eq!(word.load(Ordering::Relaxed), 0);
        let announced = announce(&word);
        end_sleep(&word, announced);
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_waker_that_dies_before_its_futex_wake_loses_no_wake_up() {
        // A worker killed between changing the word and its FUTEX_WAKE
        // (`corepool soak` kills one every 10 ms) did only the first half
        // of a wake-up: the flag it leaves set makes the next waker do it.
        let word = Arc::new(AtomicU32::new(0));
        let flag = Arc::new(AtomicBool::new(false));
        let (w2, f2) = (word.clone(), flag.clone());
        let (done_tx, done) = std::sync::mpsc::channel();
        let _sleeper = std::thread::spawn(move || {
            while !f2.load(Ordering::Acquire) {
                sleep_unless(&w2, None, || f2.load(Ordering::Acquire));
            }
            let _ = done_tx.send(());
        });
        while word.load(Ordering::Relaxed) & ASLEEP == 0 {
            std::thread::yield_now();
        }
        flag.store(true, Ordering::Release); // publish
                                             // The dying waker's half: its fence and its change of the word.
        fence(Ordering::SeqCst);
        word.fetch_add(ASLEEP << 1, Ordering::Relaxed);
        // The next waker, which sees the flag whether or not the sleeper
        // has woken yet (only the sleeper clears it).
        wake_leaving_flag(&word);
        assert!(
            done.recv_timeout(Duration::from_secs(60)).is_ok(),
            "the sleeper was left asleep"
        );
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
    fn two_slow_yields_in_a_row_stop_the_yields_for_a_while() {
        let t0 = Instant::now();
        let slow = SLOW_YIELD + Duration::from_micros(1);
        let fast = Duration::from_micros(5);
        let mut r = YieldRecord::FINE;
        // A busy machine: a slow yield now and then, never two in a row.
        for _ in 0..100 {
            assert!(!r.after_yield(slow, t0));
            assert!(!r.after_yield(fast, t0));
            assert!(r.may_yield(t0));
        }
        // A hog on this CPU: two in a row.
        assert!(!r.after_yield(slow, t0));
        assert!(r.after_yield(slow, t0), "stop yielding");
        assert!(!r.may_yield(t0));
        assert!(!r.may_yield(t0 + SLEEP_INSTEAD_OF_YIELDING_FOR / 2));
        // The window ends; yields are tried again, and a fast one clears it.
        let later = t0 + SLEEP_INSTEAD_OF_YIELDING_FOR;
        assert!(r.may_yield(later));
        assert!(!r.after_yield(fast, later));
        assert!(r.may_yield(later));
        assert_eq!(r.slow_in_a_row, 0);
    }

    #[test]
    fn an_endless_timeout_is_no_deadline() {
        assert!(deadline_after(Duration::MAX).is_none());
        assert!(deadline_after(Duration::from_secs(1)).is_some());
    }
}
