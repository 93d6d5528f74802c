//! What a child inherits from the thread that starts it, besides its
//! credentials ([`super::Privileges`]) and CPUs: read on the spawning
//! thread, and set again in a child forked by the fork server
//! (`child::zygote`), so that it starts with what an exec'd child of the
//! program of the moment would have; or only read, for what a forked child
//! cannot be given (what the kernel sets up at `exec` only, or what one
//! thread cannot change for another), so that the fork server can compare.

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Resource, Rlimit};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

/// The resource limits, in their kernel numbering (`RLIMIT_CPU` is 0,
/// `RLIMIT_RTTIME` 15).
const RESOURCES: [Resource; 16] = [
    Resource::Cpu,
    Resource::Fsize,
    Resource::Data,
    Resource::Stack,
    Resource::Core,
    Resource::Rss,
    Resource::Nproc,
    Resource::Nofile,
    Resource::Memlock,
    Resource::As,
    Resource::Locks,
    Resource::Sigpending,
    Resource::Msgqueue,
    Resource::Nice,
    Resource::Rtprio,
    Resource::Rttime,
];

/// How many resource limits there are ([`Limits`]).
pub(crate) const LIMIT_COUNT: usize = RESOURCES.len();
/// `RLIMIT_CPU`'s index in [`Limits`]: CPU seconds, counted per process.
pub(crate) const LIMIT_CPU: usize = 0;
/// `RLIMIT_STACK`'s index in [`Limits`]: read by the kernel at `exec` (the
/// main stack's room), so a forked child cannot be given another.
pub(crate) const LIMIT_STACK: usize = 3;
/// `RLIMIT_RTTIME`'s index in [`Limits`]: real-time CPU time, per thread.
pub(crate) const LIMIT_RTTIME: usize = 15;

/// Every resource limit, (soft, hard), `u64::MAX` for unlimited
/// (`RLIM_INFINITY`), by kernel number.
pub(crate) type Limits = [(u64, u64); LIMIT_COUNT];

/// This process's resource limits (process-wide).
pub(crate) fn limits() -> Limits {
    RESOURCES.map(|resource| {
        let limit = rustix::process::getrlimit(resource);
        (
            limit.current.unwrap_or(u64::MAX),
            limit.maximum.unwrap_or(u64::MAX),
        )
    })
}

/// Sets resource limit number `index` (of [`Limits`]) of this process.
pub(crate) fn set_limit(index: usize, (soft, hard): (u64, u64)) -> io::Result<()> {
    let resource = *RESOURCES.get(index).ok_or(Errno::INVAL)?;
    let finite = |n: u64| (n != u64::MAX).then_some(n);
    Ok(rustix::process::setrlimit(
        resource,
        Rlimit {
            current: finite(soft),
            maximum: finite(hard),
        },
    )?)
}

/// What `/proc/thread-self/status` says of the calling thread that a child
/// inherits and no system call reads without changing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThreadStatus {
    /// The file-creation mask (process-wide, unless unshared).
    pub umask: u32,
    /// Signals whose disposition is "ignore", bit `n - 1` for signal `n`
    /// (process-wide): an exec keeps them ignored.
    pub ignored_signals: u64,
    /// Signals with a handler (process-wide): an exec resets them.
    pub caught_signals: u64,
    /// How many seccomp filters the thread runs under (`None`: a kernel
    /// older than 5.9 does not say).
    pub seccomp_filters: Option<u64>,
}

/// A `/proc` file's text, read with room for it from the start (its size
/// is shown as 0: `std::fs::read_to_string` would `stat` it and read it in
/// growing pieces, a system call each).
fn read_proc(path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(4096);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The calling thread's [`ThreadStatus`] (one read of
/// `/proc/thread-self/status`; `Umask` needs Linux 4.7).
pub(crate) fn thread_status() -> io::Result<ThreadStatus> {
    let text = read_proc("/proc/thread-self/status")?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
    let missing = || io::Error::from(Errno::NOSYS);
    Ok(ThreadStatus {
        umask: field("Umask")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .ok_or_else(missing)?,
        ignored_signals: hex("SigIgn").ok_or_else(missing)?,
        caught_signals: hex("SigCgt").ok_or_else(missing)?,
        seccomp_filters: field("Seccomp_filters").and_then(|v| v.parse().ok()),
    })
}

/// Sets the calling thread's disposition of `signal` to "ignore" or to the
/// default. Raw libc: rustix keeps dispositions in its unstable `runtime`
/// module.
pub(crate) fn set_signal_ignored(signal: i32, ignored: bool) -> io::Result<()> {
    let disposition = if ignored {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: sets a disposition to SIG_IGN or SIG_DFL; no handler of ours
    // is installed, nothing runs.
    match unsafe { libc::signal(signal, disposition) } {
        libc::SIG_ERR => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// The requests to end that a service manager or `pkill` sends to every
/// process of a program, which a pool worker outlives
/// ([`survive_termination_requests`]).
pub(crate) const TERMINATION_REQUESTS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Does nothing: a pool worker's handler for the
/// [`TERMINATION_REQUESTS`]. Async-signal-safe (it touches nothing).
extern "C" fn outlive_request(_signal: libc::c_int) {}

/// Makes this process outlive SIGTERM, SIGINT and SIGHUP: a pool worker,
/// whose parent ends it itself (SIGKILL, or the parent-death signal when
/// the parent dies), so that SIGTERM sent to every process of a service
/// (systemd's default, `pkill prog`) reaches the parent alone and the
/// parent's graceful shutdown (`close`, `join`) finishes the tasks running.
/// A handler that does nothing rather than `SIG_IGN`: `exec` resets a
/// handler to the default and keeps an ignored signal ignored, so the
/// programs a task starts keep their usual dispositions. `SA_RESTART`: a
/// system call the signal interrupts is restarted where the kernel can.
pub(crate) fn survive_termination_requests() -> io::Result<()> {
    for signal in TERMINATION_REQUESTS {
        // SAFETY: a zeroed `sigaction` is a valid value (no flags, empty
        // mask) before the fields set below; `sigemptyset` initialises the
        // mask; the handler is an `extern "C" fn(c_int)` that touches no
        // state, so it is safe whenever it runs; the old action is not
        // asked for.
        let failed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = outlive_request as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut()) != 0
        };
        if failed {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unblocks every signal of the calling thread (an exec'd child starts
/// with an empty mask: `spawn_reexec` sets it so).
pub(crate) fn unblock_all_signals() -> io::Result<()> {
    // Raw libc: rustix has no sigprocmask outside its `runtime` module.
    // SAFETY: `empty` is an initialised, empty sigset on our stack; the
    // previous mask is not asked for.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        match libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// A thread's scheduling: policy (`SCHED_OTHER`, ..., without
/// `SCHED_RESET_ON_FORK`), real-time priority and nice value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scheduling {
    pub policy: i32,
    pub priority: i32,
    pub nice: i32,
}

/// The calling thread's scheduling, and whether `SCHED_RESET_ON_FORK` is
/// set on it.
fn scheduling_and_reset_flag() -> io::Result<(Scheduling, bool)> {
    // Raw libc: rustix wraps neither sched_getscheduler nor sched_getparam.
    // SAFETY: both take the calling thread (0); the second writes one
    // sched_param to our stack.
    let (policy, priority) = unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut param: libc::sched_param = std::mem::zeroed();
        if libc::sched_getparam(0, &mut param) != 0 {
            return Err(io::Error::last_os_error());
        }
        (policy, param.sched_priority)
    };
    let nice = rustix::process::getpriority_process(None)?;
    let reset = policy & libc::SCHED_RESET_ON_FORK != 0;
    Ok((
        Scheduling {
            policy: policy & !libc::SCHED_RESET_ON_FORK,
            priority,
            nice,
        },
        reset,
    ))
}

/// The calling thread's scheduling.
pub(crate) fn scheduling() -> io::Result<Scheduling> {
    Ok(scheduling_and_reset_flag()?.0)
}

/// The scheduling a child started by the calling thread gets: its own,
/// or, under `SCHED_RESET_ON_FORK`, `SCHED_OTHER` for a real-time policy
/// and a negative nice value raised to 0.
pub(crate) fn scheduling_for_a_child() -> io::Result<Scheduling> {
    let (mut now, reset) = scheduling_and_reset_flag()?;
    if reset {
        if matches!(
            now.policy,
            libc::SCHED_FIFO | libc::SCHED_RR | SCHED_DEADLINE
        ) {
            now.policy = libc::SCHED_OTHER;
            now.priority = 0;
        }
        now.nice = now.nice.max(0);
    }
    Ok(now)
}

/// `SCHED_DEADLINE` (the libc crate does not name it everywhere).
const SCHED_DEADLINE: i32 = 6;

/// Sets the calling thread's scheduling (`SCHED_DEADLINE` cannot be set
/// this way: EINVAL).
pub(crate) fn set_scheduling(to: &Scheduling) -> io::Result<()> {
    // Raw libc: rustix does not wrap sched_setscheduler.
    // SAFETY: reads one sched_param from our stack; the calling thread (0).
    let rc = unsafe {
        let param = libc::sched_param {
            sched_priority: to.priority,
        };
        libc::sched_setscheduler(0, to.policy, &param)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rustix::process::setpriority_process(None, to.nice)?)
}

/// `IOPRIO_WHO_PROCESS`: the target of `ioprio_get`/`ioprio_set` is one
/// thread (0: the calling one).
const IOPRIO_WHO_PROCESS: libc::c_long = 1;

/// The calling thread's I/O priority (class and level, as `ioprio_get`
/// returns it).
pub(crate) fn io_priority() -> io::Result<i32> {
    // Raw libc: rustix does not wrap ioprio_get.
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// Sets the calling thread's I/O priority (as [`io_priority`] read it).
pub(crate) fn set_io_priority(priority: i32) -> io::Result<()> {
    // Raw libc: rustix does not wrap ioprio_set.
    // SAFETY: integer arguments only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            libc::c_long::from(priority),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `prctl` that reads a value: its result, or the error.
fn prctl_get(option: libc::c_int) -> io::Result<u64> {
    // Raw libc: rustix wraps these options only in part (and not the
    // timer slack's reading).
    // SAFETY: the options used here take no pointer and return the value.
    let rc = unsafe { libc::prctl(option, 0, 0, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u64)
}

/// A `prctl` that sets a value.
fn prctl_set(option: libc::c_int, value: u64) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    let rc = unsafe { libc::prctl(option, value as libc::c_ulong, 0, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's timer slack, in nanoseconds (kept across `exec`).
pub(crate) fn timer_slack() -> io::Result<u64> {
    prctl_get(libc::PR_GET_TIMERSLACK)
}

/// Sets the calling thread's timer slack.
pub(crate) fn set_timer_slack(nanoseconds: u64) -> io::Result<()> {
    prctl_set(libc::PR_SET_TIMERSLACK, nanoseconds)
}

/// Whether transparent huge pages are disabled for this process
/// (`PR_SET_THP_DISABLE`, kept across `exec`).
pub(crate) fn huge_pages_disabled() -> io::Result<bool> {
    Ok(prctl_get(libc::PR_GET_THP_DISABLE)? != 0)
}

/// Disables (or enables again) transparent huge pages for this process.
pub(crate) fn set_huge_pages_disabled(disabled: bool) -> io::Result<()> {
    prctl_set(libc::PR_SET_THP_DISABLE, u64::from(disabled))
}

/// `PR_GET_MDWE` (Linux 6.3): the memory-deny-write-execute flags.
const PR_GET_MDWE: libc::c_int = 66;

/// What a forked child cannot be given and an exec'd child inherits from
/// the calling thread, written out to be compared: its namespaces, control
/// groups, root directory, execution domain (`personality`, applied by the
/// kernel at `exec`), security bits, seccomp filter count and
/// memory-deny-write-execute flags. Whatever cannot be read is written as
/// such (`?`), so that it compares equal only to the same.
pub(crate) fn fixed_context(status: &ThreadStatus) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(512);
    // One lookup of the thread's directory, not one per namespace (a new
    // thread's `/proc` entries are made on first use).
    let dir = rustix::fs::open(
        "/proc/thread-self/ns",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    for ns in [
        "cgroup",
        "ipc",
        "mnt",
        "net",
        "pid_for_children",
        "time_for_children",
        "user",
        "uts",
    ] {
        let target = dir
            .as_ref()
            .map_err(|e| *e)
            .and_then(|dir| rustix::fs::readlinkat(dir, ns, Vec::new()));
        match target {
            Ok(target) => {
                let _ = write!(out, "{} ", target.to_string_lossy());
            }
            Err(_) => out.push_str("? "),
        }
    }
    match read_proc("/proc/thread-self/cgroup") {
        Ok(groups) => out.push_str(groups.trim()),
        Err(_) => out.push('?'),
    }
    match rustix::fs::stat("/") {
        Ok(root) => {
            let _ = write!(out, " root {}:{}", root.st_dev, root.st_ino);
        }
        Err(_) => out.push_str(" root ?"),
    }
    // SAFETY: 0xffffffff only reads the execution domain.
    let personality = unsafe { libc::personality(0xffff_ffff) };
    let _ = write!(
        out,
        " personality {personality} securebits {:?} seccomp {:?} mdwe {:?}",
        prctl_get(libc::PR_GET_SECUREBITS).ok(),
        status.seccomp_filters,
        prctl_get(PR_GET_MDWE).ok(),
    );
    out
}

/// A descriptor of the calling process's working directory (`O_PATH`,
/// close-on-exec): a forked child `fchdir`s to it, which needs no path
/// (the directory may have been renamed, or removed).
pub(crate) fn open_working_directory() -> io::Result<OwnedFd> {
    super::above_stdio(rustix::fs::open(
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Makes the directory `dir` names the working directory.
pub(crate) fn change_directory(dir: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::process::fchdir(dir)?)
}

/// Makes `/` the working directory (the fork server's own, so that it
/// keeps no directory of the program's busy for the program's life).
pub(crate) fn change_directory_to_root() -> io::Result<()> {
    Ok(rustix::process::chdir("/")?)
}

/// Every descriptor of this process but standard input (an exec'd child
/// gets `/dev/null` there) that an exec'd child would inherit (no
/// close-on-exec), `but` excepted, ascending: standard output and error
/// among them, if open. A descriptor another thread opens or closes
/// meanwhile may be missed or listed.
pub(crate) fn inherited_descriptors(but: RawFd) -> io::Result<Vec<RawFd>> {
    // Collected first: the listing's own descriptor (close-on-exec) is
    // closed before the flags are read.
    let mut numbers: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 0 && fd != but)
        .collect();
    numbers.retain(|&fd| {
        // A raw call on the number, not a borrowed descriptor: it may no
        // longer be open (-1, EBADF: skipped), which a `BorrowedFd` may not
        // be. SAFETY: F_GETFD reads flags only; any number is allowed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags >= 0 && flags & libc::FD_CLOEXEC == 0
    });
    numbers.sort_unstable();
    Ok(numbers)
}

/// Points descriptors 0, 1 and 2 at `/dev/null` (the fork server's own
/// standard streams, once it has said it is ready: it must not keep the
/// program's terminal or pipes open for the program's life; each child it
/// forks gets the program's streams of the moment).
pub(crate) fn standard_streams_to_null() -> io::Result<()> {
    let null = rustix::fs::open(c"/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    for fd in 0..3 {
        super::dup_onto_number(null.as_fd(), fd)?;
    }
    Ok(())
}
