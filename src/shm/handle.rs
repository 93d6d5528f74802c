//! Shared segments that travel between processes as handles.
//!
//! A [`SharedSegment`] is a sealed memfd created by one process (its *owner*).
//! Its handle on the wire is `(owner pid, fd number, device, inode, length,
//! type tag)`; a receiving process first names `/proc/<owner>/fd/<fd>`
//! without opening it (`O_PATH`) and checks that it is a memfd and the same
//! file (device and inode), only then opens it (without waiting) and checks
//! that it is sealed against resizing and large enough for the length the
//! handle claims. Handles may
//! come from untrusted workers, so every check runs on every decode.
//!
//! A receiver keeps up to 64 mappings so that a stream of tasks over the same
//! array maps it once; on a miss it first forgets mappings whose owner no
//! longer holds the descriptor, so their memory can be freed.

use crate::error::Result;
use crate::shm::Segment;
use crate::sys::{self, FileId};
use crate::wire::{decode_error, Encoder, Wire};
use std::ffi::CStr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

/// One mapping of a shared memfd in this process.
#[derive(Debug)]
pub(crate) struct SharedSegment {
    seg: Segment,
    id: FileId,
    /// The process whose descriptor table holds `fd` (the creator).
    owner: i32,
    fd: i32,
}

/// Segments this process has mapped from another one.
static OPENED: Mutex<Vec<Arc<SharedSegment>>> = Mutex::new(Vec::new());
const MAX_OPENED: usize = 64;

impl SharedSegment {
    /// A new zero-filled segment of `bytes`, owned by this process.
    pub(crate) fn create(name: &CStr, bytes: usize) -> Result<Arc<Self>> {
        let seg = Segment::create(name, bytes)?;
        let id = seg.identity()?;
        let fd = seg.raw_fd();
        Ok(Arc::new(Self {
            seg,
            id,
            owner: std::process::id() as i32,
            fd,
        }))
    }

    /// The mapping's base address.
    pub(crate) fn base(&self) -> *mut u8 {
        self.seg.base()
    }

    /// The underlying segment (bounds-checked pointers).
    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    /// The creating process.
    pub(crate) fn owner(&self) -> i32 {
        self.owner
    }

    /// Writes the handle, and asks `out` to keep the segment alive while the
    /// handle is in flight (its sender holds what `out` carries), so that
    /// the receiver can open it even if the caller drops its copy.
    pub(crate) fn encode(self: &Arc<Self>, tag: u64, len: u64, out: &mut Encoder) {
        out.keep_alive(self.clone());
        (self.owner, self.fd, self.id.dev, self.id.ino, len, tag).encode(out);
    }

    /// Reads a handle written by [`encode`](Self::encode) for a value of type
    /// `T` with type tag `tag`; `bytes_for(len)` is the size the segment
    /// must have for that length (`None`: overflow). Returns the mapping and
    /// the length.
    pub(crate) fn decode<T>(
        input: &mut &[u8],
        tag: u64,
        bytes_for: impl Fn(u64) -> Option<u64>,
    ) -> Result<(Arc<Self>, u64)> {
        let (owner, fd, dev, ino, len, got) = <(i32, i32, u64, u64, u64, u64)>::decode(input)?;
        if got != tag {
            return Err(decode_error::<T>("the handle is for another element type"));
        }
        let bytes = bytes_for(len)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| decode_error::<T>("length overflows"))?;
        let map = open(owner, fd, dev, ino, bytes).map_err(decode_error::<T>)?;
        Ok((map, len))
    }
}

/// Maps the segment another process described, or reuses an earlier mapping.
///
/// The cache lock is held only to look up and to insert, never across a
/// system call on a file the handle names: a hostile handle could otherwise
/// stall every thread that decodes (often the driver).
fn open(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    bytes: usize,
) -> std::result::Result<Arc<SharedSegment>, String> {
    let cached = crate::sync::lock(&OPENED)
        .iter()
        .find(|m| m.id.dev == dev && m.id.ino == ino)
        .cloned();
    if let Some(m) = cached {
        return fits(m, bytes);
    }
    let fresh = Arc::new(open_uncached(owner, fd, dev, ino, bytes)?);
    let closed = closed_by_their_owners();
    let mut opened = crate::sync::lock(&OPENED);
    // Another thread may have mapped the same memory meanwhile: keep one.
    if let Some(m) = opened.iter().find(|m| m.id.dev == dev && m.id.ino == ino) {
        return fits(m.clone(), bytes);
    }
    opened.retain(|m| {
        Arc::strong_count(m) > 1 || !closed.iter().any(|&(d, i)| m.id.dev == d && m.id.ino == i)
    });
    if opened.len() >= MAX_OPENED {
        opened.remove(0);
    }
    opened.push(fresh.clone());
    Ok(fresh)
}

/// `m`, if its memory holds `bytes`: the handle may come from an untrusted
/// worker, so its length is checked on the cached path as on the first.
fn fits(m: Arc<SharedSegment>, bytes: usize) -> std::result::Result<Arc<SharedSegment>, String> {
    if m.seg.len() < bytes {
        return Err(format!(
            "the shared memory holds {} bytes, the handle says {bytes}",
            m.seg.len()
        ));
    }
    Ok(m)
}

/// The (device, inode) of cached mappings whose owner no longer holds the
/// descriptor, so that their memory can be freed. Looks at `/proc` without
/// the cache lock.
fn closed_by_their_owners() -> Vec<(u64, u64)> {
    let entries: Vec<(i32, i32, u64, u64)> = crate::sync::lock(&OPENED)
        .iter()
        .map(|m| (m.owner, m.fd, m.id.dev, m.id.ino))
        .collect();
    entries
        .into_iter()
        .filter(|&(owner, fd, dev, ino)| {
            !std::fs::metadata(format!("/proc/{owner}/fd/{fd}")).is_ok_and(|md| {
                use std::os::unix::fs::MetadataExt;
                md.dev() == dev && md.ino() == ino
            })
        })
        .map(|(_, _, dev, ino)| (dev, ino))
        .collect()
}

/// Maps `/proc/<owner>/fd/<fd>` after checking, before opening it for
/// anything, that it is a memfd: never a FIFO, a device or a leased file,
/// whose open could wait on someone else.
fn open_uncached(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    bytes: usize,
) -> std::result::Result<SharedSegment, String> {
    let path = format!("/proc/{owner}/fd/{fd}");
    // O_PATH: names the file without opening it (nothing of the file's runs).
    let named = sys::open_path_only(&path)
        .map_err(|e| format!("opening {path}: {e} (is the creating process alive?)"))?;
    let is_memfd = sys::is_regular_file(named.as_fd()).unwrap_or(false)
        && sys::descriptor_target(named.as_fd()).is_ok_and(|t| t.starts_with(b"/memfd:"));
    if !is_memfd {
        return Err(format!("{path} is not a corepool array (not a memfd)"));
    }
    let named_id = sys::fstat(named.as_fd()).map_err(|e| e.to_string())?;
    if named_id.dev != dev || named_id.ino != ino {
        return Err(format!(
            "{path} is no longer the same memory (closed, and the number reused)"
        ));
    }
    // Non-blocking: a lease on a memfd fails the open instead of waiting.
    let file = sys::reopen_read_write(named.as_fd())
        .map_err(|e| format!("opening {path} for writing: {e}"))?;
    // Only a memfd sealed against resizing: never map an arbitrary file a
    // worker names, nor one that could shrink under us.
    if !sys::is_size_sealed(file.as_fd()) {
        return Err(format!(
            "{path} is not a corepool array (not a size-sealed memfd)"
        ));
    }
    let seg = Segment::open(file).map_err(|e| e.to_string())?;
    let id = seg.identity().map_err(|e| e.to_string())?;
    if id.dev != dev || id.ino != ino {
        return Err(format!(
            "{path} is no longer the same memory (closed, and the number reused)"
        ));
    }
    if seg.len() < bytes {
        return Err(format!(
            "the shared memory holds {} bytes, the handle says {bytes}",
            seg.len()
        ));
    }
    Ok(SharedSegment { seg, id, owner, fd })
}

/// A tag for type `T` (its name and size), so that a handle for one type is
/// never decoded as another.
pub(crate) fn type_tag<T>() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::any::type_name::<T>().hash(&mut h);
    std::mem::size_of::<T>().hash(&mut h);
    h.finish()
}
