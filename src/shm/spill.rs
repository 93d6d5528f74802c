//! Spills: a value too large for the message it travels in (a ring record, a
//! `Process` result) goes into a one-off shared segment of its own, and the
//! message carries the segment's handle instead. (A queue's large values
//! are not spills: they go into the queue's own value file,
//! [`crate::shm::values`], so that they outlive their producer; only one
//! whose range there would end past the process's file-size limit,
//! `ulimit -f`, is spilled, [`write_parts`].)
//!
//! A spill is a [`SharedSegment`] holding the encoded bytes, so it lives by
//! the same rule as every shared object (see [`crate::shm::handle`]): its
//! handle counts as in flight until a receiver opens it, and its sender
//! keeps it until then even after dropping its own copy. It is a memfd,
//! never a name in `/dev/shm`: whatever dies, the kernel reclaims it with the
//! last descriptor and mapping. A receiver validates the handle like any
//! other (memfd, same file, sealed size, length within the bytes present),
//! copies the bytes out once and forgets the mapping (spills are not cached).
//! Both copies go through the file (`pwrite` in, `pread` out), not the
//! mapping: the kernel copies page by page with no page fault (and no page
//! clear) per 4 KiB, which was most of a spill's cost.
//!
//! A pool task's argument, which its sender holds until the outcome, is a
//! spill of a second kind ([`write_held`]): filled through the file, never
//! mapped writable, then sealed against any change, so that the worker maps
//! it read-only and decodes it in place ([`open_sealed`]), one copy and one
//! set of fresh pages fewer. Nothing of it is counted in flight (no trailer
//! to write), and its handle's type tag differs, so neither kind ever opens
//! as the other. When its pool has an argument arena with room
//! ([`crate::shm::arena`]), such an argument goes into a block of it
//! instead, copied into pages written before; the handle then names the
//! arena and the block, and [`open_sealed`] opens either kind.

use crate::error::Result;
use crate::shm::handle::{type_tag, SharedSegment};
use crate::wire::{Carried, Encoder, Wire};
use std::sync::Arc;

/// Bytes of a spill's handle on the wire.
pub(crate) const HANDLE_BYTES: usize = 40;

/// The type a spill's handle names, so that no other handle decodes as one.
struct Spilled;

/// What a user knows a spill as, in an error message about it ("could not
/// decode spilled result"): Process and pool results are spilled (a
/// queue names its own, see `crate::queue`).
pub(crate) const SPILLED: &str = "spilled result";

/// What a user knows a held spill or an arena block as, in an error
/// message about it.
pub(crate) const ARGUMENT: &str = "task argument";

/// A new spill holding `bytes`, and its handle with what the handle carries
/// (the in-flight count to take back if the handle is never sent, and the
/// segment itself): the sender marks it [`Carried::sent`] once the handle
/// went out, then may drop it.
///
/// # Errors
///
/// [`crate::Error::SharedMemory`] when the memory cannot be had.
pub(crate) fn write(bytes: &[u8]) -> Result<(Vec<u8>, Carried)> {
    write_parts(bytes, &[])
}

/// [`write`] of `head` then `rest` (a value's encoding, see
/// [`crate::Wire::encode_split`]): a queue's value past its file-size
/// limit (`crate::queue`), copied here straight from the value's memory.
///
/// # Errors
///
/// As [`write`].
pub(crate) fn write_parts(head: &[u8], rest: &[u8]) -> Result<(Vec<u8>, Carried)> {
    let len = head.len() + rest.len();
    let seg = SharedSegment::create(c"corepool-spill", len.max(1))?;
    fill(&seg, head, 0)?;
    fill(&seg, rest, head.len())?;
    let mut out = Encoder::new();
    seg.encode(type_tag::<Spilled>(), len as u64, &mut out);
    out.check()?;
    let carried = out.take_carried();
    Ok((out.take_bytes(), carried))
}

/// The type a sealed spill's handle names (see [`write_held`]).
struct SealedSpill;

/// A spill held by its sender for as long as the message lives (a pool task
/// until its outcome), either
/// - a memfd filled with `pwrite`, never mapped, then sealed against any
///   change ([`crate::sys::seal_contents`]), so that no process (its
///   receiver, any other) can change a byte of it and its receiver decodes
///   it in place ([`open_sealed`]); its descriptor closes when the last
///   copy drops; or
/// - a block of its pool's argument arena ([`crate::shm::arena::Block`]),
///   given back to the arena when the last copy drops (unless
///   [`kept for ever`](Held::keep_for_ever)).
///
/// Nothing of it is ever counted in flight (the holder decides when it
/// goes).
#[derive(Debug)]
pub(crate) struct Held {
    place: Place,
}

/// Where a held spill's bytes are.
#[derive(Debug)]
enum Place {
    /// A one-off sealed memfd. Never read here (the receiver opens it
    /// through `/proc`): holding it is the point.
    File(#[allow(dead_code)] std::os::fd::OwnedFd),
    /// A block of an arena.
    Block(crate::shm::arena::Block),
}

impl Held {
    /// Its receiver may still be reading it and nobody will say when it
    /// stops (its worker was given up, or killed and not yet reaped): an
    /// arena block is then never given back (the arena loses that space).
    /// A one-off memfd needs nothing: no process can change it.
    pub(crate) fn keep_for_ever(&self) {
        if let Place::Block(block) = &self.place {
            block.keep_for_ever();
        }
    }

    /// Whether it is a block of an arena (for tests).
    #[cfg(test)]
    pub(crate) fn in_arena(&self) -> bool {
        matches!(self.place, Place::Block(_))
    }
}

/// How many times a spill's sealing is asked for while the kernel answers
/// EBUSY (each try waits up to about 150 ms in the kernel).
const SEAL_TRIES: u32 = 4;

/// A new sealed spill holding `head` then `rest` (see [`Held`]; two parts,
/// so that a large value is copied here straight from its own memory, see
/// [`crate::Wire::encode_split`]), and its handle: a block of `arena` when
/// it has room (a copy into pages written before, where a new memfd's are
/// fresh), else a one-off sealed memfd, so that a full arena fails nothing
/// and waits for nothing.
///
/// # Errors
///
/// [`crate::Error::SharedMemory`] when the memory cannot be had.
pub(crate) fn write_held(
    arena: Option<&Arc<crate::shm::arena::Arena>>,
    head: &[u8],
    rest: &[u8],
) -> Result<(Vec<u8>, Arc<Held>)> {
    use std::os::fd::{AsFd, AsRawFd};
    if let Some((handle, block)) = arena.and_then(|a| a.write(head, rest)) {
        let place = Place::Block(block);
        return Ok((handle, Arc::new(Held { place })));
    }
    crate::shm::handle::sweep();
    let file = write_sealed_file(c"corepool-spill", head, rest)?;
    let len = head.len() + rest.len();
    let id = crate::sys::fstat(file.as_fd()).map_err(|e| crate::Error::shm("fstat", e))?;
    let mut out = Encoder::new();
    let me = std::process::id() as i32;
    (
        me,
        file.as_raw_fd(),
        id.dev,
        id.ino,
        len as u64,
        type_tag::<SealedSpill>(),
    )
        .encode(&mut out);
    let place = Place::File(file);
    Ok((out.take_bytes(), Arc::new(Held { place })))
}

/// A new memfd named `name` holding `head` then `rest`, sealed against any
/// change (writing, shrinking, growing, further seals): what [`write_held`]
/// holds, and what a pool's workers start from (`pool::layout`). Its
/// descriptor is close-on-exec and above the standard three.
///
/// # Errors
///
/// [`crate::Error::SharedMemory`] when the memory cannot be had.
pub(crate) fn write_sealed_file(
    name: &std::ffi::CStr,
    head: &[u8],
    rest: &[u8],
) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let shm = |op| move |e| crate::Error::shm(op, e);
    let file = crate::sys::memfd_create(name).map_err(shm("memfd_create"))?;
    // Written through the file, never a mapping: sealing against writes
    // needs no writable mapping to exist, and the kernel allocates each page
    // as it copies into it (no fault, no clear). A full memory cgroup is an
    // error here, not a signal later.
    crate::sys::pwrite_all(file.as_fd(), head, 0).map_err(shm("filling a spill"))?;
    crate::sys::pwrite_all(file.as_fd(), rest, head.len() as u64)
        .map_err(shm("filling a spill"))?;
    // EBUSY: the kernel saw a page of the file still referenced beyond the
    // page cache (it waits about 150 ms for such references to go, then
    // gives up); seen once under heavy load. Nothing maps the file, so the
    // reference is transient: ask again a few times before failing.
    let mut tries = 0;
    while let Err(e) = crate::sys::seal_contents(file.as_fd()) {
        tries += 1;
        if e.raw_os_error() != Some(crate::sys::EBUSY) || tries == SEAL_TRIES {
            return Err(shm("sealing a spill")(e));
        }
    }
    Ok(file)
}

/// The held spill of the first `len` bytes of an arena block its holder
/// filled in place ([`crate::shm::arena::Reserved`]; `len` is cut to the
/// bytes reserved), and its handle: as [`write_held`] gives for the same
/// bytes, with no copy.
pub(crate) fn hold_reserved(
    reserved: crate::shm::arena::Reserved,
    len: usize,
) -> (Vec<u8>, Arc<Held>) {
    let (handle, block) = reserved.into_prefix(len);
    let place = Place::Block(block);
    (handle, Arc::new(Held { place }))
}

/// Reads the spill whose handle starts `handle` into `out` (replacing what
/// it held), after validating the handle: a memfd, the same file, sealed
/// size, and a length within the bytes present (so `out` never grows past
/// them). Ends the handle's transit.
///
/// # Errors
///
/// [`crate::Error::Decode`] for a handle that does not validate or whose
/// sender no longer holds the spill.
pub(crate) fn read_into(handle: &[u8], out: &mut Vec<u8>) -> Result<()> {
    read_spill_into(handle, out).map_err(|e| crate::shm::named(SPILLED, e))
}

/// [`read_into`], its errors naming internal types.
fn read_spill_into(handle: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let mut input = handle;
    let (seg, len) =
        SharedSegment::decode_one_off::<Spilled>(&mut input, type_tag::<Spilled>(), Some)?;
    // `decode_one_off` checked that the segment is `len` bytes long; a
    // hostile sender's segment may still be sparse (sized, sealed, never
    // written): allocate only for memory that is really there.
    let len = len as usize;
    if !backed_by_memory(&seg, len) {
        return Err(crate::wire::decode_error::<Spilled>(
            "the spill is sparse: its size is not backed by memory",
        ));
    }
    out.clear();
    out.reserve_exact(len);
    // The bytes are copied once and then validated by whoever decodes them
    // (a hostile sender may change them meanwhile: that can only make them
    // wrong, never out of bounds).
    copy_out(&seg, len, out)?;
    Ok(())
}

/// Ends the transit of the spill whose handle starts `handle` without
/// reading it: its sender may let it go. Errors are ignored (a spill already
/// gone needs nothing).
pub(crate) fn discard(handle: &[u8]) {
    let mut input = handle;
    let _ = SharedSegment::decode_one_off::<Spilled>(&mut input, type_tag::<Spilled>(), Some);
}

/// Copies `bytes` into the new spill `seg` at `offset` with `pwrite`: the
/// kernel copies into the memfd's pages directly, where writing through the
/// mapping would take a page fault (and a page clear) per 4 KiB.
#[cfg(not(miri))]
fn fill(seg: &SharedSegment, bytes: &[u8], offset: usize) -> Result<()> {
    crate::sys::pwrite_all(seg.segment().fd(), bytes, offset as u64)
        .map_err(|e| crate::Error::shm("filling a spill", e))
}

/// Under Miri (no files): through the mapping.
#[cfg(miri)]
fn fill(seg: &SharedSegment, bytes: &[u8], offset: usize) -> Result<()> {
    let dst = seg
        .segment()
        .at(offset, bytes.len())
        .ok_or_else(|| crate::Error::SharedMemory {
            op: "sizing a spill",
            source: std::io::Error::other("the new segment is smaller than its bytes"),
        })?;
    // SAFETY: in bounds (checked by `at`); nobody else maps the segment yet.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    Ok(())
}

/// Appends the first `len` bytes of `seg` to `out` (which has room for them)
/// with `pread`: no page faults on the spill's side, one copy.
#[cfg(not(miri))]
fn copy_out(seg: &SharedSegment, len: usize, out: &mut Vec<u8>) -> Result<()> {
    crate::sys::pread_exact_into(seg.segment().fd(), out, len, 0)
        .map_err(|_| crate::wire::decode_error::<Spilled>("shorter than its handle says"))
}

/// Under Miri (no files): through the mapping.
#[cfg(miri)]
fn copy_out(seg: &SharedSegment, len: usize, out: &mut Vec<u8>) -> Result<()> {
    let src = seg
        .segment()
        .at(0, len)
        .ok_or_else(|| crate::wire::decode_error::<Spilled>("shorter than its handle says"))?;
    if out.capacity() - out.len() < len {
        return Err(crate::wire::decode_error::<Spilled>(
            "no room for the spill",
        ));
    }
    // SAFETY: `src` has `len` readable bytes (checked by `at`), `out` has
    // room for `len` more (checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(out.len()), len);
        out.set_len(out.len() + len);
    }
    Ok(())
}

/// Whether at least `len` bytes of `seg` are backed by memory (every spill
/// corepool writes is reserved in full when created).
#[cfg(not(miri))]
fn backed_by_memory(seg: &SharedSegment, len: usize) -> bool {
    crate::sys::allocated_bytes(seg.segment().fd()).is_ok_and(|bytes| bytes >= len as u64)
}

/// Under Miri (no files): heap memory is always backed.
#[cfg(miri)]
fn backed_by_memory(_: &SharedSegment, _: usize) -> bool {
    true
}

/// A sealed spill mapped read-only here, so that its bytes are decoded
/// where they are (see [`open_sealed`]); unmapped on drop (an arena block's
/// mapping, the whole arena's, stays for the next task).
pub(crate) struct InPlace {
    map: Option<memmap2::Mmap>,
    block: Option<crate::shm::arena::BlockView>,
}

impl InPlace {
    /// The spilled bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.block {
            Some(block) => block.bytes(),
            None => self.map.as_deref().unwrap_or(&[]),
        }
    }
}

/// Opens the sealed spill ([`write_held`]) whose handle starts `handle` for
/// decoding in place: no copy into a buffer first, and its pages mapped in
/// the same call. Validates like [`read_into`] and more, since its bytes
/// are then read where they are: a memfd, the same file, sealed against
/// writing, shrinking and growing (so no process can change or remove a
/// byte while it is decoded), at least as long as the handle says and
/// backed by memory (so that mapping it allocates nothing). A handle of an
/// arena block ([`write_held`]) opens the block instead, the arena
/// mapped on first use and checked as [`crate::shm::arena`] says.
///
/// # Errors
///
/// [`crate::Error::Decode`] for a handle that does not validate or whose
/// sender no longer holds the spill.
pub(crate) fn open_sealed(handle: &[u8]) -> Result<InPlace> {
    fn bad(reason: impl Into<String>) -> crate::Error {
        crate::shm::decode_failed(ARGUMENT, reason)
    }
    let mut input = handle;
    let (owner, fd, dev, ino, len, tag) = <(i32, i32, u64, u64, u64, u64)>::decode(&mut input)
        .map_err(|e| crate::shm::named(ARGUMENT, e))?;
    if tag == type_tag::<crate::shm::arena::ArenaBlock>() {
        let block = crate::shm::arena::open_block((owner, fd, dev, ino), len, &mut input)?;
        return Ok(InPlace {
            map: None,
            block: Some(block),
        });
    }
    if tag != type_tag::<SealedSpill>() {
        return Err(bad("the handle is for another kind of object"));
    }
    let len = usize::try_from(len).map_err(|_| bad("length overflows"))?;
    let path = format!("/proc/{owner}/fd/{fd}");
    let (file, _) = super::peer::open_memfd(
        owner,
        fd,
        (dev, ino),
        super::peer::Access::ReadOnly,
        "a spill",
    )
    .map_err(bad)?;
    map_sealed_file(file, len, &path).map_err(bad)
}

/// Maps the first `len` bytes of `file` read-only for reading in place,
/// after checking what [`open_sealed`] says: a memfd sealed against
/// writing, shrinking and growing, at least `len` bytes long and backed by
/// memory. `what` names the file in the reason of a refusal.
///
/// # Errors
///
/// The reason, when the file is not such a memfd or cannot be mapped.
pub(crate) fn map_sealed_file(
    file: std::os::fd::OwnedFd,
    len: usize,
    what: &str,
) -> std::result::Result<InPlace, String> {
    use std::os::fd::AsFd;
    if !crate::sys::is_contents_sealed(file.as_fd()) {
        return Err(format!("{what} is not sealed against writing and resizing"));
    }
    // Its size again, now that it is sealed (the first look came before
    // the seal was checked).
    let id = crate::sys::fstat(file.as_fd()).map_err(|e| e.to_string())?;
    if id.size < len as u64 {
        return Err(format!(
            "{what} holds {} bytes, the handle says {len}",
            id.size
        ));
    }
    if !crate::sys::allocated_bytes(file.as_fd()).is_ok_and(|b| b >= len as u64) {
        return Err(format!(
            "{what} is sparse: its size is not backed by memory"
        ));
    }
    if len == 0 {
        return Ok(InPlace {
            map: None,
            block: None,
        });
    }
    // SAFETY: the file is sealed against writing, shrinking and growing
    // (checked above): no process can change its bytes or take its pages
    // away while the mapping lives, which is what `Mmap`'s `&[u8]` needs.
    // `populate`: its pages (all present, checked above) are mapped in this
    // call, not one fault per few pages as they are read.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .len(len)
            .populate()
            .map(&std::fs::File::from(file))
    }
    .map_err(|e| format!("mapping {what}: {e}"))?;
    Ok(InPlace {
        map: Some(map),
        block: None,
    })
}

/// The bytes of the spill whose handle starts `handle`.
///
/// # Errors
///
/// As [`read_into`].
pub(crate) fn read(handle: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read_into(handle, &mut out)?;
    Ok(out)
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn a_spill_round_trips_and_is_let_go_once_read() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let (handle, mut carried) = write(&bytes).unwrap();
        assert_eq!(handle.len(), HANDLE_BYTES);
        carried.sent();
        drop(carried); // the sender's copy: it lingers while in flight
        assert!(crate::shm::handle::lingering() >= 1);
        assert_eq!(read(&handle).unwrap(), bytes);
        // Read once: nothing is in flight, the sender let it go.
        assert!(read(&handle).is_err(), "a spill is read once");
    }

    #[test]
    fn an_unsent_spill_is_freed_with_its_handle() {
        let (handle, carried) = write(b"never sent").unwrap();
        drop(carried);
        let err = read(&handle).unwrap_err().to_string();
        // Named as the user knows it, not by corepool's internal type.
        assert!(err.starts_with("could not decode spilled result"), "{err}");
        assert!(!err.contains("corepool::"), "{err}");
    }

    #[test]
    fn a_held_spill_opens_in_place_while_held() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (handle, held) = write_held(None, &bytes[..1000], &bytes[1000..]).unwrap();
        assert_eq!(handle.len(), HANDLE_BYTES);
        let spill = open_sealed(&handle).unwrap();
        assert_eq!(spill.bytes(), &bytes[..]);
        assert_eq!(
            open_sealed(&handle).unwrap().bytes(),
            &bytes[..],
            "held, not counted"
        );
        drop(spill);
        drop(held);
        assert!(open_sealed(&handle).is_err(), "gone with its holder");
    }

    #[test]
    fn a_held_spill_cannot_be_changed_by_anyone() {
        use std::os::fd::AsFd;
        let (_handle, held) = write_held(None, b"sealed", &[]).unwrap();
        let Place::File(held_file) = &held.place else {
            panic!("no arena given: a one-off memfd");
        };
        let path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(held_file)
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(std::os::unix::fs::FileExt::write_at(&file, b"x", 0).is_err());
        // SAFETY: the mapping must fail (the point); were it made, nothing
        // would touch it before it drops.
        assert!(unsafe { memmap2::MmapMut::map_mut(&file) }.is_err());
        assert!(crate::sys::is_contents_sealed(held_file.as_fd()));
    }

    #[test]
    fn each_kind_of_spill_opens_only_as_itself() {
        let (held_handle, _held) = write_held(None, b"he", b"ld").unwrap();
        assert!(
            read(&held_handle).is_err(),
            "a sealed spill's handle is not a counted one"
        );
        let (handle, mut carried) = write(b"counted").unwrap();
        assert!(
            open_sealed(&handle).is_err(),
            "an unsealed spill never decodes in place"
        );
        carried.sent();
        assert_eq!(read(&handle).unwrap(), b"counted");
    }

    #[test]
    fn a_held_spill_goes_into_the_arena_while_it_has_room() {
        let arena = crate::shm::arena::Arena::create(64 * 1024).unwrap();
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        let (handle, held) = write_held(Some(&arena), &bytes[..7], &bytes[7..]).unwrap();
        assert!(held.in_arena());
        assert_eq!(open_sealed(&handle).unwrap().bytes(), &bytes[..]);
        assert!(
            read(&handle).is_err(),
            "an arena block is not a counted spill"
        );
        // No room for a second one: a one-off memfd, as good.
        let (other, spare) = write_held(Some(&arena), &bytes, &[]).unwrap();
        assert!(!spare.in_arena());
        assert_eq!(open_sealed(&other).unwrap().bytes(), &bytes[..]);
        drop(held);
        let (_again, held) = write_held(Some(&arena), &bytes, &[]).unwrap();
        assert!(held.in_arena(), "room again once the first was dropped");
    }
}
