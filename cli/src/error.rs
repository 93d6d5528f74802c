//! The error every subcommand returns.

/// Everything a subcommand can fail with. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The library refused or failed (building a pool, running a task).
    #[error(transparent)]
    Pool(#[from] corepool::Error),
    /// A command-line value that cannot work.
    #[error("{0}")]
    Usage(String),
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
}

impl CliError {
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }
}
