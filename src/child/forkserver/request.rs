//! One request to the fork server, parent side: a child forked by the
//! zygote for us, followed from the zygote's answer to the child's report
//! and "go", and every way that can go wrong (the zygote dead, hung or out
//! of step; the child killed before it reported) ended without a hang and
//! with every child either handed over or reaped.

use super::{Zygote, REQUEST_TIMEOUT};
use crate::child::spawn::Reexec;
use crate::child::zygote::{self, Inherited};
use crate::sys;
use crate::sys::inherit::{self, Limits, ThreadStatus};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// After a hung zygote is killed: how long a child it may have forked has
/// to report itself before it is given up.
const GRACE: Duration = Duration::from_secs(5);

/// Whether the zygote can serve the next request.
#[derive(Debug)]
pub(super) enum Health {
    Fine,
    /// Dead, hung or out of step (why): to be discarded.
    Broken(String),
}

/// What the zygote answered a request.
enum Reply {
    Forked(i32),
    Refused(std::io::Error),
    /// It could not take the program's resource limits, or receive the
    /// descriptors (errno): a zygote started again can.
    Stale(i32),
}

/// What the child said on its report socket.
enum Report {
    /// Its pid, and 0 or the errno of its set-up that failed (it exits then).
    Started { pid: i32, errno: i32 },
    /// The socket closed with nothing said: no child will report.
    Closed,
}

/// Reads the zygote's answer, waiting at most until `deadline`.
fn await_reply(zygote: &Zygote, deadline: Instant) -> Result<Reply, String> {
    match sys::readable_before(zygote.socket.as_fd(), deadline) {
        Ok(true) => read_reply(zygote),
        Ok(false) => Err("the fork server did not answer in time".into()),
        Err(e) => Err(format!("waiting for the fork server: {e}")),
    }
}

fn read_reply(zygote: &Zygote) -> Result<Reply, String> {
    let mut buf = [0u8; 64];
    let len = match sys::receive_message(zygote.socket.as_fd(), &mut buf) {
        Ok(Some((len, _))) => len,
        Ok(None) => return Err("the fork server closed its socket (it died)".into()),
        Err(e) => return Err(format!("reading the fork server's answer: {e}")),
    };
    let text = String::from_utf8_lossy(&buf[..len]);
    let number = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|n| n.parse::<i32>().ok())
    };
    if let Some(pid) = number("ok ").filter(|&pid| pid > 0) {
        Ok(Reply::Forked(pid))
    } else if let Some(errno) = number("err ") {
        Ok(Reply::Refused(std::io::Error::from_raw_os_error(errno)))
    } else if let Some(errno) = number("stale ") {
        Ok(Reply::Stale(errno))
    } else {
        Err(format!("the fork server answered {text:?}"))
    }
}

fn read_report(report: &OwnedFd) -> Report {
    let mut buf = [0u8; 8];
    match sys::receive_message(report.as_fd(), &mut buf) {
        Ok(Some((8, _))) => {
            let word =
                |at: usize| i32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            match word(0) {
                pid if pid > 0 => Report::Started {
                    pid,
                    errno: word(4),
                },
                _ => Report::Closed,
            }
        }
        _ => Report::Closed,
    }
}

/// Kills and reaps a child of ours that will not be used (it never
/// entered its role; not reaped yet, so the pid is still its own).
fn reap_unused(pid: i32) {
    sys::signal_child(pid, sys::Signal::KILL);
    let _ = sys::wait_exit(pid);
}

/// What an exec'd child started by the calling thread now would inherit
/// (`status` and `limits` read already), and the descriptors it would hold
/// besides its first kept one: its working directory, and those to go under
/// `fd_targets`' numbers (standard output and error among them, and the
/// other kept ones, `also_kept`, last).
fn inherited_now(
    status: &ThreadStatus,
    limits: &Limits,
    keep_fd: RawFd,
    also_kept: &[RawFd],
) -> std::io::Result<(Inherited, OwnedFd)> {
    let mut fd_targets = inherit::inherited_descriptors(keep_fd)?;
    // A kept descriptor is close-on-exec here, so not listed; were one not,
    // it must still be sent once.
    fd_targets.retain(|fd| !also_kept.contains(fd));
    fd_targets.extend_from_slice(also_kept);
    if zygote::FIXED_FDS + fd_targets.len() > sys::MAX_PASSED_FDS {
        return Err(std::io::Error::from_raw_os_error(sys::EMSGSIZE));
    }
    let inherited = Inherited {
        umask: status.umask,
        ignored_signals: status.ignored_signals,
        limits: *limits,
        scheduling: inherit::scheduling_for_a_child()?,
        io_priority: inherit::io_priority()?,
        timer_slack: inherit::timer_slack()?,
        huge_pages_disabled: inherit::huge_pages_disabled()?,
        fd_targets,
    };
    Ok((inherited, inherit::open_working_directory()?))
}

/// The request for one child: its pid once it has reported (and been told
/// to go), or why not, and whether the zygote can go on serving.
pub(super) fn request(
    zygote: &Zygote,
    reexec: &Reexec,
    status: &ThreadStatus,
    limits: &Limits,
) -> (std::io::Result<i32>, Health) {
    // The first kept descriptor goes as the request's own; the others go
    // with those the child inherits, each under its number.
    let (keep_fd, also_kept) = match reexec.keep_fds.split_first() {
        Some((&first, rest)) if reexec.keep_fds.iter().all(|&fd| fd >= 0) => (first, rest),
        _ => {
            return (
                Err(std::io::Error::from_raw_os_error(sys::EINVAL)),
                Health::Fine,
            )
        }
    };
    // What cannot be read or sent (too many descriptors to pass, a
    // directory that cannot be opened) is not an error an exec would have:
    // the child is exec'd.
    let (inherited, cwd) = match inherited_now(status, limits, keep_fd, also_kept) {
        Ok(found) => found,
        Err(e) => return (Err(set_up_failed_because(e)), Health::Fine),
    };
    let (report, theirs) = match sys::seqpacket_pair() {
        Ok(pair) => pair,
        Err(e) => return (Err(e), Health::Fine),
    };
    // An unpinned child gets the CPUs the spawning thread may use now, as an
    // exec'd child inherits them.
    let cpus = match &reexec.cpus {
        Some(mask) => mask.cpus(),
        None => sys::affinity_of(0).unwrap_or_default(),
    };
    if reexec.cpus.is_some() && cpus.is_empty() {
        return (
            Err(std::io::Error::from_raw_os_error(sys::EINVAL)),
            Health::Fine,
        );
    }
    let message = zygote::encode_request(
        reexec.env.0,
        &reexec.env.1,
        &cpus,
        reexec.own_group,
        keep_fd,
        std::process::id() as i32,
        &inherited,
    );
    // SAFETY: the caller holds `keep_fd` open for the child (the pool's
    // segment) until the spawn returns; the borrow ends before that.
    let keep = unsafe { BorrowedFd::borrow_raw(keep_fd) };
    let mut fds = vec![keep, theirs.as_fd(), cwd.as_fd()];
    // SAFETY: numbers just listed as open in this process (the program's
    // inherited descriptors), or the request's other kept ones (a pool's
    // sealed header and common segment), which the caller holds open until
    // the spawn returns, as `keep_fd`; one another thread closes meanwhile
    // makes the send fail with EBADF (below), and the borrows end with the
    // send.
    fds.extend(
        inherited
            .fd_targets
            .iter()
            .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) }),
    );
    if let Err(e) = sys::send_message(zygote.socket.as_fd(), &message, &fds) {
        // A descriptor closed since it was listed: nothing was sent.
        if e.raw_os_error() == Some(sys::EBADF) {
            return (Err(set_up_failed_because(e)), Health::Fine);
        }
        let why = format!("sending a request to the fork server failed: {e}");
        return (Err(e), Health::Broken(why));
    }
    drop(fds);
    drop(cwd);
    // Only the zygote, and the child it forks, hold the other end now: its
    // end-of-file says that no child will report.
    drop(theirs);
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut forked: Option<i32> = None;
    let mut broken: Option<String> = None;
    let mut ready = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return hung(zygote, &report, forked);
        }
        // The zygote's socket only until its answer came (or it closed).
        let listen_to_zygote = forked.is_none() && broken.is_none();
        let mut fds = vec![report.as_fd()];
        if listen_to_zygote {
            fds.push(zygote.socket.as_fd());
        }
        if let Err(e) = sys::poll_readable(&fds, &mut ready, Some(left)) {
            let why = format!("waiting for the fork server: {e}");
            return finish_without_zygote(zygote, &report, forked, why);
        }
        if ready.first().copied().unwrap_or(false) {
            let started = read_report(&report);
            // Keep the zygote in step: its answer to this request is read
            // before the next request is sent.
            if listen_to_zygote {
                match await_reply(zygote, deadline) {
                    Ok(Reply::Forked(pid)) => forked = Some(pid),
                    Ok(Reply::Refused(e)) => return (Err(e), health(broken)),
                    Ok(Reply::Stale(errno)) => return stale(errno),
                    Err(why) => broken = Some(why),
                }
            }
            return match started {
                // The child's word against the zygote's: a pid that is not
                // the one forked would make the supervisor watch, and one
                // day kill, a process that is not ours.
                Report::Started { pid, .. } if forked.is_some_and(|f| f != pid) => {
                    if let Some(f) = forked {
                        reap_unused(f);
                    }
                    let why =
                        format!("the forked child reported pid {pid}, not the forked {forked:?}");
                    (Err(std::io::Error::other(why.clone())), Health::Broken(why))
                }
                Report::Started { pid, errno: 0 } => {
                    // A child dead before it reads this is still ours: the
                    // supervisor reaps it and reports its exit.
                    let _ = sys::send_message(report.as_fd(), b"g", &[]);
                    (Ok(pid), health(broken))
                }
                Report::Started { pid, errno } => {
                    // It exits at once after a failed set-up.
                    let _ = sys::wait_exit(pid);
                    (Err(set_up_failed(errno)), health(broken))
                }
                Report::Closed => match forked {
                    // Forked, but gone before it reported (killed from
                    // outside): ours to reap.
                    Some(pid) => {
                        reap_unused(pid);
                        let e = std::io::Error::other("the forked child died before it was set up");
                        (Err(e), health(broken))
                    }
                    None => {
                        let why = broken.unwrap_or_else(|| {
                            "the fork server closed the child's socket without an answer".into()
                        });
                        (Err(std::io::Error::other(why.clone())), Health::Broken(why))
                    }
                },
            };
        }
        if listen_to_zygote && ready.get(1).copied().unwrap_or(false) {
            match read_reply(zygote) {
                Ok(Reply::Forked(pid)) => forked = Some(pid),
                // Nothing was forked: the report socket closes unread.
                Ok(Reply::Refused(e)) => return (Err(e), Health::Fine),
                Ok(Reply::Stale(errno)) => return stale(errno),
                // Dead or out of step; a child it forked still reports.
                Err(why) => broken = Some(why),
            }
        }
    }
}

/// A forked child's set-up failed with `errno` (its process group, or its
/// descriptor under the number the token names). Not what exec would
/// answer: the zygote's state (its descriptor limit, say) is that of the
/// program's past, so the caller execs the child instead
/// ([`is_set_up_failure`]).
#[derive(Debug)]
struct SetUpFailed(i32);

impl std::fmt::Display for SetUpFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cause = std::io::Error::from_raw_os_error(self.0);
        write!(f, "the forked child's set-up failed: {cause}")
    }
}

impl std::error::Error for SetUpFailed {}

fn set_up_failed(errno: i32) -> std::io::Error {
    std::io::Error::other(SetUpFailed(errno))
}

/// [`set_up_failed`] for an error of ours on the way to a request.
fn set_up_failed_because(error: std::io::Error) -> std::io::Error {
    set_up_failed(error.raw_os_error().unwrap_or(sys::EINVAL))
}

/// The zygote could not take the program's state (errno): nothing was
/// forked; it is retired (a new one inherits the program's), and the child
/// exec'd.
fn stale(errno: i32) -> (std::io::Result<i32>, Health) {
    let why = format!(
        "the fork server could not take the program's resource limits or descriptors ({})",
        std::io::Error::from_raw_os_error(errno)
    );
    (Err(set_up_failed(errno)), Health::Broken(why))
}

/// Whether `error` is a forked child's failed set-up.
pub(super) fn is_set_up_failure(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<SetUpFailed>())
}

fn health(broken: Option<String>) -> Health {
    match broken {
        None => Health::Fine,
        Some(why) => Health::Broken(why),
    }
}

/// The zygote did not answer in time: it is killed (so it forks nothing
/// more), and a child it may have forked gets [`GRACE`] to report.
fn hung(zygote: &Zygote, report: &OwnedFd, forked: Option<i32>) -> (std::io::Result<i32>, Health) {
    sys::pidfd_send_signal(zygote.pidfd.as_fd(), sys::Signal::KILL);
    let why = format!(
        "the fork server did not answer within {} s",
        REQUEST_TIMEOUT.as_secs()
    );
    finish_without_zygote(zygote, report, forked, why)
}

/// Ends a request whose zygote is broken (`why`): a child that reports
/// within [`GRACE`] is used; one that does not is killed and reaped if its
/// pid is known (otherwise it never gets its "go", and exits by itself).
fn finish_without_zygote(
    zygote: &Zygote,
    report: &OwnedFd,
    mut forked: Option<i32>,
    why: String,
) -> (std::io::Result<i32>, Health) {
    let grace = Instant::now() + GRACE;
    if matches!(sys::readable_before(report.as_fd(), grace), Ok(true)) {
        match read_report(report) {
            // Not the forked child's pid: the forked one is reaped below.
            Report::Started { pid, .. } if forked.is_some_and(|f| f != pid) => {}
            Report::Started { pid, errno: 0 } => {
                let _ = sys::send_message(report.as_fd(), b"g", &[]);
                return (Ok(pid), Health::Broken(why));
            }
            Report::Started { pid, .. } => {
                // Reaped here: its pid must not be looked up again below.
                let _ = sys::wait_exit(pid);
                return (Err(std::io::Error::other(why.clone())), Health::Broken(why));
            }
            Report::Closed => {}
        }
    }
    if forked.is_none() {
        // Its answer may still sit in the socket, unread.
        let soon = Instant::now() + Duration::from_millis(100);
        if let Ok(Reply::Forked(pid)) = await_reply(zygote, soon) {
            forked = Some(pid);
        }
    }
    if let Some(pid) = forked {
        reap_unused(pid);
    }
    (Err(std::io::Error::other(why.clone())), Health::Broken(why))
}
