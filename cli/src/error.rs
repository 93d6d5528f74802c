//! The error every subcommand returns.

/// Everything a subcommand can fail with. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The library refused or failed (building a pool, running a task).
    #[error(transparent)]
    Pool(#[from] corepool::Error),
    /// A command-line value that cannot work (exit status 2, as clap's own
    /// errors: the command line must change).
    #[error("{0}")]
    Usage(String),
    /// Sizes (`--size`) whose run cannot fit in this process's memory:
    /// refused before anything is allocated.
    #[error("{0}")]
    TooLarge(String),
    /// Writing an output file failed.
    #[error("writing {path} failed: {reason}; check that its directory exists and is writable")]
    Write {
        /// The file.
        path: String,
        /// The operating system's answer.
        reason: String,
    },
    /// A benchmark computed a wrong result: a bug.
    #[error("a benchmark computed a wrong result ({0}): this is a bug in corepool, please report it with the command line")]
    Wrong(String),
    /// The Python baseline ran but failed.
    #[error("the Python baseline failed: {0}")]
    Python(String),
    /// Standard output could not be written: its reader went away (a closed
    /// pipe, see [`CliError::is_broken_pipe`]) or it is full or broken.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl CliError {
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }

    /// The exit status this error ends the command with: 2 for a command
    /// line that cannot work (as clap's own errors), 1 for a failed run.
    pub(crate) fn exit_status(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::TooLarge(_) => 2,
            _ => 1,
        }
    }

    /// Whether this is standard output's reader having gone away, which ends
    /// the command quietly (as `cat` or `ls` end) rather than as a failure.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
