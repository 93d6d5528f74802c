//! Every system call corepool makes, and nothing else.
//!
//! The rest of the crate calls these thin wrappers. Almost all of them go
//! through [`rustix`], whose typed, safe functions make the system call
//! directly (no allocation, no C library state, so they are fine between
//! fork and exec); the few that rustix does not wrap stay raw `libc` here,
//! each saying why. Errors come back as [`std::io::Error`] so that the
//! callers can wrap them in a typed [`crate::Error`] with advice attached.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::{FallocateFlags, MemfdFlags, Mode, SealFlags};
use rustix::io::{Errno, FdFlags};
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions, WaitOptions};
use rustix::thread::{futex, CpuSet};

/// A signal to send ([`kill_group`], [`pidfd_send_signal`]): `Signal::KILL`,
/// `Signal::TERM`.
pub(crate) use rustix::process::Signal;

/// SIGKILL's number, as [`crate::ExitCause::Signal`] reports it.
pub(crate) const SIGKILL: i32 = Signal::KILL.as_raw();
/// SIGABRT's number: how a child built with `panic = "abort"` ends on a panic.
pub(crate) const SIGABRT: i32 = Signal::ABORT.as_raw();
/// Invalid memory access: also how a task that overflows its stack ends.
pub(crate) const SIGSEGV: i32 = Signal::SEGV.as_raw();

/// EINVAL's number, as [`io::Error::raw_os_error`] reports it.
pub(crate) const EINVAL: i32 = Errno::INVAL.raw_os_error();
/// EBUSY's number (a seal refused while a page is still referenced).
pub(crate) const EBUSY: i32 = Errno::BUSY.raw_os_error();
/// "Not, or no longer, a child of ours to wait for", for `raw_os_error()` checks.
pub(crate) const ECHILD: i32 = Errno::CHILD.raw_os_error();

/// `pid` as a process id the kernel can name: positive. Zero and negative
/// numbers mean "me" or "a group" to some calls, so callers decide what they
/// do with them before asking for a `Pid`.
fn positive_pid(pid: i32) -> Option<Pid> {
    if pid > 0 {
        Pid::from_raw(pid)
    } else {
        None
    }
}

/// Sets a descriptor's flags (`FD_CLOEXEC`) by its number: `fd` is one this
/// process was handed by number and holds open.
fn set_fd_flags(fd: RawFd, flags: FdFlags) -> io::Result<()> {
    if fd < 0 {
        // -1 is not even representable as a `BorrowedFd`.
        return Err(Errno::BADF.into());
    }
    // SAFETY: `fd` is not negative (checked above), and the callers pass a
    // descriptor this process holds open (the segment it inherited); the
    // borrow ends with this call. F_SETFD reads and writes no memory of ours.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`: an anonymous file that
/// never appears in `/dev/shm` and vanishes with its last descriptor or mapping.
pub(crate) fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    above_stdio(rustix::fs::memfd_create(name, flags)?)
}

/// `fd`, moved to a number above 2 if it got one of the standard streams'
/// (a program that closed its stdin gets its next descriptor as 0): a
/// child's start-up puts `/dev/null` on 0 and keeps its streams on 1 and 2,
/// so a segment there would be replaced in the child (which then refuses
/// the pool as not its shared memory) or written to as stderr; and in the
/// parent, a program that closed its streams would have its own `println!`
/// written into our eventfd (adding to its counter), pidfd or pipe. Every
/// descriptor the engine keeps is made here.
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // The original closes as `fd` drops.
    dup_above(std::os::fd::AsFd::as_fd(&fd), 2)
}

/// `CLOCK_MONOTONIC_COARSE` as time since boot: a few nanoseconds through
/// the vDSO, at the resolution of the scheduler's tick (1-10 ms). For
/// timings that may be that coarse on paths hot enough that a precise
/// clock read would show.
pub(crate) fn coarse_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Refuses to make a file reach `end` bytes past this process's file-size
/// limit (RLIMIT_FSIZE, `ulimit -f`), with the kernel's own answer, EFBIG.
/// Asking the kernel instead gets EFBIG *and* SIGXFSZ, whose default
/// action ends the whole program without a word (a user trial under
/// `ulimit -f 4000` lost its program in `Pool::build`; Python ignores the
/// signal at start-up, and a library may not change a process's signal
/// dispositions). Every call that grows a memfd (`ftruncate`, `fallocate`,
/// `pwrite`) asks this first. A limit that cannot be read counts as none.
fn check_file_size_limit(end: u64) -> io::Result<()> {
    match file_size_limit() {
        Some(limit) if end > limit => Err(io::Error::from_raw_os_error(libc::EFBIG)),
        _ => Ok(()),
    }
}

/// This process's file-size limit in bytes (RLIMIT_FSIZE's soft limit,
/// `ulimit -f`), read now: `None` for none, or one that cannot be read
/// (under Miri, which has no `getrlimit`: none).
pub(crate) fn file_size_limit() -> Option<u64> {
    if cfg!(miri) {
        return None;
    }
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current
}

/// Sets the size of the file behind `fd` (`ftruncate`), within the
/// file-size limit ([`check_file_size_limit`]).
pub(crate) fn set_file_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    check_file_size_limit(len)?;
    rustix::io::retry_on_intr(|| rustix::fs::ftruncate(fd, len))?;
    Ok(())
}

/// Reserves `len` bytes of backing store so that a full tmpfs fails here, with an
/// error, rather than as a SIGBUS on first touch later.
pub(crate) fn fallocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if i64::try_from(len).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "segment too large",
        ));
    }
    check_file_size_limit(len)?;
    check_memory_for(len)?;
    rustix::io::retry_on_intr(|| rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, len))?;
    Ok(())
}

/// Reservations from this size up are checked against the memory available
/// first ([`check_memory_for`]); smaller ones are not worth reading `/proc`
/// for (a spill of a few megabytes is made thousands of times a second).
const CHECKED_RESERVATION: u64 = 64 << 20;

/// Refuses to reserve `len` bytes of shared memory that the machine (or
/// this process's memory cgroup) does not have. A memfd's pages belong to
/// no process, so `fallocate` past the memory available does not fail: the
/// OOM killer ends some other process instead (a user trial lost its shell
/// and other programs' workers to `SharedArray::new` of a terabyte). What
/// cannot be read counts as enough: the check only ever turns a certain
/// OOM into an error.
fn check_memory_for(len: u64) -> io::Result<()> {
    if len < CHECKED_RESERVATION {
        return Ok(());
    }
    match memory_available() {
        Some((available, whose)) if len > available => Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "{len} bytes of shared memory asked for, {available} available ({whose}): \
                 reserving them would make the kernel's OOM killer end some process"
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether `e` is [`check_memory_for`]'s refusal (too little memory
/// available), which [`fallocate`] and [`fallocate_range`] give before
/// asking the kernel: nothing was reserved then. (The kernel's own ENOMEM
/// carries its error number; this refusal none.)
pub(crate) fn is_memory_refusal(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::OutOfMemory && e.raw_os_error().is_none()
}

/// [`memory_available`], for tests that must not ask the kernel for more
/// memory than there is when the figure cannot be read.
#[cfg(test)]
pub(crate) fn memory_available_for_tests() -> Option<(u64, &'static str)> {
    memory_available()
}

/// The bytes this process may still allocate, and what limits it: the
/// machine's (`MemAvailable` plus free swap in `/proc/meminfo`) or its
/// memory cgroup's (v2 `memory.max` less `memory.current`, v1
/// `memory.limit_in_bytes` less `memory.usage_in_bytes`, for the cgroup and
/// each of its ancestors), whichever is smaller. `None` if none of it
/// could be read.
fn memory_available() -> Option<(u64, &'static str)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.as_deref()?.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    let machine = field("MemAvailable:").map(|m| m.saturating_add(field("SwapFree:").unwrap_or(0)));
    let cgroup = cgroup_memory_left();
    match (machine, cgroup) {
        (Some(m), Some(c)) if c < m => Some((c, "the memory cgroup's limit")),
        (Some(m), _) => Some((m, "MemAvailable and free swap")),
        (None, Some(c)) => Some((c, "the memory cgroup's limit")),
        (None, None) => None,
    }
}

/// The least room left under any memory limit of this process's cgroup or
/// its ancestors (cgroup v2 or v1); `None` if there is no limit or none
/// could be read.
fn cgroup_memory_left() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let mut least: Option<u64> = None;
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (root, limit_file, usage_file) = if id == "0" && controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        // The cgroup itself, then each ancestor up to the root.
        let mut dir = path.trim_end_matches('/').to_string();
        loop {
            let at = format!("{root}{dir}");
            // "max" (v2) or a huge number (v1) means no limit: no parse, or
            // a room larger than any machine.
            if let (Some(limit), Some(used)) = (
                read(&format!("{at}/{limit_file}")),
                read(&format!("{at}/{usage_file}")),
            ) {
                let room = limit.saturating_sub(used);
                least = Some(least.map_or(room, |l| l.min(room)));
            }
            match dir.rfind('/') {
                Some(cut) if !dir.is_empty() => dir.truncate(cut),
                _ => break,
            }
        }
    }
    least
}

/// The machine's physical memory in bytes (`sysconf(_SC_PHYS_PAGES)` times
/// the page size), `None` if it cannot be read.
pub(crate) fn physical_memory() -> Option<u64> {
    // Raw libc: sysconf is the C library's (rustix has no wrapper for it).
    // SAFETY: sysconf reads a configuration value and has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let pages = u64::try_from(pages).ok().filter(|&p| p > 0)?;
    pages.checked_mul(u64::try_from(page).ok().filter(|&p| p > 0)?)
}

/// Room left under this process's address-space limit (RLIMIT_AS,
/// `ulimit -v`): the limit less the address space mapped now (`VmSize` in
/// `/proc/self/status`). `None` when there is no limit or it cannot be read.
pub(crate) fn address_space_left() -> Option<u64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::As).current?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line["VmSize:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(limit.saturating_sub(kib.checked_mul(1024)?))
}

/// Whether this process has an address-space limit (RLIMIT_AS, `ulimit
/// -v`): one `getrlimit`, to skip reading `/proc` when it has none.
pub(crate) fn has_address_space_limit() -> bool {
    rustix::process::getrlimit(rustix::process::Resource::As)
        .current
        .is_some()
}

/// Writes all of `bytes` into the file at `offset` (`pwrite`, retried on
/// short writes and EINTR): filling a memfd this way copies into its pages
/// without faulting them into a mapping one by one.
pub(crate) fn pwrite_all(fd: BorrowedFd<'_>, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    let end = offset.checked_add(bytes.len() as u64);
    check_file_size_limit(end.ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?)?;
    while !bytes.is_empty() {
        let n = rustix::io::retry_on_intr(|| rustix::io::pwrite(fd, bytes, offset))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Reads exactly `len` bytes of the file at `offset` into the spare capacity
/// of `out` (`pread`, retried on short reads and EINTR), which must have room
/// for them; `out`'s length grows by what was read. A file that ends early
/// is an `UnexpectedEof` error (what was read stays in `out`).
pub(crate) fn pread_exact_into(
    fd: BorrowedFd<'_>,
    out: &mut Vec<u8>,
    len: usize,
    mut offset: u64,
) -> io::Result<()> {
    if out.capacity() - out.len() < len {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let end = out.len() + len;
    while out.len() < end {
        let want = end - out.len();
        let spare = &mut out.spare_capacity_mut()[..want];
        let n = match rustix::io::pread(fd, spare, offset) {
            Ok((filled, _)) => filled.len(),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: `pread` initialized the first `n` spare bytes.
        unsafe { out.set_len(out.len() + n) };
        offset += n as u64;
    }
    Ok(())
}

/// Seals a memfd against shrinking and growing (and further sealing), so that a
/// worker cannot truncate the segment under the parent's mapping.
pub(crate) fn seal_size(fd: BorrowedFd<'_>) -> io::Result<()> {
    let seals = SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    Ok(rustix::fs::fcntl_add_seals(fd, seals)?)
}

/// Whether `fd` is a memfd whose size is sealed (shrink and grow): the only
/// kind of file corepool maps on another process's word.
pub(crate) fn is_size_sealed(fd: BorrowedFd<'_>) -> bool {
    // F_GET_SEALS fails with EINVAL on anything but a memfd/shmem file.
    rustix::fs::fcntl_get_seals(fd)
        .is_ok_and(|seals| seals.contains(SealFlags::SHRINK | SealFlags::GROW))
}

/// Seals a memfd against any change: writing (`F_SEAL_WRITE`), shrinking,
/// growing and further sealing. Fails with EBUSY while a writable shared
/// mapping of it exists anywhere: once it succeeds, no process can change a
/// byte of it again.
pub(crate) fn seal_contents(fd: BorrowedFd<'_>) -> io::Result<()> {
    let seals = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    Ok(rustix::fs::fcntl_add_seals(fd, seals)?)
}

/// Whether `fd` is a memfd sealed by [`seal_contents`] (write, shrink and
/// grow; `F_SEAL_FUTURE_WRITE` is not enough: a mapping made before it may
/// still write).
pub(crate) fn is_contents_sealed(fd: BorrowedFd<'_>) -> bool {
    // F_GET_SEALS fails with EINVAL on anything but a memfd/shmem file.
    rustix::fs::fcntl_get_seals(fd)
        .is_ok_and(|seals| seals.contains(SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW))
}

/// Seals a memfd against shrinking (and further sealing) but not growing:
/// the backing file of an unbounded queue, which its producers extend while
/// every process keeps its mappings valid.
pub(crate) fn seal_shrink_only(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fcntl_add_seals(
        fd,
        SealFlags::SHRINK | SealFlags::SEAL,
    )?)
}

/// Whether `fd` is a memfd sealed against shrinking: the file of an
/// unbounded queue may grow but never shrink under a mapping.
pub(crate) fn is_shrink_sealed(fd: BorrowedFd<'_>) -> bool {
    // F_GET_SEALS fails with EINVAL on anything but a memfd/shmem file.
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| seals.contains(SealFlags::SHRINK))
}

/// Reserves backing store for `len` bytes at `offset` (see [`fallocate`]),
/// growing the file if it ends before them.
pub(crate) fn fallocate_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
    offset
        .checked_add(len)
        .and_then(|end| i64::try_from(end).ok())
        .ok_or_else(too_large)?;
    check_file_size_limit(offset + len)?;
    check_memory_for(len)?;
    rustix::io::retry_on_intr(|| rustix::fs::fallocate(fd, FallocateFlags::empty(), offset, len))?;
    Ok(())
}

/// Gives the memory of `len` bytes at `offset` back (`FALLOC_FL_PUNCH_HOLE`):
/// the file keeps its size, the range reads as zeros and costs nothing until
/// written again.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    rustix::io::retry_on_intr(|| rustix::fs::fallocate(fd, flags, offset, len))?;
    Ok(())
}

/// The system's page size (`sysconf(_SC_PAGESIZE)`, read once; 4096 if it
/// cannot be read): the unit in which a punched range gives memory back.
pub(crate) fn page_size() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PAGE: AtomicU64 = AtomicU64::new(0);
    // Relaxed: a value every thread computes alike; racing stores agree.
    let known = PAGE.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    // Raw libc: sysconf is the C library's (rustix has no wrapper for it).
    // SAFETY: sysconf reads a configuration value and has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    PAGE.store(page, Ordering::Relaxed);
    page
}

/// Whether every byte of the `len` bytes at `offset` of the file behind `fd`
/// holds data (`lseek` with `SEEK_DATA` and `SEEK_HOLE`): none of it is a
/// hole, which would read as zeros without memory behind it. A range that
/// starts at or past the end of the file holds none (`ENXIO`).
pub(crate) fn is_range_backed(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<bool> {
    use rustix::fs::SeekFrom;
    let Some(end) = offset.checked_add(len) else {
        return Ok(false);
    };
    if len == 0 {
        return Ok(true);
    }
    let data = match rustix::fs::seek(fd, SeekFrom::Data(offset)) {
        Ok(at) => at,
        Err(Errno::NXIO) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if data != offset {
        return Ok(false);
    }
    let hole = match rustix::fs::seek(fd, SeekFrom::Hole(offset)) {
        Ok(at) => at,
        Err(Errno::NXIO) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(hole >= end)
}

/// Size of the file behind `fd` and its (device, inode) identity.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let st = rustix::fs::fstat(fd)?;
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        // The kernel never reports a negative size; should it, the file
        // counts as empty, which every caller treats as too small.
        size: u64::try_from(st.st_size).unwrap_or(0),
        // Only compared for equality: the wrap of a pre-1970 time is harmless.
        mtime_ns: (i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec)) as u64,
    })
}

/// `statfs`'s `f_type` for tmpfs/shmem (linux/magic.h), where every plain
/// memfd lives.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Whether the file behind `fd` lives on tmpfs/shmem (`fstatfs`), as a
/// plain memfd does. A memfd made with `MFD_HUGETLB` lives on hugetlbfs
/// instead, where `lseek(SEEK_DATA/SEEK_HOLE)` calls every byte data and
/// `st_blocks` need not count what is there: a handle naming such a file
/// names memory nobody can vouch for. Works on an `O_PATH` descriptor.
pub(crate) fn is_shmem(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::fstatfs(fd)?;
    // `f_type`'s C type differs between architectures (a signed long on
    // most); the magic numbers fit in 32 bits, so compare them as such.
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as u64 & 0xffff_ffff;
    Ok(kind == TMPFS_MAGIC)
}

/// Tests: a hugetlbfs memfd named as a queue's value file, `size` bytes
/// long (a multiple of the huge page size) and holding no memory, sealed
/// against shrinking, as a hostile process could make one; `None` where
/// the kernel has no hugetlbfs.
#[cfg(all(test, not(miri)))]
pub(crate) fn hugetlb_memfd(size: u64) -> Option<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB;
    let fd = rustix::fs::memfd_create(c"corepool-queue-values", flags).ok()?;
    rustix::fs::ftruncate(&fd, size).ok()?;
    seal_shrink_only(std::os::fd::AsFd::as_fd(&fd)).ok()?;
    Some(fd)
}

/// Size of the file behind `fd` and the bytes of memory allocated to it
/// (`st_blocks` * 512), from one `fstat`.
pub(crate) fn size_and_allocated(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((
        u64::try_from(st.st_size).unwrap_or(0),
        u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
    ))
}

/// Bytes of memory really allocated to the file behind `fd` (its blocks):
/// less than its size for a sparse file.
pub(crate) fn allocated_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    Ok(u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512))
}

/// The (device, inode) of the file `path` names, following symbolic links
/// (`stat`): for `/proc/<pid>/fd/<n>`, the file that descriptor holds.
pub(crate) fn path_identity(path: &str) -> io::Result<(u64, u64)> {
    let st = rustix::fs::stat(path)?;
    Ok((st.st_dev, st.st_ino))
}

/// What `fstat` tells about a file: enough to recognise it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: u64,
}

/// Clears `FD_CLOEXEC` on `fd`, a descriptor this process holds open.
/// Async-signal-safe: used between fork and exec (the spawn path for C
/// libraries whose `posix_spawn` cannot do it, see [`spawn_reexec`]).
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    set_fd_flags(fd, FdFlags::empty())
}

/// Closes descriptor number `fd` of this process, which must own nothing
/// that refers to it: used between fork and exec (as [`clear_cloexec`]),
/// where the child drops what it must not inherit. Async-signal-safe.
pub(crate) fn close_number(fd: RawFd) {
    // Raw libc: rustix's `close` takes an `OwnedFd`'s number by contract of
    // ownership, which a bare number in a forked child is not.
    // SAFETY: in the forked child before exec nothing of the program runs
    // again, so no owner of `fd` is left to use or close it.
    unsafe { libc::close(fd) };
}

/// Makes the calling process the leader of a new process group, so that the
/// processes its tasks start can be killed with it. Async-signal-safe: used
/// between fork and exec (as [`clear_cloexec`]).
pub(crate) fn new_process_group() -> io::Result<()> {
    Ok(rustix::process::setpgid(None, None)?)
}

/// Sets `FD_CLOEXEC` on `fd`, a descriptor this process was handed, so that
/// it is not passed on to processes the worker's tasks start.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    set_fd_flags(fd, FdFlags::CLOEXEC)
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills this process when the
/// thread that started it exits. A child arms it itself, first thing on its
/// way in (`entry.rs`).
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        Signal::KILL,
    ))?)
}

/// Registers `handler` to run when the program exits through `exit` (main
/// returning, `std::process::exit`), not on `_exit` or a signal. glibc's
/// `atexit` ties the handler to the object that registered it (run at its
/// `dlclose` too, should a library be unloaded).
pub(crate) fn at_exit(handler: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `handler` is a plain `extern "C" fn()` that lives as long as
    // this object does, which is all `atexit` asks.
    match unsafe { libc::atexit(handler) } {
        0 => Ok(()),
        _ => Err(io::Error::from(io::ErrorKind::OutOfMemory)),
    }
}

/// Names this process (its main thread: call it before any other starts)
/// after the program, as `ps`, `top` and `pgrep` show it: a child is
/// started through `/proc/self/exe`, and the kernel names a process after
/// the file it executed, so every worker would otherwise be `exe`. The
/// name is the last component of `argv[0]` (the program's name, which the
/// child is given), cut to the kernel's 15 bytes.
pub(crate) fn name_after_program() {
    use std::os::unix::ffi::OsStrExt;
    let Some(arg0) = std::env::args_os().next() else {
        return;
    };
    let base = arg0
        .as_bytes()
        .rsplit(|&b| b == b'/')
        .next()
        .unwrap_or_default();
    let mut name: Vec<u8> = base.iter().copied().filter(|&b| b != 0).take(15).collect();
    if name.is_empty() {
        return;
    }
    name.push(0);
    if let Ok(name) = std::ffi::CStr::from_bytes_with_nul(&name) {
        // A failure leaves the kernel's name: nothing depends on it.
        let _ = rustix::thread::set_name(name);
    }
}

/// A set of CPUs in the kernel's fixed-size mask: `Copy` and allocation-free,
/// so a child can be pinned to it between fork and exec.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuMask(CpuSet);

impl CpuMask {
    /// The set of `cpus`. A CPU the mask cannot hold (beyond the kernel's
    /// `CPU_SETSIZE`) is left out: no allowed CPU is, and pinning to a set
    /// left empty fails with EINVAL, as the kernel answers for such a CPU.
    pub(crate) fn of(cpus: &[usize]) -> Self {
        let mut set = CpuSet::new();
        for &cpu in cpus.iter().filter(|&&cpu| cpu < CpuSet::MAX_CPU) {
            set.set(cpu);
        }
        Self(set)
    }

    /// The CPUs in the set, ascending.
    pub(crate) fn cpus(&self) -> Vec<usize> {
        (0..CpuSet::MAX_CPU)
            .filter(|&cpu| self.0.is_set(cpu))
            .collect()
    }

    /// Whether `cpu` is in the set.
    pub(crate) fn contains(&self, cpu: usize) -> bool {
        cpu < CpuSet::MAX_CPU && self.0.is_set(cpu)
    }

    /// The lowest CPU in the set (to name it in an error).
    pub(crate) fn first(&self) -> Option<usize> {
        (0..CpuSet::MAX_CPU).find(|&cpu| self.0.is_set(cpu))
    }
}

impl std::fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.cpus()).finish()
    }
}

/// Pins the calling thread (and so, before exec, the whole new process) to
/// the CPUs of `cpus`. Async-signal-safe and allocation-free (the mask is
/// `Copy`, on the stack): used between fork and exec. An empty set fails
/// with EINVAL.
pub(crate) fn pin_self_to(cpus: &CpuMask) -> io::Result<()> {
    Ok(rustix::thread::sched_setaffinity(None, &cpus.0)?)
}

/// Pins process `pid` (its main thread, which every thread it starts later
/// inherits the mask from) to the CPUs of `cpus`.
pub(crate) fn pin_process_to(pid: i32, cpus: &CpuMask) -> io::Result<()> {
    let pid = Pid::from_raw(pid).ok_or(io::ErrorKind::InvalidInput)?;
    Ok(rustix::thread::sched_setaffinity(Some(pid), &cpus.0)?)
}

/// The CPUs process (or thread) `pid` may run on; `pid == 0` means the caller.
pub(crate) fn affinity_of(pid: i32) -> io::Result<Vec<usize>> {
    let target = match pid {
        0 => None,
        // As the kernel answers for a pid it cannot find.
        _ => Some(positive_pid(pid).ok_or(Errno::SRCH)?),
    };
    let set = rustix::thread::sched_getaffinity(target)?;
    Ok((0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// The CPU the calling thread runs on right now.
///
/// glibc's `sched_getcpu`, not rustix's: glibc reads the CPU from the
/// thread's registered rseq area (a load), where rustix makes the `getcpu`
/// system call, 50-100 ns on a VM; the pool asks on every dispatch.
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: `sched_getcpu` takes no arguments and only reads the calling
    // thread's own state; -1 (with errno set) means it could not tell.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Waits while `*word == expected`, at most `timeout` (forever if `None`).
/// Spurious returns are allowed; callers re-check their condition.
///
/// The word must live in memory shared with the waker (it may be a `MAP_SHARED`
/// mapping, so the futex is not `FUTEX_PRIVATE`).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let timeout = timeout.map(|d| Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    });
    // The result is ignored on purpose: EAGAIN, EINTR and ETIMEDOUT all mean
    // "re-check".
    let _ = futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref());
}

/// Wakes every waiter on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// How many words one [`futex_wait_any`] takes (the kernel's
/// `FUTEX_WAITV_MAX`).
pub(crate) const FUTEX_WAIT_ANY_MAX: usize = 128;

/// Waits while every `*word == expected` of `words`, at most `timeout`
/// (forever if `None`): `futex_waitv(2)`, Linux 5.16 and later. Spurious
/// returns are allowed; callers re-check their conditions. The words may
/// live in shared mappings (not `FUTEX2_PRIVATE`).
///
/// # Errors
///
/// `ENOSYS` on an older kernel and `EINVAL` for more than
/// [`FUTEX_WAIT_ANY_MAX`] words: the caller waits some other way. Wake-ups,
/// timeouts, signals and a word that already changed are `Ok`.
pub(crate) fn futex_wait_any(
    words: &[(&AtomicU32, u32)],
    timeout: Option<Duration>,
) -> io::Result<()> {
    let waiters: Vec<futex::Wait> = words
        .iter()
        .map(|&(word, expected)| {
            let mut w = futex::Wait::new();
            w.val = u64::from(expected);
            w.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
            w.flags = futex::WaitFlags::SIZE_U32;
            w
        })
        .collect();
    // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
    let deadline = timeout.map(|t| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let nanos = u64::try_from(now.tv_nsec).unwrap_or(0) + u64::from(t.subsec_nanos());
        Timespec {
            tv_sec: i64::try_from(t.as_secs())
                .unwrap_or(i64::MAX / 2)
                .saturating_add(now.tv_sec)
                .saturating_add((nanos / 1_000_000_000) as i64),
            tv_nsec: (nanos % 1_000_000_000) as i64,
        }
    });
    match futex::waitv(
        &waiters,
        futex::WaitvFlags::empty(),
        deadline.as_ref(),
        futex::ClockId::Monotonic,
    ) {
        Ok(_) | Err(Errno::AGAIN | Errno::TIMEDOUT | Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `pidfd_open(pid)`: a descriptor that becomes readable when `pid` exits.
/// Works on a zombie too, so there is no race with an early death.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // The kernel answers EINVAL for a pid that is not positive.
    let pid = positive_pid(pid).ok_or(Errno::INVAL)?;
    above_stdio(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `signal` through a pidfd: never reaches a process that merely
/// reused the pid. ESRCH (already exited and reaped) is not an error, as
/// for `std::process::Child::kill`: the signal's purpose is served.
///
/// The one error in practice is EPERM: the program changed its
/// credentials since it started that process (it dropped root, say), or
/// the process changed its own. Such a process cannot be signalled by us
/// at all, and whoever would wait for its death must not.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// [`pidfd_signal`] for the engine's own kills: false only when the kernel
/// refused for lack of permission (EPERM), true for every other answer.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> bool {
    !matches!(pidfd_signal(pidfd, signal), Err(err) if err.raw_os_error() == Some(libc::EPERM))
}

/// An `eventfd` used to wake a thread blocked in [`poll_readable`].
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
    above_stdio(rustix::event::eventfd(0, flags)?)
}

/// Adds one to an eventfd's counter, waking its poller.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    // A full counter (EAGAIN) already means "readable", which is all the
    // poller needs.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets an eventfd's counter to zero.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    // EAGAIN (already zero) is fine.
    let _ = rustix::io::read(fd, &mut [0u8; 8]);
}

/// Blocks until at least one of `fds` is readable (or hung up); returns, for each
/// descriptor, whether it is. EINTR returns with nothing ready.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    ready: &mut Vec<bool>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    // Whole milliseconds, at least one, as poll(2) counts them: a sub-
    // millisecond timeout does not become a busy loop.
    let timeout = timeout.map(|t| {
        let ms = t.as_millis().clamp(1, i32::MAX as u128) as i64;
        Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        }
    });
    ready.clear();
    match rustix::event::poll(&mut pfds, timeout.as_ref()) {
        Ok(_) => {
            ready.extend(pfds.iter().map(|p| !p.revents().is_empty()));
            Ok(())
        }
        Err(Errno::INTR) => {
            ready.resize(fds.len(), false);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to every process in process group `pgid` (a worker and
/// whatever its tasks started). ESRCH (already gone) is not an error.
///
/// Returns false only when the kernel refused for lack of permission
/// (EPERM, which `kill` answers only if no process of the group could be
/// signalled), as [`pidfd_send_signal`] does.
pub(crate) fn kill_group(pgid: i32, signal: Signal) -> bool {
    if pgid <= 1 {
        return true; // never our own group, init's, or everyone
    }
    match positive_pid(pgid) {
        Some(pgid) => !matches!(
            rustix::process::kill_process_group(pgid, signal),
            Err(Errno::PERM)
        ),
        None => true,
    }
}

/// `fork()`: `Some(child)` in the parent, `None` in the child.
///
/// Raw libc: rustix offers fork only in its unstable `runtime` module, and
/// that one skips the C library's `pthread_atfork` handlers, which
/// [`current_pid`] relies on.
///
/// # Safety
///
/// The calling process must have exactly one thread, this one. The child of
/// a multithreaded fork has only the forking thread, so a lock another
/// thread held (the allocator's, stdio's, the environment's) stays held
/// forever there, and its data may be half-updated: the child could then
/// call only async-signal-safe functions until it execs. The daemon path
/// checks the thread count before it forks.
pub(crate) unsafe fn fork() -> io::Result<Option<i32>> {
    // SAFETY: the caller guarantees this process has one thread, so the child
    // inherits no lock held by a thread that does not exist there.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        child => Ok(Some(child)),
    }
}

/// Waits for child `pid` (positive) to exit (reaps it), retrying on EINTR.
pub(crate) fn wait_for(pid: i32) {
    let Some(pid) = positive_pid(pid) else {
        return; // zero or negative would wait for a whole group
    };
    let _ = rustix::io::retry_on_intr(|| rustix::process::waitpid(Some(pid), WaitOptions::empty()));
}

/// `setsid()`: a new session and process group, no controlling terminal.
pub(crate) fn setsid() -> io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// Sets the file-creation mask.
pub(crate) fn set_umask(mask: u32) {
    rustix::process::umask(Mode::from_raw_mode(mask));
}

/// An exclusive write lock on the whole file, without blocking, owned by
/// the open file description (`F_OFD_SETLK`): `Ok(true)` if we now hold it,
/// `Ok(false)` if another open file holds a conflicting lock.
///
/// Unlike `flock`, a write lock needs `fd` open for writing, so a process
/// that can merely read the file cannot take it; unlike a classic `fcntl`
/// lock, it belongs to the open file, so it survives `fork` (the daemon
/// inherits the caller's lock) and is not dropped when some other
/// descriptor of the same file is closed.
pub(crate) fn ofd_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut lock = whole_file_lock(libc::F_WRLCK);
    // SAFETY: fcntl on a live descriptor with a pointer to a live, fully
    // initialised `flock`; the kernel only reads it for F_OFD_SETLK.
    // (rustix wraps only process-associated `fcntl` locks, which a forked
    // daemon would not inherit, so this one call stays raw.)
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut lock) };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Whether another open file holds a lock that conflicts with an exclusive
/// write lock on the whole file (`F_OFD_GETLK`). Works on a descriptor
/// opened read-only.
pub(crate) fn ofd_lock_is_held(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut lock = whole_file_lock(libc::F_WRLCK);
    // SAFETY: as in `ofd_lock_exclusive`; for F_OFD_GETLK the kernel writes
    // the conflicting lock (or F_UNLCK) back into our live `flock`.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

fn whole_file_lock(kind: libc::c_int) -> libc::flock {
    // SAFETY: all-zero bytes are a valid `flock` (plain C data): start 0,
    // length 0 (the whole file, however it grows), pid 0 (required by the
    // OFD commands).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// `O_NOFOLLOW`, for [`std::os::unix::fs::OpenOptionsExt::custom_flags`]:
/// opening a path whose last component is a symbolic link fails (ELOOP).
pub(crate) const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// ELOOP's number: what opening a symbolic link with [`O_NOFOLLOW`] fails with.
pub(crate) const ELOOP: i32 = Errno::LOOP.raw_os_error();

/// The effective user id of this process: the owner of the files it creates.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, an identity no later process shares.
/// An error means "could not tell", never "gone".
pub(crate) fn process_start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: parse after the
    // last ')'. Then state is field 3, so start time is the 20th after it.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    Ok((above_stdio(read)?, above_stdio(write)?))
}

/// `dup2(from, to)` onto a standard stream: `to` is 0, 1 or 2 (anything else
/// is refused with `InvalidInput`).
pub(crate) fn dup_onto(from: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    match to {
        0 => rustix::stdio::dup2_stdin(from)?,
        1 => rustix::stdio::dup2_stdout(from)?,
        2 => rustix::stdio::dup2_stderr(from)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only the standard streams (0, 1, 2) are replaced",
            ))
        }
    }
    Ok(())
}

/// The parent's pid, as the kernel sees it now (0 if there is none to see,
/// as from inside a pid namespace whose parent is outside it).
pub(crate) fn getppid() -> i32 {
    Pid::as_raw(rustix::process::getppid())
}

/// Names of signals, for messages.
pub(crate) fn signal_name(sig: i32) -> String {
    // Raw libc: strsignal is a C library function (a table of texts), not a
    // system call; rustix and nix have no wrapper.
    // SAFETY: strsignal returns a pointer to a static or thread-local string,
    // valid until the next call on this thread; we copy it at once.
    let ptr = unsafe { libc::strsignal(sig) };
    let desc = if ptr.is_null() {
        String::from("unknown signal")
    } else {
        // SAFETY: non-null, NUL-terminated, copied before any other call.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    };
    let short = match Signal::from_named_raw(sig) {
        Some(Signal::KILL) => "SIGKILL",
        Some(Signal::SEGV) => "SIGSEGV",
        Some(Signal::ABORT) => "SIGABRT",
        Some(Signal::TERM) => "SIGTERM",
        Some(Signal::BUS) => "SIGBUS",
        Some(Signal::ILL) => "SIGILL",
        Some(Signal::FPE) => "SIGFPE",
        Some(Signal::INT) => "SIGINT",
        _ => "",
    };
    if short.is_empty() {
        format!("signal {sig} ({desc})")
    } else {
        format!("{short} ({desc})")
    }
}

/// Exits at once, without running destructors or atexit handlers: a worker that
/// must not touch state it shares with the parent's stdio buffers on the way out.
pub(crate) fn exit_now(code: i32) -> ! {
    // Raw libc: rustix keeps `exit_group` in its unstable `runtime` module.
    // SAFETY: _exit never returns and takes an integer.
    unsafe { libc::_exit(code) }
}

/// [`current_pid`]'s cache (0: not known yet). Module-level so that a child
/// made by the fork server's raw `clone`, which runs no `pthread_atfork`
/// handler, can clear it too ([`forget_cached_pid`]).
static PID: AtomicU32 = AtomicU32::new(0);

/// This process's pid, cached: `getpid` is a real system call (glibc stopped
/// caching it), and the queue and pipe tag every slot they touch with it.
/// A `pthread_atfork` child handler clears the cache, so a forked child
/// (ours in the daemon path, or the user's own `fork`) asks the kernel again.
pub(crate) fn current_pid() -> u32 {
    use std::sync::atomic::Ordering;
    use std::sync::Once;
    static AT_FORK: Once = Once::new();

    extern "C" fn forget_pid() {
        // Relaxed: the child has one thread, the one running this handler.
        PID.store(0, Ordering::Relaxed);
    }

    // Relaxed: the value is the same whichever thread stored it.
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    AT_FORK.call_once(|| {
        // Raw libc: pthread_atfork registers with the C library's fork, not
        // the kernel; rustix and nix have no wrapper.
        // SAFETY: registers a handler that only does an atomic store, which
        // is async-signal-safe and valid in the child of a fork.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

// ---------------------------------------------------------------------------
// Added for the child supervisor (src/child/supervisor.rs): a look at a
// child's exit that does not reap it.
// ---------------------------------------------------------------------------

/// Whether child `pid` has exited, without reaping it (`waitid` with
/// `WNOWAIT | WNOHANG`): while it stays unreaped its pid, and the process
/// group it leads, cannot be reused. `Ok(false)` means it is still running;
/// an error (ECHILD: not, or no longer, our child to wait for) is no answer
/// about whether it lives.
pub(crate) fn has_exited(pid: i32) -> io::Result<bool> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(Errno::CHILD))?;
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        // With NOHANG, `None` means no child of that pid has changed state.
        match rustix::process::waitid(WaitId::Pid(pid), options) {
            Ok(status) => return Ok(status.is_some()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------
// Added for liveness (src/shm/owner.rs): whether a process is definitely
// gone, what it is (state and start time), and the checks that keep a
// hostile handle or environment from steering us.
// ---------------------------------------------------------------------------

/// Whether process `pid` definitely does not exist: `kill(pid, 0)` failed
/// with ESRCH. Any other answer (success, EPERM for another user's process)
/// means it exists, or that we cannot tell; a pid that is not positive names
/// no single process, and is never "gone" here (callers decide about it).
/// Needs no descriptor and no `/proc`.
pub(crate) fn process_is_gone(pid: i32) -> bool {
    positive_pid(pid).is_some_and(|pid| rustix::process::test_kill_process(pid) == Err(Errno::SRCH))
}

/// Whether process `pid` has definitely ended: gone ([`process_is_gone`]),
/// or a zombie waiting to be reaped. For a child that finds it was
/// reparented: did the parent that started it end (nobody to serve, nothing
/// to say), or is it the child of someone else? "Could not tell" is false.
pub(crate) fn process_has_ended(pid: i32) -> bool {
    process_is_gone(pid) || matches!(process_state_and_start_time(pid), Ok(('Z', _)))
}

/// Process `pid`'s state letter (`R`, `S`, `Z` for a zombie, ...) and start
/// time in clock ticks since boot (fields 3 and 22 of `/proc/<pid>/stat`).
/// An error (no descriptor left, `/proc` hidden or absent) means "could not
/// tell", never "gone".
pub(crate) fn process_state_and_start_time(pid: i32) -> io::Result<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: parse after the
    // last ')'. State is field 3, the first after it; start time the 20th.
    let mut fields = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
        .into_iter()
        .flatten();
    let state = fields.next().and_then(|s| s.chars().next());
    let start = fields.nth(18).and_then(|field| field.parse().ok());
    state
        .zip(start)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
}

/// A mapped file as `/proc/<pid>/maps` names it: its device (`major:minor`,
/// as the kernel prints it) and inode. The same file reads the same in every
/// process's `maps`, whatever `fstat` says about it (an overlay's or another
/// numbering of the device), so it is taken from our own `maps`
/// ([`mapped_file_at`]), never built from `fstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MappedFile {
    device: (u32, u32),
    inode: u64,
}

/// One line of a `maps` file, `start-end perms offset major:minor inode
/// [path]` (numbers hex but the inode): the address range and the file.
/// `None` if the line does not read so.
fn parse_maps_line(line: &[u8]) -> Option<(usize, usize, MappedFile)> {
    let mut fields = line
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .map(|f| std::str::from_utf8(f).ok());
    let range = fields.next()??;
    let _perms = fields.next()??;
    let _offset = fields.next()??;
    let device = fields.next()??;
    let inode = fields.next()??;
    let (start, end) = range.split_once('-')?;
    let (major, minor) = device.split_once(':')?;
    Some((
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
        MappedFile {
            device: (
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
            ),
            inode: inode.trim_end().parse().ok()?,
        },
    ))
}

/// Calls `visit` with each line of `/proc/<who>/maps` (without its newline)
/// until it returns `Some`. A line that does not parse is an error: a
/// caller must not conclude from a listing it could not read whole.
fn scan_maps<R>(
    who: &str,
    mut visit: impl FnMut(usize, usize, MappedFile) -> Option<R>,
) -> io::Result<Option<R>> {
    use std::io::BufRead;
    let file = std::fs::File::open(format!("/proc/{who}/maps"))?;
    let mut lines = io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let (start, end, file) = parse_maps_line(text).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/maps")
        })?;
        if let Some(found) = visit(start, end, file) {
            return Ok(Some(found));
        }
    }
}

/// The file whose mapping in this process holds address `addr`, from
/// `/proc/self/maps`; `None` if no mapping of a file holds it (heap or other
/// anonymous memory: inode 0). An error means "could not tell".
pub(crate) fn mapped_file_at(addr: usize) -> io::Result<Option<MappedFile>> {
    let found = scan_maps("self", |start, end, file| {
        (start <= addr && addr < end).then_some(file)
    })?;
    Ok(found.filter(|file| file.inode != 0))
}

/// Whether process `pid` maps `file` anywhere (a line of its
/// `/proc/<pid>/maps` names it). Each line is read under the process's
/// memory-map lock, in address order, so a mapping it keeps throughout is
/// listed. An error (not ours to read: another user's or a non-dumpable
/// process, no descriptor left, `/proc` hidden or absent, the process gone)
/// means "could not tell", never "does not map it".
pub(crate) fn process_maps(pid: i32, file: MappedFile) -> io::Result<bool> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a process id",
        ));
    }
    let found = scan_maps(&pid.to_string(), |_, _, mapped| {
        (mapped == file).then_some(())
    })?;
    Ok(found.is_some())
}

/// Whether this process runs with elevated privileges it did not inherit
/// (a setuid, setgid or file-capability binary): the kernel's `AT_SECURE`
/// auxiliary-vector entry. Such a process must not let its environment or
/// inherited descriptors choose what it runs.
pub(crate) fn is_secure_execution() -> bool {
    // Raw libc: rustix reads the auxiliary vector only with its `param`
    // feature, which corepool does not build.
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave this
    // process; an absent entry returns 0.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// `open(path, O_PATH | O_CLOEXEC)`: a descriptor that names the file without
/// opening it for reading or writing. Nothing on the file runs: a FIFO does
/// not wait for a peer, a device's driver is not called, a lease is not
/// broken. Only `fstat`, `readlink` through `/proc/self/fd` and reopening
/// work on it.
pub(crate) fn open_path_only(path: &str) -> io::Result<OwnedFd> {
    use rustix::fs::OFlags;
    above_stdio(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Whether `fd` (also one from [`open_path_only`]) is a regular file: not
/// a FIFO, a device, a socket or a directory.
pub(crate) fn is_regular_file(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile)
}

/// Where `/proc` says descriptor `fd` of this process points: a path, or
/// `/memfd:<name> (deleted)` for a memfd.
pub(crate) fn descriptor_target(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let target = rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new())?;
    Ok(target.into_bytes())
}

/// Opens the file `path_only` names for reading and writing, without
/// waiting: `O_NONBLOCK`, so that a lease on it makes this fail with
/// EWOULDBLOCK rather than wait for the lease holder, and `O_NOCTTY`.
pub(crate) fn reopen_read_write(path_only: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::fs::OFlags;
    above_stdio(rustix::fs::open(
        format!("/proc/self/fd/{}", path_only.as_raw_fd()),
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the file `path_only` names for reading only, without waiting (as
/// [`reopen_read_write`]).
pub(crate) fn reopen_read_only(path_only: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::fs::OFlags;
    above_stdio(rustix::fs::open(
        format!("/proc/self/fd/{}", path_only.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Stops this process (SIGSTOP) until someone sends it SIGCONT: for the
/// test hooks that freeze a process in the middle of a claim.
#[cfg(feature = "fault-injection")]
pub(crate) fn stop_self() {
    let me = Pid::from_raw(current_pid() as i32);
    if let Some(me) = me {
        let _ = rustix::process::kill_process(me, Signal::STOP);
    }
}

// ---------------------------------------------------------------------------
// Added for the build fingerprint (src/child/fingerprint.rs): the loaded
// image of the main program, as the dynamic loader mapped it.
// ---------------------------------------------------------------------------

/// One segment of the main program's loaded image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageSegment {
    /// `p_type`: `PT_NOTE`, `PT_LOAD`, ...
    pub kind: u32,
    /// `p_flags`: `PF_X` for executable code.
    pub flags: u32,
    /// Its bytes as mapped (the file's part, `p_filesz`): the main program
    /// is never unloaded, so they live as long as the process.
    pub bytes: &'static [u8],
}

/// `PT_NOTE`: a segment of ELF notes (the GNU build-id is one).
pub(crate) const PT_NOTE: u32 = libc::PT_NOTE;
/// `PT_LOAD`: a segment mapped from the file.
pub(crate) const PT_LOAD: u32 = libc::PT_LOAD;
/// `PF_X`: the segment holds executable code.
pub(crate) const PF_X: u32 = libc::PF_X;

/// The segments of the main program (not of its shared libraries), from the
/// loader's own program headers: what is running, whatever happened to the
/// file since. Empty if the loader reports nothing.
#[cfg(not(miri))]
pub(crate) fn main_program_segments() -> Vec<ImageSegment> {
    use std::ffi::{c_int, c_void};

    /// The `dl_iterate_phdr` callback: records the first object's segments
    /// into `data` and stops.
    ///
    /// # Safety
    ///
    /// `info` must point to a valid `dl_phdr_info` (with `dlpi_phnum`
    /// program headers at `dlpi_phdr`) for the call, and `data` to a live
    /// `Vec<ImageSegment>` nothing else borrows: what `dl_iterate_phdr`
    /// passes, given the pointer below.
    unsafe extern "C" fn first_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `Vec` passed below, borrowed for the call;
        // `info` points to the loader's description of one loaded object,
        // valid during the callback. Its program headers describe segments
        // the loader mapped at `dlpi_addr + p_vaddr`, at least `p_filesz`
        // bytes each; the first object reported is the main program, which
        // stays mapped for the life of the process.
        unsafe {
            let out = &mut *data.cast::<Vec<ImageSegment>>();
            let info = &*info;
            for i in 0..usize::from(info.dlpi_phnum) {
                let header = &*info.dlpi_phdr.add(i);
                let start = (info.dlpi_addr as usize).wrapping_add(header.p_vaddr as usize);
                let len = header.p_filesz as usize;
                if start == 0 || len == 0 {
                    continue;
                }
                out.push(ImageSegment {
                    kind: header.p_type,
                    flags: header.p_flags,
                    bytes: std::slice::from_raw_parts(start as *const u8, len),
                });
            }
        }
        1 // stop: only the first object, the main program
    }

    let mut segments: Vec<ImageSegment> = Vec::new();
    // Raw libc: `dl_iterate_phdr` is the C library's loader interface, not a
    // system call; rustix has no wrapper.
    // SAFETY: the callback only reads what the loader hands it and writes to
    // `segments`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(first_object),
            (&mut segments as *mut Vec<ImageSegment>).cast::<c_void>(),
        );
    }
    segments
}

/// Miri has no dynamic loader to ask.
#[cfg(miri)]
pub(crate) fn main_program_segments() -> Vec<ImageSegment> {
    Vec::new()
}

// ---------------------------------------------------------------------------
// Added for the child entry (src/entry.rs): children are recognised before
// `main`, so before the Rust runtime's own set-up; these are the parts of it
// a child needs.
// ---------------------------------------------------------------------------

/// What the Rust runtime does before `main` and a child, entered earlier,
/// does for itself: descriptors 0, 1 and 2 are open (on `/dev/null` if they
/// were closed, so that no descriptor the child opens later becomes its
/// stdout), and `SIGPIPE` is ignored (a write to a closed pipe is an
/// `EPIPE` error, not death).
pub(crate) fn settle_like_the_rust_runtime() {
    for fd in 0..3 {
        // SAFETY: only asks whether the number is an open descriptor.
        let probe = unsafe { BorrowedFd::borrow_raw(fd) };
        if rustix::io::fcntl_getfd(probe) == Err(Errno::BADF) {
            // The lowest free number: `fd` itself. Leaked on purpose: it
            // stays open as that standard stream for the life of the process.
            if let Ok(null) =
                rustix::fs::open(c"/dev/null", rustix::fs::OFlags::RDWR, Mode::empty())
            {
                std::mem::forget(null);
            }
        }
    }
    // Raw libc: rustix keeps signal dispositions in its unstable `runtime`
    // module.
    // SAFETY: sets a disposition to SIG_IGN; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// What [`spawn_reexec`] starts: `path` with `argv` and the whole
/// environment `envp` (each `KEY=VALUE`), its stdin on `/dev/null`, and
/// `keep_fds` inherited (they are close-on-exec here).
pub(crate) struct SpawnRequest<'a> {
    pub path: &'a CStr,
    pub argv: &'a [std::ffi::CString],
    pub envp: &'a [std::ffi::CString],
    pub keep_fds: &'a [RawFd],
    /// Make the child the leader of a new process group.
    pub own_group: bool,
    /// Descriptors of this process (without close-on-exec) that the child
    /// must not inherit (the fork server's: [`inheritable_descriptors`]).
    pub close: &'a [RawFd],
}

/// This process's descriptors above the standard three that an exec'd child
/// would inherit (no close-on-exec), `keep` excepted: what the fork server
/// must not hold for the program's life, nor pass to every child it forks.
/// A best effort: a descriptor opened meanwhile by another thread without
/// close-on-exec may be missed, one closed meanwhile is skipped by the
/// spawn.
pub(crate) fn inheritable_descriptors(keep: RawFd) -> Vec<RawFd> {
    let Ok(listing) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    // Collected first: the listing's own descriptor (close-on-exec) is
    // closed before the flags are read.
    let numbers: Vec<RawFd> = listing
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    // A number at or above the soft descriptor limit (open from before the
    // limit was lowered) cannot be named in a spawn's close action (the C
    // library refuses it, EBADF, and the whole spawn with it): such a
    // descriptor stays inherited.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(RawFd::MAX, |n| RawFd::try_from(n).unwrap_or(RawFd::MAX));
    numbers
        .into_iter()
        .filter(|&fd| fd > 2 && fd != keep && fd < limit)
        .filter(|&fd| {
            // SAFETY: only reads the flags of a number, which may no longer
            // be open (EBADF: skipped).
            let probe = unsafe { BorrowedFd::borrow_raw(fd) };
            matches!(rustix::io::fcntl_getfd(probe), Ok(flags) if !flags.contains(rustix::io::FdFlags::CLOEXEC))
        })
        .collect()
}

/// Frees a `posix_spawn` attribute or file-action object when dropped.
struct SpawnObjects {
    actions: libc::posix_spawn_file_actions_t,
    attr: libc::posix_spawnattr_t,
    actions_ready: bool,
    attr_ready: bool,
}

impl Drop for SpawnObjects {
    fn drop(&mut self) {
        // SAFETY: each was initialised (the flag says so) and is destroyed
        // once, here.
        unsafe {
            if self.actions_ready {
                libc::posix_spawn_file_actions_destroy(&mut self.actions);
            }
            if self.attr_ready {
                libc::posix_spawnattr_destroy(&mut self.attr);
            }
        }
    }
}

/// `posix_spawn`: starts a child and returns its pid once it has exec'd (an
/// exec failure is this call's error). The C library creates the child with
/// `clone(CLONE_VM | CLONE_VFORK)`, so unlike `fork` it copies none of this
/// process's page tables: starting a child costs the same in a parent of
/// 1 GiB as in a small one, and makes no other thread of the parent take
/// the TLB shootdowns of copy-on-write. The child starts with an empty
/// signal mask and `SIGPIPE` at its default, and on the CPUs the calling
/// thread may run on (pin the calling thread to pin the child from its
/// first instruction).
///
/// Raw libc: `posix_spawn` is a C library function (rustix has no spawn).
/// Its file action `dup2(fd, fd)` for each of `keep_fds` clears `FD_CLOEXEC` in the child
/// only, so the descriptor never reaches children that other threads start
/// meanwhile; only where [`spawn_keeps_descriptors`] says so.
pub(crate) fn spawn_reexec(request: &SpawnRequest<'_>) -> io::Result<i32> {
    let rc = |code: libc::c_int| match code {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    };
    let mut argv: Vec<*mut libc::c_char> =
        request.argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> =
        request.envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    // SAFETY: both are plain C structs that their `_init` functions fill in
    // before any other use; zeroed memory is a valid placeholder until then.
    let mut objects: SpawnObjects = unsafe { std::mem::zeroed() };
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer handed over lives until this block ends: the
    // objects in `objects`, the strings in `request` (NUL-terminated
    // CStrings), the null-terminated pointer arrays `argv` and `envp`, and
    // the sigsets on this stack. posix_spawn only reads them (the child
    // copies nothing out of them after it execs).
    unsafe {
        rc(libc::posix_spawn_file_actions_init(&mut objects.actions))?;
        objects.actions_ready = true;
        rc(libc::posix_spawnattr_init(&mut objects.attr))?;
        objects.attr_ready = true;
        rc(libc::posix_spawn_file_actions_addopen(
            &mut objects.actions,
            0,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        ))?;
        // EBADF here can only mean that a kept descriptor, open in this process, is
        // numbered beyond the current RLIMIT_NOFILE (the C library checks
        // that): descriptors are short, which `fork` reported as EMFILE.
        for &fd in request.close {
            // glibc ignores EBADF of a close action (a descriptor closed
            // meanwhile by another thread).
            rc(libc::posix_spawn_file_actions_addclose(
                &mut objects.actions,
                fd,
            ))?;
        }
        for &fd in request.keep_fds {
            rc(libc::posix_spawn_file_actions_adddup2(
                &mut objects.actions,
                fd,
                fd,
            ))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBADF) => io::Error::from_raw_os_error(libc::EMFILE),
                _ => e,
            })?;
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        rc(libc::posix_spawnattr_setsigmask(&mut objects.attr, &empty))?;
        let mut defaults: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut defaults);
        libc::sigaddset(&mut defaults, libc::SIGPIPE);
        rc(libc::posix_spawnattr_setsigdefault(
            &mut objects.attr,
            &defaults,
        ))?;
        let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
        if request.own_group {
            rc(libc::posix_spawnattr_setpgroup(&mut objects.attr, 0))?;
            flags |= libc::POSIX_SPAWN_SETPGROUP;
        }
        rc(libc::posix_spawnattr_setflags(
            &mut objects.attr,
            flags as libc::c_short,
        ))?;
        rc(libc::posix_spawn(
            &mut pid,
            request.path.as_ptr(),
            &objects.actions,
            &objects.attr,
            argv.as_ptr(),
            envp.as_ptr(),
        ))?;
    }
    Ok(pid)
}

/// Whether [`spawn_reexec`] can pass a descriptor on: glibc clears
/// `FD_CLOEXEC` for a `dup2(fd, fd)` file action since 2.29 (Austin Group
/// issue 411). Other C libraries, and older glibc, get `false`: the caller
/// then forks and clears the flag itself between fork and exec.
pub(crate) fn spawn_keeps_descriptors() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // Raw libc: a C library function (its version), not a system call.
        // SAFETY: gnu_get_libc_version takes nothing and returns a pointer to
        // a static NUL-terminated string such as "2.36".
        let version = unsafe { CStr::from_ptr(libc::gnu_get_libc_version()) };
        let mut parts = version
            .to_str()
            .unwrap_or("")
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (2, 29)
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

/// `waitpid(pid, WNOHANG)`: child `pid`'s exit status if it has exited
/// (and reaps it), `None` while it runs. Retries on EINTR.
pub(crate) fn try_wait(pid: i32) -> io::Result<Option<std::process::ExitStatus>> {
    wait_status(pid, WaitOptions::NOHANG)
}

/// `waitpid(pid, 0)`: waits for child `pid` to exit, reaps it and returns
/// its exit status. Retries on EINTR.
pub(crate) fn wait_exit(pid: i32) -> io::Result<std::process::ExitStatus> {
    wait_status(pid, WaitOptions::empty())?
        .ok_or_else(|| io::Error::other("waitpid returned without a status"))
}

fn wait_status(pid: i32, options: WaitOptions) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    // Zero or negative would wait for a whole group.
    let pid = positive_pid(pid).ok_or(Errno::CHILD)?;
    let found = rustix::io::retry_on_intr(|| rustix::process::waitpid(Some(pid), options))?;
    Ok(found.map(|(_, status)| std::process::ExitStatus::from_raw(status.as_raw())))
}

/// Sends `signal` to child `pid`, which must not be reaped yet (so the pid
/// is still its own). ESRCH (already exited) is not an error.
pub(crate) fn signal_child(pid: i32, signal: Signal) {
    if let Some(pid) = positive_pid(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// `madvise(MADV_HUGEPAGE)` over the whole 2 MiB blocks inside
/// `addr..addr + len`: memory of this process's own (a large buffer about to
/// be written) is then faulted in a 2 MiB block at a time where the kernel
/// offers transparent huge pages, instead of one fault per 4 KiB page. Only
/// advice: the contents do not change, and a kernel without THP (or with it
/// off) refuses it harmlessly, so errors are ignored.
pub(crate) fn advise_huge_pages(addr: *const u8, len: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let start = (addr as usize).next_multiple_of(HUGE_PAGE);
    let end = (addr as usize).saturating_add(len) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return;
    }
    // SAFETY: MADV_HUGEPAGE only sets a flag on the mappings of the range
    // (which lies inside memory the caller owns, as it says); it reads and
    // writes no memory and changes no contents. rustix wraps `madvise` only
    // behind its `mm` feature, which this crate does not enable.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// `madvise(MADV_POPULATE_WRITE)` over the whole pages inside
/// `addr..addr + len`: faults them in writable now (Linux 5.14+), as a first
/// write would, so that the write itself later takes no fault. Contents do
/// not change (pages already present are left as they are; new ones are
/// zero, as a first write would have found them).
pub(crate) fn populate_write(addr: usize, len: usize) -> io::Result<()> {
    const PAGE: usize = 4096;
    let start = addr.next_multiple_of(PAGE);
    let end = addr.saturating_add(len) / PAGE * PAGE;
    if end <= start {
        return Ok(());
    }
    // SAFETY: MADV_POPULATE_WRITE makes the kernel resolve write faults on
    // the range without writing to it: no byte of user memory changes, so
    // no Rust object (ours or, had the range been freed and reused, anyone
    // else's) is affected. A range that is not mapped writable is refused
    // (ENOMEM, EFAULT, EINVAL) and reported.
    let rc = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------
// Added for the fork server (src/child/forkserver.rs and src/child/zygote.rs):
// unix sockets that carry descriptors, and the fork that makes the pool's
// process the parent (`clone(CLONE_PARENT)`), with the bookkeeping glibc's own
// `fork` does for the child redone by hand.
// ---------------------------------------------------------------------------

/// EBADF's number: a descriptor to pass to the fork server closed meanwhile.
pub(crate) const EBADF: i32 = Errno::BADF.raw_os_error();

/// EMSGSIZE's number: a fork-server message too long for its reader.
pub(crate) const EMSGSIZE: i32 = Errno::MSGSIZE.raw_os_error();

/// The most descriptors one fork-server message carries: a request's kept
/// descriptor, report socket and working directory, and the program's
/// standard output and error and descriptors without close-on-exec, which
/// the forked child inherits as an exec'd one would (more: the child is
/// exec'd).
pub(crate) const MAX_PASSED_FDS: usize = 32;

pub(crate) mod inherit;

/// A connected pair of close-on-exec `SOCK_SEQPACKET` unix sockets: each
/// send is one message that one receive reads whole, and a peer that closes
/// (or dies) reads as end-of-file.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Above the standard streams, as a memfd: the zygote's end is the
    // descriptor it keeps through its own start-up.
    Ok((above_stdio(a)?, above_stdio(b)?))
}

/// Sends `bytes` as one message on `socket`, with `fds` attached
/// (`SCM_RIGHTS`: the receiver gets descriptors of its own for the same open
/// files). `MSG_NOSIGNAL`: a peer that is gone is EPIPE, never SIGPIPE.
pub(crate) fn send_message(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    if fds.len() > MAX_PASSED_FDS {
        return Err(Errno::INVAL.into());
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::INVAL.into());
    }
    let iov = [io::IoSlice::new(bytes)];
    let sent = rustix::io::retry_on_intr(|| {
        rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL)
    })?;
    if sent != bytes.len() {
        // A SOCK_SEQPACKET message goes whole or not at all.
        return Err(Errno::MSGSIZE.into());
    }
    Ok(())
}

/// Receives one message into `buf` and the descriptors attached to it (at
/// most [`MAX_PASSED_FDS`], close-on-exec here). `Ok(None)`: the peer closed
/// (end-of-file). A message longer than `buf`, or more descriptors than
/// room for them, is EMSGSIZE (the descriptors that did arrive are closed).
pub(crate) fn receive_message(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let got = rustix::io::retry_on_intr(|| {
        rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
    })?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(Errno::MSGSIZE.into());
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((got.bytes, fds)))
}

/// Waits until `fd` is readable (or its peer hung up), at most until
/// `deadline`: whether it is.
pub(crate) fn readable_before(
    fd: BorrowedFd<'_>,
    deadline: std::time::Instant,
) -> io::Result<bool> {
    let mut ready = Vec::with_capacity(1);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        poll_readable(&[fd], &mut ready, Some(left))?;
        if ready.first().copied().unwrap_or(false) {
            return Ok(true);
        }
    }
}

/// Puts a duplicate of `fd` on descriptor number `target` exactly
/// (`dup2`), without close-on-exec there: how a forked child gets the
/// descriptor its token names. `target` may be open (it is closed first).
///
/// Raw libc: rustix's `dup2` wants `target` as an `OwnedFd`, which a number
/// that may not be open is not.
pub(crate) fn dup_onto_number(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if target < 0 {
        return Err(Errno::BADF.into());
    }
    // SAFETY: dup2 takes two integers and touches no memory of ours. Whatever
    // `target` held is the forked child's to replace: the zygote's own
    // descriptors there were closed or moved first.
    match unsafe { libc::dup2(fd.as_raw_fd(), target) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// A close-on-exec duplicate of `fd` numbered above `floor`.
pub(crate) fn dup_above(fd: BorrowedFd<'_>, floor: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, floor + 1)?)
}

/// Clears [`current_pid`]'s cache, as its `pthread_atfork` handler does in
/// the child of a C-library `fork`.
pub(crate) fn forget_cached_pid() {
    // Relaxed: called by the only thread of a newly forked child.
    PID.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// How many threads this process has (`/proc/self/task`).
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// The kernel's `struct robust_list_head` (include/uapi/linux/futex.h): the
/// head of the list of robust mutexes a thread holds, registered with
/// `set_robust_list`.
#[repr(C)]
struct RobustListHead {
    /// The first held mutex's entry, or the head itself when none is held.
    next: *const std::ffi::c_void,
    futex_offset: std::ffi::c_long,
    /// A mutex being taken or released right now (null when none is).
    pending: *const std::ffi::c_void,
}

/// What [`fork_as_sibling`] redoes by hand of glibc's `fork` (2.34 and
/// later: `_Fork` in sysdeps/nptl/_Fork.c): where the thread's TCB keeps its
/// cached thread id, and its robust-mutex list head. Found through the
/// kernel (glibc registered both at start-up, `__tls_init_tp`), and checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ForkBookkeeping {
    /// `&THREAD_SELF->tid`: glibc's `set_tid_address` at start-up made it the
    /// kernel's `clear_child_tid`.
    tid_address: usize,
    /// `&THREAD_SELF->robust_head` and its size, as `set_robust_list` took them.
    robust_head: usize,
    robust_len: usize,
}

impl ForkBookkeeping {
    /// Finds and checks both addresses for the calling thread, which must be
    /// the process's only one (checked too). An error says what failed: the
    /// fork server is then not used.
    pub(crate) fn of_this_thread() -> Result<Self, String> {
        match thread_count() {
            Ok(1) => {}
            Ok(n) => return Err(format!("the fork server has {n} threads, not 1")),
            Err(e) => return Err(format!("counting the fork server's threads: {e}")),
        }
        let tid_address = match rustix::thread::get_clear_child_tid_address() {
            Ok(Some(address)) => address.as_ptr() as usize,
            Ok(None) => return Err("the C library registered no thread-id address".into()),
            Err(e) => {
                return Err(format!(
                    "prctl(PR_GET_TID_ADDRESS) failed ({e}; the kernel needs CONFIG_CHECKPOINT_RESTORE)"
                ))
            }
        };
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        if tid_address % std::mem::align_of::<i32>() != 0 {
            return Err(format!(
                "the thread-id address {tid_address:#x} is not aligned for an i32"
            ));
        }
        // SAFETY: the kernel says glibc registered this address (non-null,
        // checked aligned above) of its own thread descriptor, which lives
        // as long as the thread; reading an i32 there changes nothing.
        let cached = unsafe { std::ptr::read_volatile(tid_address as *const i32) };
        if cached != me {
            return Err(format!(
                "the thread-id address holds {cached}, not this thread's id {me}"
            ));
        }
        let mut head: usize = 0;
        let mut len: usize = 0;
        // Raw libc: rustix does not wrap the robust-list calls.
        // SAFETY: get_robust_list(0, ...) writes one pointer and one size to
        // the two locations given, both ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                0 as libc::c_long,
                &mut head as *mut usize,
                &mut len as *mut usize,
            )
        };
        if rc != 0 {
            return Err(format!(
                "get_robust_list failed: {}",
                io::Error::last_os_error()
            ));
        }
        if head == 0
            || len != std::mem::size_of::<RobustListHead>()
            || head % std::mem::align_of::<RobustListHead>() != 0
        {
            return Err(format!(
                "unexpected robust-list head {head:#x} ({len} bytes)"
            ));
        }
        // SAFETY: the kernel says this thread registered this head, of the
        // size of the kernel's struct (checked above); it lives in glibc's
        // thread descriptor for the thread's life. Only read.
        let list = unsafe { std::ptr::read_volatile(head as *const RobustListHead) };
        if list.next as usize != head || !list.pending.is_null() {
            return Err("the fork server holds a robust mutex".into());
        }
        Ok(Self {
            tid_address,
            robust_head: head,
            robust_len: len,
        })
    }
}

/// `fork` with the child made a child of *this process's parent*
/// (`CLONE_PARENT`), which reaps it and gets its `SIGCHLD`: `Some(child)` here,
/// `None` in the child. Exactly what glibc 2.36's `_Fork` does, with
/// `CLONE_PARENT` added: `clone(CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID |
/// SIGCHLD)` with the TCB's thread-id word as `child_tid` (so the child's
/// TCB holds its own id, as `pthread_kill`, the recursive and error-checking
/// mutexes and `pthread_self`'s users read it), then, in the child,
/// `set_robust_list` on the TCB's (empty) head, since the kernel gives a new
/// task none. `current_pid`'s cache is cleared, as its `pthread_atfork`
/// handler would.
///
/// What it leaves out of the C library's `fork`, and why that is sound in a
/// single-threaded process: no `pthread_atfork` handler runs (corepool's
/// one, `current_pid`'s, is redone here; the zygote runs no code of anyone
/// else's that registers any: see `child::zygote`); the `pthread_once` fork
/// generation is not bumped (it matters only to a `pthread_once` running at
/// the fork, impossible with one thread, which is here); the dynamic
/// loader's locks are not reset (held only inside `dlopen` or a TLS
/// allocation, where the one thread is not); no other thread's stack is
/// reclaimed (there is none); the stdio and malloc locks glibc resets only
/// for a multithreaded fork. `raise` and `abort` ask the kernel for the
/// thread id since glibc 2.34 anyway, and Rust's `std` locks are futex words
/// that hold no thread id.
///
/// Raw libc: rustix has no `clone` (its `fork` is in the unstable runtime
/// module and cannot pass `CLONE_PARENT`).
///
/// # Safety
///
/// The calling process must have exactly one thread, the calling one, and
/// `book` must come from [`ForkBookkeeping::of_this_thread`] on it. The
/// child must not return into code that relies on being the original
/// process (it runs on a copy of the caller's stack, as after `fork`).
pub(crate) unsafe fn fork_as_sibling(book: &ForkBookkeeping) -> io::Result<Option<i32>> {
    let flags = (libc::CLONE_PARENT
        | libc::CLONE_CHILD_SETTID
        | libc::CLONE_CHILD_CLEARTID
        | libc::SIGCHLD) as libc::c_ulong;
    let no_stack: libc::c_ulong = 0; // the child runs on a copy of ours, as after fork
    let no_parent_tid: libc::c_ulong = 0;
    let no_tls: libc::c_ulong = 0;
    let child_tid = book.tid_address as libc::c_ulong;
    // The argument order of the legacy `clone` differs between
    // architectures (glibc's arch-fork.h); these are the two that cover
    // every architecture corepool is built for.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees one thread, so the child inherits no lock
    // held by a thread it lacks; without CLONE_VM the child gets a copy of
    // the address space, so `child_tid` (the TCB's tid word) is written in
    // the child's copy only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            no_stack,
            no_parent_tid,
            child_tid,
            no_tls,
        )
    };
    #[cfg(any(
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "arm",
        target_arch = "x86"
    ))]
    // SAFETY: as above; these use the CLONE_BACKWARDS order (tls before
    // child_tid).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            no_stack,
            no_parent_tid,
            no_tls,
            child_tid,
        )
    };
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "arm",
        target_arch = "x86"
    )))]
    let rc: libc::c_long = {
        let _ = (flags, no_stack, no_parent_tid, no_tls, child_tid);
        // SAFETY: sets errno, a thread-local of ours.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        -1
    };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: registers the TCB's robust-list head, which lives as long
            // as this (only) thread, and which was empty in the parent
            // (checked by `of_this_thread`), so this child holds no robust
            // mutex either: what `_Fork` does in the child.
            unsafe {
                libc::syscall(
                    libc::SYS_set_robust_list,
                    book.robust_head as libc::c_ulong,
                    book.robust_len as libc::c_ulong,
                );
            }
            forget_cached_pid();
            Ok(None)
        }
        child => Ok(Some(child as i32)),
    }
}

/// Whether `fd` is readable (or hung up) right now, without waiting: a
/// pidfd's "has it exited".
pub(crate) fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut pfds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfds, Some(&now)), Ok(n) if n > 0)
}

/// What a process may do, as far as the calling thread can read it: its
/// user and group ids (real, effective, saved), supplementary groups,
/// capabilities, `no_new_privs` and seccomp mode. A child inherits these
/// from the thread that made it, so the fork server compares the spawning
/// thread's with those of the thread that started the zygote: a program
/// that dropped privileges or sandboxed itself since must not get workers
/// forked with the old ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Privileges {
    uids: [u32; 3],
    gids: [u32; 3],
    groups: Vec<u32>,
    caps: rustix::thread::CapabilitySets,
    no_new_privs: bool,
    seccomp: Option<rustix::thread::SecureComputingMode>,
}

impl Privileges {
    /// The calling thread's, or why they could not all be read (which the
    /// fork server takes for a difference: unknown is not the same).
    pub(crate) fn of_this_thread() -> io::Result<Self> {
        let (mut ruid, mut euid, mut suid) = (0, 0, 0);
        let (mut rgid, mut egid, mut sgid) = (0, 0, 0);
        // Raw libc: rustix has no getresuid/getresgid. Per thread at the
        // kernel, which is what a child inherits.
        // SAFETY: each call writes three ids to the locations given, all
        // ours.
        let ids = unsafe {
            libc::getresuid(&mut ruid, &mut euid, &mut suid) == 0
                && libc::getresgid(&mut rgid, &mut egid, &mut sgid) == 0
        };
        if !ids {
            return Err(io::Error::last_os_error());
        }
        let groups = rustix::process::getgroups()?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(Self {
            uids: [ruid, euid, suid],
            gids: [rgid, egid, sgid],
            groups,
            caps: rustix::thread::capabilities(None)?,
            no_new_privs: rustix::thread::no_new_privs()?,
            // A filter that forbids asking is a sandbox too: recorded as
            // unknown, which equals only another unknown.
            seccomp: rustix::thread::secure_computing_mode().ok(),
        })
    }
}

// ---------------------------------------------------------------------------
// Added for the pool's argument arena (src/shm/arena.rs):

/// Seals a memfd so that no one gains write access to it any more
/// (`F_SEAL_FUTURE_WRITE`: `write`, `pwrite`, a new writable shared mapping,
/// an `mprotect` that would make a read-only shared mapping writable, a hole
/// punched in it, all refused, whoever asks and through whichever
/// descriptor), nor shrinks or grows it, nor changes its seals. The
/// writable mappings that exist when it is added keep writing: the one the
/// caller made before is then the only way in.
pub(crate) fn seal_future_writes(fd: BorrowedFd<'_>) -> io::Result<()> {
    let seals = SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    Ok(rustix::fs::fcntl_add_seals(fd, seals)?)
}

/// Whether `fd` is a memfd nobody may gain write access to any more
/// (`F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE`) and whose size is sealed
/// (shrink and grow): what a reader needs to trust that only the mappings
/// made before the seal, its creator's, may change it.
pub(crate) fn is_future_write_sealed(fd: BorrowedFd<'_>) -> bool {
    // F_GET_SEALS fails with EINVAL on anything but a memfd/shmem file.
    rustix::fs::fcntl_get_seals(fd).is_ok_and(|seals| {
        seals.contains(SealFlags::SHRINK | SealFlags::GROW)
            && seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE)
    })
}
