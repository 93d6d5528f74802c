//! [`Queue`]: a bounded many-producer, many-consumer queue in shared memory,
//! usable from the parent, pool workers and [`crate::Process`]es alike.
//!
//! # Algorithm
//!
//! Vyukov's bounded MPMC queue, with an owner in every slot. Each slot has a
//! state word packing `seq` (the position it is ready for, 40 bits), a
//! `phase` (EMPTY, WRITING, FULL, READING) and the `pid` of the process in
//! the middle of writing or reading it (22 bits, Linux's largest pid_max).
//!
//! * put at position `t`: CAS the slot from `EMPTY(t)` to `WRITING(t, me)`,
//!   advance `tail`, copy the value in, store `FULL(t)` (Release).
//! * get at position `h`: CAS the slot from `FULL(h)` to `READING(h, me)`,
//!   advance `head`, copy the value out, store `EMPTY(h + capacity)` (Release).
//!
//! Anyone who finds `head` or `tail` behind a slot that was already claimed
//! helps it forward, so a process that dies between its claim and the index
//! update blocks nobody. A process that dies *while* writing or reading leaves
//! its slot WRITING or READING with its pid: the next process that meets the
//! slot sees the owner is dead and repairs it (the value being written or
//! read is lost with its process; everything else goes on). Since no lock is
//! ever held, nothing can wedge the queue.
//!
//! Waiting is an event count per direction (`not_empty`, `not_full`): a
//! sequence word plus a sleeper count; a waiter reads the sequence, announces
//! itself, re-checks, and `FUTEX_WAIT`s on the sequence; a waker bumps the
//! sequence and wakes only if someone sleeps.
//!
//! Every word read from the segment is validated (lengths against the slot
//! size, pids against pid_max); the queue's processes are peers that may die
//! at any instruction. Positions (`head`, `tail`, and the `seq` of a slot)
//! are read from the segment too, so all arithmetic on them wraps: a garbage
//! word can make the queue report full or empty, never overflow and panic.

use crate::error::{Error, Result};
use crate::shm::handle::{process_is_dead, type_tag, SharedSegment};
use crate::shm::park::{deadline_after, Spinner};
use crate::sys;
use crate::wire::{decode_error, decode_exact, Wire};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: [u8; 8] = *b"COREQUEU";
const VERSION: u32 = 1;

const CLOSED_AT: usize = 64;
const HEAD_AT: usize = 128;
const TAIL_AT: usize = 192;
const NOT_EMPTY_AT: usize = 256;
const NOT_FULL_AT: usize = 320;
const SLOTS_AT: usize = 4096;
/// State word, length word, then the value.
const SLOT_HEADER: usize = 16;
/// Values up to this size are copied out of a slot onto the stack; larger
/// ones into one allocation.
const INLINE_COPY: usize = 256;

const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const PID_MASK: u64 = (1 << 22) - 1;

/// Slot phases.
const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;
const READING: u64 = 3;

fn pack(seq: u64, phase: u64, pid: u32) -> u64 {
    ((seq & SEQ_MASK) << 24) | (phase << 22) | (u64::from(pid) & PID_MASK)
}

fn unpack(word: u64) -> (u64, u64, i32) {
    (word >> 24, (word >> 22) & 3, (word & PID_MASK) as i32)
}

fn my_pid() -> u32 {
    sys::current_pid()
}

/// The queue's header, written by the creator before the queue is shared.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    capacity: u32,
    message_bytes: u32,
    _reserved: u32,
    type_tag: u64,
}

/// A bounded queue of `T` in shared memory: Python's `multiprocessing.Queue`,
/// without a pipe or a feeder thread.
///
/// Clone it, or pass it to a task or a [`crate::Process`] as an argument: it
/// crosses as a small handle and every copy talks to the same memory.
///
/// ```
/// use corepool::{Process, Queue};
///
/// fn produce(q: Queue<u64>) {
///     for i in 0..100 {
///         q.put(&i).unwrap();
///     }
/// }
///
/// fn main() {
///     corepool::init();
///     let q = Queue::<u64>::new(16).unwrap();
///     let producer = Process::start(produce, q.clone()).unwrap();
///     let sum: u64 = (0..100).map(|_| q.get().unwrap()).sum();
///     producer.join().unwrap();
///     assert_eq!(sum, 4950);
/// }
/// ```
pub struct Queue<T> {
    map: Arc<SharedSegment>,
    capacity: u64,
    message_bytes: usize,
    stride: usize,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            capacity: self.capacity,
            message_bytes: self.message_bytes,
            stride: self.stride,
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("type", &std::any::type_name::<T>())
            .field("capacity", &self.capacity)
            .field("message_bytes", &self.message_bytes)
            .finish()
    }
}

enum Put {
    Done,
    Full,
}

/// What stands at `head`.
enum Front {
    /// A value, in slot position `h`, whose state word reads `word`.
    Full {
        h: u64,
        word: u64,
    },
    Empty,
    /// A live producer is writing the next value: it will be there soon.
    Busy,
}

enum Got<R> {
    Value(R),
    Empty,
    /// A live producer is writing the next value: it will be there soon.
    Busy,
}

fn stride_for(message_bytes: usize) -> usize {
    (SLOT_HEADER + message_bytes).next_multiple_of(64)
}

impl<T> Queue<T> {
    /// A queue of at least `capacity` values of at most 240 encoded bytes
    /// each. The capacity is rounded up to the next power of two (5 becomes
    /// 8); [`capacity`](Self::capacity) reports the real one, and that many
    /// values fit before [`try_put`](Self::try_put) reports the queue full.
    ///
    /// # Errors
    ///
    /// As [`with_message_bytes`](Self::with_message_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<u64>::new(5).unwrap();
    /// assert_eq!(q.capacity(), 8);
    /// for i in 0..8 {
    ///     assert!(q.try_put(&i).unwrap());
    /// }
    /// assert!(!q.try_put(&8).unwrap(), "full");
    /// ```
    pub fn new(capacity: usize) -> Result<Self> {
        Self::with_message_bytes(capacity, 240)
    }

    /// A queue of at least `capacity` values of at most `message_bytes`
    /// encoded bytes each. The capacity is rounded up to the next power of
    /// two; [`capacity`](Self::capacity) reports the real one. Each slot takes
    /// `message_bytes` plus a 16-byte header, rounded up to 64 bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a capacity of 0 or above 2^24 (checked
    /// before rounding, so 2^24 itself is the largest), or a message size of
    /// 0 or above 16 MiB; [`Error::SharedMemory`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Queue};
    ///
    /// let q = Queue::<Vec<u8>>::with_message_bytes(3, 1024).unwrap();
    /// assert_eq!((q.capacity(), q.message_bytes()), (4, 1024));
    /// assert!(matches!(
    ///     q.put(&vec![0; 2000]),
    ///     Err(Error::ArgumentTooLarge { .. })
    /// ));
    /// assert!(Queue::<u64>::with_message_bytes(0, 8).is_err());
    /// ```
    pub fn with_message_bytes(capacity: usize, message_bytes: usize) -> Result<Self> {
        if capacity == 0 || capacity > 1 << 24 {
            return Err(Error::InvalidConfig {
                what: format!("queue capacity {capacity}: use 1 to 16777216"),
            });
        }
        if message_bytes == 0 || message_bytes > 16 << 20 {
            return Err(Error::InvalidConfig {
                what: format!("message size {message_bytes}: use 1 byte to 16 MiB, and a SharedArray for bulk data"),
            });
        }
        let capacity = capacity.next_power_of_two();
        let stride = stride_for(message_bytes);
        let bytes = capacity
            .checked_mul(stride)
            .and_then(|b| b.checked_add(SLOTS_AT))
            .ok_or_else(|| Error::InvalidConfig {
                what: "queue too large".into(),
            })?;
        let map = SharedSegment::create(c"corepool-queue", bytes)?;
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            capacity: capacity as u32,
            message_bytes: message_bytes as u32,
            _reserved: 0,
            type_tag: type_tag::<T>(),
        };
        let seg = map.segment();
        let dst = seg
            .at(0, std::mem::size_of::<Header>())
            .expect("header fits");
        // SAFETY: in bounds; the queue is not shared with anyone yet.
        unsafe { dst.cast::<Header>().write_unaligned(header) };
        let q = Self {
            map,
            capacity: capacity as u64,
            message_bytes,
            stride,
            _type: PhantomData,
        };
        for i in 0..q.capacity {
            // Relaxed: not shared yet; handing the queue to another thread or
            // process (a spawn, a channel) orders these stores before its use.
            q.slot_state(i).store(pack(i, EMPTY, 0), Ordering::Relaxed);
        }
        Ok(q)
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        let p = self
            .map
            .segment()
            .at(offset, 8)
            .expect("control words are in the header page");
        // SAFETY: in bounds, 8-aligned (page-aligned base, offsets multiples
        // of 8), lives as long as `self.map`; every process accesses it only
        // atomically.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        let p = self
            .map
            .segment()
            .at(offset, 4)
            .expect("control words are in the header page");
        // SAFETY: as in `word64`, 4-aligned.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    fn slot_base(&self, pos: u64) -> usize {
        SLOTS_AT + (pos % self.capacity) as usize * self.stride
    }

    fn slot_state(&self, pos: u64) -> &AtomicU64 {
        self.word64(self.slot_base(pos))
    }

    fn slot_len(&self, pos: u64) -> &AtomicU32 {
        self.word32(self.slot_base(pos) + 8)
    }

    fn head(&self) -> &AtomicU64 {
        self.word64(HEAD_AT)
    }

    fn tail(&self) -> &AtomicU64 {
        self.word64(TAIL_AT)
    }

    /// Values it holds (a snapshot: others may be putting and getting).
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<u64>::new(4).unwrap();
    /// q.put(&1).unwrap();
    /// q.put(&2).unwrap();
    /// assert_eq!(q.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        // Acquire (both) pairs with the AcqRel CASes in `help_head` and
        // `help_tail`. `head` first: it never passes `tail`, which only grows.
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        // Saturating, not wrapping: `head` never passes `tail`, and a garbage
        // `head` beyond `tail` had better read as empty than as full.
        tail.saturating_sub(head).min(self.capacity) as usize
    }

    /// Whether it holds no value (a snapshot).
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<u64>::new(4).unwrap();
    /// assert!(q.is_empty());
    /// q.put(&1).unwrap();
    /// assert!(!q.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many values it can hold: the capacity asked for, rounded up to the
    /// next power of two.
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// assert_eq!(Queue::<u64>::new(8).unwrap().capacity(), 8);
    /// assert_eq!(Queue::<u64>::new(9).unwrap().capacity(), 16);
    /// ```
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Largest encoded value it takes.
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// assert_eq!(Queue::<u64>::new(4).unwrap().message_bytes(), 240);
    /// ```
    pub fn message_bytes(&self) -> usize {
        self.message_bytes
    }

    /// Closes it for everyone: `put` fails from now on, `get` drains what is
    /// left and then fails with [`Error::QueueClosed`]. Wakes every waiter.
    ///
    /// ```
    /// use corepool::{Error, Queue};
    ///
    /// let q = Queue::<u64>::new(4).unwrap();
    /// q.put(&1).unwrap();
    /// q.close();
    /// assert!(matches!(q.put(&2), Err(Error::QueueClosed)));
    /// assert_eq!(q.get().unwrap(), 1, "what was put is still there");
    /// assert!(matches!(q.get(), Err(Error::QueueClosed)));
    /// ```
    pub fn close(&self) {
        // Release pairs with the Acquire loads in `is_closed`.
        self.word32(CLOSED_AT).store(1, Ordering::Release);
        for at in [NOT_EMPTY_AT, NOT_FULL_AT] {
            // Release pairs with the Acquire load of the sequence in `wait`: a
            // waiter that read the bumped sequence sees the queue closed at its
            // re-check, and one that read the old value returns from
            // FUTEX_WAIT at once. Woken unconditionally: close is rare.
            self.word32(at).fetch_add(1, Ordering::Release);
            sys::futex_wake_all(self.word32(at));
        }
    }

    /// Whether [`close`](Self::close) was called (by any process).
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<u64>::new(4).unwrap();
    /// let other = q.clone();
    /// assert!(!other.is_closed());
    /// q.close();
    /// assert!(other.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        // Acquire pairs with the Release store in `close`.
        self.word32(CLOSED_AT).load(Ordering::Acquire) != 0
    }
}

impl<T: Wire> Queue<T> {
    /// Runs `f` on the encoding of `value`, which must fit a slot. Small
    /// values are encoded into a reused thread-local buffer: a put allocates
    /// nothing.
    fn with_encoded<R>(&self, value: &T, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
        crate::wire::with_encoding(value, |bytes| {
            if bytes.len() > self.message_bytes {
                return Err(Error::ArgumentTooLarge {
                    size: bytes.len(),
                    max: self.message_bytes,
                });
            }
            f(bytes)
        })
    }

    /// Puts `value` if there is room now; `Ok(false)` if the queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`]; [`Error::ArgumentTooLarge`] for a value whose
    /// encoding exceeds [`message_bytes`](Self::message_bytes).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<u64>::new(1).unwrap();
    /// assert!(q.try_put(&1).unwrap());
    /// assert!(!q.try_put(&2).unwrap(), "full");
    /// ```
    pub fn try_put(&self, value: &T) -> Result<bool> {
        if self.is_closed() {
            return Err(Error::QueueClosed);
        }
        self.with_encoded(value, |bytes| Ok(matches!(self.put_once(bytes), Put::Done)))
    }

    /// Puts `value`, waiting for room (Python's `put`).
    ///
    /// # Errors
    ///
    /// As [`try_put`](Self::try_put).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<String>::new(4).unwrap();
    /// q.put(&"hello".to_string()).unwrap();
    /// assert_eq!(q.get().unwrap(), "hello");
    /// ```
    pub fn put(&self, value: &T) -> Result<()> {
        self.put_until(value, None)
    }

    /// Puts `value`, waiting at most `timeout` for room. A timeout too long
    /// to represent as an [`Instant`] (such as [`Duration::MAX`]) waits
    /// without limit, like [`put`](Self::put).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if there was no room in time; as
    /// [`try_put`](Self::try_put).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Queue};
    /// use std::time::Duration;
    ///
    /// let q = Queue::<u64>::new(1).unwrap();
    /// q.put_timeout(&1, Duration::MAX).unwrap(); // room: no wait at all
    /// assert!(matches!(
    ///     q.put_timeout(&2, Duration::from_millis(1)),
    ///     Err(Error::Timeout)
    /// ));
    /// ```
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<()> {
        self.put_until(value, deadline_after(timeout))
    }

    fn put_until(&self, value: &T, deadline: Option<Instant>) -> Result<()> {
        self.with_encoded(value, |bytes| {
            let mut spinner = Spinner::new();
            loop {
                if self.is_closed() {
                    return Err(Error::QueueClosed);
                }
                if let Put::Done = self.put_once(bytes) {
                    return Ok(());
                }
                if spinner.spin() {
                    continue;
                }
                if self.wait(NOT_FULL_AT, deadline, None, || {
                    matches!(self.put_once(bytes), Put::Done)
                })? {
                    return Ok(());
                }
            }
        })
    }

    /// Takes a value if one is there now.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`] once closed and drained; [`Error::Decode`] for
    /// bytes that are not a `T` (a peer misbehaved).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<u64>::new(4).unwrap();
    /// assert_eq!(q.try_get().unwrap(), None);
    /// q.put(&1).unwrap();
    /// assert_eq!(q.try_get().unwrap(), Some(1));
    /// ```
    pub fn try_get(&self) -> Result<Option<T>> {
        match self.get_once(decode_exact::<T>) {
            Got::Value(value) => value.map(Some),
            Got::Empty | Got::Busy if self.is_closed() && self.is_empty() => {
                Err(Error::QueueClosed)
            }
            Got::Empty | Got::Busy => Ok(None),
        }
    }

    /// Takes a value, waiting for one (Python's `get`).
    ///
    /// # Errors
    ///
    /// As [`try_get`](Self::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<(u32, String)>::new(4).unwrap();
    /// q.put(&(1, "one".to_string())).unwrap();
    /// assert_eq!(q.get().unwrap(), (1, "one".to_string()));
    /// ```
    pub fn get(&self) -> Result<T> {
        self.get_until(None)
    }

    /// Takes a value, waiting at most `timeout`. A timeout too long to
    /// represent as an [`Instant`] (such as [`Duration::MAX`]) waits without
    /// limit, like [`get`](Self::get).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if none came in time; as [`try_get`](Self::try_get).
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Queue};
    /// use std::time::Duration;
    ///
    /// let q = Queue::<u64>::new(4).unwrap();
    /// assert!(matches!(
    ///     q.get_timeout(Duration::from_millis(1)),
    ///     Err(Error::Timeout)
    /// ));
    /// q.put(&7).unwrap();
    /// assert_eq!(q.get_timeout(Duration::MAX).unwrap(), 7);
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(deadline_after(timeout))
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<T> {
        let mut spinner = Spinner::new();
        loop {
            let busy = match self.get_once(decode_exact::<T>) {
                Got::Value(value) => return value,
                Got::Empty => false,
                Got::Busy => true,
            };
            let closed = self.is_closed();
            if closed && self.is_empty() {
                return Err(Error::QueueClosed);
            }
            if spinner.spin() {
                continue;
            }
            // A writer in the middle of a put is re-checked every millisecond
            // (it may have died there), and so is a closed queue that still
            // counts values (their writers are mid-put, or the words are
            // garbage): never a busy loop. Otherwise sleep until woken.
            let poll = (busy || closed).then_some(Duration::from_millis(1));
            let mut got = None;
            self.wait(NOT_EMPTY_AT, deadline, poll, || {
                match self.get_once(decode_exact::<T>) {
                    Got::Value(value) => {
                        got = Some(value);
                        true
                    }
                    _ => self.is_closed() && self.is_empty(),
                }
            })?;
            if let Some(value) = got {
                return value;
            }
        }
    }

    /// The event-count wait: read the sequence, announce, re-check, sleep.
    /// Returns whether `ready` succeeded at the re-check.
    fn wait(
        &self,
        at: usize,
        deadline: Option<Instant>,
        poll: Option<Duration>,
        mut ready: impl FnMut() -> bool,
    ) -> Result<bool> {
        let seq_word = self.word32(at);
        let sleepers = self.word32(at + 4);
        // Acquire pairs with the Release increments in `notify` and `close`.
        let seq = seq_word.load(Ordering::Acquire);
        // SeqCst, with the fence below: the announcement is ordered before
        // our re-check; pairs with the fence and sleeper load in `notify`.
        sleepers.fetch_add(1, Ordering::SeqCst);
        // SeqCst fence: pairs with the fence in `notify` (we see its state
        // change, or it sees our sleeper count).
        fence(Ordering::SeqCst);
        let done = ready();
        if !done {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                // SeqCst: as the decrement below.
                sleepers.fetch_sub(1, Ordering::SeqCst);
                return Err(Error::Timeout);
            }
            let timeout = match (left, poll) {
                (Some(l), Some(p)) => Some(l.min(p)),
                (l, p) => l.or(p),
            };
            sys::futex_wait(seq_word, seq, timeout);
        }
        // SeqCst for symmetry with the announcement; nothing pairs with it:
        // a waker that still counts us costs one spurious wake, never a lost one.
        sleepers.fetch_sub(1, Ordering::SeqCst);
        Ok(done)
    }

    /// Wakes the waiters of one direction after a put or a get. Touches the
    /// shared sequence word only when someone sleeps: the state change this
    /// follows is ordered before our sleeper check by the fence, and a waiter
    /// announces itself before its re-check, so one of the two sees the other.
    fn notify(&self, at: usize) {
        // SeqCst fence: pairs with the fence in `wait`.
        fence(Ordering::SeqCst);
        // Relaxed: the fence above orders it after our state change, and
        // pairs with the waiter's SeqCst announcement and fence.
        if self.word32(at + 4).load(Ordering::Relaxed) > 0 {
            // Release pairs with the Acquire load in `wait`; a waiter that read
            // the old value returns from FUTEX_WAIT at once.
            self.word32(at).fetch_add(1, Ordering::Release);
            sys::futex_wake_all(self.word32(at));
        }
    }

    fn put_once(&self, bytes: &[u8]) -> Put {
        let me = my_pid();
        loop {
            // Acquire pairs with the AcqRel CASes that move `tail` (`help_tail`).
            let t = self.tail().load(Ordering::Acquire);
            let state = self.slot_state(t);
            // Acquire pairs with the Release store of EMPTY in `get_once` and
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
                // AcqRel: Acquire pairs with the consumer's Release store of
                // EMPTY (its read is done before our write); Release pairs
                // with the Acquire state loads here and in `front` (others
                // see the slot claimed).
                if state
                    .compare_exchange(
                        word,
                        pack(t, WRITING, me),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_err()
                {
                    continue;
                }
                self.help_tail(t);
                let dst = self.slot_base(t) + SLOT_HEADER;
                if let Some(p) = self.map.segment().at(dst, bytes.len()) {
                    // SAFETY: in bounds (checked); the slot is ours (WRITING)
                    // until we publish it below.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
                }
                // Relaxed: published by the Release store of FULL below.
                self.slot_len(t)
                    .store(bytes.len() as u32, Ordering::Relaxed);
                // Release pairs with the Acquire state load in `front` and
                // the consumer's AcqRel claim CAS in `get_once`: the value
                // and its length are written before the slot reads FULL.
                state.store(pack(t, FULL, 0), Ordering::Release);
                self.notify(NOT_EMPTY_AT);
                return Put::Done;
            }
            if seq == t.wrapping_sub(self.capacity) & SEQ_MASK {
                // The slot still holds (or is handing over) the previous lap.
                match phase {
                    READING | WRITING if process_is_dead(pid) => {
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
                    READING => {
                        std::hint::spin_loop(); // a reader is copying out
                        continue;
                    }
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
    fn front(&self) -> Front {
        loop {
            // Acquire pairs with the AcqRel CASes that move `head` (`help_head`).
            let h = self.head().load(Ordering::Acquire);
            let state = self.slot_state(h);
            // Acquire pairs with the Release stores of FULL (`put_once`) and
            // EMPTY (`get_once`) and the AcqRel repair CASes.
            let word = state.load(Ordering::Acquire);
            let (seq, phase, pid) = unpack(word);
            if seq == h & SEQ_MASK {
                match phase {
                    FULL => return Front::Full { h, word },
                    EMPTY => return Front::Empty,
                    WRITING if process_is_dead(pid) => {
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
                            self.notify(NOT_FULL_AT);
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

    /// Moves `head` on from `h`, unless someone already did.
    fn help_head(&self, h: u64) {
        // AcqRel: Release pairs with the Acquire loads of `head` in `front`,
        // `len` and `claim_value_and_abort` (whoever sees the new `head` sees
        // the claim of slot `h` before it); Acquire pairs with the Release of
        // whichever CAS moved it before us.
        let _ =
            self.head()
                .compare_exchange(h, h.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Moves `tail` on from `t`, unless someone already did.
    fn help_tail(&self, t: u64) {
        // AcqRel: Release pairs with the Acquire loads of `tail` in
        // `put_once`, `len` and `claim_slot_and_abort` (whoever sees the new
        // `tail` sees the claim of slot `t` before it); Acquire pairs with
        // the Release of whichever CAS moved it before us.
        let _ =
            self.tail()
                .compare_exchange(t, t.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether a value is ready at the head now (a snapshot: another
    /// consumer may take it first). Takes nothing.
    pub(crate) fn has_value(&self) -> bool {
        matches!(self.front(), Front::Full { .. })
    }

    /// Waits until a value is ready at the head, without taking it, with the
    /// same spin-then-sleep as `get_until`.
    ///
    /// `Ok(())` once a value is ready (another consumer may still take it
    /// first); [`Error::QueueClosed`] once closed and drained;
    /// [`Error::Timeout`] at `deadline`.
    pub(crate) fn wait_nonempty_until(&self, deadline: Option<Instant>) -> Result<()> {
        let mut spinner = Spinner::new();
        loop {
            let busy = match self.front() {
                Front::Full { .. } => return Ok(()),
                Front::Empty => false,
                Front::Busy => true,
            };
            if self.is_closed() && self.is_empty() {
                return Err(Error::QueueClosed);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
            if spinner.spin() {
                continue;
            }
            // As in `get_until`: a live writer is re-checked every
            // millisecond; otherwise sleep until woken. Whatever woke us, the
            // top of the loop looks again.
            let closed = self.is_closed();
            let poll = (busy || closed).then_some(Duration::from_millis(1));
            self.wait(NOT_EMPTY_AT, deadline, poll, || {
                self.has_value() || (self.is_closed() && self.is_empty())
            })?;
        }
    }

    /// Takes the value at `head` if there is one, handing a private copy of
    /// its bytes to `take` (never a reference into the segment).
    fn get_once<R>(&self, take: impl FnOnce(&[u8]) -> R) -> Got<R> {
        let me = my_pid();
        loop {
            let (h, word) = match self.front() {
                Front::Full { h, word } => (h, word),
                Front::Empty => return Got::Empty,
                Front::Busy => return Got::Busy,
            };
            let state = self.slot_state(h);
            // AcqRel: Acquire pairs with the producer's Release store of FULL
            // (we see the value); Release pairs with the Acquire loads of the
            // state in `front` (others see the slot claimed).
            if state
                .compare_exchange(
                    word,
                    pack(h, READING, me),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                continue;
            }
            self.help_head(h);
            // Relaxed: ordered after the producer's store by our AcqRel claim,
            // which read its Release store of FULL. Garbage is clamped.
            let len = (self.slot_len(h).load(Ordering::Relaxed) as usize).min(self.message_bytes);
            let src = self.slot_base(h) + SLOT_HEADER;
            // Copy out before freeing the slot; decode after, so that
            // producers are not kept waiting on it.
            let mut inline = [0u8; INLINE_COPY];
            let spilled: Vec<u8>;
            let copy: &[u8] = match self.map.segment().at(src, len) {
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
            // Release pairs with the Acquire load of the state in `put_once`
            // one lap later (and its AcqRel claim CAS): our read is done
            // before it writes.
            state.store(
                pack(h.wrapping_add(self.capacity), EMPTY, 0),
                Ordering::Release,
            );
            self.notify(NOT_FULL_AT);
            return Got::Value(take(copy));
        }
    }

    /// Test hook: claims the next value as a consumer and dies there, leaving
    /// its slot READING with this process's pid.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn claim_value_and_abort(&self) -> ! {
        // Acquire pairs with the AcqRel CASes that move `head`.
        let h = self.head().load(Ordering::Acquire);
        // AcqRel: as the claim CAS in `get_once`.
        let _ = self.slot_state(h).compare_exchange(
            pack(h, FULL, 0),
            pack(h, READING, my_pid()),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.help_head(h);
        std::process::abort()
    }

    /// Test hook: claims the next slot as a producer and dies there, leaving
    /// it WRITING with this process's pid.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn claim_slot_and_abort(&self) -> ! {
        // Acquire pairs with the AcqRel CASes that move `tail`.
        let t = self.tail().load(Ordering::Acquire);
        // AcqRel: as the claim CAS in `put_once`.
        let _ = self.slot_state(t).compare_exchange(
            pack(t, EMPTY, 0),
            pack(t, WRITING, my_pid()),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.help_tail(t);
        std::process::abort()
    }
}

impl<T: Wire> Wire for Queue<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.map.encode(type_tag::<T>(), self.capacity, out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (map, capacity) =
            SharedSegment::decode::<Self>(input, type_tag::<T>(), |_| Some(SLOTS_AT as u64))?;
        let src = map
            .segment()
            .at(0, std::mem::size_of::<Header>())
            .ok_or_else(|| decode_error::<Self>("too small"))?;
        // SAFETY: in bounds; plain data copied once, then validated.
        let header: Header = unsafe { src.cast::<Header>().read_unaligned() };
        let message_bytes = header.message_bytes as usize;
        let stride = stride_for(message_bytes);
        let needed = (header.capacity as usize)
            .checked_mul(stride)
            .and_then(|b| b.checked_add(SLOTS_AT));
        if header.magic != MAGIC
            || header.version != VERSION
            || header.type_tag != type_tag::<T>()
            || u64::from(header.capacity) != capacity
            || !header.capacity.is_power_of_two()
            || message_bytes == 0
            || message_bytes > 16 << 20
            || needed.is_none_or(|n| n > map.segment().len())
        {
            return Err(decode_error::<Self>("not a queue of this type"));
        }
        Ok(Self {
            map,
            capacity,
            message_bytes,
            stride,
            _type: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn fifo_in_one_process() {
        let q = Queue::<u64>::new(4).unwrap();
        assert!(q.is_empty());
        for i in 0..4 {
            assert!(q.try_put(&i).unwrap());
        }
        assert!(!q.try_put(&9).unwrap(), "full");
        assert_eq!(q.len(), 4);
        for i in 0..4 {
            assert_eq!(q.try_get().unwrap(), Some(i));
        }
        assert_eq!(q.try_get().unwrap(), None);
        assert!(matches!(
            q.get_timeout(Duration::from_millis(1)),
            Err(Error::Timeout)
        ));
        q.put(&5).unwrap();
        q.close();
        assert!(matches!(q.put(&6), Err(Error::QueueClosed)));
        assert_eq!(q.get().unwrap(), 5, "drains after close");
        assert!(matches!(q.get(), Err(Error::QueueClosed)));
    }

    #[test]
    fn positions_wrap_at_the_top_of_u64() {
        // Positions come from shared memory: one at u64::MAX must wrap to 0
        // (debug builds would panic on `+ 1`), and the queue go on working.
        let q = Queue::<u64>::new(4).unwrap();
        let top = u64::MAX;
        q.head().store(top, Ordering::Relaxed);
        q.tail().store(top, Ordering::Relaxed);
        q.slot_state(top)
            .store(pack(top, EMPTY, 0), Ordering::Relaxed);
        assert!(q.try_put(&1).unwrap());
        assert_eq!(q.tail().load(Ordering::Relaxed), 0, "tail wrapped");
        assert!(q.try_put(&2).unwrap());
        assert_eq!(q.try_get().unwrap(), Some(1));
        assert_eq!(q.head().load(Ordering::Relaxed), 0, "head wrapped");
        assert_eq!(q.try_get().unwrap(), Some(2));
        assert_eq!(q.try_get().unwrap(), None);
        // Garbage positions (head past tail): no panic, no value made up.
        q.head().store(top - 1, Ordering::Relaxed);
        q.tail().store(3, Ordering::Relaxed);
        assert_eq!(q.try_get().unwrap(), None);
        assert!(q.try_put(&3).is_ok());
        assert!(q.len() <= q.capacity());
    }

    #[test]
    fn oversized_values_are_refused() {
        let q = Queue::<Vec<u8>>::with_message_bytes(2, 16).unwrap();
        assert!(matches!(
            q.put(&vec![0; 100]),
            Err(Error::ArgumentTooLarge { size: 108, max: 16 })
        ));
        assert!(Queue::<u8>::new(0).is_err());
    }

    #[test]
    fn values_of_every_size_up_to_the_slot_round_trip() {
        // Under, at and over the stack copy (INLINE_COPY), and over the
        // encoder's kept scratch (SCRATCH_KEEP): each path once.
        let q = Queue::<Vec<u8>>::with_message_bytes(4, 100_000).unwrap();
        for len in [0, 1, 200, INLINE_COPY - 8, INLINE_COPY, 5000, 99_000] {
            let v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            q.put(&v).unwrap();
            assert_eq!(q.get().unwrap(), v, "{len} bytes");
        }
    }

    #[test]
    fn threads_exchange_everything_exactly_once() {
        let q = Queue::<u64>::new(8).unwrap();
        let per = if cfg!(miri) { 20 } else { 20_000 };
        std::thread::scope(|s| {
            for p in 0..2u64 {
                let q = q.clone();
                s.spawn(move || {
                    for i in 0..per {
                        q.put(&(p * per + i)).unwrap();
                    }
                });
            }
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    s.spawn(move || (0..per).map(|_| q.get().unwrap()).collect::<Vec<u64>>())
                })
                .collect();
            let mut all: Vec<u64> = consumers
                .into_iter()
                .flat_map(|c| c.join().unwrap())
                .collect();
            all.sort_unstable();
            assert_eq!(all, (0..2 * per).collect::<Vec<_>>());
        });
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "needs another process (its descriptor table, or a pid that is dead)"
    )]
    fn a_handle_decodes_to_the_same_queue() {
        let q = Queue::<String>::new(4).unwrap();
        let mut bytes = Vec::new();
        q.encode(&mut bytes);
        let other = Queue::<String>::decode(&mut bytes.as_slice()).unwrap();
        other.put(&"hi".to_string()).unwrap();
        assert_eq!(q.get().unwrap(), "hi");
        assert!(
            Queue::<u64>::decode(&mut bytes.as_slice()).is_err(),
            "type mismatch"
        );
    }
}
