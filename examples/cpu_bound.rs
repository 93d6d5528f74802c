//! CPU-bound work on a process pool: the same counting loop run twice in a
//! row, then as two tasks on a two-worker [`corepool::Pool`], with both
//! timings and the speedup printed.
//!
//! ```text
//! cargo run --release --example cpu_bound            # n = 200_000_000
//! cargo run --release --example cpu_bound -- 20000000
//! ```
//!
//! With two free cores the pool should come close to a 2x speedup.

use corepool::Pool;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

const DEFAULT_N: u64 = 200_000_000;

/// Increments a counter `n` times; `black_box` keeps the loop from being
/// folded into a constant.
fn count(n: u64) -> u64 {
    let mut x = 0u64;
    for _ in 0..n {
        x = black_box(x + 1);
    }
    x
}

fn usage(program: &str) -> ExitCode {
    eprintln!("usage: {program} [N]");
    eprintln!(
        "  N: iterations of the counting loop per task (a positive integer, default {DEFAULT_N})"
    );
    ExitCode::from(2)
}

fn run(n: u64) -> Result<(), corepool::Error> {
    println!("n = {n}");

    let start = Instant::now();
    let a = count(n);
    let b = count(n);
    let sequential = start.elapsed().as_secs_f64();
    assert_eq!((a, b), (n, n));
    println!("sequential: {sequential:.2} s");

    let start = Instant::now();
    let pool = Pool::new(2)?;
    println!("pool startup: {:.3} s", start.elapsed().as_secs_f64());

    let start = Instant::now();
    let first = pool.apply_async(count, n)?;
    let second = pool.apply_async(count, n)?;
    let (a, b) = (first.get()?, second.get()?);
    let parallel = start.elapsed().as_secs_f64();
    assert_eq!((a, b), (n, n));
    println!("pool ({} workers): {parallel:.2} s", pool.workers());
    println!("speedup: {:.2}x", sequential / parallel);

    pool.close();
    pool.join()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let program = args.first().map_or("cpu_bound", String::as_str);
    let n = match args.len() {
        1 => DEFAULT_N,
        2 => match args[1].replace('_', "").parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => return usage(program),
        },
        _ => return usage(program),
    };

    match run(n) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpu_bound: {e}");
            ExitCode::FAILURE
        }
    }
}
