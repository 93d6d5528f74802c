//! The binary's only raw system calls. The library keeps its own in its
//! private `sys` module, which the binary cannot reach; whatever `unsafe` the
//! subcommands need lives here, behind safe wrappers.

use std::io;

/// Sends `signal` to process `pid`.
///
/// Only to one process: `pid <= 0` is refused with
/// [`io::ErrorKind::InvalidInput`], because `kill(0, …)` signals our own
/// process group and `kill(-1, …)` every process we may signal.
///
/// A process that is already gone gives the `ESRCH` error
/// (`raw_os_error() == Some(libc::ESRCH)`), which callers racing an exit can
/// ignore.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}: it names a group of processes, not one"),
        ));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours;
    // `pid > 0` names a single process.
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
}
