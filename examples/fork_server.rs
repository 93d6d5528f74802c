//! Pools whose workers are forked by the fork server
//! (`StartMethod::ForkServer`), against `StartMethod::Spawn` (each worker exec'd):
//! the time to build a pool of two workers, the first one (built while the
//! fork server starts: its first worker is exec'd) and later ones.
//!
//! `cargo run --release --example fork_server`

use corepool::{Pool, StartMethod};
use std::time::{Duration, Instant};

fn build(method: StartMethod) -> corepool::Result<Duration> {
    let t = Instant::now();
    let pool = Pool::builder().workers(2).start_method(method).build()?;
    let took = t.elapsed();
    // The workers serve; they are this process's children either way.
    let parent = pool.apply(|_: ()| std::os::unix::process::parent_id(), ())?;
    assert_eq!(parent, std::process::id());
    Ok(took)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> corepool::Result<()> {
    let first = build(StartMethod::ForkServer)?;
    println!(
        "fork server: first pool {:.2} ms (built while the fork server starts), fork server pid {:?}",
        first.as_secs_f64() * 1e3,
        corepool::fork_server_pid()
    );
    let (mut forked, mut spawned) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        forked.push(build(StartMethod::ForkServer)?);
        spawned.push(build(StartMethod::Spawn)?);
    }
    println!(
        "fork server: later pools {:.2} ms (median of 10)",
        median(forked).as_secs_f64() * 1e3
    );
    println!(
        "exec:        every pool  {:.2} ms (median of 10)",
        median(spawned).as_secs_f64() * 1e3
    );
    // Optional: it dies with the program anyway.
    corepool::stop_fork_server();
    Ok(())
}
