//! [`Config`]: how a cluster starts (rank 0's workers, the pools' ring
//! size, retries and task timeout).

use crate::{Cluster, ClusterError};

/// How a cluster starts: see [`Cluster::builder`].
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = corepool_mpi::Cluster::builder().ring_bytes(1 << 23).retries(2).init()?;
/// assert_eq!(cluster.apply(|x: u8| x, 7)?, 7);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) rank0_workers: Option<usize>,
    pub(crate) ring_bytes: u32,
    pub(crate) retries: u32,
    pub(crate) task_timeout: Option<std::time::Duration>,
    pub(crate) message_piece: usize,
    pub(crate) shutdown_grace: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rank0_workers: None,
            ring_bytes: 1 << 22,
            retries: 0,
            task_timeout: None,
            message_piece: crate::transport::PIECE_MAX,
            shutdown_grace: crate::comm::SHUTDOWN_GRACE,
        }
    }
}

impl Config {
    /// Workers of rank 0's own pool; 0: rank 0 only submits and collects
    /// (then the job needs another rank: in a job of one rank `init` fails
    /// with [`ClusterError::Config`]). Default: its share of its node's
    /// CPUs, like every rank.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Rank 0 computes too by default; with 0 it only submits and collects.
    /// let cluster = corepool_mpi::Cluster::builder().rank0_workers(1).init()?;
    /// assert_eq!(cluster.workers()[0], 1);
    /// # Ok(()) }
    /// ```
    pub fn rank0_workers(mut self, n: usize) -> Self {
        self.rank0_workers = Some(n);
        self
    }

    /// `ring_bytes` of every rank's pool (a power of two): a task's encoded
    /// argument (or result) of up to about half of it travels inside a
    /// worker's ring ([`Cluster::max_task_bytes`]); a larger one goes
    /// through the argument arena or a spill, slower but of any size, so
    /// this is a speed knob, not a limit. Default 4 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::builder().ring_bytes(1 << 20).init()?;
    /// assert!(cluster.max_task_bytes() < 1 << 20);
    /// # Ok(()) }
    /// ```
    pub fn ring_bytes(mut self, bytes: u32) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// `retries` of every rank's pool: how many times a task whose worker
    /// died is run again (on the same rank) before it fails with
    /// [`Error::WorkerDied`](corepool::Error::WorkerDied). Default 0.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A task whose worker dies runs once more before it fails.
    /// let cluster = corepool_mpi::Cluster::builder().retries(1).init()?;
    /// assert_eq!(cluster.apply(|x: u8| x + 1, 1)?, 2);
    /// # Ok(()) }
    /// ```
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// `task_timeout` of every rank's pool: a task that runs longer has its
    /// worker killed and fails with
    /// [`Error::TaskTimedOut`](corepool::Error::TaskTimedOut) at rank 0,
    /// whose `rank` is the rank that timed it out; the rank goes on with a
    /// new worker. Default: none. It bounds a task, not
    /// a rank: one that is stopped or wedged as a whole answers nothing, so
    /// bound that wait at rank 0 (`get_timeout`) or with the launcher's
    /// timeout (docs/scale-out.md, "Faults").
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let cluster = corepool_mpi::Cluster::builder()
    ///     .task_timeout(Duration::from_millis(200))
    ///     .init()?;
    /// let stuck = |_: u8| -> u8 { std::thread::sleep(Duration::from_secs(60)); 0 };
    /// assert!(matches!(
    ///     cluster.apply(stuck, 1),
    ///     Err(corepool::Error::TaskTimedOut { rank: Some(0), .. }) // a one-rank job
    /// ));
    /// assert_eq!(cluster.apply(|x: u8| x + 1, 1)?, 2);
    /// # Ok(()) }
    /// ```
    pub fn task_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long the end of the job waits for another rank: rank 0's drop of
    /// the [`Cluster`] for every rank's answer to the shutdown, and each
    /// rank for its last messages to be taken. Default 60 s. It is counted
    /// from the last message, or piece of one, that came or went (a
    /// message over 1 GiB goes in pieces of 1 GiB), so a large transfer
    /// still moving at the end is waited out however long it takes in
    /// all; one message or piece must still arrive within it (1 GiB over
    /// 1 GbE takes about 9 s).
    ///
    /// A rank that died never makes it wait (the launcher ends the job
    /// first). One that hangs alive (stopped with SIGSTOP, wedged) past the
    /// grace has the waiting rank print which rank it waited for and end
    /// the whole job with `MPI_Abort` (exit status 1), rather than hang in
    /// `MPI_Finalize`: then **nothing of rank 0's `main` after the drop
    /// runs**, so write results out before dropping the cluster. A shorter
    /// grace ends such a job sooner; a longer one waits out a rank that is
    /// only slow to stop (a task that ignores its end, a loaded node).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let cluster = corepool_mpi::Cluster::builder()
    ///     .shutdown_grace(Duration::from_secs(10))
    ///     .init()?;
    /// assert_eq!(cluster.apply(|x: u8| x, 3)?, 3);
    /// drop(cluster); // waits at most 10 s for a rank that hangs alive
    /// # Ok(()) }
    /// ```
    pub fn shutdown_grace(mut self, grace: std::time::Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The largest piece a message between ranks (or a broadcast) is sent
    /// in, clamped to `4096..=i32::MAX` (an MPI count is an `int`; each
    /// piece is an MPI request, so a few bytes would make a megabyte a
    /// million of them). Default 1 GiB. For the tests: a small piece sends
    /// small messages in pieces, the path of every message over 1 GiB.
    /// Ranks may be given different ones: a rank takes pieces of any size,
    /// and a broadcast is cut by rank 0's piece, which it sends along.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::builder().message_piece_bytes(4096).init()?;
    /// assert_eq!(cluster.apply(|v: Vec<u8>| v.len(), vec![1u8; 10_000])?, 10_000);
    /// # Ok(()) }
    /// ```
    #[doc(hidden)]
    pub fn message_piece_bytes(mut self, bytes: usize) -> Self {
        self.message_piece = bytes;
        self
    }

    /// Starts the cluster with this configuration: see [`Cluster::init`].
    ///
    /// # Errors
    ///
    /// As [`Cluster::init`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = corepool_mpi::Cluster::builder().init()?; // as `Cluster::init()`
    /// assert_eq!(cluster.ranks(), cluster.workers().len());
    /// # Ok(()) }
    /// ```
    pub fn init(self) -> std::result::Result<Cluster, ClusterError> {
        Cluster::start(self)
    }
}
