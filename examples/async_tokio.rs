//! corepool in an async program: an `AsyncResult` (and a `map_async` handle)
//! is a `Future`, so CPU-bound work runs in pinned worker processes while
//! the tokio runtime stays free for I/O.
//!
//! ```sh
//! cargo run --release --example async_tokio
//! ```

use corepool::Pool;
use std::time::Duration;

/// CPU-bound: the number of primes below `n`, the slow way.
fn primes_below(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

#[tokio::main]
async fn main() -> corepool::Result<()> {
    let pool = Pool::builder().build()?;

    // Awaiting never blocks a runtime thread: a timer keeps ticking meanwhile.
    let ticker = tokio::spawn(async {
        let mut ticks = 0u32;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ticks += 1;
        }
        ticks
    });
    let one = pool.apply_async(primes_below, 200_000)?;
    let many = pool.map_async(primes_below, (1..=8).map(|k| k * 10_000))?;
    let (one, many) = tokio::join!(one, many);
    println!("primes below 200000: {}", one?);
    println!("primes below 10000, 20000, ...: {:?}", many?);
    println!(
        "the runtime ticked {} times meanwhile",
        ticker.await.unwrap_or(0)
    );

    // A task's panic is an error like any other, awaited or not.
    let failed = pool
        .apply_async(|x: u64| -> u64 { panic!("no {x}") }, 7)?
        .await;
    println!("a panicking task: {}", failed.unwrap_err());
    Ok(())
}
