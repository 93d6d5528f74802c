//! The seed's Queue and Pipe lessons over shared memory: a producer and a
//! consumer process exchanging values through a `Queue`, then a ping-pong
//! over a `Pipe`, timed.
//!
//! ```sh
//! cargo run --release --example queue_pipe            # 1,000,000 values, 100,000 round trips
//! cargo run --release --example queue_pipe -- 10000 1000
//! ```

use corepool::{Pipe, PipeEnd, Process, Queue};
use std::time::Instant;

/// Puts 0..n, then a sentinel.
fn producer(arg: (Queue<u64>, u64)) -> u64 {
    let (q, n) = arg;
    for i in 0..n {
        q.put(&i).expect("put");
    }
    q.put(&u64::MAX).expect("put the sentinel");
    n
}

/// Takes values until the sentinel and sums them.
fn consumer(q: Queue<u64>) -> u64 {
    let mut sum = 0u64;
    loop {
        match q.get().expect("get") {
            u64::MAX => return sum,
            v => sum = sum.wrapping_add(v),
        }
    }
}

/// Answers every ping with ping + 1 until the other end closes.
fn ponger(end: PipeEnd<u64>) -> u64 {
    let mut n = 0;
    while let Ok(v) = end.recv() {
        end.send(&(v + 1)).expect("pong");
        n += 1;
    }
    n
}

fn arg(i: usize, default: u64) -> u64 {
    match std::env::args()
        .nth(i)
        .map(|a| a.replace('_', "").parse::<u64>())
    {
        None => default,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: queue_pipe [VALUES > 0] [ROUND_TRIPS > 0]");
            std::process::exit(2);
        }
    }
}

fn main() {
    let (values, trips) = (arg(1, 1_000_000), arg(2, 100_000));

    let q = Queue::<u64>::new(1024).expect("queue");
    let start = Instant::now();
    let c = Process::builder()
        .name("consumer")
        .start(consumer, q.clone())
        .expect("consumer");
    let p = Process::builder()
        .name("producer")
        .start(producer, (q, values))
        .expect("producer");
    assert_eq!(p.join().expect("producer"), values);
    let sum = c.join().expect("consumer");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(sum, (0..values).fold(0u64, |s, v| s.wrapping_add(v)));
    println!("queue: {values} values from one process to another in {secs:.3} s ({:.2} M values/s), sum checked", values as f64 / secs / 1e6);

    // Two spinning peers must not share a core: pin them apart.
    let cpus = corepool::info::allowed_cpus().expect("allowed CPUs");
    let (here, there) = (cpus[0], cpus[1 % cpus.len()]);
    let (mine, theirs) = Pipe::duplex::<u64>().expect("pipe");
    let child = Process::builder()
        .cpu(there)
        .start(ponger, theirs)
        .expect("ponger");
    // After starting the child: the allowed set is read from this thread.
    corepool::info::pin_current_thread(here).expect("pin this thread");
    let mut rtts = Vec::with_capacity(trips as usize);
    for i in 0..trips {
        let t = Instant::now();
        mine.send(&i).expect("ping");
        assert_eq!(mine.recv().expect("pong"), i + 1);
        rtts.push(t.elapsed().as_nanos() as u64);
    }
    drop(mine); // end of stream: the ponger returns
    assert_eq!(child.join().expect("ponger"), trips);
    rtts.sort_unstable();
    println!(
        "pipe: {trips} round trips, median {} ns",
        rtts[rtts.len() / 2]
    );
    println!("queue_pipe: all checks passed");
}
