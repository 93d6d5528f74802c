//! What a pool has lived through: [`PoolStats`].

use std::time::Duration;

/// What a pool has lived through: for monitoring, soak tests and benchmarks.
///
/// ```
/// fn main() {
///     let pool = corepool::Pool::new(1).unwrap();
///     assert_eq!(pool.stats().respawns, 0);
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers started to replace one that exited (died, retired, timed
    /// out), or to try again a slot whose last start failed.
    pub respawns: u64,
    /// Time from the parent seeing a worker's death to its replacement being
    /// ready, for the last (up to 1024) replacements, oldest first.
    pub replacements: Vec<Duration>,
    /// Worker starts that failed: the process could not be started (EMFILE,
    /// EAGAIN, ...), or it failed or died before it attached. A slot whose
    /// starts fail is tried again after 10 ms, doubling; after three in a
    /// row it rests (2 s, doubling to a minute) before each further try, so
    /// the pool comes back to full strength once the cause is gone. While
    /// every slot rests, tasks fail with the start error.
    pub start_failures: u64,
    /// Times the supervisor thread could not watch the workers (a `poll` or
    /// `waitid` that failed: EMFILE, ENOMEM, ...). Such a failure kills
    /// nobody and loses nothing: the supervisor looks again after a pause
    /// (1 ms, doubling to 100 ms while failures repeat), so a worker's death
    /// may be noticed that much later.
    pub supervisor_errors: u64,
    /// What the last of [`supervisor_errors`](Self::supervisor_errors) was.
    pub last_supervisor_error: Option<String>,
    /// Workers the pool could not kill when it ended (`terminate`, or drop
    /// before the tasks were done), because the program dropped the
    /// privileges that signalling them needs (`setuid` to another user,
    /// say) after they started. They were given up rather than waited for:
    /// their tasks failed with [`Error::Cancelled`](crate::Error::Cancelled),
    /// each exits when its task ends (or outlives the program if that never
    /// happens) and is reaped then. Drop privileges before building a pool
    /// to keep this at 0.
    pub abandoned: u64,
}

impl PoolStats {
    pub(super) fn record_replacement(&mut self, took: Duration) {
        if self.replacements.len() == 1024 {
            self.replacements.remove(0);
        }
        self.replacements.push(took);
    }

    /// The median of [`replacements`](Self::replacements), if any.
    ///
    /// ```
    /// let stats = corepool::PoolStats::default();
    /// assert_eq!(stats.median_replacement(), None); // nothing replaced yet
    /// ```
    pub fn median_replacement(&self) -> Option<Duration> {
        let mut sorted = self.replacements.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied()
    }
}
