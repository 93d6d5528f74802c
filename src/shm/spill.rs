//! Spills: a value too large for the message it travels in (a ring record, a
//! queue slot, a `Process` result) goes into a one-off shared segment of its
//! own, and the message carries the segment's handle instead.
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
//! clear) per 4 KiB, which was most of a spill's cost. A pool task's argument,
//! written by the parent its workers trust, is not copied out at all: the
//! worker maps it and decodes it in place ([`open_from_parent`]).

use crate::error::Result;
use crate::shm::handle::{type_tag, SharedSegment};
use crate::wire::{Carried, Encoder};
use std::sync::Arc;

/// Bytes of a spill's handle on the wire.
pub(crate) const HANDLE_BYTES: usize = 40;

/// The type a spill's handle names, so that no other handle decodes as one.
struct Spilled;

/// A new spill holding `bytes`, and its handle with what the handle carries
/// (the in-flight count to take back if the handle is never sent, and the
/// segment itself): the sender marks it [`Carried::sent`] once the handle
/// went out, then may drop it.
///
/// # Errors
///
/// [`crate::Error::SharedMemory`] when the memory cannot be had.
pub(crate) fn write(bytes: &[u8]) -> Result<(Vec<u8>, Carried)> {
    let seg = SharedSegment::create(c"corepool-spill", bytes.len().max(1))?;
    fill(&seg, bytes)?;
    let mut out = Encoder::new();
    seg.encode(type_tag::<Spilled>(), bytes.len() as u64, &mut out);
    out.check()?;
    let carried = out.take_carried();
    Ok((out.take_bytes(), carried))
}

/// A spill held by its sender for as long as the message lives (a pool task
/// until its outcome), with its handle; the handle is not counted in flight
/// (the holder decides when the spill goes, see [`write`] for the other
/// kind).
///
/// # Errors
///
/// As [`write`].
pub(crate) fn write_held(bytes: &[u8]) -> Result<(Vec<u8>, Arc<SharedSegment>)> {
    let (handle, mut carried) = write(bytes)?;
    let seg = carried
        .keep
        .pop()
        .and_then(|k| k.downcast::<SharedSegment>().ok())
        .ok_or_else(|| crate::Error::SharedMemory {
            op: "holding a spill",
            source: std::io::Error::other("the spill's encoding kept nothing"),
        })?;
    // Dropping `carried` unsent takes the in-flight count back: the holder,
    // not the count, keeps this spill alive.
    drop(carried);
    Ok((handle, seg))
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

/// Copies `bytes` into the start of the new spill `seg` with `pwrite`: the
/// kernel copies into the memfd's pages directly, where writing through the
/// mapping would take a page fault (and a page clear) per 4 KiB.
#[cfg(not(miri))]
fn fill(seg: &SharedSegment, bytes: &[u8]) -> Result<()> {
    crate::sys::pwrite_all(seg.segment().fd(), bytes, 0)
        .map_err(|e| crate::Error::shm("filling a spill", e))
}

/// Under Miri (no files): through the mapping.
#[cfg(miri)]
fn fill(seg: &SharedSegment, bytes: &[u8]) -> Result<()> {
    let dst = seg
        .segment()
        .at(0, bytes.len())
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

/// A spill from a trusted sender, mapped here so that its bytes are decoded
/// where they are (see [`open_from_parent`]); unmapped on drop.
pub(crate) struct InPlace {
    seg: SharedSegment,
    len: usize,
}

impl InPlace {
    /// The spilled bytes, in the sender's memory.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `open_from_parent` checked that the mapping holds `len`
        // bytes, and it lives as long as `self`, to which the slice is tied.
        // Nobody writes them meanwhile: the sender is this process's parent,
        // trusted by its children, which never writes a spill again once its
        // handle went out (see `open_from_parent`).
        unsafe { std::slice::from_raw_parts(self.seg.base(), self.len) }
    }
}

/// Opens the spill whose handle starts `handle` for decoding in place, with
/// the checks of [`read_into`] (so its mapping never holds a page that is not
/// there already) and its pages mapped in one call: no copy into a buffer
/// first. Ends the handle's transit.
///
/// Only for spills written by this process's parent (a pool task's
/// argument): a child trusts its parent, which fills a spill before sending
/// its handle and never writes it again (it only holds it until the task's
/// outcome). A spill from anyone else (a worker's result, a queue's message)
/// could change while it is decoded, and is copied out once with
/// [`read_into`] instead.
///
/// # Errors
///
/// As [`read_into`].
pub(crate) fn open_from_parent(handle: &[u8]) -> Result<InPlace> {
    let mut input = handle;
    let (seg, len) =
        SharedSegment::decode_one_off::<Spilled>(&mut input, type_tag::<Spilled>(), Some)?;
    let len = len as usize;
    if !backed_by_memory(&seg, len) {
        return Err(crate::wire::decode_error::<Spilled>(
            "the spill is sparse: its size is not backed by memory",
        ));
    }
    // SAFETY: the first `len` bytes of the mapping are in bounds (checked by
    // `decode_one_off`); the mapping lives until `seg` drops, after this.
    // A failure (an older kernel) leaves the pages to fault in as read.
    #[cfg(not(miri))]
    let _ = unsafe { crate::sys::populate_read(seg.base(), len) };
    Ok(InPlace { seg, len })
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
        assert!(read(&handle).is_err());
    }

    #[test]
    fn a_spill_opens_in_place_once() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (handle, seg) = write_held(&bytes).unwrap();
        let spill = open_from_parent(&handle).unwrap();
        assert_eq!(spill.bytes(), &bytes[..]);
        drop(spill);
        drop(seg);
        assert!(open_from_parent(&handle).is_err(), "gone with its holder");
    }

    #[test]
    fn a_held_spill_lives_with_its_holder() {
        let (handle, seg) = write_held(b"held").unwrap();
        assert_eq!(read(&handle).unwrap(), b"held");
        assert_eq!(read(&handle).unwrap(), b"held", "held, not counted");
        drop(seg);
        assert!(read(&handle).is_err());
    }
}
