//! Numeric work on a [`corepool::SharedArray`]: a large `f64` array in shared
//! memory that the workers read and write in place, with only a small handle
//! and an index range crossing per task.
//!
//! The parent fills the array with a known pattern, the pool sums it in
//! parallel (checked against a sequential sum), then scales it by 3 in place
//! (checked element by element). Exits non-zero if a check fails.
//!
//! ```text
//! cargo run --release --example numeric              # 16 Mi elements (128 MiB)
//! cargo run --release --example numeric -- 1000000
//! ```

use corepool::{Pool, SharedArray};
use std::process::ExitCode;
use std::time::Instant;

const DEFAULT_LEN: usize = 16 * 1024 * 1024;
/// Elements written per block when filling from the parent.
const FILL_BLOCK: usize = 64 * 1024;
const FACTOR: f64 = 3.0;

/// The value element `i` starts with. Every value is a multiple of 0.5 below
/// 500, so sums and products by 3 stay exact in `f64` at these sizes.
fn pattern(i: usize) -> f64 {
    (i % 1000) as f64 * 0.5
}

/// Seconds since `start`.
fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Sum of `array[start..end]`; runs on a worker.
fn partial_sum(arg: (SharedArray<f64>, u64, u64)) -> f64 {
    let (array, start, end) = arg;
    array
        .fold_chunks(start as usize..end as usize, 0.0, |acc, xs| {
            acc + xs.iter().sum::<f64>()
        })
        .expect("range within the array")
}

/// Multiplies `array[start..end]` by [`FACTOR`] in place; runs on a worker.
fn scale(arg: (SharedArray<f64>, u64, u64)) {
    let (array, start, end) = arg;
    array
        .update_chunks(start as usize..end as usize, |xs| {
            xs.iter_mut().for_each(|x| *x *= FACTOR)
        })
        .expect("range within the array");
}

/// Splits `0..len` into `parts` nearly equal ranges, each with the array.
fn ranges(array: &SharedArray<f64>, parts: usize) -> Vec<(SharedArray<f64>, u64, u64)> {
    let len = array.len();
    (0..parts)
        .map(|p| {
            (
                array.clone(),
                (len * p / parts) as u64,
                (len * (p + 1) / parts) as u64,
            )
        })
        .filter(|(_, start, end)| start < end)
        .collect()
}

fn run(len: usize) -> Result<(), Box<dyn std::error::Error>> {
    let array = SharedArray::<f64>::new(len)?;
    println!(
        "numeric: {len} f64 elements ({:.1} MiB)",
        (len * 8) as f64 / (1024.0 * 1024.0)
    );

    let start = Instant::now();
    let mut block = Vec::with_capacity(FILL_BLOCK);
    let mut at = 0;
    while at < len {
        let end = (at + FILL_BLOCK).min(len);
        block.clear();
        block.extend((at..end).map(pattern));
        array.write(at, &block)?;
        at = end;
    }
    println!("fill (parent):        {:8.3} s", secs(start));

    let start = Instant::now();
    let pool = Pool::builder().build()?;
    println!(
        "pool startup:         {:8.3} s ({} workers)",
        secs(start),
        pool.workers()
    );
    let parts = ranges(&array, pool.workers());

    let start = Instant::now();
    let parallel: f64 = pool
        .chunked(1)?
        .map(partial_sum, parts.clone())?
        .iter()
        .sum();
    println!("sum (pool):           {:8.3} s = {parallel}", secs(start));

    let start = Instant::now();
    let sequential = array.fold_chunks(0..len, 0.0, |acc, xs| acc + xs.iter().sum::<f64>())?;
    println!("sum (parent):         {:8.3} s = {sequential}", secs(start));

    let tolerance = 1e-9 * sequential.abs().max(parallel.abs());
    if (parallel - sequential).abs() > tolerance {
        return Err(format!("sums differ: pool {parallel} vs parent {sequential}").into());
    }

    let start = Instant::now();
    pool.chunked(1)?.map(scale, parts)?;
    println!("scale x{FACTOR} (pool):      {:8.3} s", secs(start));

    pool.close();
    pool.join()?;

    let start = Instant::now();
    let (_, mismatches, first) = array.fold_chunks(
        0..len,
        (0usize, 0usize, None),
        |(mut i, mut bad, mut first), xs| {
            for &x in xs {
                if x != pattern(i) * FACTOR {
                    bad += 1;
                    first.get_or_insert((i, x));
                }
                i += 1;
            }
            (i, bad, first)
        },
    )?;
    println!("check scale (parent): {:8.3} s", secs(start));
    if let Some((i, x)) = first {
        return Err(format!(
            "{mismatches} of {len} elements wrong after scaling; first: element {i} is {x}, expected {}",
            pattern(i) * FACTOR
        )
        .into());
    }

    println!("numeric: all checks passed");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let len = match args.get(1).map(|a| a.replace('_', "").parse::<usize>()) {
        None => DEFAULT_LEN,
        Some(Ok(n)) if n > 0 && args.len() == 2 => n,
        _ => {
            eprintln!(
                "usage: {} [LEN]",
                args.first().map_or("numeric", String::as_str)
            );
            eprintln!("  LEN: number of f64 elements (a positive integer, default {DEFAULT_LEN})");
            return ExitCode::from(2);
        }
    };

    match run(len) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("numeric: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
