//! What a pool is started with: [`Config`], the settings [`PoolBuilder`]
//! resolved.
//!
//! [`PoolBuilder`]: super::PoolBuilder

use super::core::FaultPolicy;
use crate::sys::CpuMask;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Config {
    /// The CPUs each worker is pinned to, ascending; empty for an unpinned
    /// worker.
    pub(super) cpu_sets: Vec<Vec<usize>>,
    pub(super) ring_bytes: u32,
    pub(super) initializer: Option<i64>,
    /// The initializer's encoded argument (empty for none).
    pub(super) initializer_arg: Vec<u8>,
    /// What that argument names, kept open while the pool lives.
    pub(super) initializer_keep: Arc<crate::wire::KeepAlive>,
    pub(super) policy: FaultPolicy,
    pub(super) start_timeout: Duration,
    /// How workers are started.
    pub(super) start_method: crate::child::forkserver::StartMethod,
    /// Bytes of the argument arena (0: none, every large argument spills
    /// into a memfd of its own).
    pub(super) arg_arena_bytes: usize,
}

/// The mask a worker pinned to `set` is started with (`None`: unpinned).
pub(super) fn mask_of(set: &[usize]) -> Option<CpuMask> {
    (!set.is_empty()).then(|| CpuMask::of(set))
}
