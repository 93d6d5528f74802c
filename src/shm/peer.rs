//! Opening a memfd another process names by handle (its pid, descriptor
//! number, device and inode): the checks every kind of shared object makes,
//! in the one order that keeps a hostile name from hurting the opener,
//! before the caller checks the seals its kind needs.

use crate::sys;
use std::os::fd::{AsFd, OwnedFd};

/// How the file is reopened.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Access {
    /// For a mapping the opener writes (arrays, queues).
    ReadWrite,
    /// For one it only reads (a sealed spill).
    ReadOnly,
}

/// Opens `/proc/<owner>/fd/<fd>` after checking, before opening it for
/// anything, that it is a memfd (never a FIFO, a device or a leased file,
/// whose open could wait on someone else) and the very file `dev`/`ino`
/// name; the reopen is non-blocking, so a lease fails it instead of
/// waiting. The returned descriptor is checked again (`dev`/`ino`), so a
/// number closed and reused in between is caught. `what` names the object
/// in the messages ("a corepool array").
///
/// # Errors
///
/// A message saying which check failed, for the caller's typed error.
pub(crate) fn open_memfd(
    owner: i32,
    fd: i32,
    (dev, ino): (u64, u64),
    access: Access,
    what: &str,
) -> Result<(OwnedFd, sys::FileId), String> {
    let path = format!("/proc/{owner}/fd/{fd}");
    // O_PATH: names the file without opening it (nothing of the file's runs).
    let named = sys::open_path_only(&path)
        .map_err(|e| format!("opening {path}: {e} (is the process holding {what} alive?)"))?;
    let is_memfd = sys::is_regular_file(named.as_fd()).unwrap_or(false)
        && sys::descriptor_target(named.as_fd()).is_ok_and(|t| t.starts_with(b"/memfd:"));
    if !is_memfd {
        return Err(format!("{path} is not {what} (not a memfd)"));
    }
    let same = |id: &sys::FileId| id.dev == dev && id.ino == ino;
    let reused = || format!("{path} is no longer {what} (closed, and the number reused)");
    if !sys::fstat(named.as_fd()).is_ok_and(|id| same(&id)) {
        return Err(reused());
    }
    let file = match access {
        Access::ReadWrite => sys::reopen_read_write(named.as_fd()),
        Access::ReadOnly => sys::reopen_read_only(named.as_fd()),
    }
    .map_err(|e| format!("opening {path}: {e}"))?;
    let id = sys::fstat(file.as_fd()).map_err(|e| e.to_string())?;
    if !same(&id) {
        return Err(reused());
    }
    Ok((file, id))
}
