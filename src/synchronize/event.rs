//! [`Event`]: a flag shared between processes that waiters sleep on until
//! it is set.
//!
//! Three words: the flag, and an event count (sequence, sleepers). `set`
//! bumps the sequence every time, so a waiter that was waiting when the flag
//! was set returns `true` even if it is cleared again before the waiter
//! runs, as in Python.

use super::Words;
use crate::error::Result;
use crate::shm::event::EventCount;
use crate::shm::handle::type_tag;
use crate::shm::park::deadline_after;
use crate::wire::{Encoder, Wire};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const FLAG_AT: usize = 0;
const SEQUENCE_AT: usize = 4;
const SLEEPERS_AT: usize = 8;
const BYTES: usize = 64;

/// Python's `multiprocessing.Event`: a flag that processes wait on until
/// another one sets it. No polling, no lost wake-up.
///
/// ```
/// use corepool::{Event, Process};
///
/// fn worker(go: Event) -> u32 {
///     go.wait(); // sleeps until the parent says go
///     42
/// }
///
/// fn main() {
///     let go = Event::new().unwrap();
///     let child = Process::start(worker, go.clone()).unwrap();
///     go.set();
///     assert_eq!(child.join().unwrap(), 42);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Event {
    words: Words,
}

impl Event {
    /// A new event, not set.
    ///
    /// ```
    /// let e = corepool::Event::new().unwrap();
    /// assert!(!e.is_set());
    /// ```
    ///
    /// # Errors
    ///
    /// [`crate::Error::SharedMemory`] when the segment cannot be created.
    pub fn new() -> Result<Self> {
        Ok(Self {
            words: Words::create(c"corepool-event", BYTES)?,
        })
    }

    fn event(&self) -> EventCount<'_> {
        EventCount::new(self.words.word(SEQUENCE_AT), self.words.word(SLEEPERS_AT))
    }

    /// Whether the flag is set.
    ///
    /// ```
    /// let e = corepool::Event::new().unwrap();
    /// e.set();
    /// assert!(e.is_set());
    /// ```
    pub fn is_set(&self) -> bool {
        // Acquire pairs with the Release store in `set`: what the setter did
        // before is visible to whoever sees the flag. Any nonzero word is set.
        self.words.word(FLAG_AT).load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// ```
    /// let e = corepool::Event::new().unwrap();
    /// e.set();
    /// assert!(e.wait_timeout(std::time::Duration::ZERO));
    /// ```
    pub fn set(&self) {
        // Release pairs with the Acquire load in `is_set`.
        self.words.word(FLAG_AT).store(1, Ordering::Release);
        // Bumps the sequence (Release, after the flag) even without
        // sleepers, so that a waiter sees this set even if a `clear`
        // follows at once.
        self.event().notify_all();
    }

    /// Clears the flag: later waiters wait until the next `set`.
    ///
    /// ```
    /// let e = corepool::Event::new().unwrap();
    /// e.set();
    /// e.clear();
    /// assert!(!e.is_set());
    /// ```
    pub fn clear(&self) {
        // Release: ordered after whatever the clearer did before; readers
        // of a clear flag learn nothing from it, so nothing pairs with it.
        self.words.word(FLAG_AT).store(0, Ordering::Release);
    }

    /// Waits until the flag is set (returns at once if it is).
    ///
    /// ```
    /// let e = corepool::Event::new().unwrap();
    /// e.set();
    /// e.wait();
    /// ```
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it was set
    /// (`false`: timed out).
    ///
    /// ```
    /// let e = corepool::Event::new().unwrap();
    /// assert!(!e.wait_timeout(std::time::Duration::from_millis(1)));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let sequence = self.words.word(SEQUENCE_AT);
        // Acquire pairs with the Release bump in `set` (`notify_all`).
        let start = sequence.load(Ordering::Acquire);
        // A set since `start`, even if cleared since, counts.
        let done = || self.is_set() || sequence.load(Ordering::Acquire) != start;
        loop {
            if done() {
                return true;
            }
            if self.event().wait(deadline, None, done).is_err() {
                return done();
            }
        }
    }
}

impl Wire for Event {
    fn encode(&self, out: &mut Encoder) {
        self.words.encode(type_tag::<Event>(), 0, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (words, _) = Words::decode::<Self>(input, type_tag::<Event>(), |_| Some(BYTES as u64))?;
        Ok(Self { words })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_wakes_a_waiting_thread() {
        let e = Event::new().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| e.wait());
            e.set();
        });
        assert!(e.is_set());
        e.clear();
        assert!(!e.wait_timeout(Duration::ZERO));
    }
}
