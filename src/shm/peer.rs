//! Opening a memfd another process names by handle (its pid, descriptor
//! number, device and inode): the checks every kind of shared object makes,
//! in the one order that keeps a hostile name from hurting the opener,
//! before the caller checks the seals its kind needs.

use crate::sys;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

/// Why a peer's memfd did not open: the handle's doing, or this process's
/// own want of descriptors or memory. Telling them apart needs the system
/// call's errno, so it travels typed: a parent out of descriptors (`ulimit
/// -n`) must not judge an honest worker's handle a protocol violation.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The handle names nothing this process may open and map: gone,
    /// not a memfd, another file, missing seals. The message says which.
    Refused(String),
    /// This process could not open or map it for want of its own
    /// resources ([`is_own_limit`]): the step and the kernel's answer.
    OwnLimit {
        /// The step that failed ("opening /proc/N/fd/M", "mmap").
        op: String,
        /// The kernel's answer: EMFILE, ENFILE or ENOMEM.
        source: io::Error,
    },
}

/// Whether `err` says this process ran out of something of its own
/// (descriptors: EMFILE, ENFILE; memory or address space: ENOMEM) rather
/// than that the file a handle names is wrong or gone.
pub(crate) fn is_own_limit(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

impl OpenError {
    /// A failed system call at step `op`: [`OpenError::OwnLimit`] for this
    /// process's own limits, else refused with `op` and the error.
    pub(crate) fn from_call(op: String, source: io::Error) -> Self {
        if is_own_limit(&source) {
            OpenError::OwnLimit { op, source }
        } else {
            OpenError::Refused(format!("{op}: {source}"))
        }
    }

    /// The crate's error: a decode error of `T` for a refused handle, a
    /// shared-memory error (errno and its advice: `ulimit -n`, free
    /// memory) for this process's own limits. `step` names the object's
    /// open in the latter ("opening a shared object a handle names").
    pub(crate) fn into_error<T>(self, step: &'static str) -> crate::Error {
        match self {
            OpenError::Refused(reason) => crate::wire::decode_error::<T>(reason),
            OpenError::OwnLimit { source, .. } => crate::Error::shm(step, source),
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Refused(reason) => f.write_str(reason),
            OpenError::OwnLimit { op, source } => write!(f, "{op}: {source}"),
        }
    }
}

/// For callers that only report the reason (queues, the arena).
impl From<OpenError> for String {
    fn from(e: OpenError) -> Self {
        e.to_string()
    }
}

impl From<String> for OpenError {
    fn from(reason: String) -> Self {
        OpenError::Refused(reason)
    }
}

/// How the file is reopened.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Access {
    /// For a mapping the opener writes (arrays, queues).
    ReadWrite,
    /// For one it only reads (a sealed spill).
    ReadOnly,
}

/// Opens `/proc/<owner>/fd/<fd>` after checking, before opening it for
/// anything, that it is a memfd on shmem (never a FIFO, a device or a
/// leased file, whose open could wait on someone else, nor a hugetlbfs
/// memfd, whose holes read as data) and the very file `dev`/`ino` name; the reopen is non-blocking, so a lease fails it instead of
/// waiting. The returned descriptor is checked again (`dev`/`ino`), so a
/// number closed and reused in between is caught. `what` names the object
/// in the messages ("a corepool shared object ...").
///
/// # Errors
///
/// [`OpenError::OwnLimit`] when this process is out of descriptors or
/// memory; else [`OpenError::Refused`] with a message saying which check
/// failed, for the caller's typed error.
pub(crate) fn open_memfd(
    owner: i32,
    fd: i32,
    (dev, ino): (u64, u64),
    access: Access,
    what: &str,
) -> Result<(OwnedFd, sys::FileId), OpenError> {
    let path = format!("/proc/{owner}/fd/{fd}");
    // O_PATH: names the file without opening it (nothing of the file's runs).
    let named = sys::open_path_only(&path).map_err(|e| {
        if is_own_limit(&e) {
            OpenError::from_call(format!("opening {path}"), e)
        } else {
            OpenError::Refused(format!(
                "opening {path}: {e} (is the process holding {what} alive?)"
            ))
        }
    })?;
    let is_memfd = sys::is_regular_file(named.as_fd()).unwrap_or(false)
        && sys::descriptor_target(named.as_fd()).is_ok_and(|t| t.starts_with(b"/memfd:"));
    if !is_memfd {
        return Err(OpenError::Refused(format!(
            "{path} is not {what} (not a memfd)"
        )));
    }
    // Every object corepool shares is a plain memfd, on shmem. A hugetlbfs
    // memfd (MFD_HUGETLB) has the same name and takes the same seals, but
    // calls its holes data (`lseek`) and can be grown for free: a value
    // file of that kind would have a receiver allocate and fill as many
    // bytes as a forged record says, from a file holding none.
    if !sys::is_shmem(named.as_fd()).unwrap_or(false) {
        return Err(OpenError::Refused(format!(
            "{path} is not {what} (a memfd, but not on shmem: hugetlbfs?)"
        )));
    }
    let same = |id: &sys::FileId| id.dev == dev && id.ino == ino;
    let reused = || {
        OpenError::Refused(format!(
            "{path} is no longer {what} (closed, and the number reused)"
        ))
    };
    if !sys::fstat(named.as_fd()).is_ok_and(|id| same(&id)) {
        return Err(reused());
    }
    let file = match access {
        Access::ReadWrite => sys::reopen_read_write(named.as_fd()),
        Access::ReadOnly => sys::reopen_read_only(named.as_fd()),
    }
    .map_err(|e| OpenError::from_call(format!("opening {path}"), e))?;
    let id = sys::fstat(file.as_fd()).map_err(|e| OpenError::from_call("fstat".into(), e))?;
    if !same(&id) {
        return Err(reused());
    }
    Ok((file, id))
}

/// [`open_memfd`] for reading and writing, then the check that the file is
/// sealed against shrinking: what a peer's file needs before this process
/// maps it for good (a queue's value file, an unbounded queue's memory),
/// since a file that could shrink under the mapping would turn the next
/// access past its new end into SIGBUS. `what` names the object, as for
/// `open_memfd`.
///
/// # Errors
///
/// As [`open_memfd`]; [`OpenError::Refused`] also when the file is not
/// sealed against shrinking.
pub(crate) fn open_shrink_sealed(
    owner: i32,
    fd: i32,
    (dev, ino): (u64, u64),
    what: &str,
) -> Result<(std::fs::File, sys::FileId), OpenError> {
    let (file, id) = open_memfd(owner, fd, (dev, ino), Access::ReadWrite, what)?;
    if !sys::is_shrink_sealed(file.as_fd()) {
        return Err(OpenError::Refused(format!(
            "/proc/{owner}/fd/{fd} is not {what} (not sealed against shrinking)"
        )));
    }
    Ok((std::fs::File::from(file), id))
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn open(fd: &OwnedFd, access: Access) -> Result<(OwnedFd, sys::FileId), OpenError> {
        let id = sys::fstat(fd.as_fd()).unwrap();
        let me = std::process::id() as i32;
        open_memfd(
            me,
            fd.as_raw_fd(),
            (id.dev, id.ino),
            access,
            "a test's memfd",
        )
    }

    /// The shared check of queues' value files and unbounded queues' memory:
    /// a memfd that could shrink under a mapping is refused, by name, and
    /// one sealed against shrinking opens as the very same file.
    #[test]
    fn only_a_shrink_sealed_memfd_opens_for_good() {
        let file = sys::memfd_create(c"corepool-test").unwrap();
        let id = sys::fstat(file.as_fd()).unwrap();
        let me = std::process::id() as i32;
        let open = || open_shrink_sealed(me, file.as_raw_fd(), (id.dev, id.ino), "a test's file");
        match open() {
            Err(OpenError::Refused(reason)) => {
                assert!(reason.contains("not sealed against shrinking"), "{reason}");
                assert!(reason.contains("a test's file"), "{reason}");
            }
            other => panic!("an unsealed memfd opened: {other:?}"),
        }
        sys::seal_shrink_only(file.as_fd()).unwrap();
        let (opened, opened_id) = open().unwrap();
        assert_eq!((opened_id.dev, opened_id.ino), (id.dev, id.ino));
        let again = sys::fstat(opened.as_fd()).unwrap();
        assert_eq!((again.dev, again.ino), (id.dev, id.ino), "the same file");
        // A handle whose identity is not the file's is refused before the seal
        // is even looked at.
        assert!(matches!(
            open_shrink_sealed(me, file.as_raw_fd(), (id.dev, id.ino + 1), "a test's file"),
            Err(OpenError::Refused(_))
        ));
    }

    #[test]
    fn a_hugetlbfs_memfd_is_refused_for_every_access() {
        let plain = sys::memfd_create(c"corepool-test").unwrap();
        for access in [Access::ReadWrite, Access::ReadOnly] {
            assert!(open(&plain, access).is_ok(), "a plain memfd opens");
        }
        // Its holes read as data and it grows for free: not shared memory
        // any handle of corepool's names.
        let Some(huge) = sys::hugetlb_memfd(1 << 30) else {
            eprintln!("no hugetlbfs here: skipped");
            return;
        };
        for access in [Access::ReadWrite, Access::ReadOnly] {
            match open(&huge, access) {
                Err(OpenError::Refused(reason)) => assert!(reason.contains("shmem"), "{reason}"),
                other => panic!("a hugetlbfs memfd opened: {other:?}"),
            }
        }
    }
}

/// Files of a kind this process has open, by identity (device, inode), so
/// that every handle of one file decoded here shares one descriptor and
/// whatever its holder keeps beside it (mappings). Entries are weak: a file
/// goes when its last user drops it.
pub(crate) struct OpenedFiles<T> {
    files: Mutex<Vec<Weak<T>>>,
    id: fn(&T) -> (u64, u64),
}

impl<T> OpenedFiles<T> {
    /// An empty registry of files whose identity `id` tells.
    pub(crate) const fn new(id: fn(&T) -> (u64, u64)) -> Self {
        Self {
            files: Mutex::new(Vec::new()),
            id,
        }
    }

    /// The file `(dev, ino)` if this process has it open, else the one
    /// `open` makes, remembered. (Two threads decoding the same handle at
    /// once may each open it; both copies work.)
    pub(crate) fn get_or_open<E>(
        &self,
        (dev, ino): (u64, u64),
        open: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let found = crate::sync::lock(&self.files)
            .iter()
            .filter_map(Weak::upgrade)
            .find(|f| (self.id)(f) == (dev, ino));
        if let Some(open) = found {
            return Ok(open);
        }
        let opened = Arc::new(open()?);
        self.remember(&opened);
        Ok(opened)
    }

    /// Adds `file` (one this process made) to the open files, forgetting
    /// those nobody uses any more.
    pub(crate) fn remember(&self, file: &Arc<T>) {
        let mut files = crate::sync::lock(&self.files);
        files.retain(|f| f.strong_count() > 0);
        files.push(Arc::downgrade(file));
    }
}
