//! The seed's first program: the counting loop run twice in the parent, then
//! in two `Process`es at once, with the times and the speedup.
//!
//! ```sh
//! cargo run --release --example processes            # 200,000,000 iterations each
//! cargo run --release --example processes -- 1000000
//! ```

use corepool::Process;
use std::time::Instant;

/// The seed's `func`: x = x + 1, n times.
fn func(n: u64) -> u64 {
    let mut x = 0u64;
    for _ in 0..n {
        x = std::hint::black_box(x + 1);
    }
    x
}

fn main() {
    let n: u64 = match std::env::args().nth(1).map(|a| a.replace('_', "").parse()) {
        None => 200_000_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: processes [ITERATIONS > 0]");
            std::process::exit(2);
        }
    };

    let start = Instant::now();
    assert_eq!(func(n) + func(n), 2 * n);
    let sequential = start.elapsed().as_secs_f64();
    println!("single process: total_time = {sequential:.3} s");

    let start = Instant::now();
    let m1 = Process::builder()
        .name("m1")
        .start(func, n)
        .expect("start m1");
    let m2 = Process::builder()
        .name("m2")
        .start(func, n)
        .expect("start m2");
    let (a, b) = (m1.join().expect("m1"), m2.join().expect("m2"));
    assert_eq!(a + b, 2 * n);
    let parallel = start.elapsed().as_secs_f64();
    println!("two processes:  total_time = {parallel:.3} s");
    println!("speedup: {:.2}x", sequential / parallel);
}
