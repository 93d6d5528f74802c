//! Waiting for results without leaning on one thread: a caller that waits
//! (a `map`, a lazy map's `next`, `AsyncResult::get` once its spin is
//! over, a submitter waiting for room under `max_queued`) helps collect, and goes on helping while the thread delivering
//! outcomes (the driver, or another helper) is held up in the user's code
//! of some other task (a slow decoder, a `submit_raw` `done` function),
//! instead of sleeping until it returns. Callbacks do not hold up a
//! delivery: they run on the pool's callback thread (`callback_thread.rs`),
//! which nudges the waiters here as each one's task result is stored.
//!
//! [`Assist`] counts the deliveries in progress and nudges the waiters asleep
//! in [`wait_helping`] when one starts or ends: at its start, so that a
//! waiter looks for results itself while the delivery lasts; at its end,
//! because the outcome it waits for may have been among those delivered.
//! A delivery that cannot take long (only results that deliver at once,
//! `Completion::delivers_at_once`) is not counted, only announced at its
//! end ([`Assist::delivered`]): there is nothing to help with while it lasts.

use super::driver::Shared;
use crate::shm::park::Spinner;
use crate::sync::lock;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a waiter naps between looks at the rings while a delivery is in
/// progress: a delivery takes microseconds unless a decoder is slow, and a
/// waiter woken at its end does not nap that long. A user's slow decoder
/// then holds a waiting `map`'s results back by about this much per look,
/// instead of for the decoder's whole length.
const LOOK_AGAIN_WHILE_DELIVERING: Duration = Duration::from_millis(1);

/// The deliveries in progress on a pool, and the waiters to nudge about them.
pub(super) struct Assist {
    /// Threads delivering outcomes right now (running decoders).
    delivering: AtomicUsize,
    /// Waiters asleep on `nudged`; only changed with `lock` held.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    nudged: Condvar,
}

/// A delivery in progress: ends (and nudges the waiters) when dropped.
pub(super) struct Delivery<'a>(&'a Assist);

impl Drop for Delivery<'_> {
    fn drop(&mut self) {
        // SeqCst, with the fence in `nudge`: see `wait_helping`.
        self.0.delivering.fetch_sub(1, Ordering::SeqCst);
        self.0.nudge();
    }
}

impl Assist {
    pub(super) fn new() -> Self {
        Self {
            delivering: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            nudged: Condvar::new(),
        }
    }

    /// Marks a delivery of outcomes as in progress until the guard drops.
    /// Costs two fences and two loads when nobody waits.
    pub(super) fn delivering(&self) -> Delivery<'_> {
        // SeqCst, with the fence in `nudge`: see `wait_helping`.
        self.delivering.fetch_add(1, Ordering::SeqCst);
        self.nudge();
        Delivery(self)
    }

    /// Tells the waiters that a delivery which did not count itself (one
    /// whose completions all deliver at once, `Completion::delivers_at_once`)
    /// has ended: the outcome one waits for may have been among them. Costs
    /// a fence and a load when nobody waits, where counting the delivery
    /// costs two read-modify-writes, two fences and two loads.
    pub(super) fn delivered(&self) {
        self.nudge();
    }

    /// Wakes the waiters asleep in [`wait_helping`], if any.
    fn nudge(&self) {
        // SeqCst fence: pairs with the one in `wait_helping` after it counts
        // itself a sleeper: either it sees what this delivery changed (an
        // outcome in, `delivering` moved), or we see it asleep and wake it.
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            // Under the lock: a sleeper holds it from its count to its wait.
            let _held = lock(&self.lock);
            self.nudged.notify_all();
        }
    }

    /// Sleeps until nudged or `nap` passed (`None`: until nudged), unless
    /// `reached` holds already, or (`stop_if_delivering`) a delivery is
    /// in progress. Returns whether `reached` held.
    fn sleep(
        &self,
        nap: Option<Duration>,
        stop_if_delivering: bool,
        reached: &mut impl FnMut() -> bool,
    ) -> bool {
        let held = lock(&self.lock);
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        // SeqCst fence: pairs with the one in `nudge`.
        fence(Ordering::SeqCst);
        let done = reached();
        let busy = stop_if_delivering && self.delivering.load(Ordering::Relaxed) > 0;
        let held = if done || busy {
            held
        } else {
            match nap {
                None => self.nudged.wait(held).unwrap_or_else(|p| p.into_inner()),
                Some(nap) => {
                    self.nudged
                        .wait_timeout(held, nap)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            }
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        drop(held);
        done
    }

    fn delivery_in_progress(&self) -> bool {
        self.delivering.load(Ordering::SeqCst) > 0
    }
}

/// Blocks until `reached` holds, helping `pool` collect and deliver results
/// meanwhile: first spinning as a helper (as `AsyncResult::get` does), then
/// asleep until a delivery starts or ends; while one is in progress (it may
/// be stuck in a slow decoder of another task), it collects what the
/// workers answered itself, looking again every millisecond or so.
///
/// `reached` must become true only through an outcome's delivery (a chunk
/// answered, a result in), or the sleep may not see it. The caller checked
/// that it may wait on `pool` here (`Shared::check_can_wait`).
pub(super) fn wait_helping(pool: &Shared, reached: impl FnMut() -> bool) {
    wait_helping_until(pool, None, true, reached);
}

/// [`wait_helping`] that gives up at `deadline` (returns whether `reached`
/// held), and spins first only if `spin_first` (a caller that has spun
/// already, as `AsyncResult::wait_until` has, goes straight to sleep).
pub(super) fn wait_helping_until(
    pool: &Shared,
    deadline: Option<Instant>,
    spin_first: bool,
    mut reached: impl FnMut() -> bool,
) -> bool {
    if reached() {
        return true; // no helper to register, no driver to ungate after
    }
    let assist = &pool.assist;
    let mut spin = spin_first;
    loop {
        if spin {
            // A round trip is a few microseconds, a futex sleep and wake-up
            // tens of them: spin first, collecting as we go.
            let _helping = pool.helper();
            let mut spinner = Spinner::new();
            loop {
                if reached() {
                    return true;
                }
                pool.try_drive();
                if !spinner.spin() {
                    break;
                }
            }
        }
        let left = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return reached(),
            },
        };
        // Asleep until a delivery starts (or ends, with our outcome maybe).
        if assist.sleep(left, true, &mut reached) {
            return true;
        }
        if !assist.delivery_in_progress() {
            spin = false;
            continue;
        }
        // Someone delivers, perhaps held up in a slow decoder while answers
        // pile up in the rings: collect them ourselves (and deliver them, on
        // this thread), then nap briefly, woken early when it ends.
        spin = pool.try_drive();
        let nap = left.map_or(LOOK_AGAIN_WHILE_DELIVERING, |left| {
            left.min(LOOK_AGAIN_WHILE_DELIVERING)
        });
        if !spin && assist.sleep(Some(nap), false, &mut reached) {
            return true;
        }
    }
}
