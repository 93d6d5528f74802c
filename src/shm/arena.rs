//! A pool's argument arena: one memfd per pool that the parent copies its
//! spilled task arguments into, block by block, and that every worker maps
//! read-only once and decodes those arguments from in place. It replaces a
//! new sealed memfd per spilled argument (`spill::write_held`), whose
//! copy landed on fresh pages every call, by a copy into pages written
//! before.
//!
//! Why a worker may hold a `&[u8]` over a block while the parent writes
//! other blocks of the same file:
//! - **Nobody else can write it.** The parent creates the memfd, maps it
//!   read-write once (with `MADV_DONTFORK`: no child, `fork()`ed copy or
//!   forked worker inherits that mapping), then seals it with
//!   `F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`
//!   ([`crate::sys::seal_future_writes`]): from then on no `write`, no
//!   `pwrite`, no new writable shared mapping, no `mprotect` to writable, no
//!   hole punched, no size change, from any process and through any
//!   descriptor (a reopen of `/proc/<pid>/fd/N` included); the tests below
//!   prove each on the running kernel. That one mapping of the parent's is
//!   the only way in. A worker checks the seals before it maps the file.
//! - **The parent never rewrites a block a task still owns.** A block is
//!   the task's ([`Block`], held through the task's `spill::Held`) until its
//!   final outcome is in (its result, or its error once no retry is left);
//!   the worker publishes its result only after its decode ended. A task
//!   whose worker may still run when the task leaves it (the worker was
//!   given up, or killed but not yet reaped) keeps its block for ever
//!   ([`Block::keep_for_ever`]): the arena loses that space, never a byte
//!   under a reader.
//! - **A worker never trusts the handle.** Offset and length are read once
//!   out of the ring (a copy) and checked against its own mapping's size
//!   before any byte is looked at; the file is checked like any peer memfd
//!   (`shm::peer`) and for its seals.
//!
//! The allocator is a list of free extents sorted by offset, first fit,
//! merged on free, under a lock of its own (the submitting thread holds no
//! pool lock while it copies). It is short (at most one extent more than the
//! blocks in use, and an arena holds few large blocks), first fit reuses
//! the lowest, warmest pages first, and freeing in any order is O(log n) to
//! find the place plus a `Vec` insert. When no extent fits (the arena is
//! full, or the value larger than it) the caller falls back to a one-off
//! sealed spill: nothing fails and nothing waits for room.
//!
//! Pages are committed only when first written (the file is sparse; a new
//! part is faulted in writable in one `madvise` before the copy, not one
//! fault per page during it) and stay committed while the pool lives.

use crate::error::{Error, Result};
use crate::sync::lock;
use crate::wire::{Encoder, Wire};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Blocks start on a cache line.
const ALIGN: usize = 64;

/// The page size the arena allocates its memory in (x86-64 and the usual
/// aarch64 kernels; a larger page only makes an allocation round up less).
const PAGE: usize = 4096;

/// The type an arena block's handle names, so that no other handle decodes
/// as one (see [`crate::shm::handle::type_tag`]).
pub(crate) struct ArenaBlock;

/// A pool's argument arena, parent side (see the module's documentation).
pub(crate) struct Arena {
    file: OwnedFd,
    /// The one writable mapping there will ever be. Never unmapped but by
    /// the process that made it: in a `fork()`ed copy the range is not
    /// mapped (`MADV_DONTFORK`) and may hold something else by then.
    map: ManuallyDrop<memmap2::MmapRaw>,
    len: usize,
    /// The process that made it.
    creator: u32,
    /// The file's (device, inode), for handles.
    id: (u64, u64),
    extents: Mutex<Extents>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("len", &self.len).finish()
    }
}

/// Where the free space is.
#[derive(Debug)]
struct Extents {
    /// Free `(offset, len)` extents, sorted by offset, never touching.
    free: Vec<(usize, usize)>,
    /// Every byte below this was part of a block once (so its pages are
    /// committed); none above it was: first fit only ever takes the start
    /// of an extent, and the untouched rest is the last extent.
    touched: usize,
    /// Bytes of blocks kept for ever.
    kept: usize,
}

impl Extents {
    /// The offset of a new block of `len` bytes (a multiple of [`ALIGN`]),
    /// first fit.
    fn take(&mut self, len: usize) -> Option<usize> {
        let at = self.free.iter().position(|&(_, free)| free >= len)?;
        let (offset, free) = self.free[at];
        if free == len {
            self.free.remove(at);
        } else {
            self.free[at] = (offset + len, free - len);
        }
        self.touched = self.touched.max(offset + len);
        Some(offset)
    }

    /// Gives `offset..offset + len` back, merged with its neighbours.
    fn give_back(&mut self, offset: usize, len: usize) {
        let at = self.free.partition_point(|&(o, _)| o < offset);
        let joins_before = at > 0 && {
            let (o, l) = self.free[at - 1];
            o + l == offset
        };
        let joins_after = self.free.get(at).is_some_and(|&(o, _)| offset + len == o);
        match (joins_before, joins_after) {
            (true, true) => {
                let (_, after) = self.free.remove(at);
                self.free[at - 1].1 += len + after;
            }
            (true, false) => self.free[at - 1].1 += len,
            (false, true) => {
                let (o, l) = &mut self.free[at];
                *o = offset;
                *l += len;
            }
            (false, false) => self.free.insert(at, (offset, len)),
        }
    }
}

/// A block of the arena a task owns: given back when dropped, unless kept
/// for ever.
#[derive(Debug)]
pub(crate) struct Block {
    arena: Arc<Arena>,
    offset: usize,
    /// Bytes reserved (the value's length rounded up to [`ALIGN`]).
    reserved: usize,
    kept: AtomicBool,
}

impl Block {
    /// Never gives the block back: its task left a worker that may still be
    /// reading it (given up, or killed and not yet reaped).
    pub(crate) fn keep_for_ever(&self) {
        // Relaxed: read by this block's own drop, which whoever drops the
        // last reference runs after this call (the `Arc`'s drop orders it).
        self.kept.store(true, Ordering::Relaxed);
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let mut extents = lock(&self.arena.extents);
        if self.kept.load(Ordering::Relaxed) {
            extents.kept += self.reserved;
        } else {
            extents.give_back(self.offset, self.reserved);
        }
    }
}

/// A block of the arena reserved for its creator to fill in place (see
/// [`Arena::reserve`]): nobody reads it (no handle to it exists yet) and
/// nobody else writes it, so the creator may hold a `&mut [u8]` over it.
/// Dropped, it gives its block back; [`into_prefix`](Self::into_prefix)
/// turns it into a task's [`Block`] and the handle a worker opens.
#[derive(Debug)]
pub(crate) struct Reserved {
    block: Block,
    /// Bytes asked for: the block's first (its size rounded up to
    /// [`ALIGN`] is the block's).
    len: usize,
}

impl Reserved {
    /// Bytes asked for.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The arena it is a block of.
    pub(crate) fn arena(&self) -> &Arc<Arena> {
        &self.block.arena
    }

    /// Where its bytes are mapped here, or `None` in a `fork()`ed copy of
    /// the arena's process (where the arena is not mapped: `MADV_DONTFORK`).
    fn base(&self) -> Option<*mut u8> {
        let arena = &self.block.arena;
        (crate::sys::current_pid() == arena.creator)
            // SAFETY: `offset` lies inside the mapping (`take` carved the
            // block out of `0..arena.len`).
            .then(|| unsafe { arena.map.as_mut_ptr().add(self.block.offset) })
    }

    /// Its bytes (whatever the block held before: a previous argument of
    /// this process, or zeros); empty in a `fork()`ed copy.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self.base() {
            // SAFETY: `len` bytes from `base` lie inside the block (`len` is
            // at most its size) and so inside the mapping, which lives while
            // `self.block` holds the arena; in this process (checked by
            // `base`), where it is mapped. Nothing writes the block but
            // through `&mut self`, which this `&self` excludes, and no
            // worker has its handle yet.
            Some(base) => unsafe { std::slice::from_raw_parts(base, self.len) },
            None => &[],
        }
    }

    /// Its bytes, to fill; empty in a `fork()`ed copy.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self.base() {
            // SAFETY: as in `bytes`; and the block is ours alone: taken
            // from the free list under its lock, given back only when
            // `self.block` drops; no handle to it exists (so no worker reads
            // it: the last task that owned it had its outcome in, which its
            // worker published after its decode ended); no other slice over
            // it exists (this borrows `self` mutably).
            Some(base) => unsafe { std::slice::from_raw_parts_mut(base, self.len) },
            None => &mut [],
        }
    }

    /// The task's block and the handle of its first `len` bytes (at most
    /// [`len`](Self::len): more is cut to that, so that a handle never
    /// names bytes of another block). From here on the block is the task's
    /// and never written again while it is held.
    pub(crate) fn into_prefix(self, len: usize) -> (Vec<u8>, Block) {
        let len = len.min(self.len);
        let handle = self.block.arena.handle(self.block.offset, len);
        (handle, self.block)
    }
}

impl Arena {
    /// A new arena of `len` bytes (sparse: nothing committed yet), mapped
    /// read-write here and sealed against any other writer.
    ///
    /// # Errors
    ///
    /// [`Error::SharedMemory`] when the file, its mapping or its seals
    /// cannot be had.
    pub(crate) fn create(len: usize) -> Result<Arc<Self>> {
        let shm = |op| move |e| Error::shm(op, e);
        let file = crate::sys::memfd_create(c"corepool-arena").map_err(shm("memfd_create"))?;
        let file = std::fs::File::from(file);
        crate::sys::set_file_len(file.as_fd(), len as u64).map_err(shm("sizing the arena"))?;
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(shm("mapping the arena"))?;
        // No child ever inherits the writable mapping: a `fork()`ed copy of
        // this process (the user's, or a worker forked from it) could
        // otherwise write blocks that workers are reading.
        map.advise(memmap2::Advice::DontFork)
            .map_err(shm("madvise(MADV_DONTFORK) on the arena"))?;
        let file = OwnedFd::from(file);
        crate::sys::seal_future_writes(file.as_fd()).map_err(shm("sealing the arena"))?;
        let id = crate::sys::fstat(file.as_fd()).map_err(shm("fstat"))?;
        Ok(Arc::new(Self {
            file,
            map: ManuallyDrop::new(map),
            len,
            creator: crate::sys::current_pid(),
            id: (id.dev, id.ino),
            extents: Mutex::new(Extents {
                free: vec![(0, len)],
                touched: 0,
                kept: 0,
            }),
        }))
    }

    /// A free block of at least `len` bytes, ours alone to fill in place
    /// ([`Reserved::bytes_mut`]) before it is turned into a task's block
    /// ([`Reserved::into_prefix`]); `None` when no block of that size is
    /// free (the caller spills another way). Only in the process that made
    /// the arena. Dropped unused, the block goes back to the arena.
    pub(crate) fn reserve(self: &Arc<Self>, len: usize) -> Option<Reserved> {
        if crate::sys::current_pid() != self.creator {
            return None;
        }
        let reserved = len.max(1).checked_next_multiple_of(ALIGN)?;
        let (offset, untouched_from) = {
            let mut extents = lock(&self.extents);
            let before = extents.touched;
            (extents.take(reserved)?, before)
        };
        let block = Block {
            arena: self.clone(),
            offset,
            reserved,
            kept: AtomicBool::new(false),
        };
        let end = offset + reserved;
        if end > untouched_from {
            // Pages never written: allocate them now, through the file, so
            // that a machine (or memory cgroup) without the memory is an
            // answer here, not a SIGBUS on a write into the mapping later
            // (the file is sparse, and `vm.overcommit_memory = 2` or a full
            // cgroup refuses a page at its first write). The block goes
            // back and the caller spills another way, which fails with an
            // error if the memory truly is not there.
            let from = offset.max(untouched_from) / PAGE * PAGE;
            let to = end.next_multiple_of(PAGE).min(self.len);
            if crate::sys::fallocate_range(self.file.as_fd(), from as u64, (to - from) as u64)
                .is_err()
            {
                // Later reservations of this range allocate it again
                // (`fallocate` of allocated pages changes nothing).
                let mut extents = lock(&self.extents);
                extents.touched = extents.touched.min(from);
                return None;
            }
            // Then map them in, writable, in one call rather than one
            // fault per page while they are filled. Advice only: should it
            // fail, the writes fault them in themselves (the pages exist).
            let base = self.map.as_mut_ptr() as usize;
            let _ = crate::sys::populate_write(base + from, to - from);
        }
        Some(Reserved { block, len })
    }

    /// Copies `head` then `rest` into a free block and returns its handle
    /// and the block; `None` when no block of that size is free (the caller
    /// spills another way). Only in the process that made the arena.
    pub(crate) fn write(self: &Arc<Self>, head: &[u8], rest: &[u8]) -> Option<(Vec<u8>, Block)> {
        let len = head.len().checked_add(rest.len())?;
        let mut reserved = self.reserve(len)?;
        let dst = reserved.bytes_mut();
        // `reserve` checked that this is the arena's process: `dst` is the
        // `len` bytes asked for (the check keeps the split and the copies
        // from panicking whatever happens).
        if dst.len() != len {
            return None;
        }
        let (dst_head, dst_rest) = dst.split_at_mut(head.len());
        dst_head.copy_from_slice(head);
        dst_rest.copy_from_slice(rest);
        Some(reserved.into_prefix(len))
    }

    /// The handle of the `len` bytes at `offset` (a block's first).
    fn handle(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut out = Encoder::new();
        (
            self.creator as i32,
            self.file.as_raw_fd(),
            self.id.0,
            self.id.1,
            len as u64,
            crate::shm::handle::type_tag::<ArenaBlock>(),
        )
            .encode(&mut out);
        (offset as u64).encode(&mut out);
        out.take_bytes()
    }

    /// Bytes in blocks kept for ever, and bytes free (for tests).
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let extents = lock(&self.extents);
        (extents.kept, extents.free.iter().map(|&(_, l)| l).sum())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if crate::sys::current_pid() == self.creator {
            // SAFETY: dropped once, here; no block (each holds an `Arc`)
            // and so no pointer into the mapping outlives `self`.
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
    }
}

/// A worker's read-only mapping of its pool's arena, made once.
struct View {
    /// Whose arena: (creator, descriptor, device, inode).
    key: (i32, i32, u64, u64),
    map: memmap2::MmapRaw,
    len: usize,
}

/// This process's view of an arena (a worker serves one pool: one entry).
static VIEW: Mutex<Option<Arc<View>>> = Mutex::new(None);

/// A block of an arena, mapped read-only here, to decode in place.
pub(crate) struct BlockView {
    view: Arc<View>,
    offset: usize,
    len: usize,
}

impl BlockView {
    /// The block's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `offset..offset + len` lies inside the mapping (checked
        // by `open_block`), which lives while `self.view` does. No process
        // can write the file but its creator, through its one mapping
        // (seals checked by `open_view`), and the creator leaves a block
        // alone while the task that owns it is out (see the module's
        // documentation): nothing changes under this `&[u8]`. The slice
        // covers this block only, never the blocks being rewritten.
        unsafe { std::slice::from_raw_parts(self.view.map.as_ptr().add(self.offset), self.len) }
    }
}

fn bad(reason: impl Into<String>) -> Error {
    crate::shm::decode_failed(crate::shm::spill::ARGUMENT, reason)
}

/// The block that the rest of an arena handle (`input`, after the fields
/// every sealed handle starts with: `owner`, `fd`, `dev`, `ino`, `len`)
/// names, mapped here (the arena mapped on first use).
///
/// # Errors
///
/// [`Error::Decode`] for a handle that does not validate: a file that is
/// not a sealed memfd, or a block outside it.
pub(crate) fn open_block(
    (owner, fd, dev, ino): (i32, i32, u64, u64),
    len: u64,
    input: &mut &[u8],
) -> Result<BlockView> {
    let offset = u64::decode(input)?;
    let view = view_of((owner, fd, dev, ino))?;
    // Both fields are copies (decoded out of the ring once): checked here,
    // used as checked.
    let end = offset
        .checked_add(len)
        .ok_or_else(|| bad("the block's end overflows"))?;
    if end > view.len as u64 {
        return Err(bad(format!(
            "the block {offset}..{end} lies outside the arena ({} bytes)",
            view.len
        )));
    }
    Ok(BlockView {
        view,
        offset: offset as usize,
        len: len as usize,
    })
}

/// This process's mapping of the arena `key` names, made now if it is not
/// the one mapped already.
fn view_of(key: (i32, i32, u64, u64)) -> Result<Arc<View>> {
    let mut cached = lock(&VIEW);
    if let Some(view) = cached.as_ref().filter(|v| v.key == key) {
        return Ok(view.clone());
    }
    let view = Arc::new(open_view(key)?);
    *cached = Some(view.clone());
    Ok(view)
}

/// Opens and maps the arena `key` names, read-only, after checking that it
/// is a memfd nobody but its creator can write.
fn open_view(key: (i32, i32, u64, u64)) -> Result<View> {
    let (owner, fd, dev, ino) = key;
    // Only the parent's arena (or our own, in the creator): its bytes stay
    // put under our decode because its creator, the parent, never rewrites
    // a block a task of ours still owns. Another process's sealed memfd (a
    // handle forged to name one) has no such promise: its creator may
    // write it while we read.
    let owner_pid = u32::try_from(owner).ok();
    if owner_pid != Some(std::os::unix::process::parent_id())
        && owner_pid != Some(std::process::id())
    {
        return Err(bad(format!(
            "the arena belongs to process {owner}, not to this worker's parent"
        )));
    }
    let (file, _) = super::peer::open_memfd(
        owner,
        fd,
        (dev, ino),
        super::peer::Access::ReadOnly,
        "a pool's argument arena",
    )
    .map_err(bad)?;
    if !crate::sys::is_future_write_sealed(file.as_fd()) {
        return Err(bad(format!(
            "/proc/{owner}/fd/{fd} is not sealed against writers"
        )));
    }
    // Its size now that it is known sealed (it cannot change any more).
    let id = crate::sys::fstat(file.as_fd()).map_err(|e| bad(e.to_string()))?;
    let len = usize::try_from(id.size).map_err(|_| bad("the arena's size overflows"))?;
    if len == 0 {
        return Err(bad("the arena is empty"));
    }
    // Not populated: most of the arena may never be written, and a read
    // fault on a hole would commit a page. Each block's pages are mapped as
    // they are first read (the kernel maps up to 16 present pages a fault)
    // and stay mapped for the next task that uses them.
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw_read_only(&std::fs::File::from(file))
        .map_err(|e| bad(format!("mapping /proc/{owner}/fd/{fd}: {e}")))?;
    Ok(View { key, map, len })
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    fn handle_parts(handle: &[u8]) -> ((i32, i32, u64, u64), u64, Vec<u8>) {
        let mut input = handle;
        let (owner, fd, dev, ino, len, tag) =
            <(i32, i32, u64, u64, u64, u64)>::decode(&mut input).unwrap();
        assert_eq!(tag, crate::shm::handle::type_tag::<ArenaBlock>());
        ((owner, fd, dev, ino), len, input.to_vec())
    }

    fn open(handle: &[u8]) -> Result<BlockView> {
        let (key, len, rest) = handle_parts(handle);
        open_block(key, len, &mut &rest[..])
    }

    #[test]
    fn a_block_round_trips_and_its_space_comes_back() {
        let arena = Arena::create(256 * KIB).unwrap();
        let bytes: Vec<u8> = (0..100 * KIB).map(|i| (i % 251) as u8).collect();
        let (handle, block) = arena.write(&bytes[..10], &bytes[10..]).unwrap();
        assert_eq!(open(&handle).unwrap().bytes(), &bytes[..]);
        assert_eq!(arena.usage(), (0, 256 * KIB - 100 * KIB));
        drop(block);
        assert_eq!(arena.usage(), (0, 256 * KIB), "given back on drop");
        // Reused from the start: the same (warm) pages.
        let (again, _block) = arena.write(b"second", &[]).unwrap();
        assert_eq!(handle_parts(&again).2, handle_parts(&handle).2);
    }

    #[test]
    fn a_reserved_block_is_filled_in_place_and_its_prefix_opens() {
        let arena = Arena::create(256 * KIB).unwrap();
        let mut reserved = arena.reserve(100 * KIB + 16).unwrap();
        assert_eq!(reserved.len(), 100 * KIB + 16);
        let bytes: Vec<u8> = (0..100 * KIB + 16).map(|i| (i % 251) as u8).collect();
        reserved.bytes_mut().copy_from_slice(&bytes);
        assert_eq!(reserved.bytes(), &bytes[..]);
        // The handle names the first 100 KiB only (a trailer follows them).
        let (handle, block) = reserved.into_prefix(100 * KIB);
        assert_eq!(open(&handle).unwrap().bytes(), &bytes[..100 * KIB]);
        assert_eq!(arena.usage(), (0, 256 * KIB - 100 * KIB - 64));
        drop(block);
        assert_eq!(arena.usage(), (0, 256 * KIB), "given back with the block");
    }

    #[test]
    fn a_prefix_longer_than_the_reservation_is_cut_to_it() {
        let arena = Arena::create(64 * KIB).unwrap();
        let reserved = arena.reserve(100).unwrap();
        let (handle, _block) = reserved.into_prefix(64 * KIB);
        assert_eq!(handle_parts(&handle).1, 100, "never past the block");
    }

    #[test]
    fn a_dropped_reservation_gives_its_block_back() {
        let arena = Arena::create(64 * KIB).unwrap();
        let reserved = arena.reserve(64 * KIB).unwrap();
        assert!(arena.reserve(1).is_none(), "all of it is reserved");
        assert!(arena.write(b"x", &[]).is_none());
        drop(reserved);
        assert_eq!(arena.usage(), (0, 64 * KIB));
        assert!(arena.reserve(64 * KIB).is_some());
    }

    #[test]
    fn a_reserved_block_kept_for_ever_is_never_given_back() {
        let arena = Arena::create(64 * KIB).unwrap();
        let mut reserved = arena.reserve(32 * KIB).unwrap();
        reserved.bytes_mut().fill(3);
        let (handle, block) = reserved.into_prefix(32 * KIB);
        block.keep_for_ever();
        drop(block);
        assert_eq!(arena.usage(), (32 * KIB, 32 * KIB));
        // The next reservation goes elsewhere; the kept bytes stay.
        let mut other = arena.reserve(32 * KIB).unwrap();
        other.bytes_mut().fill(4);
        assert!(open(&handle).unwrap().bytes().iter().all(|&b| b == 3));
        assert!(arena.reserve(1).is_none(), "the kept half is lost");
    }

    #[test]
    fn a_forked_copy_reserves_nothing_and_sees_no_bytes() {
        let arena = Arena::create(64 * KIB).unwrap();
        let mut reserved = arena.reserve(8 * KIB).unwrap();
        // SAFETY: the child makes no allocation or lock beyond what
        // `reserve`'s refusal and `bytes_mut` need (a pid check, and the
        // pid cache reset by the fork handler `current_pid` installed), then
        // `_exit`s.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        match child {
            0 => {
                let refused = arena.reserve(8).is_none();
                let empty = reserved.bytes_mut().is_empty();
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(i32::from(!(refused && empty))) };
            }
            pid => {
                let status = crate::sys::wait_exit(pid).unwrap();
                assert_eq!(status.code(), Some(0), "the copy reserved or wrote");
            }
        }
        assert_eq!(reserved.bytes_mut().len(), 8 * KIB);
    }

    #[test]
    fn blocks_freed_in_any_order_merge_back_into_one_extent() {
        let arena = Arena::create(64 * KIB).unwrap();
        let blocks: Vec<_> = (0..8)
            .map(|i| arena.write(&[i as u8; 8 * KIB], &[]).unwrap().1)
            .collect();
        assert!(arena.write(b"x", &[]).is_none(), "full");
        let mut blocks: Vec<_> = blocks.into_iter().map(Some).collect();
        for i in [3, 1, 2, 7, 0, 5, 6, 4] {
            blocks[i] = None;
        }
        assert_eq!(lock(&arena.extents).free, [(0, 64 * KIB)]);
    }

    #[test]
    fn a_kept_block_is_never_given_back() {
        let arena = Arena::create(64 * KIB).unwrap();
        let (handle, block) = arena.write(&[7; 32 * KIB], &[]).unwrap();
        block.keep_for_ever();
        drop(block);
        assert_eq!(arena.usage(), (32 * KIB, 32 * KIB));
        // The next block goes elsewhere, and the kept bytes stay as they were.
        let (other, _b) = arena.write(&[9; 32 * KIB], &[]).unwrap();
        assert_ne!(handle_parts(&other).2, handle_parts(&handle).2);
        assert!(open(&handle).unwrap().bytes().iter().all(|&b| b == 7));
        assert!(arena.write(b"x", &[]).is_none(), "the kept half is lost");
    }

    #[test]
    fn a_value_larger_than_the_free_space_is_refused() {
        let arena = Arena::create(64 * KIB).unwrap();
        assert!(arena.write(&[0; 64 * KIB + 1], &[]).is_none());
        let (_h, _b) = arena.write(&[0; 40 * KIB], &[]).unwrap();
        assert!(arena.write(&[0; 30 * KIB], &[]).is_none());
        assert!(arena.write(&[0; 20 * KIB], &[]).is_some());
    }

    #[test]
    fn a_forged_offset_or_length_is_refused() {
        let arena = Arena::create(64 * KIB).unwrap();
        let (handle, _block) = arena.write(b"in bounds", &[]).unwrap();
        let (key, _, _) = handle_parts(&handle);
        let forge = |offset: u64| {
            let mut out = Encoder::new();
            offset.encode(&mut out);
            out.take_bytes()
        };
        let len = 64 * KIB as u64;
        assert!(open_block(key, len, &mut &forge(0)[..]).is_ok(), "whole");
        assert!(open_block(key, len, &mut &forge(1)[..]).is_err());
        assert!(open_block(key, 1, &mut &forge(len)[..]).is_err());
        assert!(open_block(key, u64::MAX, &mut &forge(2)[..]).is_err());
        assert!(open_block(key, 2, &mut &forge(u64::MAX)[..]).is_err());
        assert!(open_block(key, 0, &mut &[][..]).is_err(), "no offset");
    }

    #[test]
    fn an_arena_of_another_process_than_the_parent_is_refused() {
        let arena = Arena::create(64 * KIB).unwrap();
        let (handle, _block) = arena.write(b"x", &[]).unwrap();
        let ((_, fd, dev, ino), _, _) = handle_parts(&handle);
        // Named as pid 1's: neither our parent (the test harness's) nor us.
        let Err(err) = open_view((1, fd, dev, ino)) else {
            panic!("opened an arena named as pid 1's");
        };
        assert!(
            err.to_string().contains("not to this worker's parent"),
            "{err}"
        );
    }

    #[test]
    fn an_unsealed_memfd_is_not_taken_for_an_arena() {
        use std::os::fd::AsRawFd;
        let file = crate::sys::memfd_create(c"corepool-arena").unwrap();
        std::fs::File::from(file.try_clone().unwrap())
            .set_len(4096)
            .unwrap();
        let id = crate::sys::fstat(file.as_fd()).unwrap();
        let key = (std::process::id() as i32, file.as_raw_fd(), id.dev, id.ino);
        assert!(open_view(key).is_err());
    }

    /// Every way to change a byte of a sealed arena, but through its
    /// creator's mapping, is refused by this kernel.
    #[test]
    fn no_one_but_the_creator_can_change_a_byte() {
        use std::os::unix::fs::FileExt;
        let arena = Arena::create(64 * KIB).unwrap();
        let (handle, _block) = arena.write(&[5; 8 * KIB], &[]).unwrap();
        let path = format!("/proc/self/fd/{}", arena.file.as_raw_fd());
        // A reopen for writing opens, but cannot write, punch or resize.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(file.write_at(b"x", 0).is_err(), "pwrite");
        assert!(file.set_len(0).is_err(), "shrink");
        assert!(file.set_len(128 * KIB as u64).is_err(), "grow");
        assert!(
            rustix::fs::fallocate(
                &file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                4096,
            )
            .is_err(),
            "punching a hole"
        );
        // SAFETY: the mapping must fail (the point); were it made, nothing
        // would touch it before it drops.
        assert!(unsafe { memmap2::MmapMut::map_mut(&file) }.is_err(), "map");
        let read_only = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only view of a file nobody here writes meanwhile
        // (the creator's block was written above); never read.
        let map = unsafe { memmap2::Mmap::map(&read_only) }.unwrap();
        assert!(map.make_mut().is_err(), "mprotect to writable");
        // SAFETY: as above.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        assert!(map.make_mut().is_err(), "mprotect, opened read-write");
        // SAFETY: as above.
        let map = unsafe { memmap2::Mmap::map(&read_only) }.unwrap();
        // SAFETY: MADV_REMOVE on our own read-only mapping, which must be
        // refused; were it not, only the arena's bytes would change.
        let removed = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::Remove) };
        assert!(removed.is_err(), "MADV_REMOVE");
        // A private writable mapping copies on write: the file is untouched.
        // SAFETY: a private copy, ours alone.
        let mut private = unsafe { memmap2::MmapOptions::new().map_copy(&file) }.unwrap();
        private[0] = 6;
        assert!(open(&handle).unwrap().bytes().iter().all(|&b| b == 5));
        // Another process, through the same /proc path.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf x 1<> /proc/{}/fd/{}",
                std::process::id(),
                arena.file.as_raw_fd()
            ))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "another process wrote to the arena");
        assert!(open(&handle).unwrap().bytes().iter().all(|&b| b == 5));
        // And the creator's own mapping still writes.
        let (second, _b2) = arena.write(&[8; 4 * KIB], &[]).unwrap();
        assert!(open(&second).unwrap().bytes().iter().all(|&b| b == 8));
    }

    #[test]
    fn a_forked_copy_inherits_no_writable_mapping() {
        let arena = Arena::create(64 * KIB).unwrap();
        let base = arena.map.as_mut_ptr();
        // SAFETY: the child makes two system calls and `_exit`s (async-
        // signal-safe only: the test harness has other threads).
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        match child {
            0 => {
                // SAFETY: advice on a range that must not be mapped here
                // (ENOMEM); were it mapped, MADV_NORMAL changes nothing.
                let mapped =
                    unsafe { libc::madvise(base.cast(), 64 * KIB, libc::MADV_NORMAL) == 0 };
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(i32::from(mapped)) };
            }
            pid => {
                let status = crate::sys::wait_exit(pid).unwrap();
                assert_eq!(status.code(), Some(0), "the child inherited the mapping");
            }
        }
        // Here, the mapping is still there and writes.
        assert!(arena.write(b"still mine", &[]).is_some());
    }
}
