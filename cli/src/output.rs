//! Everything the command writes: standard output through [`outln!`] and
//! [`out!`], which return an error instead of panicking as `println!` does
//! when the reader has gone away (`EPIPE`) or the output cannot take more
//! (`ENOSPC`, `EIO`); messages to standard error through [`warn`], which
//! cannot fail the command.
//!
//! Rust ignores `SIGPIPE`, so a closed pipe is an ordinary write error here.
//! `main` turns it into a quiet exit with [`BROKEN_PIPE_STATUS`], the status
//! a shell reports for `cat` or `ls` ended by `SIGPIPE`, after every pool
//! and child process has been dropped on the way out; any other write error
//! is one line on standard error and exit status 1.

use crate::CliError;
use std::fmt;
use std::io::{self, Write};

/// The exit status when standard output's reader went away: 128 + SIGPIPE
/// (13), what a shell shows for a command that `SIGPIPE` ended.
pub(crate) const BROKEN_PIPE_STATUS: u8 = 128 + 13;

/// Writes `args` to standard output; a failed write is [`CliError::Output`].
pub(crate) fn write(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    write_to(&mut io::stdout().lock(), args)
}

/// Writes `args` and a newline to standard output as one write of the lock.
pub(crate) fn write_line(args: fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    write_to(&mut out, args)?;
    write_to(&mut out, format_args!("\n"))
}

/// Flushes standard output, so that a failure of its last write is reported
/// rather than lost when the process exits (which ignores it).
pub(crate) fn flush() -> Result<(), CliError> {
    io::stdout().flush().map_err(CliError::Output)
}

fn write_to(out: &mut impl Write, args: fmt::Arguments<'_>) -> Result<(), CliError> {
    out.write_fmt(args).map_err(CliError::Output)
}

/// `n` and the noun that fits it: `1 CPU`, `2 CPUs`.
pub(crate) fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Writes one line to standard error. Standard error is where failures are
/// reported, so a failure to write there has nowhere left to go: it is
/// ignored rather than turned into a panic as `eprintln!` would.
pub(crate) fn warn(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` that returns `Result<(), CliError>` instead of panicking.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// `print!` that returns `Result<(), CliError>` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails every write with `kind`.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_is_an_error_not_a_panic() {
        let err = write_to(&mut Failing(io::ErrorKind::BrokenPipe), format_args!("x"))
            .expect_err("the write failed");
        assert!(err.is_broken_pipe(), "{err:?}");
        let err = write_to(&mut Failing(io::ErrorKind::StorageFull), format_args!("x"))
            .expect_err("the write failed");
        assert!(!err.is_broken_pipe(), "{err:?}");
        assert!(
            err.to_string().starts_with("cannot write the output: "),
            "{err}"
        );
    }
}
