//! The spill path, measured: 8 MiB arguments sent to a pool by value (each
//! is larger than a ring message, so it travels in a one-off shared segment
//! of its own: a memfd created, filled, opened and copied out per call)
//! against the same bytes in a `SharedArray` passed by handle (mapped once,
//! read in place), in the same run.
//!
//! ```sh
//! cargo run --release --example spill            # 8 MiB, 40 calls each
//! cargo run --release --example spill -- 1 200   # 1 MiB, 200 calls
//! ```

use corepool::{Pool, SharedArray};
use std::time::{Duration, Instant};

/// A checksum the compiler cannot skip.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0u64, |acc, c| {
        acc.rotate_left(5) ^ c.iter().fold(0, |a, &b| a << 8 | b as u64)
    })
}

fn by_value(data: Vec<u8>) -> u64 {
    checksum(&data)
}

fn by_handle(data: SharedArray<u8>) -> u64 {
    data.fold_chunks(0..data.len(), 0u64, |acc, chunk| acc ^ checksum(chunk))
        .expect("in range")
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn main() -> corepool::Result<()> {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let mib = args.next().unwrap_or(8);
    let calls = args.next().unwrap_or(40).max(1);
    let data: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    let pool = Pool::new(1)?;
    // Warm up both paths (page faults, the worker's buffers).
    pool.apply(by_value, data.clone())?;
    let array = SharedArray::from_slice(&data)?;
    pool.apply(by_handle, array.clone())?;

    let spilled = median(calls, || {
        pool.apply(by_value, data.clone()).expect("by value");
    });
    let handle = median(calls, || {
        pool.apply(by_handle, array.clone()).expect("by handle");
    });
    // The fair comparison when the data is not in shared memory already:
    // copy it into a new array per call.
    let copied = median(calls, || {
        let a = SharedArray::from_slice(&data).expect("array");
        pool.apply(by_handle, a).expect("by a fresh array");
    });
    let per_gib = |d: Duration| (mib as f64 / 1024.0) / d.as_secs_f64();
    println!("{mib} MiB per call, median of {calls} calls each, one worker:");
    println!(
        "  by value (spills)      {:>9.3} ms  {:>6.2} GiB/s",
        spilled.as_secs_f64() * 1e3,
        per_gib(spilled)
    );
    println!(
        "  SharedArray, reused    {:>9.3} ms  {:>6.2} GiB/s  ({:.1}x faster than spilling)",
        handle.as_secs_f64() * 1e3,
        per_gib(handle),
        spilled.as_secs_f64() / handle.as_secs_f64()
    );
    println!(
        "  SharedArray, per call  {:>9.3} ms  {:>6.2} GiB/s  ({:.1}x faster than spilling)",
        copied.as_secs_f64() * 1e3,
        per_gib(copied),
        spilled.as_secs_f64() / copied.as_secs_f64()
    );
    Ok(())
}
