//! What a pool has lived through: [`PoolStats`].

use std::time::Duration;

/// What a pool has lived through: for monitoring, soak tests and benchmarks.
///
/// ```
/// fn main() {
///     corepool::init();
///     let pool = corepool::Pool::new(1).unwrap();
///     assert_eq!(pool.stats().respawns, 0);
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers started to replace one that exited (died, retired, timed out).
    pub respawns: u64,
    /// Time from the parent seeing a worker's death to its replacement being
    /// ready, for the last (up to 1024) replacements, oldest first.
    pub replacements: Vec<Duration>,
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
