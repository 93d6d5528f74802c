//! A many-producer, many-consumer queue of byte strings in shared memory,
//! bounded or unbounded, whose producers and consumers are processes that
//! may die at any instruction: the core of [`crate::Queue`], which adds the
//! types and the handle.
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
//! # Unbounded
//!
//! An unbounded queue is a chain of such rings, each twice as large as the
//! one before, in a file that grows: a put that finds the newest ring full
//! adds the next instead of waiting ([`unbounded`] has the protocol). Its
//! rings can be closed to puts, which is why a put's claim is SeqCst and is
//! followed by a look at the ring's `closed` word.
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
//! This file lays the queue out in memory and waits; [`ring`] says where one
//! ring's words lie and [`slot`] holds the lock-free slot protocol on it
//! (claims, helping, dead-owner repair). A bounded queue is one ring; an
//! unbounded queue ([`unbounded`]) is a chain of rings, each twice as large
//! as the one before, in a memfd that grows ([`growable`]). The queue does
//! not know where its memory lives: [`QueueMemory`] ([`memory`]) points into
//! a [`SharedSegment`](crate::shm::handle::SharedSegment) in production and
//! into the heap in unit tests.

#[cfg(not(miri))]
mod growable;
mod memory;
mod ring;
mod slot;
mod unbounded;

#[cfg(test)]
use memory::HeapQueue;
pub(crate) use memory::QueueMemory;
use ring::{stride_for, Ring};
#[cfg(feature = "fault-injection")]
pub(crate) use slot::stop_after_next_claim;
use slot::{Front, Got, Put};
use unbounded::Rings;
pub(crate) use unbounded::CONTROL_BYTES as UNBOUNDED_CONTROL_BYTES;

use crate::error::{Error, Result};
use crate::shm::park::Spinner;
use crate::shm::values;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: [u8; 8] = *b"COREQUEU";
/// 2: slots record their owner's tag (start time) beside the state word.
/// 3: slot state words are stored biased by the slot's index (zeroed memory
/// is a ready ring); the header's flags say whether the queue is unbounded.
/// 4: the control page holds the queue's value file's words ([`VALUES_AT`]).
/// 5: the value file's first word counts live values beside its cursor, and
/// the file starts over when none is live (`shm::values`).
/// 6: the value file is cut into regions, each with such a word
/// ([`VALUE_REGIONS_AT`]), each starting over on its own; the first word is
/// the region a put tries first, and the region size follows the inode.
const VERSION: u32 = 6;

/// Where the control words lie, each on its own cache line.
const CLOSED_AT: usize = 64;
/// A bounded queue's `head`; an unbounded queue's head ring.
const HEAD_AT: usize = 128;
/// A bounded queue's `tail`; an unbounded queue's tail ring.
const TAIL_AT: usize = 192;
/// An event count: sequence word, then sleeper count.
const NOT_EMPTY_AT: usize = 256;
const NOT_FULL_AT: usize = 320;
/// The queue's value file ([`crate::shm::values`]), on a cache line of its
/// own: its hint word (u64: the region a put tries first, written when a
/// put moves on to another region), then its device, inode and region
/// size in bytes (u64 each), written by the creator before the queue is
/// shared. In both kinds of queue (an unbounded queue's own words end at
/// 392).
const VALUES_AT: usize = 448;
/// The value file's region words, one per cache line (u64: how many values
/// are live in the region, and the page where the next one goes;
/// compare-exchanged by every put and get of a large value in it):
/// [`values::REGION_WORDS`] of them, the tail's last.
const VALUE_REGIONS_AT: usize = 512;
const _: () = assert!(VALUE_REGIONS_AT + values::REGION_WORDS * 64 <= SLOTS_AT);
/// Where the slots start: the header and control words fill the page before.
/// Memory shorter than this is no queue.
pub(crate) const SLOTS_AT: usize = 4096;
/// Values up to this size are copied out of a slot onto the stack; larger
/// ones into one allocation.
pub(crate) const INLINE_COPY: usize = 256;

/// Header flag: the queue is unbounded ([`unbounded`]).
const FLAG_UNBOUNDED: u32 = 1;

/// The queue's header, written by the creator before the queue is shared.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    /// A bounded queue's capacity; an unbounded queue's first ring's.
    capacity: u32,
    message_bytes: u32,
    /// [`FLAG_UNBOUNDED`], or 0.
    flags: u32,
    /// The element type's tag, opaque here: checked on [`ByteQueue::open`].
    type_tag: u64,
}

impl Header {
    fn read(mem: &QueueMemory) -> std::result::Result<Self, String> {
        let src = mem
            .at(0, std::mem::size_of::<Header>())
            .ok_or("too small")?;
        // SAFETY: in bounds; plain data copied once, then validated. The
        // header is written only before the queue is shared.
        Ok(unsafe { src.cast::<Header>().read_unaligned() })
    }

    /// # Safety
    ///
    /// Nobody else uses `mem` yet.
    unsafe fn write(self, mem: &QueueMemory) {
        if let Some(dst) = mem.at(0, std::mem::size_of::<Header>()) {
            // SAFETY: in bounds; the queue is not shared with anyone yet
            // (the caller's contract).
            unsafe { dst.cast::<Header>().write_unaligned(self) };
        }
    }
}

/// Bytes of memory a queue of `capacity` values of up to `message_bytes`
/// needs; `None` on overflow.
pub(crate) fn bytes_for(capacity: usize, message_bytes: usize) -> Option<usize> {
    capacity
        .checked_mul(stride_for(message_bytes))
        .and_then(|b| b.checked_add(SLOTS_AT))
}

/// Whether `message_bytes` is a size a queue takes (1 byte to 16 MiB).
fn message_size_ok(message_bytes: usize) -> bool {
    (1..=16 << 20).contains(&message_bytes)
}

/// One process's view of a queue of byte strings in a [`QueueMemory`].
#[derive(Clone, Debug)]
pub(crate) struct ByteQueue {
    control: QueueMemory,
    message_bytes: usize,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// One ring, in the same memory as the control words.
    Bounded(Ring),
    /// A chain of rings in a growable file, and this process's mappings.
    Unbounded(Arc<Rings>),
}

/// One process's descriptor of an unbounded queue's ring file (see
/// [`growable`]), which the queue's handle names through its sender's
/// descriptor table, as it names the queue's value file.
#[derive(Clone, Debug)]
pub(crate) struct RingFile {
    #[cfg(not(miri))]
    file: Arc<growable::DataFile>,
}

impl RingFile {
    /// `(this process, its descriptor, device, inode)`: what another
    /// process needs to open the file through this one.
    pub(crate) fn handle(&self) -> (i32, i32, u64, u64) {
        #[cfg(not(miri))]
        return self.file.handle();
        #[cfg(miri)]
        (std::process::id() as i32, -1, 0, 0)
    }

    /// The file the handle `(owner, fd, dev, ino)` names, already open in
    /// this process or opened now (checked against the queue's memory by
    /// [`ByteQueue::open`]).
    ///
    /// # Errors
    ///
    /// Why it cannot be opened (see [`crate::shm::peer::open_memfd`]).
    pub(crate) fn open(
        owner: i32,
        fd: i32,
        dev: u64,
        ino: u64,
    ) -> std::result::Result<Self, crate::shm::peer::OpenError> {
        #[cfg(not(miri))]
        return Ok(Self {
            file: growable::DataFile::open(owner, fd, dev, ino)?,
        });
        #[cfg(miri)]
        {
            let _ = (owner, fd, dev, ino);
            Err(crate::shm::peer::OpenError::Refused(
                "Miri cannot open files".into(),
            ))
        }
    }
}

impl ByteQueue {
    /// Lays out an empty queue of `capacity` slots of `message_bytes` in
    /// `mem`, for an element type tagged `type_tag`. The caller checked the
    /// sizes: `capacity` a power of two up to 2^24, `message_bytes` from 1
    /// to 16 MiB, and `mem` at least [`bytes_for`] them.
    ///
    /// # Safety
    ///
    /// Nobody else uses `mem` yet (the header is written with a plain
    /// store), and it is zeroed (zeroed slots are free for the first lap).
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
            flags: 0,
            type_tag,
        };
        // SAFETY: not shared yet (the caller's contract).
        unsafe { header.write(&mem) };
        Self::bounded(mem, capacity as u64, message_bytes)
    }

    /// The one ring of a bounded queue in `mem`, whose size the caller
    /// checked.
    fn bounded(mem: QueueMemory, capacity: u64, message_bytes: usize) -> Self {
        let slots = mem.after(SLOTS_AT);
        let ring = Ring::new(
            mem,
            (HEAD_AT, TAIL_AT, None),
            slots,
            (capacity, message_bytes),
            0,
        );
        Self {
            control: mem,
            message_bytes,
            kind: Kind::Bounded(ring),
        }
    }

    /// Lays out an empty unbounded queue of values of up to `message_bytes`
    /// (checked by the caller: 1 to 16 MiB) whose control words are in `mem`
    /// ([`UNBOUNDED_CONTROL_BYTES`] long), and creates the growable file its
    /// rings live in.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] if the file cannot be made.
    ///
    /// # Safety
    ///
    /// As [`create`](Self::create).
    pub(crate) unsafe fn create_unbounded(
        mem: QueueMemory,
        message_bytes: usize,
        type_tag: u64,
    ) -> Result<Self> {
        let rings = Rings::create(mem, message_bytes)?;
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            capacity: rings.first_capacity() as u32,
            message_bytes: message_bytes as u32,
            flags: FLAG_UNBOUNDED,
            type_tag,
        };
        // SAFETY: not shared yet (the caller's contract).
        unsafe { header.write(&mem) };
        Ok(Self {
            control: mem,
            message_bytes,
            kind: Kind::Unbounded(Arc::new(rings)),
        })
    }

    /// The queue another process laid out in `mem` with
    /// [`create`](Self::create) or [`create_unbounded`](Self::create_unbounded),
    /// if its header says it is one of `capacity` slots (`u64::MAX`:
    /// unbounded) for the type tagged `type_tag` and fits `mem`; an
    /// unbounded queue's rings in `rings`, the file its handle names, which
    /// must be the one its memory records (a bounded queue has none).
    ///
    /// # Errors
    ///
    /// Why `mem` holds no such queue.
    pub(crate) fn open(
        mem: QueueMemory,
        type_tag: u64,
        capacity: u64,
        rings: Option<&RingFile>,
    ) -> std::result::Result<Self, String> {
        let header = Header::read(&mem)?;
        let message_bytes = header.message_bytes as usize;
        let unbounded = header.flags == FLAG_UNBOUNDED;
        if header.magic != MAGIC
            || header.version != VERSION
            || header.type_tag != type_tag
            || !header.capacity.is_power_of_two()
            || !message_size_ok(message_bytes)
            || (header.flags & !FLAG_UNBOUNDED) != 0
            || unbounded != (capacity == u64::MAX)
        {
            return Err("not a queue of this type".into());
        }
        if unbounded {
            let file = rings.ok_or("an unbounded queue's handle that names no ring file")?;
            let rings = Rings::open(mem, u64::from(header.capacity), message_bytes, file)?;
            return Ok(Self {
                control: mem,
                message_bytes,
                kind: Kind::Unbounded(Arc::new(rings)),
            });
        }
        if rings.is_some() {
            return Err("a bounded queue's handle that names a ring file".into());
        }
        let needed = bytes_for(header.capacity as usize, message_bytes);
        if u64::from(header.capacity) != capacity || needed.is_none_or(|n| mem.at(0, n).is_none()) {
            return Err("not a queue of this type".into());
        }
        Ok(Self::bounded(mem, capacity, message_bytes))
    }

    /// An unbounded queue's ring file, for its handle; `None` for a
    /// bounded queue (or heap rings in tests).
    pub(crate) fn ring_file(&self) -> Option<RingFile> {
        match &self.kind {
            Kind::Bounded(_) => None,
            Kind::Unbounded(rings) => rings.file(),
        }
    }

    /// How many values it holds when full; `u64::MAX` for an unbounded
    /// queue, which is never full.
    pub(crate) fn capacity(&self) -> u64 {
        match &self.kind {
            Kind::Bounded(ring) => ring.capacity,
            Kind::Unbounded(_) => u64::MAX,
        }
    }

    /// Largest value it takes, in bytes.
    pub(crate) fn message_bytes(&self) -> usize {
        self.message_bytes
    }

    /// Values it holds (a snapshot: others may be putting and getting).
    pub(crate) fn len(&self) -> usize {
        match &self.kind {
            Kind::Bounded(ring) => ring.len() as usize,
            Kind::Unbounded(rings) => usize::try_from(rings.len()).unwrap_or(usize::MAX),
        }
    }

    /// Whether it holds no value (a snapshot).
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The words of the queue's value file ([`crate::shm::values`]): the
    /// region a put tries first, and each region's count of the values
    /// larger than a slot that are live in it and where the next one goes;
    /// any process may write anything into them. `layout` is the queue's
    /// region layout as this process checked it
    /// ([`value_region_bytes`](Self::value_region_bytes)).
    pub(crate) fn value_words(&self, layout: values::Layout) -> values::Words<'_> {
        values::Words {
            hint: self.control.word64(VALUES_AT),
            regions: std::array::from_fn(|r| self.control.word64(VALUE_REGIONS_AT + r * 64)),
            layout,
        }
    }

    /// The (device, inode) of the queue's value file, as its creator
    /// recorded it (untrusted: checked against the file a handle names).
    pub(crate) fn value_file_id(&self) -> (u64, u64) {
        // Relaxed: written before the queue was shared (`set_value_file`).
        (
            self.control.word64(VALUES_AT + 8).load(Ordering::Relaxed),
            self.control.word64(VALUES_AT + 16).load(Ordering::Relaxed),
        )
    }

    /// The size of the value file's regions, as its creator recorded it
    /// (untrusted: a process checks it with `values::Layout::new` when it
    /// opens the queue, and keeps its checked copy).
    pub(crate) fn value_region_bytes(&self) -> u64 {
        // Relaxed: written before the queue was shared (`set_value_file`).
        self.control.word64(VALUES_AT + 24).load(Ordering::Relaxed)
    }

    /// Records the (device, inode) of the queue's value file and the size
    /// of its regions, by its creator before the queue is shared.
    pub(crate) fn set_value_file(&self, (dev, ino): (u64, u64), region_bytes: u64) {
        // Relaxed: the queue is not shared yet; handing its handle to
        // another process (a spawn, a queue, a pipe) orders these stores
        // before that process reads them in `value_file_id` and
        // `value_region_bytes`.
        for (at, word) in [(8, dev), (16, ino), (24, region_bytes)] {
            self.control
                .word64(VALUES_AT + at)
                .store(word, Ordering::Relaxed);
        }
    }

    /// Overwrites the recorded region size, as a hostile holder could
    /// (tests).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn forge_value_region_bytes(&self, region_bytes: u64) {
        // Relaxed: a forgery, ordered by nothing.
        self.control
            .word64(VALUES_AT + 24)
            .store(region_bytes, Ordering::Relaxed);
    }

    /// Closes it for everyone: puts fail from now on, gets drain what is
    /// left and then fail with [`Error::QueueClosed`]. Wakes every waiter.
    pub(crate) fn close(&self) {
        // Release pairs with the Acquire loads in `is_closed`.
        self.control.word32(CLOSED_AT).store(1, Ordering::Release);
        for at in [NOT_EMPTY_AT, NOT_FULL_AT] {
            // Woken unconditionally: close is rare. The Release bump in
            // `EventCount::notify_all` (shm/event.rs) pairs with the Acquire
            // load of the sequence in `EventCount::wait`: a waiter sees the
            // queue closed at its re-check, or returns from its sleep at once.
            self.control.event(at).notify_all();
        }
    }

    /// Whether [`close`](Self::close) was called (by any process).
    pub(crate) fn is_closed(&self) -> bool {
        // Acquire pairs with the Release store in `close`.
        self.control.word32(CLOSED_AT).load(Ordering::Acquire) != 0
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

    /// One attempt to put `bytes` (which fit a slot). An unbounded queue
    /// grows instead of reporting full.
    fn put_once(&self, bytes: &[u8]) -> Result<Put> {
        match &self.kind {
            Kind::Bounded(ring) => Ok(ring.put_once(bytes)),
            Kind::Unbounded(rings) => rings.put(bytes).map(|()| Put::Done),
        }
    }

    /// The ring at the head and what stands at its head.
    fn front(&self) -> Result<(Ring, Front)> {
        match &self.kind {
            Kind::Bounded(ring) => Ok((*ring, ring.front())),
            Kind::Unbounded(rings) => rings.front(),
        }
    }

    /// One attempt to take the value at the head.
    fn get_once<R>(&self, take: impl FnOnce(&[u8]) -> R) -> Result<Got<R>> {
        loop {
            match self.front()? {
                (ring, Front::Full { h, word }) => {
                    if ring.claim(h, word) {
                        let value = ring.read_claimed(h, take);
                        if let Kind::Unbounded(rings) = &self.kind {
                            rings.after_read(&ring);
                        }
                        return Ok(Got::Value(value));
                    }
                }
                (_, Front::Empty) => return Ok(Got::Empty),
                (_, Front::Busy) => return Ok(Got::Busy),
            }
        }
    }

    /// Puts `bytes` if there is room now; `Ok(false)` if the queue is full
    /// (never for an unbounded queue). Does not look whether the queue is
    /// closed.
    ///
    /// # Errors
    ///
    /// [`Error::ArgumentTooLarge`] for more than
    /// [`message_bytes`](Self::message_bytes); an unbounded queue that cannot
    /// grow: [`Error::SharedMemory`].
    pub(crate) fn try_put(&self, bytes: &[u8]) -> Result<bool> {
        self.check_fits(bytes)?;
        Ok(matches!(self.put_once(bytes)?, Put::Done))
    }

    /// Puts `bytes`, waiting for room until `deadline` (`None`: forever):
    /// spins briefly, then sleeps on `not_full`. An unbounded queue never
    /// waits.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`]; [`Error::Timeout`] at `deadline`; as
    /// [`try_put`](Self::try_put).
    pub(crate) fn put_until(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<()> {
        self.check_fits(bytes)?;
        let mut spinner = Spinner::new();
        loop {
            if self.is_closed() {
                return Err(Error::QueueClosed);
            }
            let busy = match self.put_once(bytes)? {
                Put::Done => return Ok(()),
                Put::Full | Put::Closed => false,
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
            let mut failed = None;
            let put = self.control.event(NOT_FULL_AT).wait(deadline, poll, || {
                match self.put_once(bytes) {
                    Ok(put) => matches!(put, Put::Done),
                    Err(e) => {
                        failed = Some(e);
                        true
                    }
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            if put {
                return Ok(());
            }
        }
    }

    /// Takes the value at the head if one is there now, handing a private
    /// copy of its bytes to `take`.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`] once closed and drained; an unbounded queue
    /// whose words name memory its file does not have (a peer scribbled on
    /// them): [`Error::SharedMemory`].
    pub(crate) fn try_get<R>(&self, take: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        match self.get_once(take)? {
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
    /// `deadline`; as [`try_get`](Self::try_get).
    pub(crate) fn get_until<R>(
        &self,
        take: impl Fn(&[u8]) -> R,
        deadline: Option<Instant>,
    ) -> Result<R> {
        let mut spinner = Spinner::new();
        loop {
            let busy = match self.get_once(&take)? {
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
            self.control.event(NOT_EMPTY_AT).wait(deadline, poll, || {
                match self.get_once(&take) {
                    Ok(Got::Value(value)) => {
                        got = Some(Ok(value));
                        true
                    }
                    Err(e) => {
                        got = Some(Err(e));
                        true
                    }
                    Ok(_) => self.is_closed() && self.is_empty(),
                }
            })?;
            if let Some(got) = got {
                return got;
            }
        }
    }

    /// Whether a value is ready at the head now (a snapshot: another
    /// consumer may take it first). Takes nothing.
    pub(crate) fn has_value(&self) -> bool {
        matches!(self.front(), Ok((_, Front::Full { .. })))
    }

    /// The event count a put announces on: for waiting on this queue along
    /// with other things (`crate::connection::wait`).
    pub(crate) fn not_empty(&self) -> crate::shm::event::EventCount<'_> {
        self.control.event(NOT_EMPTY_AT)
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
            let busy = match self.front()?.1 {
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
            self.control.event(NOT_EMPTY_AT).wait(deadline, poll, || {
                self.has_value() || (self.is_closed() && self.is_empty())
            })?;
        }
    }

    /// Test hook: claims the next value as a consumer and dies there.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn claim_value_and_abort(&self) -> ! {
        match self.front() {
            Ok((ring, _)) => ring.claim_value_and_abort(),
            Err(_) => std::process::abort(),
        }
    }

    /// Test hook: claims the next slot as a producer and dies there.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn claim_slot_and_abort(&self) -> ! {
        let ring = match &self.kind {
            Kind::Bounded(ring) => Ok(*ring),
            Kind::Unbounded(rings) => rings.tail_ring_now(),
        };
        match ring {
            Ok(ring) => ring.claim_slot_and_abort(),
            Err(_) => std::process::abort(),
        }
    }

    /// Test hook: claims the next slot as a producer named `pid`, with no
    /// owner tag, and leaves it so.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn forge_untagged_claim(&self, pid: u32) {
        let ring = match &self.kind {
            Kind::Bounded(ring) => Ok(*ring),
            Kind::Unbounded(rings) => rings.tail_ring_now(),
        };
        if let Ok(ring) = ring {
            ring.forge_untagged_claim(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: u64 = 0x7e57;

    /// The one ring of a bounded queue.
    pub(super) fn ring_of(q: &ByteQueue) -> Ring {
        match &q.kind {
            Kind::Bounded(ring) => *ring,
            Kind::Unbounded(_) => unreachable!("a bounded queue"),
        }
    }

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
        let q = ByteQueue::open(mem, TAG, 4, None).unwrap();
        assert_eq!((q.capacity(), q.message_bytes()), (4, 64));
        assert!(
            ByteQueue::open(mem, TAG + 1, 4, None).is_err(),
            "other type"
        );
        assert!(
            ByteQueue::open(mem, TAG, 8, None).is_err(),
            "other capacity"
        );
        let base = mem.at(0, SLOTS_AT).unwrap();
        // SAFETY: a prefix of the same memory, still alive.
        let short = unsafe { QueueMemory::new(base, SLOTS_AT) };
        assert!(
            ByteQueue::open(short, TAG, 4, None).is_err(),
            "slots missing"
        );
    }

    #[test]
    fn threads_exchange_everything_exactly_once() {
        let (_heap, q) = heap_queue(8, 8);
        let per = if cfg!(miri) { 20 } else { 20_000 };
        std::thread::scope(|s| {
            for p in 0..2u64 {
                let q = q.clone();
                s.spawn(move || {
                    for i in 0..per {
                        q.put_until(&(p * per + i).to_le_bytes(), None).unwrap();
                    }
                });
            }
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
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
