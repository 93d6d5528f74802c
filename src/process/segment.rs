//! The memory a [`Process`](super::Process) and its parent share: a sealed
//! memfd holding a header (written by the parent before the child starts),
//! the encoded argument, and room for the result, with two atomic words the
//! child writes its outcome into.
//!
//! Layout: the [`Header`] at 0; the `status` and `result_len` words at
//! [`STATUS_OFFSET`] and [`RESULT_LEN_OFFSET`]; the argument at
//! [`HEADER_BYTES`]; the result after it, 8-aligned, `result_cap` bytes.
//! Each side treats what the other wrote as untrusted and validates it.

use crate::error::Result;
use crate::shm::Segment;
use std::sync::atomic::{AtomicU32, Ordering};

const MAGIC: [u8; 8] = *b"COREPROC";
const VERSION: u32 = 1;
/// Where the argument starts: the header's page.
pub(super) const HEADER_BYTES: usize = 4096;
const STATUS_OFFSET: usize = 256;
const RESULT_LEN_OFFSET: usize = 260;
/// Set by the child right before it decodes its argument: a child that
/// died with it still 0 never decoded it (its shared objects' transits are
/// then taken back by the parent).
const ARGUMENT_DECODED_OFFSET: usize = 264;
/// Where the child's identity lies (its name and its parent's description,
/// for `crate::identity`): the rest of the header's page.
const IDENTITY_OFFSET: usize = 512;
/// The most identity bytes the header's page holds.
pub(super) const IDENTITY_MAX: usize = HEADER_BYTES - IDENTITY_OFFSET;

/// Child outcome codes in the segment's `status` word.
pub(super) mod status {
    pub(in crate::process) const RUNNING: u32 = 0;
    pub(in crate::process) const RETURNED: u32 = 1;
    pub(in crate::process) const PANICKED: u32 = 2;
    pub(in crate::process) const FAILED: u32 = 3;
    pub(in crate::process) const TOO_LARGE: u32 = 4;
    /// The result could not be encoded; the result bytes are the message.
    pub(in crate::process) const NOT_ENCODED: u32 = 5;
    /// It returned a result larger than the room: the result bytes are the
    /// handle of a spill holding it (`crate::shm::spill`).
    pub(in crate::process) const SPILLED: u32 = 6;
}

/// The header of a process segment, written by the parent before the child
/// starts; `status` and `result_len` (atomics at fixed offsets after it) are
/// the child's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Header {
    magic: [u8; 8],
    version: u32,
    /// Bytes of the encoded argument.
    pub(super) arg_len: u32,
    /// The parent's build ([`crate::child::fingerprint`]).
    pub(super) fingerprint: u64,
    /// The function to run, as an offset ([`crate::wire::task::offset_of`]).
    pub(super) trampoline: i64,
    /// Room for the encoded result.
    pub(super) result_cap: u32,
    /// Bytes of identity at [`IDENTITY_OFFSET`] (at most [`IDENTITY_MAX`]).
    pub(super) identity_len: u32,
}

impl Header {
    /// Where the result starts: after the argument, 8-aligned.
    fn result_at(&self) -> usize {
        HEADER_BYTES + (self.arg_len as usize).next_multiple_of(8)
    }
}

/// How the child ended its task, as the parent reads it back.
#[derive(Debug, PartialEq)]
pub(super) enum Outcome {
    /// The function returned this encoded result.
    Returned(Vec<u8>),
    /// The function returned a result in the spill with this handle.
    Spilled(Vec<u8>),
    /// Its result spilled, and the spill could not be read (why).
    SpillLost(String),
    /// It panicked with this message.
    Panicked(String),
    /// Its argument could not be decoded, for this reason.
    Failed(String),
    /// Its result could not be encoded, for this reason.
    NotEncoded(String),
    /// Its result, `size` bytes, did not fit in `max`.
    TooLarge { size: usize, max: usize },
    /// No outcome: the child died mid-task, or wrote garbage.
    Unfinished,
}

fn status_word(seg: &Segment) -> Option<&AtomicU32> {
    let p = seg.at(STATUS_OFFSET, 4)?;
    // SAFETY: in bounds, 4-aligned (page-aligned base + 256), lives as long as
    // `seg`, and both processes access it only atomically.
    Some(unsafe { AtomicU32::from_ptr(p.cast()) })
}

fn argument_decoded_word(seg: &Segment) -> Option<&AtomicU32> {
    let p = seg.at(ARGUMENT_DECODED_OFFSET, 4)?;
    // SAFETY: as in `status_word`.
    Some(unsafe { AtomicU32::from_ptr(p.cast()) })
}

/// Child: its argument is decoded (its shared objects received).
pub(super) fn mark_argument_decoded(seg: &Segment) {
    if let Some(word) = argument_decoded_word(seg) {
        // Relaxed: the parent reads it only after the child ended (reaped:
        // the kernel orders the two).
        word.store(1, Ordering::Relaxed);
    }
}

/// Parent, once the child ended: whether it decoded its argument, so that
/// the in-flight counts of the objects in it were ended by the child
/// (untrusted: a lying child can only make its own argument's objects
/// linger, or be let go early). A child killed between its decode and this
/// mark has its counts taken back twice: they stop at 0, and at worst an
/// object also in flight elsewhere goes early (its receiver gets a typed
/// decode error), where marking before the decode made every child killed
/// while decoding leak its argument's objects in the parent.
pub(super) fn argument_decoded(seg: &Segment) -> bool {
    argument_decoded_word(seg).is_none_or(|w| w.load(Ordering::Relaxed) != 0)
}

fn result_len_word(seg: &Segment) -> Option<&AtomicU32> {
    let p = seg.at(RESULT_LEN_OFFSET, 4)?;
    // SAFETY: as in `status_word`.
    Some(unsafe { AtomicU32::from_ptr(p.cast()) })
}

/// Parent: a new segment holding the header for `trampoline` and
/// `argument`, with `result_cap` bytes of room for the result, and the
/// child's `identity` (cut to [`IDENTITY_MAX`] bytes). Nothing else maps it
/// yet.
pub(super) fn create(
    trampoline: i64,
    argument: &[u8],
    result_cap: u32,
    identity: &[u8],
) -> Result<Segment> {
    let identity = &identity[..identity.len().min(IDENTITY_MAX)];
    let arg_len = u32::try_from(argument.len()).map_err(|_| crate::Error::ArgumentTooLarge {
        size: argument.len(),
        max: u32::MAX as usize,
    })?;
    let header = Header {
        magic: MAGIC,
        version: VERSION,
        arg_len,
        fingerprint: crate::child::fingerprint::fingerprint(),
        trampoline,
        result_cap,
        identity_len: identity.len() as u32,
    };
    let len = header.result_at() + result_cap as usize;
    let seg = Segment::create(c"corepool-process", len)?;
    let too_small = || crate::Error::SharedMemory {
        op: "sizing the process segment",
        source: std::io::Error::other(format!("{len} bytes do not hold the header and argument")),
    };
    let dst = seg
        .at(0, std::mem::size_of::<Header>())
        .ok_or_else(too_small)?;
    // SAFETY: in bounds (checked by `at`); no other process maps the segment yet.
    unsafe { dst.cast::<Header>().write_unaligned(header) };
    let dst = seg.at(HEADER_BYTES, argument.len()).ok_or_else(too_small)?;
    // SAFETY: in bounds (checked by `at`); not shared yet.
    unsafe { std::ptr::copy_nonoverlapping(argument.as_ptr(), dst, argument.len()) };
    let dst = seg
        .at(IDENTITY_OFFSET, identity.len())
        .ok_or_else(too_small)?;
    // SAFETY: in bounds (checked by `at`); not shared yet.
    unsafe { std::ptr::copy_nonoverlapping(identity.as_ptr(), dst, identity.len()) };
    Ok(seg)
}

/// Child: a copy of the identity bytes the parent wrote (untrusted: the
/// caller decodes and validates them).
pub(super) fn read_identity(seg: &Segment, header: &Header) -> Option<Vec<u8>> {
    let len = (header.identity_len as usize).min(IDENTITY_MAX);
    let src = seg.at(IDENTITY_OFFSET, len)?;
    let mut out = vec![0u8; len];
    // SAFETY: in bounds (checked by `at`); copied once.
    unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len) };
    Some(out)
}

/// Either side: the header, if it is one (right magic and version).
pub(super) fn read_header(seg: &Segment) -> Option<Header> {
    let src = seg.at(0, std::mem::size_of::<Header>())?;
    // SAFETY: in bounds; plain data, copied once, validated by the caller.
    let header: Header = unsafe { src.cast::<Header>().read_unaligned() };
    (header.magic == MAGIC && header.version == VERSION).then_some(header)
}

/// Child: a copy of the encoded argument.
pub(super) fn read_argument(seg: &Segment, header: &Header) -> Option<Vec<u8>> {
    let src = seg.at(HEADER_BYTES, header.arg_len as usize)?;
    let mut input = vec![0u8; header.arg_len as usize];
    // SAFETY: in bounds (checked by `at`); copied once.
    unsafe { std::ptr::copy_nonoverlapping(src, input.as_mut_ptr(), input.len()) };
    Some(input)
}

/// Child: publishes its outcome, `code` (one of [`status`]) with `out` (the
/// result or message, cut to the room there is). For
/// [`status::TOO_LARGE`], `out` is empty and `too_large_size` is the size
/// that did not fit.
pub(super) fn write_outcome(
    seg: &Segment,
    header: &Header,
    code: u32,
    out: &[u8],
    too_large_size: usize,
) {
    let out = &out[..out.len().min(header.result_cap as usize)];
    let result_len = if code == status::TOO_LARGE {
        too_large_size as u32
    } else {
        out.len() as u32
    };
    let written = match seg.at(header.result_at(), out.len()) {
        Some(dst) => {
            // SAFETY: in bounds (checked by `at`); the parent reads only after we exit.
            unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), dst, out.len()) };
            true
        }
        None => false,
    };
    // A too-large result's size is news even without room for anything.
    if written || code == status::TOO_LARGE {
        if let Some(word) = result_len_word(seg) {
            word.store(result_len, Ordering::Relaxed);
        }
    }
    if let Some(word) = status_word(seg) {
        // Release pairs with the parent's Acquire load in `read_outcome`: the
        // result and its length are visible before the status says so.
        word.store(code, Ordering::Release);
        // A parent in `join` waits on this word (`wait_for_outcome`).
        crate::sys::futex_wake_all(word);
    }
}

/// Parent: whether the child has written its outcome (the status word is
/// set), and the word to wait on until it does.
pub(super) fn status_of(seg: &Segment) -> Option<(&AtomicU32, u32)> {
    let word = status_word(seg)?;
    // Acquire pairs with the child's Release store in `write_outcome`.
    let code = word.load(Ordering::Acquire);
    Some((word, code))
}

/// Parent, once the status word is set or the child was reaped: what it
/// left. `None` if the segment holds no valid header or the result does not
/// fit in it.
pub(super) fn read_outcome(seg: &Segment) -> Option<Outcome> {
    // Acquire pairs with the child's Release store of `status` in
    // `write_outcome`. The child may still run (lingering for its result's
    // receivers): everything is copied once and validated.
    let code = status_word(seg)?.load(Ordering::Acquire);
    let len = result_len_word(seg)?.load(Ordering::Acquire) as usize;
    let header = read_header(seg)?;
    let bytes = || -> Option<Vec<u8>> {
        let len = len.min(header.result_cap as usize);
        let src = seg.at(header.result_at(), len)?;
        let mut out = vec![0u8; len];
        // SAFETY: in bounds (checked by `at`); copied once, then validated.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Some(out)
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Some(match code {
        status::RETURNED => Outcome::Returned(bytes()?),
        status::SPILLED => Outcome::Spilled(bytes()?),
        status::PANICKED => Outcome::Panicked(text(bytes()?)),
        status::FAILED => Outcome::Failed(text(bytes()?)),
        status::NOT_ENCODED => Outcome::NotEncoded(text(bytes()?)),
        status::TOO_LARGE => Outcome::TooLarge {
            size: len,
            max: header.result_cap as usize,
        },
        // It died mid-task.
        status::RUNNING => Outcome::Unfinished,
        // Garbage.
        _ => Outcome::Unfinished,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_validation_rejects_garbage() {
        let seg = Segment::create(c"corepool-test", HEADER_BYTES).unwrap();
        assert!(read_header(&seg).is_none());
        assert_eq!(
            status_word(&seg).unwrap().load(Ordering::Relaxed),
            status::RUNNING
        );
        assert_eq!(read_outcome(&seg), None);
    }

    #[test]
    fn outcomes_round_trip() {
        let seg = create(0, b"argument", 16, b"who").unwrap();
        let header = read_header(&seg).unwrap();
        assert_eq!(read_argument(&seg, &header).unwrap(), b"argument");
        assert_eq!(read_identity(&seg, &header).unwrap(), b"who");
        assert_eq!(read_outcome(&seg), Some(Outcome::Unfinished));
        write_outcome(&seg, &header, status::RETURNED, b"result", 0);
        assert_eq!(
            read_outcome(&seg),
            Some(Outcome::Returned(b"result".to_vec()))
        );
        // A message longer than the room is cut to it.
        write_outcome(&seg, &header, status::PANICKED, &[b'x'; 40], 0);
        assert_eq!(read_outcome(&seg), Some(Outcome::Panicked("x".repeat(16))));
        write_outcome(&seg, &header, status::TOO_LARGE, &[], 1000);
        assert_eq!(
            read_outcome(&seg),
            Some(Outcome::TooLarge {
                size: 1000,
                max: 16
            })
        );
    }
}
