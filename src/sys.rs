//! Every raw system call corepool makes, and nothing else.
//!
//! The rest of the crate calls these thin, safe wrappers; the `unsafe` needed to
//! reach the kernel stays here. Errors come back as [`std::io::Error`] so that the
//! callers can wrap them in a typed [`crate::Error`] with advice attached.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Converts a `-1`-on-error return value into an `io::Result`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`: an anonymous file that
/// never appears in `/dev/shm` and vanishes with its last descriptor or mapping.
pub(crate) fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    check(fd as libc::c_long)?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reserves `len` bytes of backing store so that a full tmpfs fails here, with an
/// error, rather than as a SIGBUS on first touch later.
pub(crate) fn fallocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    loop {
        // SAFETY: plain syscall on a descriptor we hold; no memory is passed.
        let ret = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) };
        match ret {
            0 => return Ok(()),
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(err);
            }
        }
    }
}

/// Seals a memfd against shrinking and growing (and further sealing), so that a
/// worker cannot truncate the segment under the parent's mapping.
pub(crate) fn seal_size(fd: BorrowedFd<'_>) -> io::Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: plain fcntl on a descriptor we hold.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } as libc::c_long)?;
    Ok(())
}

/// Whether `fd` is a memfd whose size is sealed (shrink and grow): the only
/// kind of file corepool maps on another process's word.
pub(crate) fn is_size_sealed(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: plain fcntl; fails with EINVAL on anything but a memfd/shmem file.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0
        && seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
            == (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
}

/// Size of the file behind `fd` and its (device, inode) identity.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one `stat`; fstat fills it on success.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } as libc::c_long)?;
    // SAFETY: fstat returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
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

/// What `fstat` tells about a file: enough to recognise it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: u64,
}

/// Clears `FD_CLOEXEC`. Async-signal-safe: used between fork and exec.
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl; no memory is passed.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } as libc::c_long)?;
    Ok(())
}

/// Sets `FD_CLOEXEC`, so that a descriptor a worker inherited is not handed on
/// to processes the worker's tasks start.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl; no memory is passed.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } as libc::c_long)?;
    Ok(())
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills this process when the
/// thread that forked it exits. Async-signal-safe: used between fork and exec.
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    check(ret as libc::c_long)?;
    Ok(())
}

/// Pins the calling thread (and so, before exec, the whole new process) to `cpu`.
/// Async-signal-safe: used between fork and exec.
pub(crate) fn pin_self_to(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` (checked above), so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of the size we pass.
    let ret = unsafe { libc::sched_setaffinity(0, size, &set) };
    check(ret as libc::c_long)?;
    Ok(())
}

/// The CPUs process (or thread) `pid` may run on; `pid == 0` means the caller.
pub(crate) fn affinity_of(pid: i32) -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid out-pointer of the size we pass.
    let ret = unsafe { libc::sched_getaffinity(pid, size, &mut set) };
    check(ret as libc::c_long)?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: every `cpu` is below CPU_SETSIZE, inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The CPU the calling thread runs on right now.
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Waits while `*word == expected`, at most `timeout` (forever if `None`).
/// Spurious returns are allowed; callers re-check their condition.
///
/// The word must live in memory shared with the waker (it may be a `MAP_SHARED`
/// mapping, so the futex is not `FUTEX_PRIVATE`).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts;
    let ts_ptr = match timeout {
        Some(d) => {
            ts = libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            };
            &ts as *const libc::timespec
        }
        None => std::ptr::null(),
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; the
    // timespec (if any) lives on this stack frame until the call returns. The
    // result is ignored on purpose: EAGAIN, EINTR and ETIMEDOUT all mean "re-check".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every waiter on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE reads no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}

/// `pidfd_open(pid)`: a descriptor that becomes readable when `pid` exits.
/// Works on a zombie too, so there is no race with an early death.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` through a pidfd: never reaches a process that merely
/// reused the pid. ESRCH (already exited) is not an error.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) {
    // SAFETY: plain syscall: a descriptor we hold, a signal number, no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<u8>(),
            0u32,
        );
    }
}

/// An `eventfd` used to wake a thread blocked in [`poll_readable`].
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    let flags = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK;
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::eventfd(0, flags) } as libc::c_long)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Adds one to an eventfd's counter, waking its poller.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) already
    // means "readable", which is all the poller needs.
    unsafe {
        libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8);
    }
}

/// Resets an eventfd's counter to zero.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut buf: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64. EAGAIN (already zero) is fine.
    unsafe {
        libc::read(fd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8);
    }
}

/// Blocks until at least one of `fds` is readable (or hung up); returns, for each
/// descriptor, whether it is. EINTR returns with nothing ready.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    ready: &mut Vec<bool>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        t.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
    });
    // SAFETY: `pfds` is a valid, writable array of `pfds.len()` pollfd
    // structs that outlives the call.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    ready.clear();
    if ret == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            ready.resize(fds.len(), false);
            return Ok(());
        }
        return Err(err);
    }
    ready.extend(pfds.iter().map(|p| p.revents != 0));
    Ok(())
}

/// Sends `signal` to every process in process group `pgid` (a worker and
/// whatever its tasks started). ESRCH (already gone) is not an error.
pub(crate) fn kill_group(pgid: i32, signal: i32) {
    if pgid <= 1 {
        return; // never our own group, init's, or everyone
    }
    // SAFETY: plain syscall with integer arguments.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Makes the calling process the leader of a new process group, so that the
/// processes its tasks start can be killed with it. Async-signal-safe: used
/// between fork and exec.
pub(crate) fn new_process_group() -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::setpgid(0, 0) } as libc::c_long)?;
    Ok(())
}

/// `fork()`: `Some(child)` in the parent, `None` in the child.
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
    let pid = check(unsafe { libc::fork() } as libc::c_long)?;
    Ok((pid != 0).then_some(pid as i32))
}

/// Waits for child `pid` to exit (reaps it), retrying on EINTR.
pub(crate) fn wait_for(pid: i32) {
    loop {
        // SAFETY: waitpid on one specific child with a null status pointer.
        let ret = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if ret != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// `setsid()`: a new session and process group, no controlling terminal.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() } as libc::c_long)?;
    Ok(())
}

/// Sets the file-creation mask.
pub(crate) fn set_umask(mask: u32) {
    // SAFETY: plain syscall with an integer argument.
    unsafe {
        libc::umask(mask as libc::mode_t);
    }
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: true if we now hold the lock.
pub(crate) fn flock_exclusive_nonblocking(fd: RawFd) -> bool {
    // SAFETY: plain syscall on a descriptor the caller holds.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: both descriptors were just returned to us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `dup2(from, to)`.
pub(crate) fn dup_onto(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall; `to` is replaced atomically.
    check(unsafe { libc::dup2(from, to) } as libc::c_long)?;
    Ok(())
}

/// The parent's pid, as the kernel sees it now.
pub(crate) fn getppid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getppid() }
}

/// Names of signals, for messages.
pub(crate) fn signal_name(sig: i32) -> String {
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
    let short = match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
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
    // SAFETY: _exit never returns and takes an integer.
    unsafe { libc::_exit(code) }
}

/// This process's pid, cached: `getpid` is a real system call (glibc stopped
/// caching it), and the queue and pipe tag every slot they touch with it.
/// A `pthread_atfork` child handler clears the cache, so a forked child
/// (ours in the daemon path, or the user's own `fork`) asks the kernel again.
pub(crate) fn current_pid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Once;
    static PID: AtomicU32 = AtomicU32::new(0);
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
    loop {
        // SAFETY: all-zero bytes are a valid siginfo_t (plain C data).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on one specific child, writing into a live siginfo_t.
        let ret = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if ret == 0 {
            // With WNOHANG, si_pid stays 0 when no child has changed state.
            // SAFETY: waitid filled (or left zeroed) the siginfo_t; reading
            // si_pid of a SIGCHLD-style record is what the union is for.
            return Ok(unsafe { info.si_pid() } != 0);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}
