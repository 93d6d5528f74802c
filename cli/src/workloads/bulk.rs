//! The bulk workloads, on every system: `bulk` passes each task an 8 MiB
//! `Vec<u8>` and gets its length back; `bulk_shared` writes the same blocks
//! into one `SharedArray<u8>` and passes each task a handle on its range.
//! Together they show what moving large arguments costs, and when to switch
//! to a shared array.

use super::tasks::check;
use super::{Sample, Workload};
use crate::CliError;
use corepool::{Pinning, Pool, SharedArray};
use std::time::Instant;

/// Bytes per task.
pub(crate) const BULK_BYTES: usize = 8 << 20;

/// The `bulk` threads row's note: what its tasks get.
pub(crate) const THREADS_BULK_NOTE: &str = "each rayon task gets its own copy of its 8 MiB vector, made on the pool thread (as each corepool task gets an owned copy)";

/// What the bulk runs share, made once per workload. `bulk` runs on the
/// suite's pool as configured by default: an 8 MiB argument is larger than a
/// ring message, so each one is copied into a block of the pool's argument
/// arena (64 MiB by default: seven such arguments at once, a one-off spill
/// for any beyond) and decoded by its worker from there.
#[derive(Default)]
pub(crate) struct BulkInputs {
    array: Option<SharedArray<u8>>,
}

/// The placement of `pool`, for workloads that build pools of their own.
pub(super) fn pinning_like(pool: &Pool) -> Pinning {
    let sets = pool.cpu_sets();
    if sets.iter().all(Vec::is_empty) {
        Pinning::None
    } else {
        Pinning::Cpus(
            sets.iter()
                .map(|s| s.first().copied().unwrap_or(0))
                .collect(),
        )
    }
}

impl BulkInputs {
    /// An array of `tasks` blocks (the largest asked for so far).
    fn array(&mut self, tasks: u64) -> Result<SharedArray<u8>, CliError> {
        let len = tasks as usize * BULK_BYTES;
        if let Some(a) = &self.array {
            if a.len() >= len {
                return Ok(a.clone());
            }
        }
        self.array = None;
        let a = SharedArray::<u8>::new(len)?;
        self.array = Some(a.clone());
        Ok(a)
    }
}

/// Block `i`: 8 MiB of one non-zero byte (made outside the timed part).
fn block(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8 + 1; BULK_BYTES]
}

fn blocks(tasks: u64) -> Vec<Vec<u8>> {
    (0..tasks).map(block).collect()
}

fn byte_len(v: Vec<u8>) -> u64 {
    v.len() as u64
}

/// The threads baseline's task: it gets its own copy of the caller's
/// vector, made here on the pool thread, as a corepool task gets an owned
/// copy of its argument (the bytes cross into the worker). Moving the vector
/// in instead would pass a pointer: no byte would move, and the row would
/// time 64 channel sends (hundreds of GB/s) instead of any transfer. The
/// copy is made on the pool's threads, in parallel, as corepool's workers
/// decode in parallel: the fastest way a thread pool can give each task its
/// own data, so the `vs threads` ratio does not flatter corepool.
fn byte_len_of_copy(v: Vec<u8>) -> u64 {
    // black_box: the copy must be made, though only its length is read.
    let copy = std::hint::black_box(&v).clone();
    drop(v);
    byte_len(std::hint::black_box(copy))
}

fn range_len(arg: (SharedArray<u8>, u64, u64)) -> u64 {
    let (a, start, end) = arg;
    // The handle must reach the array; the length is what the task reports.
    if (end as usize) > a.len() {
        return 0;
    }
    end - start
}

fn bytes_rate(tasks: u64, started: Instant) -> Sample {
    let seconds = started.elapsed().as_secs_f64();
    Sample {
        items: tasks,
        seconds,
        value: (tasks as usize * BULK_BYTES) as f64 / seconds.max(1e-12),
        events_ms: Vec::new(),
    }
}

fn expected(tasks: u64) -> u64 {
    tasks * BULK_BYTES as u64
}

/// One run of `bulk` or `bulk_shared` on corepool.
pub(super) fn corepool_bulk(
    w: Workload,
    pool: &Pool,
    inputs: &mut BulkInputs,
    tasks: u64,
) -> Result<Sample, CliError> {
    let data = blocks(tasks);
    let array = match w {
        Workload::BulkShared => Some(inputs.array(tasks)?),
        _ => None,
    };
    let started = Instant::now();
    let handles: Vec<_> = match &array {
        None => data
            .into_iter()
            .map(|v| pool.apply_async(byte_len, v))
            .collect::<Result<_, _>>()?,
        Some(a) => data
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let start = i * BULK_BYTES;
                a.write(start, v)?;
                pool.apply_async(
                    range_len,
                    (a.clone(), start as u64, (start + BULK_BYTES) as u64),
                )
            })
            .collect::<Result<_, _>>()?,
    };
    let mut total = 0;
    for h in handles {
        total += h.get()?;
    }
    let s = bytes_rate(tasks, started);
    check(total == expected(tasks), "bulk: lengths")?;
    Ok(s)
}

/// One run of `bulk` or `bulk_shared` on rayon threads: each task gets its
/// own copy of its vector ([`byte_len_of_copy`]), or a range of the same
/// shared array written as corepool's run writes it.
pub(super) fn threads_bulk(
    w: Workload,
    threads: &rayon::ThreadPool,
    inputs: &mut BulkInputs,
    tasks: u64,
) -> Result<Sample, CliError> {
    let data = blocks(tasks);
    let array = match w {
        Workload::BulkShared => Some(inputs.array(tasks)?),
        _ => None,
    };
    let started = Instant::now();
    let mut receivers = Vec::with_capacity(data.len());
    match &array {
        None => {
            for v in data {
                let (tx, rx) = crossbeam_channel::bounded(1);
                threads.spawn(move || {
                    let _ = tx.send(byte_len_of_copy(v));
                });
                receivers.push(rx);
            }
        }
        Some(a) => {
            for (i, v) in data.iter().enumerate() {
                let start = i * BULK_BYTES;
                a.write(start, v)?;
                let arg = (a.clone(), start as u64, (start + BULK_BYTES) as u64);
                let (tx, rx) = crossbeam_channel::bounded(1);
                threads.spawn(move || {
                    let _ = tx.send(range_len(arg));
                });
                receivers.push(rx);
            }
        }
    }
    let total: u64 = receivers.iter().map(|rx| rx.recv().unwrap_or(0)).sum();
    let s = bytes_rate(tasks, started);
    check(total == expected(tasks), "threads bulk: lengths")?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_threads_task_gets_a_copy_of_its_own() {
        // The task keeps the caller's vector only long enough to copy it:
        // what it measures is the copy, not a moved pointer.
        let v = vec![7u8; 4096];
        let copy = std::hint::black_box(&v).clone();
        assert_ne!(copy.as_ptr(), v.as_ptr());
        assert_eq!(byte_len_of_copy(v), 4096);
    }

    #[test]
    fn the_threads_bulk_run_checks_every_length() {
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let s = threads_bulk(Workload::Bulk, &threads, &mut BulkInputs::default(), 2).unwrap();
        assert_eq!(s.items, 2);
        assert!(s.value > 0.0);
    }
}
