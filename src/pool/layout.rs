//! The pool segment's layout: a header, the parent's doorbell, then one slot per
//! worker holding its control block and its two rings.
//!
//! ```text
//! 0      Header (magic, version, sizes, fingerprint, initializer, ...)
//! 256    parent doorbell (futex word, own cache line)
//! 4096   slot 0: control block | task ring data | result ring data
//! ...    slot 1, 2, ... every `slot_stride` bytes
//! end    the initializer's encoded argument (`init_arg_len` bytes), if any
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
//! Every position is an offset from the segment base, computed by both sides
//! from the header's sizes with checked arithmetic; no pointer is ever stored.
//! See `docs/protocol.md` for the meaning of each word and who writes it.

use crate::error::{Error, Result};
use crate::shm::ring::RingMemory;
use crate::shm::Segment;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// "COREPOOL".
pub(crate) const MAGIC: [u8; 8] = *b"COREPOOL";
/// Bumped on any change to the layout or the record protocol.
pub(crate) const VERSION: u32 = 5;
/// Header flag: `initializer` holds a function offset.
pub(crate) const FLAG_INITIALIZER: u32 = 1;
/// In a `TASK` or `OK` record's `flags`: the payload is not the value but
/// the handle of a spill holding it (`crate::shm::spill`), because the value
/// is larger than a ring message.
pub(crate) const RECORD_SPILLED: u32 = 1;

const PAGE: usize = 4096;
const DOORBELL_OFFSET: usize = 256;
const SLOT_CONTROL_BYTES: usize = PAGE;

/// The segment header, written once by the parent before any worker starts and
/// only read (as a copy) afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_bytes: u32,
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
    /// Length of the initializer's encoded argument, after the last slot.
    pub init_arg_len: u32,
}

/// The largest encoded initializer argument a pool accepts.
pub(crate) const MAX_INIT_ARG: usize = 16 << 20;

/// Sizes and offsets derived from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub workers: usize,
    pub task_ring_bytes: u32,
    pub result_ring_bytes: u32,
    pub slot_stride: usize,
    /// Where the initializer's argument starts, and its length.
    pub init_arg_offset: usize,
    pub init_arg_len: usize,
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
        let slot_stride = SLOT_CONTROL_BYTES
            .checked_add(task_ring_bytes as usize)
            .and_then(|n| n.checked_add(result_ring_bytes as usize))
            .ok_or_else(overflow)?;
        let init_arg_offset = slot_stride
            .checked_mul(workers)
            .and_then(|n| n.checked_add(PAGE))
            .ok_or_else(overflow)?;
        let total = init_arg_offset
            .checked_add(init_arg_len)
            .ok_or_else(overflow)?;
        Ok(Self {
            workers,
            task_ring_bytes,
            result_ring_bytes,
            slot_stride,
            init_arg_offset,
            init_arg_len,
            total,
        })
    }

    fn slot_offset(&self, index: usize) -> usize {
        PAGE + index * self.slot_stride
    }
}

/// Writes the header. Only before any worker maps the segment.
pub(crate) fn write_header(seg: &Segment, header: &Header) {
    let dst = seg
        .at(0, std::mem::size_of::<Header>())
        .expect("segment holds a header");
    // SAFETY: in bounds (checked above); no other process maps the segment yet.
    unsafe { dst.cast::<Header>().write_unaligned(*header) }
}

/// Reads a copy of the segment's header and checks it against the segment
/// (workers start from [`read_pristine`]: a worker may write anything here).
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

/// What a worker starts from, read from the pool's sealed memfd
/// ([`write_pristine`]).
#[derive(Debug)]
pub(crate) struct Pristine {
    pub header: Header,
    pub layout: Layout,
    /// The initializer's encoded argument.
    pub init_arg: Vec<u8>,
}

/// Writes the header, the segment's identity and the initializer's
/// argument into a new memfd sealed against any change (written with
/// `pwrite`, never mapped writable): what every worker starts from, since
/// a worker may write anything into the segment, which every worker maps
/// writable. The parent holds the returned descriptor for the pool's life
/// and passes it to each worker as it passes the segment's.
pub(crate) fn write_pristine(
    header: &Header,
    segment: FileIdentity,
    init_arg: &[u8],
) -> Result<std::os::fd::OwnedFd> {
    let mut head = bytemuck::bytes_of(header).to_vec();
    head.extend_from_slice(bytemuck::bytes_of(&segment));
    crate::shm::spill::write_sealed_file(c"corepool-header", &head, init_arg)
}

/// Worker: what it starts from, out of the sealed memfd `file` the parent
/// passed (refused unless it is sealed against any change), checked against
/// the segment `seg` (its identity and size).
pub(crate) fn read_pristine(file: std::os::fd::OwnedFd, seg: &Segment) -> Result<Pristine> {
    use std::os::fd::AsFd;
    let size = crate::sys::fstat(file.as_fd())
        .map_err(|e| bad_header(format!("the pool's header: {e}")))?
        .size;
    let size = usize::try_from(size).map_err(|_| bad_header("the pool's header is huge".into()))?;
    let map =
        crate::shm::spill::map_sealed_file(file, size, "the pool's header").map_err(bad_header)?;
    let bytes = map.bytes();
    let header_len = std::mem::size_of::<Header>();
    let ids_end = header_len + std::mem::size_of::<FileIdentity>();
    let head = bytes
        .get(..ids_end)
        .ok_or_else(|| bad_header("the pool's header is short".into()))?;
    let header: Header = bytemuck::pod_read_unaligned(&head[..header_len]);
    let segment: FileIdentity = bytemuck::pod_read_unaligned(&head[header_len..]);
    if FileIdentity::of(seg)? != segment {
        return Err(bad_header("the segment is not the pool's".into()));
    }
    let (header, layout) = check_header(header, seg)?;
    let init_arg = bytes
        .get(ids_end..ids_end + layout.init_arg_len)
        .ok_or_else(|| bad_header("the initializer's argument is short".into()))?
        .to_vec();
    Ok(Pristine {
        header,
        layout,
        init_arg,
    })
}

/// Checks a copy of the header against the segment.
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

/// Writes the initializer's encoded argument after the last slot. Only before
/// any worker maps the segment.
pub(crate) fn write_init_arg(seg: &Segment, layout: &Layout, bytes: &[u8]) -> Result<()> {
    if bytes.len() != layout.init_arg_len {
        return Err(Error::InvalidConfig {
            what: "initializer argument does not match the layout".into(),
        });
    }
    let dst = seg
        .at(layout.init_arg_offset, bytes.len())
        .ok_or_else(|| Error::InvalidConfig {
            what: "initializer argument outside the segment".into(),
        })?;
    // SAFETY: `at` checked the range lies in the segment; no other process
    // maps it yet, and `bytes` is our own memory, so they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    Ok(())
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

/// One worker's part of the segment.
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
            // SAFETY: `base` points at a slot of `SLOT_CONTROL_BYTES` inside the
            // segment (checked in `Slot::new`); the offset is aligned and in
            // the control block; the segment outlives the Slot by the caller's
            // contract; every process accesses the word only atomically.
            unsafe { <$ty>::from_ptr(self.base.add($offset).cast()) }
        }
    };
}

impl Slot {
    /// The slot of worker `index`.
    ///
    /// The returned value points into `seg`: the caller keeps `seg` alive as
    /// long as the slot (the pool and the worker both hold their segment for
    /// their whole life).
    pub(crate) fn new(seg: &Segment, layout: &Layout, index: usize) -> Option<Self> {
        if index >= layout.workers {
            return None;
        }
        let base = seg.at(layout.slot_offset(index), layout.slot_stride)?;
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

    #[test]
    fn header_round_trips_and_is_validated() {
        let layout = Layout::new(2, 4096, 8192, 0).unwrap();
        let seg = Segment::create(c"corepool-test", layout.total).unwrap();
        assert!(read_header(&seg).is_err(), "no magic yet");
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            header_bytes: std::mem::size_of::<Header>() as u32,
            segment_bytes: layout.total as u64,
            workers: 2,
            task_ring_bytes: 4096,
            result_ring_bytes: 8192,
            ..Default::default()
        };
        write_header(&seg, &header);
        let (_, read) = read_header(&seg).unwrap();
        assert_eq!(read, layout);
        let slot = Slot::new(&seg, &layout, 1).unwrap();
        assert_eq!(slot.result_ring().capacity(), 8192);
        assert!(Slot::new(&seg, &layout, 2).is_none());
    }

    /// Workers start from the sealed copy, and refuse a copy that could be
    /// changed or a segment that is not the one it names.
    #[test]
    #[cfg(not(miri))] // no memfd under Miri
    fn the_sealed_header_is_checked_against_its_segment() {
        let layout = Layout::new(1, 4096, 4096, 3).unwrap();
        let seg = Segment::create(c"corepool-test", layout.total).unwrap();
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            header_bytes: std::mem::size_of::<Header>() as u32,
            segment_bytes: layout.total as u64,
            workers: 1,
            task_ring_bytes: 4096,
            result_ring_bytes: 4096,
            init_arg_len: 3,
            ..Default::default()
        };
        let id = FileIdentity::of(&seg).unwrap();
        let read = read_pristine(write_pristine(&header, id, b"arg").unwrap(), &seg).unwrap();
        assert_eq!((read.layout, &read.init_arg[..]), (layout, &b"arg"[..]));
        // The segment's own header is never read: it may hold anything.
        assert!(read_header(&seg).is_err());
        let other = Segment::create(c"corepool-test", layout.total).unwrap();
        let copy = write_pristine(&header, id, b"arg").unwrap();
        assert!(read_pristine(copy, &other).is_err(), "another segment");
        // The same bytes in a memfd that is not sealed: refused.
        let open = crate::sys::memfd_create(c"corepool-test").unwrap();
        let mut bytes = bytemuck::bytes_of(&header).to_vec();
        bytes.extend_from_slice(bytemuck::bytes_of(&id));
        bytes.extend_from_slice(b"arg");
        crate::sys::pwrite_all(std::os::fd::AsFd::as_fd(&open), &bytes, 0).unwrap();
        assert!(read_pristine(open, &seg).is_err(), "not sealed");
    }
}
