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
//! - zygote -> parent, once: `v1 ok <fingerprint>`, or `v1 no <why>` when it
//!   cannot fork soundly here (then it exits);
//! - parent -> zygote, per child: the fields of [`Request`] separated by NUL
//!   bytes, with two descriptors attached: the one the child keeps, and the
//!   child's end of a socket pair whose other end the parent holds (the
//!   child's *report* socket);
//! - zygote -> parent, per request: `ok <pid>` or `err <errno>`;
//! - child -> parent, on the report socket: its pid and an errno (0: set up
//!   as asked), 8 bytes; parent -> child: `g`, "go". A child that is not
//!   told to go (the parent gave up on it) exits before entering its role,
//!   so no worker ever runs that the parent does not know of.
//!
//! The zygote never starts a thread, never takes a lock another thread
//! could hold, and runs no code of the program's: between the C runtime's
//! constructors and this loop, only corepool's entry ran. Nothing it does
//! registers a `pthread_atfork` handler, so the handlers that `clone` skips
//! are only those the program's libraries registered in their constructors
//! (see `sys::fork_as_sibling`).

use crate::sys;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// The environment variable that makes a process the zygote; its value is
/// `v1:<socket fd>:<parent pid>`.
pub(crate) const ZYGOTE_ENV: &str = "COREPOOL_FORKSERVER";

/// The longest request the zygote reads (a worker's token is a few hundred
/// bytes).
const REQUEST_BYTES: usize = 64 * 1024;

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
    keep: OwnedFd,
    report: OwnedFd,
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
) -> Vec<u8> {
    let cpus = cpus
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let fields = [
        "v1",
        key,
        value,
        &cpus,
        if own_group { "1" } else { "0" },
        &target_fd.to_string(),
        &parent.to_string(),
    ];
    fields.join("\0").into_bytes()
}

impl Request {
    fn parse(bytes: &[u8], fds: Vec<OwnedFd>) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let fields: Vec<&str> = text.split('\0').collect();
        let [version, key, value, cpus, own_group, target_fd, parent] = fields[..] else {
            return None;
        };
        if version != "v1" || key.is_empty() || key.contains('=') {
            return None;
        }
        let cpus = if cpus.is_empty() {
            None
        } else {
            let list: Vec<usize> = cpus
                .split(',')
                .map(|c| c.parse().ok())
                .collect::<Option<_>>()?;
            Some(sys::CpuMask::of(&list))
        };
        let mut fds = fds.into_iter();
        let (Some(keep), Some(report), None) = (fds.next(), fds.next(), fds.next()) else {
            return None;
        };
        Some(Self {
            key: key.to_string(),
            value: value.to_string(),
            cpus,
            own_group: own_group == "1",
            target_fd: target_fd.parse().ok().filter(|&fd: &RawFd| fd >= 0)?,
            parent: parent.parse().ok()?,
            keep,
            report,
        })
    }
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
    let hello = match &book {
        Ok(_) => format!("v1 ok {}", crate::child::fingerprint::fingerprint()),
        Err(why) => format!("v1 no {why}"),
    };
    if sys::send_message(socket.as_fd(), hello.as_bytes(), &[]).is_err() {
        sys::exit_now(0);
    }
    let Ok(book) = book else {
        sys::exit_now(0);
    };
    let mut buf = vec![0u8; REQUEST_BYTES];
    loop {
        let (len, fds) = match sys::receive_message(socket.as_fd(), &mut buf) {
            Ok(Some(message)) => message,
            Err(e) if e.raw_os_error() == Some(sys::EMSGSIZE) => {
                answer(&socket, &format!("err {}", sys::EMSGSIZE));
                continue;
            }
            // End of file: the parent closed its end, or exited.
            Ok(None) | Err(_) => sys::exit_now(0),
        };
        let Some(request) = Request::parse(&buf[..len], fds) else {
            answer(&socket, &format!("err {}", sys::EINVAL));
            continue;
        };
        // SAFETY: this process has one thread: `of_this_thread` checked it
        // at start, and the zygote starts none (it runs only this loop).
        // `book` was found on this very thread.
        match unsafe { sys::fork_as_sibling(&book) } {
            Ok(Some(pid)) => {
                // Our copies of the child's descriptors, closed here.
                drop(request);
                answer(&socket, &format!("ok {pid}"));
            }
            Ok(None) => become_child(request, socket, enter_role, start_failed),
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

/// Answers the parent; a parent that is gone is the end of the zygote.
fn answer(socket: &OwnedFd, text: &str) {
    if sys::send_message(socket.as_fd(), text.as_bytes(), &[]).is_err() {
        sys::exit_now(0);
    }
}

/// In the forked child: what an exec'd child does on its way in (the
/// parent-death signal, the parent check, the process group, the pinning,
/// the kept descriptor under its number, the role's variable), with the
/// report to the parent in the middle; then the role. Never returns.
fn become_child(request: Request, socket: OwnedFd, enter_role: EnterRole, start_failed: i32) -> ! {
    drop(socket); // the zygote's: never a child's
    let Request {
        key,
        value,
        cpus,
        own_group,
        target_fd,
        parent,
        keep,
        report,
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
    // The kept descriptor goes under the number the token names; the report
    // socket must not sit there.
    let report = if report.as_raw_fd() == target_fd {
        let Ok(moved) = sys::dup_above(report.as_fd(), target_fd) else {
            sys::exit_now(start_failed);
        };
        // Closed now, not at the end of this function: the number is the
        // kept descriptor's from the `dup2` below, and a shadowed `report`
        // would otherwise own it too (and close it, were this ever to
        // return).
        drop(report);
        moved
    } else {
        report
    };
    if failed.is_none() {
        if keep.as_raw_fd() == target_fd {
            // Already there: keep it open (without close-on-exec, as an
            // exec'd child has it) rather than close it on drop.
            let fd = keep.into_raw_fd();
            failed = sys::clear_cloexec(fd).err();
        } else {
            failed = sys::dup_onto_number(keep.as_fd(), target_fd).err();
            drop(keep);
        }
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
        let list = mask
            .cpus()
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
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

    #[test]
    #[cfg_attr(miri, ignore = "Miri has no sockets")]
    fn requests_round_trip_and_junk_is_refused() {
        let fds = || {
            let (a, b) = sys::seqpacket_pair().unwrap();
            vec![a, b]
        };
        let bytes = encode_request("COREPOOL_WORKER", "v1:5:0:42:x", &[3, 1], true, 5, 42);
        let request = Request::parse(&bytes, fds()).unwrap();
        assert_eq!(request.key, "COREPOOL_WORKER");
        assert_eq!(request.value, "v1:5:0:42:x");
        assert_eq!(request.cpus.map(|m| m.cpus()), Some(vec![1, 3]));
        assert!(request.own_group);
        assert_eq!((request.target_fd, request.parent), (5, 42));
        let unpinned = encode_request("K", "", &[], false, 9, 1);
        assert!(Request::parse(&unpinned, fds()).unwrap().cpus.is_none());
        // Wrong version, a key with '=', a field missing, a descriptor
        // missing: refused.
        let bad = String::from_utf8(bytes.clone())
            .unwrap()
            .replacen("v1", "v2", 1);
        assert!(Request::parse(bad.as_bytes(), fds()).is_none());
        assert!(Request::parse(&encode_request("A=B", "", &[], false, 1, 1), fds()).is_none());
        assert!(Request::parse(b"v1\0K\0V\0\x001\x005", fds()).is_none());
        let mut one = fds();
        one.pop();
        assert!(Request::parse(&bytes, one).is_none());
    }
}
