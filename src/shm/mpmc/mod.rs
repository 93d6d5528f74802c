//! A bounded many-producer, many-consumer queue of byte strings in shared
//! memory, whose producers and consumers are processes that may die at any
//! instruction: the core of [`crate::Queue`], which adds the types and the
//! handle.
//!
//! # Algorithm
//!
//! Dmitry Vyukov's bounded MPMC queue ("Bounded MPMC queue", 1024cores,
//! <https://www.1024cores.net/home/lock-free-algorithms/queues/bounded-mpmc-queue>):
//! an array of slots, each with a sequence number saying which position it
//! is ready for, and two position counters, `head` and `tail`. Here every
//! slot also records its owner. Its state word packs `seq` (the position it
//! is ready for, 40 bits), a `phase` (EMPTY, WRITING, FULL, READING) and the
//! `pid` of the process in the middle of writing or reading it (22 bits,
//! Linux's largest pid_max).
//!
//! * put at position `t`: CAS the slot from `EMPTY(t)` to `WRITING(t, me)`,
//!   advance `tail`, copy the value in, store `FULL(t)` (Release).
//! * get at position `h`: CAS the slot from `FULL(h)` to `READING(h, me)`,
//!   advance `head`, copy the value out, store `EMPTY(h + capacity)` (Release).
//!
//! Vyukov's queue advances the position counter in the claiming CAS itself;
//! this one claims the slot first and moves the counter after, so that the
//! claim can carry the owner's pid. Anyone who finds `head` or `tail` behind
//! a slot that was already claimed helps it forward, so a process that dies
//! between its claim and the counter update blocks nobody.
//!
//! # Dead-owner repair
//!
//! A process that dies *while* writing or reading leaves its slot WRITING or
//! READING with its pid: the next process that meets the slot sees the owner
//! is definitely dead ([`holder_is_dead`](crate::shm::owner::holder_is_dead):
//! its pid names no process, a zombie, or a process with another start time
//! than the slot's [owner tag](crate::shm::owner); a holder that cannot be
//! checked counts as alive) and repairs it, the way a robust mutex hands a
//! dead owner's lock on (`FUTEX_OWNER_DIED`, see `futex(2)`), but without a
//! lock. A dead producer's slot is skipped by the next consumer
//! and a dead consumer's freed by the next producer one lap later; the value
//! being written or read is lost with its process, everything else goes on.
//! Since no lock is ever held, nothing can wedge the queue.
//!
//! Waiting is an [`EventCount`](crate::shm::event::EventCount) per direction
//! (`not_empty`, `not_full`).
//!
//! # Trust
//!
//! Every word read from the memory is validated (lengths against the slot
//! size, pids against pid_max); the queue's processes are peers that may die
//! at any instruction. Positions (`head`, `tail`, and the `seq` of a slot)
//! are read from the memory too, so all arithmetic on them wraps: a garbage
//! word can make the queue report full or empty, never overflow and panic.
//!
//! # Files
//!
//! This file lays the queue out in memory and waits; [`slot`] holds the
//! lock-free slot protocol (claims, helping, dead-owner repair). The queue
//! does not know where its memory lives: [`QueueMemory`] ([`memory`]) points
//! into a [`SharedSegment`](crate::shm::handle::SharedSegment) in production
//! and into the heap in unit tests.

mod memory;
mod slot;

#[cfg(test)]
use memory::HeapQueue;
pub(crate) use memory::QueueMemory;
#[cfg(feature = "fault-injection")]
pub(crate) use slot::stop_after_next_claim;
use slot::{Front, Got, Put};

use crate::error::{Error, Result};
use crate::shm::owner::OwnerTag;
use crate::shm::park::Spinner;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAGIC: [u8; 8] = *b"COREQUEU";
/// 2: slots record their owner's tag (start time) beside the state word.
const VERSION: u32 = 2;

/// Where the control words lie, each on its own cache line.
const CLOSED_AT: usize = 64;
const HEAD_AT: usize = 128;
const TAIL_AT: usize = 192;
/// An event count: sequence word, then sleeper count.
const NOT_EMPTY_AT: usize = 256;
const NOT_FULL_AT: usize = 320;
/// Where the slots start: the header and control words fill the page before.
/// Memory shorter than this is no queue.
pub(crate) const SLOTS_AT: usize = 4096;
/// State word (8 bytes), length word (4), owner tag (4), then the value.
const SLOT_HEADER: usize = 16;
/// Values up to this size are copied out of a slot onto the stack; larger
/// ones into one allocation.
pub(crate) const INLINE_COPY: usize = 256;

/// The queue's header, written by the creator before the queue is shared.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    capacity: u32,
    message_bytes: u32,
    _reserved: u32,
    /// The element type's tag, opaque here: checked on [`ByteQueue::open`].
    type_tag: u64,
}

fn stride_for(message_bytes: usize) -> usize {
    (SLOT_HEADER + message_bytes).next_multiple_of(64)
}

/// Bytes of memory a queue of `capacity` values of up to `message_bytes`
/// needs; `None` on overflow.
pub(crate) fn bytes_for(capacity: usize, message_bytes: usize) -> Option<usize> {
    capacity
        .checked_mul(stride_for(message_bytes))
        .and_then(|b| b.checked_add(SLOTS_AT))
}

/// One process's view of a queue of byte strings in a [`QueueMemory`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ByteQueue {
    mem: QueueMemory,
    capacity: u64,
    message_bytes: usize,
    stride: usize,
}

impl ByteQueue {
    /// Lays out an empty queue of `capacity` slots of `message_bytes` in
    /// `mem`, for an element type tagged `type_tag`. The caller checked the
    /// sizes: `capacity` a power of two up to 2^24, `message_bytes` from 1
    /// to 16 MiB, and `mem` at least [`bytes_for`] them.
    ///
    /// # Safety
    ///
    /// Nobody else uses `mem` yet: the header is written with a plain store.
    pub(crate) unsafe fn create(
        mem: QueueMemory,
        capacity: usize,
        message_bytes: usize,
        type_tag: u64,
    ) -> Self {
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            capacity: capacity as u32,
            message_bytes: message_bytes as u32,
            _reserved: 0,
            type_tag,
        };
        let dst = mem
            .at(0, std::mem::size_of::<Header>())
            .expect("header fits");
        // SAFETY: in bounds; the queue is not shared with anyone yet (the
        // caller's contract).
        unsafe { dst.cast::<Header>().write_unaligned(header) };
        let q = Self {
            mem,
            capacity: capacity as u64,
            message_bytes,
            stride: stride_for(message_bytes),
        };
        q.init_slots();
        q
    }

    /// The queue another process laid out in `mem` with
    /// [`create`](Self::create), if its header says it is one of `capacity`
    /// slots for the type tagged `type_tag` and fits `mem`.
    ///
    /// # Errors
    ///
    /// Why `mem` holds no such queue.
    pub(crate) fn open(
        mem: QueueMemory,
        type_tag: u64,
        capacity: u64,
    ) -> std::result::Result<Self, &'static str> {
        let src = mem
            .at(0, std::mem::size_of::<Header>())
            .ok_or("too small")?;
        // SAFETY: in bounds; plain data copied once, then validated. The
        // header is written only before the queue is shared.
        let header: Header = unsafe { src.cast::<Header>().read_unaligned() };
        let message_bytes = header.message_bytes as usize;
        let needed = bytes_for(header.capacity as usize, message_bytes);
        if header.magic != MAGIC
            || header.version != VERSION
            || header.type_tag != type_tag
            || u64::from(header.capacity) != capacity
            || !header.capacity.is_power_of_two()
            || message_bytes == 0
            || message_bytes > 16 << 20
            || needed.is_none_or(|n| mem.at(0, n).is_none())
        {
            return Err("not a queue of this type");
        }
        Ok(Self {
            mem,
            capacity,
            message_bytes,
            stride: stride_for(message_bytes),
        })
    }

    /// How many values it holds when full.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Largest value it takes, in bytes.
    pub(crate) fn message_bytes(&self) -> usize {
        self.message_bytes
    }

    fn slot_base(&self, pos: u64) -> usize {
        SLOTS_AT + (pos % self.capacity) as usize * self.stride
    }

    fn slot_state(&self, pos: u64) -> &AtomicU64 {
        self.mem.word64(self.slot_base(pos))
    }

    fn slot_len(&self, pos: u64) -> &AtomicU32 {
        self.mem.word32(self.slot_base(pos) + 8)
    }

    /// The tag of the process named in the slot's state word while it
    /// writes or reads it.
    fn slot_owner(&self, pos: u64) -> OwnerTag<'_> {
        OwnerTag::new(self.mem.word32(self.slot_base(pos) + 12))
    }

    fn head(&self) -> &AtomicU64 {
        self.mem.word64(HEAD_AT)
    }

    fn tail(&self) -> &AtomicU64 {
        self.mem.word64(TAIL_AT)
    }

    /// Values it holds (a snapshot: others may be putting and getting).
    pub(crate) fn len(&self) -> usize {
        // Acquire (both) pairs with the AcqRel CASes in `help_head` and
        // `help_tail` (mpmc/slot.rs). `head` first: it never passes `tail`, which only grows.
        let head = self.head().load(Ordering::Acquire);
        let tail = self.tail().load(Ordering::Acquire);
        // Saturating, not wrapping: `head` never passes `tail`, and a garbage
        // `head` beyond `tail` had better read as empty than as full.
        tail.saturating_sub(head).min(self.capacity) as usize
    }

    /// Whether it holds no value (a snapshot).
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes it for everyone: puts fail from now on, gets drain what is
    /// left and then fail with [`Error::QueueClosed`]. Wakes every waiter.
    pub(crate) fn close(&self) {
        // Release pairs with the Acquire loads in `is_closed`.
        self.mem.word32(CLOSED_AT).store(1, Ordering::Release);
        for at in [NOT_EMPTY_AT, NOT_FULL_AT] {
            // Woken unconditionally: close is rare. The Release bump in
            // `EventCount::notify_all` (shm/event.rs) pairs with the Acquire
            // load of the sequence in `EventCount::wait`: a waiter sees the
            // queue closed at its re-check, or returns from its sleep at once.
            self.mem.event(at).notify_all();
        }
    }

    /// Whether [`close`](Self::close) was called (by any process).
    pub(crate) fn is_closed(&self) -> bool {
        // Acquire pairs with the Release store in `close`.
        self.mem.word32(CLOSED_AT).load(Ordering::Acquire) != 0
    }

    /// `Err` unless `bytes` fit a slot: nothing larger may be copied in.
    fn check_fits(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.message_bytes {
            return Err(Error::ArgumentTooLarge {
                size: bytes.len(),
                max: self.message_bytes,
            });
        }
        Ok(())
    }

    /// Puts `bytes` if there is room now; `Ok(false)` if the queue is full.
    /// Does not look whether the queue is closed.
    ///
    /// # Errors
    ///
    /// [`Error::ArgumentTooLarge`] for more than
    /// [`message_bytes`](Self::message_bytes).
    pub(crate) fn try_put(&self, bytes: &[u8]) -> Result<bool> {
        self.check_fits(bytes)?;
        Ok(matches!(self.put_once(bytes), Put::Done))
    }

    /// Puts `bytes`, waiting for room until `deadline` (`None`: forever):
    /// spins briefly, then sleeps on `not_full`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`]; [`Error::Timeout`] at `deadline`;
    /// [`Error::ArgumentTooLarge`] as [`try_put`](Self::try_put).
    pub(crate) fn put_until(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.check_fits(bytes)?;
        let mut spinner = Spinner::new();
        loop {
            if self.is_closed() {
                return Err(Error::QueueClosed);
            }
            let busy = match self.put_once(bytes) {
                Put::Done => return Ok(()),
                Put::Full => false,
                Put::Busy => true,
            };
            if spinner.spin() {
                continue;
            }
            // A reader in the middle of a get on the slot we need is
            // re-checked every millisecond (it may die there, and then no
            // one wakes us); otherwise sleep until woken. Either way the
            // wait ends at `deadline`, even while a live reader is stopped
            // mid-copy.
            let poll = busy.then_some(Duration::from_millis(1));
            if self
                .mem
                .event(NOT_FULL_AT)
                .wait(deadline, poll, || matches!(self.put_once(bytes), Put::Done))?
            {
                return Ok(());
            }
        }
    }

    /// Takes the value at the head if one is there now, handing a private
    /// copy of its bytes to `take`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`] once closed and drained.
    pub(crate) fn try_get<R>(&self, take: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        match self.get_once(take) {
            Got::Value(value) => Ok(Some(value)),
            Got::Empty | Got::Busy if self.is_closed() && self.is_empty() => {
                Err(Error::QueueClosed)
            }
            Got::Empty | Got::Busy => Ok(None),
        }
    }

    /// Takes a value as [`try_get`](Self::try_get) does, waiting for one
    /// until `deadline` (`None`: forever): spins briefly, then sleeps on
    /// `not_empty`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`] once closed and drained; [`Error::Timeout`] at
    /// `deadline`.
    pub(crate) fn get_until<R>(
        &self,
        take: impl Fn(&[u8]) -> R,
        deadline: Option<Instant>,
    ) -> Result<R> {
        let mut spinner = Spinner::new();
        loop {
            let busy = match self.get_once(&take) {
                Got::Value(value) => return Ok(value),
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
            self.mem
                .event(NOT_EMPTY_AT)
                .wait(deadline, poll, || match self.get_once(&take) {
                    Got::Value(value) => {
                        got = Some(value);
                        true
                    }
                    _ => self.is_closed() && self.is_empty(),
                })?;
            if let Some(value) = got {
                return Ok(value);
            }
        }
    }
    /// Whether a value is ready at the head now (a snapshot: another
    /// consumer may take it first). Takes nothing.
    pub(crate) fn has_value(&self) -> bool {
        matches!(self.front(), Front::Full { .. })
    }

    /// The event count a put announces on: for waiting on this queue along
    /// with other things (`crate::connection::wait`).
    pub(crate) fn not_empty(&self) -> crate::shm::event::EventCount<'_> {
        self.mem.event(NOT_EMPTY_AT)
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
            self.mem.event(NOT_EMPTY_AT).wait(deadline, poll, || {
                self.has_value() || (self.is_closed() && self.is_empty())
            })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: u64 = 0x7e57;

    /// A fresh queue and the heap memory it lives in (keep both).
    pub(super) fn heap_queue(capacity: usize, message_bytes: usize) -> (HeapQueue, ByteQueue) {
        let heap = HeapQueue::new(capacity, message_bytes);
        // SAFETY: fresh memory, shared with no one yet.
        let q = unsafe { ByteQueue::create(heap.memory(), capacity, message_bytes, TAG) };
        (heap, q)
    }

    pub(super) fn put_u64(q: &ByteQueue, v: u64) -> bool {
        q.try_put(&v.to_le_bytes()).unwrap()
    }

    pub(super) fn get_u64(q: &ByteQueue) -> Option<u64> {
        q.try_get(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .unwrap()
    }

    #[test]
    fn bytes_past_the_slot_are_refused() {
        let (_heap, q) = heap_queue(2, 16);
        assert!(matches!(
            q.try_put(&[0; 17]),
            Err(Error::ArgumentTooLarge { size: 17, max: 16 })
        ));
        assert!(q.is_empty());
    }

    #[test]
    fn a_queue_opens_only_as_what_it_was_made() {
        let (heap, _q) = heap_queue(4, 64);
        let mem = heap.memory();
        let q = ByteQueue::open(mem, TAG, 4).unwrap();
        assert_eq!((q.capacity(), q.message_bytes()), (4, 64));
        assert!(ByteQueue::open(mem, TAG + 1, 4).is_err(), "other type");
        assert!(ByteQueue::open(mem, TAG, 8).is_err(), "other capacity");
        let base = mem.at(0, SLOTS_AT).unwrap();
        // SAFETY: a prefix of the same memory, still alive.
        let short = unsafe { QueueMemory::new(base, SLOTS_AT) };
        assert!(ByteQueue::open(short, TAG, 4).is_err(), "slots missing");
    }

    #[test]
    fn threads_exchange_everything_exactly_once() {
        let (_heap, q) = heap_queue(8, 8);
        let per = if cfg!(miri) { 20 } else { 20_000 };
        std::thread::scope(|s| {
            for p in 0..2u64 {
                s.spawn(move || {
                    for i in 0..per {
                        q.put_until(&(p * per + i).to_le_bytes(), None).unwrap();
                    }
                });
            }
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(move || {
                        (0..per)
                            .map(|_| {
                                q.get_until(|b| u64::from_le_bytes(b.try_into().unwrap()), None)
                                    .unwrap()
                            })
                            .collect::<Vec<u64>>()
                    })
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
}
