//! The pool's shared memory and its layout, split by writer so that a worker
//! can write only what is its own: a small *common* segment every worker
//! maps (a copy of the header, for monitors, and the parent's doorbell,
//! which every worker rings); one *slot* segment per worker, its control
//! block and its two rings, mapped by the parent and that worker only; and a
//! memfd sealed against any change holding the header, the identities of
//! the pool's segments and the initializer's argument, which every worker
//! starts from ([`write_pristine`]).
//!
//! ```text
//! common segment (4096 bytes)    slot segment of worker i (slot_bytes)
//! 0      Header (a copy)         0      control block (4096 bytes)
//! 256    parent doorbell         4096   task ring data
//!                                4096 + task_ring_bytes   result ring data
//! ```
//!
//! A slot's control block, by offset (who writes each word):
//!
//! ```text
//! 0      state, 4 pid, 8 fail_code, 16 tasks_done, 24 fail_detail   (worker)
//! 128    shutdown (parent)           192  sleeping (futex word, both)
//! 256    task ring tail (parent)     384  task ring head, 388 released (worker)
//! 512    result ring tail (worker)   640  result ring head, 644 released (parent)
//! ```
//!
//! Since protocol version 5 each ring's `tail` and `head` are monitor words
//! that neither side reads: a record publishes itself with the stamp in its
//! header (`shm/ring.rs`), so a round trip moves the record's cache line and,
//! when the producer runs short of room, the consumer's `released`.
//!
//! Every position is an offset from a segment's base, computed by both sides
//! from the header's sizes with checked arithmetic; no pointer is ever stored.
//! See `docs/protocol.md` for the meaning of each word and who writes it.

use crate::error::{Error, Result};
use crate::shm::ring::RingMemory;
use crate::shm::Segment;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// "COREPOOL".
pub(crate) const MAGIC: [u8; 8] = *b"COREPOOL";
/// Bumped on any change to the layout or the record protocol.
pub(crate) const VERSION: u32 = 8;
/// Header flag: `initializer` holds a function offset.
pub(crate) const FLAG_INITIALIZER: u32 = 1;
/// In a `TASK` or `OK` record's `flags`: the payload is not the value but
/// the handle of a spill holding it (`crate::shm::spill`), because the value
/// is larger than a ring message.
pub(crate) const RECORD_SPILLED: u32 = 1;

const PAGE: usize = 4096;
const DOORBELL_OFFSET: usize = 256;
const SLOT_CONTROL_BYTES: usize = PAGE;
/// The common segment's size: the header's copy and the doorbell.
const COMMON_BYTES: usize = PAGE;

/// The pool's header, written once by the parent before any worker starts
/// (into the sealed memfd workers start from, and a copy into the common
/// segment for monitors) and only read (as a copy) afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_bytes: u32,
    /// The common segment's size.
    pub segment_bytes: u64,
    /// Identifies the parent's binary; the worker refuses to serve on mismatch.
    pub fingerprint: u64,
    pub workers: u32,
    pub task_ring_bytes: u32,
    pub result_ring_bytes: u32,
    pub flags: u32,
    /// Offset of the initializer trampoline from the anchor function.
    pub initializer: i64,
    /// 0 means unlimited.
    pub max_tasks_per_child: u64,
    pub parent_pid: i32,
    /// Length of the initializer's encoded argument, at the end of the
    /// sealed memfd.
    pub init_arg_len: u32,
}

/// The largest encoded initializer argument a pool accepts.
pub(crate) const MAX_INIT_ARG: usize = 16 << 20;

/// Sizes derived from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub workers: usize,
    pub task_ring_bytes: u32,
    pub result_ring_bytes: u32,
    /// Each slot segment's size: control block and both rings.
    pub slot_bytes: usize,
    /// The initializer's argument's length.
    pub init_arg_len: usize,
    /// The common segment's size.
    pub total: usize,
}

/// The most workers a pool may have: far more than any machine's CPUs, few
/// enough that the per-worker tables stay small.
pub(crate) const MAX_WORKERS: usize = 4096;

/// Refuses a worker count outside `1..=MAX_WORKERS`.
pub(crate) fn check_workers(workers: usize) -> Result<()> {
    if workers == 0 || workers > MAX_WORKERS {
        return Err(Error::InvalidConfig {
            what: format!("{workers} workers: use 1 to {MAX_WORKERS}"),
        });
    }
    Ok(())
}

impl Layout {
    /// Computes the layout, refusing sizes that are not powers of two in
    /// 4 KiB..=1 GiB or that overflow.
    pub(crate) fn new(
        workers: usize,
        task_ring_bytes: u32,
        result_ring_bytes: u32,
        init_arg_len: usize,
    ) -> Result<Self> {
        for (name, bytes) in [("task", task_ring_bytes), ("result", result_ring_bytes)] {
            if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
                return Err(Error::InvalidConfig {
                    what: format!(
                        "{name} ring of {bytes} bytes: use a power of two from 4096 to 1 GiB"
                    ),
                });
            }
        }
        check_workers(workers)?;
        if init_arg_len > MAX_INIT_ARG {
            return Err(Error::InvalidConfig {
                what: format!(
                    "an initializer argument of {init_arg_len} encoded bytes, over the {MAX_INIT_ARG}-byte limit: pass large data in a `SharedArray`"
                ),
            });
        }
        let overflow = || Error::InvalidConfig {
            what: "rings too large for this many workers".into(),
        };
        let slot_bytes = SLOT_CONTROL_BYTES
            .checked_add(task_ring_bytes as usize)
            .and_then(|n| n.checked_add(result_ring_bytes as usize))
            .ok_or_else(overflow)?;
        // All slots together must still be addressable.
        slot_bytes
            .checked_mul(workers)
            .and_then(|n| n.checked_add(COMMON_BYTES))
            .ok_or_else(overflow)?;
        Ok(Self {
            workers,
            task_ring_bytes,
            result_ring_bytes,
            slot_bytes,
            init_arg_len,
            total: COMMON_BYTES,
        })
    }
}

/// Writes the header's copy into the common segment, for monitors (no
/// worker reads it: any worker may change it). Only before any worker maps
/// the segment.
pub(crate) fn write_header(seg: &Segment, header: &Header) {
    let dst = seg
        .at(0, std::mem::size_of::<Header>())
        .expect("segment holds a header");
    // SAFETY: in bounds (checked above); no other process maps the segment yet.
    unsafe { dst.cast::<Header>().write_unaligned(*header) }
}

/// Reads the copy of the header in the common segment and checks it
/// against the segment (workers start from [`read_pristine`]: a worker may
/// write anything here).
#[cfg(test)]
pub(crate) fn read_header(seg: &Segment) -> Result<(Header, Layout)> {
    let src = seg
        .at(0, std::mem::size_of::<Header>())
        .ok_or_else(|| bad_header("segment smaller than its header".into()))?;
    // SAFETY: in bounds; the header is plain data, copied once, then validated.
    let header: Header = unsafe { src.cast::<Header>().read_unaligned() };
    check_header(header, seg)
}

fn bad_header(what: String) -> Error {
    Error::WorkerStart {
        index: usize::MAX,
        reason: what,
    }
}

/// Which file a pool's memfd is, as `fstat` says: what a worker checks the
/// descriptors it was given against (a descriptor that is not its pool's is
/// refused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
}

impl FileIdentity {
    /// The identity of `seg`'s memfd.
    pub(crate) fn of(seg: &Segment) -> Result<Self> {
        let id = seg.identity()?;
        Ok(Self {
            dev: id.dev,
            ino: id.ino,
        })
    }
}

/// The pool's shared memory, parent side: the common segment and every
/// slot's segment, alive as long as the pool (the parent's [`Slot`]s point
/// into them). Each worker maps the common segment and its own slot's.
#[derive(Debug)]
pub(crate) struct PoolMemory {
    common: Segment,
    slots: Vec<Segment>,
    layout: Layout,
}

impl PoolMemory {
    /// Creates the common segment and one segment per slot, zero-filled.
    pub(crate) fn create(layout: &Layout) -> Result<Self> {
        let common = Segment::create(c"corepool", layout.total)?;
        let slots = (0..layout.workers)
            .map(|_| Segment::create(c"corepool-slot", layout.slot_bytes))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            common,
            slots,
            layout: *layout,
        })
    }

    /// The segment every worker maps.
    pub(crate) fn common(&self) -> &Segment {
        &self.common
    }

    /// Worker `index`'s slot; its base is computed here, once.
    pub(crate) fn slot(&self, index: usize) -> Option<Slot> {
        Slot::new(self.slots.get(index)?, &self.layout)
    }

    /// The parent's doorbell.
    pub(crate) fn doorbell(&self) -> &AtomicU32 {
        doorbell(&self.common)
    }

    /// The identities of the common segment, then of each slot's, in
    /// order: what [`write_pristine`] records.
    pub(crate) fn identities(&self) -> Result<Vec<FileIdentity>> {
        std::iter::once(&self.common)
            .chain(&self.slots)
            .map(FileIdentity::of)
            .collect()
    }

    /// The descriptors a worker is given: the common segment's, and each
    /// slot's (worker `i` gets the `i`th only).
    pub(crate) fn descriptors(&self) -> (RawFd, Vec<RawFd>) {
        let slots = self.slots.iter().map(Segment::raw_fd).collect();
        (self.common.raw_fd(), slots)
    }
}

/// What a worker starts from, read from the pool's sealed memfd
/// ([`write_pristine`]).
#[derive(Debug)]
pub(crate) struct Pristine {
    pub header: Header,
    pub layout: Layout,
    /// The identity of this worker's slot segment.
    pub slot: FileIdentity,
    /// The initializer's encoded argument.
    pub init_arg: Vec<u8>,
}

/// Writes the header, the identities of the pool's segments (the common
/// one, then each slot's, as [`PoolMemory::identities`] gives them) and the
/// initializer's argument into a new memfd sealed against any change
/// (written with `pwrite`, never mapped writable): what every worker starts
/// from, since a worker may write anything into the common segment. The
/// parent holds the returned descriptor for the pool's life and passes it
/// to each worker beside its segments'.
pub(crate) fn write_pristine(
    header: &Header,
    identities: &[FileIdentity],
    init_arg: &[u8],
) -> Result<OwnedFd> {
    let mut head = bytemuck::bytes_of(header).to_vec();
    head.extend_from_slice(bytemuck::cast_slice(identities));
    crate::shm::spill::write_sealed_file(c"corepool-header", &head, init_arg)
}

/// Worker `index`: what it starts from, out of the sealed memfd `file` the
/// parent passed (refused unless it is sealed against any change), checked
/// against the common segment `common` (its identity and size). The slot
/// segment's identity comes back for the worker to check its own against.
pub(crate) fn read_pristine(file: OwnedFd, common: &Segment, index: usize) -> Result<Pristine> {
    use std::os::fd::AsFd;
    let size = crate::sys::fstat(file.as_fd())
        .map_err(|e| bad_header(format!("the pool's header: {e}")))?
        .size;
    let size = usize::try_from(size).map_err(|_| bad_header("the pool's header is huge".into()))?;
    let map =
        crate::shm::spill::map_sealed_file(file, size, "the pool's header").map_err(bad_header)?;
    let bytes = map.bytes();
    let short = || bad_header("the pool's header is short".into());
    let header_len = std::mem::size_of::<Header>();
    let header: Header = bytemuck::pod_read_unaligned(bytes.get(..header_len).ok_or_else(short)?);
    let (header, layout) = check_header(header, common)?;
    let id_len = std::mem::size_of::<FileIdentity>();
    let identity = |i: usize| -> Result<FileIdentity> {
        let at = header_len + i * id_len;
        let id = bytes.get(at..at + id_len).ok_or_else(short)?;
        Ok(bytemuck::pod_read_unaligned(id))
    };
    if identity(0)? != FileIdentity::of(common)? {
        return Err(bad_header("the common segment is not the pool's".into()));
    }
    if index >= layout.workers {
        return Err(bad_header("the slot is not in the pool".into()));
    }
    let slot = identity(1 + index)?;
    let arg_at = header_len + (1 + layout.workers) * id_len;
    let init_arg = bytes
        .get(arg_at..arg_at + layout.init_arg_len)
        .ok_or_else(|| bad_header("the initializer's argument is short".into()))?
        .to_vec();
    Ok(Pristine {
        header,
        layout,
        slot,
        init_arg,
    })
}

/// Checks a copy of the header against the common segment.
fn check_header(header: Header, seg: &Segment) -> Result<(Header, Layout)> {
    let bad = bad_header;
    if header.magic != MAGIC {
        return Err(bad("segment has no corepool magic".into()));
    }
    if header.version != VERSION {
        return Err(bad(format!(
            "segment protocol version {} but this binary speaks {VERSION}",
            header.version
        )));
    }
    let layout = Layout::new(
        header.workers as usize,
        header.task_ring_bytes,
        header.result_ring_bytes,
        header.init_arg_len as usize,
    )?;
    if layout.total > seg.len() || header.segment_bytes != seg.len() as u64 {
        return Err(bad("segment is smaller than its header says".into()));
    }
    Ok((header, layout))
}

/// The parent's doorbell: a futex word workers ring after publishing results.
pub(crate) fn doorbell(seg: &Segment) -> &AtomicU32 {
    let p = seg
        .at(DOORBELL_OFFSET, 4)
        .expect("segment holds the doorbell");
    // SAFETY: in bounds, 4-byte aligned (page-aligned base + 256), lives as long
    // as `seg`; every process accesses it only atomically.
    unsafe { AtomicU32::from_ptr(p.cast()) }
}

/// Worker lifecycle states, written by the worker into `Slot::state`.
pub(crate) mod state {
    /// Spawned, not yet attached.
    pub(crate) const STARTING: u32 = 0;
    /// Attached, initializer done, serving.
    pub(crate) const READY: u32 = 1;
    /// Served `max_tasks_per_child` tasks and is exiting on purpose.
    pub(crate) const RETIRING: u32 = 2;
    /// Failed to start; `fail_code` says why.
    pub(crate) const FAILED: u32 = 3;
}

/// Why a worker failed to start, written into `Slot::fail_code`.
pub(crate) mod fail {
    pub(crate) const NONE: u32 = 0;
    pub(crate) const BINARY_MISMATCH: u32 = 1;
    pub(crate) const INITIALIZER_FAILED: u32 = 2;
}

/// One worker's slot: its segment's control block and rings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    base: *mut u8,
    layout: Layout,
}

// SAFETY: a Slot is a pointer into a segment designed for concurrent use; it
// only hands out atomics and `RingMemory`, which are themselves Send + Sync.
unsafe impl Send for Slot {}
// SAFETY: as above.
unsafe impl Sync for Slot {}

macro_rules! atomic_field {
    ($name:ident, $ty:ty, $offset:expr, $doc:literal) => {
        #[doc = $doc]
        pub(crate) fn $name(&self) -> &$ty {
            // SAFETY: `base` points at a slot segment of `slot_bytes`, more
            // than `SLOT_CONTROL_BYTES` (checked in `Slot::new`); the offset is aligned and in
            // the control block; the segment outlives the Slot by the caller's
            // contract; every process accesses the word only atomically.
            unsafe { <$ty>::from_ptr(self.base.add($offset).cast()) }
        }
    };
}

impl Slot {
    /// The slot held by `seg`, a slot segment of `layout`'s size or more.
    ///
    /// The returned value points into `seg`: the caller keeps `seg` alive as
    /// long as the slot (the pool and the worker both hold their segments for
    /// their whole life).
    pub(crate) fn new(seg: &Segment, layout: &Layout) -> Option<Self> {
        let base = seg.at(0, layout.slot_bytes)?;
        Some(Self {
            base,
            layout: *layout,
        })
    }

    atomic_field!(
        state,
        AtomicU32,
        0,
        "Lifecycle state (see [`state`]); written by the worker."
    );
    atomic_field!(
        pid,
        AtomicU32,
        4,
        "The worker's pid; written by the worker at start."
    );
    atomic_field!(
        fail_code,
        AtomicU32,
        8,
        "Why a start failed (see [`fail`]); written by the worker."
    );
    atomic_field!(
        tasks_done,
        AtomicU64,
        16,
        "Tasks this worker finished; written by the worker."
    );
    atomic_field!(
        fail_detail,
        AtomicU64,
        24,
        "Detail of a failed start (the worker's fingerprint on a mismatch); written by the worker."
    );
    atomic_field!(
        task_ns,
        AtomicU64,
        32,
        "The worker's smoothed nanoseconds per task (0: not measured yet); written by the worker after a timed batch, read by the parent to size the worker's window."
    );
    atomic_field!(
        sleeping,
        AtomicU32,
        192,
        "The worker's futex word: 1 while it sleeps or is about to."
    );
    atomic_field!(
        shutdown,
        AtomicU32,
        128,
        "Set to 1 by the parent: exit once the task ring is empty."
    );

    /// A ring whose producer's word (`tail`) is at `producer` and whose
    /// consumer's words (`head`, then `released`) are at `consumer`.
    fn ring(&self, producer: usize, consumer: usize, data: usize, cap: u32) -> RingMemory {
        // SAFETY: all offsets lie inside this slot (control block words at
        // 256..=644, data after SLOT_CONTROL_BYTES, sizes from the validated
        // layout), are aligned, and the segment outlives the slot.
        unsafe {
            RingMemory::new(
                self.base.add(producer).cast(),
                self.base.add(consumer).cast(),
                self.base.add(consumer + 4).cast(),
                self.base.add(data),
                cap,
            )
        }
    }

    /// Parent → worker: tasks. The parent's `tail` and the worker's `head`
    /// and `released` each have a 128-byte block of their own: a line
    /// written by one side is never pulled into the other's cache with a
    /// neighbour the other reads (adjacent-line prefetch works on pairs).
    /// Since protocol version 5 `tail` and `head` are monitor words, read by
    /// neither side: records publish themselves (a stamp in each header,
    /// see `shm/ring.rs`), and only `released` crosses over.
    pub(crate) fn task_ring(&self) -> RingMemory {
        self.ring(256, 384, SLOT_CONTROL_BYTES, self.layout.task_ring_bytes)
    }

    /// Worker → parent: results. Laid out as the task ring.
    pub(crate) fn result_ring(&self) -> RingMemory {
        let data = SLOT_CONTROL_BYTES + self.layout.task_ring_bytes as usize;
        self.ring(512, 640, data, self.layout.result_ring_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_rejects_bad_sizes() {
        assert!(Layout::new(2, 4096, 4096, 0).is_ok());
        assert!(Layout::new(2, 5000, 4096, 0).is_err());
        assert!(Layout::new(0, 4096, 4096, 0).is_err());
        assert!(Layout::new(2, 4096, 4096, MAX_INIT_ARG + 1).is_err());
        assert!(
            Layout::new(4096, 1 << 30, 1 << 30, 0).is_ok() || cfg!(target_pointer_width = "32")
        );
    }

    fn header_for(layout: &Layout) -> Header {
        Header {
            magic: MAGIC,
            version: VERSION,
            header_bytes: std::mem::size_of::<Header>() as u32,
            segment_bytes: layout.total as u64,
            workers: layout.workers as u32,
            task_ring_bytes: layout.task_ring_bytes,
            result_ring_bytes: layout.result_ring_bytes,
            init_arg_len: layout.init_arg_len as u32,
            ..Default::default()
        }
    }

    #[test]
    fn header_round_trips_and_is_validated() {
        let layout = Layout::new(2, 4096, 8192, 0).unwrap();
        let memory = PoolMemory::create(&layout).unwrap();
        assert!(read_header(memory.common()).is_err(), "no magic yet");
        write_header(memory.common(), &header_for(&layout));
        let (_, read) = read_header(memory.common()).unwrap();
        assert_eq!(read, layout);
        let slot = memory.slot(1).unwrap();
        assert_eq!(slot.result_ring().capacity(), 8192);
        assert!(memory.slot(2).is_none());
    }

    /// Workers start from the sealed copy, and refuse a copy that could be
    /// changed or a segment that is not one it names.
    #[test]
    #[cfg(not(miri))] // no memfd under Miri
    fn the_sealed_header_is_checked_against_the_segments() {
        let layout = Layout::new(2, 4096, 4096, 3).unwrap();
        let memory = PoolMemory::create(&layout).unwrap();
        let header = header_for(&layout);
        let ids = memory.identities().unwrap();
        assert_eq!(ids.len(), 3, "the common segment and two slots");
        let sealed = || write_pristine(&header, &ids, b"arg").unwrap();
        let read = read_pristine(sealed(), memory.common(), 1).unwrap();
        assert_eq!((read.layout, &read.init_arg[..]), (layout, &b"arg"[..]));
        assert_eq!(read.slot, ids[2], "worker 1's slot");
        assert!(
            read_pristine(sealed(), memory.common(), 2).is_err(),
            "no slot 2"
        );
        // The common segment's own header is never read: it may hold anything.
        assert!(read_header(memory.common()).is_err());
        let other = PoolMemory::create(&layout).unwrap();
        assert!(
            read_pristine(sealed(), other.common(), 0).is_err(),
            "another pool"
        );
        // The same bytes in a memfd that is not sealed: refused.
        let open = crate::sys::memfd_create(c"corepool-test").unwrap();
        let mut bytes = bytemuck::bytes_of(&header).to_vec();
        bytes.extend_from_slice(bytemuck::cast_slice(&ids));
        bytes.extend_from_slice(b"arg");
        crate::sys::pwrite_all(std::os::fd::AsFd::as_fd(&open), &bytes, 0).unwrap();
        let refused = read_pristine(open, memory.common(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("the pool's header is not sealed against writing"),
            "{refused}"
        );
    }
}
