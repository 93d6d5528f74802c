//! [`Config`]: how a cluster starts (rank 0's workers, the pools' ring
//! size and retries).

use crate::{Cluster, ClusterError};

/// How a cluster starts: see [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) rank0_workers: Option<usize>,
    pub(crate) ring_bytes: u32,
    pub(crate) retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rank0_workers: None,
            ring_bytes: 1 << 22,
            retries: 0,
        }
    }
}

impl Config {
    /// Workers of rank 0's own pool; 0: rank 0 only submits and collects.
    /// Default: its share of its node's CPUs, like every rank.
    pub fn rank0_workers(mut self, n: usize) -> Self {
        self.rank0_workers = Some(n);
        self
    }

    /// `ring_bytes` of every rank's pool (a power of two): a task's encoded
    /// argument may take up to about half of it. Default 4 MiB.
    pub fn ring_bytes(mut self, bytes: u32) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// `retries` of every rank's pool: how many times a task whose worker
    /// died is run again (on the same rank) before it fails with
    /// [`Error::WorkerDied`](corepool::Error::WorkerDied). Default 0.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Starts the cluster with this configuration: see [`Cluster::init`].
    ///
    /// # Errors
    ///
    /// As [`Cluster::init`].
    pub fn init(self) -> std::result::Result<Cluster, ClusterError> {
        Cluster::start(self)
    }
}
