//! Shared segments that travel between processes as handles.
//!
//! A [`SharedSegment`] is a sealed memfd created by one process (its *owner*).
//! Its handle on the wire is `(owner pid, fd number, device, inode, length,
//! type tag)`; a receiving process opens `/proc/<owner>/fd/<fd>` and checks
//! that it is the same file (device and inode), a memfd sealed against
//! resizing, and large enough for the length the handle claims. Handles may
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
use std::os::fd::OwnedFd;
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
fn open(
    owner: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    bytes: usize,
) -> std::result::Result<Arc<SharedSegment>, String> {
    let mut opened = crate::pool_lock(&OPENED);
    if let Some(m) = opened.iter().find(|m| m.id.dev == dev && m.id.ino == ino) {
        // The handle may come from an untrusted worker: its length must fit
        // the memory we mapped, on this path as on the first.
        if m.seg.len() < bytes {
            return Err(format!(
                "the shared memory holds {} bytes, the handle says {bytes}",
                m.seg.len()
            ));
        }
        return Ok(m.clone());
    }
    opened.retain(|m| {
        std::fs::metadata(format!("/proc/{}/fd/{}", m.owner, m.fd))
            .map(|md| {
                use std::os::unix::fs::MetadataExt;
                md.dev() == m.id.dev && md.ino() == m.id.ino
            })
            .unwrap_or(false)
            || Arc::strong_count(m) > 1
    });
    if opened.len() >= MAX_OPENED {
        opened.remove(0);
    }
    let path = format!("/proc/{owner}/fd/{fd}");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {path}: {e} (is the creating process alive?)"))?;
    // Only a memfd sealed against resizing: never map an arbitrary file a
    // worker names, nor one that could shrink under us.
    if !sys::is_size_sealed(std::os::fd::AsFd::as_fd(&file)) {
        return Err(format!(
            "{path} is not a corepool array (not a size-sealed memfd)"
        ));
    }
    let fd_owned: OwnedFd = file.into();
    let seg = Segment::open(fd_owned).map_err(|e| e.to_string())?;
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
    let _ = sys::set_cloexec(seg.raw_fd());
    let m = Arc::new(SharedSegment { seg, id, owner, fd });
    opened.push(m.clone());
    Ok(m)
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

/// Whether process `pid` is gone (or a zombie): its claims on shared state
/// can be repaired.
pub(crate) fn process_is_dead(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    if pid as u32 == crate::sys::current_pid() {
        // Another thread of ours holds the slot or lock: alive by definition,
        // and no `/proc` read on the contended path.
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state == 'Z' || state == 'X'),
    }
}
