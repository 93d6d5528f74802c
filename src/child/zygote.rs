//! The fork server's own process, the zygote: this binary exec'd once, with
//! [`ZYGOTE_ENV`], entered before `main` like every child (`crate::entry`)
//! and kept single-threaded for its whole life. It waits on its socket for
//! requests, forks a child for each with `clone(CLONE_PARENT)`, so that the
//! child is the *pool's process's* child and never its own
//! (`sys::fork_as_sibling`), and answers with the pid. The child then does
//! what an exec'd child does on its way in, and enters its role.
//!
//! The protocol (every message one `SOCK_SEQPACKET` datagram; the parent
//! side is `child::forkserver`):
//! - zygote -> parent, once: `v2 ok <fingerprint> <environment> <stack
//!   limit> <stack hard limit> <fixed context>` (the build's fingerprint,
//!   and hashes of what the zygote was started with that a forked child
//!   cannot be given otherwise: see [`Hello`]), or `v2 no <why>` when it
//!   cannot fork soundly here (then it exits);
//! - parent -> zygote, per child: the fields of [`Request`] separated by NUL
//!   bytes, with descriptors attached: the (first) one the child keeps, the
//!   child's end of a socket pair whose other end the parent holds (the
//!   child's *report* socket), the program's working directory, and the
//!   program's standard output and error and other descriptors without
//!   close-on-exec (an exec'd child would inherit them), then the other
//!   ones the child keeps, each to go under its number;
//! - zygote -> parent, per request: `ok <pid>`, `err <errno>` (the fork
//!   failed), or `stale <errno>` (the zygote could not take the program's
//!   resource limits, or receive the descriptors: the parent starts another
//!   zygote, which inherits them, and execs this child);
//! - child -> parent, on the report socket: its pid and an errno (0: set up
//!   as asked), 8 bytes; parent -> child: `g`, "go". A child that is not
//!   told to go (the parent gave up on it) exits before entering its role,
//!   so no worker ever runs that the parent does not know of.
//!
//! A forked child starts with what an exec'd child of the program *of the
//! moment* would have (`sys::inherit`): the request carries the umask,
//! ignored signals, resource limits, scheduling, I/O priority, timer slack
//! and huge-page setting, and the descriptors above; the zygote takes the
//! limits itself before it forks (the process limit is checked at the
//! fork), the child sets the rest. What a child cannot be given (the
//! environment and the stack limit, read at `exec`; namespaces and the
//! like) the parent compares with the zygote's hello before each request.
//!
//! The zygote never starts a thread, never takes a lock another thread
//! could hold, and runs no code of the program's: between the C runtime's
//! constructors and this loop, only corepool's entry ran. Nothing it does
//! registers a `pthread_atfork` handler, so the handlers that `clone` skips
//! are only those the program's libraries registered in their constructors
//! (see `sys::fork_as_sibling`).

use crate::sys;
use crate::sys::inherit::{self, Limits, Scheduling};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The environment variable that makes a process the zygote; its value is
/// `v1:<socket fd>:<parent pid>`.
pub(crate) const ZYGOTE_ENV: &str = "COREPOOL_FORKSERVER";

/// The longest request the zygote reads (a worker's token is a few hundred
/// bytes).
const REQUEST_BYTES: usize = 64 * 1024;

/// The descriptors a request carries before those that go under numbers of
/// their own: the kept one, the report socket, the working directory.
pub(crate) const FIXED_FDS: usize = 3;

/// What the child runs once it is set up: the entry's role dispatch
/// (`crate::entry`), which returns the exit status (`None`: no role).
pub(crate) type EnterRole = fn() -> Option<i32>;

/// Whether this process was started as the zygote.
pub(crate) fn is_zygote() -> bool {
    std::env::var_os(ZYGOTE_ENV).is_some()
}

/// The zygote's token.
pub(crate) fn make_token(socket: RawFd, parent: i32) -> String {
    format!("v1:{socket}:{parent}")
}

fn parse_token(token: &str) -> Option<(RawFd, i32)> {
    let mut parts = token.split(':');
    let (Some("v1"), Some(fd), Some(parent), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((fd.parse().ok()?, parent.parse().ok()?))
}

/// A hash of this process's environment, as a child it starts would get it
/// (without corepool's own variables for the fork server and the CPUs,
/// which `Reexec::spawn` leaves out). The same in every process of this
/// build (fixed keys), so that the parent can compare its own with the
/// zygote's: a forked child gets the zygote's environment, and what read it
/// at start (the dynamic loader, the C library's tunables, the program's
/// libraries' constructors) read that one.
pub(crate) fn environment_fingerprint() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (key, value) in std::env::vars_os() {
        if key == ZYGOTE_ENV || key == crate::child::spawn::CPUS_ENV {
            continue;
        }
        key.hash(&mut h);
        value.hash(&mut h);
    }
    h.finish()
}

/// A hash of [`inherit::fixed_context`]: what a forked child gets from the
/// zygote and cannot change (namespaces, control groups, root directory...).
pub(crate) fn fixed_fingerprint(status: &inherit::ThreadStatus) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    inherit::fixed_context(status).hash(&mut h);
    h.finish()
}

/// What the zygote says when it is ready: what a forked child will have
/// that the parent cannot send it, to compare with the program's own
/// before each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The build's fingerprint (`child::fingerprint`).
    pub build: u64,
    /// [`environment_fingerprint`].
    pub environment: u64,
    /// `RLIMIT_STACK` when the zygote was exec'd (the room of a forked
    /// child's main stack was laid out then).
    pub stack_limit: (u64, u64),
    /// [`fixed_fingerprint`].
    pub fixed: u64,
}

impl Hello {
    fn encode(&self) -> String {
        format!(
            "v2 ok {} {:x} {} {} {:x}",
            self.build, self.environment, self.stack_limit.0, self.stack_limit.1, self.fixed
        )
    }

    /// The hello's fields after `v2 ok `.
    pub(crate) fn parse(fields: &str) -> Option<Self> {
        let mut parts = fields.split(' ');
        let mut next = || parts.next();
        let hello = Self {
            build: next()?.parse().ok()?,
            environment: u64::from_str_radix(next()?, 16).ok()?,
            stack_limit: (next()?.parse().ok()?, next()?.parse().ok()?),
            fixed: u64::from_str_radix(next()?, 16).ok()?,
        };
        next().is_none().then_some(hello)
    }
}

/// What an exec'd child would inherit from the program of the moment, sent
/// with each request (see `sys::inherit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inherited {
    pub umask: u32,
    /// Bit `n - 1`: signal `n` is ignored.
    pub ignored_signals: u64,
    pub limits: Limits,
    pub scheduling: Scheduling,
    pub io_priority: i32,
    pub timer_slack: u64,
    pub huge_pages_disabled: bool,
    /// The numbers that the descriptors attached after the fixed three take
    /// in the child (its standard output and error, and the program's
    /// descriptors without close-on-exec).
    pub fd_targets: Vec<RawFd>,
}

/// One child to fork, as the parent asked.
struct Request {
    /// The role's environment variable and its value.
    key: String,
    value: String,
    /// The CPUs to pin to (`None`: leave the zygote's).
    cpus: Option<sys::CpuMask>,
    own_group: bool,
    /// The number the kept descriptor must have in the child (its token
    /// names it).
    target_fd: RawFd,
    /// The pool's process: the child's parent, checked once it runs.
    parent: i32,
    inherited: Inherited,
    keep: OwnedFd,
    report: OwnedFd,
    /// The program's working directory.
    cwd: OwnedFd,
    /// The descriptors for `inherited.fd_targets`, in that order.
    passed: Vec<OwnedFd>,
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The request's text: its fields separated by NUL bytes (an environment
/// value cannot hold one).
pub(crate) fn encode_request(
    key: &str,
    value: &str,
    cpus: &[usize],
    own_group: bool,
    target_fd: RawFd,
    parent: i32,
    inherited: &Inherited,
) -> Vec<u8> {
    let limits = join(inherited.limits.iter().map(|(s, h)| format!("{s}:{h}")));
    let s = inherited.scheduling;
    let fields = [
        "v2".to_string(),
        key.to_string(),
        value.to_string(),
        join(cpus),
        if own_group { "1" } else { "0" }.to_string(),
        target_fd.to_string(),
        parent.to_string(),
        inherited.umask.to_string(),
        format!("{:x}", inherited.ignored_signals),
        limits,
        format!("{}:{}:{}", s.policy, s.priority, s.nice),
        inherited.io_priority.to_string(),
        inherited.timer_slack.to_string(),
        if inherited.huge_pages_disabled {
            "1"
        } else {
            "0"
        }
        .to_string(),
        join(&inherited.fd_targets),
    ];
    fields.join("\0").into_bytes()
}

/// `"a,b,c"` as numbers (empty: none).
fn parse_list<T: std::str::FromStr>(text: &str) -> Option<Vec<T>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|item| item.parse().ok()).collect()
}

fn parse_inherited(fields: &[&str]) -> Option<Inherited> {
    let [umask, ignored, limits, scheduling, io_priority, timer_slack, huge, targets] = fields
    else {
        return None;
    };
    let limits: Vec<(u64, u64)> = limits
        .split(',')
        .map(|pair| {
            let (soft, hard) = pair.split_once(':')?;
            Some((soft.parse().ok()?, hard.parse().ok()?))
        })
        .collect::<Option<_>>()?;
    let mut sched = scheduling.split(':').map(|n| n.parse::<i32>().ok());
    let (Some(Some(policy)), Some(Some(priority)), Some(Some(nice)), None) =
        (sched.next(), sched.next(), sched.next(), sched.next())
    else {
        return None;
    };
    Some(Inherited {
        umask: umask.parse().ok()?,
        ignored_signals: u64::from_str_radix(ignored, 16).ok()?,
        limits: limits.try_into().ok()?,
        scheduling: Scheduling {
            policy,
            priority,
            nice,
        },
        io_priority: io_priority.parse().ok()?,
        timer_slack: timer_slack.parse().ok()?,
        huge_pages_disabled: *huge == "1",
        fd_targets: parse_list(targets)?
            .into_iter()
            .filter(|&fd: &RawFd| fd >= 0)
            .collect(),
    })
}

impl Request {
    fn parse(bytes: &[u8], fds: Vec<OwnedFd>) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let fields: Vec<&str> = text.split('\0').collect();
        let [version, key, value, cpus, own_group, target_fd, parent, rest @ ..] = &fields[..]
        else {
            return None;
        };
        if *version != "v2" || key.is_empty() || key.contains('=') {
            return None;
        }
        let inherited = parse_inherited(rest)?;
        let cpus: Vec<usize> = parse_list(cpus)?;
        let cpus = (!cpus.is_empty()).then(|| sys::CpuMask::of(&cpus));
        if fds.len() != FIXED_FDS + inherited.fd_targets.len() {
            return None;
        }
        let mut fds = fds.into_iter();
        let (Some(keep), Some(report), Some(cwd)) = (fds.next(), fds.next(), fds.next()) else {
            return None;
        };
        Some(Self {
            key: key.to_string(),
            value: value.to_string(),
            cpus,
            own_group: *own_group == "1",
            target_fd: target_fd.parse().ok().filter(|&fd: &RawFd| fd >= 0)?,
            parent: parent.parse().ok()?,
            inherited,
            keep,
            report,
            cwd,
            passed: fds.collect(),
        })
    }
}

/// What the zygote itself has that its children inherit, as it found it at
/// its start (the limits as it last set them).
struct Own {
    /// Signals ignored, and with a handler (the entry's), in the zygote.
    ignored_signals: u64,
    caught_signals: u64,
    limits: Limits,
}

/// Serves as the zygote until the parent closes its end of the socket (or
/// dies: the parent-death signal, armed by the entry, kills us then).
/// Never returns. `start_failed` is the status of a child that could not
/// start (a worker's 101).
pub(crate) fn serve(enter_role: EnterRole, start_failed: i32) -> ! {
    let token = std::env::var_os(ZYGOTE_ENV).unwrap_or_default();
    // Gone at once: the children forked from here must not see it.
    std::env::remove_var(ZYGOTE_ENV);
    if sys::is_secure_execution() {
        // As workers and `Process` children do (the trust model in
        // docs/protocol.md): no child mode in a setuid, setgid or setcap
        // program, where the variable may come from someone else.
        eprintln!("corepool: refusing fork-server mode in a setuid, setgid or setcap program");
        sys::exit_now(start_failed);
    }
    let Some((fd, parent)) = token.to_str().and_then(parse_token) else {
        eprintln!("corepool: malformed {ZYGOTE_ENV} token; this process is not a fork server (unset {ZYGOTE_ENV})");
        sys::exit_now(start_failed);
    };
    if sys::getppid() != parent || fd < 0 {
        // The parent died before we armed the parent-death signal.
        sys::exit_now(start_failed);
    }
    let _ = sys::set_cloexec(fd);
    // SAFETY: the parent passed this descriptor, its socket's other end, to
    // us alone; nothing else in this process owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let book = sys::ForkBookkeeping::of_this_thread();
    let status = inherit::thread_status();
    let limits = inherit::limits();
    let hello = match (&book, &status) {
        (Ok(_), Ok(status)) => Hello {
            build: crate::child::fingerprint::fingerprint(),
            environment: environment_fingerprint(),
            stack_limit: limits[inherit::LIMIT_STACK],
            fixed: fixed_fingerprint(status),
        }
        .encode(),
        (Err(why), _) => format!("v2 no {why}"),
        (_, Err(e)) => format!("v2 no /proc/thread-self/status unreadable: {e}"),
    };
    if sys::send_message(socket.as_fd(), hello.as_bytes(), &[]).is_err() {
        sys::exit_now(0);
    }
    let (Ok(book), Ok(status)) = (book, status) else {
        sys::exit_now(0);
    };
    // Nothing of the program's kept busy for its life: no directory (each
    // child goes to the program's of the moment), no terminal or pipe
    // (each child gets the program's standard streams of the moment).
    let _ = inherit::change_directory_to_root();
    let _ = inherit::standard_streams_to_null();
    let mut own = Own {
        ignored_signals: status.ignored_signals,
        caught_signals: status.caught_signals,
        limits,
    };
    let mut buf = vec![0u8; REQUEST_BYTES];
    loop {
        let (len, fds) = match sys::receive_message(socket.as_fd(), &mut buf) {
            Ok(Some(message)) => message,
            // Too long, or more descriptors than fit under our descriptor
            // limit (the program's may be higher now): a new zygote has
            // the program's.
            Err(e) if e.raw_os_error() == Some(sys::EMSGSIZE) => {
                answer(&socket, &format!("stale {}", sys::EMSGSIZE));
                continue;
            }
            // End of file: the parent closed its end, or exited.
            Ok(None) | Err(_) => sys::exit_now(0),
        };
        let Some(request) = Request::parse(&buf[..len], fds) else {
            answer(&socket, &format!("err {}", sys::EINVAL));
            continue;
        };
        if let Err(e) = take_limits(&mut own, &request.inherited.limits) {
            drop(request);
            let errno = e.raw_os_error().unwrap_or(sys::EINVAL);
            answer(&socket, &format!("stale {errno}"));
            continue;
        }
        // SAFETY: this process has one thread: `of_this_thread` checked it
        // at start, and the zygote starts none (it runs only this loop).
        // `book` was found on this very thread.
        match unsafe { sys::fork_as_sibling(&book) } {
            Ok(Some(pid)) => {
                // Our copies of the child's descriptors, closed here.
                drop(request);
                answer(&socket, &format!("ok {pid}"));
            }
            Ok(None) => become_child(request, socket, &own, enter_role, start_failed),
            Err(e) => {
                drop(request);
                answer(
                    &socket,
                    &format!("err {}", e.raw_os_error().unwrap_or(sys::EINVAL)),
                );
            }
        }
    }
}

/// Takes the program's resource limits, so that the fork is checked
/// against its process limit and the child inherits them all; but for the
/// CPU-time limits, which count the zygote's own time (the child sets
/// those).
fn take_limits(own: &mut Own, limits: &Limits) -> std::io::Result<()> {
    for (index, (&wanted, have)) in limits.iter().zip(own.limits.iter_mut()).enumerate() {
        if index == inherit::LIMIT_CPU || index == inherit::LIMIT_RTTIME || wanted == *have {
            continue;
        }
        inherit::set_limit(index, wanted)?;
        *have = wanted;
    }
    Ok(())
}

/// Answers the parent; a parent that is gone is the end of the zygote.
fn answer(socket: &OwnedFd, text: &str) {
    if sys::send_message(socket.as_fd(), text.as_bytes(), &[]).is_err() {
        sys::exit_now(0);
    }
}

/// Signals whose disposition a child never takes from the parent: those
/// that cannot be changed, and `SIGPIPE`, which every child ignores (the
/// entry sets it so, as the Rust runtime does).
fn is_fixed_signal(signal: i32) -> bool {
    matches!(signal, libc::SIGKILL | libc::SIGSTOP | libc::SIGPIPE)
        // glibc's own (cancellation, set*id broadcast): it refuses them.
        || (32..libc::SIGRTMIN()).contains(&signal)
}

/// In the forked child: what an exec'd child would inherit from the
/// program of the moment, over what it inherited from the zygote.
fn take_inherited(inherited: &Inherited, own: &Own) -> std::io::Result<()> {
    for index in [inherit::LIMIT_CPU, inherit::LIMIT_RTTIME] {
        if inherited.limits[index] != own.limits[index] {
            inherit::set_limit(index, inherited.limits[index])?;
        }
    }
    sys::set_umask(inherited.umask);
    // Exec resets caught signals and keeps ignored ones; a signal the
    // entry catches (in both kinds of child) is left to it.
    let differ = (inherited.ignored_signals ^ own.ignored_signals) & !own.caught_signals;
    for signal in 1..=64 {
        let bit = 1u64 << (signal - 1);
        if differ & bit != 0 && !is_fixed_signal(signal) {
            inherit::set_signal_ignored(signal, inherited.ignored_signals & bit != 0)?;
        }
    }
    inherit::unblock_all_signals()?;
    if inherit::scheduling()? != inherited.scheduling {
        inherit::set_scheduling(&inherited.scheduling)?;
    }
    if inherit::io_priority()? != inherited.io_priority {
        inherit::set_io_priority(inherited.io_priority)?;
    }
    if inherit::timer_slack()? != inherited.timer_slack {
        inherit::set_timer_slack(inherited.timer_slack)?;
    }
    if inherit::huge_pages_disabled()? != inherited.huge_pages_disabled {
        inherit::set_huge_pages_disabled(inherited.huge_pages_disabled)?;
    }
    Ok(())
}

/// In the forked child: puts each descriptor under its number. Every
/// number a descriptor must take is freed first: what is to be placed and
/// sits at or below the highest number is moved above it (the caller moved
/// the report socket there already).
fn place_descriptors(placements: Vec<(OwnedFd, RawFd)>) -> std::io::Result<()> {
    let highest = highest_target(&placements);
    let moved = placements
        .into_iter()
        .map(|(fd, target)| {
            let fd = if fd.as_raw_fd() <= highest {
                sys::dup_above(fd.as_fd(), highest)?
            } else {
                fd
            };
            Ok((fd, target))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    // Without close-on-exec under their numbers, as an exec'd child has
    // them; the moved copies are closed when `moved` is dropped.
    for (fd, target) in &moved {
        sys::dup_onto_number(fd.as_fd(), *target)?;
    }
    Ok(())
}

fn highest_target(placements: &[(OwnedFd, RawFd)]) -> RawFd {
    placements
        .iter()
        .map(|(_, target)| *target)
        .max()
        .unwrap_or(-1)
}

/// In the forked child: what an exec'd child does on its way in (the
/// parent-death signal, the parent check, the process group, the pinning,
/// the kept descriptor under its number, the role's variable) and what it
/// inherits from the program of the moment ([`take_inherited`], the
/// working directory, the standard streams and other descriptors), with
/// the report to the parent in the middle; then the role. Never returns.
fn become_child(
    request: Request,
    socket: OwnedFd,
    own: &Own,
    enter_role: EnterRole,
    start_failed: i32,
) -> ! {
    drop(socket); // the zygote's: never a child's
    let Request {
        key,
        value,
        cpus,
        own_group,
        target_fd,
        parent,
        inherited,
        keep,
        report,
        cwd,
        passed,
    } = request;
    // Fires when the parent's thread that started the zygote exits: that is
    // our parent thread too (CLONE_PARENT), the fork server's thread, which
    // lives as long as the program.
    let _ = sys::set_parent_death_signal();
    if sys::getppid() != parent {
        // The pool's process died before the signal was armed.
        sys::exit_now(start_failed);
    }
    let mut failed: Option<std::io::Error> = None;
    // Before the parent learns the pid, as `posix_spawn` does it: the
    // supervisor may kill the group as soon as it knows the pid.
    if own_group {
        failed = sys::new_process_group().err();
    }
    let pinned = cpus.map(|mask| (mask, sys::pin_self_to(&mask)));
    if failed.is_none() {
        failed = take_inherited(&inherited, own)
            .and_then(|()| inherit::change_directory(cwd.as_fd()))
            .err();
    }
    drop(cwd);
    let mut placements = vec![(keep, target_fd)];
    placements.extend(passed.into_iter().zip(inherited.fd_targets.iter().copied()));
    // The report socket must not sit where a descriptor goes.
    let highest = highest_target(&placements);
    let report = if report.as_raw_fd() <= highest {
        match sys::dup_above(report.as_fd(), highest) {
            Ok(moved) => {
                // Closed now: the number is another descriptor's from below.
                drop(report);
                moved
            }
            Err(e) => {
                // No number above the targets (a descriptor limit at or
                // below them): nothing is placed, and the error reported
                // below makes the parent exec this child instead. Exiting
                // in silence made it a failed start.
                failed.get_or_insert(e);
                report
            }
        }
    } else {
        report
    };
    if failed.is_none() {
        failed = place_descriptors(placements).err();
    } else {
        drop(placements);
    }
    let errno = failed
        .as_ref()
        .map_or(0, |e| e.raw_os_error().unwrap_or(sys::EINVAL));
    let mut message = [0u8; 8];
    message[..4].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
    message[4..].copy_from_slice(&errno.to_ne_bytes());
    if sys::send_message(report.as_fd(), &message, &[]).is_err() || errno != 0 {
        sys::exit_now(start_failed);
    }
    let mut go = [0u8; 1];
    match sys::receive_message(report.as_fd(), &mut go) {
        Ok(Some((1, _))) if go[0] == b'g' => {}
        // The parent gave up on this child: it never enters its role.
        _ => sys::exit_now(start_failed),
    }
    drop(report);
    if let Some((mask, Err(e))) = pinned {
        let list = join(mask.cpus());
        eprintln!("corepool: pinning to CPUs {list} failed: {e}; this child cannot start");
        sys::exit_now(start_failed);
    }
    // One thread: nobody reads the environment concurrently.
    std::env::set_var(&key, &value);
    let code = enter_role().unwrap_or(start_failed);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_now(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_junk_is_refused() {
        assert_eq!(parse_token(&make_token(7, 1234)), Some((7, 1234)));
        assert_eq!(parse_token("v2:7:1234"), None);
        assert_eq!(parse_token("v1:7"), None);
        assert_eq!(parse_token("v1:7:1234:extra"), None);
        assert_eq!(parse_token("v1:x:1234"), None);
    }

    fn inherited(fd_targets: Vec<RawFd>) -> Inherited {
        let mut limits = [(u64::MAX, u64::MAX); inherit::LIMIT_COUNT];
        limits[7] = (1024, 4096);
        Inherited {
            umask: 0o027,
            ignored_signals: 1 << 1,
            limits,
            scheduling: Scheduling {
                policy: 3,
                priority: 0,
                nice: 5,
            },
            io_priority: 0x6004,
            timer_slack: 50_000,
            huge_pages_disabled: true,
            fd_targets,
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no sockets")]
    fn requests_round_trip_and_junk_is_refused() {
        let fds = |n: usize| {
            (0..n)
                .map(|_| sys::seqpacket_pair().unwrap().0)
                .collect::<Vec<_>>()
        };
        let sent = inherited(vec![1, 2, 9]);
        let bytes = encode_request(
            "COREPOOL_WORKER",
            "v1:5:0:42:x",
            &[3, 1],
            true,
            5,
            42,
            &sent,
        );
        let request = Request::parse(&bytes, fds(6)).unwrap();
        assert_eq!(request.key, "COREPOOL_WORKER");
        assert_eq!(request.value, "v1:5:0:42:x");
        assert_eq!(request.cpus.map(|m| m.cpus()), Some(vec![1, 3]));
        assert!(request.own_group);
        assert_eq!((request.target_fd, request.parent), (5, 42));
        assert_eq!(request.inherited, sent);
        assert_eq!(request.passed.len(), 3);
        let unpinned = encode_request("K", "", &[], false, 9, 1, &inherited(vec![]));
        assert!(Request::parse(&unpinned, fds(3)).unwrap().cpus.is_none());
        // Wrong version, a key with '=', a field missing, a descriptor
        // missing or one too many: refused.
        let bad = String::from_utf8(bytes.clone())
            .unwrap()
            .replacen("v2", "v1", 1);
        assert!(Request::parse(bad.as_bytes(), fds(6)).is_none());
        let keyed = encode_request("A=B", "", &[], false, 1, 1, &inherited(vec![]));
        assert!(Request::parse(&keyed, fds(3)).is_none());
        assert!(Request::parse(b"v2\0K\0V\0\x001\x005", fds(3)).is_none());
        assert!(Request::parse(&bytes, fds(5)).is_none());
        assert!(Request::parse(&bytes, fds(7)).is_none());
    }

    #[test]
    fn hellos_round_trip() {
        let hello = Hello {
            build: 12345,
            environment: 0xdead_beef,
            stack_limit: (8 << 20, u64::MAX),
            fixed: 7,
        };
        let text = hello.encode();
        assert_eq!(
            Hello::parse(text.strip_prefix("v2 ok ").unwrap()),
            Some(hello)
        );
        assert_eq!(Hello::parse("1 2 3"), None);
        assert_eq!(Hello::parse(&format!("{} extra", &text[6..])), None);
    }
}
