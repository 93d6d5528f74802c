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
//! is dead (`/proc`, [`process_is_dead`]) and repairs it, the way a robust
//! mutex hands a dead owner's lock on (`FUTEX_OWNER_DIED`, see `futex(2)`),
//! but without a lock. A dead producer's slot is skipped by the next consumer
//! and a dead consumer's freed by the next producer one lap later; the value
//! being written or read is lost with its process, everything else goes on.
//! Since no lock is ever held, nothing can wedge the queue.
//!
//! Waiting is an [`EventCount`] per direction (`not_empty`, `not_full`).
//!
//! # Trust
//!
//! Every word read from the memory is validated (lengths against the slot
//! size, pids against pid_max); the queue's processes are peers that may die
//! at any instruction. Positions (`head`, `tail`, and the `seq` of a slot)
//! are read from the memory too, so all arithmetic on them wraps: a garbage
//! word can make the queue report full or empty, never overflow and panic.
//!
//! The queue does not know where its memory lives: [`QueueMemory`] points
//! into a [`SharedSegment`](crate::shm::handle::SharedSegment) in production
//! and into the heap in unit tests.

use crate::error::{Error, Result};
use crate::shm::event::EventCount;
use crate::shm::handle::process_is_dead;
use crate::shm::park::Spinner;
use crate::sys;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAGIC: [u8; 8] = *b"COREQUEU";
const VERSION: u32 = 1;

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
/// State word, length word, then the value.
const SLOT_HEADER: usize = 16;
/// Values up to this size are copied out of a slot onto the stack; larger
/// ones into one allocation.
pub(crate) const INLINE_COPY: usize = 256;

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
    /// The element type's tag, opaque here: checked on [`ByteQueue::open`].
    type_tag: u64,
}

/// Where a queue's header, control words and slots live.
///
/// Copyable raw pointers: the owner of the memory (a
/// [`SharedSegment`](crate::shm::handle::SharedSegment) or the heap buffer of
/// a test) must outlive every `QueueMemory` made from it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueMemory {
    base: *mut u8,
    len: usize,
}

// SAFETY: QueueMemory is a pointer into memory designed for concurrent use
// from several processes; all accesses go through atomics or explicit copies
// into slots their copier owns, never through references to the bytes.
unsafe impl Send for QueueMemory {}
// SAFETY: as above.
unsafe impl Sync for QueueMemory {}

impl QueueMemory {
    /// # Safety
    ///
    /// `base` must be 8-byte aligned and point to `len` bytes valid for reads
    /// and writes for as long as this value or any copy of it is used. Other
    /// processes and threads may access the same memory concurrently, but
    /// only through a [`ByteQueue`] on it.
    pub(crate) unsafe fn new(base: *mut u8, len: usize) -> Self {
        debug_assert!(base.cast::<u64>().is_aligned());
        Self { base, len }
    }

    /// Pointer to `offset`, checked against the length for `size` bytes.
    fn at(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + size <= len, so the result stays inside the memory.
        Some(unsafe { self.base.add(offset) })
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        let p = self
            .at(offset, 8)
            .expect("control words are in the header page");
        // SAFETY: in bounds, 8-aligned (8-aligned base, offsets multiples of
        // 8), valid as long as `self` (`new`'s contract); every process
        // accesses it only atomically.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        let p = self
            .at(offset, 4)
            .expect("control words are in the header page");
        // SAFETY: as in `word64`, 4-aligned.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    fn event(&self, at: usize) -> EventCount<'_> {
        EventCount::new(self.word32(at), self.word32(at + 4))
    }
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
        for i in 0..q.capacity {
            // Relaxed: not shared yet; handing the queue to another thread or
            // process (a spawn, a channel) orders these stores before its use.
            q.slot_state(i).store(pack(i, EMPTY, 0), Ordering::Relaxed);
        }
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
            || needed.is_none_or(|n| n > mem.len)
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

    fn head(&self) -> &AtomicU64 {
        self.mem.word64(HEAD_AT)
    }

    fn tail(&self) -> &AtomicU64 {
        self.mem.word64(TAIL_AT)
    }

    /// Values it holds (a snapshot: others may be putting and getting).
    pub(crate) fn len(&self) -> usize {
        // Acquire (both) pairs with the AcqRel CASes in `help_head` and
        // `help_tail`. `head` first: it never passes `tail`, which only grows.
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
            // Woken unconditionally: close is rare. A waiter sees the queue
            // closed at its re-check, or returns from its sleep at once.
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
            if let Put::Done = self.put_once(bytes) {
                return Ok(());
            }
            if spinner.spin() {
                continue;
            }
            if self
                .mem
                .event(NOT_FULL_AT)
                .wait(deadline, None, || matches!(self.put_once(bytes), Put::Done))?
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
                if let Some(p) = self.mem.at(dst, bytes.len()) {
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
                self.mem.event(NOT_EMPTY_AT).notify();
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
                            self.mem.event(NOT_FULL_AT).notify();
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
            self.mem.event(NOT_EMPTY_AT).wait(deadline, poll, || {
                self.has_value() || (self.is_closed() && self.is_empty())
            })?;
        }
    }

    /// Takes the value at `head` if there is one, handing a private copy of
    /// its bytes to `take` (never a reference into the memory).
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
            let copy: &[u8] = match self.mem.at(src, len) {
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
            self.mem.event(NOT_FULL_AT).notify();
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

/// Queue memory on the heap: for unit tests, under Miri as natively.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct HeapQueue {
    buf: Box<[u64]>,
}

#[cfg(test)]
impl HeapQueue {
    /// Zeroed memory for a queue of `capacity` values of `message_bytes`.
    pub(crate) fn new(capacity: usize, message_bytes: usize) -> Self {
        let bytes = bytes_for(capacity, message_bytes).expect("a test queue's size fits");
        Self {
            buf: vec![0u64; bytes.div_ceil(8)].into_boxed_slice(),
        }
    }

    /// The memory. Valid while `self` lives.
    pub(crate) fn memory(&mut self) -> QueueMemory {
        // SAFETY: the buffer is 8-byte aligned, `8 * len` bytes long, and
        // lives as long as `self` (callers keep it alive).
        unsafe { QueueMemory::new(self.buf.as_mut_ptr().cast(), self.buf.len() * 8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: u64 = 0x7e57;

    /// A fresh queue and the heap memory it lives in (keep both).
    fn heap_queue(capacity: usize, message_bytes: usize) -> (HeapQueue, ByteQueue) {
        let mut heap = HeapQueue::new(capacity, message_bytes);
        // SAFETY: fresh memory, shared with no one yet.
        let q = unsafe { ByteQueue::create(heap.memory(), capacity, message_bytes, TAG) };
        (heap, q)
    }

    fn put_u64(q: &ByteQueue, v: u64) -> bool {
        q.try_put(&v.to_le_bytes()).unwrap()
    }

    fn get_u64(q: &ByteQueue) -> Option<u64> {
        q.try_get(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .unwrap()
    }

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
    fn positions_wrap_at_the_top_of_u64() {
        // Positions come from shared memory: one at u64::MAX must wrap to 0
        // (debug builds would panic on `+ 1`), and the queue go on working.
        let (_heap, q) = heap_queue(4, 8);
        let top = u64::MAX;
        q.head().store(top, Ordering::Relaxed);
        q.tail().store(top, Ordering::Relaxed);
        q.slot_state(top)
            .store(pack(top, EMPTY, 0), Ordering::Relaxed);
        assert!(put_u64(&q, 1));
        assert_eq!(q.tail().load(Ordering::Relaxed), 0, "tail wrapped");
        assert!(put_u64(&q, 2));
        assert_eq!(get_u64(&q), Some(1));
        assert_eq!(q.head().load(Ordering::Relaxed), 0, "head wrapped");
        assert_eq!(get_u64(&q), Some(2));
        assert_eq!(get_u64(&q), None);
        // Garbage positions (head past tail): no panic, no value made up.
        q.head().store(top - 1, Ordering::Relaxed);
        q.tail().store(3, Ordering::Relaxed);
        assert_eq!(get_u64(&q), None);
        assert!(q.try_put(&3u64.to_le_bytes()).is_ok());
        assert!(q.len() <= q.capacity() as usize);
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
        let (mut heap, _q) = heap_queue(4, 64);
        let mem = heap.memory();
        let q = ByteQueue::open(mem, TAG, 4).unwrap();
        assert_eq!((q.capacity(), q.message_bytes()), (4, 64));
        assert!(ByteQueue::open(mem, TAG + 1, 4).is_err(), "other type");
        assert!(ByteQueue::open(mem, TAG, 8).is_err(), "other capacity");
        // SAFETY: a prefix of the same memory, still alive.
        let short = unsafe { QueueMemory::new(mem.base, SLOTS_AT) };
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
