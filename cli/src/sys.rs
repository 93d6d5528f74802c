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
