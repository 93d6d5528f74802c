//! Fault injection for corepool's own test suite: ways for a worker or a
//! process holding a shared object to break the protocol or die at the worst
//! moment, so that the tests can check the parent and the other processes
//! survive it.
//!
//! Only built with the `fault-injection` feature, which no user needs: the
//! published API has none of this.

use crate::shm::Segment;
use crate::{JoinableQueue, PipeEnd, Queue, Value, Wire};
use bytemuck::Pod;
use std::sync::atomic::{AtomicU32, AtomicU8};

pub use crate::pool::worker::{sabotage, Sabotage};
pub use crate::wire::task::forged::{forge_chunk_results, ChunkLie};

/// Claims the next slot of `queue` as a producer and dies there (SIGABRT),
/// leaving the slot half-written and owned by this process.
pub fn abort_while_putting<T: Wire>(queue: &Queue<T>) -> ! {
    queue.byte_queue().claim_slot_and_abort()
}

/// Claims the next value of `queue` as a consumer and dies there (SIGABRT),
/// leaving the slot half-read and owned by this process.
pub fn abort_while_getting<T: Wire>(queue: &Queue<T>) -> ! {
    queue.byte_queue().claim_value_and_abort()
}

/// Claims the next slot of `queue` as a producer named `pid` with no owner
/// tag and leaves it so: what a producer that died between winning the slot
/// and recording its tag leaves behind, as a hostile process could forge it.
/// The slot is repaired once `pid` is dead or a process that does not map
/// the queue.
pub fn forge_untagged_put_claim<T: Wire>(queue: &Queue<T>, pid: u32) {
    queue.byte_queue().forge_untagged_claim(pid)
}

/// Puts `bytes` into the next slot of `queue` as they are, as a hostile
/// process holding the queue could write them; `false` if it is full. A
/// slot exactly [`Queue::message_bytes`] + 16 bytes long holds the record
/// of a value in the queue's value file: its offset and length (u64 each,
/// little-endian), then anything; one of + 40 bytes a spill's handle.
pub fn put_raw_slot<T: Wire>(queue: &Queue<T>, bytes: &[u8]) -> bool {
    queue.byte_queue().try_put(bytes).unwrap_or(false)
}

/// Overwrites the word of region `region` of `queue`'s value file, as a
/// hostile process could: the word that counts the values too large for a
/// slot that are live in the region (`live`, up to 2^24 - 1) and says at
/// which page of the file the next one goes (`cursor`, below 2^40) when any
/// is live. Regions 0 to 3 are the file's first four quarters of
/// [`value_regions`]`.0` bytes each, region 4 the rest of its offset space
/// (the layout in `docs/protocol.md`, "A queue's value file"). A region
/// past 4 is ignored.
pub fn forge_region_word<T: Wire>(queue: &Queue<T>, region: usize, live: u64, cursor: u64) {
    if let Some(word) = queue.value_words().regions.get(region) {
        // Relaxed: a forgery, ordered by nothing, as a hostile process's
        // would be.
        word.store(
            crate::shm::values::value_word(live, cursor),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// `(live, cursor)` of the word of region `region` of `queue`'s value file
/// (see [`forge_region_word`]); `(0, 0)` past region 4.
pub fn region_word<T: Wire>(queue: &Queue<T>, region: usize) -> (u64, u64) {
    queue
        .value_words()
        .regions
        .get(region)
        .map_or((0, 0), |word| {
            // Relaxed: a snapshot for a test, ordered by nothing.
            crate::shm::values::split_word(word.load(std::sync::atomic::Ordering::Relaxed))
        })
}

/// How many values too large for a slot are counted live in `queue`'s
/// value file, region by region (a value that runs on from one region into
/// the next counts in both).
pub fn value_live_counts<T: Wire>(queue: &Queue<T>) -> Vec<u64> {
    (0..crate::shm::values::REGION_WORDS)
        .map(|r| region_word(queue, r).0)
        .collect()
}

/// `(region size in bytes as this process checked it, the hint word: the
/// region a put tries first)` of `queue`'s value file.
pub fn value_regions<T: Wire>(queue: &Queue<T>) -> (u64, u64) {
    let words = queue.value_words();
    // Relaxed: a snapshot for a test, ordered by nothing.
    let hint = words.hint.load(std::sync::atomic::Ordering::Relaxed);
    (words.layout.region_bytes(), hint)
}

/// Overwrites the hint word of `queue`'s value file (the region a put
/// tries first), as a hostile process could.
pub fn forge_value_hint<T: Wire>(queue: &Queue<T>, hint: u64) {
    // Relaxed: a forgery, ordered by nothing.
    queue
        .value_words()
        .hint
        .store(hint, std::sync::atomic::Ordering::Relaxed);
}

/// Overwrites the region size `queue`'s memory records for its value file,
/// as a hostile process could: processes that open the queue later check
/// it (one that already holds the queue keeps the size it checked).
pub fn forge_value_region_bytes<T: Wire>(queue: &Queue<T>, region_bytes: u64) {
    queue.byte_queue().forge_value_region_bytes(region_bytes);
}

/// Forgets the start time recorded for the process that holds the other
/// end of `end`'s pipe, as if it could not be read when it was recorded: that
/// holder is then judged by its pid alone, which a reused pid could fool.
pub fn forget_peer_tag<T>(end: &crate::PipeEnd<T>) {
    end.forget_peer_tag()
}

/// Whether the other end of `end`'s pipe is closed, in one load: without
/// looking for a dead holder, as `recv` and `poll` would.
pub fn peer_is_closed<T>(end: &crate::PipeEnd<T>) -> bool {
    end.peer_is_closed()
}

/// Takes `value`'s lock, starts a write and dies there (SIGABRT).
pub fn abort_while_locked<T: Pod>(value: &Value<T>) -> ! {
    value.lock_and_abort()
}

/// Makes this process's next queue claim (a put's or a get's) stop the
/// process (SIGSTOP) right after it, holding the slot, until it is sent
/// SIGCONT; then the put or get goes on as usual.
pub fn stop_in_next_claim() {
    crate::shm::mpmc::stop_after_next_claim()
}

/// The wire bytes of a `Value<u64>` handle naming descriptor `fd` of
/// process `owner`, with identity (`dev`, `ino`): a handle a hostile worker
/// could send, for decoding with [`Wire::decode`].
pub fn forged_value_handle(owner: i32, fd: i32, dev: u64, ino: u64) -> Vec<u8> {
    let tag = crate::shm::handle::type_tag::<Value<u64>>();
    let mut out = crate::Encoder::new();
    (owner, fd, dev, ino, 0u64, tag).encode(&mut out);
    // Plain numbers: nothing to fail, nothing to keep alive.
    out.finish().unwrap_or_default()
}

/// Makes the next `n` `poll`s of `pool`'s supervisor thread fail, as the
/// kernel would under a descriptor or memory shortage: the pool must kill
/// nobody, keep serving, and count each failure in
/// [`PoolStats::supervisor_errors`](crate::PoolStats::supervisor_errors).
pub fn fail_next_supervisor_polls(pool: &crate::Pool, n: u32) {
    pool.fail_next_supervisor_polls(n);
}

/// Whether `pool`'s driver thread would find something to do now (what it
/// re-checks after announcing its sleep): an idle pool's driver must come
/// to rest whatever its workers write into words the parent does not read.
pub fn driver_has_work(pool: &crate::Pool) -> bool {
    pool.driver_has_work()
}

/// Bytes of `pool`'s argument arena kept for ever (blocks of tasks that
/// left a worker which may still read them) and free; `None` before the
/// pool's first large argument made it (or with none).
pub fn arg_arena_usage(pool: &crate::Pool) -> Option<(usize, usize)> {
    pool.arg_arena_usage()
}

/// How many shared objects this process keeps for receivers that have not
/// opened them yet (sent, dropped here, still in flight): see the lifetime
/// rule in `docs/protocol.md`.
pub fn lingering_objects() -> usize {
    crate::shm::handle::lingering()
}

/// How many values too large for a queue slot this process has put into a
/// spill of its own rather than the queue's value file (past its file-size
/// limit: see [`Queue`]), since it started.
pub fn spilled_values() -> u64 {
    crate::queue::SPILLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Lets go at once of every object this process keeps for receivers (see
/// [`lingering_objects`]), as its exit would, and of the mappings of other
/// processes' objects it caches and nothing uses: what a test does after a
/// hostile process forged in-flight counts (then both stay, bounded, by
/// design), so that their descriptors and memory are not counted as leaked.
pub fn forget_lingering_objects() {
    crate::shm::handle::forget_unused_mappings();
    crate::shm::handle::forget_lingering();
}

/// In a pool worker: publish its next result that spilled with the spill
/// already gone, and exit at once (status 0), as a worker that dies between
/// publishing it and the parent opening it would. Call it from a task.
pub fn exit_after_next_spilled_result() {
    crate::pool::worker::exit_after_next_spill();
}

/// Sets the in-flight count of `array`'s segment to `count`, as a hostile
/// process could: 0 lets the object go early (its receivers then get
/// [`Error::Decode`](crate::Error::Decode)), a large value makes it linger
/// until this process's bound.
pub fn forge_in_flight<T: Pod>(array: &crate::SharedArray<T>, count: u32) {
    array.forge_in_flight(count);
}

/// Waits until `process` has written its outcome (or ended), without
/// reading it: a process whose result names shared objects or pipe ends is
/// then waiting at its exit for that result to be read.
pub fn wait_for_outcome<R: Wire>(process: &crate::Process<R>) {
    process.wait_for_outcome_for_tests();
}

/// The bytes of `seg`, as a process mapping it may write them: any byte,
/// at any time, through atomics.
fn bytes_of(seg: &Segment) -> &[AtomicU8] {
    let base = seg.base().cast::<AtomicU8>();
    // SAFETY: the mapping spans `len` bytes from `base` and stays mapped as
    // long as `seg` is borrowed; other processes write it concurrently, so
    // it is only ever accessed through atomics here.
    unsafe { std::slice::from_raw_parts(base, seg.len()) }
}

/// What a pool worker maps of the pool's shared memory, for a test that
/// makes it write garbage there ([`worker_memory`]).
#[derive(Debug, Clone, Copy)]
pub struct WorkerMemory {
    /// The pool's common segment, as every worker maps it: a copy of the
    /// header for monitors (no worker reads it), and the parent's doorbell
    /// at 256. Nothing else of the pool's: other workers' slots and the
    /// initializer's argument are in memory this worker does not map.
    pub segment: &'static [AtomicU8],
    /// This worker's slot, a segment of its own that only it and the
    /// parent map: its control block (the words at
    /// [`WORKER_CONTROL_WORDS`]), then its task ring's bytes, then its
    /// result ring's.
    pub slot: &'static [AtomicU8],
    /// Where the task ring's bytes start in `slot`, and their length.
    pub task_ring: (usize, usize),
    /// Where the result ring's bytes start in `slot`, and their length.
    pub result_ring: (usize, usize),
    /// The parent's doorbell: the futex word workers ring after results.
    pub doorbell: &'static AtomicU32,
}

/// Offsets of the words of a worker's control block (`pool/layout.rs`):
/// state, pid, fail code, tasks done, fail detail, shutdown, sleeping, the
/// task ring's tail, head and released, the result ring's tail, head and
/// released.
pub const WORKER_CONTROL_WORDS: [usize; 13] =
    [0, 4, 8, 16, 24, 128, 192, 256, 384, 388, 512, 640, 644];

/// Where a record's header keeps its stamp, kind, payload length, flags,
/// id and aux (`shm/ring.rs`); records start at multiples of 64 bytes.
pub const RECORD_FIELDS: [usize; 6] = [0, 4, 8, 12, 16, 24];

/// The stamp a record at ring position `position` carries when published.
pub const fn record_stamp(position: u32) -> u32 {
    crate::shm::ring::stamp_for(position)
}

/// In a pool worker: the memory it shares with the parent (and the other
/// workers) and may write, for a test to write garbage into. `None`
/// outside a worker. The references last as long as the worker serves,
/// which is as long as it lives.
pub fn worker_memory() -> Option<WorkerMemory> {
    static FOUND: std::sync::OnceLock<[usize; 6]> = std::sync::OnceLock::new();
    fn keep(segment: &[AtomicU8], slot: &[AtomicU8], task_ring: usize, result_ring: usize) {
        let (common, own) = (segment.as_ptr() as usize, slot.as_ptr() as usize);
        let found = [
            common,
            segment.len(),
            own,
            slot.len(),
            task_ring,
            result_ring,
        ];
        let _ = FOUND.set(found);
    }
    if FOUND.get().is_none() && !sabotage(Sabotage::Scribble(keep)) {
        return None;
    }
    let &[common, common_len, own, own_len, task_ring, result_ring] = FOUND.get()?;
    // SAFETY: the segments the worker handed over, which stay mapped as
    // long as the worker serves (its whole life); accessed only through
    // atomics.
    let (segment, slot) = unsafe {
        (
            std::slice::from_raw_parts(common as *const AtomicU8, common_len),
            std::slice::from_raw_parts(own as *const AtomicU8, own_len),
        )
    };
    let control = 4096;
    let doorbell = segment.get(256..260)?;
    // SAFETY: 4 bytes at offset 256 of a page-aligned mapping: an aligned
    // word, which every process accesses only atomically.
    let doorbell = unsafe { AtomicU32::from_ptr(doorbell.as_ptr().cast_mut().cast()) };
    Some(WorkerMemory {
        segment,
        slot,
        task_ring: (control, task_ring),
        result_ring: (control + task_ring, result_ring),
        doorbell,
    })
}

/// In a `Process` child: its segment (header, argument, outcome words,
/// result room), which it may write anything into. `None` elsewhere.
pub fn process_memory() -> Option<&'static [AtomicU8]> {
    crate::process::child::own_segment().map(bytes_of)
}

/// The shared memory of `queue` (its header and ring: what every process
/// holding it may write). The rings an unbounded queue grows into are not
/// included.
pub fn queue_memory<T>(queue: &Queue<T>) -> Vec<&[AtomicU8]> {
    vec![bytes_of(queue.shared_segment())]
}

/// The shared memory of `queue`: its unfinished count's and its queue's.
pub fn joinable_queue_memory<T>(queue: &JoinableQueue<T>) -> Vec<&[AtomicU8]> {
    queue.shared_segments().into_iter().map(bytes_of).collect()
}

/// The shared memory of `end`'s pipe: the control segment (holders,
/// closed flags) and the queues under it.
pub fn pipe_memory<T>(end: &PipeEnd<T>) -> Vec<&[AtomicU8]> {
    end.shared_segments().into_iter().map(bytes_of).collect()
}
