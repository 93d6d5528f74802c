//! What the two-party workloads (`queue`, `pipe_rtt`) share on every
//! system: the messages and their checksums, the two CPUs the parties run
//! on, and the timed round trips.

use super::tasks::{check, triangle};
use super::{Sample, Workload};
use crate::stats::median_u64;
use crate::CliError;
use std::time::Instant;

/// What the producer puts first, so that the timed part starts with the
/// producer running (not with its start-up).
pub(super) const READY: [u64; 8] = [u64::MAX; 8];

/// Queue slots, as many as the threads baseline's channel has.
pub(super) const QUEUE_CAPACITY: usize = 1024;

/// Round trips before the timed ones of `pipe_rtt`.
pub(super) const PING_WARMUP: u64 = 100;

/// Message `i` of `queue`: its words add up to `36 * i`.
pub(super) fn message(i: u64) -> [u64; 8] {
    std::array::from_fn(|k| i.wrapping_mul(k as u64 + 1))
}

pub(super) fn message_sum(m: &[u64; 8]) -> u64 {
    m.iter().fold(0, |s, x| s.wrapping_add(*x))
}

/// The sum of the words of messages `0..n`.
pub(super) fn queue_checksum(n: u64) -> u64 {
    triangle(n).wrapping_mul(36)
}

/// The two CPUs of the two-party workloads: `(parent, child)`, different
/// when at least two are allowed.
pub(crate) fn pair_cpus() -> Result<(usize, usize), CliError> {
    let cpus = corepool::info::allowed_cpus()?;
    if cpus.is_empty() {
        return Err(CliError::Wrong("no allowed CPU".into()));
    }
    Ok((cpus[0], cpus[1 % cpus.len()]))
}

/// Where the two parties of `queue` or `pipe_rtt` run, for the rows.
pub(crate) fn pair_pinning(w: Workload, cpus: (usize, usize), threads: bool) -> String {
    let (parent, child) = cpus;
    match (w, threads) {
        (Workload::Queue, false) => {
            format!("producer process on CPU {child}; consumer (this thread) unpinned")
        }
        (Workload::Queue, true) => {
            format!("producer thread on CPU {child}; consumer (this thread) unpinned")
        }
        (_, false) => format!("child process on CPU {child}; parent thread on CPU {parent}"),
        (_, true) => format!("ponger thread on CPU {child}; pinger thread on CPU {parent}"),
    }
}

/// `PING_WARMUP` untimed, then `n` timed round trips of `rt`, which sends
/// its argument and returns the answer (`None`: the peer is gone).
pub(super) fn round_trips(
    n: u64,
    mut rt: impl FnMut(u64) -> Option<u64>,
) -> Result<Sample, CliError> {
    for i in 0..PING_WARMUP {
        check(rt(i) == Some(i + 1), "pipe_rtt warm-up answer")?;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        let r = rt(i);
        samples.push(t.elapsed().as_nanos() as u64);
        check(r == Some(i + 1), "pipe_rtt answer")?;
    }
    Ok(Sample {
        items: n,
        seconds: started.elapsed().as_secs_f64(),
        value: median_u64(samples),
        events_ms: Vec::new(),
    })
}

/// Runs `f` on a thread of its own, which it may pin: the caller's affinity
/// stays as it was.
pub(super) fn on_own_thread(
    f: impl FnOnce() -> Result<Sample, CliError> + Send,
) -> Result<Sample, CliError> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err(CliError::Wrong("the measuring thread panicked".into())))
    })
}
