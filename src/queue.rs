//! [`Queue`]: a bounded many-producer, many-consumer queue of typed values
//! in shared memory, usable from the parent, pool workers and
//! [`crate::Process`]es alike.
//!
//! The queue itself, Vyukov's bounded MPMC queue over bytes with its
//! dead-owner repair and event counts, is [`crate::shm::mpmc`]; this module
//! encodes values into it (one larger than a slot into the queue's value
//! file, [`crate::shm::values`], whose record fills the slot) and the queue
//! into a handle that crosses to other processes.

use crate::error::{Error, Result};
use crate::shm::handle::{type_tag, SharedSegment, OPEN_STEP};
use crate::shm::mpmc::{self, ByteQueue, QueueMemory, RingFile};
use crate::shm::park::deadline_after;
use crate::shm::spill::{self, HANDLE_BYTES};
use crate::shm::values::{self, ValueFile, RECORD_BYTES};
use crate::wire::{decode_error, decode_exact, Carried, Encoder, Wire};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bounded queue of `T` in shared memory: Python's `multiprocessing.Queue`,
/// without a pipe or a feeder thread. [`Queue::unbounded`] makes one that
/// is never full.
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
///
/// A value of any size goes in: one whose encoding exceeds
/// [`message_bytes`](Self::message_bytes) is written into the queue's
/// *value file* (a memfd made with the queue, which grows as needed) and the
/// slot holds where, so the message size is a speed knob (a large value
/// costs a copy on each side and a few system calls), never a limit. Its
/// memory is given back as it is received.
///
/// The value file belongs to the queue, not to the process that put the
/// value: a producer may exit, or be killed, right after its `put`, and the
/// value stays receivable for as long as any process holds the queue, as
/// with Python's `multiprocessing.Queue`. The cost is one more descriptor
/// per queue in each process that holds it (two in all: its memory and its
/// value file; three for an [`unbounded`](Self::unbounded) queue, whose
/// rings are in a file of their own). A process that *received* the queue
/// may keep its mapping cached after its last copy drops (up to 64 kept
/// mappings, let go once the queue's creator drops it, or sooner), and
/// with it those descriptors, and the memory of any values still waiting
/// in the queue.
///
/// Under a finite file-size limit (`ulimit -f`, RLIMIT_FSIZE, which batch
/// systems such as Slurm pass on from the submitting shell), the value
/// file is cut into four regions of a quarter of its creator's limit, each
/// reused as soon as the values in it have been received, while values
/// still wait in the others: so a queue that is never empty of large
/// values (a consumer lagging behind, a bounded queue kept full) goes on
/// reusing its file, and what counts is the bytes of large values waiting
/// *at once* (each its encoding rounded up to whole pages, those being put
/// and received included), never all the queue carried. A large value
/// that finds no room below its producer's limit is kept by the producer
/// instead (a *spill*, a one-off memfd of its own). Received in order,
/// that happens only past about three quarters of the limit waiting at
/// once less one value (four 1 MiB values wait within `ulimit -f 8192`,
/// i.e. 8 MiB, whatever passed through before), or right at the limit
/// for a burst into a queue holding no large value (seven 1 MiB values
/// fit 8 MiB; the eighth waiting with them is spilled). A spilled value
/// still goes through, but is again bound to its producer, which keeps it
/// at most 5 seconds for a receiver once it returns (`EXIT_LINGER`), and
/// loses it if killed. [`Process::join`](crate::Process::join) waits for
/// that exit, so "join the producers, then drain" loses such values: under
/// a limit, keep the large values waiting at once well within it, drain
/// before joining, or raise the limit. Without a file-size limit no value
/// is spilled. A single value larger than the limit is
/// [`Error::SharedMemory`] (EFBIG).
///
/// A consumer killed in the middle of receiving a large value (a
/// [`task_timeout`](crate::PoolBuilder::task_timeout) or
/// [`terminate`](crate::Pool::terminate) of a pool worker that takes from
/// the queue, Ctrl-C, the OOM killer; the window is the whole read of the
/// value, about a second for 1 GiB) leaves the value's place in the file
/// counted as in use for the queue's life, silently: the region (or the
/// two regions) it lies in are never reused again. The queue goes on with
/// the others, but under a limit it then spills with about a quarter of
/// the limit fewer bytes waiting at once for each region so lost, and,
/// once every region is, as soon as the file reaches the limit. A
/// producer killed between writing a large value and putting it in a slot
/// does the same. A queue made afresh starts with all four.
///
/// Shared objects named *inside* a value (a [`crate::SharedArray`], another
/// queue, a [`crate::PipeEnd`], say in a `Vec`) are not copied into the
/// file: they stay their sender's. Such a value stays receivable while it
/// waits in the queue even if its sender drops its own copies first (the
/// sender keeps each such object until every handle to it in flight was
/// received, and no longer), but a process that exits while such a handle
/// still waits to be received keeps the object at most 5 seconds
/// (`EXIT_LINGER`), then exits: a receiver that comes later gets
/// [`Error::Decode`] for that value.
///
/// ```
/// use corepool::{Process, Queue};
///
/// fn produce(q: Queue<Vec<u8>>) {
///     // 1 MiB through a queue of 240-byte slots: into its value file.
///     q.put(&vec![7u8; 1 << 20]).unwrap();
/// }
///
/// fn main() {
///     corepool::init();
///     let q = Queue::<Vec<u8>>::new(4).unwrap();
///     // The producer puts and exits before anyone gets: nothing is lost.
///     Process::start(produce, q.clone()).unwrap().join().unwrap();
///     assert_eq!(q.get().unwrap(), vec![7u8; 1 << 20]);
/// }
/// ```
pub struct Queue<T> {
    /// Keeps the memory `queue` points into alive (and, as its companion,
    /// `values`: see `SharedSegment::keep_with`).
    map: Arc<SharedSegment>,
    /// Where values too large for a slot wait: this process's descriptor.
    values: Arc<ValueFile>,
    /// How `values` is cut into regions, as this process checked it when
    /// it made or opened the queue (the queue's memory records it, where
    /// any holder may write).
    layout: values::Layout,
    queue: ByteQueue,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            values: self.values.clone(),
            layout: self.layout,
            queue: self.queue.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        // Values too large for a slot are in its value file, which goes
        // with its last descriptor: nothing to let go of for them. (Shared
        // objects named inside values linger within the bound, see
        // `shm::handle`: finding them needs `T`'s decoder.)
        crate::shm::handle::dropping(&self.map);
        // But the last copy of a queue no other process can have may hold
        // spills (values put past a file-size limit, see `put_stored`):
        // they can never be received, so they are let go now rather than
        // kept up to 5 s at exit.
        if Arc::strong_count(&self.map) != 1 || !self.map.is_private() {
            return;
        }
        let slot = self.queue.message_bytes();
        while let Ok(Some(spilled)) = self.queue.try_get(|b| {
            (b.len() == slot && b.len() >= HANDLE_BYTES).then(|| b[..HANDLE_BYTES].to_vec())
        }) {
            if let Some(handle) = spilled {
                spill::discard(&handle);
            }
        }
    }
}

/// Values this process put into spills (see [`Queue::put_spilled`]), for
/// the test hooks in `crate::testing`. Relaxed: a count, ordered by nothing.
#[cfg(feature = "fault-injection")]
pub(crate) static SPILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes a slot holds past the largest value in place: room for the
/// largest envelope, a spill's handle. A slot's length says what it holds
/// (see [`Queue::put_encoded`]).
const ENVELOPE_BYTES: usize = HANDLE_BYTES;
const _: () = assert!(RECORD_BYTES < HANDLE_BYTES);

/// What taking one slot gave: a value decoded in place, the record of
/// where it waits in the value file, or the handle of the spill that holds
/// it (either read once the slot is free).
enum Taken<T> {
    Value(Result<T>),
    Stored([u8; RECORD_BYTES]),
    Spilled([u8; HANDLE_BYTES]),
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("type", &std::any::type_name::<T>())
            .field("capacity", &self.queue.capacity())
            .field("message_bytes", &self.queue.message_bytes())
            .finish()
    }
}

/// The queue in `map`'s memory.
fn memory_of(map: &SharedSegment) -> QueueMemory {
    // SAFETY: the segment's mapping is page-aligned and `len` bytes long; the
    // `Queue` that holds this memory also holds `map`, so the memory outlives
    // it. Other processes touch it only through their own `ByteQueue`.
    unsafe { QueueMemory::new(map.base(), map.usable_len()) }
}

/// The value file of the queue just laid out in `queue`, and how it is cut
/// into regions (after this process's file-size limit, see
/// [`values::Layout::for_limit`]): made, recorded in the queue's memory,
/// and kept open with `map` (see [`keep_files`]).
fn new_value_file(
    map: &SharedSegment,
    queue: &ByteQueue,
) -> Result<(Arc<ValueFile>, values::Layout)> {
    let page = crate::sys::page_size();
    let limit = crate::sys::file_size_limit();
    let layout = values::Layout::for_limit(limit, page).ok_or_else(|| Error::SharedMemory {
        op: "laying out a queue's value file",
        source: std::io::Error::other(format!(
            "no region layout fits pages of {page} bytes (file-size limit {limit:?})"
        )),
    })?;
    let values = ValueFile::create()?;
    queue.set_value_file(values.identity(), layout.region_bytes());
    keep_files(map, &values, queue);
    Ok((values, layout))
}

/// The files a queue's handle names besides its memory: its value file
/// and, for an unbounded queue, its ring file.
#[derive(Debug)]
struct Files {
    _values: Arc<ValueFile>,
    _rings: Option<RingFile>,
}

/// Keeps the files `queue`'s handle names open with `map`, for as long as
/// the mapping, lingering included: a handle sent from here names this
/// process's descriptors of them, and a sender that drops its last copy
/// of the queue while the handle is in flight must keep them for the
/// receiver as it keeps the memory.
fn keep_files(map: &SharedSegment, values: &Arc<ValueFile>, queue: &ByteQueue) {
    map.keep_with(Arc::new(Files {
        _values: values.clone(),
        _rings: queue.ring_file(),
    }));
}

impl<T> Queue<T> {
    /// A queue of at least `capacity` values, whose slots hold encodings of
    /// up to 240 bytes (larger values go into its value file, see
    /// [`Queue`]). The capacity is rounded up to the next power of two (5
    /// becomes 8); [`capacity`](Self::capacity) reports the real one, and that many
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
    /// A queue of at least `capacity` values, whose slots hold encodings of
    /// up to `message_bytes` bytes in place; a larger value goes into the
    /// queue's value file (see [`Queue`]). The capacity is rounded up to the
    /// next power of two; [`capacity`](Self::capacity) reports the real one.
    /// Each slot takes `message_bytes` plus 56 bytes (a 16-byte header and
    /// room for where a large value waits: a 16-byte record of the value
    /// file, or a 40-byte spill's handle under a file-size limit), rounded
    /// up to 64 bytes.
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
    /// q.put(&vec![1; 2000]).unwrap(); // larger than a slot: in the file
    /// assert_eq!(q.get().unwrap(), vec![1; 2000]);
    /// assert!(matches!(
    ///     Queue::<u64>::with_message_bytes(0, 8),
    ///     Err(Error::InvalidConfig { .. })
    /// ));
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
        // Room for an envelope after the largest value held in place (see
        // `put_encoded`).
        let slot_bytes = message_bytes + ENVELOPE_BYTES;
        let bytes = mpmc::bytes_for(capacity, slot_bytes).ok_or_else(|| Error::InvalidConfig {
            what: "queue too large".into(),
        })?;
        let map = SharedSegment::create(c"corepool-queue", bytes)?;
        // SAFETY: the segment is new: nobody else maps it yet.
        let queue =
            unsafe { ByteQueue::create(memory_of(&map), capacity, slot_bytes, type_tag::<T>()) };
        let (values, layout) = new_value_file(&map, &queue)?;
        Ok(Self {
            map,
            values,
            layout,
            queue,
            _type: PhantomData,
        })
    }

    /// Puts one encoding, split as [`crate::Wire::encode_split`] leaves it
    /// (its start in `head`, the rest borrowed from the value), through
    /// `put` (which answers whether it went in): joined, in place, if it
    /// fits a slot's `message_bytes` (a length compare: the common case
    /// costs nothing more), else written from the two parts into the
    /// queue's value file, whose record goes in an envelope of
    /// `message_bytes + RECORD_BYTES` bytes, or (past a file-size limit)
    /// into a spill, whose handle goes in an envelope of `message_bytes +
    /// HANDLE_BYTES`: lengths no value in place has, so a slot's length
    /// says what it holds. What the encoding carries
    /// counts as sent only if it went in; otherwise pipe ends in it go back
    /// to their senders.
    #[inline]
    fn put_encoded(
        &self,
        head: &mut Encoder,
        rest: &[u8],
        mut carried: Carried,
        put: impl FnOnce(&[u8]) -> Result<bool>,
    ) -> Result<bool> {
        crate::shm::handle::sweep();
        let went_in = if head.len() + rest.len() <= self.message_bytes() {
            head.extend_from_slice(rest);
            put(head)
        } else {
            self.put_stored(head, rest, put)
        };
        if matches!(went_in, Ok(true)) {
            carried.sent();
        } else {
            // Full, closed, timed out or no memory: nothing was stored.
            carried.not_sent();
        }
        went_in
    }

    /// Puts `head` then `rest` into the queue's value file and their record
    /// into a slot (see [`put_encoded`](Self::put_encoded)); the range is
    /// given back if the record does not go in.
    ///
    /// The value file's regions each start over as soon as no large value
    /// in them is live, so under a finite file-size limit (`ulimit -f`,
    /// which batch systems such as Slurm pass on from the submitting
    /// shell) no region has room for a value only when the large values
    /// waiting at once lie in all of them (or stuck or forged counts keep
    /// regions from starting over, see `shm::values`). Such a value goes
    /// into a spill of this process's instead (a one-off memfd, bound by
    /// the limit only in its own size): it is again bound to its producer,
    /// which keeps it until it is received, or at most 5 s (`EXIT_LINGER`)
    /// once the producer exits.
    #[cold]
    fn put_stored(
        &self,
        head: &[u8],
        rest: &[u8],
        put: impl FnOnce(&[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let words = self.queue.value_words(self.layout);
        let Some(stored) = self.values.store(words, head, rest)? else {
            return self.put_spilled(head, rest, put);
        };
        let mut envelope = vec![0u8; self.message_bytes() + RECORD_BYTES];
        envelope[..RECORD_BYTES].copy_from_slice(&stored.record());
        // An error drops `stored`, which gives the range back.
        let went_in = put(&envelope)?;
        if went_in {
            stored.keep();
        }
        Ok(went_in)
    }

    /// Puts `head` then `rest` into a spill and its handle into a slot
    /// (see [`put_stored`](Self::put_stored)); the spill is let go if the
    /// handle does not go in.
    #[cold]
    fn put_spilled(
        &self,
        head: &[u8],
        rest: &[u8],
        put: impl FnOnce(&[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let (handle, mut spilled) = spill::write_parts(head, rest)?;
        #[cfg(feature = "fault-injection")]
        SPILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut envelope = vec![0u8; self.message_bytes() + HANDLE_BYTES];
        envelope[..HANDLE_BYTES].copy_from_slice(&handle);
        // Not sent unless it went in: dropping `spilled` takes its transit
        // back and the spill goes.
        let went_in = put(&envelope)?;
        if went_in {
            spilled.sent();
        }
        Ok(went_in)
    }

    /// Decodes one slot's bytes (runs while the slot is claimed), unless
    /// they are an envelope (see [`put_encoded`](Self::put_encoded)): a
    /// record of the value file or a spill's handle is copied out, to be
    /// read by [`finish_get`](Self::finish_get) once the slot is free.
    #[inline]
    fn take(&self, bytes: &[u8]) -> Taken<T>
    where
        T: Wire,
    {
        let in_place = self.message_bytes();
        if bytes.len() <= in_place {
            return Taken::Value(decode_exact::<T>(bytes));
        }
        Self::take_envelope(in_place, bytes)
    }

    /// The envelope `bytes`, longer than any value in place (`in_place`),
    /// copied out; the slot's length says which kind.
    #[cold]
    fn take_envelope(in_place: usize, bytes: &[u8]) -> Taken<T> {
        if bytes.len() == in_place + RECORD_BYTES {
            let mut record = [0u8; RECORD_BYTES];
            record.copy_from_slice(&bytes[..RECORD_BYTES]);
            return Taken::Stored(record);
        }
        if bytes.len() == in_place + HANDLE_BYTES {
            let mut handle = [0u8; HANDLE_BYTES];
            handle.copy_from_slice(&bytes[..HANDLE_BYTES]);
            return Taken::Spilled(handle);
        }
        Taken::Value(Err(crate::shm::decode_failed(
            values::VALUE,
            format!(
                "a slot of {} bytes holds no value (at most {in_place}) and no envelope (a process wrote over the queue's memory)",
                bytes.len()
            ),
        )))
    }

    /// The value a `get` took: decoded already, or read from the value
    /// file.
    #[inline]
    fn finish_get(&self, taken: Taken<T>) -> Result<T>
    where
        T: Wire,
    {
        match taken {
            Taken::Value(got) => got,
            Taken::Stored(record) => self.read_stored(&record),
            Taken::Spilled(handle) => Self::read_spilled(&handle),
        }
    }

    /// Reads a spilled value (see [`put_stored`](Self::put_stored)) and
    /// decodes it.
    #[cold]
    fn read_spilled(handle: &[u8; HANDLE_BYTES]) -> Result<T>
    where
        T: Wire,
    {
        crate::shm::handle::sweep();
        let mut bytes = Vec::new();
        spill::read_into(handle, &mut bytes).map_err(|e| {
            // A queue spills a value only when its value file had no room
            // for it under the producer's file-size limit: say so, since
            // the likely cause of a failed open is that producer's exit.
            let e = match e {
                Error::Decode { type_name, reason } => Error::Decode {
                    type_name,
                    reason: format!(
                        "{reason}; this value was kept by the process that put it (the \
                         queue's value file was full under that process's file-size limit, \
                         `ulimit -f`, with the large values waiting at once): if that process \
                         has exited, the value went with it (5 s after it returned); raise the \
                         limit, or drain the queue before joining its producers"
                    ),
                },
                other => other,
            };
            crate::shm::named(values::VALUE, e)
        })?;
        decode_exact::<T>(&bytes)
    }

    /// Reads a value out of the value file (giving its memory back) and
    /// decodes it.
    #[cold]
    fn read_stored(&self, record: &[u8; RECORD_BYTES]) -> Result<T>
    where
        T: Wire,
    {
        crate::shm::handle::sweep();
        let mut bytes = Vec::new();
        self.values
            .take_into(&self.queue.value_words(self.layout), record, &mut bytes)?;
        decode_exact::<T>(&bytes)
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
        self.queue.len()
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
        self.queue.is_empty()
    }

    /// Whether it holds as many values as it can (a snapshot: Python's
    /// `full()`); a `put` now would wait, a `try_put` would refuse.
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// let q = Queue::<u64>::new(2).unwrap();
    /// assert!(!q.is_full());
    /// q.put(&1).unwrap();
    /// q.put(&2).unwrap();
    /// assert!(q.is_full());
    /// assert!(!q.try_put(&3).unwrap());
    /// assert_eq!(q.get().unwrap(), 1);
    /// assert!(!q.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity()
    }

    /// How many values it can hold: the capacity asked for, rounded up to the
    /// next power of two; `usize::MAX` for an [`unbounded`](Self::unbounded)
    /// queue, which is never full.
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// assert_eq!(Queue::<u64>::new(8).unwrap().capacity(), 8);
    /// assert_eq!(Queue::<u64>::new(9).unwrap().capacity(), 16);
    /// ```
    pub fn capacity(&self) -> usize {
        self.queue.capacity() as usize
    }

    /// Largest encoded value a slot holds in place; larger ones go into
    /// the queue's value file (see [`Queue`]).
    ///
    /// ```
    /// use corepool::Queue;
    ///
    /// assert_eq!(Queue::<u64>::new(4).unwrap().message_bytes(), 240);
    /// ```
    pub fn message_bytes(&self) -> usize {
        self.queue.message_bytes().saturating_sub(ENVELOPE_BYTES)
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
        self.queue.close();
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
        self.queue.is_closed()
    }
}

impl<T: Wire> Queue<T> {
    /// Puts `value` if there is room now; `Ok(false)` if the queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`]; [`Error::Encode`] for a value that cannot be
    /// encoded; [`Error::SharedMemory`] when a large value cannot get its
    /// memory in the queue's value file (or the queue's memory was
    /// overwritten). Either way nothing is stored.
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
        crate::wire::with_split_encoding(value, |head, rest, carried| {
            self.put_encoded(head, rest, carried, |b| self.queue.try_put(b))
        })
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

    /// Encodes `value` (small ones into a reused thread-local buffer: a put
    /// allocates nothing) and puts it, waiting until `deadline`.
    fn put_until(&self, value: &T, deadline: Option<Instant>) -> Result<()> {
        crate::wire::with_split_encoding(value, |head, rest, carried| {
            self.put_encoded(head, rest, carried, |b| {
                self.queue.put_until(b, deadline).map(|()| true)
            })
        })
        .map(|_| ())
    }

    /// Takes a value if one is there now.
    ///
    /// # Errors
    ///
    /// [`Error::QueueClosed`] once closed and drained; [`Error::Decode`] for
    /// bytes that are not a `T` (a peer misbehaved);
    /// [`Error::SharedMemory`] when this process has no memory for the
    /// buffer of a value too large for a slot: that value was taken out of
    /// the queue and its place in the value file given back, so it is
    /// lost (the queue goes on, and later gets work once memory is there).
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
        let taken = self.queue.try_get(|b| self.take(b))?;
        taken.map(|t| self.finish_get(t)).transpose()
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
        self.finish_get(self.queue.get_until(|b| self.take(b), deadline)?)
    }

    /// Whether a value is ready at the head now (a snapshot: another
    /// consumer may take it first). Takes nothing.
    pub(crate) fn has_value(&self) -> bool {
        self.queue.has_value()
    }

    /// Waits until a value is ready at the head, without taking it, with the
    /// same spin-then-sleep as `get_until`.
    ///
    /// `Ok(())` once a value is ready (another consumer may still take it
    /// first); [`Error::QueueClosed`] once closed and drained;
    /// [`Error::Timeout`] at `deadline`.
    pub(crate) fn wait_nonempty_until(&self, deadline: Option<Instant>) -> Result<()> {
        self.queue.wait_nonempty_until(deadline)
    }

    /// The untyped queue underneath, for the test hooks in `crate::testing`
    /// and for waiting on it along with other things (`crate::connection`).
    pub(crate) fn byte_queue(&self) -> &ByteQueue {
        &self.queue
    }

    /// The words of its value file, with the layout this process checked
    /// (for the test hooks in `crate::testing`).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn value_words(&self) -> values::Words<'_> {
        self.queue.value_words(self.layout)
    }
}

#[cfg(feature = "fault-injection")]
impl<T> Queue<T> {
    /// The queue's shared segment, which any process holding it may write
    /// anything into (`testing::queue_memory`).
    pub(crate) fn shared_segment(&self) -> &crate::shm::Segment {
        self.map.segment()
    }
}

/// Unbounded queues: Python's `multiprocessing.Queue()` without a maxsize.
impl<T> Queue<T> {
    /// A queue that is never full, whose slots hold values of up to 240
    /// encoded bytes in place (larger ones go into its value file, as in a
    /// bounded queue):
    /// [`put`](Self::put) never waits and [`try_put`](Self::try_put)
    /// never refuses. Python's `multiprocessing.Queue()` with no `maxsize`.
    ///
    /// It grows by adding a ring twice as large as the last one when the
    /// newest ring is full, and gives a ring's memory back once it is
    /// drained; [`capacity`](Self::capacity) is `usize::MAX` and
    /// [`is_full`](Self::is_full) always `false`. It travels to pool tasks,
    /// [`crate::Process`]es and through other queues like any queue, and a
    /// process that grew it may exit or be killed without taking the memory
    /// with it. Its limit is memory: a put that cannot grow it (out of
    /// memory, or a terabyte of values) fails with [`Error::SharedMemory`].
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Process, Queue};
    ///
    /// fn produce(q: Queue<u64>) {
    ///     for i in 0..10_000 {
    ///         q.put(&i).unwrap(); // never waits for a consumer
    ///     }
    /// }
    ///
    /// fn main() {
    ///     corepool::init();
    ///     let q = Queue::<u64>::unbounded().unwrap();
    ///     Process::start(produce, q.clone()).unwrap().join().unwrap();
    ///     assert_eq!(q.len(), 10_000);
    ///     assert!(!q.is_full());
    ///     assert!((0..10_000).all(|i| q.get().unwrap() == i));
    /// }
    /// ```
    pub fn unbounded() -> Result<Self> {
        Self::unbounded_with_message_bytes(240)
    }

    /// An [`unbounded`](Self::unbounded) queue whose slots hold values of up
    /// to `message_bytes` encoded bytes in place; larger ones go into its
    /// value file.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a message size of 0 or above 16 MiB;
    /// [`Error::SharedMemory`].
    ///
    /// # Examples
    ///
    /// ```
    /// use corepool::{Error, Queue};
    ///
    /// let q = Queue::<Vec<u8>>::unbounded_with_message_bytes(1024).unwrap();
    /// assert_eq!((q.capacity(), q.message_bytes()), (usize::MAX, 1024));
    /// q.put(&vec![1; 2000]).unwrap(); // larger than a slot: in the file
    /// assert_eq!(q.get().unwrap(), vec![1; 2000]);
    /// assert!(matches!(
    ///     Queue::<u64>::unbounded_with_message_bytes(0),
    ///     Err(Error::InvalidConfig { .. })
    /// ));
    /// ```
    pub fn unbounded_with_message_bytes(message_bytes: usize) -> Result<Self> {
        if message_bytes == 0 || message_bytes > 16 << 20 {
            return Err(Error::InvalidConfig {
                what: format!("message size {message_bytes}: use 1 byte to 16 MiB, and a SharedArray for bulk data"),
            });
        }
        // Room for an envelope, as in `with_message_bytes`.
        let slot_bytes = message_bytes + ENVELOPE_BYTES;
        let map = SharedSegment::create(c"corepool-queue", mpmc::UNBOUNDED_CONTROL_BYTES)?;
        // SAFETY: the segment is new and zeroed: nobody else maps it yet.
        let queue =
            unsafe { ByteQueue::create_unbounded(memory_of(&map), slot_bytes, type_tag::<T>())? };
        let (values, layout) = new_value_file(&map, &queue)?;
        Ok(Self {
            map,
            values,
            layout,
            queue,
            _type: PhantomData,
        })
    }
}

/// What names no ring file in a queue's handle (a bounded queue's).
const NO_RING_FILE: (i32, i32, u64, u64) = (0, -1, 0, 0);

/// Bytes of a queue's handle on the wire: its value file's and ring file's
/// `(pid, fd, dev, ino)` (24 each), then its segment's handle (40). Fixed,
/// so that a value holding a queue and other handles
/// (`crate::JoinableQueue`) can decode those others even when the queue's
/// fails, and end their transits.
pub(crate) const WIRE_BYTES: usize = 24 + 24 + 40;

/// On the wire: the value file's handle `(sender pid, its descriptor,
/// device, inode)`, the ring file's alike (an unbounded queue's; a bounded
/// queue's says `(0, -1, 0, 0)`), then the queue memory's (see
/// `SharedSegment::encode`). Both files are named through the sender, not
/// the queue's creator, so that a queue opens after its creator is gone.
/// They come first so that a receiver opens them before its decode of the
/// memory's handle ends the transit: until then the sender keeps all three
/// (the files as the memory's companion, see `keep_files`).
impl<T: Wire> Wire for Queue<T> {
    fn encode(&self, out: &mut Encoder) {
        self.values.handle().encode(out);
        let rings = self.queue.ring_file();
        rings.map_or(NO_RING_FILE, |r| r.handle()).encode(out);
        self.map.encode(type_tag::<T>(), self.queue.capacity(), out);
    }

    fn decode(input: &mut &[u8]) -> Result<Self> {
        let (owner, fd, dev, ino) = <(i32, i32, u64, u64)>::decode(input)?;
        let rings_handle = <(i32, i32, u64, u64)>::decode(input)?;
        let values = ValueFile::open(owner, fd, dev, ino);
        let rings = (rings_handle != NO_RING_FILE).then(|| {
            let (owner, fd, dev, ino) = rings_handle;
            RingFile::open(owner, fd, dev, ino)
        });
        // Decoded whether or not the files opened, to end the transit.
        let (map, capacity) =
            SharedSegment::decode::<Self>(input, type_tag::<T>(), |_| Some(mpmc::SLOTS_AT as u64))?;
        let values = values.map_err(|e| e.into_error::<Self>(OPEN_STEP))?;
        let rings = rings
            .transpose()
            .map_err(|e| e.into_error::<Self>(OPEN_STEP))?;
        let queue = ByteQueue::open(memory_of(&map), type_tag::<T>(), capacity, rings.as_ref())
            .map_err(decode_error::<Self>)?;
        if queue.value_file_id() != values.identity() {
            return Err(decode_error::<Self>(
                "the handle names another value file than the queue's memory records",
            ));
        }
        // Checked once here, and this copy used from now on: a holder that
        // forges the recorded size later spoils only the values it puts.
        let region_bytes = queue.value_region_bytes();
        let layout = values::Layout::new(region_bytes, crate::sys::page_size()).ok_or_else(|| {
            decode_error::<Self>(format!(
                "the queue's memory records value file regions of {region_bytes} bytes, which no queue makes (a process wrote over the queue's memory)"
            ))
        })?;
        keep_files(&map, &values, &queue);
        Ok(Self {
            map,
            values,
            layout,
            queue,
            _type: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::mpmc::INLINE_COPY;

    #[test]
    fn a_queue_handle_is_wire_bytes_long() {
        for q in [
            Queue::<u64>::new(4).unwrap(),
            Queue::unbounded().unwrap_or_else(|_| Queue::new(8).unwrap()),
        ] {
            let mut out = Encoder::new();
            q.encode(&mut out);
            assert_eq!(out.finish().unwrap().len(), WIRE_BYTES);
        }
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
    #[cfg_attr(miri, ignore = "a value file is a memfd")]
    fn oversized_values_go_into_the_value_file() {
        let q = Queue::<Vec<u8>>::with_message_bytes(2, 16).unwrap();
        q.put(&vec![3; 100]).unwrap();
        assert!(q.try_put(&vec![4; 1 << 20]).unwrap());
        assert!(!q.try_put(&vec![5; 100]).unwrap(), "full");
        assert_eq!(q.get().unwrap(), vec![3; 100]);
        assert_eq!(q.try_get().unwrap(), Some(vec![4; 1 << 20]));
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
        let bytes = crate::wire::encode_to_vec(&q);
        let other = Queue::<String>::decode(&mut bytes.as_slice()).unwrap();
        other.put(&"hi".to_string()).unwrap();
        assert_eq!(q.get().unwrap(), "hi");
        assert!(
            Queue::<u64>::decode(&mut bytes.as_slice()).is_err(),
            "type mismatch"
        );
        assert!(
            Arc::ptr_eq(&q.values, &other.values),
            "one descriptor of the value file per process"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "a value file is a memfd")]
    fn a_handle_naming_another_queues_value_file_does_not_decode() {
        let q = Queue::<Vec<u8>>::new(4).unwrap();
        let other = Queue::<Vec<u8>>::new(4).unwrap();
        let mut bytes = crate::wire::encode_to_vec(&q);
        let theirs = crate::wire::encode_to_vec(&other);
        // The value file's handle comes first: pid, fd (i32), dev, ino (u64).
        bytes[..24].copy_from_slice(&theirs[..24]);
        let got = Queue::<Vec<u8>>::decode(&mut bytes.as_slice());
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        // A handle naming no value file at all.
        let mut bytes = crate::wire::encode_to_vec(&q);
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let got = Queue::<Vec<u8>>::decode(&mut bytes.as_slice());
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        q.put(&vec![9; 4000]).unwrap();
        assert_eq!(q.get().unwrap(), vec![9; 4000], "the queue is unharmed");
    }

    #[test]
    #[cfg_attr(miri, ignore = "an unbounded queue's rings are in a memfd")]
    fn a_handle_naming_another_ring_file_does_not_decode() {
        let q = Queue::<u64>::unbounded().unwrap();
        let other = Queue::<u64>::unbounded().unwrap();
        let bounded = Queue::<u64>::new(4).unwrap();
        let theirs = crate::wire::encode_to_vec(&other);
        // The ring file's handle follows the value file's: bytes 24..48.
        let mut bytes = crate::wire::encode_to_vec(&q);
        assert_eq!(
            &bytes[24..28],
            &std::process::id().to_le_bytes(),
            "the sender's"
        );
        bytes[24..48].copy_from_slice(&theirs[24..48]);
        let got = Queue::<u64>::decode(&mut bytes.as_slice());
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        // An unbounded queue's handle naming no ring file.
        let mut bytes = crate::wire::encode_to_vec(&q);
        bytes[24..48].copy_from_slice(&crate::wire::encode_to_vec(&NO_RING_FILE));
        let got = Queue::<u64>::decode(&mut bytes.as_slice());
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        // A bounded queue's handle naming one.
        let mut bytes = crate::wire::encode_to_vec(&bounded);
        bytes[24..48].copy_from_slice(&theirs[24..48]);
        let got = Queue::<u64>::decode(&mut bytes.as_slice());
        assert!(matches!(got, Err(Error::Decode { .. })), "{got:?}");
        // The queues are unharmed, and a true handle still decodes.
        let again = crate::wire::encode_to_vec(&q);
        let again = Queue::<u64>::decode(&mut again.as_slice()).unwrap();
        again.put(&5).unwrap();
        assert_eq!(q.get().unwrap(), 5);
    }
}
