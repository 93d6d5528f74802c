//! Waiting on several processes, pipe ends and queues at once:
//! [`wait`], Python's `multiprocessing.connection.wait`.
//!
//! # How it sleeps
//!
//! Everything it waits on is a futex word: a [`Queue`]'s (and a receiving
//! [`PipeEnd`]'s) `not_empty` event count in shared memory, and a
//! [`Process`]'s "ended" word, which the process thread sets when it reaps
//! the child through its pidfd. So one `futex_waitv(2)` sleeps on all of
//! them at once, and any put, close or exit wakes it: no polling loop. The
//! event counts are joined with their own protocol
//! (`shm/event.rs`), split in two: announce on every one, fence,
//! re-check everything, sleep on all the words, withdraw.
//!
//! Two states announce themselves through no word, and are looked at
//! again on a timer, as [`PipeEnd::poll`] and [`Queue::get`] already do:
//! a pipe end's peer that *died* (found by reading `/proc`; a peer that
//! *closed* its end wakes the wait at once), every 5 ms; and a queue whose
//! head slot is in the middle of a put (the writer may have died there),
//! every millisecond. Where `futex_waitv` is missing (Linux before 5.16),
//! or for more than 128 objects, the wait sleeps on the first object's word
//! with a back-off from 1 ms to 16 ms between looks at all of them.

use crate::pipe::PipeEnd;
use crate::process::Process;
use crate::queue::Queue;
use crate::shm::event::EventCount;
use crate::shm::park::{deadline_after, Spinner};
use crate::sys;
use crate::wire::Wire;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How often a wait on a pipe end reads `/proc` for a dead peer (as
/// [`PipeEnd::poll`] does).
const PEER_CHECK: Duration = Duration::from_millis(5);
/// How often a queue whose head is mid-put is looked at again (as
/// [`Queue::get`] does).
const BUSY_CHECK: Duration = Duration::from_millis(1);
/// The longest nap between looks when the words cannot all be slept on.
const MAX_BACKOFF: Duration = Duration::from_millis(16);

/// Set once `futex_waitv` failed for another reason than too many words
/// (an old kernel): later waits go straight to the back-off.
static NO_WAIT_ANY: AtomicBool = AtomicBool::new(false);

/// Something [`wait`] can wait on: a [`Process`] (ready once it has ended),
/// a [`PipeEnd`] (ready when a value is waiting or the stream has ended) or
/// a [`Queue`] (ready when a value is waiting or it is closed).
///
/// Sealed: implemented for those three only.
///
/// ```
/// use corepool::connection::Waitable;
/// use corepool::{Pipe, Queue};
///
/// let q = Queue::<u8>::new(4)?;
/// let (a, _b) = Pipe::duplex::<u8>()?;
/// let things: [&dyn Waitable; 2] = [&q, &a];
/// assert!(corepool::connection::wait(&things, Some(std::time::Duration::ZERO)).is_empty());
/// # Ok::<(), corepool::Error>(())
/// ```
pub trait Waitable: sealed::Sealed {}

mod sealed {
    use super::Watch;
    use std::time::Duration;

    /// What [`wait`](super::wait) needs of a [`Waitable`](super::Waitable).
    // Public only so that `Waitable` can name it; outside this crate it is
    // unnameable, which is what seals `Waitable`.
    #[allow(unreachable_pub)]
    pub trait Sealed {
        /// Whether it is ready now. `thorough`: also the checks that read
        /// `/proc` (a pipe's dead peer), which the caller rate-limits.
        fn is_ready(&self, thorough: bool) -> bool;

        /// Announces a sleeper and returns the word to sleep on, with the
        /// value it holds while nothing changed; `None` when nothing can
        /// wake it (the send-only end of a one-way pipe).
        fn watch(&self) -> Option<Watch<'_>>;

        /// How soon to look again even without a wake-up, for states no
        /// word announces.
        fn recheck_within(&self) -> Option<Duration>;
    }
}

/// A word to sleep on while it holds `expected`, and the event count to
/// withdraw from afterwards, if it is one.
#[derive(Debug)]
#[allow(unreachable_pub)] // named by the sealed trait only
pub struct Watch<'a> {
    word: &'a AtomicU32,
    expected: u32,
    event: Option<EventCount<'a>>,
}

impl<'a> Watch<'a> {
    fn event(event: EventCount<'a>) -> Self {
        let (word, expected) = event.announce();
        Self {
            word,
            expected,
            event: Some(event),
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(event) = &self.event {
            event.withdraw();
        }
    }
}

impl<R: Wire> sealed::Sealed for Process<R> {
    fn is_ready(&self, _thorough: bool) -> bool {
        self.has_ended()
    }

    fn watch(&self) -> Option<Watch<'_>> {
        // Always woken when it turns 1 (`Exit::record`): nothing to announce.
        Some(Watch {
            word: self.ended_word(),
            expected: 0,
            event: None,
        })
    }

    fn recheck_within(&self) -> Option<Duration> {
        None
    }
}
impl<R: Wire> Waitable for Process<R> {}

impl<T: Wire> sealed::Sealed for Queue<T> {
    fn is_ready(&self, _thorough: bool) -> bool {
        let q = self.byte_queue();
        q.has_value() || q.is_closed()
    }

    fn watch(&self) -> Option<Watch<'_>> {
        Some(Watch::event(self.byte_queue().not_empty()))
    }

    fn recheck_within(&self) -> Option<Duration> {
        // Counted but not ready at the head: a put in progress, whose
        // writer may die before it announces anything.
        let q = self.byte_queue();
        (!q.is_empty() && !q.has_value()).then_some(BUSY_CHECK)
    }
}
impl<T: Wire> Waitable for Queue<T> {}

impl<T: Wire> sealed::Sealed for PipeEnd<T> {
    fn is_ready(&self, thorough: bool) -> bool {
        let Some(q) = self.receiving_queue() else {
            return false; // sends only: nothing to receive, ever
        };
        // A peer that closes its end closes our queue too (`PipeEnd::close`);
        // one that died is found by `poll`, which reads `/proc`.
        q.is_ready(false) || (thorough && self.poll(Duration::ZERO).unwrap_or(false))
    }

    fn watch(&self) -> Option<Watch<'_>> {
        self.receiving_queue().and_then(|q| q.watch())
    }

    fn recheck_within(&self) -> Option<Duration> {
        let q = self.receiving_queue()?;
        Some(q.recheck_within().map_or(PEER_CHECK, |d| d.min(PEER_CHECK)))
    }
}
impl<T: Wire> Waitable for PipeEnd<T> {}

/// Waits until at least one of `objects` is ready, or `timeout` passes
/// (`None`: no limit); returns the indices of those ready, in order, empty
/// on a timeout (Python's `multiprocessing.connection.wait`).
///
/// A [`Process`] is ready once it has ended (then
/// [`is_alive`](Process::is_alive) is false and [`join`](Process::join)
/// returns at once); a [`PipeEnd`] once [`recv`](PipeEnd::recv) would not
/// wait (a value, or the end of the stream: the other end closed, or its
/// process died); a [`Queue`] once a value is waiting or it is closed. The
/// send-only end of a one-way pipe is never ready. Being ready is a
/// snapshot: another consumer may take the value first.
///
/// It sleeps on all of them at once (see [the module](self)); an empty list
/// returns at once. A timeout too long to represent as an [`Instant`]
/// (such as [`Duration::MAX`]) waits without limit.
///
/// ```
/// use corepool::connection::{wait, Waitable};
/// use corepool::{Pipe, Process, Queue};
/// use std::time::Duration;
///
/// fn main() -> corepool::Result<()> {
///     let q = Queue::<u64>::new(4)?;
///     let (mine, theirs) = Pipe::duplex::<u64>()?;
///     let child = Process::start(|end: corepool::PipeEnd<u64>| end.send(&7).unwrap(), theirs)?;
///
///     // The pipe gets a value and the child ends; the queue stays empty.
///     let mut seen = Vec::new();
///     while seen.len() < 2 {
///         let ready = wait(&[&q as &dyn Waitable, &mine, &child], None);
///         assert!(!ready.contains(&0));
///         if ready.contains(&1) && !seen.contains(&1) {
///             assert_eq!(mine.recv()?, 7);
///             seen.push(1);
///         }
///         if ready.contains(&2) && !seen.contains(&2) {
///             seen.push(2);
///         }
///     }
///     child.join()?;
///     q.put(&1)?;
///     assert_eq!(wait(&[&q as &dyn Waitable], Some(Duration::ZERO)), [0]);
///     Ok(())
/// }
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Vec<usize> {
    let deadline = timeout.and_then(deadline_after);
    let ready_now = |thorough: bool| -> Vec<usize> {
        (0..objects.len())
            .filter(|&i| objects[i].is_ready(thorough))
            .collect()
    };
    if objects.is_empty() {
        return Vec::new();
    }
    let mut spinner = Spinner::new();
    let mut backoff = Duration::from_millis(1);
    let mut next_thorough = Instant::now();
    loop {
        let now = Instant::now();
        let thorough = now >= next_thorough;
        if thorough {
            next_thorough = now + PEER_CHECK;
        }
        let ready = ready_now(thorough);
        if !ready.is_empty() {
            return ready;
        }
        let left = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(now);
                if left.is_zero() {
                    // Last look: a dead peer counts too.
                    return ready_now(true);
                }
                Some(left)
            }
            None => None,
        };
        if spinner.spin() {
            continue;
        }
        let watches: Vec<Watch<'_>> = objects.iter().filter_map(|o| o.watch()).collect();
        // SeqCst fence: pairs with the fence in `EventCount::notify` (each
        // queue's putter sees our announcement, or we see its value below);
        // a process's word needs none (`Exit::record` always wakes).
        fence(Ordering::SeqCst);
        let ready = ready_now(false);
        if !ready.is_empty() {
            return ready; // the watches withdraw as they drop
        }
        let recheck = objects.iter().filter_map(|o| o.recheck_within()).min();
        let slice = match (left, recheck) {
            (Some(l), Some(r)) => Some(l.min(r)),
            (l, r) => l.or(r),
        };
        sleep_on(&watches, slice, &mut backoff);
        drop(watches);
    }
}

/// Sleeps until one of the watched words changes, or `slice` passes.
fn sleep_on(watches: &[Watch<'_>], slice: Option<Duration>, backoff: &mut Duration) {
    let words: Vec<(&AtomicU32, u32)> = watches.iter().map(|w| (w.word, w.expected)).collect();
    let Some(&(first, expected)) = words.first() else {
        // Nothing can wake us (send-only pipe ends): sleep out the slice.
        match slice {
            Some(slice) => std::thread::sleep(slice),
            None => std::thread::park(),
        }
        return;
    };
    if words.len() <= sys::FUTEX_WAIT_ANY_MAX && !NO_WAIT_ANY.load(Ordering::Relaxed) {
        match sys::futex_wait_any(&words, slice) {
            Ok(()) => return,
            // Relaxed: a hint; a second failure sets it again.
            Err(_) => NO_WAIT_ANY.store(true, Ordering::Relaxed),
        }
    }
    // Bounded back-off: the first word wakes us at once, the others are
    // looked at after the nap.
    let nap = slice.map_or(*backoff, |s| s.min(*backoff));
    sys::futex_wait(first, expected, Some(nap));
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_wakes_a_waiter() {
        let q = Queue::<u64>::new(4).unwrap();
        let empty = Queue::<u64>::new(4).unwrap();
        let objects: [&dyn Waitable; 2] = [&empty, &q];
        assert!(wait(&objects, Some(Duration::ZERO)).is_empty());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| wait(&[&empty as &dyn Waitable, &q], None));
            q.put(&1).unwrap();
            assert_eq!(waiter.join().unwrap(), [1]);
        });
        empty.close();
        assert_eq!(wait(&objects, Some(Duration::MAX)), [0, 1], "closed counts");
    }

    #[test]
    fn nothing_to_wait_on_returns_at_once() {
        assert!(wait(&[], None).is_empty());
    }
}
