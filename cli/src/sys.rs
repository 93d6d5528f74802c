//! The binary's only system calls. The library keeps its own in its private
//! `sys` module, which the binary cannot reach; the subcommands reach the
//! kernel through the safe wrappers here (rustix underneath: no `unsafe`).

use std::io;

use rustix::process::{Pid, Signal};

/// Sends `signal` to process `pid`; signal 0 only checks that it exists and
/// may be signalled.
///
/// Only to one process: `pid <= 0` is refused with
/// [`io::ErrorKind::InvalidInput`], because `kill(0, …)` signals our own
/// process group and `kill(-1, …)` every process we may signal. A number that
/// names no signal is refused the same way, as the kernel would (`EINVAL`).
///
/// A process that is already gone gives the `ESRCH` error
/// (`raw_os_error() == Some(libc::ESRCH)`), which callers racing an exit can
/// ignore.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    let Some(target) = Pid::from_raw(pid.max(0)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}: it names a group of processes, not one"),
        ));
    };
    if signal == 0 {
        return Ok(rustix::process::test_kill_process(target)?);
    }
    let signal = Signal::from_named_raw(signal).ok_or(rustix::io::Errno::INVAL)?;
    Ok(rustix::process::kill_process(target, signal)?)
}

/// Waits until our child `pid` has exited, without reaping it (`WNOWAIT`):
/// its pid stays ours, so whoever still holds it may signal it safely, until
/// the reap that follows. With `block` false, only checks: `Ok(false)` while
/// it runs. A child reaped already is `ECHILD`.
pub(crate) fn exited_unreaped(pid: u32, block: bool) -> io::Result<bool> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(rustix::io::Errno::INVAL)?;
    let mut options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    if !block {
        options |= WaitIdOptions::NOHANG;
    }
    loop {
        match waitid(WaitId::Pid(pid), options) {
            Ok(status) => return Ok(block || status.is_some()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reaps our child `pid` if it has exited: `Ok(true)` when reaped (or
/// reaped already by someone else, `ECHILD`), `Ok(false)` while it runs.
pub(crate) fn try_reap(pid: u32) -> io::Result<bool> {
    use rustix::process::{waitpid, WaitOptions};
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(rustix::io::Errno::INVAL)?;
    match waitpid(Some(pid), WaitOptions::NOHANG) {
        Ok(reaped) => Ok(reaped.is_some()),
        Err(rustix::io::Errno::CHILD) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// This process's address-space limit (`ulimit -v`) in bytes, `None` when
/// it has none.
pub(crate) fn address_space_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::As).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_refused() {
        for pid in [0, -1, -2] {
            let err = kill(pid, 0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn signal_zero_probes_ourselves() {
        kill(std::process::id() as i32, 0).unwrap();
    }

    #[test]
    fn unknown_signals_are_refused() {
        let err = kill(std::process::id() as i32, 12345).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
