//! Python's `JoinableQueue` pattern: worker processes take jobs from an
//! unbounded queue, mark each done, and the parent waits with `join` until
//! every job it put has been handled.
//!
//! ```text
//! cargo run --release --example joinable_queue
//! ```

use corepool::{JoinableQueue, Process, Queue};
use std::time::Duration;

/// Takes jobs until the queue is closed; puts each answer, then marks the
/// job done.
fn worker(arg: (JoinableQueue<u64>, Queue<(u64, u64)>)) -> u64 {
    let (jobs, answers) = arg;
    let mut handled = 0;
    while let Ok(n) = jobs.get() {
        answers.put(&(n, n * n)).expect("answers queue open");
        jobs.task_done().expect("one task_done per job taken");
        handled += 1;
    }
    handled
}

fn main() -> corepool::Result<()> {
    // Neither queue is ever full: the parent puts all jobs without waiting
    // for a worker, as with Python's `JoinableQueue()` and `Queue()`.
    let jobs = JoinableQueue::<u64>::unbounded()?;
    let answers = Queue::<(u64, u64)>::unbounded()?;
    let workers: Vec<_> = (0..2)
        .map(|_| Process::start(worker, (jobs.clone(), answers.clone())))
        .collect::<corepool::Result<_>>()?;
    for n in 0..10_000 {
        jobs.put(&n)?;
    }
    // Every job taken *and* marked done. A worker that could die while
    // holding a job would leave this waiting: bound it.
    jobs.join_timeout(Duration::from_secs(60))?;
    let sum: u64 = (0..10_000)
        .map(|_| answers.get().map(|(_, sq)| sq))
        .sum::<corepool::Result<u64>>()?;
    jobs.close(); // the workers' `get` fails: they return
    let handled: Vec<u64> = workers
        .into_iter()
        .map(|w| w.join())
        .collect::<corepool::Result<_>>()?;
    println!("10000 jobs, handled {handled:?} by the two workers; sum of squares {sum}");
    assert_eq!(sum, (0..10_000u64).map(|n| n * n).sum::<u64>());
    Ok(())
}
