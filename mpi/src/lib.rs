//! # corepool-mpi
//!
//! corepool's [`Pool`](corepool::Pool) across the nodes of an MPI job. The
//! program is started by `mpirun`/`srun` as usual, and every rank runs it:
//!
//! ```no_run
//! use corepool_mpi::Cluster;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     corepool::init();
//!     let cluster = Cluster::init()?; // only rank 0 gets past this line
//!     let squares = cluster.map(square, 0..1000u64)?;
//!     assert_eq!(squares[999], 998_001);
//!     Ok(()) // dropping the cluster ends the job on every rank
//! }
//! ```
//!
//! [`Cluster::init`] returns on rank 0 only. Every other rank serves: it runs
//! a local corepool pool pinned to its share of the node's CPUs, runs the
//! tasks rank 0 sends, sends the results back, and exits when rank 0 drops
//! its [`Cluster`], never running the rest of `main`, as a pool worker never
//! does. Rank 0 computes too, on a local pool of its own.
//!
//! The vocabulary is the Pool's: [`apply`](Cluster::apply),
//! [`apply_async`](Cluster::apply_async) (with corepool's
//! [`Callbacks`](corepool::Callbacks)), [`map`](Cluster::map),
//! [`starmap`](Cluster::starmap), [`imap`](Cluster::imap),
//! [`imap_unordered`](Cluster::imap_unordered), and
//! [`chunked`](Cluster::chunked) for a chunk size of your own, with the same
//! task rules (`fn` items and closures that capture nothing), the same
//! [`Wire`](corepool::Wire) encodings and the same errors (a task's panic is
//! [`Error::Panicked`](corepool::Error::Panicked) at rank 0). Chunks are scheduled dynamically: each
//! rank holds a few per worker and gets the next one when it answers, so a
//! slow node never holds the job back.
//!
//! Large read-only inputs are given to every rank once with
//! [`Cluster::broadcast`] (one `MPI_Bcast` into a shared array on each
//! node); tasks carry its handle, not its data. [`Cluster::gather`] and
//! [`Cluster::reduce`] run a task once on every rank.
//!
//! ## Threads and MPI
//!
//! Each rank starts one thread of corepool-mpi's own (`corepool-mpi`) that
//! initializes MPI asking for `MPI_THREAD_FUNNELED`, makes every MPI call of
//! the rank, and finalizes MPI. The user's threads, corepool's driver and
//! supervisor threads and the pool's workers never call MPI; they hand work
//! and results to that thread through a channel. Do not call MPI yourself in
//! a program that uses corepool-mpi.
//!
//! `docs/scale-out.md` in the repository describes the model, launching,
//! the fault semantics and the measured figures.

#![cfg(target_os = "linux")]
#![deny(missing_docs)]

mod broadcast;
mod cluster;
mod comm;
mod config;
mod dispatch;
mod guard;
mod maps;
mod node;
mod proto;
mod result;
mod serve;
mod transport;

pub use broadcast::Broadcast;
pub use cluster::{Cluster, Shard};
pub use config::Config;
pub use maps::{Chunked, ClusterImap, ClusterImapUnordered};
pub use result::ClusterResult;

/// Why [`Cluster::init`] failed.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// match corepool_mpi::Cluster::init() {
///     Ok(cluster) => assert!(cluster.ranks() >= 1),
///     Err(e) => {
///         // Each variant's message says what to do (`BinaryMismatch`: copy
///         // the same binary everywhere; `Mpi`: the launcher or library;
///         // `Config`: the builder's settings).
///         eprintln!("{e}");
///         std::process::exit(1);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The ranks do not all run the same build.
    #[error("the ranks do not run the same build: rank 0's executable hashes to {rank0:#018x}, but {}; copy the same binary to every node (a content hash is compared, so copies are fine) and launch it everywhere", describe_differing(.differing))]
    BinaryMismatch {
        /// Rank 0's content hash of its executable.
        rank0: u64,
        /// The ranks whose hash differs (or could not be read: 0), with it.
        differing: Vec<(usize, u64)>,
    },
    /// A rank could not start its local pool.
    #[error("rank {rank} could not start its local pool: {source}")]
    Pool {
        /// The rank.
        rank: usize,
        /// Why.
        #[source]
        source: corepool::Error,
    },
    /// MPI could not be started as corepool-mpi needs it.
    #[error("MPI: {0}")]
    Mpi(String),
    /// The configuration cannot make a job of these ranks (say,
    /// [`Config::rank0_workers`]`(0)` in a job of one rank: no rank would
    /// compute). The message says what to change.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The MPI library this program is linked with, as it describes itself
/// (`MPI_Get_library_version`), in one line: `Open MPI v4.1.4, package:
/// ...` or `MPICH Version: 4.0.2`. Callable before [`Cluster::init`] (MPI
/// allows it before `MPI_Init`).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let library = corepool_mpi::mpi_library(); // callable before `Cluster::init`
/// assert!(library.contains("MPI"), "{library}");
/// # Ok(()) }
/// ```
pub fn mpi_library() -> String {
    let text = mpi::environment::library_version().unwrap_or_default();
    // Open MPI counts the C string's NUL in its length; MPICH's first line
    // has a tab.
    text.trim_end_matches('\0')
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe_differing(differing: &[(usize, u64)]) -> String {
    differing
        .iter()
        .map(|(rank, hash)| match hash {
            0 => format!("rank {rank} could not read its executable"),
            h => format!("rank {rank}'s hashes to {h:#018x}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
